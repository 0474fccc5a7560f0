"""Fashion-MNIST (Xiao, Rasul & Vollgraf 2017; MIT): 60k train + 10k test 28x28 gray images of
10 clothing classes, in MNIST's idx format.

Read by ``torchvision.datasets.FashionMNIST`` from its layout ``root/FashionMNIST/raw/``. Where
the files come from, in order:

1. already decompressed in ``root/FashionMNIST/raw/``, or as ``.gz`` files there (decompressed);
2. Debian's ``dataset-fashion-mnist`` package (``apt-get install dataset-fashion-mnist``), whose
   gzipped files in ``/usr/share/datasets/fashion-mnist/`` are decompressed into the layout with no
   download (Debian recompressed them, so the *decompressed* files are md5-verified);
3. ``download=true``: the official files from Zalando's mirror, md5-verified as downloaded.

Decompression stops at each file's known size, so no ``.gz`` can fill the disk. The 60k training
images are split into train and a seeded validation holdout (``val_size``, default 5,000); test is
the official 10k.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from torchvision.datasets import FashionMNIST

from dyconv.datamodules.download import (
    Archive,
    ChecksumError,
    download_file,
    ensure_gunzipped,
    file_digest,
    write_marker,
)
from dyconv.datamodules.mnist import MNISTDataModule

__all__ = [
    "DEBIAN_DIR",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_RAW_MD5",
    "FASHION_MNIST_RAW_SIZE",
    "FashionMNISTDataModule",
]

log = logging.getLogger(__name__)

_MIRROR = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
#: The four official files with their published md5 (``torchvision.datasets.FashionMNIST.resources``).
FASHION_MNIST_FILES: tuple[Archive, ...] = tuple(
    Archive(urls=(_MIRROR + name,), filename=name, md5=md5, size=size)
    for name, md5, size in (
        ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "26 MB"),
        ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "29 kB"),
        ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "4.4 MB"),
        ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "5 kB"),
    )
)
#: md5 of the decompressed files: the same whoever compressed them (Debian recompresses).
FASHION_MNIST_RAW_MD5: dict[str, str] = {
    "train-images-idx3-ubyte": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    "train-labels-idx1-ubyte": "9018921c3c673c538a1fc5bad174d6f9",
    "t10k-images-idx3-ubyte": "8181f5470baa50b63fa0f6fddb340f0a",
    "t10k-labels-idx1-ubyte": "15d484375f8d13e6eb1aabb0c3f46965",
}
#: Size in bytes of the decompressed files (idx header + 28x28 bytes per image, 1 per label):
#: decompression stops there, so a small ``.gz`` that unpacks to more is refused, not written out.
FASHION_MNIST_RAW_SIZE: dict[str, int] = {
    "train-images-idx3-ubyte": 16 + 60_000 * 28 * 28,
    "train-labels-idx1-ubyte": 8 + 60_000,
    "t10k-images-idx3-ubyte": 16 + 10_000 * 28 * 28,
    "t10k-labels-idx1-ubyte": 8 + 10_000,
}
#: Where Debian's ``dataset-fashion-mnist`` package installs the gzipped files.
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"

_LAYOUT = """\
<root>/FashionMNIST/raw/
  train-images-idx3-ubyte   (or the .gz; it is decompressed for you)
  train-labels-idx1-ubyte
  t10k-images-idx3-ubyte
  t10k-labels-idx1-ubyte"""


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST (10 classes): train / seeded val holdout of the 60k, official 10k test.

    Args:
        root: folder that holds ``FashionMNIST/raw``.
        download: fetch the four files (30 MB) when neither the layout nor the Debian package has them.
        system_dir: the Debian package's folder, used before any download (``null``: never).
        **kwargs: :class:`MNISTDataModule` arguments (``val_size``, ``split_seed``, ``image_size``,
            ``in_channels``, global ``batch_size``, workers, ...).
    """

    mean = (0.2860,)
    std = (0.3530,)

    NAME = "FashionMNIST"
    DATASET = FashionMNIST
    FILES = FASHION_MNIST_FILES
    LAYOUT = _LAYOUT
    SIZE = "30 MB"

    def __init__(self, *, system_dir: str | os.PathLike[str] | None = DEBIAN_DIR, **kwargs) -> None:
        super().__init__(**kwargs)
        self.system_dir = Path(system_dir) if system_dir else None

    def _how(self) -> str:
        where = (f"used from {self.system_dir} with no download" if self.system_dir is not None
                 else f"then pass data.system_dir={DEBIAN_DIR}: it is unset here")
        return f"apt-get install dataset-fashion-mnist (Debian/Ubuntu; {where}), " + super()._how()

    def _verify_raw(self, raw: Path) -> None:
        expected = FASHION_MNIST_RAW_MD5[raw.name]
        actual = file_digest(raw, "md5")
        if actual != expected:
            raise ChecksumError(
                f"{raw} has md5 {actual}, expected {expected} (a corrupt or different file). "
                f"Delete it and run again (it is re-created from {DEBIAN_DIR} or downloaded with data.download=true)."
            )

    def _writes(self) -> str | None:
        system = self.system_dir
        if system is not None and any((system / f"{name}.gz").is_file() for name in self._missing()):
            return f"the files of {system} are decompressed into {self.raw_dir}"
        return super()._writes()

    def prepare_data(self) -> None:
        """Fill ``root/FashionMNIST/raw`` from the Debian package or a download; md5-verify every
        decompressed file (decompression stops at the file's known size)."""
        self.check_root(writing=True)
        sources: list[str] = []
        for f in self.FILES:
            raw, gz = self.raw_dir / f.filename[:-3], self.raw_dir / f.filename
            if raw.is_file():
                continue
            max_size = FASHION_MNIST_RAW_SIZE[raw.name]
            system_gz = self.system_dir / f.filename if self.system_dir else None
            if gz.is_file():  # official or recompressed (Debian's): its raw md5 is checked below
                ensure_gunzipped(gz, raw, max_size=max_size)
            elif system_gz is not None and system_gz.is_file():
                self.raw_dir.mkdir(parents=True, exist_ok=True)
                log.info("Fashion-MNIST: decompressing %s into %s (no download)", system_gz, self.raw_dir)
                ensure_gunzipped(system_gz, raw, max_size=max_size)  # Debian recompressed: its raw md5 is checked
                sources.append(str(system_gz))
            elif self.download:
                download_file(f.urls, gz, md5=f.md5)  # replaces a .gz that failed its md5
                ensure_gunzipped(gz, raw, max_size=max_size)
                sources.append(f.url)
            else:
                continue
            try:
                self._verify_raw(raw)
            except ChecksumError:
                raw.unlink()  # never leave a bad file where the next run would trust it
                raise
        missing = self._missing()
        if missing:
            raise self._not_found(f"missing {', '.join(missing)}")
        if sources:
            write_marker(self.raw_dir, files=sorted(FASHION_MNIST_RAW_MD5), sources=sources)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.check_root()
        if self.train_set is None and not self._missing():
            for name in FASHION_MNIST_RAW_MD5:
                self._verify_raw(self.raw_dir / name)
        super().setup(stage)
