"""Turn a sweep into evidence: ``python -m dyconv.report <sweep dir>`` (``dyconv-report``).

Reads every job of a multirun (its overrides, status and final metrics; see
:mod:`dyconv.sweeps`), groups the completed jobs that differ only by ``seed``, and writes into the
sweep directory (or ``--out``):

- ``report.md`` / ``report.csv``: per group n, mean ± std of the metric (test accuracy by
  default), parameters, GFLOPs and training time;
- the dynamic - static difference per width (a ``dy_<name>`` group against its ``<name>`` twin with
  otherwise equal overrides) with a 95% Welch confidence interval; a sweep with one varying key
  and no static twins (an ablation) compares every value against the first one instead;
- ``accuracy_vs_gflops.png`` and ``accuracy_vs_params.png``: mean ± std per group, one line per
  series (static and dynamic, or the ablation's arms) across widths: the paper's Figure 1 in
  miniature.
"""

from __future__ import annotations

import argparse
import csv
import io
import math
import statistics
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dyconv.sweeps import SUMMARY_CSV, collect_jobs, exclude_keys, load_plain_yaml, split_override
from dyconv.utils.files import atomic_write_bytes, atomic_write_text, output_folder_problem, png_bytes

__all__ = ["Comparison", "Group", "build_report", "main"]

SEED_KEYS = ("seed",)
#: The project's Hydra settings: their ``exclude_keys`` stand in for a job that records none.
HYDRA_DEFAULTS = Path(__file__).parent / "conf" / "hydra" / "default.yaml"
WIDTH_KEY = "model.width_mult"
DEFAULT_METRICS = ("test/acc", "test/miou", "val/acc", "val/miou")


@dataclass
class Group:
    """Completed jobs that share every override but the seed."""

    key: tuple[tuple[str, str], ...]
    values: list[float] = field(default_factory=list)
    params: list[float] = field(default_factory=list)
    gflops: list[float] = field(default_factory=list)
    fit_s: list[float] = field(default_factory=list)
    seeds: list[str] = field(default_factory=list)

    @property
    def overrides(self) -> dict[str, str]:
        return dict(self.key)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return statistics.fmean(self.values) if self.values else math.nan

    @property
    def std(self) -> float:
        return statistics.stdev(self.values) if len(self.values) > 1 else math.nan

    def label(self, varying: Sequence[str]) -> str:
        return " ".join(f"{k}={v}" for k, v in self.key if k in varying) or "all"


@dataclass
class Comparison:
    """``treatment - baseline`` of the metric's means with a 95% Welch interval."""

    label: str
    treatment: Group
    baseline: Group
    diff: float
    low: float
    high: float


def _percent(metric: str) -> float:
    """100 for accuracies and mIoU (reported in %), else 1."""
    return 100.0 if metric.endswith(("acc", "miou")) else 1.0


def _float(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """Job records from the job directories (fresh), else from a ``summary.csv`` alone."""
    jobs = collect_jobs(sweep_dir)
    if jobs:
        return jobs
    path = sweep_dir / SUMMARY_CSV
    if not path.is_file():
        raise SystemExit(
            f"error: {sweep_dir} holds no sweep jobs (no */.hydra/overrides.yaml) and no {SUMMARY_CSV}; "
            "pass the directory a multirun wrote (python -m dyconv.train -m ... prints it)"
        )
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        overrides = row.get("overrides", "").split()
        metrics = {k: v for k, v in ((k, _float(v)) for k, v in row.items() if "/" in k) if v is not None}
        out.append({"job": row.get("job", ""), "status": row.get("status", ""), "overrides": overrides,
                    "metrics": metrics, "error": row.get("error", "")})
    return out


def _pick_metric(jobs: Sequence[dict[str, Any]], metric: str | None) -> str:
    available = {k for j in jobs for k in j["metrics"]}
    if metric:
        if metric not in available:
            raise SystemExit(f"error: metric {metric!r} is in no job's metrics; "
                             f"available: {', '.join(sorted(available))}")
        return metric
    for name in DEFAULT_METRICS:
        if name in available:
            return name
    raise SystemExit(f"error: none of {', '.join(DEFAULT_METRICS)} in the jobs' metrics; choose one with --metric")


def default_exclude_keys() -> list[str]:
    """``exclude_keys`` of ``conf/hydra/default.yaml`` (read as plain YAML data, never resolved)."""
    return exclude_keys(load_plain_yaml(HYDRA_DEFAULTS)) or []


def group_jobs(jobs: Sequence[dict[str, Any]], metric: str) -> tuple[list[Group], list[str]]:
    """Groups of completed jobs (in sweep order) and the override keys that vary between groups.

    A group is defined by the overrides that name a job's folder: the seed and the keys Hydra
    excludes from folder names (the job's ``hydra.job.config.override_dirname.exclude_keys``, else
    the project's default list: ``ckpt_path`` of a requeued job, ``trainer.devices``, ...) define
    no group."""
    groups: dict[tuple[tuple[str, str], ...], Group] = {}
    defaults: list[str] | None = None
    for job in jobs:
        if job["status"] != "completed" or metric not in job["metrics"]:
            continue
        excluded = job.get("exclude_keys")
        if excluded is None:
            if defaults is None:
                defaults = default_exclude_keys()
            excluded = defaults
        ignored = {*SEED_KEYS, *excluded}
        pairs = [split_override(o) for o in job["overrides"] if "=" in o]
        key = tuple(sorted((k, v) for k, v in pairs if k not in ignored))
        g = groups.setdefault(key, Group(key))
        m = job["metrics"]
        g.values.append(float(m[metric]))
        g.seeds.append(next((v for k, v in pairs if k in SEED_KEYS), ""))
        for attr, name in (("params", "model/params"), ("gflops", "model/gflops"), ("fit_s", "time/fit_s")):
            if name in m:
                getattr(g, attr).append(float(m[name]))
    keys = sorted({k for key in groups for k, _ in key})
    varying = [k for k in keys if len({dict(key).get(k) for key in groups}) > 1]
    return list(groups.values()), varying


def welch_interval(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """``mean(a) - mean(b)`` and its Welch t confidence interval (nan bounds below 2 runs a side)."""
    from scipy import stats

    diff = statistics.fmean(a) - statistics.fmean(b)
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se = math.sqrt(va + vb)
    if se == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    return diff, diff - half, diff + half


def compare(groups: Sequence[Group], varying: Sequence[str]) -> list[Comparison]:
    """Dynamic vs static twins; without twins and with one varying key, each value vs the first."""
    by_key = {g.key: g for g in groups}
    out = []
    for g in groups:
        model = g.overrides.get("model", "")
        if not model.startswith("dy_"):
            continue
        twin_key = tuple(sorted((k, model[3:] if k == "model" else v) for k, v in g.key))
        twin = by_key.get(twin_key)
        if twin is None:
            continue
        label = " ".join(f"{k}={v}" for k, v in g.key if k in varying and k != "model") or "all"
        out.append(Comparison(f"{model} - {model[3:]} ({label})", g, twin, *welch_interval(g.values, twin.values)))
    if out or len(varying) != 1:
        return out
    base = groups[0]
    for g in groups[1:]:
        out.append(Comparison(f"{g.label(varying)} - {base.label(varying)}", g, base,
                              *welch_interval(g.values, base.values)))
    return out


def _pm(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    if not values:
        return ""
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _series(groups: Sequence[Group], varying: Sequence[str]) -> dict[str, list[Group]]:
    """Plot lines: groups sharing every varying key but the width, ordered by width."""
    series: dict[str, list[Group]] = {}
    for g in groups:
        name = " ".join(f"{v}" if k == "model" else f"{k}={v}" for k, v in g.key
                        if k in varying and k != WIDTH_KEY) or "all"
        series.setdefault(name, []).append(g)
    for members in series.values():
        members.sort(key=lambda g: _float(g.overrides.get(WIDTH_KEY)) or 0.0)
    return series


def _plot(groups: Sequence[Group], varying: Sequence[str], metric: str, x_attr: str, xlabel: str,
          title: str) -> bytes | None:
    """The PNG of the metric against ``x_attr`` per series; None when no group has ``x_attr``."""
    from matplotlib.figure import Figure

    if not any(getattr(g, x_attr) for g in groups):
        return None
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    scale = _percent(metric)
    xscale = 1.0
    if x_attr == "gflops" and max(max(g.gflops) for g in groups if g.gflops) < 1.0:
        xscale, xlabel = 1000.0, xlabel.replace("GFLOPs", "MFLOPs")
    for name, members in _series(groups, varying).items():
        members = [g for g in members if getattr(g, x_attr)]
        xs = [statistics.fmean(getattr(g, x_attr)) * xscale for g in members]
        ys = [g.mean * scale for g in members]
        errs = [(g.std * scale if g.n > 1 else 0.0) for g in members]
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=name)
        for g, x, y in zip(members, xs, ys):
            width = g.overrides.get(WIDTH_KEY)
            if width is not None:
                ax.annotate(f"x{width}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(f"{metric} (%)" if scale == 100.0 else metric)
    ax.set_title(title, fontsize=9)
    ax.grid(True, alpha=0.3)
    if len(ax.lines) <= 12:  # an Optuna search gives one series per trial: no legend then
        ax.legend(fontsize=8)
    return png_bytes(fig)


def build_report(sweep_dir: str | Path, out_dir: str | Path | None = None, metric: str | None = None,
                 title: str | None = None) -> dict[str, Any]:
    """Write report.md, report.csv and the plots; returns what it computed (groups, comparisons, paths).

    Every output is produced in memory before any is written, and each is written atomically, so a
    failure while producing one leaves the previous set of files as it was."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise SystemExit(f"error: {sweep_dir} is not a directory; pass a sweep directory "
                         "(logs/<task>/multiruns/<name>)")
    if (sweep_dir / "metrics.json").is_file() and (sweep_dir / ".hydra").is_dir():
        raise SystemExit(f"error: {sweep_dir} is a single run, not a sweep folder (it has metrics.json); "
                         "point report at a multirun folder (logs/<task>/multiruns/<name>)")
    out = Path(out_dir) if out_dir else sweep_dir
    problem = output_folder_problem(out)
    if problem:
        raise SystemExit(f"error: cannot {problem[0]} the output folder {out}: {problem[1]}")
    jobs = _jobs(sweep_dir)
    metric = _pick_metric(jobs, metric)
    groups, varying = group_jobs(jobs, metric)
    if not groups:
        raise SystemExit(f"error: no completed job in {sweep_dir} reports {metric}")
    comparisons = compare(groups, varying)
    failed = [j for j in jobs if j["status"] != "completed"]
    scale = _percent(metric)
    unit = " (%)" if scale == 100.0 else ""
    title = title or f"{sweep_dir.name}: {metric}"

    rows = []
    for g in groups:
        rows.append({
            "group": g.label(varying), **{k: g.overrides.get(k, "") for k in varying}, "n": g.n,
            f"{metric} mean": g.mean, f"{metric} std": g.std,
            "params": statistics.fmean(g.params) if g.params else "",
            "gflops": statistics.fmean(g.gflops) if g.gflops else "",
            "fit_min mean": statistics.fmean(g.fit_s) / 60 if g.fit_s else "",
            "seeds": " ".join(g.seeds),
        })
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    csv_text = buf.getvalue()

    lines = [f"# {title}", "",
             f"{len(jobs)} jobs in `{sweep_dir}`: {len(jobs) - len(failed)} completed, {len(failed)} failed or "
             f"incomplete. Groups: jobs equal in everything but the seed; mean ± sample std over n seeds.", "",
             f"| group | n | {metric}{unit} | params | GFLOPs | train time (min) |", "|---|---|---|---|---|---|"]
    for g in groups:
        params = f"{statistics.fmean(g.params):,.0f}" if g.params else ""
        gflops = f"{statistics.fmean(g.gflops):.4g}" if g.gflops else ""
        minutes = _pm([t / 60 for t in g.fit_s], 1.0, 1) if g.fit_s else ""
        lines.append(f"| {g.label(varying)} | {g.n} | {_pm(g.values, scale)} | {params} | {gflops} | {minutes} |")
    if comparisons:
        lines += ["", f"Differences in {metric}{unit} (treatment - baseline), 95% Welch confidence interval:", "",
                  "| comparison | difference | 95% CI | n |", "|---|---|---|---|"]
        for c in comparisons:
            ci = "n/a (n < 2)" if math.isnan(c.low) else f"[{c.low * scale:+.2f}, {c.high * scale:+.2f}]"
            lines.append(f"| {c.label} | {c.diff * scale:+.2f} | {ci} | {c.treatment.n} vs {c.baseline.n} |")
    if failed:
        lines += ["", "Not included (failed or incomplete):", ""]
        lines += [f"- `{j['job']}` ({j['status']}): {j.get('error') or 'no error recorded'}" for j in failed]
    rendered = {
        out / "accuracy_vs_gflops.png": _plot(groups, varying, metric, "gflops", "GFLOPs (one image, forward)", title),
        out / "accuracy_vs_params.png": _plot(groups, varying, metric, "params", "parameters", title),
    }
    figures = {path: png for path, png in rendered.items() if png is not None}
    plots = list(figures)
    if plots:
        lines += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    md_text = "\n".join(lines) + "\n"

    # Everything is produced: write it, the figures first and report.md (which shows them) last;
    # a figure this report does not have is removed, not left from an earlier one.
    for path, png in rendered.items():
        if png is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write_bytes(path, png)
    atomic_write_text(out / "report.csv", csv_text)
    atomic_write_text(out / "report.md", md_text)
    return {"metric": metric, "groups": groups, "varying": varying, "comparisons": comparisons,
            "report": out / "report.md", "csv": out / "report.csv", "plots": plots, "text": "\n".join(lines)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m dyconv.report",
        description="Summarise a multirun: mean ± std over seeds, dynamic vs static differences with 95% CIs, "
                    "accuracy vs GFLOPs / parameters plots.",
    )
    parser.add_argument("sweep_dir", help="a multirun's directory, e.g. logs/fmnist/multiruns/width_sweep")
    parser.add_argument("--metric", default=None, help=f"metric to report (default: first of {DEFAULT_METRICS})")
    parser.add_argument("--out", default=None, help="where to write report.md/.csv and the plots (default: sweep_dir)")
    parser.add_argument("--title", default=None, help="title of the report and plots")
    args = parser.parse_args(argv)
    result = build_report(args.sweep_dir, args.out, args.metric, args.title)
    print(result["text"])
    print(f"\nWritten: {result['report']}, {result['csv']}" + "".join(f", {p}" for p in result["plots"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
