"""Ecosystem features: plain Trainer overrides, Optuna sweeps, W&B / MLflow resume, --help,
packaging metadata and the quiet console."""

from __future__ import annotations

import inspect
import json
import logging
import re
import warnings
from pathlib import Path

import lightning as L
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

import dyconv
from dyconv.errors import ConfigError
from dyconv.train import CONF_DIR, objective

ROOT = Path(__file__).parents[2]
CONF = Path(CONF_DIR)


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


# ---------------------------------------------------------------- Trainer arguments


# dyconv's deliberate departures from Lightning's defaults (each commented in trainer/default.yaml).
DYCONV_TRAINER_DEFAULTS = {
    "devices", "precision", "min_epochs", "max_epochs", "num_sanity_val_steps", "log_every_n_steps",
    "deterministic", "use_distributed_sampler", "enable_model_summary", "default_root_dir",
}


def test_trainer_config_keys_are_trainer_arguments_with_lightnings_defaults():
    params = inspect.signature(L.Trainer.__init__).parameters
    declared = OmegaConf.load(CONF / "trainer" / "default.yaml")
    keys = [k for k in declared if k != "_target_"]
    assert not set(keys) - set(params), "keys the Trainer does not take"
    for key in ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                "val_check_interval", "profiler", "detect_anomaly", "benchmark", "fast_dev_run", "max_steps",
                "max_time", "overfit_batches", "barebones", "enable_checkpointing", "enable_progress_bar",
                "inference_mode", "reload_dataloaders_every_n_epochs", "gradient_clip_algorithm", "strategy"):
        assert key in keys, key
    for key in set(keys) - DYCONV_TRAINER_DEFAULTS:
        assert declared[key] == params[key].default, f"trainer.{key}: {declared[key]} != {params[key].default}"


def test_plain_trainer_overrides_reach_the_trainer(tmp_path):
    cfg = _compose("trainer.limit_train_batches=3", "trainer.limit_val_batches=0.5", "trainer.val_check_interval=2",
                   "trainer.profiler=simple", "trainer.detect_anomaly=true", "trainer.max_steps=7",
                   f"trainer.default_root_dir={tmp_path}", "trainer.accelerator=cpu")
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert trainer.limit_train_batches == 3
    assert trainer.limit_val_batches == 0.5
    assert trainer.val_check_interval == 2
    assert type(trainer.profiler).__name__ == "SimpleProfiler"
    assert trainer._detect_anomaly is True
    assert trainer.max_steps == 7


@pytest.mark.parametrize("preset", ["default", "fast_dev_run", "limit", "overfit"])
def test_debug_presets_build_a_trainer(preset, tmp_path):
    cfg = _compose(f"debug={preset}", f"trainer.default_root_dir={tmp_path}")
    expected = OmegaConf.load(CONF / "debug" / f"{preset}.yaml").get("trainer", {})
    trainer = instantiate(cfg.trainer, logger=False, enable_progress_bar=False)
    assert trainer._detect_anomaly is True  # from debug/default
    for key in ("limit_train_batches", "overfit_batches", "fast_dev_run"):
        if key in expected:
            assert cfg.trainer[key] == expected[key]


# ---------------------------------------------------------------- Optuna


def test_objective_is_the_optimized_metric_only_when_asked():
    metrics = {"val/acc": 0.75, "val/loss": 0.5}
    assert objective(OmegaConf.create({}), metrics) is metrics
    value = objective(OmegaConf.create({"optimized_metric": "val/loss"}), metrics)
    assert value == 0.5 and type(value) is float
    with pytest.raises(ConfigError, match=r"val/iou.*val/acc"):
        objective(OmegaConf.create({"optimized_metric": "val/iou"}), metrics)


def _search_space() -> dict[str, tuple]:
    """The declared search space, parsed from the config file (the independent reference)."""
    params = OmegaConf.load(CONF / "hparams_search" / "mnist_offline_optuna.yaml").hydra.sweeper.params
    space = {}
    for key, spec in params.items():
        if m := re.search(r"interval\(([^,]+),\s*([^)]+)\)", spec):
            space[key] = ("interval", float(m[1]), float(m[2]))
        elif m := re.fullmatch(r"choice\((.*)\)", spec):
            space[key] = ("choice", [yaml.safe_load(v) for v in m[1].split(",")])
    assert len(space) == len(params) == 4
    return space


@pytest.mark.slow
def test_optuna_sweep_through_the_cli(cli, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    proc = cli("train", "-m", "hparams_search=mnist_offline_optuna", "hydra.sweeper.n_trials=3",
               "trainer.max_epochs=1", "trainer.limit_train_batches=2", "trainer.limit_val_batches=2",
               "logger=csv", "callbacks.progress_bar=null", "data.splits=[512,128,128]")
    sweep = tmp_path / "logs" / "train" / "multiruns" / "optuna_mnist_offline"
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    space = _search_space()
    assert set(results["best_params"]) == set(space)
    for key, value in results["best_params"].items():
        if space[key][0] == "interval":
            assert space[key][1] <= value <= space[key][2], (key, value)
        else:
            assert value in space[key][1], (key, value)
    trials = sorted(sweep.glob("trial_*"))
    assert len(trials) == 3
    returned = [json.loads((t / "metrics.json").read_text())["val/acc"] for t in trials]
    assert results["best_value"] == pytest.approx(max(returned))  # each trial returned its val/acc
    assert not any("test/" in (t / "metrics.json").read_text() for t in trials)  # test=false: choose on val
    # 6. the quiet console, as a user sees it
    output = proc.stdout + proc.stderr
    assert "Best value" in output
    assert "litlogger" not in output and "litmodels" not in output
    assert "LeafSpec" not in output
    assert "setup plugin alembic" not in output


# ---------------------------------------------------------------- W&B and MLflow


def _logger(name: str, run_dir: Path):
    cfg = _compose(f"logger={name}", f"paths.output_dir={run_dir}", "run_name=r")
    return instantiate(cfg.logger[name])


def test_mlflow_relaunch_continues_the_same_run(tmp_path):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient

    first = _logger("mlflow", tmp_path)
    first.log_hyperparams({"optimizer": {"lr": 0.1}, "ckpt_path": None})
    first.log_metrics({"val/acc": 0.5}, step=1)
    first.finalize("success")
    run_id = first.run_id
    assert (tmp_path / "mlflow_run_id.txt").read_text().strip() == run_id

    second = _logger("mlflow", tmp_path)  # e.g. the same command + ckpt_path=last
    second.log_hyperparams({"optimizer": {"lr": 0.1}, "ckpt_path": "last", "new_key": 1})  # no "changed param"
    second.log_metrics({"val/acc": 0.75}, step=2)
    second.finalize("success")
    assert second.run_id == run_id

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert [r.info.run_id for r in runs] == [run_id]
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "val/acc")] == [(1, 0.5), (2, 0.75)]
    assert runs[0].data.params["optimizer/lr"] == "0.1" and runs[0].data.params["new_key"] == "1"


def test_wandb_offline_relaunch_continues_the_same_run(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    ids = []
    for step in (1, 2):
        lg = _logger("wandb", tmp_path)
        lg.log_metrics({"val/acc": 0.1 * step}, step=step)
        ids.append(lg.experiment.id)
        assert lg.experiment.settings.mode in ("offline", "dryrun")  # wandb calls offline "dryrun"
        wandb.finish()
    assert ids[0] == ids[1] == (tmp_path / "wandb_run_id.txt").read_text().strip()
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    # `wandb sync` merges them; two launches in the same second get a "-1" suffix from wandb.
    assert len(runs) == 2 and all(r.name.split("-")[3] == ids[0] for r in runs), [r.name for r in runs]


# ---------------------------------------------------------------- --help


def test_help_shows_usage_groups_and_where_runs_go(cli):
    out = cli("train", "--help").stdout
    assert "== Usage ==" in out and "python -m dyconv.train -m hparams_search=" in out
    groups = dict(line.split(": ", 1) for line in out.splitlines() if re.match(r"^[a-z_]+: ", line))
    for group in ("model", "data", "trainer", "logger", "hparams_search", "experiment", "debug"):
        on_disk = {p.stem for p in (CONF / group).glob("*.yaml")}
        assert set(groups[group].split(", ")) == on_disk, group
    assert "logs/<task_name>/runs/<run_name>" in out
    assert "_target_" not in out  # not the raw config


# ---------------------------------------------------------------- packaging


def test_one_version_license_citation_and_typed_marker():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in meta["project"] and meta["project"]["dynamic"] == ["version"]
    assert meta["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dyconv.__version__"}
    assert re.fullmatch(r"\d+\.\d+\.\d+", dyconv.__version__)
    citation = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert str(citation["version"]) == dyconv.__version__
    assert citation["license"] == meta["project"]["license"]["text"] == "MIT"
    assert "1912.03458" in json.dumps(citation["preferred-citation"])
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert (ROOT / "src" / "dyconv" / "py.typed").is_file()
    assert "py.typed" in meta["tool"]["setuptools"]["package-data"]["dyconv"]
    extras = meta["project"]["optional-dependencies"]
    for extra in ("optuna", "wandb", "mlflow"):
        assert set(extras[extra]) <= set(extras["dev"]), f"CI installs .[dev]: {extra} must be tested there"


# ---------------------------------------------------------------- quiet console


def test_quiet_console_drops_lightning_tips_and_known_noise_only():
    from dyconv.utils.console import TIP_LOGGERS, quiet_console

    logger = logging.getLogger(TIP_LOGGERS[0])
    before = list(logger.filters)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_console()
        tip = logger.makeRecord(logger.name, logging.INFO, __file__, 1,
                                "💡 Tip: For seamless cloud logging and experiment tracking, try installing "
                                "[litlogger](https://pypi.org/project/litlogger/) to enable LitLogger", None, None)
        other = logger.makeRecord(logger.name, logging.INFO, __file__, 1, "GPU available: False, used: False",
                                  None, None)
        litmodels = logger.makeRecord(logger.name, logging.INFO, __file__, 1,
                                      "💡 Tip: For seamless cloud uploads and versioning, try installing "
                                      "[litmodels](https://pypi.org/project/litmodels/) to enable "
                                      "LitModelCheckpoint", None, None)
        assert not logger.filter(tip)
        assert not logger.filter(litmodels)
        assert logger.filter(other)
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("something dyconv users should see", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something dyconv users should see"]
    logger.filters[:] = before


def test_missing_optional_packages_name_the_extra(monkeypatch):
    import importlib.util

    from dyconv.runs import loggers
    from dyconv.train import _require_sweeper

    real = importlib.util.find_spec
    missing = {"wandb", "mlflow", "hydra_plugins.hydra_optuna_sweeper"}
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in missing else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'dyconv\[wandb\]'"):
        loggers.ResumableWandbLogger(save_dir=".")
    with pytest.raises(ConfigError, match=r"pip install 'dyconv\[mlflow\]'"):
        loggers.ResumableMLFlowLogger(save_dir=".")
    with pytest.raises(SystemExit, match=r"pip install 'dyconv\[optuna\]'"):
        _require_sweeper(["-m", "hparams_search=mnist_offline_optuna"])
    _require_sweeper(["model=simple_cnn"])  # nothing asked, nothing needed


@pytest.mark.parametrize("tool", ["eval", "inspect", "export"])
def test_tool_help_lists_every_key_of_its_config(tool):
    text = (CONF / f"{tool}.yaml").read_text()
    assert f"override hydra/help: {tool}" in text
    config = yaml.safe_load(text)
    template = yaml.safe_load((CONF / "hydra" / "help" / f"{tool}.yaml").read_text())["template"]
    for key, value in config.items():
        if key in ("defaults", "hydra", "task_name", "sweep_name"):
            continue
        for name in [f"{key}.{sub}" for sub in value] if isinstance(value, dict) else [key]:
            assert name in template, f"{tool} --help does not mention {name}"
    assert f"python -m dyconv.{tool} ckpt_path=" in template


# ---------------------------------------------------------------- sweep job folders


def test_sweep_job_folder_names_fit_the_file_system():
    """A job's folder is named from its overrides; a long list (15 overrides made 356 bytes,
    'File name too long' before any training) is cut and ends with a hash of the whole name."""
    from dyconv.config import register_resolvers
    from dyconv.runs.layout import MAX_JOB_DIRNAME, job_dirname, legacy_job_dirname

    register_resolvers()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("train", return_hydra_config=True)
    long_a = [f"callbacks.temperature.key{i}={i}" for i in range(15)] + ["seed=1"]
    long_b = [*long_a[:-1], "seed=2"]
    names = []
    for overrides in (["model=dy_resnet10", "seed=1"], long_a, long_b):
        OmegaConf.update(cfg, "hydra.overrides.task", overrides, force_add=True)
        names.append(OmegaConf.to_container(cfg.hydra.sweep, resolve=True)["subdir"])
    assert names[0] == "model-dy_resnet10__seed-1"  # short names: readable, no = or ,
    assert len(",".join(long_a).encode()) > 255
    assert all(len(n.encode()) <= MAX_JOB_DIRNAME for n in names[1:])
    assert names[1] != names[2] and names[1].startswith(  # distinct jobs, readable start
        "callbacks.temperature.key0-0__callbacks.temperature.key10-10__callbacks.temperature.key11-11__")
    assert job_dirname(long_a) == names[1]  # stable: a relaunch finds the same folder
    assert "/" not in job_dirname(["data.cache=/tmp/x"])  # no nested folders
    assert job_dirname(["data.cache=/tmp/x"]).startswith("data.cache-tmp_x-")
    legacy = legacy_job_dirname([f"note='{'é' * 300}'"])  # an earlier version's name: cut on a character boundary
    assert len(legacy.encode()) <= MAX_JOB_DIRNAME and legacy.startswith("note='éé") and legacy[-13] == "-"
    assert len(job_dirname([f"note='{'é' * 300}'"]).encode()) <= MAX_JOB_DIRNAME
