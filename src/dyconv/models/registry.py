"""Model registry: ``create_model(name, **kwargs)`` builds any registered network by name.

Names: ``<name>`` is the static network, ``dy_<name>`` its dynamic form (same code, a dynamic
``conv_layer``). Builders are plain functions registered with :func:`register_model`; a builder
only sets architecture arguments and forwards ``**kwargs`` to the model class (timm's pattern).

Conventions every registered model follows:

- it accepts ``num_classes``, ``in_channels`` and ``width_mult``; a ``dy_`` model also
  ``dynamic=DynamicOptions(...)`` and/or its flat keys ``num_kernels`` (int, list in
  ``named_modules()`` order of its dynamic convs, or a mapping of fnmatch globs on qualified
  module names to K), ``reduction``, ``min_hidden``, ``temperature``, ``path``,
  ``recompute_kernels``, ``routing`` (mapped onto the options by
  :func:`~dyconv.models.factory.dynamic_from_kwargs`); a static builder rejects those with
  ``TypeError``;
- it MAY define ``param_groups() -> dict[str, list[nn.Parameter]]`` that splits its parameters
  (each exactly once) into named groups, e.g. ``{"backbone": [...], "head": [...]}`` for
  DeepLabV3+; the training code gives each group its own learning-rate multiplier. Models
  without a meaningful split do not define it.
"""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

__all__ = ["create_model", "get_model_builder", "is_model", "list_models", "register_model"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(fn: F | None = None, *, name: str | None = None) -> Any:
    """Register a builder under ``name`` (default: the function's name).

    Usable as ``@register_model`` or ``@register_model(name="...")``. A duplicate name raises
    ``ValueError``.
    """

    def decorator(f: F) -> F:
        key = name or f.__name__
        if key in _MODELS:
            raise ValueError(f"model {key!r} is already registered (by {_MODELS[key].__module__})")
        _MODELS[key] = f
        return f

    return decorator if fn is None else decorator(fn)


def list_models(pattern: str | None = None) -> list[str]:
    """Sorted registered names, optionally filtered by an fnmatch ``pattern`` (``"dy_*"``)."""
    names = sorted(_MODELS)
    if pattern is not None:
        names = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
    return names


def is_model(name: str) -> bool:
    """Whether ``name`` is registered."""
    return name in _MODELS


def get_model_builder(name: str) -> Callable[..., nn.Module]:
    """The registered builder for ``name`` (``ValueError`` with close matches if unknown)."""
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(_MODELS), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}{hint} Registered models: {', '.join(list_models())}") from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with ``kwargs`` (``num_classes``, ``width_mult``, ...)."""
    return get_model_builder(name)(**kwargs)
