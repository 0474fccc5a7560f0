"""A checkpoint written by dyconv 0.1.0 (tests/fixtures/ckpt_v0_1_0) still evaluates to the metrics
0.1.0 gave and still resumes: what users already have keeps working after an upgrade."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

FIXTURE = Path(__file__).parents[1] / "fixtures" / "ckpt_v0_1_0"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text())
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@pytest.fixture
def old_checkpoint(tmp_path: Path) -> Path:
    """A copy of the 0.1.0 checkpoint in a run folder of its own (the tools write next to it)."""
    ckpt = tmp_path / "old_run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    shutil.copyfile(FIXTURE / "last.ckpt", ckpt)
    return ckpt


@pytest.mark.slow
def test_old_checkpoint_evaluates_to_the_same_metrics(cli, old_checkpoint):
    cli("eval", f"ckpt_path={old_checkpoint}", "split=test", env=ONE_THREAD)
    (result,) = (old_checkpoint.parents[1] / "eval").glob("test_*/metrics.json")
    got = json.loads(result.read_text())
    assert got["epoch"] == EXPECTED["eval_epoch"] and got["global_step"] == EXPECTED["eval_global_step"]
    # Same predictions on the 500 test digits (accuracy exact), the loss to float32 rounding.
    assert got["metrics"]["test/acc"] == pytest.approx(EXPECTED["eval"]["test/acc"], abs=1e-7)
    assert got["metrics"]["test/acc_top5"] == pytest.approx(EXPECTED["eval"]["test/acc_top5"], abs=1e-7)
    assert got["metrics"]["test/loss"] == pytest.approx(EXPECTED["eval"]["test/loss"], rel=1e-5)


@pytest.mark.slow
def test_old_checkpoint_resumes(cli, old_checkpoint, tmp_path):
    """Resumed for a third epoch with the command that wrote it: the run continues from step 126
    (epoch 2 of 3) and ends with the metrics 0.1.0 gave for the same resume."""
    cli("train", "model=dy_resnet10", "model.width_mult=0.0625", "trainer.max_epochs=3", "seed=3",
        f"ckpt_path={old_checkpoint}", "run_name=resumed", "callbacks.progress_bar=null", env=ONE_THREAD)
    (metrics_file,) = (tmp_path / "logs").glob("*/runs/resumed/metrics.json")
    got = json.loads(metrics_file.read_text())
    for key in ("val/acc", "test/acc"):
        assert got[key] == pytest.approx(EXPECTED["resume"][key], abs=1e-7), key
    assert got["test/loss"] == pytest.approx(EXPECTED["resume"]["test/loss"], rel=1e-4)
