"""Resume through the real entry point: a run killed by SIGKILL continues exactly, relaunches of a
finished run change nothing, and last.ckpt holds every epoch."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from trained import load_checkpoint, run_metrics

pytestmark = pytest.mark.slow

QUIET = ["callbacks.progress_bar=null"]
SMALL_DATA = ["data.splits=[512,128,128]"]


def test_resume_after_sigkill_is_exact(cli, tmp_path):
    """Lightning's own recipe: one run straight; the same command in another directory killed
    in the middle of epoch 1's validation (last.ckpt is written when an epoch's training ends,
    before validation), relaunched with ckpt_path=last: same weights, metrics and history."""
    common = [
        *QUIET,
        *SMALL_DATA,
        "trainer.max_epochs=3",
        "deterministic=true",
        "callbacks.temperature.epochs=2",
        "logger=many",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cli("train", *common, f"hydra.run.dir={straight}")
    killed = cli(
        "train",
        *common,
        f"hydra.run.dir={resumed}",
        "ckpt_path=last",  # nothing there yet: starts fresh, with a message
        "+callbacks.killer._target_=killer.KillInValidation",
        check=False,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "starting from scratch" in killed.stdout + killed.stderr
    assert load_checkpoint(resumed / "checkpoints" / "last.ckpt")["epoch"] == 1  # epoch 1 trained, not validated
    again = cli("train", *common, f"hydra.run.dir={resumed}", "ckpt_path=last")
    assert "Resuming from" in again.stdout + again.stderr

    a, b = (load_checkpoint(run / "checkpoints" / "last.ckpt") for run in (straight, resumed))
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"] == 2
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=1e-7, msg=key)
    ma, mb = run_metrics(straight), run_metrics(resumed)
    ma, mb = ({k: v for k, v in m.items() if not k.startswith("time/")} for m in (ma, mb))
    assert ma == pytest.approx(mb, rel=1e-6, abs=1e-7)
    assert ma["temperature"] == mb["temperature"] == 1.0
    # The CSV history of the killed launch is kept, once: epochs 0, 1, 2 with no duplicates.
    with open(resumed / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/acc")]
    assert [int(float(r["epoch"])) for r in rows] == [0, 1, 2]

    def train_epoch_rows(run_dir: Path) -> list[tuple[float, ...]]:
        with open(run_dir / "csv" / "metrics.csv") as f:
            return [(float(r["epoch"]), float(r["train/loss_epoch"]), float(r["train/acc"]))
                    for r in csv.DictReader(f) if r.get("train/loss_epoch")]

    # Epoch 1's training metrics were accumulated before the kill: the pre-validation checkpoint
    # carries them, so the resumed run logs the same training history (epochs 0, 1, 2).
    straight_rows = train_epoch_rows(straight)
    assert [r[0] for r in straight_rows] == [0, 1, 2]
    resumed_rows = train_epoch_rows(resumed)
    assert len(resumed_rows) == len(straight_rows)
    for got, want in zip(resumed_rows, straight_rows):
        assert got == pytest.approx(want, rel=1e-6)
    assert len(list((resumed / ".hydra" / "launches").iterdir())) == 2

    # A requeue script relaunching the finished run with ckpt_path=last changes nothing.
    before = {p.name: p.read_bytes() for p in [resumed / "metrics.json", *(resumed / "checkpoints").iterdir()]}
    relaunch = cli("train", *common, f"hydra.run.dir={resumed}", "ckpt_path=last")
    assert "already finished" in relaunch.stdout
    assert {p.name: p.read_bytes() for p in [resumed / "metrics.json", *(resumed / "checkpoints").iterdir()]} \
        == before
    # Relaunching a finished run without ckpt_path refuses instead of overwriting.
    refused = cli("train", *common, f"hydra.run.dir={resumed}", check=False)
    assert refused.returncode != 0
    assert "already holds checkpoints" in refused.stderr and "ckpt_path=last" in refused.stderr
    assert "Traceback" not in refused.stderr
    # Resuming with another model config refuses and names the difference.
    changed = cli("train", *common, f"hydra.run.dir={resumed}", "ckpt_path=last", "model.width_mult=0.5",
                  check=False)
    assert changed.returncode != 0 and "model.width_mult: 1.0 -> 0.5" in changed.stderr


def test_last_checkpoint_is_written_every_epoch_even_without_improvement(cli, tmp_path):
    """Lightning 2.6's save_last only rewrites last.ckpt when the monitored best improved; with a
    learning rate of ~0 nothing improves after epoch 0, yet last.ckpt must hold the final epoch."""
    run_dir = tmp_path / "flat"
    cli("train", "optimizer.lr=1e-12", "trainer.max_epochs=3", "data.splits=[64,32,32]", "test=false", *QUIET,
        f"hydra.run.dir={run_dir}")
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 2
    best = [p for p in (run_dir / "checkpoints").glob("epoch_*.ckpt")]
    assert [p.name for p in best] == ["epoch_000.ckpt"]
    # dyconv.eval rebuilds everything from the checkpoint alone; data overrides apply.
    proc = cli("eval", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "split=val", "data.batch_size=8")
    (result,) = (run_dir / "eval").glob("val_*/metrics.json")
    record = json.loads(result.read_text())
    # last.ckpt holds the weights of the run's final validation: eval must reproduce its accuracy.
    assert record["split"] == "val"
    assert record["metrics"]["val/acc"] == pytest.approx(run_metrics(run_dir)["val/acc"], abs=1e-6)
    assert str(result) in proc.stdout
