"""Callbacks in a real (tiny) fit: temperature schedule, attention statistics, RNG state."""

from __future__ import annotations

import functools
import math
import random

import lightning as L
import numpy as np
import pytest
import torch

from dyconv.analysis.history import HISTORY_FILE, read_history
from dyconv.callbacks import AttentionStatistics, RNGStateCallback, TemperatureScheduler, temperature_at
from dyconv.callbacks.rng import get_rng_states, set_rng_states
from dyconv.datamodules import MNISTOfflineDataModule
from dyconv.layers import get_temperature
from dyconv.runs.checkpoint import atomic_torch_save
from dyconv.tasks import ClassificationTask
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
    # The run folder's history holds the epoch's logged attention metrics (dyconv.report reads it).
    history = read_history(tmp_path / HISTORY_FILE)
    logged = {k: float(v) for k, v in metrics.items() if k.startswith("attention/")}
    assert list(history) == [0] and history[0] == pytest.approx(logged) and len(logged) > 3


def test_attention_statistics_metric_names_and_values_per_routing(tmp_path):
    """One net with a softmax, a sigmoid and an omni (depthwise: no output attention) layer: each
    logs its own metric names, and the values equal plain torch on a rerun of the validation set."""
    from torch import nn

    from dyconv.analysis import AttentionRecorder
    from dyconv.layers import DynamicConv2d, dynamic_layers
    from dyconv.layers.routing import OmniAttention

    def net(num_classes: int = 10) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1),
            DynamicConv2d(4, 6, 3, padding=1, num_kernels=3, temperature=1.0),
            DynamicConv2d(6, 6, 3, padding=1, num_kernels=2, routing="sigmoid"),
            DynamicConv2d(6, 6, 3, padding=1, groups=6, num_kernels=2, routing="omni", temperature=1.0, reduction=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(6, num_classes),
        )

    torch.manual_seed(0)
    dm = MNISTOfflineDataModule(batch_size=25, splits=(50, 50, 50))
    task = ClassificationTask(net(), num_classes=10, optimizer=functools.partial(torch.optim.SGD, lr=0.05))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[AttentionStatistics()],
                        default_root_dir=tmp_path)
    trainer.fit(task, datamodule=dm)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("attention/")}
    soft, gate, omni = "attention/model.1/", "attention/model.2/", "attention/model.3/"
    assert set(logged) == {
        "attention/entropy_ratio",
        *(soft + m for m in ("entropy", "pi_sample_std", "pi_0", "pi_1", "pi_2")),
        *(gate + m for m in ("gate_sum", "gate_sample_std", "gate_0", "gate_1")),
        *(omni + m for m in ("entropy", "pi_sample_std", "pi_0", "pi_1", "in_mean", "in_sample_std", "spatial_mean",
                             "spatial_sample_std")),
    }
    # The same validation pass again (weights unchanged after the last validation), by hand.
    seen: dict[str, list] = {}
    task.eval()
    dm.setup("validate")
    with torch.no_grad(), AttentionRecorder(task, lambda n, a: seen.setdefault(n, []).append(a)):
        for x, _ in dm.val_dataloader():
            task(x)
    pi = torch.cat(seen["model.1"]).double()
    g = torch.cat(seen["model.2"]).double()
    om = seen["model.3"]
    assert all(isinstance(a, OmniAttention) and a.out_channel is None for a in om)
    pk = torch.cat([a.kernel for a in om]).double()
    a_in = torch.cat([a.in_channel for a in om]).double()
    a_sp = torch.cat([a.spatial for a in om]).double().flatten(1)

    def ent(p):
        return float(-(p * p.log()).sum(1).mean())

    assert logged[soft + "entropy"] == pytest.approx(ent(pi), rel=1e-5)
    assert logged[soft + "pi_2"] == pytest.approx(float(pi[:, 2].mean()), rel=1e-5)
    assert logged[gate + "gate_sum"] == pytest.approx(float(g.sum(1).mean()), rel=1e-5)
    assert logged[gate + "gate_1"] == pytest.approx(float(g[:, 1].mean()), rel=1e-5)
    assert logged[gate + "gate_sample_std"] == pytest.approx(float(g.std(0, unbiased=False).mean()), rel=1e-4)
    assert logged[omni + "entropy"] == pytest.approx(ent(pk), rel=1e-5)
    assert logged[omni + "in_mean"] == pytest.approx(float(a_in.mean()), rel=1e-5)
    assert logged[omni + "spatial_sample_std"] == pytest.approx(float(a_sp.std(0, unbiased=False).mean()), rel=1e-4)
    # Only the two kernel softmaxes (K > 1) enter the entropy ratio; the sigmoid gates have none.
    ratio = (ent(pi) / math.log(3) + ent(pk) / math.log(2)) / 2
    assert logged["attention/entropy_ratio"] == pytest.approx(ratio, rel=1e-5)
    assert len(list(dynamic_layers(task))) == 3


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
