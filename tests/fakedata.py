"""Tiny fake copies of every dataset, written in the EXACT on-disk format of the real one, plus packers
that wrap such a tree into the official archive (same file name and top-level folder).

Every ``make_<name>(root, **small_options)`` writes real files (JPEG/PNG via PIL, palette PNG masks
with 255 borders, SBD ``.mat`` files via ``scipy.io.savemat``, MNIST idx files) under ``root`` exactly
where the DataModule looks when ``data.root=root`` and returns what it wrote, so a test can compare
labels and masks with what the real loading code produces.

Classification images are solid colours, unique per image (grayscale ones a unique gray): geometric
augmentation keeps a solid colour, so :func:`identify` can tell which file a transformed tensor came
from and the label the loader returned can be checked against the one written.

Import from tests (``tests/`` is on ``sys.path``): ``from fakedata import make_voc``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import itertools
import os
import struct
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "IMAGENETTE_WNIDS",
    "TINY_WNIDS",
    "identify",
    "make_imagenet",
    "make_imagenette",
    "make_malicious_archive",
    "make_mnist",
    "make_sbd",
    "make_tinyimagenet",
    "make_voc",
    "make_voc_sbd",
    "md5",
    "pack_archive",
    "pack_official",
    "truncate",
    "voc_palette",
]

#: The real Imagenette wnids (torchvision's Imagenette only knows these), sorted.
IMAGENETTE_WNIDS = (
    "n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
    "n03394916", "n03417042", "n03425413", "n03445777", "n03888257",
)  # fmt: skip
#: Real Tiny ImageNet wnids, deliberately unsorted like the official wnids.txt.
TINY_WNIDS = ("n04540053", "n02124075", "n04067472", "n04099969", "n07749582", "n01641577", "n02802426")
_IMAGENETTE_FOLDERS = {"full": "imagenette2", "320px": "imagenette2-320", "160px": "imagenette2-160"}
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


# ---------------------------------------------------------------------------------------- helpers
def md5(path: str | os.PathLike[str]) -> str:
    """md5 hex digest of a file (what an :class:`Archive` of the fixture must carry)."""
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


class _Colors:
    """Distinct solid colours (>= 25 apart per channel step): non-gray ones for RGB, grays for L."""

    def __init__(self, seed: int) -> None:
        levels = (20, 70, 120, 170, 220)
        rgb = [c for c in itertools.product(levels, repeat=3) if len(set(c)) > 1]
        np.random.default_rng(seed).shuffle(rgb)
        self._rgb = iter(rgb)
        self._gray = iter(range(20, 246, 25))

    def rgb(self) -> tuple[int, int, int]:
        return next(self._rgb)

    def gray(self) -> int:
        return next(self._gray)


def _solid_jpeg(path: Path, color: tuple[int, int, int] | int, size: tuple[int, int]) -> None:
    """A real JPEG of one colour; an int colour makes a grayscale (mode L) JPEG. ``size`` is (W, H)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if isinstance(color, int) else "RGB"
    Image.new(mode, size, color).save(path, format="JPEG", quality=95)


def identify(
    image: torch.Tensor,
    colors: Mapping[Any, tuple[int, int, int]],
    mean: Sequence[float] = _IMAGENET_MEAN,
    std: Sequence[float] = _IMAGENET_STD,
) -> Any:
    """The key of ``colors`` whose colour is nearest to the centre pixel of a normalised (3, H, W) image."""
    c = image[:, image.shape[-2] // 2, image.shape[-1] // 2].double()
    rgb = (c * torch.tensor(std, dtype=torch.float64) + torch.tensor(mean, dtype=torch.float64)) * 255.0
    keys = list(colors)
    table = torch.tensor([colors[k] for k in keys], dtype=torch.float64)
    return keys[int(((table - rgb) ** 2).sum(1).argmin())]


def voc_palette() -> list[int]:
    """The 256-colour palette of VOC's SegmentationClass PNGs (flat list of 768 ints; 255 = (224, 224, 192))."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def _random_mask(rng: np.random.Generator, h: int, w: int, classes: Sequence[int]) -> np.ndarray:
    """Background 0 with 1-2 rectangles of object classes, each outlined by a 255 (ignore) border."""
    mask = np.zeros((h, w), np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        cls = int(rng.choice(classes))
        y0, x0 = int(rng.integers(0, h // 2)), int(rng.integers(0, w // 2))
        y1, x1 = int(rng.integers(y0 + 6, h + 1)), int(rng.integers(x0 + 6, w + 1))
        mask[y0:y1, x0:x1] = 255
        mask[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = cls
    return mask


def _noise_jpeg(path: Path, rng: np.random.Generator, h: int, w: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").save(path, format="JPEG", quality=90)


# ---------------------------------------------------------------------------------------- MNIST
def _idx_bytes(array: np.ndarray) -> bytes:
    """An idx (SN3 Pascal Vincent) file: magic 0x0000 08 <ndim>, big-endian dims, uint8 data."""
    return struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def make_mnist(
    root: Path, *, n_train: int = 30, n_test: int = 10, seed: int = 0, folder: str = "MNIST"
) -> dict[str, Any]:
    """Write ``root/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`` and their ``.gz``
    (``folder="FashionMNIST"``: Fashion-MNIST's layout, the same idx format).

    Returns ``{"raw_dir", "train_images" (uint8 N,28,28), "train_labels", "test_images", "test_labels",
    "md5": {gz file name: md5}}``; every image is distinct (its first pixel is its index).
    """
    rng = np.random.default_rng(seed)
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"raw_dir": raw, "md5": {}, "raw_md5": {}}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, 0, 0] = np.arange(n) % 256
        labels = np.resize(np.arange(10, dtype=np.uint8), n)
        rng.shuffle(labels)
        out[f"{split}_images"], out[f"{split}_labels"] = images, labels
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            data = _idx_bytes(array)
            (raw / name).write_bytes(data)
            (raw / f"{name}.gz").write_bytes(gzip.compress(data, mtime=0))
            out["md5"][f"{name}.gz"] = md5(raw / f"{name}.gz")
            out["raw_md5"][name] = md5(raw / name)
    return out


# ---------------------------------------------------------------------------------------- Imagenette
def make_imagenette(
    root: Path,
    *,
    size: str = "320px",
    num_classes: int = 3,
    n_train: int = 3,
    n_val: int = 2,
    image_size: tuple[int, int] = (40, 30),
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``root/imagenette2-320/{train,val}/<wnid>/*.JPEG`` (+ ``noisy_imagenette.csv``) with real wnids.

    Returns ``{"folder", "wnids" (sorted), "train": {relpath: label}, "val": {relpath: label},
    "colors": {relpath: rgb}}``; relpaths are relative to ``folder`` (``train/n01440764/...JPEG``).
    """
    folder = Path(root) / _IMAGENETTE_FOLDERS[size]
    wnids = sorted(IMAGENETTE_WNIDS[:num_classes])
    colors = _Colors(seed)
    out: dict[str, Any] = {"folder": folder, "wnids": wnids, "train": {}, "val": {}, "colors": {}}
    rows = ["path,noisy_labels_0,noisy_labels_1,noisy_labels_5,noisy_labels_25,noisy_labels_50,is_valid"]
    for split, n in (("train", n_train), ("val", n_val)):
        for label, wnid in enumerate(wnids):
            for i in range(n):
                rel = f"{split}/{wnid}/{wnid}_{1000 + i}.JPEG"
                out["colors"][rel] = colors.rgb()
                _solid_jpeg(folder / rel, out["colors"][rel], image_size)
                out[split][rel] = label
                rows.append(f"{rel},{wnid},{wnid},{wnid},{wnid},{wnid},{split == 'val'}")
    (folder / "noisy_imagenette.csv").write_text("\n".join(rows) + "\n")
    return out


# ---------------------------------------------------------------------------------------- Tiny ImageNet
def make_tinyimagenet(
    root: Path,
    *,
    num_classes: int = 3,
    n_train: int = 4,
    n_val: int = 3,
    n_test: int = 2,
    image_size: int = 32,
    n_gray: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``root/tiny-imagenet-200/`` as distributed: unsorted ``wnids.txt``, ``words.txt``,
    ``train/<wnid>/images/<wnid>_<i>.JPEG`` + ``<wnid>_boxes.txt``, flat ``val/images/val_<i>.JPEG`` +
    ``val/val_annotations.txt`` (classes interleaved), ``test/images/test_<i>.JPEG``; ``n_gray`` train
    and ``n_gray`` val images are grayscale (mode L) JPEGs.

    Returns ``{"folder", "wnids_file_order", "wnids" (sorted), "train": {file name: label},
    "val": {file name: label}, "colors": {file name: rgb}, "gray": [file names]}`` with
    label = position in ``sorted(wnids)``.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "tiny-imagenet-200"
    order = list(TINY_WNIDS[:num_classes])
    if order == sorted(order):
        raise ValueError("num_classes must be >= 2 so wnids.txt comes out unsorted, as in the archive")
    index = {w: i for i, w in enumerate(sorted(order))}
    colors = _Colors(seed)
    out: dict[str, Any] = {"folder": folder, "wnids_file_order": order, "wnids": sorted(order),
                           "train": {}, "val": {}, "colors": {}, "gray": []}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wnids.txt").write_text("".join(f"{w}\n" for w in order))
    words = {**{w: f"fake class {w}" for w in order}, "n00001740": "entity", "n00002137": "abstraction"}
    (folder / "words.txt").write_text("".join(f"{w}\t{name}\n" for w, name in sorted(words.items())))

    def image(path: Path, gray: bool) -> None:
        color: tuple[int, int, int] | int
        if gray:
            color = colors.gray()
            out["gray"].append(path.name)
            out["colors"][path.name] = (color, color, color)
        else:
            color = colors.rgb()
            out["colors"][path.name] = color
        _solid_jpeg(path, color, (image_size, image_size))

    def box() -> str:
        x0, y0 = (int(v) for v in rng.integers(0, image_size // 2, 2))
        return f"{x0}\t{y0}\t{x0 + image_size // 3}\t{y0 + image_size // 3}"

    grays = iter(range(n_gray))
    for wnid in order:
        lines = []
        for i in range(n_train):
            name = f"{wnid}_{i}.JPEG"
            image(folder / "train" / wnid / "images" / name, gray=next(grays, None) is not None)
            out["train"][name] = index[wnid]
            lines.append(f"{name}\t{box()}\n")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(lines))
    val_wnids = [w for w in order for _ in range(n_val)]
    rng.shuffle(val_wnids)
    grays = iter(range(n_gray))
    lines = []
    for i, wnid in enumerate(val_wnids):
        name = f"val_{i}.JPEG"
        image(folder / "val" / "images" / name, gray=next(grays, None) is not None)
        out["val"][name] = index[wnid]
        lines.append(f"{name}\t{wnid}\t{box()}\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(lines))
    for i in range(n_test):
        _solid_jpeg(folder / "test" / "images" / f"test_{i}.JPEG", colors.rgb(), (image_size, image_size))
    return out


# ---------------------------------------------------------------------------------------- ImageNet
def make_imagenet(
    root: Path,
    *,
    num_classes: int = 3,
    n_train: int = 3,
    n_val: int = 2,
    image_size: tuple[int, int] = (36, 28),
    flat_val: bool = False,
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``root/{train,val}/<wnid>/*.JPEG`` (ImageFolder layout); ``flat_val`` writes the official flat
    ``val/ILSVRC2012_val_<8 digits>.JPEG`` instead (which the DataModule must refuse with instructions).

    Returns ``{"wnids", "train": {relpath: label}, "val": {relpath: label}, "colors": {relpath: rgb}}``
    (relpaths relative to ``root``).
    """
    root = Path(root)
    wnids = sorted(IMAGENETTE_WNIDS[:num_classes])
    colors = _Colors(seed)
    out: dict[str, Any] = {"wnids": wnids, "train": {}, "val": {}, "colors": {}}
    k = 0
    for split, n in (("train", n_train), ("val", n_val)):
        for label, wnid in enumerate(wnids):
            for i in range(n):
                k += 1
                if split == "val" and flat_val:
                    rel = f"val/ILSVRC2012_val_{k:08d}.JPEG"
                elif split == "val":
                    rel = f"val/{wnid}/ILSVRC2012_val_{k:08d}.JPEG"
                else:
                    rel = f"train/{wnid}/{wnid}_{i + 1}.JPEG"
                out["colors"][rel] = colors.rgb()
                _solid_jpeg(root / rel, out["colors"][rel], image_size)
                out[split][rel] = label
    return out


# ---------------------------------------------------------------------------------------- VOC and SBD
def _voc_id(k: int) -> str:
    return f"{2007 + k % 5}_{k:06d}"


def make_voc(
    root: Path,
    *,
    train_ids: Sequence[str] | None = None,
    val_ids: Sequence[str] | None = None,
    n_train: int = 4,
    n_val: int = 3,
    size_range: tuple[int, int] = (20, 40),
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``root/VOCdevkit/VOC2012/`` in the official layout: ``JPEGImages/<id>.jpg``,
    ``SegmentationClass/<id>.png`` (palette PNG, values 0..20 with 255 borders),
    ``ImageSets/Segmentation/{train,val,trainval}.txt``; sizes vary per image in ``size_range``.

    Returns ``{"folder", "train": {id: mask}, "val": {id: mask}}`` (masks uint8 (H, W)).
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "VOCdevkit" / "VOC2012"
    train_ids = list(train_ids) if train_ids is not None else [_voc_id(k) for k in range(1, n_train + 1)]
    val_ids = list(val_ids) if val_ids is not None else [_voc_id(k) for k in range(101, 101 + n_val)]
    sets = folder / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True, exist_ok=True)
    (folder / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"folder": folder, "train": {}, "val": {}}
    palette = voc_palette()
    for split, ids in (("train", train_ids), ("val", val_ids)):
        for i in ids:
            h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
            _noise_jpeg(folder / "JPEGImages" / f"{i}.jpg", rng, h, w)
            mask = _random_mask(rng, h, w, range(1, 21))
            png = Image.fromarray(mask, mode="P")
            png.putpalette(palette)
            png.save(folder / "SegmentationClass" / f"{i}.png")
            out[split][i] = mask
        (sets / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    (sets / "trainval.txt").write_text("".join(f"{i}\n" for i in sorted(train_ids + val_ids)))
    # a JPEG without segmentation (most of JPEGImages in the real archive) must be ignored
    _noise_jpeg(folder / "JPEGImages" / "2012_999999.jpg", rng, 20, 20)
    return out


def make_sbd(
    folder: Path,
    *,
    train_ids: Sequence[str],
    val_ids: Sequence[str],
    size_range: tuple[int, int] = (20, 40),
    seed: int = 1,
) -> dict[str, Any]:
    """Write an SBD ``benchmark_RELEASE/dataset`` tree at ``folder`` (e.g. ``root/SBD``): ``img/<id>.jpg``,
    ``cls/<id>.mat`` (``GTcls`` struct: uint8 ``Segmentation``, sparse ``Boundaries`` cells,
    ``CategoriesPresent``), ``inst/<id>.mat``, ``train.txt``, ``val.txt``. SBD masks have no 255 border.

    Returns ``{"folder", "train": {id: mask}, "val": {id: mask}}``.
    """
    from scipy.io import savemat
    from scipy.sparse import csc_matrix

    rng = np.random.default_rng(seed)
    folder = Path(folder)
    for sub in ("img", "cls", "inst"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    out: dict[str, Any] = {"folder": folder, "train": {}, "val": {}}
    for split, ids in (("train", train_ids), ("val", val_ids)):
        for i in ids:
            h, w = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
            _noise_jpeg(folder / "img" / f"{i}.jpg", rng, h, w)
            mask = _random_mask(rng, h, w, range(1, 21))
            mask[mask == 255] = 0  # SBD class maps have no ignore border
            boundaries = np.empty((20, 1), dtype=object)
            for c in range(20):
                boundaries[c, 0] = csc_matrix((mask == c + 1) & (np.roll(mask, 1, 0) != c + 1))
            present = np.unique(mask[mask > 0]).astype(np.uint8)
            gt = {"Segmentation": mask, "Boundaries": boundaries, "CategoriesPresent": present}
            savemat(folder / "cls" / f"{i}.mat", {"GTcls": gt}, do_compression=True)
            inst = {"Segmentation": (mask > 0).astype(np.uint8), "Boundaries": boundaries[:1], "Categories": present}
            savemat(folder / "inst" / f"{i}.mat", {"GTinst": inst}, do_compression=True)
            out[split][i] = mask
        (folder / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
    return out


def make_voc_sbd(root: Path, *, seed: int = 0) -> dict[str, Any]:
    """VOC at ``root/VOCdevkit/VOC2012`` and SBD at ``root/SBD``, with the overlaps that matter:
    SBD train and val both contain VOC val ids (must be excluded: leakage) and VOC train ids (with
    different masks: the VOC mask must win); some ids are SBD-only.

    Returns ``{"voc": make_voc info, "sbd": make_sbd info, "voc_val_ids": set,
    "expected_train": {id: (source "voc"|"sbd", mask)}}``.
    """
    voc_train = [_voc_id(k) for k in (1, 2, 3)]
    voc_val = [_voc_id(k) for k in (101, 102, 103)]
    sbd_only = [_voc_id(k) for k in (201, 202, 203, 204)]
    voc = make_voc(root, train_ids=voc_train, val_ids=voc_val, seed=seed)
    sbd = make_sbd(
        Path(root) / "SBD",
        train_ids=[voc_train[0], voc_val[0], *sbd_only[:3]],
        val_ids=[voc_train[1], voc_val[1], sbd_only[3]],
        seed=seed + 1,
    )
    expected = {i: ("voc", m) for i, m in voc["train"].items()}
    for i in sbd_only:
        expected[i] = ("sbd", {**sbd["train"], **sbd["val"]}[i])
    return {"voc": voc, "sbd": sbd, "voc_val_ids": set(voc_val), "expected_train": expected}


def truncate(path: str | os.PathLike[str], keep: float = 0.5) -> Path:
    """Cut a file to the first ``keep`` fraction of its bytes, like an interrupted copy; returns the path."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


# ---------------------------------------------------------------------------------------- archives
def pack_archive(src: Path, archive: Path, *, arcname: str, extra: Mapping[str, bytes] | None = None) -> Path:
    """Pack the tree ``src`` under the top-level folder ``arcname`` into ``archive``; the format follows the
    suffix (``.zip``, ``.tar``, ``.tgz``/``.tar.gz``). ``extra`` adds ``{member name: bytes}`` files."""
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    paths = sorted(Path(src).rglob("*"))
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.write(src, arcname + "/")
            for p in paths:
                zf.write(p, f"{arcname}/{p.relative_to(src).as_posix()}" + ("/" if p.is_dir() else ""))
            for name, data in (extra or {}).items():
                zf.writestr(name, data)
        return archive
    mode = "w:gz" if archive.name.endswith((".tgz", ".tar.gz")) else "w"
    with tarfile.open(archive, mode) as tf:
        tf.add(src, arcname=arcname)  # recursive, directories first
        for name, data in (extra or {}).items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return archive


def pack_official(name: str, root: Path, out_dir: Path) -> tuple[Path, str]:
    """Pack a tree made by ``make_<name>(root)`` into the official archive in ``out_dir``.

    ``name``: ``tinyimagenet`` (tiny-imagenet-200.zip), ``imagenette`` (imagenette2-320.tgz), ``voc``
    (VOCtrainval_11-May-2012.tar, top folder ``VOCdevkit``) or ``sbd`` (benchmark.tgz, the tree under
    ``benchmark_RELEASE/dataset`` next to a ``benchmark_RELEASE/benchmark_code`` file). Returns
    ``(archive path, md5)``.
    """
    root, out_dir = Path(root), Path(out_dir)
    if name == "tinyimagenet":
        path = pack_archive(root / "tiny-imagenet-200", out_dir / "tiny-imagenet-200.zip", arcname="tiny-imagenet-200")
    elif name == "imagenette":
        path = pack_archive(root / "imagenette2-320", out_dir / "imagenette2-320.tgz", arcname="imagenette2-320")
    elif name == "voc":
        path = pack_archive(root / "VOCdevkit", out_dir / "VOCtrainval_11-May-2012.tar", arcname="VOCdevkit")
    elif name == "sbd":
        path = pack_archive(
            root / "SBD",
            out_dir / "benchmark.tgz",
            arcname="benchmark_RELEASE/dataset",
            extra={"benchmark_RELEASE/benchmark_code/README": b"evaluation code (not extracted)\n"},
        )
    else:
        raise ValueError(f"unknown dataset {name!r}")
    return path, md5(path)


def make_malicious_archive(archive: Path, *, kind: str = "dotdot") -> Path:
    """An archive with one harmless member and one that escapes: ``kind="dotdot"`` (``x/../../evil.txt``)
    or ``"absolute"`` (``/tmp/.../evil.txt``). Format from the suffix, like :func:`pack_archive`."""
    archive = Path(archive)
    archive.parent.mkdir(parents=True, exist_ok=True)
    bad = "tiny-imagenet-200/../../evil.txt" if kind == "dotdot" else str(archive.parent.resolve() / "evil-abs.txt")
    members = {"tiny-imagenet-200/wnids.txt": b"n01443537\n", bad: b"pwned\n"}
    if archive.suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zf:
            for name, data in members.items():
                zf.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps the name as given
        return archive
    with tarfile.open(archive, "w:gz" if archive.name.endswith((".tgz", ".tar.gz")) else "w") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return archive
