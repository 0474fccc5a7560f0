"""The download/unpack code never writes through a link planted at a name it creates (the gunzip temp
file, the ``.part`` download, the extraction marker), and a small ``.gz`` that unpacks to far more
than the file it stands for is refused before it fills the disk (checksum first, then a size cap)."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pathlib
import re
import tarfile
import threading
import zlib
from pathlib import Path

import pytest

from dyconv.datamodules import FashionMNISTDataModule, UnsafeArchiveError, extract
from dyconv.datamodules import download as dl
from dyconv.datamodules import fashion_mnist as fm

COMMON = {"batch_size": 2, "num_workers": 0, "seed": 0}
PRECIOUS = b"ssh-ed25519 AAAA... me@laptop\n"
BOMB_SIZE = 200 * 2**20  # 200 MiB of zeros, ~200 kB gzipped


@pytest.fixture
def victim(tmp_path) -> Path:
    """A file of the user's outside the data folder that a planted link points at."""
    path = tmp_path / "home" / "authorized_keys"
    path.parent.mkdir()
    path.write_bytes(PRECIOUS)
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """A ~200 kB gzip file that decompresses to 200 MiB of zeros."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.gz"
    c = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: gzip container
    zeros = b"\0" * 2**20
    path.write_bytes(b"".join([*(c.compress(zeros) for _ in range(BOMB_SIZE // 2**20)), c.flush()]))
    assert path.stat().st_size < 1_000_000
    return path


def _unlinked_sizes(monkeypatch) -> dict[str, int]:
    """Record the size of every file removed through ``Path.unlink`` just before it goes (the partial
    output of a refused decompression), by name."""
    sizes: dict[str, int] = {}
    real = pathlib.Path.unlink

    def unlink(self, missing_ok=False):
        with contextlib.suppress(FileNotFoundError):
            sizes[self.name] = os.lstat(self).st_size
        return real(self, missing_ok=missing_ok)

    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    return sizes


# ---------------------------------------------------------------------------------------- planted links
def _temp_size(sizes: dict[str, int], name: str) -> int:
    """The size the one temp file of ``name`` (``.<name>.<pid>.<random>.tmp``) had when removed."""
    (size,) = [v for k, v in sizes.items() if re.fullmatch(rf"\.{re.escape(name)}\.\d+\.[0-9a-f]+\.tmp", k)]
    return size


def test_links_at_the_gunzip_names_are_never_written_through(tmp_path, victim):
    payload = os.urandom(50_000)
    raw_dir = tmp_path / "data" / "FashionMNIST" / "raw"
    raw_dir.mkdir(parents=True)
    gz = raw_dir / "t10k-labels-idx1-ubyte.gz"
    gz.write_bytes(gzip.compress(payload))
    dest = raw_dir / "t10k-labels-idx1-ubyte"
    dest.with_name(dest.name + ".tmp").symlink_to(victim)  # planted in a handed data folder
    dest.symlink_to(tmp_path / "made-through-the-link")  # dangling: the target name itself
    dl.ensure_gunzipped(gz, dest)
    assert victim.read_bytes() == PRECIOUS
    assert not dest.is_symlink() and dest.read_bytes() == payload
    assert not (tmp_path / "made-through-the-link").exists()
    assert sorted(p.name for p in raw_dir.iterdir()) == sorted([gz.name, dest.name, dest.name + ".tmp"])


def test_two_writers_gunzipping_the_same_file_at_once_both_succeed(tmp_path, monkeypatch):
    """Two processes (two multiruns) preparing the same data root: each writes its own temp file,
    so neither removes the other's, and the file is whole."""
    monkeypatch.setattr(extract, "_CHUNK", 4096)  # many small writes: the two writers interleave
    payload = os.urandom(2_000_000)
    gz = tmp_path / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(payload, compresslevel=1))
    dest = tmp_path / "t10k-images-idx3-ubyte"
    for _ in range(3):
        dest.unlink(missing_ok=True)
        start, errors = threading.Barrier(2), []

        def prepare(start: threading.Barrier = start, errors: list = errors) -> None:
            start.wait()
            try:
                dl.ensure_gunzipped(gz, dest)
            except Exception as e:  # what the old shared "<dest>.tmp" raised: FileNotFoundError
                errors.append(e)

        workers = [threading.Thread(target=prepare) for _ in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        assert errors == []
        assert dest.read_bytes() == payload
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([gz.name, dest.name])


@pytest.mark.parametrize("kind", ["symlink", "hardlink"])
def test_a_link_at_the_part_name_is_replaced_not_written_through(tmp_path, victim, kind):
    src = tmp_path / "srv" / "archive.tgz"
    src.parent.mkdir()
    src.write_bytes(os.urandom(100_000))
    dest = tmp_path / "data" / src.name
    dest.parent.mkdir()
    part = dest.with_name(dest.name + ".part")
    part.symlink_to(victim) if kind == "symlink" else os.link(victim, part)
    dl.download_file([src.as_uri()], dest, md5=hashlib.md5(src.read_bytes()).hexdigest())
    assert victim.read_bytes() == PRECIOUS
    assert not dest.is_symlink() and dest.read_bytes() == src.read_bytes() and not os.path.lexists(part)


def test_a_link_at_the_extracting_marker_is_replaced_not_written_through(tmp_path, victim):
    src = tmp_path / "srv" / "imagenette2-320.tgz"
    src.parent.mkdir()
    with tarfile.open(src, "w:gz") as tf:
        info = tarfile.TarInfo("imagenette2-320/train/x.jpeg")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"img"))
    root = tmp_path / "data"
    dataset = root / "imagenette2-320"
    dataset.mkdir(parents=True)
    (dataset / dl.EXTRACTING_MARKER).symlink_to(victim)
    archive = dl.Archive(urls=(src.as_uri(),), filename=src.name, md5=hashlib.md5(src.read_bytes()).hexdigest())
    dl.download_and_extract(archive, download_dir=root, extract_dir=root, dataset_dir=dataset)
    assert victim.read_bytes() == PRECIOUS
    assert dl.is_complete(dataset) and (dataset / "train" / "x.jpeg").read_bytes() == b"img"
    assert not os.path.lexists(dataset / dl.EXTRACTING_MARKER)


# ---------------------------------------------------------------------------------------- gzip bombs
def test_a_gzip_bomb_is_refused_at_the_size_cap_and_nothing_is_left(tmp_path, bomb, monkeypatch):
    sizes = _unlinked_sizes(monkeypatch)
    dest = tmp_path / "out" / "train-labels-idx1-ubyte"
    dest.parent.mkdir()
    cap = 4 * 2**20
    with pytest.raises(UnsafeArchiveError, match=rf"refusing to decompress .*bomb\.gz: it unpacks to more than "
                       rf"{cap:,} bytes") as e:
        dl.ensure_gunzipped(bomb, dest, max_size=cap)
    assert "\n" not in str(e.value)
    assert sorted(p.name for p in dest.parent.iterdir()) == []  # neither the file nor its temp file
    assert 0 < _temp_size(sizes, dest.name) <= cap  # what was written before the refusal, deleted


def test_fashion_mnist_caps_a_handed_gz_at_the_files_known_size(tmp_path, bomb, monkeypatch):
    """A .gz in the data root (official or recompressed, so no .gz md5 to check) stops at the
    decompressed file's known size: a bomb is refused and nothing is kept."""
    sizes = _unlinked_sizes(monkeypatch)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-labels-idx1-ubyte.gz").write_bytes(bomb.read_bytes())
    dm = FashionMNISTDataModule(root=tmp_path / "data", download=False, system_dir=None, **COMMON)
    cap = 8 + 60_000
    with pytest.raises(UnsafeArchiveError, match=f"it unpacks to more than {cap:,} bytes"):
        dm.prepare_data()
    assert sorted(p.name for p in raw.iterdir()) == ["train-labels-idx1-ubyte.gz"]
    assert _temp_size(sizes, "train-labels-idx1-ubyte") <= cap


def test_fashion_mnist_caps_a_system_gz_at_the_files_known_size(tmp_path, bomb, monkeypatch):
    sizes = _unlinked_sizes(monkeypatch)
    system = tmp_path / "usr-share-datasets"
    system.mkdir()
    (system / "train-labels-idx1-ubyte.gz").symlink_to(bomb)  # Debian's files are recompressed: no .gz md5
    dm = FashionMNISTDataModule(root=tmp_path / "data", download=False, system_dir=system, **COMMON)
    cap = 8 + 60_000  # the idx header and 60k labels: the real file's size
    with pytest.raises(UnsafeArchiveError, match=f"it unpacks to more than {cap:,} bytes"):
        dm.prepare_data()
    assert fm.FASHION_MNIST_RAW_SIZE["train-labels-idx1-ubyte"] == cap
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    assert list(raw.iterdir()) == []
    assert _temp_size(sizes, "train-labels-idx1-ubyte") <= cap
