"""Framework pieces in-process: tasks, schedules, temperature, RNG state, checkpoints, run dirs."""

from __future__ import annotations

import functools
import math
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from dyconv.attention import AttentionSummary, entropy
from dyconv.callbacks import AttentionStatistics, RNGStateCallback, TemperatureScheduler, temperature_at
from dyconv.callbacks.rng import get_rng_states, set_rng_states
from dyconv.datamodules import EpochSeededRandomSampler, MNISTOfflineDataModule
from dyconv.datamodules.base import ShardedEvalSampler
from dyconv.errors import ConfigError, RunDirectoryError
from dyconv.layers import DynamicConv2d, get_temperature
from dyconv.layers.recorder import AttentionRecorder
from dyconv.tasks import ClassificationTask, SegmentationTask
from dyconv.tasks.schedulers import cosine, multistep, poly, step
from dyconv.utils.checkpoint_io import atomic_torch_save, remove_stale_temp_files
from dyconv.utils.loggers import ResumableCSVLogger
from dyconv.utils.run_dir import config_differences, resolve_ckpt_path


def _tiny_net(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        DynamicConv2d(4, 8, 3, padding=1, num_kernels=3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )


class _Grouped(nn.Module):
    """A model with named parameter groups (as DeepLabV3+ has)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.backbone(x).mean((2, 3)))

    def param_groups(self):
        return {"backbone": list(self.backbone.parameters()), "head": list(self.head.parameters())}


def test_compile_does_not_change_checkpoint_keys():
    torch.manual_seed(0)
    plain = ClassificationTask(_tiny_net(), num_classes=10)
    compiled = ClassificationTask(_tiny_net(), num_classes=10, compile=True)
    assert plain.state_dict().keys() == compiled.state_dict().keys()
    assert not any("_orig_mod" in k for k in compiled.state_dict())


def test_hyperparameters_hold_no_modules_or_partials():
    task = ClassificationTask(
        _tiny_net(), num_classes=10, optimizer=functools.partial(torch.optim.SGD, lr=0.1), run_config={"a": 1}
    )
    for value in task.hparams.values():
        assert not isinstance(value, (nn.Module, functools.partial))
    assert task.hparams.run_config == {"a": 1}


def test_parameter_groups_lr_mult_and_no_weight_decay():
    task = ClassificationTask(
        _Grouped(),
        num_classes=2,
        optimizer=functools.partial(torch.optim.SGD, lr=0.01, weight_decay=1e-4),
        lr_mult={"backbone": 1.0, "head": 10.0},
        no_weight_decay_norm_bias=True,
    )
    opt = task.configure_optimizers()
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(0.01) and groups["head"]["lr"] == pytest.approx(0.1)
    assert groups["head_no_decay"]["lr"] == pytest.approx(0.1)
    # conv weight decays; conv bias, BN weight and BN bias do not; the linear bias does not.
    assert len(groups["backbone"]["params"]) == 1 and groups["backbone"]["weight_decay"] == 1e-4
    assert len(groups["backbone_no_decay"]["params"]) == 3 and groups["backbone_no_decay"]["weight_decay"] == 0.0
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(task.model.parameters()))
    # DynamicConv2d's (K, C) bias counts as a bias too.
    dyn = ClassificationTask(
        _tiny_net(), num_classes=10, optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        no_weight_decay_norm_bias=True,
    )
    no_decay = {id(p) for g in dyn.configure_optimizers().param_groups if g["name"].endswith("no_decay")
                for p in g["params"]}
    assert id(dyn.model[3].bias) in no_decay and id(dyn.model[3].weight) not in no_decay
    with pytest.raises(ValueError, match="model's groups"):
        ClassificationTask(_Grouped(), num_classes=2, optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                           lr_mult={"decoder": 2.0}).configure_optimizers()


def test_schedules_match_hand_computed_values():
    def lrs(factory, n):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = factory(opt)
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs(lambda o: step(o, total_steps=100, step_size=30), 91)[::30] == pytest.approx([1, 0.1, 0.01, 0.001])
    assert lrs(lambda o: multistep(o, 100, [2, 4]), 5) == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    c = lrs(lambda o: cosine(o, total_steps=10), 11)
    assert c[0] == 1 and c[5] == pytest.approx(0.5) and c[10] == pytest.approx(0.0, abs=1e-12)
    w = lrs(lambda o: cosine(o, total_steps=10, warmup_steps=2, warmup_start_factor=0.0), 3)
    assert w == pytest.approx([0.0, 0.5, 1.0])
    p = lrs(lambda o: poly(o, total_steps=4, power=2.0), 4)
    assert p == pytest.approx([1.0, 0.5625, 0.25, 0.0625])


def test_scheduler_total_steps_bound_by_the_task():
    class FakeTrainer:
        estimated_stepping_batches = 123
        max_epochs = 7

    for interval, expected in (("step", 123), ("epoch", 7)):
        task = ClassificationTask(
            _tiny_net(), num_classes=10, optimizer=functools.partial(torch.optim.SGD, lr=0.1),
            scheduler={"scheduler": functools.partial(cosine), "interval": interval},
        )
        task._trainer = FakeTrainer()  # what Lightning attaches
        conf = task.configure_optimizers()
        assert conf["lr_scheduler"]["interval"] == interval
        assert conf["lr_scheduler"]["scheduler"].lr_lambdas[0].total == expected


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


def test_attention_summary_hand_computed():
    s = AttentionSummary({"a": 2}, num_classes=2)
    s.set_labels(torch.tensor([0, 1]))
    s("a", torch.tensor([[1.0, 0.0], [0.5, 0.5]]))
    (row,) = s.rows()
    assert row["entropy"] == pytest.approx(math.log(2) / 2)
    assert row["mean_pi_0"] == pytest.approx(0.75) and row["win_rate_0"] == pytest.approx(1.0)
    torch.testing.assert_close(s.layers["a"].class_mean_pi, torch.tensor([[1.0, 0.0], [0.5, 0.5]], dtype=torch.float64))
    assert entropy(torch.tensor([[0.25] * 4]))[0] == pytest.approx(math.log(4))


def test_attention_recorder_sees_what_forward_uses():
    torch.manual_seed(0)
    layer = DynamicConv2d(4, 4, 3, temperature=2.0)
    x = torch.randn(3, 4, 8, 8)
    got = {}
    with AttentionRecorder(nn.Sequential(layer), lambda name, pi: got.setdefault(name, pi)):
        layer(x)
    torch.testing.assert_close(got["0"], layer.attention(x))
    assert not layer.attn_fc2._forward_hooks  # removed on exit


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


def test_samplers_seeded_per_epoch_and_eval_shards_cover_everything_once():
    data = list(range(10))
    s = EpochSeededRandomSampler(data, seed=5)
    s.set_epoch(3)
    first = list(s)
    torch.manual_seed(123)  # global RNG state must not matter
    assert list(s) == first and sorted(first) == data
    s.set_epoch(4)
    assert list(s) != first
    shards = [list(ShardedEvalSampler(data, 3, r)) for r in range(3)]
    assert sorted(i for shard in shards for i in shard) == data and [len(x) for x in shards] == [4, 3, 3]


def test_atomic_save_survives_sigkill_mid_write(tmp_path):
    """A writer saving a 32 MB checkpoint in a loop is SIGKILLed at random moments: the file is
    always loadable (old or new), and stale temp files are cleaned up."""
    path = tmp_path / "last.ckpt"
    script = textwrap.dedent(
        f"""
        import torch
        from dyconv.utils.checkpoint_io import atomic_torch_save
        i = 0
        while True:
            atomic_torch_save({{"i": i, "w": torch.full((8 * 2**20,), float(i))}}, {str(path)!r})
            i += 1
        """
    )
    rng = random.Random(0)
    for _ in range(4):
        proc = subprocess.Popen([sys.executable, "-c", script])
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.05, 0.6))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        ckpt = torch.load(path, weights_only=True)
        assert torch.all(ckpt["w"] == float(ckpt["i"]))
    remove_stale_temp_files(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def test_checkpoint_file_permissions_follow_umask(tmp_path):
    atomic_torch_save({"a": 1}, tmp_path / "c.ckpt")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "c.ckpt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_resolve_ckpt_path_rules(tmp_path):
    assert resolve_ckpt_path(None, tmp_path) is None
    assert resolve_ckpt_path("last", tmp_path) is None  # nothing yet: fresh start
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    with pytest.raises(RunDirectoryError, match="ckpt_path=last"):
        resolve_ckpt_path(None, tmp_path)
    assert resolve_ckpt_path("last", tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    with pytest.raises(ConfigError, match="no such file"):
        resolve_ckpt_path(str(tmp_path / "nope.ckpt"), tmp_path)


def test_config_differences_ignore_data_location_and_loader_knobs():
    model = {"name": "dy_resnet10", "width_mult": 1.0}
    stored = {"model": model, "data": {"root": "/a", "num_workers": 4, "image_size": 64}}
    moved = {"model": dict(model), "data": {"root": "/b", "num_workers": 0, "image_size": 64}}
    assert config_differences(stored, moved) == []
    changed = {"model": {"name": "dy_resnet10", "width_mult": 0.5}, "data": {"root": "/a", "image_size": 32}}
    assert config_differences(stored, changed) == ["model.width_mult: 1.0 -> 0.5", "data.image_size: 64 -> 32"]


def test_csv_logger_appends_and_truncates_on_resume(tmp_path):
    a = ResumableCSVLogger(tmp_path, name="csv", version="")
    a.log_metrics({"loss": 1.0}, step=0)
    a.log_metrics({"loss": 0.5}, step=5)
    a.save()
    b = ResumableCSVLogger(tmp_path, name="csv", version="")  # a relaunch of the same run
    b.truncate_after(2)  # resumed from a checkpoint at step 2: the step-5 row is dropped
    b.log_metrics({"loss": 0.7, "acc": 0.1}, step=3)
    b.save()
    import csv

    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], r["loss"]) for r in rows] == [("0", "1.0"), ("3", "0.7")]
    assert rows[1]["acc"] == "0.1"


def test_segmentation_miou_is_dataset_level():
    task = SegmentationTask(nn.Identity(), num_classes=3, ignore_index=255)
    m = task.val_metrics
    pred = torch.tensor([[[0, 1], [2, 2]]])
    target = torch.tensor([[[0, 1], [2, 255]]])
    m.update(pred, target)
    m.update(torch.tensor([[[1, 1], [1, 1]]]), torch.tensor([[[1, 1], [0, 0]]]))
    out = m.compute()
    # Confusion over both batches (ignoring 255): class 0: tp 1, fp 0, fn 2 -> 1/3;
    # class 1: tp 3, fp 2, fn 0 -> 3/5; class 2: tp 1, fp 0, fn 0 -> 1.
    assert float(out["val/miou"]) == pytest.approx((1 / 3 + 3 / 5 + 1) / 3)
    assert float(out["val/pixel_acc"]) == pytest.approx(5 / 7)


def test_datamodule_global_batch_split(tmp_path):
    dm = MNISTOfflineDataModule(batch_size=64, splits=(100, 10, 10))

    class T:
        world_size, global_rank = 4, 1

    dm.trainer = T()
    assert dm.per_device(64) == 16
    with pytest.raises(ConfigError, match="multiple of 4"):
        dm.per_device(66)
    dm.setup("fit")
    assert len(dm.val_dataloader().sampler) == 3 and dm.train_dataloader().batch_size == 16


def test_model_checkpoint_monitor_and_paths_resolve_in_default_config(tmp_path):
    from hydra import compose, initialize_config_dir

    import dyconv.train  # registers resolvers

    with initialize_config_dir(config_dir=str(Path(dyconv.train.CONF_DIR)), version_base="1.3"):
        cfg = compose("train", overrides=["data=voc"])
    assert cfg.callbacks.model_checkpoint.monitor == "val/miou" and cfg.task._target_.endswith("SegmentationTask")
    with initialize_config_dir(config_dir=str(Path(dyconv.train.CONF_DIR)), version_base="1.3"):
        cfg = compose("train")
    assert cfg.callbacks.model_checkpoint.monitor == "val/acc" and cfg.model.name == "dy_simple_cnn"
