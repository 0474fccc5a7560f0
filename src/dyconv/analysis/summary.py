"""Summaries of learned attention: entropy, mean kernel weight, kernel wins, per-class means.

Shared by the training callback (:class:`dyconv.callbacks.AttentionStatistics`) and the
inspection tool (``python -m dyconv.inspect``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

__all__ = ["AttentionSummary", "LayerAttention", "entropy"]


def entropy(pi: torch.Tensor) -> torch.Tensor:
    """Per-row entropy in nats of probability rows ``pi`` (B, K); 0 * log 0 = 0."""
    return -(pi * pi.clamp_min(1e-12).log()).sum(dim=1)


@dataclass
class LayerAttention:
    """Running sums for one layer (float64 for exact accumulation over large splits)."""

    num_kernels: int
    num_classes: int = 0
    count: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    entropy_sum: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    pi_sum: torch.Tensor | None = None
    wins: torch.Tensor | None = None
    class_pi_sum: torch.Tensor | None = None
    class_count: torch.Tensor | None = None

    def __post_init__(self) -> None:
        k, c = self.num_kernels, self.num_classes
        self.pi_sum = torch.zeros(k, dtype=torch.float64)
        self.wins = torch.zeros(k, dtype=torch.float64)
        self.class_pi_sum = torch.zeros(c, k, dtype=torch.float64)
        self.class_count = torch.zeros(c, dtype=torch.float64)

    def update(self, pi: torch.Tensor, labels: torch.Tensor | None = None) -> None:
        pi = pi.detach().to("cpu", torch.float64)
        # The recorder passes pi in the dtype forward used; bf16 rows need not sum to exactly 1.
        pi = pi / pi.sum(dim=1, keepdim=True).clamp_min(1e-12)
        self.count += pi.shape[0]
        self.entropy_sum += entropy(pi).sum()
        self.pi_sum += pi.sum(0)
        self.wins += torch.bincount(pi.argmax(1), minlength=self.num_kernels).to(torch.float64)
        if labels is not None and self.num_classes:
            labels = labels.detach().to("cpu", torch.long).reshape(-1)
            if labels.numel() == pi.shape[0]:
                self.class_pi_sum.index_add_(0, labels, pi)
                self.class_count += torch.bincount(labels, minlength=self.num_classes).to(torch.float64)

    def tensors(self) -> list[torch.Tensor]:
        return [self.count, self.entropy_sum, self.pi_sum, self.wins, self.class_pi_sum, self.class_count]

    @property
    def mean_entropy(self) -> float:
        return float(self.entropy_sum / self.count.clamp_min(1))

    @property
    def max_entropy(self) -> float:
        return math.log(self.num_kernels)

    @property
    def mean_pi(self) -> torch.Tensor:
        return self.pi_sum / self.count.clamp_min(1)

    @property
    def win_rate(self) -> torch.Tensor:
        return self.wins / self.count.clamp_min(1)

    @property
    def class_mean_pi(self) -> torch.Tensor:
        return self.class_pi_sum / self.class_count.clamp_min(1).unsqueeze(1)


class AttentionSummary:
    """Per-layer :class:`LayerAttention` accumulators, fed by an ``AttentionRecorder``."""

    def __init__(self, num_kernels: dict[str, int], num_classes: int = 0) -> None:
        self.layers = {name: LayerAttention(k, num_classes) for name, k in num_kernels.items()}
        self._labels: torch.Tensor | None = None

    def set_labels(self, labels: torch.Tensor | None) -> None:
        """Labels of the batch about to run (per-class means); None to skip them."""
        self._labels = labels

    def __call__(self, name: str, pi: torch.Tensor) -> None:
        self.layers[name].update(pi, self._labels)

    def reduce(self, all_reduce_sum: Callable[[torch.Tensor], torch.Tensor]) -> None:
        """Sum every accumulator across processes (DDP) with the given all-reduce."""
        for layer in self.layers.values():
            for t in layer.tensors():
                t.copy_(all_reduce_sum(t.clone()).to(t.dtype).cpu())

    def rows(self) -> list[dict[str, float | str | int]]:
        """One flat row per layer (for CSV and logging)."""
        out = []
        for name, la in self.layers.items():
            row: dict[str, float | str | int] = {
                "layer": name,
                "num_kernels": la.num_kernels,
                "samples": int(la.count),
                "entropy": la.mean_entropy,
                "max_entropy": la.max_entropy,
                "entropy_ratio": la.mean_entropy / la.max_entropy if la.num_kernels > 1 else 1.0,
            }
            for k in range(la.num_kernels):
                row[f"mean_pi_{k}"] = float(la.mean_pi[k])
            for k in range(la.num_kernels):
                row[f"win_rate_{k}"] = float(la.win_rate[k])
            out.append(row)
        return out
