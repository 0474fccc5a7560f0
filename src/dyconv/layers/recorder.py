"""Collect the attention ``pi(x)`` of every dynamic layer with forward hooks (no model changes)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dyconv.layers.convert import dynamic_layers
from dyconv.layers.dynamic_conv import DynamicConv2d

__all__ = ["AttentionRecorder"]


class AttentionRecorder:
    """Context manager that calls ``sink(name, pi)`` for each dynamic layer's attention.

    It hooks each layer's ``attn_fc2`` (the logits) and applies the layer's own softmax with its
    current temperature, so it costs one tiny softmax per layer and never changes the output.

        with AttentionRecorder(model, lambda name, pi: stats[name].append(pi)):
            model(x)
    """

    def __init__(self, model: nn.Module, sink: Callable[[str, torch.Tensor], None]) -> None:
        self.model = model
        self.sink = sink
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str, layer: DynamicConv2d):
        def hook(_module: nn.Module, _inputs: tuple, logits: torch.Tensor) -> None:
            z = logits.detach() / layer.temperature.to(logits.dtype)
            self.sink(name, torch.softmax(z.float(), dim=1))

        return hook

    def __enter__(self) -> AttentionRecorder:
        for name, layer in dynamic_layers(self.model):
            self._handles.append(layer.attn_fc2.register_forward_hook(self._hook(name, layer)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
