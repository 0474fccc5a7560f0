"""``runtime=onnxruntime`` against the standard export: exported dy_mobilenetv2 in onnxruntime.

``python -m dyconv.export ... runtime=onnxruntime`` (``export_model(..., runtime="onnxruntime")``)
runs the computed kernels of depthwise layers in onnxruntime's blocked layout
(:mod:`dyconv.utils.ort_blocked`); the default file uses standard operators only. This script
exports the static twin and the dynamic model both ways (any batch, and with ``--fixed-batch1``
also ``batch=1``), checks that the two dynamic files agree at batch 1 and 5 (relative to the
largest output: an untrained MobileNetV2's logits are tiny), and times them at batch 1, 1 thread,
interleaved in one process, printing each file's ratio to the static one.

    python scripts/ort_blocked_depthwise.py                      # dy_mobilenetv2 x0.5, 224 px
    python scripts/ort_blocked_depthwise.py --fixed-batch1 --rounds 60
    python scripts/ort_blocked_depthwise.py --no-any-batch --width 0.35 --size 32 --rounds 2   # dry run
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from dyconv.export import export_model
from dyconv.models import create_model
from dyconv.runtime import tune_malloc
from dyconv.utils.ort_blocked import block_size


def session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the comparison; returns the median ms per file at batch 1."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--fixed-batch1", action="store_true", help="also the batch=1 files")
    parser.add_argument("--no-any-batch", action="store_true", help="only the batch=1 files (a quick run)")
    args = parser.parse_args(argv)
    tune_malloc()
    torch.manual_seed(0)
    kwargs = {"num_classes": 1000, "width_mult": args.width}
    static, dynamic = create_model("mobilenetv2", **kwargs).eval(), create_model("dy_mobilenetv2", **kwargs).eval()
    example = torch.randn(2, 3, args.size, args.size)
    files: dict[str, tuple[torch.nn.Module, dict]] = {"static": (static, {})}
    if not args.no_any_batch:
        files["dynamic"] = (dynamic, {})
        files["dynamic, runtime=onnxruntime"] = (dynamic, {"runtime": "onnxruntime"})
    if args.fixed_batch1 or args.no_any_batch:
        files["dynamic batch=1"] = (dynamic, {"batch": 1})
        files["dynamic batch=1, runtime=onnxruntime"] = (dynamic, {"batch": 1, "runtime": "onnxruntime"})
    x1 = np.random.default_rng(0).standard_normal((1, 3, args.size, args.size), dtype=np.float32)
    x5 = np.random.default_rng(1).standard_normal((5, 3, args.size, args.size), dtype=np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for i, (name, (model, options)) in enumerate(files.items()):
            path = Path(tmp) / f"{i}.onnx"
            info = export_model(model, example, path, "onnx", **options)
            runs[name] = session(path)
            if "blocked_depthwise_convs" in info:
                print(f"{name}: {info['blocked_depthwise_convs']} depthwise convs in the blocked layout")
    for name in runs:
        if "runtime=onnxruntime" in name:
            reference = runs[name.replace(", runtime=onnxruntime", "")]
            for x in (x1,) if "batch=1" in name else (x1, x5):
                want = reference.run(None, {"image": x})[0]
                got = runs[name].run(None, {"image": x})[0]
                rel = float(np.abs(got - want).max() / np.abs(want).max())
                if rel > 1e-4:
                    raise SystemExit(f"{name} differs from the standard file at batch {len(x)}: {rel:.1e} relative")
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name in list(runs) if r % 2 else list(runs)[::-1]:
            t0 = time.perf_counter()
            runs[name].run(None, {"image": x1})
            times[name].append(time.perf_counter() - t0)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"onnxruntime {ort.__version__} (NCHWc block {block_size()}), dy_mobilenetv2 x{args.width} ({args.size} px), "
          f"batch 1, 1 thread, median of {args.rounds} interleaved rounds:")
    for name, v in ms.items():
        print(f"  {name:40s} {v:6.2f} ms  {v / ms['static']:.2f}x")
    return ms


if __name__ == "__main__":
    main()
