"""A small CNN for MNIST-sized inputs: the install check (trains in seconds on a CPU)."""

from __future__ import annotations

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

__all__ = ["SimpleCNN", "dy_simple_cnn", "simple_cnn"]


class SimpleCNN(nn.Module):
    """conv3x3(32)-BN-ReLU-maxpool, conv3x3(64)-BN-ReLU-maxpool, adaptive pool to 7x7, then
    linear(128)-ReLU-dropout-linear. 1x28x28 inputs by default (any size works).

    Which convs are dynamic (``dy_simple_cnn``, as the reference implementation): only the second
    conv (``conv_layer``); the first (``stem_conv_layer``, static by default) sees one gray
    channel, whose global average gives the attention almost nothing to choose kernels by.

    Args:
        num_classes / in_channels: classifier outputs / input channels.
        width_mult: scales the 32 / 64 conv channels and the 128 hidden units.
        dropout: before the last linear layer.
        conv_layer / stem_conv_layer / norm_layer: injected layer factories.
        dynamic: makes the ``conv_layer`` convs dynamic with these options (None: static).
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 1,
        width_mult: float = 1.0,
        dropout: float = 0.25,
        conv_layer: ConvLayer = nn.Conv2d,
        stem_conv_layer: ConvLayer = nn.Conv2d,
        norm_layer: LayerFactory = nn.BatchNorm2d,
        dynamic: DynamicOptions | None = None,
    ) -> None:
        super().__init__()
        check_width_mult(width_mult)
        conv_layer = dynamic_conv_layer(conv_layer, dynamic)
        c1, c2, hidden = (max(1, int(c * width_mult)) for c in (32, 64, 128))
        self.features = nn.Sequential(
            ConvNormAct(in_channels, c1, conv_layer=stem_conv_layer, norm_layer=norm_layer),
            nn.MaxPool2d(2),
            ConvNormAct(c1, c2, conv_layer=conv_layer, norm_layer=norm_layer),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * 49, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        finish_model(self, dynamic, conv_mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _create_simple_cnn(name: str, is_dynamic: bool, **kwargs: Any) -> SimpleCNN:
    return SimpleCNN(dynamic=dynamic_from_kwargs(name, is_dynamic, kwargs), **kwargs)


@register_model
def simple_cnn(**kwargs: Any) -> SimpleCNN:
    """Two-conv CNN for MNIST (1x28x28, 10 classes by default)."""
    return _create_simple_cnn("simple_cnn", False, **kwargs)


@register_model
def dy_simple_cnn(**kwargs: Any) -> SimpleCNN:
    """Two-conv CNN with its second conv dynamic (flat ``DynamicOptions`` keys or ``dynamic=``)."""
    return _create_simple_cnn("dy_simple_cnn", True, **kwargs)
