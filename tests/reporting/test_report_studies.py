"""``dyconv.report`` on studies: several sweep folders, ``+arm`` arms against the static (or the
first) arm, the attention over training from TensorBoard events or ``attention_history.json``."""

from __future__ import annotations

import csv
import json
import math
import os
import statistics
from pathlib import Path

import pytest
from scipy import stats
from torch.utils.tensorboard import SummaryWriter

from dyconv.analysis.history import HISTORY_FILE, read_history, record_epoch
from dyconv.report import build_report, main
from dyconv.reporting.attention import job_history, tensorboard_history

# test/acc per (arm, width) over seeds 0, 1, 2 (the Fashion-MNIST routing study's layout)
ACC = {
    ("resnet10_static", "0.0625"): [0.90, 0.91, 0.905],
    ("resnet10_softmax", "0.0625"): [0.92, 0.915, 0.93],
    ("resnet10_omni", "0.0625"): [0.89, 0.90, 0.893],
    ("resnet10_static", "0.125"): [0.93, 0.932, 0.931],
    ("resnet10_softmax", "0.125"): [0.935, 0.93, 0.94],
    ("resnet10_omni", "0.125"): [0.925, 0.93, 0.927],
}
LAYERS = ("model.layer1.0.conv1", "model.layer2.0.conv1")


def _job(sweep: Path, num: int, overrides: list[str], metrics: dict | None, status: str = "completed") -> Path:
    job = sweep / ",".join(sorted(overrides))
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if status != "incomplete":
        (job / "job_status.json").write_text(json.dumps({"status": status, "num": num, "overrides": overrides}))
    return job


def _spread(arm: str, seed: int, epoch: int, layer: int) -> float:
    """A made-up attention spread that grows over epochs (0 for the static arm: none logged)."""
    return 1e-4 * (1 + epoch) * (1 + layer) * (1 + 0.1 * seed) * (2.0 if "omni" in arm else 1.0)


def _ratio(arm: str, seed: int, epoch: int) -> float:
    return 1.0 - 0.1 * epoch - 0.01 * seed


def _events(job: Path, arm: str, seed: int, epochs: int = 3, steps_per_epoch: int = 10) -> None:
    """TensorBoard scalars as Lightning logs them: ``epoch`` at every logged step, the attention
    metrics at each epoch's last step (the validation), sigmoid arms with gates and no entropy."""
    writer = SummaryWriter(str(job / "tensorboard"))
    kind = "gate" if "sigmoid" in arm else "pi"
    for epoch in range(epochs):
        step = (epoch + 1) * steps_per_epoch - 1
        writer.add_scalar("epoch", epoch, step - 5)
        writer.add_scalar("train/loss_step", 1.0 / (epoch + 1), step - 5)
        writer.add_scalar("epoch", epoch, step)
        for i, layer in enumerate(LAYERS):
            writer.add_scalar(f"attention/{layer}/{kind}_sample_std", _spread(arm, seed, epoch, i), step)
            writer.add_scalar(f"attention/{layer}/{kind}_0", 0.25, step)
        if kind == "pi":
            writer.add_scalar("attention/entropy_ratio", _ratio(arm, seed, epoch), step)
    writer.close()


@pytest.fixture
def study(tmp_path) -> list[Path]:
    """Two folders (one per width, as the study ran) under logs/fmnist/multiruns/."""
    folders = []
    for width in ("0.0625", "0.125"):
        sweep = tmp_path / "logs" / "fmnist" / "multiruns" / f"routing_x{width}"
        num = 0
        for (arm, w), accs in ACC.items():
            if w != width:
                continue
            for seed, acc in enumerate(accs):
                overrides = [f"+arm={arm}", f"model.width_mult={width}", f"seed={seed}", "experiment=fmnist_routing",
                             f"sweep_name=routing_x{width}"]
                params = 1000.0 * (1 if arm.endswith("static") else 4) * float(width) * 16
                job = _job(sweep, num, overrides, {"test/acc": acc, "model/params": params,
                                                   "model/gflops": float(width) / 100})
                if not arm.endswith("static"):
                    _events(job, arm, seed)
                num += 1
        # a job stopped by SIGTERM (no job_status.json): partial events, not in the report
        stopped = _job(sweep, num, ["+arm=resnet10_softmax", f"model.width_mult={width}", "seed=3",
                                    "experiment=fmnist_routing", f"sweep_name=routing_x{width}"], None, "incomplete")
        _events(stopped, "resnet10_softmax", 9, epochs=1)
        folders.append(sweep)
    return folders


def test_report_merges_folders_and_compares_every_arm_with_the_static_arm(study, tmp_path):
    result = build_report(study, tmp_path / "out")
    groups = {(g.overrides["arm"], g.overrides["model.width_mult"]): g for g in result["groups"]}
    assert set(groups) == set(ACC)  # sweep_name differs between the folders but names no group
    assert result["varying"] == ["arm", "model.width_mult"]
    comparisons = {c.label: c for c in result["comparisons"]}
    assert set(comparisons) == {f"resnet10_{r} - resnet10_static (model.width_mult={w})"
                                for r in ("softmax", "omni") for w in ("0.0625", "0.125")}
    for (arm, width), accs in ACC.items():
        if arm == "resnet10_static":
            continue
        c = comparisons[f"{arm} - resnet10_static (model.width_mult={width})"]
        base = ACC[("resnet10_static", width)]
        ci = stats.ttest_ind(accs, base, equal_var=False).confidence_interval(0.95)  # independent reference
        assert c.diff == pytest.approx(statistics.fmean(accs) - statistics.fmean(base))
        assert (c.low, c.high) == pytest.approx((ci.low, ci.high))
        assert c.baseline is groups[("resnet10_static", width)]
    text = result["report"].read_text()
    assert "18 completed, 2 failed or incomplete" in text and "routing_x0.125/+arm=resnet10_softmax" in text
    assert text.count("(incomplete): no status yet (running, or stopped: relaunch it with ckpt_path=last); "
                      "last logged epoch 0") == 2
    assert "| arm=resnet10_softmax model.width_mult=0.125 | 3 | 93.50 ± 0.50 | 8,000 |" in text


def test_report_of_arms_without_a_static_arm_compares_with_the_first(tmp_path):
    sweep = tmp_path / "ablation"
    arms = {"decay_annealed": [0.93, 0.94, 0.935], "nodecay_annealed": [0.92, 0.925, 0.93],
            "decay_t1": [0.9, 0.91, 0.9]}
    num = 0
    for arm, accs in arms.items():
        for seed, acc in enumerate(accs):
            _job(sweep, num, [f"+arm=cnn1d_ablation_{arm}", f"seed={seed}"], {"test/acc": acc})
            num += 1
    result = build_report(sweep)
    assert [c.label for c in result["comparisons"]] == [
        "cnn1d_ablation_nodecay_annealed - cnn1d_ablation_decay_annealed",
        "cnn1d_ablation_decay_t1 - cnn1d_ablation_decay_annealed"]
    c = result["comparisons"][1]
    assert c.diff == pytest.approx(statistics.fmean(arms["decay_t1"]) - statistics.fmean(arms["decay_annealed"]))


def test_attention_over_training_from_tensorboard_events(study, tmp_path):
    result = build_report(study, tmp_path / "out")
    curves = {c.label: c for c in result["attention"]}
    # static arms logged no attention; the stopped job (seed 3) is not averaged in
    assert set(curves) == {f"arm=resnet10_{r} model.width_mult={w}" for r in ("softmax", "omni")
                           for w in ("0.0625", "0.125")}
    with open(tmp_path / "out" / "attention_over_training.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 * 3
    for row in rows:
        arm, epoch = row["group"].split()[0].removeprefix("arm="), int(row["epoch"])
        spreads = [statistics.fmean(_spread(arm, s, epoch, i) for i in range(len(LAYERS))) for s in range(3)]
        ratios = [_ratio(arm, s, epoch) for s in range(3)]
        assert int(row["n"]) == 3
        assert float(row["sample_std mean"]) == pytest.approx(statistics.fmean(spreads), rel=1e-6)
        assert float(row["sample_std std"]) == pytest.approx(statistics.stdev(spreads), rel=1e-5)
        assert float(row["entropy_ratio mean"]) == pytest.approx(statistics.fmean(ratios), rel=1e-6)
        assert float(row["entropy_ratio std"]) == pytest.approx(statistics.stdev(ratios), rel=1e-4)
    png = tmp_path / "out" / "attention_over_training.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "![attention_over_training](attention_over_training.png)" in result["report"].read_text()


def test_attention_reader_takes_the_epoch_scalar_the_last_value_and_no_links(tmp_path):
    job = tmp_path / "sweep" / "job"
    writer = SummaryWriter(str(job / "tensorboard"))
    writer.add_scalar("epoch", 0, 9)
    writer.add_scalar("attention/a/pi_sample_std", 0.1, 9)
    writer.add_scalar("epoch", 1, 19)
    writer.add_scalar("attention/a/pi_sample_std", 0.2, 19)
    writer.close()
    resumed = SummaryWriter(str(job / "tensorboard"), filename_suffix=".resumed")  # epoch 1 again, later
    resumed.add_scalar("epoch", 1, 19)
    resumed.add_scalar("attention/a/pi_sample_std", 0.3, 19)
    resumed.close()
    outside = tmp_path / "elsewhere"
    other = SummaryWriter(str(outside))
    other.add_scalar("attention/b/pi_sample_std", 5.0, 29)
    other.close()
    (job / "tensorboard" / "linked").symlink_to(outside, target_is_directory=True)
    os.symlink(next(outside.iterdir()), job / "tensorboard" / "events.out.tfevents.0.linked")
    history = tensorboard_history(job)
    assert history == {0: {"attention/a/pi_sample_std": pytest.approx(0.1)},
                       1: {"attention/a/pi_sample_std": pytest.approx(0.3)}}


def test_attention_reader_reads_a_file_being_written_up_to_its_last_whole_record(tmp_path):
    job = tmp_path / "job"
    writer = SummaryWriter(str(job / "tensorboard"))
    for epoch in range(3):
        writer.add_scalar("epoch", epoch, epoch)
        writer.add_scalar("attention/entropy_ratio", 1.0 - 0.1 * epoch, epoch)
    writer.close()
    (path,) = (job / "tensorboard").iterdir()
    path.write_bytes(path.read_bytes()[:-7])  # the last record cut short
    history = tensorboard_history(job)
    assert sorted(history)[:2] == [0, 1] and history[1]["attention/entropy_ratio"] == pytest.approx(0.9)


def test_history_file_is_preferred_over_tensorboard_and_replays_drop_later_epochs(study, tmp_path):
    job = next(d for d in study[0].iterdir() if "resnet10_softmax" in d.name and "seed=0" in d.name)
    path = job / HISTORY_FILE
    record_epoch(path, 0, 9, {"attention/x/pi_sample_std": 1.0, "attention/entropy_ratio": 0.5})
    record_epoch(path, 1, 19, {"attention/x/pi_sample_std": 2.0, "attention/entropy_ratio": 0.4})
    record_epoch(path, 2, 29, {"attention/x/pi_sample_std": 9.0, "attention/entropy_ratio": 0.1})
    record_epoch(path, 1, 19, {"attention/x/pi_sample_std": 3.0, "attention/entropy_ratio": 0.3})  # resumed
    assert read_history(path) == {0: {"attention/x/pi_sample_std": 1.0, "attention/entropy_ratio": 0.5},
                                  1: {"attention/x/pi_sample_std": 3.0, "attention/entropy_ratio": 0.3}}
    result = build_report(study, tmp_path / "out")
    curve = next(c for c in result["attention"] if c.label == "arm=resnet10_softmax model.width_mult=0.0625")
    others = [statistics.fmean(_spread("resnet10_softmax", s, 1, i) for i in range(len(LAYERS))) for s in (1, 2)]
    assert curve.spread[1][0] == pytest.approx(statistics.fmean([3.0, *others]))
    assert curve.n == [3, 3, 2]  # this run's history stops at epoch 1
    assert sorted(set(curve.sources)) == ["history", "tensorboard"]
    # A run resumed by code that writes the history (from epoch 1 on): TensorBoard fills epoch 0.
    path.unlink()
    record_epoch(path, 1, 19, {"attention/x/pi_sample_std": 3.0, "attention/entropy_ratio": 0.3})
    history, source = job_history(job)
    assert source == "history+tensorboard" and sorted(history) == [0, 1, 2]
    assert history[1] == {"attention/x/pi_sample_std": 3.0, "attention/entropy_ratio": 0.3}
    assert history[0]["attention/entropy_ratio"] == pytest.approx(_ratio("resnet10_softmax", 0, 0))
    path.write_text("{not json")
    assert read_history(path) == {}


def test_report_refuses_what_cannot_be_merged_in_one_line(study, tmp_path):
    with pytest.raises(SystemExit, match="several sweep folders need --out"):
        main([str(d) for d in study])
    other = tmp_path / "logs" / "mnist1d" / "multiruns" / "routing"
    _job(other, 0, ["+arm=cnn1d_static", "seed=0"], {"test/acc": 0.9})
    with pytest.raises(SystemExit, match=r"different tasks \(fmnist, mnist1d\)"):
        build_report([study[0], other], tmp_path / "out")
    with pytest.raises(SystemExit, match="is given twice"):
        build_report([study[0], study[0]], tmp_path / "out")
    copy = tmp_path / "logs" / "fmnist" / "multiruns" / "copy"
    job = next(d for d in study[0].iterdir() if d.is_dir() and "seed=0" in d.name)
    _job(copy, 0, (job / ".hydra" / "overrides.yaml").read_text().replace("- ", "").split(), {"test/acc": 0.5})
    with pytest.raises(SystemExit) as exc:
        build_report([study[0], copy], tmp_path / "out")
    message = str(exc.value.code)
    assert "repeats" in message and "pass each run once" in message and "\n" not in message
    assert not (tmp_path / "out" / "report.md").exists()
    assert not math.isnan(build_report(study, tmp_path / "out")["comparisons"][0].diff)


def test_sigmoid_arm_has_a_gate_spread_and_no_entropy(tmp_path):
    sweep = tmp_path / "routing"
    num = 0
    for arm, accs in {"cnn1d_static": [0.9, 0.91], "cnn1d_sigmoid": [0.92, 0.91]}.items():
        for seed, acc in enumerate(accs):
            job = _job(sweep, num, [f"+arm={arm}", f"seed={seed}"], {"test/acc": acc})
            if arm != "cnn1d_static":
                _events(job, arm, seed, epochs=2)
            num += 1
    result = build_report(sweep)
    (curve,) = result["attention"]
    assert (curve.label, curve.kind, curve.has_entropy) == ("arm=cnn1d_sigmoid", "gate", False)
    spreads = [statistics.fmean(_spread("cnn1d_sigmoid", s, 1, i) for i in range(len(LAYERS))) for s in range(2)]
    assert curve.spread[1][0] == pytest.approx(statistics.fmean(spreads))
    assert [c.label for c in result["comparisons"]] == ["cnn1d_sigmoid - cnn1d_static"]
    assert (sweep / "attention_over_training.png").read_bytes()[:4] == b"\x89PNG"
