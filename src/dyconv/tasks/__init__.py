"""LightningModules: loss, metrics and optimiser wiring around any dyconv model."""

from dyconv.tasks.base import BaseTask
from dyconv.tasks.classification import ClassificationTask
from dyconv.tasks.segmentation import SegmentationTask

__all__ = ["BaseTask", "ClassificationTask", "SegmentationTask"]
