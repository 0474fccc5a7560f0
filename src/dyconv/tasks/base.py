"""What classification and segmentation share: optimiser/scheduler wiring, parameter groups,
optional ``torch.compile``, the training-epoch metrics (kept across a resume) and the run config
stored in every checkpoint."""

from __future__ import annotations

import functools
import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric, Metric, MetricCollection

from dyconv.layers import DynamicConvNd

__all__ = ["BaseTask", "attention_parameters", "split_weight_decay"]

log = logging.getLogger(__name__)

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def split_weight_decay(named_params: list[tuple[str, nn.Parameter]], modules: Mapping[str, nn.Module]):
    """(decay, no_decay): biases (any shape, e.g. DynamicConv2d's (K, C)) and norm weights
    get no weight decay."""
    decay, no_decay = [], []
    for name, p in named_params:
        owner = modules.get(name.rpartition(".")[0])
        if name.endswith("bias") or isinstance(owner, _NORMS):
            no_decay.append(p)
        else:
            decay.append(p)
    return decay, no_decay


def attention_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of every dynamic conv's attention (all of a :class:`DynamicConvNd`'s own
    parameters except its K kernels ``weight`` and their ``bias``), in ``model.parameters()`` order."""
    ids = set()
    for m in model.modules():
        if isinstance(m, DynamicConvNd):
            kernels = {id(m.weight), id(m.bias)}
            ids.update(id(p) for p in m.parameters() if id(p) not in kernels)
    return [p for p in model.parameters() if id(p) in ids]


class BaseTask(L.LightningModule):
    """LightningModule around any ``nn.Module``.

    Each subclass declares, once, what it is: :attr:`kind` (``"classification"`` or
    ``"segmentation"``: stored in every checkpoint, read by every tool and callback) and the
    metric that selects its best checkpoint (:attr:`monitor`, :attr:`monitor_mode`).

    Args:
        model: the network (built by ``dyconv.models.create_model`` in the configs).
        optimizer: a callable ``params -> Optimizer`` (a Hydra ``_partial_``), e.g.
            ``functools.partial(torch.optim.SGD, lr=0.1, momentum=0.9)``.
        scheduler: ``{"scheduler": params -> LRScheduler partial, "interval": "epoch"|"step",
            "frequency": 1}`` or None. A ``total_steps`` argument the partial leaves unbound is
            filled with the number of scheduler steps of the run.
        lr_mult: learning-rate multiplier per parameter group of ``model.param_groups()``
            (models that define it, e.g. DeepLabV3+: ``{"backbone": 1.0, "head": 10.0}``).
        no_weight_decay_norm_bias: exclude norm weights and biases from weight decay.
        attention_weight_decay: apply the optimizer's weight decay to the dynamic convs' attention
            parameters (:func:`attention_parameters`); False puts them in the no-decay group (an
            ablation of what may keep the attention uniform).
        compile: run the network through ``torch.compile`` (checkpoint keys are unchanged).
        monitor, monitor_mode: the metric that selects the best checkpoint (default: the
            task class's :attr:`monitor` / :attr:`monitor_mode`).
        run_config: plain-dict config (model, data, task, ...) stored in each checkpoint so
            tools can rebuild everything from the checkpoint alone.
    """

    kind: ClassVar[str] = "classification"
    monitor: str = "val/acc"
    monitor_mode: str = "max"

    def __init__(
        self,
        model: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Mapping[str, Any] | None = None,
        lr_mult: Mapping[str, float] | None = None,
        no_weight_decay_norm_bias: bool = False,
        attention_weight_decay: bool = True,
        compile: bool = False,
        monitor: str | None = None,
        monitor_mode: str | None = None,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        # Hyperparameters: plain types only (no nn.Module / partial pickled into checkpoints);
        # the run config is stored once, under checkpoint["dyconv"] (on_save_checkpoint).
        self.save_hyperparameters(ignore=["model", "optimizer", "scheduler", "run_config"], logger=False)
        self.model = model
        self.optimizer_factory = optimizer
        self.scheduler_config = dict(scheduler) if scheduler else None
        self.lr_mult = dict(lr_mult or {})
        self.no_weight_decay_norm_bias = no_weight_decay_norm_bias
        self.attention_weight_decay = bool(attention_weight_decay)
        self.compile = compile
        self.monitor = type(self).monitor if monitor is None else monitor
        self.monitor_mode = type(self).monitor_mode if monitor_mode is None else monitor_mode
        self.run_config = dict(run_config or {})
        # Not registered as a submodule: state_dict keys stay "model.*" with compile on.
        object.__setattr__(self, "_net", torch.compile(model) if compile else model)
        # Mean training loss over the epoch (batch-size weighted); subclasses add their own
        # training metrics in train_epoch_metrics(). Their states are not in the state_dict.
        self.train_loss = MeanMetric()
        self._train_state_epoch: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._net(x)

    # ------------------------------------------------------------------ optimisation
    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimizer param groups: the model's own groups (lr multipliers) x decay split (norm
        weights and biases with ``no_weight_decay_norm_bias``, attention parameters without
        ``attention_weight_decay``: in ``<group>_no_decay`` with weight decay 0)."""
        named = dict(self.model.named_parameters())
        by_id = {id(p): n for n, p in named.items()}
        if hasattr(self.model, "param_groups"):
            groups = {g: list(ps) for g, ps in self.model.param_groups().items()}
        else:
            groups = {"all": list(named.values())}
        unknown = set(self.lr_mult) - set(groups)
        if unknown:
            raise ValueError(f"task.lr_mult names groups {sorted(unknown)}; the model's groups are {sorted(groups)}")
        base_lr = self._base_lr()
        modules = dict(self.model.named_modules())
        attention = set() if self.attention_weight_decay else {id(p) for p in attention_parameters(self.model)}
        out = []
        for group, params in groups.items():
            params = [p for p in params if p.requires_grad]
            mult = float(self.lr_mult.get(group, 1.0))
            extra = {"lr": base_lr * mult} if base_lr is not None else {}
            if self.no_weight_decay_norm_bias:
                _, no_decay = split_weight_decay([(by_id[id(p)], p) for p in params], modules)
                skip = attention | {id(p) for p in no_decay}
            else:
                skip = attention
            decay = [p for p in params if id(p) not in skip]
            no_decay = [p for p in params if id(p) in skip]
            if decay:
                out.append({"params": decay, "name": group, **extra})
            if no_decay:
                out.append({"params": no_decay, "name": f"{group}_no_decay", "weight_decay": 0.0, **extra})
        return out

    def _base_lr(self) -> float | None:
        factory = self.optimizer_factory
        if isinstance(factory, functools.partial):
            lr = factory.keywords.get("lr")
            return float(lr) if lr is not None else None
        return None

    def _scheduler_steps(self) -> int:
        interval = self.scheduler_config.get("interval", "epoch") if self.scheduler_config else "epoch"
        if interval == "step":
            return int(self.trainer.estimated_stepping_batches)
        max_epochs = self.trainer.max_epochs
        if max_epochs is None or max_epochs < 0:
            raise ValueError("an epoch-interval scheduler needs trainer.max_epochs (or set scheduler total_steps)")
        return int(max_epochs)

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("no optimizer configured: set the optimizer group (optimizer=sgd|adam|adamw)")
        optimizer = self.optimizer_factory(self.parameter_groups())
        if not self.scheduler_config or self.scheduler_config.get("scheduler") is None:
            return optimizer
        factory = self.scheduler_config["scheduler"]
        params = inspect.signature(factory).parameters
        bound = factory.keywords if isinstance(factory, functools.partial) else {}
        kwargs = {}
        if "total_steps" in params and bound.get("total_steps") is None:
            kwargs["total_steps"] = max(1, self._scheduler_steps())
        scheduler = factory(optimizer, **kwargs)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": self.scheduler_config.get("interval", "epoch"),
                "frequency": int(self.scheduler_config.get("frequency", 1)),
                "monitor": self.monitor,
            },
        }

    # ------------------------------------------------------------------ training-epoch metrics
    def train_epoch_metrics(self) -> dict[str, Metric | MetricCollection]:
        """What accumulates over a training epoch and is logged when it ends: ``train_loss``
        here; subclasses add theirs (classification: ``train_metrics``)."""
        return {"train_loss": self.train_loss}

    def log_train_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """``train/loss_step`` now; the epoch mean goes to ``train/loss_epoch`` (and
        ``train/loss`` in the callback metrics) when the epoch ends."""
        self.train_loss.update(loss.detach(), weight=batch_size)
        self.log("train/loss_step", loss, on_step=True, on_epoch=False, prog_bar=True, batch_size=batch_size)

    def on_train_epoch_start(self) -> None:
        # States restored by on_load_checkpoint belong to the epoch being resumed (mid-epoch or
        # before its validation); any other epoch starts from zero.
        if self._train_state_epoch != self.current_epoch:
            for metric in self.train_epoch_metrics().values():
                metric.reset()
        self._train_state_epoch = None

    def on_train_epoch_end(self) -> None:
        """Log the epoch's training metrics, computed from the task's own metric objects rather
        than Lightning's epoch aggregation, which is not checkpointed: a run resumed from the
        checkpoint written before validation (or mid-epoch) logs the same epoch values as the
        uninterrupted run (``dyconv.callbacks.LastCheckpoint``)."""
        metrics = self.train_epoch_metrics()
        if metrics["train_loss"].update_count == 0:  # no training batch this epoch
            return
        values: dict[str, torch.Tensor] = {}
        for name, metric in metrics.items():
            value = metric.compute()
            if name == "train_loss":
                values["train/loss_epoch"] = value
                self.log("train/loss", value, logger=False)
            elif isinstance(value, dict):
                values.update(value)
            else:
                values[name] = value
            metric.reset()
        self.log_dict(values)

    def _train_epoch_members(self) -> dict[str, Metric]:
        """Every single metric of :meth:`train_epoch_metrics` (collections opened), by a stable key."""
        members: dict[str, Metric] = {}
        for name, metric in self.train_epoch_metrics().items():
            if isinstance(metric, MetricCollection):
                members.update({f"{name}.{sub}": m for sub, m in metric.items()})
            else:
                members[name] = metric
        return members

    def _train_epoch_state(self) -> dict[str, Any]:
        """Every training-epoch metric's states summed over processes (all ranks call this:
        Lightning dumps checkpoints on every rank), as CPU tensors."""
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        states: dict[str, Any] = {}
        for key, m in self._train_epoch_members().items():
            with m.sync_context(should_sync=distributed):
                states[key] = {
                    "update_count": int(m.update_count),
                    "state": {k: v.detach().cpu().clone() for k, v in m.metric_state.items()},
                }
        return states

    def _restore_train_epoch_state(self, states: Mapping[str, Any]) -> None:
        for key, m in self._train_epoch_members().items():
            saved = states.get(key)
            m.reset()
            if saved is None or self.global_rank != 0:  # rank 0 carries the global sums
                continue
            for name, value in saved["state"].items():
                if name not in m._defaults or not isinstance(value, torch.Tensor):
                    continue  # only the metric's own registered states, as tensors
                setattr(m, name, value.to(self.device))
            m._update_count = saved["update_count"]  # compute() warns when it is 0

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["dyconv"] = {"version": 1, "kind": self.kind, "config": self.run_config}
        if self._trainer is not None and self.trainer.state.fn == "fit":
            checkpoint["dyconv_train_epoch"] = {"epoch": self.current_epoch, "metrics": self._train_epoch_state()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._trainer is not None:
            # Before Lightning restores the callbacks from this (possibly handed) file: file
            # names outside this run's checkpoint folders are dropped, not tested or deleted.
            from lightning.pytorch.callbacks import ModelCheckpoint

            from dyconv.runs.checkpoint_io import confine_checkpoint_paths

            dirs = [c.dirpath for c in self.trainer.callbacks if isinstance(c, ModelCheckpoint) and c.dirpath]
            dropped = confine_checkpoint_paths(checkpoint, dirs)
            if dropped:
                log.warning("Ignoring checkpoint file names outside this run's checkpoint folders: %s",
                            ", ".join(dropped))
        saved = checkpoint.get("dyconv_train_epoch")
        if saved:
            self._restore_train_epoch_state(saved["metrics"])
            self._train_state_epoch = int(saved["epoch"])
