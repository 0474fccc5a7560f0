"""Loggers that keep one logged run per run directory, so a resumed run continues it.

``ResumableCSVLogger`` appends to ``metrics.csv``; ``ResumableWandbLogger`` and
``ResumableMLFlowLogger`` store their run id in the run directory on first launch
(``wandb_run_id.txt`` / ``mlflow_run_id.txt``) and pass it back on every later launch.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.logger import _convert_params, _flatten_dict
from lightning.pytorch.loggers import CSVLogger, MLFlowLogger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from dyconv.errors import ConfigError
from dyconv.utils.files import atomic_write_text

__all__ = ["ResumableCSVLogger", "ResumableMLFlowLogger", "ResumableWandbLogger", "logger_outputs", "stored_run_id"]


def _require(module: str, extra: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"logger={extra} needs the {module} package: pip install 'dyconv[{extra}]'")


def stored_run_id(path: str | os.PathLike[str]) -> str | None:
    """The run id a previous launch wrote to ``path`` (None on a first launch)."""
    path = Path(path)
    return path.read_text().strip() or None if path.is_file() else None


def _store_run_id(path: str | os.PathLike[str], run_id: str) -> None:
    if rank_zero_only.rank != 0:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, run_id + "\n")


class _AppendingWriter(ExperimentWriter):
    """Lightning's writer deletes an existing metrics.csv; this one appends to it, keeping its
    columns, and drops rows a killed run logged after the checkpoint being resumed."""

    def _check_log_dir_exists(self) -> None:
        if self._fs.isfile(self.metrics_file_path):
            with self._fs.open(self.metrics_file_path, "r", newline="") as f:
                header = next(csv.reader(f), [])
            self.metrics_keys = sorted(set(self.metrics_keys) | set(header))

    def truncate_after(self, step: int) -> None:
        """Remove rows with ``step > step`` (logged after the checkpoint a resume starts from)."""
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as f:
            reader = csv.DictReader(f)
            fields = reader.fieldnames or []
            rows = [r for r in reader if not r.get("step") or int(float(r["step"])) <= step]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.metrics_file_path, text.getvalue())


class ResumableCSVLogger(CSVLogger):
    """``CSVLogger`` whose ``metrics.csv`` survives relaunches of the same run directory."""

    @property
    @rank_zero_experiment
    def experiment(self) -> _AppendingWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingWriter(log_dir=self.log_dir)
        return self._experiment

    def truncate_after(self, step: int) -> None:
        self.experiment.truncate_after(step)


class ResumableWandbLogger(WandbLogger):
    """``WandbLogger`` whose run id is fixed per run directory: relaunching the same run (e.g. with
    ``ckpt_path=last``) continues the same W&B run, offline or online.

    Args:
        save_dir: the run directory; W&B writes ``<save_dir>/wandb/`` and the id goes to
            ``<save_dir>/wandb_run_id.txt``.
        id: an explicit run id (wins over the stored one).
        **kwargs: ``WandbLogger`` / ``wandb.init`` arguments (``project``, ``offline``, ``group``...).
    """

    ID_FILE = "wandb_run_id.txt"

    def __init__(self, save_dir: str = ".", id: str | None = None, **kwargs: Any) -> None:
        _require("wandb", "wandb")
        id_file = Path(save_dir) / self.ID_FILE
        run_id = id or stored_run_id(id_file) or uuid.uuid4().hex[:12]
        _store_run_id(id_file, run_id)
        super().__init__(save_dir=save_dir, id=run_id, **kwargs)
        self._wandb_init.pop("anonymous", None)  # deprecated in wandb; it warns even when unset


class ResumableMLFlowLogger(MLFlowLogger):
    """``MLFlowLogger`` that continues the MLflow run of its run directory on a relaunch.

    The first launch creates the run and writes its id to ``<save_dir>/mlflow_run_id.txt``;
    later launches pass it back as ``run_id``. Parameters are immutable in MLflow, so a
    relaunch only logs parameters the run does not have yet (``ckpt_path=last`` would
    otherwise be a "changed" parameter).

    Args:
        save_dir: the run directory (where the id file goes; ``tracking_uri`` decides where
            MLflow stores the run).
        run_id: an explicit run id (wins over the stored one).
        **kwargs: ``MLFlowLogger`` arguments (``experiment_name``, ``run_name``, ``tracking_uri``...).
    """

    ID_FILE = "mlflow_run_id.txt"

    def __init__(self, save_dir: str = ".", run_id: str | None = None, **kwargs: Any) -> None:
        _require("mlflow", "mlflow")
        self._id_file = Path(save_dir) / self.ID_FILE
        run_id = run_id or stored_run_id(self._id_file)
        self._continued = run_id is not None
        super().__init__(save_dir=save_dir, run_id=run_id, **kwargs)

    @property
    @rank_zero_experiment
    def experiment(self) -> Any:
        new = not self._initialized
        if new and self._run_id is None and self._experiment_id is None:
            # A first run creates its experiment quietly (Lightning warns "not found. Creating it.").
            found = self._mlflow_client.get_experiment_by_name(self._experiment_name)
            self._experiment_id = found.experiment_id if found is not None else self._mlflow_client.create_experiment(
                name=self._experiment_name, artifact_location=self._artifact_location)
        client = super().experiment
        if new and self._run_id is not None:
            _store_run_id(self._id_file, self._run_id)
        return client

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        if self._continued:
            logged = self.experiment.get_run(self.run_id).data.params
            params = {k: v for k, v in _flatten_dict(_convert_params(params)).items() if k not in logged}
            if not params:
                return
        super().log_hyperparams(params)


def logger_outputs(loggers: Sequence[Any]) -> list[tuple[str, str]]:
    """Where each logger of a finished run put its output, as (name, place) pairs for the end
    summary: TensorBoard's and the CSV logger's folders (named by their class), the MLflow store and run, the W&B run's
    folder (offline, with the command that uploads it) or its URL."""
    out: list[tuple[str, str]] = []
    for lg in loggers:
        if isinstance(lg, MLFlowLogger):
            out.append(("MLflow", f"{lg._tracking_uri} (experiment {lg._experiment_name!r}, run {lg.run_id})"))
        elif isinstance(lg, WandbLogger):
            run = lg.experiment
            url = getattr(run, "url", None)
            sync_dir = getattr(run, "sync_dir", None) or getattr(run, "dir", "")
            out.append(("W&B", str(url) if url else f"{sync_dir} (offline; upload: wandb sync {sync_dir})"))
        elif getattr(lg, "log_dir", None):
            out.append((type(lg).__name__, str(lg.log_dir)))
    return out
