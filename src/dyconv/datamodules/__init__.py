"""LightningDataModules: download, verify, split, transform, load."""

from dyconv.datamodules.base import BaseDataModule, EpochSeededRandomSampler
from dyconv.datamodules.mnist_offline import MNISTOfflineDataModule

__all__ = ["BaseDataModule", "EpochSeededRandomSampler", "MNISTOfflineDataModule"]
