"""Corrupt image files: a truncated JPEG / PNG / .mat raises CorruptImageError naming the
file and the fix, also from DataLoader worker processes and through Lightning's fit; ``data.verify=true``
decodes every file at prepare_data and lists every bad one; a clean dataset verifies."""

from __future__ import annotations

import pickle
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from PIL import ImageFile

from dyconv.datamodules import (
    ImageNetDataModule,
    ImagenetteDataModule,
    MNISTDataModule,
    TinyImageNetDataModule,
    VOCDataModule,
    VOCSBDDataModule,
)
from dyconv.datamodules.images import CorruptImageError, load_image, verify_files
from dyconv.errors import ConfigError
from fakedata import make_imagenet, make_imagenette, make_tinyimagenet, make_voc, make_voc_sbd, truncate

CONF = Path(__file__).resolve().parents[2] / "src" / "dyconv" / "conf" / "data"
COMMON = {"batch_size": 2, "seed": 0}


def _drain(loader) -> int:
    return sum(1 for _ in loader)


def _assert_names(err: BaseException, *paths: Path) -> str:
    msg = str(err)
    for p in paths:
        assert str(p) in msg, (p, msg)
    assert "Traceback" not in msg  # a worker's wrapped traceback is reduced to the message
    return msg


# ---------------------------------------------------------------------------------------- while training
@pytest.mark.parametrize("num_workers", [0, 1])
def test_imagenette_truncated_jpeg_named_in_loader_error(tmp_path, num_workers):
    info = make_imagenette(tmp_path)
    bad = truncate(info["folder"] / sorted(info["train"])[1])
    dm = ImagenetteDataModule(root=tmp_path, num_classes=3, image_size=16, num_workers=num_workers, **COMMON)
    dm.prepare_data()  # verify=false: only the layout is checked
    dm.setup("fit")
    assert _drain(dm.val_dataloader()) == 3  # the val split is intact
    with pytest.raises(CorruptImageError) as e:
        _drain(dm.train_dataloader())
    msg = _assert_names(e.value, bad)
    assert "truncated" in msg.lower() and "data.verify=true" in msg and "intact copy" in msg
    if num_workers:
        assert "DataLoader worker process 0" in msg


@pytest.mark.parametrize("num_workers", [0, 1])
def test_tinyimagenet_val_and_imagenet_truncated(tmp_path, num_workers):
    tiny = make_tinyimagenet(tmp_path / "t")
    bad = truncate(tiny["folder"] / "val" / "images" / sorted(tiny["val"])[-1])
    dm = TinyImageNetDataModule(root=tmp_path / "t", num_classes=3, image_size=16, num_workers=num_workers, **COMMON)
    dm.setup("fit")
    assert _drain(dm.train_dataloader()) == 6
    with pytest.raises(CorruptImageError) as e:
        _drain(dm.val_dataloader())
    _assert_names(e.value, bad)

    inet = make_imagenet(tmp_path / "i")
    bad = truncate(tmp_path / "i" / sorted(inet["train"])[0], keep=0.1)  # header cut: open() fails
    dm = ImageNetDataModule(root=tmp_path / "i", num_classes=3, image_size=16, num_workers=num_workers, **COMMON)
    dm.setup("fit")
    with pytest.raises(CorruptImageError) as e:
        _drain(dm.train_dataloader())
    _assert_names(e.value, bad)


def test_voc_truncated_mask_and_image(tmp_path):
    info = make_voc(tmp_path)
    ids = sorted(info["train"])
    mask = truncate(info["folder"] / "SegmentationClass" / f"{ids[0]}.png")
    image = truncate(info["folder"] / "JPEGImages" / f"{ids[1]}.jpg")
    dm = VOCDataModule(root=tmp_path, image_size=16, eval_size=16, num_workers=0, **COMMON)
    dm.setup("fit")
    by_id = {s.id: k for k, s in enumerate(dm.train_set.samples)}
    with pytest.raises(CorruptImageError) as e:
        dm.train_set[by_id[ids[0]]]
    _assert_names(e.value, mask)
    with pytest.raises(CorruptImageError) as e:
        dm.train_set[by_id[ids[1]]]
    _assert_names(e.value, image)
    dm.train_set[by_id[ids[2]]]  # the others still load


def test_fit_surfaces_the_file_from_a_worker(tmp_path):
    """Through Lightning's fit loop (what dyconv.train runs) with a worker process: the CorruptImageError
    (a DyconvError, printed by the entry point as one line) reaches the caller with the file name."""
    info = make_tinyimagenet(tmp_path)
    bad = truncate(info["folder"] / "train" / info["wnids"][0] / "images" / f"{info['wnids'][0]}_2.JPEG")

    class Tiny(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(3, 3)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.cross_entropy(self.fc(x.mean((2, 3))), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    dm = TinyImageNetDataModule(root=tmp_path, num_classes=3, image_size=16, num_workers=1, batch_size=12, seed=0)
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    with pytest.raises(CorruptImageError) as e:
        trainer.fit(Tiny(), datamodule=dm)
    _assert_names(e.value, bad)


def test_error_pickles_and_truncation_is_not_papered_over(tmp_path):
    info = make_imagenette(tmp_path)
    bad = truncate(info["folder"] / sorted(info["val"])[0])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False  # set, PIL would pad the file with gray silently
    with pytest.raises(CorruptImageError) as e:
        load_image(bad)
    assert isinstance(e.value, OSError)  # code that caught PIL's OSError still catches it
    again = pickle.loads(pickle.dumps(e.value))
    assert type(again) is CorruptImageError and str(again) == str(e.value) and again.paths == [str(bad)]


# ---------------------------------------------------------------------------------------- data.verify
def test_verify_lists_every_bad_file_tinyimagenet(tmp_path):
    info = make_tinyimagenet(tmp_path)
    folder = info["folder"]
    bad = [
        truncate(folder / "train" / info["wnids"][1] / "images" / f"{info['wnids'][1]}_0.JPEG"),
        truncate(folder / "val" / "images" / "val_4.JPEG", keep=0.2),
    ]
    total = len(info["train"]) + len(info["val"])  # what fakedata wrote for the two splits read
    dm = TinyImageNetDataModule(root=tmp_path, num_classes=3, verify=True, **COMMON)
    with pytest.raises(CorruptImageError) as e:
        dm.prepare_data()
    msg = _assert_names(e.value, *bad)
    assert f"2 of {total} files" in msg and "Fix:" in msg
    assert sorted(e.value.paths) == sorted(map(str, bad))
    TinyImageNetDataModule(root=tmp_path, num_classes=3, verify=False, **COMMON).prepare_data()  # off: no decoding


def test_verify_voc_sbd_covers_images_masks_and_mat_files(tmp_path):
    info = make_voc_sbd(tmp_path)
    voc, sbd = info["voc"]["folder"], info["sbd"]["folder"]
    sbd_only = sorted(i for i, (src, _) in info["expected_train"].items() if src == "sbd")
    bad = [
        truncate(voc / "SegmentationClass" / f"{sorted(info['voc_val_ids'])[0]}.png"),
        truncate(voc / "JPEGImages" / f"{sorted(info['voc']['train'])[0]}.jpg"),
        truncate(sbd / "cls" / f"{sbd_only[0]}.mat"),
        truncate(sbd / "img" / f"{sbd_only[1]}.jpg"),
    ]
    # not read by voc_sbd: a JPEG without segmentation and the SBD copy of a VOC val id
    truncate(voc / "JPEGImages" / "2012_999999.jpg")
    truncate(sbd / "img" / f"{sorted(info['voc_val_ids'])[0]}.jpg")
    dm = VOCSBDDataModule(root=tmp_path, verify=True, **COMMON)
    with pytest.raises(CorruptImageError) as e:
        dm.prepare_data()
    n_files = 2 * (len(info["expected_train"]) + len(info["voc_val_ids"]))  # image + mask per sample
    msg = _assert_names(e.value, *bad)
    assert f"{len(bad)} of {n_files} files" in msg and sorted(e.value.paths) == sorted(map(str, bad))


@pytest.mark.parametrize("name", ["imagenette", "imagenet", "tinyimagenet", "voc", "voc_sbd"])
def test_verify_passes_a_clean_dataset(tmp_path, name, caplog):
    make = {"imagenette": make_imagenette, "imagenet": make_imagenet, "tinyimagenet": make_tinyimagenet,
            "voc": make_voc, "voc_sbd": make_voc_sbd}[name]  # fmt: skip
    make(tmp_path)
    raw = OmegaConf.load(CONF / f"{name}.yaml")
    assert raw.verify is False  # the config key exists, off by default
    cls = {"imagenette": ImagenetteDataModule, "imagenet": ImageNetDataModule, "tinyimagenet": TinyImageNetDataModule,
           "voc": VOCDataModule, "voc_sbd": VOCSBDDataModule}[name]  # fmt: skip
    kwargs = {} if name.startswith("voc") else {"num_classes": 3}
    with caplog.at_level("INFO", logger="dyconv.datamodules.images"):
        cls(root=tmp_path, verify=True, **kwargs, **COMMON).prepare_data()
    assert "all" in caplog.text and "files decode" in caplog.text


def test_verify_listing_is_capped(tmp_path):
    paths = [str(tmp_path / f"missing_{i:03d}.jpg") for i in range(53)]
    with pytest.raises(CorruptImageError) as e:
        verify_files([(p, load_image) for p in paths], dataset="fake", threads=4)
    msg = str(e.value)
    assert "53 of 53 files" in msg and "... and 3 more" in msg
    assert paths[49] in msg and paths[50] not in msg and len(e.value.paths) == 53


def test_verify_unsupported_dataset_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.verify=true is not supported by MNISTDataModule"):
        MNISTDataModule(root=tmp_path, verify=True)
