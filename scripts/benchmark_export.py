"""Exported dynamic models against their exported static twins, in onnxruntime (and torch.export,
OpenVINO).

Each model pair is exported with ``dyconv.export.export_model`` (the file ``python -m
dyconv.export`` writes by default: standard ONNX, any batch, one ``Scan`` over the samples) and,
with ``--fixed-batch1``, also as a batch-1-only file. ``--forms`` adds other forms of the dynamic
model, each checked against the default file's outputs first: ``onnxruntime`` (``runtime=
"onnxruntime"``: depthwise layers in onnxruntime's blocked conv) and ``dynamo`` (a plain
``torch.onnx.export(model, ..., dynamo=True)`` with a dynamic batch, what a user gets without
``export_model``). ``--openvino`` also times the standard files in OpenVINO (CPU, f32). All
sessions run on the same input, interleaved round by round in one process (order alternating),
so the ratios compare like with like on a noisy machine.

    python scripts/benchmark_export.py                          # the issue's two pairs, batch 1 and 8
    python scripts/benchmark_export.py --fixed-batch1 --forms onnxruntime dynamo --openvino \
        --markdown docs/benchmark_export.md
    python scripts/benchmark_export.py --pairs simple_cnn --rounds 3          # dry run, seconds
    python scripts/benchmark_export.py --pairs resnet10_omni od_mobilenetv2 tcn_1d r3d_18 --batch 1 8
                                                        # ODConv routing, 1-D and 3-D networks
    python scripts/benchmark_export.py --pairs mobilenetv2 --batch 1 --fixed-batch1 --profile  # per-op time
    python scripts/benchmark_export.py --pt2                     # torch.export programs too
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from dyconv.export import export_model
from dyconv.layers import DynamicOptions, convert_to_dynamic
from dyconv.models import create_model
from dyconv.runtime import tune_malloc


@dataclass(frozen=True)
class Pair:
    """A static model and its dynamic twin on one input shape ``(C, *spatial)``.

    ``zoo``: registered names (``create_model``; ``--width``/``--size`` apply); otherwise
    ``build()`` makes the static network and its twin is ``convert_to_dynamic`` of another
    build (K = 4, every conv but the first, copies perturbed so the attention matters)."""

    label: str
    shape: tuple[int, ...]
    zoo: tuple[str, str] | None = None
    kwargs: dict = field(default_factory=dict)
    dynamic_kwargs: dict = field(default_factory=dict)
    build: Callable[[], torch.nn.Module] | None = None

    def models(self, width: float | None) -> tuple[torch.nn.Module, torch.nn.Module]:
        torch.manual_seed(0)
        if self.zoo is None:
            static = self.build()
            dynamic = convert_to_dynamic(self.build(), DynamicOptions(num_kernels=4), skip_first=True, noise=0.1)
            return static.eval(), dynamic.eval()
        kwargs = dict(self.kwargs) | ({"width_mult": width} if width is not None else {})
        return (create_model(self.zoo[0], **kwargs).eval(),
                create_model(self.zoo[1], **kwargs, **self.dynamic_kwargs).eval())

    def input_shape(self, size: int | None) -> tuple[int, ...]:
        if size is None or self.zoo is None:
            return self.shape
        return (self.shape[0], size, size)


def _tcn_1d() -> torch.nn.Module:
    """A 1-D audio/time-series classifier (40 mel bands, dilated 3-tap convs)."""
    from torch import nn

    layers: list[nn.Module] = [nn.Conv1d(40, 64, 5, padding=2, bias=False), nn.BatchNorm1d(64), nn.ReLU()]
    for d in (1, 2, 4, 8):
        layers += [nn.Conv1d(64, 64, 3, padding=d, dilation=d, bias=False), nn.BatchNorm1d(64), nn.ReLU()]
    layers += [nn.Conv1d(64, 128, 1), nn.ReLU(), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(128, 10)]
    return nn.Sequential(*layers)


def _r3d_18() -> torch.nn.Module:
    """torchvision's video ResNet r3d_18."""
    from torchvision.models.video import r3d_18

    return r3d_18(num_classes=10)


#: name -> pair (the issue's two zoo pairs first)
PAIRS: dict[str, Pair] = {
    "resnet10": Pair("dy_resnet10", (3, 64, 64), ("resnet10", "dy_resnet10"),
                     {"num_classes": 200, "stem": "small", "width_mult": 0.25}),
    "mobilenetv2": Pair("dy_mobilenetv2", (3, 224, 224), ("mobilenetv2", "dy_mobilenetv2"),
                        {"num_classes": 1000, "width_mult": 0.5}),
    "resnet10_omni": Pair("dy_resnet10 routing=omni", (3, 64, 64), ("resnet10", "dy_resnet10"),
                          {"num_classes": 200, "stem": "small", "width_mult": 0.25}, {"routing": "omni"}),
    "od_mobilenetv2": Pair("od_mobilenetv2 (ODConv 4x)", (3, 224, 224), ("mobilenetv2", "od_mobilenetv2"),
                           {"num_classes": 1000, "width_mult": 0.5}),
    "tcn_1d": Pair("1-D TCN (DynamicConv1d)", (40, 400), build=_tcn_1d),
    "r3d_18": Pair("r3d_18 (DynamicConv3d)", (3, 8, 56, 56), build=_r3d_18),
    "simple_cnn": Pair("dy_simple_cnn", (3, 28, 28), ("simple_cnn", "dy_simple_cnn"),
                       {"num_classes": 10, "in_channels": 3}),  # tiny: the dry run
}
DEFAULT_PAIRS = ["resnet10", "mobilenetv2"]
#: The 1-D, 3-D and omni pairs (``--pairs`` takes them; issue #14).
FAMILY_PAIRS = ["resnet10_omni", "od_mobilenetv2", "tcn_1d", "r3d_18"]
LEVELS = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
          "all": "ORT_ENABLE_ALL"}


def _ort_runner(path: Path, threads: int, level: str) -> Callable[[np.ndarray], object]:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x})


def op_profile(path: Path, x: np.ndarray, threads: int, level: str, runs: int = 50) -> dict[str, tuple[float, int]]:
    """onnxruntime's profiler on ``runs`` runs: op type -> (ms per run, nodes run per run).
    The profiler adds a few microseconds per node: compare files, not with untimed runs."""
    import json

    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[level])
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(""))
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for _ in range(runs):
        session.run(None, {name: x})
    events = json.loads(Path(session.end_profiling()).read_text())
    total: dict[str, float] = {}
    count: dict[str, int] = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            op = e["args"]["op_name"]
        elif e.get("cat") == "Session" and e["name"] == "model_run":
            op = "(whole run)"
        else:
            continue
        total[op] = total.get(op, 0.0) + e["dur"] / 1e3
        count[op] = count.get(op, 0) + 1
    return {op: (t / runs, count[op] // runs) for op, t in sorted(total.items(), key=lambda kv: -kv[1])}


def _pt2_runner(model: torch.nn.Module, example: torch.Tensor, path: Path) -> Callable[[np.ndarray], object]:
    export_model(model, example, path, "pt2")
    module = torch.export.load(str(path)).module()

    def run(x: np.ndarray) -> object:
        with torch.no_grad():
            return module(torch.from_numpy(x))

    return run


def time_interleaved(runners: dict[str, Callable], x: np.ndarray, rounds: int) -> dict[str, float]:
    """Median seconds per runner, runners alternating order each round after two warm-ups."""
    times: dict[str, list[float]] = {k: [] for k in runners}
    for fn in runners.values():
        fn(x)
        fn(x)
    names = list(runners)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            runners[name](x)
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _check_agrees(runner: Callable, reference: Callable, shape: tuple[int, ...], tag: str,
                  batches: tuple[int, ...] = (1, 3)) -> None:
    """Exit unless ``runner``'s file gives ``reference``'s outputs at ``batches`` (relative to the
    largest: an untrained network's logits can be tiny)."""
    for batch in batches:
        x = np.random.default_rng(1).standard_normal((batch, *shape), dtype=np.float32)
        want, got = np.asarray(reference(x)[0]), np.asarray(runner(x)[0])
        rel = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-30))
        if rel > 1e-4:
            raise SystemExit(f"{tag}: differs from the default file by {rel:.1e} (relative) at batch {batch}")


def _ov_runner(path: Path, threads: int) -> Callable[[np.ndarray], object]:
    """OpenVINO CPU at f32 (its default bf16/f16 precision hint would change the outputs)."""
    import openvino as ov
    import openvino.properties as props
    import openvino.properties.hint as hints

    config: dict = {hints.inference_precision: ov.Type.f32}
    if threads:
        config[props.inference_num_threads] = threads
    compiled = ov.Core().compile_model(str(path), "CPU", config)
    request = compiled.create_infer_request()
    return lambda x: [request.infer({0: x})[compiled.output(0)]]


def _plain_dynamo_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    """What ``torch.onnx.export`` writes without ``export_model``: the layers' batch-independent
    form (dense convs on the K kernels, outputs mixed), no folding."""
    import logging
    import warnings

    for name in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), input_names=["image"], dynamo=True, verbose=False,
                          dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=1024)},))


def bench_pair(pair: str, args: argparse.Namespace, workdir: Path) -> list[dict]:
    spec = PAIRS[pair]
    static, dynamic = spec.models(args.width)
    shape = spec.input_shape(args.size)
    example = torch.randn(2, *shape)
    runners: dict[str, Callable] = {}
    for tag, model in (("static", static), ("dynamic", dynamic)):
        path = workdir / f"{pair}_{tag}.onnx"
        export_model(model, example, path, "onnx")
        runners[f"onnx {tag}"] = _ort_runner(path, args.threads, args.ort_level)
        if args.openvino:
            runners[f"openvino {tag}"] = _ov_runner(path, args.threads)
        if args.pt2:
            runners[f"pt2 {tag}"] = _pt2_runner(model, example, workdir / f"{pair}_{tag}.pt2")
    fixed: dict[str, Callable] = {}  # batch-1 files
    if args.fixed_batch1:
        path = workdir / f"{pair}_dynamic_b1.onnx"
        export_model(dynamic, example, path, "onnx", batch=1)
        fixed["onnx dynamic (batch=1 file)"] = _ort_runner(path, args.threads, args.ort_level)
        if args.openvino:
            fixed["openvino dynamic (batch=1 file)"] = _ov_runner(path, args.threads)
    reference = runners["onnx dynamic"]
    if "onnxruntime" in args.forms:
        for batch, tag in ((None, "dynamic (runtime=onnxruntime)"), (1, "dynamic (batch=1, runtime=onnxruntime)")):
            if batch == 1 and not args.fixed_batch1:
                continue
            path = workdir / f"{pair}_dynamic_{batch}_ort.onnx"
            export_model(dynamic, example, path, "onnx", batch=batch, runtime="onnxruntime")
            runner = _ort_runner(path, args.threads, args.ort_level)
            _check_agrees(runner, reference, shape, tag, (1, 3) if batch is None else (1,))
            (runners if batch is None else fixed)[f"onnx {tag}"] = runner
    if "dynamo" in args.forms:
        path = workdir / f"{pair}_dynamic_dynamo.onnx"
        _plain_dynamo_onnx(dynamic, example, path)
        tag = "dynamic (plain torch.onnx dynamo=True)"
        runners[f"onnx {tag}"] = _ort_runner(path, args.threads, args.ort_level)
        _check_agrees(runners[f"onnx {tag}"], reference, shape, tag)
        if args.openvino:
            runners[f"openvino {tag}"] = _ov_runner(path, args.threads)
    if args.profile:
        x1 = np.random.default_rng(0).standard_normal((1, *shape), dtype=np.float32)
        files = {"static": workdir / f"{pair}_static.onnx", "dynamic": workdir / f"{pair}_dynamic.onnx"}
        if args.fixed_batch1:
            files["dynamic (batch=1 file)"] = workdir / f"{pair}_dynamic_b1.onnx"
        for tag, path in files.items():
            ops = op_profile(path, x1, args.threads, args.ort_level)
            print(f"# profile {spec.label} {tag}, batch 1, ms per run (nodes):",
                  ", ".join(f"{op} {ms:.2f} ({n})" for op, (ms, n) in ops.items()), flush=True)
    rows = []
    for batch in args.batch:
        x = np.random.default_rng(0).standard_normal((batch, *shape), dtype=np.float32)
        active = dict(runners) | (fixed if batch == 1 else {})
        # onnxruntime and torch are timed in separate groups: torch's allocations between
        # onnxruntime runs slowed the (then) If file's batch-1 branch several-fold here.
        t = time_interleaved({k: v for k, v in active.items() if k.startswith("onnx")}, x, args.rounds)
        if args.openvino:
            t |= time_interleaved({k: v for k, v in active.items() if k.startswith("openvino")}, x, args.rounds)
        if args.pt2:
            t |= time_interleaved({k: v for k, v in active.items() if k.startswith("pt2")}, x, args.rounds)
        for name, sec in t.items():
            runtime, tag = name.split(" ", 1)
            if tag == "static":
                continue
            base = t[f"{runtime} static"]
            rows.append({"pair": pair, "label": spec.label, "input": "x".join(map(str, shape)), "batch": batch,
                         "runtime": runtime, "variant": tag,
                         "static_ms": base * 1e3, "dynamic_ms": sec * 1e3, "ratio": sec / base})
    return rows


def format_rows(rows: list[dict]) -> str:
    lines = ["| model (input) | batch | runtime | dynamic file | static ms | dynamic ms | dynamic / static |",
             "| --- | ---: | --- | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['label']} ({r['input']}) | {r['batch']} | {r['runtime']} | {r['variant']} |"
                     f" {r['static_ms']:.2f} | {r['dynamic_ms']:.2f} | {r['ratio']:.2f}x |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="*", default=DEFAULT_PAIRS, choices=list(PAIRS))
    parser.add_argument("--batch", type=int, nargs="*", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads (and torch's); 0: each library's default (one per core). "
                             "Time other settings in separate processes: sessions' thread pools slow each other")
    parser.add_argument("--ort-level", choices=list(LEVELS), default="all", help="onnxruntime graph optimisation")
    parser.add_argument("--size", type=int, default=None, help="override every input side")
    parser.add_argument("--width", type=float, default=None, help="override width_mult")
    parser.add_argument("--pt2", action="store_true", help="also time torch.export programs (eager kernels)")
    parser.add_argument("--fixed-batch1", action="store_true", help="also time a batch=1 export of the dynamic model")
    parser.add_argument("--forms", nargs="*", default=[], choices=["onnxruntime", "dynamo"],
                        help="also time the dynamic model exported with runtime=onnxruntime (onnxruntime's blocked "
                             "depthwise conv) and/or by a plain torch.onnx.export(dynamo=True)")
    parser.add_argument("--openvino", action="store_true",
                        help="also time the standard ONNX files in OpenVINO (CPU, f32 precision)")
    parser.add_argument("--profile", action="store_true",
                        help="also print onnxruntime's per-op-type time at batch 1 for each file")
    parser.add_argument("--markdown", metavar="PATH", help="also write the table, with the command, to PATH")
    parser.add_argument("--no-tune-malloc", action="store_true",
                        help="keep glibc's default mmap behaviour (affects the pt2 rows: torch allocates per run)")
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error("--threads must be >= 0 (0: the libraries' defaults)")
    if args.threads:
        torch.set_num_threads(args.threads)
    # What dyconv's entry points do (dyconv.runtime): without it the pt2 programs' activations
    # are page-faulted in afresh on every run, more for whichever program allocates more.
    tuned = False if args.no_tune_malloc else tune_malloc()
    import onnxruntime as ort

    threads = f"{args.threads} intra-op thread" if args.threads else "default intra-op threads"
    openvino = ""
    if args.openvino:
        import openvino as ov

        openvino = f"OpenVINO {ov.__version__.split('-')[0]} (CPU, f32), "
    head = (f"onnxruntime {ort.__version__} (graph optimisation {args.ort_level}, {threads}), {openvino}"
            f"torch {torch.__version__}, tune_malloc={tuned}; median of {args.rounds} interleaved rounds")
    print("#", head, flush=True)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.pairs:
            new = bench_pair(pair, args, Path(tmp))
            rows += new
            print(format_rows(new), flush=True)
    if args.markdown:
        cmd = " ".join(["python scripts/benchmark_export.py", *(argv if argv is not None else sys.argv[1:])])
        Path(args.markdown).write_text(f"`{cmd}`: {head}.\n\n{format_rows(rows)}")
        print(f"wrote {args.markdown}")
    return rows


if __name__ == "__main__":
    main()
