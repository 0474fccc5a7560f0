"""Sweep summaries: moved to :mod:`dyconv.runs.sweeps` (the callback: :mod:`dyconv.runs.hydra_callbacks`).
This name stays importable for one minor version."""

from dyconv.runs.hydra_callbacks import SweepSummary
from dyconv.runs.layout import STATUS_FILE
from dyconv.runs.sweeps import (
    SUMMARY_CSV,
    SUMMARY_MD,
    collect_jobs,
    exclude_keys,
    is_training_job,
    load_plain_yaml,
    split_override,
    write_summary,
)

__all__ = [
    "STATUS_FILE",
    "SUMMARY_CSV",
    "SUMMARY_MD",
    "SweepSummary",
    "collect_jobs",
    "exclude_keys",
    "is_training_job",
    "load_plain_yaml",
    "split_override",
    "write_summary",
]
