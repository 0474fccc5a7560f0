"""Train, validate and test a model: ``python -m dyconv.train [overrides]`` (``dyconv-train``).

    python -m dyconv.train                                   # offline default, CPU, minutes
    python -m dyconv.train model=dy_resnet10 data=tinyimagenet trainer=gpu
    python -m dyconv.train experiment=tinyimagenet_dy_resnet10 ckpt_path=last   # resume
    python -m dyconv.train -m model=simple_cnn,dy_simple_cnn seed=1,2            # sweep

Everything of a run lands in one stable directory (``logs/<task_name>/runs/<run_name>`` or
``hydra.run.dir``): ``.hydra/`` (configs, one copy per launch), ``checkpoints/`` (``last.ckpt``
and the best), ``tensorboard/``, ``metrics.json`` and the log file.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from dyconv.cli import (
    CONF_DIR,
    launched_externally,
    plain,
    process_rank,
    route_lightning_logs,
    run_hydra_main,
    run_job,
)
from dyconv.errors import ConfigError, RunStopped

__all__ = ["CONF_DIR", "check_trainable", "main", "objective", "train", "validate_config"]

log = logging.getLogger("dyconv.train")


def _number(cfg: DictConfig, key: str) -> float | None:
    value = OmegaConf.select(cfg, key, default=None)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


#: Keys whose value must be a whole number / a number (None, or absent, is fine), with an example.
_INTEGER_KEYS = {"trainer.max_epochs": "trainer.max_epochs=10", "trainer.max_steps": "trainer.max_steps=1000",
                 "data.batch_size": "data.batch_size=128", "data.eval_batch_size": "data.eval_batch_size=256",
                 "data.num_workers": "data.num_workers=4"}
_NUMBER_KEYS = {"optimizer.lr": "optimizer.lr=0.05", "optimizer.weight_decay": "optimizer.weight_decay=1e-4",
                "optimizer.momentum": "optimizer.momentum=0.9"}


def _check_types(cfg: DictConfig) -> None:
    for keys, kinds, what in ((_INTEGER_KEYS, (int,), "a whole number"),
                              (_NUMBER_KEYS, (int, float), "a number")):
        for key, example in keys.items():
            value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, kinds):
                raise ConfigError(f"{key} must be {what}, got {value!r}; e.g. {example}")
    if OmegaConf.select(cfg, "deterministic", default=False) not in (True, False, "warn"):
        raise ConfigError(f"deterministic must be true, false or warn, got {cfg.deterministic!r}")


def validate_config(cfg: DictConfig) -> None:
    """Catch impossible settings before anything is built, with the fix in the message."""
    _check_types(cfg)
    lr = _number(cfg, "optimizer.lr")
    if lr is not None and lr <= 0:
        raise ConfigError(f"optimizer.lr must be > 0, got {lr}; e.g. optimizer.lr=0.05")
    wd = _number(cfg, "optimizer.weight_decay")
    if wd is not None and wd < 0:
        raise ConfigError(f"optimizer.weight_decay must be >= 0, got {wd}")
    momentum = _number(cfg, "optimizer.momentum")
    if momentum is not None and not 0 <= momentum < 1:
        raise ConfigError(f"optimizer.momentum must be in [0, 1), got {momentum}")
    seed = OmegaConf.select(cfg, "seed", default=0)
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**32:
        raise ConfigError(f"seed must be an integer in [0, 2**32 - 1], got {seed!r}; e.g. seed=42")
    fraction = _number(cfg, "scheduler.scheduler.warmup_fraction")
    if fraction is not None and not 0 <= fraction < 1:
        raise ConfigError(f"scheduler.scheduler.warmup_fraction must be in [0, 1) (of the run), got {fraction}")
    warmup = _number(cfg, "scheduler.scheduler.warmup_steps")
    if warmup is not None and (warmup < 0 or warmup != int(warmup)):
        raise ConfigError(f"scheduler.scheduler.warmup_steps must be a whole number >= 0, got {warmup}")
    if fraction and warmup:
        raise ConfigError("set scheduler.scheduler.warmup_steps or warmup_fraction, not both")
    if OmegaConf.select(cfg, "train", default=True) and OmegaConf.select(cfg, "trainer.limit_train_batches",
                                                                           default=None) in (0, 0.0):
        raise ConfigError("trainer.limit_train_batches=0 trains nothing; use train=false to only test a checkpoint")
    max_epochs = _number(cfg, "trainer.max_epochs")
    if max_epochs is not None and max_epochs != -1 and max_epochs < 1:
        raise ConfigError(f"trainer.max_epochs must be >= 1 (or -1 for no limit), got {int(max_epochs)}")
    batch = _number(cfg, "data.batch_size")
    if batch is not None:
        from dyconv.datamodules.base import check_global_batch

        check_global_batch(int(batch), _world_size(cfg))
    for key in ("model", "data", "trainer", "optimizer"):
        if OmegaConf.select(cfg, key, default=None) is None:
            raise ConfigError(f"the config has no `{key}` group; pick one, e.g. {key}=<name> (see conf/{key}/)")
    if OmegaConf.select(cfg, "task", default=None) is None:
        raise ConfigError("no task selected: the data config must include `/task@_global_.task: <name>`")


def _check_multirun_ddp(cfg: DictConfig) -> None:
    """In-process DDP inside a basic-launcher multirun is broken: Lightning re-launches the
    worker processes with the whole sweep's arguments. Refuse it with the alternatives."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if hc.mode != RunMode.MULTIRUN or launched_externally():
        return
    launcher = str(OmegaConf.select(hc, "launcher._target_", default=""))
    if "BasicLauncher" not in launcher:
        return  # cluster launchers (submitit) create one process per task themselves
    devices = cfg.trainer.get("devices", 1)
    nodes = cfg.trainer.get("num_nodes", 1) or 1
    strategy = str(cfg.trainer.get("strategy", "") or "")
    if isinstance(devices, int):
        many = devices > 1
    else:
        many = str(devices) not in ("1", "auto")
    if many or nodes > 1 or "ddp" in strategy:
        raise ConfigError(
            "multi-device DDP inside a multirun with Hydra's basic launcher is not supported (Lightning would "
            "re-launch each worker with the whole sweep's arguments). Sweep with a cluster launcher "
            "(hydra/launcher=slurm, one job per run), or run each configuration on its own with torchrun / srun."
        )


def _instantiate_dict(cfg: DictConfig | None) -> list[Any]:
    from hydra.utils import instantiate

    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if c is not None and "_target_" in c]


def _world_size(cfg: DictConfig) -> int:
    """devices x nodes as far as the config says (``auto`` and accelerator-chosen counts: 1)."""
    devices = OmegaConf.select(cfg, "trainer.devices", default=1)
    nodes = OmegaConf.select(cfg, "trainer.num_nodes", default=1) or 1
    if isinstance(devices, int) and devices > 0:
        return devices * int(nodes)
    if OmegaConf.is_list(devices) or isinstance(devices, (list, tuple)):
        return max(1, len(devices)) * int(nodes)
    return int(nodes)


def check_trainable(datamodule: Any, world: int) -> None:
    """Refuse a run whose training split gives no batch (a drop_last batch larger than the data,
    or fewer images than processes): it would "finish" untrained and report untrained metrics."""
    train_set = getattr(datamodule, "train_set", None)
    batch = getattr(datamodule, "batch_size", None)
    if train_set is None or not batch:
        return
    n = len(train_set)
    drop_last = bool(getattr(datamodule, "drop_last", False))
    per_rank = n // world if drop_last else -(-n // world)
    per_device = max(1, batch // world)
    batches = per_rank // per_device if drop_last else -(-per_rank // per_device)
    if n < world or batches < 1:
        raise ConfigError(
            f"the training split has {n} images: with data.batch_size={batch} (global) over {world} device(s)"
            f"{' and drop_last' if drop_last else ''} no training batch is left. Use a smaller data.batch_size "
            f"(<= {max(1, n // max(world, 1)) * world}), fewer devices, or more data"
        )


def _prepare_data(datamodule: Any, cfg: DictConfig, rank: int) -> None:
    """Download/verify/split the data before anything else is built, so a missing or broken
    dataset is reported first (Lightning calls these again in fit; they are idempotent)."""
    if rank != 0 or (not cfg.get("train", True) and not cfg.get("test", True)):
        return  # other ranks (other nodes may prepare their own copy) leave it to Lightning
    if hasattr(datamodule, "prepare_data"):
        datamodule.prepare_data()
    if hasattr(datamodule, "setup") and cfg.get("train", True):
        datamodule.setup("fit")
        check_trainable(datamodule, _world_size(cfg))


def train(cfg: DictConfig) -> dict[str, float]:
    """Run one training job from a composed config; returns the final metrics.

    Order: check the config, the run directory and the data (nothing is built or written if they
    are wrong; a launch that fails there removes the directory Hydra made for it), take the run
    directory's lock, then build, fit and test.
    """
    from dyconv.utils.run_state import LOCK_FILE, RunLock, remove_stub_on_error

    route_lightning_logs()
    output_dir = Path(cfg.paths.output_dir)
    rank = process_rank()
    stub_files = (f"{cfg.get('task_name', 'train')}.log",)
    launched = False
    try:
        with remove_stub_on_error(output_dir, rank, stub_files):
            validate_config(cfg)
            _check_multirun_ddp(cfg)
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
    except BaseException as e:
        if not launched:
            # Nothing of the run was touched: the sweep summary keeps a finished job's record.
            with contextlib.suppress(AttributeError, TypeError):
                e.dyconv_not_started = True  # type: ignore[attr-defined]
        raise
    finally:
        if rank == 0 and not launched and output_dir.is_dir():
            # Hydra rewrote .hydra/ for this launch before it was refused or stopped: the run's
            # own record (its latest launch) goes back.
            from dyconv.utils.run_dir import restore_launch_files

            restore_launch_files(output_dir)


class _Run:
    """One launch of a run: resume checks, data, model, trainer; then fit, test, results."""

    def __init__(self, cfg: DictConfig, output_dir: Path, rank: int) -> None:
        self.cfg, self.output_dir, self.rank = cfg, output_dir, rank

    def check_and_load(self) -> dict[str, float] | None:
        """Everything that can fail before the run starts; the stored metrics when a relaunch
        finds the run already finished (nothing else is done then)."""
        import lightning as L
        import torch
        from hydra.utils import instantiate

        from dyconv.runtime import tune_malloc
        from dyconv.utils.run_dir import already_finished, check_resume, resolve_ckpt_path

        cfg = self.cfg
        if cfg.get("tune_malloc", True):
            tune_malloc()
        if cfg.get("float32_matmul_precision"):
            torch.set_float32_matmul_precision(cfg.float32_matmul_precision)
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
        import lightning as L
        from hydra.utils import instantiate
        from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint

        from dyconv.utils.checkpoint_io import AtomicCheckpointIO

        cfg, output_dir = self.cfg, self.output_dir
        optimizer = instantiate(cfg.optimizer)
        scheduler = instantiate(cfg.scheduler) if cfg.get("scheduler") and cfg.scheduler.get("scheduler") else None
        make_task = instantiate(cfg.task, _partial_=True, _convert_="all")
        task: L.LightningModule = make_task(model=self.model, optimizer=optimizer, scheduler=scheduler,
                                            run_config=self.run_config)

        callbacks = _instantiate_dict(cfg.get("callbacks"))
        if OmegaConf.select(cfg, "trainer.enable_progress_bar", default=True) is False:
            from lightning.pytorch.callbacks import ProgressBar

            callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]  # Lightning refuses both
        loggers = _instantiate_dict(cfg.get("logger"))
        if not loggers:
            dropped = [c for c in callbacks if isinstance(c, LearningRateMonitor)]
            if dropped:
                log.info("No logger configured: dropping LearningRateMonitor")
                callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]

        # The folders checkpoints may be deleted from (superseded best/last files): the
        # configured ModelCheckpoint folders, or Lightning's default under the run directory.
        checkpoint_dirs = [c.dirpath or output_dir / "checkpoints" for c in callbacks if isinstance(c, ModelCheckpoint)]
        trainer: L.Trainer = instantiate(
            cfg.trainer, callbacks=callbacks, logger=loggers or False,
            plugins=[AtomicCheckpointIO(checkpoint_dirs=checkpoint_dirs)],
        )
        self.task, self.trainer, self.loggers = task, trainer, loggers

    def fit_and_test(self) -> dict[str, float]:
        from lightning.pytorch.callbacks import ModelCheckpoint
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        from dyconv.utils.files import atomic_write_text
        from dyconv.utils.run_dir import prepare_run_dir
        from dyconv.utils.run_state import write_completed

        cfg, output_dir = self.cfg, self.output_dir
        task, trainer, loggers = self.task, self.trainer, self.loggers
        if self.rank == 0:
            prepare_run_dir(output_dir, cfg)
        if self.ckpt_path is not None:
            for lg in loggers:
                if hasattr(lg, "truncate_after"):
                    lg.truncate_after(self.resume_step)
        if loggers:
            hparams = OmegaConf.to_container(cfg, resolve=True)
            for lg in trainer.loggers:
                lg.log_hyperparams(hparams)

        datamodule = self.datamodule
        fit_s = 0.0
        try:
            if cfg.get("train", True):
                start = time.perf_counter()
                trainer.fit(task, datamodule=datamodule, ckpt_path=self.ckpt_path)
                fit_s = time.perf_counter() - start
        except SIGTERMException:
            raise _stopped(trainer, output_dir) from None
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
            metrics.update(_scalar_metrics(trainer))

        if trainer.is_global_zero:
            atomic_write_text(output_dir / "metrics.json", json.dumps(dict(sorted(metrics.items())), indent=2))
            if cfg.get("train", True) and not trainer.fast_dev_run:
                write_completed(output_dir, epochs=trainer.current_epoch, global_step=trainer.global_step,
                                max_epochs=trainer.max_epochs, max_steps=trainer.max_steps)
            _print_summary(output_dir, trainer, metrics)
        return metrics


def _scalar_metrics(trainer: Any) -> dict[str, float]:
    """The trainer's latest logged scalars (``callback_metrics``) as plain floats."""
    import torch

    return {k: float(v) for k, v in trainer.callback_metrics.items() if torch.as_tensor(v).numel() == 1}


def _stopped(trainer: Any, output_dir: Path) -> RunStopped:
    last = output_dir / "checkpoints" / "last.ckpt"
    saved = f"the last checkpoint is {last}" if last.is_file() else "no checkpoint was written yet"
    return RunStopped(
        f"run stopped by SIGTERM at epoch {trainer.current_epoch}, step {trainer.global_step}; {saved}. "
        "Resume with the same command + ckpt_path=last"
    )


def _model_stats(model: Any, datamodule: Any) -> dict[str, float]:
    """Parameters and GFLOPs (one input at the data's size) that every run reports in metrics.json."""
    from dyconv.utils.model_stats import count_flops, count_params

    stats: dict[str, float] = {"model/params": float(count_params(model))}
    size, channels = getattr(datamodule, "image_size", None), getattr(datamodule, "in_channels", None)
    shape = getattr(datamodule, "input_shape", None)  # one sample's shape where not (C, S, S): MNIST-1D's (1, 40)
    if shape is None and size and channels:
        shape = (channels, size, size)
    if shape:
        stats["model/gflops"] = count_flops(model, (1, *shape)) / 1e9
    return stats


def _print_summary(output_dir: Path, trainer: Any, metrics: dict[str, float]) -> None:
    lines = [f"Run directory:   {output_dir}"]
    ckpt_dir = output_dir / "checkpoints"
    if ckpt_dir.is_dir() and any(ckpt_dir.iterdir()):
        lines.append(f"Checkpoints:     {ckpt_dir}  (resume: same command + ckpt_path=last)")
    for lg in trainer.loggers:
        if getattr(lg, "log_dir", None):
            lines.append(f"{type(lg).__name__ + ':':<16} {lg.log_dir}")
    lines.append(f"Resolved config: {output_dir / '.hydra' / 'resolved_config.yaml'}")
    lines.append(f"Metrics:         {output_dir / 'metrics.json'}")
    shown = {k: v for k, v in metrics.items() if k.startswith("test/")} or {
        k: v for k, v in metrics.items() if k.startswith("val/")
    }
    if shown:
        lines.append("Final:           " + "  ".join(f"{k}={v:.4f}" for k, v in sorted(shown.items())))
    print("\n".join(lines), flush=True)


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float | dict[str, float]:
    """What the Hydra job returns: the metrics dict, or, when the config names an
    ``optimized_metric`` (``conf/hparams_search/``), that metric as the float a sweeper such as
    Optuna minimises or maximises."""
    key = cfg.get("optimized_metric")
    if not key:
        return metrics
    if key not in metrics:
        raise ConfigError(
            f"optimized_metric={key!r} is not among this run's final metrics ({', '.join(sorted(metrics)) or 'none'}); "
            "pick one of them (validation must run: no trainer.limit_val_batches=0, train=true)"
        )
    return float(metrics[key])


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _main(cfg: DictConfig) -> Any:
    return run_job(lambda c: objective(c, train(c)), cfg)


def _require_sweeper(argv: list[str]) -> None:
    """``hparams_search=...`` needs Hydra's Optuna sweeper; say how to install it instead of
    Hydra's "could not override hydra/sweeper" composition error."""
    import importlib.util

    wanted = any(a.lstrip("+").startswith("hparams_search=") and not a.endswith("=null") for a in argv)
    if wanted and importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        sys.exit("error: hparams_search needs Hydra's Optuna sweeper: pip install 'dyconv[optuna]'")


def main() -> None:
    """Console-script entry point (``dyconv-train``)."""
    from dyconv.utils.console import quiet_console

    quiet_console()
    _require_sweeper(sys.argv[1:])
    run_hydra_main(_main, "train")


if __name__ == "__main__":
    sys.exit(main())
