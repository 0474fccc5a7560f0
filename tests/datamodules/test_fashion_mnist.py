"""Fashion-MNIST: Debian's package used with no download, downloads checksum-verified, the real files."""

from __future__ import annotations

import dataclasses
import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dyconv.datamodules import ChecksumError, DatasetNotFoundError, FashionMNISTDataModule
from dyconv.datamodules import fashion_mnist as fm
from fakedata import make_mnist

COMMON = {"batch_size": 4, "num_workers": 0, "seed": 0}


@pytest.fixture
def debian_dir(tmp_path, monkeypatch):
    """Fake idx files gzipped the way Debian ships them (recompressed: other .gz bytes), their md5s
    patched in; any download attempt fails the test."""
    info = make_mnist(tmp_path / "gen", n_train=30, n_test=10, folder="FashionMNIST")
    system = tmp_path / "usr-share-datasets"
    system.mkdir()
    for name in info["raw_md5"]:
        (system / f"{name}.gz").write_bytes(gzip.compress((info["raw_dir"] / name).read_bytes(), 9, mtime=12345))
    monkeypatch.setattr(fm, "FASHION_MNIST_RAW_MD5", info["raw_md5"])

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded although the Debian files are there")

    monkeypatch.setattr(fm, "download_file", no_download)
    return system, info


def _pixels(x: torch.Tensor) -> np.ndarray:
    mean, std = FashionMNISTDataModule.mean[0], FashionMNISTDataModule.std[0]
    return torch.round((x[0] * std + mean) * 255).to(torch.uint8).numpy()


def test_debian_files_are_used_without_download_split_and_exact(tmp_path, debian_dir):
    system, info = debian_dir
    dm = FashionMNISTDataModule(root=tmp_path / "data", system_dir=system, download=True, val_size=6, **COMMON)
    dm.prepare_data()
    dm.setup()
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    assert sorted(p.name for p in raw.glob("*-ubyte")) == sorted(info["raw_md5"])
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (24, 6, 10)
    seen = []
    for ds, images, labels in ((dm.train_set, info["train_images"], info["train_labels"]),
                               (dm.val_set, info["train_images"], info["train_labels"])):
        for x, y in ds:
            idx = int(_pixels(x)[0, 0])
            assert np.array_equal(_pixels(x), images[idx]) and y == int(labels[idx])
            seen.append(idx)
    assert sorted(seen) == list(range(30))
    assert [int(_pixels(x)[0, 0]) for x, _ in dm.test_set] == list(range(10))


def test_a_corrupt_debian_file_is_refused_and_not_kept(tmp_path, debian_dir):
    system, info = debian_dir
    name = "train-labels-idx1-ubyte"
    data = bytearray(gzip.decompress((system / f"{name}.gz").read_bytes()))
    data[-1] ^= 1
    (system / f"{name}.gz").write_bytes(gzip.compress(bytes(data)))
    dm = FashionMNISTDataModule(root=tmp_path / "data", system_dir=system, val_size=6, **COMMON)
    with pytest.raises(ChecksumError, match=f"{name} has md5 .* expected {info['raw_md5'][name]}"):
        dm.prepare_data()
    assert not (tmp_path / "data" / "FashionMNIST" / "raw" / name).exists()


def test_download_verifies_the_archives_and_the_decompressed_files(tmp_path, monkeypatch):
    info = make_mnist(tmp_path / "mirror", n_train=12, n_test=4, folder="FashionMNIST")
    monkeypatch.setattr(fm, "FASHION_MNIST_RAW_MD5", info["raw_md5"])
    files = tuple(dataclasses.replace(f, md5=info["md5"][f.filename]) for f in FashionMNISTDataModule.FILES)
    monkeypatch.setattr(FashionMNISTDataModule, "FILES", files)
    fetched = []

    def fake_download(urls, dest, *, md5=None, **kwargs):
        assert urls[0].startswith("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
        assert md5 == info["md5"][Path(dest).name]
        fetched.append(Path(dest).name)
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(info["raw_dir"] / Path(dest).name, dest)
        return Path(dest)

    monkeypatch.setattr(fm, "download_file", fake_download)
    dm = FashionMNISTDataModule(root=tmp_path / "data", system_dir=None, download=True, val_size=2, **COMMON)
    dm.prepare_data()
    dm.setup()
    assert sorted(fetched) == sorted(info["md5"]) and len(dm.test_set) == 4


def test_missing_files_say_where_and_how(tmp_path):
    dm = FashionMNISTDataModule(root=tmp_path / "nowhere", system_dir=tmp_path / "no-debian", **COMMON)
    with pytest.raises(DatasetNotFoundError) as e:
        dm.prepare_data()
    msg = str(e.value)
    assert str(tmp_path / "nowhere" / "FashionMNIST" / "raw") in msg and "t10k-images-idx3-ubyte" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "data.download=true" in msg


@pytest.mark.skipif(not Path(fm.DEBIAN_DIR, "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian's dataset-fashion-mnist package is not installed")
def test_the_real_debian_files(tmp_path):
    dm = FashionMNISTDataModule(root=tmp_path, **COMMON)  # verifies the published uncompressed md5s
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (55_000, 5_000, 10_000)
    labels = torch.cat([dm.train_set.labels, dm.val_set.labels])
    assert torch.bincount(labels).tolist() == [6000] * 10 and torch.bincount(dm.test_set.labels).tolist() == [1000] * 10
    assert int(dm.test_set.labels[0]) == 9  # the first test image is an ankle boot
