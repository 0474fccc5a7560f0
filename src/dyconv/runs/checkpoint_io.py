"""Lightning's side of a run's checkpoints: atomic saves, deletions confined to the run's checkpoint
folders, ``weights_only`` loads, and the folders themselves, derived in one place."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dyconv.callbacks.finite import divergence_message, non_finite_tensors
from dyconv.errors import DivergenceError, RunDirectoryError
from dyconv.runs.checkpoint import atomic_torch_save
from dyconv.runs.layout import checkpoint_dir

__all__ = [
    "AtomicCheckpointIO",
    "checkpoint_dirs",
    "confine_checkpoint_paths",
    "is_checkpoint_in",
    "refuse_linked_folders",
]

#: The ModelCheckpoint state fields that name files (restored by Lightning on resume).
_PATH_FIELDS = ("best_model_path", "kth_best_model_path", "last_model_path")

log = logging.getLogger(__name__)


def refuse_linked_folders(folders: Iterable[str | os.PathLike[str]]) -> None:
    """Refuse checkpoint folders that are symbolic links (given as configured: Lightning resolves
    links in a ``ModelCheckpoint``'s ``dirpath``). A link planted in a handed run folder would have
    checkpoints written, and superseded ones deleted, wherever it points.

    Raises:
        RunDirectoryError: naming the link and the fix, in one line.
    """
    for folder in dict.fromkeys(Path(f) for f in folders):
        if folder.is_symlink():
            raise RunDirectoryError(
                f"the checkpoint folder {folder} is a symbolic link (to {os.readlink(folder)}); dyconv writes and "
                "deletes checkpoints only in a real folder: replace the link with a folder (to keep runs on another "
                "disk, point paths.log_dir or hydra.run.dir there)"
            )


def checkpoint_dirs(callbacks: Sequence[Any], run_dir: str | os.PathLike[str]) -> list[Path]:
    """The folders a run's checkpoints go to (and the only ones they may be deleted from): every
    ``ModelCheckpoint``'s ``dirpath``, where one has none set to ``<run>/checkpoints`` first (so
    Lightning writes there too, and every reader of ``dirpath`` sees the same folder)."""
    dirs = []
    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint):
            if not callback.dirpath:
                callback.dirpath = str(checkpoint_dir(run_dir))
            dirs.append(Path(callback.dirpath))
    return list(dict.fromkeys(dirs))


def _local_path(path: Any) -> Path | None:
    """``path`` as a local file path (a plain path or ``file://``), None for any other protocol."""
    text = str(path)
    if not text or not _is_local_file_protocol(text):
        return None
    return Path(text.removeprefix("file://"))


def is_checkpoint_in(path: Any, directories: Iterable[str | os.PathLike]) -> bool:
    """True if ``path`` names a ``.ckpt`` file (plain or ``file://`` path) directly inside one of
    ``directories`` (both resolved, so ``..`` and symlinked folders cannot point elsewhere)."""
    candidate = _local_path(path)
    if candidate is None or candidate.suffix != ".ckpt":
        return False
    try:
        parent = candidate.parent.resolve()
        return any(parent == Path(d).resolve() for d in directories)
    except (OSError, RuntimeError):
        return False


def confine_checkpoint_paths(
    checkpoint: MutableMapping[str, Any], directories: Iterable[str | os.PathLike]
) -> list[str]:
    """Forget the file names a loaded checkpoint's ModelCheckpoint states hold outside
    ``directories`` (this run's checkpoint folders); returns what was dropped.

    Lightning restores ``best_model_path`` (and, for the same ``dirpath``, ``best_k_models`` and
    the last/k-th best paths) from the file, later tests the "best" one and deletes superseded
    ones, recursively and for any fsspec protocol: a handed checkpoint naming ``local:///home``
    would have that folder removed after the first epoch of a resume."""
    directories = list(directories)
    dropped: list[str] = []
    for state in (checkpoint.get("callbacks") or {}).values():
        if not isinstance(state, MutableMapping) or "best_model_path" not in state:
            continue
        for field in _PATH_FIELDS:
            value = state.get(field)
            if value and not is_checkpoint_in(value, directories):
                dropped.append(str(value))
                state[field] = ""
                if field == "best_model_path":
                    state["best_model_score"] = None
        best_k = state.get("best_k_models")
        if isinstance(best_k, MutableMapping):
            for key in [k for k in best_k if not is_checkpoint_in(k, directories)]:
                dropped.append(str(key))
                del best_k[key]
    return dropped


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning CheckpointIO whose local saves are atomic (see :func:`atomic_torch_save`).

    Lightning's own ``_atomic_save`` stages the bytes in the system temp dir, so the final move
    is a plain copy when that is another filesystem. Remote paths (s3://, ...) fall back to
    Lightning's writer. A checkpoint whose weights or optimizer state hold NaN/inf is refused
    (:class:`DivergenceError`): a resume must never continue from a diverged state.

    ``checkpoint_dirs``: the only folders it deletes from, and only ``.ckpt`` files, never
    recursively (Lightning's default removes any path, any protocol, recursively; the paths
    come from checkpoint states, see :func:`confine_checkpoint_paths`). ``None``: no folder.
    """

    def __init__(self, checkpoint_dirs: Iterable[str | os.PathLike] | None = None) -> None:
        super().__init__()
        self.checkpoint_dirs = [Path(d) for d in checkpoint_dirs or ()]

    def remove_checkpoint(self, path: Any) -> None:
        local = _local_path(path)
        if local is None or not is_checkpoint_in(local, self.checkpoint_dirs):
            log.warning("Not deleting %s: only .ckpt files in this run's checkpoint folders (%s) are removed",
                        path, ", ".join(map(str, self.checkpoint_dirs)) or "none given")
            return
        if local.is_dir() and not local.is_symlink():
            log.warning("Not deleting %s: it is a folder", local)
            return
        with contextlib.suppress(FileNotFoundError):
            local.unlink()

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not support storage_options, got {storage_options!r}")
        bad = non_finite_tensors({"state_dict": checkpoint.get("state_dict", {}),
                                  "optimizer_states": checkpoint.get("optimizer_states", [])})
        if bad:
            raise DivergenceError(divergence_message(f"non-finite values in {', '.join(bad)}", None)
                                  + f" ({Path(str(path)).name} was not written)")
        if not _is_local_file_protocol(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_torch_save(checkpoint, path)
        return None

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        """Lightning's loader, always with ``weights_only=True``: a resumed checkpoint is data
        (plain types and tensors), whatever a caller or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says."""
        if map_location is None:
            return super().load_checkpoint(path, weights_only=True)
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)
