"""Check the training states a resumed checkpoint holds before Lightning restores them.

A checkpoint whose model/data config matches the launch's can still carry malformed optimizer,
lr-scheduler or callback states (``optimizer_states=[5]``, an unknown schedule kind, a
ModelCheckpoint state without ``best_model_score``, a momentum buffer of the wrong shape). Lightning
and torch load them as they are and fail later with a traceback (``AttributeError``, ``KeyError``,
``ValueError``), or, since ``LRScheduler.load_state_dict`` sets every key as an attribute, carry them
into the run. :func:`check_training_states` compares them with what this launch builds (its task,
optimizer and scheduler, on the ``meta`` device: no memory, no data) and refuses the first broken
part in one line.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping, Sequence
from itertools import chain
from typing import Any

import torch
from hydra.utils import instantiate

from dyconv.errors import ConfigError
from dyconv.runs.rebuild import _no_pretrained  # the tools' rule: a stored pretrained flag fetches nothing

__all__ = ["SCHEDULE_KINDS", "check_training_states", "expected_states"]

log = logging.getLogger(__name__)

#: The decay shapes :class:`dyconv.tasks.schedulers.ScheduleFn` knows.
SCHEDULE_KINDS = frozenset({"constant", "cosine", "poly", "linear", "multistep"})
#: Lists with one entry per optimizer parameter group (their lengths must match this launch's).
_PER_GROUP = frozenset({"base_lrs", "_last_lr", "lr_lambdas", "param_groups"})
_MAX_DEPTH = 8
#: Attributes a scheduler has but never stores (``LRScheduler.load_state_dict`` would set them).
_NEVER_SET = frozenset({"optimizer", "params"})


class _Broken(Exception):
    """Internal: what is wrong, and where."""


def _plain_scalar(value: Any) -> bool:
    return value is None or type(value) in (bool, int, str) or (type(value) is float and math.isfinite(value))


def _like(stored: Any, fresh: Any, where: str, depth: int = 0) -> None:
    """Raise :class:`_Broken` unless ``stored`` has the type (and, for per-group lists and
    tensors, the length or shape) of ``fresh``, this launch's value at the same place."""
    if depth > _MAX_DEPTH:
        raise _Broken(f"{where} is nested deeper than any training state")
    if isinstance(fresh, torch.Tensor):
        if not isinstance(stored, torch.Tensor):
            raise _Broken(f"{where} is a {type(stored).__name__}, not a tensor")
        if fresh.dim() and tuple(stored.shape) != tuple(fresh.shape):
            raise _Broken(f"{where} has shape {list(stored.shape)}, not {list(fresh.shape)}")
    elif type(fresh) is bool:
        if type(stored) is not bool:
            raise _Broken(f"{where} is {_short(stored)}, not true/false")
    elif type(fresh) is int:
        if type(stored) is not int:
            raise _Broken(f"{where} is {_short(stored)}, not an integer")
    elif type(fresh) is float:
        if type(stored) not in (int, float) or not math.isfinite(stored):
            raise _Broken(f"{where} is {_short(stored)}, not a finite number")
    elif isinstance(fresh, Mapping):
        if not isinstance(stored, Mapping):
            raise _Broken(f"{where} is {_short(stored)}, not a mapping")
        for key, value in stored.items():
            if key in fresh:
                _like(value, fresh[key], f"{where}.{key}", depth + 1)
            elif not _plain_scalar(value) or key in _NEVER_SET or (type(key) is str and key.startswith("__")):
                raise _Broken(f"{where} holds {key!r}: {_short(value)}, which this run's state has not")
    elif isinstance(fresh, Sequence) and not isinstance(fresh, str):
        if not isinstance(stored, (list, tuple)):
            raise _Broken(f"{where} is {_short(stored)}, not a list")
        name = where.rsplit(".", 1)[-1]
        if name in _PER_GROUP and len(stored) != len(fresh):
            raise _Broken(f"{where} has {len(stored)} entries, this run's optimizer has {len(fresh)} parameter groups")
        for i, value in enumerate(stored):
            if fresh and (len(stored) == len(fresh) or not _plain_scalar(value)):
                _like(value, fresh[min(i, len(fresh) - 1)], f"{where}[{i}]", depth + 1)
            elif not _plain_scalar(value):
                raise _Broken(f"{where}[{i}] is {_short(value)}, not a plain value")
    elif (fresh is None or type(fresh) is str) and not _plain_scalar(stored):
        raise _Broken(f"{where} is {_short(stored)}, not a plain value")


def _short(value: Any) -> str:
    text = f"a {type(value).__name__}" if isinstance(value, (torch.Tensor, Mapping, list, tuple)) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def expected_states(run_config: Mapping[str, Any]) -> dict[str, Any]:
    """This launch's fresh states, built from ``run_config`` on the ``meta`` device as ``train``
    builds them: ``optimizer`` (with ``"shapes"``: parameter id -> shape), ``lr_schedulers`` (a
    list, as Lightning stores them) and ``train_epoch`` (training-metric name -> state name ->
    shape, what ``dyconv_train_epoch`` restores)."""
    task_cfg = dict(run_config["task"])
    task_cfg["compile"] = False
    scheduler_cfg = run_config.get("scheduler")
    with torch.device("meta"):
        model = instantiate(_no_pretrained(run_config["model"]))
        optimizer = instantiate(run_config["optimizer"])
        scheduler = (instantiate(scheduler_cfg, _convert_="all")
                     if isinstance(scheduler_cfg, Mapping) and scheduler_cfg.get("scheduler") else None)
        task = instantiate(task_cfg, _partial_=True, _convert_="all")(
            model=model, optimizer=optimizer, scheduler=scheduler, run_config=run_config)
        task._scheduler_steps = lambda: 1  # the run length only sets ScheduleFn.total, an int either way
        built = task.configure_optimizers()
    optimizer, schedulers = (built["optimizer"], [built["lr_scheduler"]["scheduler"]]) \
        if isinstance(built, Mapping) else (built, [])
    state = optimizer.state_dict()
    params = chain.from_iterable(g["params"] for g in optimizer.param_groups)  # the order state_dict numbers them
    state["shapes"] = {i: p.shape for i, p in enumerate(params)}
    train_epoch = {key: {name: tuple(v.shape) for name, v in m.metric_state.items() if isinstance(v, torch.Tensor)}
                   for key, m in task._train_epoch_members().items()}
    return {"optimizer": state, "lr_schedulers": [s.state_dict() for s in schedulers], "train_epoch": train_epoch}


def _check_optimizer(stored: Any, fresh: dict[str, Any] | None) -> None:
    """``fresh``: this launch's optimizer state (None: check the structure only)."""
    if not isinstance(stored, list) or len(stored) != 1:
        raise _Broken(f"optimizer_states is {_short(stored)}, not a list holding this run's one optimizer state")
    state = stored[0]
    where = "optimizer_states[0]"
    if not isinstance(state, Mapping) or not isinstance(state.get("state"), Mapping) \
            or not isinstance(state.get("param_groups"), list):
        raise _Broken(f"{where} is {_short(state)}, not an optimizer state ('state' and 'param_groups')")
    groups = state["param_groups"]
    if fresh is None:
        fresh = {"param_groups": [None] * len(groups), "shapes": None}
    fresh_groups = fresh["param_groups"]
    if len(groups) != len(fresh_groups):
        raise _Broken(f"{where}.param_groups has {len(groups)} groups, this run's optimizer has {len(fresh_groups)}")
    shapes: dict[int, torch.Size] = {}
    for i, (group, fresh_group) in enumerate(zip(groups, fresh_groups, strict=True)):
        here = f"{where}.param_groups[{i}]"
        params = group.get("params") if isinstance(group, Mapping) else None
        if not isinstance(params, list) or any(type(p) is not int for p in params):
            raise _Broken(f"{here} has no list of parameter ids")
        if fresh_group is None:
            shapes.update(dict.fromkeys(params))
            continue
        if len(params) != len(fresh_group["params"]):
            raise _Broken(f"{here} holds {len(params)} parameters, this run's has {len(fresh_group['params'])}")
        _like({k: v for k, v in group.items() if k != "params"},
              {k: v for k, v in fresh_group.items() if k != "params"}, here)
        shapes.update(zip(params, (fresh["shapes"][p] for p in fresh_group["params"]), strict=True))
    ids = list(chain.from_iterable(g["params"] for g in groups))
    if len(set(ids)) != len(ids):
        raise _Broken(f"{where}.param_groups name a parameter id twice")
    for pid, entry in state["state"].items():
        if pid not in shapes:
            raise _Broken(f"{where}.state holds {_short(pid)}, not a parameter id of its groups")
        if not isinstance(entry, Mapping):
            raise _Broken(f"{where}.state[{pid}] is {_short(entry)}, not a mapping")
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                if value.dim() and shapes[pid] is not None and tuple(value.shape) != tuple(shapes[pid]):
                    raise _Broken(f"{where}.state[{pid}].{name} has shape {list(value.shape)}, the parameter "
                                  f"{list(shapes[pid])}")
            elif not _plain_scalar(value):
                raise _Broken(f"{where}.state[{pid}].{name} is {_short(value)}, not a tensor or number")


def _check_schedulers(stored: Any, fresh: list[dict[str, Any]] | None) -> None:
    """``fresh``: this launch's scheduler states (None: check the structure only)."""
    if not isinstance(stored, list) or (fresh is not None and len(stored) != len(fresh)):
        raise _Broken(f"lr_schedulers is {_short(stored)}, this run has {len(fresh or ())} scheduler(s)")
    for i, state in enumerate(stored):
        where = f"lr_schedulers[{i}]"
        if not isinstance(state, Mapping):
            raise _Broken(f"{where} is {_short(state)}, not a scheduler state")
        if fresh is not None:
            _like(state, fresh[i], where)
        else:
            bad = next((k for k in state if k in _NEVER_SET or type(k) is not str or k.startswith("__")), None)
            if bad is not None:
                raise _Broken(f"{where} holds {bad!r}, which no scheduler state has")
            if not isinstance(state.get("lr_lambdas", []), list):
                raise _Broken(f"{where}.lr_lambdas is {_short(state['lr_lambdas'])}, not a list")
        for j, fn in enumerate(state.get("lr_lambdas") or []):
            if isinstance(fn, Mapping) and "kind" in fn and fn["kind"] not in SCHEDULE_KINDS:
                raise _Broken(f"{where}.lr_lambdas[{j}].kind is {_short(fn['kind'])}, not one of "
                              f"{sorted(SCHEDULE_KINDS)}")


def _check_train_epoch(stored: Any, fresh: Mapping[str, Mapping[str, tuple[int, ...]]] | None) -> None:
    """``dyconv_train_epoch``: the training metrics' sums at the checkpoint (restored into them)."""
    if stored is None:
        return
    where = "dyconv_train_epoch"
    if not isinstance(stored, Mapping) or type(stored.get("epoch")) is not int \
            or not isinstance(stored.get("metrics"), Mapping):
        raise _Broken(f"{where} is {_short(stored)}, not an epoch and its metrics' states")
    for key, saved in stored["metrics"].items():
        here = f"{where}.metrics[{str(key)[:60]!r}]"
        if not isinstance(saved, Mapping) or type(saved.get("update_count")) is not int \
                or not isinstance(saved.get("state"), Mapping):
            raise _Broken(f"{here} is {_short(saved)}, not a metric's update_count and state")
        shapes = (fresh or {}).get(key, {})
        for name, value in saved["state"].items():
            if name in shapes and (not isinstance(value, torch.Tensor) or tuple(value.shape) != shapes[name]):
                shown = list(value.shape) if isinstance(value, torch.Tensor) else _short(value)
                raise _Broken(f"{here}.state.{name} is {shown}, this run's metric holds shape {list(shapes[name])}")


def _check_rng(stored: Any, key: str) -> None:
    """``rng_states`` (one process) or ``rng_states_per_rank`` (a list of them), as
    :func:`dyconv.callbacks.rng.set_rng_states` restores them."""
    from dyconv.callbacks.rng import get_rng_states

    fresh = get_rng_states()
    fresh.pop("cuda", None)
    states = stored if key == "rng_states_per_rank" else [stored]
    if not isinstance(states, list):
        raise _Broken(f"{key} is {_short(stored)}, not a list of generator states")
    for i, state in enumerate(states):
        where = key if key == "rng_states" else f"{key}[{i}]"
        if not isinstance(state, Mapping) or any(k not in state for k in fresh):
            raise _Broken(f"{where} is {_short(state)}, not the python, numpy and torch generator states")
        _like({k: state[k] for k in fresh}, fresh, where)
        if len(state["python"].get("state", ())) != len(fresh["python"]["state"]):
            raise _Broken(f"{where}.python.state has {len(state['python']['state'])} entries, not "
                          f"{len(fresh['python']['state'])}")
        cuda = state.get("cuda")
        if cuda is not None and not (isinstance(cuda, list) and all(isinstance(t, torch.Tensor) for t in cuda)):
            raise _Broken(f"{where}.cuda is {_short(cuda)}, not a list of generator states")


_SCORE = "a number, a 0-d tensor or null"
#: Lightning's ModelCheckpoint.load_state_dict: what it reads, and what each must be.
_CHECKPOINT_FIELDS: dict[str, tuple[bool, str]] = {
    "best_model_path": (True, "str"), "best_model_score": (True, "score"), "dirpath": (False, "str?"),
    "kth_best_model_path": (False, "str"), "kth_value": (False, "score"), "last_model_path": (False, "str"),
    "best_k_models": (False, "scores"), "current_score": (False, "score"), "monitor": (False, "str?"),
}


def _is_score(value: Any) -> bool:
    if isinstance(value, torch.Tensor):
        return value.dim() == 0
    return value is None or (type(value) in (int, float))


def _check_callbacks(stored: Any) -> None:
    if stored is None:
        return
    if not isinstance(stored, Mapping):
        raise _Broken(f"callbacks is {_short(stored)}, not a mapping of callback states")
    for key, state in stored.items():
        where = f"callbacks[{str(key)[:60]!r}]"
        if type(key) is not str or not isinstance(state, Mapping):
            raise _Broken(f"{where} is {_short(state)}, not a callback state")
        if "best_model_path" in state or key.split("{", 1)[0].endswith("Checkpoint"):
            for field, (required, kind) in _CHECKPOINT_FIELDS.items():
                if field not in state:
                    if required:
                        raise _Broken(f"{where} has no {field!r} (a ModelCheckpoint state holds one)")
                    continue
                value = state[field]
                ok = {"str": type(value) is str, "str?": value is None or type(value) is str,
                      "score": _is_score(value),
                      "scores": isinstance(value, Mapping) and all(type(k) is str and _is_score(v)
                                                                   for k, v in value.items())}[kind]
                if not ok:
                    wanted = {"str": "a path", "str?": "a string or null", "score": _SCORE,
                              "scores": f"a mapping of paths to {_SCORE}"}[kind]
                    raise _Broken(f"{where}.{field} is {_short(value)}, not {wanted}")
        if key.startswith("TemperatureScheduler") and not _is_score(state.get("current")):
            raise _Broken(f"{where}.current is {_short(state.get('current'))}, not a temperature")


def check_training_states(checkpoint: Mapping[str, Any], run_config: Mapping[str, Any],
                          source: str | os.PathLike[str]) -> None:
    """Refuse (one line naming the broken part) a resumed checkpoint whose optimizer, lr-scheduler,
    callback or loop states this launch's run could not restore as they are."""
    try:
        loops = checkpoint.get("loops")
        if loops is not None and not (isinstance(loops, Mapping) and all(isinstance(v, Mapping)
                                                                           for v in loops.values())):
            raise _Broken(f"loops is {_short(loops)}, not a mapping of loop states")
        _check_callbacks(checkpoint.get("callbacks"))
        if "optimizer_states" in checkpoint or "lr_schedulers" in checkpoint:
            try:
                fresh: dict[str, Any] = expected_states(run_config)
            except Exception as e:  # say, an optimizer option the meta device lacks (fused=true)
                log.info("Checking the training states of %s by their structure only (this run's optimizer cannot "
                         "be built on the meta device: %s: %s)", source, type(e).__name__, str(e)[:200])
                fresh = {}
            _check_optimizer(checkpoint.get("optimizer_states"), fresh.get("optimizer"))
            _check_schedulers(checkpoint.get("lr_schedulers", []), fresh.get("lr_schedulers"))
            _check_train_epoch(checkpoint.get("dyconv_train_epoch"), fresh.get("train_epoch"))
        for key in ("rng_states", "rng_states_per_rank"):
            if checkpoint.get(key) is not None:
                _check_rng(checkpoint[key], key)
    except _Broken as e:
        raise ConfigError(f"refusing to resume {source}: its {e}; the checkpoint is damaged or was edited, resume "
                          "from another one (ckpt_path=<file>) or start a new run (run_name=<new name>)") from None

