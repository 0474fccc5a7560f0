"""What every entry point (train, eval, inspect, export) shares: the config directory, the
process rank, Lightning's log routing, and the job wrapper that prints user errors in one line.
Nothing here imports Lightning or builds anything."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dyconv.errors import DiskFullError, DyconvError, RunStopped
from dyconv.utils.resolvers import register_resolvers

__all__ = [
    "CONF_DIR",
    "is_user_error",
    "launched_externally",
    "misspelled_key_hint",
    "plain",
    "process_rank",
    "require_ckpt_path",
    "route_lightning_logs",
    "run_hydra_main",
    "run_job",
]

log = logging.getLogger("dyconv")
register_resolvers()

#: The shipped Hydra configs (``conf/`` at the repository root links here).
CONF_DIR = str(Path(__file__).parent / "conf")


def process_rank() -> int:
    """Rank of this process as set by Lightning's launcher, torchrun or SLURM (0 if none)."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def launched_externally() -> bool:
    """Processes created by torchrun / SLURM / a Lightning parent, not by this process."""
    return any(v in os.environ for v in ("TORCHELASTIC_RUN_ID", "LOCAL_RANK", "SLURM_NTASKS", "RANK"))


def route_lightning_logs() -> None:
    """Lightning adds its own console handler; drop it so its messages go through Hydra's
    handlers once (console + the run's log file) instead of twice."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler):
                logger.removeHandler(handler)
        logger.propagate = True


def plain(cfg: DictConfig, *keys: str) -> dict[str, Any]:
    """The named sections of a composed config as plain containers (resolved)."""
    return {k: OmegaConf.to_container(cfg[k], resolve=True) if isinstance(cfg.get(k), DictConfig) else cfg.get(k)
            for k in keys if k in cfg}


def run_job(fn: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """Hydra job wrapper: user errors are printed without a traceback (single run) or logged
    and re-raised so a multirun reports them at the end while the other jobs go on."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    multirun = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
    try:
        return fn(cfg)
    except RunStopped as e:  # a signal stops the whole launch (a sweep too), with a non-zero code
        log.error("%s", e)
        print(f"stopped: {e}", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None
    except Exception as e:
        from dyconv.utils.checkpoint_io import is_disk_full

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
    from hydra.errors import InstantiationException

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
    from hydra.errors import InstantiationException

    cause = e.__cause__
    if not isinstance(e, InstantiationException) or cause is None:
        return str(e)
    key = hydra_full_key(e)
    text = str(cause) if isinstance(cause, DyconvError) else f"{type(cause).__name__}: {cause}"
    return f"{text} (in {key})" if key else text


def hydra_full_key(e: BaseException) -> str:
    """The config key a Hydra instantiation error names (its ``full_key: ...`` line), or ``""``."""
    return next((line.split(":", 1)[1].strip() for line in str(e).splitlines() if line.startswith("full_key:")), "")


def resolved_config(cfg: DictConfig | Any | None) -> dict[str, Any]:
    """``cfg`` as plain values, interpolations resolved; a top-level key that cannot be resolved
    here (``paths`` outside a Hydra run) is left out. What a tool records beside its outputs."""
    if cfg is None:
        return {}
    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(dict(cfg))
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except Exception:  # resolvers that need a Hydra run (paths): keep what resolves
        out: dict[str, Any] = {}
        for key in cfg:
            with contextlib.suppress(Exception):
                value = cfg[key]
                out[str(key)] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
        return out


def removing_stub(cfg: DictConfig, task: str) -> contextlib.AbstractContextManager[Any]:
    """For a tool's Hydra job: on an error, remove the folder Hydra made for this launch
    (``paths.output_dir``) if it holds nothing but Hydra's files (``.hydra/`` and ``<task>.log``);
    a folder with earlier results is kept as it is. A no-op outside a Hydra run."""
    from dyconv.utils.run_state import remove_stub_on_error

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
    import difflib

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

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
            tree = OmegaConf.to_container(compose(config_name, overrides=chosen), resolve=False)
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
