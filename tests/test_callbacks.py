"""Callbacks in a real (tiny) fit: temperature schedule, attention statistics, RNG state."""

from __future__ import annotations

import functools
import math
import random

import lightning as L
import numpy as np
import pytest
import torch

from dyconv.callbacks import AttentionStatistics, RNGStateCallback, TemperatureScheduler, temperature_at
from dyconv.callbacks.rng import get_rng_states, set_rng_states
from dyconv.datamodules import MNISTOfflineDataModule
from dyconv.layers import get_temperature
from dyconv.tasks import ClassificationTask
from dyconv.utils.checkpoint_io import atomic_torch_save
from tinynets import tiny_net as _tiny_net


def test_temperature_schedule_values():
    assert temperature_at(0.0, 30, 1) == 30 and temperature_at(1.0, 30, 1) == 1
    assert temperature_at(0.5, 30, 1) == pytest.approx(15.5)
    assert temperature_at(2.0, 30, 1) == 1  # clamped after the annealing
    assert temperature_at(0.5, 30, 1, "exponential") == pytest.approx(math.sqrt(30))
    assert temperature_at(0.5, 30, 1, "cosine") == pytest.approx(15.5)
    assert temperature_at(0.25, 30, 1, "cosine") == pytest.approx(1 + 29 * (1 + math.cos(math.pi / 4)) / 2)
    with pytest.raises(ValueError):
        TemperatureScheduler(start=0)


def _fit(tmp_path, callbacks, epochs=2, **trainer_kwargs):
    torch.manual_seed(0)
    dm = MNISTOfflineDataModule(batch_size=50, splits=(200, 50, 50))
    task = ClassificationTask(_tiny_net(), num_classes=10, optimizer=functools.partial(torch.optim.SGD, lr=0.05))
    trainer = L.Trainer(
        max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, callbacks=callbacks, default_root_dir=tmp_path, **trainer_kwargs,
    )
    trainer.fit(task, datamodule=dm)
    return trainer, task


def test_temperature_callback_anneals_per_step_and_per_epoch(tmp_path):
    seen = []

    class Spy(L.Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append((trainer.global_step, get_temperature(pl_module)))

    # 4 steps per epoch; annealing over 1 epoch from 9 to 1: steps 0..3 -> 9, 7, 5, 3; then 1.
    _fit(tmp_path, [TemperatureScheduler(start=9, end=1, epochs=1), Spy()], epochs=2)
    assert seen[:5] == [(0, 9.0), (1, 7.0), (2, 5.0), (3, 3.0), (4, 1.0)]
    seen.clear()
    _fit(tmp_path, [TemperatureScheduler(start=9, end=1, epochs=2, interval="epoch"), Spy()], epochs=2)
    assert [t for _, t in seen] == [9.0] * 4 + [5.0] * 4


def test_attention_statistics_callback_logs_entropy(tmp_path):
    trainer, _ = _fit(tmp_path, [TemperatureScheduler(start=1e6, end=1e6, epochs=1), AttentionStatistics()], epochs=1)
    metrics = trainer.callback_metrics
    # Temperature ~infinity: the attention is uniform, entropy = log K (K=3).
    assert float(metrics["attention/model.3/entropy"]) == pytest.approx(math.log(3), abs=1e-4)
    assert float(metrics["attention/model.3/pi_0"]) == pytest.approx(1 / 3, abs=1e-4)
    assert float(metrics["attention/entropy_ratio"]) == pytest.approx(1.0, abs=1e-4)


def test_rng_states_round_trip_through_weights_only_checkpoint(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    states = get_rng_states()
    atomic_torch_save({"rng": states}, tmp_path / "x.ckpt")
    loaded = torch.load(tmp_path / "x.ckpt", weights_only=True)["rng"]
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_states(loaded)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
    assert isinstance(RNGStateCallback.KEY, str)


def test_temperature_scheduler_state_round_trips_exactly():
    saved = TemperatureScheduler(start=9, end=1, epochs=2)
    saved.current = 4.5
    state = saved.state_dict()
    loaded = TemperatureScheduler(start=9, end=1, epochs=2)
    loaded.load_state_dict(state)
    # What is saved is what is loaded: the schedule itself is configuration.
    assert state == {"current": 4.5} and loaded.state_dict() == state
    assert (loaded.start, loaded.end, loaded.epochs) == (9.0, 1.0, 2.0)
