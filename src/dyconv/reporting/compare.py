"""Differences between groups with a 95% Welch interval: dynamic vs static twins, study arms vs
the static arm (or the first arm), an ablation's values vs the first."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from dyconv.reporting.groups import Group

__all__ = ["ARM_KEY", "Comparison", "compare", "welch_interval"]

#: The study-arm config group (``+arm=<name>``, conf/arm/); ``*_static`` arms are the baseline.
ARM_KEY = "arm"
STATIC_SUFFIX = "_static"


@dataclass
class Comparison:
    """``treatment - baseline`` of the metric's means with a 95% Welch interval."""

    label: str
    treatment: Group
    baseline: Group
    diff: float
    low: float
    high: float


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` and its Welch t confidence interval (nan bounds below 2 runs a side)."""
    from scipy import stats

    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    return diff, diff - half, diff + half


def _twins(groups: Sequence[Group], varying: Sequence[str]) -> list[Comparison]:
    """Each ``dy_<name>`` group against its ``<name>`` twin with otherwise equal overrides."""
    by_key = {g.key: g for g in groups}
    out = []
    for g in groups:
        model = g.overrides.get("model", "")
        if not model.startswith("dy_"):
            continue
        twin = by_key.get(tuple(sorted((k, model[3:] if k == "model" else v) for k, v in g.key)))
        if twin is None:
            continue
        label = " ".join(f"{k}={v}" for k, v in g.key if k in varying and k != "model") or "all"
        out.append(Comparison(f"{model} - {model[3:]} ({label})", g, twin, *welch_interval(g.values, twin.values)))
    return out


def baseline_arm(groups: Sequence[Group]) -> str | None:
    """The arm the others are compared with: the first ``*_static`` arm in sweep order, else the
    first arm (an ablation without a static arm); None without arms."""
    arms = list(dict.fromkeys(g.overrides[ARM_KEY] for g in groups if ARM_KEY in g.overrides))
    if not arms:
        return None
    return next((a for a in arms if a.endswith(STATIC_SUFFIX)), arms[0])


def _arms(groups: Sequence[Group], varying: Sequence[str]) -> list[Comparison]:
    """Each arm against the baseline arm with otherwise equal overrides (per width, ...)."""
    base = baseline_arm(groups)
    if base is None:
        return []
    by_key = {g.key: g for g in groups}
    out = []
    for g in groups:
        arm = g.overrides.get(ARM_KEY)
        if arm is None or arm == base:
            continue
        other = by_key.get(tuple(sorted((k, base if k == ARM_KEY else v) for k, v in g.key)))
        if other is None:
            continue
        rest = " ".join(f"{k}={v}" for k, v in g.key if k in varying and k != ARM_KEY)
        label = f"{arm} - {base}" + (f" ({rest})" if rest else "")
        out.append(Comparison(label, g, other, *welch_interval(g.values, other.values)))
    return out


def compare(groups: Sequence[Group], varying: Sequence[str]) -> list[Comparison]:
    """Dynamic vs static twins; else, in a study of ``+arm`` arms, every arm vs the static arm (or
    the first arm); else, with one varying key, each value vs the first."""
    out = _twins(groups, varying)
    if out:
        return out
    if ARM_KEY in varying:
        return _arms(groups, varying)
    if len(varying) != 1:
        return []
    base = groups[0]
    return [Comparison(f"{g.label(varying)} - {base.label(varying)}", g, base, *welch_interval(g.values, base.values))
            for g in groups[1:]]
