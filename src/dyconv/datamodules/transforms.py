"""Classification transforms shared by the ImageNet-style DataModules (torchvision ``transforms.v2``).

Train: ``resized_crop`` (RandomResizedCrop, the ImageNet recipe), ``crop_pad`` (random crop with
zero padding, the CIFAR / Tiny ImageNet recipe) or ``none`` (the eval transform), each followed by an
optional horizontal flip. Eval: a plain square resize, or resize + center crop (``crop_ratio``
0.875 is the usual 256 -> 224). All outputs are plain float tensors normalised with the dataset's
statistics; grayscale inputs must be converted to RGB by the loader first.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from dyconv.errors import ConfigError

__all__ = [
    "AUGMENTATIONS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "classification_eval_transform",
    "classification_train_transform",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
AUGMENTATIONS = ("resized_crop", "crop_pad", "none")


def _finish(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std)), v2.ToPureTensor()]


def classification_eval_transform(
    image_size: int,
    *,
    crop_ratio: float | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Eval transform: resize to ``image_size`` square (``crop_ratio=None``), or resize the short side to
    ``round(image_size / crop_ratio)`` then center crop ``image_size``; normalise."""
    if crop_ratio is None:
        geometry: list[v2.Transform] = [v2.Resize((image_size, image_size), antialias=True)]
    else:
        if not 0.0 < crop_ratio <= 1.0:
            raise ConfigError(f"eval crop_ratio must be in (0, 1], got {crop_ratio}")
        geometry = [v2.Resize(round(image_size / crop_ratio), antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose([v2.ToImage(), *geometry, *_finish(mean, std)])


def classification_train_transform(
    augment: str,
    image_size: int,
    *,
    padding: int = 4,
    scale: Sequence[float] = (0.08, 1.0),
    hflip: bool = True,
    eval_crop_ratio: float | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> v2.Compose:
    """Train transform.

    Args:
        augment: ``resized_crop`` (RandomResizedCrop(image_size, scale)), ``crop_pad`` (resize the short
            side to image_size if needed, then RandomCrop(image_size, padding)) or ``none`` (the eval
            transform, with ``eval_crop_ratio``).
        padding: zero padding of ``crop_pad`` on each side.
        scale: area range of ``resized_crop``.
        hflip: add a random horizontal flip (not with ``none``).
    """
    if augment == "none":
        return classification_eval_transform(image_size, crop_ratio=eval_crop_ratio, mean=mean, std=std)
    if augment == "resized_crop":
        geometry: list[v2.Transform] = [v2.RandomResizedCrop(image_size, scale=tuple(scale), antialias=True)]
    elif augment == "crop_pad":
        geometry = [
            v2.Resize(image_size, antialias=True),
            v2.RandomCrop(image_size, padding=padding, pad_if_needed=True),
        ]
    else:
        raise ConfigError(f"data.augment must be one of {list(AUGMENTATIONS)}, got {augment!r}")
    if hflip:
        geometry.append(v2.RandomHorizontalFlip())
    return v2.Compose([v2.ToImage(), *geometry, *_finish(mean, std)])
