"""Sweep jobs, read from one or several multirun folders, grouped over seeds."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyconv.runs.sweeps import SUMMARY_CSV, collect_jobs, exclude_keys, load_plain_yaml, split_override

__all__ = ["DEFAULT_METRICS", "SEED_KEYS", "Group", "default_exclude_keys", "group_jobs", "load_jobs",
           "pick_metric"]

SEED_KEYS = ("seed",)
#: The project's Hydra settings: their ``exclude_keys`` stand in for a job that records none.
HYDRA_DEFAULTS = Path(__file__).parent.parent / "conf" / "hydra" / "default.yaml"
WIDTH_KEY = "model.width_mult"
DEFAULT_METRICS = ("test/acc", "test/miou", "val/acc", "val/miou")


@dataclass
class Group:
    """Completed jobs that share every override but the seed (``job_dirs``: their run folders,
    where known)."""

    key: tuple[tuple[str, str], ...]
    values: list[float] = field(default_factory=list)
    params: list[float] = field(default_factory=list)
    gflops: list[float] = field(default_factory=list)
    fit_s: list[float] = field(default_factory=list)
    seeds: list[str] = field(default_factory=list)
    job_dirs: list[Path] = field(default_factory=list)

    @property
    def overrides(self) -> dict[str, str]:
        return dict(self.key)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    def label(self, varying: Sequence[str]) -> str:
        """The varying overrides (``all`` without any; a study's only arm is named)."""
        text = " ".join(f"{k}={v}" for k, v in self.key if k in varying)
        if not text and "arm" in self.overrides:
            text = f"arm={self.overrides['arm']}"
        return text or "all"


def _float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Job records of one folder (each with ``dir``, its run folder), from the job directories
    (fresh), else from a ``summary.csv`` alone (no ``dir``)."""
    jobs = collect_jobs(sweep_dir)
    if jobs:
        return [{**job, "dir": sweep_dir / job["job"], "sweep": sweep_dir} for job in jobs]
    path = sweep_dir / SUMMARY_CSV
    if not path.is_file():
        raise SystemExit(
            f"error: {sweep_dir} holds no sweep jobs (no */.hydra/overrides.yaml) and no {SUMMARY_CSV}; "
            "pass the directory a multirun wrote (python -m dyconv.train -m ... prints it)"
        )
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        overrides = row.get("overrides", "").split()
        metrics = {k: v for k, v in ((k, _float(v)) for k, v in row.items() if "/" in k) if v is not None}
        out.append({"job": row.get("job", ""), "status": row.get("status", ""), "overrides": overrides,
                    "metrics": metrics, "error": row.get("error", ""), "dir": None, "sweep": sweep_dir})
    return out


def _task_of(sweep_dir: Path) -> str | None:
    """``<task>`` of a ``.../<task>/multiruns/<name>`` folder (None for another layout)."""
    resolved = sweep_dir.resolve()
    return resolved.parent.parent.name if resolved.parent.name == "multiruns" else None


def check_sweep_dirs(sweep_dirs: Sequence[Path]) -> None:
    """One-line errors for what cannot be reported together: not a folder, a single run, the same
    folder twice, folders of different tasks (``logs/<task>/multiruns/<name>``)."""
    if not sweep_dirs:
        raise SystemExit("error: no sweep directory given; pass at least one (logs/<task>/multiruns/<name>)")
    seen: dict[Path, Path] = {}
    for sweep_dir in sweep_dirs:
        if not sweep_dir.is_dir():
            raise SystemExit(f"error: {sweep_dir} is not a directory; pass a sweep directory "
                             "(logs/<task>/multiruns/<name>)")
        if (sweep_dir / "metrics.json").is_file() and (sweep_dir / ".hydra").is_dir():
            raise SystemExit(f"error: {sweep_dir} is a single run, not a sweep folder (it has metrics.json); "
                             "point report at a multirun folder (logs/<task>/multiruns/<name>)")
        resolved = sweep_dir.resolve()
        if resolved in seen:
            raise SystemExit(f"error: {sweep_dir} is given twice (also as {seen[resolved]}); pass each sweep once")
        seen[resolved] = sweep_dir
    tasks = {t for t in (_task_of(d) for d in sweep_dirs) if t is not None}
    if len(tasks) > 1:
        raise SystemExit(f"error: the sweep folders come from different tasks ({', '.join(sorted(tasks))}); "
                         "report the folders of one task together")


def load_jobs(sweep_dirs: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The jobs of every folder, folder by folder in the order given, each in its sweep order."""
    dirs = [Path(d) for d in sweep_dirs]
    check_sweep_dirs(dirs)
    return [job for d in dirs for job in _jobs(d)]


def pick_metric(jobs: Sequence[dict[str, Any]], metric: str | None) -> str:
    """``metric`` if some job reports it, else the first of :data:`DEFAULT_METRICS` that one does."""
    available = {k for j in jobs for k in j["metrics"]}
    if metric:
        if metric not in available:
            raise SystemExit(f"error: metric {metric!r} is in no job's metrics; "
                             f"available: {', '.join(sorted(available))}")
        return metric
    for name in DEFAULT_METRICS:
        if name in available:
            return name
    raise SystemExit(f"error: none of {', '.join(DEFAULT_METRICS)} in the jobs' metrics; choose one with --metric")


def default_exclude_keys() -> list[str]:
    """``exclude_keys`` of ``conf/hydra/default.yaml`` (read as plain YAML data, never resolved)."""
    return exclude_keys(load_plain_yaml(HYDRA_DEFAULTS)) or []


def group_jobs(jobs: Sequence[dict[str, Any]], metric: str) -> tuple[list[Group], list[str]]:
    """Groups of completed jobs (in sweep order) and the override keys that vary between groups.

    A group is defined by the overrides that name a job's folder: the seed and the keys Hydra
    excludes from folder names (the job's ``hydra.job.config.override_dirname.exclude_keys``, else
    the project's default list: ``ckpt_path`` of a requeued job, ``trainer.devices``, ``sweep_name``
    ...) define no group. The same group and seed in two of the folders (one run passed twice) is
    refused: it would count one seed twice."""
    groups: dict[tuple[tuple[str, str], ...], Group] = {}
    defaults: list[str] | None = None
    where: dict[tuple[Any, ...], tuple[Any, str]] = {}
    for job in jobs:
        if job["status"] != "completed" or metric not in job["metrics"]:
            continue
        excluded = job.get("exclude_keys")
        if excluded is None:
            if defaults is None:
                defaults = default_exclude_keys()
            excluded = defaults
        ignored = {*SEED_KEYS, *excluded}
        pairs = [split_override(o) for o in job["overrides"] if "=" in o]
        key = tuple(sorted((k, v) for k, v in pairs if k not in ignored))
        seed = next((v for k, v in pairs if k in SEED_KEYS), "")
        name = str(job.get("dir") or job["job"])
        first = where.setdefault((key, seed), (job.get("sweep"), name))
        if first[0] != job.get("sweep"):
            raise SystemExit(f"error: {name} repeats {first[1]} (same overrides and seed {seed or '-'}); "
                             "pass each run once (leave one of the folders out)")
        g = groups.setdefault(key, Group(key))
        m = job["metrics"]
        g.values.append(float(m[metric]))
        g.seeds.append(seed)
        if job.get("dir") is not None:
            g.job_dirs.append(Path(job["dir"]))
        for attr, metric_name in (("params", "model/params"), ("gflops", "model/gflops"), ("fit_s", "time/fit_s")):
            if metric_name in m:
                getattr(g, attr).append(float(m[metric_name]))
    keys = sorted({k for key in groups for k, _ in key})
    varying = [k for k in keys if len({dict(key).get(k) for key in groups}) > 1]
    return list(groups.values()), varying
