"""Save and restore every RNG state in checkpoints, as plain types (``weights_only`` loadable).

Lightning 2.6 does not store RNG states, so a run resumed from a checkpoint draws different
augmentations, dropout masks and worker seeds than the uninterrupted run would have.
"""

from __future__ import annotations

import random
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["RNGStateCallback", "get_rng_states", "set_rng_states"]


def get_rng_states() -> dict[str, Any]:
    """Python, NumPy, torch CPU and CUDA generator states as lists, ints and tensors."""
    version, py_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states: dict[str, Any] = {
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict[str, Any]) -> None:
    """Inverse of :func:`get_rng_states`."""
    py = states["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    npst = states["numpy"]
    np.random.set_state(
        (npst["kind"], npst["keys"].numpy().astype(np.uint32), npst["pos"], npst["has_gauss"], npst["cached"])
    )
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


#: Set in checkpoints written when validation starts (see :class:`dyconv.callbacks.LastCheckpoint`).
PRE_VALIDATION_KEY = "dyconv_pre_validation"


class RNGStateCallback(Callback):
    """Store this process's RNG states in each checkpoint and restore them on resume.

    Under DDP the states of all ranks are gathered into the checkpoint and each rank restores its
    own; resuming on a different number of processes re-seeds the other ranks deterministically.
    """

    KEY = "rng_states"
    KEY_PER_RANK = "rng_states_per_rank"

    def __init__(self) -> None:
        self._pending: tuple[Any, Any] | None = None  # states to apply at train start (see below)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint[self.KEY] = get_rng_states()
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            # Every rank builds the checkpoint dict; rank 0 writes it. Gather all ranks' states.
            gathered: list[Any] = [None] * trainer.world_size
            torch.distributed.all_gather_object(gathered, checkpoint[self.KEY])
            checkpoint[self.KEY_PER_RANK] = gathered

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        pending = (checkpoint.get(self.KEY_PER_RANK), checkpoint.get(self.KEY))
        if checkpoint.get(PRE_VALIDATION_KEY):
            # Written as validation started (LastCheckpoint): Lightning re-creates the restarted
            # epoch's loaders (a draw from the global RNG the uninterrupted run did not make
            # there) before it trains, so the states are applied at train start, after that draw.
            self._pending = pending
        else:
            self._apply(trainer, pending)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self._apply(trainer, pending)

    @staticmethod
    def _apply(trainer: L.Trainer, pending: tuple[Any, Any]) -> None:
        per_rank, states = pending
        if per_rank is not None and len(per_rank) == trainer.world_size:
            set_rng_states(per_rank[trainer.global_rank])  # each rank continues its own streams
            return
        if states is None:
            return
        set_rng_states(states)
        rank = trainer.global_rank
        if rank:
            # Distinct but reproducible streams on the other ranks.
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) + rank
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
