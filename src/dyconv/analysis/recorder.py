"""Collect the attention ``pi(x)`` of every dynamic layer with forward hooks (no model changes)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from dyconv.layers import dynamic_layers
from dyconv.layers.routing import OmniAttention

__all__ = ["AttentionRecorder"]


class AttentionRecorder:
    """Context manager that calls ``sink(name, pi)`` for each dynamic layer's attention.

    It hooks each layer's ``routing`` submodule, whose output is the very tensor forward mixes
    the kernels with (same values, same dtype), and passes it on detached; the output of the
    model never changes. For ODConv's ``omni`` routing ``pi`` is its kernel attention
    (:attr:`OmniAttention.kernel`, ``(B, K)``; ones for K = 1), the part comparable with the
    other routings.

        with AttentionRecorder(model, lambda name, pi: stats[name].append(pi)):
            model(x)
    """

    def __init__(self, model: nn.Module, sink: Callable[[str, torch.Tensor], None]) -> None:
        self.model = model
        self.sink = sink
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def _hook(self, name: str):
        def hook(_module: nn.Module, _inputs: tuple, out: torch.Tensor | OmniAttention) -> None:
            pi = out.kernel if isinstance(out, OmniAttention) else out
            self.sink(name, pi.detach())

        return hook

    def __enter__(self) -> AttentionRecorder:
        for name, layer in dynamic_layers(self.model):
            self._handles.append(layer.routing.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
