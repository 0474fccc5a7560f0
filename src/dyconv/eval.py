"""Evaluate a checkpoint: ``python -m dyconv.eval ckpt_path=PATH [split=test|val]`` (``dyconv-eval``).

The model, task and data are rebuilt from the checkpoint alone; ``data.<key>=...`` overrides the
stored data config (``data.root`` when the dataset moved, ``data.batch_size``, ...). Results go
to ``<run dir>/eval/<split>_<time>/metrics.json`` (the time to the microsecond) and are printed.
An evaluation never replaces an earlier one's ``metrics.json``: when its folder already holds one
(two evaluations started together, or a fixed ``hydra.run.dir``), it writes to the first free
``<folder>+1``, ``<folder>+2``, ... instead.

``metrics.json`` records what produced it: the absolute checkpoint path, its ``epoch`` and
``global_step``, and ``config``: the evaluation's resolved config. That record, written only on
success, is what describes the results: Hydra writes ``.hydra/`` and ``eval.log`` into the folder
before the evaluation starts, so a failed launch into a folder that already holds results (a fixed
``hydra.run.dir``) leaves there the ``.hydra/`` of the failed launch. A launch refused before it
writes anything (``split=train2``, a missing checkpoint, ...) removes the folder Hydra made for it
when that holds nothing but Hydra's files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from dyconv.cli import CONF_DIR, removing_stub, route_lightning_logs, run_job, tool_main
from dyconv.config import resolved_config, to_plain
from dyconv.errors import ConfigError
from dyconv.runs.disks import naming_full_disk
from dyconv.runs.layout import METRICS_FILE
from dyconv.runs.rebuild import load_trained_run
from dyconv.runtime import tune_malloc
from dyconv.utils.files import create_new_file, first_free_folder

log = logging.getLogger("dyconv.eval")

RESULT_FILE = METRICS_FILE
USAGE = "python -m dyconv.eval ckpt_path=PATH [split=test|val] [data.root=DIR] [trainer=gpu]"


def write_result(out_dir: Path, text: str) -> Path:
    """Write ``text`` as ``out_dir/metrics.json``, or, when that folder already holds one, as the
    ``metrics.json`` of the first free ``<out_dir>+1``, ``+2``, ...; never replaces a result.
    Returns the file written."""
    folder = first_free_folder(out_dir, lambda f: create_new_file(f / RESULT_FILE, text), "evaluation results")
    return folder / RESULT_FILE


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test (or validate) a checkpoint's model on its data; returns the metrics. A refusal removes
    the folder Hydra made if it holds nothing else (see the module docstring)."""
    import lightning as L  # lazy: --help and --cfg stay fast

    with removing_stub(cfg, "eval"):
        route_lightning_logs()
        if cfg.split not in ("test", "val"):
            raise ConfigError(f"split must be 'test' or 'val', got {cfg.split!r}")
        if cfg.get("tune_malloc", True):
            tune_malloc()
        run = load_trained_run(cfg.ckpt_path)
        L.seed_everything(cfg.seed, workers=True)
        overrides = to_plain(cfg.get("data")) or {}
        datamodule = run.datamodule(overrides)
        trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_model_summary=False)
        fn = trainer.test if cfg.split == "test" else trainer.validate
        (results,) = fn(run.task, datamodule=datamodule)
        metrics = {k: float(v) for k, v in results.items() if torch.as_tensor(v).numel() == 1}
        if trainer.is_global_zero:
            record = {"ckpt_path": str(run.ckpt_path), "split": cfg.split, "metrics": metrics,
                      "epoch": run.checkpoint.get("epoch"), "global_step": run.checkpoint.get("global_step"),
                      "config": resolved_config(cfg)}
            out = Path(cfg.paths.output_dir)
            with naming_full_disk(out, "the evaluation's metrics.json", "free some space there, or pass "
                                  "hydra.run.dir=<a folder on another disk>; the checkpoint is untouched"):
                result = write_result(out, json.dumps(record, indent=2))
            shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
            print(f"Evaluated {run.ckpt_path} on {cfg.split}: {shown}")
            print(f"Results: {result}")
        return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def _main(cfg: DictConfig) -> Any:
    return run_job(evaluate, cfg)


def main() -> None:
    """Console-script entry point (``dyconv-eval``)."""
    tool_main(_main, "eval", USAGE)


if __name__ == "__main__":
    main()
