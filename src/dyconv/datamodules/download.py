"""Download, verify and extract dataset archives safely, and say clearly when a dataset is missing.

The project's own replacement for ``torchvision.datasets.utils.download_and_extract_archive``
(torchvision 0.29 extracts with a plain ``extractall``):

* downloads go to ``<file>.part`` (resumed with an HTTP ``Range`` request when the server allows)
  and are renamed into place only after the md5/sha256 checksum matched, so a truncated or
  corrupted file is never mistaken for the archive;
* archives are checked member by member before anything is written: an absolute path or a ``..``
  component refuses the whole archive; tar members are then extracted with ``filter="data"``
  (no links out of the tree, no device files, no setuid bits) as a second line of defence;
* a ``.dyconv-extracting`` marker is written before extraction and the ``.dyconv-complete``
  marker last, so a half-extracted tree (killed job, full disk) is never taken as complete.

Each DataModule describes its source with an :class:`Archive` (official URL first, mirrors after)
and raises :class:`DatasetNotFoundError` with where it looked, the layout it expected and how to
get the data.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import json
import logging
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from dyconv.errors import DyconvError

__all__ = [
    "COMPLETE_MARKER",
    "EXTRACTING_MARKER",
    "Archive",
    "ChecksumError",
    "DatasetNotFoundError",
    "DownloadError",
    "UnsafeArchiveError",
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

COMPLETE_MARKER = ".dyconv-complete"
EXTRACTING_MARKER = ".dyconv-extracting"
_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------- errors
class DatasetNotFoundError(DyconvError, FileNotFoundError):
    """A dataset is missing or incomplete; the message says where, what layout, and how to get it.

    Build it with :meth:`for_dataset` so every dataset words the three parts the same way.
    """

    def __init__(self, message: str, *, where: Path | None = None) -> None:
        super().__init__(message)
        self.where = where

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    @classmethod
    def for_dataset(cls, name: str, *, where: Path, problem: str, layout: str, how: str) -> DatasetNotFoundError:
        layout = "\n".join("    " + line for line in layout.strip("\n").splitlines())
        return cls(
            f"{name} not found or incomplete: {problem}.\n"
            f"  Looked in: {where}\n"
            f"  Expected layout:\n{layout}\n"
            f"  To get it: {how}",
            where=where,
        )


class DownloadError(DyconvError, RuntimeError):
    """A download failed (network, HTTP error) or produced the wrong file."""


class ChecksumError(DownloadError):
    """A downloaded file's checksum does not match the published one."""


class UnsafeArchiveError(DyconvError, RuntimeError):
    """An archive holds a member that would land outside the destination (absolute path, ``..``)."""


# ---------------------------------------------------------------------------------------- helpers
@dataclass(frozen=True)
class Archive:
    """One downloadable file: official URL first, mirrors after, and its published checksum.

    Args:
        urls: where to fetch it, tried in order (``file://`` URLs work too, which tests use).
        filename: the name it is stored under (the official file name).
        md5, sha256: published checksums; at least one should be given.
        size: human-readable size for messages (``"1.9 GB"``).
    """

    urls: tuple[str, ...]
    filename: str
    md5: str | None = None
    sha256: str | None = None
    size: str = ""

    @property
    def url(self) -> str:
        return self.urls[0]


def resolve_root(root: str | os.PathLike[str]) -> Path:
    """``root`` as an absolute path; a relative one is taken from the current directory (never chdir'd)."""
    return Path(os.path.abspath(os.path.expanduser(os.fspath(root))))


def file_digest(path: Path, algorithm: str = "md5") -> str:
    """Hex digest of a file, read in chunks."""
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_checksum(path: Path, *, md5: str | None = None, sha256: str | None = None, source: str = "") -> None:
    """Raise :class:`ChecksumError` unless ``path`` matches every checksum given."""
    for algorithm, expected in (("md5", md5), ("sha256", sha256)):
        if expected is None:
            continue
        actual = file_digest(path, algorithm)
        if actual.lower() != expected.lower():
            raise ChecksumError(
                f"{algorithm} checksum mismatch for {path.name}{f' from {source}' if source else ''}: "
                f"expected {expected}, got {actual} (corrupted, truncated, or not the published file)"
            )


def _fetch(url: str, part: Path, timeout: float) -> None:
    """Stream ``url`` into ``part``, resuming from its current size when the server honours ``Range``."""
    start = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "dyconv-downloader"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # range not satisfiable: the part is already whole (checked next)
            return
        raise
    with response:
        resumed = bool(start) and getattr(response, "status", None) == 206
        total = response.headers.get("Content-Length")
        log.info("Downloading %s%s", url, f" (resuming at {start} bytes)" if resumed else "")
        written, last_log = 0, time.monotonic()
        with open(part, "ab" if resumed else "wb") as f:
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                f.write(chunk)
                written += len(chunk)
                if total and time.monotonic() - last_log > 30:
                    log.info("  %s: %.0f%%", part.name, 100.0 * written / int(total))
                    last_log = time.monotonic()
            f.flush()
            os.fsync(f.fileno())


def download_file(
    urls: Sequence[str],
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Fetch ``dest`` from the first URL that works and verify it; reuse it if already there and valid.

    The data goes to ``dest.part`` and is renamed to ``dest`` only after the checksum matched, so
    ``dest`` is either absent or verified. A ``.part`` left by an interrupted run is resumed; if the
    resumed file fails the checksum it is fetched once more from scratch before giving up.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.exists():
        try:
            verify_checksum(dest, md5=md5, sha256=sha256)
            return dest
        except ChecksumError:
            log.warning("%s exists but fails its checksum; downloading it again", dest)
            dest.unlink()
    part = dest.with_name(dest.name + ".part")
    errors: list[str] = []
    bad_checksums: list[str] = []
    for url in urls:
        for attempt in range(2):
            resumed = part.exists()
            try:
                _fetch(url, part, timeout)
                verify_checksum(part, md5=md5, sha256=sha256, source=url)
            except ChecksumError as e:
                part.unlink(missing_ok=True)
                if resumed and attempt == 0:  # the old .part may have been the bad bit: once more from scratch
                    continue
                bad_checksums.append(f"{e}; the download was discarded")
                break
            except (OSError, ValueError, http.client.HTTPException) as e:  # URLError, timeouts, resets
                errors.append(f"{url}: {e!r}")  # a .part with what arrived stays, to be resumed
                break
            os.replace(part, dest)
            return dest
    if bad_checksums:
        raise ChecksumError("\n".join(bad_checksums) + f"\nRetry later, or fetch {dest.name} by hand and check it.")
    tried = "\n  ".join(errors)
    raise DownloadError(
        f"could not download {dest.name}:\n  {tried}\n"
        f"Without internet, fetch it elsewhere and place it at {dest} (it is checksum-verified and used as is)."
    )


# ---------------------------------------------------------------------------------------- extraction
def _unsafe_reason(name: str) -> str | None:
    """Why a member name would escape the destination, or None if it is safe."""
    if not name:
        return None
    posix = name.replace("\\", "/")
    if posix.startswith("/") or PureWindowsPath(name).drive or PureWindowsPath(name).is_absolute():
        return "absolute path"
    if ".." in PurePosixPath(posix).parts:
        return "'..' component"
    return None


def _strip(name: str, prefix: str | None) -> str | None:
    """``name`` relative to ``prefix`` (a folder inside the archive), or None if it lies outside it."""
    if not prefix:
        return name
    prefix = prefix.rstrip("/") + "/"
    name = name.replace("\\", "/")
    if not name.startswith(prefix):
        return None
    return name[len(prefix) :] or None


def _check_members(archive: Path, names: Iterable[str]) -> None:
    for name in names:
        reason = _unsafe_reason(name)
        if reason:
            raise UnsafeArchiveError(
                f"refusing to extract {archive.name}: member {name!r} has an {reason} and would be written "
                f"outside the destination. Nothing was extracted; the archive is not trustworthy."
            )


def _is_zip(archive: Path) -> bool:
    return archive.suffix.lower() == ".zip" or (not _looks_tar(archive) and zipfile.is_zipfile(archive))


def _looks_tar(archive: Path) -> bool:
    name = archive.name.lower()
    return name.endswith((".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz"))


def safe_extract(archive: Path, dest: Path, *, strip_prefix: str | None = None) -> None:
    """Extract a tar or zip ``archive`` into ``dest`` after checking every member name.

    Args:
        archive: ``.tar``/``.tgz``/``.tar.gz``/... or ``.zip``.
        dest: destination folder (created).
        strip_prefix: extract only the members under this archive folder, with it removed from their
            paths (SBD's ``benchmark_RELEASE/dataset/`` becomes ``dest/``).

    Raises:
        UnsafeArchiveError: a member has an absolute path or a ``..`` component (nothing is written),
            or the tar ``data`` filter refused a member (a link out of the tree, a device file).
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    if _is_zip(archive):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            _check_members(archive, (i.filename for i in infos))
            root = dest.resolve()
            for info in infos:
                rel = _strip(info.filename, strip_prefix)
                if rel is None:
                    continue
                target = (dest / rel).resolve()
                if root != target and root not in target.parents:  # belt and braces after the name check
                    raise UnsafeArchiveError(f"refusing to extract {archive.name}: {info.filename!r} leaves {dest}")
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        return
    if not hasattr(tarfile, "data_filter"):  # pragma: no cover - Python < 3.10.12 / 3.11.4
        raise RuntimeError("safe tar extraction needs tarfile's filter='data' (Python >= 3.10.12, 3.11.4, 3.12)")
    try:
        tf = tarfile.open(archive, mode="r:*")  # noqa: SIM115 - closed by the `with` below
    except tarfile.TarError as e:
        raise DownloadError(f"{archive} is not a readable tar archive ({e}); delete it and download again") from e
    with tf:
        members = tf.getmembers()
        _check_members(archive, (m.name for m in members))
        _check_members(archive, (m.linkname for m in members if m.islnk()))

        def _filter(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
            name = _strip(member.name, strip_prefix)
            if name is None:
                return None
            changes: dict[str, str] = {"name": name}
            if member.islnk():
                link = _strip(member.linkname, strip_prefix)
                if link is None:
                    return None
                changes["linkname"] = link
            return tarfile.data_filter(member.replace(**changes, deep=False), path)

        try:
            tf.extractall(dest, members=members, filter=_filter)
        except tarfile.FilterError as e:
            raise UnsafeArchiveError(f"refusing to extract {archive.name}: {e}") from e


def ensure_gunzipped(gz: Path, dest: Path) -> Path:
    """Decompress ``gz`` to ``dest`` via a temp file and an atomic rename (a partial file never shows)."""
    if dest.exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    with gzip.open(gz, "rb") as src, open(tmp, "wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)
        dst.flush()
        os.fsync(dst.fileno())
    os.replace(tmp, dest)
    return dest


# ---------------------------------------------------------------------------------------- markers
def is_complete(dataset_dir: Path) -> bool:
    """True if dyconv finished extracting into ``dataset_dir`` (its completion marker is there)."""
    return (Path(dataset_dir) / COMPLETE_MARKER).is_file() and not (Path(dataset_dir) / EXTRACTING_MARKER).exists()


def write_marker(dataset_dir: Path, **info: object) -> Path:
    """Write the completion marker atomically (temp file + rename); call it after everything else."""
    marker = Path(dataset_dir) / COMPLETE_MARKER
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(json.dumps({"completed": time.strftime("%Y-%m-%dT%H:%M:%S"), **info}, default=str, indent=1))
    os.replace(tmp, marker)
    return marker


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
    (dataset_dir / EXTRACTING_MARKER).write_text(f"extracting {path}\n")
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
