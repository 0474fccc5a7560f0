"""Export a trained model for deployment: ``python -m dyconv.export ckpt_path=PATH format=onnx|pt2``.

    python -m dyconv.export ckpt_path=logs/train/runs/<run>/checkpoints/last.ckpt            # ONNX
    python -m dyconv.export ckpt_path=... format=pt2                 # torch.export (ExportedProgram)
    python -m dyconv.export ckpt_path=... format=onnx output=/srv/models/dy.onnx opset=18

    python -m dyconv.export ckpt_path=... batch=1                    # batch-1-only graph (single-image serving)

The network (any registered architecture) is rebuilt from the checkpoint, put in eval mode and
exported with a dynamic batch dimension (or ``batch=B``: a fixed one); the input shape
``(batch, in_channels, image_size, image_size)`` comes from the checkpoint's data config
(``image_size=`` overrides it). BatchNorm after dynamic convs is folded into their K kernels
(``fold_bn=false`` keeps it). A model with dynamic layers is exported as one ``Scan`` over the
samples: each runs the batch-1 graph, which aggregates each layer's kernels and runs one conv
(the method's cost; see :func:`export_model`). After writing, the file is
loaded back (onnxruntime / ``torch.export.load`` / ``torch.jit.load``) and its outputs are
compared with PyTorch's at batch 1 and 5 (at ``B`` for a fixed batch); the export fails if they
differ beyond ``atol + rtol * |expected|``.

Next to the model (``<run dir>/export/model.<ext>`` by default) goes ``model.<ext>.json``: input name
and shape, normalisation, class count, opset, versions and the measured differences.

An existing export is never replaced by accident: if the output file (or its ``.json``) exists the
export stops before anything is written; pass ``output=<other path>``, or ``overwrite=true`` to
replace it. The file is written and verified under a temporary name in the same folder and only
then moved into place (its ``.json`` after it), so a failed export or verification leaves the
previous file and its ``.json`` as they were.

``opset=N`` (format=onnx): torch's ONNX exporter (``dynamo=True``) writes opset 18 or later; a lower
or non-integer opset is refused before anything is written.

Run folder: Hydra writes ``.hydra/`` and ``export.log`` into ``<run dir>/export`` before the tool
starts. A launch refused before it writes anything (``format=tflite``, ``opset=3``, ``batch=0``, ...)
removes that folder again when it holds nothing else. The folder is shared by every export of the
run (``model.onnx``, ``model_batch1.onnx``, ...) and a failed relaunch replaces ``.hydra/*.yaml``, so
``.hydra/`` only describes the latest launch: each model's ``.json``, written on success, records
what produced it (checkpoint path, epoch, global step and, from the CLI, the resolved ``config``).

``format=torchscript`` is best effort: TorchScript is deprecated in torch 2.14; ``torch.jit.script``
works for the dyconv layers (every routing), and the export fails with a clear message for a model
it cannot script.
"""

from __future__ import annotations

from typing import Any

import hydra
from omegaconf import DictConfig

from dyconv.cli import (
    CONF_DIR,
    removing_stub,
    require_ckpt_path,
    resolved_config,
    route_lightning_logs,
    run_hydra_main,
    run_job,
)
from dyconv.errors import ConfigError
from dyconv.export.checkpoint import export_checkpoint
from dyconv.export.exporter import BLOCKED_SPEEDUP, INPUT_NAME, MIN_OPSET
from dyconv.runs.disks import export_disk_guard
from dyconv.utils.console import quiet_console

__all__ = ["main", "run_export"]


def _whole_number(value: Any, problem: str) -> int | None:
    """A command-line value (``batch=``, ``opset=``) as an int, None staying None; ``problem``
    (the ConfigError's text) for a bool, a fraction or anything not a number."""
    if value is None:
        return None
    try:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{problem}, got {value!r}") from None


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """The Hydra job: export ``cfg.ckpt_path`` and print where the files are. A refusal removes
    the folder Hydra made if it holds nothing else (see the module docstring)."""
    with removing_stub(cfg, "export"), export_disk_guard(cfg):
        return _run_export(cfg)


def _run_export(cfg: DictConfig) -> dict[str, Any]:
    route_lightning_logs()
    fmt = str(cfg.format)
    meta = export_checkpoint(
        cfg.ckpt_path,
        fmt,
        cfg.get("output"),
        opset=_whole_number(cfg.get("opset"), f"opset must be an integer >= {MIN_OPSET} (torch.onnx's exporter)"),
        image_size=None if cfg.get("image_size") is None else int(cfg.image_size),
        verify=bool(cfg.verify),
        rtol=float(cfg.rtol),
        atol=float(cfg.atol),
        max_batch=int(cfg.max_batch),
        batch=_whole_number(cfg.get("batch"), "batch must be a positive integer or null (any batch)"),
        fold_bn=bool(cfg.get("fold_bn", True)),
        runtime=None if cfg.get("runtime") is None else str(cfg.runtime),
        overwrite=bool(cfg.get("overwrite", False)),
        config=resolved_config(cfg),
    )
    shape = "x".join(str(s) for s in meta["input"]["shape"])
    lines = [f"Exported {meta['model']} ({fmt}) to {meta['path']}", f"Input '{INPUT_NAME}': {shape} float32"]
    if meta["normalization"]:
        norm = meta["normalization"]
        lines.append(f"Preprocess: pixels / 255, then (x - {norm['mean']}) / {norm['std']} per channel")
    if meta["verified_max_abs_diff"]:
        lines.append(
            "Verified against PyTorch: max abs difference "
            + ", ".join(f"{d:.2e} at batch {b}" for b, d in meta["verified_max_abs_diff"].items())
        )
    if meta["blocked_depthwise_convs"]:
        lines.append(
            f"Depthwise layers in onnxruntime's blocked conv: {meta['blocked_depthwise_convs']} (other runtimes must "
            "expand them to the standard Conv, as ONNX functions; the default runtime=any writes standard operators "
            "only)"
        )
        if _onnxruntime_has_cuda():
            lines.append("This onnxruntime has CUDA: on a GPU the blocked convs run on the CPU; for GPU serving "
                         "export with runtime=any (docs/deployment.md)")
    if meta.get("onnxruntime_blockable"):
        lines.append(
            f"tip: runtime=onnxruntime runs its {meta['onnxruntime_blockable']} depthwise layers in onnxruntime's "
            f"blocked conv, {BLOCKED_SPEEDUP} faster in onnxruntime, but the file then loads in onnxruntime only "
            "(docs/benchmark_export.md)"
        )
    lines.append(f"Metadata: {meta['metadata_file']}")
    print("\n".join(lines), flush=True)
    return meta


def _onnxruntime_has_cuda() -> bool:
    """Whether the installed onnxruntime can run on a CUDA GPU (``onnxruntime-gpu``)."""
    try:
        import onnxruntime as ort
    except ImportError:
        return False
    return "CUDAExecutionProvider" in ort.get_available_providers()


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def _main(cfg: DictConfig) -> Any:
    return run_job(run_export, cfg)


def main() -> None:
    """Console-script entry point."""
    quiet_console()
    require_ckpt_path(
        "python -m dyconv.export ckpt_path=PATH [format=onnx|pt2|torchscript] [output=FILE] [opset=N] [batch=B] "
        "[overwrite=true]"
    )
    run_hydra_main(_main, "export")
