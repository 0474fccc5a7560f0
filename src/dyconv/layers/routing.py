"""How a dynamic layer turns attention logits into what forward mixes and scales with.

Each routing is a parameter-free submodule of a dynamic layer (``layer.routing``), so its
output is the one place the attention exists: forward uses exactly that output, and
:class:`dyconv.analysis.AttentionRecorder` hooks the module to see the same tensors.

- ``softmax``: Chen et al., "Dynamic Convolution: Attention over Convolution Kernels", CVPR 2020:
  ``softmax(z / T)`` over the K kernels (weights sum to 1).
- ``sigmoid``: Yang et al., "CondConv: Conditionally Parameterized Convolutions", NeurIPS 2019:
  independent ``sigmoid(z)`` per kernel; the temperature is not used.
- ``omni``: Li, Zhou, Yao, "Omni-Dimensional Dynamic Convolution", ICLR 2022 (ODConv): a softmax
  over the K kernels and sigmoid attentions over the input channels, the output channels and
  the kernel's spatial positions, every one of them divided by the temperature.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn

__all__ = ["ROUTINGS", "OmniAttention", "OmniRouting", "SigmoidRouting", "SoftmaxRouting", "make_routing"]

#: The routing options of every dynamic layer (``routing=``), the paper's first.
ROUTINGS = ("softmax", "sigmoid", "omni")


def _sigmoid(logits: Tensor) -> Tensor:
    """``sigmoid`` computed in at least float32 (bf16/fp16 lose the near-neutral start),
    returned in the logits' dtype, the dtype the kernel mixing uses."""
    return torch.sigmoid(logits.to(torch.promote_types(logits.dtype, torch.float32))).to(logits.dtype)


def _softmax(logits: Tensor) -> Tensor:
    """``softmax`` over dim 1 in at least float32, returned in the logits' dtype."""
    return torch.softmax(logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32)).to(logits.dtype)


class SoftmaxRouting(nn.Module):
    """``softmax(logits / temperature)`` over the K kernels (Chen et al. 2020), shape ``(B, K)``.

    ``temperature`` None skips the division (:func:`dyconv.utils.fold.fold_temperature` folded
    it into the logits for export).
    """

    kind = "softmax"

    def forward(self, logits: Tensor, temperature: Optional[Tensor]) -> Tensor:
        if temperature is not None:
            logits = logits / temperature.to(logits.dtype)
        return _softmax(logits)


class SigmoidRouting(nn.Module):
    """CondConv's ``sigmoid(logits)``: one independent weight in (0, 1) per kernel, shape ``(B, K)``.
    The weights do not sum to 1 and the temperature is ignored."""

    kind = "sigmoid"

    def forward(self, logits: Tensor, temperature: Optional[Tensor]) -> Tensor:
        return _sigmoid(logits)


class OmniAttention(NamedTuple):
    """ODConv's four attentions for one batch; a part a layer does not have is ``None`` (a
    constant 1), except ``kernel``, which is ``(B, 1)`` ones for a single-kernel layer.

    The per-sample kernel they define is ``out ⊗ in ⊗ spatial ⊙ sum_k kernel_k W_k`` and the
    bias ``out ⊙ sum_k kernel_k b_k``; forward scales the input by ``in_channel`` and the output
    by ``out_channel`` instead of building that kernel where that is cheaper (it is the same).
    """

    kernel: Tensor  #: (B, K), softmax over the kernels
    in_channel: Tensor  #: (B, in_channels), sigmoid
    out_channel: Optional[Tensor]  #: (B, out_channels), sigmoid; None for a depthwise conv
    spatial: Optional[Tensor]  #: (B, *kernel_size), sigmoid; None for a pointwise conv


class OmniRouting(nn.Module):
    """ODConv's attentions from four logit tensors (``None`` for an absent head), each divided
    by ``temperature`` (None: folded into the logits for export)."""

    kind = "omni"

    def forward(
        self,
        kernel: Optional[Tensor],
        in_channel: Tensor,
        out_channel: Optional[Tensor],
        spatial: Optional[Tensor],
        temperature: Optional[Tensor],
    ) -> OmniAttention:
        if kernel is None:
            pi = torch.ones(in_channel.shape[0], 1, dtype=in_channel.dtype, device=in_channel.device)
        else:
            pi = _softmax(_scaled(kernel, temperature))
        return OmniAttention(
            pi, _sigmoid(_scaled(in_channel, temperature)), _gate(out_channel, temperature), _gate(spatial, temperature)
        )


def _scaled(logits: Tensor, temperature: Optional[Tensor]) -> Tensor:
    return logits if temperature is None else logits / temperature.to(logits.dtype)


def _gate(logits: Optional[Tensor], temperature: Optional[Tensor]) -> Optional[Tensor]:
    """ODConv's sigmoid attention of an optional head (None: the head is absent)."""
    return None if logits is None else _sigmoid(_scaled(logits, temperature))


def make_routing(kind: str) -> nn.Module:
    """The routing module for ``kind`` (one of :data:`ROUTINGS`)."""
    modules = {"softmax": SoftmaxRouting, "sigmoid": SigmoidRouting, "omni": OmniRouting}
    if kind not in modules:
        raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, got {kind!r}")
    return modules[kind]()
