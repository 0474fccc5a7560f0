"""The per-sample kernels of a dynamic layer: their aggregation, the mixed bias, the memory they
are built in on the CPU and the ``grouped`` path as one autograd node that recomputes them."""

import os
import threading
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "WORKSPACE_MIN_BYTES",
    "GroupedConv",
    "KernelWorkspace",
    "aggregate",
    "large_alloc_cheap",
    "mixed_bias",
]

#: Allocators that keep freed large blocks for reuse when preloaded.
_CACHING_MALLOCS = ("jemalloc", "tcmalloc", "mimalloc")


def large_alloc_cheap() -> bool:
    """Whether freshly allocating hundreds of MB on the CPU is cheap in this process: glibc told
    to keep large blocks (``MALLOC_MMAP_MAX_=0``, which :func:`dyconv.runtime.tune_malloc` also
    sets after applying the same setting) or a caching malloc preloaded. Read per call."""
    if os.environ.get("MALLOC_MMAP_MAX_") == "0":
        return True
    preload = os.environ.get("LD_PRELOAD", "")
    return any(name in preload for name in _CACHING_MALLOCS)


def mixed_bias(pi: Tensor, bias: Optional[Tensor]) -> Optional[Tensor]:
    """The per-sample bias ``sum_k pi_k b_k``, ``(B, Cout)`` for ``pi`` ``(B, K)`` and ``bias``
    ``(K, Cout)``; None without a bias. Every path (and every other form of the layer) computes it here."""
    if bias is None:
        return None
    return torch.mm(pi, bias)


def aggregate(pi: Tensor, weight: Tensor, a_sp: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """``(mixed, kernels)``: the per-sample kernels ``sum_k pi_k W_k`` ``(B, Cout, Cin/g, *kernel)``
    and the same scaled by the spatial attention ``a_sp`` ``(B, *kernel)`` (ODConv; None: equal)."""
    b = pi.shape[0]
    mixed = torch.mm(pi, weight.reshape(weight.shape[0], -1)).reshape((b,) + weight.shape[1:])
    if a_sp is None:
        return mixed, mixed
    return mixed, mixed * a_sp.to(mixed.dtype).reshape((b, 1, 1) + a_sp.shape[1:])


def _mix_into(pi: Tensor, weight: Tensor, a_sp: Optional[Tensor], workspace: "Optional[KernelWorkspace]") -> Tensor:
    """The per-sample kernels ``(B, Cout, Cin/g, *kernel)`` (spatial attention applied), written
    into ``workspace``'s memory when given (no autograd: inside the Function), else fresh."""
    if workspace is None:
        return aggregate(pi, weight, a_sp)[1]
    b = pi.shape[0]
    flat = workspace.take(b * weight[0].numel(), weight.dtype, weight.device).view(b, -1)
    torch.mm(pi, weight.reshape(weight.shape[0], -1), out=flat)
    kernels = flat.view((b,) + weight.shape[1:])
    if a_sp is not None:
        kernels.mul_(a_sp.to(kernels.dtype).reshape((b, 1, 1) + a_sp.shape[1:]))
    return kernels


class KernelWorkspace:
    """Memory for the per-sample kernels of the CPU ``grouped`` path, reused from call to call.

    Those kernels are ``B`` copies of a layer's weight (hundreds of MB for a 512-channel layer);
    glibc's malloc maps such blocks fresh for every call and unmaps them on free, so each call
    would page-fault all of it in again. A workspace keeps one block per thread, device and
    dtype, grown to the largest request, for the layers that share it (every layer a model
    builder or :func:`~dyconv.layers.convert_to_dynamic` makes shares one): the memory held is
    that of the largest layer's kernels. ``clear()`` releases it; a copy or a pickle of a layer
    starts empty. Not part of the ``state_dict``.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def take(self, numel: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """A flat tensor of ``numel`` elements from this thread's block (contents undefined)."""
        blocks: dict = self._local.__dict__.setdefault("blocks", {})
        key = (dtype, device)
        block = blocks.get(key)
        if block is None or block.numel() < numel:
            blocks[key] = None  # free the smaller block before allocating the larger
            block = blocks[key] = torch.empty(numel, dtype=dtype, device=device)
        return block[:numel]

    def clear(self) -> None:
        """Release this thread's blocks."""
        self._local.__dict__.pop("blocks", None)

    def __deepcopy__(self, memo: dict) -> "KernelWorkspace":
        return KernelWorkspace()

    def __reduce__(self) -> tuple:
        return (KernelWorkspace, ())


#: Per-sample kernels smaller than this are left to malloc (which reuses small blocks itself).
WORKSPACE_MIN_BYTES = 2**20


class GroupedConv(torch.autograd.Function):
    """The ``grouped`` path as one autograd node that saves ``x``, ``pi`` (and the spatial
    attention) and the K kernels instead of the B per-sample kernels; backward recomputes them
    (one matmul) and uses ``aten.convolution_backward``. With a :class:`KernelWorkspace` the
    kernels are built in its reused memory, in forward and in backward. ``x`` arrives pre-padded."""

    @staticmethod
    def forward(ctx, x, pi, weight, bias, a_sp, stride, padding, dilation, groups, workspace):  # type: ignore[override]
        b, cout = x.shape[0], weight.shape[1]
        kernels = _mix_into(pi, weight, a_sp, workspace).reshape((b * cout,) + weight.shape[2:])
        bias_b = mixed_bias(pi, bias)
        bias_b = None if bias_b is None else bias_b.reshape(b * cout)
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(stride) - 1]
        x_groups = x.reshape((1, b * x.shape[1]) + x.shape[2:])
        y = conv(x_groups, kernels, bias_b, stride, padding, dilation, b * groups)
        ctx.save_for_backward(x, pi, weight, bias, a_sp)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.workspace = workspace
        device = x.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return y.reshape((b, cout) + y.shape[2:])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):  # type: ignore[override]
        x, pi, weight, bias, a_sp = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        workspace = ctx.workspace
        enabled, autocast_dtype = ctx.autocast
        b, k, cout = x.shape[0], weight.shape[0], weight.shape[1]
        with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=enabled):
            kernels = _mix_into(pi, weight, a_sp, workspace)
        dtype = kernels.dtype
        grad_x, grad_kernels, _ = torch.ops.aten.convolution_backward(
            grad_y.reshape((1, b * cout) + grad_y.shape[2:]).to(dtype),
            x.reshape((1, b * x.shape[1]) + x.shape[2:]).to(dtype),
            kernels.reshape((b * cout,) + weight.shape[2:]),
            None,
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0] * len(stride),
            b * groups,
            [ctx.needs_input_grad[0], True, False],
        )
        grad_kernels = grad_kernels.reshape(kernels.shape)
        grad_a_sp = None
        if a_sp is not None:
            # d/d a_sp of sum(grad * mixed * a_sp): the unscaled kernels, recomputed in place.
            with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=enabled):
                mixed = _mix_into(pi, weight, None, workspace)
            grad_a_sp = mixed.mul_(grad_kernels).sum(dim=(1, 2)).to(a_sp.dtype)
            grad_kernels.mul_(a_sp.to(grad_kernels.dtype).reshape((b, 1, 1) + a_sp.shape[1:]))
        w_flat = weight.reshape(k, -1)
        grad_k = grad_kernels.reshape(b, -1).to(weight.dtype)
        grad_pi = torch.mm(grad_k, w_flat.t())
        grad_weight = torch.mm(pi.t().to(weight.dtype), grad_k).reshape(weight.shape)
        grad_bias = None
        if bias is not None:
            grad_mixed_bias = grad_y.flatten(2).sum(dim=2).to(bias.dtype)  # (B, Cout)
            grad_bias = torch.mm(pi.t().to(bias.dtype), grad_mixed_bias)
            grad_pi = grad_pi + torch.mm(grad_mixed_bias, bias.t())
        if grad_x is not None:
            grad_x = grad_x.reshape(x.shape).to(x.dtype)
        return grad_x, grad_pi.to(pi.dtype), grad_weight, grad_bias, grad_a_sp, None, None, None, None, None
