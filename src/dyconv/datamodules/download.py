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

import contextlib
import errno
import gzip
import hashlib
import http.client
import json
import logging
import os
import stat
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from dyconv.errors import ConfigError, DyconvError
from dyconv.utils.files import atomic_write_text, open_new_file

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

COMPLETE_MARKER = ".dyconv-complete"
EXTRACTING_MARKER = ".dyconv-extracting"
_CHUNK = 1 << 20
#: Default limit of :func:`ensure_gunzipped`: far above any file it decompresses (MNIST's largest
#: is 47 MB), far below what would fill a disk by surprise.
MAX_GUNZIP_SIZE = 1 << 30


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
        return cls(
            f"{name} not found or incomplete: {problem}.\n"
            f"  Looked in: {where}\n"
            f"{_layout_block(layout)}\n"
            f"  To get it: {how}",
            where=where,
        )


def _layout_block(layout: str) -> str:
    """The ``Expected layout:`` lines of a dataset message (the layout indented under the heading)."""
    lines = "\n".join("    " + line for line in layout.strip("\n").splitlines())
    return f"  Expected layout:\n{lines}"


class DownloadError(DyconvError, RuntimeError):
    """A download failed (network, HTTP error) or produced the wrong file."""


class ChecksumError(DownloadError):
    """A downloaded file's checksum does not match the published one."""


class UnsafeArchiveError(DyconvError, RuntimeError):
    """An archive holds a member that could land outside the destination (absolute path, ``..``,
    a link, a special file) or exceeds the size/count limits."""


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


def _first_existing(path: Path) -> Path:
    """``path`` or the nearest folder above it that exists (``/`` at worst); nothing is created."""
    for p in (path, *path.parents):
        try:
            os.lstat(p)
        except OSError:  # missing, under a file (ENOTDIR), or above it a folder that cannot be entered
            continue
        return p
    return Path(path.anchor or os.sep)


def _not_a_folder(p: Path) -> str:
    """What stands at ``p`` instead of a folder, for messages."""
    if p.is_symlink() and not p.exists():
        return "a broken symbolic link"
    return "a file" if p.is_file() else "not a folder"


def check_data_root(
    root: Path,
    *,
    layout: str,
    folders: Sequence[Path] = (),
    writes: str | Callable[[], str | None] | None = None,
    key: str = "data.root",
) -> None:
    """Raise :class:`~dyconv.errors.ConfigError` when ``root`` cannot hold the dataset; nothing is created.

    Every DataModule calls it first in ``prepare_data`` and ``setup``, before it reads or writes
    anything under ``root``, so a bad ``data.root`` is one message (the path, the problem, the
    fix and ``layout``) instead of an ``OSError`` from deep inside a reader or the downloader.

    Args:
        root: the configured dataset folder (resolved).
        layout: the dataset's expected layout, shown as in :class:`DatasetNotFoundError`.
        folders: the folders the caller reads or writes (``root/MNIST/raw``; default ``root``): a
            file where one of them (or a folder above it) belongs is refused.
        writes: what is about to be written there (``"data.download=true downloads MNIST (11 MB)
            into it"``), or a callable returning that or None (called once the folders are known
            to be readable): they must then be creatable and writable. None: read only.
        key: the config key named in the message.

    Raises:
        ConfigError: ``root`` (or a folder above or below it that is needed) is a file, or a folder
            cannot be read, created or written (permission denied, read-only file system).
    """
    root = Path(root)
    layout_text = _layout_block(layout)
    fix = f"set {key} to the dataset folder (expected layout below)"
    targets = tuple(folders) or (root,)
    found = [(target, _first_existing(target)) for target in targets]
    for _, p in found:
        if p.is_dir():
            continue
        what = _not_a_folder(p)
        if p == root:
            problem = f"{key}={root} is {what}, not a folder: {fix}"
        elif p in root.parents:
            problem = f"{key}={root} cannot be a folder: {p} is {what}, not a folder; {fix}"
        else:
            problem = (f"{key}={root}: {p} is {what} where the dataset needs a folder; move or delete it, "
                       f"or {fix}")
        raise ConfigError(f"{problem}.\n{layout_text}")
    for target, p in found:
        if not os.access(p, os.X_OK | (os.R_OK if p == target else 0)):
            raise ConfigError(
                f"{key}={root} cannot be read ({p}: {os.strerror(errno.EACCES)}): set {key} to a folder "
                f"you can read, or give yourself access to it.\n{layout_text}"
            )
    if callable(writes):
        writes = writes()
    if not writes:
        return
    for _, p in found:
        if os.access(p, os.W_OK | os.X_OK):
            continue
        action = "written" if os.path.isdir(root) else "created"
        raise ConfigError(
            f"{key}={root} cannot be {action} ({p}: {_write_denied(p)}), and {writes}: set {key} to a folder "
            f"you can write (it is created when missing), or place the complete dataset there beforehand."
            f"\n{layout_text}"
        )


def check_archive_root(
    root: Path,
    dataset_dir: Path,
    archive: Archive,
    *,
    layout: str,
    download: bool,
    writing: bool,
    folders: Sequence[Path] = (),
    key: str = "data.root",
) -> None:
    """:func:`check_data_root` for a dataset :func:`download_and_extract` fetches as ``archive``
    into ``dataset_dir`` (``folders``: default ``root`` and ``dataset_dir``). With ``writing``
    (``prepare_data``), the folders must be writable when a download is due: ``download`` is set
    and ``dataset_dir`` is not complete yet."""

    def writes() -> str | None:
        if not download or is_complete(dataset_dir):
            return None
        return f"data.download=true downloads {archive.filename} ({archive.size}) and extracts it there"

    check_data_root(root, layout=layout, folders=tuple(folders) or (root, dataset_dir),
                    writes=writes if writing else None, key=key)


def _write_denied(p: Path) -> str:
    """The OS's words for why ``p`` cannot be written: a read-only file system, else permission denied."""
    read_only = hasattr(os, "statvfs") and bool(os.statvfs(p).f_flag & getattr(os, "ST_RDONLY", 1))
    return os.strerror(errno.EROFS if read_only else errno.EACCES)


def _resumable_size(part: Path) -> int:
    """Bytes of a ``.part`` left by an interrupted download that can be resumed: a plain file with
    no other name; 0 when there is none, or for a link of any kind (replaced, never appended to)."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 else 0


def _open_resumed(part: Path) -> BinaryIO:
    """Open the ``.part`` :func:`_resumable_size` accepted for appending, never through a link."""
    fd = os.open(part, os.O_WRONLY | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0))  # a symbolic link: ELOOP
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:  # swapped for a hard link since it was checked
        os.close(fd)
        raise OSError(errno.EMLINK, "became a link while resuming; it is downloaded afresh next time", str(part))
    return os.fdopen(fd, "ab")


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
    """Stream ``url`` into ``part``, resuming from its current size when the server honours ``Range``
    (a link at ``part`` is replaced by a new file, never written through)."""
    start = _resumable_size(part)
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
        with _open_resumed(part) if resumed else open_new_file(part, 0o644) as f:
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
            resumed = _resumable_size(part) > 0
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
#: Default limits of :func:`safe_extract`: far above any supported dataset (ImageNet's train tar is
#: ~140 GB in 1.28M files), far below what would fill a disk by surprise or exhaust memory.
MAX_TOTAL_SIZE = 512 * 1024**3
MAX_MEMBERS = 5_000_000


def _refusal(archive: Path, member: str, why: str) -> UnsafeArchiveError:
    return UnsafeArchiveError(
        f"refusing to extract {archive.name}: member {member!r} {why}. Nothing was extracted; "
        "the archive is not trustworthy."
    )


def _unsafe_reason(name: str) -> str | None:
    """Why a member name would escape the destination, or None if it is safe."""
    if not name:
        return None
    if "\0" in name:
        return "has a NUL byte in its name"
    posix = name.replace("\\", "/")
    if posix.startswith("/") or PureWindowsPath(name).drive or PureWindowsPath(name).is_absolute():
        return "has an absolute path and would be written outside the destination"
    if ".." in PurePosixPath(posix).parts:
        return "has a '..' component and would be written outside the destination"
    return None


def _strip(name: str, prefix: str | None) -> str | None:
    """``name`` (``./`` and empty parts dropped) relative to ``prefix`` (a folder inside the
    archive), or None if it lies outside it or is that folder itself."""

    def parts(text: str) -> list[str]:
        return [p for p in text.replace("\\", "/").split("/") if p not in ("", ".")]

    rel, head = parts(name), parts(prefix or "")
    if rel[: len(head)] != head:
        return None
    return "/".join(rel[len(head) :]) or None


def _is_zip(archive: Path) -> bool:
    return archive.suffix.lower() == ".zip" or (not _looks_tar(archive) and zipfile.is_zipfile(archive))


def _looks_tar(archive: Path) -> bool:
    name = archive.name.lower()
    return name.endswith((".tar", ".tgz", ".tar.gz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz"))


@dataclass(frozen=True)
class _Entry:
    """One member to write: its path under ``dest`` (parts), whether a directory, its size, its handle."""

    parts: tuple[str, ...]
    is_dir: bool
    size: int
    member: object
    name: str


def _plan(archive: Path, members: Iterable[tuple[str, str, int, object]], strip_prefix: str | None,
          max_total_size: int, max_members: int) -> list[_Entry]:
    """Check every member before anything is written; return what to extract.

    ``members`` yields ``(name, kind, size, handle)`` with kind ``"file"``, ``"dir"``, ``"symlink"``,
    ``"hardlink"`` or ``"other"`` (devices, fifos, ...). Links are refused outright: none of the
    supported datasets holds one, and a link is how extraction escapes the destination
    (CVE-2025-4517 and its relatives), so nothing in an archive can redirect a later write.
    """
    entries: list[_Entry] = []
    total = 0
    for count, (name, kind, size, handle) in enumerate(members, start=1):
        if count > max_members:
            raise UnsafeArchiveError(
                f"refusing to extract {archive.name}: it has more than {max_members:,} members, more than any "
                "supported dataset (raise max_members if this archive is genuine). Nothing was extracted."
            )
        reason = _unsafe_reason(name)
        if reason:
            raise _refusal(archive, name, reason)
        if kind in ("symlink", "hardlink"):
            what = "symbolic" if kind == "symlink" else "hard"
            raise _refusal(archive, name, f"is a {what} link; dyconv extracts no links (the supported datasets "
                           "contain none)")
        if kind == "other":
            raise _refusal(archive, name, "is a device, fifo or other special file, which no dataset holds")
        if size < 0:
            raise _refusal(archive, name, "declares a negative size")
        total += size
        if total > max_total_size:
            raise UnsafeArchiveError(
                f"refusing to extract {archive.name}: its members add up to more than {max_total_size:,} bytes, "
                "more than any supported dataset (raise max_total_size if this archive is genuine). "
                "Nothing was extracted."
            )
        rel = _strip(name, strip_prefix)
        if rel is None:
            continue
        entries.append(_Entry(tuple(rel.split("/")), kind == "dir", size, handle, name))
    return entries


def _safe_dir(dest: Path, parts: tuple[str, ...], archive: Path, name: str) -> Path:
    """``dest/parts`` as a real directory, created one level at a time without following any link."""
    path = dest
    for part in parts:
        path = path / part
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            try:
                os.mkdir(path)
            except FileExistsError:  # created meanwhile: checked below like any existing entry
                st = os.lstat(path)
            else:
                continue
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeArchiveError(
                f"refusing to extract {archive.name}: {path} already exists as a symbolic link and member "
                f"{name!r} would be written through it; dyconv never extracts through links (remove the link, "
                "or point data.root at its target)"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafeArchiveError(
                f"refusing to extract {archive.name}: member {name!r} needs {path} to be a directory, but a file "
                "is there (a conflicting archive, or a stale file: remove it)"
            )
    return path


def _write_file(src: object, parent: Path, filename: str, archive: Path, name: str, limit: int) -> int:
    """Copy at most ``limit`` bytes of the stream ``src`` into ``parent/filename`` via a temp file
    in ``parent`` (created exclusively, never through a link) and a rename; return the bytes written."""
    target = parent / filename
    try:
        st = os.lstat(target)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode):
            raise UnsafeArchiveError(f"refusing to extract {archive.name}: member {name!r} would replace the "
                                     f"directory {target}")
    tmp = parent / f".{filename[:200]}.{os.getpid()}.{time.monotonic_ns()}.dyconv-tmp"
    written = 0
    try:
        with open_new_file(tmp, 0o644) as dst:
            for chunk in iter(lambda: src.read(_CHUNK), b""):  # type: ignore[attr-defined]
                written += len(chunk)
                if written > limit:
                    raise UnsafeArchiveError(f"refusing to extract {archive.name}: member {name!r} holds more data "
                                             "than its header declares")
                dst.write(chunk)
        os.replace(tmp, target)  # replaces a link at `target` itself, never what it points to
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written


def _tar_kind(m: tarfile.TarInfo) -> str:
    if m.issym():
        return "symlink"
    if m.islnk():
        return "hardlink"
    if m.isdir():
        return "dir"
    if m.isreg():
        return "file"
    return "other"


def _zip_kind(info: zipfile.ZipInfo) -> str:
    kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the zip tool stored no Unix file type
    if kind == stat.S_IFLNK:
        return "symlink"
    if info.is_dir():
        return "dir"
    if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        return "other"
    return "file"


def safe_extract(
    archive: Path,
    dest: Path,
    *,
    strip_prefix: str | None = None,
    max_total_size: int = MAX_TOTAL_SIZE,
    max_members: int = MAX_MEMBERS,
) -> None:
    """Extract a tar or zip ``archive`` into ``dest``; nothing can be written outside ``dest``.

    Safe by construction on every Python (no reliance on ``tarfile``'s ``data`` filter): every
    member is checked before anything is written (no absolute path, no ``..``, no symbolic or hard
    link, no device or fifo, limits on member count and total size), then directories are created
    one level at a time without following any existing link and each file is written to a fresh
    temp file inside its directory and renamed into place.

    Args:
        archive: ``.tar``/``.tgz``/``.tar.gz``/... or ``.zip``.
        dest: destination folder (created).
        strip_prefix: extract only the members under this archive folder, with it removed from their
            paths (SBD's ``benchmark_RELEASE/dataset/`` becomes ``dest/``).
        max_total_size: refuse archives whose members add up to more bytes (default 512 GiB).
        max_members: refuse archives with more members (default 5 million).

    Raises:
        UnsafeArchiveError: a member would escape ``dest`` or is a link/special file, a limit is
            exceeded (nothing is written in these cases), or a path under ``dest`` is a link.
        DownloadError: the file is not a readable archive.
    """
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    dest = dest.resolve()  # dest itself may be reached through the user's own links; nothing below it is
    if _is_zip(archive):
        try:
            zf = zipfile.ZipFile(archive)
        except (zipfile.BadZipFile, OSError) as e:
            raise DownloadError(f"{archive} is not a readable zip archive ({e}); delete it and download again") from e
        with zf:
            infos = zf.infolist()
            members = ((i.filename, _zip_kind(i), i.file_size, i) for i in infos)
            entries = _plan(archive, members, strip_prefix, max_total_size, max_members)
            _extract(archive, dest, entries, zf.open)
        return
    try:
        tf = tarfile.open(archive, mode="r:*")  # noqa: SIM115 - closed by the `with` below
    except tarfile.TarError as e:
        raise DownloadError(f"{archive} is not a readable tar archive ({e}); delete it and download again") from e
    with tf:

        def _members() -> Iterable[tuple[str, str, int, object]]:
            while True:  # one member at a time, so the count limit holds before memory runs out
                try:
                    m = tf.next()
                except tarfile.TarError as e:
                    raise DownloadError(f"{archive} is a damaged tar archive ({e}); delete it and download "
                                        "again") from e
                if m is None:
                    return
                yield m.name, _tar_kind(m), m.size, m

        entries = _plan(archive, _members(), strip_prefix, max_total_size, max_members)
        tf.members = []  # the plan holds what is needed; tarfile need not keep its own list

        def _open(m: object) -> object:
            f = tf.extractfile(m)  # type: ignore[arg-type]
            if f is None:  # pragma: no cover - regular files always have a stream
                raise UnsafeArchiveError(f"refusing to extract {archive.name}: no data for {m!r}")
            return f

        _extract(archive, dest, entries, _open)


def _extract(archive: Path, dest: Path, entries: Sequence[_Entry], open_member: object) -> None:
    made: dict[tuple[str, ...], Path] = {}  # directories this call created or checked (no re-lstat per file)

    def directory(parts: tuple[str, ...], name: str) -> Path:
        if parts not in made:
            made[parts] = _safe_dir(dest, parts, archive, name)
        return made[parts]

    for entry in entries:
        if entry.is_dir:
            directory(entry.parts, entry.name)
            continue
        parent = directory(entry.parts[:-1], entry.name)
        with open_member(entry.member) as src:  # type: ignore[operator]
            _write_file(src, parent, entry.parts[-1], archive, entry.name, entry.size)


def ensure_gunzipped(
    gz: Path,
    dest: Path,
    *,
    md5: str | None = None,
    sha256: str | None = None,
    max_size: int = MAX_GUNZIP_SIZE,
) -> Path:
    """Decompress ``gz`` to ``dest`` via a temp file and an atomic rename (a partial file never shows).

    ``gz`` is checked against the checksums given before anything is decompressed, and at most
    ``max_size`` bytes are written (the file's known size where there is one): a ``.gz`` that holds
    more is refused and the partial output deleted. The temp file ``<dest>.tmp`` is created afresh
    (a link planted at that name is removed, never written through).

    Raises:
        ChecksumError: ``gz`` does not match ``md5``/``sha256`` (nothing was decompressed).
        UnsafeArchiveError: ``gz`` decompresses to more than ``max_size`` bytes (nothing is kept).
    """
    gz, dest = Path(gz), Path(dest)
    if dest.exists():
        return dest
    verify_checksum(gz, md5=md5, sha256=sha256)
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        with gzip.open(gz, "rb") as src, open_new_file(tmp, 0o644) as dst:
            written = 0
            for chunk in iter(lambda: src.read(_CHUNK), b""):
                written += len(chunk)
                if written > max_size:
                    raise UnsafeArchiveError(
                        f"refusing to decompress {gz}: it unpacks to more than {max_size:,} bytes, the limit for "
                        f"{dest.name} (a damaged or malicious file); nothing was kept, delete it and fetch it again"
                    )
                dst.write(chunk)
            dst.flush()
            os.fsync(dst.fileno())
        os.replace(tmp, dest)  # replaces a link at `dest` itself, never what it points to
    except BaseException:
        with contextlib.suppress(OSError):  # (a folder at `tmp` stays, and the first error is raised)
            tmp.unlink()
        raise
    return dest


# ---------------------------------------------------------------------------------------- markers
def is_complete(dataset_dir: Path) -> bool:
    """True if dyconv finished extracting into ``dataset_dir`` (its completion marker is there)."""
    return (Path(dataset_dir) / COMPLETE_MARKER).is_file() and not (Path(dataset_dir) / EXTRACTING_MARKER).exists()


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
