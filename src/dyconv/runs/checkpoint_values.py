"""The values in a handed checkpoint's config, guarded: sizes checked before anything is allocated,
resource settings capped to this machine.

:mod:`dyconv.runs.safe_config` decides *what* a stored config may build; this module decides *how
big*. A checkpoint is data, so its numbers are too: ``model.num_classes=200000000`` or a huge
``width_mult`` must be refused in one line, not allocated (the tools build the model on PyTorch's
``meta`` device first and compare every shape with the weights, :func:`shape_mismatch`), and
``data.num_workers=48`` must not start 48 processes (:func:`capped_resources`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

import torch

from dyconv.errors import ConfigError

__all__ = [
    "MAX_BATCH_INPUT_ELEMENTS",
    "MAX_IMAGE_SIZE",
    "MAX_STORED_BATCH",
    "available_cores",
    "capped_resources",
    "check_stored_sizes",
    "shape_mismatch",
]

log = logging.getLogger(__name__)

#: Largest image side a checkpoint's ``data.image_size`` / ``data.eval_size`` may name (4x
#: ImageNet's 224 and VOC's 513 are well inside); the command line may ask for more.
MAX_IMAGE_SIZE = 2048
#: Largest batch a checkpoint's ``data.batch_size`` / ``data.eval_batch_size`` is taken at (every
#: shipped config is at or below it); larger stored batches are lowered to it.
MAX_STORED_BATCH = 1024
#: A stored batch is also lowered so that one batch of inputs stays under 1 GiB of float32.
MAX_BATCH_INPUT_ELEMENTS = 2**28

_NUM_CLASSES_SECTIONS = ("model", "task", "data")
_SIZE_KEYS = ("image_size", "eval_size")
_BATCH_KEYS = ("batch_size", "eval_batch_size")


def _whole(value: Any) -> bool:
    return type(value) is int


def check_stored_sizes(config: Mapping[str, Any], source: str | os.PathLike[str]) -> None:
    """Refuse a stored config whose sizes no real run has, before anything is built (one line).

    - ``num_classes`` (wherever ``model``, ``task`` and ``data`` set it) must be a positive
      integer, the same in all three: the task's metrics and the inspector's tables are sized by
      it, and only the model's is checked against the weights.
    - ``data.image_size`` / ``data.eval_size`` (unless null) must be integers in 1..MAX_IMAGE_SIZE:
      they size every input batch but no weight.
    """
    found: dict[str, Any] = {}
    for section in _NUM_CLASSES_SECTIONS:
        node = config.get(section)
        if isinstance(node, Mapping) and "num_classes" in node:
            found[f"{section}.num_classes"] = node["num_classes"]
    for key, value in found.items():
        if not _whole(value) or value < 1:
            raise ConfigError(f"{source}: its stored {key}={value!r} is not a positive integer; the checkpoint is "
                              "damaged or was edited")
    if len(set(found.values())) > 1:
        shown = ", ".join(f"{k}={v}" for k, v in found.items())
        raise ConfigError(f"{source}: its stored config disagrees on the number of classes ({shown}); the checkpoint "
                          "is damaged or was edited")
    data = config.get("data")
    for key in _SIZE_KEYS:
        value = data.get(key) if isinstance(data, Mapping) else None
        if value is None:
            continue
        if not _whole(value) or not 1 <= value <= MAX_IMAGE_SIZE:
            raise ConfigError(
                f"{source}: its stored data.{key}={value!r} is outside 1..{MAX_IMAGE_SIZE} (no dyconv dataset has "
                "larger images); the checkpoint is damaged or was edited"
            )


def shape_mismatch(expected: Mapping[str, torch.Tensor], stored: Mapping[str, torch.Tensor]) -> str | None:
    """The first difference between the state dict a config builds (``expected``, meta tensors
    will do) and the one a checkpoint holds (``stored``), in a few words, or None when every key
    and shape agree."""
    for key, tensor in expected.items():
        if key not in stored:
            return f"{key} is missing from the checkpoint"
        if tuple(stored[key].shape) != tuple(tensor.shape):
            return (f"{key} has shape {list(stored[key].shape)} in the checkpoint, {list(tensor.shape)} in the model "
                    "its config describes")
    extra = next((key for key in stored if key not in expected), None)
    if extra is not None:
        return f"the checkpoint holds {extra}, which the model its config describes has not"
    return None


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def capped_resources(stored: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``stored`` (a checkpoint's data config) with the resource settings it names capped to this
    machine, except those the command line sets (``overrides``): ``num_workers`` to the cores
    available, ``batch_size`` / ``eval_batch_size`` to :data:`MAX_STORED_BATCH` and to one batch of
    inputs under 1 GiB of float32, and ``verify`` (decode every file) off. Each change is logged."""
    out = dict(stored)

    def lower(key: str, limit: int, why: str) -> None:
        value = out.get(key)
        if key in overrides or not _whole(value) or value <= limit:
            return
        log.warning("Using data.%s=%d, not the checkpoint's %d (%s); data.%s=N on the command line sets it",
                    key, limit, value, why, key)
        out[key] = limit

    lower("num_workers", available_cores(), "this machine's cores")
    side = max((v for k in _SIZE_KEYS if _whole(v := out.get(k))), default=1)
    channels = out.get("in_channels") if _whole(out.get("in_channels")) and out["in_channels"] > 0 else 3
    per_sample = channels * side * side
    limit = max(1, min(MAX_STORED_BATCH, MAX_BATCH_INPUT_ELEMENTS // per_sample))
    for key in _BATCH_KEYS:
        lower(key, limit, f"at most {limit} of {channels}x{side}x{side} inputs per batch")
    if out.get("verify") is True and "verify" not in overrides:
        out["verify"] = False
    return out
