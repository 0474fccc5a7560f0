"""Run-directory rules: resume by relaunching the same command, never overwrite a run."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dyconv.errors import ConfigError, RunDirectoryError
from dyconv.sweeps import STATUS_FILE
from dyconv.utils.files import atomic_write_text
from dyconv.utils.run_state import HYDRA_LAUNCH_FILES, read_completed

__all__ = [
    "NotACheckpointError",
    "already_finished",
    "check_resume",
    "checkpoint_config",
    "config_differences",
    "keep_launch_config",
    "load_checkpoint",
    "not_a_checkpoint_file",
    "prepare_run_dir",
    "resolve_ckpt_path",
    "restore_launch_files",
]

log = logging.getLogger(__name__)

#: Data keys that may change between launches of one run (where the files are, loader knobs).
DATA_KEYS_FREE_TO_CHANGE = ("root", "sbd_root", "download", "num_workers", "pin_memory", "persistent_workers")


class NotACheckpointError(ConfigError):
    """A file given as a checkpoint is not one ``python -m dyconv.train`` (Lightning) wrote."""


_EXPECTED = ("expected a file written by `python -m dyconv.train`: a torch.save'd dict with a 'state_dict' of "
             "tensors and dyconv's run config")


def _not_a_checkpoint(path: str | os.PathLike, reason: str) -> NotACheckpointError:
    return NotACheckpointError(f"{path} is not a dyconv/Lightning checkpoint ({reason}); {_EXPECTED}")


def _load_failure(error: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words (never torch's advice)."""
    text = str(error)
    refused = re.search(r"(?:unsupported|Unsupported global:) GLOBAL ([\w.]+)", text)
    if refused:
        return f"it pickles {refused.group(1)}, an object a checkpoint never holds"
    if isinstance(error, EOFError) or "Ran out of input" in text:
        return "the file is empty or truncated"
    if "zip archive" in text or "PytorchStreamReader" in text:
        return "a damaged or foreign zip archive"
    return "not a torch.save file"


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """``torch.load`` with ``weights_only=True`` (dyconv checkpoints hold plain types only).

    Raises:
        NotACheckpointError: the file is not a torch checkpoint, pickles anything but plain
            types and tensors, or is not a dict with a ``state_dict`` of tensors (one line, no
            traceback; ``weights_only`` is never relaxed).
    """
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol notes about a foreign file
            warnings.simplefilter("ignore", UserWarning)
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as e:  # permission denied, a directory, ...
        raise ConfigError(f"cannot read checkpoint {path}: {e.strerror or e}") from None
    except Exception as e:  # UnpicklingError, RuntimeError (zip), EOFError, ValueError, ... from a foreign file
        raise _not_a_checkpoint(path, _load_failure(e)) from None
    if type(ckpt) is not dict:
        raise _not_a_checkpoint(path, f"it holds a {type(ckpt).__name__}, not a dict")
    state = ckpt.get("state_dict")
    if not isinstance(state, Mapping):
        raise _not_a_checkpoint(path, "it has no 'state_dict'")
    bad = next((k for k, v in state.items() if type(k) is not str or not isinstance(v, torch.Tensor)), None)
    if bad is not None:
        raise _not_a_checkpoint(path, f"its state_dict entry {str(bad)[:80]!r} is not a tensor")
    for key in ("global_step", "epoch"):
        if key in ckpt and type(ckpt[key]) is not int:
            raise _not_a_checkpoint(path, f"its {key!r} is a {type(ckpt[key]).__name__}, not an int")
    return ckpt


def checkpoint_config(ckpt: Mapping[str, Any], path: str | os.PathLike = "checkpoint") -> dict[str, Any]:
    """The run config a dyconv checkpoint carries (model, data, task, ...), checked.

    A checkpoint is data: its config is refused (:class:`~dyconv.utils.safe_config.UnsafeConfigError`)
    unless every ``_target_`` in it is one of dyconv's own models, datamodules, tasks (see
    :mod:`dyconv.utils.safe_config`), before anything is instantiated from it.
    """
    from dyconv.utils.safe_config import check_run_config

    meta = ckpt.get("dyconv")
    if type(meta) is not dict or "config" not in meta:
        raise ConfigError(
            f"{path} holds no dyconv run config (was it written by `python -m dyconv.train`?); "
            "dyconv tools rebuild the model and data from that config"
        )
    return check_run_config(meta["config"], path)


def resolve_ckpt_path(ckpt_path: str | None, output_dir: Path) -> str | None:
    """Turn the ``ckpt_path`` setting into a file to resume from (or None for a fresh start).

    - None: refuse if this run directory already holds checkpoints (no silent overwrite).
    - "last": ``<output_dir>/checkpoints/last.ckpt``; a fresh start (with a message) when there is
      none yet, so a requeue script can always pass it.
    - a path: must exist.
    """
    ckpt_dir = output_dir / "checkpoints"
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
        last = ckpt_dir / "last.ckpt"
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


def not_a_checkpoint_file(path: Path) -> str:
    """Why ``path`` (not a file) cannot be a checkpoint, with the file to pass when it is a folder."""
    if not path.is_dir():
        return f"no such file ({path})"
    inside = next((p for p in (path / "checkpoints" / "last.ckpt", path / "last.ckpt") if p.is_file()), None)
    hint = f", e.g. {inside}" if inside else ""
    return f"{path} is a folder, not a checkpoint file: pass a .ckpt inside it{hint}"


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


def _this_launch_files(cfg: DictConfig | None) -> dict[str, str]:
    """This launch's Hydra files, from memory (what this process was started with). Hydra
    writes them into ``.hydra/`` before the job runs, so another launch into the same folder (a
    refused one, or one started a moment later) may have replaced them on disk since."""
    from hydra.core.hydra_config import HydraConfig

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
    hydra_dir = output_dir / ".hydra"
    if not hydra_dir.is_dir():
        return None
    texts = _this_launch_files(cfg)
    for name, text in texts.items():
        atomic_write_text(hydra_dir / name, text)
    dest = hydra_dir / "launches" / time.strftime("%Y-%m-%d_%H-%M-%S")
    n = 1
    while dest.exists():
        dest = dest.with_name(f"{dest.name.split('+')[0]}+{n}")
        n += 1
    dest.mkdir(parents=True)
    for name in (*HYDRA_LAUNCH_FILES, "resolved_config.yaml"):
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
    launches = output_dir / ".hydra" / "launches"
    if any(p.is_symlink() for p in (output_dir / ".hydra", launches)) or not launches.is_dir():
        return False
    recorded = [d for d in launches.iterdir() if d.is_dir() and not d.is_symlink()]
    if not recorded:
        return False
    latest = max(recorded, key=lambda d: (d.stat().st_mtime, d.name))
    for name in HYDRA_LAUNCH_FILES:
        if _regular_file(latest / name):  # a link's target is never copied into the run
            atomic_write_text(output_dir / ".hydra" / name, (latest / name).read_text())
    return True


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
        metrics = json.loads((output_dir / "metrics.json").read_text())
    except (OSError, ValueError):
        return None
    print(f"Run {output_dir} already finished ({done.get('finished', '?')}, epoch {done.get('epochs', '?')}); "
          f"nothing to do. Metrics: {output_dir / 'metrics.json'}. To train longer raise trainer.max_epochs; "
          "to train again start a new run (run_name=<new name>).", flush=True)
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def check_resume(ckpt_path: str | os.PathLike, run_config: Mapping[str, Any]) -> int:
    """Load the checkpoint a run resumes from (data only, its stored config checked) and refuse
    it when its model/data config differs from this launch's; returns its global step."""
    resumed = load_checkpoint(ckpt_path)
    step = int(resumed.get("global_step", 0))
    diffs = config_differences(checkpoint_config(resumed, ckpt_path), run_config)
    if diffs:
        raise ConfigError(
            f"refusing to resume {ckpt_path} with a different model/data config:\n  " + "\n  ".join(diffs)
            + "\nresume with the original settings, or start a new run (run_name=<new name>)"
        )
    return step


def prepare_run_dir(output_dir: Path, cfg: DictConfig) -> None:
    """What a launch writes before training (rank 0): the resolved config, a copy of this
    launch's Hydra files, no stale checkpoint temp files; a run that trains further moves its
    previous ``metrics.json``/``completed.json`` to the launch that made them."""
    from dyconv.utils.checkpoint_io import remove_stale_temp_files

    output_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(output_dir / "checkpoints")
    (output_dir / ".hydra").mkdir(exist_ok=True)
    # Replaced, not written through: a link planted in a handed run folder is never followed.
    atomic_write_text(output_dir / ".hydra" / "resolved_config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    launch = keep_launch_config(output_dir, cfg)
    for name in ("metrics.json", "completed.json"):
        if (output_dir / name).is_file() and launch is not None:
            os.replace(output_dir / name, launch / f"previous_{name}")


#: The tools whose Hydra folder lies inside a run folder (``<run>/export``, ...).
_TOOL_FOLDERS = ("eval", "inspect", "export")

#: What Hydra writes into a run (or job) folder before any dyconv code runs.
_HYDRA_WRITES = (".hydra", *(f".hydra/{name}" for name in HYDRA_LAUNCH_FILES), STATUS_FILE)


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


try:
    from hydra.experimental.callback import Callback as _HydraCallback
except ImportError:  # pragma: no cover - hydra is a dependency
    _HydraCallback = object  # type: ignore[assignment,misc]


class PlantedLinkGuard(_HydraCallback):  # type: ignore[misc,valid-type]
    """Hydra callback (``conf/hydra/default.yaml``): before Hydra writes a launch's files into an
    existing run folder (``.hydra/*.yaml``, ``<task>.log``, ``job_status.json``; for a multirun
    ``multirun.yaml`` and every job folder's files), links planted at those names are removed, so a
    handed run or sweep folder cannot make a relaunch overwrite or append to the files they name.
    For eval, inspect and export, whose folders lie inside the checkpoint's run folder, links at
    those folders (``<run>/export``, ``<run>/eval``) are removed too. A training run's folder
    itself and its ``checkpoints/`` may be links (e.g. to a larger disk)."""

    @staticmethod
    def _names(config: Any) -> tuple[str, ...]:
        task = OmegaConf.select(config, "task_name", default=None) or OmegaConf.select(
            config, "hydra.job.name", default="")
        return (*_HYDRA_WRITES, f"{task}.log")

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        # Hydra only warns about an error raised here, so links are removed, never refused.
        folder = Path(str(OmegaConf.select(config, "hydra.run.dir", default="")))
        if not str(folder):
            return
        ckpt = OmegaConf.select(config, "ckpt_path", default=None)
        if OmegaConf.select(config, "task_name", default=None) in _TOOL_FOLDERS and ckpt:
            # <run>/export, <run>/eval/<x>, <run>/inspect/<x>: folders a handed run holds, derived
            # from where its checkpoint is; a link there would put the tool's files anywhere.
            from dyconv.utils.rebuild import run_dir_of

            run = Path(run_dir_of(ckpt))
            inside = [p for p in (folder, *folder.parents) if run in p.parents]
            remove_planted_links(run, tuple(str(p.relative_to(run)) for p in reversed(inside)))
        if folder.is_dir():
            remove_planted_links(folder, self._names(config))

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        sweep = Path(str(OmegaConf.select(config, "hydra.sweep.dir", default="")))
        if not (str(sweep) and sweep.is_dir()):
            return
        remove_planted_links(sweep, ("multirun.yaml",))
        names = self._names(config)
        for job in sweep.iterdir():
            if job.is_dir() and not job.is_symlink():
                remove_planted_links(job, names)
