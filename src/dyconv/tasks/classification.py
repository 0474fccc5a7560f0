"""Image classification: cross-entropy on logits, top-1/top-5 accuracy (torchmetrics)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from dyconv.tasks.base import BaseTask

__all__ = ["ClassificationTask"]


class ClassificationTask(BaseTask):
    """Logs ``{train,val,test}/{loss,acc,acc_top5}``; the best checkpoint maximises ``val/acc``.

    Args:
        num_classes: number of classes (interpolated from the data config).
        label_smoothing: cross-entropy label smoothing (0.1 in one published recipe).
        **kwargs: :class:`BaseTask` arguments (model, optimizer, scheduler, ...).
    """

    kind: ClassVar[str] = "classification"
    monitor = "val/acc"
    monitor_mode = "max"

    def __init__(self, model: torch.nn.Module, num_classes: int, label_smoothing: float = 0.0, **kwargs: Any) -> None:
        super().__init__(model, **kwargs)
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"task.label_smoothing must be in [0, 1), got {label_smoothing}")
        self.num_classes = int(num_classes)
        self.label_smoothing = float(label_smoothing)

        def metrics(prefix: str) -> MetricCollection:
            m = {"acc": MulticlassAccuracy(self.num_classes, top_k=1, average="micro")}
            if self.num_classes > 5:
                m["acc_top5"] = MulticlassAccuracy(self.num_classes, top_k=5, average="micro")
            return MetricCollection(m, prefix=prefix)

        self.train_metrics = metrics("train/")
        self.val_metrics = metrics("val/")
        self.test_metrics = metrics("test/")

    def train_epoch_metrics(self) -> dict[str, Any]:
        return {**super().train_epoch_metrics(), "train_metrics": self.train_metrics}

    def _step(self, batch: Any, split: str, metrics: MetricCollection) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if split == "train" else 0.0)
        metrics.update(logits.detach(), y)
        if split == "train":  # epoch values: BaseTask.on_train_epoch_end
            self.log_train_loss(loss, x.shape[0])
            return loss
        self.log(f"{split}/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=x.shape[0])
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_metrics)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val", self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test", self.test_metrics)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).softmax(dim=1)
