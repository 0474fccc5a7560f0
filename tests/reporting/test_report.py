"""Sweep summaries and ``dyconv.report`` on a sweep directory laid out as a multirun writes it."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
from scipy import stats

import dyconv.reporting.build
import dyconv.reporting.figures
from dyconv.report import build_report, main
from dyconv.runs.sweeps import write_summary

# test/acc per (model, width) over seeds 0, 1, 2
ACC = {
    ("resnet10", "0.125"): [0.90, 0.91, 0.92],
    ("dy_resnet10", "0.125"): [0.93, 0.925, 0.94],
    ("resnet10", "0.25"): [0.95, 0.952, 0.951],
    ("dy_resnet10", "0.25"): [0.955, 0.95, 0.96],
}
PARAMS = {"resnet10": 1000.0, "dy_resnet10": 4000.0}


def _job(sweep: Path, num: int, overrides: list[str], metrics: dict | None, status: str = "completed",
         error: str = "") -> None:
    job = sweep / ",".join(sorted(overrides))
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps(metrics))
    if status != "incomplete":
        (job / "job_status.json").write_text(json.dumps({"status": status, "num": num, "overrides": overrides,
                                                         "error": error}))


@pytest.fixture
def sweep(tmp_path) -> Path:
    sweep = tmp_path / "multiruns" / "width_sweep"
    num = 0
    for (model, width), accs in ACC.items():
        for seed, acc in enumerate(accs):
            gflops = float(width) * (1.04 if model.startswith("dy_") else 1.0)
            _job(sweep, num, [f"model={model}", f"model.width_mult={width}", f"seed={seed}", "experiment=x"],
                 {"test/acc": acc, "test/loss": 1 - acc, "model/params": PARAMS[model] * float(width) * 8,
                  "model/gflops": gflops, "time/fit_s": 60.0 * (seed + 1)})
            num += 1
    _job(sweep, num, ["model=dy_resnet10", "model.width_mult=0.5", "seed=0", "experiment=x"], None, "failed",
         "ConfigError: optimizer.lr must be > 0")
    _job(sweep, num + 1, ["model=resnet10", "model.width_mult=0.5", "seed=0", "experiment=x"], None, "incomplete")
    return sweep


def test_summary_lists_every_job_with_overrides_status_and_metrics(sweep):
    csv_path, md_path = write_summary(sweep)
    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 14
    assert [r["status"] for r in rows].count("completed") == 12
    failed = next(r for r in rows if r["status"] == "failed")
    assert (failed["model"], failed["model.width_mult"]) == ("dy_resnet10", "0.5")
    assert "lr must be > 0" in failed["error"]
    assert any(r["status"] == "incomplete" for r in rows)
    first = rows[0]
    assert (first["model"], first["seed"], float(first["test/acc"])) == ("resnet10", "0", 0.90)
    assert float(first["model/params"]) == 1000.0 and float(first["model/gflops"]) == 0.125
    md = md_path.read_text()
    assert "14 jobs, 12 completed, 2 failed or incomplete" in md and "lr must be > 0" in md


def test_report_groups_over_seeds_and_compares_dynamic_with_static(sweep):
    result = build_report(sweep)
    groups = {(g.overrides["model"], g.overrides["model.width_mult"]): g for g in result["groups"]}
    assert set(groups) == set(ACC)  # failed/incomplete jobs left out
    for key, accs in ACC.items():
        g = groups[key]
        assert g.n == 3 and g.mean == pytest.approx(statistics.fmean(accs))
        assert g.std == pytest.approx(statistics.stdev(accs))
    assert result["varying"] == ["model", "model.width_mult"]  # experiment=x is constant: not a group label
    comparisons = {c.label: c for c in result["comparisons"]}
    assert set(comparisons) == {"dy_resnet10 - resnet10 (model.width_mult=0.125)",
                                "dy_resnet10 - resnet10 (model.width_mult=0.25)"}
    for width in ("0.125", "0.25"):
        c = comparisons[f"dy_resnet10 - resnet10 (model.width_mult={width})"]
        dy, st = ACC[("dy_resnet10", width)], ACC[("resnet10", width)]
        ci = stats.ttest_ind(dy, st, equal_var=False).confidence_interval(0.95)  # independent reference
        assert c.diff == pytest.approx(statistics.fmean(dy) - statistics.fmean(st))
        assert (c.low, c.high) == pytest.approx((ci.low, ci.high))
    text = result["report"].read_text()
    assert "| model=dy_resnet10 model.width_mult=0.125 | 3 | 93.17 ± 0.76 | 4,000 |" in text
    assert "+2.17" in text and "failed or incomplete" in text
    for png in ("accuracy_vs_gflops.png", "accuracy_vs_params.png"):
        assert (sweep / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with open(sweep / "report.csv", newline="") as f:
        assert len(list(csv.DictReader(f))) == 4


def test_report_of_an_ablation_compares_each_value_with_the_first(tmp_path, capsys):
    sweep = tmp_path / "temperature"
    arms = {"30.0": [0.91, 0.915, 0.92], "1.0": [0.90, 0.905, 0.897]}
    num = 0
    for start, accs in arms.items():
        for seed, acc in enumerate(accs):
            _job(sweep, num, ["model=dy_resnet10", f"callbacks.temperature.start={start}", f"seed={seed}"],
                 {"test/acc": acc})
            num += 1
    assert main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "callbacks.temperature.start=1.0 - callbacks.temperature.start=30.0" in out
    diff = statistics.fmean(arms["1.0"]) - statistics.fmean(arms["30.0"])
    assert f"{diff * 100:+.2f}" in out and (tmp_path / "out" / "report.md").is_file()


def test_report_refuses_a_directory_without_jobs(tmp_path):
    with pytest.raises(SystemExit, match="holds no sweep jobs"):
        build_report(tmp_path)


def test_report_shows_overrides_verbatim_and_resolves_nothing(tmp_path, monkeypatch):
    """A handed sweep folder's ``.hydra/overrides.yaml`` is data: an interpolation in it is shown as
    written, never resolved (``${oc.env:...}`` would put an environment variable into the report)."""
    monkeypatch.setenv("DYCONV_TEST_SECRET", "hunter2-do-not-leak")
    sweep = tmp_path / "handed"
    leak = "+leak=${oc.env:DYCONV_TEST_SECRET}"
    for num, (overrides, acc) in enumerate([(["model=resnet10", leak], 0.9), (["model=resnet10", "+leak=x"], 0.8)]):
        job = sweep / f"job{num}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text("".join(f'- "{o}"\n' for o in overrides))
        (job / "metrics.json").write_text(json.dumps({"test/acc": acc}))
        (job / "job_status.json").write_text(json.dumps({"status": "completed", "num": num}))  # no overrides
    result = build_report(sweep)
    csv_path, md_path = write_summary(sweep)
    for path in (result["report"], result["csv"], csv_path, md_path):
        text = path.read_text()
        assert "hunter2" not in text, path.name
    assert "leak=${oc.env:DYCONV_TEST_SECRET}" in result["report"].read_text()
    assert "${oc.env:DYCONV_TEST_SECRET}" in result["csv"].read_text()
    with open(csv_path, newline="") as f:
        assert next(csv.DictReader(f))["overrides"] == f"model=resnet10 {leak}"


def test_report_groups_a_requeued_job_with_its_seeds_by_the_folder_name_keys(tmp_path):
    """A relaunch with ckpt_path=last (a requeue) and keys Hydra leaves out of the job folder's
    name (the job's exclude_keys, else the project's default list) define no group."""
    sweep = tmp_path / "sweep"
    base = ["model=resnet10", "model.width_mult=0.25"]
    _job(sweep, 0, [*base, "seed=0"], {"test/acc": 0.90})
    _job(sweep, 1, [*base, "seed=1", "ckpt_path=last"], {"test/acc": 0.92})  # no hydra.yaml: default list
    _job(sweep, 2, [*base, "seed=2", "my.note=b"], {"test/acc": 0.94})
    (sweep / ",".join(sorted([*base, "seed=2", "my.note=b"])) / ".hydra" / "hydra.yaml").write_text(
        "hydra:\n  mode: MULTIRUN\n  run:\n    dir: ${paths.log_dir}\n"
        "  job:\n    config:\n      override_dirname:\n        exclude_keys: [my.note, ckpt_path]\n")
    result = build_report(sweep)
    (group,) = result["groups"]
    assert (group.n, group.seeds, result["varying"]) == (3, ["0", "1", "2"], [])
    assert "ckpt_path" not in group.overrides and "my.note" not in group.overrides


def test_report_refuses_an_out_folder_under_a_file_in_one_line(sweep, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(SystemExit) as exc:
        main([str(sweep), "--out", str(blocker / "reports")])
    message = str(exc.value.code)
    assert message.startswith("error: cannot create the output folder") and "is a file" in message
    assert "\n" not in message and not (sweep / "report.md").exists()


def test_report_of_a_single_run_directory_says_so(tmp_path):
    """A run directory: metrics.json and .hydra at the top, export/ with its own .hydra (a RUN)."""
    run = tmp_path / "runs" / "r1"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text("- model=resnet10\n")
    (run / "metrics.json").write_text(json.dumps({"test/acc": 0.9}))
    export = run / "export"
    (export / ".hydra").mkdir(parents=True)
    (export / ".hydra" / "overrides.yaml").write_text("- ckpt_path=x\n")
    (export / ".hydra" / "hydra.yaml").write_text("hydra:\n  mode: RUN\n")
    (export / "job_status.json").write_text(json.dumps({"status": "completed", "overrides": ["ckpt_path=x"]}))
    with pytest.raises(SystemExit) as exc:
        build_report(run)
    assert "is a single run, not a sweep folder (it has metrics.json)" in str(exc.value.code)


@pytest.mark.parametrize("module, step", [(dyconv.reporting.figures, "metric_figure"),  # the figures
                                          (dyconv.reporting.build, "pm")])  # the markdown table
def test_report_that_fails_while_producing_its_outputs_leaves_the_previous_ones_as_they_were(
        sweep, monkeypatch, module, step):
    """A failure after report.csv's content is known leaves report.csv, report.md and the figures
    byte-identical to the previous report (no new csv beside an old md) and no temp files."""
    build_report(sweep)
    names = ["report.csv", "report.md", "accuracy_vs_gflops.png", "accuracy_vs_params.png"]
    before = {name: (sweep / name).read_bytes() for name in names}
    _job(sweep, 99, ["model=resnet10", "model.width_mult=0.25", "seed=3", "experiment=x"],
         {"test/acc": 0.5, "model/params": 2000.0, "model/gflops": 0.25})  # a new report would differ

    def fail(*args, **kwargs):
        raise RuntimeError(f"{step} failed")

    monkeypatch.setattr(module, step, fail)
    with pytest.raises(RuntimeError, match=f"{step} failed"):
        build_report(sweep)
    assert {name: (sweep / name).read_bytes() for name in names} == before
    assert not list(sweep.glob(".*.tmp"))
    monkeypatch.undo()
    build_report(sweep)  # the new job does change the report
    assert (sweep / "report.csv").read_bytes() != before["report.csv"]
