"""Tiny ImageNet (Stanford CS231n; images from ImageNet, for non-commercial research and education):
200 classes, 64x64, 500 train + 50 val + 50 unlabelled test images per class.

Archive http://cs231n.stanford.edu/tiny-imagenet-200.zip (md5 90528d7ca1a48142e341f4ef8d21d0de),
read in the layout it is distributed in, without re-organising anything:

* ``wnids.txt`` is not sorted; class index = position in ``sorted(wnids)`` (ImageFolder order);
* validation images are flat in ``val/images`` with labels in ``val/val_annotations.txt``;
* some JPEGs are grayscale and are converted to RGB.

The labelled ``val`` split is the validation and the test set (the published numbers are on it);
``holdout`` optionally moves part of train to a seeded validation split for model selection.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import Dataset

from dyconv.datamodules.base import BaseDataModule
from dyconv.datamodules.download import (
    Archive,
    DatasetNotFoundError,
    check_archive_root,
    check_not_interrupted,
    download_and_extract,
    resolve_root,
)
from dyconv.datamodules.images import load_image
from dyconv.datamodules.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    classification_eval_transform,
    classification_train_transform,
)
from dyconv.errors import ConfigError

__all__ = ["TINY_IMAGENET_ARCHIVE", "ImageListDataset", "TinyImageNetDataModule", "load_rgb", "read_tinyimagenet"]

TINY_IMAGENET_ARCHIVE = Archive(
    urls=("http://cs231n.stanford.edu/tiny-imagenet-200.zip",),
    filename="tiny-imagenet-200.zip",
    md5="90528d7ca1a48142e341f4ef8d21d0de",
    size="237 MB",
)
_FOLDER = "tiny-imagenet-200"
_LAYOUT = """\
<root>/tiny-imagenet-200/
  wnids.txt                            200 wnids, one a line (any order)
  words.txt
  train/<wnid>/images/<wnid>_<i>.JPEG  500 per class
  train/<wnid>/<wnid>_boxes.txt
  val/images/val_<i>.JPEG              10,000, flat
  val/val_annotations.txt              file <tab> wnid <tab> x0 y0 x1 y1"""
_IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")


def load_rgb(path: str | os.PathLike[str]) -> Image.Image:
    """Open an image as RGB (Tiny ImageNet and ImageNet hold a few grayscale / CMYK JPEGs); raises
    :class:`~dyconv.datamodules.images.CorruptImageError` naming a file that does not decode."""
    return load_image(path, "RGB")


class ImageListDataset(Dataset):
    """``(path, label)`` samples read with :func:`load_rgb` and transformed; ``samples`` is public."""

    def __init__(self, samples: Sequence[tuple[str, int]], transform: Callable[[Image.Image], Any]) -> None:
        self.samples = list(samples)
        self.targets = [label for _, label in self.samples]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path, label = self.samples[i]
        return self.transform(load_rgb(path)), label


def read_tinyimagenet(folder: Path) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]], list[str]]:
    """Read the distributed layout: ``(sorted wnids, train samples, val samples, problems)``.

    ``problems`` lists what is missing or inconsistent (empty when the tree is complete), so the
    caller can raise one message naming all of it.
    """
    problems: list[str] = []
    wnids_file, ann_file = folder / "wnids.txt", folder / "val" / "val_annotations.txt"
    if not wnids_file.is_file():
        return [], [], [], [f"{wnids_file} is missing"]
    wnids = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
    index = {w: i for i, w in enumerate(wnids)}
    train: list[tuple[str, int]] = []
    for wnid in wnids:
        images = folder / "train" / wnid / "images"
        files = []
        if images.is_dir():
            files = sorted(e.name for e in os.scandir(images) if e.name.lower().endswith(_IMAGE_SUFFIXES))
        if not files:
            problems.append(f"no training images in {images}")
        train.extend((str(images / f), index[wnid]) for f in files)
    val: list[tuple[str, int]] = []
    if not ann_file.is_file():
        problems.append(f"{ann_file} is missing")
    else:
        val_dir = folder / "val" / "images"
        present = {e.name for e in os.scandir(val_dir)} if val_dir.is_dir() else set()
        missing = 0
        for n, line in enumerate(ann_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split("\t")
            if len(parts) < 2 or parts[1] not in index:
                problems.append(f"{ann_file}:{n}: {line!r} does not name a wnid of wnids.txt")
                continue
            if parts[0] not in present:
                missing += 1
            val.append((str(val_dir / parts[0]), index[parts[1]]))
        if missing:
            problems.append(f"{missing} of the {len(val)} images listed in {ann_file.name} are missing from {val_dir}")
        if not val:
            problems.append(f"{ann_file} lists no images")
    return wnids, train, val, problems


class TinyImageNetDataModule(BaseDataModule):
    """Tiny ImageNet (200 classes, 3x64x64) from the official zip, read as distributed.

    Args:
        root: folder that holds ``tiny-imagenet-200/`` (relative: from the current directory).
        download: fetch (237 MB) and extract the official zip when not there.
        augment: ``crop_pad`` (RandomCrop(image_size, padding), the reference), ``resized_crop``
            or ``none``; a horizontal flip follows unless ``hflip`` is false.
        padding: zero padding of ``crop_pad``.
        scale: area range of ``resized_crop``.
        hflip: random horizontal flip in training.
        holdout: training images (seeded) moved to a validation split; 0 validates on the official
            val split. Test is always the official val split.
        split_seed: seed of the holdout.
        image_size: side length; val images are resized to it (a no-op at 64).
        **kwargs: :class:`BaseDataModule` arguments (global ``batch_size``, workers, ...).
    """

    mean = tuple(IMAGENET_MEAN)
    std = tuple(IMAGENET_STD)

    ARCHIVE = TINY_IMAGENET_ARCHIVE

    def __init__(
        self,
        *,
        root: str | os.PathLike[str] = "datasets",
        download: bool = False,
        augment: str = "crop_pad",
        padding: int = 4,
        scale: Sequence[float] = (0.08, 1.0),
        hflip: bool = True,
        holdout: int = 0,
        split_seed: int = 0,
        num_classes: int = 200,
        in_channels: int = 3,
        image_size: int = 64,
        **kwargs,
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
        if in_channels != 3:
            raise ConfigError(f"data.in_channels must be 3 for Tiny ImageNet (RGB), got {in_channels}")
        if holdout < 0:
            raise ConfigError(f"data.holdout must be >= 0, got {holdout}")
        self.root = resolve_root(root)
        self.download = bool(download)
        self.train_transform = classification_train_transform(
            augment, self.image_size, padding=padding, scale=scale, hflip=hflip, mean=IMAGENET_MEAN, std=IMAGENET_STD
        )
        self.eval_transform = classification_eval_transform(self.image_size, mean=IMAGENET_MEAN, std=IMAGENET_STD)
        self.holdout = int(holdout)
        self.split_seed = int(split_seed)
        self.wnids: list[str] = []

    @property
    def folder(self) -> Path:
        return self.root / _FOLDER

    def _read(self) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
        a = self.ARCHIVE
        if not self.folder.is_dir():
            problems = ["the folder does not exist"]
        else:
            check_not_interrupted(self.folder, "Tiny ImageNet", _LAYOUT)
            wnids, train, val, problems = read_tinyimagenet(self.folder)
        if problems:
            shown = "; ".join(problems[:5]) + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
            raise DatasetNotFoundError.for_dataset(
                "Tiny ImageNet",
                where=self.folder,
                problem=shown,
                layout=_LAYOUT,
                how=f"set data.download=true to fetch {a.url} ({a.size}) and extract it into {self.root}, "
                f"or download and unzip it there yourself (data.root is the folder that holds {_FOLDER}/)",
            )
        return wnids, train, val

    def check_root(self, *, writing: bool = False) -> None:
        """Refuse a ``root`` that cannot hold ``tiny-imagenet-200/`` (a file, unreadable, or
        unwritable when ``writing`` and a download is due) in one message, before anything is touched."""
        check_archive_root(self.root, self.folder, self.ARCHIVE, layout=_LAYOUT, download=self.download,
                           writing=writing, read_only="data.root" in self.read_only)

    def prepare_data(self) -> None:
        self.check_root(writing=True)
        if self.download:
            download_and_extract(self.ARCHIVE, download_dir=self.root, extract_dir=self.root, dataset_dir=self.folder)
        self._read()
        self.verify_data()

    def files_to_verify(self) -> list[tuple[str, Callable[[str], object]]]:
        _, train, val = self._read()
        return [(path, load_rgb) for path, _ in train + val]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.check_root()
        wnids, train, val = self._read()
        self.check_num_classes(len(wnids), f"{self.folder / 'wnids.txt'}")
        self.wnids = wnids
        official_val = ImageListDataset(val, self.eval_transform)
        if self.holdout:
            if self.holdout >= len(train):
                raise ConfigError(f"data.holdout={self.holdout} must be smaller than the {len(train)} training images")
            perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(self.split_seed)).tolist()
            held = [train[i] for i in sorted(perm[: self.holdout])]
            train = [train[i] for i in sorted(perm[self.holdout :])]
            self.val_set = ImageListDataset(held, self.eval_transform)
        else:
            self.val_set = official_val
        self.train_set = ImageListDataset(train, self.train_transform)
        self.test_set = official_val
