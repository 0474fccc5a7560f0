"""Errors a user can fix from the command line: entry points print them without a traceback."""

from __future__ import annotations

__all__ = ["ConfigError", "DyconvError", "RunDirectoryError"]


class DyconvError(Exception):
    """Base class: the message names the problem and the fix."""


class ConfigError(DyconvError, ValueError):
    """An invalid configuration value (negative learning rate, impossible batch split, ...)."""


class RunDirectoryError(DyconvError):
    """The run directory is not in a state this launch can use (existing checkpoints, ...)."""
