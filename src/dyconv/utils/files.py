"""Files written so that a reader, or a kill at any moment, sees the old content or the new one,
never a part (:func:`atomic_open`: checkpoints, downloads, extracted files, loggers, reports,
exports), files created only where nothing stands, and free ``<name>+N`` names."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "EXCLUSIVE_CREATE",
    "TEMP_SUFFIX",
    "atomic_open",
    "atomic_write_bytes",
    "atomic_write_text",
    "create_new_file",
    "first_free_folder",
    "free_name",
    "numbered",
    "open_new_file",
    "output_folder_problem",
    "png_bytes",
]

log = logging.getLogger(__name__)

#: ``os.open`` flags that create a new file and never follow a link at its name.
EXCLUSIVE_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
#: How every temp file of :func:`atomic_open` ends (``.<name>.<pid>.<random>.tmp``).
TEMP_SUFFIX = ".tmp"


def open_new_file(path: str | os.PathLike[str], mode: int = 0o666) -> BinaryIO:
    """Open ``path`` as a new, empty file for writing, never through what was at that name before.

    Whatever stands at ``path`` (a leftover of an interrupted run, a symbolic or hard link planted
    there) is removed first (the link itself, never what it points to), then the file is created
    with ``O_EXCL|O_NOFOLLOW``: if anything reappears at the name meanwhile, this fails
    (``FileExistsError``) instead of writing through it. Meant for temp files that are then
    ``os.replace``-d into their final name (which also replaces a link, not its target).
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    else:
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "a folder stands where dyconv writes a file; remove it", str(path))
        os.unlink(path)
    return os.fdopen(os.open(path, EXCLUSIVE_CREATE, mode), "wb")


def _temp_name(path: Path) -> Path:
    """A temp file name beside ``path`` that only this writer uses (pid + random): two processes
    writing the same target never touch each other's temp file."""
    return path.with_name(f".{path.name[:200]}.{os.getpid()}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not every OS/filesystem can fsync a directory
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], *, mode: int = 0o666, durable: bool = False) -> Iterator[BinaryIO]:
    """The one "write a temp file, then rename" of dyconv: yields a new file opened for writing
    beside ``path`` (in the same folder, so the rename never crosses file systems; named by this
    writer alone, created with ``O_EXCL|O_NOFOLLOW``, never through a link) and, when the block
    ends without an error, ``os.replace``-s it over ``path`` (a link standing at ``path`` is
    replaced, never written through); on an error the temp file is removed and ``path`` is left
    as it was. ``durable``: fsync the file and the folder too (checkpoints, downloads), so a
    power loss leaves the old file or the new one. Two writers of the same ``path`` both succeed;
    the last rename wins."""
    path = Path(path)
    tmp = _temp_name(path)
    try:
        with os.fdopen(os.open(tmp, EXCLUSIVE_CREATE, mode), "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # (a folder at `tmp` stays, and the first error is raised)
            tmp.unlink()
        raise
    if durable:
        _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, durable: bool = False) -> Path:
    """Write ``data`` to ``path`` through :func:`atomic_open`; returns ``path``."""
    with atomic_open(path, durable=durable) as f:
        f.write(data)
    return Path(path)


def png_bytes(figure: Any) -> bytes:
    """A matplotlib ``figure`` as the bytes of a PNG file (120 dpi, the tools' figures), to be
    written with :func:`atomic_write_bytes` once every output of a tool exists."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` for text (UTF-8)."""
    return atomic_write_bytes(path, text.encode())


def create_new_file(path: str | os.PathLike[str], data: str | bytes) -> bool:
    """Write ``path`` only if nothing is there: a complete file appears at once (a private temp
    file hard-linked to its name; the link fails if the name exists), or nothing; False when the
    name is taken (a file, a folder or a link). File systems without hard links get an exclusive
    create instead (never a replacement, but readers may see it being written)."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = _temp_name(path)  # this writer's own
    try:
        with os.fdopen(os.open(tmp, EXCLUSIVE_CREATE, 0o666), "wb") as f:
            f.write(raw)
        try:
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                raise
        try:  # no hard links here
            fd = os.open(path, EXCLUSIVE_CREATE, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        return True
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def numbered(path: str | os.PathLike[str], suffix: str = "") -> Iterator[Path]:
    """``path``, then ``<stem>+1<suffix>``, ``<stem>+2<suffix>``, ... (``suffix``: the end of the
    name the number goes before, e.g. ``".yaml"``): the names dyconv tries, in order, when the
    one it wants is taken."""
    path = Path(path)
    if not (suffix and path.name.endswith(suffix)):
        suffix = ""
    stem = path.name[: len(path.name) - len(suffix)]
    yield path
    n = 1
    while True:
        yield path.with_name(f"{stem}+{n}{suffix}")
        n += 1


def free_name(path: str | os.PathLike[str], suffix: str = "") -> Path:
    """The first of :func:`numbered` ``(path, suffix)`` that nothing stands at (not even a link)."""
    return next(p for p in numbered(path, suffix) if not (p.exists() or p.is_symlink()))


def first_free_folder(folder: str | os.PathLike[str], claim: Callable[[Path], bool], what: str = "results") -> Path:
    """The first of ``folder``, ``<folder>+1``, ``<folder>+2``, ... that ``claim`` takes (``claim(f)``
    creates a file in the existing folder ``f`` that marks it as taken, returning False when it
    already was: :func:`create_new_file`); a name held by a file is skipped. So a second run writing
    to the same folder (started together, or a fixed output folder) never replaces the first's
    ``what``; returns the folder claimed."""
    folder = Path(folder)
    for candidate in numbered(folder):
        with contextlib.suppress(FileExistsError):  # a file of that name: the next folder
            candidate.mkdir(parents=True, exist_ok=True)
        if candidate.is_dir() and claim(candidate):
            if candidate != folder:
                log.warning("%s already holds earlier %s: these are in %s", folder, what, candidate)
            return candidate
    raise AssertionError("unreachable")  # pragma: no cover - numbered() never ends


def output_folder_problem(folder: str | os.PathLike[str]) -> tuple[str, str] | None:
    """Create ``folder`` (and its parents) for a tool's output; None when it can be written into,
    else ``(what failed, why)``: ``("create", "<path> is a file, not a folder")`` (or the OS's
    reason) or ``("write into", "permission denied")``. Tools check this before any work."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        for p in (folder, *folder.parents):  # the non-folder standing where a folder should be
            if p.exists() or p.is_symlink():
                if not p.is_dir():
                    return "create", f"{p} is a file, not a folder"
                break
        return "create", e.strerror or str(e)
    if not os.access(folder, os.W_OK | os.X_OK):
        return "write into", "permission denied"
    return None
