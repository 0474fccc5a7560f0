"""Rewrite the published-results tables of docs/experiments.md from dyconv.published.

Usage: ``python scripts/published_tables.py`` (``--check``: exit 1 if a file is out of date).
"""

from __future__ import annotations

import sys
from pathlib import Path

from dyconv.published import render

ROOT = Path(__file__).resolve().parents[1]
FILES = [ROOT / "docs" / "experiments.md"]


def main(argv: list[str]) -> int:
    stale = []
    for path in FILES:
        text = path.read_text()
        new = render(text)
        if new != text:
            stale.append(path)
            if "--check" not in argv:
                path.write_text(new)
    if stale and "--check" in argv:
        print("out of date (run python scripts/published_tables.py):", *map(str, stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
