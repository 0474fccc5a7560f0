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

from dyconv.runs.handed import (
    HandedFileError,
    csv_cell,
    csv_row,
    load_yaml,
    md_text,
    notes_text,
    read_handed,
    short,
)
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
    "scan_jobs",
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


def _read(path: Path, root: Path, notes: list[str] | None) -> str | None:
    """``path``'s text, read as a file of the handed folder ``root`` (:func:`~dyconv.runs.handed.read_handed`);
    None when it is missing or refused (the reason added to ``notes``)."""
    try:
        return read_handed(path, root)
    except HandedFileError as e:
        if notes is not None:
            notes.append(str(e))
        return None


def _json(path: Path, root: Path, notes: list[str] | None = None) -> dict[str, Any]:
    text = _read(path, root, notes)
    if text is None:
        return {}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as e:
        if notes is not None:
            notes.append(f"{short(path)} is not JSON ({short(e, 120)}); not read")
        return {}
    if not isinstance(data, dict):
        if notes is not None:
            notes.append(f"{short(path)} holds no JSON object; not read")
        return {}
    return data


def _yaml(path: Path, root: Path, notes: list[str] | None = None) -> Any:
    text = _read(path, root, notes)
    if text is None:
        return None
    try:
        return load_yaml(text, str(path))
    except HandedFileError as e:
        if notes is not None:
            notes.append(str(e))
        return None


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``{}`` when it is missing, unreadable, not an object, larger
    than :data:`~dyconv.runs.handed.MAX_FILE_BYTES` or a link out of its folder."""
    return _json(Path(path), Path(path).parent)


def load_plain_yaml(path: Path) -> Any:
    """A YAML file as plain data (a ``${...}`` in a handed folder's file stays text, nothing is
    resolved; aliases are refused: see :func:`~dyconv.runs.handed.load_yaml`); None when it is
    missing, unreadable, refused or a link out of its folder."""
    return _yaml(Path(path), Path(path).parent)


def _overrides(job_dir: Path, root: Path, notes: list[str] | None = None) -> list[str]:
    """The job's overrides as written in ``.hydra/overrides.yaml``, verbatim."""
    data = _yaml(job_dir / ".hydra" / "overrides.yaml", root, notes)
    return [str(o) for o in data] if isinstance(data, list) else []


def _hydra_yaml(job_dir: Path, root: Path | None = None, notes: list[str] | None = None) -> dict[str, Any]:
    """The ``hydra`` node of the job's ``.hydra/hydra.yaml`` as plain data; ``{}`` when missing."""
    data = _yaml(job_dir / ".hydra" / "hydra.yaml", job_dir if root is None else root, notes)
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


def _metrics(data: dict[str, Any], path: Path, notes: list[str]) -> dict[str, float | int]:
    """The numbers of a ``metrics.json`` (NaN and infinities kept: a diverged run's loss); an
    integer beyond float (``10**400``) is left out with a note."""
    out: dict[str, float | int] = {}
    for key, value in data.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, int):
            try:
                float(value)
            except OverflowError:
                notes.append(f"{short(path)}: {short(key, 80)} = {short(value, 40)} is too large for a number; "
                             "left out")
                continue
        out[str(key)] = value
    return out


def _job_folders(sweep_dir: Path, skipped: list[str]) -> list[Path]:
    """The folders with ``.hydra/overrides.yaml`` directly under ``sweep_dir``, by name; a linked
    folder is not followed (noted in ``skipped``)."""
    try:
        children = sorted(p for p in sweep_dir.iterdir() if not p.name.startswith("."))
    except OSError as e:
        raise SystemExit(f"error: cannot list {short(sweep_dir)}: {e.strerror or e}") from None
    folders = []
    for child in children:
        if child.is_symlink():
            if (child / ".hydra").exists():
                skipped.append(f"{short(child)} is a link; not followed (a job folder must be inside the sweep "
                               "folder)")
            continue
        marker = child / ".hydra" / "overrides.yaml"
        if child.is_dir() and (marker.exists() or marker.is_symlink()):
            folders.append(child)
    return folders


def scan_jobs(sweep_dir: str | os.PathLike[str]) -> tuple[list[dict[str, Any]], list[str]]:
    """:func:`collect_jobs` and the job folders it did not read (one line each: a linked folder)."""
    sweep_dir = Path(sweep_dir)
    skipped: list[str] = []
    jobs = []
    for job_dir in _job_folders(sweep_dir, skipped):
        notes: list[str] = []
        hydra_cfg = _hydra_yaml(job_dir, sweep_dir, notes)
        if not is_training_job(job_dir, hydra_cfg):
            continue
        status = _json(job_dir / STATUS_FILE, sweep_dir, notes)
        metrics = _json(job_dir / METRICS_FILE, sweep_dir, notes)
        refused = status.get("refused_relaunch")
        overrides = status.get("overrides")
        if not (isinstance(overrides, list) and overrides and all(isinstance(o, str) for o in overrides)):
            overrides = _overrides(job_dir, sweep_dir, notes)
        num = status.get("num")
        error = status.get("error", "")
        jobs.append({
            "job": job_dir.name,
            "num": num if isinstance(num, int) and not isinstance(num, bool) else None,
            "status": str(status.get("status", "incomplete")),
            "overrides": overrides,
            "error": error if isinstance(error, str) else json.dumps(error),
            "metrics": _metrics(metrics, job_dir / METRICS_FILE, notes),
            "refused": str(refused.get("error", "")) if isinstance(refused, dict) else "",
            "exclude_keys": exclude_keys(hydra_cfg),
            "notes": notes,
        })
    jobs.sort(key=lambda j: (j["num"] is None, j["num"] if j["num"] is not None else 0, j["job"]))
    return jobs, skipped


def collect_jobs(sweep_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """One record per job directory under ``sweep_dir``: ``job`` (its folder), ``num``, ``status``
    (``completed``, ``failed``, or ``incomplete`` when it never reported: killed or running),
    ``overrides`` (list), ``error``, ``metrics`` (dict) and ``refused`` (the error of the last
    relaunch the run directory refused, which changed nothing; ``""`` if none),
    ``exclude_keys`` (the keys Hydra left out of the job's folder name, from its
    ``.hydra/hydra.yaml``; None if not recorded) and ``notes`` (its files that were not read and
    values left out, one line each). Folders that are not jobs of the sweep (``export/``,
    ``inspect/``: see :func:`is_training_job`) are skipped.

    The folder is read as handed data (:mod:`dyconv.runs.handed`): no link out of it is followed
    (a linked job folder is skipped), no file over :data:`~dyconv.runs.handed.MAX_FILE_BYTES` is
    read and YAML aliases are refused."""
    return scan_jobs(sweep_dir)[0]


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
    return md_text(value)


def write_summary(sweep_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``summary.csv`` (every column) and ``summary.md`` (the main ones) into ``sweep_dir``.

    Values from the job folders are escaped for where they go: CSV cells that a spreadsheet would
    run as a formula get a leading ``'`` (:func:`~dyconv.runs.handed.csv_cell`), Markdown shows
    text as written (:func:`~dyconv.runs.handed.md_text`). Files not read are listed in summary.md."""
    sweep_dir = Path(sweep_dir)
    jobs, skipped = scan_jobs(sweep_dir)
    columns, rows = summary_rows(jobs)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[csv_cell(c) for c in columns], lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_row(r) for r in rows)
    csv_path, md_path = sweep_dir / SUMMARY_CSV, sweep_dir / SUMMARY_MD
    atomic_write_text(csv_path, buf.getvalue())

    metrics = set(_metric_columns(jobs))  # once: a sweep of big models has thousands of metric columns
    shown = [c for c in columns if c not in ("overrides", "error") and (c not in metrics or c in _MD_METRICS)]
    failed = [r for r in rows if r["status"] != "completed"]
    lines = [f"# Sweep summary: {md_text(sweep_dir, 1000)}", "",
             f"{len(rows)} jobs, {len(rows) - len(failed)} completed, {len(failed)} failed or incomplete "
             f"(written {time.strftime('%Y-%m-%d %H:%M:%S')}; every column: {SUMMARY_CSV}).", "",
             "| " + " | ".join(md_text(c, 80) for c in shown) + " |", "|" + "---|" * len(shown)]
    lines += ["| " + " | ".join(_fmt(r[c]) for c in shown) + " |" for r in rows]
    if failed:
        lines += ["", "Failed or incomplete jobs:", ""]
        lines += [f"- {md_text(r['job'])} ({md_text(r['status'])}): {md_text(r['error'], 500) or 'no error recorded'}"
                  for r in failed]
    refused = [j for j in jobs if j.get("refused")]
    if refused:
        lines += ["", "Relaunches that did not start (refused by the run directory or stopped by their checks; they "
                      "changed nothing: each job keeps its status and results above):", ""]
        lines += [f"- {md_text(j['job'])} ({md_text(j['status'])}): {md_text(j['refused'], 500)}" for j in refused]
    notes = [*skipped, *(n for j in jobs for n in j["notes"])]
    if notes:
        lines += ["", "Not read from the sweep folder (a link out of it, a file too large, not plain JSON or YAML) "
                      "or left out:", "", *notes_text(notes)]
    atomic_write_text(md_path, "\n".join(lines) + "\n")
    return csv_path, md_path
