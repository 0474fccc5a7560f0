"""``last.ckpt`` after every training epoch, written twice: when the epoch's last training batch
is done (before validation, so a crash in validation loses no training) and again after
validation (with its results). Lightning 2.6's ``save_last`` only rewrites ``last.ckpt`` when the
monitored metric improved, hence this callback."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint

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

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or trainer.fast_dev_run:
            return
        if not trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return  # a validation inside the epoch (val_check_interval < 1): after it, as usual
        path = str(Path(self.dirpath) / f"{self.filename}{self.FILE_EXTENSION}")
        trainer.save_checkpoint(path, self.save_weights_only)
