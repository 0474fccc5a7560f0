"""How a dynamic layer computes: the exact strategies, the rule that picks one per call
(:func:`choose_path`) and the batch-independent form every tracer and exporter gets."""

import itertools
from typing import TYPE_CHECKING, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyconv.layers.grouped import WORKSPACE_MIN_BYTES, GroupedConv, aggregate, large_alloc_cheap, mixed_bias

if TYPE_CHECKING:
    from dyconv.layers.grouped import KernelWorkspace

__all__ = ["GROUPED_MAX_BYTES_UNTUNED", "MIXTURE_MAX_PIXELS", "PATHS", "ConvPaths", "choose_path"]

#: Computation strategies. ``auto`` picks one per call with :func:`choose_path`.
PATHS = ("auto", "grouped", "mixture", "bmm")

#: Output maps smaller than this many positions use ``mixture`` for dense convs (measured in 2-D).
MIXTURE_MAX_PIXELS = 32
#: Per-sample kernels larger than this are slow to allocate under glibc's default malloc.
GROUPED_MAX_BYTES_UNTUNED = 128 * 2**20


def choose_path(
    batch: int,
    in_channels: int,
    out_channels: int,
    groups: int,
    kernel_size: List[int],
    out_hw: int,
    cheap_alloc: bool = True,
    mixture_max_pixels: int = MIXTURE_MAX_PIXELS,
    grouped_max_bytes_untuned: int = GROUPED_MAX_BYTES_UNTUNED,
    spatial_attention: bool = False,
) -> str:
    """Pick the cheapest exact formulation for one call; the rule the ``auto`` path follows.

    - ``grouped``: aggregate one kernel per sample (``B*K*Cout*Cin/g*prod(kernel)`` MACs) and
      run ONE convolution over the batch folded into groups. Cost ~ static conv + aggregation;
      the best choice on maps of 7x7 and larger and for depthwise/grouped convs. At batch 1 it
      is one ordinary conv with the aggregated kernel.
    - ``mixture``: the K kernels as one dense conv with ``K*Cout`` outputs, outputs mixed by
      ``pi``: K times the static FLOPs but no per-sample kernels. Wins for dense convs on maps
      under ``MIXTURE_MAX_PIXELS`` positions (4x4, 2x2), where ``B`` copies of a large kernel
      cost more than the convolution itself. Not exact with a per-sample spatial attention
      (ODConv), so never chosen then.
    - ``bmm``: per-sample kernels applied by batched matmul, per group (pointwise convs
      directly, others via unfold): the best choice for dense pointwise convs (MobileNet
      expand/project).

    ``out_hw`` is the number of output positions (``H*W``; ``L`` in 1-D, ``D*H*W`` in 3-D).
    ``cheap_alloc`` is False on a CPU process whose malloc returns big blocks to the OS (see
    :mod:`dyconv.runtime`); then per-sample kernels over ``GROUPED_MAX_BYTES_UNTUNED`` bytes
    make ``grouped`` page-fault-bound and ``mixture`` is faster.
    Measured with ``scripts/benchmark_layer.py`` (README table).
    """
    if batch == 1:
        return "grouped"
    taps = 1
    for k in kernel_size:
        taps *= k
    if groups == 1:
        if taps == 1:
            return "bmm"
        if not spatial_attention:
            if out_hw < mixture_max_pixels:
                return "mixture"
            if not cheap_alloc and 4 * batch * out_channels * in_channels * taps > grouped_max_bytes_untuned:
                return "mixture"
    return "grouped"


class ConvPaths(nn.Module):
    """The computations of a dynamic layer given its attention ``pi`` ``(B, K)`` (and ODConv's
    channel and spatial attentions), and which one a call takes (``_forward_mixed``): ``static``
    (K = 1), ``grouped``, ``mixture``, ``bmm`` and the batch-independent form
    (``_forward_any_batch``) a traced or exported graph takes so that it runs at any batch.
    :class:`~dyconv.layers.DynamicConvNd` inherits them and holds the geometry they read
    (``_conv_stride``, ``_pre_pad``, ...)."""

    def _set_geometry(self, ref: nn.Module) -> None:
        """The conv geometry every path reads, from ``ref`` (the ``nn.ConvNd`` the layer's
        arguments make, which validated them)."""
        nd = self._ndim
        self.in_channels = ref.in_channels
        self.out_channels = ref.out_channels
        self.kernel_size = tuple(int(k) for k in ref.kernel_size)
        self.stride = tuple(int(s) for s in ref.stride)
        self.padding = ref.padding if isinstance(ref.padding, str) else tuple(int(p) for p in ref.padding)
        self.dilation = tuple(int(d) for d in ref.dilation)
        self.groups = ref.groups
        self.padding_mode = ref.padding_mode
        self._reversed_padding_repeated_twice = [int(p) for p in ref._reversed_padding_repeated_twice]
        self._kernel = list(self.kernel_size)
        self._conv_stride = list(self.stride)
        self._conv_dilation = list(self.dilation)
        self._spatial_dims = list(range(2, 2 + nd))
        self._tap_offsets = [list(o) for o in itertools.product(*[range(k) for k in self.kernel_size])]
        # Every path pads in two steps: an optional F.pad (_pre_pad; a non-zero padding mode or
        # an asymmetric "same") and the conv's own symmetric integer padding (_conv_padding).
        pairs = self._reversed_padding_repeated_twice
        per_dim = [(pairs[2 * (nd - 1 - i)], pairs[2 * (nd - 1 - i) + 1]) for i in range(nd)]
        if self.padding_mode != "zeros":
            self._pre_pad, self._pre_pad_mode, self._conv_padding = list(pairs), self.padding_mode, [0] * nd
        elif isinstance(self.padding, str) and any(lo != hi for lo, hi in per_dim):
            self._pre_pad, self._pre_pad_mode, self._conv_padding = list(pairs), "constant", [0] * nd
        else:
            self._pre_pad, self._pre_pad_mode, self._conv_padding = [], "constant", [lo for lo, _ in per_dim]
        # The conv padding as F.pad amounts (for the slicing unfold); empty when there is none.
        self._unfold_pad = [p for p in reversed(self._conv_padding) for _ in (0, 1)] if any(self._conv_padding) else []

    def _forward_mixed(
        self,
        x: Tensor,
        pi: Tensor,
        a_in: Optional[Tensor],
        a_out: Optional[Tensor],
        a_sp: Optional[Tensor],
    ) -> Tensor:
        """The convolution for kernel weights ``pi`` ``(B, K)`` and ODConv's optional input,
        output and spatial attentions; the input and output ones scale the activations."""
        if a_in is not None:
            x = self._scale_channels(x, a_in)
        path = self._resolve_path(x, a_sp is not None)
        if path == "static":
            y = self._forward_static(x, pi)
        elif path == "mixture":
            y = self._forward_mixture(x, pi)
        elif path == "bmm":
            y = self._forward_bmm(x, pi, a_sp)
        elif path == "any_batch":
            y = self._forward_any_batch(x, pi, a_sp)
        else:
            y = self._forward_grouped(x, pi, a_sp)
        if a_out is not None:
            y = self._scale_channels(y, a_out)
        return y

    def _scale_channels(self, t: Tensor, attention: Tensor) -> Tensor:
        """``t`` ``(B, C, *spatial)`` scaled per sample and channel by ``attention`` ``(B, C)``."""
        return t * attention.to(t.dtype).reshape(attention.shape + (1,) * self._ndim)

    def _resolve_path(self, x: Tensor, spatial_attention: bool) -> str:
        if self.num_kernels == 1 and not spatial_attention:
            return "static"
        if not torch.jit.is_scripting():
            # A traced or exported graph (torch.jit.trace, torch.onnx.export, torch.export) must
            # run at any batch: the batch-independent form, whatever the traced batch was.
            if torch.jit.is_tracing() or torch.compiler.is_exporting():
                return "any_batch"
        if self.path != "auto":
            return self.path
        cheap_alloc = True
        if not torch.jit.is_scripting():
            cheap_alloc = x.device.type != "cpu" or large_alloc_cheap()
        return choose_path(
            x.shape[0],
            self.in_channels,
            self.out_channels,
            self.groups,
            self._kernel,
            self._out_positions(x),
            cheap_alloc,
            spatial_attention=spatial_attention,
        )

    def _out_positions(self, x: Tensor) -> int:
        n = 1
        for i in range(self._ndim):
            size = x.shape[2 + i]
            if len(self._pre_pad) > 0:
                size += self._pre_pad[2 * (self._ndim - 1 - i)] + self._pre_pad[2 * (self._ndim - 1 - i) + 1]
            n *= self._out_len(size, i)
        return n

    def _out_len(self, size: int, i: int) -> int:
        """Output length along spatial dim ``i`` of an input already pre-padded."""
        span = self._conv_dilation[i] * (self.kernel_size[i] - 1) + 1
        return (size + 2 * self._conv_padding[i] - span) // self._conv_stride[i] + 1

    def _pre(self, x: Tensor) -> Tensor:
        """The F.pad step (non-zero padding modes, asymmetric "same"); a no-op otherwise."""
        if len(self._pre_pad) > 0:
            return F.pad(x, self._pre_pad, mode=self._pre_pad_mode)
        return x

    def _conv(self, x: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int) -> Tensor:
        """The convolution with this layer's geometry (``nn.ConvNd._conv_forward``)."""
        x = self._pre(x)
        if self._ndim == 1:
            return F.conv1d(x, weight, bias, self._conv_stride, self._conv_padding, self._conv_dilation, groups)
        if self._ndim == 3:
            return F.conv3d(x, weight, bias, self._conv_stride, self._conv_padding, self._conv_dilation, groups)
        return F.conv2d(x, weight, bias, self._conv_stride, self._conv_padding, self._conv_dilation, groups)

    def _forward_static(self, x: Tensor, pi: Tensor) -> Tensor:
        # K == 1: a softmax pi is exactly 1.0, so this is nn.ConvNd bit for bit (the product keeps
        # the attention in the graph, e.g. for DDP's unused-parameter check).
        bias = self.bias
        y = self._conv(x, self.weight[0], None if bias is None else bias[0], self.groups)
        return y * pi.to(y.dtype).reshape([-1] + [1] * (self._ndim + 1))

    def _mixed_kernels(self, pi: Tensor, a_sp: Optional[Tensor]) -> Tensor:
        """Per-sample kernels ``(B, Cout, Cin/g, *kernel)``, the spatial attention applied."""
        return aggregate(pi, self.weight, a_sp)[1]

    def _forward_grouped(self, x: Tensor, pi: Tensor, a_sp: Optional[Tensor]) -> Tensor:
        if not torch.jit.is_scripting():
            workspace = self._workspace_for(x, pi)
            if workspace is not None or (self.recompute_kernels and torch.is_grad_enabled()):
                return GroupedConv.apply(
                    self._pre(x), pi, self.weight, self.bias, a_sp, self._conv_stride, self._conv_padding,
                    self._conv_dilation, self.groups, workspace,
                )
        b = x.shape[0]
        cout = self.out_channels
        weight = self._mixed_kernels(pi, a_sp).reshape((b * cout,) + self.weight.shape[2:])
        bias = mixed_bias(pi, self.bias)
        if bias is not None:
            bias = bias.reshape(-1)
        if b == 1:
            return self._conv(x, weight, bias, self.groups)
        x = x.reshape((1, b * self.in_channels) + x.shape[2:])
        y = self._conv(x, weight, bias, b * self.groups)
        return y.reshape((b, cout) + y.shape[2:])

    @torch.jit.unused
    def _workspace_for(self, x: Tensor, pi: Tensor) -> "Optional[KernelWorkspace]":
        """The workspace to build this call's per-sample kernels in: on the CPU under a malloc
        that returns large blocks to the OS (not :func:`large_alloc_cheap`), for a batch whose
        kernels are at least :data:`WORKSPACE_MIN_BYTES`, outside autocast; else None."""
        workspace = self.kernel_workspace
        if workspace is None or x.device.type != "cpu" or x.shape[0] < 2 or pi.dtype != self.weight.dtype:
            return None
        if large_alloc_cheap():
            return None
        if torch.is_autocast_enabled("cpu"):
            return None
        if x.shape[0] * self.weight[0].numel() * self.weight.element_size() < WORKSPACE_MIN_BYTES:
            return None
        return workspace

    def _forward_any_batch(self, x: Tensor, pi: Tensor, a_sp: Optional[Tensor] = None) -> Tensor:
        """Batch-independent: pointwise convs (and convs with a spatial attention) by batched
        matmul with per-sample kernels, the rest as one conv with the K kernels whose outputs
        are mixed (K x the FLOPs)."""
        pointwise = True
        for k in self._kernel:
            if k != 1:
                pointwise = False
        if a_sp is not None or (pointwise and self.groups == 1 and (self.path == "auto" or self.path == "bmm")):
            return self._forward_bmm(x, pi, a_sp, sliced=True)
        return self._forward_mixture(x, pi)

    def _forward_mixture(self, x: Tensor, pi: Tensor) -> Tensor:
        b = x.shape[0]
        k, cout, g = self.num_kernels, self.out_channels, self.groups
        weight = self.weight
        if g == 1:
            weight = weight.reshape((k * cout,) + weight.shape[2:])
        else:
            # Conv groups own consecutive output channels: order the K copies inside each group.
            weight = weight.reshape((k, g, cout // g) + weight.shape[2:]).transpose(0, 1)
            weight = weight.reshape((g * k * (cout // g),) + self.weight.shape[2:])
        y = self._conv(x, weight, None, g)
        spatial = y.shape[2:]
        y = y.reshape(b, g, k, -1)
        out = torch.einsum("bk,bgkn->bgn", pi.to(y.dtype), y).reshape((b, cout) + spatial)
        bias = mixed_bias(pi, self.bias)
        if bias is not None:
            out = out + bias.to(out.dtype).reshape([b, cout] + [1] * self._ndim)
        return out

    def _forward_bmm(self, x: Tensor, pi: Tensor, a_sp: Optional[Tensor], sliced: bool = False) -> Tensor:
        b = x.shape[0]
        cout, g = self.out_channels, self.groups
        # Per-sample kernels as (B, groups, Cout/g, Cin/g*taps): one batched matmul per group.
        weight = self._mixed_kernels(pi, a_sp).reshape(b, g, cout // g, -1)
        x = self._pre(x)
        pointwise = True
        for i in range(self._ndim):
            if self.kernel_size[i] != 1 or self._conv_padding[i] != 0:
                pointwise = False
        if pointwise:
            for i in range(self._ndim):
                if self._conv_stride[i] != 1:
                    x = torch.ops.aten.slice(x, 2 + i, 0, x.shape[2 + i], self._conv_stride[i])
            spatial = x.shape[2:]
            cols = x.flatten(2)
        else:
            spatial = [self._out_len(x.shape[2 + i], i) for i in range(self._ndim)]
            cols = self._unfold(x, sliced)
        y = torch.matmul(weight, cols.reshape(b, g, -1, cols.shape[-1])).reshape(b, cout, -1)
        bias = mixed_bias(pi, self.bias)
        if bias is not None:
            y = y + bias.to(y.dtype).unsqueeze(-1)
        return y.reshape([b, cout] + list(spatial))

    def _unfold(self, x: Tensor, sliced: bool = False) -> Tensor:
        """``(B, C*taps, L)`` patches of a pre-padded input, channel-major as the kernel's
        layout: ``F.unfold`` in 2-D; otherwise (and ``sliced``: the batch-independent form, which
        every exporter takes) one strided slice per tap."""
        if self._ndim == 2 and not sliced:
            return F.unfold(x, self.kernel_size, self._conv_dilation, self._conv_padding, self._conv_stride)
        if len(self._unfold_pad) > 0:
            x = F.pad(x, self._unfold_pad)
        outs = [self._out_len(x.shape[2 + i] - 2 * self._conv_padding[i], i) for i in range(self._ndim)]
        positions = 1
        for n in outs:
            positions *= n
        taps: List[Tensor] = []
        for offsets in self._tap_offsets:
            tap = x
            for i in range(self._ndim):
                start = offsets[i] * self._conv_dilation[i]
                stop = start + self._conv_stride[i] * (outs[i] - 1) + 1
                tap = torch.ops.aten.slice(tap, 2 + i, start, stop, self._conv_stride[i])
            taps.append(tap)
        cols = torch.stack(taps, dim=2)  # (B, C, taps, *out)
        return cols.reshape(x.shape[0], -1, positions)
