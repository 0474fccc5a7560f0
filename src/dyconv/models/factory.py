"""The conv factory: one model code path builds the static and the dynamic network.

Every model takes a ``conv_layer`` (``nn.Conv2d``, :class:`~dyconv.layers.DynamicConv2d`, or a
``functools.partial`` of either) and calls it with ``nn.Conv2d``'s arguments wherever a conv may
be dynamic. A dynamic model gets one :class:`~dyconv.layers.DynamicOptions` (``dynamic=``; the
``dy_*`` builders make it from the flat config keys with :func:`dynamic_from_kwargs`); its convs
are recorded while the model is assembled and built once each, with the K their qualified name
gets, by :func:`finish_model`, which then initialises every weight (:func:`init_weights`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from dyconv.layers import DynamicConvNd, DynamicOptions, build_dynamic_convs

__all__ = [
    "DYNAMIC_KWARGS",
    "ODCONV",
    "ConvLayer",
    "ConvNormAct",
    "LayerFactory",
    "check_width_mult",
    "dynamic_conv_layer",
    "dynamic_from_kwargs",
    "finish_model",
    "init_weights",
    "make_divisible",
]

#: A callable with ``nn.Conv2d``'s signature: ``nn.Conv2d``, ``DynamicConv2d`` or a partial.
ConvLayer = Callable[..., nn.Module]
#: A norm or activation factory (class or partial), as torchvision's ``norm_layer``.
LayerFactory = Callable[..., nn.Module]

#: Flat keyword arguments that only the dynamic builders (``dy_*``) accept.
DYNAMIC_KWARGS = DynamicOptions.fields()

#: The ``od_*`` builders' defaults: ODConv (Li, Zhou, Yao, "Omni-Dimensional Dynamic Convolution",
#: ICLR 2022) with its published settings: omni-dimensional attention, hidden width
#: ``max(in_channels // 16, 16)`` (r = 1/16) and K = 4 ("ODConv (4x)"; ``num_kernels=1`` is "1x").
ODCONV = DynamicOptions(num_kernels=4, reduction=16, min_hidden=16, routing="omni")


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, never going down by more than 10%
    (the MobileNet rule, torchvision's ``_make_divisible``)."""
    min_value = divisor if min_value is None else min_value
    new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if new_value < 0.9 * value:
        new_value += divisor
    return new_value


def check_width_mult(width_mult: float) -> None:
    """Every model's ``width_mult`` check."""
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")


def dynamic_from_kwargs(
    model_name: str, dynamic: bool, kwargs: dict[str, Any], default: DynamicOptions | None = None
) -> DynamicOptions | None:
    """The one place a builder's flat keys (``num_kernels``, ``reduction``, ``temperature``, ...,
    what configs and stored run configs hold) become a :class:`~dyconv.layers.DynamicOptions`.

    Pops them (and a ``dynamic=DynamicOptions(...)`` entry, which they override) from
    ``kwargs``. ``default`` is the base the flat keys override when no ``dynamic`` entry is given
    (the ``od_*`` builders pass :data:`ODCONV`; None: ``DynamicOptions()``'s defaults). A static
    builder (``dynamic`` False) rejects them with ``TypeError``.
    """
    if not dynamic:
        bad = [k for k in DYNAMIC_KWARGS if k in kwargs]
        if kwargs.get("dynamic") is not None:
            bad.append("dynamic")
        if bad:
            raise TypeError(
                f"{model_name} is a static model and takes no {', '.join(bad)}; "
                f"use dy_{model_name} for a dynamic one (or pass conv_layer=... explicitly)"
            )
        kwargs.pop("dynamic", None)
        return None
    if default is not None and kwargs.get("dynamic") is None:
        kwargs["dynamic"] = default
    return DynamicOptions.pop_from(kwargs)


def dynamic_conv_layer(conv_layer: ConvLayer, dynamic: DynamicOptions | None, dims: int = 2) -> ConvLayer:
    """The factory for a model's dynamic-capable ``dims``-D convs: ``dynamic``'s (K resolved by
    layer name when the model builds its dynamic convs) unless a custom ``conv_layer`` was given."""
    plain = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    return dynamic.conv_layer_for(dims) if dynamic is not None and conv_layer is plain else conv_layer


def finish_model(model: nn.Module, dynamic: DynamicOptions | None, **init: Any) -> None:
    """Last step of every model's ``__init__``: build its dynamic convs (each once, with the K
    its qualified name gets) and then initialise all weights (:func:`init_weights`)."""
    if dynamic is not None:
        build_dynamic_convs(model, dynamic)
    init_weights(model, **init)


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

    Convs: kaiming normal (``conv_mode``), zero bias. A dynamic conv is initialised per kernel
    (``weight.unbind(0)``: the fan of one kernel, not of the 5-D tensor), zero biases; its
    attention keeps the layer's own init (``nn.Linear``'s default: near-uniform attention at
    the start; ODConv's for ``omni``).
    Norms: weight 1, bias 0. Linear layers: ``normal(0, linear_std)`` and zero bias if
    ``linear_std`` is given (MobileNets), else left at PyTorch's default (ResNet).
    """
    if any(p.is_meta for p in model.parameters()):  # built for a shape check: nothing to fill (and per kernel, slow)
        return
    skip: set[int] = set()
    for m in model.modules():
        if isinstance(m, DynamicConvNd):
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
        conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: LayerFactory | None = nn.BatchNorm2d,
        act_layer: LayerFactory | None = nn.ReLU,
        inplace: bool | None = True,
    ) -> None:
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
