"""MobileNetV3 Small and Large (Howard et al., "Searching for MobileNetV3", ICCV 2019).

Block tables, layout and module names are torchvision's ``mobilenet_v3_small`` /
``mobilenet_v3_large``, so the static models load their ``state_dict`` as is. One code path
builds the static and the dynamic (``dy_``) network.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dyconv.layers import DynamicOptions
from dyconv.models.factory import (
    ConvLayer,
    ConvNormAct,
    LayerFactory,
    check_width_mult,
    dynamic_conv_layer,
    dynamic_from_kwargs,
    finish_model,
    make_divisible,
)
from dyconv.models.registry import register_model

__all__ = [
    "InvertedResidual",
    "InvertedResidualConfig",
    "MobileNetV3",
    "SqueezeExcitation",
    "dy_mobilenetv3_large",
    "dy_mobilenetv3_small",
    "mobilenetv3_large",
    "mobilenetv3_small",
]


#: torchvision's MobileNetV3 norm: BatchNorm with eps 1e-3 and momentum 0.01.
BN_MOMENTUM_NORM = functools.partial(nn.BatchNorm2d, eps=0.001, momentum=0.01)


@dataclass(frozen=True)
class InvertedResidualConfig:
    """One row of the paper's Tables 1 / 2 (channels already scaled by the width multiplier)."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hs: bool
    stride: int
    dilation: int = 1

    @classmethod
    def scaled(
        cls,
        inp: int,
        kernel: int,
        exp: int,
        out: int,
        se: bool,
        act: str,
        stride: int,
        dilation: int,
        width_mult: float,
    ) -> InvertedResidualConfig:
        adjust = functools.partial(_adjust_channels, width_mult=width_mult)
        return cls(adjust(inp), kernel, adjust(exp), adjust(out), se, act == "HS", stride, dilation)


def _adjust_channels(channels: float, width_mult: float) -> int:
    return make_divisible(channels * width_mult, 8)


# in, kernel, expanded, out, SE, activation, stride (the C4 stage may be dilated)
_LARGE = (
    (16, 3, 16, 16, False, "RE", 1),
    (16, 3, 64, 24, False, "RE", 2),
    (24, 3, 72, 24, False, "RE", 1),
    (24, 5, 72, 40, True, "RE", 2),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 5, 120, 40, True, "RE", 1),
    (40, 3, 240, 80, False, "HS", 2),
    (80, 3, 200, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 184, 80, False, "HS", 1),
    (80, 3, 480, 112, True, "HS", 1),
    (112, 3, 672, 112, True, "HS", 1),
    (112, 5, 672, 160, True, "HS", 2),
    (160, 5, 960, 160, True, "HS", 1),
    (160, 5, 960, 160, True, "HS", 1),
)
_SMALL = (
    (16, 3, 16, 16, True, "RE", 2),
    (16, 3, 72, 24, False, "RE", 2),
    (24, 3, 88, 24, False, "RE", 1),
    (24, 5, 96, 40, True, "HS", 2),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 240, 40, True, "HS", 1),
    (40, 5, 120, 48, True, "HS", 1),
    (48, 5, 144, 48, True, "HS", 1),
    (48, 5, 288, 96, True, "HS", 2),
    (96, 5, 576, 96, True, "HS", 1),
    (96, 5, 576, 96, True, "HS", 1),
)
_ARCHS = {"large": (_LARGE, 1280), "small": (_SMALL, 1024)}


def mobilenetv3_config(
    arch: str, width_mult: float = 1.0, reduced_tail: bool = False, dilated: bool = False
) -> tuple[list[InvertedResidualConfig], int]:
    """Block configs and ``last_channel`` of ``arch`` (``"small"`` / ``"large"``), torchvision's rules:
    ``reduced_tail`` halves the C4 stage and the last channel, ``dilated`` dilates C4 by 2."""
    if arch not in _ARCHS:
        raise ValueError(f"arch must be one of {sorted(_ARCHS)}, got {arch!r}")
    rows, last = _ARCHS[arch]
    div = 2 if reduced_tail else 1
    c4 = len(rows) - 3  # the last three rows form the C4 stage
    cfgs = []
    for i, (inp, k, exp, out, se, act, stride) in enumerate(rows):
        if i > c4:
            inp, exp = inp // div, exp // div
        if i >= c4:
            out = out // div
        dilation = 2 if dilated and i >= c4 else 1
        cfgs.append(InvertedResidualConfig.scaled(inp, k, exp, out, se, act, stride, dilation, width_mult))
    return cfgs, _adjust_channels(last // div, width_mult)


class SqueezeExcitation(nn.Module):
    """SE block (static by design: its 1x1 convs are fully connected layers on pooled features)."""

    def __init__(
        self,
        input_channels: int,
        squeeze_channels: int,
        act_layer: LayerFactory = nn.ReLU,
        scale_layer: LayerFactory = nn.Hardsigmoid,
        conv_layer: ConvLayer = nn.Conv2d,
    ) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = conv_layer(input_channels, squeeze_channels, 1)
        self.fc2 = conv_layer(squeeze_channels, input_channels, 1)
        self.activation = act_layer()
        self.scale_activation = scale_layer()

    def forward(self, x: Tensor) -> Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return scale * x


class InvertedResidual(nn.Module):
    """1x1 expand (if needed), kxk depthwise, optional SE, 1x1 linear projection (+ residual)."""

    def __init__(
        self,
        cnf: InvertedResidualConfig,
        *,
        conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        se_layer: LayerFactory = SqueezeExcitation,
    ) -> None:
        super().__init__()
        if cnf.stride not in (1, 2):
            raise ValueError(f"illegal stride value {cnf.stride}")
        self.use_res_connect = cnf.stride == 1 and cnf.input_channels == cnf.out_channels
        act = nn.Hardswish if cnf.use_hs else nn.ReLU
        cna = dict(conv_layer=conv_layer, norm_layer=norm_layer)
        layers: list[nn.Module] = []
        if cnf.expanded_channels != cnf.input_channels:
            layers.append(ConvNormAct(cnf.input_channels, cnf.expanded_channels, kernel_size=1, act_layer=act, **cna))
        stride = 1 if cnf.dilation > 1 else cnf.stride
        layers.append(
            ConvNormAct(
                cnf.expanded_channels,
                cnf.expanded_channels,
                kernel_size=cnf.kernel,
                stride=stride,
                dilation=cnf.dilation,
                groups=cnf.expanded_channels,
                act_layer=act,
                **cna,
            )
        )
        if cnf.use_se:
            layers.append(se_layer(cnf.expanded_channels, make_divisible(cnf.expanded_channels // 4, 8)))
        layers.append(ConvNormAct(cnf.expanded_channels, cnf.out_channels, kernel_size=1, act_layer=None, **cna))
        self.block = nn.Sequential(*layers)
        self.out_channels = cnf.out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


class MobileNetV3(nn.Module):
    """MobileNetV3 from a block table, as torchvision's ``MobileNetV3``.

    Which convs are dynamic (``dy_mobilenetv3_*``): every conv built by ``conv_layer`` (1x1
    expand, depthwise, 1x1 projection, the last 1x1 conv); the stem conv (``stem_conv_layer``,
    static by default: 3 input channels give the attention little) and the squeeze-excitation
    layers (``se_layer``, static: they already are input-dependent channel attention on pooled
    features) stay static, as do the linear classifier layers.

    Args:
        inverted_residual_setting: block configs (see :func:`mobilenetv3_config`).
        last_channel: width of the classifier's hidden linear layer.
        num_classes / in_channels: classifier outputs / input channels.
        dropout: in the classifier.
        conv_layer / stem_conv_layer / norm_layer / se_layer: injected layer factories (norm
            default: BatchNorm with eps 1e-3, momentum 0.01, torchvision's).
        dynamic: makes the ``conv_layer`` convs dynamic with these options (None: static); a
            per-layer K list follows ``named_modules()`` order of the dynamic convs.
    """

    def __init__(
        self,
        inverted_residual_setting: Sequence[InvertedResidualConfig],
        last_channel: int,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        dropout: float = 0.2,
        conv_layer: ConvLayer = nn.Conv2d,
        stem_conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: LayerFactory = BN_MOMENTUM_NORM,
        se_layer: LayerFactory = SqueezeExcitation,
        dynamic: DynamicOptions | None = None,
    ) -> None:
        super().__init__()
        if not inverted_residual_setting:
            raise ValueError("inverted_residual_setting must not be empty")
        conv_layer = dynamic_conv_layer(conv_layer, dynamic)

        first = inverted_residual_setting[0].input_channels
        layers: list[nn.Module] = [
            ConvNormAct(
                in_channels, first, stride=2, conv_layer=stem_conv_layer, norm_layer=norm_layer, act_layer=nn.Hardswish
            )
        ]
        layers += [
            InvertedResidual(cnf, conv_layer=conv_layer, norm_layer=norm_layer, se_layer=se_layer)
            for cnf in inverted_residual_setting
        ]
        last_in = inverted_residual_setting[-1].out_channels
        last_out = 6 * last_in
        layers.append(
            ConvNormAct(
                last_in, last_out, kernel_size=1, conv_layer=conv_layer, norm_layer=norm_layer, act_layer=nn.Hardswish
            )
        )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(last_out, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )

        finish_model(self, dynamic, conv_mode="fan_out", nonlinearity="relu", linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _create_mobilenetv3(
    name: str,
    arch: str,
    is_dynamic: bool,
    *,
    width_mult: float = 1.0,
    reduced_tail: bool = False,
    dilated: bool = False,
    **kwargs: Any,
) -> MobileNetV3:
    options = dynamic_from_kwargs(name, is_dynamic, kwargs)
    check_width_mult(width_mult)
    cfgs, last_channel = mobilenetv3_config(arch, width_mult, reduced_tail, dilated)
    return MobileNetV3(cfgs, last_channel, dynamic=options, **kwargs)


@register_model
def mobilenetv3_small(**kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Small (torchvision's ``mobilenet_v3_small``)."""
    return _create_mobilenetv3("mobilenetv3_small", "small", False, **kwargs)


@register_model
def dy_mobilenetv3_small(**kwargs: Any) -> MobileNetV3:
    """DY-MobileNetV3-Small: every conv dynamic except the stem and the SE layers."""
    return _create_mobilenetv3("dy_mobilenetv3_small", "small", True, **kwargs)


@register_model
def mobilenetv3_large(**kwargs: Any) -> MobileNetV3:
    """MobileNetV3-Large (torchvision's ``mobilenet_v3_large``)."""
    return _create_mobilenetv3("mobilenetv3_large", "large", False, **kwargs)


@register_model
def dy_mobilenetv3_large(**kwargs: Any) -> MobileNetV3:
    """DY-MobileNetV3-Large: every conv dynamic except the stem and the SE layers."""
    return _create_mobilenetv3("dy_mobilenetv3_large", "large", True, **kwargs)
