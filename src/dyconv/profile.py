"""Whole-model profile: every registered model, static next to dynamic, at its natural input size.

    python -m dyconv.profile                                   # every registered model
    python -m dyconv.profile models=resnet10,dy_resnet10 rounds=10
    python -m dyconv.profile models=mobilenetv2 batch=32 threads=2 out=docs/profile.md

Options (``key=value`` overrides of the Hydra config ``conf/profile.yaml``): ``models`` (a list,
or comma-separated names; a static or ``dy_`` name brings its twin along), ``batch``
(training-step batch; default 32, 8 for DeepLabV3+), ``rounds`` (timed rounds; default 5),
``threads`` (``torch.set_num_threads``), ``device``
(``cpu`` or ``cuda``), ``dtype`` (``fp32``, default, or ``bf16``: autocast for the forward
passes), ``size`` (override every input side), ``stat`` (``median``, default, or
``min``: the least disturbed round on a shared machine), ``tune_malloc`` (default true;
``--no-tune-malloc`` also turns it off, see :mod:`dyconv.runtime`), ``out`` (also write the
table, with the command, to this Markdown file).

Per model: parameters, forward FLOPs of one image (``torch.utils.flop_counter``, 2 per MAC),
batch-1 eval latency, and one training step (forward, cross-entropy, backward, SGD step) at the
training batch. Static and dynamic are timed interleaved in one process, the order alternating
each round; a ratio is the median over rounds of that round's dynamic / static time (with
``stat=min``: the ratio of the minima).
Nothing here imports Lightning (a profile starts in a few seconds).
"""

from __future__ import annotations

import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf
from torch import nn

from dyconv.cli import quiet_console
from dyconv.config import CONF_DIR, to_plain
from dyconv.models import create_model, get_model_builder, is_model, list_models
from dyconv.runtime import tune_malloc
from dyconv.utils import files
from dyconv.utils.model_stats import count_flops, count_params

__all__ = ["NATURAL_INPUTS", "ModelInput", "main", "parse_args", "profile_models"]


@dataclass(frozen=True)
class ModelInput:
    """How a model family is profiled: builder kwargs, one input's (C, H, W), training batch."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    shape: tuple[int, int, int] = (3, 224, 224)
    batch: int | None = None  # None: the global default
    note: str = ""


#: Natural input per family (the static name); dynamic twins use the same.
NATURAL_INPUTS: dict[str, ModelInput] = {
    "simple_cnn": ModelInput({"num_classes": 10, "in_channels": 1}, (1, 28, 28), note="MNIST"),
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


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean, got {value!r}")


def _one_line(e: BaseException) -> str:
    return " ".join(line.strip() for line in str(e).splitlines() if line.strip())


def _check_out(path: str) -> None:
    """Fail before any work if ``path`` cannot be written: its folder must exist or be creatable,
    and ``path`` must not be a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    problem = files.output_folder_problem(folder)
    if problem:
        raise SystemExit(f"dyconv.profile: out={path}: cannot {problem[0]} its folder {folder}: {problem[1]}")
    if os.path.isdir(path):
        raise SystemExit(f"dyconv.profile: out={path} is a folder; name a Markdown file")


def _refuse_unknown_option(key: str) -> None:
    """One line for a key ``conf/profile.yaml`` does not have (``+foo=1`` would be ignored,
    ``model=resnet10`` gets Hydra's advice to add it with ``+``), naming the options."""
    options = list(OmegaConf.load(os.path.join(CONF_DIR, "profile.yaml")))
    name = key.strip().lstrip("+~")
    if name not in options:
        raise SystemExit(f"dyconv.profile: {key.strip()} is not an option; it takes {', '.join(options)} "
                         "(key=value, e.g. models=resnet10,dy_resnet10)")


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """The options: ``conf/profile.yaml`` composed with the command-line overrides (Hydra's compose
    API), then checked. ``models=a,b`` is read as the list ``[a,b]``; ``--no-tune-malloc`` as
    ``tune_malloc=false``."""
    overrides = []
    for arg in argv:
        if arg in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        if arg == "--no-tune-malloc":
            arg = "tune_malloc=false"
        key, sep, value = arg.partition("=")
        if sep and key.strip() == "models" and "," in value and not value.startswith("["):
            arg = f"models=[{value}]"
        _refuse_unknown_option(key)
        overrides.append(arg)
    try:
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            cfg = compose("profile", overrides=overrides)
    except HydraException as e:
        raise SystemExit(f"dyconv.profile: {e}; options are the keys of conf/profile.yaml") from None
    opts = to_plain(cfg)
    if isinstance(opts["models"], str):
        opts["models"] = [m.strip() for m in opts["models"].split(",") if m.strip()]
    if opts["models"] is not None:
        if not isinstance(opts["models"], list):
            raise SystemExit(f"dyconv.profile: models must be a list of model names, got {opts['models']!r}")
        opts["models"] = [str(m) for m in opts["models"]]
        if not opts["models"]:
            raise SystemExit("dyconv.profile: models is empty: name at least one model (models=resnet10,...), "
                             "or leave it out (models=null) to profile every registered model")
        for name in opts["models"]:
            try:
                get_model_builder(name)
            except ValueError as e:
                raise SystemExit(f"dyconv.profile: {_one_line(e)}") from None
    for key in ("batch", "rounds", "threads", "size"):
        v = opts[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise SystemExit(f"dyconv.profile: {key} must be an integer >= 1, got {v!r}")
    if not isinstance(opts["tune_malloc"], bool):
        try:
            opts["tune_malloc"] = _bool(str(opts["tune_malloc"]))
        except ValueError as e:
            raise SystemExit(f"dyconv.profile: tune_malloc: {e} (true or false)") from None
    if opts["out"] and not isinstance(opts["out"], str):
        raise SystemExit(f"dyconv.profile: out must be a file path, got {opts['out']!r}")
    for key, allowed in (("stat", STATS), ("dtype", DTYPES), ("device", ("cpu", "cuda"))):
        if opts[key] not in allowed:
            raise SystemExit(f"dyconv.profile: {key} must be one of {sorted(allowed)}, got {opts[key]!r}")
    return opts


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
    c, h, w = spec.shape
    if size is not None:
        h = w = size
    x1 = torch.randn(1, c, h, w, device=device)
    xb = torch.randn(batch, c, h, w, device=device)
    model.eval()
    try:
        with torch.no_grad():
            out = model(x1)
    except RuntimeError as e:
        raise ValueError(
            f"{name} cannot take a {c}x{h}x{w} input"
            + (f" (size={size}); use a larger size or leave size out" if size is not None else "")
            + f": {_one_line(e)}"
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
                                 f"{'x'.join(map(str, bench.xb.shape[1:]))}: {_one_line(e)}") from None
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
        flops = _cells(s, d, "flops", lambda v: f"{v / 1e9:.3f}")
        ratios = row.get("ratios", {})
        lat = _cells(s, d, "latency_ms", lambda v: f"{v:.1f}", ratios.get("latency_ms"))
        train = _cells(s, d, "train_ms", lambda v: f"{v:.0f}", ratios.get("train_ms"))
        inp = row["input"] + (f" ({row['note']})" if row.get("note") else "")
        lines.append(
            f"| {names} | {inp} | {params[0]} | {params[1]} | {flops[0]} | {flops[1]} "
            f"| {lat[0]} | {lat[1]} | {row['batch']} | {train[0]} | {train[1]} |"
        )
    return "\n".join(lines)


def _environment(opts: dict[str, Any], tuned: bool) -> str:
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dyconv.profile``."""
    quiet_console()
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(argv)
    if opts["out"]:
        _check_out(opts["out"])
    tuned = tune_malloc() if opts["tune_malloc"] else False
    if opts["threads"] is not None:
        torch.set_num_threads(opts["threads"])
    if opts["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("dyconv.profile: device=cuda but CUDA is not available")
    env = _environment(opts, tuned)
    print(f"malloc tuning: {'on' if tuned else 'off'} (tune_malloc=false or --no-tune-malloc to disable)", flush=True)
    print(env, flush=True)
    try:
        results = profile_models(
            opts["models"],
            batch=opts["batch"],
            rounds=opts["rounds"],
            device=opts["device"],
            size=opts["size"],
            stat=opts["stat"],
            dtype=opts["dtype"],
            log=lambda s: print(s, file=sys.stderr, flush=True),
        )
    except ValueError as e:  # an unknown model, an input a model cannot take
        raise SystemExit(f"dyconv.profile: {_one_line(e)}") from None
    table = format_table(results)
    print(table, flush=True)
    if opts["out"]:
        command = "python -m dyconv.profile " + " ".join(shlex.quote(a) for a in argv)
        text = (
            "# Whole-model profile\n\n"
            "Static and dynamic (K=4) networks at their natural input size, timed interleaved in one process. "
            "FLOPs: one image, forward, `torch.utils.flop_counter` (2 per multiply-add). Latency: batch 1, eval. "
            "Train step: forward + cross-entropy + backward + SGD step. Ratios (x): dynamic / static"
            + (", the median over rounds of each round's ratio" if opts["stat"] == "median" else ", of the minima")
            + ". Generated by:\n\n"
            f"```\n{command.strip()}\n```\n\n{env}.\n\n{table}\n"
        )
        try:
            files.atomic_write_text(opts["out"], text)
        except OSError as e:
            raise SystemExit(f"dyconv.profile: could not write out={opts['out']}: {e.strerror or e}") from None
        print(f"wrote {opts['out']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
