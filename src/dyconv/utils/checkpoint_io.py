"""Temporary alias of :func:`dyconv.runs.checkpoint_io.confine_checkpoint_paths` for
``dyconv/tasks/base.py`` (another branch's file); removed once its import names ``dyconv.runs``."""

from dyconv.runs.checkpoint_io import confine_checkpoint_paths

__all__ = ["confine_checkpoint_paths"]
