"""Sweep summaries: one table per multirun (``summary.csv`` + ``summary.md`` at the top of its
sweep directory), written by :class:`~dyconv.runs.hydra_callbacks.SweepSummary` after every job.

Each job's directory holds ``.hydra/overrides.yaml`` (what defines it), ``metrics.json`` (what
``dyconv.train`` measured: final val/test metrics, ``model/params``, ``model/gflops``,
``time/fit_s``) and ``job_status.json`` (written by the callback when the job ends: completed or
failed, with the error). :func:`collect_jobs` reads them back, so a summary can also be rebuilt
later for any sweep directory (``python -m dyconv.report <dir>`` does when it is missing).

A relaunch of a sweep whose job the run directory refuses (:class:`~dyconv.errors.RunDirectoryError`:
the folder already holds checkpoints, or another launch holds its lock) never started: it leaves
the job's recorded status, error and results as they were and is only noted in the record
(``refused_relaunch``) and in ``summary.md``.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from dyconv.runs.layout import METRICS_FILE, STATUS_FILE
from dyconv.utils.files import atomic_write_text

__all__ = [
    "HISTORY_DIR",
    "SUMMARY_CSV",
    "SUMMARY_MD",
    "collect_jobs",
    "exclude_keys",
    "is_training_job",
    "load_plain_yaml",
    "read_json",
    "split_override",
    "write_summary",
]

log = logging.getLogger(__name__)

SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
#: Earlier ``multirun.yaml`` files of the folder (relaunches, other sweeps with the same name).
HISTORY_DIR = "multirun_history"
#: Metrics shown in summary.md (summary.csv has every metric).
_MD_METRICS = ("test/acc", "test/miou", "test/loss", "val/acc", "val/miou", "model/params", "model/gflops",
               "time/fit_s")


def read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_plain_yaml(path: Path) -> Any:
    """A YAML file as plain data (``yaml.safe_load``: a ``${...}`` in a handed folder's file stays
    text, nothing is resolved); None when it is missing or unreadable."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return None


def _overrides(job_dir: Path) -> list[str]:
    """The job's overrides as written in ``.hydra/overrides.yaml``, verbatim."""
    data = load_plain_yaml(job_dir / ".hydra" / "overrides.yaml")
    return [str(o) for o in data] if isinstance(data, list) else []


def _hydra_yaml(job_dir: Path) -> dict[str, Any]:
    """The ``hydra`` node of the job's ``.hydra/hydra.yaml`` as plain data; ``{}`` when missing."""
    data = load_plain_yaml(job_dir / ".hydra" / "hydra.yaml")
    node = data.get("hydra") if isinstance(data, dict) else None
    return node if isinstance(node, dict) else {}


def exclude_keys(hydra_cfg: Any) -> list[str] | None:
    """``hydra.job.config.override_dirname.exclude_keys`` of a job (keys that do not name its
    folder: ``ckpt_path``, ``trainer.devices``, ...); None when the job does not record them."""
    node: Any = hydra_cfg
    for key in ("job", "config", "override_dirname", "exclude_keys"):
        node = node.get(key) if isinstance(node, dict) else None
    return [str(k) for k in node] if isinstance(node, list) else None


def is_training_job(job_dir: Path, hydra_cfg: dict[str, Any] | None = None) -> bool:
    """Whether ``job_dir`` (a folder with ``.hydra/overrides.yaml``) is a job of the sweep, not the
    folder of another command run inside a run directory (``export/``, ``inspect/...``, ``eval``).

    A folder with training results (``metrics.json`` or ``checkpoints/``) is one. Otherwise the
    job's ``.hydra/hydra.yaml`` decides: Hydra records ``mode: MULTIRUN`` for every sweep job from
    its start (so a job still running, or killed before it wrote anything, is kept as
    incomplete) and ``mode: RUN`` for a single command (export, inspect: not a job). A folder
    whose ``hydra.yaml`` records no mode is kept, as before."""
    if (job_dir / METRICS_FILE).is_file() or (job_dir / "checkpoints").is_dir():
        return True
    if hydra_cfg is None:
        hydra_cfg = _hydra_yaml(job_dir)
    return str(hydra_cfg.get("mode", "")).upper() != "RUN"


def split_override(override: str) -> tuple[str, str]:
    """``"+model.width_mult=0.5"`` -> ``("model.width_mult", "0.5")``."""
    key, _, value = override.partition("=")
    return key.lstrip("+~"), value


def collect_jobs(sweep_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One record per job directory under ``sweep_dir``: ``job`` (its folder), ``num``, ``status``
    (``completed``, ``failed``, or ``incomplete`` when it never reported: killed or running),
    ``overrides`` (list), ``error``, ``metrics`` (dict) and ``refused`` (the error of the last
    relaunch the run directory refused, which changed nothing; ``""`` if none) and
    ``exclude_keys`` (the keys Hydra left out of the job's folder name, from its
    ``.hydra/hydra.yaml``; None if not recorded). Folders that are not jobs of the sweep
    (``export/``, ``inspect/``: see :func:`is_training_job`) are skipped."""
    sweep_dir = Path(sweep_dir)
    jobs = []
    for overrides_file in sorted(sweep_dir.glob("*/.hydra/overrides.yaml")):
        job_dir = overrides_file.parent.parent
        hydra_cfg = _hydra_yaml(job_dir)
        if not is_training_job(job_dir, hydra_cfg):
            continue
        status = read_json(job_dir / STATUS_FILE)
        metrics = read_json(job_dir / METRICS_FILE)
        refused = status.get("refused_relaunch")
        overrides = status.get("overrides")
        if not (isinstance(overrides, list) and overrides and all(isinstance(o, str) for o in overrides)):
            overrides = _overrides(job_dir)
        jobs.append({
            "job": job_dir.name,
            "num": status.get("num"),
            "status": status.get("status", "incomplete"),
            "overrides": overrides,
            "error": status.get("error", ""),
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
            "refused": str(refused.get("error", "")) if isinstance(refused, dict) else "",
            "exclude_keys": exclude_keys(hydra_cfg),
        })
    jobs.sort(key=lambda j: (j["num"] is None, j["num"] if j["num"] is not None else 0, j["job"]))
    return jobs


def _metric_columns(jobs: Sequence[dict[str, Any]]) -> list[str]:
    keys = {k for j in jobs for k in j["metrics"]}
    order = ("test/", "val/", "train/", "model/", "time/")
    return sorted(keys, key=lambda k: (next((i for i, p in enumerate(order) if k.startswith(p)), len(order)), k))


def _override_columns(jobs: Sequence[dict[str, Any]]) -> list[str]:
    cols: list[str] = []
    for j in jobs:
        for o in j["overrides"]:
            key = split_override(o)[0]
            if key not in cols:
                cols.append(key)
    return cols


def summary_rows(jobs: Sequence[dict[str, Any]]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of the summary table: job, status, one column per override key, the
    override string, every metric, the error."""
    okeys, mkeys = _override_columns(jobs), _metric_columns(jobs)
    columns = ["job", "status", *okeys, "overrides", *mkeys, "error"]
    rows = []
    for j in jobs:
        values = dict(split_override(o) for o in j["overrides"])
        row: dict[str, Any] = {"job": j["job"], "status": j["status"], "overrides": " ".join(j["overrides"]),
                               "error": j["error"]}
        row.update({k: values.get(k, "") for k in okeys})
        row.update({k: j["metrics"].get(k, "") for k in mkeys})
        rows.append(row)
    return columns, rows


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) >= 1000:
            return f"{int(value):,}"
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_summary(sweep_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``summary.csv`` (every column) and ``summary.md`` (the main ones) into ``sweep_dir``."""
    sweep_dir = Path(sweep_dir)
    jobs = collect_jobs(sweep_dir)
    columns, rows = summary_rows(jobs)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_path, md_path = sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_MD
    atomic_write_text(csv_path, buf.getvalue())

    shown = [c for c in columns if c not in ("overrides", "error") and (c not in _metric_columns(jobs)
                                                                         or c in _MD_METRICS)]
    failed = [r for r in rows if r["status"] != "completed"]
    lines = [f"# Sweep summary: {sweep_dir}", "",
             f"{len(rows)} jobs, {len(rows) - len(failed)} completed, {len(failed)} failed or incomplete "
             f"(written {time.strftime('%Y-%m-%d %H:%M:%S')}; every column: {SUMMARY_CSV}).", "",
             "| " + " | ".join(shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in shown) + " |" for r in rows]
    if failed:
        lines += ["", "Failed or incomplete jobs:", ""]
        lines += [f"- `{r['job']}` ({r['status']}): {_fmt(r['error']) or 'no error recorded'}" for r in failed]
    refused = [j for j in jobs if j.get("refused")]
    if refused:
        lines += ["", "Relaunches that did not start (refused by the run directory or stopped by their checks; they "
                      "changed nothing: each job keeps its status and results above):", ""]
        lines += [f"- `{j['job']}` ({j['status']}): {_fmt(j['refused'])}" for j in refused]
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path
