"""Check a run config read from a checkpoint before anything in it is instantiated.

A checkpoint is data. ``python -m dyconv.train`` stores the run config in it
(``checkpoint["dyconv"]["config"]``) and ``dyconv.eval|inspect|export`` rebuild the model, task and
data from it with Hydra's ``instantiate``, which imports and calls whatever ``_target_`` names. A
checkpoint from someone else could name ``shutil.copy`` or ``builtins.open`` there, so a stored
config is accepted only if:

* every ``_target_`` (top level, nested, inside lists and ``_args_``) is a plain string from the
  allow-list of its section (:data:`ALLOWED_TARGETS`: dyconv's model factory, datamodules, tasks,
  schedule functions, the temperature callback and the torch optimizers/schedulers dyconv's configs
  use), compared by exact name, so no attacker-chosen module is ever imported;
* Hydra's other special keys have their plain types (``_partial_``/``_recursive_`` bools,
  ``_convert_`` one of Hydra's modes, ``_args_`` a list) and no other ``_key_`` appears;
* no string holds an OmegaConf interpolation (``${...}``): dyconv stores configs resolved, so an
  interpolation can only be an attempt to run a resolver (``oc.env``, ``oc.decode``, ...);
* it holds plain values only (dict, list, str, int, float, bool, None), no cycles, bounded depth.

Anything else raises :class:`UnsafeConfigError` naming the offending key and value.
"""

from __future__ import annotations

import os
from typing import Any

from dyconv.errors import DyconvError

__all__ = ["ALLOWED_TARGETS", "UnsafeConfigError", "check_run_config", "check_section"]

_DATAMODULES = frozenset(
    f"dyconv.datamodules.{name}DataModule"
    for name in ("FashionMNIST", "ImageNet", "Imagenette", "MNIST", "MNIST1D", "MNISTOffline", "TinyImageNet", "VOC",
                 "VOCSBD")
)
_SCHEDULERS = frozenset(
    {f"dyconv.tasks.schedulers.{name}" for name in ("cosine", "poly", "linear", "constant", "multistep", "step")}
    | {f"torch.optim.lr_scheduler.{name}" for name in (
        "OneCycleLR", "CosineAnnealingLR", "StepLR", "MultiStepLR", "ExponentialLR", "PolynomialLR", "LinearLR",
        "ConstantLR",
    )}
)

#: Section of the stored run config -> the ``_target_`` names allowed anywhere inside it. Sections
#: not listed (``seed``, ``run_name``, unknown keys) may hold no ``_target_`` at all. A new dyconv
#: datamodule/task that train configs use must be added here (a test checks the shipped configs).
ALLOWED_TARGETS: dict[str, frozenset[str]] = {
    "model": frozenset({"dyconv.models.create_model"}),
    "data": _DATAMODULES,
    "task": frozenset({"dyconv.tasks.ClassificationTask", "dyconv.tasks.SegmentationTask"}),
    "optimizer": frozenset(f"torch.optim.{name}" for name in ("SGD", "Adam", "AdamW", "RMSprop")),
    "scheduler": _SCHEDULERS,
    "temperature": frozenset({"dyconv.callbacks.TemperatureScheduler"}),
}

_CONVERT_MODES = frozenset({"none", "partial", "object", "all"})
_MAX_DEPTH = 64
_MAX_NODES = 1_000_000


class UnsafeConfigError(DyconvError, ValueError):
    """A checkpoint's stored config names something dyconv would not build from a checkpoint."""


def _refuse(source: str, where: str, what: str) -> UnsafeConfigError:
    return UnsafeConfigError(
        f"refusing to rebuild from {source}: {where} {what}; a checkpoint's config may only build dyconv's own "
        "models, datamodules and tasks (nothing was instantiated)"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 120 else text[:117] + "..."


def check_section(section: str, node: Any, source: str | os.PathLike = "checkpoint") -> None:
    """Check one section (``"model"``, ``"data"``, ...) of a stored run config; raise if unsafe.

    Walks the whole tree iteratively (no recursion limit to hit), refusing cycles and
    anything that is not a plain value.
    """
    source = str(source)
    allowed = ALLOWED_TARGETS.get(section, frozenset())
    seen: set[int] = set()
    stack: list[tuple[Any, str, int]] = [(node, section, 0)]
    count = 0
    while stack:
        value, where, depth = stack.pop()
        count += 1
        if count > _MAX_NODES or depth > _MAX_DEPTH:
            raise _refuse(source, section, f"is nested deeper or larger than any dyconv config (at {where})")
        if value is None or type(value) in (bool, int, float):
            continue
        if type(value) is str:
            if "${" in value:
                raise _refuse(source, where, f"holds an interpolation {_short(value)} (stored configs are resolved)")
            continue
        if type(value) not in (dict, list):
            raise _refuse(source, where, f"holds a {type(value).__name__}, not a plain config value")
        if id(value) in seen:
            raise _refuse(source, where, "refers back to itself (a cyclic config)")
        seen.add(id(value))
        if type(value) is dict:
            for key, child in value.items():
                if type(key) is not str and type(key) is not int:
                    raise _refuse(source, where, f"has a key of type {type(key).__name__}")
                name = f"{where}.{key}"
                if type(key) is str:
                    if "${" in key:
                        raise _refuse(source, name, "is an interpolation key")
                    _check_special(source, section, allowed, name, key, child)
                stack.append((child, name, depth + 1))
        else:
            for i, child in enumerate(value):
                stack.append((child, f"{where}[{i}]", depth + 1))


def _check_special(source: str, section: str, allowed: frozenset[str], name: str, key: str, value: Any) -> None:
    if not (len(key) > 2 and key.startswith("_") and key.endswith("_")):
        return
    if key == "_target_":
        if type(value) is not str:
            raise _refuse(source, name, f"is {_short(value)}, not a plain class or function name")
        if value not in allowed:
            raise _refuse(source, name, f"names {_short(value)}, which is not allowed in `{section}`")
    elif key in ("_partial_", "_recursive_"):
        if type(value) is not bool:
            raise _refuse(source, name, f"is {_short(value)}, not true/false")
    elif key == "_convert_":
        if type(value) is not str or value not in _CONVERT_MODES:
            raise _refuse(source, name, f"is {_short(value)}, not one of {sorted(_CONVERT_MODES)}")
    elif key == "_args_":
        if type(value) is not list:
            raise _refuse(source, name, f"is {_short(value)}, not a list")
    else:
        raise _refuse(source, name, "is not a key dyconv's configs use")


def check_run_config(config: Any, source: str | os.PathLike = "checkpoint", *,
                     required: tuple[str, ...] = ("model", "data", "task")) -> dict[str, Any]:
    """Check a whole stored run config (every section); return it (a plain dict) if it is safe.

    Args:
        config: ``checkpoint["dyconv"]["config"]``.
        source: the checkpoint path, for messages.
        required: sections that must be present, each a mapping with an allowed ``_target_``.
    """
    if type(config) is not dict:
        raise _refuse(str(source), "the run config", f"is a {type(config).__name__}, not a mapping")
    for section, node in config.items():
        if type(section) is not str:
            raise _refuse(str(source), "the run config", f"has a key of type {type(section).__name__}")
        check_section(section, node, source)
    for section in required:
        node = config.get(section)
        if type(node) is not dict or "_target_" not in node:
            raise _refuse(str(source), f"`{section}`", "is missing or has no _target_")
    return config
