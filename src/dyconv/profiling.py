"""Whole-model profiling: every registered model, static next to dynamic, at its natural input
size; parameters, forward FLOPs of one input (``torch.utils.flop_counter``, 2 per MAC), batch-1 eval
latency and one training step (forward, cross-entropy, backward, SGD step) at the training batch.

Static and dynamic are timed interleaved in one process, the order alternating each round; a ratio
is the median over rounds of that round's dynamic / static time (with ``stat="min"``: the ratio of
the minima). ``python -m dyconv.profile`` (:mod:`dyconv.profile`) is the command line over this.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dyconv.models import create_model, get_model_builder, is_model, list_models
from dyconv.utils.model_stats import count_flops, count_params

__all__ = ["DEFAULT_BATCH", "DTYPES", "NATURAL_INPUTS", "STATS", "ModelInput", "environment", "format_table",
           "one_line", "profile_models"]


@dataclass(frozen=True)
class ModelInput:
    """How a model family is profiled: builder kwargs, one input's shape (C, *spatial: 1-D or 2-D),
    training batch."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] = (3, 224, 224)
    batch: int | None = None  # None: the global default
    note: str = ""


#: Natural input per family (the static name); dynamic twins use the same.
NATURAL_INPUTS: dict[str, ModelInput] = {
    "simple_cnn": ModelInput({"num_classes": 10, "in_channels": 1}, (1, 28, 28), note="MNIST"),
    "cnn1d": ModelInput({"num_classes": 10}, (1, 40), note="MNIST-1D"),
    "resnet10": ModelInput({"num_classes": 200, "stem": "small"}, (3, 64, 64), note="Tiny ImageNet, small stem"),
    "resnet18": ModelInput({"num_classes": 1000}, (3, 224, 224), note="ImageNet"),
    "resnet34": ModelInput({"num_classes": 1000}, (3, 224, 224), note="ImageNet"),
    "resnet50": ModelInput({"num_classes": 1000}, (3, 224, 224), note="ImageNet"),
    "mobilenetv2": ModelInput({"num_classes": 1000}, (3, 224, 224), note="ImageNet"),
    "mobilenetv3_small": ModelInput({"num_classes": 1000}, (3, 224, 224), note="ImageNet"),
    "mobilenetv3_large": ModelInput({"num_classes": 1000}, (3, 224, 224), note="ImageNet"),
    # VOC trains on 513 crops; 257 keeps a CPU run in minutes (FLOPs scale with the pixel count).
    "deeplabv3plus": ModelInput({"num_classes": 21}, (3, 257, 257), batch=8, note="VOC, 21 classes"),
}
_ORDER = list(NATURAL_INPUTS)
DEFAULT_BATCH = 32
STATS: dict[str, Callable[[Sequence[float]], float]] = {"median": statistics.median, "min": min}
#: ``dtype=`` option -> autocast dtype (None: plain float32)
DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def one_line(e: BaseException) -> str:
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip())


def _pairs(names: Sequence[str] | None) -> list[tuple[str, list[str]]]:
    """Group model names into ``(family, [static, dynamic])``: a ``dy_`` or ``od_`` (ODConv)
    name brings its static twin, a static name its ``dy_`` twin."""
    if names is None:
        names = list_models()
    for n in names:
        get_model_builder(n)  # unknown name: ValueError with close matches
    families: dict[tuple[str, str], list[str]] = {}
    for n in names:
        prefix = n[:3] if n[:3] in ("dy_", "od_") else "dy_"
        base = n[3:] if n.startswith(prefix) else n
        families[(base, prefix)] = [m for m in (base, prefix + base) if is_model(m)]
    order = sorted(families, key=lambda k: (_ORDER.index(k[0]) if k[0] in _ORDER else len(_ORDER), k))
    return [(k[0], families[k]) for k in order]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], Any], device: torch.device, reps: int = 1) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / reps


@dataclass
class _Bench:
    name: str
    model: nn.Module
    x1: torch.Tensor
    xb: torch.Tensor
    target: torch.Tensor
    optimizer: torch.optim.Optimizer
    params: int
    flops: int
    latency: list[float] = field(default_factory=list)
    train: list[float] = field(default_factory=list)
    reps: int = 1
    amp: torch.dtype | None = None  # autocast dtype (bf16), None: float32

    def _autocast(self) -> Any:
        return torch.autocast(self.x1.device.type, dtype=self.amp, enabled=self.amp is not None)

    def forward_b1(self) -> None:
        self.model.eval()
        with torch.inference_mode(), self._autocast():
            self.model(self.x1)

    def train_step(self) -> None:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            loss = F.cross_entropy(self.model(self.xb), self.target)
        loss.backward()
        self.optimizer.step()


def _build(name: str, spec: ModelInput, batch: int, size: int | None, device: torch.device) -> _Bench:
    torch.manual_seed(0)
    model = create_model(name, **spec.kwargs).to(device)
    c, *spatial = spec.shape
    if size is not None:
        spatial = [size] * len(spatial)
    x1 = torch.randn(1, c, *spatial, device=device)
    xb = torch.randn(batch, c, *spatial, device=device)
    model.eval()
    try:
        with torch.no_grad():
            out = model(x1)
    except RuntimeError as e:
        raise ValueError(
            f"{name} cannot take a {'x'.join(map(str, (c, *spatial)))} input"
            + (f" (size={size}); use a larger size or leave size out" if size is not None else "")
            + f": {one_line(e)}"
        ) from None
    num_classes = out.shape[1]
    tshape = (batch, *out.shape[2:])
    target = torch.randint(num_classes, tshape, device=device)
    flops = count_flops(model, x1.shape)
    # A tiny lr: the step costs the same, and the weights stay finite over many rounds.
    opt = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)
    return _Bench(name, model, x1, xb, target, opt, count_params(model), flops)


def profile_models(
    models: Sequence[str] | None = None,
    *,
    batch: int | None = None,
    rounds: int = 5,
    device: str = "cpu",
    size: int | None = None,
    stat: str = "median",
    dtype: str = "fp32",
    log: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Profile ``models`` (default: every registered one) in static/dynamic pairs.

    Returns one dict per family: ``family``, ``input``, ``batch``, per member name ``params``,
    ``flops``, ``latency_ms``, ``train_ms`` (``stat`` over ``rounds``: ``median`` or ``min``),
    and, for a pair with ``stat="median"``, ``ratios``: the median of the per-round dynamic /
    static time ratios (each round times both back to back, so a ratio compares like with like
    on a loaded machine). With ``stat="min"`` the ratios are those of the minima.
    """
    if stat not in STATS:
        raise ValueError(f"stat must be one of {sorted(STATS)}, got {stat!r}")
    reduce = STATS[stat]
    dev = torch.device(device)
    log = log or (lambda s: None)
    results = []
    for family, members in _pairs(models):
        spec = NATURAL_INPUTS.get(family, ModelInput())
        b = batch if batch is not None else (spec.batch or DEFAULT_BATCH)
        benches = []
        for name in members:
            log(f"building {name}")
            benches.append(_build(name, spec, b, size, dev))
            benches[-1].amp = DTYPES[dtype]
        for bench in benches:  # warm-up; size the batch-1 repetitions to ~0.2 s a round
            t = _timed(bench.forward_b1, dev)
            t = _timed(bench.forward_b1, dev)
            bench.reps = max(1, min(50, int(0.2 / max(t, 1e-6))))
            try:
                bench.train_step()
            except (RuntimeError, ValueError) as e:  # e.g. batch norm over one value per channel
                raise ValueError(f"{bench.name} cannot train on a batch of {b} at "
                                 f"{'x'.join(map(str, bench.xb.shape[1:]))}: {one_line(e)}") from None
        for r in range(rounds):
            order = benches if r % 2 == 0 else benches[::-1]
            for bench in order:
                bench.latency.append(_timed(bench.forward_b1, dev, bench.reps))
            for bench in order:
                bench.train.append(_timed(bench.train_step, dev))
            log(
                f"{family} round {r + 1}/{rounds}: "
                + ", ".join(f"{x.name} {x.train[-1] * 1e3:.0f} ms" for x in benches)
            )
        shape = tuple(benches[0].x1.shape[1:])
        row: dict[str, Any] = {
            "family": family,
            "members": list(members),
            "input": "x".join(map(str, shape)),
            "batch": b,
            "note": spec.note,
        }
        for bench in benches:
            row[bench.name] = {
                "params": bench.params,
                "flops": bench.flops,
                "latency_ms": reduce(bench.latency) * 1e3,
                "train_ms": reduce(bench.train) * 1e3,
            }
            del bench.model, bench.optimizer
        if len(benches) == 2 and stat == "median":
            s_, d_ = benches
            row["ratios"] = {
                "latency_ms": statistics.median([d / s for s, d in zip(s_.latency, d_.latency)]),
                "train_ms": statistics.median([d / s for s, d in zip(s_.train, d_.train)]),
            }
        results.append(row)
    return results


def _cells(
    s: dict | None, d: dict | None, key: str, fmt: Callable[[float], str], ratio: float | None = None
) -> tuple[str, str]:
    """``"static / dynamic"`` and the dynamic / static ratio (``-`` if a member is missing)."""
    values = [fmt(r[key]) for r in (s, d) if r is not None]
    if ratio is None and s is not None and d is not None and s[key]:
        ratio = d[key] / s[key]
    return " / ".join(values), "-" if ratio is None else f"{ratio:.2f}x"


def _gflops(flops: float) -> str:
    """GFLOPs with three decimals, or three significant digits for models below a MFLOP (MNIST-1D)."""
    g = flops / 1e9
    return f"{g:.3f}" if g >= 1e-3 or g == 0 else f"{g:.3g}"


def format_table(results: Sequence[dict[str, Any]]) -> str:
    """Markdown table: ``static / dynamic`` per cell, then the dynamic / static ratio."""
    lines = [
        "| model (static / dynamic) | input | params (M) | x | GFLOPs (1 image) | x "
        "| latency batch 1 (ms) | x | batch | train step (ms) | x |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in results:
        fam = row["family"]
        members = row.get("members") or [fam, "dy_" + fam]
        dyn = next((m for m in members if m != fam), "dy_" + fam)
        s, d = row.get(fam), row.get(dyn)
        names = " / ".join(n for n, r in ((fam, s), (dyn, d)) if r is not None)
        params = _cells(s, d, "params", lambda v: f"{v / 1e6:.2f}")
        flops = _cells(s, d, "flops", _gflops)
        ratios = row.get("ratios", {})
        lat = _cells(s, d, "latency_ms", lambda v: f"{v:.1f}", ratios.get("latency_ms"))
        train = _cells(s, d, "train_ms", lambda v: f"{v:.0f}", ratios.get("train_ms"))
        inp = row["input"] + (f" ({row['note']})" if row.get("note") else "")
        lines.append(
            f"| {names} | {inp} | {params[0]} | {params[1]} | {flops[0]} | {flops[1]} "
            f"| {lat[0]} | {lat[1]} | {row['batch']} | {train[0]} | {train[1]} |"
        )
    return "\n".join(lines)


def environment(opts: dict[str, Any], tuned: bool) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    dev = opts["device"]
    if dev == "cuda" and torch.cuda.is_available():
        dev = f"cuda ({torch.cuda.get_device_name()})"
    return (
        f"torch {torch.__version__}, device {dev}, {torch.get_num_threads()} threads, CPU {cpu} "
        f"({os.cpu_count()} cores), malloc tuning {'on' if tuned else 'off'}, {opts['dtype']},"
        f" {opts['stat']} of {opts['rounds']} rounds"
    )


