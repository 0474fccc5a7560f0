"""Anneal the softmax temperature of every dynamic layer (Chen et al. 2020, Sec. 3.2).

The paper starts at 30 and decreases linearly to 1 over the first 10 epochs. The value is a
pure function of the optimizer step (or epoch), so a resumed run continues the schedule
exactly; the layers' ``temperature`` buffers are also saved in every checkpoint.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from dyconv.layers import dynamic_layers, set_temperature

__all__ = ["TemperatureScheduler", "temperature_at"]

MODES = ("linear", "exponential", "cosine", "constant")


def temperature_at(progress: float, start: float, end: float, mode: str = "linear") -> float:
    """The temperature at ``progress`` in [0, 1] of the annealing (clamped beyond)."""
    t = min(max(progress, 0.0), 1.0)
    if mode == "constant":
        return start
    if mode == "linear":
        return start + (end - start) * t
    if mode == "exponential":
        return start * (end / start) ** t
    if mode == "cosine":
        return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * t))
    raise ValueError(f"temperature mode must be one of {MODES}, got {mode!r}")


class TemperatureScheduler(Callback):
    """Set every dynamic conv's temperature from ``start`` to ``end`` over ``epochs`` epochs.

    The one owner of the temperature while training (config key ``callbacks.temperature``): the
    model's ``temperature`` option only sets the buffers of a model built outside training.

    Args:
        start, end: temperatures at the beginning and at the end of the annealing (> 0).
        epochs: length of the annealing in epochs (0: ``end`` from the first step).
        mode: ``linear`` (paper), ``exponential``, ``cosine`` or ``constant`` (stay at start).
        interval: ``step`` (default: updated before every optimizer step) or ``epoch`` (updated
            at each epoch start, what the 2021 reference implementation did).
        log: log the value as ``temperature``.
    """

    def __init__(
        self,
        start: float = 30.0,
        end: float = 1.0,
        epochs: float = 10,
        mode: str = "linear",
        interval: str = "step",
        log: bool = True,
    ) -> None:
        if not (start > 0 and end > 0):
            raise ValueError(f"temperature start and end must be > 0, got start={start}, end={end}")
        if epochs < 0:
            raise ValueError(f"temperature epochs must be >= 0, got {epochs}")
        if mode not in MODES:
            raise ValueError(f"temperature mode must be one of {MODES}, got {mode!r}")
        if interval not in ("step", "epoch"):
            raise ValueError(f"temperature interval must be 'step' or 'epoch', got {interval!r}")
        self.start, self.end, self.epochs = float(start), float(end), float(epochs)
        self.mode, self.interval, self.log = mode, interval, log
        self.current: float | None = None

    def _steps_per_epoch(self, trainer: L.Trainer) -> int:
        batches = trainer.num_training_batches
        if not math.isfinite(batches) or batches <= 0:
            return 1
        return max(1, math.ceil(batches / trainer.accumulate_grad_batches))

    def progress(self, trainer: L.Trainer) -> float:
        """Fraction of the annealing done at the trainer's current step/epoch."""
        if self.epochs == 0:
            return 1.0
        if self.interval == "epoch":
            return trainer.current_epoch / self.epochs
        return trainer.global_step / (self.epochs * self._steps_per_epoch(trainer))

    def _apply(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.current = temperature_at(self.progress(trainer), self.start, self.end, self.mode)
        set_temperature(pl_module, self.current)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not any(True for _ in dynamic_layers(pl_module)):
            return
        # Before training (and before the sanity check) the schedule's start value applies; a
        # resumed run keeps the restored buffers (a validation it re-runs sees the temperature
        # the interrupted run had) and re-applies the schedule at its first batch.
        if trainer.ckpt_path is None:
            set_temperature(pl_module, self.start)
            self.current = self.start

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.interval == "epoch":
            self._apply(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.interval == "step":
            self._apply(trainer, pl_module)
        if self.log and self.current is not None and trainer.loggers:
            pl_module.log("temperature", self.current, on_step=True, on_epoch=False, prog_bar=False, logger=True)

    def state_dict(self) -> dict[str, Any]:
        # The schedule (start, end, epochs, mode, interval) is configuration, owned by the config;
        # the checkpoint holds only the run's state, and loads exactly what it saved.
        return {"current": self.current}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.current = state_dict.get("current")
