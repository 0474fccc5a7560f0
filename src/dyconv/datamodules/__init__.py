"""LightningDataModules: download, verify, split, transform, load."""

from dyconv.datamodules.base import BaseDataModule, EpochSeededRandomSampler
from dyconv.datamodules.download import (
    Archive,
    ChecksumError,
    DatasetNotFoundError,
    DownloadError,
    UnsafeArchiveError,
)
from dyconv.datamodules.fashion_mnist import FashionMNISTDataModule
from dyconv.datamodules.imagenet import ImageNetDataModule
from dyconv.datamodules.imagenette import ImagenetteDataModule
from dyconv.datamodules.images import CorruptImageError, load_image
from dyconv.datamodules.mnist import MNISTDataModule
from dyconv.datamodules.mnist1d import MNIST1DDataModule
from dyconv.datamodules.mnist_offline import MNISTOfflineDataModule
from dyconv.datamodules.segmentation_transforms import pad_collate
from dyconv.datamodules.tinyimagenet import TinyImageNetDataModule
from dyconv.datamodules.voc import VOCDataModule, VOCSBDDataModule

__all__ = [
    "Archive",
    "BaseDataModule",
    "ChecksumError",
    "CorruptImageError",
    "DatasetNotFoundError",
    "DownloadError",
    "EpochSeededRandomSampler",
    "FashionMNISTDataModule",
    "ImageNetDataModule",
    "ImagenetteDataModule",
    "MNIST1DDataModule",
    "MNISTDataModule",
    "MNISTOfflineDataModule",
    "TinyImageNetDataModule",
    "UnsafeArchiveError",
    "VOCDataModule",
    "VOCSBDDataModule",
    "load_image",
    "pad_collate",
]
