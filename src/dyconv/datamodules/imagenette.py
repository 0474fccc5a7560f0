"""Imagenette (fast.ai, Apache 2.0; images from ImageNet): 10 easy ImageNet classes, ~9.5k train /
~3.9k val, https://github.com/fastai/imagenette.

Archives (md5 as published in ``torchvision.datasets.Imagenette``):
``full`` https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz,
``320px`` https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz (shorter side 320),
``160px`` https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz.
Layout ``root/imagenette2-320/{train,val}/<wnid>/*.JPEG``. dyconv downloads and extracts safely;
``torchvision.datasets.Imagenette`` then reads the tree.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

from torchvision.datasets import Imagenette
from torchvision.datasets.folder import make_dataset

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
)
from dyconv.errors import ConfigError

__all__ = ["IMAGENETTE_ARCHIVES", "ImagenetteDataModule"]

IMAGENETTE_ARCHIVES: dict[str, Archive] = {
    "full": Archive(
        urls=("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz",),
        filename="imagenette2.tgz",
        md5="fe2fc210e6bb7c5664d602c3cd71e612",
        size="1.5 GB",
    ),
    "320px": Archive(
        urls=("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz",),
        filename="imagenette2-320.tgz",
        md5="3df6f0d01a2c9592104656642f5e78a3",
        size="326 MB",
    ),
    "160px": Archive(
        urls=("https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",),
        filename="imagenette2-160.tgz",
        md5="e793b78cc4c9e9a4ccc0c1155377a412",
        size="94 MB",
    ),
}


class ImagenetteDataModule(BaseDataModule):
    """Imagenette (10 classes) with ImageNet-style transforms.

    Args:
        root: folder that holds ``imagenette2[-320|-160]/`` (relative: from the current directory).
        download: fetch and extract the archive of ``size`` when not there.
        size: ``full``, ``320px`` (default) or ``160px``: which archive.
        augment: ``resized_crop`` (default), ``crop_pad`` or ``none``; then a flip unless ``hflip`` is false.
        scale: area range of RandomResizedCrop.
        padding: zero padding of ``crop_pad``.
        hflip: random horizontal flip in training.
        eval_crop_ratio: eval resizes the short side to ``image_size / eval_crop_ratio`` and center crops
            ``image_size`` (0.875: 256 -> 224); null resizes to a square.
        image_size: training crop and eval side.
        **kwargs: :class:`BaseDataModule` arguments (global ``batch_size``, workers, ...).
    """

    mean = tuple(IMAGENET_MEAN)
    std = tuple(IMAGENET_STD)

    ARCHIVES = IMAGENETTE_ARCHIVES

    def __init__(
        self,
        *,
        root: str | os.PathLike[str] = "datasets",
        download: bool = False,
        size: str = "320px",
        augment: str = "resized_crop",
        scale: Sequence[float] = (0.08, 1.0),
        padding: int = 4,
        hflip: bool = True,
        eval_crop_ratio: float | None = 0.875,
        num_classes: int = 10,
        in_channels: int = 3,
        image_size: int = 224,
        **kwargs,
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
        if size not in self.ARCHIVES:
            raise ConfigError(f"data.size must be one of {list(self.ARCHIVES)}, got {size!r}")
        if in_channels != 3:
            raise ConfigError(f"data.in_channels must be 3 for Imagenette (RGB), got {in_channels}")
        self.root = resolve_root(root)
        self.download = bool(download)
        self.size = size
        self.wnids: list[str] = []
        self.set_rgb_transforms(augment, padding=padding, scale=scale, hflip=hflip, eval_crop_ratio=eval_crop_ratio)

    @property
    def archive(self) -> Archive:
        return self.ARCHIVES[self.size]

    @property
    def folder(self) -> Path:
        return self.root / Path(self.archive.filename).name.removesuffix(".tgz")

    def _layout(self) -> str:
        name = self.folder.name
        return f"<root>/{name}/\n  train/<wnid>/*.JPEG   10 class folders (n01440764, ...)\n  val/<wnid>/*.JPEG"

    def _check(self) -> list[str]:
        """Raise unless both splits hold the same, known, non-empty class folders; return the wnids."""
        problems: list[str] = []
        classes: dict[str, list[str]] = {}
        if not self.folder.is_dir():
            problems.append("the folder does not exist")
        else:
            check_not_interrupted(self.folder, "Imagenette", self._layout())
            for split in ("train", "val"):
                d = self.folder / split
                if not d.is_dir():
                    problems.append(f"{d} is missing")
                    continue
                classes[split] = sorted(e.name for e in os.scandir(d) if e.is_dir())
                unknown = [w for w in classes[split] if w not in Imagenette._WNID_TO_CLASS]
                if unknown:
                    problems.append(f"{d} has folders that are not Imagenette classes: {unknown[:5]}")
                empty = [w for w in classes[split] if not any(os.scandir(d / w))]
                if empty or not classes[split]:
                    problems.append(f"{d} has no images for {empty or 'any class'}")
            if len(classes) == 2 and classes["train"] != classes["val"]:
                problems.append("train/ and val/ hold different class folders")
        if problems:
            a = self.archive
            raise DatasetNotFoundError.for_dataset(
                f"Imagenette ({self.size})",
                where=self.folder,
                problem="; ".join(problems),
                layout=self._layout(),
                how=f"set data.download=true to fetch {a.url} ({a.size}) and extract it into {self.root}, "
                "or download and extract it there yourself",
            )
        return classes["train"]

    def check_root(self, *, writing: bool = False) -> None:
        """Refuse a ``root`` that cannot hold the dataset folder (a file, unreadable, or unwritable
        when ``writing`` and a download is due) in one message, before anything is touched."""
        check_archive_root(self.root, self.folder, self.archive, layout=self._layout(), download=self.download,
                           writing=writing, read_only="data.root" in self.read_only)

    def prepare_data(self) -> None:
        self.check_root(writing=True)
        if self.download:
            download_and_extract(self.archive, download_dir=self.root, extract_dir=self.root, dataset_dir=self.folder)
        self._check()
        self.verify_data()

    def files_to_verify(self) -> list[tuple[str, Callable[[str], object]]]:
        index = {w: i for i, w in enumerate(self._check())}
        return [
            (path, load_image)
            for split in ("train", "val")
            for path, _ in make_dataset(str(self.folder / split), index, extensions=".jpeg")
        ]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.check_root()
        wnids = self._check()
        self.check_num_classes(len(wnids), f"{self.folder / 'train'}")
        self.wnids = wnids
        root = str(self.root)
        self.train_set = Imagenette(
            root, split="train", size=self.size, transform=self.train_transform, loader=load_image
        )
        self.val_set = Imagenette(root, split="val", size=self.size, transform=self.eval_transform, loader=load_image)
        self.test_set = self.val_set
