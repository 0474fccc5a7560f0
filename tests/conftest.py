"""Shared test helpers: run the real entry points in subprocesses, isolated from the repo."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from dyconv.runtime import tune_malloc

TESTS_DIR = Path(__file__).parent


class _Zygote:
    """The test process's handle on ``zygote.py`` (one per test process, started on first use)."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(TESTS_DIR / "zygote.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, bufsize=0,
        )
        self.lock = threading.Lock()  # one run at a time: runs from threads wait their turn
        self.pending = b""
        if self._reply(None) != {"ready": True}:
            raise RuntimeError("the tests' zygote process did not start")

    def _reply(self, deadline: float | None) -> dict:
        """The next JSON line from the zygote (TimeoutError past ``deadline``)."""
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.pending:
            wait = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not select.select([fd], [], [], wait)[0]:
                raise TimeoutError
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError(f"the tests' zygote process ended (exit code {self.proc.poll()})")
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return json.loads(line)

    def run(self, module: str, args: list[str], cwd: Path, env: dict[str, str], timeout: float | None
            ) -> subprocess.CompletedProcess:
        with self.lock, tempfile.TemporaryDirectory() as folder:
            out, err = Path(folder) / "stdout", Path(folder) / "stderr"
            request = {"module": module, "args": args, "cwd": str(cwd), "env": env,
                       "stdout": str(out), "stderr": str(err)}
            self.proc.stdin.write((json.dumps(request) + "\n").encode())
            pid = self._reply(None)["pid"]
            deadline = None if timeout is None else time.monotonic() + timeout
            try:
                code = self._reply(deadline)["code"]
            except BaseException as e:  # a timeout (ours or pytest's): the run is killed, the zygote too
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                self.close()
                if isinstance(e, TimeoutError):
                    output = out.read_text(), err.read_text()
                    raise subprocess.TimeoutExpired([module, *args], timeout, *output) from None
                raise
            return subprocess.CompletedProcess([module, *args], code, out.read_text(), err.read_text())

    def close(self) -> None:
        global _zygote
        self.proc.kill()
        self.proc.wait()
        _zygote = None


_zygote: _Zygote | None = None


def run_cli(module: str, *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float | None = None,
            check: bool = True, fresh: bool = False) -> subprocess.CompletedProcess:
    """``python -m dyconv.<module> args...`` with logs and data under ``cwd``; returns the result.

    Runs in a child forked from a process that has imported torch, Lightning, Hydra and dyconv
    (``zygote.py``: the same code as ``python -m``, each run in its own process, without paying
    the imports again). ``fresh=True``: a new interpreter instead, for what the imports
    themselves decide or a process that re-launches its own command (DDP). No timeout of its
    own: the suite's (pytest-timeout, pyproject.toml) applies."""
    global _zygote
    full_env = dict(os.environ)
    full_env.update({
        "DYCONV_LOG_DIR": str(cwd / "logs"),
        "DYCONV_DATA_DIR": str(cwd / "datasets"),
        "PYTHONPATH": os.pathsep.join([str(TESTS_DIR), full_env.get("PYTHONPATH", "")]),
        "HYDRA_FULL_ERROR": "0",
        "PYTHONUNBUFFERED": "1",
    })
    full_env.update(env or {})
    if fresh:
        proc = subprocess.run(
            [sys.executable, "-m", f"dyconv.{module}", *args],
            cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout,
        )
    else:
        if _zygote is None or _zygote.proc.poll() is not None:
            _zygote = _Zygote()
        proc = _zygote.run(f"dyconv.{module}", list(args), cwd, full_env, timeout)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"dyconv.{module} {' '.join(args)} exited {proc.returncode}\n--- stdout ---\n{proc.stdout[-6000:]}"
            f"\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


#: The files that take longest, heaviest first (``pytest --durations=60``). pytest-xdist hands out
#: whole files in collection order (``--dist loadfile --no-loadscope-reorder`` in pyproject.toml):
#: starting with these keeps both workers busy to the end instead of one finishing a long file alone.
HEAVY_FIRST = (
    "export/test_export_model.py", "cli/test_train_cli.py", "export/test_export.py",
    "cli/test_train_every_model.py", "cli/test_scaleout.py", "layers/test_layer_exporters.py",
    "scripts/test_benchmarks.py", "runs/test_security.py", "cli/test_command_line.py",
    "export/test_export_portable.py", "cli/test_train_resume.py", "models/test_detection.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}

    def order(item) -> int:
        path = Path(item.path)
        name = path.relative_to(TESTS_DIR).as_posix() if path.is_relative_to(TESTS_DIR) else ""
        return rank.get(name, len(rank))

    items.sort(key=order)  # stable: every other test keeps its place


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
