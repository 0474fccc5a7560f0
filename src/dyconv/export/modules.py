"""Export-time modules: each dynamic layer is swapped for an :class:`ExportConv` that computes the
graph an exported file should hold, so that the layer itself knows nothing of export.

An :class:`ExportConv` wraps the layer (its kernels, heads and geometry) and carries as its own
state what export changes: the temperature folded into the attention heads, what folding a
BatchNorm into the kernels leaves over (:mod:`dyconv.export.fold`), the graph's fixed batch and
the ONNX-only per-layer form of small depthwise convs.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from dyconv.layers.convert import replace_modules
from dyconv.layers.dynamic_conv import DynamicConvNd
from dyconv.layers.grouped import mixed_bias

__all__ = ["ExportConv", "to_export_modules"]


class ExportConv(nn.Module):
    """A dynamic layer as exported; computes what ``layer`` computes.

    Args:
        layer: the dynamic layer (changed in place: its temperature is folded into the heads the
            temperature divides, and set to 1, so the graph holds no division).
        batch: the graph's fixed batch. 1: each layer aggregates its K kernels with the sample's
            attention and runs one conv (the method's cost; :func:`dyconv.export.export_model`
            runs this graph once per sample in a ``Scan``); B > 1: per-sample kernels in one
            grouped conv, for exactly B samples; None: the layer's own forward (any batch).
        mix_depthwise: at batch 1, run a 2-D depthwise layer as K constant-kernel convs mixed by
            the attention where that beats one conv with the computed kernel in onnxruntime
            (ONNX files only; see :meth:`_mixes_single`).

    Buffers set by :func:`dyconv.export.fold.fold_batchnorm`: ``shared_bias`` ``(Cout,)``, the
    mixed bias when every kernel has this bias (a constant in the graph instead of ``pi @ b``),
    and ``post_bias`` ``(Cout,)``, a shift added after the conv where the attention does not sum
    to 1 or scales the bias; both None otherwise.
    """

    def __init__(self, layer: DynamicConvNd, batch: int | None = None, mix_depthwise: bool = False) -> None:
        super().__init__()
        if batch is not None and batch < 1:
            raise ValueError(f"batch must be a positive integer or None, got {batch}")
        with torch.no_grad():
            t = float(layer.temperature)
            for head in layer.temperature_heads():
                head.weight.div_(t)
                head.bias.div_(t)
            layer.temperature.fill_(1.0)
        self.layer = layer
        self.batch = batch
        self.mix_depthwise = bool(mix_depthwise)
        self.register_buffer("shared_bias", None)
        self.register_buffer("post_bias", None)

    def forward(self, x: Tensor) -> Tensor:
        layer = self.layer
        if layer.attn_bn is not None:  # omni
            a = layer._omni_attention(x, None)
            pi, a_in, a_out, a_sp = a.kernel, a.in_channel, a.out_channel, a.spatial
        else:
            pi, a_in, a_out, a_sp = layer._kernel_attention(x, None), None, None, None
        if self.batch is None:
            y = layer._forward_mixed(x, pi, a_in, a_out, a_sp)
        else:
            if a_in is not None:
                x = layer._scale_channels(x, a_in)
            if layer.num_kernels == 1 and a_sp is None:
                y = layer._forward_static(x, pi)
            elif self.batch == 1:
                y = self._single(x, pi, a_sp)
            else:
                y = self._fixed_batch(x, pi, a_sp)
            if a_out is not None:
                y = layer._scale_channels(y, a_out)
        if self.post_bias is not None:
            y = y + self.post_bias.to(y.dtype).reshape([1, -1] + [1] * layer._ndim)
        return y

    def _bias(self, pi: Tensor) -> Tensor | None:
        """The mixed bias ``(B * Cout,)`` for attention ``pi`` ``(B, K)``."""
        if self.shared_bias is not None:
            return self.shared_bias if pi.shape[0] == 1 else self.shared_bias.repeat(pi.shape[0])
        bias = mixed_bias(pi, self.layer.bias)
        return None if bias is None else bias.reshape(-1)

    def _single(self, x: Tensor, pi: Tensor, a_sp: Tensor | None) -> Tensor:
        """Batch 1: one conv with the aggregated kernel and bias, about the static cost.

        Measured in onnxruntime (1 thread, batch 1): a computed kernel cannot be pre-packed, yet
        this beats K constant kernels mixed by ``pi`` for dense and pointwise convs at every map
        size (1x1 as a MatMul instead: no faster); depthwise convs on small maps are the
        exception (:meth:`_mixes_single`). ``pi`` is the ``(1, K)`` row itself (one op less than
        ``pi[0]``)."""
        layer = self.layer
        bias = self._bias(pi)
        if a_sp is None and self._mixes_single(x):
            return self._single_mixture(x, pi, bias)
        k = layer.num_kernels
        weight = torch.matmul(pi, layer.weight.reshape(k, -1)).reshape(layer.weight.shape[1:])
        if a_sp is not None:
            weight = weight * a_sp.to(weight.dtype).reshape(layer.kernel_size)
        return layer._conv(x, weight, bias, layer.groups)

    def _mixes_single(self, x: Tensor) -> bool:
        """Batch-1 rule for 2-D depthwise convs: K constant-kernel convs (pre-packed, blocked
        layout in onnxruntime) mixed by ``pi`` where they beat one conv with the computed kernel,
        which onnxruntime runs channel by channel: every strided depthwise conv, and stride-1
        ones with an output of at most 14x14. Measured in onnxruntime (1 thread): isolated
        layers, K convs against aggregated, 480 channels at 7x7 0.05 against 0.11 ms, 96 at 56x56
        stride 2 0.19 against 0.25 ms, but 96 at 56x56 stride 1 0.48 against 0.40 ms; whole
        ``dy_mobilenetv2`` x0.5, strided convs at every map size 2-3% faster than only up to
        28x28 outputs, stride-1 maps up to 28x28 2% slower than up to 14x14. ONNX files only
        (``mix_depthwise``): eager kernels (``torch.export`` programs) run a computed depthwise
        kernel fast. Not measured in 1-D/3-D, which keep aggregating."""
        layer = self.layer
        if not self.mix_depthwise or layer._ndim != 2:
            return False
        if layer.groups == 1 or layer.in_channels != layer.groups or layer.out_channels != layer.groups:
            return False
        if not all(isinstance(n, int) for n in x.shape[2:]):
            return False
        return any(s > 1 for s in layer.stride) or layer._out_positions(x) <= 14 * 14

    def _single_mixture(self, x: Tensor, pi: Tensor, bias: Tensor | None) -> Tensor:
        """``sum_k pi_k (W_k * x) + b``, each term a conv with a constant kernel. Stride 1 scales
        the inputs (onnxruntime then accumulates each conv into the next), a strided conv its
        smaller outputs."""
        layer = self.layer
        weights = layer.weight.unbind(0)
        scales = pi.reshape([-1, layer.num_kernels] + [1] * layer._ndim).split(1, dim=1)
        if all(s == 1 for s in layer.stride):
            y = layer._conv(x * scales[0], weights[0], bias, layer.groups)
            for w_k, s_k in zip(weights[1:], scales[1:]):
                y = y + layer._conv(x * s_k, w_k, None, layer.groups)
            return y
        y = layer._conv(x, weights[0], None, layer.groups) * scales[0]
        for w_k, s_k in zip(weights[1:], scales[1:]):
            y = y + layer._conv(x, w_k, None, layer.groups) * s_k
        if bias is not None:
            y = y + bias.reshape([1, -1] + [1] * layer._ndim)
        return y

    def _fixed_batch(self, x: Tensor, pi: Tensor, a_sp: Tensor | None) -> Tensor:
        """A graph for exactly ``batch`` samples: per-sample kernels in one grouped conv."""
        layer, batch = self.layer, int(self.batch or 1)
        cout = layer.out_channels
        weight = layer._mixed_kernels(pi, a_sp).reshape((batch * cout, *layer.weight.shape[2:]))
        bias = self._bias(pi)
        x = x.reshape((1, batch * layer.in_channels, *x.shape[2:]))
        y = layer._conv(x, weight, bias, batch * layer.groups)
        return y.reshape((batch, cout, *y.shape[2:]))

    def extra_repr(self) -> str:
        return f"batch={self.batch}" + (", mix_depthwise=True" if self.mix_depthwise else "")


def to_export_modules(
    model: nn.Module, batch: int | None = None, mix_depthwise: Callable[[DynamicConvNd], bool] | None = None
) -> nn.Module:
    """Swap every dynamic layer of ``model`` (in place) for an :class:`ExportConv` around it, with
    ``batch`` and ``mix_depthwise(layer)``; returns ``model`` (the new module if it is a layer)."""
    wrapped = {id(m.layer) for m in model.modules() if isinstance(m, ExportConv)}
    new = {
        id(m): ExportConv(m, batch, bool(mix_depthwise(m)) if mix_depthwise is not None else False)
        for m in model.modules()
        if isinstance(m, DynamicConvNd) and id(m) not in wrapped
    }
    return replace_modules(model, new)
