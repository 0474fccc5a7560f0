"""ImageNet ILSVRC-2012 classification (https://image-net.org; research use under its terms of access):
1000 classes, 1.28M train / 50k val. No download (it needs an account): provide the usual
ImageFolder layout ``root/{train,val}/<wnid>/*.JPEG``. The official validation archive is flat
(``ILSVRC2012_val_*.JPEG``); the error message explains how to sort it into class folders.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from torchvision.datasets import ImageFolder
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from dyconv.datamodules.base import BaseDataModule
from dyconv.datamodules.download import DatasetNotFoundError, check_data_root, resolve_root
from dyconv.datamodules.images import load_image
from dyconv.datamodules.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
)
from dyconv.errors import ConfigError

__all__ = ["ImageNetDataModule"]

_LAYOUT = """\
<root>/
  train/n01440764/*.JPEG   1000 class folders (from ILSVRC2012_img_train.tar: one tar per class, extract each)
  val/n01440764/*.JPEG     the same 1000 class folders, 50 images each"""

_HOW = (
    "download ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar from https://image-net.org (account needed) "
    "and extract them under data.root. The validation archive is flat (val/ILSVRC2012_val_00000001.JPEG, ...): "
    "sort it into val/<wnid>/ with the labels of the devkit (ILSVRC2012_validation_ground_truth.txt, indices "
    "into meta.mat) or of Kaggle's LOC_val_solution.csv, e.g. with the widely used valprep.sh from "
    "https://github.com/soumith/imagenetloader.torch, which creates the folders and moves each image"
)


class ImageNetDataModule(BaseDataModule):
    """ImageNet in ImageFolder layout, with the standard transforms.

    Args:
        root: folder that holds ``train/`` and ``val/`` (relative: from the current directory).
        augment: ``resized_crop`` (RandomResizedCrop(image_size) + flip, default), ``crop_pad`` or ``none``.
        scale: area range of RandomResizedCrop.
        padding: zero padding of ``crop_pad``.
        hflip: random horizontal flip in training.
        eval_crop_ratio: eval resize short side to ``image_size / ratio`` then center crop (0.875: 256 -> 224).
        image_size: training crop and eval side (224).
        **kwargs: :class:`BaseDataModule` arguments (global ``batch_size``, workers, ...).
    """

    mean = tuple(IMAGENET_MEAN)
    std = tuple(IMAGENET_STD)

    def __init__(
        self,
        *,
        root: str | os.PathLike[str] = "datasets/imagenet",
        download: bool = False,
        augment: str = "resized_crop",
        scale: Sequence[float] = (0.08, 1.0),
        padding: int = 4,
        hflip: bool = True,
        eval_crop_ratio: float | None = 0.875,
        num_classes: int = 1000,
        in_channels: int = 3,
        image_size: int = 224,
        **kwargs,
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
        if download:
            raise ConfigError(
                "ImageNet cannot be downloaded automatically (it needs an image-net.org account); "
                f"set data.download=false and provide it yourself: {_HOW}"
            )
        if in_channels != 3:
            raise ConfigError(f"data.in_channels must be 3 for ImageNet (RGB), got {in_channels}")
        self.root = resolve_root(root)
        self.wnids: list[str] = []
        self.set_rgb_transforms(augment, padding=padding, scale=scale, hflip=hflip, eval_crop_ratio=eval_crop_ratio)

    def check_root(self) -> None:
        """Refuse a ``root`` (or ``train``/``val`` inside it) that is a file or unreadable, in one message."""
        check_data_root(self.root, layout=_LAYOUT, folders=(self.root / "train", self.root / "val"))

    def _check(self) -> None:
        problems: list[str] = []
        classes: dict[str, list[str]] = {}
        for split in ("train", "val"):
            d = self.root / split
            if not d.is_dir():
                problems.append(f"{d} is missing")
                continue
            entries = list(os.scandir(d))
            classes[split] = sorted(e.name for e in entries if e.is_dir())
            flat = sum(1 for e in entries if e.is_file() and e.name.lower().endswith((".jpeg", ".jpg")))
            if flat:
                problems.append(
                    f"{d} holds {flat} images directly instead of in class folders (the official flat layout); "
                    "sort them into <wnid>/ folders as explained below"
                )
            elif not classes[split]:
                problems.append(f"{d} has no class folders")
        if len(classes) == 2 and classes["train"] and classes["val"] and classes["train"] != classes["val"]:
            only_train = sorted(set(classes["train"]) - set(classes["val"]))
            only_val = sorted(set(classes["val"]) - set(classes["train"]))
            problems.append(
                f"train/ and val/ hold different class folders (only in train: {only_train[:3]}, "
                f"only in val: {only_val[:3]})"
            )
        if problems:
            raise DatasetNotFoundError.for_dataset(
                "ImageNet", where=self.root, problem="; ".join(problems), layout=_LAYOUT, how=_HOW
            )

    def prepare_data(self) -> None:
        self.check_root()
        self._check()
        self.verify_data()

    def files_to_verify(self) -> list[tuple[str, Callable[[str], object]]]:
        self._check()
        files = []
        for split in ("train", "val"):
            d = str(self.root / split)
            files += [(path, load_image) for path, _ in make_dataset(d, find_classes(d)[1], extensions=IMG_EXTENSIONS)]
        return files

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.check_root()
        self._check()
        train = ImageFolder(str(Path(self.root, "train")), transform=self.train_transform, loader=load_image)
        self.check_num_classes(len(train.classes), f"{self.root / 'train'}")
        self.wnids = train.classes
        self.train_set = train
        self.val_set = ImageFolder(str(Path(self.root, "val")), transform=self.eval_transform, loader=load_image)
        self.test_set = self.val_set
