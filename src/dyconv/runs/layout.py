"""Names and places of a run folder, in one home: what each file is called and where a
checkpoint's run, a run's checkpoints and a sweep job's folder are.

    <run>/                     logs/<task_name>/runs/<run_name>, or one job of a sweep
      .hydra/                  config.yaml, overrides.yaml, hydra.yaml (Hydra), resolved_config.yaml,
                               launches/<time>/ (every launch's copy)
      checkpoints/             last.ckpt and the best (epoch_NNN.ckpt)
      metrics.json             final metrics; completed.json once the run finished
      job_status.json          a sweep job's status (written by the sweep callback)
      .lock                    held by the launch that runs it
      eval/, inspect/, export/ the tools' outputs on its checkpoints
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = [
    "CHECKPOINT_DIR",
    "COMPLETED_FILE",
    "HYDRA_DIR",
    "HYDRA_LAUNCH_FILES",
    "LAST_CHECKPOINT",
    "LOCK_FILE",
    "MAX_JOB_DIRNAME",
    "METRICS_FILE",
    "RESOLVED_CONFIG",
    "STATUS_FILE",
    "TOOL_FOLDERS",
    "checkpoint_dir",
    "job_dirname",
    "run_dir_of",
]

HYDRA_DIR = ".hydra"
#: The files Hydra writes into ``.hydra/`` for every launch.
HYDRA_LAUNCH_FILES = ("config.yaml", "overrides.yaml", "hydra.yaml")
#: The resolved config a launch records beside Hydra's files (a tool: beside its outputs).
RESOLVED_CONFIG = "resolved_config.yaml"
CHECKPOINT_DIR = "checkpoints"
LAST_CHECKPOINT = "last.ckpt"
METRICS_FILE = "metrics.json"
COMPLETED_FILE = "completed.json"
LOCK_FILE = ".lock"
#: A sweep job's status, written by :class:`~dyconv.runs.hydra_callbacks.SweepSummary`.
STATUS_FILE = "job_status.json"
#: The tools whose Hydra folder lies inside a run folder (``<run>/export``, ``<run>/eval/...``).
TOOL_FOLDERS = ("eval", "inspect", "export")
#: Longest sweep-job folder name kept as is, in bytes (file systems stop at 255).
MAX_JOB_DIRNAME = 200


def checkpoint_dir(run_dir: str | os.PathLike[str]) -> Path:
    """The folder of a run's checkpoints (``<run>/checkpoints``)."""
    return Path(run_dir) / CHECKPOINT_DIR


def run_dir_of(ckpt_path: str | os.PathLike[str]) -> str:
    """The run directory of a checkpoint (``<run>/checkpoints/x.ckpt`` -> ``<run>``)."""
    path = Path(ckpt_path).expanduser().absolute()
    return str(path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent)


def job_dirname(override_dirname: str) -> str:
    """A sweep job's folder name from its overrides (Hydra's ``override_dirname``): unchanged
    when it fits, otherwise cut and ended with a hash of the whole name, so two jobs never share
    a folder and a relaunch finds its own again. A ``/`` in a value becomes ``_`` (it would nest
    folders)."""
    name = override_dirname.replace("/", "_")
    encoded = name.encode()
    if len(encoded) <= MAX_JOB_DIRNAME:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:12]
    head = encoded[: MAX_JOB_DIRNAME - len(digest) - 1].decode(errors="ignore")
    return f"{head}-{digest}"
