"""Published results: the loader of ``published.yaml`` (beside this module), the one place that
holds each reproducible row's figures, and the tables generated from it.

Every :class:`Published` row names the ``conf/experiment/`` config that reproduces it, the
parameter count of the model that produced the number and the number itself with its source
(torchvision's ``Weights.meta`` is the model). ``tests/cli/test_experiments.py`` checks every
experiment's model against ``params``; the README's results table and ``docs/experiments.md``
are generated from :data:`ROWS` (``python scripts/published_tables.py`` rewrites them, a test
fails if they drift).

Sources: ``ref-first`` / ``ref-latest`` are the first and the latest README of the 2021 reference
implementation (TArdelean/DynamicConvolution); ``paper`` is Chen et al., CVPR 2020; ``odconv`` is
the README of ODConv's official code (OSVAI/ODConv; Li, Zhou, Yao, "Omni-Dimensional Dynamic
Convolution", ICLR 2022), whose networks are the ``od_*`` models.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["ROWS", "SOURCES", "TABLES", "Published", "by_experiment", "docs_table", "readme_table", "render", "rows"]

#: The data file (shipped in the wheel as package data).
DATA_FILE = Path(__file__).with_name("published.yaml")


@dataclass(frozen=True)
class Published:
    """One published result and the experiment that reproduces it.

    Attributes:
        experiment: ``conf/experiment/<experiment>.yaml``.
        table: key of :data:`TABLES`.
        network: display name.
        params: exact parameter count of the model behind the number (the reference code's, which
            the experiment's model equals); None where the source gives none.
        params_published: the count as the source prints it ("5.00M"), None if it prints none.
        value: the published metric (latest source); None if none was published.
        source: key of :data:`SOURCES` for ``value``.
        value_first: the first README's figure where it differs from the latest one.
        config: the source's own config file, if any.
        trained_on: training data where it is not the table's default.
        note: a caveat printed next to the row (in the file: ``note``, or ``note_ref`` naming one of
            its shared ``notes``).
    """

    experiment: str
    table: str
    network: str
    params: int | None
    params_published: str | None
    value: float | None
    source: str
    value_first: float | None = None
    config: str | None = None
    trained_on: str | None = None
    note: str | None = None


def _load(path: Path = DATA_FILE) -> tuple[dict[str, str], dict[str, tuple[str, str]], tuple[Published, ...]]:
    """``(SOURCES, TABLES, ROWS)`` from the data file; a row naming an unknown table, source or
    shared note, or a second row for one experiment, is an error in the file."""
    data: dict[str, Any] = yaml.safe_load(path.read_text(encoding="utf-8"))
    sources = {str(k): str(v) for k, v in data["sources"].items()}
    tables = {str(k): (str(v["title"]), str(v["metric"])) for k, v in data["tables"].items()}
    notes = data.get("notes") or {}
    out = []
    for entry in data["rows"]:
        entry = dict(entry)
        if "note_ref" in entry:
            entry["note"] = notes[entry.pop("note_ref")]
        row = Published(**entry)
        if row.table not in tables or row.source not in sources:
            raise ValueError(f"{path}: {row.experiment} names an unknown table or source")
        out.append(row)
    if len({r.experiment for r in out}) != len(out):
        raise ValueError(f"{path}: one row per experiment")
    return sources, tables, tuple(out)


SOURCES, TABLES, ROWS = _load()
_BY_EXPERIMENT = {row.experiment: row for row in ROWS}


def rows(table: str | None = None) -> list[Published]:
    """The rows of ``table`` (all rows if None), in publication order."""
    return [r for r in ROWS if table is None or r.table == table]


def by_experiment(name: str) -> Published | None:
    """The published row an experiment reproduces, or None (an experiment with no published figure)."""
    return _BY_EXPERIMENT.get(name)


def _value(r: Published) -> str:
    if r.value is None:
        return "-"
    if r.value_first is not None:
        return f"{r.value:.2f} (first README: {r.value_first:.2f})"
    return f"{r.value:g}" if r.source == "paper" else f"{r.value:.2f}"


def _params(r: Published) -> str:
    if r.params is None:
        return "-"
    exact = f"{r.params:,}"
    return f"{exact} ({r.params_published})" if r.params_published else exact


def _source(r: Published) -> str:
    text = SOURCES[r.source]
    return f"{text}, `{r.config}`" if r.config else text


def readme_table() -> str:
    """The README's results table (markdown), one line per published row."""
    lines = ["| experiment | published | params | source | dyconv |", "| --- | ---: | ---: | --- | ---: |"]
    notes: list[str] = []
    for table, (title, _) in TABLES.items():
        lines.append(f"| **{title}** | | | | |")
        for r in rows(table):
            extra = f" ({r.trained_on})" if r.trained_on else ""
            lines.append(f"| `{r.experiment}`{extra} | {_value(r)}{_mark(r, notes)} | {_params(r)} | {_source(r)} | |")
    return "\n".join(lines + _footnotes(notes))


def _mark(r: Published, notes: list[str]) -> str:
    """`` (n)`` for a row with a note (numbered in order of first use, collected in ``notes``)."""
    if not r.note:
        return ""
    if r.note not in notes:
        notes.append(r.note)
    return f" ({notes.index(r.note) + 1})"


def _footnotes(notes: list[str]) -> list[str]:
    out: list[str] = []
    for i, note in enumerate(notes, 1):
        out += ["", f"({i}) {note[0].upper()}{note[1:]}."]
    return out


def docs_table(table: str) -> str:
    """``docs/experiments.md``'s table for ``table``: network, command, published figure, params, source."""
    lines = [
        "| Network | Command | Published | Params (exact, source's) | Source | dyconv |",
        "| --- | --- | ---: | ---: | --- | ---: |",
    ]
    notes: list[str] = []
    for r in rows(table):
        network = r.network + (f" ({r.trained_on})" if r.trained_on else "")
        cmd = f"`python -m dyconv.train experiment={r.experiment} trainer=gpu`"
        lines.append(f"| {network} | {cmd} | {_value(r)}{_mark(r, notes)} | {_params(r)} | {_source(r)} | |")
    return "\n".join(lines + _footnotes(notes))


#: generated regions: ``<!-- published:<key> -->`` ... ``<!-- /published:<key> -->``
def _generated(key: str) -> str:
    return readme_table() if key == "readme" else docs_table(key)


def render(text: str) -> str:
    """``text`` with every generated region (between ``<!-- published:KEY -->`` and
    ``<!-- /published:KEY -->``, KEY ``readme`` or a :data:`TABLES` key) rewritten from :data:`ROWS`."""
    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        return f"<!-- published:{key} -->\n{_generated(key)}\n<!-- /published:{key} -->"

    return re.sub(r"<!-- published:(\w+) -->\n.*?<!-- /published:\1 -->", sub, text, flags=re.S)
