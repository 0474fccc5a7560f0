"""Where a dataset lives: its errors (missing, failed download, bad checksum, unsafe archive),
what a downloadable file is (:class:`Archive`), and the checks of ``data.root`` made before it is
touched (:func:`check_data_root`: a root that is a file, lies under one, or cannot be written
where data must be written is refused in one message)."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dyconv.errors import ConfigError, DyconvError

__all__ = [
    "COMPLETE_MARKER",
    "EXTRACTING_MARKER",
    "Archive",
    "ChecksumError",
    "DatasetNotFoundError",
    "DownloadError",
    "UnsafeArchiveError",
    "check_archive_root",
    "check_data_root",
    "is_complete",
    "resolve_root",
]

COMPLETE_MARKER = ".dyconv-complete"
EXTRACTING_MARKER = ".dyconv-extracting"


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
    read_only: bool = False,
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
        read_only: ``root`` came from a checkpoint (eval, inspect, export): anything ``writes``
            names is refused, in one line, whether or not the folder could be written.

    Raises:
        ConfigError: ``root`` (or a folder above or below it that is needed) is a file, or a folder
            cannot be read, created or written (permission denied, read-only file system), or is
            ``read_only`` and something is to be written there.
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
    if read_only:
        raise ConfigError(
            f"{key}={root} comes from the checkpoint, and eval/inspect/export never write where a checkpoint says, "
            f"but {writes}: pass {key}=<a folder of yours> on the command line, or prepare the dataset there with "
            "python -m dyconv.train"
        )
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
    read_only: bool = False,
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
                    writes=writes if writing else None, key=key, read_only=read_only)


def _write_denied(p: Path) -> str:
    """The OS's words for why ``p`` cannot be written: a read-only file system, else permission denied."""
    read_only = hasattr(os, "statvfs") and bool(os.statvfs(p).f_flag & getattr(os, "ST_RDONLY", 1))
    return os.strerror(errno.EROFS if read_only else errno.EACCES)


def is_complete(dataset_dir: Path) -> bool:
    """True if dyconv finished extracting into ``dataset_dir`` (its completion marker is there)."""
    return (Path(dataset_dir) / COMPLETE_MARKER).is_file() and not (Path(dataset_dir) / EXTRACTING_MARKER).exists()
