"""How a dynamic layer turns attention logits into what forward mixes and scales with.

Each routing is a parameter-free submodule of a dynamic layer (``layer.routing``), so its
output is the one place the attention exists: forward uses exactly that output, and
:class:`dyconv.analysis.AttentionRecorder` hooks the module to see the same tensors. Each class
also owns its kind's heads: which linear layers the layer gets (``build_heads``, registered on
the layer so the ``state_dict`` keys stay ``attn_fc1``, ``attn_fc2``, ...), how they are
initialised (``reset_heads``) and the neutral start that makes a converted conv exact
(``start_neutral``). A new routing is one class here and one entry in :data:`ROUTINGS`.

- ``softmax``: Chen et al., "Dynamic Convolution: Attention over Convolution Kernels", CVPR 2020:
  ``softmax(z / T)`` over the K kernels (weights sum to 1).
- ``sigmoid``: Yang et al., "CondConv: Conditionally Parameterized Convolutions", NeurIPS 2019:
  independent ``sigmoid(z)`` per kernel; the temperature is not used.
- ``omni``: Li, Zhou, Yao, "Omni-Dimensional Dynamic Convolution", ICLR 2022 (ODConv): a softmax
  over the K kernels and sigmoid attentions over the input channels, the output channels and
  the kernel's spatial positions, every one of them divided by the temperature.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = [
    "ROUTINGS",
    "OmniAttention",
    "OmniRouting",
    "SigmoidRouting",
    "SoftmaxRouting",
    "make_routing",
    "routing_class",
]

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

    ``temperature`` None skips the division (the caller folded it into the heads).
    """

    kind = "softmax"

    def forward(self, logits: Tensor, temperature: Optional[Tensor]) -> Tensor:
        if temperature is not None:
            logits = logits / temperature.to(logits.dtype)
        return _softmax(logits)

    @staticmethod
    def build_heads(layer: Any, factory_kwargs: dict) -> None:
        """Pool -> ``attn_fc1`` -> ReLU -> ``attn_fc2`` (K logits), as in the paper."""
        layer.attn_fc1 = nn.Linear(layer.in_channels, layer.hidden_channels, **factory_kwargs)
        layer.attn_fc2 = nn.Linear(layer.hidden_channels, layer.num_kernels, **factory_kwargs)

    @staticmethod
    def reset_heads(layer: Any) -> None:
        """``nn.Linear``'s own initialisation."""
        for m in (layer.attn_fc1, layer.attn_fc2):
            if isinstance(m, nn.Linear):
                m.reset_parameters()

    @staticmethod
    def start_neutral(layer: Any) -> Tuple[float, float]:
        """The weights sum to 1: K copies of a conv are exact whatever the attention."""
        return 1.0, 1.0


class SigmoidRouting(nn.Module):
    """CondConv's ``sigmoid(logits)``: one independent weight in (0, 1) per kernel, shape ``(B, K)``.
    The weights do not sum to 1 and the temperature is ignored."""

    kind = "sigmoid"

    def forward(self, logits: Tensor, temperature: Optional[Tensor]) -> Tensor:
        return _sigmoid(logits)

    @staticmethod
    def build_heads(layer: Any, factory_kwargs: dict) -> None:
        """One linear layer on the pooled input (``attn_fc1`` is ``nn.Identity``), as CondConv."""
        layer.attn_fc1 = nn.Identity()
        layer.attn_fc2 = nn.Linear(layer.in_channels, layer.num_kernels, **factory_kwargs)

    @staticmethod
    def reset_heads(layer: Any) -> None:
        """``nn.Linear``'s own initialisation."""
        SoftmaxRouting.reset_heads(layer)

    @staticmethod
    def start_neutral(layer: Any) -> Tuple[float, float]:
        """Zero logits (every weight 1/2) and copies scaled by 2/K: ``sum_k 1/2 * (2/K) W = W``."""
        _zero_heads(layer)
        scale = 2.0 / layer.num_kernels
        return scale, scale


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
    by ``temperature`` (None: the caller folded it into the heads)."""

    kind = "omni"

    @staticmethod
    def build_heads(layer: Any, factory_kwargs: dict) -> None:
        """ODConv: linear (no bias), BatchNorm, ReLU, then a head per attention: the K kernels
        (none when K is 1), the input channels, the output channels (none for a depthwise conv)
        and the kernel positions (none for a pointwise conv)."""
        cin, hidden, k = layer.in_channels, layer.hidden_channels, layer.num_kernels
        layer.attn_fc1 = nn.Linear(cin, hidden, bias=False, **factory_kwargs)
        layer.attn_bn = nn.BatchNorm1d(hidden, **factory_kwargs)
        layer.attn_fc2 = nn.Linear(hidden, k, **factory_kwargs) if k > 1 else None
        layer.attn_in = nn.Linear(hidden, cin, **factory_kwargs)
        depthwise = layer.groups == cin and cin == layer.out_channels
        layer.attn_out = None if depthwise else nn.Linear(hidden, layer.out_channels, **factory_kwargs)
        taps = math.prod(layer.kernel_size)
        layer.attn_spatial = None if taps == 1 else nn.Linear(hidden, taps, **factory_kwargs)

    @staticmethod
    def reset_heads(layer: Any) -> None:
        """ODConv's Kaiming fan-out weights and zero biases."""
        for m in layer.attention_heads() + [layer.attn_fc1]:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        layer.attn_bn.reset_parameters()

    @staticmethod
    def start_neutral(layer: Any) -> Tuple[float, float]:
        """Zero logits (every sigmoid 1/2, the softmax 1/K): the kernels are scaled by 2 per
        sigmoid attention present, the bias by 2 when the output attention scales it."""
        _zero_heads(layer)
        bias_scale = 1.0 if layer.attn_out is None else 2.0
        sigmoids = sum(h is not None for h in (layer.attn_in, layer.attn_out, layer.attn_spatial))
        return float(2**sigmoids), bias_scale

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


@torch.no_grad()
def _zero_heads(layer: Any) -> None:
    for head in layer.attention_heads():
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)


def routing_class(kind: str) -> Any:
    """The routing class for ``kind`` (one of :data:`ROUTINGS`, checked by the options first)."""
    return {"softmax": SoftmaxRouting, "sigmoid": SigmoidRouting, "omni": OmniRouting}[kind]


def make_routing(kind: str) -> nn.Module:
    """The routing module for ``kind`` (one of :data:`ROUTINGS`)."""
    if kind not in ROUTINGS:
        raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, got {kind!r}")
    return routing_class(kind)()
