"""Evaluate a checkpoint: ``python -m dyconv.eval ckpt_path=PATH [split=test|val]`` (``dyconv-eval``).

The model, task and data are rebuilt from the checkpoint alone; ``data.<key>=...`` overrides the
stored data config (``data.root`` when the dataset moved, ``data.batch_size``, ...). Results go
to ``<run dir>/eval/<split>_<time>/metrics.json`` and are printed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from dyconv.cli import CONF_DIR, require_ckpt_path, route_lightning_logs, run_job
from dyconv.errors import ConfigError
from dyconv.utils.rebuild import load_trained_run

log = logging.getLogger("dyconv.eval")



def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Test (or validate) a checkpoint's model on its data; returns the metrics."""
    import lightning as L
    import torch
    from hydra.utils import instantiate

    from dyconv.runtime import tune_malloc

    route_lightning_logs()
    if cfg.split not in ("test", "val"):
        raise ConfigError(f"split must be 'test' or 'val', got {cfg.split!r}")
    if cfg.get("tune_malloc", True):
        tune_malloc()
    run = load_trained_run(cfg.ckpt_path)
    L.seed_everything(cfg.seed, workers=True)
    overrides = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else {}
    datamodule = run.datamodule(overrides)
    trainer: L.Trainer = instantiate(cfg.trainer, logger=False, callbacks=[], enable_model_summary=False)
    fn = trainer.test if cfg.split == "test" else trainer.validate
    (results,) = fn(run.task, datamodule=datamodule)
    metrics = {k: float(v) for k, v in results.items() if torch.as_tensor(v).numel() == 1}
    if trainer.is_global_zero:
        out = Path(cfg.paths.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        record = {"ckpt_path": str(run.ckpt_path), "split": cfg.split, "metrics": metrics}
        (out / "metrics.json").write_text(json.dumps(record, indent=2))
        shown = "  ".join(f"{k}={v:.4f}" for k, v in sorted(metrics.items()))
        print(f"Evaluated {run.ckpt_path} on {cfg.split}: {shown}")
        print(f"Results: {out / 'metrics.json'}")
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="eval")
def _main(cfg: DictConfig) -> Any:
    return run_job(evaluate, cfg)


def main() -> None:
    """Console-script entry point (``dyconv-eval``)."""
    from dyconv.utils.console import quiet_console

    quiet_console()
    require_ckpt_path("python -m dyconv.eval ckpt_path=PATH [split=test|val] [data.root=DIR] [trainer=gpu]")
    _main()


if __name__ == "__main__":
    main()
