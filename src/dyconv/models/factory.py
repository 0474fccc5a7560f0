"""The conv factory: one model code path builds the static and the dynamic network.

Every model takes a ``conv_layer`` (``nn.Conv2d``, :class:`~dyconv.layers.DynamicConv2d`, or a
``functools.partial`` of either) and calls it with ``nn.Conv2d``'s arguments wherever a conv may
be dynamic; the builders pick it with :func:`get_conv_layer`. After construction a model applies a
per-layer ``num_kernels`` spec with :func:`~dyconv.layers.set_num_kernels` and only then
initialises its weights (:func:`init_weights`), so rebuilt layers are initialised like the others.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from dyconv.layers import DynamicConv2d, KernelSpec, dynamic_layers, set_num_kernels

__all__ = [
    "DYNAMIC_KWARGS",
    "ConvLayer",
    "ConvNormAct",
    "LayerFactory",
    "apply_dynamic_options",
    "apply_num_kernels",
    "check_static_kwargs",
    "dynamic_options",
    "get_conv_layer",
    "init_weights",
    "make_divisible",
]

#: A callable with ``nn.Conv2d``'s signature: ``nn.Conv2d``, ``DynamicConv2d`` or a partial.
ConvLayer = Callable[..., nn.Module]
#: A norm or activation factory (class or partial), as torchvision's ``norm_layer``.
LayerFactory = Callable[..., nn.Module]

#: Keyword arguments that only the dynamic builders (``dy_*``) accept.
DYNAMIC_KWARGS = ("num_kernels", "reduction", "min_hidden", "temperature", "path")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never going down by more than 10%
    (the MobileNet rule, torchvision's ``_make_divisible``)."""
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def get_conv_layer(
    dynamic: bool = False,
    *,
    num_kernels: KernelSpec = 4,
    reduction: int = 4,
    min_hidden: int = 1,
    temperature: float = 30.0,
    path: str = "auto",
) -> ConvLayer:
    """``nn.Conv2d``, or a ``functools.partial`` of :class:`DynamicConv2d` with these options.

    A non-int ``num_kernels`` (a per-layer list or glob mapping) gives K = 4 here; the model
    then applies the spec with :func:`apply_num_kernels` once every layer exists.
    """
    if not dynamic:
        return nn.Conv2d
    k = num_kernels if isinstance(num_kernels, int) and not isinstance(num_kernels, bool) else 4
    return functools.partial(
        DynamicConv2d,
        num_kernels=k,
        reduction=reduction,
        min_hidden=min_hidden,
        temperature=temperature,
        path=path,
    )


def dynamic_options(
    num_kernels: KernelSpec = 4,
    reduction: int = 4,
    min_hidden: int = 1,
    temperature: float = 30.0,
    path: str = "auto",
) -> dict[str, Any]:
    """The dynamic builders' options as a dict (what :func:`get_conv_layer` takes)."""
    return dict(num_kernels=num_kernels, reduction=reduction, min_hidden=min_hidden, temperature=temperature, path=path)


def check_static_kwargs(model_name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise ``TypeError`` if a static builder received dynamic-only options."""
    bad = [k for k in DYNAMIC_KWARGS if k in kwargs]
    if bad:
        raise TypeError(
            f"{model_name} is a static model and takes no {', '.join(bad)}; "
            f"use dy_{model_name} for a dynamic one (or pass conv_layer=... explicitly)"
        )


def apply_dynamic_options(model_name: str, dynamic: dict[str, Any] | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What every ``_create_<family>`` helper does first: a static build (``dynamic`` None)
    rejects dynamic-only options; a dynamic one injects the dynamic conv factory and the K spec.
    Updates and returns ``kwargs``."""
    if dynamic is None:
        check_static_kwargs(model_name, kwargs)
    else:
        kwargs.setdefault("conv_layer", get_conv_layer(True, **dynamic))
        kwargs.setdefault("num_kernels", dynamic["num_kernels"])
    return kwargs


def apply_num_kernels(model: nn.Module, num_kernels: KernelSpec | None) -> None:
    """Give each :class:`DynamicConv2d` of ``model`` its K from a per-layer spec.

    ``num_kernels``: None (keep), an int, a list in ``named_modules()`` order of the dynamic
    convs, or a mapping from fnmatch globs on qualified names to K (unmatched layers: 4).
    Raises ``ValueError`` if a spec is given but the model has no dynamic conv.
    """
    if num_kernels is None:
        return
    if not any(True for _ in dynamic_layers(model)):
        raise ValueError(
            "num_kernels was given but the model has no DynamicConv2d (static conv_layer); "
            "use the dy_ model or a dynamic conv_layer"
        )
    set_num_kernels(model, num_kernels)


def _init_conv(weight_views, mode: str, nonlinearity: str) -> None:
    for w in weight_views:
        nn.init.kaiming_normal_(w, mode=mode, nonlinearity=nonlinearity)


def init_weights(
    model: nn.Module,
    *,
    conv_mode: str = "fan_out",
    nonlinearity: str = "relu",
    linear_std: float | None = None,
) -> None:
    """torchvision-style init of a whole model.

    Convs: kaiming normal (``conv_mode``), zero bias. A :class:`DynamicConv2d` is initialised per
    kernel (``weight.unbind(0)``: the fan of one kernel, not of the 5-D tensor), zero biases; its
    attention MLP keeps ``nn.Linear``'s default init (near-uniform attention at the start).
    Norms: weight 1, bias 0. Linear layers: ``normal(0, linear_std)`` and zero bias if
    ``linear_std`` is given (MobileNets), else left at PyTorch's default (ResNet).
    """
    skip: set[int] = set()
    for m in model.modules():
        if isinstance(m, DynamicConv2d):
            skip.update(id(sub) for sub in m.modules())
            _init_conv(m.weight.unbind(0), conv_mode, nonlinearity)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif id(m) in skip:
            continue
        elif isinstance(m, nn.Conv2d):
            _init_conv([m.weight], conv_mode, nonlinearity)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and linear_std is not None:
            nn.init.normal_(m.weight, 0, linear_std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class ConvNormAct(nn.Sequential):
    """Conv, optional norm, optional activation: torchvision's ``Conv2dNormActivation`` layout
    (children ``0``, ``1``, ``2``, so state_dict keys match torchvision's).

    ``padding`` defaults to ``(kernel_size - 1) // 2 * dilation``; the conv has a bias only when
    there is no norm (unless ``bias`` says otherwise).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int | None = None,
        groups: int = 1,
        dilation: int = 1,
        bias: bool | None = None,
        *,
        conv_layer: ConvLayer | None = None,
        norm_layer: LayerFactory | None = nn.BatchNorm2d,
        act_layer: LayerFactory | None = nn.ReLU,
        inplace: bool | None = True,
    ) -> None:
        conv_layer = nn.Conv2d if conv_layer is None else conv_layer
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers: list[nn.Module] = [
            conv_layer(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        ]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if act_layer is not None:
            layers.append(act_layer() if inplace is None else act_layer(inplace=inplace))
        super().__init__(*layers)
        self.out_channels = out_channels
