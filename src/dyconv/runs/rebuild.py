"""Rebuild a trained run (model, task, data) from a checkpoint alone.

``python -m dyconv.train`` stores the resolved model/data/task config in every checkpoint
(``checkpoint["dyconv"]["config"]``, plain Python types); eval, inspect and export use it. The
config is data: its targets are allow-listed (:mod:`~dyconv.runs.safe_config`), its sizes are
checked and the model is built on the ``meta`` device and compared with the weights before any
real memory is used, its resource settings are capped and its data paths are read-only
(:mod:`~dyconv.runs.checkpoint_values`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from dyconv.errors import ConfigError, DyconvError
from dyconv.runs.checkpoint import checkpoint_config, load_checkpoint, not_a_checkpoint_file
from dyconv.runs.checkpoint_values import capped_resources, check_stored_sizes, shape_mismatch
from dyconv.runs.safe_config import check_section
from dyconv.utils.plain import to_plain

__all__ = ["DATA_PATH_KEYS", "TrainedRun", "load_trained_run"]

#: The data config keys that name folders. Those a checkpoint sets are read-only to the tools
#: (the DataModule's ``read_only``) unless the command line names them.
DATA_PATH_KEYS = ("root", "sbd_root")


class TrainedRun:
    """A checkpoint's task (weights loaded, eval mode), its config and a datamodule factory."""

    def __init__(self, ckpt_path: Path, checkpoint: dict[str, Any], config: dict[str, Any], task: Any) -> None:
        self.ckpt_path = ckpt_path
        self.checkpoint = checkpoint
        self.config = config
        self.task = task

    @property
    def model(self) -> Any:
        return self.task.model

    def datamodule(self, overrides: Mapping[str, Any] | None = None) -> Any:
        """The run's DataModule, with ``overrides`` (e.g. ``{"root": ...}``) merged in; ``None``
        values keep the checkpoint's setting (the tools' CLI defaults), except what would make
        dyconv write data or use more than this machine: ``download`` is off and FashionMNIST's
        ``system_dir`` (a local copy it unpacks into ``root``) unset unless an override sets them,
        worker counts and batch sizes are capped
        (:func:`~dyconv.runs.checkpoint_values.capped_resources`), and the folders it takes from
        the checkpoint (``root``, ``sbd_root``) are ``read_only`` (``prepare_data`` refuses to
        write there); those the overrides name are the user's."""
        kept = {k: v for k, v in (overrides or {}).items() if v is not None}
        stored = dict(self.config["data"])
        # A checkpoint never makes dyconv fetch or write data (its root may name any folder); the
        # command line may.
        if "download" in stored:
            stored["download"] = False
        if "system_dir" in stored:
            stored["system_dir"] = None
        stored = capped_resources(stored, kept)
        merged = OmegaConf.merge(OmegaConf.create(stored), OmegaConf.create(kept))
        data_cfg = to_plain(merged, resolve=False)
        check_section("data", data_cfg, self.ckpt_path)  # what gets built is still one of dyconv's datamodules
        datamodule = instantiate(data_cfg)
        datamodule.read_only = frozenset(f"data.{k}" for k in DATA_PATH_KEYS
                                         if stored.get(k) is not None and k not in kept)
        return datamodule


def _no_pretrained(node: Any) -> Any:
    """``node`` with every ``pretrained*`` key, at any depth, set to False."""
    if isinstance(node, Mapping):
        return {k: (False if str(k).startswith("pretrained") else _no_pretrained(v)) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_no_pretrained(v) for v in node]
    return node


def _build_task(config: Mapping[str, Any]) -> Any:
    """The task (with its model) ``config`` describes, built on the current default device."""
    # The weights come from the checkpoint: a stored pretrained_backbone=true (or 1, or under a
    # nested model config) must not make dyconv fetch (and cache) other weights first.
    model = instantiate(_no_pretrained(config["model"]))
    task_cfg = dict(config["task"])
    task_cfg["compile"] = False
    make_task = instantiate(task_cfg, _partial_=True, _convert_="all")
    return make_task(model=model, run_config=config)


def _check_shapes(config: Mapping[str, Any], state: Mapping[str, Any], path: Path) -> None:
    """Build ``config``'s task on the ``meta`` device (no memory) and refuse, in one line, a stored
    config whose parameters and buffers differ in name or shape from the checkpoint's weights."""
    try:
        with torch.device("meta"):
            expected = _build_task(config).state_dict()
    except DyconvError:
        raise
    except Exception as e:  # a value the model refused, a size nothing can hold (overflow), ...
        cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ is not None else e
        if isinstance(cause, DyconvError):
            raise cause from None
        text = str(cause).strip()
        first = text.splitlines()[0][:200] if text else ""
        raise ConfigError(f"{path}: the model its config describes cannot be built ({type(cause).__name__}: "
                          f"{first}); the checkpoint is damaged or was edited") from None
    problem = shape_mismatch(expected, state)
    if problem:
        raise ConfigError(f"{path}: its weights do not fit the model its config describes ({problem}); the "
                          "checkpoint is damaged or was edited (nothing was allocated)")


def load_trained_run(ckpt_path: str | os.PathLike) -> TrainedRun:
    """Load a dyconv checkpoint (``weights_only=True``) and rebuild its task with the weights.

    The stored config is checked first (:func:`~dyconv.runs.checkpoint.checkpoint_config`): only
    dyconv's own models, datamodules and tasks are ever instantiated from a checkpoint. Its sizes
    are then checked (:func:`~dyconv.runs.checkpoint_values.check_stored_sizes`) and the task is
    built on the ``meta`` device and compared, key by key and shape by shape, with the stored
    weights; only a config that fits them is built for real."""
    path = Path(ckpt_path).expanduser().absolute()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: {not_a_checkpoint_file(path)}")
    checkpoint = load_checkpoint(path)
    config = checkpoint_config(checkpoint, path)  # every _target_ checked before anything is built
    check_stored_sizes(config, path)
    _check_shapes(config, checkpoint["state_dict"], path)
    task = _build_task(config)
    try:
        task.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(
            f"{path}: its weights do not fit the model its config describes ({first}); the checkpoint is damaged "
            "or was edited"
        ) from None
    task.eval()
    return TrainedRun(path, checkpoint, config, task)
