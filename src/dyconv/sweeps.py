"""Sweep summaries: one table per multirun (``summary.csv`` + ``summary.md`` at the top of its
sweep directory), written by a Hydra callback when the multirun ends.

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
import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from dyconv.utils.files import atomic_write_text

__all__ = ["SweepSummary", "collect_jobs", "is_training_job", "split_override", "write_summary"]

log = logging.getLogger(__name__)

STATUS_FILE = "job_status.json"
SUMMARY_CSV = "summary.csv"
SUMMARY_MD = "summary.md"
#: Earlier ``multirun.yaml`` files of the folder (relaunches, other sweeps with the same name).
HISTORY_DIR = "multirun_history"
#: Metrics shown in summary.md (summary.csv has every metric).
_MD_METRICS = ("test/acc", "test/miou", "test/loss", "val/acc", "val/miou", "model/params", "model/gflops",
               "time/fit_s")


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_plain_yaml(path: Path) -> Any:
    """A YAML file as plain data (``yaml.safe_load``: a ``${...}`` in a handed folder's file stays
    text, nothing is resolved); None when it is missing or unreadable."""
    import yaml

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
    if (job_dir / "metrics.json").is_file() or (job_dir / "checkpoints").is_dir():
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
        status = _read_json(job_dir / STATUS_FILE)
        metrics = _read_json(job_dir / "metrics.json")
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
    import io

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


def _first_line(text: str) -> str:
    return next(iter(text.strip().splitlines()), "")


def _error_line(err: Any) -> str:
    """One line for a failed job: ``Type: message`` of the innermost exception of the chain
    (``__cause__``, else ``__context__``), so a Hydra ``InstantiationException`` ("Error in call to
    target ...:") records what the target raised; the outer type (and the config key Hydra names)
    follow in parentheses."""
    if not isinstance(err, BaseException):
        return _first_line(str(err))
    inner, seen = err, {id(err)}
    while True:
        nxt = inner.__cause__ or (None if inner.__suppress_context__ else inner.__context__)
        if nxt is None or id(nxt) in seen:
            break
        seen.add(id(nxt))
        inner = nxt
    line = _first_line(f"{type(inner).__name__}: {inner}")
    if inner is err:
        return line
    from dyconv.cli import hydra_full_key

    key = hydra_full_key(err)
    return f"{line} (raised as {type(err).__name__}" + (f" in {key})" if key else ")")


def _job_record(out: Path, job_return: Any) -> dict[str, Any]:
    """What ``job_status.json`` holds after this job ended. A launch the run directory refused
    (:class:`~dyconv.errors.RunDirectoryError`, raised before anything is written: checkpoints
    already there, or another launch holds the lock) keeps the job's earlier record (status,
    error, finish time) and only notes the refusal; without one, a run directory that finished
    (``completed.json``) stays completed."""
    from hydra.core.utils import JobStatus

    from dyconv.errors import RunDirectoryError

    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    status = "completed" if job_return.status == JobStatus.COMPLETED else "failed"
    error = ""
    err = job_return._return_value if status == "failed" else None
    if status == "failed":
        error = _error_line(err)
    record = {"status": status, "num": job_return.hydra_cfg.hydra.job.get("num"),
              "overrides": list(job_return.overrides or []), "error": error, "finished": now}
    # A launch that never started (refused by the run directory, or stopped by its checks before
    # anything was written: dyconv.train marks those) changed nothing of the job.
    if not (isinstance(err, RunDirectoryError) or getattr(err, "dyconv_not_started", False)):
        return record
    refusal = {"error": error, "at": now}
    earlier = _read_json(out / STATUS_FILE)
    if earlier.get("status") in ("completed", "failed"):
        return {**earlier, "refused_relaunch": refusal}
    from dyconv.utils.run_state import read_completed

    done = read_completed(out)
    if done is not None:  # finished, but its status was never recorded (killed right after)
        return {**record, "status": "completed", "error": "", "finished": str(done.get("finished", now)),
                "refused_relaunch": refusal}
    return record  # nothing recorded before (e.g. a killed job's checkpoints): the refusal is its status


class SweepSummary(Callback):
    """Hydra callback: each job records its status and refreshes the sweep's summary; the end of
    the multirun writes it once more. A relaunch refused by the run directory (see
    :func:`_job_record`) never replaces a job's recorded status or results."""

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        """Hydra is about to replace the folder's ``multirun.yaml`` (a relaunch, or another sweep
        with the same ``sweep_name``): the previous one is kept in ``multirun_history/``."""
        try:
            sweep_dir = Path(str(config.hydra.sweep.dir))
            previous = sweep_dir / "multirun.yaml"
            if not previous.is_file():
                return
            history = sweep_dir / HISTORY_DIR
            history.mkdir(exist_ok=True)
            stamp = time.strftime("%Y-%m-%d_%H-%M-%S", time.localtime(previous.stat().st_mtime))
            dest, n = history / f"multirun_{stamp}.yaml", 1
            while dest.exists():
                dest, n = history / f"multirun_{stamp}+{n}.yaml", n + 1
            shutil.copy2(previous, dest)
        except Exception as e:  # keeping history must never stop the sweep
            log.warning("could not keep the previous multirun.yaml: %s", e)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        try:
            out = Path(job_return.hydra_cfg.hydra.runtime.output_dir)
            if out.is_dir():
                atomic_write_text(out / STATUS_FILE, json.dumps(_job_record(out, job_return), indent=1))
            # Hydra skips on_multirun_end when a job failed (and a killed sweep never gets there):
            # the summary is brought up to date after every job, and once more at the end.
            from hydra.core.hydra_config import HydraConfig
            from hydra.types import RunMode

            hc = HydraConfig.get()  # attached to the whole config: its interpolations resolve
            if hc.mode == RunMode.MULTIRUN:
                write_summary(Path(str(hc.sweep.dir)))
        except Exception as e:  # a summary problem must never fail the job
            log.warning("could not record the job status or the sweep summary: %s", e)

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        sweep_dir = Path(str(config.hydra.sweep.dir))
        if not sweep_dir.is_dir():
            return
        try:
            csv_path, md_path = write_summary(sweep_dir)
        except Exception as e:
            log.warning("could not write the sweep summary in %s: %s", sweep_dir, e)
            return
        log.info("Sweep summary: %s (and %s); report: python -m dyconv.report %s", csv_path, md_path.name, sweep_dir)
