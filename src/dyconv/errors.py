"""Errors a user can fix from the command line: entry points print them without a traceback."""

from __future__ import annotations

__all__ = ["ConfigError", "DiskFullError", "DivergenceError", "DyconvError", "RunDirectoryError", "RunStopped"]


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
