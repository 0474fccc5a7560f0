"""Log per-layer attention statistics of dynamic convolutions during validation
(re-exported as :class:`dyconv.callbacks.AttentionStatistics`, the name configs use)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from dyconv.analysis.recorder import AttentionRecorder
from dyconv.analysis.summary import AttentionSummary
from dyconv.layers import dynamic_layers

__all__ = ["AttentionStatistics"]


class AttentionStatistics(Callback):
    """Collects ``pi(x)`` of every dynamic layer over the validation set and logs, per layer,
    the mean entropy (``attention/<layer>/entropy``, nats; log K is uniform) and the mean weight
    of each kernel (``attention/<layer>/pi_<k>``), plus ``attention/entropy_ratio`` (mean over
    layers of entropy / log K: 1 = uniform, 0 = one kernel per sample). With a TensorBoard
    logger it also adds the inspection tool's figures every ``figure_every_n_epochs`` epochs.
    """

    def __init__(self, every_n_epochs: int = 1, per_kernel: bool = True, figure_every_n_epochs: int = 0) -> None:
        self.every_n_epochs = max(1, int(every_n_epochs))
        self.per_kernel = per_kernel
        self.figure_every_n_epochs = int(figure_every_n_epochs)
        self._summary: AttentionSummary | None = None
        self._recorder: AttentionRecorder | None = None

    def _active(self, trainer: L.Trainer) -> bool:
        return not trainer.sanity_checking and trainer.current_epoch % self.every_n_epochs == 0

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        layers = {name: layer.num_kernels for name, layer in dynamic_layers(pl_module)}
        if not layers or not self._active(trainer):
            return
        # Classification tasks: per-class means too (segmentation labels are per pixel).
        classification = getattr(pl_module, "kind", "classification") == "classification"
        num_classes = int(getattr(pl_module, "num_classes", 0)) if classification else 0
        self._summary = AttentionSummary(layers, num_classes=num_classes)
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
        metrics: dict[str, float] = {}
        ratios = []
        for row in summary.rows():
            name = row["layer"]
            metrics[f"attention/{name}/entropy"] = float(row["entropy"])
            ratios.append(float(row["entropy_ratio"]))
            if self.per_kernel:
                for k in range(int(row["num_kernels"])):
                    metrics[f"attention/{name}/pi_{k}"] = float(row[f"mean_pi_{k}"])
        metrics["attention/entropy_ratio"] = sum(ratios) / len(ratios)
        # Already reduced across ranks: log plain floats without another sync.
        pl_module.log_dict(metrics, on_epoch=True, sync_dist=False, rank_zero_only=True)
        if self.figure_every_n_epochs and trainer.current_epoch % self.figure_every_n_epochs == 0:
            self._log_figures(trainer, summary)

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
