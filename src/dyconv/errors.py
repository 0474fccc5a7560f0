"""Errors a user can fix from the command line: entry points print them without a traceback."""

from __future__ import annotations

import errno

__all__ = [
    "ConfigError",
    "DiskFullError",
    "DivergenceError",
    "DyconvError",
    "RunDirectoryError",
    "RunStopped",
    "hydra_full_key",
    "is_disk_full",
]


class DyconvError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(DyconvError, ValueError):
    """An invalid configuration value (negative learning rate, impossible batch split, ...)."""


class RunDirectoryError(DyconvError):
    """The run directory is not in a state this launch can use (existing checkpoints, ...)."""


class DivergenceError(DyconvError, RuntimeError):
    """Training produced a non-finite loss or non-finite weights."""


class DiskFullError(DyconvError, OSError):
    """No space left where a checkpoint or result was being written."""


class RunStopped(DyconvError):
    """The run was stopped by a signal (SIGTERM from a scheduler or ``kill``); it can be resumed."""

    exit_code = 143  # 128 + SIGTERM, what shells and schedulers expect of a terminated job


def hydra_full_key(e: BaseException) -> str:
    """The config key a Hydra instantiation error names (its ``full_key: ...`` line), or ``""``."""
    return next((line.split(":", 1)[1].strip() for line in str(e).splitlines() if line.startswith("full_key:")), "")


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
