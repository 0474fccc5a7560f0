"""The 2021 reference implementation's MobileNetV3 (TArdelean/DynamicConvolution), the network
behind its Tiny ImageNet and Imagenette rows; registered as ``mobilenetv3_small_ref`` /
``mobilenetv3_large_ref`` and their ``dy_`` forms.

It is not torchvision's MobileNetV3 (:mod:`dyconv.models.mobilenetv3`, which loads torchvision's
weights). Differences, each of which changes the parameter count:

- every block has its 1x1 expand conv, even when it does not expand (Small's first block: 16 -> 16);
- channels are rounded *up* to a multiple of 8 (``ceil(c * width / 8) * 8``); the stem stays 16
  wide at every width, the head width 1280 is scaled only above width 1;
- squeeze-excitation: two bias-free ``Linear`` layers with hidden width ``c // 4``, applied after
  the depthwise conv's norm and before its activation;
- head: the last 1x1 conv (576 at width 1, with norm and hard-swish), global pooling, a 1x1 conv
  to 1280 *with bias* and no norm, hard-swish, dropout 0.8, ``Linear(1280, classes)``.

Dynamic form: every conv but the stem is dynamic, the head's 1x1 conv to 1280 included (Small:
11 x 3 + 2 = 35 dynamic convs); the SE layers and the classifier stay static. Parameter counts
equal the reference code's: Small x0.5, 200 classes 877,872 static / 2,525,336 dynamic.
The reference ended its network with ``LogSoftmax`` for ``NLLLoss``; this one returns logits
(cross-entropy in the task is the same loss).
"""

from __future__ import annotations

import math
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
)
from dyconv.models.registry import register_model

__all__ = [
    "RefBottleneck",
    "RefMobileNetV3",
    "RefSqueezeExcitation",
    "dy_mobilenetv3_large_ref",
    "dy_mobilenetv3_small_ref",
    "mobilenetv3_large_ref",
    "mobilenetv3_small_ref",
    "round_up",
]


def round_up(value: float, divisor: int = 8) -> int:
    """``value`` rounded up to a multiple of ``divisor`` (the reference's channel rule)."""
    return int(math.ceil(value / divisor) * divisor)


@dataclass(frozen=True)
class RefBlockConfig:
    """One block: kernel, expanded and output channels (unscaled), SE, hard-swish, stride."""

    kernel: int
    expanded: int
    out: int
    se: bool
    hswish: bool
    stride: int


def _rows(*rows: tuple[int, int, int, bool, str, int]) -> tuple[RefBlockConfig, ...]:
    return tuple(RefBlockConfig(k, e, o, se, act == "HS", s) for k, e, o, se, act, s in rows)


# kernel, expanded, out, SE, activation, stride (the paper's Tables 1 and 2)
_SMALL = _rows(
    (3, 16, 16, True, "RE", 2),
    (3, 72, 24, False, "RE", 2),
    (3, 88, 24, False, "RE", 1),
    (5, 96, 40, True, "HS", 2),
    (5, 240, 40, True, "HS", 1),
    (5, 240, 40, True, "HS", 1),
    (5, 120, 48, True, "HS", 1),
    (5, 144, 48, True, "HS", 1),
    (5, 288, 96, True, "HS", 2),
    (5, 576, 96, True, "HS", 1),
    (5, 576, 96, True, "HS", 1),
)
_LARGE = _rows(
    (3, 16, 16, False, "RE", 1),
    (3, 64, 24, False, "RE", 2),
    (3, 72, 24, False, "RE", 1),
    (5, 72, 40, True, "RE", 2),
    (5, 120, 40, True, "RE", 1),
    (5, 120, 40, True, "RE", 1),
    (3, 240, 80, False, "HS", 2),
    (3, 200, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 184, 80, False, "HS", 1),
    (3, 480, 112, True, "HS", 1),
    (3, 672, 112, True, "HS", 1),
    (5, 672, 160, True, "HS", 2),
    (5, 960, 160, True, "HS", 1),
    (5, 960, 160, True, "HS", 1),
)
#: arch -> (block table, width of the last 1x1 conv before pooling)
_ARCHS = {"small": (_SMALL, 576), "large": (_LARGE, 960)}


class RefSqueezeExcitation(nn.Module):
    """SE on pooled features: ``Linear(c, c // reduction)``, ReLU, ``Linear(c // reduction, c)``,
    hard-sigmoid, all bias-free; the result scales the input's channels."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        hidden = channels // reduction
        self.fc1 = nn.Linear(channels, hidden, bias=False)
        self.activation = nn.ReLU(inplace=True)
        self.fc2 = nn.Linear(hidden, channels, bias=False)
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: Tensor) -> Tensor:
        s = x.mean((2, 3))
        s = self.scale_activation(self.fc2(self.activation(self.fc1(s))))
        return x * s[:, :, None, None]


class RefBottleneck(nn.Module):
    """1x1 expand (always), kxk depthwise + norm, SE (optional), activation, 1x1 projection + norm;
    residual when the stride is 1 and the widths match."""

    def __init__(
        self,
        in_channels: int,
        expanded: int,
        out_channels: int,
        kernel: int,
        stride: int,
        se: bool,
        hswish: bool,
        *,
        conv_layer: ConvLayer,
        norm_layer: LayerFactory,
    ) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"illegal stride value {stride}")
        act = nn.Hardswish if hswish else nn.ReLU
        self.use_res_connect = stride == 1 and in_channels == out_channels
        self.expand = ConvNormAct(
            in_channels, expanded, kernel_size=1, conv_layer=conv_layer, norm_layer=norm_layer, act_layer=act
        )
        self.depthwise = ConvNormAct(
            expanded,
            expanded,
            kernel_size=kernel,
            stride=stride,
            groups=expanded,
            conv_layer=conv_layer,
            norm_layer=norm_layer,
            act_layer=None,
        )
        self.se = RefSqueezeExcitation(expanded) if se else nn.Identity()
        self.activation = act(inplace=True)
        self.project = ConvNormAct(
            expanded, out_channels, kernel_size=1, conv_layer=conv_layer, norm_layer=norm_layer, act_layer=None
        )
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.project(self.activation(self.se(self.depthwise(self.expand(x)))))
        return out + x if self.use_res_connect else out


class RefMobileNetV3(nn.Module):
    """The reference implementation's MobileNetV3 (see the module docstring for how it differs).

    Args:
        blocks: block table (``"small"`` / ``"large"`` rows, unscaled).
        last_conv: width of the last 1x1 conv before pooling (unscaled: 576 Small, 960 Large).
        num_classes / in_channels / width_mult: outputs, input channels, channel multiplier.
        head_channels: width of the 1x1 conv after pooling (1280; scaled only if width_mult > 1).
        dropout: before the linear classifier (0.8, the reference's).
        conv_layer / stem_conv_layer / norm_layer: injected factories (stem static by default,
            norm ``nn.BatchNorm2d`` with PyTorch's defaults, as the reference).
        dynamic: makes the ``conv_layer`` convs dynamic with these options (None: static); a
            per-layer K list follows ``named_modules()`` order of the dynamic convs.
    """

    def __init__(
        self,
        blocks: Sequence[RefBlockConfig],
        last_conv: int,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        width_mult: float = 1.0,
        head_channels: int = 1280,
        dropout: float = 0.8,
        conv_layer: ConvLayer = nn.Conv2d,
        stem_conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        dynamic: DynamicOptions | None = None,
    ) -> None:
        super().__init__()
        check_width_mult(width_mult)
        conv_layer = dynamic_conv_layer(conv_layer, dynamic)
        cn = dict(conv_layer=conv_layer, norm_layer=norm_layer)

        channels = 16  # the stem is not scaled
        layers: list[nn.Module] = [
            ConvNormAct(
                in_channels,
                channels,
                stride=2,
                conv_layer=stem_conv_layer,
                norm_layer=norm_layer,
                act_layer=nn.Hardswish,
            )
        ]
        for b in blocks:
            out = round_up(b.out * width_mult)
            layers.append(
                RefBottleneck(
                    channels, round_up(b.expanded * width_mult), out, b.kernel, b.stride, b.se, b.hswish, **cn
                )
            )
            channels = out
        last = round_up(last_conv * width_mult)
        layers.append(ConvNormAct(channels, last, kernel_size=1, act_layer=nn.Hardswish, **cn))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        head = round_up(head_channels * width_mult) if width_mult > 1.0 else head_channels
        self.head = nn.Sequential(conv_layer(last, head, 1, bias=True), nn.Hardswish(inplace=True))
        self.classifier = nn.Sequential(nn.Dropout(p=dropout), nn.Linear(head, num_classes))

        finish_model(self, dynamic, conv_mode="fan_out", nonlinearity="relu", linear_std=0.01)

    def forward(self, x: Tensor) -> Tensor:
        x = self.head(self.avgpool(self.features(x)))
        return self.classifier(torch.flatten(x, 1))


def _create(name: str, arch: str, is_dynamic: bool, **kwargs: Any) -> RefMobileNetV3:
    blocks, last_conv = _ARCHS[arch]
    return RefMobileNetV3(blocks, last_conv, dynamic=dynamic_from_kwargs(name, is_dynamic, kwargs), **kwargs)


@register_model
def mobilenetv3_small_ref(**kwargs: Any) -> RefMobileNetV3:
    """The reference implementation's MobileNetV3-Small (x0.5, 200 classes: 877,872 parameters)."""
    return _create("mobilenetv3_small_ref", "small", False, **kwargs)


@register_model
def dy_mobilenetv3_small_ref(**kwargs: Any) -> RefMobileNetV3:
    """The reference's DY-MobileNetV3-Small: 35 dynamic convs (all but the stem), SE and classifier
    static (x0.5, 200 classes: 2,525,336 parameters)."""
    return _create("dy_mobilenetv3_small_ref", "small", True, **kwargs)


@register_model
def mobilenetv3_large_ref(**kwargs: Any) -> RefMobileNetV3:
    """The reference implementation's MobileNetV3-Large."""
    return _create("mobilenetv3_large_ref", "large", False, **kwargs)


@register_model
def dy_mobilenetv3_large_ref(**kwargs: Any) -> RefMobileNetV3:
    """The reference's DY-MobileNetV3-Large: every conv but the stem dynamic."""
    return _create("dy_mobilenetv3_large_ref", "large", True, **kwargs)
