"""Samplers and the global batch split of the DataModule base."""

from __future__ import annotations

import pytest
import torch

from dyconv.datamodules import EpochSeededRandomSampler, MNISTOfflineDataModule
from dyconv.datamodules.base import ShardedEvalSampler
from dyconv.errors import ConfigError


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


def test_a_resumed_fit_draws_the_resumed_epochs_order_from_the_first_batch():
    """Lightning builds a resumed fit's train iterator before it sets the sampler's epoch, and
    DataLoader workers draw their first indices when the iterator is built: the loader must
    start at the fit loop's epoch (a run resumed at epoch 3 with workers replayed epoch 0)."""
    from types import SimpleNamespace

    dm = MNISTOfflineDataModule(batch_size=8, splits=(40, 8, 8), seed=11)
    dm.setup("fit")
    progress = SimpleNamespace(current=SimpleNamespace(processed=3))
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0, fit_loop=SimpleNamespace(epoch_progress=progress))
    expected = EpochSeededRandomSampler(dm.train_set, seed=11)
    expected.set_epoch(3)
    assert list(dm.train_dataloader().sampler) == list(expected)
    dm.trainer = None  # no trainer (a loader built by hand): epoch 0
    expected.set_epoch(0)
    assert list(dm.train_dataloader().sampler) == list(expected)
