"""The command-line layer every tool (train, eval, inspect, export) shares: the console entry
(:func:`tool_main`: a quiet console, the usage line, a hint for a misspelled key) and the job
wrapper that prints user errors in one line (:func:`run_job`). Nothing here imports Lightning or
builds anything."""

from __future__ import annotations

import contextlib
import difflib
import errno
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dyconv.config import CONF_DIR, resolved_config, to_plain
from dyconv.errors import DiskFullError, DyconvError, RunStopped, hydra_full_key, is_disk_full
from dyconv.runs.state import process_rank, remove_stub_on_error
from dyconv.utils.console import quiet_console, route_lightning_logs

__all__ = [
    "CONF_DIR",
    "is_user_error",
    "misspelled_key_hint",
    "quiet_console",
    "require_ckpt_path",
    "resolved_config",
    "route_lightning_logs",
    "run_hydra_main",
    "run_job",
    "tool_main",
    "user_message",
]

log = logging.getLogger("dyconv")


def run_job(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Hydra job wrapper: user errors are printed without a traceback (single run) or logged
    and re-raised so a multirun reports them at the end while the other jobs go on."""
    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return fn(cfg)
    except RunStopped as e:  # a signal stops the whole launch (a sweep too), with a non-zero code
        log.error("%s", e)
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None
    except Exception as e:
        if is_disk_full(e) and not isinstance(e, DyconvError):  # metrics, logs, configs: the cause, plainly
            where = getattr(e, "filename", None) or OmegaConf.select(
                cfg, "paths.output_dir", default="the run directory", throw_on_resolution_failure=False)
            e = DiskFullError(errno.ENOSPC, f"no space left on device: {where}; free some space and resume with "
                                            "the same command + ckpt_path=last (checkpoints are written atomically)")
        if not is_user_error(e):
            log.exception("Job failed")
            raise
        if multirun:
            log.error("%s", user_message(e))
            raise
        raise SystemExit(f"error: {user_message(e)}") from None


def is_user_error(e: BaseException) -> bool:
    if isinstance(e, DyconvError):
        return True
    wrapped = isinstance(e, InstantiationException)
    if wrapped and isinstance(e.__cause__, (ValueError, TypeError, DyconvError)):
        return True  # a config value or key the target rejected
    if "lightning" in sys.modules:  # a Trainer setting Lightning refused (trainer.devices=0, ...)
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        return isinstance(e.__cause__ if wrapped else e, MisconfigurationException)
    return False


def user_message(e: BaseException) -> str:
    """One line for a user error: the cause a Hydra instantiation wrapped (with the config key
    it came from), not the wrapper's "Error in call to target ..." first."""
    cause = e.__cause__
    if not isinstance(e, InstantiationException) or cause is None:
        return str(e)
    key = hydra_full_key(e)
    text = str(cause) if isinstance(cause, DyconvError) else f"{type(cause).__name__}: {cause}"
    return f"{text} (in {key})" if key else text


def removing_stub(cfg: DictConfig, task: str) -> contextlib.AbstractContextManager[Any]:
    """For a tool's Hydra job: on an error, remove the folder Hydra made for this launch
    (``paths.output_dir``) if it holds nothing but Hydra's files (``.hydra/`` and ``<task>.log``);
    a folder with earlier results is kept as it is. A no-op outside a Hydra run."""
    folder = OmegaConf.select(cfg, "paths.output_dir", default=None, throw_on_resolution_failure=False)
    if not folder:
        return contextlib.nullcontext()
    return remove_stub_on_error(Path(folder), process_rank(), (f"{cfg.get('task_name') or task}.log",))


def misspelled_key_hint(config_name: str, args: Sequence[str]) -> str | None:
    """For command-line overrides ``key=value`` of keys the composed ``config_name`` does not have
    (Hydra refuses them with "Key ... is not in struct"), a line per key naming the closest
    sibling under the same parent (``trainer.max_epoch`` -> ``trainer.max_epochs``); None when
    every key exists or nothing is close (Hydra's own "+key=" advice then stands). Config groups
    chosen on the same command line (``model=dy_resnet10``, a sweep's first option) are composed,
    so their keys count; keys under a group that cannot be composed are left to Hydra's message."""
    pairs = [a.split("=", 1) for a in args if "=" in a and not a.startswith(("-", "+", "~"))]
    keys = [k for k, _ in pairs if k.split(".")[0] != "hydra"]
    if not keys:
        return None
    group_choices = [f"{k}={v.split(',')[0]}" for k, v in pairs if "." not in k and k != "hydra"]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            chosen, broken = [], set()
            for choice in group_choices:  # each on its own: a bad one must not hide the good ones
                try:
                    compose(config_name, overrides=[*chosen, choice])
                    chosen.append(choice)
                except Exception:
                    broken.add(choice.split("=", 1)[0])
            tree = to_plain(compose(config_name, overrides=chosen), resolve=False)
    except Exception:
        return None
    finally:
        GlobalHydra.instance().clear()
    lines = []
    for key in dict.fromkeys(keys):
        *parents, leaf = key.split(".")
        if parents and parents[0] in broken:
            continue
        node: Any = tree
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf in node:
            continue
        close = difflib.get_close_matches(leaf, [str(k) for k in node], n=1, cutoff=0.75)
        if close:
            suggestion = ".".join([*parents, close[0]])
            lines.append(f"dyconv: the config has no key {key!r}; did you mean {suggestion!r}? "
                         f"(+{key}=... adds a new key)")
    return "\n".join(lines) or None


def run_hydra_main(hydra_main: Callable[[], Any], config_name: str) -> Any:
    """Run a tool's ``@hydra.main`` function; when the launch fails, name the closest existing key
    for each override of a key the config does not have (:func:`misspelled_key_hint`), under
    Hydra's own message."""
    try:
        return hydra_main()
    except SystemExit as e:
        if e.code not in (0, None):
            hint = misspelled_key_hint(config_name, sys.argv[1:])
            if hint:
                print(hint, file=sys.stderr, flush=True)
        raise


def require_ckpt_path(usage: str) -> None:
    """Checkpoint tools: exit with their usage line (not Hydra's interpolation error) when the
    command line names no ``ckpt_path``."""
    args = sys.argv[1:]
    if any(a.startswith(("ckpt_path=", "--", "-c", "-h")) for a in args):
        return
    sys.exit(f"usage: {usage}\n(ckpt_path is required: a checkpoint written by python -m dyconv.train)")


def tool_main(hydra_main: Callable[[], Any], config_name: str, usage: str | None = None) -> Any:
    """A tool's console entry: a quiet console (:func:`quiet_console`), the tool's ``usage`` line
    when the command line names no ``ckpt_path`` (checkpoint tools), then its ``@hydra.main``
    function (:func:`run_hydra_main`)."""
    quiet_console()
    if usage:
        require_ckpt_path(usage)
    return run_hydra_main(hydra_main, config_name)
