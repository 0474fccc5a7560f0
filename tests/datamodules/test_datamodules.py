"""Every DataModule on a fake copy of its dataset in the exact on-disk format (tests/fakedata.py):
labels and masks come out exactly as written, voc_sbd never trains on a VOC val image, missing data
fails with one clear message, the data configs instantiate, and the global batch is split per device."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from torch.utils.data import DistributedSampler

from dyconv.datamodules import (
    ChecksumError,
    DatasetNotFoundError,
    ImageNetDataModule,
    ImagenetteDataModule,
    MNISTDataModule,
    TinyImageNetDataModule,
    VOCDataModule,
    VOCSBDDataModule,
    pad_collate,
)
from dyconv.datamodules.mnist_offline import MNIST_MEAN, MNIST_STD
from dyconv.datamodules.segmentation_transforms import SegmentationEvalTransform, SegmentationTrainTransform
from fakedata import (
    identify,
    make_imagenet,
    make_imagenette,
    make_mnist,
    make_tinyimagenet,
    make_voc,
    make_voc_sbd,
)

CONF = Path(__file__).resolve().parents[2] / "src" / "dyconv" / "conf" / "data"
COMMON = {"batch_size": 2, "num_workers": 0, "seed": 0}


def _classified(dataset, colors) -> dict:
    """{file key: label} recovered by decoding which fake image each transformed tensor shows."""
    out = {}
    for i in range(len(dataset)):
        image, label = dataset[i]
        assert image.dtype == torch.float32 and image.shape[0] == 3
        out[identify(image, colors)] = label
    return out


# ---------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return root, make_tinyimagenet(root)


@pytest.fixture(scope="module")
def voc_sbd(tmp_path_factory):
    root = tmp_path_factory.mktemp("vocsbd")
    return root, make_voc_sbd(root)


# ---------------------------------------------------------------------------------------- MNIST
def test_mnist_labels_split_and_test_exact(tmp_path):
    info = make_mnist(tmp_path, n_train=30, n_test=10)
    dm = MNISTDataModule(root=tmp_path, val_size=6, **COMMON)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (24, 6, 10)

    def indices(ds, images, labels):
        seen = []
        for x, y in ds:
            assert x.shape == (1, 28, 28)
            pixels = torch.round((x[0] * MNIST_STD + MNIST_MEAN) * 255).to(torch.uint8).numpy()
            idx = int(pixels[0, 0])  # the generator wrote the image index there
            assert np.array_equal(pixels, images[idx]) and y == int(labels[idx])
            seen.append(idx)
        return seen

    train = indices(dm.train_set, info["train_images"], info["train_labels"])
    val = indices(dm.val_set, info["train_images"], info["train_labels"])
    assert sorted(train + val) == list(range(30))  # disjoint, complete
    assert indices(dm.test_set, info["test_images"], info["test_labels"]) == list(range(10))
    again = MNISTDataModule(root=tmp_path, val_size=6, **COMMON)
    again.setup()
    assert indices(again.val_set, info["train_images"], info["train_labels"]) == val  # seeded split


def test_mnist_resized_three_channels_and_gz_only(tmp_path, monkeypatch):
    info = make_mnist(tmp_path, n_train=12, n_test=4)
    for f in (tmp_path / "MNIST" / "raw").glob("*-ubyte"):
        f.unlink()  # only the .gz as downloaded: prepare_data verifies and decompresses them, no network
    dm = MNISTDataModule(root=tmp_path, val_size=2, in_channels=3, image_size=32, **COMMON)
    with pytest.raises(ChecksumError, match="Delete"):  # the fakes are not the published files
        dm.prepare_data()
    fake_files = tuple(dataclasses.replace(f, md5=info["md5"][f.filename]) for f in MNISTDataModule.FILES)
    monkeypatch.setattr(MNISTDataModule, "FILES", fake_files)
    dm.prepare_data()
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 32, 32) and torch.equal(x[:, 0], x[:, 2]) and y.dtype == torch.long


def test_mnist_missing_message(tmp_path):
    dm = MNISTDataModule(root=tmp_path / "nowhere", **COMMON)
    with pytest.raises(DatasetNotFoundError) as e:
        dm.prepare_data()
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in msg and "train-images-idx3-ubyte" in msg
    assert "data.download=true" in msg and "https://ossci-datasets.s3.amazonaws.com/mnist/" in msg


# ---------------------------------------------------------------------------------------- Imagenette
def test_imagenette_labels_exact(tmp_path):
    info = make_imagenette(tmp_path)
    dm = ImagenetteDataModule(root=tmp_path, image_size=24, num_classes=3, **COMMON)
    dm.prepare_data()
    dm.setup()
    assert dm.wnids == info["wnids"]
    assert _classified(dm.train_set, info["colors"]) == info["train"]  # through RandomResizedCrop + flip
    assert _classified(dm.val_set, info["colors"]) == info["val"]
    x, y = next(iter(dm.val_dataloader()))
    assert x.shape == (2, 3, 24, 24) and y.dtype == torch.long
    with pytest.raises(ValueError, match=r"data\.num_classes=3"):
        ImagenetteDataModule(root=tmp_path, num_classes=10, **COMMON).setup()


def test_imagenette_missing_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        ImagenetteDataModule(root=tmp_path, size="160px", **COMMON).setup()
    msg = str(e.value)
    assert str(tmp_path / "imagenette2-160") in msg and "train/<wnid>/*.JPEG" in msg
    assert "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz" in msg and "data.download=true" in msg


# ---------------------------------------------------------------------------------------- Tiny ImageNet
def test_tinyimagenet_labels_exact_flat_val_sorted_wnids_grayscale(tiny):
    root, info = tiny
    assert info["wnids_file_order"] != info["wnids"]  # the fixture's wnids.txt is unsorted, as distributed
    dm = TinyImageNetDataModule(root=root, image_size=32, num_classes=3, **COMMON)
    dm.setup()
    assert dm.wnids == sorted(info["wnids_file_order"])
    assert _classified(dm.train_set, info["colors"]) == info["train"]  # through RandomCrop(pad 4) + flip
    assert _classified(dm.val_set, info["colors"]) == info["val"]  # flat val/images + val_annotations.txt
    assert dm.test_set is dm.val_set
    names = {Path(p).name: i for i, (p, _) in enumerate(dm.val_set.samples)}
    gray = dm.val_set[names[next(g for g in info["gray"] if g.startswith("val_"))]][0]
    assert gray.shape == (3, 32, 32)  # grayscale JPEG converted to RGB
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 32, 32) and y.dtype == torch.long


def test_tinyimagenet_holdout_and_resize(tiny):
    root, info = tiny
    dm = TinyImageNetDataModule(root=root, holdout=3, image_size=16, augment="resized_crop", num_classes=3, **COMMON)
    dm.setup()
    train, held = _classified(dm.train_set, info["colors"]), _classified(dm.val_set, info["colors"])
    assert len(held) == 3 and not set(train) & set(held) and {**train, **held} == info["train"]
    assert _classified(dm.test_set, info["colors"]) == info["val"]
    assert dm.train_set[0][0].shape == (3, 16, 16)


def test_tinyimagenet_missing_and_incomplete(tmp_path, tiny):
    with pytest.raises(DatasetNotFoundError) as e:
        TinyImageNetDataModule(root=tmp_path, **COMMON).prepare_data()
    msg = str(e.value)
    assert str(tmp_path / "tiny-imagenet-200") in msg and "val/val_annotations.txt" in msg and "wnids.txt" in msg
    assert "http://cs231n.stanford.edu/tiny-imagenet-200.zip" in msg and "data.download=true" in msg
    shutil.copytree(tiny[0] / "tiny-imagenet-200", tmp_path / "tiny-imagenet-200")
    (tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_1.JPEG").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"1 of the 9 images listed in val_annotations\.txt are missing"):
        TinyImageNetDataModule(root=tmp_path, num_classes=3, **COMMON).setup()


def test_relative_root_resolves_from_cwd(tiny, monkeypatch):
    root, info = tiny
    monkeypatch.chdir(root.parent)
    dm = TinyImageNetDataModule(root=root.name, image_size=32, num_classes=3, **COMMON)
    assert dm.root == root and dm.root.is_absolute()
    dm.setup()
    assert len(dm.train_set) == len(info["train"])


# ---------------------------------------------------------------------------------------- ImageNet
def test_imagenet_labels_exact(tmp_path):
    info = make_imagenet(tmp_path)
    dm = ImageNetDataModule(root=tmp_path, image_size=16, num_classes=3, **COMMON)
    dm.setup()
    assert _classified(dm.train_set, info["colors"]) == info["train"]
    assert _classified(dm.val_set, info["colors"]) == info["val"]
    assert dm.val_set[0][0].shape == (3, 16, 16)


def test_imagenet_flat_val_explains_sorting(tmp_path):
    make_imagenet(tmp_path, flat_val=True)
    with pytest.raises(DatasetNotFoundError) as e:
        ImageNetDataModule(root=tmp_path, num_classes=3, **COMMON).prepare_data()
    msg = str(e.value)
    assert "holds 6 images directly" in msg and "val/<wnid>/" in msg and "valprep.sh" in msg
    assert "LOC_val_solution.csv" in msg and "image-net.org" in msg
    with pytest.raises(ValueError, match="cannot be downloaded"):
        ImageNetDataModule(root=tmp_path, download=True, **COMMON)


# ---------------------------------------------------------------------------------------- VOC
def test_voc_masks_exact(tmp_path):
    info = make_voc(tmp_path)
    # eval on full images: masks pixel for pixel, padded with 255 by the collate when sizes differ
    dm = VOCDataModule(root=tmp_path, image_size=48, eval_size=None, scale_range=(1.0, 1.0), hflip=False, **COMMON)
    dm.prepare_data()
    dm.setup()
    assert dm.val_set.ids == list(info["val"]) and dm.train_set.ids == list(info["train"])
    for i, sid in enumerate(dm.val_set.ids):
        image, mask = dm.val_set[i]
        assert image.dtype == torch.float32 and mask.dtype == torch.int64
        assert np.array_equal(mask.numpy(), info["val"][sid])
    # train at scale 1 without flip, crop larger than the image: mask top-left, 255 padding, image padded with 0
    for i, sid in enumerate(dm.train_set.ids):
        image, mask = dm.train_set[i]
        h, w = info["train"][sid].shape
        assert image.shape == (3, 48, 48) and mask.shape == (48, 48)
        assert np.array_equal(mask[:h, :w].numpy(), info["train"][sid])
        assert (mask[h:] == 255).all() and (mask[:, w:] == 255).all() and (image[:, h:] == 0).all()
    images, masks = next(iter(dm.val_dataloader()))
    h = max(m.shape[0] for m in list(info["val"].values())[:2])
    w = max(m.shape[1] for m in list(info["val"].values())[:2])
    assert images.shape == (2, 3, h, w) and masks.shape == (2, h, w)
    values = set(torch.unique(masks).tolist())
    assert 255 in values and values <= set(range(21)) | {255}


def test_voc_default_transforms_and_batches(tmp_path):
    make_voc(tmp_path)
    dm = VOCDataModule(root=tmp_path, image_size=32, drop_last=True, **COMMON)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (2, 3, 32, 32) and x.dtype == torch.float32 and y.shape == (2, 32, 32) and y.dtype == torch.long
    assert set(torch.unique(y).tolist()) <= set(range(21)) | {255}
    x, y = next(iter(dm.val_dataloader()))  # eval_size defaults to 513: padded and center-cropped
    assert x.shape == (2, 3, 513, 513) and y.shape == (2, 513, 513)


def test_voc_missing_message(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        VOCDataModule(root=tmp_path, **COMMON).setup()
    msg = str(e.value)
    assert str(tmp_path / "VOCdevkit" / "VOC2012") in msg and "SegmentationClass/<id>.png" in msg
    assert "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar" in msg
    assert "data.download=true" in msg


def test_voc_sbd_no_val_leak_and_voc_mask_wins(voc_sbd):
    root, info = voc_sbd
    sbd_ids = set(info["sbd"]["train"]) | set(info["sbd"]["val"])
    assert info["voc_val_ids"] & sbd_ids  # the fixture puts VOC val images in SBD: a leak would show
    dm = VOCSBDDataModule(root=root, image_size=48, eval_size=None, scale_range=(1.0, 1.0), hflip=False, **COMMON)
    dm.prepare_data()
    dm.setup()
    train_ids = set(dm.train_set.ids)
    assert not train_ids & info["voc_val_ids"]
    assert train_ids == set(info["expected_train"])
    assert dm.val_set.ids == list(info["voc"]["val"])
    for i, sample in enumerate(dm.train_set.samples):
        source, expected = info["expected_train"][sample.id]
        assert sample.source == source
        _, mask = dm.train_set[i]
        h, w = expected.shape
        assert np.array_equal(mask[:h, :w].numpy(), expected)
    sbd_masks = {**info["sbd"]["train"], **info["sbd"]["val"]}
    shared = set(info["voc"]["train"]) & sbd_ids
    assert shared  # ids with both masks, and the masks differ: the comparison above proves the VOC one was read
    assert all(not np.array_equal(info["voc"]["train"][i], sbd_masks[i]) for i in shared)


def test_voc_sbd_root_override_and_missing_sbd(voc_sbd, tmp_path):
    root, info = voc_sbd
    with pytest.raises(DatasetNotFoundError) as e:
        VOCSBDDataModule(root=root, sbd_root=tmp_path / "sbd", **COMMON).setup()
    msg = str(e.value)
    assert str(tmp_path / "sbd") in msg and "GTcls" in msg and "cls/<id>.mat" in msg
    assert "semantic_contours/benchmark.tgz" in msg and "data.sbd_root" in msg
    shutil.copytree(root / "SBD", tmp_path / "sbd")
    dm = VOCSBDDataModule(root=root, sbd_root=tmp_path / "sbd", **COMMON)
    dm.setup()
    assert set(dm.train_set.ids) == set(info["expected_train"])
    assert all(s.mask.startswith(str(tmp_path / "sbd")) for s in dm.train_set.samples if s.source == "sbd")


# ---------------------------------------------------------------------------------------- transforms
def test_segmentation_train_transform_is_joint_and_nearest():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    mask = rng.integers(0, 21, (30, 40), dtype=np.uint8)
    mask[::7] = 255
    red = (mask.astype(np.float32) * 10).clip(0, 255).astype(np.uint8)  # the image's red channel encodes the mask
    image = Image.fromarray(np.stack([red, red, red], -1))
    t = SegmentationTrainTransform(24, scale_range=(0.5, 2.0), hflip=True)
    for _ in range(12):
        x, y = t(image, mask)
        assert x.shape == (3, 24, 24) and y.shape == (24, 24) and y.dtype == torch.long
        assert set(torch.unique(y).tolist()) <= set(np.unique(mask).tolist()) | {255}  # nearest only
    t1 = SegmentationTrainTransform(24, scale_range=(1.0, 1.0), hflip=True)
    for _ in range(12):
        x, y = t1(image, mask)
        r = torch.round((x[0] * 0.229 + 0.485) * 255)
        keep = y != 255
        assert torch.equal(r[keep], (y[keep] * 10).float())  # same crop and flip on both
    e = SegmentationEvalTransform(64)
    x, y = e(image, mask)
    assert x.shape == (3, 64, 64) and int((y != 255).sum()) == int((torch.from_numpy(mask) != 255).sum())


def test_pad_collate_pads_images_zero_masks_ignore():
    a = (torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.long))
    b = (torch.ones(3, 6, 3), torch.ones(6, 3, dtype=torch.long))
    images, masks = pad_collate([a, b], ignore_index=255)
    assert images.shape == (2, 3, 6, 5) and masks.shape == (2, 6, 5)
    assert (images[0, :, 4:] == 0).all() and (masks[0, 4:] == 255).all() and (masks[1, :, 3:] == 255).all()
    assert (masks[0, :4] == 0).all() and (images[1, :, :, :3] == 1).all()


# ---------------------------------------------------------------------------------------- configs
DATA_CONFIGS = {
    "mnist": (MNISTDataModule, "classification"),
    "imagenette": (ImagenetteDataModule, "classification"),
    "tinyimagenet": (TinyImageNetDataModule, "classification"),
    "imagenet": (ImageNetDataModule, "classification"),
    "voc": (VOCDataModule, "segmentation"),
    "voc_sbd": (VOCSBDDataModule, "segmentation"),
}


@pytest.mark.parametrize("name", sorted(DATA_CONFIGS))
def test_data_config_instantiates(name, tmp_path):
    cls, task = DATA_CONFIGS[name]
    raw = OmegaConf.load(CONF / f"{name}.yaml")
    # The data config selects the task (its kind is declared once, by the task class); the
    # DataModule itself carries no second copy.
    assert list(raw.defaults) == [{"/task@_global_.task": task}] and not hasattr(cls, "task")
    data = OmegaConf.to_container(raw, resolve=False)
    del data["defaults"]
    cfg = OmegaConf.create({"paths": {"data_dir": str(tmp_path)}, "seed": 3, "data": data})
    for key in ("num_classes", "in_channels", "image_size", "batch_size", "num_workers", "pin_memory",
                "persistent_workers", "seed", "root", "download"):  # fmt: skip
        assert key in cfg.data, key
    if task == "segmentation":
        assert cfg.data.ignore_index == 255 and cfg.data.eval_size == cfg.data.image_size
    dm = instantiate(cfg.data)
    assert type(dm) is cls and dm.seed == 3 and dm.num_classes == cfg.data.num_classes
    assert str(dm.root).startswith(str(tmp_path))
    with pytest.raises(DatasetNotFoundError):  # empty data_dir: one clear error, no network
        OmegaConf.update(cfg, "data.download", False)
        instantiate(cfg.data).setup()


# ---------------------------------------------------------------------------------------- distribution
def test_global_batch_is_split_over_world_size(tiny):
    root, _ = tiny
    dm = TinyImageNetDataModule(root=root, image_size=32, num_classes=3, batch_size=6, seed=0, num_workers=0)
    dm.setup()
    dm.trainer = SimpleNamespace(world_size=2, global_rank=1)
    loader = dm.train_dataloader()
    assert loader.batch_size == 3 and isinstance(loader.sampler, DistributedSampler)
    assert loader.sampler.num_replicas == 2 and loader.sampler.rank == 1
    assert dm.val_dataloader().batch_size == 3
    dm.trainer = SimpleNamespace(world_size=4, global_rank=0)
    with pytest.raises(ValueError, match="must divide by the world size"):
        dm.train_dataloader()
    dm.trainer = None
    assert dm.train_dataloader().batch_size == 6
