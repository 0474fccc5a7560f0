"""Turn sweeps into evidence: ``python -m dyconv.report <sweep dir> [<sweep dir> ...]``
(``dyconv-report``).

Reads every job of one multirun, or of several that make one study (their jobs are merged; the
report then goes to ``--out``): its overrides, status and final metrics (see
:mod:`dyconv.sweeps`); groups the completed jobs that differ only by ``seed``, and writes:

- ``report.md`` / ``report.csv``: per group n, mean ± std of the metric (test accuracy by
  default), parameters, GFLOPs and training time;
- differences with a 95% Welch confidence interval: a ``dy_<name>`` group against its ``<name>``
  twin with otherwise equal overrides (the width sweep); in a study of ``+arm`` arms, every arm
  against the static arm (``*_static``), or without one against the first arm, with otherwise
  equal overrides; a sweep with one varying key and neither compares every value against the
  first one;
- ``accuracy_vs_gflops.png`` and ``accuracy_vs_params.png``: mean ± std per group, one line per
  series across widths: the paper's Figure 1 in miniature;
- ``attention_over_training.png`` / ``.csv``: for every group whose runs logged attention, the
  kernel attention's spread across samples and its normalised entropy per epoch (mean over the
  dynamic layers, mean ± std over seeds), from each run's ``attention_history.json`` or its
  TensorBoard events: is the dynamic part used, and from when.

The work is done by :mod:`dyconv.reporting`; this module is the command line.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dyconv.reporting.build import build_report
from dyconv.reporting.compare import Comparison, compare, welch_interval
from dyconv.reporting.groups import DEFAULT_METRICS, Group, default_exclude_keys, group_jobs
from dyconv.runs.handed import clean

__all__ = ["Comparison", "Group", "build_report", "compare", "default_exclude_keys", "group_jobs", "main",
           "welch_interval"]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dyconv.report",
        description="Summarise one multirun or several of one study: mean ± std over seeds, differences with 95% CIs "
                    "(dynamic vs static twins, every +arm arm vs the static arm), accuracy vs GFLOPs / parameters "
                    "plots, the attention over training.",
    )
    parser.add_argument("sweep_dirs", nargs="+", metavar="sweep_dir",
                        help="a multirun's directory, e.g. logs/fmnist/multiruns/width_sweep; several are merged")
    parser.add_argument("--metric", default=None, help=f"metric to report (default: first of {DEFAULT_METRICS})")
    parser.add_argument("--out", default=None, help="where to write report.md/.csv and the plots "
                                                    "(default: the sweep_dir; required for several)")
    parser.add_argument("--title", default=None, help="title of the report and plots")
    args = parser.parse_args(argv)
    result = build_report(args.sweep_dirs, args.out, args.metric, args.title)
    print(result["text"])
    written = [result["report"], result["csv"], *result["plots"]]
    if result["attention_csv"] is not None:
        written.append(result["attention_csv"])
    print("\nWritten: " + ", ".join(clean(p) for p in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
