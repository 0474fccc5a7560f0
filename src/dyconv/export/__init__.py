"""Export a trained model for deployment: ``python -m dyconv.export ckpt_path=PATH format=onnx|pt2``
(the command line: :mod:`dyconv.export.cli`).

- :mod:`~dyconv.export.exporter`: :func:`export_model`, any module to ONNX, ``torch.export`` or
  TorchScript, any batch or a fixed one;
- :mod:`~dyconv.export.modules`: the export-time module each dynamic layer becomes
  (:class:`ExportConv`);
- :mod:`~dyconv.export.fold`: BatchNorm and temperature folded into it;
- :mod:`~dyconv.export.ort_blocked`: the ``runtime="onnxruntime"`` rewrite;
- :mod:`~dyconv.export.verify`: the exported file against PyTorch;
- :mod:`~dyconv.export.checkpoint`: a run's checkpoint to a verified file and its ``.json``.
"""

from dyconv.export.checkpoint import export_checkpoint, normalization_of
from dyconv.export.cli import main, run_export
from dyconv.export.exporter import (
    BLOCKED_SPEEDUP,
    FORMATS,
    INPUT_NAME,
    MIN_OPSET,
    OUTPUT_NAME,
    RUNTIMES,
    ExportError,
    blockable_depthwise_layers,
    export_model,
)
from dyconv.export.fold import fold_batchnorm, fold_temperature, prepare_for_export
from dyconv.export.modules import ExportConv, to_export_modules
from dyconv.export.verify import VERIFY_BATCHES, verify_export

__all__ = [
    "BLOCKED_SPEEDUP",
    "FORMATS",
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "RUNTIMES",
    "VERIFY_BATCHES",
    "ExportConv",
    "ExportError",
    "blockable_depthwise_layers",
    "export_checkpoint",
    "export_model",
    "fold_batchnorm",
    "fold_temperature",
    "main",
    "normalization_of",
    "prepare_for_export",
    "run_export",
    "to_export_modules",
    "verify_export",
]
