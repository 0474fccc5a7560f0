"""One launch of a training run, start to end: check the config, the run folder and the data
(nothing is written when they are wrong), lock the run folder, build, fit, test, and record the
results (``metrics.json``, ``completed.json``) and the end summary. ``dyconv.train`` composes the
config and calls :func:`train`."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint, ProgressBar
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf

from dyconv.checks import check_multirun_ddp, check_trainable, open_ended, validate_config, world_size
from dyconv.errors import RunStopped
from dyconv.runs.checkpoint_io import AtomicCheckpointIO, checkpoint_dirs, refuse_linked_folders
from dyconv.runs.launch import prepare_run_dir, restore_launch_files
from dyconv.runs.layout import (
    HYDRA_DIR,
    LAST_CHECKPOINT,
    LOCK_FILE,
    METRICS_FILE,
    RESOLVED_CONFIG,
    checkpoint_dir,
)
from dyconv.runs.loggers import logger_outputs
from dyconv.runs.resume import already_finished, check_resume, resolve_ckpt_path
from dyconv.runs.state import RunLock, process_rank, remove_stub_on_error, write_completed
from dyconv.runtime import tune_malloc
from dyconv.utils.console import route_lightning_logs
from dyconv.utils.files import atomic_write_text
from dyconv.utils.model_stats import count_flops, count_params
from dyconv.utils.plain import plain, to_plain

__all__ = ["train"]

log = logging.getLogger("dyconv.train")


def _instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def _prepare_data(datamodule: Any, cfg: DictConfig, rank: int) -> None:
    """Download/verify/split the data before anything else is built, so a missing or broken
    dataset is reported first (Lightning calls these again in fit; they are idempotent)."""
    if rank != 0 or (not cfg.get("train", True) and not cfg.get("test", True)):
        return  # other ranks (other nodes may prepare their own copy) leave it to Lightning
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    if hasattr(datamodule, "setup") and cfg.get("train", True):
        datamodule.setup("fit")
        check_trainable(datamodule, world_size(cfg))


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job from a composed config; returns the final metrics.

    Order: check the config, the run directory and the data (nothing is built or written if they
    are wrong; a launch that fails there removes the directory Hydra made for it), take the run
    directory's lock, then build, fit and test. A launch stopped before it trains leaves the
    run as it was: its ``.hydra/`` files go back to the run's latest recorded launch.
    """
    route_lightning_logs()
    output_dir = Path(cfg.paths.output_dir)
    rank = process_rank()
    stub_files = (f"{cfg.get('task_name', 'train')}.log",)
    launched = False
    try:
        with remove_stub_on_error(output_dir, rank, stub_files):
            validate_config(cfg)
            check_multirun_ddp(cfg)
        if open_ended(cfg) and rank == 0:
            log.warning("trainer.max_epochs=-1 without trainer.max_steps or max_time: this run trains until it is "
                        "stopped (Ctrl-C or SIGTERM; resume with the same command + ckpt_path=last)")
        # Only the launching process (rank 0) locks: the ranks it starts share the directory.
        with RunLock(output_dir) if rank == 0 else contextlib.nullcontext():
            run = _Run(cfg, output_dir, rank)
            with remove_stub_on_error(output_dir, rank, (*stub_files, LOCK_FILE)):
                finished = run.check_and_load()  # resume checks, data, model: nothing written yet
                if finished is None:
                    run.build()  # optimizer, task, callbacks, loggers, trainer: still nothing written
            if finished is not None:
                return finished
            launched = True  # fit_and_test records this launch first (prepare_run_dir)
            return run.fit_and_test()
    finally:
        if rank == 0 and not launched and output_dir.is_dir():
            # Hydra rewrote .hydra/ for this launch before it was refused or stopped: the run's
            # own record (its latest launch) goes back.
            restore_launch_files(output_dir)


class _Run:
    """One launch of a run: resume checks, data, model, trainer; then fit, test, results."""

    def __init__(self, cfg: DictConfig, output_dir: Path, rank: int) -> None:
        self.cfg, self.output_dir, self.rank = cfg, output_dir, rank

    def check_and_load(self) -> dict[str, float] | None:
        """Everything that can fail before the run starts; the stored metrics when a relaunch
        finds the run already finished (nothing else is done then)."""
        cfg = self.cfg
        if cfg.get("tune_malloc", True):
            tune_malloc()
        if cfg.get("float32_matmul_precision"):
            torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
        configured = [OmegaConf.select(c, "dirpath", default=None) for c in (cfg.get("callbacks") or {}).values()
                      if OmegaConf.is_dict(c)]
        refuse_linked_folders([checkpoint_dir(self.output_dir), *(d for d in configured if d)])
        self.ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), self.output_dir)
        self.run_config = plain(cfg, "model", "data", "task", "optimizer", "scheduler", "seed", "run_name")
        self.resume_step = 0
        if self.ckpt_path is not None:
            self.resume_step = check_resume(self.ckpt_path, self.run_config)
            finished = already_finished(cfg, self.output_dir)
            if finished is not None:
                return finished

        L.seed_everything(cfg.seed, workers=True)
        log.info("Instantiating datamodule <%s>", cfg.data._target_)
        self.datamodule: L.LightningDataModule = instantiate(cfg.data)
        _prepare_data(self.datamodule, cfg, self.rank)
        log.info("Instantiating model <%s> %s", cfg.model._target_, cfg.model.get("name", ""))
        self.model = instantiate(cfg.model)
        self.model_stats = _model_stats(self.model, self.datamodule)
        return None

    def build(self) -> None:
        """Optimizer, task, callbacks, loggers and Trainer: a setting they refuse (say
        ``trainer.devices=0``) stops the launch before it writes anything into the run folder."""
        cfg, output_dir = self.cfg, self.output_dir
        optimizer = instantiate(cfg.optimizer)
        scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") and cfg.scheduler.get("scheduler") else None
        make_task = instantiate(cfg.task, _partial_=True, _convert_="all")
        task: L.LightningModule = make_task(model=self.model, optimizer=optimizer, scheduler=scheduler,
                                            run_config=self.run_config)
        shape = _input_shape(self.datamodule)
        if shape and not cfg.get("compile", False):
            # One input lets Lightning's model summary count the FLOPs (else it prints "Total FLOPs: 0").
            task.example_input_array = torch.zeros(1, *shape)

        callbacks = _instantiate_dict(cfg.get("callbacks"))
        if OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True) is False:
            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]  # Lightning refuses both
        loggers = _instantiate_dict(cfg.get("logger"))
        if not loggers:
            dropped = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
            if dropped:
                log.info("No logger configured: dropping LearningRateMonitor")
                callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]

        trainer: L.Trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False,
            plugins=[AtomicCheckpointIO(checkpoint_dirs=checkpoint_dirs(callbacks, output_dir))],
        )
        self.task, self.trainer, self.loggers = task, trainer, loggers

    def fit_and_test(self) -> dict[str, float]:
        cfg, output_dir = self.cfg, self.output_dir
        task, trainer, loggers = self.task, self.trainer, self.loggers
        if self.rank == 0:
            prepare_run_dir(output_dir, cfg)
        if self.ckpt_path is not None:
            for lg in loggers:
                if hasattr(lg, "truncate_after"):
                    lg.truncate_after(self.resume_step)
        if loggers:
            hparams = to_plain(cfg)
            for lg in trainer.loggers:
                lg.log_hyperparams(hparams)

        datamodule = self.datamodule
        fit_s = 0.0
        try:
            if cfg.get("train", True):
                start = time.perf_counter()
                with warnings.catch_warnings():
                    # dyconv refuses a launch into a folder with checkpoints unless it resumes them
                    warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
                    trainer.fit(task, datamodule=datamodule, ckpt_path=self.ckpt_path)
                fit_s = time.perf_counter() - start
        except SIGTERMException:
            raise _stopped(trainer, output_dir) from None
        except SystemExit:  # Lightning ends a run interrupted by Ctrl-C with sys.exit(1)
            if trainer.interrupted:
                raise _stopped(trainer, output_dir, "Ctrl-C (SIGINT)") from None
            raise
        if trainer.received_sigterm:
            raise _stopped(trainer, output_dir)
        metrics = _scalar_metrics(trainer)
        metrics.update(self.model_stats)
        metrics["time/fit_s"] = fit_s

        if cfg.get("test", True):
            ckpt = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint) and c.monitor),
                        None)
            best = ckpt.best_model_path if ckpt is not None else ""
            try:
                if not cfg.get("train", True) and self.ckpt_path is not None:
                    # train=false: test the checkpoint asked for (it was checked, not loaded).
                    log.info("Testing the checkpoint %s (train=false)", self.ckpt_path)
                    trainer.test(task, datamodule=datamodule, ckpt_path=self.ckpt_path)
                elif trainer.fast_dev_run or not best or not cfg.get("train", True):
                    why = (" under fast_dev_run" if trainer.fast_dev_run
                           else ", train=false without ckpt_path: untrained" if not cfg.get("train", True) else "")
                    log.info("Testing the current weights (no best checkpoint%s)", why)
                    trainer.test(task, datamodule=datamodule)
                else:
                    log.info("Testing the best checkpoint %s", best)
                    trainer.test(task, datamodule=datamodule, ckpt_path=best)
            except SIGTERMException:
                raise _stopped(trainer, output_dir) from None
            except SystemExit:
                if trainer.interrupted:
                    raise _stopped(trainer, output_dir, "Ctrl-C (SIGINT)") from None
                raise
            metrics.update(_scalar_metrics(trainer))

        if trainer.is_global_zero:
            atomic_write_text(output_dir / METRICS_FILE, json.dumps(dict(sorted(metrics.items())), indent=2))
            if cfg.get("train", True) and not trainer.fast_dev_run:
                write_completed(output_dir, epochs=trainer.current_epoch, global_step=trainer.global_step,
                                max_epochs=trainer.max_epochs, max_steps=trainer.max_steps)
            _print_summary(output_dir, trainer, metrics)
        return metrics


def _scalar_metrics(trainer: Any) -> dict[str, float]:
    """The trainer's latest logged scalars (``callback_metrics``) as plain floats."""
    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}


#: Exit codes of a stopped run: 128 + the signal, what shells and schedulers expect.
_SIGINT_EXIT = 130


def _saved_at(path: Path) -> tuple[int, int] | None:
    """The (epoch, global step) a checkpoint holds, read without loading its tensors; None when
    it cannot be read."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["epoch"]), int(ckpt["global_step"])
    except Exception:
        return None


def _stopped(trainer: Any, output_dir: Path, cause: str = "SIGTERM") -> RunStopped:
    """The one-line message of a run stopped by a signal: where it stopped, and where ``last.ckpt``
    (what ``ckpt_path=last`` resumes from) stands, which can be earlier (written each epoch)."""
    last = checkpoint_dir(output_dir) / LAST_CHECKPOINT
    saved = _saved_at(last) if last.is_file() else None
    if saved is not None:
        where = (f"{last} holds epoch {saved[0]}, step {saved[1]}: resume from there with the same command "
                 "+ ckpt_path=last")
    elif last.is_file():
        where = f"the last checkpoint is {last}: resume with the same command + ckpt_path=last"
    else:
        where = "no checkpoint was written yet: the same command starts it again"
    error = RunStopped(f"run stopped by {cause} at epoch {trainer.current_epoch}, step {trainer.global_step}; {where}")
    if cause != "SIGTERM":
        error.exit_code = _SIGINT_EXIT
    return error


def _input_shape(datamodule: Any) -> tuple[int, ...] | None:
    """One sample's shape: (C, S, S) from the data's image size, or the datamodule's own
    ``input_shape`` (MNIST-1D's (1, 40)); None when the data does not say."""
    shape = getattr(datamodule, "input_shape", None)
    size, channels = getattr(datamodule, "image_size", None), getattr(datamodule, "in_channels", None)
    if shape is None and size and channels:
        shape = (channels, size, size)
    return tuple(int(s) for s in shape) if shape else None


def _model_stats(model: Any, datamodule: Any) -> dict[str, float]:
    """Parameters and GFLOPs (one input at the data's size) that every run reports in metrics.json."""
    stats: dict[str, float] = {"model/params": float(count_params(model))}
    shape = _input_shape(datamodule)
    if shape:
        stats["model/gflops"] = count_flops(model, (1, *shape)) / 1e9
    return stats


def _print_summary(output_dir: Path, trainer: Any, metrics: dict[str, float]) -> None:
    lines = [f"Run directory:   {output_dir}"]
    ckpt_dir = checkpoint_dir(output_dir)
    if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        lines.append(f"Checkpoints:     {ckpt_dir}  (resume: same command + ckpt_path=last)")
    for name, place in logger_outputs(trainer.loggers):
        lines.append(f"{name + ':':<16} {place}")
    lines.append(f"Resolved config: {output_dir / HYDRA_DIR / RESOLVED_CONFIG}")
    lines.append(f"Metrics:         {output_dir / METRICS_FILE}")
    shown = {k: v for k, v in metrics.items() if k.startswith("test/")} or {
        k: v for k, v in metrics.items() if k.startswith("val/")
    }
    if shown:
        lines.append("Final:           " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items())))
    print("\n".join(lines), flush=True)
