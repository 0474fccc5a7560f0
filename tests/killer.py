"""A callback the resume tests inject with +callbacks.killer._target_=killer.KillAtEpoch:
SIGKILLs its own process when an epoch starts, i.e. right after the previous epoch's
checkpoint was written (an unclean stop, no Python cleanup)."""

import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAtEpoch(Callback):
    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), signal.SIGKILL)


class KillInValidation(Callback):
    """SIGKILLs its own process in the middle of epoch ``epoch``'s validation: a crash after the
    epoch trained and before its validation finished."""

    def __init__(self, epoch: int = 1) -> None:
        self.epoch = epoch

    def on_validation_batch_end(self, trainer, pl_module, *args, **kwargs) -> None:
        if trainer.current_epoch == self.epoch and not trainer.sanity_checking:
            os.kill(os.getpid(), signal.SIGKILL)
