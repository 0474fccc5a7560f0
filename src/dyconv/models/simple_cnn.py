"""A small CNN for MNIST-sized inputs: the install check (trains in seconds on a CPU)."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dyconv.layers import KernelSpec
from dyconv.models.factory import (
    ConvLayer,
    ConvNormAct,
    LayerFactory,
    apply_dynamic_options,
    apply_num_kernels,
    dynamic_options,
    init_weights,
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
        num_kernels: per-layer K for the dynamic convs; applied before init.
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 1,
        width_mult: float = 1.0,
        dropout: float = 0.25,
        conv_layer: ConvLayer | None = None,
        stem_conv_layer: ConvLayer | None = None,
        norm_layer: LayerFactory | None = None,
        num_kernels: KernelSpec | None = None,
    ) -> None:
        super().__init__()
        if not width_mult > 0:
            raise ValueError(f"width_mult must be > 0, got {width_mult}")
        c1, c2, hidden = (max(1, int(c * width_mult)) for c in (32, 64, 128))
        norm_layer = nn.BatchNorm2d if norm_layer is None else norm_layer
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
        apply_num_kernels(self, num_kernels)
        init_weights(self, conv_mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def _create_simple_cnn(name: str, dynamic: dict[str, Any] | None, **kwargs: Any) -> SimpleCNN:
    apply_dynamic_options(name, dynamic, kwargs)
    return SimpleCNN(**kwargs)


@register_model
def simple_cnn(**kwargs: Any) -> SimpleCNN:
    """Two-conv CNN for MNIST (1x28x28, 10 classes by default)."""
    return _create_simple_cnn("simple_cnn", None, **kwargs)


@register_model
def dy_simple_cnn(
    *,
    num_kernels: KernelSpec = 4,
    reduction: int = 4,
    min_hidden: int = 1,
    temperature: float = 30.0,
    path: str = "auto",
    **kwargs: Any,
) -> SimpleCNN:
    """Two-conv CNN with its second conv dynamic."""
    dyn = dynamic_options(num_kernels, reduction, min_hidden, temperature, path)
    return _create_simple_cnn("dy_simple_cnn", dyn, **kwargs)
