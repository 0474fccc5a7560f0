"""Train, validate and test a model: ``python -m dyconv.train [overrides]`` (``dyconv-train``).

    python -m dyconv.train                                   # offline default, CPU, minutes
    python -m dyconv.train model=dy_resnet10 data=tinyimagenet trainer=gpu
    python -m dyconv.train experiment=tinyimagenet_dy_resnet10 ckpt_path=last   # resume
    python -m dyconv.train -m model=simple_cnn,dy_simple_cnn seed=1,2            # sweep

Everything of a run lands in one stable directory (``logs/<task_name>/runs/<run_name>`` or
``hydra.run.dir``): ``.hydra/`` (configs, one copy per launch), ``checkpoints/`` (``last.ckpt``
and the best), ``tensorboard/``, ``metrics.json`` and the log file.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import Any

import hydra
from omegaconf import DictConfig

from dyconv.checks import check_trainable, validate_config
from dyconv.cli import CONF_DIR, run_job, tool_main
from dyconv.errors import ConfigError

__all__ = ["CONF_DIR", "check_trainable", "main", "objective", "train", "validate_config"]  # noqa: F822 (train: lazy)


def __getattr__(name: str) -> Any:
    # The training library (torch, Lightning) loads when a job runs, so --help and --cfg stay fast.
    if name == "train":
        from dyconv.runs.training import train

        return train
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def objective(cfg: DictConfig, metrics: dict[str, float]) -> float | dict[str, float]:
    """What the Hydra job returns: the metrics dict, or, when the config names an
    ``optimized_metric`` (``conf/hparams_search/``), that metric as the float a sweeper such as
    Optuna minimises or maximises."""
    key = cfg.get("optimized_metric")
    if not key:
        return metrics
    if key not in metrics:
        raise ConfigError(
            f"optimized_metric={key!r} is not among this run's final metrics ({', '.join(sorted(metrics)) or 'none'}); "
            "pick one of them (validation must run: no trainer.limit_val_batches=0, train=true)"
        )
    return float(metrics[key])


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def _main(cfg: DictConfig) -> Any:
    from dyconv.runs.training import train  # see __getattr__

    return run_job(lambda c: objective(c, train(c)), cfg)


def _require_sweeper(argv: list[str]) -> None:
    """``hparams_search=...`` needs Hydra's Optuna sweeper; say how to install it instead of
    Hydra's "could not override hydra/sweeper" composition error."""
    wanted = any(a.lstrip("+").startswith("hparams_search=") and not a.endswith("=null") for a in argv)
    if wanted and importlib.util.find_spec("hydra_plugins.hydra_optuna_sweeper") is None:
        sys.exit("error: hparams_search needs Hydra's Optuna sweeper: pip install 'dyconv[optuna]'")


def main() -> None:
    """Console-script entry point (``dyconv-train``)."""
    _require_sweeper(sys.argv[1:])
    tool_main(_main, "train")


if __name__ == "__main__":
    sys.exit(main())
