"""Runs never lose results: run-directory lock, finished runs, divergence stop, SIGTERM, disk full,
early checks, zero-batch runs, warmup length. Mostly in-process; a few real CLI runs."""

from __future__ import annotations

import errno
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from dyconv.errors import ConfigError, DiskFullError, DivergenceError, RunDirectoryError
from dyconv.runs.state import RunLock, is_stub, read_completed, remove_stub, write_completed
from dyconv.train import CONF_DIR, check_trainable, validate_config

QUIET = ["callbacks.progress_bar=null"]


def _cfg(*overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("train", overrides=list(overrides))


# ------------------------------------------------------------------ lock
def test_second_lock_is_refused_with_the_holders_pid_and_freed_when_the_holder_dies(tmp_path):
    code = ("import sys, time; from dyconv.runs.state import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunDirectoryError, match=f"in use by another launch \\(PID {holder.pid} on "):
            RunLock(tmp_path).acquire()
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs, the kernel drops the lock
        holder.wait()
    with RunLock(tmp_path), pytest.raises(RunDirectoryError):  # a crashed holder leaves nothing stuck
        RunLock(tmp_path).acquire()  # and a second lock in the same process is refused too


def test_a_killed_holders_forked_children_do_not_keep_the_lock(tmp_path):
    """A launch killed with its DataLoader workers still alive: the relaunch gets the lock at once."""
    code = ("import os, sys, time; from dyconv.runs.state import RunLock; RunLock(sys.argv[1]).acquire(); "
            "child = os.fork()\n"
            "if child == 0: open(sys.argv[2], 'w').close(); time.sleep(60); os._exit(0)\n"
            "print(child, flush=True); time.sleep(60)")
    forked = tmp_path.parent / f"{tmp_path.name}.forked"  # the child is running (past its fork hooks)
    holder = subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(forked)], stdout=subprocess.PIPE,
                              text=True)
    child = int(holder.stdout.readline())
    deadline = time.monotonic() + 30
    while not forked.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    try:
        holder.kill()
        holder.wait()
        RunLock(tmp_path).acquire().release()  # the orphaned child is still sleeping
    finally:
        os.kill(child, signal.SIGKILL)


def test_second_launch_into_a_running_run_directory_is_refused(cli, tmp_path):
    run_dir = tmp_path / "run"
    code = ("import sys, time; from dyconv.runs.state import RunLock; RunLock(sys.argv[1]).acquire(); "
            "print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", code, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = cli("train", *QUIET, f"hydra.run.dir={run_dir}", check=False)
    finally:
        holder.kill()
        holder.wait()
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"PID {holder.pid}" in out and "Traceback" not in out
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()


# ------------------------------------------------------------------ run directory state
def test_completion_record_and_stub_detection(tmp_path):
    assert read_completed(tmp_path) is None
    write_completed(tmp_path, max_epochs=3)
    assert read_completed(tmp_path)["max_epochs"] == 3
    stub = tmp_path / "stub"
    (stub / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "hydra.yaml", "overrides.yaml"):
        (stub / ".hydra" / name).write_text("{}")
    (stub / "train.log").write_text("error")
    assert is_stub(stub, ("train.log",)) and not is_stub(stub)
    (stub / "checkpoints").mkdir()
    assert not remove_stub(stub, ("train.log",)) and stub.exists()  # real content: kept
    (stub / "checkpoints").rmdir()
    assert remove_stub(stub, ("train.log",)) and not stub.exists()


# ------------------------------------------------------------------ early checks
@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["seed=-1"], "seed must be an integer in [0, 2**32 - 1]"),
        (["seed=4294967296"], "seed must be an integer"),
        (["scheduler=warmup_cosine", "scheduler.scheduler.warmup_fraction=1.5"], "warmup_fraction must be in [0, 1)"),
        (["scheduler=warmup_cosine", "scheduler.scheduler.warmup_steps=-3"], "warmup_steps must be a whole number"),
        (["scheduler=warmup_cosine", "scheduler.scheduler.warmup_steps=100"], "not both"),
        (["+trainer.limit_train_batches=0"], "trains nothing"),
        (["trainer.max_epochs=abc"], "max_epochs must be a whole number, got 'abc'; e.g. trainer.max_epochs=10"),
        (["trainer.max_epochs=1.5"], "trainer.max_epochs must be a whole number, got 1.5"),
        (["optimizer.lr=abc"], "optimizer.lr must be a number, got 'abc'; e.g. optimizer.lr=0.05"),
        (["data.batch_size=abc"], "data.batch_size must be a whole number, got 'abc'"),
        (["deterministic=maybe"], "deterministic must be true, false or warn, got 'maybe'"),
    ],
)
def test_validate_config_refuses_before_anything_is_built(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_config(_cfg(*overrides))


def test_validate_config_accepts_the_defaults_and_the_readme_warmup_example():
    validate_config(_cfg())
    validate_config(_cfg("scheduler=warmup_cosine"))


class _Data:
    def __init__(self, n: int, batch: int, drop_last: bool) -> None:
        self.train_set, self.batch_size, self.drop_last = range(n), batch, drop_last


@pytest.mark.parametrize(
    ("n", "batch", "drop_last", "world", "ok"),
    [(100, 64, True, 1, True), (60, 64, True, 1, False), (60, 64, False, 1, True), (100, 64, True, 2, True),
     (50, 64, True, 2, False), (1, 2, False, 2, False)],
)
def test_zero_batch_runs_are_refused_with_the_numbers(n, batch, drop_last, world, ok):
    data = _Data(n, batch, drop_last)
    if ok:
        check_trainable(data, world)
        return
    with pytest.raises(ConfigError, match=f"has {n} images: with data.batch_size={batch} .* over {world} device"):
        check_trainable(data, world)


# ------------------------------------------------------------------ warmup
def test_warmup_fraction_scales_with_the_run_and_long_warmups_are_clamped(caplog):
    from dyconv.tasks.schedulers import ScheduleFn

    fn = ScheduleFn("cosine", total_steps=370, warmup_fraction=0.05)
    assert fn.warmup == 18  # round(0.05 * 370)
    assert fn(9) == pytest.approx(9 / 18)
    long = ScheduleFn("cosine", total_steps=370, warmup_steps=500)  # the old README default, a short run
    assert long.warmup == 370 and "longer than the run" in caplog.text
    assert long(369) == pytest.approx(369 / 370)


# ------------------------------------------------------------------ divergence
def test_checkpoint_writer_refuses_non_finite_tensors(tmp_path):
    from dyconv.runs.checkpoint_io import AtomicCheckpointIO

    io = AtomicCheckpointIO()
    good = {"state_dict": {"w": torch.ones(3)},
            "optimizer_states": [{"state": {0: {"momentum_buffer": torch.ones(3)}}}]}
    io.save_checkpoint(good, tmp_path / "good.ckpt")
    assert (tmp_path / "good.ckpt").is_file()
    for bad in ({"state_dict": {"w": torch.tensor([1.0, float("nan")])}},
                {"state_dict": {"w": torch.ones(2)},
                 "optimizer_states": [{"state": {0: {"momentum_buffer": torch.tensor([float("inf")])}}}]}):
        with pytest.raises(DivergenceError, match=r"non-finite values in .*last\.ckpt was not written"):
            io.save_checkpoint(bad, tmp_path / "last.ckpt")
    assert not (tmp_path / "last.ckpt").exists()


def test_non_finite_guard_stops_on_a_nan_loss_or_nan_weights():
    from dyconv.callbacks import NonFiniteGuard

    class _Trainer:
        global_step, current_epoch = 7, 1
        optimizers = [torch.optim.SGD([nn.Parameter(torch.ones(1))], lr=1e6)]

    guard, module = NonFiniteGuard(check_weights_every_n_steps=1), nn.Linear(2, 2)
    guard.on_train_batch_end(_Trainer(), module, {"loss": torch.tensor(0.5)}, None, 0)  # finite: nothing
    expected = r"loss became nan at step 7 \(epoch 1\).*lower optimizer.lr \(now 1e\+06\)"
    with pytest.raises(DivergenceError, match=expected):
        guard.on_train_batch_end(_Trainer(), module, {"loss": torch.tensor(float("nan"))}, None, 0)
    with torch.no_grad():
        module.weight[0, 0] = float("inf")
    with pytest.raises(DivergenceError, match="non-finite weights in weight"):
        guard.on_train_epoch_end(_Trainer(), module)


def test_diverging_run_stops_with_a_message_and_saves_nothing_non_finite(cli, tmp_path):
    run_dir = tmp_path / "run"
    # trainer.enable_progress_bar=false alone (no callbacks.progress_bar=null) must be accepted too.
    proc = cli("train", "trainer.enable_progress_bar=false", "optimizer.lr=1e6", "trainer.max_epochs=2",
               "data.splits=[512,64,64]",
               f"hydra.run.dir={run_dir}", check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "training diverged" in out and "at step" in out, out[-3000:]
    assert "gradient_clip_val" in out and "Traceback" not in out
    assert not (run_dir / "metrics.json").exists()
    for ckpt in (run_dir / "checkpoints").glob("*.ckpt") if (run_dir / "checkpoints").is_dir() else []:
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), ckpt


# ------------------------------------------------------------------ disk full
def test_disk_full_is_named_and_the_previous_file_survives(tmp_path, monkeypatch):
    from dyconv.runs import checkpoint as checkpoint_io

    target = tmp_path / "last.ckpt"
    checkpoint_io.atomic_torch_save({"w": torch.zeros(3)}, target)
    real_fdopen = os.fdopen
    monkeypatch.setattr(checkpoint_io.os, "fdopen", lambda fd, mode: (os.close(fd), real_fdopen(
        os.open("/dev/full", os.O_WRONLY), mode))[1])
    with pytest.raises(DiskFullError, match=f"no space left on device: {target}") as info:
        checkpoint_io.atomic_torch_save({"w": torch.ones(100_000)}, target)
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["w"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temp file left


# ------------------------------------------------------------------ SIGTERM
def test_sigterm_exits_non_zero_with_a_resume_hint(tmp_path):
    from conftest import TESTS_DIR

    run_dir = tmp_path / "run"
    env = dict(os.environ, DYCONV_LOG_DIR=str(tmp_path / "logs"), PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(TESTS_DIR), os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "dyconv.train", *QUIET, "trainer.max_epochs=50", "data.splits=[2000,64,64]",
           f"hydra.run.dir={run_dir}"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 600
    while not (run_dir / "checkpoints" / "last.ckpt").is_file() and time.monotonic() < deadline:
        time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate()
    assert proc.returncode == 143, out[-3000:]
    assert "run stopped by SIGTERM at epoch" in out and "ckpt_path=last" in out
    assert not (run_dir / "metrics.json").exists() and read_completed(run_dir) is None


def test_disk_full_anywhere_in_a_run_is_one_plain_line(tmp_path):
    """Not only checkpoints: metrics, logs and configs hitting ENOSPC say so without a traceback."""
    from omegaconf import OmegaConf

    from dyconv.cli import run_job

    def job(cfg):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "metrics.json"))

    with pytest.raises(SystemExit, match=f"error: .*no space left on device: {re.escape(str(tmp_path))}/metrics.json"):
        run_job(job, OmegaConf.create({"paths": {"output_dir": str(tmp_path)}}))


def test_user_errors_are_one_line_naming_the_cause_and_key():
    """A value a target rejected, wrapped by Hydra's instantiation, and a Trainer setting Lightning
    refused are user errors (one line, no traceback), worded by their cause."""
    import lightning  # noqa: F401  (is_user_error looks at Lightning's exception only once it is loaded)
    from hydra.errors import InstantiationException
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    from dyconv.cli import is_user_error, user_message

    try:
        try:
            raise ConfigError("data.num_workers must be >= 0, got -1")
        except ConfigError as cause:
            raise InstantiationException("Error in call to target 'X':\nConfigError(...)\nfull_key: data") from cause
    except InstantiationException as wrapped:
        assert is_user_error(wrapped)
        assert user_message(wrapped) == "data.num_workers must be >= 0, got -1 (in data)"
    refused = MisconfigurationException("`Trainer(devices=0)` value is not a valid input")
    assert is_user_error(refused) and user_message(refused) == str(refused)
    try:
        try:
            raise refused
        except MisconfigurationException as cause:
            raise InstantiationException("Error in call to target 'Trainer':\nfull_key: trainer") from cause
    except InstantiationException as wrapped:
        assert is_user_error(wrapped)
        assert user_message(wrapped) == "MisconfigurationException: " + str(refused) + " (in trainer)"
    assert not is_user_error(RuntimeError("a bug"))


def test_a_folder_given_as_ckpt_path_is_named_as_one(tmp_path):
    from dyconv.runs.resume import resolve_ckpt_path

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"is a folder, not a checkpoint file: pass a \.ckpt inside it, e\.g\. "):
        resolve_ckpt_path(str(tmp_path / "run"), tmp_path / "out")


# ------------------------------------------------------------------ checkpoint folders
def test_a_checkpoint_folder_that_is_a_link_is_refused_before_anything_is_written(tmp_path):
    """A handed run folder whose ``checkpoints/`` is a link would have checkpoints written (and
    superseded ones deleted) wherever it points: refused in one line, the target untouched."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    import dyconv.train
    from dyconv.errors import RunDirectoryError

    run, elsewhere = tmp_path / "run", tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "notes.txt").write_text("not ours")
    run.mkdir()
    (run / "checkpoints").symlink_to(elsewhere)
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=["~logger", "callbacks.progress_bar=null", f"paths.log_dir={tmp_path}",
                                          "data.splits=[64,32,32]", "trainer.max_epochs=1"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run)
    HydraConfig.instance().set_config(cfg)
    try:
        with pytest.raises(RunDirectoryError, match=r"checkpoint folder .*checkpoints is a symbolic link") as e:
            dyconv.train.train(cfg)
    finally:
        HydraConfig.instance().cfg = None
    assert "\n" not in str(e.value)
    assert [p.name for p in elsewhere.iterdir()] == ["notes.txt"]
    assert not (run / ".hydra").exists() and not (run / "metrics.json").exists()


def test_a_checkpoint_callback_without_a_folder_gets_the_runs(tmp_path):
    """Checkpoint folders are derived in one place: a ModelCheckpoint with no dirpath writes into
    ``<run>/checkpoints`` (Lightning would pick a logger's folder), the folder deletions are confined to."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    from dyconv.runs.checkpoint_io import checkpoint_dirs

    unset, set_ = ModelCheckpoint(), ModelCheckpoint(dirpath=str(tmp_path / "mine"))
    assert checkpoint_dirs([unset, set_, object()], tmp_path) == [tmp_path / "checkpoints", tmp_path / "mine"]
    assert unset.dirpath == str(tmp_path / "checkpoints")


class _PressCtrlC:
    """Pickled in the middle of a checkpoint: sends this process a SIGINT while torch.save writes."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGINT)
        return (int, (7,))


def test_ctrl_c_during_a_checkpoint_write_arrives_after_the_file_is_complete(tmp_path):
    """Ctrl-C raised inside torch's zip writer became ``RuntimeError: unexpected pos`` (a run then
    ended with an error instead of its Ctrl-C stop): the KeyboardInterrupt comes once the file is
    written and in place."""
    from dyconv.runs.checkpoint import atomic_torch_save

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        path = tmp_path / "last.ckpt"
        with pytest.raises(KeyboardInterrupt):
            atomic_torch_save({"w": torch.ones(3), "mark": _PressCtrlC()}, path)
        saved = torch.load(path, map_location="cpu", weights_only=False)  # our own file: int(7) is a call
        assert saved["mark"] == 7 and torch.equal(saved["w"], torch.ones(3))
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    finally:
        signal.signal(signal.SIGINT, previous)
