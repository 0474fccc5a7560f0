"""Download, verify and extract dataset archives safely, and say clearly when a dataset is missing.

The project's own replacement for ``torchvision.datasets.utils.download_and_extract_archive``
(torchvision 0.29 extracts with a plain ``extractall``):

* downloads go to ``<file>.part`` (resumed with an HTTP ``Range`` request when the server allows)
  and are renamed into place only after the md5/sha256 checksum matched, so a truncated or
  corrupted file is never mistaken for the archive;
* archives are checked member by member before anything is written: an absolute path, a ``..``
  component, any symbolic or hard link, a device or fifo, or more members/bytes than any dataset
  has refuses the whole archive; files are then written by dyconv itself (never through an
  existing link, via temp file and rename), so extraction is safe on every Python, with or
  without tarfile's ``data`` filter and its fixes (CVE-2025-4517);
* a ``.dyconv-extracting`` marker is written before extraction and the ``.dyconv-complete``
  marker last, so a half-extracted tree (killed job, full disk) is never taken as complete;
* every file this module creates (``.part`` downloads, temp files, markers) is created fresh
  (``O_EXCL|O_NOFOLLOW``) after removing whatever stood at its name, and renamed into place, so a
  link planted at any of those names is replaced, never written through;
* ``.gz`` files are checksum-verified before they are decompressed (when a checksum is known) and
  decompression stops at a size limit, so a small file cannot fill the disk.

Each DataModule describes its source with an :class:`Archive` (official URL first, mirrors after)
and raises :class:`DatasetNotFoundError` with where it looked, the layout it expected and how to
get the data. Before touching ``data.root`` it calls :func:`check_data_root`, which refuses a root
that is a file, lies under one, or cannot be written where data must be written, in one message.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from dyconv.datamodules.data_root import (
    COMPLETE_MARKER,
    EXTRACTING_MARKER,
    Archive,
    ChecksumError,
    DatasetNotFoundError,
    DownloadError,
    UnsafeArchiveError,
    check_archive_root,
    check_data_root,
    is_complete,
    resolve_root,
)
from dyconv.datamodules.extract import MAX_GUNZIP_SIZE, MAX_MEMBERS, MAX_TOTAL_SIZE, ensure_gunzipped, safe_extract
from dyconv.datamodules.fetch import download_file, file_digest, verify_checksum
from dyconv.utils.files import atomic_write_text

__all__ = [
    "COMPLETE_MARKER",
    "EXTRACTING_MARKER",
    "MAX_GUNZIP_SIZE",
    "MAX_MEMBERS",
    "MAX_TOTAL_SIZE",
    "Archive",
    "ChecksumError",
    "DatasetNotFoundError",
    "DownloadError",
    "UnsafeArchiveError",
    "check_archive_root",
    "check_data_root",
    "check_not_interrupted",
    "download_and_extract",
    "download_file",
    "ensure_gunzipped",
    "file_digest",
    "is_complete",
    "resolve_root",
    "safe_extract",
    "verify_checksum",
    "write_marker",
]

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------- markers
def write_marker(dataset_dir: Path, **info: object) -> Path:
    """Write the completion marker atomically (temp file + rename); call it after everything else."""
    record = {"completed": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}
    return atomic_write_text(Path(dataset_dir) / COMPLETE_MARKER, json.dumps(record, default=str, indent=1))


def check_not_interrupted(dataset_dir: Path, name: str, layout: str) -> None:
    """Raise if an extraction into ``dataset_dir`` started and never finished."""
    if (Path(dataset_dir) / EXTRACTING_MARKER).exists():
        raise DatasetNotFoundError.for_dataset(
            name,
            where=Path(dataset_dir),
            problem=f"an extraction into it was interrupted ({EXTRACTING_MARKER} is there), so it may be partial",
            layout=layout,
            how="run again with data.download=true to re-extract it (the verified archive is reused), "
            f"or delete {dataset_dir} and provide the data yourself",
        )


def download_and_extract(
    archive: Archive,
    *,
    download_dir: Path,
    extract_dir: Path,
    dataset_dir: Path,
    strip_prefix: str | None = None,
) -> Path:
    """Make sure ``dataset_dir`` holds a complete, verified extraction of ``archive``.

    Skips everything when the completion marker is there. Otherwise downloads (or reuses a verified
    ``download_dir/archive.filename``), marks ``dataset_dir`` as being extracted, extracts into
    ``extract_dir`` (existing partial files are overwritten), checks that ``dataset_dir`` appeared,
    and writes the completion marker last. A tree without the marker is never trusted here.

    Returns:
        ``dataset_dir``.
    """
    dataset_dir = Path(dataset_dir)
    if is_complete(dataset_dir):
        return dataset_dir
    path = download_file(archive.urls, Path(download_dir) / archive.filename, md5=archive.md5, sha256=archive.sha256)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    (dataset_dir / COMPLETE_MARKER).unlink(missing_ok=True)
    atomic_write_text(dataset_dir / EXTRACTING_MARKER, f"extracting {path}\n")  # replaces a link there
    log.info("Extracting %s into %s", path, extract_dir)
    safe_extract(path, Path(extract_dir), strip_prefix=strip_prefix)  # on failure the EXTRACTING marker stays
    contents = [p for p in dataset_dir.iterdir() if p.name not in (EXTRACTING_MARKER, COMPLETE_MARKER)]
    if not contents:
        raise DownloadError(
            f"{path.name} did not produce {dataset_dir} when extracted into {extract_dir}; "
            "it is not the expected archive"
        )
    (dataset_dir / EXTRACTING_MARKER).unlink()
    write_marker(dataset_dir, archive=archive.filename, url=archive.url, md5=archive.md5, sha256=archive.sha256)
    return dataset_dir
