"""Joint image + mask transforms for semantic segmentation (the DeepLab recipe) and a padding collate.

Train: random scale in ``[0.5, 2.0]`` -> pad to the crop size (image with the mean, i.e. 0 after
normalisation; mask with the ignore index 255) -> random crop -> horizontal flip. Eval: either the
full image, or padded the same way and center-cropped to a fixed size (VOC images are at most
500x500, so eval at 513 keeps every labelled pixel). Masks are only ever resized with nearest
neighbour (``NEAREST_EXACT``: the pixel-centre rule of PIL's ``NEAREST``), so labels stay labels
and 255 stays the ignore value. Randomness comes from torch's generator, which Lightning seeds per
worker.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from dyconv.datamodules.transforms import IMAGENET_MEAN, IMAGENET_STD
from dyconv.errors import ConfigError

__all__ = [
    "SegmentationEvalTransform",
    "SegmentationTrainTransform",
    "pad_collate",
    "segmentation_collate",
]


def _to_tensors(
    image: Image.Image, mask: np.ndarray | Image.Image, mean: Sequence[float], std: Sequence[float]
) -> tuple[torch.Tensor, torch.Tensor]:
    """PIL RGB image -> normalised float (3,H,W); mask -> uint8 (1,H,W) (255 fits, resizes cheaply)."""
    img = TF.pil_to_tensor(image.convert("RGB")).float().div_(255.0)
    img = TF.normalize(img, list(mean), list(std))
    m = torch.as_tensor(np.asarray(mask, dtype=np.uint8)).unsqueeze(0)
    if img.shape[-2:] != m.shape[-2:]:
        raise ValueError(f"image {tuple(img.shape[-2:])} and mask {tuple(m.shape[-2:])} differ in size")
    return img, m


def _pad_to(img: torch.Tensor, mask: torch.Tensor, h: int, w: int, ignore_index: int) -> tuple[torch.Tensor, ...]:
    """Pad bottom/right to at least (h, w): image with 0 (= the mean once normalised), mask with ignore."""
    ph, pw = max(h - img.shape[-2], 0), max(w - img.shape[-1], 0)
    if ph or pw:
        img = F.pad(img, (0, pw, 0, ph), value=0.0)
        mask = F.pad(mask, (0, pw, 0, ph), value=ignore_index)
    return img, mask


class SegmentationTrainTransform:
    """Random scale, pad, random crop and flip, applied to image and mask together.

    Args:
        crop_size: side of the square training crop (513 in DeepLab).
        scale_range: (low, high) of the uniform random scale factor.
        hflip: flip both horizontally with probability 0.5.
        ignore_index: mask value of padding (and VOC's boundary label), ignored by the loss.
        mean, std: normalisation statistics.

    Returns ``(image float32 (3, crop, crop), mask int64 (crop, crop))``.
    """

    def __init__(
        self,
        crop_size: int,
        *,
        scale_range: Sequence[float] = (0.5, 2.0),
        hflip: bool = True,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        low, high = (float(s) for s in scale_range)
        if not 0 < low <= high:
            raise ConfigError(f"data.scale_range must be 0 < low <= high, got {list(scale_range)}")
        self.crop_size = int(crop_size)
        self.scale_range = (low, high)
        self.hflip = bool(hflip)
        self.ignore_index = int(ignore_index)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: Image.Image, mask: np.ndarray | Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        img, m = _to_tensors(image, mask, self.mean, self.std)
        low, high = self.scale_range
        if (low, high) != (1.0, 1.0):
            s = low + (high - low) * float(torch.rand(()))
            h, w = max(1, round(img.shape[-2] * s)), max(1, round(img.shape[-1] * s))
            img = TF.resize(img, [h, w], interpolation=InterpolationMode.BILINEAR, antialias=True)
            m = TF.resize(m, [h, w], interpolation=InterpolationMode.NEAREST_EXACT)
        c = self.crop_size
        img, m = _pad_to(img, m, c, c, self.ignore_index)
        top = int(torch.randint(0, img.shape[-2] - c + 1, ()))
        left = int(torch.randint(0, img.shape[-1] - c + 1, ()))
        img, m = img[:, top : top + c, left : left + c], m[:, top : top + c, left : left + c]
        if self.hflip and float(torch.rand(())) < 0.5:
            img, m = img.flip(-1), m.flip(-1)
        return img.contiguous(), m[0].long()


class SegmentationEvalTransform:
    """Eval: the full image (``size=None``), or padded (mean / ignore) and center-cropped to ``size``.

    No resizing, so the mask is the ground truth pixel for pixel.
    """

    def __init__(
        self,
        size: int | None = None,
        *,
        ignore_index: int = 255,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        self.size = None if size is None else int(size)
        self.ignore_index = int(ignore_index)
        self.mean, self.std = tuple(mean), tuple(std)

    def __call__(self, image: Image.Image, mask: np.ndarray | Image.Image) -> tuple[torch.Tensor, torch.Tensor]:
        img, m = _to_tensors(image, mask, self.mean, self.std)
        if self.size is not None:
            s = self.size
            img, m = _pad_to(img, m, s, s, self.ignore_index)
            img, m = TF.center_crop(img, [s, s]), TF.center_crop(m, [s, s])
        return img.contiguous(), m[0].long()


def pad_collate(
    batch: Sequence[tuple[torch.Tensor, torch.Tensor]], ignore_index: int = 255
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(image, mask)`` pairs, padding bottom/right to the largest size when sizes differ:
    images with 0 (the mean once normalised), masks with ``ignore_index`` (so padding is not scored)."""
    h = max(int(img.shape[-2]) for img, _ in batch)
    w = max(int(img.shape[-1]) for img, _ in batch)
    images = torch.zeros(len(batch), batch[0][0].shape[0], h, w, dtype=batch[0][0].dtype)
    masks = torch.full((len(batch), h, w), ignore_index, dtype=torch.long)
    for i, (img, mask) in enumerate(batch):
        images[i, :, : img.shape[-2], : img.shape[-1]] = img
        masks[i, : mask.shape[-2], : mask.shape[-1]] = mask
    return images, masks


def segmentation_collate(ignore_index: int = 255) -> partial:
    """A picklable collate (works with spawned workers) that pads with ``ignore_index``."""
    return partial(pad_collate, ignore_index=int(ignore_index))
