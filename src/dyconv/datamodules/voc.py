"""Pascal VOC 2012 segmentation, alone or with SBD ("trainaug"), for DeepLabV3+.

* VOC 2012 (Everingham et al.; images under Flickr terms, annotations free for research):
  http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar (md5
  6cd6e144f989b92b3379bac3b3de84fd, 1.9 GB), read in its official layout ``root/VOCdevkit/VOC2012``:
  ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette PNG, class ids 0..20, 255 =
  boundary / ignore), ``ImageSets/Segmentation/{train,val}.txt``; 1,464 train / 1,449 val images.
* SBD, the Semantic Boundaries Dataset (Hariharan et al., ICCV 2011):
  http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz
  (md5 82b4d87ceb2ed10f6038a1cba92111cb, 1.4 GB). Its ``benchmark_RELEASE/dataset`` folder is
  extracted to ``root/SBD`` (or ``data.sbd_root``): ``img/<id>.jpg``, ``cls/<id>.mat`` (struct
  ``GTcls`` with a uint8 ``Segmentation`` map), ``train.txt`` (8,498), ``val.txt`` (2,857).

``voc_sbd`` trains on VOC train + SBD train + SBD val **minus every VOC val id** (10,582 images on
the real data) and evaluates on VOC val; for an id with a VOC mask the VOC mask is used.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
from dyconv.datamodules.images import decoding, load_image
from dyconv.datamodules.segmentation_transforms import (
    SegmentationEvalTransform,
    SegmentationTrainTransform,
    segmentation_collate,
)
from dyconv.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
from dyconv.errors import ConfigError

__all__ = [
    "SBD_ARCHIVE",
    "VOC_ARCHIVE",
    "VOC_CLASSES",
    "SegmentationDataset",
    "SegmentationSample",
    "VOCDataModule",
    "VOCSBDDataModule",
    "read_mask",
]

log = logging.getLogger(__name__)

VOC_ARCHIVE = Archive(
    urls=(
        "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
        "https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
    ),
    filename="VOCtrainval_11-May-2012.tar",
    md5="6cd6e144f989b92b3379bac3b3de84fd",
    size="1.9 GB",
)
SBD_ARCHIVE = Archive(
    urls=(
        "http://www.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
        "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/semantic_contours/benchmark.tgz",
    ),
    filename="benchmark.tgz",
    md5="82b4d87ceb2ed10f6038a1cba92111cb",
    size="1.4 GB",
)
SBD_ARCHIVE_FOLDER = "benchmark_RELEASE/dataset"

VOC_CLASSES = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip

_VOC_LAYOUT = """\
<root>/VOCdevkit/VOC2012/
  JPEGImages/<id>.jpg
  SegmentationClass/<id>.png          palette PNG, values 0..20, 255 = ignore
  ImageSets/Segmentation/train.txt    1,464 ids
  ImageSets/Segmentation/val.txt      1,449 ids"""
_SBD_LAYOUT = """\
<sbd_root>/                 (default <root>/SBD; benchmark_RELEASE/dataset of benchmark.tgz)
  img/<id>.jpg
  cls/<id>.mat              struct GTcls, field Segmentation (uint8, 0..20)
  train.txt                 8,498 ids
  val.txt                   2,857 ids"""


def read_mask(path: str | os.PathLike[str]) -> np.ndarray:
    """A class-index mask as uint8 (H, W): a VOC palette (or grayscale) PNG, or an SBD ``.mat`` file.

    Raises :class:`~dyconv.datamodules.images.CorruptImageError` naming a file that does not decode.
    """
    path = Path(path)
    if path.suffix == ".mat":
        from scipy.io import loadmat  # lazy: scipy loads only for SBD's .mat masks

        with decoding(path):
            gt = loadmat(path, squeeze_me=True, struct_as_record=False)["GTcls"]
            return np.ascontiguousarray(gt.Segmentation, dtype=np.uint8)
    im = load_image(path, mode=None)
    if im.mode not in ("P", "L"):
        raise ValueError(
            f"{path} is a {im.mode} image; segmentation masks must be palette (P) or grayscale (L) PNGs "
            "holding class indices (VOC's SegmentationClass), not colour renderings"
        )
    return np.array(im, dtype=np.uint8)


@dataclass(frozen=True)
class SegmentationSample:
    """One image and its mask; ``source`` is ``voc`` or ``sbd``."""

    id: str
    image: str
    mask: str
    source: str


class SegmentationDataset(Dataset):
    """Reads ``(RGB image, uint8 mask)`` pairs and applies a joint transform."""

    def __init__(
        self,
        samples: Sequence[SegmentationSample],
        transform: Callable[[Image.Image, np.ndarray], tuple[torch.Tensor, torch.Tensor]],
    ) -> None:
        self.samples = list(samples)
        self.transform = transform

    @property
    def ids(self) -> list[str]:
        return [s.id for s in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, i: int) -> tuple[Image.Image, np.ndarray]:
        """The untransformed pair (image converted to RGB)."""
        s = self.samples[i]
        image = load_image(s.image, "RGB")
        mask = read_mask(s.mask)
        if mask.shape != (image.height, image.width):
            raise ValueError(f"mask {s.mask} is {mask.shape[::-1]} but image {s.image} is {image.size} (W, H)")
        return image, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(*self.load(i))


def _read_ids(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _files(d: Path) -> set[str]:
    return {e.name for e in os.scandir(d)} if d.is_dir() else set()


class VOCDataModule(BaseDataModule):
    """Pascal VOC 2012 segmentation: train on ``train`` (1,464), validate and test on ``val`` (1,449).

    Args:
        root: folder that holds ``VOCdevkit/VOC2012`` (relative: from the current directory).
        download: fetch (1.9 GB) and extract the official archive when not there.
        scale_range: random scale of training images and masks.
        hflip: random horizontal flip in training.
        eval_size: eval pads (mean / ignore) and center-crops to this side; null evaluates full images
            (batches padded by the collate).
        ignore_index: mask value that is not scored (VOC boundaries, padding).
        image_size: side of the square training crop (513 in DeepLab).
        **kwargs: :class:`BaseDataModule` arguments (global ``batch_size``, workers, ``drop_last``, ...).
    """

    mean = tuple(IMAGENET_MEAN)
    std = tuple(IMAGENET_STD)

    VOC_ARCHIVE = VOC_ARCHIVE

    def __init__(
        self,
        *,
        root: str | os.PathLike[str] = "datasets",
        download: bool = False,
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip: bool = True,
        eval_size: int | None = 513,
        ignore_index: int = 255,
        num_classes: int = 21,
        in_channels: int = 3,
        image_size: int = 513,
        **kwargs,
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
        if in_channels != 3:
            raise ConfigError(f"data.in_channels must be 3 for VOC (RGB), got {in_channels}")
        self.root = resolve_root(root)
        self.download = bool(download)
        self.ignore_index = int(ignore_index)
        self.train_transform = SegmentationTrainTransform(
            self.image_size, scale_range=scale_range, hflip=hflip, ignore_index=self.ignore_index
        )
        self.eval_transform = SegmentationEvalTransform(eval_size, ignore_index=self.ignore_index)
        self.collate_fn = segmentation_collate(self.ignore_index)
        self.classes = VOC_CLASSES

    @property
    def voc_dir(self) -> Path:
        return self.root / "VOCdevkit" / "VOC2012"

    def _voc_samples(self) -> dict[str, list[SegmentationSample]]:
        """``{"train": [...], "val": [...]}`` from the official lists; raises if anything is missing."""
        d, a = self.voc_dir, self.VOC_ARCHIVE
        problems: list[str] = []
        out: dict[str, list[SegmentationSample]] = {}
        if not d.is_dir():
            problems.append("the folder does not exist")
        else:
            check_not_interrupted(d, "Pascal VOC 2012", _VOC_LAYOUT)
            jpgs, pngs = _files(d / "JPEGImages"), _files(d / "SegmentationClass")
            for split in ("train", "val"):
                lst = d / "ImageSets" / "Segmentation" / f"{split}.txt"
                if not lst.is_file():
                    problems.append(f"{lst} is missing")
                    continue
                ids = _read_ids(lst)
                lost = [i for i in ids if f"{i}.jpg" not in jpgs or f"{i}.png" not in pngs]
                if lost:
                    problems.append(
                        f"{len(lost)} of the {len(ids)} {split} ids have no JPEGImages/<id>.jpg or "
                        f"SegmentationClass/<id>.png (e.g. {lost[0]})"
                    )
                out[split] = [
                    SegmentationSample(
                        i, str(d / "JPEGImages" / f"{i}.jpg"), str(d / "SegmentationClass" / f"{i}.png"), "voc"
                    )
                    for i in ids
                ]
        if problems:
            raise DatasetNotFoundError.for_dataset(
                "Pascal VOC 2012",
                where=d,
                problem="; ".join(problems),
                layout=_VOC_LAYOUT,
                how=f"set data.download=true to fetch {a.url} ({a.size}) and extract it into {self.root}, "
                f"or extract it there yourself (data.root is the folder that holds VOCdevkit/)",
            )
        return out

    def _train_samples(self, voc: dict[str, list[SegmentationSample]]) -> list[SegmentationSample]:
        return voc["train"]

    def check_root(self, *, writing: bool = False) -> None:
        """Refuse a ``root`` that cannot hold ``VOCdevkit/VOC2012`` (a file, unreadable, or unwritable
        when ``writing`` and a download is due) in one message, before anything is touched."""
        check_archive_root(self.root, self.voc_dir, self.VOC_ARCHIVE, layout=_VOC_LAYOUT, download=self.download,
                           writing=writing, read_only="data.root" in self.read_only)

    def prepare_data(self) -> None:
        self.check_root(writing=True)
        if self.download:
            download_and_extract(
                self.VOC_ARCHIVE, download_dir=self.root, extract_dir=self.root, dataset_dir=self.voc_dir
            )
        self._voc_samples()
        self.verify_data()

    def files_to_verify(self) -> list[tuple[str, Callable[[str], object]]]:
        voc = self._voc_samples()
        samples = self._train_samples(voc) + voc["val"]
        return [(s.image, load_image) for s in samples] + [(s.mask, read_mask) for s in samples]

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        self.check_root()
        self.check_num_classes(len(VOC_CLASSES), "Pascal VOC (background + 20 classes)")
        voc = self._voc_samples()
        self.train_set = SegmentationDataset(self._train_samples(voc), self.train_transform)
        self.val_set = SegmentationDataset(voc["val"], self.eval_transform)
        self.test_set = self.val_set


class VOCSBDDataModule(VOCDataModule):
    """VOC 2012 + SBD ("trainaug"): train on VOC train + SBD train+val minus every VOC val id; eval on VOC val.

    Args:
        sbd_root: folder that holds SBD's ``img/``, ``cls/``, ``train.txt``, ``val.txt`` (default
            ``<root>/SBD``); ``download`` extracts ``benchmark_RELEASE/dataset`` of the official archive there.
        **kwargs: :class:`VOCDataModule` arguments.
    """

    SBD_ARCHIVE = SBD_ARCHIVE

    def __init__(self, *, sbd_root: str | os.PathLike[str] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.sbd_root = resolve_root(sbd_root) if sbd_root is not None else self.root / "SBD"
        self._sbd_key = "data.sbd_root" if sbd_root is not None else "data.root"

    def check_root(self, *, writing: bool = False) -> None:
        """VOC's check, then the same for ``sbd_root`` (named ``data.root`` when it is the default ``<root>/SBD``)."""
        super().check_root(writing=writing)
        named = self.sbd_root if self._sbd_key == "data.sbd_root" else self.root
        check_archive_root(named, self.sbd_root, self.SBD_ARCHIVE, layout=_SBD_LAYOUT, download=self.download,
                           writing=writing, folders=(self.sbd_root.parent, self.sbd_root), key=self._sbd_key,
                           read_only=self._sbd_key in self.read_only)

    def _sbd_ids(self) -> list[str]:
        """SBD train + val ids (deduplicated, in file order); raises if anything is missing."""
        d, a = self.sbd_root, self.SBD_ARCHIVE
        problems: list[str] = []
        ids: list[str] = []
        if not d.is_dir():
            problems.append("the folder does not exist")
        else:
            check_not_interrupted(d, "SBD", _SBD_LAYOUT)
            jpgs, mats = _files(d / "img"), _files(d / "cls")
            for split in ("train", "val"):
                lst = d / f"{split}.txt"
                if not lst.is_file():
                    problems.append(f"{lst} is missing")
                    continue
                split_ids = _read_ids(lst)
                lost = [i for i in split_ids if f"{i}.jpg" not in jpgs or f"{i}.mat" not in mats]
                if lost:
                    problems.append(
                        f"{len(lost)} of the {len(split_ids)} {split} ids have no img/<id>.jpg or cls/<id>.mat "
                        f"(e.g. {lost[0]})"
                    )
                ids.extend(split_ids)
        if problems:
            raise DatasetNotFoundError.for_dataset(
                "SBD (Semantic Boundaries Dataset)",
                where=d,
                problem="; ".join(problems),
                layout=_SBD_LAYOUT,
                how=f"set data.download=true to fetch {a.url} ({a.size}) and extract its {SBD_ARCHIVE_FOLDER}/ "
                f"into {d}, or point data.sbd_root at an extracted benchmark_RELEASE/dataset folder",
            )
        return list(dict.fromkeys(ids))

    def _train_samples(self, voc: dict[str, list[SegmentationSample]]) -> list[SegmentationSample]:
        val_ids = {s.id for s in voc["val"]}
        by_id = {s.id: s for s in voc["train"]}  # VOC masks win for ids in both
        for i in self._sbd_ids():
            if i not in by_id:
                d = self.sbd_root
                by_id[i] = SegmentationSample(i, str(d / "img" / f"{i}.jpg"), str(d / "cls" / f"{i}.mat"), "sbd")
        samples = [by_id[i] for i in sorted(by_id) if i not in val_ids]
        n_voc = sum(s.source == "voc" for s in samples)
        log.info("voc_sbd train: %d images (%d VOC, %d SBD); %d VOC val ids excluded",
                 len(samples), n_voc, len(samples) - n_voc, len(val_ids))  # fmt: skip
        return samples

    def prepare_data(self) -> None:
        self.check_root(writing=True)
        if self.download:
            download_and_extract(
                self.SBD_ARCHIVE,
                download_dir=self.sbd_root.parent,
                extract_dir=self.sbd_root,
                dataset_dir=self.sbd_root,
                strip_prefix=SBD_ARCHIVE_FOLDER,
            )
        self._sbd_ids()  # checked before VOC's prepare_data verifies the files of both
        super().prepare_data()
