"""Files from a folder someone handed you (a sweep folder), read and passed on safely.

A sweep folder is data, possibly crafted: its files are read only inside the folder (never
through a link that leads out of it), only when they are regular files of a bounded size
(:data:`MAX_FILE_BYTES`), decoded with bad bytes shown as ``\\xNN`` rather than failing, and
YAML without aliases (:func:`load_yaml`: a 575-byte "billion laughs" alias bomb would otherwise
expand to gigabytes). Each refusal is a :class:`HandedFileError` whose message names the file and
the reason, for the report's list of what it left out.

What is passed on is escaped for where it goes: :func:`csv_cell` for spreadsheets (the OWASP
CSV-injection rule: a text cell beginning with ``=``, ``+``, ``-``, ``@``, tab or carriage return
gets a leading ``'``; numbers stay numbers), :func:`md_text` for Markdown (no raw HTML, no table
breaks, no new lines), :func:`plot_text` for matplotlib labels (no mathtext).
"""

from __future__ import annotations

import math
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from dyconv.errors import DyconvError

__all__ = [
    "MAX_FILE_BYTES",
    "HandedFileError",
    "clean",
    "csv_cell",
    "csv_row",
    "csv_uncell",
    "finite",
    "inside",
    "load_yaml",
    "md_text",
    "notes_text",
    "plot_text",
    "read_handed",
    "short",
    "size_text",
]

#: The largest job file (``metrics.json``, ``.hydra/*.yaml``, ``job_status.json``) read from a
#: sweep folder; a real one is a few kB.
MAX_FILE_BYTES = 1 << 20
#: Cells that a spreadsheet would run as a formula (OWASP); a leading ``'`` is added to escape one.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")
#: Line breaks, other control characters and bidirectional overrides (which reorder what a reader
#: sees): one space each in Markdown, labels and messages.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]+")
#: A backslash before ASCII punctuation would escape it in Markdown: it is doubled.
_MD_BACKSLASH = re.compile(r"\\(?=[!-/:-@\[-`{-~])")
#: Block syntax at the start of a list item or cell (``# heading``, ``> quote``, ``1. list``): escaped.
_MD_BLOCK_START = re.compile(r"^(?=[#>+=~:-])|^(\d+)(?=[.)])")
_MD_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", "|": "\\|", "`": "\\`", "[": "\\[",
                             "]": "\\]", "*": "\\*"})


class HandedFileError(DyconvError, ValueError):
    """A file of a handed folder that is not read (its message names the file and why)."""


def size_text(n: int) -> str:
    """``"62.0 MB"``, ``"1.0 MB"``, ``"512 bytes"``."""
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n:,} bytes"


def clean(value: Any) -> str:
    """``str(value)`` with what cannot be written as UTF-8 (a file name's undecodable bytes) as
    ``\\xNN``."""
    text = str(value)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
        text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def short(value: Any, limit: int = 300) -> str:
    """One line of at most about ``limit`` characters: control characters (line breaks) become
    spaces, a longer text ends in ``… (N characters)``."""
    text = _CONTROL.sub(" ", clean(value))
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(text):,} characters)"
    return text


def inside(path: Path, root: Path) -> bool:
    """Whether ``path`` stays inside ``root`` once every link is resolved."""
    try:
        return Path(path).resolve().is_relative_to(Path(root).resolve())
    except (OSError, RuntimeError):  # a link loop
        return False


def read_handed(path: Path, root: Path, limit: int = MAX_FILE_BYTES) -> str | None:
    """The text of ``path``, a file of the handed folder ``root``; None when it does not exist.

    Raises :class:`HandedFileError` when it leads out of ``root`` (a link), is not a regular
    file (a folder, a pipe) or is larger than ``limit`` bytes. Bytes that are not UTF-8 are kept
    (as lone surrogates: JSON reads them; :func:`clean` and every escaper here show them as
    ``\\xNN``)."""
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return None
    if not inside(path, root):
        raise HandedFileError(f"{short(path)} is a link out of {short(root)}; not followed")
    try:
        real = path.resolve()  # inside root; opened without following a link swapped in since
        info = real.stat()
        if not stat.S_ISREG(info.st_mode):
            raise HandedFileError(f"{short(path)} is not a regular file; not read")
        if info.st_size > limit:
            raise HandedFileError(f"{short(path)} is {size_text(info.st_size)}, more than the "
                                  f"{size_text(limit)} read from a sweep folder; not read")
        fd = os.open(real, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0))
        with os.fdopen(fd, "rb") as f:
            data = f.read(limit + 1)
    except OSError as e:
        raise HandedFileError(f"{short(path)} could not be read: {e.strerror or e}") from None
    if len(data) > limit:  # grew since stat
        raise HandedFileError(f"{short(path)} is more than the {size_text(limit)} read from a sweep folder; not read")
    return data.decode("utf-8", "surrogateescape")


class _NoAliasLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses aliases (``*name``): plain data only, and no alias bomb."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"uses a YAML alias (*{event.anchor}), which a sweep "
                                              "folder's files never hold", event.start_mark)
        return super().compose_node(parent, index)


def load_yaml(text: str, name: str = "YAML") -> Any:
    """``text`` as plain YAML data (nothing resolved: a ``${...}`` stays text), refusing aliases.

    Raises :class:`HandedFileError` naming ``name`` for an alias, bad YAML or too deep nesting."""
    try:
        return yaml.load(clean(text), Loader=_NoAliasLoader)  # a SafeLoader subclass; bad bytes as \xNN
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e)
        raise HandedFileError(f"{short(name)} is not plain YAML ({short(problem, 120)}); not read") from None
    except RecursionError:
        raise HandedFileError(f"{short(name)} is nested too deeply; not read") from None


def finite(value: Any) -> float | None:
    """``value`` as a finite float; None for text, NaN, infinities and integers beyond float
    (``10**400``)."""
    if isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def _is_number(text: str) -> bool:
    return _NUMBER.fullmatch(text) is not None


def csv_cell(value: Any) -> Any:
    """A value for a CSV cell: text that a spreadsheet would run as a formula (it begins with
    ``=``, ``+``, ``-``, ``@``, tab or carriage return and is not a number such as ``-0.5``) gets
    a leading ``'``; so does text that already begins with ``'``, so that :func:`csv_uncell`
    gives back exactly what was written. Numbers and other text stay as they are."""
    if not isinstance(value, str):
        return value
    text = clean(value)
    if text.startswith("'") or (text.startswith(_FORMULA_START) and not _is_number(text)):
        return "'" + text
    return text


def csv_uncell(text: str) -> str:
    """The value that :func:`csv_cell` escaped."""
    return text[1:] if text.startswith("'") else text


def csv_row(row: dict[str, Any]) -> dict[str, Any]:
    """:func:`csv_cell` of every key and value."""
    return {csv_cell(k): csv_cell(v) for k, v in row.items()}


def md_text(value: Any, limit: int = 300) -> str:
    """``value`` as inline Markdown text shown as written: one line (:func:`short`), no raw HTML
    (``<`` and ``&`` as entities), no links or images (``[``, ``]`` escaped), no table cell
    breaks (``|``), no code spans or emphasis (backticks, ``*`` escaped), no block
    syntax at its start (``#``, ``>``, ``1.``)."""
    text = _MD_BACKSLASH.sub(r"\\\\", short(value, limit)).translate(_MD_ESCAPES)
    return text if _is_number(text) else _MD_BLOCK_START.sub(lambda m: (m[1] or "") + "\\", text)


def plot_text(value: Any, limit: int = 60) -> str:
    """``value`` for a matplotlib label or title: one line of at most ``limit`` characters (a
    longer one ends in "…") with ``$`` escaped (no mathtext)."""
    text = short(value, 1 << 30)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("$", r"\$")


def notes_text(notes: Iterable[str]) -> list[str]:
    """Markdown list items, one per note."""
    return [f"- {md_text(n, 500)}" for n in notes]
