"""The library behind ``python -m dyconv.report``: sweep jobs grouped over seeds
(:mod:`~dyconv.reporting.groups`), differences with 95% Welch intervals
(:mod:`~dyconv.reporting.compare`), the attention over training read from each run
(:mod:`~dyconv.reporting.attention`), figures (:mod:`~dyconv.reporting.figures`) and the
report's files (:mod:`~dyconv.reporting.build`).

Plain Python at import: scipy, matplotlib and tensorboard are imported when used.
"""

from dyconv.reporting.attention import AttentionCurve, attention_curves, job_history
from dyconv.reporting.build import build_report
from dyconv.reporting.compare import Comparison, compare, welch_interval
from dyconv.reporting.groups import Group, group_jobs, load_jobs

__all__ = [
    "AttentionCurve",
    "Comparison",
    "Group",
    "attention_curves",
    "build_report",
    "compare",
    "group_jobs",
    "job_history",
    "load_jobs",
    "welch_interval",
]
