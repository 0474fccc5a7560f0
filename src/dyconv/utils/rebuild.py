"""Temporary alias of :mod:`dyconv.runs.rebuild` and :func:`dyconv.runs.layout.run_dir_of` for
``dyconv/export.py`` (another branch moves it); removed once its import names ``dyconv.runs``."""

from dyconv.runs.layout import run_dir_of
from dyconv.runs.rebuild import TrainedRun, load_trained_run

__all__ = ["TrainedRun", "load_trained_run", "run_dir_of"]
