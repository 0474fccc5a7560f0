"""`python -m dyconv.inspect`: numbers checked against hand-computed attention, the CLI on a real run,
static models refused with one message, segmentation runs without per-class means."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import pytest
import torch

from dyconv.inspect import inspect_checkpoint, temperature_sweep, write_outputs
from dyconv.layers import dynamic_layers
from trained import make_checkpoint, real_run

SMALL_RESNET = ["model=dy_resnet10", "data.image_size=32", "data.in_channels=3", "model.width_mult=0.25",
                "data.splits=[8,40,8]", "data.batch_size=16"]
UNIFORM, FORCED = "layer1.0.conv1", "layer4.0.downsample.0"  # first and last dynamic conv of dy_resnet10
K_UNIFORM, K_FORCED = 4, 5  # 1/4 is exact in the float32 softmax: entropy is log 4 to float64 rounding
FORCED_LOGIT = 50.0


def _force_attention(model: torch.nn.Module) -> None:
    """UNIFORM: attention logits all 0 whatever the input -> pi = 1/K exactly. FORCED: logits
    (50, 0, ..., 0) at temperature 1 -> kernel 0 with probability 1 - 4e-22."""
    layers = dict(dynamic_layers(model))
    for name in (UNIFORM, FORCED):
        layers[name].attn_fc2.weight.zero_()
        layers[name].attn_fc2.bias.zero_()
    layers[FORCED].attn_fc2.bias[0] = FORCED_LOGIT
    layers[FORCED].temperature.fill_(1.0)


@pytest.fixture(scope="module")
def forced_ckpt(tmp_path_factory) -> Path:
    kernels = [K_UNIFORM] + [4] * 9 + [K_FORCED]
    return make_checkpoint(
        tmp_path_factory.mktemp("forced") / "checkpoints" / "last.ckpt",
        [*SMALL_RESNET, f"model.num_kernels=[{','.join(map(str, kernels))}]"],
        _force_attention,
    )


def _entropy(p: list[float]) -> float:
    return -sum(x * math.log(x) for x in p if x > 0)


def test_hand_computed_attention(forced_ckpt, tmp_path):
    result = inspect_checkpoint(forced_ckpt, "val", temperatures=[1.0, 30.0], temperature_batches=3)
    layers = result.summary.layers
    assert len(layers) == 11 and all(int(la.count) == 40 for la in layers.values())

    uni = layers[UNIFORM]
    assert uni.num_kernels == K_UNIFORM
    assert uni.mean_entropy == pytest.approx(math.log(K_UNIFORM), abs=1e-12)
    torch.testing.assert_close(uni.mean_pi, torch.full((K_UNIFORM,), 1 / K_UNIFORM, dtype=torch.float64))

    forced = layers[FORCED]
    assert forced.num_kernels == K_FORCED
    assert forced.mean_entropy < 1e-18
    torch.testing.assert_close(forced.win_rate, torch.tensor([1.0, 0, 0, 0, 0], dtype=torch.float64))
    assert float(forced.mean_pi[0]) == pytest.approx(1.0, abs=1e-15)

    # Per-class: every class's mean is 1/K for the uniform layer; counts are the split's labels.
    from dyconv.runs.rebuild import load_trained_run

    dm = load_trained_run(forced_ckpt).datamodule()
    dm.setup("validate")
    labels = torch.cat([y for _, y in dm.val_dataloader()])
    counts = torch.bincount(labels, minlength=10).to(torch.float64)
    torch.testing.assert_close(uni.class_count, counts)
    seen = counts > 0
    torch.testing.assert_close(uni.class_mean_pi[seen], torch.full((int(seen.sum()), K_UNIFORM), 1 / K_UNIFORM,
                                                                    dtype=torch.float64))

    # Temperature sweep: the uniform layer stays uniform; the forced one follows softmax(50/T).
    assert sorted(result.sweep) == [1.0, 30.0]  # the trained temperatures (30 and 1) are in the list
    assert all(result.sweep[t][UNIFORM] == pytest.approx(1.0, abs=1e-9) for t in result.sweep)
    z = math.exp(FORCED_LOGIT / 30.0)
    p = [z / (z + K_FORCED - 1)] + [1 / (z + K_FORCED - 1)] * (K_FORCED - 1)
    assert result.sweep[30.0][FORCED] == pytest.approx(_entropy(p) / math.log(K_FORCED), rel=1e-6)
    assert result.sweep[1.0][FORCED] < 1e-18
    assert result.trained_temperatures[FORCED] == 1.0 and result.trained_temperatures[UNIFORM] == 30.0

    # The files hold the same numbers.
    files = write_outputs(result, tmp_path / "out")
    rows = {r["layer"]: r for r in csv.DictReader((tmp_path / "out" / "layers.csv").open())}
    assert float(rows[UNIFORM]["entropy"]) == pytest.approx(math.log(K_UNIFORM), abs=1e-12)
    assert float(rows[UNIFORM]["entropy_ratio"]) == pytest.approx(1.0, abs=1e-12)
    assert float(rows[FORCED]["win_rate_0"]) == 1.0 and rows[FORCED]["mean_pi_4"] != ""
    assert rows[UNIFORM]["mean_pi_4"] == ""  # K = 4: no such column value
    per_class = [r for r in csv.DictReader((tmp_path / "out" / "per_class.csv").open()) if r["layer"] == UNIFORM]
    assert sum(int(r["samples"]) for r in per_class) == 40
    sweep_rows = list(csv.DictReader((tmp_path / "out" / "temperature.csv").open()))
    assert len(sweep_rows) == 2 * 11
    names = {p.name for p in files}
    assert {"entropy.png", "mean_pi.png", "win_rate.png", "temperature.png"} <= names
    for png in (p for p in files if p.suffix == ".png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_temperature_sweep_restores_every_layer(forced_ckpt):
    from dyconv.runs.rebuild import load_trained_run

    model = load_trained_run(forced_ckpt).model
    before = {n: float(layer.temperature) for n, layer in dynamic_layers(model)}
    assert len(set(before.values())) == 2
    x = torch.randn(2, 3, 32, 32)
    sweep = temperature_sweep(model, [x], [0.5, 100.0])
    assert {n: float(layer.temperature) for n, layer in dynamic_layers(model)} == before
    assert sweep[100.0][FORCED] > sweep[0.5][FORCED]
    with pytest.raises(ValueError, match="temperatures must all be > 0"):
        temperature_sweep(model, [x], [2.0, 0.0])
    assert {n: float(layer.temperature) for n, layer in dynamic_layers(model)} == before  # even on error


def test_cli_on_a_real_run_writes_tables_and_plots(cli, tmp_path_factory):
    run_dir = real_run(tmp_path_factory.getbasetemp())
    proc = cli("inspect", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "temperatures=[1,5]")
    (out_dir,) = (run_dir / "inspect").glob("val_*")  # <split>_<time>: its own folder
    assert {p.name for p in out_dir.iterdir()} >= {".hydra", "inspect.log", "resolved_config.yaml"}
    for name in ("layers.csv", "per_class.csv", "temperature.csv", "entropy.png", "mean_pi.png", "win_rate.png",
                 "temperature.png", "class_mean_pi_features.2.0.png"):
        assert (out_dir / name).is_file(), name
    (row,) = list(csv.DictReader((out_dir / "layers.csv").open()))
    assert row["layer"] == "features.2.0" and int(row["samples"]) == 64  # the val split
    # Mean per-sample entropy <= entropy of the mean attention (concavity), which is <= log K.
    mean_pi = [float(row[f"mean_pi_{k}"]) for k in range(4)]
    assert 0.0 < float(row["entropy"]) <= _entropy(mean_pi) + 1e-6 <= math.log(4) + 1e-6
    assert sum(float(row[f"mean_pi_{k}"]) for k in range(4)) == pytest.approx(1.0, abs=1e-6)
    assert sum(float(row[f"win_rate_{k}"]) for k in range(4)) == pytest.approx(1.0, abs=1e-9)
    temps = {float(r["temperature"]) for r in csv.DictReader((out_dir / "temperature.csv").open())}
    assert {1.0, 5.0} < temps  # plus the trained temperature
    assert "features.2.0" in proc.stdout and "entropy/logK" in proc.stdout and str(out_dir) in proc.stdout


def test_each_launch_into_a_fixed_output_dir_gets_its_own_folder(cli, tmp_path_factory, tmp_path):
    """Launched twice with one output_dir, the second launch's Hydra files, log and outputs all go
    to <output_dir>+1: the first folder keeps its own .hydra/ and log lines."""
    run_dir = real_run(tmp_path_factory.getbasetemp())
    out = tmp_path / "attn"
    args = [f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", f"output_dir={out}", "max_batches=1",
            "temperatures=[1]", "temperature_batches=1", "split=val"]
    cli("inspect", *args)
    first = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    cli("inspect", *args[:-1], "split=test")
    assert {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()} == first
    second = tmp_path / "attn+1"
    assert {".hydra", "inspect.log", "layers.csv", "resolved_config.yaml"} <= {p.name for p in second.iterdir()}
    assert "split=test" in (second / ".hydra" / "overrides.yaml").read_text()
    assert "split: test" in (second / "resolved_config.yaml").read_text()


def test_static_model_is_refused_with_one_message(cli, tmp_path):
    ckpt = make_checkpoint(tmp_path / "static" / "checkpoints" / "last.ckpt", ["model=simple_cnn"])
    proc = cli("inspect", f"ckpt_path={ckpt}", check=False)
    assert proc.returncode != 0
    assert "static model 'simple_cnn'" in proc.stderr and "no dynamic convolutions" in proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr


def test_segmentation_run_has_no_per_class_means(tmp_path):
    from fakedata import make_voc

    make_voc(tmp_path / "data", n_val=3)
    ckpt = make_checkpoint(
        tmp_path / "seg" / "checkpoints" / "last.ckpt",
        ["data=voc", "model=dy_deeplabv3plus", f"data.root={tmp_path / 'data'}", "data.image_size=64",
         "model.width_mult=0.25", "model.backbone_width_mult=0.25", "data.batch_size=2", "data.num_workers=0"],
    )
    result = inspect_checkpoint(ckpt, "val", temperatures=[1.0], temperature_batches=1)
    assert not result.per_class
    assert all(int(la.count) == 3 for la in result.summary.layers.values())
    names = {p.name for p in write_outputs(result, tmp_path / "out")}
    assert "layers.csv" in names and "per_class.csv" not in names


@pytest.mark.parametrize("routing", ["sigmoid", "omni"])
def test_inspect_reports_each_routing(tmp_path, routing):
    """CondConv gates: no entropy, no temperature sweep (the temperature is unused); ODConv: the
    kernel softmax with its sweep plus the sigmoid attentions; tables, CSV and figures name the routing."""
    from dyconv.inspect import format_report

    ckpt = make_checkpoint(tmp_path / routing / "checkpoints" / "last.ckpt",
                           [*SMALL_RESNET, "model.width_mult=0.125", f"++model.routing={routing}"])
    result = inspect_checkpoint(ckpt, "val", max_batches=1, temperatures=[1.0, 30.0], temperature_batches=1)
    assert set(result.summary.routings.values()) == {routing} and len(result.summary.layers) == 11
    files = {p.name for p in write_outputs(result, tmp_path / "out")}
    rows = {r["layer"]: r for r in csv.DictReader((tmp_path / "out" / "layers.csv").open())}
    assert {r["routing"] for r in rows.values()} == {routing} and int(rows[UNIFORM]["samples"]) == 16
    per_class = list(csv.DictReader((tmp_path / "out" / "per_class.csv").open()))
    report = format_report(result)
    if routing == "sigmoid":
        assert result.sweep == {} and result.trained_temperatures == {}
        assert not {"entropy", "entropy_ratio", "mean_pi_0"} & set(rows[UNIFORM])
        gates = [float(rows[UNIFORM][f"mean_gate_{k}"]) for k in range(4)]
        assert float(rows[UNIFORM]["gate_sum"]) == pytest.approx(sum(gates), rel=1e-9)
        assert {"mean_gate.png", "gate_on.png", "win_rate.png"} <= files and "entropy.png" not in files
        assert "temperature.csv" not in files and "mean_gate_0" in per_class[0]
        assert "Kernel gates (sigmoid, CondConv)" in report and "Temperature sweep: none" in report
        assert "Kernel softmax" not in report
    else:
        assert sorted(result.sweep) == [1.0, 30.0] and len(result.sweep[1.0]) == 11
        assert rows[UNIFORM]["spatial_mean"] != "" and rows[FORCED]["spatial_mean"] == ""  # 1x1 downsample
        assert 0 < float(rows[UNIFORM]["in_mean"]) < 1 and float(rows[UNIFORM]["in_sample_std"]) >= 0
        assert {"entropy.png", "mean_pi.png", "omni_attention.png", "temperature.png"} <= files
        assert "ODConv sigmoid attentions (omni)" in report and "mean_pi_0" in per_class[0]
    kernel_line = next(line for line in report.splitlines() if line.startswith(UNIFORM + " "))
    assert kernel_line.split()[1:3] == [routing, "4"]


def test_report_names_the_routing_of_every_layer():
    """A model mixing the three routings: one table per kind of kernel weights, each layer once
    in it with its routing; omni's sigmoid attentions in their own table ('-' where absent)."""
    from dyconv.analysis import AttentionRecorder, AttentionSummary
    from dyconv.inspect import Inspection, format_report
    from dyconv.layers import DynamicConv2d

    torch.manual_seed(0)
    model = torch.nn.Sequential(
        DynamicConv2d(3, 4, 3, padding=1, temperature=1.0),
        DynamicConv2d(4, 4, 1, routing="sigmoid"),
        DynamicConv2d(4, 4, 3, padding=1, groups=4, num_kernels=2, routing="omni", temperature=1.0),
    ).eval()
    summary = AttentionSummary.for_model(model)
    with torch.no_grad(), AttentionRecorder(model, summary):
        model(torch.randn(4, 3, 16, 16))
    report = format_report(Inspection(Path("x.ckpt"), "val", summary, trained_temperatures={"0": 1.0, "2": 1.0}))
    lines = report.splitlines()
    assert "routing softmax, sigmoid, omni" in lines[0] and "trained temperature 1" in lines[0]
    kernel_rows = [line.split()[:2] for line in lines if line.startswith(("0 ", "2 "))]
    assert kernel_rows[:2] == [["0", "softmax"], ["2", "omni"]]
    (gate_line,) = [line for line in lines if line.startswith("1 ")]
    assert gate_line.split()[1:3] == ["sigmoid", "4"]  # K; the gate sum follows
    assert float(gate_line.split()[3]) == pytest.approx(float(summary.layers["1"].mean_weight.sum()), abs=1e-4)
    omni_line = [line for line in lines if line.startswith("2 ")][-1]
    assert omni_line.split()[6] == "-" and omni_line.count("/") == 4  # in and spatial; out absent (depthwise)


# ---------------------------------------------------------------- refusals, run folders, resolved_config.yaml


def _hydra_stub(folder: Path, task: str) -> Path:
    """What Hydra writes into the run folder before the job function runs."""
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        (folder / ".hydra" / name).write_text(f"{name} of this launch\n")
    (folder / f"{task}.log").write_text("")
    return folder


def _inspect_command(*overrides: str):
    from hydra import compose, initialize_config_dir

    from dyconv.config import CONF_DIR

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("inspect", overrides=list(overrides))


def test_device_cuda_without_cuda_is_a_config_error(monkeypatch):
    from dyconv.errors import ConfigError
    from dyconv.inspection import _device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match=rf"device={name} but torch sees no CUDA device; use device=cpu"):
            _device(name)
    assert _device("cpu") == torch.device("cpu") and _device("auto") == torch.device("cpu")


def test_refusals_leave_no_folder_and_results_keep_their_config(forced_ckpt, tmp_path):
    """A refused launch removes the folder Hydra made for it; a successful one writes
    resolved_config.yaml (absolute checkpoint path, epoch, global step); a failed relaunch into
    the same folder keeps the results and their resolved_config.yaml."""
    import yaml

    from dyconv.errors import ConfigError
    from dyconv.inspect import run_inspection

    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.save({**torch.load(forced_ckpt, weights_only=False), "epoch": 3, "global_step": 42}, ckpt)
    out = tmp_path / "run" / "inspect" / "fixed"
    args = [f"ckpt_path={ckpt}", f"output_dir={out}", f"paths.output_dir={out}", "max_batches=1",
            "temperatures=[1]", "temperature_batches=1", "device=cpu", "tune_malloc=false"]

    _hydra_stub(out, "inspect")
    with pytest.raises(ConfigError, match="split must be 'val' or 'test'"):
        run_inspection(_inspect_command(*args, "split=train2"))
    assert not out.exists()

    _hydra_stub(out, "inspect")
    run_inspection(_inspect_command(*args))
    resolved = yaml.safe_load((out / "resolved_config.yaml").read_text())
    assert resolved["checkpoint"] == {"path": str(ckpt), "epoch": 3, "global_step": 42}
    assert resolved["ckpt_path"] == str(ckpt) and resolved["split"] == "val" and resolved["max_batches"] == 1
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.suffix != ".log"}
    assert "layers.csv" in before

    _hydra_stub(out, "inspect")  # the failed relaunch's .hydra files
    with pytest.raises(ConfigError, match="split must be 'val' or 'test'"):
        run_inspection(_inspect_command(*args, "split=train2"))
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.suffix != ".log"} == before


def test_a_second_inspection_never_replaces_or_mixes_with_the_first(forced_ckpt, tmp_path):
    """Written twice into one folder (a fixed output_dir), the second inspection goes to <folder>+1;
    one with fewer outputs (no temperature sweep) leaves no older temperature.csv beside its own."""
    first = inspect_checkpoint(forced_ckpt, "val", max_batches=1, temperatures=[1.0], temperature_batches=1)
    second = inspect_checkpoint(forced_ckpt, "val", max_batches=1, temperatures=[], temperature_batches=0)
    out = tmp_path / "attn"
    files = write_outputs(first, out)
    assert {p.parent for p in files} == {out} and (out / "temperature.csv").is_file()
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    files = write_outputs(second, out)
    assert {p.parent for p in files} == {tmp_path / "attn+1"}
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    names = {p.name for p in (tmp_path / "attn+1").iterdir()}
    assert "layers.csv" in names and "temperature.csv" not in names and "resolved_config.yaml" in names
    assert f"output_dir: {tmp_path / 'attn+1'}" in (tmp_path / "attn+1" / "resolved_config.yaml").read_text()
    assert not [p for p in tmp_path.rglob(".*tmp")]


def test_an_inspection_that_fails_while_producing_its_outputs_writes_nothing(forced_ckpt, tmp_path, monkeypatch):
    import dyconv.analysis.plots as plots

    result = inspect_checkpoint(forced_ckpt, "val", max_batches=1, temperatures=[1.0], temperature_batches=1)

    def broken(*args, **kwargs):
        raise RuntimeError("plotting failed")

    monkeypatch.setattr(plots, "temperature_figure", broken)
    with pytest.raises(RuntimeError, match="plotting failed"):
        write_outputs(result, tmp_path / "attn")
    assert not (tmp_path / "attn").exists()  # before: layers.csv and the other figures were there
