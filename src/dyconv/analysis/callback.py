"""Log per-layer attention statistics of dynamic convolutions during validation
(re-exported as :class:`dyconv.callbacks.AttentionStatistics`, the name configs use)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from dyconv.analysis.history import HISTORY_FILE, record_epoch
from dyconv.analysis.recorder import AttentionRecorder
from dyconv.analysis.summary import OMNI_PARTS, AttentionSummary
from dyconv.layers import dynamic_layers

__all__ = ["AttentionStatistics"]


class AttentionStatistics(Callback):
    """Collects the attention of every dynamic layer over the validation set and logs, per layer,
    by its routing (``attention/<layer>/...``):

    - ``softmax``: ``entropy`` (mean, nats; log K is uniform), ``pi_<k>`` (mean weight of each
      kernel) and ``pi_sample_std`` (mean over kernels of the std across samples: 0 = the same
      weights for every input);
    - ``sigmoid`` (independent gates, no entropy): ``gate_<k>`` (mean gate of each kernel),
      ``gate_sum`` (mean sum of the gates) and ``gate_sample_std``;
    - ``omni``: its kernel softmax as ``softmax``, plus ``in_mean``/``in_sample_std``,
      ``out_...`` and ``spatial_...`` for the sigmoid attentions the layer has;

    plus ``attention/entropy_ratio``: the mean over the layers with a kernel softmax and K > 1 of
    entropy / log K (1 = uniform, 0 = one kernel per sample; not logged without such layers).
    ``per_kernel=False`` drops the per-kernel metrics. With a TensorBoard logger it also adds
    the inspection tool's figures every ``figure_every_n_epochs`` epochs.

    With ``history=True`` (the default), while fitting, the same metrics of every epoch also go to
    ``attention_history.json`` in the run folder (``trainer.default_root_dir``; written
    atomically, see :mod:`dyconv.analysis.history`): ``python -m dyconv.report`` plots them over
    epochs without reading the loggers' files.
    """

    def __init__(self, every_n_epochs: int = 1, per_kernel: bool = True, figure_every_n_epochs: int = 0,
                 history: bool = True) -> None:
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.history = bool(history)
        self.per_kernel = per_kernel
        self.figure_every_n_epochs = int(figure_every_n_epochs)
        self._summary: AttentionSummary | None = None
        self._recorder: AttentionRecorder | None = None

    def _active(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer) or next(dynamic_layers(pl_module), None) is None:
            return
        # Classification tasks: per-class means too (segmentation labels are per pixel).
        classification = getattr(pl_module, "kind", "classification") == "classification"
        num_classes = int(getattr(pl_module, "num_classes", 0)) if classification else 0
        self._summary = AttentionSummary.for_model(pl_module, num_classes=num_classes)
        self._recorder = AttentionRecorder(pl_module, self._summary).__enter__()

    def on_validation_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._summary is None:
            return
        labels = batch[1] if isinstance(batch, (tuple, list)) and len(batch) > 1 else None
        ok = isinstance(labels, torch.Tensor) and labels.dim() == 1 and not labels.is_floating_point()
        self._summary.set_labels(labels if ok else None)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._recorder is None or self._summary is None:
            return
        self._recorder.__exit__(None, None, None)
        summary, self._recorder, self._summary = self._summary, None, None
        if trainer.world_size > 1:
            summary.reduce(lambda t: trainer.strategy.reduce(t.to(pl_module.device), reduce_op="sum"))
        metrics = self.metrics(summary)
        # Already reduced across ranks: log plain floats without another sync.
        pl_module.log_dict(metrics, on_epoch=True, sync_dist=False, rank_zero_only=True)
        if self.history and metrics and trainer.is_global_zero and trainer.state.fn == "fit":
            record_epoch(Path(trainer.default_root_dir) / HISTORY_FILE, trainer.current_epoch, trainer.global_step,
                         metrics)
        if self.figure_every_n_epochs and trainer.current_epoch % self.figure_every_n_epochs == 0:
            self._log_figures(trainer, summary)

    def metrics(self, summary: AttentionSummary) -> dict[str, float]:
        """The logged metrics of a finished summary (names in the class docstring)."""
        metrics: dict[str, float] = {}
        ratios = []
        for name, la in summary.layers.items():
            row = la.row(name)
            prefix = f"attention/{name}/"
            if la.spec.kernel_softmax:
                metrics[prefix + "entropy"] = float(row["entropy"])
                metrics[prefix + "pi_sample_std"] = float(row["pi_sample_std"])
                if la.num_kernels > 1:
                    ratios.append(float(row["entropy_ratio"]))
                kernel_column, metric = "mean_pi_{}", "pi_{}"
            else:
                metrics[prefix + "gate_sum"] = float(row["gate_sum"])
                metrics[prefix + "gate_sample_std"] = float(row["gate_sample_std"])
                kernel_column, metric = "mean_gate_{}", "gate_{}"
            if self.per_kernel:
                for k in range(la.num_kernels):
                    metrics[prefix + metric.format(k)] = float(row[kernel_column.format(k)])
            for short in (OMNI_PARTS[part] for part in la.parts):
                metrics[prefix + f"{short}_mean"] = float(row[f"{short}_mean"])
                metrics[prefix + f"{short}_sample_std"] = float(row[f"{short}_sample_std"])
        if ratios:
            metrics["attention/entropy_ratio"] = sum(ratios) / len(ratios)
        return metrics

    def _log_figures(self, trainer: L.Trainer, summary: AttentionSummary) -> None:
        if not trainer.is_global_zero:
            return
        from lightning.pytorch.loggers import TensorBoardLogger

        from dyconv.analysis.plots import attention_figures

        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                for tag, fig in attention_figures(summary).items():
                    logger.experiment.add_figure(f"attention/{tag}", fig, global_step=trainer.global_step)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if self._recorder is not None:
            self._recorder.__exit__(None, None, None)
            self._recorder = None

    def state_dict(self) -> dict[str, Any]:
        return {"every_n_epochs": self.every_n_epochs}
