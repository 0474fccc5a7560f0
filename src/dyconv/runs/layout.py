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
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser

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
    "legacy_job_dirname",
    "run_dir_of",
    "sweep_job_folder",
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


#: What a job folder name keeps of a key and of a value; any other character becomes ``_``.
_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.]*")
_VALUE = re.compile(r"[A-Za-z0-9.+@%-]+(?:_[A-Za-z0-9.+@%-]+)*")
_UNSAFE = re.compile(r"[^A-Za-z0-9.+@%-]+")


def _readable(text: str) -> str:
    """``text`` with each run of other characters (and of ``_``) as one ``_``, none at the ends:
    ``[256,64,64]`` -> ``256_64_64``; a name it changed ends with a hash (:func:`job_dirname`)."""
    return _UNSAFE.sub("_", text).strip("_")


def _fit(name: str, whole: str) -> str:
    """``name`` when it fits :data:`MAX_JOB_DIRNAME`, else its start and a hash of ``whole``."""
    encoded = name.encode()
    if len(encoded) <= MAX_JOB_DIRNAME:
        return name
    digest = hashlib.sha256(whole.encode()).hexdigest()[:12]
    head = encoded[: MAX_JOB_DIRNAME - len(digest) - 1].decode(errors="ignore")
    return f"{head}-{digest}"


def _parsed(overrides: Sequence[str], exclude_keys: Sequence[str]) -> list[Any]:
    """The overrides that name a job (Hydra's ``override_dirname`` rule: not in ``exclude_keys``),
    parsed by Hydra and sorted as Hydra sorts them."""
    parsed = OverridesParser.create().parse_overrides([str(o) for o in overrides])
    kept = [o for o in parsed if o.key_or_group not in set(exclude_keys)]
    return sorted(kept, key=lambda o: str(o.input_line))


def job_dirname(overrides: Sequence[str], exclude_keys: Sequence[str] = ()) -> str:
    """A sweep job's folder name from its overrides: ``key-value`` items joined by ``__``
    (``arm-cnn1d_static__seed-3``; a ``+`` before a key is left out), so that a path through the
    folder can be typed as a command-line value (no ``=`` or ``,``). Other characters than
    letters, digits and ``_ . + @ % -`` become ``_`` (``data.splits-256_64_64``), and then, or
    when a key or value could be read two ways, the name ends with a hash of the overrides: two
    jobs never share a folder.
    A name over :data:`MAX_JOB_DIRNAME` bytes is cut and ends with that hash. The same overrides
    always give the same name, so a relaunch finds its jobs again."""
    items, exact = [], True
    kept = _parsed(overrides, exclude_keys)
    for o in kept:
        key = str(o.key_or_group) + (f"@{o.package}" if o.package else "")
        value = "" if o.is_delete() else str(o.get_value_element_as_str())
        exact = exact and not o.is_delete() and bool(_KEY.fullmatch(key) and _VALUE.fullmatch(value))
        exact = exact and "__" not in key
        items.append(f"{_readable(key)}-{_readable(value)}")
    whole = "\n".join(str(o.input_line) for o in kept)  # what names the job: not ckpt_path=last & co.
    name = "__".join(items) or "job"
    if not exact:
        name = f"{name}-{hashlib.sha256(whole.encode()).hexdigest()[:12]}"
    return _fit(name, whole)


def legacy_job_dirname(overrides: Sequence[str], exclude_keys: Sequence[str] = ()) -> str:
    """The folder name earlier dyconv versions gave a sweep job: Hydra's ``override_dirname``
    (``+arm=cnn1d_static,seed=3``), a ``/`` made ``_``, cut + hash over 200 bytes. A relaunch of
    their sweep still finds such folders (:func:`sweep_job_folder`)."""
    name = ",".join(str(o.input_line) for o in _parsed(overrides, exclude_keys)).replace("/", "_")
    return _fit(name, name)


def sweep_job_folder(sweep_dir: str, overrides: Sequence[str], exclude_keys: Sequence[str] = ()) -> str:
    """The folder (under ``sweep_dir``) of the sweep job with ``overrides``: :func:`job_dirname`,
    or, when only a folder with the job's earlier name (:func:`legacy_job_dirname`) exists there,
    that one, so a relaunch of a sweep started by an earlier dyconv continues its jobs."""
    name = job_dirname(overrides, exclude_keys)
    folder = Path(sweep_dir)
    if not _exists(folder / name):
        old = legacy_job_dirname(overrides, exclude_keys)
        if old != name and _exists(folder / old):
            return old
    return name


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()
