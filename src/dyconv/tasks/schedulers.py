"""Learning-rate schedules as plain ``LambdaLR``-style factories with an optional warmup.

Each factory takes ``total_steps``: the number of scheduler steps in the whole run. The task
binds it (optimizer steps when the config's ``interval`` is ``step``, epochs when ``epoch``)
unless the config sets it, so recipes are written in the unit they are quoted in.
"""

from __future__ import annotations

import logging
import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

log = logging.getLogger(__name__)

__all__ = ["ScheduleFn", "constant", "cosine", "linear", "multistep", "poly", "step"]


class ScheduleFn:
    """Picklable lr multiplier: linear warmup, then a named decay shape.

    The warmup is ``warmup_steps`` scheduler steps, or ``warmup_fraction`` of ``total_steps``
    (what a recipe means when the run length varies); a warmup longer than the run is clamped
    to it with a warning instead of failing mid-setup.
    """

    def __init__(
        self,
        kind: str,
        total_steps: int,
        warmup_steps: int = 0,
        warmup_start_factor: float = 0.0,
        min_factor: float = 0.0,
        power: float = 0.9,
        milestones: tuple[int, ...] = (),
        gamma: float = 0.1,
        warmup_fraction: float = 0.0,
    ) -> None:
        if total_steps < 1:
            raise ValueError(f"scheduler total_steps must be >= 1, got {total_steps}")
        if warmup_steps < 0:
            raise ValueError(f"scheduler warmup_steps must be >= 0, got {warmup_steps}")
        if not 0 <= warmup_fraction < 1:
            raise ValueError(f"scheduler warmup_fraction must be in [0, 1), got {warmup_fraction}")
        if warmup_fraction and warmup_steps:
            raise ValueError("set scheduler warmup_steps or warmup_fraction, not both")
        if warmup_fraction:
            warmup_steps = round(warmup_fraction * total_steps)
        if warmup_steps > total_steps:
            log.warning("scheduler warmup_steps=%d is longer than the run (%d steps): warming up over the whole run; "
                        "use scheduler.scheduler.warmup_fraction to scale it with the run", warmup_steps, total_steps)
            warmup_steps = total_steps
        self.kind, self.total, self.warmup = kind, int(total_steps), int(warmup_steps)
        self.start_factor, self.min_factor, self.power = warmup_start_factor, min_factor, power
        self.milestones, self.gamma = tuple(sorted(milestones)), gamma

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.start_factor + (1.0 - self.start_factor) * step / self.warmup
        span = max(1, self.total - self.warmup)
        t = min(1.0, (step - self.warmup) / span)
        if self.kind == "constant":
            f = 1.0
        elif self.kind == "cosine":
            f = 0.5 * (1.0 + math.cos(math.pi * t))
        elif self.kind == "poly":
            f = (1.0 - t) ** self.power
        elif self.kind == "linear":
            f = 1.0 - t
        elif self.kind == "multistep":
            f = self.gamma ** sum(step >= m for m in self.milestones)
            return f
        else:
            raise ValueError(f"unknown schedule kind {self.kind!r}")
        return self.min_factor + (1.0 - self.min_factor) * f


def cosine(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_factor: float = 0.0,
           warmup_start_factor: float = 0.0, warmup_fraction: float = 0.0) -> LRScheduler:
    """Cosine decay to ``min_lr_factor`` x lr over ``total_steps``, after a linear warmup."""
    return LambdaLR(optimizer, ScheduleFn("cosine", total_steps, warmup_steps, warmup_start_factor, min_lr_factor,
                                          warmup_fraction=warmup_fraction))


def poly(optimizer: Optimizer, total_steps: int, power: float = 0.9, warmup_steps: int = 0,
         warmup_start_factor: float = 0.0, warmup_fraction: float = 0.0) -> LRScheduler:
    """DeepLab's poly schedule ``(1 - t) ** power``."""
    return LambdaLR(optimizer, ScheduleFn("poly", total_steps, warmup_steps, warmup_start_factor, power=power,
                                          warmup_fraction=warmup_fraction))


def linear(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0, min_lr_factor: float = 0.0,
           warmup_start_factor: float = 0.0, warmup_fraction: float = 0.0) -> LRScheduler:
    """Linear decay to ``min_lr_factor`` x lr."""
    return LambdaLR(optimizer, ScheduleFn("linear", total_steps, warmup_steps, warmup_start_factor, min_lr_factor,
                                          warmup_fraction=warmup_fraction))


def constant(optimizer: Optimizer, total_steps: int, warmup_steps: int = 0,
             warmup_start_factor: float = 0.0, warmup_fraction: float = 0.0) -> LRScheduler:
    """Constant lr after an optional linear warmup."""
    return LambdaLR(optimizer, ScheduleFn("constant", total_steps, warmup_steps, warmup_start_factor,
                                          warmup_fraction=warmup_fraction))


def multistep(optimizer: Optimizer, total_steps: int, milestones: list[int], gamma: float = 0.1,
              warmup_steps: int = 0, warmup_start_factor: float = 0.0, warmup_fraction: float = 0.0) -> LRScheduler:
    """lr x ``gamma`` at each milestone (the ResNet recipes: x0.1 at epochs 30, 60, 90)."""
    fn = ScheduleFn("multistep", total_steps, warmup_steps, warmup_start_factor, milestones=tuple(milestones),
                    gamma=gamma, warmup_fraction=warmup_fraction)
    return LambdaLR(optimizer, fn)


def step(optimizer: Optimizer, total_steps: int, step_size: int, gamma: float = 0.1, warmup_steps: int = 0,
         warmup_start_factor: float = 0.0, warmup_fraction: float = 0.0) -> LRScheduler:
    """lr x ``gamma`` every ``step_size`` (the reference's ResNet-10 recipe: every 30 epochs)."""
    milestones = list(range(step_size, max(total_steps, step_size) + 1, step_size))
    return multistep(optimizer, total_steps, milestones, gamma, warmup_steps, warmup_start_factor, warmup_fraction)
