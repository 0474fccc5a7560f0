"""OmegaConf resolvers the configs use; registered when an entry point module is imported."""

from __future__ import annotations

import os

from omegaconf import OmegaConf

__all__ = ["register_resolvers"]


def _run_dir_of(ckpt_path: str) -> str:
    from dyconv.utils.rebuild import run_dir_of

    return run_dir_of(ckpt_path)


def register_resolvers() -> None:
    """``${dyconv.cwd:}`` (the launch directory, usable before Hydra's job starts, e.g. in
    ``hydra.sweep.dir``) and ``${dyconv.run_dir_of:<ckpt>}`` (a checkpoint's run directory)."""
    if not OmegaConf.has_resolver("dyconv.cwd"):
        OmegaConf.register_new_resolver("dyconv.cwd", lambda: os.getcwd())
    if not OmegaConf.has_resolver("dyconv.run_dir_of"):
        OmegaConf.register_new_resolver("dyconv.run_dir_of", _run_dir_of)
