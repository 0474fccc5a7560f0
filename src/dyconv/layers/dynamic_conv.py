"""Dynamic convolution in 1, 2 and 3 dimensions: attention over K convolution kernels.

Chen, Dai, Liu, Chen, Yuan, Liu, "Dynamic Convolution: Attention over Convolution Kernels",
CVPR 2020 (arXiv:1912.03458).

For each sample ``x`` the layer computes attention weights ``pi(x)`` over K kernels
(squeeze-and-excitation style, on the layer's input) and convolves ``x`` with
``W(x) = sum_k pi_k(x) W_k`` plus ``b(x) = sum_k pi_k(x) b_k``. Convolution is linear in the
kernel, so the layer may equally compute ``sum_k pi_k(x) (W_k * x)``; it picks whichever
formulation is cheapest for the shape at hand (see :func:`choose_path`).

One implementation, :class:`DynamicConvNd`, serves :class:`DynamicConv1d`,
:class:`DynamicConv2d` and :class:`DynamicConv3d`; ``routing=`` selects how the attention is
formed (:mod:`dyconv.layers.routing`): the paper's softmax, CondConv's sigmoid, or ODConv's
omni-dimensional attention (kernels, output channels, input channels and kernel positions).
"""

import math
from typing import TYPE_CHECKING, Any, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyconv.layers.grouped import WORKSPACE_MIN_BYTES, KernelWorkspace, large_alloc_cheap
from dyconv.layers.options import DYNAMIC_CONVS, check_options, options_from
from dyconv.layers.paths import GROUPED_MAX_BYTES_UNTUNED, MIXTURE_MAX_PIXELS, PATHS, ConvPaths, choose_path
from dyconv.layers.routing import OmniAttention, make_routing, routing_class

if TYPE_CHECKING:
    from dyconv.layers.options import DynamicOptions

__all__ = [
    "DYNAMIC_CONVS",
    "GROUPED_MAX_BYTES_UNTUNED",
    "MIXTURE_MAX_PIXELS",
    "PATHS",
    "WORKSPACE_MIN_BYTES",
    "DynamicConv1d",
    "DynamicConv2d",
    "DynamicConv3d",
    "DynamicConvNd",
    "KernelWorkspace",
    "choose_path",
    "dynamic_class_for",
    "large_alloc_cheap",
]

_size_any = Union[int, Tuple[int, ...]]


class DynamicConvNd(ConvPaths):
    """A dynamic convolution over ``_ndim`` spatial dims; use :class:`DynamicConv1d`,
    :class:`DynamicConv2d` or :class:`DynamicConv3d` (``isinstance(m, DynamicConvNd)`` finds all).

    Positional and keyword arguments are exactly those of the matching ``nn.ConvNd`` (validated
    by ``nn.ConvNd`` itself, so invalid combinations raise the same errors). Keyword-only extras:

    Args:
        num_kernels: K, the number of kernels mixed per sample.
        reduction: attention hidden width is ``max(in_channels // reduction, min_hidden)``
            (ODConv: ``reduction=16, min_hidden=16``).
        min_hidden: lower bound of that hidden width.
        temperature: initial temperature (30 in the paper, annealed to 1 by
            :class:`dyconv.callbacks.TemperatureScheduler` or :func:`set_temperature`); divides
            the softmax logits (and, with ``omni``, every attention's logits).
        path: ``"auto"`` (default) or a fixed strategy from :data:`PATHS` (computations in
            :class:`~dyconv.layers.paths.ConvPaths`); a traced or exported graph always takes the
            batch-independent form, so that it runs at any batch.
        recompute_kernels: the ``grouped`` path recomputes the per-sample kernels in backward
            instead of saving them (B copies of the weight per layer, e.g. 290 MB for a 512-channel
            3x3 layer at batch 32): less activation memory for one extra matmul per backward.
        routing: ``"softmax"`` (the paper), ``"sigmoid"`` (CondConv: ``sigmoid`` of one linear
            layer on the pooled input, no hidden layer, no temperature) or ``"omni"`` (ODConv:
            linear, BatchNorm, ReLU, then heads for the K kernels (softmax), the input channels,
            the output channels (none for a depthwise conv) and the kernel positions (none for a
            pointwise conv), each a sigmoid; all divided by the temperature).

    Attributes:
        weight: ``(K, out_channels, in_channels // groups, *kernel_size)``.
        bias: ``(K, out_channels)`` or ``None``.
        temperature: 0-dim buffer (in ``state_dict``), changed in place so compiled graphs stay
            valid.
        routing: the parameter-free routing module (:mod:`dyconv.layers.routing`) whose output is
            exactly what forward uses (hook it to observe the attention); ``routing.kind`` names it.
        attn_fc1, attn_fc2: the attention's linear layers (``attn_fc2`` gives the K kernel logits;
            ``attn_fc1`` is ``nn.Identity`` for ``sigmoid``); ``omni`` adds ``attn_bn``,
            ``attn_in``, ``attn_out`` and ``attn_spatial`` (``None`` where a head is absent, and
            ``attn_fc2`` is ``None`` when K is 1).
    """

    _ndim: int = 2
    _conv_cls = nn.Conv2d

    __constants__ = ["_ndim", "num_kernels", "_has_hidden", "_routing_kind"]

    in_channels: int
    out_channels: int
    groups: int
    padding_mode: str
    num_kernels: int
    path: str
    recompute_kernels: bool
    _reversed_padding_repeated_twice: List[int]
    _conv_padding: List[int]
    _kernel: List[int]
    _conv_stride: List[int]
    _conv_dilation: List[int]
    _pre_pad: List[int]
    _pre_pad_mode: str
    _spatial_dims: List[int]
    _tap_offsets: List[List[int]]
    _unfold_pad: List[int]

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_any,
        stride: _size_any = 1,
        padding: Union[str, _size_any] = 0,
        dilation: _size_any = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
        *,
        num_kernels: int = 4,
        reduction: int = 4,
        min_hidden: int = 1,
        temperature: float = 30.0,
        path: str = "auto",
        recompute_kernels: bool = False,
        routing: str = "softmax",
    ) -> None:
        super().__init__()
        # nn.ConvNd on the meta device validates and normalises every argument for us.
        ref = self._conv_cls(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, padding_mode, device="meta"
        )
        check_options(num_kernels=num_kernels, reduction=reduction, min_hidden=min_hidden, temperature=temperature,
                      path=path, routing=routing)
        factory_kwargs = {"device": device, "dtype": dtype}
        self._set_geometry(ref)
        self.num_kernels = num_kernels
        self.reduction = reduction
        self.min_hidden = min_hidden
        self.hidden_channels = max(in_channels // reduction, min_hidden)
        self.path = path
        self.recompute_kernels = bool(recompute_kernels)
        self._routing_kind = routing

        self.weight = nn.Parameter(
            torch.empty((num_kernels, out_channels, in_channels // groups) + self.kernel_size, **factory_kwargs)
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(num_kernels, out_channels, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        # The attention's heads (routing_class(routing).build_heads sets those its kind has).
        self.attn_bn: Optional[nn.Module] = None
        self.attn_in: Optional[nn.Module] = None
        self.attn_out: Optional[nn.Module] = None
        self.attn_spatial: Optional[nn.Module] = None
        self._has_hidden = routing != "sigmoid"
        routing_class(routing).build_heads(self, factory_kwargs)
        #: Reused memory for per-sample kernels on the CPU (:class:`KernelWorkspace`; None: none).
        self.kernel_workspace: Optional[KernelWorkspace] = KernelWorkspace()
        temp_dtype = dtype if dtype is not None and torch.is_floating_point(torch.empty((), dtype=dtype)) else None
        self.register_buffer("temperature", torch.tensor(float(temperature), device=device, dtype=temp_dtype))
        # Parameter-free: the state_dict keys stay those of the layer itself.
        self.routing = make_routing(routing)
        if path == "mixture" and self.attn_spatial is not None:
            raise ValueError(
                "path='mixture' cannot apply ODConv's per-sample spatial attention (routing='omni' on a "
                f"{'x'.join(map(str, self.kernel_size))} kernel); use path='auto', 'grouped' or 'bmm'"
            )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise each kernel (and bias) independently, exactly as ``nn.ConvNd`` does; the
        attention as its paper does (``omni``: ODConv's Kaiming fan-out, zero biases)."""
        if self.weight.is_meta:
            return
        for w in self.weight.unbind(0):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel() // self.out_channels
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(self.bias, -bound, bound)
        routing_class(self._routing_kind).reset_heads(self)

    def attention_heads(self) -> List[nn.Module]:
        """The linear layers whose outputs are attention logits (the last of each branch)."""
        heads = [self.attn_fc2, self.attn_in, self.attn_out, self.attn_spatial]
        return [h for h in heads if h is not None]

    def temperature_heads(self) -> List[nn.Module]:
        """The heads whose logits the temperature divides."""
        return [] if self._routing_kind == "sigmoid" else self.attention_heads()

    def conv_kwargs(self) -> dict:
        """The ``nn.ConvNd`` arguments that rebuild this layer's geometry."""
        return dict(in_channels=self.in_channels, out_channels=self.out_channels, kernel_size=self.kernel_size,
                    stride=self.stride, padding=self.padding, dilation=self.dilation, groups=self.groups,
                    bias=self.bias is not None, padding_mode=self.padding_mode)

    def dynamic_kwargs(self) -> dict:
        """The keyword-only extras that rebuild this layer."""
        temperature = 30.0 if self.temperature.is_meta else float(self.temperature)
        return dict(num_kernels=self.num_kernels, reduction=self.reduction, min_hidden=self.min_hidden,
                    temperature=temperature, path=self.path, recompute_kernels=self.recompute_kernels,
                    routing=self._routing_kind)

    @classmethod
    def from_conv(
        cls,
        conv: nn.Module,
        options: "Optional[DynamicOptions]" = None,
        *,
        noise: float = 0.0,
        generator: Optional[torch.Generator] = None,
        **option_keywords: Any,
    ) -> "DynamicConvNd":
        """Build a dynamic layer that computes exactly what ``conv`` (an ``nn.ConvNd`` of this
        class's dimension) computes, whatever the input: its weight and bias go into every kernel.

        The options come as keywords (``num_kernels=3, routing="omni"``: every
        :class:`~dyconv.layers.DynamicOptions` field) or as one ``options`` object, not both;
        the default is ``DynamicOptions()``. K is an int here
        (:func:`~dyconv.layers.convert_to_dynamic` resolves per-layer specs).

        With ``softmax`` the copies are exact for any attention (the weights sum to 1) and
        identical kernels receive identical gradients, so the attention learns only once ``noise`` (relative to each
        kernel's standard deviation) breaks the symmetry.
        ``sigmoid`` and ``omni`` attentions scale the result, so their last attention layers
        start at zero (every sigmoid 1/2, the softmax 1/K) and the copies are scaled to
        compensate: exact at conversion too, and the attention learns from the first step.
        """
        options = options_from(options, option_keywords, f"{cls.__name__}.from_conv")
        if not isinstance(options.num_kernels, int):
            raise ValueError(
                f"from_conv needs one K, got the per-layer spec {options.num_kernels!r}; "
                "use convert_to_dynamic to resolve it by layer name"
            )
        if not isinstance(conv, nn.modules.conv._ConvNd) or conv.transposed or conv.weight.dim() != cls._ndim + 2:
            raise TypeError(
                f"{cls.__name__}.from_conv takes an nn.Conv{cls._ndim}d, got {type(conv).__name__}; "
                "use dynamic_class_for(conv).from_conv or convert_to_dynamic"
            )
        padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
        layer = cls(conv.in_channels, conv.out_channels, tuple(conv.kernel_size), tuple(conv.stride), padding,
                    tuple(conv.dilation), conv.groups, conv.bias is not None, conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype, **options.layer_kwargs(options.num_kernels))
        weight_scale, bias_scale = routing_class(layer._routing_kind).start_neutral(layer)
        with torch.no_grad():
            layer.weight.copy_(conv.weight.unsqueeze(0).expand_as(layer.weight) * weight_scale)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias.unsqueeze(0).expand_as(layer.bias) * bias_scale)
            if noise > 0:
                std = layer.weight.std().clamp_min(1e-12)
                w = layer.weight
                w.add_(torch.randn(w.shape, generator=generator, dtype=w.dtype).to(w.device) * (noise * std))
        layer.train(conv.training)
        return layer

    def extra_repr(self) -> str:
        nd = self._ndim
        parts = [f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}"]
        parts += [f"{k}={v}" for k, v, default in (("padding", self.padding, (0,) * nd),
                  ("dilation", self.dilation, (1,) * nd), ("groups", self.groups, 1)) if v != default]
        parts += ["bias=False"] if self.bias is None else []
        parts += [f"padding_mode={self.padding_mode}"] if self.padding_mode != "zeros" else []
        parts += [f"num_kernels={self.num_kernels}, reduction={self.reduction}"]
        parts += [f"min_hidden={self.min_hidden}"] if self.min_hidden != 1 else []
        parts += [f"temperature={float('nan') if self.temperature.is_meta else float(self.temperature):g}"]
        parts += [f"path={self.path!r}"] if self.path != "auto" else []
        parts += ["recompute_kernels=True"] if self.recompute_kernels else []
        parts += [f"routing={self._routing_kind!r}"] if self._routing_kind != "softmax" else []
        return ", ".join(parts)

    def _kernel_attention(self, x: Tensor, temperature: Optional[Tensor]) -> Tensor:
        """``softmax``/``sigmoid`` routing: per-sample weights over the K kernels, ``(B, K)``;
        ``temperature`` divides the logits (None: already folded into the heads)."""
        z = x.mean(dim=self._spatial_dims)
        if self._has_hidden:
            z = F.relu(self.attn_fc1(z))
        logits = self.attn_fc2(z)
        return self.routing(logits, temperature)

    def _omni_attention(self, x: Tensor, temperature: Optional[Tensor]) -> OmniAttention:
        """ODConv's attentions (TorchScript compiles it only for an omni layer: ``attn_bn`` set)."""
        b = x.shape[0]
        if self.attn_bn is None:
            raise TypeError("_omni_attention needs a routing='omni' layer")
        else:
            if self.attn_bn.training and b == 1:
                raise ValueError(
                    "routing='omni' normalises its attention with BatchNorm (as ODConv does), which needs more "
                    "than one sample per batch in training mode; train with batches of 2 or more "
                    "(data.drop_last=true drops a last batch of one) or call .eval() for inference"
                )
            h = F.relu(self.attn_bn(self.attn_fc1(x.mean(dim=self._spatial_dims))))
            kernel: Optional[Tensor] = None
            if self.attn_fc2 is not None:
                kernel = self.attn_fc2(h)
            out_channel: Optional[Tensor] = None
            if self.attn_out is not None:
                out_channel = self.attn_out(h)
            spatial: Optional[Tensor] = None
            if self.attn_spatial is not None:
                spatial = self.attn_spatial(h).reshape([b] + self._kernel)
            in_channel = self.attn_in(h)
            return self.routing(kernel, in_channel, out_channel, spatial, temperature)

    @torch.jit.unused
    def attention(self, x: Tensor) -> Union[Tensor, OmniAttention]:
        """What forward mixes with, the output of :attr:`routing`: the ``(B, K)`` kernel weights
        (``softmax``/``sigmoid``) or an :class:`~dyconv.layers.routing.OmniAttention` (``omni``)."""
        if self._routing_kind == "omni":
            return self._omni_attention(x, self.temperature)
        return self._kernel_attention(x, self.temperature)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, *spatial)`` or, as ``nn.ConvNd`` accepts, an unbatched ``(C, *spatial)``."""
        if x.dim() == self._ndim + 1:
            return self._forward_batched(x.unsqueeze(0)).squeeze(0)
        if x.dim() != self._ndim + 2:
            raise ValueError(
                "Expected " + str(self._ndim + 1) + "D (unbatched) or " + str(self._ndim + 2) + "D (batched) input "
                + "to DynamicConv" + str(self._ndim) + "d, but got input of size: " + str(list(x.shape))
            )
        return self._forward_batched(x)

    def _forward_batched(self, x: Tensor) -> Tensor:
        if not torch.jit.is_tracing() and x.shape[1] != self.in_channels:
            raise ValueError(
                "DynamicConv" + str(self._ndim) + "d(" + str(self.in_channels) + ", " + str(self.out_channels)
                + ", ...) expected input" + str(list(x.shape)) + " to have " + str(self.in_channels)
                + " channels, but got " + str(x.shape[1]) + " channels instead"
            )
        if self.attn_bn is not None:  # omni (TorchScript resolves this when compiling)
            a = self._omni_attention(x, self.temperature)
            return self._forward_mixed(x, a.kernel, a.in_channel, a.out_channel, a.spatial)
        else:
            return self._forward_mixed(x, self._kernel_attention(x, self.temperature), None, None, None)

    @torch.jit.unused
    def forward_with_attention(self, x: Tensor, attention: Union[Tensor, OmniAttention]) -> Tensor:
        """Convolve ``x`` with given attention: ``(B, K)`` kernel weights, or an
        :class:`~dyconv.layers.routing.OmniAttention` for an ``omni`` layer."""
        if isinstance(attention, OmniAttention):
            if self._routing_kind != "omni":
                raise TypeError("an OmniAttention needs a routing='omni' layer")
            a = attention
            return self._forward_mixed(x, a.kernel, a.in_channel, a.out_channel, a.spatial)
        if self._routing_kind == "omni":
            raise TypeError("an omni layer needs an OmniAttention (its attention(x)), not a tensor")
        return self._forward_mixed(x, attention, None, None, None)


class DynamicConv1d(DynamicConvNd):
    """Drop-in replacement for :class:`torch.nn.Conv1d` (audio, time series); see
    :class:`DynamicConvNd` for the extras. ``weight``: ``(K, out, in/groups, k)``."""

    _ndim = 1
    _conv_cls = nn.Conv1d


class DynamicConv2d(DynamicConvNd):
    """Drop-in replacement for :class:`torch.nn.Conv2d`; see :class:`DynamicConvNd` for the
    extras. ``weight``: ``(K, out, in/groups, kh, kw)``."""

    _ndim = 2
    _conv_cls = nn.Conv2d


class DynamicConv3d(DynamicConvNd):
    """Drop-in replacement for :class:`torch.nn.Conv3d` (video, volumes); see
    :class:`DynamicConvNd` for the extras. ``weight``: ``(K, out, in/groups, kd, kh, kw)``."""

    _ndim = 3
    _conv_cls = nn.Conv3d


#: Spatial dims -> dynamic layer class (the registry lives in options, which builds layers from it).
DYNAMIC_CONVS.update({1: DynamicConv1d, 2: DynamicConv2d, 3: DynamicConv3d})


def dynamic_class_for(conv: nn.Module) -> type:
    """The dynamic class replacing ``conv`` (an ``nn.Conv1d``/``2d``/``3d`` or a subclass)."""
    if not isinstance(conv, nn.modules.conv._ConvNd) or conv.transposed:
        raise TypeError(f"expected an nn.Conv1d, nn.Conv2d or nn.Conv3d, got {type(conv).__name__}")
    return DYNAMIC_CONVS[conv.weight.dim() - 2]


def __getattr__(name: str) -> Any:
    if name == "export_batch":  # 0.1.0: a module global export read back from the layers
        raise AttributeError(
            "dyconv.layers.dynamic_conv.export_batch was removed in 0.2.0: the layers know nothing of export; "
            "export_model(..., batch=B) or dyconv.export.prepare_for_export(model, batch=B) builds a fixed-batch graph"
        )
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
