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

import contextlib
import itertools
import math
import os
import threading
from typing import TYPE_CHECKING, Any, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyconv.layers.options import DYNAMIC_CONVS, options_from
from dyconv.layers.paths import GROUPED_MAX_BYTES_UNTUNED, MIXTURE_MAX_PIXELS, PATHS, choose_path
from dyconv.layers.routing import ROUTINGS, OmniAttention, make_routing

if TYPE_CHECKING:
    from dyconv.layers.options import DynamicOptions

__all__ = [
    "DYNAMIC_CONVS",
    "GROUPED_MAX_BYTES_UNTUNED",
    "MIXTURE_MAX_PIXELS",
    "PATHS",
    "DynamicConv1d",
    "DynamicConv2d",
    "DynamicConv3d",
    "DynamicConvNd",
    "KernelWorkspace",
    "choose_path",
    "dynamic_class_for",
    "export_batch",
    "large_alloc_cheap",
]

_size_any = Union[int, Tuple[int, ...]]




# Batch the graph being exported is specialised to. Set by export_batch().
_EXPORT_BATCH: Optional[int] = None


@contextlib.contextmanager
def export_batch(batch: Optional[int]) -> Iterator[None]:
    """While exporting, build dynamic layers' graphs for a fixed ``batch`` (1: one
    aggregated-kernel conv per layer; B > 1: per-sample kernels in one grouped conv), for any
    batch without a batch-1 branch (``0``), or (``None``, the default) for any batch with a
    batch-1 branch per layer, chosen at run time by an ``If`` on the batch size.
    :func:`dyconv.export.export_model` instead runs the whole model's batch-1 graph once per
    sample (one ``Scan``)."""
    global _EXPORT_BATCH
    previous, _EXPORT_BATCH = _EXPORT_BATCH, batch
    try:
        yield
    finally:
        _EXPORT_BATCH = previous


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



class DynamicConvNd(nn.Module):
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
        path: ``"auto"`` (default) or a fixed strategy from :data:`PATHS`.
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
        if not isinstance(num_kernels, int) or num_kernels < 1:
            raise ValueError(f"num_kernels must be a positive integer, got {num_kernels!r}")
        if not isinstance(reduction, int) or reduction < 1:
            raise ValueError(f"reduction must be a positive integer, got {reduction!r}")
        if not isinstance(min_hidden, int) or min_hidden < 1:
            raise ValueError(f"min_hidden must be a positive integer, got {min_hidden!r}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {path!r}")
        if routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {', '.join(ROUTINGS)}, got {routing!r}")
        factory_kwargs = {"device": device, "dtype": dtype}
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
        self._build_attention(routing, factory_kwargs)
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

    def _build_attention(self, routing: str, factory_kwargs: dict) -> None:
        cin, hidden, k = self.in_channels, self.hidden_channels, self.num_kernels
        self.attn_bn: Optional[nn.Module] = None
        self.attn_in: Optional[nn.Module] = None
        self.attn_out: Optional[nn.Module] = None
        self.attn_spatial: Optional[nn.Module] = None
        self._has_hidden = routing != "sigmoid"
        if routing == "sigmoid":
            self.attn_fc1: nn.Module = nn.Identity()
            self.attn_fc2: Optional[nn.Module] = nn.Linear(cin, k, **factory_kwargs)
            return
        if routing == "softmax":
            self.attn_fc1 = nn.Linear(cin, hidden, **factory_kwargs)
            self.attn_fc2 = nn.Linear(hidden, k, **factory_kwargs)
            return
        self.attn_fc1 = nn.Linear(cin, hidden, bias=False, **factory_kwargs)
        self.attn_bn = nn.BatchNorm1d(hidden, **factory_kwargs)
        self.attn_fc2 = nn.Linear(hidden, k, **factory_kwargs) if k > 1 else None
        self.attn_in = nn.Linear(hidden, cin, **factory_kwargs)
        depthwise = self.groups == cin and cin == self.out_channels
        self.attn_out = None if depthwise else nn.Linear(hidden, self.out_channels, **factory_kwargs)
        taps = math.prod(self.kernel_size)
        self.attn_spatial = None if taps == 1 else nn.Linear(hidden, taps, **factory_kwargs)

    # ------------------------------------------------------------------ construction helpers
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
        if self._routing_kind != "omni":
            for m in (self.attn_fc1, self.attn_fc2):
                if isinstance(m, nn.Linear):
                    m.reset_parameters()
            return
        for m in self.attention_heads() + [self.attn_fc1]:
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        self.attn_bn.reset_parameters()

    def attention_heads(self) -> List[nn.Module]:
        """The linear layers whose outputs are attention logits (the last of each branch)."""
        heads = [self.attn_fc2, self.attn_in, self.attn_out, self.attn_spatial]
        return [h for h in heads if h is not None]

    def temperature_heads(self) -> List[nn.Module]:
        """The heads whose logits the temperature divides (what export folds it into)."""
        return [] if self._routing_kind == "sigmoid" else self.attention_heads()

    def conv_kwargs(self) -> dict:
        """The ``nn.ConvNd`` arguments that rebuild this layer's geometry."""
        return dict(
            in_channels=self.in_channels,
            out_channels=self.out_channels,
            kernel_size=self.kernel_size,
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
            groups=self.groups,
            bias=self.bias is not None,
            padding_mode=self.padding_mode,
        )

    def dynamic_kwargs(self) -> dict:
        """The keyword-only extras that rebuild this layer."""
        return dict(
            num_kernels=self.num_kernels,
            reduction=self.reduction,
            min_hidden=self.min_hidden,
            temperature=30.0 if self.temperature.is_meta else float(self.temperature),
            path=self.path,
            recompute_kernels=self.recompute_kernels,
            routing=self._routing_kind,
        )

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
        layer = cls(
            conv.in_channels,
            conv.out_channels,
            tuple(conv.kernel_size),
            tuple(conv.stride),
            padding,
            tuple(conv.dilation),
            conv.groups,
            conv.bias is not None,
            conv.padding_mode,
            device=conv.weight.device,
            dtype=conv.weight.dtype,
            **options.layer_kwargs(options.num_kernels),
        )
        weight_scale, bias_scale = layer._start_neutral()
        with torch.no_grad():
            layer.weight.copy_(conv.weight.unsqueeze(0).expand_as(layer.weight) * weight_scale)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias.unsqueeze(0).expand_as(layer.bias) * bias_scale)
            if noise > 0:
                std = layer.weight.std().clamp_min(1e-12)
                layer.weight.add_(
                    torch.randn(layer.weight.shape, generator=generator, dtype=layer.weight.dtype).to(
                        layer.weight.device
                    )
                    * (noise * std)
                )
        layer.train(conv.training)
        return layer

    @torch.no_grad()
    def _start_neutral(self) -> Tuple[float, float]:
        """Zero the last attention layers of a routing whose weights do not sum to 1 and return
        the (kernel, bias) factors that make the kernels' copies exact at that attention."""
        kind = self._routing_kind
        if kind == "softmax":
            return 1.0, 1.0
        for head in self.attention_heads():
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        if kind == "sigmoid":  # sum_k 1/2 * (2/K) W = W
            scale = 2.0 / self.num_kernels
            return scale, scale
        bias_scale = 1.0 if self.attn_out is None else 2.0  # the output attention scales the bias
        sigmoids = sum(h is not None for h in (self.attn_in, self.attn_out, self.attn_spatial))
        return float(2**sigmoids), bias_scale

    def extra_repr(self) -> str:
        nd = self._ndim
        s = "{in_channels}, {out_channels}, kernel_size={kernel_size}, stride={stride}"
        if self.padding != (0,) * nd:
            s += ", padding={padding}"
        if self.dilation != (1,) * nd:
            s += ", dilation={dilation}"
        if self.groups != 1:
            s += ", groups={groups}"
        if self.bias is None:
            s += ", bias=False"
        if self.padding_mode != "zeros":
            s += ", padding_mode={padding_mode}"
        s += ", num_kernels={num_kernels}, reduction={reduction}"
        if self.min_hidden != 1:
            s += ", min_hidden={min_hidden}"
        s = s.format(**self.__dict__)
        temp = float(self.temperature) if not self.temperature.is_meta else float("nan")
        s += f", temperature={temp:g}"
        if self.path != "auto":
            s += f", path={self.path!r}"
        if self.recompute_kernels:
            s += ", recompute_kernels=True"
        if self._routing_kind != "softmax":
            s += f", routing={self._routing_kind!r}"
        return s

    # ------------------------------------------------------------------ attention
    def _logit_temperature(self) -> Optional[Tensor]:
        temperature: Optional[Tensor] = self.temperature
        if not torch.jit.is_scripting():  # dyconv.utils.fold folded it into the heads for export
            if getattr(self, "_export_unit_temperature", False):
                temperature = None
        return temperature

    def _kernel_attention(self, x: Tensor) -> Tensor:
        """``softmax``/``sigmoid`` routing: per-sample weights over the K kernels, ``(B, K)``."""
        z = x.mean(dim=self._spatial_dims)
        if self._has_hidden:
            z = F.relu(self.attn_fc1(z))
        logits = self.attn_fc2(z)
        return self.routing(logits, self._logit_temperature())

    def _omni_attention(self, x: Tensor) -> OmniAttention:
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
            return self.routing(kernel, in_channel, out_channel, spatial, self._logit_temperature())

    @torch.jit.unused
    def attention(self, x: Tensor) -> Union[Tensor, OmniAttention]:
        """What forward mixes with, the output of :attr:`routing`: the ``(B, K)`` kernel weights
        (``softmax``/``sigmoid``) or an :class:`~dyconv.layers.routing.OmniAttention` (``omni``)."""
        if self._routing_kind == "omni":
            return self._omni_attention(x)
        return self._kernel_attention(x)

    # ------------------------------------------------------------------ computation
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
            a = self._omni_attention(x)
            return self._forward_mixed(x, a.kernel, a.in_channel, a.out_channel, a.spatial)
        else:
            return self._forward_mixed(x, self._kernel_attention(x), None, None, None)

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
            x = x * a_in.to(x.dtype).reshape(a_in.shape + (1,) * self._ndim)
        path = self._resolve_path(x, a_sp is not None)
        if path == "static":
            y = self._forward_static(x, pi)
        elif path == "mixture":
            y = self._forward_mixture(x, pi)
        elif path == "bmm":
            y = self._forward_bmm(x, pi, a_sp)
        elif path == "any_batch":
            y = self._forward_any_batch(x, pi, a_sp)
        elif path == "export":
            y = self._forward_export(x, pi, a_sp)
        else:
            y = self._forward_grouped(x, pi, a_sp)
        if a_out is not None:
            y = y * a_out.to(y.dtype).reshape(a_out.shape + (1,) * self._ndim)
        if not torch.jit.is_scripting():
            # A BatchNorm shift dyconv.utils.fold could not put into the mixed bias.
            post: Optional[Tensor] = getattr(self, "_post_bias", None)
            if post is not None:
                y = y + post.to(y.dtype).reshape([1, -1] + [1] * self._ndim)
        return y

    def _resolve_path(self, x: Tensor, spatial_attention: bool) -> str:
        if self.num_kernels == 1 and not spatial_attention:
            return "static"
        if not torch.jit.is_scripting():
            # A traced graph (torch.jit.trace, torch.onnx.export(dynamo=False)) must run at any
            # batch: the batch-independent form, whatever the traced batch was.
            if torch.jit.is_tracing():
                return "any_batch"
            if torch.compiler.is_exporting():
                return "export"
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
        return _aggregate(pi, self.weight, a_sp)[1]

    def _mixed_bias(self, pi: Tensor) -> Optional[Tensor]:
        bias = self.bias
        if bias is None:
            return None
        return torch.mm(pi, bias).reshape(-1)

    def _forward_grouped(self, x: Tensor, pi: Tensor, a_sp: Optional[Tensor]) -> Tensor:
        if not torch.jit.is_scripting():
            workspace = self._workspace_for(x, pi)
            if workspace is not None or (self.recompute_kernels and torch.is_grad_enabled()):
                return _GroupedConv.apply(
                    self._pre(x), pi, self.weight, self.bias, a_sp, self._conv_stride, self._conv_padding,
                    self._conv_dilation, self.groups, workspace,
                )
        b = x.shape[0]
        cout = self.out_channels
        weight = self._mixed_kernels(pi, a_sp).reshape((b * cout,) + self.weight.shape[2:])
        mixed_bias = self._mixed_bias(pi)
        if b == 1:
            return self._conv(x, weight, mixed_bias, self.groups)
        x = x.reshape((1, b * self.in_channels) + x.shape[2:])
        y = self._conv(x, weight, mixed_bias, b * self.groups)
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

    # ------------------------------------------------------------------ exported graphs
    @torch.jit.unused
    def _forward_export(self, x: Tensor, pi: Tensor, a_sp: Optional[Tensor]) -> Tensor:
        """The exported computation: ``export_batch(1)`` or ``(B)`` fixes the batch; otherwise
        ``torch.cond`` (ONNX ``If``) on the batch size runs the batch-1 graph when it can and the
        batch-independent one otherwise (ONNX's Conv ``group`` is a fixed attribute, so per-sample
        kernels cannot be expressed for a symbolic batch)."""
        fixed = _EXPORT_BATCH
        operands = (x, pi) if a_sp is None else (x, pi, a_sp)
        if fixed == 1:
            return self._forward_single(*operands)
        if fixed == 0:
            return self._forward_any_batch(*operands)
        if fixed is not None:
            return self._forward_fixed_batch(fixed, *operands)
        return self._forward_any_batch(*operands)

    def _forward_any_batch(self, x: Tensor, pi: Tensor, a_sp: Optional[Tensor] = None) -> Tensor:
        """Batch-independent: pointwise convs (and convs with a spatial attention) by batched
        matmul with per-sample kernels, the rest as one conv with the K kernels whose outputs
        are mixed (K x the FLOPs)."""
        pointwise = True
        for k in self._kernel:
            if k != 1:
                pointwise = False
        if a_sp is not None or (pointwise and self.groups == 1 and (self.path == "auto" or self.path == "bmm")):
            return self._forward_bmm(x, pi, a_sp, export=True)
        return self._forward_mixture(x, pi)

    def _forward_single(self, x: Tensor, pi: Tensor, a_sp: Optional[Tensor] = None) -> Tensor:
        """Batch 1: one conv with the aggregated kernel and bias, about the static cost.

        Measured in onnxruntime (1 thread, batch 1): a computed kernel cannot be pre-packed, yet
        this beats K constant kernels mixed by ``pi`` for dense and pointwise convs at every map
        size (1x1 as a MatMul instead: no faster); depthwise convs on small maps are the exception
        (:meth:`_export_mixture_single`)."""
        k = self.num_kernels
        # export_batch(1) promises a static batch of 1 (dyconv.export's Scan feeds one sample
        # at a time): pi itself is the (1, K) row, one op less than pi[0]. Inside a per-layer
        # torch.cond the batch is still symbolic, and the kernel must not be.
        single = _EXPORT_BATCH == 1
        row = pi if single else pi[0]
        mixed_bias = self._export_bias(row)
        if a_sp is None and self._export_mixture_single(x):
            return self._forward_single_mixture(x, pi, mixed_bias)
        weight = torch.matmul(row, self.weight.reshape(k, -1)).reshape(self.weight.shape[1:])
        if a_sp is not None:
            weight = weight * (a_sp if single else a_sp[0]).to(weight.dtype).reshape(self.kernel_size)
        return self._conv(x, weight, mixed_bias, self.groups)

    def _export_mixture_single(self, x: Tensor) -> bool:
        """Batch-1 rule for 2-D depthwise convs: K constant-kernel convs (pre-packed, blocked
        layout in onnxruntime) mixed by ``pi`` where they beat one conv with the computed kernel,
        which onnxruntime runs channel by channel: every strided depthwise conv, and stride-1
        ones with an output of at most 14x14. Measured in onnxruntime (1 thread): isolated
        layers, K convs against aggregated, 480 channels at 7x7 0.05 against 0.11 ms, 96 at 56x56
        stride 2 0.19 against 0.25 ms, but 96 at 56x56 stride 1 0.48 against 0.40 ms; whole
        ``dy_mobilenetv2`` x0.5, strided convs at every map size 2-3% faster than only up to
        28x28 outputs, stride-1 maps up to 28x28 2% slower than up to 14x14. Only where
        :func:`dyconv.export.export_model` marks the layer for ONNX (``_export_onnx``): eager
        kernels (``torch.export`` programs) run a computed depthwise kernel fast. Not measured
        in 1-D/3-D, which keep aggregating."""
        if not getattr(self, "_export_onnx", False) or self._ndim != 2:
            return False
        if self.groups == 1 or self.in_channels != self.groups or self.out_channels != self.groups:
            return False
        if not all(isinstance(n, int) for n in x.shape[2:]):
            return False
        return any(s > 1 for s in self.stride) or self._out_positions(x) <= 14 * 14

    def _forward_single_mixture(self, x: Tensor, pi: Tensor, mixed_bias: Optional[Tensor]) -> Tensor:
        """``sum_k pi_k (W_k * x) + b``, each term a conv with a constant kernel. Stride 1 scales
        the inputs (onnxruntime then accumulates each conv into the next), a strided conv its
        smaller outputs."""
        weights = self.weight.unbind(0)
        scales = pi.reshape([-1, self.num_kernels] + [1] * self._ndim).split(1, dim=1)
        if all(s == 1 for s in self.stride):
            y = self._conv(x * scales[0], weights[0], mixed_bias, self.groups)
            for w_k, s_k in zip(weights[1:], scales[1:]):
                y = y + self._conv(x * s_k, w_k, None, self.groups)
            return y
        y = self._conv(x, weights[0], None, self.groups) * scales[0]
        for w_k, s_k in zip(weights[1:], scales[1:]):
            y = y + self._conv(x, w_k, None, self.groups) * s_k
        if mixed_bias is not None:
            y = y + mixed_bias.reshape([1, -1] + [1] * self._ndim)
        return y

    def _export_bias(self, pi: Tensor) -> Optional[Tensor]:
        """The mixed bias ``(B * Cout,)`` for attention ``pi`` (``(K,)`` or ``(B, K)``); a constant
        when the K biases are equal (``dyconv.utils.fold`` folding BatchNorm into a bias-free conv)."""
        shared: Optional[Tensor] = getattr(self, "_shared_bias", None)
        if shared is not None:
            single = pi.dim() == 1 or (isinstance(pi.shape[0], int) and pi.shape[0] == 1)
            return shared if single else shared.repeat(pi.shape[0])
        bias = self.bias
        if bias is None:
            return None
        return torch.matmul(pi, bias).reshape(-1)

    def _forward_fixed_batch(self, batch: int, x: Tensor, pi: Tensor, a_sp: Optional[Tensor] = None) -> Tensor:
        """A graph for exactly ``batch`` samples: per-sample kernels in one grouped conv."""
        cout = self.out_channels
        weight = self._mixed_kernels(pi, a_sp).reshape((batch * cout,) + self.weight.shape[2:])
        mixed_bias = self._export_bias(pi)
        y = self._conv(x.reshape((1, batch * self.in_channels) + x.shape[2:]), weight, mixed_bias, batch * self.groups)
        return y.reshape((batch, cout) + y.shape[2:])

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
        bias = self.bias
        if bias is not None:
            out = out + torch.mm(pi, bias).to(out.dtype).reshape([b, cout] + [1] * self._ndim)
        return out

    def _forward_bmm(self, x: Tensor, pi: Tensor, a_sp: Optional[Tensor], export: bool = False) -> Tensor:
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
            cols = self._unfold(x, export)
        y = torch.matmul(weight, cols.reshape(b, g, -1, cols.shape[-1])).reshape(b, cout, -1)
        bias = self.bias
        if bias is not None:
            y = y + torch.mm(pi, bias).to(y.dtype).unsqueeze(-1)
        return y.reshape([b, cout] + list(spatial))

    def _unfold(self, x: Tensor, export: bool = False) -> Tensor:
        """``(B, C*taps, L)`` patches of a pre-padded input, channel-major as the kernel's
        layout: ``F.unfold`` in 2-D; otherwise (and for export) one strided slice per tap."""
        if self._ndim == 2 and not export:
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


def _aggregate(pi: Tensor, weight: Tensor, a_sp: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
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
        return _aggregate(pi, weight, a_sp)[1]
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


class _GroupedConv(torch.autograd.Function):
    """The ``grouped`` path as one autograd node that saves ``x``, ``pi`` (and the spatial
    attention) and the K kernels instead of the B per-sample kernels; backward recomputes them
    (one matmul) and uses ``aten.convolution_backward``. With a :class:`KernelWorkspace` the
    kernels are built in its reused memory, in forward and in backward. ``x`` arrives pre-padded."""

    @staticmethod
    def forward(ctx, x, pi, weight, bias, a_sp, stride, padding, dilation, groups, workspace):  # type: ignore[override]
        b, cout = x.shape[0], weight.shape[1]
        kernels = _mix_into(pi, weight, a_sp, workspace).reshape((b * cout,) + weight.shape[2:])
        mixed_bias = None if bias is None else torch.mm(pi, bias).reshape(b * cout)
        conv = (F.conv1d, F.conv2d, F.conv3d)[len(stride) - 1]
        x_groups = x.reshape((1, b * x.shape[1]) + x.shape[2:])
        y = conv(x_groups, kernels, mixed_bias, stride, padding, dilation, b * groups)
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
