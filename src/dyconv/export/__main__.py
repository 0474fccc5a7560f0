"""``python -m dyconv.export ...``: the export tool (:mod:`dyconv.export.cli`)."""

from dyconv.export.cli import main

if __name__ == "__main__":
    main()
