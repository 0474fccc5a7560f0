"""MobileNetV2 (Sandler et al., "MobileNetV2: Inverted Residuals and Linear Bottlenecks", CVPR 2018).

Layout and module names are torchvision's ``mobilenet_v2``, so the static model loads its
``state_dict`` as is. One code path builds the static, the dynamic (``dy_``) and ODConv's
(``od_``, Li, Zhou, Yao, ICLR 2022) network.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from dyconv.layers import DynamicOptions
from dyconv.models.factory import (
    ODCONV,
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

__all__ = ["InvertedResidual", "MobileNetV2", "dy_mobilenetv2", "mobilenetv2", "od_mobilenetv2"]

#: The paper's table: expansion t, output channels c, repeats n, first stride s.
INVERTED_RESIDUAL_SETTING: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expand (if ``expand_ratio != 1``), 3x3 depthwise, 1x1 linear projection (+ residual)."""

    def __init__(
        self,
        inp: int,
        oup: int,
        stride: int,
        expand_ratio: int,
        dilation: int = 1,
        *,
        conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride should be 1 or 2, got {stride}")
        hidden_dim = round(inp * expand_ratio)
        self.stride = stride
        self.use_res_connect = stride == 1 and inp == oup
        cna = dict(conv_layer=conv_layer, norm_layer=norm_layer, act_layer=nn.ReLU6)
        layers: list[nn.Module] = []
        if expand_ratio != 1:
            layers.append(ConvNormAct(inp, hidden_dim, kernel_size=1, **cna))
        layers += [
            ConvNormAct(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim, dilation=dilation, **cna),
            conv_layer(hidden_dim, oup, 1, 1, 0, bias=False),
            norm_layer(oup),
        ]
        self.conv = nn.Sequential(*layers)
        self.out_channels = oup

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 with a width multiplier, as torchvision's ``mobilenet_v2``.

    Which convs are dynamic (``dy_mobilenetv2``, the paper's DY-MobileNetV2): every conv is built
    by ``conv_layer`` (1x1 expand, 3x3 depthwise, 1x1 projection, the final 1x1 to 1280) except
    the stem conv (``stem_conv_layer``, static by default: attention pooled from 3 input channels
    has little to go on); the classifier stays a static linear layer.

    Args:
        num_classes: classifier outputs.
        in_channels: input channels.
        width_mult: channels ``make_divisible(c * width_mult, round_nearest)``; the last conv keeps
            1280 channels for ``width_mult <= 1`` (torchvision's rule).
        inverted_residual_setting: ``[t, c, n, s]`` rows (default: the paper's).
        round_nearest: channel rounding.
        dropout: before the classifier.
        output_stride: 32 (classification); 16 or 8 replace the last strides by dilation
            (the block that would have strided keeps the previous dilation), for segmentation.
        conv_layer / stem_conv_layer / norm_layer: injected layer factories.
        dynamic: makes the ``conv_layer`` convs dynamic with these options (None: static); a
            per-layer K list follows ``named_modules()`` order of the dynamic convs.
    """

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        width_mult: float = 1.0,
        inverted_residual_setting: Sequence[Sequence[int]] | None = None,
        round_nearest: int = 8,
        dropout: float = 0.2,
        output_stride: int = 32,
        conv_layer: ConvLayer = nn.Conv2d,
        stem_conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        dynamic: DynamicOptions | None = None,
    ) -> None:
        super().__init__()
        check_width_mult(width_mult)
        if output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride must be 8, 16 or 32, got {output_stride}")
        conv_layer = dynamic_conv_layer(conv_layer, dynamic)
        setting = INVERTED_RESIDUAL_SETTING if inverted_residual_setting is None else inverted_residual_setting
        if not setting or any(len(row) != 4 for row in setting):
            raise ValueError(f"inverted_residual_setting must be non-empty rows of [t, c, n, s], got {setting}")

        input_channel = make_divisible(32 * width_mult, round_nearest)
        self.last_channel = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: list[nn.Module] = [
            ConvNormAct(
                in_channels,
                input_channel,
                stride=2,
                conv_layer=stem_conv_layer,
                norm_layer=norm_layer,
                act_layer=nn.ReLU6,
            )
        ]
        current_stride, dilation = 2, 1
        for t, c, n, s in setting:
            output_channel = make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                stride = s if i == 0 else 1
                block_dilation = dilation
                if stride > 1 and current_stride >= output_stride:
                    dilation *= stride
                    stride = 1
                elif stride > 1:
                    current_stride *= stride
                features.append(
                    InvertedResidual(
                        input_channel,
                        output_channel,
                        stride,
                        t,
                        block_dilation,
                        conv_layer=conv_layer,
                        norm_layer=norm_layer,
                    )
                )
                input_channel = output_channel
        features.append(
            ConvNormAct(
                input_channel,
                self.last_channel,
                kernel_size=1,
                conv_layer=conv_layer,
                norm_layer=norm_layer,
                act_layer=nn.ReLU6,
            )
        )
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(self.last_channel, num_classes))

        finish_model(self, dynamic, conv_mode="fan_out", nonlinearity="relu", linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = nn.functional.adaptive_avg_pool2d(self.features(x), (1, 1))
        return self.classifier(torch.flatten(x, 1))


def _create_mobilenetv2(name: str, is_dynamic: bool, **kwargs: Any) -> MobileNetV2:
    default = ODCONV if name.startswith("od_") else None
    return MobileNetV2(dynamic=dynamic_from_kwargs(name, is_dynamic, kwargs, default), **kwargs)


@register_model
def mobilenetv2(**kwargs: Any) -> MobileNetV2:
    """MobileNetV2 (torchvision's ``mobilenet_v2``); ``width_mult`` 0.35 / 0.5 / 0.75 / 1.0 / ..."""
    return _create_mobilenetv2("mobilenetv2", False, **kwargs)


@register_model
def dy_mobilenetv2(**kwargs: Any) -> MobileNetV2:
    """DY-MobileNetV2: every conv dynamic (depthwise included) except the stem."""
    return _create_mobilenetv2("dy_mobilenetv2", True, **kwargs)


@register_model
def od_mobilenetv2(**kwargs: Any) -> MobileNetV2:
    """ODConv MobileNetV2 (Li, Zhou, Yao, ICLR 2022): the same convs as ``dy_mobilenetv2`` with
    ODConv's options (:data:`~dyconv.models.factory.ODCONV`, K = 4; ``num_kernels=1``: "1x")."""
    return _create_mobilenetv2("od_mobilenetv2", True, **kwargs)
