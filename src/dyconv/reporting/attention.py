"""The attention over training, per group of a sweep: each run's per-epoch attention metrics
(its ``attention_history.json`` when present, else the scalars in its TensorBoard event files),
reduced per epoch to the mean over dynamic layers of the kernel attention's spread across samples
(``pi_sample_std``; ``gate_sample_std`` for sigmoid gates) and the normalised entropy
(``attention/entropy_ratio``: softmax and omni layers), then mean ± std over seeds."""

from __future__ import annotations

import logging
import math
import os
import re
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dyconv.analysis.history import HISTORY_FILE, read_history
from dyconv.reporting.groups import Group

__all__ = ["AttentionCurve", "attention_curves", "epoch_values", "job_history", "last_logged_epoch",
           "tensorboard_history"]

log = logging.getLogger(__name__)

ENTROPY_TAG = "attention/entropy_ratio"
SPREAD_TAG = re.compile(r"^attention/(?P<layer>.+)/(?P<kind>pi|gate)_sample_std$")
EVENTS_PREFIX = "events.out.tfevents."
#: The largest ``attention_history.json`` read (a real one: some kB per epoch).
MAX_HISTORY_BYTES = 16 * 1000 * 1000


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path`` is no link and stays inside ``root`` once resolved."""
    return not path.is_symlink() and path.resolve().is_relative_to(root.resolve())


def _event_files(job_dir: Path) -> list[Path]:
    """The job's TensorBoard event files: regular files under ``<job>/tensorboard``, never through
    a link (a link could lead out of the sweep folder)."""
    root = job_dir / "tensorboard"
    if not root.is_dir() or not _inside(root, job_dir):
        return []
    files = []
    for folder, dirs, names in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not (Path(folder) / d).is_symlink())
        for name in sorted(names):
            path = Path(folder) / name
            if name.startswith(EVENTS_PREFIX) and path.is_file() and not path.is_symlink():
                files.append(path)
    return files


def tensorboard_history(job_dir: Path) -> dict[int, dict[str, float]]:
    """``{epoch: {attention metric: value}}`` from a run's TensorBoard scalars.

    The epoch of a value is the ``epoch`` scalar Lightning logs at the same step (its order among
    the tag's values where there is none); a value logged again for an epoch (a resumed run)
    replaces the earlier one. A file still being written (a running job) is read up to its last
    whole record."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    latest: dict[tuple[int, str], tuple[float, float]] = {}  # (epoch, tag) -> (wall time, value)
    for path in _event_files(job_dir):
        try:
            acc = EventAccumulator(str(path), size_guidance={SCALARS: 0})
            acc.Reload()
            tags = acc.Tags().get("scalars", [])
        except Exception as exc:  # a damaged file: skip it, keep the others
            log.warning("skipped %s: %s", path, exc)
            continue
        wanted = [t for t in tags if t == ENTROPY_TAG or SPREAD_TAG.match(t)]
        if not wanted:
            continue
        epoch_at = {e.step: int(e.value) for e in acc.Scalars("epoch")} if "epoch" in tags else {}
        for tag in wanted:
            for i, event in enumerate(sorted(acc.Scalars(tag), key=lambda e: (e.step, e.wall_time))):
                if not math.isfinite(event.value):
                    continue
                epoch = epoch_at.get(event.step, i) if epoch_at else i
                earlier = latest.get((epoch, tag))
                if earlier is None or earlier[0] <= event.wall_time:
                    latest[(epoch, tag)] = (event.wall_time, float(event.value))
    out: dict[int, dict[str, float]] = {}
    for (epoch, tag), (_, value) in latest.items():
        out.setdefault(epoch, {})[tag] = value
    return dict(sorted(out.items()))


def last_logged_epoch(job_dir: Path) -> int | None:
    """The last epoch a run logged (its TensorBoard ``epoch`` scalar), None if none: how far an
    incomplete job (running, or stopped) got."""
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    last = None
    for path in _event_files(job_dir):
        try:
            acc = EventAccumulator(str(path), size_guidance={SCALARS: 0})
            acc.Reload()
            if "epoch" in acc.Tags().get("scalars", []):
                value = max(int(e.value) for e in acc.Scalars("epoch"))
                last = value if last is None else max(last, value)
        except Exception as exc:  # a damaged file says nothing about progress
            log.warning("skipped %s: %s", path, exc)
    return last


def job_history(job_dir: Path) -> tuple[dict[int, dict[str, float]], str]:
    """A run's per-epoch attention metrics and where they came from (``history``,
    ``tensorboard``, ``history+tensorboard`` or ``""`` when it has none).

    The history file is preferred; where it lacks epochs (a run started by code without it and
    resumed by code with it), the TensorBoard values fill them in."""
    history_file = job_dir / HISTORY_FILE
    history: dict[int, dict[str, float]] = {}
    if history_file.is_file() and _inside(history_file, job_dir):
        if history_file.stat().st_size > MAX_HISTORY_BYTES:
            log.warning("skipped %s: larger than %d bytes", history_file, MAX_HISTORY_BYTES)
        else:
            try:
                history = read_history(history_file)
            except (ArithmeticError, RecursionError) as exc:  # 10**400, deep nesting: a crafted file
                log.warning("skipped %s: %s", history_file, exc)
    if history and sorted(history) == list(range(max(history) + 1)):
        return history, "history"
    events = tensorboard_history(job_dir)
    if not history:
        return events, "tensorboard" if events else ""
    if not events:
        return history, "history"
    return dict(sorted({**events, **history}.items())), "history+tensorboard"


def epoch_values(metrics: dict[str, float]) -> tuple[float, float, str]:
    """One epoch's (spread, entropy ratio, kind): the mean over layers of ``pi_sample_std`` /
    ``gate_sample_std`` (kind ``pi``, ``gate`` or ``pi+gate``) and ``attention/entropy_ratio``
    (nan where absent)."""
    spreads, kinds = [], set()
    for tag, value in metrics.items():
        match = SPREAD_TAG.match(tag)
        if match:
            spreads.append(value)
            kinds.add(match["kind"])
    spread = statistics.fmean(spreads) if spreads else math.nan
    return spread, metrics.get(ENTROPY_TAG, math.nan), "+".join(sorted(kinds, reverse=True))


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


@dataclass
class AttentionCurve:
    """One group's attention per epoch, mean ± std over its seeds (``n`` seeds at each epoch)."""

    group: Group
    label: str
    kind: str = ""
    epochs: list[int] = field(default_factory=list)
    n: list[int] = field(default_factory=list)
    spread: list[tuple[float, float]] = field(default_factory=list)
    entropy_ratio: list[tuple[float, float]] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)

    @property
    def has_entropy(self) -> bool:
        return any(not math.isnan(m) for m, _ in self.entropy_ratio)


def attention_curves(groups: Sequence[Group], varying: Sequence[str]) -> list[AttentionCurve]:
    """A curve for every group whose runs logged attention (static groups have none)."""
    curves = []
    for g in groups:
        per_epoch: dict[int, list[tuple[float, float]]] = {}
        kinds, sources = set(), []
        for job_dir in g.job_dirs:
            if not _inside(job_dir, job_dir.parent):
                continue
            history, source = job_history(job_dir)
            if not history:
                continue
            sources.append(source)
            for epoch, metrics in history.items():
                spread, ratio, kind = epoch_values(metrics)
                if kind:
                    kinds.add(kind)
                if not (math.isnan(spread) and math.isnan(ratio)):
                    per_epoch.setdefault(epoch, []).append((spread, ratio))
        if not per_epoch:
            continue
        curve = AttentionCurve(g, g.label(varying), "+".join(sorted(kinds, reverse=True)), sources=sources)
        for epoch in sorted(per_epoch):
            rows = per_epoch[epoch]
            curve.epochs.append(epoch)
            curve.n.append(len(rows))
            curve.spread.append(_mean_std([s for s, _ in rows]))
            curve.entropy_ratio.append(_mean_std([r for _, r in rows]))
        curves.append(curve)
    return curves
