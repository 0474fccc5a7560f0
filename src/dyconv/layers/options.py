"""The one carrier of dynamic-convolution options: :class:`DynamicOptions`.

Models (``dynamic=``), :meth:`DynamicConvNd.from_conv` and :func:`convert_to_dynamic` all take
one frozen :class:`DynamicOptions`; the model registry maps the flat config keys
(``num_kernels``, ``reduction``, ``routing``, ...) onto it in one place
(:meth:`DynamicOptions.pop_from`). The number of spatial dims is not an option: it is the conv's
(``conv_layer_for(dims)`` gives the factory for 1-D, 2-D or 3-D model code).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import importlib
import types
import warnings
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from typing import Any, Union

from torch import nn

from dyconv.layers.paths import PATHS
from dyconv.layers.routing import ROUTINGS

__all__ = [
    "ROUTINGS",
    "DynamicOptions",
    "KernelSpec",
    "check_options",
    "options_from",
    "resolve_num_kernels",
]

#: ``num_kernels``: one K for all layers, one K per layer (in ``named_modules()`` order), or
#: fnmatch globs on qualified module names -> K (first match wins, unmatched layers: 4).
KernelSpec = Union[int, Sequence[int], Mapping[str, int]]

#: Spatial dims -> DynamicConv1d/2d/3d, filled by :mod:`dyconv.layers.dynamic_conv` when it is imported
#: (``dyconv.layers`` imports it first), so that options can build layers without importing it.
DYNAMIC_CONVS: dict = {}

#: K of a layer no glob of a mapping spec matches.
DEFAULT_NUM_KERNELS = 4


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def resolve_num_kernels(spec: KernelSpec, names: Sequence[str], default: int = DEFAULT_NUM_KERNELS) -> list[int]:
    """K for each of ``names`` (qualified module names in ``named_modules()`` order)."""
    if isinstance(spec, bool):
        raise TypeError(f"num_kernels must be an int, a list of ints or a mapping, got {spec!r}")
    if isinstance(spec, int):
        ks = [spec] * len(names)
    elif isinstance(spec, Mapping):
        patterns = {str(p): k for p, k in spec.items()}
        unused = set(patterns)
        ks = []
        for name in names:
            for pattern, k in patterns.items():
                if fnmatch.fnmatchcase(name, pattern):
                    ks.append(k)
                    unused.discard(pattern)
                    break
            else:
                ks.append(default)
        if unused:
            raise ValueError(
                f"num_kernels pattern(s) {sorted(unused)} match no dynamic conv; the dynamic convs are: {list(names)}"
            )
    elif isinstance(spec, Sequence) and not isinstance(spec, str):
        ks = list(spec)
        if len(ks) != len(names):
            raise ValueError(
                f"num_kernels has {len(ks)} entries but there are {len(names)} dynamic convs "
                f"(in named_modules() order): {list(names)}"
            )
    else:
        raise TypeError(f"num_kernels must be an int, a list of ints or a mapping, got {spec!r}")
    for k in ks:
        if not _is_int(k) or k < 1:
            raise ValueError(f"every num_kernels value must be a positive integer, got {k!r}")
    return ks


@dataclasses.dataclass(frozen=True)
class DynamicOptions:
    """What makes a conv dynamic, for one layer or a whole model.

    Args:
        num_kernels: K: an int, a per-layer list (``named_modules()`` order of the dynamic convs)
            or a mapping of fnmatch globs on qualified module names to K (unmatched: 4).
        reduction / min_hidden: attention hidden width ``max(in_channels // reduction, min_hidden)``.
        temperature: the initial softmax temperature (training anneals it with
            :class:`dyconv.callbacks.TemperatureScheduler`, which owns it from then on).
        path: ``"auto"`` or a fixed strategy from :data:`~dyconv.layers.PATHS`.
        recompute_kernels: the grouped path recomputes per-sample kernels in backward.
        routing: how the attention is formed (:mod:`dyconv.layers.routing`): ``"softmax"``
            (the paper), ``"sigmoid"`` (CondConv) or ``"omni"`` (ODConv).
    """

    num_kernels: KernelSpec = 4
    reduction: int = 4
    min_hidden: int = 1
    temperature: float = 30.0
    path: str = "auto"
    recompute_kernels: bool = False
    routing: str = "softmax"

    def __post_init__(self) -> None:
        spec = self.num_kernels
        if isinstance(spec, Mapping):
            spec = types.MappingProxyType({str(k): v for k, v in spec.items()})
        elif isinstance(spec, Sequence) and not isinstance(spec, str):
            spec = tuple(spec)
        object.__setattr__(self, "num_kernels", spec)
        if _is_int(spec):
            values: Sequence[Any] = [spec]
        elif isinstance(spec, (Mapping, tuple)):
            values = list(spec.values()) if isinstance(spec, Mapping) else list(spec)
        else:
            raise TypeError(f"num_kernels must be an int, a list of ints or a mapping, got {spec!r}")
        for k in values:
            if not _is_int(k) or k < 1:
                raise ValueError(f"every num_kernels value must be a positive integer, got {k!r}")
        check_options(reduction=self.reduction, min_hidden=self.min_hidden, temperature=self.temperature,
                      path=self.path, routing=self.routing)
        object.__setattr__(self, "recompute_kernels", bool(self.recompute_kernels))

    # ------------------------------------------------------------------ flat keys
    @classmethod
    def fields(cls) -> tuple[str, ...]:
        """The flat keys configs use (``model.num_kernels``, ``model.reduction``, ...)."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def pop_from(cls, kwargs: MutableMapping[str, Any]) -> DynamicOptions:
        """Build from (and remove) the flat keys in ``kwargs``; a ``dynamic`` entry (a
        :class:`DynamicOptions` or a mapping) is the base the flat keys override."""
        base = kwargs.pop("dynamic", None)
        if isinstance(base, Mapping):
            base = cls(**_plain(base))
        flat = {key: _plain(kwargs.pop(key)) for key in cls.fields() if key in kwargs}
        if base is None:
            return cls(**flat)
        return dataclasses.replace(base, **flat) if flat else base

    # ------------------------------------------------------------------ per layer
    def layer_kwargs(self, num_kernels: int) -> dict[str, Any]:
        """The keyword-only ``DynamicConvNd`` arguments for one layer with ``num_kernels`` kernels."""
        return dict(
            num_kernels=num_kernels,
            reduction=self.reduction,
            min_hidden=self.min_hidden,
            temperature=self.temperature,
            path=self.path,
            recompute_kernels=self.recompute_kernels,
            routing=self.routing,
        )

    def kernels_for(self, names: Sequence[str]) -> list[int]:
        """K of each named dynamic conv (``names`` in ``named_modules()`` order)."""
        return resolve_num_kernels(self.num_kernels, names)

    @property
    def conv_layer(self) -> Callable[..., nn.Module]:
        """``conv_layer_for(2)``: the factory 2-D model code takes (``nn.Conv2d``'s signature)."""
        return self.conv_layer_for(2)

    def conv_layer_for(self, dims: int) -> Callable[..., nn.Module]:
        """A factory with ``nn.Conv{dims}d``'s signature for model code. With one K for every
        layer it builds the ``DynamicConv{dims}d`` at once (in model order, so a seed gives the
        same weights as any other way of building the model); with a per-layer K it records the
        arguments and :func:`build_dynamic_convs` builds each layer once, with its own K, when
        names are known."""
        if dims not in DYNAMIC_CONVS:
            raise ValueError(f"dynamic convs have 1, 2 or 3 spatial dims, got {dims!r}")
        if _is_int(self.num_kernels):
            return functools.partial(DYNAMIC_CONVS[dims], **self.layer_kwargs(self.num_kernels))
        return functools.partial(PendingConv, dims=dims)


def check_options(
    *, num_kernels: Any = 1, reduction: Any = 4, min_hidden: Any = 1, temperature: Any = 30.0, path: Any = "auto",
    routing: Any = "softmax",
) -> None:
    """The one check of a dynamic layer's options (the layer and :class:`DynamicOptions` call
    it): raises ValueError naming the first bad one. ``num_kernels`` is one layer's K here."""
    for key, value in (("num_kernels", num_kernels), ("reduction", reduction), ("min_hidden", min_hidden)):
        if not _is_int(value) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if path not in PATHS:
        raise ValueError(f"path must be one of {PATHS}, got {path!r}")
    if routing not in ROUTINGS:
        raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, got {routing!r}")


def options_from(options: DynamicOptions | None, keywords: Mapping[str, Any], caller: str) -> DynamicOptions:
    """The options a call gets: ``options`` (a :class:`DynamicOptions`) or the keyword form
    (``num_kernels=4, routing="omni", ...``, every field a keyword), not both; ``caller`` names
    the function in the errors."""
    fields = DynamicOptions.fields()
    unknown = [key for key in keywords if key not in fields]
    if unknown:
        raise TypeError(
            f"{caller}() got unexpected keyword argument(s) {', '.join(map(repr, unknown))}; "
            f"the dynamic options are {', '.join(fields)}"
        )
    if options is None:
        return DynamicOptions(**keywords)
    if not isinstance(options, DynamicOptions):
        raise TypeError(f"{caller}(): options must be a DynamicOptions, got {type(options).__name__}")
    if keywords:
        raise ValueError(
            f"{caller}() got options= and the keyword option(s) {', '.join(keywords)}; pass one form: "
            "options=DynamicOptions(...) or the keywords alone"
        )
    return options


class PendingConv(nn.Module):
    """A conv whose K is not known until its qualified name is (see :func:`build_dynamic_convs`)."""

    def __init__(self, *args: Any, dims: int = 2, **kwargs: Any) -> None:
        super().__init__()
        self.args, self.kwargs, self.dims = args, kwargs, dims

    def forward(self, x: Any) -> Any:  # pragma: no cover - replaced before use
        raise RuntimeError("a PendingConv was not built; call build_dynamic_convs(model, options)")


def _plain(value: Any) -> Any:
    """OmegaConf containers to plain Python (Hydra passes ListConfig / DictConfig)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def __getattr__(name: str) -> Any:
    # 0.1.0 exported build_dynamic_convs from here; it lives in dyconv.layers.convert now (options
    # stay below the layer classes). Kept for one minor version.
    if name == "build_dynamic_convs":
        warnings.warn(
            "dyconv.layers.options.build_dynamic_convs moved: import it from dyconv.layers",
            DeprecationWarning,
            stacklevel=2,
        )
        return importlib.import_module("dyconv.layers.convert").build_dynamic_convs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
