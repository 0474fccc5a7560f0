"""DeepLabV3+ with a MobileNetV2 backbone (Chen et al., "Encoder-Decoder with Atrous Separable
Convolution for Semantic Image Segmentation", ECCV 2018), static and dynamic.

The structure is the widely used PyTorch version (the one the 2021 reference implementation
used): MobileNetV2 features at output stride 16 (low-level tap at stride 4), ASPP with four conv
branches and image pooling, a decoder with a 48-channel low-level projection and two 3x3 convs.
It gives 5,816,053 parameters static and 18,414,806 dynamic (K=4, 21 classes), the reference
code's exact counts (published 5.81M / 18.4M); at ``width_mult=0.5`` 3,409,413 / 8,444,120.
Unlike torchvision's segmentation heads, conv and norm layers are injected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
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
from dyconv.models.mobilenetv2 import MobileNetV2
from dyconv.models.registry import register_model

__all__ = [
    "ASPP",
    "ASPPPooling",
    "Decoder",
    "DeepLabV3Plus",
    "MobileNetV2Backbone",
    "deeplabv3plus",
    "dy_deeplabv3plus",
    "load_torchvision_backbone_state_dict",
]

#: Index of the MobileNetV2 block whose output is the stride-4 low-level feature map.
LOW_LEVEL_INDEX = 3


def _upsample(x: Tensor, size: Sequence[int], align_corners: bool) -> Tensor:
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=align_corners)


def load_torchvision_backbone_state_dict(model: DeepLabV3Plus, state_dict: Mapping[str, Tensor]) -> None:
    """Load a torchvision ``mobilenet_v2`` ``state_dict`` into ``model.backbone``.

    Key mapping: ``features.<i>.*`` -> ``backbone.features.<i>.*`` for every block the backbone
    keeps (the last 1x1 conv to 1280, ``features.18``, and the classifier are dropped). Strict on
    the backbone: every backbone key must be present with the same shape.
    """
    n = len(model.backbone.features)
    mapped = {}
    for key, value in state_dict.items():
        parts = key.split(".")
        if parts[0] == "features" and int(parts[1]) < n:
            mapped[key] = value
    model.backbone.load_state_dict(mapped, strict=True)


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 features without the last 1x1 conv; returns ``{"low_level", "out"}``.

    ``low_level`` is the stride-4 map (24 channels at width 1), ``out`` the map at
    ``output_stride`` (320 channels at width 1).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        width_mult: float = 1.0,
        output_stride: int = 16,
        conv_layer: ConvLayer = nn.Conv2d,
        stem_conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        net = MobileNetV2(
            in_channels=in_channels,
            width_mult=width_mult,
            output_stride=output_stride,
            conv_layer=conv_layer,
            stem_conv_layer=stem_conv_layer,
            norm_layer=norm_layer,
        )
        self.features = net.features[:-1]
        self.low_level_channels = self.features[LOW_LEVEL_INDEX].out_channels
        self.out_channels = self.features[-1].out_channels

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        low = self.features[: LOW_LEVEL_INDEX + 1](x)
        return {"low_level": low, "out": self.features[LOW_LEVEL_INDEX + 1 :](low)}


class ASPPPooling(nn.Sequential):
    """Image-pooling branch: global average pool, 1x1 conv + norm + ReLU, upsample back."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        conv_layer: ConvLayer,
        norm_layer: LayerFactory,
        align_corners: bool = True,
    ) -> None:
        super().__init__(
            nn.AdaptiveAvgPool2d(1),
            ConvNormAct(in_channels, out_channels, kernel_size=1, conv_layer=conv_layer, norm_layer=norm_layer),
        )
        self.align_corners = align_corners

    def forward(self, x: Tensor) -> Tensor:
        return _upsample(super().forward(x), x.shape[-2:], self.align_corners)


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: 1x1, three dilated 3x3, image pooling; concat, 1x1, dropout."""

    def __init__(
        self,
        in_channels: int,
        atrous_rates: Sequence[int],
        out_channels: int = 256,
        dropout: float = 0.5,
        *,
        conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        cn = dict(conv_layer=conv_layer, norm_layer=norm_layer)
        branches: list[nn.Module] = [ConvNormAct(in_channels, out_channels, kernel_size=1, **cn)]
        branches += [ConvNormAct(in_channels, out_channels, dilation=int(r), **cn) for r in atrous_rates]
        branches.append(ASPPPooling(in_channels, out_channels, align_corners=align_corners, **cn))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            ConvNormAct(len(branches) * out_channels, out_channels, kernel_size=1, **cn), nn.Dropout(dropout)
        )
        self.out_channels = out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.project(torch.cat([conv(x) for conv in self.convs], dim=1))


class Decoder(nn.Module):
    """Project low-level features to 48 channels, concat with the upsampled ASPP output, two 3x3
    convs (dropout 0.5, 0.1), 1x1 classifier."""

    def __init__(
        self,
        in_channels: int,
        low_level_channels: int,
        num_classes: int,
        low_level_out: int = 48,
        channels: int = 256,
        *,
        conv_layer: ConvLayer = nn.Conv2d,
        classifier_conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        align_corners: bool = True,
    ) -> None:
        super().__init__()
        self.align_corners = align_corners
        cn = dict(conv_layer=conv_layer, norm_layer=norm_layer)
        self.reduce = ConvNormAct(low_level_channels, low_level_out, kernel_size=1, **cn)
        self.fuse = nn.Sequential(
            ConvNormAct(in_channels + low_level_out, channels, **cn),
            nn.Dropout(0.5),
            ConvNormAct(channels, channels, **cn),
            nn.Dropout(0.1),
        )
        self.classifier = classifier_conv_layer(channels, num_classes, 1)

    def forward(self, x: Tensor, low_level: Tensor) -> Tensor:
        low_level = self.reduce(low_level)
        x = torch.cat([_upsample(x, low_level.shape[-2:], self.align_corners), low_level], dim=1)
        return self.classifier(self.fuse(x))


class DeepLabV3Plus(nn.Module):
    """DeepLabV3+ on a MobileNetV2 backbone; logits at the input resolution, any input size.

    Which convs are dynamic (``dy_deeplabv3plus``, as the reference implementation's code, which
    gives its exact 18,414,806): every conv of the ASPP (image-pooling branch included) and of the
    decoder (the 48-channel low-level projection and the two 3x3 convs) is built by
    ``conv_layer``, and so is the final 1x1 classifier with bias (``classifier_conv_layer``,
    ``conv_layer`` in the dynamic builder): 10 dynamic convs. The backbone
    (``backbone_conv_layer``) stays static so ImageNet weights can be loaded;
    ``dynamic_backbone=True`` makes it dynamic too (the paper's DY-MobileNetV2, stem static).

    Args:
        num_classes: output channels (21 for Pascal VOC).
        in_channels: input channels.
        width_mult: scales the ASPP (256) and decoder (256, 48) widths.
        backbone_width_mult: MobileNetV2 width multiplier.
        output_stride: 16 (default) or 8 (backbone dilated from stride 8, ASPP rates doubled).
        atrous_rates: ASPP dilations (default 6, 12, 18 at output stride 16; 12, 24, 36 at 8).
        conv_layer: ASPP and decoder convs. backbone_conv_layer: backbone convs but the stem
            (default ``nn.Conv2d``). classifier_conv_layer: the final 1x1 (default ``nn.Conv2d``;
            the dynamic builder passes ``conv_layer``).
        align_corners: of every bilinear upsampling (image pooling, decoder, output); True as
            the reference implementation, False as torchvision's segmentation models.
        norm_layer: normalisation everywhere (default ``nn.BatchNorm2d``).
        pretrained_backbone: load torchvision's ImageNet MobileNetV2 weights into the backbone
            (needs internet; static backbone of width 1 only).
        dynamic: makes the ``conv_layer`` convs dynamic with these options (None: static); a
            per-layer K list follows ``named_modules()`` order of the dynamic convs.
    """

    def __init__(
        self,
        *,
        num_classes: int = 21,
        in_channels: int = 3,
        width_mult: float = 1.0,
        backbone_width_mult: float = 1.0,
        output_stride: int = 16,
        atrous_rates: Sequence[int] | None = None,
        conv_layer: ConvLayer = nn.Conv2d,
        backbone_conv_layer: ConvLayer = nn.Conv2d,
        classifier_conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        pretrained_backbone: bool = False,
        align_corners: bool = True,
        dynamic: DynamicOptions | None = None,
    ) -> None:
        super().__init__()
        if output_stride not in (8, 16):
            raise ValueError(f"output_stride must be 8 or 16, got {output_stride}")
        check_width_mult(width_mult)
        conv_layer = dynamic_conv_layer(conv_layer, dynamic)
        if atrous_rates is None:
            atrous_rates = (6, 12, 18) if output_stride == 16 else (12, 24, 36)
        if pretrained_backbone and (backbone_conv_layer is not nn.Conv2d or backbone_width_mult != 1.0):
            raise ValueError("pretrained_backbone needs a static backbone of width 1.0")
        self.output_stride = output_stride
        self.align_corners = align_corners

        self.backbone = MobileNetV2Backbone(
            in_channels=in_channels,
            width_mult=backbone_width_mult,
            output_stride=output_stride,
            conv_layer=backbone_conv_layer,
            norm_layer=norm_layer,
        )
        channels = make_divisible(256 * width_mult, 8)
        self.aspp = ASPP(
            self.backbone.out_channels,
            atrous_rates,
            channels,
            conv_layer=conv_layer,
            norm_layer=norm_layer,
            align_corners=align_corners,
        )
        self.decoder = Decoder(
            channels,
            self.backbone.low_level_channels,
            num_classes,
            low_level_out=make_divisible(48 * width_mult, 8),
            channels=channels,
            conv_layer=conv_layer,
            classifier_conv_layer=classifier_conv_layer,
            norm_layer=norm_layer,
            align_corners=align_corners,
        )

        finish_model(self, dynamic, conv_mode="fan_out", nonlinearity="relu")
        if pretrained_backbone:
            from torchvision.models import MobileNet_V2_Weights

            sd = MobileNet_V2_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
            load_torchvision_backbone_state_dict(self, sd)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.backbone(x)
        logits = self.decoder(self.aspp(feats["out"]), feats["low_level"])
        return _upsample(logits, x.shape[-2:], self.align_corners)

    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"backbone": [...], "head": [...]}`` (ASPP + decoder); the head gets 10x the lr."""
        return {
            "backbone": list(self.backbone.parameters()),
            "head": list(self.aspp.parameters()) + list(self.decoder.parameters()),
        }


def _create_deeplabv3plus(name: str, is_dynamic: bool, dynamic_backbone: bool = False, **kwargs: Any) -> DeepLabV3Plus:
    options = dynamic_from_kwargs(name, is_dynamic, kwargs)
    if options is not None:
        kwargs.setdefault("classifier_conv_layer", options.conv_layer)
        if dynamic_backbone:
            kwargs.setdefault("backbone_conv_layer", options.conv_layer)
    return DeepLabV3Plus(dynamic=options, **kwargs)


@register_model
def deeplabv3plus(**kwargs: Any) -> DeepLabV3Plus:
    """DeepLabV3+ (MobileNetV2 backbone, output stride 16); 5,816,053 parameters for 21 classes."""
    if "dynamic_backbone" in kwargs:
        raise TypeError("deeplabv3plus is a static model and takes no dynamic_backbone; use dy_deeplabv3plus")
    return _create_deeplabv3plus("deeplabv3plus", False, **kwargs)


@register_model
def dy_deeplabv3plus(*, dynamic_backbone: bool = False, **kwargs: Any) -> DeepLabV3Plus:
    """DY-DeepLabV3+: ASPP and decoder convs dynamic, the final 1x1 classifier included (10 dynamic
    convs), backbone static unless ``dynamic_backbone``; 18,414,806 parameters for 21 classes."""
    return _create_deeplabv3plus("dy_deeplabv3plus", True, dynamic_backbone, **kwargs)
