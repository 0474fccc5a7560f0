"""The state of a run directory across launches: who holds it (an OS lock), whether the run
finished, and whether a failed launch left nothing but Hydra's stub files.

- :class:`RunLock`: an exclusive ``fcntl.flock`` on ``<run>/.lock`` held for the whole launch.
  The kernel drops it when the process dies (SIGKILL included), so a crash never leaves the run
  stuck; the file only records the holder's PID and host for the refusal message.
- ``completed.json``: written after a run trained, tested and wrote ``metrics.json``. A relaunch
  with ``ckpt_path=last`` (what requeue scripts do) finds it and stops with "already finished",
  leaving metrics and checkpoints as they are, unless it asks for more epochs/steps.
- :func:`is_stub` / :func:`remove_stub`: a launch that fails before its run starts removes the
  directory Hydra created for it, so no empty run shows up in TensorBoard or the summaries.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from dyconv.errors import RunDirectoryError
from dyconv.runs.layout import COMPLETED_FILE, HYDRA_DIR, HYDRA_LAUNCH_FILES, LOCK_FILE
from dyconv.utils.files import atomic_write_text

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Windows: no lock
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "RunLock",
    "is_stub",
    "process_rank",
    "read_completed",
    "remove_stub",
    "remove_stub_on_error",
    "write_completed",
]

log = logging.getLogger(__name__)

#: What Hydra writes into a run directory before the job function runs.
_HYDRA_STUB = {HYDRA_DIR, *HYDRA_LAUNCH_FILES}


#: Descriptors of the locks this process holds. A forked child (a DataLoader worker) closes its
#: copies: an flock belongs to the open file, so a worker orphaned by a killed launch would
#: otherwise keep the run directory locked until it noticed (seconds), refusing the relaunch.
_HELD_FDS: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD_FDS:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_held_in_child)


class RunLock:
    """Exclusive lock on a run directory for one launch (``with RunLock(dir): ...``).

    A second launch into the same directory raises :class:`RunDirectoryError` naming the holder.
    """

    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        if fcntl is None:  # pragma: no cover
            return self
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 4096, 0).decode().strip()
            os.close(fd)
            info = _describe_holder(holder)
            raise RunDirectoryError(
                f"run directory {self.run_dir} is in use by another launch ({info}); wait for it to finish "
                "or stop it, or start a separate run with run_name=<new name>"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                  "since": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode(), 0)
        self._fd = fd
        _HELD_FDS.add(fd)
        return self

    def release(self) -> None:
        if self._fd is not None:
            if self._fd in _HELD_FDS:  # not in a forked child, whose copy is already closed
                _HELD_FDS.discard(self._fd)
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, 0)
                fcntl.flock(self._fd, fcntl.LOCK_UN)
                os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _describe_holder(text: str) -> str:
    try:
        info = json.loads(text)
        return f"PID {info['pid']} on {info['host']}, since {info['since']}"
    except (ValueError, KeyError, TypeError):
        return "PID unknown"


def process_rank() -> int:
    """Rank of this process as set by Lightning's launcher, torchrun or SLURM (0 if none)."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def write_completed(run_dir: str | os.PathLike[str], **info: Any) -> Path:
    """Mark the run finished (atomically), recording how far it trained."""
    record = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    return atomic_write_text(Path(run_dir) / COMPLETED_FILE, json.dumps(record, indent=1, default=str))


def read_completed(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The completion record, or None when the run has not finished."""
    try:
        data = json.loads((Path(run_dir) / COMPLETED_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_stub(run_dir: str | os.PathLike[str], log_files: tuple[str, ...] = ()) -> bool:
    """True if ``run_dir`` holds nothing but what Hydra writes before a job starts (its ``.hydra``
    config files and the job's log file): no checkpoints, logs, metrics, launches or lock."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return False
    for entry in run_dir.iterdir():
        if entry.name == HYDRA_DIR and entry.is_dir():
            if any(p.name not in _HYDRA_STUB for p in entry.iterdir()):
                return False
        elif entry.name not in log_files:
            return False
    return True


def remove_stub(run_dir: str | os.PathLike[str], log_files: tuple[str, ...] = ()) -> bool:
    """Remove ``run_dir`` if it is a stub (see :func:`is_stub`); returns whether it did."""
    if not is_stub(run_dir, log_files):
        return False
    shutil.rmtree(run_dir, ignore_errors=True)
    return True


@contextlib.contextmanager
def remove_stub_on_error(output_dir: Path, rank: int, stub_files: tuple[str, ...]) -> Any:
    """A single run that fails before it starts leaves no directory behind (Hydra creates it,
    with its config files and the log, before the job runs). Sweeps keep it: the sweep summary
    lists failed jobs from their directories."""
    try:
        yield
    except BaseException:
        multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
        if rank == 0 and not multirun and remove_stub(output_dir, stub_files):
            log.debug("removed the stub run directory %s", output_dir)
        raise
