"""Job records of a multirun (``job_status.json``, written by :class:`dyconv.runs.hydra_callbacks.SweepSummary`):
a relaunch the run directory refuses changes no job's status or results."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from hydra.core.utils import JobStatus
from omegaconf import OmegaConf

from dyconv.errors import ConfigError, RunDirectoryError
from dyconv.report import build_report
from dyconv.runs.hydra_callbacks import SweepSummary
from dyconv.runs.layout import STATUS_FILE
from dyconv.runs.sweeps import collect_jobs, write_summary

QUIET = ["callbacks.progress_bar=null"]
OVERRIDES = ["model=simple_cnn", "seed=1"]


def _job_end(job_dir: Path, error: BaseException | None, *, started: bool | None = None) -> dict:
    """What the callback records when a job in ``job_dir`` ends with ``error`` (None: completed).
    ``started``: a training job (``dyconv.train``) that recorded a launch in ``.hydra/launches/``
    (True) or stopped before it touched the run (False); None: the callback never saw it start."""
    callback = SweepSummary()
    if started is not None:
        job_cfg = OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job_dir)}, "job": {"name": "train"}}})
        callback.on_job_start(job_cfg)
        if started:
            launches = job_dir / ".hydra" / "launches"
            (launches / f"launch{len(list(launches.glob('*'))) if launches.is_dir() else 0}").mkdir(parents=True)
    job_return = SimpleNamespace(
        status=JobStatus.COMPLETED if error is None else JobStatus.FAILED,
        _return_value=error if error is not None else {"test/acc": 0.5},
        overrides=OVERRIDES,
        hydra_cfg=OmegaConf.create({"hydra": {"runtime": {"output_dir": str(job_dir)}, "job": {"num": 3}}}),
    )
    callback.on_job_end(None, job_return)  # outside a multirun: the job record only
    return json.loads((job_dir / STATUS_FILE).read_text())


@pytest.fixture
def job_dir(tmp_path) -> Path:
    job = tmp_path / "sweep" / ",".join(OVERRIDES)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in OVERRIDES))
    return job


LOCKED = RunDirectoryError("run directory x is in use by another launch (PID 1 on h, since t)")


def test_a_relaunch_the_run_directory_refuses_keeps_the_completed_record(job_dir):
    (job_dir / "metrics.json").write_text(json.dumps({"test/acc": 0.5}))
    first = _job_end(job_dir, None)
    assert first["status"] == "completed"
    record = _job_end(job_dir, LOCKED)
    assert {k: record[k] for k in first} == first  # status, error, finish time: the first launch's
    assert record["refused_relaunch"]["error"].startswith("RunDirectoryError: run directory x is in use")
    (job,) = collect_jobs(job_dir.parent)
    assert (job["status"], job["error"], job["metrics"]) == ("completed", "", {"test/acc": 0.5})
    assert "in use by another launch" in job["refused"]
    md = write_summary(job_dir.parent)[1].read_text()
    assert "1 jobs, 1 completed, 0 failed" in md and "Relaunches that did not start" in md


def test_a_refused_relaunch_of_a_finished_run_without_a_record_is_completed(job_dir):
    """A job killed after it finished (completed.json) but before its record was written."""
    (job_dir / "completed.json").write_text(json.dumps({"finished": "2024-01-02T03:04:05"}))
    record = _job_end(job_dir, RunDirectoryError("already holds checkpoints"))
    assert (record["status"], record["error"], record["finished"]) == ("completed", "", "2024-01-02T03:04:05")


def test_other_failures_and_refusals_without_a_result_are_recorded_as_failed(job_dir):
    assert _job_end(job_dir, RunDirectoryError("already holds checkpoints"))["status"] == "failed"  # e.g. killed
    _job_end(job_dir, None)
    record = _job_end(job_dir, ConfigError("optimizer.lr must be > 0"))  # not a refusal: this launch failed
    assert (record["status"], record["error"]) == ("failed", "ConfigError: optimizer.lr must be > 0")
    assert "refused_relaunch" not in record


def test_a_relaunch_stopped_by_its_checks_keeps_the_completed_record(job_dir):
    """A training launch that stopped before it touched the run (its checks, the lock: it recorded
    no launch in ``.hydra/launches/``): relaunching a finished sweep with, say, a dataset that
    moved keeps the job completed; a launch that did start and then failed is recorded as failed."""
    first = _job_end(job_dir, None, started=True)
    stopped = ConfigError("data.root=/gone: no such folder")
    record = _job_end(job_dir, stopped, started=False)
    assert {k: record[k] for k in first} == first
    assert record["refused_relaunch"]["error"] == "ConfigError: data.root=/gone: no such folder"
    record = _job_end(job_dir, ConfigError("diverged"), started=True)
    assert (record["status"], record["error"]) == ("failed", "ConfigError: diverged")
    assert "refused_relaunch" not in record


@pytest.mark.slow
def test_relaunching_a_finished_multirun_keeps_its_completed_jobs(cli, tmp_path):
    """The same sweep twice: the second launch is refused (the job folder holds checkpoints), the
    job stays completed with its metrics, and the summary and report still show it."""
    args = ["train", "-m", *QUIET, "data.splits=[64,32,32]", "trainer.max_epochs=1", "model=simple_cnn",
            "sweep_name=sweep"]  # a relaunch names its sweep (the default is one folder per launch)
    cli(*args)
    sweep = tmp_path / "logs" / "train" / "multiruns" / "sweep"
    (job,) = [p for p in sweep.iterdir() if p.is_dir()]
    metrics = (job / "metrics.json").read_text()
    first_multirun = (sweep / "multirun.yaml").read_text()
    again = cli(*args, check=False)
    assert [p.read_text() for p in (sweep / "multirun_history").iterdir()] == [first_multirun]
    assert again.returncode != 0 and "already holds checkpoints" in again.stdout + again.stderr
    status = json.loads((job / STATUS_FILE).read_text())
    assert status["status"] == "completed" and "already holds checkpoints" in status["refused_relaunch"]["error"]
    assert (job / "metrics.json").read_text() == metrics
    with open(sweep / "summary.csv", newline="") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["completed"]
    md = (sweep / "summary.md").read_text()
    assert "1 jobs, 1 completed, 0 failed or incomplete" in md and "already holds checkpoints" in md
    report = build_report(sweep)  # python -m dyconv.report, in-process
    assert [g.n for g in report["groups"]] == [1] and "1 completed, 0 failed" in report["text"]


def test_a_relaunch_keeps_the_previous_multirun_yaml(tmp_path):
    """Hydra replaces a sweep folder's multirun.yaml at every launch into it (a relaunch, or
    another sweep with the same sweep_name): the previous ones are kept, none overwritten."""
    from omegaconf import OmegaConf

    from dyconv.runs.hydra_callbacks import SweepSummary
    from dyconv.runs.sweeps import HISTORY_DIR

    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    SweepSummary().on_multirun_start(config)  # a first sweep: nothing to keep
    assert not (tmp_path / HISTORY_DIR).exists()
    for text in ("first sweep\n", "second sweep\n"):
        (tmp_path / "multirun.yaml").write_text(text)
        SweepSummary().on_multirun_start(config)
    kept = sorted(p.read_text() for p in (tmp_path / HISTORY_DIR).iterdir())
    assert kept == ["first sweep\n", "second sweep\n"]


def test_train_stopped_by_its_checks_records_no_launch(tmp_path):
    """What the sweep summary relies on: dyconv.train's own checks failing (here a bad
    max_epochs) leave the run's recorded launches (``.hydra/launches/``) as they were."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import dyconv.train

    run = tmp_path / "run"
    (run / ".hydra" / "launches" / "first").mkdir(parents=True)
    (run / "metrics.json").write_text("{}")
    with initialize_config_dir(dyconv.train.CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["trainer.max_epochs=0", "~logger", f"paths.log_dir={tmp_path}"],
                      return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run)
    HydraConfig.instance().set_config(cfg)
    try:
        with pytest.raises(ConfigError, match="max_epochs"):
            dyconv.train.train(cfg)
    finally:
        HydraConfig.instance().cfg = None
    assert [p.name for p in (run / ".hydra" / "launches").iterdir()] == ["first"]


def test_a_failed_instantiation_records_the_cause_not_hydras_wrapper(job_dir):
    from hydra.errors import InstantiationException

    try:
        try:
            raise ValueError("unknown model 'resnet9'\nRegistered models: ...")
        except ValueError as cause:
            raise InstantiationException(
                "Error in call to target 'dyconv.models.create_model':\nValueError(...)\nfull_key: model"
            ) from cause
    except InstantiationException as e:
        record = _job_end(job_dir, e)
    assert record["error"] == "ValueError: unknown model 'resnet9' (raised as InstantiationException in model)"


def test_collect_jobs_skips_other_commands_folders_but_keeps_running_jobs(tmp_path):
    """export/ (a RUN-mode Hydra folder, even with a job_status.json) is no job; a sweep job that
    has only started (MULTIRUN, its log and nothing else) is, as incomplete."""
    def folder(name: str, mode: str) -> Path:
        d = tmp_path / name
        (d / ".hydra").mkdir(parents=True)
        (d / ".hydra" / "overrides.yaml").write_text("- seed=1\n")
        (d / ".hydra" / "hydra.yaml").write_text(f"hydra:\n  mode: {mode}\n  run:\n    dir: ${{x}}\n")
        return d

    (folder("export", "RUN") / STATUS_FILE).write_text(json.dumps({"status": "completed"}))
    (folder("seed=1", "MULTIRUN") / "train.log").write_text("")
    (folder("single", "RUN") / "metrics.json").write_text(json.dumps({"test/acc": 0.5}))  # trained: kept
    assert [(j["job"], j["status"]) for j in collect_jobs(tmp_path)] == [("seed=1", "incomplete"),
                                                                         ("single", "incomplete")]


@pytest.mark.parametrize("tool", ["train", "eval", "inspect", "export"])
def test_each_unnamed_sweep_gets_its_own_folder_and_a_named_one_keeps_it(tool, tmp_path):
    """Two ad-hoc sweeps of one task never share a folder (nor a summary); sweep_name=<name>
    names the same folder every time (a relaunch)."""
    import time

    from hydra import compose, initialize_config_dir

    from dyconv.config import CONF_DIR

    def sweep_dir(*overrides: str) -> str:
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            cfg = compose(tool, overrides=[f"paths.log_dir={tmp_path}", "ckpt_path=x.ckpt", *overrides],
                          return_hydra_config=True) if tool != "train" else compose(
                tool, overrides=[f"paths.log_dir={tmp_path}", *overrides], return_hydra_config=True)
        return str(OmegaConf.select(cfg, "hydra.sweep.dir"))

    first = sweep_dir()
    time.sleep(0.01)
    second = sweep_dir()
    assert first != second and Path(first).parent == Path(second).parent == tmp_path / tool / "multiruns"
    assert sweep_dir("sweep_name=mine") == sweep_dir("sweep_name=mine") == str(tmp_path / tool / "multiruns" / "mine")
