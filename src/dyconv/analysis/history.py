"""The per-epoch attention history of a run (``attention_history.json`` in the run folder).

:class:`~dyconv.analysis.callback.AttentionStatistics` adds one entry per validation epoch (the
metrics it logs) and rewrites the file atomically, so a reader, or a kill at any moment, sees a
whole file; ``python -m dyconv.report`` plots it over epochs. Plain data: JSON, no pickle.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path

from dyconv.utils.files import atomic_write_text

__all__ = ["HISTORY_FILE", "HISTORY_VERSION", "read_history", "record_epoch"]

HISTORY_FILE = "attention_history.json"
HISTORY_VERSION = 1


def _entries(path: str | os.PathLike[str]) -> list[dict]:
    try:
        data = json.loads(Path(path).read_text())
        return list(data["epochs"]) if data.get("version") == HISTORY_VERSION else []
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return []


def read_history(path: str | os.PathLike[str]) -> dict[int, dict[str, float]]:
    """``{epoch: {metric: value}}`` of a history file; ``{}`` for a missing or unreadable one (a
    history is evidence, not state: a damaged file is ignored, never trusted in part)."""
    out: dict[int, dict[str, float]] = {}
    try:
        for entry in _entries(path):
            metrics = {str(k): float(v) for k, v in entry["metrics"].items()}
            out[int(entry["epoch"])] = {k: v for k, v in metrics.items() if math.isfinite(v)}
    except (ValueError, TypeError, KeyError, AttributeError):
        return {}
    return out


def record_epoch(path: str | os.PathLike[str], epoch: int, step: int, metrics: Mapping[str, float]) -> None:
    """Add (or replace) ``epoch``'s entry and drop later ones (a resumed run replays them), then
    write the file atomically."""
    kept = [e for e in _entries(path) if isinstance(e, dict) and isinstance(e.get("epoch"), int)
            and e["epoch"] < epoch]
    kept.append({"epoch": int(epoch), "step": int(step), "metrics": {k: float(v) for k, v in metrics.items()}})
    text = json.dumps({"version": HISTORY_VERSION, "epochs": kept}, indent=1, allow_nan=True)
    atomic_write_text(path, text + "\n")
