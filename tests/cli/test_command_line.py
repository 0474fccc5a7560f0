"""The tools' command lines: overrides a tool would not use refused in one line, sizes checked before
the run folder exists, Ctrl-C with a resume hint, and a console with one line per fact."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dyconv.checks import validate_config
from dyconv.cli import check_command_line
from dyconv.config import CONF_DIR
from dyconv.errors import ConfigError
from hydra_launch import launch

QUIET = ["callbacks.progress_bar=null"]

# ----------------------------------------------------------------------- unused overrides
@pytest.mark.parametrize(
    ("tool", "override", "why"),
    [
        ("eval", "model=resnet10", "the model, data and task come from the checkpoint"),
        ("eval", "+model=resnet10", "the model, data and task come from the checkpoint"),
        ("eval", "+model.width_mult=0.25", "the model, data and task come from the checkpoint"),
        ("eval", "+foo=1", "it has no key 'foo'"),
        ("eval", "+data=mnist_offline", "the model, data and task come from the checkpoint"),
        ("eval", "splt=val", "it has no key 'splt' (did you mean 'split'?)"),
        ("eval", "optimizer=adam", "it does not train"),
        ("inspect", "+model.width_mult=0.25", "the model, data and task come from the checkpoint"),
        ("inspect", "+foo=1", "it has no key 'foo'"),
        ("export", "model=resnet10", "the model, data and task come from the checkpoint"),
        ("export", "+data.root=/x", "the model, data and task come from the checkpoint"),
    ],
)
def test_a_tool_refuses_an_override_it_would_not_use_in_one_line(tool, override, why):
    with pytest.raises(SystemExit) as info:
        check_command_line(tool, ["ckpt_path=x.ckpt", override])
    message = str(info.value.code)
    assert "\n" not in message
    assert message.startswith(f"error: dyconv.{tool} does not use {override}: {why}")
    assert f"python -m dyconv.{tool} takes " in message and "ckpt_path" in message


def test_what_a_tool_takes_passes():
    check_command_line("eval", ["ckpt_path=x.ckpt", "split=val", "trainer=gpu", "trainer.devices=2", "data.root=/d",
                                "+data.splits=[1,2,3]", "hydra.run.dir=/tmp/x", "hydra/launcher=basic"])
    check_command_line("inspect", ["ckpt_path=x.ckpt", "max_batches=3", "temperatures=[1,2]", "data.num_workers=0"])
    check_command_line("export", ["-m", "ckpt_path=a.ckpt,b.ckpt", "format=onnx,pt2", "image_size=64"])
    check_command_line("eval", ["--help", "+foo=1"])  # --help runs nothing


def test_a_static_models_dynamic_key_names_its_twin_before_anything_is_built():
    for args, twin in ((["model=resnet10", "model.num_kernels=8"], "model=dy_resnet10 model.num_kernels=8"),
                       (["model=mobilenetv2", "+model.routing=omni"], "model=dy_mobilenetv2 model.routing=omni")):
        with pytest.raises(SystemExit, match=re.escape(f"use its dynamic twin: {twin}")):
            check_command_line("train", args)
    check_command_line("train", ["model=dy_resnet10", "model.num_kernels=8"])
    check_command_line("train", ["model=resnet10", "model.width_mult=0.5"])


# ----------------------------------------------------------------------- sizes on the command line
def _train_cfg(*overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["data.image_size=0"], "data.image_size=0 is out of range: allowed 8 to 4096 pixels"),
        (["data.image_size=-5"], "data.image_size=-5 is out of range: allowed 8 to 4096"),
        (["data.image_size=100000"], "data.image_size=100000 is out of range: allowed 8 to 4096"),
        (["model.width_mult=1e6"], "model.width_mult=1e+06 is out of range: allowed 0.015625 to 16"),
        (["model.num_kernels=10000"], "model.num_kernels=10000 is out of range: allowed 1 to 64"),
        (["model.num_kernels=[2,0]"], "model.num_kernels=0 is out of range"),
        (["trainer.max_epochs=-1"], "trainer.max_epochs=-1 (no epoch limit) leaves the learning-rate schedule"),
        (["trainer.max_epochs=-1", "scheduler=onecycle"], "set trainer.max_epochs=N or trainer.max_steps=N"),
        (["data.eval_batch_size=-3"], "data.eval_batch_size=-3 is out of range: allowed 1 to 65536 images, or null"),
        (["data.eval_batch_size=0"], "data.eval_batch_size=0 is out of range"),
        (["data.batch_size=0"], "data.batch_size must be >= 1, got 0"),
        (["data.batch_size=-4"], "data.batch_size must be >= 1, got -4"),
        (["data.num_workers=-1"], "data.num_workers must be >= 0"),
    ],
)
def test_sizes_out_of_range_are_refused_naming_the_key_and_the_range(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(_train_cfg(*overrides))


def test_open_ended_training_only_when_asked_for():
    from dyconv.checks import open_ended

    for ok in (["trainer.max_epochs=-1", "scheduler=none"], ["trainer.max_epochs=-1", "scheduler=onecycle",
                                                            "trainer.max_steps=100"], ["model.width_mult=0.0625"]):
        validate_config(_train_cfg(*ok))
    assert open_ended(_train_cfg("trainer.max_epochs=-1", "scheduler=none"))
    assert not open_ended(_train_cfg("trainer.max_epochs=-1", "scheduler=none", "trainer.max_steps=10"))
    assert not open_ended(_train_cfg())


def test_a_refused_size_leaves_no_run_folder(tmp_path, cli):
    """Checked before Hydra makes the run folder: in-process, and once on the command line."""
    with pytest.raises(SystemExit, match=r"error: data\.image_size=0 is out of range"):
        launch("train", [f"paths.log_dir={tmp_path / 'a'}", "data.image_size=0"])
    assert not (tmp_path / "a").exists()
    proc = cli("train", "data.eval_batch_size=-3", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: data.eval_batch_size=-3 is out of range: allowed 1 to 65536 images, or null (= data.batch_size)")
    assert not (tmp_path / "logs").exists()


# ----------------------------------------------------------------------- Ctrl-C, a quiet console
def test_ctrl_c_names_the_resume_point_and_a_resume_has_a_quiet_console(tmp_path):
    """Ctrl-C (SIGINT) ends with exit code 130 and says where the run stopped and which epoch and
    step last.ckpt holds (read from the file). The resume (with MLflow) prints every Lightning
    line once, no "Total FLOPs: 0", no "Checkpoint directory ... not empty", no MLflow notes about
    creating its experiment or tables, and a summary naming each logger's output; the log file
    keeps Lightning's lines."""
    from conftest import TESTS_DIR

    run_dir = tmp_path / "run"
    env = dict(os.environ, DYCONV_LOG_DIR=str(tmp_path / "logs"), PYTHONUNBUFFERED="1", HYDRA_FULL_ERROR="0",
               PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "dyconv.train", *QUIET, "data.splits=[256,64,64]", f"hydra.run.dir={run_dir}"]
    # A CI job started in the background inherits SIGINT ignored, and Python then keeps it ignored:
    # give the run the default disposition a terminal's Ctrl-C meets.
    proc = subprocess.Popen([*cmd, "trainer.max_epochs=1000", "logger=[]"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 600
    while not (run_dir / "checkpoints" / "last.ckpt").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)  # into the next epoch: not at the epoch boundary the checkpoint write ends
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        # Python drops a KeyboardInterrupt raised inside a finalizer (a DataLoader iterator's
        # __del__ at an epoch's end), as it would a user's first Ctrl-C there: press it again.
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=300)
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert proc.returncode == 130, out[-3000:]
    stopped = [line for line in out.splitlines() if "run stopped by Ctrl-C (SIGINT) at epoch" in line]
    assert len(stopped) == 1, out[-3000:]
    assert (f"last.ckpt holds epoch {saved['epoch']}, step {saved['global_step']}: resume from there with the "
            "same command + ckpt_path=last") in stopped[0]

    epochs = saved["epoch"] + 2
    resumed = subprocess.run([*cmd, f"trainer.max_epochs={epochs}", "logger=[tensorboard,mlflow]", "ckpt_path=last"],
                             cwd=tmp_path, env=env, capture_output=True, text=True)
    text = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, text[-3000:]
    assert text.count("Seed set to 42") == 1 and not re.search(r"^INFO: ", text, re.MULTILINE)
    assert text.count("Restored all states from the checkpoint") == 1
    assert re.search(r"Total FLOPs: [1-9]", text) and "Total FLOPs: 0" not in text
    for noise in ("exists and is not empty", "not found. Creating it", "database tables"):
        assert noise not in text, text[-3000:]
    assert f"TensorBoardLogger: {run_dir}/tensorboard" in text
    assert re.search(rf"MLflow: +sqlite:///{re.escape(str(run_dir))}/mlflow.db \(experiment 'train', run \w+\)", text)
    log_file = (run_dir / "train.log").read_text()
    assert "Seed set to 42" in log_file and "Restored all states" in log_file
    assert OmegaConf.load(run_dir / ".hydra" / "overrides.yaml")[-1] == "ckpt_path=last"


def test_the_end_summary_names_the_wandb_run_offline_and_online(tmp_path):
    """W&B (offline: the run's folder and the command that uploads it; online: its URL). The W&B
    run is stood in for (``wandb.init`` takes a minute here); MLflow is covered by the real run above."""
    from types import SimpleNamespace

    from dyconv.runs.loggers import ResumableWandbLogger, logger_outputs

    lg = ResumableWandbLogger(save_dir=str(tmp_path), offline=True, project="dyconv")
    lg._experiment = SimpleNamespace(url=None, sync_dir=str(tmp_path / "wandb" / "offline-run-1"))
    assert logger_outputs([lg]) == [("W&B", f"{tmp_path}/wandb/offline-run-1 (offline; upload: wandb sync "
                                            f"{tmp_path}/wandb/offline-run-1)")]
    lg._experiment = SimpleNamespace(url="https://wandb.ai/me/dyconv/runs/abc", sync_dir="x")
    assert logger_outputs([lg]) == [("W&B", "https://wandb.ai/me/dyconv/runs/abc")]


def test_profile_refuses_an_option_it_does_not_have_in_one_line():
    from dyconv.profile import parse_args

    for arg in ("+foo=1", "model=resnet10", "+model=resnet10"):
        with pytest.raises(SystemExit) as info:
            parse_args([arg])
        message = str(info.value.code)
        assert "\n" not in message and message.startswith(f"dyconv.profile: {arg.split('=')[0]} is not an option")
        assert "it takes models, batch, rounds" in message
    assert parse_args(["models=resnet10", "rounds=2"])["rounds"] == 2


def test_lightning_logs_once_even_when_a_tool_imports_lightning_after_routing():
    """inspect and export load Lightning only when they rebuild the checkpoint, after they route
    its logs: the console handler Lightning adds on import must not come back (every line twice)."""
    code = ("import logging; from dyconv.utils.console import route_lightning_logs; route_lightning_logs(); "
            "import lightning.pytorch; names = ('lightning', 'lightning.pytorch', 'lightning.fabric'); "
            "print(sum(len(logging.getLogger(n).handlers) for n in names), "
            "all(logging.getLogger(n).propagate for n in names))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["0", "True"]


@pytest.mark.parametrize("tool", ["train", "eval"])
def test_help_into_a_closed_pipe_ends_quietly(tool):
    """``python -m dyconv.train --help | head -3``: the reader is gone before the help is written;
    the tool stops without a traceback (a BrokenPipeError here once failed CI's wheel check)."""
    proc = subprocess.Popen([sys.executable, "-m", f"dyconv.{tool}", "--help"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before the interpreter has started: every write meets a closed pipe
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 1
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
