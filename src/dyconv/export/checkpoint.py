"""``export_checkpoint``: rebuild a run's network from its checkpoint, export it under a
temporary name, verify it against PyTorch and move it and its ``.json`` into place."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class

from dyconv import __version__
from dyconv.errors import ConfigError
from dyconv.export.exporter import (
    FORMATS,
    INPUT_NAME,
    OUTPUT_NAME,
    ExportError,
    _check_format,
    _check_opset,
    _resolve_runtime,
    blockable_depthwise_layers,
    export_model,
)
from dyconv.export.verify import VERIFY_BATCHES, verify_export
from dyconv.runs.layout import run_dir_of
from dyconv.runs.rebuild import load_trained_run
from dyconv.utils.files import atomic_write_text

__all__ = ["export_checkpoint", "normalization_of"]

log = logging.getLogger("dyconv.export")


def normalization_of(data_config: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"mean": [...], "std": [...]}`` (per input channel, for pixels scaled to [0, 1]) the
    run's data was normalised with (the DataModule's ``mean``/``std``), or None if unknown."""
    try:
        cls = get_class(str(data_config.get("_target_", "")))
    except Exception:  # a DataModule that is not importable here
        return None
    mean, std = getattr(cls, "mean", None), getattr(cls, "std", None)
    if mean is None or std is None:
        return None
    channels = int(data_config.get("in_channels") or len(mean))
    if len(mean) == 1 and channels > 1:  # grayscale repeated to RGB
        mean, std = tuple(mean) * channels, tuple(std) * channels
    return {"mean": list(mean), "std": list(std)}


def _input_size(data_config: Mapping[str, Any], image_size: int | None) -> tuple[int, int]:
    if image_size is not None:
        side = int(image_size)
    else:
        side = data_config.get("eval_size") or data_config.get("image_size")
        if not side:
            raise ConfigError("the checkpoint's data config has no image_size; pass image_size=<pixels>")
    if side < 1:
        raise ConfigError(f"image_size must be >= 1, got {side}")
    return int(side), int(side)


def _existing_outputs(path: Path, fmt: str) -> list[Path]:
    """The files an export to ``path`` would replace: the model, its ``.json`` and, for ONNX, a
    ``.data`` external-weights file."""
    names = [path.name, path.name + ".json"] + ([path.name + ".data"] if fmt == "onnx" else [])
    return [path.with_name(n) for n in names if os.path.lexists(path.with_name(n))]


def export_checkpoint(
    ckpt_path: str | Path,
    fmt: str = "onnx",
    output: str | Path | None = None,
    *,
    opset: int | None = None,
    image_size: int | None = None,
    verify: bool = True,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    max_batch: int = 1024,
    batch: int | None = None,
    fold_bn: bool = True,
    runtime: str | None = None,
    overwrite: bool = False,
    config: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Export a checkpoint's network (``batch``: None for any batch, or a fixed batch size, see
    :func:`export_model`); returns the metadata also written to ``<output>.json``.

    Raises :class:`ConfigError` before exporting if ``output`` (or its ``.json``) exists, unless
    ``overwrite``. The file is exported and verified in a temporary folder beside ``output`` and
    then moved into place, so a failure leaves any previous file and ``.json`` untouched.
    ``config`` (the CLI's resolved config) is recorded in the ``.json``. ``runtime`` None (not
    chosen) is ``"any"``; the returned metadata (not the ``.json``) then also holds
    ``onnxruntime_blockable``: how many depthwise layers ``runtime="onnxruntime"`` would block."""
    _check_format(fmt)
    requested, runtime = runtime, _resolve_runtime("any" if runtime is None else runtime, fmt)
    if not (rtol >= 0 and atol >= 0):  # also NaN: a check that can never pass
        raise ConfigError(f"rtol and atol must be >= 0, got rtol={rtol}, atol={atol}")
    if opset is not None and fmt != "onnx":
        raise ConfigError(f"opset applies to format=onnx only (got format={fmt})")
    _check_opset(opset)
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise ConfigError(f"batch must be a positive integer or null (any batch), got {batch}")
    if max_batch < 2 and batch is None:
        raise ConfigError(f"max_batch must be >= 2 (the batch dimension is dynamic), got {max_batch}")
    run = load_trained_run(ckpt_path)
    model = run.model.float().eval()
    data = run.config.get("data", {})
    channels = int(data.get("in_channels") or 3)
    h, w = _input_size(data, image_size)
    # A fixed-batch file, or one for a runtime named explicitly, is another file: exporting each
    # (README) needs no output=.
    named = f"_{requested}" if fmt == "onnx" and requested not in (None, "auto") else ""
    suffix = ("" if batch is None else f"_batch{batch}") + named
    default_name = f"model{suffix}{FORMATS[fmt]}"
    path = Path(output) if output else Path(run_dir_of(run.ckpt_path)) / "export" / default_name
    path = path.expanduser().absolute()
    meta_path = path.with_name(path.name + ".json")
    existing = _existing_outputs(path, fmt)
    if existing and not overwrite:
        raise ConfigError(
            f"{existing[0]} already exists (an earlier export) and was kept; nothing was exported. Pass "
            f"output=<other path> to export next to it, or overwrite=true to replace it"
        )
    example = torch.randn(2, channels, h, w)  # batch 2: a batch of 1 would be specialised
    log.info("Exporting %s (%s) to %s", run.config.get("model", {}).get("name"), fmt, path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Exported and verified under its final name in a private folder beside it (the same file
    # system: the moves are atomic; an ONNX external-data file keeps the name the graph refers to).
    staging = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(staging, ignore_errors=True)  # left by a killed process that had the same id
    side_files: list[Path] = []
    try:
        staging.mkdir()
        staged = staging / path.name
        info = export_model(model, example, staged, fmt, opset=opset, max_batch=max_batch, batch=batch, fold_bn=fold_bn,
                            runtime=runtime)
        batches = VERIFY_BATCHES if batch is None else (batch,)
        try:
            shape = (channels, h, w)
            diffs = verify_export(model, staged, fmt, shape, batches=batches, rtol=rtol, atol=atol) if verify else {}
        except ExportError as e:
            kept = f"the previous {path} and its .json were kept" if existing else f"nothing was written to {path}"
            raise ExportError(f"{str(e).replace(str(staged), 'the exported file')}; it was discarded, {kept}") from e
        if not overwrite and _existing_outputs(path, fmt):  # another export finished meanwhile
            raise ConfigError(f"{path} appeared while exporting (another export?) and was kept; nothing was written")
        side_files = [f for f in staging.iterdir() if f.name != path.name]  # ONNX external data
        for f in side_files:
            os.replace(f, path.with_name(f.name))
        os.replace(staged, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stale = path.with_name(path.name + ".data")
    if fmt == "onnx" and not side_files and stale.exists():  # the replaced file's external weights
        stale.unlink()

    segmentation = run.task.kind == "segmentation"
    num_classes = int(data.get("num_classes") or 0) or None
    meta: dict[str, Any] = {
        "format": fmt,
        "file": path.name,
        "checkpoint": str(run.ckpt_path),
        "checkpoint_epoch": run.checkpoint.get("epoch"),
        "checkpoint_global_step": run.checkpoint.get("global_step"),
        "model": run.config.get("model", {}).get("name"),
        "task": run.task.kind,
        "input": {"name": INPUT_NAME, "shape": [batch or "batch", channels, h, w], "dtype": "float32"},
        "max_batch": batch or max_batch,
        "output": {
            "name": OUTPUT_NAME,
            "shape": [batch or "batch", num_classes, h, w] if segmentation else [batch or "batch", num_classes],
        },
        "num_classes": num_classes,
        "normalization": normalization_of(data),
        "opset": info.get("opset"),
        # What the file needs: onnxruntime's blocked ops (with standard fallbacks) only where
        # depthwise layers were rewritten, else standard operators only.
        "runtime": "onnxruntime" if info.get("blocked_depthwise_convs") else "any",
        "blocked_depthwise_convs": info.get("blocked_depthwise_convs", 0),
        "verified_max_abs_diff": {str(b): d for b, d in diffs.items()},
        "dyconv_version": __version__,
        "torch_version": torch.__version__,
    }
    if config is not None:
        meta["config"] = dict(config)
    atomic_write_text(meta_path, json.dumps(meta, indent=2) + "\n")
    meta["metadata_file"] = str(meta_path)
    meta["path"] = str(path)
    if requested is None and fmt == "onnx":
        meta["onnxruntime_blockable"] = blockable_depthwise_layers(model)
    return meta


