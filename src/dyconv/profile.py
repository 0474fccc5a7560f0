"""Whole-model profile: every registered model, static next to dynamic, at its natural input size.

    python -m dyconv.profile                                   # every registered model
    python -m dyconv.profile models=resnet10,dy_resnet10 rounds=10
    python -m dyconv.profile models=mobilenetv2 batch=32 threads=2 out=docs/profile.md

Options (``key=value`` overrides of the Hydra config ``conf/profile.yaml``): ``models`` (a list,
or comma-separated names; a static or ``dy_`` name brings its twin along), ``batch``
(training-step batch; default 32, 8 for DeepLabV3+), ``rounds`` (timed rounds; default 5),
``threads`` (``torch.set_num_threads``), ``device``
(``cpu`` or ``cuda``), ``dtype`` (``fp32``, default, or ``bf16``: autocast for the forward
passes), ``size`` (override every input side), ``stat`` (``median``, default, or
``min``: the least disturbed round on a shared machine), ``tune_malloc`` (default true;
``--no-tune-malloc`` also turns it off, see :mod:`dyconv.runtime`), ``out`` (also write the
table, with the command, to this Markdown file).

Per model: parameters, forward FLOPs of one image (``torch.utils.flop_counter``, 2 per MAC),
batch-1 eval latency, and one training step (forward, cross-entropy, backward, SGD step) at the
training batch. Static and dynamic are timed interleaved in one process, the order alternating
each round; a ratio is the median over rounds of that round's dynamic / static time (with
``stat=min``: the ratio of the minima).
Nothing here imports Lightning (a profile starts in a few seconds).
"""

from __future__ import annotations

import os
import shlex
import sys
from collections.abc import Sequence
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import OmegaConf

from dyconv.cli import quiet_console
from dyconv.config import CONF_DIR, to_plain
from dyconv.models import get_model_builder
from dyconv.profiling import (
    DTYPES,
    NATURAL_INPUTS,
    STATS,
    ModelInput,
    environment,
    format_table,
    one_line,
    profile_models,
)
from dyconv.runtime import tune_malloc
from dyconv.utils import files

__all__ = ["NATURAL_INPUTS", "ModelInput", "format_table", "main", "parse_args", "profile_models"]


def _bool(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected a boolean, got {value!r}")


def _check_out(path: str) -> None:
    """Fail before any work if ``path`` cannot be written: its folder must exist or be creatable,
    and ``path`` must not be a folder."""
    folder = os.path.dirname(os.path.abspath(path))
    problem = files.output_folder_problem(folder)
    if problem:
        raise SystemExit(f"dyconv.profile: out={path}: cannot {problem[0]} its folder {folder}: {problem[1]}")
    if os.path.isdir(path):
        raise SystemExit(f"dyconv.profile: out={path} is a folder; name a Markdown file")


def _refuse_unknown_option(key: str) -> None:
    """One line for a key ``conf/profile.yaml`` does not have (``+foo=1`` would be ignored,
    ``model=resnet10`` gets Hydra's advice to add it with ``+``), naming the options."""
    options = list(OmegaConf.load(os.path.join(CONF_DIR, "profile.yaml")))
    name = key.strip().lstrip("+~")
    if name not in options:
        raise SystemExit(f"dyconv.profile: {key.strip()} is not an option; it takes {', '.join(options)} "
                         "(key=value, e.g. models=resnet10,dy_resnet10)")


def parse_args(argv: Sequence[str]) -> dict[str, Any]:
    """The options: ``conf/profile.yaml`` composed with the command-line overrides (Hydra's compose
    API), then checked. ``models=a,b`` is read as the list ``[a,b]``; ``--no-tune-malloc`` as
    ``tune_malloc=false``."""
    overrides = []
    for arg in argv:
        if arg in ("-h", "--help"):
            print(__doc__)
            raise SystemExit(0)
        if arg == "--no-tune-malloc":
            arg = "tune_malloc=false"
        key, sep, value = arg.partition("=")
        if sep and key.strip() == "models" and "," in value and not value.startswith("["):
            arg = f"models=[{value}]"
        _refuse_unknown_option(key)
        overrides.append(arg)
    try:
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            cfg = compose("profile", overrides=overrides)
    except HydraException as e:
        raise SystemExit(f"dyconv.profile: {e}; options are the keys of conf/profile.yaml") from None
    opts = to_plain(cfg)
    if isinstance(opts["models"], str):
        opts["models"] = [m.strip() for m in opts["models"].split(",") if m.strip()]
    if opts["models"] is not None:
        if not isinstance(opts["models"], list):
            raise SystemExit(f"dyconv.profile: models must be a list of model names, got {opts['models']!r}")
        opts["models"] = [str(m) for m in opts["models"]]
        if not opts["models"]:
            raise SystemExit("dyconv.profile: models is empty: name at least one model (models=resnet10,...), "
                             "or leave it out (models=null) to profile every registered model")
        for name in opts["models"]:
            try:
                get_model_builder(name)
            except ValueError as e:
                raise SystemExit(f"dyconv.profile: {one_line(e)}") from None
    for key in ("batch", "rounds", "threads", "size"):
        v = opts[key]
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise SystemExit(f"dyconv.profile: {key} must be an integer >= 1, got {v!r}")
    if not isinstance(opts["tune_malloc"], bool):
        try:
            opts["tune_malloc"] = _bool(str(opts["tune_malloc"]))
        except ValueError as e:
            raise SystemExit(f"dyconv.profile: tune_malloc: {e} (true or false)") from None
    if opts["out"] and not isinstance(opts["out"], str):
        raise SystemExit(f"dyconv.profile: out must be a file path, got {opts['out']!r}")
    for key, allowed in (("stat", STATS), ("dtype", DTYPES), ("device", ("cpu", "cuda"))):
        if opts[key] not in allowed:
            raise SystemExit(f"dyconv.profile: {key} must be one of {sorted(allowed)}, got {opts[key]!r}")
    return opts


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dyconv.profile``."""
    quiet_console()
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(argv)
    if opts["out"]:
        _check_out(opts["out"])
    tuned = tune_malloc() if opts["tune_malloc"] else False
    if opts["threads"] is not None:
        torch.set_num_threads(opts["threads"])
    if opts["device"] == "cuda" and not torch.cuda.is_available():
        raise SystemExit("dyconv.profile: device=cuda but CUDA is not available")
    env = environment(opts, tuned)
    print(f"malloc tuning: {'on' if tuned else 'off'} (tune_malloc=false or --no-tune-malloc to disable)", flush=True)
    print(env, flush=True)
    try:
        results = profile_models(
            opts["models"],
            batch=opts["batch"],
            rounds=opts["rounds"],
            device=opts["device"],
            size=opts["size"],
            stat=opts["stat"],
            dtype=opts["dtype"],
            log=lambda s: print(s, file=sys.stderr, flush=True),
        )
    except ValueError as e:  # an unknown model, an input a model cannot take
        raise SystemExit(f"dyconv.profile: {one_line(e)}") from None
    table = format_table(results)
    print(table, flush=True)
    if opts["out"]:
        command = "python -m dyconv.profile " + " ".join(shlex.quote(a) for a in argv)
        text = (
            "# Whole-model profile\n\n"
            "Static and dynamic (K=4) networks at their natural input size, timed interleaved in one process. "
            "FLOPs: one image, forward, `torch.utils.flop_counter` (2 per multiply-add). Latency: batch 1, eval. "
            "Train step: forward + cross-entropy + backward + SGD step. Ratios (x): dynamic / static"
            + (", the median over rounds of each round's ratio" if opts["stat"] == "median" else ", of the minima")
            + ". Generated by:\n\n"
            f"```\n{command.strip()}\n```\n\n{env}.\n\n{table}\n"
        )
        try:
            files.atomic_write_text(opts["out"], text)
        except OSError as e:
            raise SystemExit(f"dyconv.profile: could not write out={opts['out']}: {e.strerror or e}") from None
        print(f"wrote {opts['out']}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
