"""The shipped Hydra configs: where they are and the resolvers they use (registered on import);
the conversion to plain values (:mod:`dyconv.utils.plain`) is re-exported here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dyconv.runs.layout import HYDRA_DIR, run_dir_of, sweep_job_folder
from dyconv.utils.files import numbered
from dyconv.utils.plain import plain, resolved_config, to_plain

__all__ = ["CONF_DIR", "plain", "register_resolvers", "resolved_config", "to_plain", "unused_folder"]

#: The shipped Hydra configs (``conf/`` at the repository root links here).
CONF_DIR = str(Path(__file__).parent / "conf")


def unused_folder(folder: str) -> str:
    """``folder``, or the first of ``<folder>+1``, ``<folder>+2``, ... that no launch wrote into
    yet (no ``.hydra/``, nothing but empty): a tool launched twice with one fixed output folder
    gets a folder of its own for Hydra's files, its log and its outputs."""
    for candidate in numbered(os.path.abspath(os.path.expanduser(folder))):
        if not (candidate.exists() or candidate.is_symlink()):
            return str(candidate)
        if candidate.is_dir() and not candidate.is_symlink() and not (candidate / HYDRA_DIR).exists():
            with os.scandir(candidate) as entries:
                if next(entries, None) is None:
                    return str(candidate)
    raise AssertionError("unreachable")  # pragma: no cover - numbered() never ends


def _job_folder(sweep_dir: Any, overrides: Any, exclude_keys: Any = ()) -> str:
    return sweep_job_folder(str(sweep_dir), [str(o) for o in overrides], [str(k) for k in exclude_keys or ()])


def register_resolvers() -> None:
    """``${dyconv.cwd:}`` (the launch directory, usable before Hydra's job starts, e.g. in
    ``hydra.sweep.dir``), ``${dyconv.run_dir_of:<ckpt>}`` (a checkpoint's run directory),
    ``${dyconv.job_dirname:<sweep dir>,<overrides>,<exclude_keys>}`` (a sweep job's folder name,
    :func:`~dyconv.runs.layout.sweep_job_folder`) and
    ``${dyconv.unused_folder:<folder>}`` (:func:`unused_folder`, the same answer all launch long)."""
    if not OmegaConf.has_resolver("dyconv.cwd"):
        OmegaConf.register_new_resolver("dyconv.cwd", lambda: os.getcwd())
    if not OmegaConf.has_resolver("dyconv.run_dir_of"):
        OmegaConf.register_new_resolver("dyconv.run_dir_of", run_dir_of)
    if not OmegaConf.has_resolver("dyconv.job_dirname"):
        OmegaConf.register_new_resolver("dyconv.job_dirname", _job_folder)
    if not OmegaConf.has_resolver("dyconv.unused_folder"):
        OmegaConf.register_new_resolver("dyconv.unused_folder", unused_folder, use_cache=True)


register_resolvers()  # whoever composes CONF_DIR needs them
