"""Benchmark the dynamic layers' computation paths against the static nn.Conv1d/2d/3d.

Every candidate runs on the same input, interleaved round by round in one process, so the
printed ratios compare like with like on a noisy machine. Per shape it prints median times of
the static conv, each path of the dynamic layer, the auto choice (and the path it chose) and,
in 2-D, timm's CondConv2d (fed the same attention), their ratio to the static conv, forward
and forward+backward, at batch 32 and batch 1, plus forward FLOPs (torch.utils.flop_counter)
and bytes saved for backward. ``--dims`` picks 2-D (image), 1-D (audio, time series) and/or
3-D (video) shapes, ``--routing`` the attention (softmax: the paper, sigmoid: CondConv, omni:
ODConv); one section per dims x routing x batch x mode.

    python scripts/benchmark_layer.py                 # every 2-D shape, softmax routing
    python scripts/benchmark_layer.py --quick         # fewer rounds
    python scripts/benchmark_layer.py --shapes r18_64@16 mnv2_dw@56 --batch 32
    python scripts/benchmark_layer.py --dims 1 3 --routing softmax sigmoid omni --batch 8 1
    python scripts/benchmark_layer.py --device cuda --markdown docs/benchmark_layer_cuda.md   # GPU
    python scripts/benchmark_layer.py --model-step --batch 32 --image-size 112   # training steps, malloc

``--model-step`` instead times plain-PyTorch SGD steps (no Lightning, no dyconv entry point) of
torchvision's resnet18, static and converted with ``convert_to_dynamic(num_kernels=4)``, with
the layers' per-sample kernel memory reused (the default) and without (``kernel_workspace =
None``), first under glibc's default malloc and then, in the same process, after
``dyconv.runtime.tune_malloc()``: the ratios show what the tuning still adds.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dyconv.layers import DynamicConv2d, choose_path, convert_to_dynamic, dynamic_layers
from dyconv.layers.dynamic_conv import DYNAMIC_CONVS, large_alloc_cheap
from dyconv.runtime import tune_malloc

STATIC_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
ROUTINGS = ("softmax", "sigmoid", "omni")


@dataclass(frozen=True)
class Shape:
    name: str
    cin: int
    cout: int
    kernel: int  # the same along every spatial dim
    size: int | tuple[int, ...]  # input length, height = width, or (depth, height, width)
    stride: int = 1
    groups: int = 1
    dims: int = 2

    @property
    def padding(self) -> int:
        return self.kernel // 2

    @property
    def input_size(self) -> tuple[int, ...]:
        return self.size if isinstance(self.size, tuple) else (self.size,) * self.dims

    @property
    def output_size(self) -> tuple[int, ...]:
        return tuple((n + 2 * self.padding - self.kernel) // self.stride + 1 for n in self.input_size)


SHAPES = [
    # ResNet-18 3x3 convs at 64 px input (imagenet stem) and at 224 px.
    Shape("r18_64@16", 64, 64, 3, 16),
    Shape("r18_128@8", 128, 128, 3, 8),
    Shape("r18_256@4", 256, 256, 3, 4),
    Shape("r18_512@2", 512, 512, 3, 2),
    Shape("r18_64@56", 64, 64, 3, 56),
    Shape("r18_512@7", 512, 512, 3, 7),
    # ResNet-10 with the small stem at 64 px (the Tiny ImageNet models).
    Shape("r10s_64@64", 64, 64, 3, 64),
    Shape("r10s_128@32", 128, 128, 3, 32),
    # 64 channels at 32x32 (stage 2 of the x0.5 model): the layer issue #15's batch-1 target is set on.
    Shape("r10s_64@32", 64, 64, 3, 32),
    Shape("r10s_256@16", 256, 256, 3, 16),
    Shape("r10s_512@8", 512, 512, 3, 8),
    # Its strided 3x3 convs (first conv of stages 2-4), named by input map size.
    Shape("r10s_64>128/2@64", 64, 128, 3, 64, stride=2),
    Shape("r10s_128>256/2@32", 128, 256, 3, 32, stride=2),
    Shape("r10s_256>512/2@16", 256, 512, 3, 16, stride=2),
    # MobileNetV2 at 224 px: 1x1 expand / depthwise / 1x1 project at 56x56 and 7x7.
    Shape("mnv2_expand@56", 24, 144, 1, 56),
    Shape("mnv2_dw@56", 144, 144, 3, 56, groups=144),
    Shape("mnv2_project@56", 144, 24, 1, 56),
    Shape("mnv2_expand@7", 160, 960, 1, 7),
    Shape("mnv2_dw@7", 960, 960, 3, 7, groups=960),
    Shape("mnv2_project@7", 960, 160, 1, 7),
]

SHAPES_1D = [
    # Audio / time series: a 3-tap conv over 1000 steps (e.g. 16 kHz features), a TCN block on
    # 128 steps, the same on a short sequence (16 outputs: under MIXTURE_MAX_PIXELS), a
    # pointwise conv and a Conformer-style depthwise conv (31 taps).
    Shape("audio_64@1000", 64, 64, 3, 1000, dims=1),
    Shape("tcn_256@128", 256, 256, 3, 128, dims=1),
    Shape("tcn_512@16", 512, 512, 3, 16, dims=1),
    Shape("pw1d_256@128", 256, 256, 1, 128, dims=1),
    Shape("conformer_dw_256@128", 256, 256, 31, 128, groups=256, dims=1),
]

SHAPES_3D = [
    # Video, r3d_18-like 3x3x3 convs on an 8-frame 112 px clip (named by depth x height x width)
    # and a pointwise expansion.
    Shape("r3d_64@8x28x28", 64, 64, 3, (8, 28, 28), dims=3),
    Shape("r3d_128@4x14x14", 128, 128, 3, (4, 14, 14), dims=3),
    Shape("r3d_256@2x7x7", 256, 256, 3, (2, 7, 7), dims=3),
    Shape("pw3d_128>256@4x14x14", 128, 256, 1, (4, 14, 14), dims=3),
]

#: --dims -> its shapes
SHAPES_BY_DIMS = {1: SHAPES_1D, 2: SHAPES, 3: SHAPES_3D}


class CondConvPeer(nn.Module):
    """timm's CondConv2d routed by the same attention as DynamicConv2d (fair comparison)."""

    def __init__(self, dyn: DynamicConv2d) -> None:
        super().__init__()
        from timm.layers import CondConv2d

        self.dyn = dyn
        self.conv = CondConv2d(
            dyn.in_channels,
            dyn.out_channels,
            dyn.kernel_size[0],
            dyn.stride[0],
            dyn.padding[0],
            dyn.dilation[0],
            dyn.groups,
            dyn.bias is not None,
            dyn.num_kernels,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x, self.dyn.attention(x))


def spatial_attention(shape: Shape, routing: str) -> bool:
    """Whether the layer has ODConv's per-sample spatial attention (omni, kernel larger than 1)."""
    return routing == "omni" and shape.kernel > 1


def layer_paths(shape: Shape, routing: str = "softmax") -> list[str]:
    """The fixed paths the layer offers for ``shape``: ``mixture`` cannot apply a spatial
    attention (the layer refuses it); ``bmm`` is left out for grouped convs (as in 2-D so far)."""
    paths = ["grouped"]
    if not spatial_attention(shape, routing):
        paths.append("mixture")
    if shape.groups == 1:
        paths.append("bmm")
    return paths


def build_candidates(shape: Shape, num_kernels: int, batch: int, routing: str = "softmax") -> dict[str, nn.Module]:
    """``static`` (the nn.ConvNd), ``auto`` and each fixed path, plus timm's CondConv2d in 2-D
    for the routings that give plain kernel weights."""
    args = (shape.cin, shape.cout, shape.kernel, shape.stride, shape.padding, 1, shape.groups)
    cands: dict[str, nn.Module] = {"static": STATIC_CONVS[shape.dims](*args)}
    dynamic = DYNAMIC_CONVS[shape.dims]
    for path in ("auto", *layer_paths(shape, routing)):
        cands[path] = dynamic(*args, num_kernels=num_kernels, path=path, temperature=1.0, routing=routing)
    if shape.dims == 2 and routing != "omni":
        with contextlib.suppress(ImportError):  # timm is a dev extra
            cands["timm_condconv"] = CondConvPeer(cands["grouped"])
    return cands


def memory_floor(shape: Shape, num_kernels: int, batch: int) -> float:
    """Least dynamic / static time ratio a memory-bound layer can reach: bytes it must move
    (K kernels, input, output) over those of the static conv (one kernel). Near 1 where the
    activations dominate; near K on weight-bound layers (small maps, many channels) at batch 1."""
    weight = shape.cout * shape.cin // shape.groups * shape.kernel**shape.dims
    acts = batch * (shape.cin * math.prod(shape.input_size) + shape.cout * math.prod(shape.output_size))
    return (num_kernels * weight + acts) / (weight + acts)


def fwd_flops(module: nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(x)
    return counter.get_total_flops()


def saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of activations autograd keeps for backward (parameters excluded)."""
    params = {p.data_ptr() for p in module.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        if t.data_ptr() not in params:
            seen[t.data_ptr()] = max(seen.get(t.data_ptr(), 0), t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        module(x.requires_grad_(True))
    return sum(seen.values())


def time_interleaved(cands: dict[str, nn.Module], x: torch.Tensor, backward: bool, rounds: int) -> dict[str, float]:
    times: dict[str, list[float]] = {name: [] for name in cands}
    xg = x.detach().requires_grad_(backward)
    cuda = x.device.type == "cuda"

    def step(m: nn.Module) -> None:
        if backward:
            m(xg).sum().backward()
        else:
            with torch.no_grad():
                m(xg)
        if cuda:
            torch.cuda.synchronize()

    for m in cands.values():  # warm-up (allocator, oneDNN primitive cache)
        step(m)
        step(m)
    for _ in range(rounds):
        for name, m in cands.items():
            t0 = time.perf_counter()
            step(m)
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(v) for name, v in times.items()}


DEVICE = torch.device("cpu")


def _device_name() -> str:
    return f"cuda ({torch.cuda.get_device_name(DEVICE)})" if DEVICE.type == "cuda" else "cpu"


def _static_name(dims: int) -> str:
    return f"conv{dims}d"


def _section_title(dims: int, routing: str, tagged: bool) -> str:
    """``1-D (nn.Conv1d), routing=omni: `` when not the default 2-D softmax run, else empty."""
    return f"{dims}-D (nn.Conv{dims}d), routing={routing}: " if tagged else ""


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns ``{(dims, routing, shape, batch, backward): (times, auto's path)}``
    (times in seconds by candidate: ``static``, ``auto``, each path, ``timm_condconv``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="*", help="subset of shape names (default: all of --dims)")
    parser.add_argument(
        "--dims",
        type=int,
        nargs="+",
        choices=(1, 2, 3),
        default=None,
        help="spatial dims: 1 (nn.Conv1d), 2 (nn.Conv2d, default), 3 (nn.Conv3d); default with --shapes: any",
    )
    parser.add_argument("--routing", nargs="+", choices=ROUTINGS, default=["softmax"], help="attention routings")
    parser.add_argument("--batch", type=int, nargs="*", default=[32, 1])
    parser.add_argument("--num-kernels", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="5 rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-tune-malloc", action="store_true", help="keep glibc's default mmap behaviour")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the crossover rules differ: cuDNN vs oneDNN)")
    parser.add_argument("--markdown", metavar="PATH", help="also write a compact Markdown summary table to PATH")
    parser.add_argument("--model-step", action="store_true", help="time resnet18 SGD steps with and without "
                        "tune_malloc instead (--batch: the first value, --rounds, --image-size)")
    parser.add_argument("--image-size", type=int, default=112, help="--model-step input side (default 112)")
    args = parser.parse_args(argv)
    if args.model_step:
        return model_steps(args.batch[0] if args.batch else 32, args.image_size, 3 if args.quick else args.rounds,
                           args.num_kernels, args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda but CUDA is not available")
    global DEVICE
    DEVICE = torch.device(args.device)
    tuned = False if args.no_tune_malloc or DEVICE.type != "cpu" else tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = 5 if args.quick else args.rounds
    dims_list = list(dict.fromkeys(args.dims or ([1, 2, 3] if args.shapes else [2])))
    routings = list(dict.fromkeys(args.routing))
    pool = [s for d in dims_list for s in SHAPES_BY_DIMS[d]]
    shapes = [s for s in pool if not args.shapes or s.name in args.shapes]
    if args.shapes and len(shapes) != len(set(args.shapes)):
        known = ", ".join(s.name for s in pool)
        sys.exit(f"unknown shape in {args.shapes} for --dims {' '.join(map(str, dims_list))}; known: {known}")
    dims_list = [d for d in dims_list if any(s.dims == d for s in shapes)]
    # The default run (2-D, softmax) prints exactly what it always has; any other adds a tag.
    tagged = dims_list != [2] or routings != ["softmax"]
    torch.manual_seed(0)
    print(
        f"# torch {torch.__version__}, {_device_name()}, {torch.get_num_threads()} threads, K={args.num_kernels},"
        f" median of {rounds} interleaved rounds, tune_malloc={tuned}"
    )
    static = "the static nn.ConvNd" if tagged else "nn.Conv2d"
    print(f"# times in ms; (x) = ratio to {static}; auto -> the path it chose; best = fastest dynamic path")
    results: dict[tuple[int, str, str, int, bool], tuple[dict[str, float], str]] = {}
    for dims in dims_list:
        dim_shapes = [s for s in shapes if s.dims == dims]
        width = max(18, max(len(s.name) for s in dim_shapes) + 1)
        for routing in routings:
            for batch in args.batch:
                for backward in (False, True):
                    mode = "fwd+bwd" if backward else "fwd"
                    note = (
                        ""
                        if training_mode(batch, True, routing) or not backward
                        else " (attention BatchNorm in eval mode)"
                    )
                    print(f"\n## {_section_title(dims, routing, tagged)}batch {batch}, {mode}{note}")
                    header = (
                        f"{'shape':<{width}} {_static_name(dims):>8} {'auto':>16} {'grouped':>14} {'mixture':>14}"
                        f" {'bmm':>14} {'timm':>14} {'auto/best':>9} {'timm/auto':>9}"
                    )
                    if backward:
                        header += f" {'MB saved conv':>13} {'MB saved auto':>13}"
                    else:
                        header += f" {'GFLOP conv':>10} {'GFLOP auto':>10}"
                    print(header)
                    for shape in dim_shapes:
                        line, t, chosen = _row(shape, args.num_kernels, batch, backward, rounds, routing, width)
                        results[(dims, routing, shape.name, batch, backward)] = (t, chosen)
                        print(line, flush=True)
    if args.markdown:
        Path(args.markdown).write_text(_markdown(shapes, results, argv, rounds, tuned, args.num_kernels))
        print(f"\nwrote {args.markdown}")
    return results


def _markdown(
    shapes: list[Shape], results: dict, argv: list[str] | None, rounds: int, tuned: bool, num_kernels: int = 4
) -> str:
    """Ratios to the static conv per shape: auto (and its path), timm's CondConv2d (2-D) or the
    fastest path, per batch/mode; one table per dims x routing (untitled for the default run)."""
    cmd = " ".join(["python scripts/benchmark_layer.py", *(argv if argv is not None else sys.argv[1:])])
    sections = list(dict.fromkeys((d, r) for d, r, *_ in results))
    tagged = sections != [(2, "softmax")]
    static = "the static `nn.ConvNd`" if tagged else "`nn.Conv2d`"
    lines = [
        f"`{cmd}` (torch {torch.__version__}, {_device_name()}, {torch.get_num_threads()} threads, K={num_kernels},"
        f" median of {rounds}"
        f" interleaved rounds, tune_malloc={tuned}). Ratios of time to {static} on the same input;"
        " the path auto chose in brackets. Memory floor: bytes of K kernels + activations over those of one"
        " kernel + activations (what a layer that must read K kernels cannot beat); auto to floor: auto's ratio"
        " over it, the gap to what is possible.",
    ]
    for dims, routing in sections:
        sec = {(n, b, bw): v for (d, r, n, b, bw), v in results.items() if (d, r) == (dims, routing)}
        has_timm = any("timm_condconv" in t for t, _ in sec.values())
        other = "timm" if has_timm else "best path"
        cols = sorted({(b, bw) for _, b, bw in sec}, key=lambda c: (-c[0], c[1]))
        head = " | ".join(f"b{b} {'fwd+bwd' if bw else 'fwd'}: auto / {other}" for b, bw in cols)
        floors = sorted({b for _, b, bw in sec if not bw})
        head += "".join(f" | b{b} fwd: memory floor / auto to floor" for b in floors)
        lines.append("")
        if tagged:
            lines += [f"### {dims}-D (`nn.Conv{dims}d`), routing={routing}", ""]
        lines += [
            f"| shape (Cin>Cout, /stride, @input) | {head} |",
            "| --- |" + " ---: |" * (len(cols) + len(floors)),
        ]
        for shape in shapes:
            if shape.dims != dims:
                continue
            cells = []
            for b, bw in cols:
                if (shape.name, b, bw) not in sec:
                    cells.append("")
                    continue
                t, chosen = sec[(shape.name, b, bw)]
                if has_timm:
                    peer = f"{t['timm_condconv'] / t['static']:.1f}x" if "timm_condconv" in t else "-"
                else:
                    best = min(layer_paths(shape, routing), key=lambda p: t[p])
                    peer = f"{t[best] / t['static']:.2f}x ({best})"
                cells.append(f"{t['auto'] / t['static']:.2f}x ({chosen}) / {peer}")
            for b in floors:
                if (shape.name, b, False) not in sec:
                    cells.append("")
                    continue
                t, _ = sec[(shape.name, b, False)]
                floor = memory_floor(shape, num_kernels, b)
                cells.append(f"{floor:.2f}x / {t['auto'] / t['static'] / floor:.2f}")
            lines.append(f"| {shape.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(t: dict[str, float], name: str, base: float, width: int = 14) -> str:
    if name not in t:
        return f"{'-':>{width}}"
    return f"{t[name] * 1e3:7.2f} ({t[name] / base:4.1f}x)".rjust(width)


def training_mode(batch: int, backward: bool, routing: str) -> bool:
    """Forward rows measure inference (eval mode); fwd+bwd rows a training step, except omni
    at batch 1: its attention's BatchNorm (as in ODConv) cannot train on one sample, so its
    running statistics are used there."""
    return backward and not (batch == 1 and routing == "omni")


def auto_path(shape: Shape, batch: int, routing: str = "softmax") -> str:
    """The path ``path='auto'`` takes for ``shape`` at ``batch`` on the benchmark's device."""
    cheap_alloc = DEVICE.type != "cpu" or large_alloc_cheap()
    return choose_path(
        batch,
        shape.cin,
        shape.cout,
        shape.groups,
        [shape.kernel] * shape.dims,
        math.prod(shape.output_size),
        cheap_alloc,
        spatial_attention=spatial_attention(shape, routing),
    )


def _row(
    shape: Shape,
    num_kernels: int,
    batch: int,
    backward: bool,
    rounds: int,
    routing: str = "softmax",
    width: int = 18,
) -> tuple[str, dict, str]:
    cands = {k: m.to(DEVICE) for k, m in build_candidates(shape, num_kernels, batch, routing).items()}
    for m in cands.values():
        m.train(training_mode(batch, backward, routing))
    x = torch.randn(batch, shape.cin, *shape.input_size, device=DEVICE)
    t = time_interleaved(cands, x, backward, rounds)
    base = t["static"]
    chosen = auto_path(shape, batch, routing)
    best = min(t[p] for p in layer_paths(shape, routing))
    auto_cell = f"{chosen[:3]} {_cell(t, 'auto', base, 0)}".rjust(16)
    timm_ratio = f"{t['timm_condconv'] / t['auto']:8.1f}x" if "timm_condconv" in t else f"{'-':>9}"
    line = (
        f"{shape.name:<{width}} {base * 1e3:8.2f} {auto_cell} {_cell(t, 'grouped', base)} {_cell(t, 'mixture', base)}"
        f" {_cell(t, 'bmm', base)} {_cell(t, 'timm_condconv', base)} {t['auto'] / best:8.2f}x {timm_ratio}"
    )
    if not backward:
        line += f" {fwd_flops(cands['static'], x) / 1e9:10.3f} {fwd_flops(cands['auto'], x) / 1e9:10.3f}"
    else:
        line += f" {saved_bytes(cands['static'], x) / 2**20:13.1f} {saved_bytes(cands['auto'], x) / 2**20:13.1f}"
    return line, t, chosen


def _step_models(num_kernels: int) -> dict[str, nn.Module]:
    """torchvision resnet18 (10 classes), its K-kernel conversion, and that conversion without
    per-sample kernel reuse (how the layer allocated before it had a workspace)."""
    import torchvision

    torch.manual_seed(0)
    static = torchvision.models.resnet18(num_classes=10)
    dynamic = convert_to_dynamic(static, num_kernels=num_kernels, inplace=False)
    fresh = convert_to_dynamic(static, num_kernels=num_kernels, inplace=False)
    for _, layer in dynamic_layers(fresh):
        layer.kernel_workspace = None
    return {"resnet18": static, f"dy resnet18 K={num_kernels}": dynamic,
            f"dy resnet18 K={num_kernels}, no kernel reuse": fresh}


def model_steps(batch: int, size: int, rounds: int, num_kernels: int, threads: int | None) -> dict:
    """Median seconds per plain-PyTorch SGD step of each :func:`_step_models` model, under the
    process's malloc as it starts and then after :func:`tune_malloc`; returns ``{phase: {model: s}}``."""
    if threads:
        torch.set_num_threads(threads)
    if large_alloc_cheap():
        sys.exit("--model-step compares malloc settings: run it without MALLOC_MMAP_MAX_/LD_PRELOAD allocators")
    models = _step_models(num_kernels)
    optims = {name: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for name, m in models.items()}
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 10, (batch,))

    def step(name: str) -> float:
        start = time.perf_counter()
        optims[name].zero_grad(set_to_none=True)
        nn.functional.cross_entropy(models[name](x), y).backward()
        optims[name].step()
        return time.perf_counter() - start

    print(f"# torch {torch.__version__}, cpu, {torch.get_num_threads()} threads, resnet18 SGD steps at batch {batch},"
          f" {size}x{size} input, median of {rounds} interleaved rounds per malloc setting")
    times: dict[str, dict[str, float]] = {}
    for phase in ("default malloc", "tune_malloc"):
        if phase == "tune_malloc" and not tune_malloc():
            print("tune_malloc() does not apply on this platform (not glibc)")
            break
        for name in models:
            step(name)  # warm-up: first-touch of the weights, oneDNN primitives
        samples: dict[str, list[float]] = {name: [] for name in models}
        for _ in range(rounds):
            for name in models:
                samples[name].append(step(name))
        times[phase] = {name: statistics.median(v) for name, v in samples.items()}
    print("\n| model | s/step, default malloc | s/step, after tune_malloc() | default / tuned |")
    print("| --- | ---: | ---: | ---: |")
    for name in models:
        untuned, tuned = times["default malloc"][name], times.get("tune_malloc", {}).get(name, float("nan"))
        print(f"| {name} | {untuned:.3f} | {tuned:.3f} | {untuned / tuned:.2f}x |")
    return times


if __name__ == "__main__":
    main()
