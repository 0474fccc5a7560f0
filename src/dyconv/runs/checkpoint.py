"""A run's checkpoint files: read one as data (``weights_only``) and check the run config it
carries, write one atomically, clean up what a killed writer left."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import signal
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from dyconv.errors import ConfigError, DiskFullError, is_disk_full
from dyconv.runs.layout import LAST_CHECKPOINT, checkpoint_dir
from dyconv.runs.safe_config import check_run_config
from dyconv.utils.files import TEMP_SUFFIX, atomic_open

__all__ = [
    "NotACheckpointError",
    "atomic_torch_save",
    "checkpoint_config",
    "load_checkpoint",
    "not_a_checkpoint_file",
    "remove_stale_temp_files",
]


class NotACheckpointError(ConfigError):
    """A file given as a checkpoint is not one ``python -m dyconv.train`` (Lightning) wrote."""


_EXPECTED = ("expected a file written by `python -m dyconv.train`: a torch.save'd dict with a 'state_dict' of "
             "tensors and dyconv's run config")


def _not_a_checkpoint(path: str | os.PathLike, reason: str) -> NotACheckpointError:
    return NotACheckpointError(f"{path} is not a dyconv/Lightning checkpoint ({reason}); {_EXPECTED}")


def _load_failure(error: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words (never torch's advice)."""
    text = str(error)
    refused = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", text)
    if refused:
        return f"it pickles {refused.group(1)}, an object a checkpoint never holds"
    if isinstance(error, EOFError) or "Ran out of input" in text:
        return "the file is empty or truncated"
    if "zip archive" in text or "PytorchStreamReader" in text:
        return "a damaged or foreign zip archive"
    return "not a torch.save file"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` (dyconv checkpoints hold plain types only).

    Raises:
        NotACheckpointError: the file is not a torch checkpoint, pickles anything but plain
            types and tensors, or is not a dict with a ``state_dict`` of tensors (one line, no
            traceback; ``weights_only`` is never relaxed).
    """
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notes about a foreign file
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:  # permission denied, a directory, ...
        raise ConfigError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError, ValueError, ... from a foreign file
        raise _not_a_checkpoint(path, _load_failure(e)) from None
    if type(ckpt) is not dict:
        raise _not_a_checkpoint(path, f"it holds a {type(ckpt).__name__}, not a dict")
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping):
        raise _not_a_checkpoint(path, "it has no 'state_dict'")
    bad = next((k for k, v in state.items() if type(k) is not str or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise _not_a_checkpoint(path, f"its state_dict entry {str(bad)[:80]!r} is not a tensor")
    for key in ("global_step", "epoch"):
        if key in ckpt and type(ckpt[key]) is not int:
            raise _not_a_checkpoint(path, f"its {key!r} is a {type(ckpt[key]).__name__}, not an int")
    return ckpt


def checkpoint_config(ckpt: Mapping[str, Any], path: str | os.PathLike = "checkpoint") -> dict[str, Any]:
    """The run config a dyconv checkpoint carries (model, data, task, ...), checked.

    A checkpoint is data: its config is refused (:class:`~dyconv.runs.safe_config.UnsafeConfigError`)
    unless every ``_target_`` in it is one of dyconv's own models, datamodules, tasks (see
    :mod:`dyconv.runs.safe_config`), before anything is instantiated from it.
    """
    meta = ckpt.get("dyconv")
    if type(meta) is not dict or "config" not in meta:
        raise ConfigError(
            f"{path} holds no dyconv run config (was it written by `python -m dyconv.train`?); "
            "dyconv tools rebuild the model and data from that config"
        )
    return check_run_config(meta["config"], path)


def not_a_checkpoint_file(path: Path) -> str:
    """Why ``path`` (not a file) cannot be a checkpoint, with the file to pass when it is a folder."""
    if not path.is_dir():
        return f"no such file ({path})"
    inside = next((p for p in (checkpoint_dir(path) / LAST_CHECKPOINT, path / LAST_CHECKPOINT) if p.is_file()), None)
    hint = f", e.g. {inside}" if inside else ""
    return f"{path} is a folder, not a checkpoint file: pass a .ckpt inside it{hint}"


def disk_full_error(path: Path, error: BaseException) -> DiskFullError:
    """The one-line error for a checkpoint that did not fit on the disk."""
    free = ""
    with contextlib.suppress(OSError):
        free = f" ({shutil.disk_usage(path.parent).free / 2**20:.0f} MiB free)"
    return DiskFullError(
        errno.ENOSPC,
        f"no space left on device: {path}{free}. The previous {path.name} (if any) is intact; free some space "
        "and resume with the same command + ckpt_path=last",
    )


@contextlib.contextmanager
def sigint_after_write():
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block is done, then deliver it
    as it would have been (``KeyboardInterrupt``, or the handler in place). torch's zip writer turns
    a ``KeyboardInterrupt`` raised inside it into ``RuntimeError: ... unexpected pos``: the run then
    ended with an error instead of its Ctrl-C stop. Only the main thread receives signals; elsewhere,
    and where SIGINT is ignored, the block runs as it is."""
    previous = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or previous in (signal.SIG_IGN, None):
        yield
        return
    held: list[tuple[int, Any]] = []
    signal.signal(signal.SIGINT, lambda signum, frame: held.append((signum, frame)))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if held:
            if callable(previous):
                previous(*held[0])
            else:  # SIG_DFL: the process ends as Ctrl-C would have ended it
                os.kill(os.getpid(), signal.SIGINT)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a partial file at ``path``.

    Written through :func:`~dyconv.utils.files.atomic_open` with ``durable=True``: a SIGKILL or
    power loss at any moment leaves either the old file or the new one; a full disk raises
    :class:`~dyconv.errors.DiskFullError` saying the previous file is intact. A Ctrl-C during the
    write takes effect once the file is complete (:func:`sigint_after_write`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with sigint_after_write(), atomic_open(path, durable=True) as f:  # 0o666 & ~umask: readable
            torch.save(obj, f)
    except BaseException as e:
        if is_disk_full(e):
            raise disk_full_error(path, e) from None
        raise


def remove_stale_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Delete temp files a killed process left behind in ``directory`` (returns them)."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = [p for p in directory.glob(f".*.ckpt.*{TEMP_SUFFIX}") if p.is_file()]
    for p in stale:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return stale


