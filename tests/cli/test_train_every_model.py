"""Every classification model config trains through the real entry point (one multirun, one step each)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from trained import run_metrics

pytestmark = pytest.mark.slow

CONF = Path(__file__).parents[2] / "src" / "dyconv" / "conf"
QUIET = ["callbacks.progress_bar=null"]


#: Deeper twins of configs kept here (same code, only more blocks): tests/models/test_models.py
#: instantiates their configs and tests/cli/test_experiments.py trains each one step.
DEEPER_TWINS = ("resnet101", "dy_resnet101", "od_resnet34", "od_resnet50", "od_resnet101")


#: 1-D models take sequences, not images: tests/datamodules/test_mnist1d.py trains them from the CLI.
SEQUENCE_MODELS = ("cnn1d", "dy_cnn1d")


def _classification_model_configs() -> list[str]:
    return sorted(
        p.stem for p in (CONF / "model").glob("*.yaml")
        if "deeplab" not in p.stem and p.stem not in DEEPER_TWINS + SEQUENCE_MODELS
    )


def test_fast_dev_run_every_classification_model(cli, tmp_path):
    """One multirun process runs every model config on the offline data, resized to 32 px RGB."""
    models = _classification_model_configs()
    assert {"simple_cnn", "dy_simple_cnn", "dy_resnet10", "dy_mobilenetv2", "od_resnet18", "od_mobilenetv2"} <= set(
        models
    )
    cli(
        "train",
        "-m",
        f"model={','.join(models)}",
        "debug=fast_dev_run",
        "data.image_size=32",
        "data.in_channels=3",
        "data.batch_size=4",
        "data.splits=[8,8,8]",
        "sweep_name=sweep",
        *QUIET,
    )
    jobs = list((tmp_path / "logs" / "debug" / "multiruns" / "sweep").glob("*model-*"))  # key-value__key-value
    assert len(jobs) == len(models)
    for job in jobs:
        m = run_metrics(job)
        # One SGD step leaves BatchNorm's running statistics far from the data, so eval-mode
        # test losses of deep nets can overflow here; the training step itself must be finite.
        # fast_dev_run tests one batch of 4 images: the accuracy is a count of 4.
        assert m["test/acc"] * 4 == pytest.approx(round(m["test/acc"] * 4), abs=1e-6) and 0 <= m["test/acc"] <= 1
        assert torch.isfinite(torch.tensor(m["train/loss_step"]))
