"""Small files (metrics, markers, summaries, run ids) written so that a reader, or a kill at any
moment, sees the old content or the new one, never a part."""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "EXCLUSIVE_CREATE",
    "atomic_write_bytes",
    "atomic_write_text",
    "create_new_file",
    "first_free_folder",
    "open_new_file",
    "output_folder_problem",
    "png_bytes",
]

log = logging.getLogger(__name__)

#: ``os.open`` flags that create a new file and never follow a link at its name.
EXCLUSIVE_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)


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


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temp file beside ``path`` (named by this process, so concurrent writers
    never share one) and ``os.replace`` it over ``path``; returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open_new_file(tmp) as f:  # a leftover (or planted link) is removed, never written through
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")  # this writer's own
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


def first_free_folder(folder: str | os.PathLike[str], claim: Callable[[Path], bool], what: str = "results") -> Path:
    """The first of ``folder``, ``<folder>+1``, ``<folder>+2``, ... that ``claim`` takes (``claim(f)``
    creates a file in the existing folder ``f`` that marks it as taken, returning False when it
    already was: :func:`create_new_file`); a name held by a file is skipped. So a second run writing
    to the same folder (started together, or a fixed output folder) never replaces the first's
    ``what``; returns the folder claimed."""
    folder = Path(folder)
    candidate, n = folder, 0
    while True:
        with contextlib.suppress(FileExistsError):  # a file of that name: the next folder
            candidate.mkdir(parents=True, exist_ok=True)
        if candidate.is_dir() and claim(candidate):
            if n:
                log.warning("%s already holds earlier %s: these are in %s", folder, what, candidate)
            return candidate
        n += 1
        candidate = folder.with_name(f"{folder.name}+{n}")


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
