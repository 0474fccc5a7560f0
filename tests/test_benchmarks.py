"""CPU dry runs of the benchmark scripts (tiny sizes): they run and write their tables."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


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
    for dtype in ("fp32", "bf16"):
        text = (tmp_path / f"profile_cpu_{dtype}.md").read_text()
        assert "simple_cnn / dy_simple_cnn" in text and dtype in text


def test_benchmark_export_dry_run(tmp_path):
    pytest.importorskip("onnxruntime")
    md = tmp_path / "export.md"
    rows = _load("benchmark_export").main(["--pairs", "simple_cnn", "--rounds", "2", "--batch", "1", "3",
                                           "--fixed-batch1", "--markdown", str(md)])
    assert {(r["batch"], r["variant"]) for r in rows} == {(1, "dynamic"), (1, "dynamic (batch=1 file)"),
                                                         (3, "dynamic")}
    assert all(r["ratio"] > 0 for r in rows)
    assert "| dy_simple_cnn (28 px) | 1 | onnx | dynamic |" in md.read_text()
