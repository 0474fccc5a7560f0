"""The report's figures as PNG bytes (matplotlib's object API, no pyplot: headless)."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from dyconv.reporting.attention import AttentionCurve
from dyconv.reporting.compare import ARM_KEY
from dyconv.reporting.groups import WIDTH_KEY, Group, _float
from dyconv.runs.handed import plot_text
from dyconv.utils.files import png_bytes

__all__ = ["MAX_LEGEND_ENTRIES", "attention_figure", "metric_figure", "percent", "rounded_values"]

#: The attention spread's log axis starts here: a uniform attention's spread is 0 (or rounding noise).
SPREAD_FLOOR = 1e-9
#: More lines than this get no legend (an Optuna search: one line per trial; report.md names them).
MAX_LEGEND_ENTRIES = 12
#: The longest legend label (longer ones end in "…"; report.md has them in full).
LABEL_CHARS = 80
#: Significant digits of a numeric override value in a legend (more where two values need them).
LEGEND_DIGITS = 3


def percent(metric: str) -> float:
    """100 for accuracies and mIoU (reported in %), else 1."""
    return 100.0 if metric.endswith(("acc", "miou")) else 1.0


def rounded_values(groups: Sequence[Group]) -> dict[tuple[str, str], str]:
    """``{(key, value): shown}`` for the groups' overrides: a number with more than
    :data:`LEGEND_DIGITS` significant digits (an Optuna sample such as ``0.0031622776601683794``)
    rounded to them, or to as many more as keep the key's values apart; other values as written."""
    values: dict[str, set[str]] = {}
    for g in groups:
        for k, v in g.key:
            values.setdefault(k, set()).add(v)
    out: dict[tuple[str, str], str] = {}
    for k, vs in values.items():
        numbers = {v: _float(v) for v in vs}
        for digits in range(LEGEND_DIGITS, 18):
            shown = {v: (f"{x:.{digits}g}" if x is not None and len(f"{x:.{digits}g}") < len(v) else v)
                     for v, x in numbers.items()}
            if len(set(shown.values())) == len(vs):
                break
        out.update({(k, v): shown[v] for v in vs})
    return out


def short_keys(keys: Sequence[str]) -> dict[str, str]:
    """Each dotted key as its shortest ending that no other key shares (``optimizer.lr`` -> ``lr``,
    ``callbacks.temperature.start`` -> ``start``): legends stay short, report.md names them in full."""
    out = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            tail = ".".join(parts[-n:])
            if not any(o != key and (o == tail or o.endswith("." + tail)) for o in keys):
                break
        out[key] = tail
    return out


def series(groups: Sequence[Group], varying: Sequence[str]) -> dict[str, list[Group]]:
    """Plot lines: groups sharing every varying key but the width, ordered by width; named by
    their varying overrides (keys shortened: :func:`short_keys`, numbers rounded:
    :func:`rounded_values`)."""
    out: dict[str, list[Group]] = {}
    shown, names = rounded_values(groups), short_keys(varying)
    for g in groups:
        name = " ".join(shown[k, v] if k == "model" else f"{names[k]}={shown[k, v]}" for k, v in g.key
                        if k in varying and k != WIDTH_KEY) or "all"
        out.setdefault(name, []).append(g)
    for members in out.values():
        members.sort(key=lambda g: _float(g.overrides.get(WIDTH_KEY)) or 0.0)
    return out


def metric_figure(groups: Sequence[Group], varying: Sequence[str], metric: str, x_attr: str, xlabel: str,
                  title: str) -> bytes | None:
    """The PNG of the metric against ``x_attr`` per series; None when no group has a positive
    ``x_attr``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    groups = [g for g in groups if getattr(g, x_attr) and statistics.fmean(getattr(g, x_attr)) > 0]  # a log axis
    if not groups:
        return None
    lines = series(groups, varying)
    legend = len(lines) <= MAX_LEGEND_ENTRIES
    fig = Figure(figsize=(6.0, 4.2 + (0.17 * len(lines) if legend else 0.0)), layout="constrained")
    ax = fig.add_subplot()
    scale = percent(metric)
    xscale = 1.0
    if x_attr == "gflops" and max(max(g.gflops) for g in groups if g.gflops) < 1.0:
        xscale, xlabel = 1000.0, xlabel.replace("GFLOPs", "MFLOPs")
    shown = rounded_values(groups)
    for name, members in lines.items():
        members = [g for g in members if getattr(g, x_attr)]
        xs = [statistics.fmean(getattr(g, x_attr)) * xscale for g in members]
        ys = [g.mean * scale for g in members]
        errs = [(g.std * scale if g.n > 1 else 0.0) for g in members]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=plot_text(name, LABEL_CHARS))
        for g, x, y in zip(members, xs, ys):
            width = g.overrides.get(WIDTH_KEY)
            if width is not None:
                ax.annotate(plot_text(f"x{shown[WIDTH_KEY, width]}", 12), (x, y), textcoords="offset points",
                            xytext=(4, -10), fontsize=7)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(plot_text(f"{metric} (%)" if scale == 100.0 else metric))
    ax.set_title(plot_text(title, 100), fontsize=9)
    ax.grid(True, alpha=0.3)
    if legend:  # below the axes, so that long labels never squeeze them
        fig.legend(loc="outside lower center", fontsize=7, ncols=1 if max(map(len, lines)) > 35 else 2)
    else:  # an Optuna search gives one series per trial
        ax.text(0.99, 0.01, f"{len(lines)} groups (no legend: see report.md)", transform=ax.transAxes,
                ha="right", va="bottom", fontsize=7, color="0.4")
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


def short_label(group: Group, varying: Sequence[str], shown: dict[tuple[str, str], str] | None = None) -> str:
    """A legend label: the arm's name, ``x<width>``, other varying keys as ``key=value`` (values
    as ``shown``: see :func:`rounded_values`)."""
    keys = [k for k, _ in group.key if k in varying] or [k for k, _ in group.key if k == ARM_KEY]
    names = short_keys(varying)
    parts = []
    for k in keys:
        v = group.overrides[k]
        v = (shown or {}).get((k, v), v)
        parts.append(v if k in (ARM_KEY, "model") else f"x{v}" if k == WIDTH_KEY else f"{names.get(k, k)}={v}")
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
    shown = rounded_values([c.group for c in curves])
    for i, curve in enumerate(curves):
        name, color = plot_text(short_label(curve.group, varying, shown), LABEL_CHARS), f"C{i % 10}"
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
    legend = len(curves) <= MAX_LEGEND_ENTRIES
    if legend:
        top.legend(fontsize=7, loc="best")
    else:
        top.text(0.99, 0.01, f"{len(curves)} groups (no legend: see report.md)", transform=top.transAxes,
                 ha="right", va="bottom", fontsize=7, color="0.4")
    bottom.set_ylabel("normalised entropy\n(entropy / log K; 1 = uniform)")
    bottom.set_xlabel("epoch")
    bottom.grid(True, alpha=0.3)
    if bottom.lines:
        if legend:
            bottom.legend(fontsize=7, loc="best")
        bottom.set_ylim(top=1.02)
    else:
        bottom.text(0.5, 0.5, "no softmax attention (sigmoid gates have no entropy over K)",
                    ha="center", va="center", transform=bottom.transAxes, fontsize=8)
    fig.suptitle(plot_text(title, 100), fontsize=10)
    return png_bytes(fig)
