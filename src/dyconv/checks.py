"""Checks of a composed training config, in one module: each refuses an impossible setting
before anything is built or written, in one line that names the key and the fix."""

from __future__ import annotations

import os
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dyconv.errors import ConfigError

__all__ = [
    "check_global_batch",
    "check_multirun_ddp",
    "check_run_length",
    "check_sizes",
    "check_trainable",
    "launched_externally",
    "open_ended",
    "validate_config",
    "world_size",
]


def launched_externally() -> bool:
    """Processes created by torchrun / SLURM / a Lightning parent, not by this process."""
    return any(v in os.environ for v in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK", "SLURM_NTASKS", "RANK"))


def check_global_batch(batch_size: int, world_size: int = 1) -> None:
    """The one ``data.batch_size`` check (the entry point's early config check and the DataModule
    use it): at least 1, and a multiple of the world size (devices x nodes)."""
    if batch_size < 1:
        raise ConfigError(f"data.batch_size must be >= 1, got {int(batch_size)}")
    if batch_size % world_size:
        raise ConfigError(
            f"data.batch_size={int(batch_size)} is the global batch and must divide by the world size "
            f"{world_size} (devices x nodes); choose a multiple of {world_size}"
        )

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


#: Sizes a run may ask for, inclusive: ``(low, high, what)``; outside them a run would fail deep
#: inside a layer (an interpolation to 0 pixels) or try to allocate terabytes.
SIZE_RANGES: dict[str, tuple[float, float, str]] = {
    "data.image_size": (8, 4096, "pixels"),
    "data.eval_size": (8, 4096, "pixels"),
    "model.width_mult": (1 / 64, 16, ""),
    "model.backbone_width_mult": (1 / 64, 16, ""),
    "model.num_kernels": (1, 64, "kernels per dynamic layer"),
    "data.eval_batch_size": (1, 65536, "images"),
}


def _in_range(key: str, value: Any) -> None:
    low, high, what = SIZE_RANGES[key]
    whole = "width_mult" not in key
    allowed = f"{low:g} to {high:g}{' ' + what if what else ''}"
    if key == "data.eval_batch_size":
        allowed += ", or null (= data.batch_size)"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)):
        raise ConfigError(f"{key} must be {'a whole number' if whole else 'a number'}: {allowed}; got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{key}={value:g} is out of range: allowed {allowed}")


def check_sizes(cfg: DictConfig) -> None:
    """Image sides, width multipliers, kernel counts and eval batch sizes in their
    :data:`SIZE_RANGES` (null: the model's or data's own default); a ``num_kernels`` list or
    ``{glob: K}`` mapping is checked per entry."""
    for key in SIZE_RANGES:
        value = OmegaConf.select(cfg, key, default=None, throw_on_resolution_failure=False)
        if value is None:
            continue
        if key == "model.num_kernels" and OmegaConf.is_config(value):
            entries = value.values() if OmegaConf.is_dict(value) else value
            for k in entries:
                _in_range(key, k)
            continue
        _in_range(key, value)
    workers = _number(cfg, "data.num_workers")
    if workers is not None and workers < 0:
        raise ConfigError(f"data.num_workers must be >= 0 (0: load in the main process), got {int(workers)}")


def open_ended(cfg: DictConfig) -> bool:
    """Whether the run has no length: ``trainer.max_epochs=-1`` with no ``max_steps`` (nor
    ``max_time``): it trains until it is stopped."""
    epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    steps = OmegaConf.select(cfg, "trainer.max_steps", default=-1)
    timed = OmegaConf.select(cfg, "trainer.max_time", default=None) is not None
    return epochs == -1 and (steps is None or steps < 0) and not timed


def check_run_length(cfg: DictConfig) -> None:
    """A learning-rate schedule spans the run, so it needs the run's length: ``trainer.max_epochs
    =-1`` (no epoch limit) is refused with a schedule unless the schedule's own ``total_steps``
    is set or (per-step schedules) ``trainer.max_steps`` bounds the run. With ``scheduler=none``
    it is how to ask for a run that trains until stopped (:func:`open_ended`)."""
    if OmegaConf.select(cfg, "trainer.max_epochs", default=None) != -1:
        return
    schedule = OmegaConf.select(cfg, "scheduler.scheduler", default=None)
    if not OmegaConf.is_dict(schedule) or schedule.get("total_steps") is not None:
        return
    per_step = OmegaConf.select(cfg, "scheduler.interval", default="epoch") == "step"
    steps = OmegaConf.select(cfg, "trainer.max_steps", default=-1)
    if per_step and steps is not None and steps > 0:
        return
    name = str(schedule.get("_target_", "")).rsplit(".", 1)[-1] or "the schedule"
    bound = "trainer.max_epochs=N or trainer.max_steps=N" if per_step else "trainer.max_epochs=N"
    raise ConfigError(f"trainer.max_epochs=-1 (no epoch limit) leaves the learning-rate schedule ({name}) without "
                      f"a length: set {bound}, or scheduler=none to train until stopped")


def validate_config(cfg: DictConfig) -> None:
    """Catch impossible settings before anything is built, with the fix in the message."""
    _check_types(cfg)
    check_sizes(cfg)
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
    check_run_length(cfg)
    batch = _number(cfg, "data.batch_size")
    if batch is not None:
        check_global_batch(int(batch), world_size(cfg))
    for key in ("model", "data", "trainer", "optimizer"):
        if OmegaConf.select(cfg, key, default=None) is None:
            raise ConfigError(f"the config has no `{key}` group; pick one, e.g. {key}=<name> (see conf/{key}/)")
    if OmegaConf.select(cfg, "task", default=None) is None:
        raise ConfigError("no task selected: the data config must include `/task@_global_.task: <name>`")


def check_multirun_ddp(cfg: DictConfig) -> None:
    """In-process DDP inside a basic-launcher multirun is broken: Lightning re-launches the
    worker processes with the whole sweep's arguments. Refuse it with the alternatives."""
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


def world_size(cfg: DictConfig) -> int:
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
