"""OmegaConf resolvers the configs use; registered when an entry point module is imported."""

from __future__ import annotations

import hashlib
import os

from omegaconf import OmegaConf

__all__ = ["job_dirname", "register_resolvers"]

#: Longest sweep-job folder name kept as is, in bytes (file systems stop at 255).
MAX_JOB_DIRNAME = 200


def job_dirname(override_dirname: str) -> str:
    """A sweep job's folder name from its overrides (Hydra's ``override_dirname``): unchanged
    when it fits, otherwise cut and ended with a hash of the whole name, so two jobs never share
    a folder and a relaunch finds its own again. A ``/`` in a value becomes ``_`` (it would nest
    folders)."""
    name = override_dirname.replace("/", "_")
    encoded = name.encode()
    if len(encoded) <= MAX_JOB_DIRNAME:
        return name
    digest = hashlib.sha256(encoded).hexdigest()[:12]
    head = encoded[: MAX_JOB_DIRNAME - len(digest) - 1].decode(errors="ignore")
    return f"{head}-{digest}"


def _run_dir_of(ckpt_path: str) -> str:
    from dyconv.utils.rebuild import run_dir_of

    return run_dir_of(ckpt_path)


def register_resolvers() -> None:
    """``${dyconv.cwd:}`` (the launch directory, usable before Hydra's job starts, e.g. in
    ``hydra.sweep.dir``), ``${dyconv.run_dir_of:<ckpt>}`` (a checkpoint's run directory) and
    ``${dyconv.job_dirname:<override_dirname>}`` (:func:`job_dirname`)."""
    if not OmegaConf.has_resolver("dyconv.cwd"):
        OmegaConf.register_new_resolver("dyconv.cwd", lambda: os.getcwd())
    if not OmegaConf.has_resolver("dyconv.run_dir_of"):
        OmegaConf.register_new_resolver("dyconv.run_dir_of", _run_dir_of)
    if not OmegaConf.has_resolver("dyconv.job_dirname"):
        OmegaConf.register_new_resolver("dyconv.job_dirname", job_dirname)
