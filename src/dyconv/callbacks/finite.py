"""Stop a diverged run: a non-finite loss or non-finite weights end training with a message
that names the step and the usual fixes, before any checkpoint holds the bad values (the
checkpoint writer refuses non-finite tensors as a second line of defence)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from dyconv.errors import DivergenceError

__all__ = ["NonFiniteGuard", "divergence_message", "non_finite_tensors"]


def non_finite_tensors(tensors: dict[str, Any], limit: int = 5) -> list[str]:
    """Names of floating-point tensors in a (nested) mapping that hold NaN or inf (at most ``limit``)."""
    bad: list[str] = []

    def visit(prefix: str, value: Any) -> None:
        if len(bad) >= limit:
            return
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
                bad.append(prefix)
        elif isinstance(value, dict):
            for k, v in value.items():
                visit(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                visit(f"{prefix}[{i}]", v)

    visit("", tensors)
    return bad


def divergence_message(what: str, trainer: L.Trainer | None) -> str:
    where = ""
    lr = ""
    if trainer is not None:
        where = f" at step {trainer.global_step} (epoch {trainer.current_epoch})"
        if trainer.optimizers:
            lr = f" (now {trainer.optimizers[0].param_groups[0]['lr']:.3g})"
    return (
        f"training diverged: {what}{where}. Nothing non-finite was saved; the last good checkpoint stays in "
        f"checkpoints/last.ckpt. Try a lower optimizer.lr{lr}, gradient clipping (trainer.gradient_clip_val=1.0), "
        "or full precision (trainer.precision=32-true), then start a new run (run_name=<new name>) or resume the "
        "last good checkpoint with ckpt_path=last"
    )


class NonFiniteGuard(Callback):
    """Raise :class:`DivergenceError` when the training loss is NaN/inf (checked every step) or
    a parameter is (checked every ``check_weights_every_n_steps`` steps and at each epoch end).

    Args:
        check_weights_every_n_steps: weight check period (one fused norm over all parameters).
    """

    def __init__(self, check_weights_every_n_steps: int = 50) -> None:
        if check_weights_every_n_steps < 1:
            raise ValueError(f"check_weights_every_n_steps must be >= 1, got {check_weights_every_n_steps}")
        self.every = int(check_weights_every_n_steps)

    @staticmethod
    def _loss(outputs: Any) -> torch.Tensor | None:
        if isinstance(outputs, torch.Tensor):
            return outputs
        if isinstance(outputs, dict) and isinstance(outputs.get("loss"), torch.Tensor):
            return outputs["loss"]
        return None

    def _check_weights(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        params = [p.detach() for p in pl_module.parameters() if p.is_floating_point()]
        if not params:
            return
        norms = torch._foreach_norm(params)
        if not bool(torch.isfinite(torch.stack(norms)).all()):
            names = [n for n, p in pl_module.named_parameters() if not bool(torch.isfinite(p).all())][:3]
            raise DivergenceError(divergence_message(f"non-finite weights in {', '.join(names)}", trainer))

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        loss = self._loss(outputs)
        if loss is not None and not bool(torch.isfinite(loss.detach()).all()):
            raise DivergenceError(divergence_message(f"the training loss became {loss.item()}", trainer))
        if trainer.global_step % self.every == 0:
            self._check_weights(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._check_weights(trainer, pl_module)

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._check_weights(trainer, pl_module)
