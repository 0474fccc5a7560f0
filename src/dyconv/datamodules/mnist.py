"""Full MNIST (LeCun, Cortes & Burges; CC BY-SA 3.0): 60k train + 10k test handwritten digits, 1x28x28.

Read by ``torchvision.datasets.MNIST`` from its layout ``root/MNIST/raw/{train,t10k}-{images-idx3,
labels-idx1}-ubyte``. The four ``.gz`` files (11 MB) are fetched by dyconv's own downloader from
torchvision's mirror list (https://ossci-datasets.s3.amazonaws.com/mnist/, then
http://yann.lecun.com/exdb/mnist/), md5-verified and decompressed atomically. The 60k training
images are split 55k/5k into train/val with a fixed seed; test is the official 10k.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import Dataset
from torchvision.datasets import MNIST

from dyconv.datamodules.base import BaseDataModule
from dyconv.datamodules.download import (
    Archive,
    ChecksumError,
    DatasetNotFoundError,
    check_data_root,
    download_file,
    ensure_gunzipped,
    resolve_root,
    verify_checksum,
    write_marker,
)
from dyconv.datamodules.mnist_offline import MNIST_MEAN, MNIST_STD, digit_pixels
from dyconv.errors import ConfigError

__all__ = ["MNIST_FILES", "MNISTDataModule"]

_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
#: The four official files with their published md5 (as in ``torchvision.datasets.MNIST.resources``).
MNIST_FILES: tuple[Archive, ...] = tuple(
    Archive(urls=tuple(m + name for m in _MIRRORS), filename=name, md5=md5, size=size)
    for name, md5, size in (
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "9.9 MB"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "29 kB"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "1.6 MB"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "5 kB"),
    )
)

_LAYOUT = """\
<root>/MNIST/raw/
  train-images-idx3-ubyte   (or the .gz as downloaded; it is decompressed for you)
  train-labels-idx1-ubyte
  t10k-images-idx3-ubyte
  t10k-labels-idx1-ubyte"""


class _DigitDataset(Dataset):
    """uint8 digits (N, 28, 28) + labels, transformed per item (keeps memory at the uint8 size)."""

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[i].unsqueeze(0)), int(self.labels[i])


class MNISTDataModule(BaseDataModule):
    """Full MNIST (10 classes), 55k/5k/10k train/val/test.

    Subclasses for other datasets in the same idx format (Fashion-MNIST) set the class attributes
    ``NAME`` (the torchvision folder), ``DATASET`` (the torchvision class), ``FILES``, ``LAYOUT``,
    ``SIZE`` and ``mean``/``std``.

    Args:
        root: folder that holds ``MNIST/raw`` (relative paths are taken from the current directory).
        download: fetch the four files (11 MB) if missing.
        val_size: training images held out (seeded) for validation; 5000 gives 55k/5k.
        split_seed: seed of that split.
        image_size: side length; bilinear resize when it is not 28.
        in_channels: 1, or 3 to repeat the gray channel (for ImageNet-style models).
        **kwargs: :class:`BaseDataModule` arguments (global ``batch_size``, workers, ...).
    """

    mean = (MNIST_MEAN,)
    std = (MNIST_STD,)

    NAME = "MNIST"
    DATASET: type[MNIST] = MNIST
    FILES = MNIST_FILES
    LAYOUT = _LAYOUT
    SIZE = "11 MB"

    def __init__(
        self,
        *,
        root: str | os.PathLike[str] = "datasets",
        download: bool = False,
        val_size: int = 5000,
        split_seed: int = 0,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        **kwargs,
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
        if in_channels not in (1, 3):
            raise ConfigError(f"data.in_channels must be 1 or 3 for MNIST, got {in_channels}")
        if val_size < 1:
            raise ConfigError(f"data.val_size must be >= 1, got {val_size}")
        self.root = resolve_root(root)
        self.download = bool(download)
        self.val_size = int(val_size)
        self.split_seed = int(split_seed)

    @property
    def raw_dir(self) -> Path:
        return self.root / self.NAME / "raw"

    def _missing(self) -> list[str]:
        return [f.filename[:-3] for f in self.FILES if not (self.raw_dir / f.filename[:-3]).is_file()]

    def _how(self) -> str:
        urls = ", ".join(f.url for f in self.FILES)
        return f"set data.download=true (fetches {self.SIZE}: {urls}), or copy the four files into {self.raw_dir}"

    def _not_found(self, problem: str) -> DatasetNotFoundError:
        return DatasetNotFoundError.for_dataset(
            self.NAME, where=self.raw_dir, problem=problem, layout=self.LAYOUT, how=self._how()
        )

    def _writes(self) -> str | None:
        """What ``prepare_data`` is about to write into ``raw_dir`` (for the root check), or None."""
        missing = self._missing()
        if missing and self.download:
            return f"data.download=true downloads {self.NAME} ({self.SIZE}) into {self.raw_dir}"
        if any((self.raw_dir / f"{name}.gz").is_file() for name in missing):
            return f"the .gz files in {self.raw_dir} are decompressed there"
        return None

    def check_root(self, *, writing: bool = False) -> None:
        """Refuse a ``root`` that cannot hold ``raw_dir`` (a file, unreadable, or unwritable when
        ``writing`` and files are to be written) in one message, before anything is touched."""
        writes = self._writes if writing else None
        check_data_root(self.root, layout=self.LAYOUT, folders=(self.raw_dir,), writes=writes,
                        read_only="data.root" in self.read_only)

    def prepare_data(self) -> None:
        """Decompress ``.gz`` files already there; download the missing ones when ``download`` is set."""
        self.check_root(writing=True)
        fetched = False
        for f in self.FILES:
            raw, gz = self.raw_dir / f.filename[:-3], self.raw_dir / f.filename
            if raw.is_file():
                continue
            if self.download:
                download_file(f.urls, gz, md5=f.md5)  # reuses a valid .gz, replaces a bad one
                fetched = True
            elif gz.is_file():
                try:
                    verify_checksum(gz, md5=f.md5)
                except ChecksumError as e:
                    raise ChecksumError(f"{e}. Delete {gz}, or set data.download=true to fetch it again.") from None
            else:
                continue
            ensure_gunzipped(gz, raw)
        missing = self._missing()
        if missing:
            raise self._not_found(f"missing {', '.join(missing)}")
        if fetched:  # a complete folder is left untouched (it may be read-only)
            write_marker(self.raw_dir, files=[f.filename for f in self.FILES])

    def _transform(self) -> Callable[[torch.Tensor], torch.Tensor]:
        return functools.partial(
            digit_pixels, image_size=self.image_size, in_channels=self.in_channels, mean=self.mean[0], std=self.std[0]
        )

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.check_root()
        missing = self._missing()
        if missing:
            raise self._not_found(f"missing {', '.join(missing)}")
        train = self.DATASET(str(self.root), train=True, download=False)
        test = self.DATASET(str(self.root), train=False, download=False)
        self.check_num_classes(int(train.targets.max()) + 1, f"{self.NAME} in {self.raw_dir}")
        n = len(train.targets)
        if self.val_size >= n:
            raise ConfigError(f"data.val_size={self.val_size} must be smaller than the {n} training images")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        idx_val, idx_train = perm[: self.val_size], perm[self.val_size :]
        transform = self._transform()
        self.train_set = _DigitDataset(train.data[idx_train], train.targets[idx_train], transform)
        self.val_set = _DigitDataset(train.data[idx_val], train.targets[idx_val], transform)
        self.test_set = _DigitDataset(test.data, test.targets, transform)
