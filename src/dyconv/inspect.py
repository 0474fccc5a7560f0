"""Inspect the learned attention of a checkpoint: ``python -m dyconv.inspect ckpt_path=PATH``.

    python -m dyconv.inspect ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt
    python -m dyconv.inspect ckpt_path=... split=test max_batches=20 temperatures=[1,10]
    python -m dyconv.inspect ckpt_path=... output_dir=/tmp/attn data.root=/new/place

The model and data are rebuilt from the checkpoint alone (``data.<key>=...`` overrides the stored
data config). Forward hooks (:class:`~dyconv.analysis.AttentionRecorder`) collect what every
dynamic layer's routing outputs over the split, and per layer, by its routing (shown in every
table and figure), the tool reports:

- ``softmax`` (the paper): the mean entropy of ``pi(x)`` against its maximum log K (1 = uniform,
  0 = one kernel per sample), the mean weight of each kernel, how often each kernel wins
  (argmax), the mean attention per class and the std across samples (input dependence);
- ``sigmoid`` (CondConv): the gates are independent and do not sum to 1, so no entropy over K:
  the mean gate of each kernel, how often each gate is above 0.5, the mean sum of the gates,
  wins, per-class mean gates, and the entropy of the gates divided by their sum (labelled so);
- ``omni`` (ODConv): its kernel softmax as ``softmax``, plus the mean, the spread across
  channels and the input dependence (mean over channels of the std across samples) of its
  input-channel, output-channel and spatial sigmoid attentions.

It then re-runs the first ``temperature_batches`` batches at several temperatures (the trained
one included, restored afterwards) to show how sharp the kernel softmax is at each (``sigmoid``
layers ignore the temperature and are left out).

Segmentation runs: labels are per pixel while the attention is per image, so there are no
per-class means (``per_class.csv`` is not written).

Writes to ``<run dir>/inspect/<split>_<time>/`` (the time to the microsecond, as eval's;
``output_dir=`` overrides): ``layers.csv`` (one row per layer), ``per_class.csv`` (layer x class),
``temperature.csv``, PNG plots and ``resolved_config.yaml``: the resolved config of the inspection
that wrote them, with the absolute checkpoint path and its epoch and global step. An inspection
never replaces or mixes with an earlier one's files: when the folder already holds an inspection
(a fixed ``output_dir=``), the files go to the first free ``<folder>+1``, ``+2``, ... (a warning
names it; their ``resolved_config.yaml`` records that folder as ``output_dir``), and every file is
produced before the first is written.

Run folder: Hydra writes ``.hydra/`` and ``inspect.log`` into the output folder before the tool
starts. A launch refused before it writes anything (``split=train2``, a missing checkpoint, ...)
removes that folder again when it holds nothing else. A relaunch with a fixed ``output_dir`` that
an earlier launch wrote into gets the first unused ``<output_dir>+N`` for its Hydra files, its log
and its outputs: each launch's folder holds only its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from dyconv.cli import CONF_DIR, removing_stub, route_lightning_logs, run_job, tool_main
from dyconv.config import to_plain
from dyconv.inspection import Inspection, format_report, inspect_checkpoint, temperature_sweep, write_outputs
from dyconv.runs.disks import check_writable, naming_full_disk
from dyconv.runtime import tune_malloc

__all__ = ["Inspection", "format_report", "inspect_checkpoint", "main", "temperature_sweep", "write_outputs"]

USAGE = "python -m dyconv.inspect ckpt_path=PATH [split=val|test] [output_dir=DIR] [max_batches=N]"


def run_inspection(cfg: DictConfig) -> Inspection:
    """The Hydra job: inspect ``cfg.ckpt_path``, write the files, print the report. A refusal
    removes the folder Hydra made if it holds nothing else (see the module docstring)."""
    with removing_stub(cfg, "inspect"):
        route_lightning_logs()
        if cfg.get("tune_malloc", True):
            tune_malloc()
        torch.manual_seed(int(cfg.seed))
        overrides = to_plain(cfg.get("data")) or {}
        max_batches = cfg.get("max_batches")
        # A single run writes beside its Hydra files (hydra.run.dir: output_dir, or its first unused
        # <output_dir>+N); a multirun's jobs run in the sweep's folders and write to output_dir.
        single = HydraConfig.initialized() and HydraConfig.get().mode == RunMode.RUN
        out = Path(HydraConfig.get().runtime.output_dir) if single else Path(cfg.output_dir).expanduser().absolute()
        check_writable(out, "output_dir")  # before computing anything
        result = inspect_checkpoint(
            cfg.ckpt_path,
            cfg.split,
            max_batches=None if max_batches is None else int(max_batches),
            temperatures=[float(t) for t in (cfg.get("temperatures") or [])],
            temperature_batches=int(cfg.temperature_batches),
            data_overrides=overrides,
            device=str(cfg.device),
        )
        with naming_full_disk(out, "the inspection's files", "free some space there, or pass output_dir=<a folder "
                              "on another disk>; nothing of an earlier inspection was replaced"):
            write_outputs(result, out, cfg)
        print(format_report(result), flush=True)
        return result


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="inspect")
def _main(cfg: DictConfig) -> Any:
    return run_job(run_inspection, cfg)


def main() -> None:
    """Console-script entry point."""
    tool_main(_main, "inspect", USAGE)


if __name__ == "__main__":
    main()
