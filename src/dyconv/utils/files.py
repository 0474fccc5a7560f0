"""Small files (metrics, markers, summaries, run ids) written so that a reader, or a kill at any
moment, sees the old content or the new one, never a part."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["atomic_write_text", "output_folder_problem"]


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to a temp file beside ``path`` (named by this process, so concurrent writers
    never share one) and ``os.replace`` it over ``path``; returns ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.unlink(missing_ok=True)  # a leftover (or planted link) is removed, never written through
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


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
