"""dyconv's Hydra callbacks (``conf/hydra/default.yaml``), in one module:

- :class:`LaunchChecks`: a training launch whose config :func:`~dyconv.checks.validate_config`
  refuses stops in one line before Hydra makes its run folder;
- :class:`PlantedLinkGuard`: before Hydra writes a launch's files into an existing run or sweep
  folder, links planted at those names are removed, never written through;
- :class:`SweepSummary`: each sweep job records its status (``job_status.json``) and refreshes
  the sweep's summary (:mod:`dyconv.runs.sweeps`).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import OmegaConf

from dyconv.checks import validate_config
from dyconv.errors import ConfigError, RunDirectoryError, hydra_full_key
from dyconv.runs.disks import refuse_unwritable_hydra_folder
from dyconv.runs.launch import remove_planted_links
from dyconv.runs.layout import HYDRA_DIR, HYDRA_LAUNCH_FILES, STATUS_FILE, TOOL_FOLDERS, run_dir_of
from dyconv.runs.state import read_completed
from dyconv.runs.sweeps import HISTORY_DIR, read_json, write_summary
from dyconv.utils.files import atomic_write_text, free_name

__all__ = ["LaunchChecks", "PlantedLinkGuard", "SweepSummary"]

log = logging.getLogger(__name__)

#: What Hydra writes into a run (or job) folder before any dyconv code runs.
_HYDRA_WRITES = (HYDRA_DIR, *(f"{HYDRA_DIR}/{name}" for name in HYDRA_LAUNCH_FILES), STATUS_FILE)
#: Where ``dyconv.train`` records each launch that started (:func:`~dyconv.runs.launch.keep_launch_config`).
_LAUNCHES = Path(HYDRA_DIR) / "launches"


class LaunchChecks(Callback):
    """Hydra callback (``conf/hydra/default.yaml``, first): a single training run's config is
    checked (:func:`~dyconv.checks.validate_config`: sizes, run length, batch, ...) before Hydra
    makes the run folder or writes anything, and a refusal ends the launch in one line. Hydra
    turns an exception raised by a callback into a warning, so the refusal is a ``SystemExit``.
    (A sweep's jobs are checked by ``dyconv.train`` in each job, whose folder is then removed.)"""

    def on_run_start(self, config: Any, config_name: str | None = None, **kwargs: Any) -> None:
        if config_name != "train":
            return
        try:
            with _hydra_config_set(config) as resolvable:
                validate_config(resolvable)
        except ConfigError as e:
            raise SystemExit(f"error: {e}") from None


class PlantedLinkGuard(Callback):
    """Hydra callback (``conf/hydra/default.yaml``): before Hydra writes a launch's files into an
    existing run folder (``.hydra/*.yaml``, ``<task>.log``, ``job_status.json``; for a multirun
    ``multirun.yaml`` and every job folder's files), links planted at those names are removed, so a
    handed run or sweep folder cannot make a relaunch overwrite or append to the files they name.
    For eval, inspect and export, whose folders lie inside the checkpoint's run folder, links at
    those folders (``<run>/export``, ``<run>/eval``) are removed too. A training run's folder
    itself may be a link (e.g. to a larger disk); its ``checkpoints/`` may not (``dyconv.train``
    refuses it, :func:`~dyconv.runs.checkpoint_io.refuse_linked_folders`)."""

    @staticmethod
    def _names(config: Any) -> tuple[str, ...]:
        task = OmegaConf.select(config, "task_name", default=None) or OmegaConf.select(
            config, "hydra.job.name", default="")
        return (*_HYDRA_WRITES, f"{task}.log")

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        # Hydra only warns about an error raised here, so links are removed, never refused.
        folder = _resolved_path(config, "hydra.run.dir")
        refuse_unwritable_hydra_folder(config, folder=folder)  # read-only: one line, not Hydra's OSError traceback
        if folder is None:
            return
        ckpt = OmegaConf.select(config, "ckpt_path", default=None, throw_on_resolution_failure=False)
        if OmegaConf.select(config, "task_name", default=None) in TOOL_FOLDERS and ckpt:
            # <run>/export, <run>/eval/<x>, <run>/inspect/<x>: folders a handed run holds, derived
            # from where its checkpoint is; a link there would put the tool's files anywhere.
            run = Path(run_dir_of(ckpt))
            inside = [p for p in (folder, *folder.parents) if run in p.parents]
            remove_planted_links(run, tuple(str(p.relative_to(run)) for p in reversed(inside)))
        if folder.is_dir():
            remove_planted_links(folder, self._names(config))

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweep = _resolved_path(config, "hydra.sweep.dir")
        refuse_unwritable_hydra_folder(config, sweep=True, folder=sweep)
        if sweep is None or not sweep.is_dir():
            return
        remove_planted_links(sweep, ("multirun.yaml",))
        names = self._names(config)
        # Every job folder there (a relaunch's jobs, and folders an earlier naming left): a job
        # folder may be a link (to a larger disk), the files Hydra writes inside it may not.
        for job in sweep.iterdir():
            if job.is_dir():
                remove_planted_links(job, names)


@contextlib.contextmanager
def _hydra_config_set(config: Any) -> Iterator[Any]:
    """A copy of a launch's config whose ``${hydra:...}`` interpolations resolve: Hydra calls the
    run and multirun callbacks before it sets :class:`HydraConfig` (the default ``run_name`` uses
    ``${hydra:runtime.choices.model}``); the previous HydraConfig comes back afterwards."""
    instance = HydraConfig.instance()
    previous = instance.cfg
    try:
        config = copy.deepcopy(config)  # set_config makes its `hydra` node read-only
        instance.set_config(config)
        yield config
    finally:
        instance.cfg = previous


def _resolved_path(config: Any, key: str) -> Path | None:
    """``key`` of a launch's config resolved as Hydra will resolve it (:func:`_hydra_config_set`).
    None when it does not resolve (Hydra then stops the launch with its own message before it
    writes anything)."""
    try:
        with _hydra_config_set(config) as resolvable:
            value = OmegaConf.select(resolvable, key, default=None)
    except Exception as e:
        log.debug("could not resolve %s: %s", key, e)
        return None
    return Path(str(value)) if value else None


def _launches(run_dir: Path) -> set[str]:
    """The launches a run folder recorded (``.hydra/launches/<time>``)."""
    folder = run_dir / _LAUNCHES
    return set(os.listdir(folder)) if folder.is_dir() and not folder.is_symlink() else set()


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
    key = hydra_full_key(err)
    return f"{line} (raised as {type(err).__name__}" + (f" in {key})" if key else ")")


def _job_record(out: Path, job_return: Any, started: bool = True) -> dict[str, Any]:
    """What ``job_status.json`` holds after this job ended. A launch the run directory refused
    (:class:`~dyconv.errors.RunDirectoryError`, raised before anything is written: checkpoints
    already there, or another launch holds the lock) keeps the job's earlier record (status,
    error, finish time) and only notes the refusal; without one, a run directory that finished
    (``completed.json``) stays completed. ``started``: False when the launch changed nothing of
    the run (``dyconv.train`` stopped it by its checks before it recorded the launch)."""
    now = time.strftime("%Y-%m-%dT%H:%M:%S")
    status = "completed" if job_return.status == JobStatus.COMPLETED else "failed"
    error = ""
    err = job_return._return_value if status == "failed" else None
    if status == "failed":
        error = _error_line(err)
    record = {"status": status, "num": job_return.hydra_cfg.hydra.job.get("num"),
              "overrides": list(job_return.overrides or []), "error": error, "finished": now}
    # A launch that never started (refused by the run directory, or stopped by its checks before
    # anything was written) changed nothing of the job.
    if not (isinstance(err, RunDirectoryError) or (err is not None and not started)):
        return record
    refusal = {"error": error, "at": now}
    earlier = read_json(out / STATUS_FILE)
    if earlier.get("status") in ("completed", "failed"):
        return {**earlier, "refused_relaunch": refusal}
    done = read_completed(out)
    if done is not None:  # finished, but its status was never recorded (killed right after)
        return {**record, "status": "completed", "error": "", "finished": str(done.get("finished", now)),
                "refused_relaunch": refusal}
    return record  # nothing recorded before (e.g. a killed job's checkpoints): the refusal is its status


class SweepSummary(Callback):
    """Hydra callback: each job records its status and refreshes the sweep's summary; the end of
    the multirun writes it once more. A relaunch refused by the run directory (see
    :func:`_job_record`) never replaces a job's recorded status or results."""

    def __init__(self) -> None:
        self._launches_before: set[str] | None = None

    def on_job_start(self, config: Any, **kwargs: Any) -> None:
        """Note the launches a training job's run folder recorded so far: a launch that adds none
        stopped before it changed anything of the run (refused, or stopped by its checks)."""
        self._launches_before = None
        try:
            if OmegaConf.select(config, "hydra.job.name") == "train":
                self._launches_before = _launches(Path(str(config.hydra.runtime.output_dir)))
        except Exception as e:  # never stop the job
            log.debug("could not list the run's launches: %s", e)

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
            shutil.copy2(previous, free_name(history / f"multirun_{stamp}.yaml", ".yaml"))
        except Exception as e:  # keeping history must never stop the sweep
            log.warning("could not keep the previous multirun.yaml: %s", e)

    def on_job_end(self, config: Any, job_return: Any, **kwargs: Any) -> None:
        try:
            out = Path(job_return.hydra_cfg.hydra.runtime.output_dir)
            if out.is_dir():
                before = self._launches_before
                started = before is None or _launches(out) != before
                record = _job_record(out, job_return, started)
                atomic_write_text(out / STATUS_FILE, json.dumps(record, indent=1))
            # Hydra skips on_multirun_end when a job failed (and a killed sweep never gets there):
            # the summary is brought up to date after every job, and once more at the end.
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
