"""Inference-time folding for deployment: BatchNorm into the K kernels of the dynamic conv
before it, and the softmax temperature into the attention's last linear layer.

Both are exact algebra (up to float rounding), applied to a copy by :func:`prepare_for_export`,
which swaps every dynamic layer for an :class:`~dyconv.export.modules.ExportConv` carrying the
folded state:

- BatchNorm in eval mode after a conv is a per-channel affine map ``s * y + t`` with
  ``s = gamma / sqrt(var + eps)``, ``t = beta - s * mean``. For a dynamic conv
  ``y = W(x) * x + b(x)`` with ``W(x) = sum_k pi_k W_k``, ``b(x) = sum_k pi_k b_k`` and
  ``sum_k pi_k = 1`` (softmax), ``s * y + t`` is the dynamic conv with kernels ``s * W_k`` and
  biases ``s * b_k + t``. With weights that do not sum to 1 (CondConv's sigmoid) or an output
  attention that scales the bias (ODConv), ``t`` stays a separate constant added last. A
  runtime folds BatchNorm into a constant-weight conv by itself but not into a kernel computed
  in the graph, so this saves one op per layer there. 1-D, 2-D and 3-D alike.
- ``softmax(fc2(h) / T) = softmax((fc2 / T)(h))`` (and ODConv's sigmoids of ``z / T``): one
  division per attention less.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
import torch.fx
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from dyconv.export.modules import ExportConv, to_export_modules
from dyconv.layers.convert import replace_modules
from dyconv.layers.dynamic_conv import DynamicConvNd

__all__ = ["fold_batchnorm", "fold_temperature", "prepare_for_export"]

_CONVS = (DynamicConvNd, ExportConv)


class _LeafTracer(torch.fx.Tracer):
    """Symbolic tracer that keeps dynamic convs (data-dependent shapes inside) as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _CONVS) or super().is_leaf_module(m, qualname)


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(dynamic conv, BatchNorm) qualified names where the BN's input is the conv's output and
    nothing else reads that output; empty if the model cannot be traced symbolically."""
    try:
        graph = _LeafTracer().trace(model)
    except Exception:  # a model fx cannot trace: nothing is folded, the export stays exact
        return []
    modules = dict(model.named_modules())
    pairs: list[tuple[str, str]] = []
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), _BatchNorm):
            continue
        (src,) = node.args[:1] or (None,)
        if (
            isinstance(src, torch.fx.Node)
            and src.op == "call_module"
            and isinstance(modules.get(str(src.target)), _CONVS)
            and len(src.users) == 1
            and len(node.args) == 1
            and not node.kwargs
        ):
            pairs.append((str(src.target), str(node.target)))
    # A module called from two places is folded only if every call pairs the same way.
    convs = [c for c, _ in pairs]
    return [(c, b) for c, b in pairs if convs.count(c) == 1]


@torch.no_grad()
def _fold_one(conv: ExportConv, bn: _BatchNorm) -> None:
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("BatchNorm without running statistics cannot be folded")
    layer = conv.layer
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias
    layer.weight.mul_(scale.to(layer.weight.dtype).reshape([1, -1] + [1] * (layer.weight.dim() - 2)))
    if not _bias_passes_unscaled(layer):
        if layer.bias is not None:
            layer.bias.mul_(scale.to(layer.bias.dtype))
        conv.post_bias = shift.to(layer.weight.dtype)
        return
    if layer.bias is None:
        # Every kernel gets the same bias ``shift``, so the mixed bias is ``shift`` itself: the
        # exported graph uses it as a constant instead of aggregating K equal vectors.
        shift = shift.to(layer.weight.dtype)
        layer.bias = nn.Parameter(shift.expand(layer.num_kernels, -1).clone())
        conv.shared_bias = shift.clone()
        return
    layer.bias.mul_(scale.to(layer.bias.dtype)).add_(shift.to(layer.bias.dtype))


def _bias_passes_unscaled(layer: DynamicConvNd) -> bool:
    """Whether a constant added to every kernel's bias reaches the output unchanged: the kernel
    weights sum to 1 and no output attention scales the bias."""
    kind = layer.routing.kind
    return kind == "softmax" or (kind == "omni" and layer.attn_out is None)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm (1-D/2-D/3-D) that directly follows a dynamic conv into its K
    kernels and biases, in place: the BN becomes ``nn.Identity`` and the conv an
    :class:`~dyconv.export.modules.ExportConv` (any batch) holding what the fold leaves over;
    returns how many."""
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (BatchNorm running statistics)")
    n = 0
    for conv_name, bn_name in _conv_bn_pairs(model):
        bn = model.get_submodule(bn_name)
        if not isinstance(bn, _BatchNorm) or not bn.track_running_stats:
            continue
        conv = model.get_submodule(conv_name)
        if isinstance(conv, DynamicConvNd):
            export_conv = ExportConv(conv)
            replace_modules(model, {id(conv): export_conv})
            conv = export_conv
        _fold_one(conv, bn)  # type: ignore[arg-type]
        _set_submodule(model, bn_name, nn.Identity())
        n += 1
    return n


@torch.no_grad()
def fold_temperature(model: nn.Module) -> int:
    """Divide the attention heads the temperature divides (``layer.temperature_heads()``) by it
    and set the temperature to 1, in place (same attention); returns how many layers. (An
    :class:`~dyconv.export.modules.ExportConv` folded its layer's when it was made.)"""
    n = 0
    for m in model.modules():
        if isinstance(m, DynamicConvNd):
            t = float(m.temperature)
            for head in m.temperature_heads():
                head.weight.div_(t)
                head.bias.div_(t)
            m.temperature.fill_(1.0)
            n += 1
    return n


def prepare_for_export(
    model: nn.Module,
    fold_bn: bool = True,
    *,
    batch: int | None = None,
    mix_depthwise: Callable[[DynamicConvNd], bool] | None = None,
) -> nn.Module:
    """An eval-mode copy of ``model`` whose dynamic layers are
    :class:`~dyconv.export.modules.ExportConv` modules for ``batch`` (None: any batch), with
    temperatures and (``fold_bn``) BatchNorm folded into them."""
    prepared = to_export_modules(copy.deepcopy(model).eval(), batch, mix_depthwise)
    if fold_bn:
        fold_batchnorm(prepared)
    return prepared
