"""What every dyconv DataModule shares: the global batch split over devices, seeded per-epoch
shuffling (exact resume, DDP-aware), worker settings, and the metadata other configs read."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from dyconv.checks import check_global_batch
from dyconv.datamodules.images import verify_files
from dyconv.datamodules.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    classification_eval_transform,
    classification_train_transform,
)
from dyconv.errors import ConfigError

__all__ = ["BaseDataModule", "EpochSeededRandomSampler", "ShardedEvalSampler", "check_global_batch"]


class EpochSeededRandomSampler(Sampler[int]):
    """A random permutation that depends only on ``(seed, epoch)``, not on global RNG state.

    Lightning calls ``set_epoch`` at the start of every epoch, so a run resumed from an
    end-of-epoch checkpoint sees exactly the order the uninterrupted run saw.
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.num_samples = len(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=g).tolist())

    def __len__(self) -> int:
        return self.num_samples


class ShardedEvalSampler(Sampler[int]):
    """Rank ``r`` of ``world`` evaluates samples ``r, r + world, ...``: every sample exactly once.

    ``DistributedSampler`` pads the last rank with repeated samples, which biases split-level
    metrics (accuracy, mIoU); torchmetrics syncs uneven shards correctly.
    """

    def __init__(self, data_source: Sized, num_replicas: int, rank: int) -> None:
        self.num_samples_total = len(data_source)
        self.num_replicas, self.rank = int(num_replicas), int(rank)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.num_samples_total, self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, self.num_samples_total, self.num_replicas))



class BaseDataModule(L.LightningDataModule):
    """Base for every dataset: subclasses set ``train_set``/``val_set``/``test_set`` in ``setup``.

    Args:
        batch_size: the *global* batch (as papers quote it), divided by the world size; a batch
            that does not divide is an error.
        num_workers, pin_memory, persistent_workers: ``DataLoader`` settings.
        seed: seeds the per-epoch shuffling (and any split a subclass makes).
        num_classes, in_channels, image_size: the dataset's metadata, read by model and task
            configs through interpolation; subclasses check them against the data and use
            ``in_channels``/``image_size`` in their transforms.
        eval_batch_size: global batch for val/test (default: ``batch_size``).
        drop_last: drop the last incomplete training batch.
        verify: decode every file of every split once in ``prepare_data`` and raise one
            :class:`~dyconv.datamodules.images.CorruptImageError` listing all that fail (datasets
            that read image files; they implement :meth:`files_to_verify`).
    """

    #: Per-channel normalisation of pixels in [0, 1] (exported with models for serving).
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    #: The folder keys (``"data.root"``, ``"data.sbd_root"``) whose value eval/inspect/export took
    #: from a checkpoint: ``prepare_data`` refuses (one line) anything it would write there
    #: (decompress, download, cache).
    read_only: frozenset[str] = frozenset()

    def __init__(
        self,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        pin_memory: bool = False,
        persistent_workers: bool = False,
        seed: int = 0,
        num_classes: int,
        in_channels: int,
        image_size: int,
        eval_batch_size: int | None = None,
        drop_last: bool = False,
        verify: bool = False,
    ) -> None:
        super().__init__()
        check_global_batch(batch_size)
        if num_workers < 0:
            raise ConfigError(f"data.num_workers must be >= 0, got {num_workers}")
        self.batch_size = int(batch_size)
        self.eval_batch_size = int(eval_batch_size or batch_size)
        self.num_workers = int(num_workers)
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.seed = int(seed)
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.image_size = int(image_size)
        self.drop_last = bool(drop_last)
        self.verify = bool(verify)
        if self.verify and type(self).files_to_verify is BaseDataModule.files_to_verify:
            raise ConfigError(f"data.verify=true is not supported by {type(self).__name__}; set data.verify=false")
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    # ------------------------------------------------------------------ distribution
    @property
    def world_size(self) -> int:
        trainer = self.trainer
        return int(trainer.world_size) if trainer is not None else 1

    @property
    def global_rank(self) -> int:
        trainer = self.trainer
        return int(trainer.global_rank) if trainer is not None else 0

    def set_rgb_transforms(self, augment: str, **options: Any) -> None:
        """``train_transform`` / ``eval_transform`` of an RGB classification dataset normalised
        with ImageNet's statistics (``options``: ``padding``, ``scale``, ``hflip``,
        ``eval_crop_ratio``, as :func:`~dyconv.datamodules.transforms.classification_train_transform`)."""
        norm = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        self.train_transform = classification_train_transform(augment, self.image_size, **options, **norm)
        self.eval_transform = classification_eval_transform(
            self.image_size, crop_ratio=options.get("eval_crop_ratio"), **norm
        )

    def per_device(self, global_batch: int) -> int:
        """The per-process batch for a global batch; raises if it does not divide."""
        world = self.world_size
        check_global_batch(global_batch, world)
        return global_batch // world

    # ------------------------------------------------------------------ loaders
    collate_fn: Callable[[list[Any]], Any] | None = None

    def _loader(self, dataset: Dataset | None, split: str, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}.setup() did not create the {split} split")
        world = self.world_size
        sampler: Sampler[int] | None
        if world > 1 and shuffle:
            sampler = DistributedSampler(
                dataset, num_replicas=world, rank=self.global_rank, shuffle=True, seed=self.seed,
                drop_last=self.drop_last,
            )
        elif world > 1:
            sampler = ShardedEvalSampler(dataset, world, self.global_rank)
        elif shuffle:
            sampler = EpochSeededRandomSampler(dataset, seed=self.seed)
        else:
            sampler = None
        if shuffle and sampler is not None:
            # Lightning sets the epoch before each epoch, but a resumed fit builds the iterator
            # first, and DataLoader workers draw their first indices when it is built: without
            # this, a run resumed at epoch e with num_workers > 0 replays epoch 0's order.
            sampler.set_epoch(self._fit_epoch())  # type: ignore[attr-defined]
        return DataLoader(
            dataset,
            batch_size=self.per_device(self.batch_size if shuffle else self.eval_batch_size),
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            drop_last=shuffle and self.drop_last,
            collate_fn=self.collate_fn,
            # Eval loaders need no randomness: a private generator keeps their creation from
            # drawing the global RNG (exact resume from a checkpoint written before validation).
            generator=None if shuffle else torch.Generator(),
        )

    def _fit_epoch(self) -> int:
        """The epoch the attached trainer's fit loop is at (restored on resume), else 0."""
        trainer = getattr(self, "trainer", None)
        progress = getattr(getattr(trainer, "fit_loop", None), "epoch_progress", None)
        return int(progress.current.processed) if progress is not None else 0

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, "train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, "val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, "test", shuffle=False)

    # ------------------------------------------------------------------ verification
    def files_to_verify(self) -> list[tuple[str, Callable[[str], object]]]:
        """Every file of every split with the reader that decodes it (datasets of image files override)."""
        raise NotImplementedError

    def verify_data(self) -> None:
        """With ``data.verify=true``: decode every file once and list all bad ones (called by ``prepare_data``)."""
        if self.verify:
            verify_files(self.files_to_verify(), dataset=type(self).__name__.removesuffix("DataModule"))

    def check_num_classes(self, found: int, where: str) -> None:
        """Fail early (with the fix) when the config's num_classes disagrees with the data."""
        if found != self.num_classes:
            raise ConfigError(
                f"data.num_classes={self.num_classes} but {where} has {found} classes; "
                f"set data.num_classes={found}"
            )
