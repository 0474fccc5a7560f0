"""Checkpoint files and run directories: atomic saves, permissions, ckpt_path rules, CSV logs."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from dyconv.errors import ConfigError, RunDirectoryError
from dyconv.runs.checkpoint import atomic_torch_save, remove_stale_temp_files
from dyconv.runs.loggers import ResumableCSVLogger
from dyconv.runs.resume import config_differences, resolve_ckpt_path


def test_atomic_save_survives_sigkill_mid_write(tmp_path):
    """A writer saving a 32 MB checkpoint in a loop is SIGKILLed at random moments: the file is
    always loadable (old or new), and stale temp files are cleaned up."""
    path = tmp_path / "last.ckpt"
    script = textwrap.dedent(
        f"""
        import torch
        from dyconv.runs.checkpoint import atomic_torch_save
        i = 0
        while True:
            atomic_torch_save({{"i": i, "w": torch.full((8 * 2**20,), float(i))}}, {str(path)!r})
            i += 1
        """
    )
    rng = random.Random(0)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", script])
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ckpt = torch.load(path, weights_only=True)
        assert torch.all(ckpt["w"] == float(ckpt["i"]))
    remove_stale_temp_files(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_checkpoint_file_permissions_follow_umask(tmp_path):
    atomic_torch_save({"a": 1}, tmp_path / "c.ckpt")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "c.ckpt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_resolve_ckpt_path_rules(tmp_path):
    assert resolve_ckpt_path(None, tmp_path) is None
    assert resolve_ckpt_path("last", tmp_path) is None  # nothing yet: fresh start
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(RunDirectoryError, match="ckpt_path=last"):
        resolve_ckpt_path(None, tmp_path)
    assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match="no such file"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path)


def test_config_differences_ignore_data_location_and_loader_knobs():
    model = {"name": "dy_resnet10", "width_mult": 1.0}
    stored = {"model": model, "data": {"root": "/a", "num_workers": 4, "image_size": 64}}
    moved = {"model": dict(model), "data": {"root": "/b", "num_workers": 0, "image_size": 64}}
    assert config_differences(stored, moved) == []
    changed = {"model": {"name": "dy_resnet10", "width_mult": 0.5}, "data": {"root": "/a", "image_size": 32}}
    assert config_differences(stored, changed) == ["model.width_mult: 1.0 -> 0.5", "data.image_size: 64 -> 32"]


def test_csv_logger_appends_and_truncates_on_resume(tmp_path):
    a = ResumableCSVLogger(tmp_path, name="csv", version="")
    a.log_metrics({"loss": 1.0}, step=0)
    a.log_metrics({"loss": 0.5}, step=5)
    a.save()
    b = ResumableCSVLogger(tmp_path, name="csv", version="")  # a relaunch of the same run
    b.truncate_after(2)  # resumed from a checkpoint at step 2: the step-5 row is dropped
    b.log_metrics({"loss": 0.7, "acc": 0.1}, step=3)
    b.save()
    import csv

    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["loss"]) for r in rows] == [("0", "1.0"), ("3", "0.7")]
    assert rows[1]["acc"] == "0.1"
