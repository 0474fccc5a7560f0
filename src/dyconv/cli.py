"""The command-line layer every tool (train, eval, inspect, export) shares: the console entry
(:func:`tool_main`: a quiet console, the usage line, a hint for a misspelled key) and the job
wrapper that prints user errors in one line (:func:`run_job`). Nothing here imports Lightning or
builds anything."""

from __future__ import annotations

import contextlib
import difflib
import errno
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from dyconv.config import CONF_DIR, resolved_config, to_plain
from dyconv.errors import DiskFullError, DyconvError, RunStopped, hydra_full_key, is_disk_full
from dyconv.runs.state import process_rank, remove_stub_on_error
from dyconv.utils.console import quiet_console, route_lightning_logs

__all__ = [
    "CHECKPOINT_TOOLS",
    "CONF_DIR",
    "check_command_line",
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
        log.error("%s", e)  # the run's log file, and the console where Hydra's logging has one
        if not _logs_to_console():
            print(f"stopped: {e}", file=sys.stderr, flush=True)
        raise SystemExit(e.exit_code) from None
    except KeyboardInterrupt:  # Ctrl-C before or after training (Lightning handles it during fit/test)
        print("stopped: interrupted by Ctrl-C (SIGINT)", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
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


def _logs_to_console() -> bool:
    """Whether the root logger (Hydra's job logging) writes to the console."""
    return any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               and getattr(h, "stream", None) in (sys.stdout, sys.stderr) for h in logging.getLogger().handlers)


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


#: The tools that rebuild model, data and task from a checkpoint: their command line may name
#: only keys of their own config (:func:`check_command_line`).
CHECKPOINT_TOOLS = ("eval", "inspect", "export")
#: Config groups whose choice a checkpoint makes for the tools; the others are training settings.
_FROM_CHECKPOINT = ("model", "data", "task", "experiment", "arm")
_MISSING = object()
#: Hydra's flags that show something and run nothing: the command line is not checked.
_INFO_FLAGS = ("--help", "-h", "--hydra-help", "--version", "--info", "-i", "--shell-completion", "-sc")


def _parsed_overrides(args: Sequence[str]) -> list[Any]:
    """The command line's overrides parsed by Hydra (flags and their values left out); [] when
    Hydra cannot parse them (its own message then stands)."""
    overrides = [a for a in args if not a.startswith("-") and ("=" in a or a.startswith("~"))]
    try:
        return OverridesParser.create().parse_overrides(overrides) if overrides else []
    except Exception:
        return []


def _compose(config_name: str, overrides: Sequence[str] = ()) -> DictConfig | None:
    """``config_name`` composed with its Hydra node (None when it does not compose: Hydra's
    own message then stands)."""
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            return compose(config_name, overrides=list(overrides), return_hydra_config=True)
    except Exception:
        return None
    finally:
        GlobalHydra.instance().clear()


def _options(group: str) -> list[str]:
    folder = Path(CONF_DIR) / group
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def _accepted(tool: str, tree: dict[str, Any], groups: dict[str, Any]) -> str:
    """What a tool's command line takes, in one line: its keys, its groups and their options."""
    parts = []
    for key, value in tree.items():
        if key in groups:
            parts.append(f"{key}=<{'|'.join(_options(key))}>, {key}.<key>")
        elif isinstance(value, dict):
            extra = " (+data.<key>=... for another key of the checkpoint's data config)" if key == "data" else ""
            parts.append(f"{key}.<{'|'.join(map(str, value))}>{extra}")
        else:
            parts.append(str(key))
    return f"python -m dyconv.{tool} takes " + ", ".join(parts)


def _unused(override: Any, tree: dict[str, Any], groups: dict[str, Any]) -> str | None:
    """Why a checkpoint tool does not use ``override`` (None: it does)."""
    key = str(override.key_or_group)
    head, _, rest = key.partition(".")
    is_add = override.is_add() or override.is_force_add()
    if head in _FROM_CHECKPOINT and (head not in tree or (not rest and isinstance(tree.get(head), dict))):
        return "the model, data and task come from the checkpoint" + (
            " (data.<key>=... overrides a stored data setting)" if "data" in tree else "")
    if head not in tree and (Path(CONF_DIR) / head).is_dir():
        return "it does not train"
    node: Any = tree
    for part in key.split("."):
        node = node.get(part, _MISSING) if isinstance(node, dict) else _MISSING
    if node is not _MISSING or (head == "data" and rest and is_add):
        return None
    parent, _, leaf = key.rpartition(".")
    siblings: Any = tree
    for part in parent.split(".") if parent else ():
        siblings = siblings.get(part) if isinstance(siblings, dict) else None
    close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.75) if isinstance(siblings, dict) else []
    hint = f" (did you mean {'.'.join(filter(None, [parent, close[0]]))!r}?)" if close else ""
    return f"it has no key {key!r}{hint}"


def refuse_unused_overrides(config_name: str, args: Sequence[str]) -> None:
    """A checkpoint tool (:data:`CHECKPOINT_TOOLS`) refuses, in one line naming what it takes and
    before anything is built or written, an override it would not use: a group it does not have
    (``model=resnet10``, ``+model=...``, ``+data=...``), a key under one (``+model.width_mult=
    0.25``) or a key its config lacks (``+foo=1``). ``+data.<key>=...`` passes another key of
    the checkpoint's data config, as documented; ``hydra.*`` overrides are Hydra's."""
    overrides = [o for o in _parsed_overrides(args) if not str(o.key_or_group).startswith("hydra")]
    if not overrides:
        return
    cfg = _compose(config_name)
    if cfg is None:
        return
    groups = {k: v for k, v in cfg.hydra.runtime.choices.items() if not str(k).startswith("hydra")}
    tree = {k: v for k, v in to_plain(cfg, resolve=False).items() if k != "hydra"}
    for o in overrides:
        why = None if o.package or "/" in str(o.key_or_group) else _unused(o, tree, groups)
        if why:
            raise SystemExit(f"error: dyconv.{config_name} does not use {o.input_line}: {why}. "
                             f"{_accepted(config_name, tree, groups)} (--help describes them)")


def refuse_static_model_keys(args: Sequence[str]) -> None:
    """Training: a dynamic-convolution key (``model.num_kernels=8``) on a static model
    (``model=resnet10``) is refused in one line naming the model's dynamic twin
    (``dy_resnet10``), before anything is built; Hydra would only say "not in struct"."""
    parsed = _parsed_overrides(args)
    model_keys = [o for o in parsed if str(o.key_or_group).startswith("model.") and not o.is_sweep_override()]
    if not model_keys or any(o.is_sweep_override() and o.key_or_group == "model" for o in parsed):
        return
    others = [str(o.input_line) for o in parsed if o not in model_keys and not str(o.key_or_group).startswith("hydra")
              and not o.is_sweep_override()]
    cfg = _compose("train", others)
    if cfg is None or not OmegaConf.is_dict(cfg.get("model")):
        return
    choice = str(cfg.hydra.runtime.choices.get("model"))
    for o in model_keys:
        leaf = str(o.key_or_group).split(".")[1]
        if leaf in cfg.model:
            continue
        for prefix in ("dy_", "od_"):
            twin = Path(CONF_DIR) / "model" / f"{prefix}{choice}.yaml"
            if twin.is_file() and leaf in (OmegaConf.load(twin) or {}):
                raise SystemExit(
                    f"error: model={choice} is a static network without {leaf} (a dynamic-convolution setting); "
                    f"use its dynamic twin: model={twin.stem} {str(o.input_line).lstrip('+')}")


def check_command_line(config_name: str, args: Sequence[str]) -> None:
    """What a tool's command line is checked for before Hydra runs: unused overrides in the
    checkpoint tools (:func:`refuse_unused_overrides`), dynamic keys on a static model in
    training (:func:`refuse_static_model_keys`). Nothing is checked for ``--help`` and the like."""
    if any(a.split("=", 1)[0] in _INFO_FLAGS for a in args):
        return
    if config_name in CHECKPOINT_TOOLS:
        refuse_unused_overrides(config_name, args)
    elif config_name == "train":
        refuse_static_model_keys(args)


def run_hydra_main(hydra_main: Callable[[], Any], config_name: str) -> Any:
    """Run a tool's ``@hydra.main`` function after checking its command line
    (:func:`check_command_line`); when the launch fails, name the closest existing key for each
    override of a key the config does not have (:func:`misspelled_key_hint`), under Hydra's own
    message."""
    check_command_line(config_name, sys.argv[1:])
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
    try:
        return run_hydra_main(hydra_main, config_name)
    except BrokenPipeError:
        # The reader of the output went away (``--help | head -3``): stop quietly, as a Unix tool
        # does, and keep the interpreter's final flush from raising again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
