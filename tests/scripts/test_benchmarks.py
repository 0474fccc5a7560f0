"""CPU dry runs of the benchmark scripts (tiny sizes): they run and write their tables."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def test_gpu_check_dry_run_writes_tables(tmp_path):
    assert _load("gpu_check").main(["--dry-run", "--out", str(tmp_path)]) == 0
    layer = (tmp_path / "benchmark_layer_cpu.md").read_text()
    assert "| r18_512@2 |" in layer and "cpu" in layer
    nd = (tmp_path / "benchmark_layer_nd_cpu.md").read_text()
    for dims, routing in ((1, "softmax"), (1, "omni"), (2, "omni"), (3, "softmax"), (3, "omni")):
        assert f"### {dims}-D (`nn.Conv{dims}d`), routing={routing}" in nd
    assert "| pw1d_256@128 |" in nd and "| mnv2_dw@7 |" in nd and "| pw3d_128>256@4x14x14 |" in nd
    for dtype in ("fp32", "bf16"):
        text = (tmp_path / f"profile_cpu_{dtype}.md").read_text()
        assert "simple_cnn / dy_simple_cnn" in text and dtype in text


def test_benchmark_export_dry_run(tmp_path):
    pytest.importorskip("onnxruntime")
    md = tmp_path / "export.md"
    rows = _load("benchmark_export").main(["--pairs", "simple_cnn", "--rounds", "2", "--batch", "1", "3",
                                           "--fixed-batch1", "--forms", "onnxruntime", "--markdown", str(md)])
    expected = {(1, "dynamic"), (1, "dynamic (batch=1 file)"), (3, "dynamic"), (1, "dynamic (runtime=onnxruntime)"),
                (3, "dynamic (runtime=onnxruntime)"), (1, "dynamic (batch=1, runtime=onnxruntime)")}
    assert {(r["batch"], r["variant"]) for r in rows} == expected
    assert all(r["ratio"] > 0 for r in rows)
    assert "| dy_simple_cnn (3x28x28) | 1 | onnx | dynamic |" in md.read_text()
    # The 1-D, 3-D and omni pairs build a static network and its dynamic twin (same output shape).
    import torch

    from dyconv.layers import dynamic_layers

    bench = _load("benchmark_export")
    for name in bench.FAMILY_PAIRS:
        spec = bench.PAIRS[name]
        static, dynamic = spec.models(0.25 if spec.zoo else None)
        assert not list(dynamic_layers(static)) and list(dynamic_layers(dynamic)), name
        if name == "tcn_1d":
            x = torch.randn(2, *spec.shape)
            assert static(x).shape == dynamic(x).shape == (2, 10)


def test_benchmark_layer_default_output_is_2d_softmax(capsys):
    bench = _load("benchmark_layer")
    results = bench.main(["--shapes", "mnv2_dw@7", "--batch", "2", "--rounds", "1"])
    out = capsys.readouterr().out
    assert set(results) == {(2, "softmax", "mnv2_dw@7", 2, False), (2, "softmax", "mnv2_dw@7", 2, True)}
    # The untagged section titles and the nn.Conv2d column of the 2-D benchmark, as before --dims.
    assert "\n## batch 2, fwd\n" in out and "\n## batch 2, fwd+bwd\n" in out and "routing=" not in out
    assert re.search(r"^shape +conv2d +auto +grouped +mixture +bmm +timm", out, re.M)


def test_benchmark_layer_dims_and_routings(capsys, tmp_path):
    bench = _load("benchmark_layer")
    md = tmp_path / "nd.md"
    results = bench.main(["--dims", "1", "3", "--routing", "softmax", "sigmoid", "omni", "--shapes", "tcn_512@16",
                          "pw1d_256@128", "r3d_256@2x7x7", "--batch", "2", "1", "--rounds", "1", "--num-kernels", "2",
                          "--markdown", str(md)])
    out = capsys.readouterr().out
    assert len(results) == 3 * 3 * 2 * 2  # shapes x routings x batches x modes
    # auto's path by hand: 16 outputs < 32 -> mixture for a dense 3-tap conv, except with omni's
    # spatial attention (mixture cannot apply it); pointwise -> bmm; batch 1 -> grouped.
    assert results[(1, "softmax", "tcn_512@16", 2, False)][1] == "mixture"
    assert results[(1, "sigmoid", "tcn_512@16", 2, True)][1] == "mixture"
    assert results[(1, "omni", "tcn_512@16", 2, False)][1] == "grouped"
    assert results[(1, "omni", "pw1d_256@128", 2, False)][1] == "bmm"
    assert results[(3, "omni", "r3d_256@2x7x7", 1, True)][1] == "grouped"
    assert "mixture" not in results[(3, "omni", "r3d_256@2x7x7", 2, False)][0]
    assert "mixture" in results[(1, "omni", "pw1d_256@128", 2, False)][0]  # no spatial attention on 1x1
    for times, _ in results.values():
        assert "timm_condconv" not in times and all(v > 0 for v in times.values())
    # Printed: one tagged section per dims x routing x batch x mode, ratios to the static conv.
    assert out.count("\n## 1-D (nn.Conv1d), routing=omni: batch ") == 4
    assert "\n## 3-D (nn.Conv3d), routing=omni: batch 1, fwd+bwd (attention BatchNorm in eval mode)\n" in out
    assert re.search(r"^shape +conv3d +auto ", out, re.M)
    assert re.search(r"^tcn_512@16 +[0-9.]+ mix +[0-9.]+ \( *[0-9.]+x\)", out, re.M)
    text = md.read_text()
    assert "### 3-D (`nn.Conv3d`), routing=sigmoid" in text and "auto / best path" in text
    assert re.search(r"^\| r3d_256@2x7x7 \| [0-9.]+x \(grouped\) / [0-9.]+x \((grouped|bmm)\) \|", text, re.M)


def test_benchmark_layer_shapes_match_the_static_convs():
    """Every shape's declared output size is what nn.ConvNd computes, and the dynamic layer
    (each routing) returns the same shape, so the ratios compare equal work."""
    bench = _load("benchmark_layer")
    for dims, shapes in bench.SHAPES_BY_DIMS.items():
        for shape in shapes:
            assert shape.dims == dims
            x = torch.randn(1, shape.cin, *shape.input_size)
            cands = bench.build_candidates(shape, 2, 1, "omni")
            assert isinstance(cands["static"], (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)[dims - 1])
            cands["auto"].eval()
            with torch.no_grad():
                y = cands["static"](x)
                assert tuple(y.shape[2:]) == shape.output_size
                assert cands["auto"](x).shape == y.shape


def test_benchmark_layer_model_step_compares_malloc_settings(monkeypatch, capsys):
    """``--model-step`` times the static, dynamic and no-reuse resnet18 steps under the default
    malloc and after tune_malloc, in one process (the test process is tuned: undo the env
    record so the script accepts to run; its second phase tunes again)."""
    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    times = _load("benchmark_layer").main(["--model-step", "--batch", "2", "--image-size", "32", "--rounds", "1"])
    assert list(times) == ["default malloc", "tune_malloc"]
    names = ["resnet18", "dy resnet18 K=4", "dy resnet18 K=4, no kernel reuse"]
    assert all(list(t) == names and min(t.values()) > 0 for t in times.values())
    assert "| dy resnet18 K=4, no kernel reuse |" in capsys.readouterr().out
