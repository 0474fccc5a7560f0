"""One prepared GPU session: the CUDA tests, the layer benchmark and the whole-model profile
(batch-1 latency and training step, fp32 and bf16) on CUDA, tables written to ``--out``.

    python scripts/gpu_check.py                      # on a GPU machine, ~8 minutes; tables in gpu_results/
    python scripts/gpu_check.py --dry-run --out /tmp/g   # CPU, tiny sizes, seconds (what CI runs)

Writes ``<out>/benchmark_layer_cuda.md`` (2-D, softmax), ``<out>/benchmark_layer_nd_cuda.md`` (1-D and
3-D shapes and a few 2-D ones, softmax and omni routing side by side), ``<out>/profile_cuda_fp32.md``,
``<out>/profile_cuda_bf16.md`` and ``<out>/pytest_cuda.txt``; copy the tables into docs/ and name the
GPU (they do).
Nothing in dyconv depends on a GPU: this script is how GPU numbers are produced when one is lent.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
#: models profiled on the GPU (static + dynamic twins), training batch 128
GPU_MODELS = "resnet10,resnet18,resnet50,mobilenetv2,mobilenetv3_large"
#: 2-D shapes benchmarked with omni routing too (with every 1-D and 3-D shape): a large map,
#: a weight-bound 7x7 map, a pointwise and a depthwise conv
ND_2D_SHAPES = ["r18_64@56", "r18_512@7", "mnv2_expand@56", "mnv2_dw@56"]
#: the dry run's: one cheap shape per dims
DRY_ND_SHAPES = ["pw1d_256@128", "mnv2_dw@7", "pw3d_128>256@4x14x14"]


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="gpu_results", help="directory for the tables")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes, no pytest: checks the plumbing")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = "cpu" if args.dry_run else "cuda"
    if not args.dry_run and not torch.cuda.is_available():
        sys.exit("gpu_check: CUDA is not available (use --dry-run to check the script on a CPU)")
    t0 = time.time()

    def step(msg: str) -> None:
        print(f"[gpu_check {time.time() - t0:5.0f} s] {msg}", flush=True)

    if not args.dry_run:
        step("CUDA tests")
        proc = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-o", "addopts=", "tests/layers/test_cuda.py",
             "tests/layers/test_layer.py", "-m", "not slow"],
            cwd=ROOT, capture_output=True, text=True,
        )
        (out / "pytest_cuda.txt").write_text(proc.stdout[-20000:] + proc.stderr[-5000:])
        step(f"pytest exit {proc.returncode}: {proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ''}")

    step("layer benchmark")
    layer_args = ["--device", device, "--markdown", str(out / f"benchmark_layer_{device}.md")]
    dry_layer = ["--shapes", "r18_512@2", "--batch", "2", "1", "--rounds", "1"]
    layer_args += dry_layer if args.dry_run else ["--rounds", "10"]
    benchmark_layer = _script("benchmark_layer")
    benchmark_layer.main(layer_args)

    step("layer benchmark: 1-D, 3-D, omni routing")
    nd_args = ["--device", device, "--markdown", str(out / f"benchmark_layer_nd_{device}.md"),
               "--dims", "1", "2", "3", "--routing", "softmax", "omni"]
    if args.dry_run:
        nd_args += ["--shapes", *DRY_ND_SHAPES, "--batch", "2", "--rounds", "1"]
    else:
        every_nd = [s.name for s in benchmark_layer.SHAPES_1D + benchmark_layer.SHAPES_3D]
        nd_args += ["--shapes", *every_nd, *ND_2D_SHAPES, "--rounds", "5"]
    benchmark_layer.main(nd_args)

    from dyconv.profile import main as profile_main

    for dtype in ("fp32", "bf16"):
        step(f"profile {dtype}")
        prof = [f"device={device}", f"dtype={dtype}", f"out={out / f'profile_{device}_{dtype}.md'}"]
        prof += ["models=simple_cnn", "batch=2", "rounds=1"] if args.dry_run else [
            f"models={GPU_MODELS}", "batch=128", "rounds=5"]
        profile_main(prof)
    step(f"done; tables in {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
