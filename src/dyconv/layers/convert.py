"""Model-level helpers: temperature, recompute, and converting any model to dynamic convs."""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Union

import torch
from torch import nn

from dyconv.layers.dynamic_conv import DynamicConvNd, KernelWorkspace, dynamic_class_for
from dyconv.layers.options import DYNAMIC_CONVS, DynamicOptions, PendingConv, options_from

__all__ = [
    "ModuleFilter",
    "build_dynamic_convs",
    "convert_to_dynamic",
    "dynamic_layers",
    "get_temperature",
    "replace_modules",
    "set_recompute_kernels",
    "set_temperature",
    "share_kernel_workspace",
]

#: A filter: a glob, several globs, or a callable ``(name, module) -> bool``.
ModuleFilter = Union[str, Sequence[str], Callable[[str, nn.Module], bool]]


def dynamic_layers(module: nn.Module) -> Iterator[tuple[str, DynamicConvNd]]:
    """``(qualified name, layer)`` for every dynamic conv (1-D, 2-D or 3-D) in ``module``."""
    for name, m in module.named_modules():
        if isinstance(m, DynamicConvNd):
            yield name, m


@torch.no_grad()
def set_temperature(module: nn.Module, value: float) -> int:
    """Set the temperature of every dynamic layer in place; returns how many."""
    if not value > 0:
        raise ValueError(f"temperature must be > 0, got {value!r}")
    n = 0
    for _, layer in dynamic_layers(module):
        layer.temperature.fill_(value)
        n += 1
    return n


def set_recompute_kernels(module: nn.Module, enabled: bool = True) -> int:
    """Trade a matmul per backward for activation memory in every dynamic layer (see
    ``DynamicConvNd(recompute_kernels=...)``); returns how many layers were set."""
    n = 0
    for _, layer in dynamic_layers(module):
        layer.recompute_kernels = bool(enabled)
        n += 1
    return n


def share_kernel_workspace(module: nn.Module) -> int:
    """Give every dynamic layer of ``module`` one :class:`KernelWorkspace` (the memory held is then
    that of the largest layer's per-sample kernels, not their sum); returns how many layers.
    :func:`convert_to_dynamic` and the model builders do it."""
    layers = [layer for _, layer in dynamic_layers(module)]
    shared = KernelWorkspace()
    for layer in layers:
        layer.kernel_workspace = shared
    return len(layers)


def get_temperature(module: nn.Module) -> float | None:
    """The temperature shared by every dynamic layer (None if there is none).

    Raises ValueError if layers disagree (read ``layer.temperature`` per layer then).
    """
    values = {float(layer.temperature) for _, layer in dynamic_layers(module)}
    if not values:
        return None
    if len(values) > 1:
        raise ValueError(f"dynamic layers have different temperatures {sorted(values)}; read each layer's .temperature")
    return values.pop()


def _matches(filt: ModuleFilter | None, name: str, module: nn.Module) -> bool:
    if filt is None:
        return False
    if callable(filt):
        return bool(filt(name, module))
    patterns = [filt] if isinstance(filt, str) else list(filt)
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


_PLAIN_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _plain_conv(m: nn.Module) -> bool:
    """An ``nn.ConvNd`` or a subclass that computes exactly what it computes."""
    base = next((c for c in _PLAIN_CONVS if isinstance(m, c)), None)
    if base is None:
        return False
    cls = type(m)
    return cls.forward is base.forward and cls._conv_forward is base._conv_forward


def replace_modules(model: nn.Module, new: dict[int, nn.Module]) -> nn.Module:
    """Swap modules (by identity) everywhere they are referenced, shared ones included (the
    modules of ``model`` as they were: a new module may hold the one it replaces)."""
    if id(model) in new:
        return new[id(model)]
    for parent in list(model.modules()):
        for child_name, child in list(parent._modules.items()):
            if child is not None and id(child) in new:
                parent._modules[child_name] = new[id(child)]
    return model


def convert_to_dynamic(
    model: nn.Module,
    options: DynamicOptions | None = None,
    *,
    include: ModuleFilter | None = None,
    exclude: ModuleFilter | None = None,
    skip_first: bool = False,
    skip_depthwise: bool = False,
    skip_pointwise: bool = False,
    conv_types: Sequence[type[nn.Module]] | None = None,
    noise: float = 0.0,
    generator: torch.Generator | None = None,
    inplace: bool = True,
    **option_keywords: Any,
) -> nn.Module:
    """Replace plain ``nn.Conv1d`` / ``nn.Conv2d`` / ``nn.Conv3d`` layers of any model with
    :class:`DynamicConv1d` / :class:`DynamicConv2d` / :class:`DynamicConv3d`.

    Every kernel of a new layer is a copy of the static weight (and bias), so the converted
    model computes exactly what the original did (see :meth:`DynamicConvNd.from_conv`: with
    ``softmax`` whatever the attention, with ``sigmoid``/``omni`` at the neutral attention they
    start from); ``noise`` > 0 perturbs the copies (relative to each weight's std) so the
    softmax attention receives a gradient.

    The options come as keywords, ``convert_to_dynamic(model, num_kernels=4, reduction=4,
    routing="omni")`` (every :class:`DynamicOptions` field), or as one ``options`` object to
    reuse; both at once is an error. ``num_kernels`` is one K, a list with one K per converted
    conv in ``named_modules()`` order, or a mapping from fnmatch globs on names to K.

    Args:
        model: any ``nn.Module`` (torchvision, timm, your own); returned converted.
        options: a :class:`DynamicOptions` (default: the keyword options, else ``DynamicOptions()``).
        include: only convs matching this (globs on qualified names, or ``(name, m) -> bool``)
            are converted; default all.
        exclude: convs matching this stay static.
        skip_first: keep the model's first conv (in ``named_modules()`` order) static.
        skip_depthwise: keep depthwise convs (``groups == in_channels > 1``) static.
        skip_pointwise: keep 1x1 convs static.
        conv_types: exact module types to convert. Default: ``nn.Conv1d/2d/3d`` and their
            subclasses that keep ``nn.ConvNd``'s computation (no own ``forward`` or
            ``_conv_forward``: torchvision's video ``Conv3DSimple``). Subclasses that change it
            (timm's ``Conv2dSame``, ``StdConv2d``) are left alone unless listed here; a listed
            subclass is rebuilt from its ``nn.ConvNd`` arguments.
        inplace: modify ``model`` (default) or convert a deep copy.
        **option_keywords: :class:`DynamicOptions` fields (``num_kernels``, ``reduction``,
            ``min_hidden``, ``temperature``, ``path``, ``recompute_kernels``, ``routing``).
    """
    options = options_from(options, option_keywords, "convert_to_dynamic")
    if not inplace:
        model = copy.deepcopy(model)
    if conv_types is None:
        candidates = [(n, m) for n, m in model.named_modules() if _plain_conv(m)]
    else:
        types = tuple(conv_types)
        candidates = [(n, m) for n, m in model.named_modules() if type(m) in types]
    first = candidates[0][0] if candidates else None
    selected = []
    for name, conv in candidates:
        if include is not None and not _matches(include, name, conv):
            continue
        if _matches(exclude, name, conv):
            continue
        if skip_first and name == first:
            continue
        if skip_depthwise and conv.groups == conv.in_channels and conv.groups > 1:
            continue
        if skip_pointwise and all(k == 1 for k in conv.kernel_size):
            continue
        selected.append((name, conv))
    ks = options.kernels_for([n for n, _ in selected])
    new: dict[int, nn.Module] = {}
    for (_, conv), k in zip(selected, ks):
        layer_options = dataclasses.replace(options, num_kernels=k)
        cls = dynamic_class_for(conv)
        new[id(conv)] = cls.from_conv(conv, layer_options, noise=noise, generator=generator)
    model = replace_modules(model, new)
    share_kernel_workspace(model)
    return model


def build_dynamic_convs(model: nn.Module, options: DynamicOptions) -> nn.Module:
    """Replace every :class:`PendingConv` of ``model`` by a :class:`DynamicConvNd` with its K
    (resolved on the qualified names); returns ``model``. Models call it before their init."""
    pending = [(n, m) for n, m in model.named_modules() if isinstance(m, PendingConv)]
    if not pending and not (isinstance(options.num_kernels, int) and not isinstance(options.num_kernels, bool)):
        raise ValueError(
            "num_kernels was given per layer but the model has no dynamic conv (static conv_layer); "
            "use the dy_ model or a dynamic conv_layer"
        )
    ks = options.kernels_for([n for n, _ in pending])
    new = {
        id(m): DYNAMIC_CONVS[m.dims](*m.args, **m.kwargs, **options.layer_kwargs(k)) for (_, m), k in zip(pending, ks)
    }
    model = replace_modules(model, new)
    share_kernel_workspace(model)
    return model
