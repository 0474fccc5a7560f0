"""What a launch records in its run folder: the resolved config, a copy of every launch's Hydra
files (``.hydra/launches/<time>/``), and the previous launch's files put back when a launch did
not run; links planted where Hydra or dyconv write are removed, never written through."""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from dyconv.runs.checkpoint import remove_stale_temp_files
from dyconv.runs.layout import (
    COMPLETED_FILE,
    HYDRA_DIR,
    HYDRA_LAUNCH_FILES,
    METRICS_FILE,
    RESOLVED_CONFIG,
    checkpoint_dir,
)
from dyconv.utils.files import atomic_write_text, free_name

__all__ = ["keep_launch_config", "prepare_run_dir", "remove_planted_links", "restore_launch_files"]

log = logging.getLogger(__name__)


def _this_launch_files(cfg: DictConfig | None) -> dict[str, str]:
    """This launch's Hydra files, from memory (what this process was started with). Hydra
    writes them into ``.hydra/`` before the job runs, so another launch into the same folder (a
    refused one, or one started a moment later) may have replaced them on disk since."""
    if cfg is None or not HydraConfig.initialized():
        return {}
    hydra_cfg = HydraConfig.get()
    return {
        "config.yaml": OmegaConf.to_yaml(cfg),
        "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.overrides.task),
        "hydra.yaml": OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})),
    }


def keep_launch_config(output_dir: Path, cfg: DictConfig | None = None) -> Path | None:
    """Record this launch's Hydra files in ``.hydra/launches/<time>/`` (and as ``.hydra/*.yaml``,
    the latest launch), so relaunches (resumes) of one run directory keep every launch's config
    and overrides. Written from memory when Hydra runs the job (see :func:`_this_launch_files`),
    else copied from ``.hydra/``."""
    hydra_dir = output_dir / HYDRA_DIR
    if not hydra_dir.is_dir():
        return None
    texts = _this_launch_files(cfg)
    for name, text in texts.items():
        atomic_write_text(hydra_dir / name, text)
    dest = free_name(hydra_dir / "launches" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    dest.mkdir(parents=True)
    for name in (*HYDRA_LAUNCH_FILES, RESOLVED_CONFIG):
        if _regular_file(hydra_dir / name):
            shutil.copy2(hydra_dir / name, dest / name)
    return dest


def _regular_file(path: Path) -> bool:
    """A file of the run folder itself: not a link (a handed folder's link could name any file)."""
    return path.is_file() and not path.is_symlink()


def restore_launch_files(output_dir: Path) -> bool:
    """Put the latest recorded launch's Hydra files back in ``.hydra/`` (Hydra rewrote them for a
    launch that then did not run: refused, failed its checks, or found the run finished).
    Returns whether there was a recorded launch to restore."""
    launches = output_dir / HYDRA_DIR / "launches"
    if any(p.is_symlink() for p in (output_dir / HYDRA_DIR, launches)) or not launches.is_dir():
        return False
    recorded = [d for d in launches.iterdir() if d.is_dir() and not d.is_symlink()]
    if not recorded:
        return False
    latest = max(recorded, key=lambda d: (d.stat().st_mtime, d.name))
    for name in HYDRA_LAUNCH_FILES:
        if _regular_file(latest / name):  # a link's target is never copied into the run
            atomic_write_text(output_dir / HYDRA_DIR / name, (latest / name).read_text())
    return True


def prepare_run_dir(output_dir: Path, cfg: DictConfig) -> None:
    """What a launch writes before training (rank 0): the resolved config, a copy of this
    launch's Hydra files, no stale checkpoint temp files; a run that trains further moves its
    previous ``metrics.json``/``completed.json`` to the launch that made them."""
    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(checkpoint_dir(output_dir))
    (output_dir / HYDRA_DIR).mkdir(exist_ok=True)
    # Replaced, not written through: a link planted in a handed run folder is never followed.
    atomic_write_text(output_dir / HYDRA_DIR / RESOLVED_CONFIG, OmegaConf.to_yaml(cfg, resolve=True))
    launch = keep_launch_config(output_dir, cfg)
    for name in (METRICS_FILE, COMPLETED_FILE):
        if (output_dir / name).is_file() and launch is not None:
            os.replace(output_dir / name, launch / f"previous_{name}")


def remove_planted_links(folder: Path, names: tuple[str, ...]) -> list[Path]:
    """Remove the symbolic links standing at ``folder/<name>`` (the links, never their targets), so
    that what is about to be written there becomes a file of the folder instead of overwriting
    whatever a handed run folder's link points at; returns the links removed."""
    removed = []
    for name in names:
        path = folder / name
        if path.is_symlink():
            path.unlink()
            removed.append(path)
            log.warning("removed the symbolic link %s: dyconv never writes through links in a run folder", path)
    return removed
