"""Shared test helpers: run the real entry points in subprocesses, isolated from the repo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from dyconv.runtime import tune_malloc

TESTS_DIR = Path(__file__).parent


def run_cli(module: str, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float | None = None,
            check: bool = True) -> subprocess.CompletedProcess:
    """``python -m dyconv.<module> args...`` with logs and data under ``cwd``; returns the result.
    No timeout of its own: the suite's (pytest-timeout, pyproject.toml) applies."""
    full_env = dict(os.environ)
    full_env.update({
        "DYCONV_LOG_DIR": str(cwd / "logs"),
        "DYCONV_DATA_DIR": str(cwd / "datasets"),
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), full_env.get("PYTHONPATH", "")]),
        "HYDRA_FULL_ERROR": "0",
        "PYTHONUNBUFFERED": "1",
    })
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", f"dyconv.{module}", *args],
        cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"dyconv.{module} {' '.join(args)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


# What the entry points do on CPU (see dyconv.runtime): fresh large allocations are very
# expensive on some machines (this CI VM among them) and the in-process tests would crawl.
tune_malloc()

# Under pytest-xdist (``-n 2`` in pyproject.toml) the workers share the cores: one intra-op
# thread per worker, and per CLI subprocess it starts, instead of oversubscribing them.
if os.environ.get("PYTEST_XDIST_WORKER") and "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def cli(tmp_path):
    """``cli("train", "model=...")`` runs an entry point with tmp_path as its working dir."""

    def _run(module: str, *args: str, **kwargs):
        return run_cli(module, *args, cwd=tmp_path, **kwargs)

    return _run
