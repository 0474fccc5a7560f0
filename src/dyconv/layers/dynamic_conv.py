"""Dynamic convolution: attention over K convolution kernels.

Chen, Dai, Liu, Chen, Yuan, Liu, "Dynamic Convolution: Attention over Convolution Kernels",
CVPR 2020 (arXiv:1912.03458).

For each sample ``x`` the layer computes softmax attention weights ``pi(x)`` over K kernels
(squeeze-and-excitation style, on the layer's input, divided by a temperature) and convolves
``x`` with ``W(x) = sum_k pi_k(x) W_k`` plus ``b(x) = sum_k pi_k(x) b_k``. Convolution is
linear in the kernel, so the layer may equally compute ``sum_k pi_k(x) (W_k * x)``; it picks
whichever formulation is cheapest for the shape at hand (see :func:`choose_path`).
"""

import contextlib
import math
from typing import TYPE_CHECKING, Iterator, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from dyconv.layers.routing import SoftmaxRouting
from dyconv.runtime import large_alloc_cheap

if TYPE_CHECKING:
    from dyconv.layers.options import DynamicOptions

__all__ = [
    "GROUPED_MAX_BYTES_UNTUNED",
    "MIXTURE_MAX_PIXELS",
    "PATHS",
    "DynamicConv2d",
    "choose_path",
    "export_batch",
]

#: Computation strategies. ``auto`` picks one per call with :func:`choose_path`.
PATHS = ("auto", "grouped", "mixture", "bmm")

_size_2 = Union[int, Tuple[int, int]]


#: Output maps smaller than this many pixels use ``mixture`` for dense convs (measured).
MIXTURE_MAX_PIXELS = 32
#: Per-sample kernels larger than this are slow to allocate under glibc's default malloc.
GROUPED_MAX_BYTES_UNTUNED = 128 * 2**20


# Batch the graph being exported is specialised to. Set by export_batch().
_EXPORT_BATCH: Optional[int] = None


@contextlib.contextmanager
def export_batch(batch: Optional[int]) -> Iterator[None]:
    """While exporting, build dynamic layers' graphs for a fixed ``batch`` (1: one
    aggregated-kernel conv per layer; B > 1: per-sample kernels in one grouped conv), for any
    batch without a batch-1 branch (``0``), or (``None``, the default) for any batch with a
    batch-1 branch per layer, chosen at run time by an ``If`` on the batch size.
    :func:`dyconv.export.export_model` puts one such ``If`` around the whole model instead."""
    global _EXPORT_BATCH
    previous, _EXPORT_BATCH = _EXPORT_BATCH, batch
    try:
        yield
    finally:
        _EXPORT_BATCH = previous


def choose_path(
    batch: int,
    in_channels: int,
    out_channels: int,
    groups: int,
    kernel_size: Tuple[int, int],
    out_hw: int,
    cheap_alloc: bool = True,
    mixture_max_pixels: int = MIXTURE_MAX_PIXELS,
    grouped_max_bytes_untuned: int = GROUPED_MAX_BYTES_UNTUNED,
) -> str:
    """Pick the cheapest exact formulation for one call; the rule the ``auto`` path follows.

    - ``grouped``: aggregate one kernel per sample (``B*K*Cout*Cin/g*kh*kw`` MACs) and run ONE
      convolution over the batch folded into groups. Cost ~ static conv + aggregation; the best
      choice on maps of 7x7 and larger and for depthwise/grouped convs. At batch 1 it is one
      ordinary conv with the aggregated kernel.
    - ``mixture``: the K kernels as one dense conv with ``K*Cout`` outputs, outputs mixed by
      ``pi``: K times the static FLOPs but no per-sample kernels. Wins for dense convs on maps
      under ``MIXTURE_MAX_PIXELS`` pixels (4x4, 2x2), where ``B`` copies of a large kernel cost
      more than the convolution itself.
    - ``bmm``: per-sample kernels applied by batched matmul, per group (pointwise convs directly,
      others via ``unfold``): the best choice for dense 1x1 convs (MobileNet expand/project).

    ``cheap_alloc`` is False on a CPU process whose malloc returns big blocks to the OS (see
    :mod:`dyconv.runtime`); then per-sample kernels over ``GROUPED_MAX_BYTES_UNTUNED`` bytes
    make ``grouped`` page-fault-bound and ``mixture`` is faster.
    Measured with ``scripts/benchmark_layer.py`` (README table).
    """
    if batch == 1:
        return "grouped"
    kh, kw = kernel_size
    if groups == 1:
        if kh == 1 and kw == 1:
            return "bmm"
        if out_hw < mixture_max_pixels:
            return "mixture"
        if not cheap_alloc and 4 * batch * out_channels * in_channels * kh * kw > grouped_max_bytes_untuned:
            return "mixture"
    return "grouped"


class DynamicConv2d(nn.Module):
    """Drop-in replacement for :class:`torch.nn.Conv2d` with K attention-mixed kernels.

    Positional and keyword arguments are exactly ``nn.Conv2d``'s (validated by ``nn.Conv2d``
    itself, so invalid combinations raise the same errors). Keyword-only extras:

    Args:
        num_kernels: K, the number of kernels mixed per sample.
        reduction: attention hidden width is ``max(in_channels // reduction, min_hidden)``.
        min_hidden: lower bound of that hidden width.
        temperature: initial softmax temperature (30 in the paper, annealed to 1 by
            :class:`dyconv.callbacks.TemperatureScheduler` or :func:`set_temperature`).
        path: ``"auto"`` (default) or a fixed strategy from :data:`PATHS`.
        recompute_kernels: the ``grouped`` path recomputes the per-sample kernels in backward
            instead of saving them (B copies of the weight per layer, e.g. 290 MB for a 512-channel
            3x3 layer at batch 32): less activation memory for one extra matmul per backward.

    Attributes:
        weight: ``(K, out_channels, in_channels // groups, kh, kw)``.
        bias: ``(K, out_channels)`` or ``None``.
        temperature: 0-dim buffer (in ``state_dict``), changed in place so compiled graphs stay
            valid.
        routing: :class:`~dyconv.layers.routing.SoftmaxRouting`, logits to ``pi`` (no
            parameters); its output is exactly what forward uses.
    """

    __constants__ = [
        "in_channels",
        "out_channels",
        "kernel_size",
        "stride",
        "dilation",
        "groups",
        "padding_mode",
        "num_kernels",
        "reduction",
        "min_hidden",
        "hidden_channels",
        "path",
        "recompute_kernels",
    ]

    in_channels: int
    out_channels: int
    kernel_size: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Union[str, Tuple[int, int]]
    dilation: Tuple[int, int]
    groups: int
    padding_mode: str
    num_kernels: int
    path: str
    recompute_kernels: bool
    _reversed_padding_repeated_twice: List[int]
    _explicit_padding: Tuple[int, int]
    _padding_str: str

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: _size_2,
        stride: _size_2 = 1,
        padding: Union[str, _size_2] = 0,
        dilation: _size_2 = 1,
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
    ) -> None:
        super().__init__()
        # nn.Conv2d on the meta device validates and normalises every argument for us.
        ref = nn.Conv2d(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            dilation,
            groups,
            bias,
            padding_mode,
            device="meta",
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
        factory_kwargs = {"device": device, "dtype": dtype}

        self.in_channels = ref.in_channels
        self.out_channels = ref.out_channels
        self.kernel_size = (ref.kernel_size[0], ref.kernel_size[1])
        self.stride = (ref.stride[0], ref.stride[1])
        self.padding = ref.padding if isinstance(ref.padding, str) else (ref.padding[0], ref.padding[1])
        self.dilation = (ref.dilation[0], ref.dilation[1])
        self.groups = ref.groups
        self.padding_mode = ref.padding_mode
        self._reversed_padding_repeated_twice = [int(p) for p in ref._reversed_padding_repeated_twice]
        # Padding applied inside the conv call by the paths that need integers (unfold/bmm).
        self._explicit_padding = (0, 0) if isinstance(ref.padding, str) else self.padding
        self._padding_str = ref.padding if isinstance(ref.padding, str) else ""
        self.num_kernels = num_kernels
        self.reduction = reduction
        self.min_hidden = min_hidden
        self.hidden_channels = max(in_channels // reduction, min_hidden)
        self.path = path
        self.recompute_kernels = bool(recompute_kernels)

        kh, kw = self.kernel_size
        self.weight = nn.Parameter(
            torch.empty(num_kernels, out_channels, in_channels // groups, kh, kw, **factory_kwargs)
        )
        if bias:
            self.bias = nn.Parameter(torch.empty(num_kernels, out_channels, **factory_kwargs))
        else:
            self.register_parameter("bias", None)
        self.attn_fc1 = nn.Linear(in_channels, self.hidden_channels, **factory_kwargs)
        self.attn_fc2 = nn.Linear(self.hidden_channels, num_kernels, **factory_kwargs)
        temp_dtype = dtype if dtype is not None and torch.is_floating_point(torch.empty((), dtype=dtype)) else None
        self.register_buffer("temperature", torch.tensor(float(temperature), device=device, dtype=temp_dtype))
        # Parameter-free: the state_dict keys stay those of the layer itself.
        self.routing = SoftmaxRouting()
        self.reset_parameters()

    # ------------------------------------------------------------------ construction helpers
    def reset_parameters(self) -> None:
        """Initialise each kernel (and bias) independently, exactly as ``nn.Conv2d`` does."""
        if self.weight.is_meta:
            return
        for w in self.weight.unbind(0):
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
        if self.bias is not None:
            fan_in = self.weight[0].numel() // self.out_channels
            if fan_in != 0:
                bound = 1 / math.sqrt(fan_in)
                nn.init.uniform_(self.bias, -bound, bound)
        self.attn_fc1.reset_parameters()
        self.attn_fc2.reset_parameters()

    def conv_kwargs(self) -> dict:
        """The ``nn.Conv2d`` arguments that rebuild this layer's geometry."""
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
        )

    @classmethod
    def from_conv(
        cls,
        conv: nn.Conv2d,
        options: "Optional[DynamicOptions]" = None,
        *,
        noise: float = 0.0,
        generator: Optional[torch.Generator] = None,
    ) -> "DynamicConv2d":
        """Build a dynamic layer that computes exactly what ``conv`` computes, whatever the
        attention: its weight and bias are copied into every kernel.

        ``options`` (:class:`~dyconv.layers.DynamicOptions`, default ``DynamicOptions()``) give
        K (an int here: :func:`~dyconv.layers.convert_to_dynamic` resolves per-layer specs) and
        every other option, ``recompute_kernels`` included.
        Identical kernels receive identical gradients, so the attention gets none; ``noise``
        (relative to each kernel's standard deviation) perturbs the copies to break symmetry.
        """
        from dyconv.layers.options import DynamicOptions

        options = DynamicOptions() if options is None else options
        if not isinstance(options.num_kernels, int):
            raise ValueError(
                f"from_conv needs one K, got the per-layer spec {options.num_kernels!r}; "
                "use convert_to_dynamic to resolve it by layer name"
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
        with torch.no_grad():
            layer.weight.copy_(conv.weight.unsqueeze(0).expand_as(layer.weight))
            if conv.bias is not None:
                layer.bias.copy_(conv.bias.unsqueeze(0).expand_as(layer.bias))
            if noise > 0:
                std = conv.weight.std().clamp_min(1e-12)
                layer.weight.add_(
                    torch.randn(layer.weight.shape, generator=generator, dtype=layer.weight.dtype).to(
                        layer.weight.device
                    )
                    * (noise * std)
                )
        layer.train(conv.training)
        return layer

    def extra_repr(self) -> str:
        s = "{in_channels}, {out_channels}, kernel_size={kernel_size}, stride={stride}"
        if self.padding != (0, 0):
            s += ", padding={padding}"
        if self.dilation != (1, 1):
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
        return s

    # ------------------------------------------------------------------ computation
    def attention(self, x: Tensor) -> Tensor:
        """Per-sample weights over the K kernels, shape ``(B, K)``: the output of
        :attr:`routing` (hook it to observe exactly what forward mixes the kernels with)."""
        z = self.attn_fc2(F.relu(self.attn_fc1(x.mean(dim=(2, 3)))))
        temperature: Optional[Tensor] = self.temperature
        if not torch.jit.is_scripting():  # dyconv.utils.fold folded it into attn_fc2 for export
            if getattr(self, "_export_unit_temperature", False):
                temperature = None
        return self.routing(z, temperature)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ValueError("DynamicConv2d expects a 4-D (N, C, H, W) input, got " + str(x.dim()) + "-D")
        pi = self.attention(x)
        return self.forward_with_attention(x, pi)

    def forward_with_attention(self, x: Tensor, pi: Tensor) -> Tensor:
        """Convolve ``x`` with kernels mixed by given attention weights ``pi`` of shape (B, K)."""
        path = self._resolve_path(x)
        if path == "mixture":
            return self._forward_mixture(x, pi)
        if path == "bmm":
            return self._forward_bmm(x, pi)
        if path == "static":
            return self._forward_static(x, pi)
        if path == "export":
            return self._forward_export(x, pi)
        return self._forward_grouped(x, pi)

    def _resolve_path(self, x: Tensor) -> str:
        if self.num_kernels == 1:
            return "static"
        if not torch.jit.is_scripting():
            if torch.compiler.is_exporting() or torch.onnx.is_in_onnx_export():
                return "export"
        if self.path != "auto":
            return self.path
        if self._padding_str == "same":
            h, w = x.shape[-2], x.shape[-1]
        else:
            h, w = self._out_size(x.shape[-2], x.shape[-1], self._explicit_padding)
        cheap_alloc = True
        if not torch.jit.is_scripting():
            cheap_alloc = x.device.type != "cpu" or large_alloc_cheap()
        return choose_path(
            x.shape[0],
            self.in_channels,
            self.out_channels,
            self.groups,
            self.kernel_size,
            h * w,
            cheap_alloc,
        )

    def _conv(self, x: Tensor, weight: Tensor, bias: Optional[Tensor], groups: int) -> Tensor:
        """``F.conv2d`` with this layer's geometry, as ``nn.Conv2d._conv_forward``."""
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, (0, 0), self.dilation, groups)
        if self._padding_str != "":
            return F.conv2d(x, weight, bias, self.stride, self._padding_str, self.dilation, groups)
        return F.conv2d(x, weight, bias, self.stride, self._explicit_padding, self.dilation, groups)

    def _forward_static(self, x: Tensor, pi: Tensor) -> Tensor:
        # K == 1: pi is exactly 1.0, so this is nn.Conv2d bit for bit (the product keeps the
        # attention in the graph, e.g. for DDP's unused-parameter check).
        bias = self.bias
        y = self._conv(x, self.weight[0], None if bias is None else bias[0], self.groups)
        return y * pi.to(y.dtype).reshape(-1, 1, 1, 1)

    def _forward_grouped(self, x: Tensor, pi: Tensor) -> Tensor:
        if not torch.jit.is_scripting():
            if self.recompute_kernels and torch.is_grad_enabled():
                x, padding = self._pad_explicitly(x)
                return _GroupedConvRecomputed.apply(
                    x, pi, self.weight, self.bias, self.stride, padding, self.dilation, self.groups
                )
        b = x.shape[0]
        k, cout = self.num_kernels, self.out_channels
        weight = torch.mm(pi, self.weight.reshape(k, -1))
        weight = weight.reshape((b * cout,) + self.weight.shape[2:])
        bias = self.bias
        mixed_bias: Optional[Tensor] = None
        if bias is not None:
            mixed_bias = torch.mm(pi, bias).reshape(b * cout)
        if b == 1:
            return self._conv(x, weight, mixed_bias, self.groups)
        x = x.reshape((1, b * self.in_channels) + x.shape[2:])
        y = self._conv(x, weight, mixed_bias, b * self.groups)
        return y.reshape((b, cout) + y.shape[2:])

    # ------------------------------------------------------------------ exported graphs
    @torch.jit.unused
    def _forward_export(self, x: Tensor, pi: Tensor) -> Tensor:
        """The exported computation: ``export_batch(1)`` or ``(B)`` fixes the batch; otherwise
        ``torch.cond`` (ONNX ``If``) on the batch size runs the batch-1 graph when it can and the
        batch-independent one otherwise (ONNX's Conv ``group`` is a fixed attribute, so per-sample
        kernels cannot be expressed for a symbolic batch)."""
        fixed = _EXPORT_BATCH
        if fixed == 1:
            return self._forward_single(x, pi)
        if fixed == 0:
            return self._forward_any_batch(x, pi)
        if fixed is not None:
            return self._forward_fixed_batch(x, pi, fixed)
        return torch.cond(x.shape[0] == 1, self._forward_single, self._forward_any_batch, (x, pi))

    def _forward_any_batch(self, x: Tensor, pi: Tensor) -> Tensor:
        """Batch-independent: pointwise convs by batched matmul with per-sample kernels, the
        rest as one conv with the K kernels whose outputs are mixed (K x the FLOPs)."""
        kh, kw = self.kernel_size
        if kh == 1 and kw == 1 and self.groups == 1 and self.path in ("auto", "bmm"):
            return self._forward_bmm(x, pi)
        return self._forward_mixture(x, pi)

    def _forward_single(self, x: Tensor, pi: Tensor) -> Tensor:
        """Batch 1: one conv with the aggregated kernel and bias, about the static cost.

        Measured in onnxruntime (1 thread, batch 1): a computed kernel cannot be pre-packed, yet
        this beats K constant kernels mixed by ``pi`` for dense and pointwise convs at every map
        size (1x1 as a MatMul instead: no faster); depthwise convs on small maps are the exception
        (:meth:`_export_mixture_single`)."""
        k = self.num_kernels
        # export_batch(1) promises a static batch of 1 (dyconv.export's batch-1 branch slices
        # x[:1]): pi itself is the (1, K) row, one op less than pi[0]. Inside a per-layer
        # torch.cond the batch is still symbolic, and the kernel must not be.
        row = pi if _EXPORT_BATCH == 1 else pi[0]
        mixed_bias = self._export_bias(row)
        if self._export_mixture_single(x):
            return self._forward_single_mixture(x, pi, mixed_bias)
        weight = torch.matmul(row, self.weight.reshape(k, -1)).reshape(self.weight.shape[1:])
        return self._conv(x, weight, mixed_bias, self.groups)

    def _export_mixture_single(self, x: Tensor) -> bool:
        """Batch-1 rule for depthwise convs on small maps: K constant-kernel convs (pre-packed,
        blocked layout in onnxruntime) mixed by ``pi`` beat one conv with the computed kernel
        (onnxruntime, 1 thread, K convs against aggregated: 480 channels at 7x7 0.05 ms against
        0.11 ms; 96 channels at 56x56 0.50 ms against 0.43 ms, so larger maps keep aggregating).
        Only where :func:`dyconv.export.export_model` marks the layer for ONNX (``_export_onnx``):
        eager kernels (``torch.export`` programs) run a computed depthwise kernel fast."""
        if not getattr(self, "_export_onnx", False):
            return False
        if self.groups == 1 or self.in_channels != self.groups or self.out_channels != self.groups:
            return False
        h, w = x.shape[-2], x.shape[-1]
        if not isinstance(h, int) or not isinstance(w, int):
            return False
        if self._padding_str == "same":
            oh, ow = h, w
        else:
            oh, ow = self._out_size(h, w, self._explicit_padding)
        strided = self.stride[0] > 1 or self.stride[1] > 1
        return oh * ow <= (28 * 28 if strided else 14 * 14)

    def _forward_single_mixture(self, x: Tensor, pi: Tensor, mixed_bias: Optional[Tensor]) -> Tensor:
        """``sum_k pi_k (W_k * x) + b``, each term a conv with a constant kernel. Stride 1 scales
        the inputs (onnxruntime then accumulates each conv into the next), a strided conv its
        smaller outputs."""
        weights = self.weight.unbind(0)
        scales = pi.reshape(-1, self.num_kernels, 1, 1).split(1, dim=1)
        if self.stride[0] == 1 and self.stride[1] == 1:
            y = self._conv(x * scales[0], weights[0], mixed_bias, self.groups)
            for w_k, s_k in zip(weights[1:], scales[1:]):
                y = y + self._conv(x * s_k, w_k, None, self.groups)
            return y
        y = self._conv(x, weights[0], None, self.groups) * scales[0]
        for w_k, s_k in zip(weights[1:], scales[1:]):
            y = y + self._conv(x, w_k, None, self.groups) * s_k
        if mixed_bias is not None:
            y = y + mixed_bias.reshape(1, -1, 1, 1)
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

    def _forward_fixed_batch(self, x: Tensor, pi: Tensor, batch: int) -> Tensor:
        """A graph for exactly ``batch`` samples: per-sample kernels in one grouped conv."""
        k, cout = self.num_kernels, self.out_channels
        weight = torch.mm(pi, self.weight.reshape(k, -1)).reshape((batch * cout,) + self.weight.shape[2:])
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
        h, w = y.shape[-2], y.shape[-1]
        y = y.reshape(b, g, k, (cout // g) * h * w)
        out = torch.einsum("bk,bgkn->bgn", pi.to(y.dtype), y).reshape(b, cout, h, w)
        bias = self.bias
        if bias is not None:
            out = out + torch.mm(pi, bias).to(out.dtype).reshape(b, cout, 1, 1)
        return out

    def _forward_bmm(self, x: Tensor, pi: Tensor) -> Tensor:
        b = x.shape[0]
        k, cout, g = self.num_kernels, self.out_channels, self.groups
        kh, kw = self.kernel_size
        # Per-sample kernels as (B, groups, Cout/g, Cin/g*kh*kw): one batched matmul per group.
        weight = torch.mm(pi, self.weight.reshape(k, -1)).reshape(b, g, cout // g, -1)
        x, padding = self._pad_explicitly(x)
        if kh == 1 and kw == 1 and padding[0] == 0 and padding[1] == 0:
            sh, sw = self.stride
            if sh != 1 or sw != 1:
                x = x[:, :, ::sh, ::sw]
            h, w = x.shape[-2], x.shape[-1]
            cols = x.flatten(2)
        else:
            h, w = self._out_size(x.shape[-2], x.shape[-1], padding)
            cols = F.unfold(x, self.kernel_size, self.dilation, padding, self.stride)
        y = torch.matmul(weight, cols.reshape(b, g, -1, cols.shape[-1])).reshape(b, cout, -1)
        bias = self.bias
        if bias is not None:
            y = y + torch.mm(pi, bias).to(y.dtype).unsqueeze(-1)
        return y.reshape(b, cout, h, w)

    def _pad_explicitly(self, x: Tensor) -> Tuple[Tensor, Tuple[int, int]]:
        """(input, integer padding) for the paths that cannot take a padding mode or "same"."""
        if self.padding_mode != "zeros" or self._padding_str == "same":
            x = F.pad(
                x,
                self._reversed_padding_repeated_twice,
                mode="constant" if self.padding_mode == "zeros" else self.padding_mode,
            )
            return x, (0, 0)
        return x, self._explicit_padding

    def _out_size(self, h: int, w: int, padding: Tuple[int, int]) -> Tuple[int, int]:
        kh, kw = self.kernel_size
        sh, sw = self.stride
        dh, dw = self.dilation
        return (
            (h + 2 * padding[0] - dh * (kh - 1) - 1) // sh + 1,
            (w + 2 * padding[1] - dw * (kw - 1) - 1) // sw + 1,
        )


class _GroupedConvRecomputed(torch.autograd.Function):
    """The ``grouped`` path, saving ``x``, ``pi`` and the K kernels instead of the B per-sample
    kernels; backward recomputes them (one matmul) and uses ``aten.convolution_backward``."""

    @staticmethod
    def forward(ctx, x, pi, weight, bias, stride, padding, dilation, groups):  # type: ignore[override]
        b, k, cout = x.shape[0], weight.shape[0], weight.shape[1]
        kernels = torch.mm(pi, weight.reshape(k, -1)).reshape((b * cout,) + weight.shape[2:])
        mixed_bias = None if bias is None else torch.mm(pi, bias).reshape(b * cout)
        y = F.conv2d(x.reshape((1, b * x.shape[1]) + x.shape[2:]), kernels, mixed_bias, stride, padding, dilation,
                     b * groups)
        ctx.save_for_backward(x, pi, weight, bias)
        ctx.conv = (stride, padding, dilation, groups)
        device = x.device.type
        ctx.autocast = (torch.is_autocast_enabled(device), torch.get_autocast_dtype(device))
        return y.reshape((b, cout) + y.shape[2:])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_y):  # type: ignore[override]
        x, pi, weight, bias = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conv
        enabled, autocast_dtype = ctx.autocast
        b, k, cout = x.shape[0], weight.shape[0], weight.shape[1]
        with torch.autocast(x.device.type, dtype=autocast_dtype, enabled=enabled):
            kernels = torch.mm(pi, weight.reshape(k, -1)).reshape((b * cout,) + weight.shape[2:])
        dtype = kernels.dtype
        grad_x, grad_kernels, _ = torch.ops.aten.convolution_backward(
            grad_y.reshape((1, b * cout) + grad_y.shape[2:]).to(dtype),
            x.reshape((1, b * x.shape[1]) + x.shape[2:]).to(dtype),
            kernels,
            None,
            list(stride),
            list(padding),
            list(dilation),
            False,
            [0, 0],
            b * groups,
            [ctx.needs_input_grad[0], True, False],
        )
        w_flat = weight.reshape(k, -1)
        grad_k = grad_kernels.reshape(b, -1).to(weight.dtype)
        grad_pi = torch.mm(grad_k, w_flat.t())
        grad_weight = torch.mm(pi.t().to(weight.dtype), grad_k).reshape(weight.shape)
        grad_bias = None
        if bias is not None:
            grad_mixed_bias = grad_y.sum(dim=(2, 3)).to(bias.dtype)  # (B, Cout)
            grad_bias = torch.mm(pi.t().to(bias.dtype), grad_mixed_bias)
            grad_pi = grad_pi + torch.mm(grad_mixed_bias, bias.t())
        if grad_x is not None:
            grad_x = grad_x.reshape(x.shape).to(x.dtype)
        return grad_x, grad_pi.to(pi.dtype), grad_weight, grad_bias, None, None, None, None
