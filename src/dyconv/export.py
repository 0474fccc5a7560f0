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

import json
import logging
import math
import os
import shutil
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hydra
import torch
from omegaconf import DictConfig
from torch import nn

from dyconv.cli import (
    CONF_DIR,
    removing_stub,
    require_ckpt_path,
    resolved_config,
    route_lightning_logs,
    run_hydra_main,
    run_job,
)
from dyconv.errors import ConfigError, DyconvError
from dyconv.layers.dynamic_conv import DynamicConvNd, export_batch
from dyconv.utils.files import atomic_write_text

__all__ = ["FORMATS", "ExportError", "export_checkpoint", "export_model", "normalization_of", "verify_export"]

log = logging.getLogger("dyconv.export")

#: format -> file extension
FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".ts"}
INPUT_NAME, OUTPUT_NAME = "image", "logits"
VERIFY_BATCHES = (1, 5)

def _scan() -> Any:
    """``torch``'s ``scan`` higher-order op (exported as ONNX ``Scan``), or None before it existed."""
    try:
        from torch._higher_order_ops.scan import scan
    except ImportError:
        return None
    return scan


class _PerSample(nn.Module):
    """``model`` applied to one sample at a time by ``scan`` (ONNX ``Scan``; in ``pt2``
    programs a ``scan``). Every step is the batch-1 graph, where each dynamic layer aggregates
    its K kernels with the sample's attention and runs one conv (the method's cost), so a batch
    of B costs B single-image runs.

    Measured against the previous design (one ``If`` on the batch size, batch > 1 in the
    batch-independent form: dense convs on the K kernels mixed afterwards, K x the FLOPs),
    onnxruntime 1 thread, dynamic / static: batch 1 the same (``dy_resnet10`` x0.25 1.93x,
    ``dy_mobilenetv2`` x0.5 2.5-2.6x), batch 8 1.96x and 2.51x instead of 4.46x and 4.54x,
    batch 32 1.74x and 2.04x instead of 4.54x and 4.28x; ``pt2`` programs at batch 8 3.1x and
    2.3x instead of 5.1x and 4.5x. The file holds one copy of the graph instead of two."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def step(carry: torch.Tensor, sample: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            # export_batch(1): every shape in the step is static (the sample is a batch of 1).
            with export_batch(1):
                y = self.model(sample.unsqueeze(0))
            return carry.clone(), y.squeeze(0).clone()  # a scan body may not return its inputs

        return _scan()(step, x.new_zeros(()), x)[1]


class ExportError(DyconvError):
    """The model could not be exported, or the exported file computes something else."""


def blockable_depthwise_layers(model: nn.Module) -> int:
    """How many float32 dynamic layers of ``model`` ``runtime="onnxruntime"`` runs in
    onnxruntime's blocked conv (:func:`dyconv.utils.ort_blocked.blocks_layer`)."""
    from dyconv.utils.ort_blocked import blocks_layer

    return sum(
        isinstance(m, DynamicConvNd) and m.weight.dtype == torch.float32 and blocks_layer(m) for m in model.modules()
    )


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")


#: ``runtime=``: what the exported file may use. ``any`` (default): standard ONNX operators only,
#: no functions: the file loads in onnxruntime, OpenVINO and any other ONNX runtime.
#: ``onnxruntime`` (ONNX only, an explicit choice): onnxruntime's blocked (NCHWc) conv for
#: depthwise layers, each blocked op also defined as a standard-ONNX model-local function
#: (:mod:`dyconv.utils.ort_blocked`); faster in onnxruntime, refused by runtimes without
#: model-local functions (OpenVINO). ``auto``: accepted for compatibility, the same as ``any``
#: for every format (before 0.2.0 it picked ``onnxruntime`` for ONNX).
RUNTIMES = ("auto", "any", "onnxruntime")
#: How much faster ``runtime=onnxruntime`` ran ``dy_mobilenetv2`` in onnxruntime than the default
#: file (docs/benchmark_export.md); the CLI's tip quotes it.
BLOCKED_SPEEDUP = "about 1.4x"


def _resolve_runtime(runtime: str, fmt: str) -> str:
    """``runtime`` checked against ``fmt``, ``auto`` resolved (``any``, for every format)."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
    if runtime == "onnxruntime" and fmt != "onnx":
        raise ConfigError(f"runtime=onnxruntime applies to format=onnx only (got format={fmt})")
    return "any" if runtime == "auto" else runtime


#: The lowest opset torch's ONNX exporter (``dynamo=True``) writes: it exports at 18 and converts
#: (onnxscript's version converter), which cannot go below 18.
MIN_OPSET = 18


def _max_opset() -> int | None:
    try:
        from torch.onnx import _constants
    except ImportError:
        return None
    return getattr(_constants, "ONNX_MAX_OPSET", None)


def _check_opset(opset: Any) -> None:
    if opset is None:
        return
    if isinstance(opset, bool) or not isinstance(opset, int) or opset < MIN_OPSET:
        raise ConfigError(f"opset must be an integer >= {MIN_OPSET} (torch.onnx's exporter), got {opset!r}")
    top = _max_opset()
    if top is not None and opset > top:
        raise ConfigError(f"opset must be an integer from {MIN_OPSET} to {top} (torch {torch.__version__}'s ONNX "
                          f"exporter), got {opset}")


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


def normalization_of(data_config: Mapping[str, Any]) -> dict[str, Any] | None:
    """``{"mean": [...], "std": [...]}`` (per input channel, for pixels scaled to [0, 1]) the
    run's data was normalised with (the DataModule's ``mean``/``std``), or None if unknown."""
    from hydra.utils import get_class

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


def _onnx_external_data(model: nn.Module) -> bool:
    """Weights go into a side file only when one protobuf cannot hold them (2 GiB)."""
    size = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    return size > 1.8 * 2**30


def _quiet_onnx_loggers() -> None:
    """The ONNX optimiser logs every pass at INFO; keep the console to what matters."""
    for name in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(name).setLevel(logging.WARNING)


def _names_read(graph: Any) -> set[str]:
    """Every value name the nodes of ``graph`` (and of their subgraphs) read, and its outputs."""
    names = {o.name for o in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= _names_read(sub)
    return names


#: Per-node source stack traces the ONNX exporter records: 85% of an any-batch mobilenetv2 file.
_STACK_TRACE_KEY = "pkg.torch.onnx.stack_trace"


def _drop_stack_traces(graph: Any) -> None:
    for node in graph.node:
        kept = [p for p in node.metadata_props if p.key != _STACK_TRACE_KEY]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                _drop_stack_traces(sub)


def _localise_subgraph_constants(proto: Any) -> int:
    """Move each initializer that only one subgraph (the ``Scan`` body) reads into it; returns
    how many. onnxruntime pre-packs (and lays out in its blocked NCHWc format) only constants of
    the graph that reads them: with the kernels outside, the constant convs of an ``If`` branch
    ran several-fold slower than in a ``batch=1`` file (measured). The rewrite also drops the
    exporter's per-node stack traces (debug text, 107 of 126 MB there) and the initializers no
    node reads (onnxruntime printed a warning for each when loading). ``proto`` (an
    ``onnx.ModelProto``) is changed in place."""
    graph = proto.graph
    _drop_stack_traces(graph)
    subgraphs = [a.g for node in graph.node for a in node.attribute if a.HasField("g")]
    main_reads = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    reads = [_names_read(g) for g in subgraphs]
    read_anywhere = _names_read(graph)
    moved = 0
    for init in list(graph.initializer):
        if init.name not in read_anywhere:  # left by the exporter; onnxruntime warns about each one
            graph.initializer.remove(init)
            continue
        readers = [i for i, r in enumerate(reads) if init.name in r]
        if init.name in main_reads or len(readers) != 1:
            continue
        subgraphs[readers[0]].initializer.append(init)
        graph.initializer.remove(init)
        moved += 1
    return moved


def export_model(
    model: nn.Module,
    example: torch.Tensor,
    path: str | os.PathLike[str],
    fmt: str,
    *,
    opset: int | None = None,
    max_batch: int = 1024,
    batch: int | None = None,
    fold_bn: bool = True,
    runtime: str = "any",
) -> dict[str, Any]:
    """Write ``model`` (eval mode) to ``path`` in format ``fmt``; returns format details for the
    metadata. ``example`` fixes every dimension but the batch.

    ``batch=None``: any batch from 1 to ``max_batch``. A model with dynamic layers is exported
    as one ``Scan`` over the samples (see :class:`_PerSample`): each sample runs the batch-1
    graph, whose dynamic layers aggregate their kernels (about the static model's cost).
    ``batch=B``: a graph for exactly B samples (B = 1: the batch-1 graph only, the fastest file
    for single-image serving; B > 1: per-sample kernels in one grouped conv per layer).
    ``fold_bn`` folds BatchNorm after dynamic convs into their kernels first (exact algebra,
    :mod:`dyconv.utils.fold`); ``model`` itself is not changed.
    ``runtime="any"`` (default): standard ONNX operators only, a file every ONNX runtime loads
    (onnxruntime, OpenVINO, ...). ``runtime="onnxruntime"`` (ONNX only, explicit): depthwise
    layers whose channels 16 divides run their computed kernels through onnxruntime's blocked
    conv, which the file also defines in standard operators as ONNX functions
    (:mod:`dyconv.utils.ort_blocked`); faster in onnxruntime, but runtimes without model-local
    functions (OpenVINO) refuse it. ``"auto"`` is accepted for compatibility and means ``"any"``.
    """
    from dyconv.utils.fold import prepare_for_export

    path = Path(path)
    _check_format(fmt)
    runtime = _resolve_runtime(runtime, fmt)
    if batch is not None and batch < 1:
        raise ConfigError(f"batch must be a positive integer or null (any batch), got {batch}")
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = any(isinstance(m, DynamicConvNd) for m in model.modules())
    net: nn.Module = prepare_for_export(model, fold_bn=fold_bn) if dynamic and fmt != "torchscript" else model
    if dynamic and fmt == "onnx":
        from dyconv.utils.ort_blocked import blocks_layer

        for m in net.modules():
            if isinstance(m, DynamicConvNd):
                # onnxruntime's batch-1 form per layer (DynamicConvNd._export_mixture_single),
                # except for the depthwise layers runtime=onnxruntime runs blocked (aggregated)
                m._export_onnx = not (runtime == "onnxruntime" and blocks_layer(m))
    if batch is not None:
        example = example[:1].expand(batch, *example.shape[1:]).contiguous()
        dynamic_shapes: Any = None
    else:
        if example.shape[0] < 2:  # a batch of 1 would be specialised
            example = example[:1].expand(2, *example.shape[1:]).contiguous()
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=max_batch)},)
        if dynamic and fmt != "torchscript":
            if _scan() is None:
                raise ConfigError(
                    f"exporting dynamic layers for any batch needs torch's scan operator, which torch "
                    f"{torch.__version__} lacks: upgrade torch, or export a fixed batch with batch=B"
                )
            net = _PerSample(net).eval()
    info: dict[str, Any] = {}
    try:
        with export_batch(batch), warnings.catch_warnings():
            # Tracing the scan body, dynamo reaches a torch.compile call (Lightning wraps it) that
            # export ignores, and says so once per process: nothing a user can act on.
            warnings.filterwarnings("ignore", message="torch.compile is ignored when called inside torch.export")
            if fmt == "onnx":
                _quiet_onnx_loggers()
                external = _onnx_external_data(model)  # weights over 2 GiB: a side file
                torch.onnx.export(
                    net,
                    (example,),
                    str(path),
                    input_names=[INPUT_NAME],
                    output_names=[OUTPUT_NAME],
                    opset_version=opset,
                    dynamic_shapes=dynamic_shapes,
                    dynamo=True,
                    external_data=external,
                    verbose=False,
                )
                import onnx

                localise = isinstance(net, _PerSample) and not external
                if localise or runtime == "onnxruntime":  # one pass over the file for both rewrites
                    from dyconv.utils.ort_blocked import rewrite_depthwise_blocked

                    proto = onnx.load(str(path))
                    if localise:
                        _localise_subgraph_constants(proto)
                    if runtime == "onnxruntime":
                        info["blocked_depthwise_convs"] = rewrite_depthwise_blocked(proto)
                    # Weights over one protobuf's 2 GiB stay in the side file the exporter wrote.
                    side = {"save_as_external_data": True, "all_tensors_to_one_file": True,
                            "location": path.name + ".data"} if external else {}
                    onnx.save(proto, str(path), **side)
                else:
                    proto = onnx.load(str(path), load_external_data=False)
                info["opset"] = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
            elif fmt == "pt2":
                with torch.no_grad():
                    program = torch.export.export(net, (example,), dynamic_shapes=dynamic_shapes)
                torch.export.save(program, str(path))
            else:
                warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.script is deprecated"
                scripted = torch.jit.script(net)
                scripted.save(str(path))
    except (DyconvError, OSError):
        raise
    except Exception as e:
        hint = "" if fmt == "onnx" else "; format=onnx or format=pt2 may still work"
        raise ExportError(f"{fmt} export of {type(model).__name__} failed: {type(e).__name__}: {e}{hint}") from e
    return info


def _load_runner(path: Path, fmt: str) -> Any:
    """A callable ``numpy/tensor batch -> tensor`` running the exported file."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ConfigError(
                "verifying an ONNX export needs onnxruntime: pip install onnxruntime (or pass verify=false)"
            ) from e
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])
    if fmt == "pt2":
        module = torch.export.load(str(path)).module()
        return lambda x: module(x)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        scripted = torch.jit.load(str(path), map_location="cpu")
    return lambda x: scripted(x)


def verify_export(
    model: nn.Module,
    path: str | os.PathLike[str],
    fmt: str,
    shape: tuple[int, ...],
    *,
    batches: tuple[int, ...] = VERIFY_BATCHES,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    seed: int = 0,
) -> dict[int, float]:
    """Max abs difference between the exported file's and PyTorch's outputs per batch size;
    raises :class:`ExportError` if any element differs beyond ``atol * min(1, s) + rtol *
    |expected|``, ``s`` the largest ``|expected|``: outputs far below ``atol`` (an untrained
    network in eval mode can give logits of 1e-14) are compared relative to their scale, so a
    wrong graph cannot pass because every output is tiny."""
    run = _load_runner(Path(path), fmt)
    gen = torch.Generator().manual_seed(seed)
    diffs: dict[int, float] = {}
    for b in batches:
        x = torch.randn((b, *shape), generator=gen)
        with torch.no_grad():
            expected = model(x)
            got = run(x)
        if got.shape != expected.shape:
            raise ExportError(f"{path} returns shape {tuple(got.shape)} at batch {b}, PyTorch {tuple(expected.shape)}")
        diff = (got.float() - expected.float()).abs()
        diffs[b] = float(diff.max())
        magnitude = expected.float().abs()
        scale = float(magnitude.max()) if expected.numel() else 0.0
        bound = atol * min(1.0, scale) + rtol * magnitude
        if not bool((diff <= bound).all()) or not math.isfinite(diffs[b]):
            scaled = f" x {scale:.3g} (the outputs' largest magnitude)" if scale < 1.0 else ""
            raise ExportError(
                f"{path} differs from PyTorch at batch {b}: max abs difference {diffs[b]:.3g} "
                f"(allowed atol={atol}{scaled} + rtol={rtol} x |output|); the export is not usable as is"
            )
    return diffs


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
    import dyconv
    from dyconv.runs.layout import run_dir_of
    from dyconv.runs.rebuild import load_trained_run

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
        "dyconv_version": dyconv.__version__,
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


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """The Hydra job: export ``cfg.ckpt_path`` and print where the files are. A refusal removes
    the folder Hydra made if it holds nothing else (see the module docstring)."""
    with removing_stub(cfg, "export"):
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
    from dyconv.utils.console import quiet_console

    quiet_console()
    require_ckpt_path(
        "python -m dyconv.export ckpt_path=PATH [format=onnx|pt2|torchscript] [output=FILE] [opset=N] [batch=B] "
        "[overwrite=true]"
    )
    run_hydra_main(_main, "export")


if __name__ == "__main__":
    main()
