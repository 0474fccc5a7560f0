"""Resuming a run: which checkpoint a launch continues from, whether its config still matches
the run's, and whether the run already finished."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dyconv.errors import ConfigError, RunDirectoryError
from dyconv.runs.checkpoint import checkpoint_config, load_checkpoint, not_a_checkpoint_file
from dyconv.runs.layout import LAST_CHECKPOINT, METRICS_FILE, checkpoint_dir
from dyconv.runs.resume_states import check_training_states
from dyconv.runs.state import read_completed

__all__ = ["DATA_KEYS_FREE_TO_CHANGE", "already_finished", "check_resume", "config_differences", "resolve_ckpt_path"]

log = logging.getLogger(__name__)

#: Data keys that may change between launches of one run (where the files are, loader knobs).
DATA_KEYS_FREE_TO_CHANGE = ("root", "sbd_root", "download", "num_workers", "pin_memory", "persistent_workers")


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """Turn the ``ckpt_path`` setting into a file to resume from (or None for a fresh start).

    - None: refuse if this run directory already holds checkpoints (no silent overwrite).
    - "last": ``<output_dir>/checkpoints/last.ckpt``; a fresh start (with a message) when there is
      none yet, so a requeue script can always pass it.
    - a path: must exist.
    """
    ckpt_dir = checkpoint_dir(output_dir)
    if ckpt_path is None:
        existing = sorted(p.name for p in ckpt_dir.glob("*.ckpt")) if ckpt_dir.is_dir() else []
        if existing:
            raise RunDirectoryError(
                f"run directory {output_dir} already holds checkpoints ({', '.join(existing[:3])}"
                f"{', ...' if len(existing) > 3 else ''}). Resume it with ckpt_path=last, or start a new run "
                "with run_name=<new name> (or hydra.run.dir=<new dir>); nothing was overwritten."
            )
        return None
    if str(ckpt_path) == "last":
        last = ckpt_dir / LAST_CHECKPOINT
        if last.is_file():
            log.info("Resuming from %s", last)
            return str(last)
        log.warning("ckpt_path=last: no checkpoint in %s yet, starting from scratch", ckpt_dir)
        return None
    path = Path(ckpt_path).expanduser().absolute()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path}: {not_a_checkpoint_file(path)}; pass an existing .ckpt or "
                          "ckpt_path=last")
    return str(path)


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``key: stored -> current`` for every model/data key that differs (data location and
    loader settings excluded)."""
    diffs = []
    for section in ("model", "data"):
        a = _flatten(stored.get(section) or {})
        b = _flatten(current.get(section) or {})
        for key in sorted(set(a) | set(b)):
            if section == "data" and key.split(".")[0] in DATA_KEYS_FREE_TO_CHANGE:
                continue
            if a.get(key) != b.get(key):
                diffs.append(f"{section}.{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return diffs


def already_finished(cfg: DictConfig, output_dir: Path) -> dict[str, float] | None:
    """``ckpt_path=last`` on a run that finished asking no more epochs/steps: its metrics, unchanged."""
    if str(cfg.get("ckpt_path")) != "last" or not cfg.get("train", True):
        return None
    done = read_completed(output_dir)
    if done is None:
        return None
    max_epochs = OmegaConf.select(cfg, "trainer.max_epochs", default=None)
    max_steps = OmegaConf.select(cfg, "trainer.max_steps", default=-1)
    if max_epochs is not None and max_epochs != -1 and done.get("max_epochs") not in (None, -1) \
            and max_epochs > done["max_epochs"]:
        return None  # asked to train longer: resume
    if max_steps not in (None, -1) and done.get("max_steps") not in (None, -1) and max_steps > done["max_steps"]:
        return None
    try:
        metrics = json.loads((output_dir / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    print(f"Run {output_dir} already finished ({done.get('finished', '?')}, epoch {done.get('epochs', '?')}); "
          f"nothing to do. Metrics: {output_dir / METRICS_FILE}. To train longer raise trainer.max_epochs; "
          "to train again start a new run (run_name=<new name>).", flush=True)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def check_resume(ckpt_path: str | os.PathLike, run_config: Mapping[str, Any]) -> int:
    """Load the checkpoint a run resumes from (data only, its stored config checked) and refuse
    it when its model/data config differs from this launch's, or when its optimizer, scheduler,
    callback or loop states are malformed
    (:func:`~dyconv.runs.resume_states.check_training_states`); returns its global step."""
    resumed = load_checkpoint(ckpt_path)
    step = int(resumed.get("global_step", 0))
    diffs = config_differences(checkpoint_config(resumed, ckpt_path), run_config)
    if diffs:
        raise ConfigError(
            f"refusing to resume {ckpt_path} with a different model/data config:\n  " + "\n  ".join(diffs)
            + "\nresume with the original settings, or start a new run (run_name=<new name>)"
        )
    check_training_states(resumed, run_config, ckpt_path)
    return step
