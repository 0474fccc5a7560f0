"""Collect the attention of every dynamic layer with forward hooks (no model changes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Union

import torch
from torch import nn

from dyconv.layers import dynamic_layers
from dyconv.layers.routing import OmniAttention

__all__ = ["AttentionRecorder", "detach_attention"]


def detach_attention(attention: Union[torch.Tensor, OmniAttention]) -> Union[torch.Tensor, OmniAttention]:
    """``attention`` detached from the graph: the tensor, or every part of an OmniAttention
    (absent parts stay ``None``); values, dtype and storage are unchanged."""
    if isinstance(attention, OmniAttention):
        return OmniAttention(*(None if t is None else t.detach() for t in attention))
    return attention.detach()


class AttentionRecorder:
    """Context manager that calls ``sink(name, attention)`` for each dynamic layer's attention.

    It hooks each layer's ``routing`` submodule, whose output is exactly what forward uses (same
    values, same dtype), and passes it on detached: a (B, K) tensor for ``softmax`` (``pi``) and
    ``sigmoid`` (gates) layers, an :class:`~dyconv.layers.routing.OmniAttention` for ``omni``
    ones. ``kernel_only=True`` passes only the (B, K) kernel weights of every layer (the
    ``kernel`` part of an OmniAttention), for sinks that want nothing else. The output of the
    model never changes.

        with AttentionRecorder(model, lambda name, a: stats[name].append(a)):
            model(x)
    """

    def __init__(
        self,
        model: nn.Module,
        sink: Callable[[str, Union[torch.Tensor, OmniAttention]], None],
        kernel_only: bool = False,
    ) -> None:
        self.model = model
        self.sink = sink
        self.kernel_only = kernel_only
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, output: Union[torch.Tensor, OmniAttention]) -> None:
            if self.kernel_only and isinstance(output, OmniAttention):
                output = output.kernel
            self.sink(name, detach_attention(output))

        return hook

    def __enter__(self) -> AttentionRecorder:
        for name, layer in dynamic_layers(self.model):
            self._handles.append(layer.routing.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
