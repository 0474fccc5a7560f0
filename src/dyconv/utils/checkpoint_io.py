"""Crash-safe checkpoint writing and reading of the run config stored in checkpoints."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
from collections.abc import Iterable, MutableMapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.cloud_io import _is_local_file_protocol
from lightning.pytorch.plugins.io import TorchCheckpointIO

from dyconv.errors import DiskFullError, DivergenceError

__all__ = [
    "AtomicCheckpointIO",
    "atomic_torch_save",
    "confine_checkpoint_paths",
    "is_checkpoint_in",
    "is_disk_full",
    "remove_stale_temp_files",
]

_TMP_SUFFIX = ".tmp"
#: The ModelCheckpoint state fields that name files (restored by Lightning on resume).
_PATH_FIELDS = ("best_model_path", "kth_best_model_path", "last_model_path")

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every OS/filesystem can fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def is_disk_full(error: BaseException) -> bool:
    """True if ``error`` (or an exception it was raised from) is "no space left" / "quota exceeded".
    ``torch.save`` reports a full disk as ``RuntimeError: ... unexpected pos`` with the OSError as
    its context."""
    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        e = e.__cause__ or e.__context__
    return False


def disk_full_error(path: Path, error: BaseException) -> DiskFullError:
    free = ""
    with contextlib.suppress(OSError):
        free = f" ({shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free)"
    return DiskFullError(
        errno.ENOSPC,
        f"no space left on device: {path}{free}. The previous {path.name} (if any) is intact; free some space "
        "and resume with the same command + ckpt_path=last",
    )


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a partial file at ``path``.

    Writes a temp file in the SAME directory (so the final rename never crosses filesystems),
    flushes and fsyncs it, then ``os.replace``s it over ``path`` and fsyncs the directory: a
    SIGKILL or power loss at any moment leaves either the old file or the new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Like mkstemp, but created with 0o666 & ~umask (mkstemp's 0o600 would hide shared runs).
    tmp = str(path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{_TMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if is_disk_full(e):
            raise disk_full_error(path, e) from None
        raise
    _fsync_dir(path.parent)


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete temp files a killed process left behind in ``directory`` (returns them)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(f".*.ckpt.*{_TMP_SUFFIX}") if p.is_file()]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


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
        from dyconv.callbacks.finite import divergence_message, non_finite_tensors

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
