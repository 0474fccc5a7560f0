"""The report's figures as PNG bytes (matplotlib's object API, no pyplot: headless)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from dyconv.reporting.attention import AttentionCurve
from dyconv.reporting.compare import ARM_KEY
from dyconv.reporting.groups import WIDTH_KEY, Group, _float
from dyconv.utils.files import png_bytes

__all__ = ["attention_figure", "metric_figure", "percent"]

#: The attention spread's log axis starts here: a uniform attention's spread is 0 (or rounding noise).
SPREAD_FLOOR = 1e-9


def percent(metric: str) -> float:
    """100 for accuracies and mIoU (reported in %), else 1."""
    return 100.0 if metric.endswith(("acc", "miou")) else 1.0


def series(groups: Sequence[Group], varying: Sequence[str]) -> dict[str, list[Group]]:
    """Plot lines: groups sharing every varying key but the width, ordered by width."""
    out: dict[str, list[Group]] = {}
    for g in groups:
        name = " ".join(f"{v}" if k == "model" else f"{k}={v}" for k, v in g.key
                        if k in varying and k != WIDTH_KEY) or "all"
        out.setdefault(name, []).append(g)
    for members in out.values():
        members.sort(key=lambda g: _float(g.overrides.get(WIDTH_KEY)) or 0.0)
    return out


def metric_figure(groups: Sequence[Group], varying: Sequence[str], metric: str, x_attr: str, xlabel: str,
                  title: str) -> bytes | None:
    """The PNG of the metric against ``x_attr`` per series; None when no group has ``x_attr``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    if not any(getattr(g, x_attr) for g in groups):
        return None
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    scale = percent(metric)
    xscale = 1.0
    if x_attr == "gflops" and max(max(g.gflops) for g in groups if g.gflops) < 1.0:
        xscale, xlabel = 1000.0, xlabel.replace("GFLOPs", "MFLOPs")
    for name, members in series(groups, varying).items():
        members = [g for g in members if getattr(g, x_attr)]
        xs = [statistics.fmean(getattr(g, x_attr)) * xscale for g in members]
        ys = [g.mean * scale for g in members]
        errs = [(g.std * scale if g.n > 1 else 0.0) for g in members]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=name)
        for g, x, y in zip(members, xs, ys):
            width = g.overrides.get(WIDTH_KEY)
            if width is not None:
                ax.annotate(f"x{width}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (%)" if scale == 100.0 else metric)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    if len(ax.lines) <= 12:  # an Optuna search gives one series per trial: no legend then
        ax.legend(fontsize=8)
    return png_bytes(fig)


def _band(ax, epochs: list[int], stats: list[tuple[float, float]], label: str, color: str,
          floor: float | None = None) -> None:
    """A mean line with a shaded ± std band (where there are 2+ seeds); with ``floor`` (a log
    axis) every value is drawn at ``floor`` at least."""
    clip = (lambda v: max(v, floor)) if floor is not None else (lambda v: v)
    means = [clip(m) for m, _ in stats]
    ax.plot(epochs, means, label=label, linewidth=1.4, color=color)
    low = [clip(m - s) if not math.isnan(s) else clip(m) for m, s in stats]
    high = [clip(m + s) if not math.isnan(s) else clip(m) for m, s in stats]
    ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)


def short_label(group: Group, varying: Sequence[str]) -> str:
    """A legend label: the arm's name, ``x<width>``, other varying keys as ``key=value``."""
    keys = [k for k, _ in group.key if k in varying] or [k for k, _ in group.key if k == ARM_KEY]
    parts = []
    for k in keys:
        v = group.overrides[k]
        parts.append(v if k in (ARM_KEY, "model") else f"x{v}" if k == WIDTH_KEY else f"{k}={v}")
    return " ".join(parts) or "all"


def _last(stats: list[tuple[float, float]]) -> str:
    value = next((m for m, _ in reversed(stats) if not math.isnan(m)), math.nan)
    return f"{value:.1e}" if abs(value) < 0.01 else f"{value:.3f}"


def attention_figure(curves: Sequence[AttentionCurve], varying: Sequence[str], title: str) -> bytes | None:
    """Two panels over epochs, one line per group (mean ± std over seeds): the kernel
    attention's spread across samples (log scale; 0 = the same weights for every input) and its
    normalised entropy (1 = uniform). None without curves."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not curves:
        return None
    fig = Figure(figsize=(7.0, 6.4), layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True)
    for i, curve in enumerate(curves):
        name, color = short_label(curve.group, varying), f"C{i % 10}"
        what = "gate" if curve.kind == "gate" else "pi"
        _band(top, curve.epochs, curve.spread, f"{name} ({what}; last {_last(curve.spread)})", color, SPREAD_FLOOR)
        if curve.has_entropy:
            _band(bottom, curve.epochs, curve.entropy_ratio, f"{name} (last {_last(curve.entropy_ratio)})", color)
    top.set_yscale("log")
    bottom.xaxis.set_major_locator(MaxNLocator(integer=True))
    top.set_ylabel(f"spread across samples\n(std of pi / gate; < {SPREAD_FLOOR:.0e} drawn at it)")
    top.set_title("Is the attention input-dependent? Kernel attention per epoch (mean ± std over seeds)",
                  fontsize=9)
    top.grid(True, alpha=0.3)
    top.legend(fontsize=7, loc="best")
    bottom.set_ylabel("normalised entropy\n(entropy / log K; 1 = uniform)")
    bottom.set_xlabel("epoch")
    bottom.grid(True, alpha=0.3)
    if bottom.lines:
        bottom.legend(fontsize=7, loc="best")
        bottom.set_ylim(top=1.02)
    else:
        bottom.text(0.5, 0.5, "no softmax attention (sigmoid gates have no entropy over K)",
                    ha="center", va="center", transform=bottom.transAxes, fontsize=8)
    fig.suptitle(title, fontsize=10)
    return png_bytes(fig)
