"""Moved to :mod:`dyconv.export.fold` in 0.2.0; this alias warns and goes in 0.3.0."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = ["fold_batchnorm", "fold_temperature", "prepare_for_export"]  # every name the module had


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(f"dyconv.utils.fold moved: import {name} from dyconv.export.fold", DeprecationWarning,
                      stacklevel=2)
        return getattr(importlib.import_module("dyconv.export.fold"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
