"""Trained runs for the tool tests (``from trained import make_checkpoint``; tests/ is on sys.path).

- :func:`make_checkpoint`: a checkpoint in exactly the format ``python -m dyconv.train`` writes,
  built in-process without training: the real ``conf/train.yaml`` composed with the overrides,
  reduced to the run config ``train`` stores (``checkpoint["dyconv"]["config"]``), and the
  task's state dict (``model.`` prefix).
- :func:`real_run`: one real short offline run, shared by the tests of a session.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

__all__ = ["compose_run_config", "load_checkpoint", "make_checkpoint", "real_run", "run_metrics"]


def run_metrics(run_dir: Path) -> dict[str, float]:
    """A finished run's ``metrics.json``."""
    return json.loads((run_dir / "metrics.json").read_text())


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's contents, plain types only."""
    return torch.load(path, map_location="cpu", weights_only=True)


def compose_run_config(overrides: Sequence[str] = ()) -> dict:
    """The plain run config ``train`` would store for these command-line overrides."""
    from hydra import compose, initialize_config_dir

    from dyconv.config import CONF_DIR, plain

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=list(overrides))
    return plain(cfg, "model", "data", "task", "optimizer", "scheduler", "seed")


def make_checkpoint(
    path: Path,
    overrides: Sequence[str] = (),
    edit: Callable[[nn.Module], None] | None = None,
    seed: int = 0,
) -> Path:
    """Build the model of ``overrides``, let ``edit(model)`` change it, save a train-format checkpoint."""
    from hydra.utils import instantiate

    config = compose_run_config(overrides)
    torch.manual_seed(seed)
    model = instantiate(config["model"])
    make_task = instantiate(config["task"], _partial_=True, _convert_="all")
    task = make_task(model=model, run_config=config)
    if edit is not None:
        with torch.no_grad():
            edit(task.model)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": task.state_dict(), "dyconv": {"version": 1, "config": config}}, path)
    return path


def real_run(base: Path, timeout: float | None = None) -> Path:
    """A real 1-epoch offline run of the default model (``python -m dyconv.train``, ~10 s), made
    once per ``base`` directory (pass the session's ``tmp_path_factory.getbasetemp()``)."""
    from conftest import run_cli

    run_dir = base / "real_default_run"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    if ckpt.is_file():
        return run_dir
    args = ["data.splits=[256,64,64]", "trainer.max_epochs=1", "callbacks.progress_bar=null", "logger=[]",
            f"hydra.run.dir={run_dir}"]
    proc = run_cli("train", *args, cwd=base, timeout=timeout, check=False)
    if proc.returncode != 0 or not ckpt.is_file():
        raise AssertionError(f"dyconv.train {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return run_dir
