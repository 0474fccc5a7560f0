"""Read-only and full disks where the tools write: folders checked before any work, a full disk
named as one (not with training advice).

- :func:`check_writable`: a folder a tool will write into (inspect's ``output_dir``) is checked
  before anything is computed.
- :func:`refuse_unwritable_hydra_folder`: called by dyconv's Hydra callback before Hydra writes a
  launch's ``.hydra/`` and log file; an unwritable folder ends the launch with one line naming it
  instead of Hydra's ``OSError`` traceback.
- :func:`naming_full_disk`: "no space left" while a tool writes becomes one line naming the file or
  folder, the disk (its mount point and free space) and the tool's own fix.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dyconv.errors import ConfigError, DiskFullError, DyconvError, is_disk_full
from dyconv.runs.layout import HYDRA_DIR, HYDRA_LAUNCH_FILES, run_dir_of

__all__ = ["check_writable", "disk_of", "export_disk_guard", "naming_full_disk", "refuse_unwritable_hydra_folder",
           "unwritable"]

#: The command-line key that moves each tool's launch folder (named in the refusal).
_FOLDER_KEYS = {"inspect": "output_dir", "train": "paths.log_dir"}


def _first_existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if os.path.lexists(p):
            return p
    return Path(path.anchor or os.sep)


def _denied(p: Path) -> str:
    """The OS's words for why ``p`` cannot be written: a read-only file system, else permission denied."""
    read_only = hasattr(os, "statvfs") and bool(os.statvfs(p).f_flag & getattr(os, "ST_RDONLY", 1))
    return os.strerror(errno.EROFS if read_only else errno.EACCES)


def unwritable(folder: str | os.PathLike[str], files: tuple[str, ...] = ()) -> str | None:
    """Why files cannot be written into ``folder`` (created when missing) or over the existing
    ``files`` in it, in a few words naming the path at fault; None when they can."""
    folder = Path(folder)
    p = _first_existing(folder)
    if not p.is_dir():
        return f"{p} is not a folder"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"{p}: {_denied(p)}"
    for name in files:
        f = folder / name
        if f.is_dir() and not os.access(f, os.W_OK | os.X_OK):
            return f"{f}: {_denied(f)}"
        if f.is_file() and not os.access(f, os.W_OK):
            return f"{f}: {_denied(f)}"
    return None


def check_writable(folder: str | os.PathLike[str], key: str) -> None:
    """Refuse, before any work, a folder the tool is to write into that cannot be written.

    Raises:
        ConfigError: one line naming ``key``, the folder at fault and the OS's reason.
    """
    why = unwritable(folder)
    if why:
        raise ConfigError(f"{key}={folder} cannot be written ({why}); pass {key}=<a folder you can write> "
                          "(nothing was computed)")


def refuse_unwritable_hydra_folder(config: Any, sweep: bool = False, folder: Any = None) -> None:
    """Before Hydra writes a launch's ``.hydra/`` files and ``<task>.log``: exit with one line
    naming the folder when they cannot be written there (a read-only disk or folder). Hydra turns
    an exception raised in a callback into a warning and then fails with its own traceback, so
    this exits (``SystemExit``, as the tools' user errors do). ``folder``: the launch folder already
    resolved (the Hydra callback resolves it with Hydra's config set); by default read from ``config``."""
    key = "hydra.sweep.dir" if sweep else "hydra.run.dir"
    if folder is None:
        folder = OmegaConf.select(config, key, default=None, throw_on_resolution_failure=False)
    if not folder:
        return
    task = OmegaConf.select(config, "task_name", default=None) or OmegaConf.select(config, "hydra.job.name",
                                                                                     default="")
    files = (HYDRA_DIR, *(f"{HYDRA_DIR}/{name}" for name in HYDRA_LAUNCH_FILES), f"{task}.log")
    why = unwritable(folder, () if sweep else files)
    if why:
        fix = "hydra.sweep.dir" if sweep else _FOLDER_KEYS.get(str(task), "hydra.run.dir")
        raise SystemExit(f"error: cannot write the launch folder {folder} ({why}): Hydra records the launch's config "
                         f"(.hydra/) and log there; pass {fix}=<a folder you can write>")


def disk_of(path: str | os.PathLike[str]) -> str:
    """``"the disk mounted at <mount> (<N> MiB free)"`` for the file system holding ``path``."""
    p = _first_existing(Path(path).absolute())
    mount = p
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    free = ""
    with contextlib.suppress(OSError):
        free = f", {shutil.disk_usage(p).free / 2**20:.0f} MiB free"
    return f"the disk mounted at {mount}{free}"


@contextlib.contextmanager
def naming_full_disk(folder: str | os.PathLike[str], what: str, fix: str) -> Iterator[None]:
    """Turn "no space left on device" (or a full quota) raised inside into one
    :class:`~dyconv.errors.DiskFullError` naming the file (or ``folder``), the disk and ``fix``
    (what this tool's user can do; never training advice)."""
    try:
        yield
    except DyconvError:
        raise
    except BaseException as e:
        if not is_disk_full(e):
            raise
        where = next((getattr(x, "filename", None) for x in (e, e.__cause__, e.__context__)
                      if getattr(x, "filename", None)), None) or folder
        raise DiskFullError(errno.ENOSPC, f"no space left on device writing {what} ({where}, on {disk_of(folder)}); "
                                          f"{fix}") from None


def export_disk_guard(cfg: Any) -> contextlib.AbstractContextManager[None]:
    """:func:`naming_full_disk` for ``python -m dyconv.export``: the folder of ``output=`` (or the
    run's ``export/``), and an export's fix (an earlier file there is kept)."""
    output = cfg.get("output")
    folder = Path(str(output)).expanduser().absolute().parent if output else Path(run_dir_of(cfg.ckpt_path)) / "export"
    return naming_full_disk(folder, "the export", "nothing was written and an earlier export there is kept; free "
                            "some space there, or pass output=<a file on another disk>")
