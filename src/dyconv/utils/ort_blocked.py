"""Moved to :mod:`dyconv.export.ort_blocked` in 0.2.0; this alias warns and goes in 0.3.0."""

from __future__ import annotations

import importlib
import warnings
from typing import Any

_MOVED = ["CHANNEL_MULTIPLE", "NCHWC_DOMAIN", "blocks_layer", "fallback_functions", "rewrite_depthwise_blocked"]


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        warnings.warn(f"dyconv.utils.ort_blocked moved: import {name} from dyconv.export.ort_blocked",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module("dyconv.export.ort_blocked"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
