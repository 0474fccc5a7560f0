"""``build_report``: the report's files, produced in memory and then written atomically."""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dyconv.reporting import figures
from dyconv.reporting.attention import AttentionCurve, attention_curves, last_logged_epoch
from dyconv.reporting.compare import compare
from dyconv.reporting.groups import (
    MAX_VALUE,
    Group,
    check_sweep_dirs,
    group_jobs,
    load_sweeps,
    metric_value,
    pick_metric,
)
from dyconv.runs.handed import csv_cell, csv_row, finite, md_text, notes_text, short
from dyconv.utils.files import atomic_write_bytes, atomic_write_text, output_folder_problem

__all__ = ["ATTENTION_CSV", "ATTENTION_PNG", "build_report"]

ATTENTION_PNG = "attention_over_training.png"
ATTENTION_CSV = "attention_over_training.csv"
#: Every file a report writes (or removes when it has none of that kind).
OUTPUT_FILES = ("report.md", "report.csv", "accuracy_vs_gflops.png", "accuracy_vs_params.png", ATTENTION_PNG,
                ATTENTION_CSV)
#: Metrics that must be finite numbers to be used (with the reported one).
_SIZE_METRICS = ("model/params", "model/gflops", "time/fit_s")


def pm(values: Sequence[float], scale: float = 1.0, digits: int = 2) -> str:
    """``mean ± std`` of ``values`` (the mean alone for one value)."""
    if not values:
        return ""
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[csv_cell(k) for k in rows[0]], lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_row(r) for r in rows)
    return buf.getvalue()


def _group_rows(groups: Sequence[Group], varying: Sequence[str], metric: str) -> list[dict[str, Any]]:
    return [{
        "group": g.label(varying), **{k: g.overrides.get(k, "") for k in varying}, "n": g.n,
        f"{metric} mean": g.mean, f"{metric} std": g.std,
        "params": statistics.fmean(g.params) if g.params else "",
        "gflops": statistics.fmean(g.gflops) if g.gflops else "",
        "fit_min mean": statistics.fmean(g.fit_s) / 60 if g.fit_s else "",
        "seeds": " ".join(g.seeds),
    } for g in groups]


def _attention_rows(curves: Sequence[AttentionCurve]) -> list[dict[str, Any]]:
    return [{
        "group": c.label, "kind": c.kind, "epoch": epoch, "n": n,
        "sample_std mean": spread[0], "sample_std std": spread[1],
        "entropy_ratio mean": ratio[0], "entropy_ratio std": ratio[1],
    } for c in curves for epoch, n, spread, ratio in zip(c.epochs, c.n, c.spread, c.entropy_ratio)]


def _sci(stat: tuple[float, float]) -> str:
    mean, std = stat
    if math.isnan(mean):
        return ""
    fmt = "{:.2e}" if abs(mean) < 0.01 else "{:.4f}"
    return fmt.format(mean) + ("" if math.isnan(std) else " ± " + fmt.format(std))


def _attention_lines(curves: Sequence[AttentionCurve]) -> list[str]:
    sources = sorted({s for c in curves for s in c.sources})
    lines = ["", "Attention over training (validation set, every epoch; mean over the dynamic layers, mean ± std "
             f"over seeds; read from {' and '.join(sources)}): the kernel attention's spread across samples "
             "(`pi_sample_std`, `gate_sample_std` for sigmoid gates; 0 = the same weights for every input) and "
             "its entropy / log K (1 = uniform; softmax and omni only).", "",
             "| group | n | spread, first epoch | spread, last epoch | entropy ratio, first | entropy ratio, last |",
             "|---|---|---|---|---|---|"]
    for c in curves:
        lines.append(f"| {md_text(c.label)} | {max(c.n)} | {_sci(c.spread[0])} (epoch {c.epochs[0]}) | "
                     f"{_sci(c.spread[-1])} (epoch {c.epochs[-1]}) | {_sci(c.entropy_ratio[0])} | "
                     f"{_sci(c.entropy_ratio[-1])} |")
    return lines


def _why(job: dict[str, Any]) -> str:
    """A failed job's error; for an incomplete one (running, or stopped before it reported) how far
    it got, where its run folder says."""
    if job.get("error"):
        return md_text(job["error"], 500)
    job_dir = job.get("dir")
    if job["status"] == "incomplete" and job_dir is not None and Path(job_dir).is_dir():
        epoch = last_logged_epoch(Path(job_dir))
        if epoch is not None:
            return f"no status yet (running, or stopped: relaunch it with ckpt_path=last); last logged epoch {epoch}"
    return "no error recorded"


def _output_problem(out: Path) -> str | None:
    """Why the report cannot be written into ``out`` (a one-line error), or None."""
    problem = output_folder_problem(out)
    if problem:
        return f"error: cannot {problem[0]} the output folder {short(out)}: {problem[1]}"
    for name in OUTPUT_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            return (f"error: {short(path)} is a folder, where the report writes its {name}; move it away or pass "
                    "--out <another folder>")
    return None


def _value_notes(jobs: Sequence[dict[str, Any]], metric: str) -> list[str]:
    """Completed jobs' metrics that are not finite numbers (NaN, infinity) or too large: left out, named."""
    notes = []
    for job in jobs:
        if job["status"] != "completed":
            continue
        for name in (metric, *_SIZE_METRICS):
            value = job["metrics"].get(name)
            if value is not None and metric_value(value) is None:
                what = "the job is left out of its group" if name == metric else "left out"
                why = "is not a finite number" if finite(value) is None else f"is beyond ±{MAX_VALUE:g}"
                notes.append(f"{job['job']}: {name} = {short(value, 40)} {why}; {what}")
    return notes


def build_report(sweep_dir: str | Path | Sequence[str | Path], out_dir: str | Path | None = None,
                 metric: str | None = None, title: str | None = None) -> dict[str, Any]:
    """Write report.md, report.csv, the plots and the attention over training of one sweep folder
    or of several (one study run as several multiruns: their jobs are merged); returns what it
    computed (groups, comparisons, attention curves, paths).

    Several folders need ``out_dir``. Every output is produced in memory before any is written,
    and each is written atomically, so a failure while producing one leaves the previous set of
    files as it was. (``sweep_dir`` keeps the name of the one-folder signature.)"""
    dirs = [Path(sweep_dir)] if isinstance(sweep_dir, (str, Path)) else [Path(d) for d in sweep_dir]
    if len(dirs) > 1 and out_dir is None:
        raise SystemExit("error: several sweep folders need --out (a folder for the merged report)")
    check_sweep_dirs(dirs)
    out = Path(out_dir) if out_dir else dirs[0]
    problem = _output_problem(out)
    if problem:
        raise SystemExit(problem)
    jobs, skipped = load_sweeps(dirs)
    metric = pick_metric(jobs, metric)
    groups, varying = group_jobs(jobs, metric)
    where = short(", ".join(str(d) for d in dirs))
    if not groups:
        raise SystemExit(f"error: no completed job in {where} reports {short(metric, 80)} as a finite number")
    comparisons = compare(groups, varying)
    curves = attention_curves(groups, varying)
    failed = [j for j in jobs if j["status"] != "completed"]
    scale = figures.percent(metric)
    unit = " (%)" if scale == 100.0 else ""
    title = title or f"{' + '.join(d.name for d in dirs)}: {metric}"

    csv_text = _csv_text(_group_rows(groups, varying, metric))
    shown_metric = md_text(metric, 80)
    lines = [f"# {md_text(title, 200)}", "",
             f"{len(jobs)} jobs in {', '.join(md_text(d, 1000) for d in dirs)}: {len(jobs) - len(failed)} completed, "
             f"{len(failed)} failed or incomplete. Groups: jobs equal in everything but the seed; mean ± sample "
             "std over n seeds.", "",
             f"| group | n | {shown_metric}{unit} | params | GFLOPs | train time (min) |", "|---|---|---|---|---|---|"]
    for g in groups:
        params = f"{statistics.fmean(g.params):,.0f}" if g.params else ""
        gflops = f"{statistics.fmean(g.gflops):.4g}" if g.gflops else ""
        minutes = pm([t / 60 for t in g.fit_s], 1.0, 1) if g.fit_s else ""
        lines.append(f"| {md_text(g.label(varying))} | {g.n} | {pm(g.values, scale)} | {params} | {gflops} | "
                     f"{minutes} |")
    if comparisons:
        lines += ["", f"Differences in {shown_metric}{unit} (treatment - baseline), 95% Welch confidence interval:", "",
                  "| comparison | difference | 95% CI | n |", "|---|---|---|---|"]
        for c in comparisons:
            ci = "n/a (n < 2)" if math.isnan(c.low) else f"[{c.low * scale:+.2f}, {c.high * scale:+.2f}]"
            lines.append(f"| {md_text(c.label)} | {c.diff * scale:+.2f} | {ci} | {c.treatment.n} vs {c.baseline.n} |")
    if curves:
        lines += _attention_lines(curves)
    if failed:
        lines += ["", "Not included (failed or incomplete):", ""]
        many = len(dirs) > 1
        lines += [f"- {md_text((Path(j['sweep']).name + '/' if many else '') + j['job'])} ({md_text(j['status'])}): "
                  f"{_why(j)}" for j in failed]
    notes = [*skipped, *(n for j in jobs for n in j.get("notes", ())), *_value_notes(jobs, metric)]
    if notes:
        lines += ["", "Not read from the sweep folder (a link out of it, a file too large, not plain JSON or YAML) "
                      "or left out:", "", *notes_text(notes)]
    rendered = {
        out / "accuracy_vs_gflops.png": figures.metric_figure(groups, varying, metric, "gflops",
                                                              "GFLOPs (one image, forward)", title),
        out / "accuracy_vs_params.png": figures.metric_figure(groups, varying, metric, "params", "parameters", title),
        out / ATTENTION_PNG: figures.attention_figure(curves, varying, title.rsplit(":", 1)[0]),
    }
    attention_csv = _csv_text(_attention_rows(curves)) if curves else None
    figure_files = {path: png for path, png in rendered.items() if png is not None}
    plots = list(figure_files)
    if plots:
        lines += ["", *[f"![{p.stem}]({p.name})" for p in plots]]
    report_md = "\n".join(lines) + "\n"

    # Everything is produced: write it, the figures first and report.md (which shows them) last;
    # a figure or table this report does not have is removed, not left from an earlier one.
    for path, png in rendered.items():
        if png is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write_bytes(path, png)
    if attention_csv is None:
        (out / ATTENTION_CSV).unlink(missing_ok=True)
    else:
        atomic_write_text(out / ATTENTION_CSV, attention_csv)
    atomic_write_text(out / "report.csv", csv_text)
    atomic_write_text(out / "report.md", report_md)
    return {"metric": metric, "groups": groups, "varying": varying, "comparisons": comparisons,
            "attention": curves, "report": out / "report.md", "csv": out / "report.csv", "plots": plots,
            "attention_csv": out / ATTENTION_CSV if curves else None, "text": "\n".join(lines)}
