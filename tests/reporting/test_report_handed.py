"""``dyconv.report`` and the sweep summary on a sweep folder someone handed you: each test crafts
the folder an attacker (or a damaged disk) would, runs the report and the summary on it, and
checks what comes out: spreadsheet-safe CSV, Markdown that shows text as written, no traceback,
no alias bomb, nothing read through a link out of the folder, nothing unbounded read."""

from __future__ import annotations

import csv
import json
import os
import re
import time
from pathlib import Path

import pytest

from dyconv.report import build_report, main
from dyconv.runs.sweeps import SUMMARY_CSV, write_summary

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _job(sweep: Path, name: str, num: int, overrides: list[str], metrics: dict | str | None,
         status: str = "completed", error: str = "") -> Path:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {json.dumps(o)}\n" for o in overrides))
    if metrics is not None:
        (job / "metrics.json").write_text(metrics if isinstance(metrics, str) else json.dumps(metrics))
    (job / "job_status.json").write_text(json.dumps({"status": status, "num": num, "error": error}))
    return job


def _plain_sweep(sweep: Path, n: int = 2) -> Path:
    for i in range(n):
        _job(sweep, f"job{i}", i, ["model=resnet10", f"seed={i}"],
             {"test/acc": 0.9 + i / 100, "model/params": 1000.0, "model/gflops": 0.5})
    return sweep


def _cells(path: Path) -> list[str]:
    with open(path, newline="") as f:
        return [cell for row in csv.reader(f) for cell in row]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _unsafe_cells(path: Path) -> list[str]:
    """Cells a spreadsheet would run as a formula (the OWASP rule, checked independently)."""
    return [c for c in _cells(path) if c.startswith(FORMULA_START) and not _is_number(c)]


FORMULAS = ["=1+1", "@SUM(1+1)*cmd|' /C calc'!A0", "+HYPERLINK(\"http://evil.example\",\"x\")", "-2+3", "\t=1"]


def test_csv_cells_that_a_spreadsheet_would_run_are_escaped(tmp_path):
    sweep = tmp_path / "sweep"
    for i, formula in enumerate(FORMULAS):
        _job(sweep, f"job{i}", i, ["model=resnet10", f"+x={formula}", "optimizer.lr=-0.5"],
             {"test/acc": 0.9, "model/params": -1.0})
    _job(sweep, "failed", 9, ["model=resnet10", "+x=ok", "+@cmd|calc=1"], None, "failed", FORMULAS[2])
    result = build_report(sweep)
    summary_csv, _ = write_summary(sweep)
    for path in (result["csv"], summary_csv):
        assert _unsafe_cells(path) == [], path.name
        cells = _cells(path)
        assert "-0.5" in cells or "-1.0" in cells  # numbers stay numbers
        assert "'=1+1" in cells and "'@SUM(1+1)*cmd|' /C calc'!A0" in cells
    assert "'+HYPERLINK(\"http://evil.example\",\"x\")" in _cells(summary_csv)  # the error text
    assert "'@cmd|calc" in summary_csv.read_text().splitlines()[0].split(",")  # a column named by an override key

    # A sweep handed as its summary.csv alone reads the escaped cells back as they were written.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / SUMMARY_CSV).write_bytes(summary_csv.read_bytes())
    groups = {g.overrides["x"] for g in build_report(alone, tmp_path / "out")["groups"]}
    assert {f for f in FORMULAS if not any(c.isspace() for c in f)} <= groups  # (overrides are space-separated)


def _table_cells(line: str) -> int:
    """The cells of a Markdown table row: its pipes that no backslash escapes, less one."""
    return len(re.findall(r"(?<!\\)\|", line)) - 1


def test_report_md_shows_handed_text_as_written_never_as_markdown_or_html(tmp_path):
    sweep = tmp_path / "sweep"
    evil = "<img src=http://evil.example/x.png> a|b `code` [link](http://evil.example) ![i](http://e.example/i.png)"
    error = "boom\n# Not a heading\n| not | a | row |\n<script>alert(1)</script>\r\n- not an item \u202egpj.exe"
    _job(sweep, "job0", 0, ["model=resnet10", f"+note={evil}"], {"test/acc": 0.9})
    _job(sweep, "job1", 1, ["model=resnet10", "+note=plain"], {"test/acc": 0.8})
    _job(sweep, "# job`2|<b>", 2, ["model=resnet10", "+note=x"], None, "failed", error)
    for md in (build_report(sweep)["report"], write_summary(sweep)[1]):
        text = md.read_text()
        lines = text.splitlines()
        assert [line for line in lines if line.startswith("#")] == [lines[0]], md.name  # the title only
        assert "<img" not in text and "<script" not in text and "<b>" not in text, md.name
        assert "](http" not in text.replace("\\](http", ""), md.name  # no link, no image
        assert "Not a heading" in text and "alert(1)" in text  # shown, on one line
        assert "\u202e" not in text  # no right-to-left override reordering what follows
        for previous, line in zip(["", *lines], lines):
            if line.startswith("|") and previous.startswith("|"):  # every row of a table has its header's cells
                assert _table_cells(line) == _table_cells(previous), (md.name, line)
        assert not any(line.startswith(("- not an item", "<")) for line in lines)
        assert re.search(r"(?<!\\)`", text.replace("`test/acc`", "")) is None  # no code span opened by data


def _write_bytes_job(sweep: Path) -> Path:
    job = sweep / os.fsdecode(b"job\xff\xfe")
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_bytes(b"- model=resnet10\n- +tag=caf\xe9\xff\n")
    (job / "metrics.json").write_bytes(b'{"test/acc": 0.5, "note\xff": 1}')
    (job / "job_status.json").write_bytes(b'{"status": "completed", "num": 5, "error": "bad \xff"}')
    return job


def test_no_traceback_on_bad_bytes_huge_fields_nan_and_huge_integers(tmp_path, capsys):
    sweep = _plain_sweep(tmp_path / "sweep")
    _write_bytes_job(sweep)
    big = "A" * (128 * 1024)
    _job(sweep, "big", 6, ["model=resnet10", f"+big={big}"], {"test/acc": 0.7}, "failed", big)
    _job(sweep, "nan", 7, ["model=resnet10", "seed=7"], '{"test/acc": NaN, "model/params": Infinity}')
    _job(sweep, "huge", 8, ["model=resnet10", "seed=8"], '{"test/acc": 0.93, "model/params": 1' + "0" * 400 + "}")
    for seed in (9, 10):  # finite, but the sum of their squares overflows a float
        _job(sweep, f"vast{seed}", seed, ["model=resnet10", "+vast=1", f"seed={seed}"], '{"test/acc": 1e308}')
    assert main([str(sweep)]) == 0
    text = (sweep / "report.md").read_text()
    assert "| tag=caf\\xe9\\xff | 1 | 50.00 |" in text  # the bad bytes, named
    assert "nan: test/acc = nan is not a finite number" in text
    assert "nan: model/params = inf is not a finite number" in text
    assert "vast9: test/acc = 1e+308 is beyond ±1e+50; the job is left out of its group" in text
    assert re.search(r"huge/metrics.json: model/params = 10{39}… \(401 characters\) is too large", text)
    assert max(len(line) for line in text.splitlines()) < 2000  # the 128 KB field is cut, with its length
    assert "131,072 characters" in text
    (group,) = [g for g in build_report(sweep)["groups"] if "tag" not in g.overrides and "big" not in g.overrides]
    assert group.seeds == ["0", "1", "8"] and group.params == [1000.0, 1000.0]  # NaN job left out, 10**400 too
    summary_csv, summary_md = write_summary(sweep)
    assert "too large" in summary_md.read_text() and "| job\\xff\\xfe | completed |" in summary_md.read_text()
    assert "caf\\xe9\\xff" in summary_csv.read_text() and "bad \\xff" in summary_csv.read_text()

    # A summary.csv alone with a field over csv's default 128 KB limit and bytes that are not UTF-8.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / SUMMARY_CSV).write_bytes(b"job,status,overrides,test/acc,error\n"
                                      b"a,completed,model=x seed=0,0.9,\n"
                                      b"b,completed,model=y\xff seed=0,0.8,\n"
                                      b"c,failed,model=z seed=0,," + b"E" * 200_000 + b"\n")
    result = build_report(alone)
    assert {g.overrides["model"] for g in result["groups"]} == {"x", "y\\xff"}


def test_a_dollar_in_an_override_is_drawn_as_text(tmp_path):
    sweep = tmp_path / "sweep"
    for i, tag in enumerate(["$\\frac{a}{$", "$x^$", "plain"]):
        _job(sweep, f"job{i}", i, ["model=resnet10", f"+tag={tag}", "model.width_mult=$0.5$"],
             {"test/acc": 0.9 - i / 100, "model/params": 1000.0 * (i + 1), "model/gflops": 0.1 * (i + 1)})
    result = build_report(sweep)
    assert len(result["plots"]) == 2


@pytest.mark.parametrize("name", ["report.csv", "report.md", "accuracy_vs_params.png", "attention_over_training.csv"])
def test_an_output_name_taken_by_a_folder_is_refused_in_one_line_before_any_work(tmp_path, name, monkeypatch):
    sweep = _plain_sweep(tmp_path / "sweep")
    (sweep / name).mkdir()
    import dyconv.reporting.figures

    def never(*args, **kwargs):
        raise AssertionError("a figure was drawn before the output folder was checked")

    monkeypatch.setattr(dyconv.reporting.figures, "metric_figure", never)
    with pytest.raises(SystemExit) as exc:
        main([str(sweep)])
    message = str(exc.value.code)
    assert message.startswith(f"error: {sweep / name} is a folder") and "--out" in message and "\n" not in message
    assert sorted(p.name for p in sweep.iterdir()) == sorted(["job0", "job1", name])


BOMB_LINES = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
              *(f"{b}: &{b} [{','.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi"))]


@pytest.mark.parametrize("target", ["hydra.yaml", "overrides.yaml", "config.yaml"])
def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path, target):
    """The billion laughs: 9 levels of 9 aliases, under 600 bytes, 9**9 strings once expanded."""
    sweep = _plain_sweep(tmp_path / "sweep")
    job = _job(sweep, "bomb", 3, ["model=resnet10", "seed=3"], {"test/acc": 0.5})
    if target == "hydra.yaml":
        bomb = "\n".join([*BOMB_LINES, "hydra: {mode: *i, job: {config: {override_dirname: {exclude_keys: *i}}}}"])
    elif target == "overrides.yaml":
        (job / "job_status.json").write_text(json.dumps({"status": "completed", "num": 3}))  # overrides from YAML
        bomb = "\n".join(["- " + line.split(": ", 1)[1] for line in BOMB_LINES] + ["- *i"])
    else:
        bomb = "\n".join([*BOMB_LINES, "model: *i"])
    assert len(bomb.encode()) < 700
    (job / ".hydra" / target).write_text(bomb + "\n")
    start = time.perf_counter()
    result = build_report(sweep)
    summary_md = write_summary(sweep)[1].read_text()
    assert time.perf_counter() - start < 20
    if target != "config.yaml":  # config.yaml is never read
        for text in (result["report"].read_text(), summary_md):
            assert f"bomb/.hydra/{target} is not plain YAML (uses a YAML alias (\\*" in text


def test_links_out_of_the_sweep_folder_are_not_followed(tmp_path):
    outside = tmp_path / "outside"
    _job(outside, "secret_job", 0, ["model=resnet10", "+secret=OUTSIDE-CONTENT"], {"test/acc": 0.1})
    (outside / "metrics.json").write_text(json.dumps({"test/acc": 0.123456, "model/params": 31337.0}))
    (outside / SUMMARY_CSV).write_text("job,status,overrides,test/acc\nx,completed,+secret=OUTSIDE-CONTENT,0.1\n")

    sweep = _plain_sweep(tmp_path / "sweep")
    (sweep / "linked_job").symlink_to(outside / "secret_job")
    linked = _job(sweep, "job_with_linked_metrics", 2, ["model=resnet10", "seed=2"], None)
    (linked / "metrics.json").symlink_to(outside / "metrics.json")
    (sweep / "fifo_job").mkdir()
    _job(sweep, "fifo_job/inner", 3, ["model=resnet10"], None)  # not a job of the sweep (one level deeper)
    fifo = _job(sweep, "job_with_a_pipe", 4, ["model=resnet10", "seed=4"], None)
    os.mkfifo(fifo / "metrics.json")  # reading it would wait forever
    big = _job(sweep, "job_with_big_metrics", 5, ["model=resnet10", "seed=5"], None)
    with open(big / "metrics.json", "wb") as f:
        f.truncate(50 * 1000 * 1000)  # sparse: 50 MB that use no disk

    result = build_report(sweep)
    summary_csv, summary_md = write_summary(sweep)
    for path in (result["report"], result["csv"], summary_csv, summary_md):
        text = path.read_text()
        assert "OUTSIDE-CONTENT" not in text and "31337" not in text and "12.35" not in text, path.name
    for text in (result["report"].read_text(), summary_md.read_text()):
        assert "linked_job is a link; not followed" in text
        assert "job_with_linked_metrics/metrics.json is a link out of" in text
        assert "job_with_a_pipe/metrics.json is not a regular file" in text
        assert "job_with_big_metrics/metrics.json is 50.0 MB, more than the 1.0 MB read" in text

    # A folder whose summary.csv is a link out of it, or too large to read: one line, nothing read.
    alone = tmp_path / "alone"
    alone.mkdir()
    (alone / SUMMARY_CSV).symlink_to(outside / SUMMARY_CSV)
    with pytest.raises(SystemExit, match=r"^error: .*summary.csv is a link out of the sweep folder; not followed"):
        build_report(alone, tmp_path / "out")
    (alone / SUMMARY_CSV).unlink()
    with open(alone / SUMMARY_CSV, "wb") as f:
        f.write(b"job,status,overrides,test/acc\n")
        f.truncate(62 * 1000 * 1000)
    with pytest.raises(SystemExit, match=r"summary.csv is 62.0 MB, more than the 16.0 MB a report reads"):
        build_report(alone, tmp_path / "out")


@pytest.mark.parametrize("value, cell", [
    ("=1+1", "'=1+1"), ("+1", "+1"), ("-0.5", "-0.5"), ("-1e-05", "-1e-05"), ("-inf", "'-inf"), ("@x", "'@x"),
    ("\t1", "'\t1"), ("\r=1", "'\r=1"), ("'quoted", "''quoted"), ("plain", "plain"), ("", ""), (0.5, 0.5),
])
def test_csv_cell_escapes_formulas_keeps_numbers_and_reads_back(value, cell):
    from dyconv.runs.handed import csv_cell, csv_uncell

    assert csv_cell(value) == cell
    if isinstance(value, str):
        assert csv_uncell(csv_cell(value)) == value


def test_a_link_inside_the_folder_is_read_and_a_link_out_is_not(tmp_path):
    from dyconv.runs.handed import HandedFileError, read_handed

    root = tmp_path / "root"
    root.mkdir()
    (root / "a.json").write_text("{}")
    (root / "b.json").symlink_to(root / "a.json")
    (tmp_path / "out.json").write_text("secret")
    (root / "c.json").symlink_to(tmp_path / "out.json")
    assert read_handed(root / "b.json", root) == "{}" and read_handed(root / "missing", root) is None
    with pytest.raises(HandedFileError, match=r"c\.json is a link out of"):
        read_handed(root / "c.json", root)
