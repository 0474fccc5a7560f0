"""Rebuild a trained run (model, task, data) from a checkpoint alone.

``python -m dyconv.train`` stores the resolved model/data/task config in every checkpoint
(``checkpoint["dyconv"]["config"]``, plain Python types); eval, inspect and export use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import OmegaConf

from dyconv.errors import ConfigError
from dyconv.runs.checkpoint import checkpoint_config, load_checkpoint, not_a_checkpoint_file
from dyconv.runs.safe_config import check_section
from dyconv.utils.plain import to_plain

__all__ = ["TrainedRun", "load_trained_run"]


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
        dyconv write data: ``download`` is off and FashionMNIST's ``system_dir`` (a local copy it
        unpacks into ``root``) unset unless an override sets them."""
        kept = {k: v for k, v in (overrides or {}).items() if v is not None}
        stored = dict(self.config["data"])
        # A checkpoint never makes dyconv fetch or write data (its root may name any folder); the
        # command line may.
        if "download" in stored:
            stored["download"] = False
        if "system_dir" in stored:
            stored["system_dir"] = None
        merged = OmegaConf.merge(OmegaConf.create(stored), OmegaConf.create(kept))
        data_cfg = to_plain(merged, resolve=False)
        check_section("data", data_cfg, self.ckpt_path)  # what gets built is still one of dyconv's datamodules
        return instantiate(data_cfg)


def _no_pretrained(node: Any) -> Any:
    """``node`` with every ``pretrained*`` key, at any depth, set to False."""
    if isinstance(node, Mapping):
        return {k: (False if str(k).startswith("pretrained") else _no_pretrained(v)) for k, v in node.items()}
    if isinstance(node, list | tuple):
        return [_no_pretrained(v) for v in node]
    return node


def load_trained_run(ckpt_path: str | os.PathLike) -> TrainedRun:
    """Load a dyconv checkpoint (``weights_only=True``) and rebuild its task with the weights.

    The stored config is checked first (:func:`~dyconv.runs.checkpoint.checkpoint_config`): only
    dyconv's own models, datamodules and tasks are ever instantiated from a checkpoint."""
    path = Path(ckpt_path).expanduser().absolute()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: {not_a_checkpoint_file(path)}")
    checkpoint = load_checkpoint(path)
    config = checkpoint_config(checkpoint, path)  # every _target_ checked before anything is built
    # The weights come from the checkpoint: a stored pretrained_backbone=true (or 1, or under a
    # nested model config) must not make dyconv fetch (and cache) other weights first.
    model = instantiate(_no_pretrained(config["model"]))
    task_cfg = dict(config["task"])
    task_cfg["compile"] = False
    make_task = instantiate(task_cfg, _partial_=True, _convert_="all")
    task = make_task(model=model, run_config=config)
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
