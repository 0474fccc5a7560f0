"""Semantic segmentation: pixel cross-entropy with an ignore index, dataset-level mIoU."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from dyconv.tasks.base import BaseTask

__all__ = ["SegmentationTask"]


class SegmentationTask(BaseTask):
    """Logs ``{train,val,test}/loss`` and ``{val,test}/{miou,pixel_acc}``; mIoU is computed from
    the confusion matrix of the WHOLE split (not averaged per batch), ignoring ``ignore_index``.

    Args:
        num_classes: classes including background (21 for VOC).
        ignore_index: label of pixels that count nowhere (255: VOC boundaries, padding).
        label_smoothing: cross-entropy label smoothing.
        **kwargs: :class:`BaseTask` arguments (model, optimizer, scheduler, lr_mult, ...).
    """

    kind: ClassVar[str] = "segmentation"
    monitor = "val/miou"
    monitor_mode = "max"

    def __init__(
        self,
        model: torch.nn.Module,
        num_classes: int,
        ignore_index: int = 255,
        label_smoothing: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.label_smoothing = float(label_smoothing)

        def metrics(prefix: str) -> MetricCollection:
            return MetricCollection(
                {
                    "miou": MulticlassJaccardIndex(self.num_classes, average="macro", ignore_index=self.ignore_index),
                    "pixel_acc": MulticlassAccuracy(
                        self.num_classes, average="micro", multidim_average="global", ignore_index=self.ignore_index
                    ),
                },
                prefix=prefix,
            )

        self.val_metrics = metrics("val/")
        self.test_metrics = metrics("test/")

    def _loss(self, logits: torch.Tensor, mask: torch.Tensor, train: bool) -> torch.Tensor:
        return F.cross_entropy(
            logits, mask, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing if train else 0.0
        )

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, mask = batch[0], batch[1]
        loss = self._loss(self(x), mask, train=True)
        self.log_train_loss(loss, x.shape[0])
        return loss

    def _eval_step(self, batch: Any, split: str, metrics: MetricCollection) -> None:
        x, mask = batch[0], batch[1]
        logits = self(x)
        self.log(f"{split}/loss", self._loss(logits, mask, train=False), on_epoch=True, sync_dist=True,
                 batch_size=x.shape[0])
        metrics.update(logits.argmax(dim=1), mask)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=True)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_metrics)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_metrics)

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).argmax(dim=1)
