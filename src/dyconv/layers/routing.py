"""How a dynamic layer turns attention logits into kernel weights ``pi``.

A parameter-free submodule of :class:`~dyconv.layers.DynamicConv2d`, so that its output is the
one place where ``pi`` exists: forward mixes the kernels with it, and
:class:`dyconv.analysis.AttentionRecorder` hooks it to see exactly the same tensor.
"""

from typing import Optional

import torch
from torch import Tensor, nn

__all__ = ["SoftmaxRouting"]


class SoftmaxRouting(nn.Module):
    """``softmax(logits / temperature)`` over the K kernels (Chen et al. 2020), shape ``(B, K)``.

    The softmax runs in at least float32 (bf16/fp16 logits lose the near-uniform start) and the
    result is returned in the logits' dtype, the dtype the kernel mixing uses. ``temperature``
    None skips the division (:func:`dyconv.utils.fold.fold_temperature` folded it into the
    logits for export).
    """

    def forward(self, logits: Tensor, temperature: Optional[Tensor]) -> Tensor:
        if temperature is not None:
            logits = logits / temperature.to(logits.dtype)
        pi = torch.softmax(logits, dim=1, dtype=torch.promote_types(logits.dtype, torch.float32))
        return pi.to(logits.dtype)
