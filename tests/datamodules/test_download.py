"""The download path, exercised for real against local archives in the official formats (file:// URLs
and a localhost HTTP server with Range support): checksums, resume, mirrors, safe extraction, the
completion marker, and each DataModule's ``download=true`` end to end."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import tarfile
import threading
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dyconv.datamodules import (
    ChecksumError,
    DatasetNotFoundError,
    DownloadError,
    ImagenetteDataModule,
    MNISTDataModule,
    TinyImageNetDataModule,
    UnsafeArchiveError,
    VOCSBDDataModule,
)
from dyconv.datamodules import download as dl
from fakedata import (
    make_imagenette,
    make_malicious_archive,
    make_mnist,
    make_tinyimagenet,
    make_voc_sbd,
    md5,
    pack_official,
)

COMMON = {"batch_size": 2, "num_workers": 0, "seed": 0}


@pytest.fixture(scope="module")
def tiny_zip(tmp_path_factory):
    """(official-format tiny-imagenet-200.zip, its md5, what make_tinyimagenet wrote)."""
    src = tmp_path_factory.mktemp("tiny_src")
    info = make_tinyimagenet(src)
    path, digest = pack_official("tinyimagenet", src, tmp_path_factory.mktemp("tiny_arch"))
    return path, digest, info


def _archive(path: Path, digest: str, filename: str | None = None) -> dl.Archive:
    return dl.Archive(urls=(path.as_uri(),), filename=filename or path.name, md5=digest)


# ---------------------------------------------------------------------------------------- download_file
class _RangeHandler(http.server.BaseHTTPRequestHandler):
    payload = b""
    ranges: list[str | None] = []

    def do_GET(self) -> None:
        rng = self.headers.get("Range")
        type(self).ranges.append(rng)
        start = int(rng.split("=")[1].rstrip("-")) if rng else 0
        body = self.payload[start:]
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def http_server():
    _RangeHandler.payload = bytes(range(256)) * 4096  # 1 MiB
    _RangeHandler.ranges = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/file.bin", _RangeHandler
    server.shutdown()
    server.server_close()


def test_download_file_verifies_and_never_leaves_a_bad_file(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc" * 1000)
    dest = tmp_path / "out" / "file.bin"
    assert dl.download_file([src.as_uri()], dest, md5=md5(src)) == dest
    assert dest.read_bytes() == src.read_bytes() and not dest.with_name("file.bin.part").exists()
    bad = tmp_path / "bad.bin"
    with pytest.raises(ChecksumError, match="md5 checksum mismatch") as e:
        dl.download_file([src.as_uri()], bad, md5="0" * 32)
    assert "discarded" in str(e.value) and not bad.exists() and not bad.with_name("bad.bin.part").exists()
    sha = hashlib.sha256(src.read_bytes()).hexdigest()
    assert dl.download_file([src.as_uri()], tmp_path / "sha.bin", sha256=sha).read_bytes() == src.read_bytes()


def test_download_file_falls_back_to_mirror_and_explains_failure(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(b"payload")
    dead = (tmp_path / "missing.bin").as_uri()
    out = dl.download_file([dead, src.as_uri()], tmp_path / "a.bin", md5=md5(src))
    assert out.read_bytes() == b"payload"
    with pytest.raises(DownloadError) as e:
        dl.download_file([dead], tmp_path / "b.bin", md5=md5(src))
    assert "missing.bin" in str(e.value) and f"place it at {tmp_path / 'b.bin'}" in str(e.value)


def test_download_resumes_a_partial_file_over_http(tmp_path, http_server):
    url, handler = http_server
    payload = handler.payload
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(payload[:300_000])  # an interrupted earlier run
    dl.download_file([url], dest, md5=hashlib.md5(payload).hexdigest())
    assert dest.read_bytes() == payload and handler.ranges == ["bytes=300000-"]


def test_download_restarts_when_the_resumed_file_is_corrupt(tmp_path, http_server):
    url, handler = http_server
    payload = handler.payload
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(b"\0" * 1000)  # garbage from some other run
    dl.download_file([url], dest, md5=hashlib.md5(payload).hexdigest())
    assert dest.read_bytes() == payload and handler.ranges == ["bytes=1000-", None]


def test_existing_archive_is_reused_without_network(tmp_path, tiny_zip):
    path, digest, _ = tiny_zip
    local = tmp_path / "tiny-imagenet-200.zip"
    local.write_bytes(path.read_bytes())
    archive = dl.Archive(urls=((tmp_path / "nowhere.zip").as_uri(),), filename=local.name, md5=digest)
    assert dl.download_file(archive.urls, local, md5=archive.md5) == local  # placed by hand: used as is


# ---------------------------------------------------------------------------------------- safe_extract
@pytest.mark.parametrize("suffix", [".tar", ".tgz", ".zip"])
@pytest.mark.parametrize("kind", ["dotdot", "absolute"])
def test_malicious_archives_are_refused_before_writing(tmp_path, suffix, kind):
    archive = make_malicious_archive(tmp_path / "arch" / f"evil{suffix}", kind=kind)
    dest = tmp_path / "data" / "inner"
    with pytest.raises(UnsafeArchiveError, match=r"absolute path|'\.\.' component"):
        dl.safe_extract(archive, dest)
    assert not list(tmp_path.rglob("evil*.txt")) and not (dest / "tiny-imagenet-200").exists()


def test_tar_link_out_of_the_tree_is_refused(tmp_path):
    archive = tmp_path / "link.tar"
    with tarfile.open(archive, "w") as tf:
        info = tarfile.TarInfo("tiny-imagenet-200/passwd")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(info)
    with pytest.raises(UnsafeArchiveError):
        dl.safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out" / "tiny-imagenet-200" / "passwd").exists()


def test_strip_prefix_extracts_only_that_folder(tmp_path):
    archive = tmp_path / "b.tgz"
    with tarfile.open(archive, "w:gz") as tf:
        for name in ("dataset/train.txt", "dataset/cls/a.mat", "x"):
            name = f"benchmark_RELEASE/{name}"
            info = tarfile.TarInfo(name)
            info.size = 2
            tf.addfile(info, io.BytesIO(b"ok"))
    dl.safe_extract(archive, tmp_path / "SBD", strip_prefix="benchmark_RELEASE/dataset")
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.joinpath("SBD").rglob("*")) == [
        "SBD/cls", "SBD/cls/a.mat", "SBD/train.txt"
    ]  # fmt: skip


# ---------------------------------------------------------------------------------------- markers, via a DataModule
def test_tinyimagenet_download_extracts_marks_and_loads(tmp_path, tiny_zip, monkeypatch):
    path, digest, info = tiny_zip
    monkeypatch.setattr(TinyImageNetDataModule, "ARCHIVE", _archive(path, digest))
    dm = TinyImageNetDataModule(root=tmp_path, download=True, image_size=32, num_classes=3, **COMMON)
    dm.prepare_data()
    folder = tmp_path / "tiny-imagenet-200"
    assert (folder / dl.COMPLETE_MARKER).is_file() and not (folder / dl.EXTRACTING_MARKER).exists()
    assert (tmp_path / "tiny-imagenet-200.zip").is_file()  # kept: re-extraction needs no network
    dm.setup()
    assert {Path(p).name: y for p, y in dm.val_set.samples} == info["val"]
    assert {Path(p).name: y for p, y in dm.train_set.samples} == info["train"]

    def no_network(*args, **kwargs):
        raise AssertionError("a complete dataset must not be downloaded again")

    monkeypatch.setattr(dl, "download_file", no_network)
    TinyImageNetDataModule(root=tmp_path, download=True, num_classes=3, **COMMON).prepare_data()


def test_bad_checksum_leaves_no_marker_and_no_tree(tmp_path, tiny_zip, monkeypatch):
    path, _, _ = tiny_zip
    monkeypatch.setattr(TinyImageNetDataModule, "ARCHIVE", _archive(path, "0" * 32))
    with pytest.raises(ChecksumError, match="expected 00000000000000000000000000000000"):
        TinyImageNetDataModule(root=tmp_path, download=True, num_classes=3, **COMMON).prepare_data()
    assert not (tmp_path / "tiny-imagenet-200").exists() and not (tmp_path / "tiny-imagenet-200.zip").exists()


def test_interrupted_extraction_is_never_taken_as_complete(tmp_path, tiny_zip, monkeypatch):
    path, digest, info = tiny_zip
    monkeypatch.setattr(TinyImageNetDataModule, "ARCHIVE", _archive(path, digest))
    real_extract = dl.safe_extract

    def dies_halfway(archive, dest, **kwargs):
        with zipfile.ZipFile(archive) as zf:  # the whole tree lands, yet the job dies before the marker
            zf.extractall(dest)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dl, "safe_extract", dies_halfway)
    with pytest.raises(OSError, match="No space left"):
        TinyImageNetDataModule(root=tmp_path, download=True, num_classes=3, **COMMON).prepare_data()
    folder = tmp_path / "tiny-imagenet-200"
    assert (folder / dl.EXTRACTING_MARKER).exists() and not dl.is_complete(folder)
    with pytest.raises(DatasetNotFoundError, match="interrupted") as e:
        TinyImageNetDataModule(root=tmp_path, num_classes=3, **COMMON).setup()  # even though every file is there
    assert "data.download=true" in str(e.value)
    monkeypatch.setattr(dl, "safe_extract", real_extract)
    dm = TinyImageNetDataModule(root=tmp_path, download=True, num_classes=3, **COMMON)
    dm.prepare_data()
    assert dl.is_complete(folder) and not (folder / dl.EXTRACTING_MARKER).exists()
    dm.setup()
    assert len(dm.val_set) == len(info["val"])


def test_partial_tree_without_marker_is_re_extracted(tmp_path, tiny_zip, monkeypatch):
    path, digest, _ = tiny_zip
    with zipfile.ZipFile(path) as zf:  # someone else's half-extracted copy: no marker at all
        zf.extractall(tmp_path)
    lost = tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_0.JPEG"
    lost.unlink()
    monkeypatch.setattr(TinyImageNetDataModule, "ARCHIVE", _archive(path, digest))
    with pytest.raises(DatasetNotFoundError, match="missing"):
        TinyImageNetDataModule(root=tmp_path, num_classes=3, **COMMON).setup()
    TinyImageNetDataModule(root=tmp_path, download=True, num_classes=3, **COMMON).prepare_data()
    assert lost.is_file() and dl.is_complete(tmp_path / "tiny-imagenet-200")


def test_archive_without_the_expected_folder_is_rejected(tmp_path):
    wrong = tmp_path / "src" / "wrong.zip"
    wrong.parent.mkdir()
    with zipfile.ZipFile(wrong, "w") as zf:
        zf.writestr("something-else/readme.txt", "hi")
    with pytest.raises(DownloadError, match="did not produce"):
        dl.download_and_extract(
            _archive(wrong, md5(wrong)), download_dir=tmp_path, extract_dir=tmp_path, dataset_dir=tmp_path / "tiny"
        )
    assert not dl.is_complete(tmp_path / "tiny")


# ---------------------------------------------------------------------------------------- other datasets
def test_imagenette_download_tgz(tmp_path, monkeypatch):
    src = tmp_path / "src"
    info = make_imagenette(src)
    path, digest = pack_official("imagenette", src, tmp_path / "arch")
    archives = {**ImagenetteDataModule.ARCHIVES, "320px": _archive(path, digest)}
    monkeypatch.setattr(ImagenetteDataModule, "ARCHIVES", archives)
    root = tmp_path / "data"
    dm = ImagenetteDataModule(root=root, download=True, image_size=16, num_classes=3, **COMMON)
    dm.prepare_data()
    dm.setup()
    assert dl.is_complete(root / "imagenette2-320")
    got = {Path(p).relative_to(root / "imagenette2-320").as_posix(): y for p, y in dm.val_set._samples}
    assert got == info["val"]


def test_voc_and_sbd_download_official_layouts(tmp_path, monkeypatch):
    src = tmp_path / "src"
    info = make_voc_sbd(src)
    voc, voc_md5 = pack_official("voc", src, tmp_path / "arch")
    sbd, sbd_md5 = pack_official("sbd", src, tmp_path / "arch")
    monkeypatch.setattr(VOCSBDDataModule, "VOC_ARCHIVE", _archive(voc, voc_md5))
    monkeypatch.setattr(VOCSBDDataModule, "SBD_ARCHIVE", _archive(sbd, sbd_md5))
    root = tmp_path / "data"
    dm = VOCSBDDataModule(root=root, download=True, image_size=48, eval_size=None, scale_range=(1.0, 1.0),
                          hflip=False, **COMMON)  # fmt: skip
    dm.prepare_data()
    assert dl.is_complete(root / "VOCdevkit" / "VOC2012") and dl.is_complete(root / "SBD")
    assert (root / "SBD" / "cls").is_dir() and not (root / "SBD" / "benchmark_code").exists()
    assert not (root / "benchmark_RELEASE").exists()
    dm.setup()
    assert set(dm.train_set.ids) == set(info["expected_train"]) and not set(dm.train_set.ids) & info["voc_val_ids"]
    for i, sid in enumerate(dm.val_set.ids):
        assert np.array_equal(dm.val_set[i][1].numpy(), info["voc"]["val"][sid])


def test_mnist_download_from_mirror_files(tmp_path, monkeypatch):
    src = tmp_path / "mirror"
    info = make_mnist(src, n_train=20, n_test=6)
    raw = info["raw_dir"]
    files = tuple(
        dataclasses.replace(f, urls=((tmp_path / "dead" / f.filename).as_uri(), (raw / f.filename).as_uri()),
                            md5=info["md5"][f.filename])
        for f in MNISTDataModule.FILES
    )  # fmt: skip
    monkeypatch.setattr(MNISTDataModule, "FILES", files)
    root = tmp_path / "data"
    dm = MNISTDataModule(root=root, download=True, val_size=4, **COMMON)
    dm.prepare_data()
    for f in files:
        assert (root / "MNIST" / "raw" / f.filename[:-3]).read_bytes() == (raw / f.filename[:-3]).read_bytes()
    assert dl.is_complete(root / "MNIST" / "raw")
    dm.setup()
    assert [y for _, y in dm.test_set] == info["test_labels"].tolist()
    unreachable = tuple(dataclasses.replace(f, urls=((tmp_path / "dead" / f.filename).as_uri(),)) for f in files)
    monkeypatch.setattr(MNISTDataModule, "FILES", unreachable)
    with pytest.raises(DownloadError, match="place it at"):
        MNISTDataModule(root=tmp_path / "other", download=True, **COMMON).prepare_data()
