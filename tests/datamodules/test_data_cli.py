"""The real CLI on every dataset: ``python -m dyconv.train data=<name> data.root=<fixture>
debug=fast_dev_run`` on a tiny fake copy in the official on-disk layout (tests/fakedata.py), with
a small model, 32 px images and a batch of 2 so each run takes seconds."""

from __future__ import annotations

import json
import math
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import run_cli
from fakedata import make_imagenet, make_imagenette, make_mnist, make_tinyimagenet, make_voc, make_voc_sbd

pytestmark = pytest.mark.slow

SMALL_CLASSIFIER = ["model=resnet10", "model.width_mult=0.25"]
SMALL_SEGMENTER = ["model=deeplabv3plus", "model.width_mult=0.25", "model.backbone_width_mult=0.5"]

# data config -> (fixture writer, model, extra overrides the fixture needs)
DATASETS: dict[str, tuple[Callable[[Path], object], list[str], list[str]]] = {
    "mnist": (lambda root: make_mnist(root, n_train=30, n_test=10), SMALL_CLASSIFIER, ["data.val_size=10"]),
    "imagenette": (lambda root: make_imagenette(root, num_classes=10, n_train=1, n_val=1), SMALL_CLASSIFIER, []),
    "tinyimagenet": (lambda root: make_tinyimagenet(root, num_classes=3), SMALL_CLASSIFIER, ["data.num_classes=3"]),
    "imagenet": (lambda root: make_imagenet(root, num_classes=3), SMALL_CLASSIFIER, ["data.num_classes=3"]),
    "voc": (lambda root: make_voc(root), SMALL_SEGMENTER, []),
    "voc_sbd": (lambda root: make_voc_sbd(root), SMALL_SEGMENTER, []),
}


def _run(data: str, cwd: Path) -> subprocess.CompletedProcess:
    make, model, extra = DATASETS[data]
    root = cwd / "fixture"
    make(root)
    return run_cli(
        "train",
        f"data={data}",
        f"data.root={root}",
        "debug=fast_dev_run",
        *model,
        "data.image_size=32",
        "data.batch_size=2",
        "data.num_workers=0",
        "callbacks.progress_bar=null",
        *extra,
        cwd=cwd,
        env={"OMP_NUM_THREADS": "1"},  # batches of 2 at 32 px: intra-op threads only add synchronisation
        check=False,
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Every dataset's run, each in its own folder (the runs are forked from a pre-imported
    interpreter, see conftest.run_cli: each costs its own work, not the imports)."""
    cwds = {data: tmp_path_factory.mktemp(data) for data in sorted(DATASETS)}
    return {data: (cwd, _run(data, cwd)) for data, cwd in cwds.items()}


@pytest.mark.parametrize("data", sorted(DATASETS))
def test_fast_dev_run_on_fixture(data, runs):
    cwd, proc = runs[data]
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "Traceback" not in out
    model = DATASETS[data][1][0].split("=")[1]
    metrics = json.loads((cwd / "logs" / "debug" / "runs" / f"{model}-{data}-seed42" / "metrics.json").read_text())
    names = ("test/miou", "test/pixel_acc") if data.startswith("voc") else ("test/acc",)
    for name in names:
        assert 0.0 <= metrics[name] <= 1.0, metrics
    if not data.startswith("voc"):  # one test batch of 2 images (fast_dev_run): a count of 2
        assert metrics["test/acc"] * 2 == pytest.approx(round(metrics["test/acc"] * 2), abs=1e-6), metrics
    assert math.isfinite(metrics["train/loss_step"])
