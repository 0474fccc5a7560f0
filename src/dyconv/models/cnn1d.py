"""The MNIST-1D benchmark's CNN (Greydanus & Kobak, ICML 2024) and its dynamic twin."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from dyconv.layers import DynamicOptions, build_dynamic_convs
from dyconv.models.factory import ConvLayer, check_width_mult, dynamic_conv_layer, dynamic_from_kwargs
from dyconv.models.registry import register_model

__all__ = ["CNN1d", "cnn1d", "dy_cnn1d"]


def _out_length(length: int, kernel: int, stride: int, padding: int) -> int:
    return (length + 2 * padding - kernel) // stride + 1


class CNN1d(nn.Module):
    """The benchmark's ``ConvBase``: three ``Conv1d`` of 25 channels (kernel 5 / 3 / 3, stride 2,
    padding 1), each followed by ReLU, no norm and no pooling; the flattened features
    (25 x 5 for length 40) feed one linear classifier. 5,210 parameters at width 1.

    Which convs are dynamic (``dy_cnn1d``): the second and third (``conv_layer``); the first
    (``stem_conv_layer``, static by default) sees the single raw signal, whose global average
    (what the attention pools) is close to the dataset mean for every sequence.

    Weights keep PyTorch's default init, as the benchmark's model does; a dynamic conv
    initialises each of its K kernels that way (:meth:`~dyconv.layers.DynamicConvNd.reset_parameters`).

    Args:
        num_classes / in_channels: classifier outputs / input channels.
        width_mult: scales the 25 channels.
        input_length: the sequence length the classifier is sized for (40).
        conv_layer / stem_conv_layer: injected factories with ``nn.Conv1d``'s signature.
        dynamic: makes the ``conv_layer`` convs dynamic with these options (None: static).
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 1,
        width_mult: float = 1.0,
        input_length: int = 40,
        conv_layer: ConvLayer = nn.Conv1d,
        stem_conv_layer: ConvLayer = nn.Conv1d,
        dynamic: DynamicOptions | None = None,
    ) -> None:
        super().__init__()
        check_width_mult(width_mult)
        conv_layer = dynamic_conv_layer(conv_layer, dynamic, dims=1)
        channels = max(1, int(25 * width_mult))
        length = input_length
        for kernel in (5, 3, 3):
            length = _out_length(length, kernel, 2, 1)
        if length < 1:
            raise ValueError(f"input_length={input_length} is too short for three stride-2 convs")
        self.conv1 = stem_conv_layer(in_channels, channels, 5, 2, 1)
        self.conv2 = conv_layer(channels, channels, 3, 2, 1)
        self.conv3 = conv_layer(channels, channels, 3, 2, 1)
        self.act = nn.ReLU()
        self.linear = nn.Linear(channels * length, num_classes)
        if dynamic is not None:
            build_dynamic_convs(self, dynamic)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act(self.conv1(x))
        h = self.act(self.conv2(h))
        h = self.act(self.conv3(h))
        return self.linear(torch.flatten(h, 1))


def _create_cnn1d(name: str, is_dynamic: bool, **kwargs: Any) -> CNN1d:
    return CNN1d(dynamic=dynamic_from_kwargs(name, is_dynamic, kwargs), **kwargs)


@register_model
def cnn1d(**kwargs: Any) -> CNN1d:
    """The MNIST-1D benchmark's CNN (1 x 40 sequences, 10 classes by default)."""
    return _create_cnn1d("cnn1d", False, **kwargs)


@register_model
def dy_cnn1d(**kwargs: Any) -> CNN1d:
    """The benchmark's CNN with its second and third conv dynamic (``DynamicConv1d``)."""
    return _create_cnn1d("dy_cnn1d", True, **kwargs)
