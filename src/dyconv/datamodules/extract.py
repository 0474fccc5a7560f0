"""Extract archives and decompress ``.gz`` files safely: every member is checked before anything
is written (an absolute path, a ``..`` component, any link, a device or fifo, or more members or
bytes than any dataset has refuses the whole archive), files are written by dyconv itself through
:func:`~dyconv.utils.files.atomic_open` (never through an existing link; a temp file of each
writer's own), and decompression stops at a size limit."""

from __future__ import annotations

import gzip
import logging
import os
import stat
import tarfile
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

from dyconv.datamodules.data_root import DownloadError, UnsafeArchiveError
from dyconv.datamodules.fetch import verify_checksum
from dyconv.utils.files import atomic_open

__all__ = ["MAX_GUNZIP_SIZE", "MAX_MEMBERS", "MAX_TOTAL_SIZE", "ensure_gunzipped", "safe_extract"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20
#: Default limit of :func:`ensure_gunzipped`: far above any file it decompresses (MNIST's largest
#: is 47 MB), far below what would fill a disk by surprise.
MAX_GUNZIP_SIZE = 1 << 30


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
    written = 0
    with atomic_open(target, mode=0o644) as dst:  # replaces a link at `target` itself, never its target
        for chunk in iter(lambda: src.read(_CHUNK), b""):  # type: ignore[attr-defined]
            written += len(chunk)
            if written > limit:
                raise UnsafeArchiveError(f"refusing to extract {archive.name}: member {name!r} holds more data "
                                         "than its header declares")
            dst.write(chunk)
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
    more is refused and the partial output deleted. The temp file is this writer's own
    (:func:`~dyconv.utils.files.atomic_open`): two processes preparing the same root never share
    one, and a link planted at ``dest`` is replaced, never written through.

    Raises:
        ChecksumError: ``gz`` does not match ``md5``/``sha256`` (nothing was decompressed).
        UnsafeArchiveError: ``gz`` decompresses to more than ``max_size`` bytes (nothing is kept).
    """
    gz, dest = Path(gz), Path(dest)
    if dest.exists():
        return dest
    verify_checksum(gz, md5=md5, sha256=sha256)
    # A temp file of this writer's own: two processes preparing the same root both succeed.
    with gzip.open(gz, "rb") as src, atomic_open(dest, mode=0o644, durable=True) as dst:
        written = 0
        for chunk in iter(lambda: src.read(_CHUNK), b""):
            written += len(chunk)
            if written > max_size:
                raise UnsafeArchiveError(
                    f"refusing to decompress {gz}: it unpacks to more than {max_size:,} bytes, the limit for "
                    f"{dest.name} (a damaged or malicious file); nothing was kept, delete it and fetch it again"
                )
            dst.write(chunk)
    return dest


