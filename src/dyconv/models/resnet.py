"""ResNet (He et al., "Deep Residual Learning for Image Recognition", CVPR 2016), static and dynamic.

The layout and module names are torchvision's, so a static ``resnet18/34/50`` loads
torchvision's ``state_dict`` as is. One code path builds both forms: the dynamic builders
(``dy_*``) pass a :class:`~dyconv.layers.DynamicConv2d` ``conv_layer``. The ``od_*`` builders
build ODConv's networks (Li, Zhou, Yao, ICLR 2022): omni-dimensional attention in every block
conv, static 1x1 downsample shortcuts, dropout before the classifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from dyconv.layers import DynamicOptions
from dyconv.models.factory import (
    ODCONV,
    ConvLayer,
    LayerFactory,
    check_width_mult,
    dynamic_conv_layer,
    dynamic_from_kwargs,
    finish_model,
)
from dyconv.models.registry import register_model

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "dy_resnet10",
    "dy_resnet18",
    "dy_resnet34",
    "dy_resnet50",
    "dy_resnet101",
    "od_resnet18",
    "od_resnet34",
    "od_resnet50",
    "od_resnet101",
    "resnet10",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
]

STEMS = ("imagenet", "small")


class BasicBlock(nn.Module):
    """Two 3x3 convs and an identity (or 1x1 ``downsample``) shortcut."""

    expansion: ClassVar[int] = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv_layer(inplanes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv_layer(planes, planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, ResNet v1.5 as torchvision), 1x1 expand x4."""

    expansion: ClassVar[int] = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        downsample: nn.Module | None = None,
        *,
        conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: LayerFactory = nn.BatchNorm2d,
    ) -> None:
        super().__init__()
        self.conv1 = conv_layer(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = norm_layer(planes)
        self.conv2 = conv_layer(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = norm_layer(planes)
        self.conv3 = conv_layer(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = norm_layer(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """Generic ResNet: a stem, four stages of ``block`` (``layers`` blocks each), GAP, linear.

    Which convs are dynamic (``dy_*`` builders, as the reference implementation): every conv of
    every block, the 1x1 ``downsample`` shortcuts included, is built by ``conv_layer``; the stem
    conv uses ``stem_conv_layer`` (``nn.Conv2d`` by default: on a 3-channel input the attention's
    global pool has almost nothing to work with) and the classifier stays a static linear layer.
    ODConv's networks (``od_*``) keep the downsample static too (``downsample_conv_layer``).
    With static convs and ``width_mult=1`` it is torchvision's ResNet, module for module.

    Args:
        block: :class:`BasicBlock` or :class:`Bottleneck`.
        layers: blocks per stage, e.g. ``[2, 2, 2, 2]``.
        num_classes: classifier outputs.
        in_channels: input channels.
        width_mult: multiplies the stage widths 64, 128, 256, 512 (``int(c * width_mult)``);
            the stem has the first stage's width.
        stem: ``"imagenet"`` (7x7/2 conv + 3x3/2 max pool, torchvision's) or ``"small"``
            (3x3/1 conv, no pooling; for 32-64 px images such as Tiny ImageNet).
        zero_init_residual: zero the last BN of each block (torchvision's option).
        conv_layer: builds the block convs (``nn.Conv2d`` default; a partial of
            ``DynamicConv2d`` for the dynamic network).
        stem_conv_layer: builds the stem conv (default ``nn.Conv2d``).
        downsample_conv_layer: builds the 1x1 downsample convs (None: as the block convs;
            ``nn.Conv2d`` keeps them static in a dynamic network, as ODConv does).
        norm_layer: normalisation (default ``nn.BatchNorm2d``).
        dropout: dropout probability before the classifier (ODConv's; 0 by default, no parameters).
        fc_init_std: initialise the classifier ``normal(0, fc_init_std)`` with a zero bias (ODConv:
            0.01); None keeps PyTorch's default (torchvision's ResNet).
        dynamic: makes the ``conv_layer`` convs dynamic with these options (None: static); a
            per-layer K list follows ``named_modules()`` order (conv1, conv2, downsample per block).
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: Sequence[int],
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        width_mult: float = 1.0,
        stem: str = "imagenet",
        zero_init_residual: bool = False,
        conv_layer: ConvLayer = nn.Conv2d,
        stem_conv_layer: ConvLayer = nn.Conv2d,
        downsample_conv_layer: ConvLayer | None = None,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        dropout: float = 0.0,
        fc_init_std: float | None = None,
        dynamic: DynamicOptions | None = None,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"stem must be one of {STEMS}, got {stem!r}")
        if len(layers) != 4:
            raise ValueError(f"layers must give 4 stage depths, got {list(layers)}")
        check_width_mult(width_mult)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self._conv_layer = dynamic_conv_layer(conv_layer, dynamic)
        self._downsample_conv_layer = self._conv_layer if downsample_conv_layer is None else downsample_conv_layer
        self._norm_layer = norm_layer
        widths = [max(1, int(c * width_mult)) for c in (64, 128, 256, 512)]
        self.inplanes = widths[0]
        self.stem = stem

        if stem == "imagenet":
            self.conv1 = stem_conv_layer(in_channels, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        else:
            self.conv1 = stem_conv_layer(in_channels, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        self.bn1 = self._norm_layer(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.num_features = widths[3] * block.expansion
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(self.num_features, num_classes)

        finish_model(self, dynamic, conv_mode="fan_out", nonlinearity="relu", linear_std=fc_init_std)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                self._downsample_conv_layer(
                    self.inplanes, planes * block.expansion, kernel_size=1, stride=stride, bias=False
                ),
                self._norm_layer(planes * block.expansion),
            )
        kw = dict(conv_layer=self._conv_layer, norm_layer=self._norm_layer)
        layers = [block(self.inplanes, planes, stride, downsample, **kw)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, **kw) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: Tensor) -> Tensor:
        """The last stage's feature map."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward(self, x: Tensor) -> Tensor:
        x = self.avgpool(self.forward_features(x))
        return self.fc(self.dropout(torch.flatten(x, 1)))


def _create_resnet(
    name: str, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], is_dynamic: bool, **kwargs: Any
) -> ResNet:
    return ResNet(block, layers, dynamic=dynamic_from_kwargs(name, is_dynamic, kwargs), **kwargs)


def _create_od_resnet(name: str, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int], **kwargs: Any):
    """ODConv's ResNet: :data:`~dyconv.models.factory.ODCONV` options (overridable by the flat
    keys), static stem and downsample, classifier initialised ``normal(0, 0.01)``."""
    kwargs.setdefault("downsample_conv_layer", nn.Conv2d)
    kwargs.setdefault("fc_init_std", 0.01)
    return ResNet(block, layers, dynamic=dynamic_from_kwargs(name, True, kwargs, ODCONV), **kwargs)


@register_model
def resnet10(**kwargs: Any) -> ResNet:
    """ResNet-10: BasicBlock, [1, 1, 1, 1]."""
    return _create_resnet("resnet10", BasicBlock, [1, 1, 1, 1], False, **kwargs)


@register_model
def dy_resnet10(**kwargs: Any) -> ResNet:
    """DY-ResNet-10: every block conv and downsample dynamic, stem static (11 dynamic convs)."""
    return _create_resnet("dy_resnet10", BasicBlock, [1, 1, 1, 1], True, **kwargs)


@register_model
def resnet18(**kwargs: Any) -> ResNet:
    """ResNet-18: BasicBlock, [2, 2, 2, 2] (torchvision's ``resnet18``)."""
    return _create_resnet("resnet18", BasicBlock, [2, 2, 2, 2], False, **kwargs)


@register_model
def dy_resnet18(**kwargs: Any) -> ResNet:
    """DY-ResNet-18: every block conv and downsample dynamic, stem static."""
    return _create_resnet("dy_resnet18", BasicBlock, [2, 2, 2, 2], True, **kwargs)


@register_model
def resnet34(**kwargs: Any) -> ResNet:
    """ResNet-34: BasicBlock, [3, 4, 6, 3] (torchvision's ``resnet34``)."""
    return _create_resnet("resnet34", BasicBlock, [3, 4, 6, 3], False, **kwargs)


@register_model
def dy_resnet34(**kwargs: Any) -> ResNet:
    """DY-ResNet-34: every block conv and downsample dynamic, stem static."""
    return _create_resnet("dy_resnet34", BasicBlock, [3, 4, 6, 3], True, **kwargs)


@register_model
def resnet50(**kwargs: Any) -> ResNet:
    """ResNet-50: Bottleneck, [3, 4, 6, 3] (torchvision's ``resnet50``, v1.5)."""
    return _create_resnet("resnet50", Bottleneck, [3, 4, 6, 3], False, **kwargs)


@register_model
def dy_resnet50(**kwargs: Any) -> ResNet:
    """DY-ResNet-50: every block conv and downsample dynamic, stem static."""
    return _create_resnet("dy_resnet50", Bottleneck, [3, 4, 6, 3], True, **kwargs)


@register_model
def resnet101(**kwargs: Any) -> ResNet:
    """ResNet-101: Bottleneck, [3, 4, 23, 3] (torchvision's ``resnet101``, v1.5)."""
    return _create_resnet("resnet101", Bottleneck, [3, 4, 23, 3], False, **kwargs)


@register_model
def dy_resnet101(**kwargs: Any) -> ResNet:
    """DY-ResNet-101: every block conv and downsample dynamic, stem static."""
    return _create_resnet("dy_resnet101", Bottleneck, [3, 4, 23, 3], True, **kwargs)


@register_model
def od_resnet18(**kwargs: Any) -> ResNet:
    """ODConv ResNet-18: block convs ODConv (K = 4 default; ``num_kernels=1``: "1x"), stem and downsample static."""
    return _create_od_resnet("od_resnet18", BasicBlock, [2, 2, 2, 2], **kwargs)


@register_model
def od_resnet34(**kwargs: Any) -> ResNet:
    """ODConv ResNet-34: block convs ODConv, stem and downsample static."""
    return _create_od_resnet("od_resnet34", BasicBlock, [3, 4, 6, 3], **kwargs)


@register_model
def od_resnet50(**kwargs: Any) -> ResNet:
    """ODConv ResNet-50: the three convs of each bottleneck ODConv, stem and downsample static."""
    return _create_od_resnet("od_resnet50", Bottleneck, [3, 4, 6, 3], **kwargs)


@register_model
def od_resnet101(**kwargs: Any) -> ResNet:
    """ODConv ResNet-101 (published with K = 1 and K = 2): bottleneck convs ODConv, stem and downsample static."""
    return _create_od_resnet("od_resnet101", Bottleneck, [3, 4, 23, 3], **kwargs)
