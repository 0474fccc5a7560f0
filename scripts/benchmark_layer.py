"""Benchmark DynamicConv2d's computation paths against nn.Conv2d and timm's CondConv2d.

Every candidate runs on the same input, interleaved round by round in one process, so the
printed ratios compare like with like on a noisy machine. Per shape it prints median times of
nn.Conv2d, each path of DynamicConv2d, the auto choice and timm's CondConv2d (fed the same
attention), their ratio to nn.Conv2d, forward and forward+backward, at batch 32 and batch 1,
plus forward FLOPs (torch.utils.flop_counter) and bytes saved for backward.

    python scripts/benchmark_layer.py                 # every shape of the issue
    python scripts/benchmark_layer.py --quick         # fewer rounds
    python scripts/benchmark_layer.py --shapes r18_64@16 mnv2_dw@56 --batch 32
    python scripts/benchmark_layer.py --device cuda --markdown docs/benchmark_layer_cuda.md   # GPU
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from dyconv.layers import DynamicConv2d, choose_path
from dyconv.runtime import tune_malloc


@dataclass(frozen=True)
class Shape:
    name: str
    cin: int
    cout: int
    kernel: int
    size: int  # input height = width
    stride: int = 1
    groups: int = 1

    @property
    def padding(self) -> int:
        return self.kernel // 2


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


def build_candidates(shape: Shape, num_kernels: int, batch: int) -> dict[str, nn.Module]:
    args = (shape.cin, shape.cout, shape.kernel, shape.stride, shape.padding, 1, shape.groups)
    cands: dict[str, nn.Module] = {"conv2d": nn.Conv2d(*args)}
    for path in ("auto", "grouped", "mixture", "bmm"):
        if path == "bmm" and shape.groups != 1:
            continue  # bmm falls back to grouped for grouped convs
        cands[path] = DynamicConv2d(*args, num_kernels=num_kernels, path=path, temperature=1.0)
    with contextlib.suppress(ImportError):  # timm is a dev extra
        cands["timm_condconv"] = CondConvPeer(cands["grouped"])
    return cands


def memory_floor(shape: Shape, num_kernels: int, batch: int) -> float:
    """Least dynamic / static time ratio a memory-bound layer can reach: bytes it must move
    (K kernels, input, output) over those of nn.Conv2d (one kernel). Near 1 where the
    activations dominate; near K on weight-bound layers (small maps, many channels) at batch 1."""
    weight = shape.cout * shape.cin // shape.groups * shape.kernel**2
    ho = (shape.size + 2 * shape.padding - shape.kernel) // shape.stride + 1
    acts = batch * (shape.cin * shape.size**2 + shape.cout * ho * ho)
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="*", help="subset of shape names (default: all)")
    parser.add_argument("--batch", type=int, nargs="*", default=[32, 1])
    parser.add_argument("--num-kernels", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="5 rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--no-tune-malloc", action="store_true", help="keep glibc's default mmap behaviour")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the crossover rules differ: cuDNN vs oneDNN)")
    parser.add_argument("--markdown", metavar="PATH", help="also write a compact Markdown summary table to PATH")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda but CUDA is not available")
    global DEVICE
    DEVICE = torch.device(args.device)
    tuned = False if args.no_tune_malloc or DEVICE.type != "cpu" else tune_malloc()
    if args.threads:
        torch.set_num_threads(args.threads)
    rounds = 5 if args.quick else args.rounds
    shapes = [s for s in SHAPES if not args.shapes or s.name in args.shapes]
    if args.shapes and len(shapes) != len(args.shapes):
        known = ", ".join(s.name for s in SHAPES)
        sys.exit(f"unknown shape in {args.shapes}; known: {known}")
    torch.manual_seed(0)
    print(
        f"# torch {torch.__version__}, {_device_name()}, {torch.get_num_threads()} threads, K={args.num_kernels},"
        f" median of {rounds} interleaved rounds, tune_malloc={tuned}"
    )
    print("# times in ms; (x) = ratio to nn.Conv2d; auto -> the path it chose; best = fastest dynamic path")
    results: dict[tuple[str, int, bool], tuple[dict[str, float], str]] = {}
    for batch in args.batch:
        for backward in (False, True):
            mode = "fwd+bwd" if backward else "fwd"
            print(f"\n## batch {batch}, {mode}")
            header = (
                f"{'shape':<18} {'conv2d':>8} {'auto':>16} {'grouped':>14} {'mixture':>14} {'bmm':>14} {'timm':>14}"
                f" {'auto/best':>9} {'timm/auto':>9}"
            )
            if backward:
                header += f" {'MB saved conv':>13} {'MB saved auto':>13}"
            else:
                header += f" {'GFLOP conv':>10} {'GFLOP auto':>10}"
            print(header)
            for shape in shapes:
                line, t, chosen = _row(shape, args.num_kernels, batch, backward, rounds)
                results[(shape.name, batch, backward)] = (t, chosen)
                print(line, flush=True)
    if args.markdown:
        Path(args.markdown).write_text(_markdown(shapes, results, argv, rounds, tuned, args.num_kernels))
        print(f"\nwrote {args.markdown}")


def _markdown(
    shapes: list[Shape], results: dict, argv: list[str] | None, rounds: int, tuned: bool, num_kernels: int = 4
) -> str:
    """Ratios to nn.Conv2d per shape: auto (and its path), timm's CondConv2d, per batch/mode."""
    cmd = " ".join(["python scripts/benchmark_layer.py", *(argv if argv is not None else sys.argv[1:])])
    cols = sorted({(b, bw) for _, b, bw in results}, key=lambda c: (-c[0], c[1]))
    head = " | ".join(f"b{b} {'fwd+bwd' if bw else 'fwd'}: auto / timm" for b, bw in cols)
    floors = sorted({b for _, b, bw in results if not bw})
    head += "".join(f" | b{b} fwd: memory floor / auto to floor" for b in floors)
    lines = [
        f"`{cmd}` (torch {torch.__version__}, {_device_name()}, {torch.get_num_threads()} threads, K={num_kernels},"
        f" median of {rounds}"
        f" interleaved rounds, tune_malloc={tuned}). Ratios of time to `nn.Conv2d` on the same input;"
        " the path auto chose in brackets. Memory floor: bytes of K kernels + activations over those of one"
        " kernel + activations (what a layer that must read K kernels cannot beat); auto to floor: auto's ratio"
        " over it, the gap to what is possible.",
        "",
        f"| shape (Cin>Cout, /stride, @input) | {head} |",
        "| --- |" + " ---: |" * (len(cols) + len(floors)),
    ]
    for shape in shapes:
        cells = []
        for b, bw in cols:
            if (shape.name, b, bw) not in results:
                cells.append("")
                continue
            t, chosen = results[(shape.name, b, bw)]
            timm = f"{t['timm_condconv'] / t['conv2d']:.1f}x" if "timm_condconv" in t else "-"
            cells.append(f"{t['auto'] / t['conv2d']:.2f}x ({chosen}) / {timm}")
        for b in floors:
            if (shape.name, b, False) not in results:
                cells.append("")
                continue
            t, _ = results[(shape.name, b, False)]
            floor = memory_floor(shape, num_kernels, b)
            cells.append(f"{floor:.2f}x / {t['auto'] / t['conv2d'] / floor:.2f}")
        lines.append(f"| {shape.name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(t: dict[str, float], name: str, base: float, width: int = 14) -> str:
    if name not in t:
        return f"{'-':>{width}}"
    return f"{t[name] * 1e3:7.2f} ({t[name] / base:4.1f}x)".rjust(width)


def _row(shape: Shape, num_kernels: int, batch: int, backward: bool, rounds: int) -> tuple[str, dict, str]:
    cands = {k: m.to(DEVICE) for k, m in build_candidates(shape, num_kernels, batch).items()}
    x = torch.randn(batch, shape.cin, shape.size, shape.size, device=DEVICE)
    t = time_interleaved(cands, x, backward, rounds)
    base = t["conv2d"]
    ho = (shape.size + 2 * shape.padding - shape.kernel) // shape.stride + 1
    chosen = choose_path(batch, shape.cin, shape.cout, shape.groups, (shape.kernel,) * 2, ho * ho)
    best = min(v for k, v in t.items() if k in ("grouped", "mixture", "bmm"))
    auto_cell = f"{chosen[:3]} {_cell(t, 'auto', base, 0)}".rjust(16)
    timm_ratio = f"{t['timm_condconv'] / t['auto']:8.1f}x" if "timm_condconv" in t else f"{'-':>9}"
    line = (
        f"{shape.name:<18} {base * 1e3:8.2f} {auto_cell} {_cell(t, 'grouped', base)} {_cell(t, 'mixture', base)}"
        f" {_cell(t, 'bmm', base)} {_cell(t, 'timm_condconv', base)} {t['auto'] / best:8.2f}x {timm_ratio}"
    )
    if not backward:
        line += f" {fwd_flops(cands['conv2d'], x) / 1e9:10.3f} {fwd_flops(cands['auto'], x) / 1e9:10.3f}"
    else:
        line += f" {saved_bytes(cands['conv2d'], x) / 2**20:13.1f} {saved_bytes(cands['auto'], x) / 2**20:13.1f}"
    return line, t, chosen


if __name__ == "__main__":
    main()
