"""Sweep jobs, read from one or several multirun folders, grouped over seeds."""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyconv.runs.handed import csv_uncell, finite, inside, short, size_text
from dyconv.runs.sweeps import SUMMARY_CSV, exclude_keys, load_plain_yaml, scan_jobs, split_override

__all__ = ["DEFAULT_METRICS", "MAX_SUMMARY_BYTES", "MAX_VALUE", "SEED_KEYS", "Group", "default_exclude_keys",
           "group_jobs", "load_jobs", "load_sweeps", "metric_value", "pick_metric"]

SEED_KEYS = ("seed",)
#: The project's Hydra settings: their ``exclude_keys`` stand in for a job that records none.
HYDRA_DEFAULTS = Path(__file__).parent.parent / "conf" / "hydra" / "default.yaml"
WIDTH_KEY = "model.width_mult"
#: The largest ``summary.csv`` read (some 50,000 jobs: under 0.5 GB of memory); it is read row by row.
MAX_SUMMARY_BYTES = 16 * 1000 * 1000
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


#: Larger metric values are left out (named in the report): their squares would overflow the statistics.
MAX_VALUE = 1e50


def metric_value(value: Any) -> float | None:
    """``value`` as a finite float of at most :data:`MAX_VALUE` in size, else None (text, NaN,
    infinities, ``10**400``, ``1e308``): what the report computes with."""
    v = finite(value)
    return v if v is not None and abs(v) <= MAX_VALUE else None


_float = metric_value


def _summary_file(sweep_dir: Path) -> Path:
    """The folder's ``summary.csv``, checked before it is read: a regular file inside the folder
    of at most :data:`MAX_SUMMARY_BYTES` (else a one-line error)."""
    path = sweep_dir / SUMMARY_CSV
    if not (path.exists() or path.is_symlink()):
        raise SystemExit(
            f"error: {short(sweep_dir)} holds no sweep jobs (no */.hydra/overrides.yaml) and no {SUMMARY_CSV}; "
            "pass the directory a multirun wrote (python -m dyconv.train -m ... prints it)"
        )
    if not inside(path, sweep_dir):
        raise SystemExit(f"error: {short(path)} is a link out of the sweep folder; not followed (copy the file "
                         "into the folder if you trust it)")
    if not path.is_file():
        raise SystemExit(f"error: {short(path)} is not a regular file; pass a sweep folder with job folders or a "
                         f"{SUMMARY_CSV}")
    size = path.stat().st_size
    if size > MAX_SUMMARY_BYTES:
        raise SystemExit(f"error: {short(path)} is {size_text(size)}, more than the {size_text(MAX_SUMMARY_BYTES)} "
                         "a report reads; report the folder with its job folders instead")
    return path


def _summary_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Job records from a ``summary.csv`` alone (no ``dir``), read row by row; cells escaped by
    the summary (:func:`~dyconv.runs.handed.csv_cell`) are read back as written."""
    path = _summary_file(sweep_dir)
    out = []
    limit = csv.field_size_limit()
    csv.field_size_limit(MAX_SUMMARY_BYTES)  # a long field (an error text) is bounded by the file's size
    try:
        with open(path, newline="", encoding="utf-8", errors="backslashreplace") as f:
            for raw in csv.DictReader(f):
                row = {csv_uncell(str(k)): csv_uncell(v) if isinstance(v, str) else "" for k, v in raw.items()
                       if k is not None}
                metrics = {k: v for k, v in ((k, _float(v)) for k, v in row.items() if "/" in k) if v is not None}
                out.append({"job": row.get("job", ""), "status": row.get("status", ""),
                            "overrides": row.get("overrides", "").split(), "metrics": metrics,
                            "error": row.get("error", ""), "dir": None, "sweep": sweep_dir, "notes": []})
    except csv.Error as e:
        raise SystemExit(f"error: {short(path)} is not a readable CSV file ({short(e, 120)})") from None
    finally:
        csv.field_size_limit(limit)
    return out


def _jobs(sweep_dir: Path, skipped: list[str] | None = None) -> list[dict[str, Any]]:
    """Job records of one folder (each with ``dir``, its run folder), from the job directories
    (fresh), else from a ``summary.csv`` alone (no ``dir``); job folders not read are added to
    ``skipped``."""
    jobs, not_read = scan_jobs(sweep_dir)
    if skipped is not None:
        skipped += not_read
    if jobs:
        return [{**job, "dir": sweep_dir / job["job"], "sweep": sweep_dir} for job in jobs]
    if not_read and not (sweep_dir / SUMMARY_CSV).exists():
        raise SystemExit(f"error: {short(sweep_dir)} has no job folder that can be read ({not_read[0]})")
    return _summary_jobs(sweep_dir)


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
    return load_sweeps(sweep_dirs)[0]


def load_sweeps(sweep_dirs: Sequence[str | Path]) -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`load_jobs` and the job folders that were not read (a link out of a folder: one line
    each). Each job's ``notes`` name its files not read and values left out."""
    dirs = [Path(d) for d in sweep_dirs]
    check_sweep_dirs(dirs)
    skipped: list[str] = []
    return [job for d in dirs for job in _jobs(d, skipped)], skipped


def pick_metric(jobs: Sequence[dict[str, Any]], metric: str | None) -> str:
    """``metric`` if some job reports it, else the first of :data:`DEFAULT_METRICS` that one does."""
    available = {k for j in jobs for k in j["metrics"]}
    if metric:
        if metric not in available:
            raise SystemExit(f"error: metric {metric!r} is in no job's metrics; "
                             f"available: {short(', '.join(sorted(available)))}")
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
        if job["status"] != "completed" or _float(job["metrics"].get(metric)) is None:
            continue  # a NaN or infinite metric: left out (build_report names it)
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
            raise SystemExit(f"error: {short(name)} repeats {short(first[1])} (same overrides and seed "
                             f"{short(seed, 40) or '-'}); "
                             "pass each run once (leave one of the folders out)")
        g = groups.setdefault(key, Group(key))
        m = job["metrics"]
        g.values.append(float(m[metric]))  # finite: checked above
        g.seeds.append(seed)
        if job.get("dir") is not None:
            g.job_dirs.append(Path(job["dir"]))
        for attr, metric_name in (("params", "model/params"), ("gflops", "model/gflops"), ("fit_s", "time/fit_s")):
            value = _float(m.get(metric_name))
            if value is not None:
                getattr(g, attr).append(value)
    keys = sorted({k for key in groups for k, _ in key})
    varying = [k for k in keys if len({dict(key).get(k) for key in groups}) > 1]
    return list(groups.values()), varying
