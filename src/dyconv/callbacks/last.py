"""``last.ckpt`` after every training epoch, written twice: when the epoch's last training batch
is done (before validation, so a crash in validation loses no training) and again after
validation (with its results). Lightning 2.6's ``save_last`` only rewrites ``last.ckpt`` when the
monitored metric improved, hence this callback.

Resuming from the pre-validation checkpoint is exact: the checkpoint is marked as written in the
middle of validation, so Lightning runs that validation again on resume (the datamodules' eval
loaders draw nothing from the global RNG, so re-creating them does not shift it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

from dyconv.callbacks.rng import PRE_VALIDATION_KEY

__all__ = ["LastCheckpoint"]


class LastCheckpoint(ModelCheckpoint):
    """``<dirpath>/<filename>.ckpt`` every epoch, before and after validation.

    Args:
        dirpath: the run's checkpoint folder.
        filename: file name without ``.ckpt``.
    """

    def __init__(self, dirpath: str, filename: str = "last") -> None:
        super().__init__(dirpath=dirpath, filename=filename, monitor=None, save_top_k=1, save_last=False,
                         every_n_epochs=1, enable_version_counter=False)
        self._pre_validation = False

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or trainer.fast_dev_run:
            return
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # a validation inside the epoch (val_check_interval < 1): after it, as usual
        path = str(Path(self.dirpath) / f"{self.filename}{self.FILE_EXTENSION}")
        self._pre_validation = True
        try:
            trainer.save_checkpoint(path, self.save_weights_only)
        finally:
            self._pre_validation = False

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self._pre_validation:
            mark_validation_started(checkpoint)
            checkpoint[PRE_VALIDATION_KEY] = True


def mark_validation_started(checkpoint: dict[str, Any]) -> None:
    """Make a checkpoint written as validation starts resume as "restarted mid-evaluation"
    (one validation batch started, none processed): Lightning then runs the epoch's validation
    again before the next epoch, as the uninterrupted run did. Without it, Lightning would take
    the epoch's validation as done and skip it (no metrics, no best-checkpoint update)."""
    loops = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = loops.get("epoch_loop.val_loop.batch_progress")
    if not progress:
        return
    for part in ("total", "current"):
        counts = progress[part]
        if counts["ready"] == counts["started"] == counts["processed"] == counts["completed"]:
            counts["ready"] += 1
            counts["started"] += 1
