"""Reading image (and mask) files with errors that name the file, and verifying a whole dataset.

Every image-file dataset reads through :func:`load_image` (or wraps its own reader in
:func:`decoding`), so a truncated or corrupt file raises :class:`CorruptImageError` naming the
path, the decoder's complaint and the fix, instead of PIL's bare ``OSError: image file is
truncated`` an epoch into training. The error survives DataLoader worker processes: torch re-raises
it in the main process as ``CorruptImageError("Caught CorruptImageError in DataLoader worker
process 0. Original Traceback ...")``, and the class strips that wrapper back to its own message.

:func:`verify_files` decodes every file of a dataset once (``data.verify=true`` at ``prepare_data``)
and raises one error listing all bad files.

PIL's ``ImageFile.LOAD_TRUNCATED_IMAGES`` must stay ``False`` (its default; dyconv never sets it):
set, PIL pads truncated JPEGs with gray and the corruption goes unnoticed.
"""

from __future__ import annotations

import logging
import os
import re
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from PIL import Image

from dyconv.errors import DyconvError

__all__ = ["CorruptImageError", "decoding", "load_image", "verify_files"]

log = logging.getLogger(__name__)

#: What readers raise on a truncated, corrupt or unreadable file (PIL: OSError incl. "image file is
#: truncated" and UnidentifiedImageError, SyntaxError/struct.error/zlib.error/EOFError on broken
#: headers or streams; scipy's loadmat: ValueError, OSError, zlib.error).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
)

_REPLACE = (
    "with an intact copy from the dataset's archive (re-extract it, or delete the dataset folder and download "
    "again: data.download=true where the dataset supports it)"
)
# torch's ExceptionWrapper.reraise: "Caught <Type> in DataLoader worker process N.\nOriginal Traceback ...
# <module>.<Type>: <our message>"
_WRAPPED = re.compile(r"^Caught (\w+) (.*?)\.\nOriginal Traceback \(most recent call last\):\n", re.S)
_MAX_LISTED = 50
_BATCH = 2048


class CorruptImageError(DyconvError, OSError):
    """An image or mask file that cannot be decoded; the message names the file(s) and the fix.

    ``paths`` holds the bad file(s) (empty when re-raised from a DataLoader worker, where only the
    message crosses the process boundary). Constructed from one string, so torch's worker re-raise
    (``type(msg)``) and pickling keep the class; a worker's wrapped traceback is reduced to the
    original message plus where it was caught.
    """

    def __init__(self, message: str, *, paths: Sequence[str] = ()) -> None:
        m = _WRAPPED.match(message)
        if m:
            last = message.rfind("Traceback (most recent call last):")  # ours, after any chained cause
            at = message.find(f"{m.group(1)}: ", last)
            if at >= 0:
                message = f"{message[at + len(m.group(1)) + 2 :].rstrip()}\n(raised {m.group(2)})"
        super().__init__(message)
        self.paths = [str(p) for p in paths]

    def __reduce__(self):  # keep ``paths`` through pickling (the default would call __init__(*args) only)
        return (_rebuild, (type(self), str(self.args[0]), self.paths))

    def __str__(self) -> str:
        return str(self.args[0])

    @classmethod
    def for_file(cls, path: str | os.PathLike[str], error: BaseException) -> CorruptImageError:
        """The error for one file that failed to decode with ``error``."""
        return cls(
            f"cannot decode {path}: {_describe(error)}. Fix: replace it {_REPLACE}; "
            "data.verify=true decodes every file at startup and lists all bad ones",
            paths=[str(path)],
        )

    @classmethod
    def for_files(cls, dataset: str, bad: Sequence[tuple[str, str]], total: int) -> CorruptImageError:
        """One error listing every ``(path, reason)`` that failed (the first 50, then a count)."""
        lines = [f"  {p}: {r}" for p, r in bad[:_MAX_LISTED]]
        if len(bad) > _MAX_LISTED:
            lines.append(f"  ... and {len(bad) - _MAX_LISTED} more")
        return cls(
            f"{dataset}: {len(bad)} of {total} files cannot be decoded (truncated or corrupt):\n"
            + "\n".join(lines)
            + f"\nFix: replace each {_REPLACE}, then run again",
            paths=[p for p, _ in bad],
        )


def _rebuild(cls: type[CorruptImageError], message: str, paths: list[str]) -> CorruptImageError:
    return cls(message, paths=paths)


def _describe(error: BaseException) -> str:
    if isinstance(error, CorruptImageError) and error.__cause__ is not None:
        error = error.__cause__
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__


@contextmanager
def decoding(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a decoding error raised inside the block into :class:`CorruptImageError` naming ``path``."""
    try:
        yield
    except DyconvError:
        raise
    except DECODE_ERRORS as e:
        raise CorruptImageError.for_file(path, e) from e


def load_image(path: str | os.PathLike[str], mode: str | None = "RGB") -> Image.Image:
    """Open and fully decode an image, converted to ``mode`` (``None``: as stored).

    Raises :class:`CorruptImageError` naming ``path`` if it cannot be read or decoded (``Image.open``
    only parses the header; the pixel data, where truncation shows, is decoded here).
    """
    with decoding(path), Image.open(path) as im:
        im.load()
        return im.convert(mode) if mode is not None else im.copy()


def verify_files(
    files: Sequence[tuple[str, Callable[[str], object]]],
    *,
    dataset: str,
    threads: int | None = None,
    log_every: float = 10.0,
) -> None:
    """Decode every file once with its reader and raise one :class:`CorruptImageError` listing all failures.

    Args:
        files: ``(path, reader)`` pairs; a reader raises :class:`CorruptImageError` (or a decoding
            error) on a bad file. Decoding runs in a thread pool (PIL and zlib release the GIL).
        dataset: the name used in the log and the error.
        threads: pool size (default: the CPUs available, at most 32).
        log_every: seconds between progress lines.
    """
    if threads is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        threads = min(32, cpus)
    files = list(dict(files).items())  # a file shared by two splits is decoded once
    total = len(files)
    log.info("verifying %s: decoding %d files with %d threads", dataset, total, threads)

    def check(item: tuple[str, Callable[[str], object]]) -> tuple[str, str] | None:
        path, reader = item
        try:
            with decoding(path):
                reader(path)
        except CorruptImageError as e:
            return path, _describe(e)
        return None

    bad: list[tuple[str, str]] = []
    start = last = time.monotonic()
    with ThreadPoolExecutor(max(1, threads)) as pool:
        for first in range(0, total, _BATCH):  # bounded number of futures in flight (ImageNet: 1.3M files)
            bad.extend(r for r in pool.map(check, files[first : first + _BATCH]) if r is not None)
            now = time.monotonic()
            if now - last >= log_every:
                last = now
                done = min(first + _BATCH, total)
                log.info(
                    "verifying %s: %d/%d files decoded, %d bad (%.0f s)", dataset, done, total, len(bad), now - start
                )
    if bad:
        raise CorruptImageError.for_files(dataset, sorted(bad), total)
    log.info("verified %s: all %d files decode (%.0f s)", dataset, total, time.monotonic() - start)
