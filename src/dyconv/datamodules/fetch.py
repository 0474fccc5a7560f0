"""Fetch a file and verify it: downloads go to ``<file>.part`` (resumed with an HTTP ``Range``
request when the server allows) and are renamed into place only after the md5/sha256 checksum
matched; a link planted at the ``.part`` name is replaced, never written through or appended to."""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import stat
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from dyconv.datamodules.data_root import ChecksumError, DownloadError
from dyconv.utils.files import open_new_file

__all__ = ["download_file", "file_digest", "verify_checksum"]

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


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


