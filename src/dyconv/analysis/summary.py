"""Summaries of learned attention, per layer and per routing (``layer.routing.kind``).

- ``softmax`` (the paper): the kernel weights ``pi`` (B, K) are a distribution. Reported: the
  mean entropy (nats; log K = uniform), the mean weight of each kernel, how often each kernel
  wins (argmax), the per-class mean weights and how input-dependent the weights are.
- ``sigmoid`` (CondConv): K independent gates in (0, 1) that do not sum to 1, so an entropy over
  K is not defined and nothing is renormalised. Reported: the mean gate of each kernel, the
  fraction of samples whose gate is above 0.5, the mean sum of the gates (the scale of the
  mixed kernel), wins, per-class mean gates, and, labelled as such, the entropy of the gates
  divided by their sum (how evenly they spread, not a probability).
- ``omni`` (ODConv): its kernel softmax as ``softmax`` above, plus, for each of its sigmoid
  attentions over the input channels, output channels and kernel positions (when the layer
  has it), the mean, the spread of the per-channel means across channels and the mean over
  channels of the per-channel std across samples (0 = the same for every input).

Shared by the training callback (:class:`dyconv.callbacks.AttentionStatistics`) and the
inspection tool (``python -m dyconv.inspect``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Union

import torch
from torch import nn

from dyconv.layers.routing import OmniAttention

__all__ = ["OMNI_PARTS", "AttentionSummary", "LayerAttention", "LayerSpec", "PartStats", "entropy", "kernel_weights"]

#: ODConv's sigmoid attentions, as named in :class:`~dyconv.layers.routing.OmniAttention`,
#: with the short names used in columns and metrics.
OMNI_PARTS = {"in_channel": "in", "out_channel": "out", "spatial": "spatial"}

Attention = Union[torch.Tensor, OmniAttention]


def entropy(pi: torch.Tensor) -> torch.Tensor:
    """Per-row entropy in nats of probability rows ``pi`` (B, K); 0 * log 0 = 0."""
    return -(pi * pi.clamp_min(1e-12).log()).sum(dim=1)


def kernel_weights(attention: Attention) -> torch.Tensor:
    """The (B, K) kernel weights of what a routing outputs (the ``kernel`` part of an
    :class:`~dyconv.layers.routing.OmniAttention`, the tensor itself otherwise)."""
    return attention.kernel if isinstance(attention, OmniAttention) else attention


@dataclass(frozen=True)
class LayerSpec:
    """What a layer's summary needs to know: K, the routing and, for ``omni``, the sizes of its
    sigmoid attentions (0 where the layer has none: depthwise has no output attention,
    pointwise no spatial one)."""

    num_kernels: int
    routing: str = "softmax"
    in_channels: int = 0
    out_channels: int = 0
    kernel_positions: int = 0

    @classmethod
    def of(cls, layer: nn.Module) -> LayerSpec:
        """The spec of a dynamic layer (:class:`~dyconv.layers.DynamicConvNd`)."""
        kind = layer.routing.kind
        if kind != "omni":
            return cls(layer.num_kernels, kind)
        return cls(
            layer.num_kernels,
            kind,
            in_channels=layer.in_channels,
            out_channels=0 if layer.attn_out is None else layer.out_channels,
            kernel_positions=0 if layer.attn_spatial is None else math.prod(layer.kernel_size),
        )

    @property
    def kernel_softmax(self) -> bool:
        """Whether the kernel weights are a softmax (rows sum to 1): ``softmax`` and ``omni``."""
        return self.routing != "sigmoid"

    @property
    def uses_temperature(self) -> bool:
        """Whether the temperature changes this layer's attention (not ``sigmoid``)."""
        return self.routing != "sigmoid"


def _zeros(*shape: int) -> torch.Tensor:
    return torch.zeros(shape, dtype=torch.float64)


@dataclass
class PartStats:
    """Per-position running sums of one attention over samples: ``size`` positions (kernels,
    channels or kernel taps), the sum and the sum of squares over samples of ``value - shift``.

    ``shift`` is a constant near the values (1/K for softmax weights, 1/2 for sigmoids): it keeps
    the variance ``E[d^2] - E[d]^2`` free of cancellation for near-constant attentions, and,
    being the same on every process, the sums stay additive across processes.
    """

    size: int
    shift: float = 0.0
    count: torch.Tensor = field(default_factory=lambda: _zeros())
    total: torch.Tensor | None = None
    squares: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.total = _zeros(self.size)
        self.squares = _zeros(self.size)

    def update(self, values: torch.Tensor) -> None:
        """Add ``values`` (B, size), float64 on the CPU."""
        d = values - self.shift
        self.count += values.shape[0]
        self.total += d.sum(0)
        self.squares += d.square().sum(0)

    def tensors(self) -> list[torch.Tensor]:
        return [self.count, self.total, self.squares]

    @property
    def position_mean(self) -> torch.Tensor:
        """Mean of each position over samples, (size,)."""
        return self.total / self.count.clamp_min(1) + self.shift

    @property
    def position_sample_std(self) -> torch.Tensor:
        """Std of each position across samples (population), (size,)."""
        mean_d = self.total / self.count.clamp_min(1)
        return (self.squares / self.count.clamp_min(1) - mean_d.square()).clamp_min(0).sqrt()

    @property
    def mean(self) -> float:
        """Mean over samples and positions."""
        return float(self.position_mean.mean())

    @property
    def position_std(self) -> float:
        """Std across positions of the per-position means (static selectivity)."""
        return float(self.position_mean.std(unbiased=False))

    @property
    def sample_std(self) -> float:
        """Mean over positions of the per-position std across samples (input dependence)."""
        return float(self.position_sample_std.mean())


@dataclass
class LayerAttention:
    """Running sums for one layer (float64 for exact accumulation over large splits).

    ``weights`` holds the kernel weights (``pi`` or the sigmoid gates); ``entropy_sum`` the
    entropy of the softmax rows, or for ``sigmoid`` that of the gates divided by their sum.
    """

    num_kernels: int
    num_classes: int = 0
    spec: LayerSpec | None = None
    count: torch.Tensor = field(default_factory=lambda: _zeros())
    entropy_sum: torch.Tensor = field(default_factory=lambda: _zeros())
    weights: PartStats | None = None
    wins: torch.Tensor | None = None
    gates_on: torch.Tensor | None = None
    class_sum: torch.Tensor | None = None
    class_count: torch.Tensor | None = None
    parts: dict[str, PartStats] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.spec is None:
            self.spec = LayerSpec(self.num_kernels)
        if self.spec.num_kernels != self.num_kernels:
            raise ValueError(f"num_kernels {self.num_kernels} differs from the spec's {self.spec.num_kernels}")
        k, c = self.num_kernels, self.num_classes
        self.weights = PartStats(k, 1.0 / k if self.spec.kernel_softmax else 0.5)
        self.wins = _zeros(k)
        self.gates_on = _zeros(k)
        self.class_sum = _zeros(c, k)
        self.class_count = _zeros(c)
        if self.spec.routing == "omni":
            sizes = {"in_channel": self.spec.in_channels, "out_channel": self.spec.out_channels,
                     "spatial": self.spec.kernel_positions}
            self.parts = {part: PartStats(n, 0.5) for part, n in sizes.items() if n}

    @property
    def routing(self) -> str:
        return self.spec.routing

    def update(self, attention: Attention, labels: torch.Tensor | None = None) -> None:
        """Add one batch of what the layer's routing output (a (B, K) tensor or an OmniAttention)."""
        if isinstance(attention, OmniAttention) != (self.routing == "omni"):
            raise TypeError(f"a {self.routing!r} layer's summary got a {type(attention).__name__}")
        w = kernel_weights(attention).detach().to("cpu", torch.float64)
        if w.dim() != 2 or w.shape[1] != self.num_kernels:
            raise ValueError(f"expected kernel weights (B, {self.num_kernels}), got {tuple(w.shape)}")
        if self.spec.kernel_softmax:
            # A softmax in the dtype forward used: bf16 rows need not sum to exactly 1.
            w = w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)
            self.entropy_sum += entropy(w).sum()
        else:
            # Independent gates: kept as they are; only this entropy sees them normalised.
            self.entropy_sum += entropy(w / w.sum(dim=1, keepdim=True).clamp_min(1e-12)).sum()
            self.gates_on += (w > 0.5).sum(0).to(torch.float64)
        self.count += w.shape[0]
        self.weights.update(w)
        self.wins += torch.bincount(w.argmax(1), minlength=self.num_kernels).to(torch.float64)
        if labels is not None and self.num_classes:
            labels = labels.detach().to("cpu", torch.long).reshape(-1)
            if labels.numel() == w.shape[0]:
                self.class_sum.index_add_(0, labels, w)
                self.class_count += torch.bincount(labels, minlength=self.num_classes).to(torch.float64)
        for part, stats in self.parts.items():
            values = getattr(attention, part)
            if values is None or math.prod(values.shape[1:]) != stats.size:
                shape = None if values is None else tuple(values.shape)
                raise ValueError(f"omni attention {part!r}: expected (B, {stats.size}) values, got {shape}")
            stats.update(values.detach().to("cpu", torch.float64).reshape(values.shape[0], -1))

    def tensors(self) -> list[torch.Tensor]:
        out = [self.count, self.entropy_sum, *self.weights.tensors(), self.wins, self.gates_on, self.class_sum,
               self.class_count]
        for stats in self.parts.values():
            out += stats.tensors()
        return out

    def _softmax_only(self, what: str) -> None:
        if not self.spec.kernel_softmax:
            raise TypeError(f"{what} needs kernel weights that sum to 1; this layer's routing is "
                            f"{self.routing!r} (independent gates): use mean_weight / normalised_gate_entropy")

    @property
    def mean_weight(self) -> torch.Tensor:
        """Mean kernel weight per kernel (``pi`` or gate, as the routing output it), (K,)."""
        return self.weights.position_mean

    @property
    def class_mean_weight(self) -> torch.Tensor:
        """Mean kernel weights per class, (num_classes, K)."""
        return self.class_sum / self.class_count.clamp_min(1).unsqueeze(1)

    @property
    def win_rate(self) -> torch.Tensor:
        """How often each kernel has the largest weight, (K,)."""
        return self.wins / self.count.clamp_min(1)

    @property
    def mean_entropy(self) -> float:
        """Mean entropy (nats) of the softmax rows (``softmax``/``omni`` only)."""
        self._softmax_only("an entropy over the kernels")
        return float(self.entropy_sum / self.count.clamp_min(1))

    @property
    def max_entropy(self) -> float:
        return math.log(self.num_kernels)

    @property
    def entropy_ratio(self) -> float:
        """Mean entropy / log K (1 = uniform, 0 = one kernel per sample); 1 for K = 1."""
        return self.mean_entropy / self.max_entropy if self.num_kernels > 1 else 1.0

    @property
    def mean_pi(self) -> torch.Tensor:
        """Mean of ``pi`` per kernel (``softmax``/``omni`` only), (K,)."""
        self._softmax_only("mean_pi")
        return self.mean_weight

    @property
    def class_mean_pi(self) -> torch.Tensor:
        self._softmax_only("class_mean_pi")
        return self.class_mean_weight

    @property
    def gate_on_rate(self) -> torch.Tensor:
        """``sigmoid``: fraction of samples whose gate of each kernel is above 0.5, (K,)."""
        if self.spec.kernel_softmax:
            raise TypeError(f"gate_on_rate is for sigmoid gates; this layer's routing is {self.routing!r}")
        return self.gates_on / self.count.clamp_min(1)

    @property
    def normalised_gate_entropy(self) -> float:
        """``sigmoid``: mean entropy (nats) of the gates divided by their sum (how evenly they
        spread over the K kernels; the gates themselves are not a distribution)."""
        if self.spec.kernel_softmax:
            raise TypeError(f"normalised_gate_entropy is for sigmoid gates; this layer's routing is {self.routing!r}")
        return float(self.entropy_sum / self.count.clamp_min(1))

    def row(self, name: str) -> dict[str, float | str | int]:
        """One flat row (for CSV and logging); columns depend on the routing (module docstring)."""
        k = self.num_kernels
        row: dict[str, float | str | int] = {"layer": name, "routing": self.routing, "num_kernels": k,
                                             "samples": int(self.count)}
        mean, wins = self.mean_weight, self.win_rate
        if self.spec.kernel_softmax:
            row.update(entropy=self.mean_entropy, max_entropy=self.max_entropy, entropy_ratio=self.entropy_ratio)
            row.update({f"mean_pi_{i}": float(mean[i]) for i in range(k)})
            row.update({f"win_rate_{i}": float(wins[i]) for i in range(k)})
            row["pi_sample_std"] = self.weights.sample_std
        else:
            row["gate_sum"] = float(mean.sum())
            row["normalised_gate_entropy"] = self.normalised_gate_entropy
            row.update({f"mean_gate_{i}": float(mean[i]) for i in range(k)})
            row.update({f"gate_on_{i}": float(self.gate_on_rate[i]) for i in range(k)})
            row.update({f"win_rate_{i}": float(wins[i]) for i in range(k)})
            row["gate_sample_std"] = self.weights.sample_std
        for part, stats in self.parts.items():
            short = OMNI_PARTS[part]
            row[f"{short}_mean"] = stats.mean
            row[f"{short}_channel_std" if part != "spatial" else f"{short}_position_std"] = stats.position_std
            row[f"{short}_sample_std"] = stats.sample_std
        return row


class AttentionSummary:
    """Per-layer :class:`LayerAttention` accumulators, fed by an ``AttentionRecorder``.

    ``layers`` maps each layer name to its :class:`LayerSpec`, or to K alone for a ``softmax``
    layer; :meth:`for_model` builds it from a model's dynamic layers.
    """

    def __init__(self, layers: Mapping[str, int | LayerSpec], num_classes: int = 0) -> None:
        specs = {name: s if isinstance(s, LayerSpec) else LayerSpec(int(s)) for name, s in layers.items()}
        self.layers = {name: LayerAttention(s.num_kernels, num_classes, s) for name, s in specs.items()}
        self._labels: torch.Tensor | None = None

    @classmethod
    def for_model(cls, model: nn.Module, num_classes: int = 0) -> AttentionSummary:
        """A summary for every dynamic layer of ``model``, each with its own routing."""
        from dyconv.layers import dynamic_layers

        return cls({name: LayerSpec.of(layer) for name, layer in dynamic_layers(model)}, num_classes)

    @property
    def routings(self) -> dict[str, str]:
        """Each layer's routing."""
        return {name: la.routing for name, la in self.layers.items()}

    def set_labels(self, labels: torch.Tensor | None) -> None:
        """Labels of the batch about to run (per-class means); None to skip them."""
        self._labels = labels

    def __call__(self, name: str, attention: Attention) -> None:
        self.layers[name].update(attention, self._labels)

    def reduce(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum every accumulator across processes (DDP) with the given all-reduce."""
        for layer in self.layers.values():
            for t in layer.tensors():
                t.copy_(all_reduce_sum(t.clone()).to(t.dtype).cpu())

    def rows(self) -> list[dict[str, float | str | int]]:
        """One flat row per layer (for CSV and logging); see :meth:`LayerAttention.row`."""
        return [la.row(name) for name, la in self.layers.items()]
