"""``export_model``: write a model (eval mode) to an ONNX file, a ``torch.export`` program or
TorchScript, with a dynamic batch or a fixed one.

A model with dynamic layers is exported through export-time modules
(:class:`~dyconv.export.modules.ExportConv`, BatchNorm and temperature folded into them) as one
``Scan`` over the samples, each the batch-1 graph (:class:`_PerSample`), or as a graph for a
fixed batch. ONNX files get two rewrites: the ``Scan`` body's constants moved into it, and, with
``runtime="onnxruntime"``, depthwise convs in onnxruntime's blocked conv
(:mod:`dyconv.export.ort_blocked`).
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyconv.errors import ConfigError, DyconvError
from dyconv.export.fold import prepare_for_export
from dyconv.export.ort_blocked import blocks_layer, rewrite_depthwise_blocked
from dyconv.layers.dynamic_conv import DynamicConvNd

__all__ = [
    "BLOCKED_SPEEDUP",
    "FORMATS",
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "RUNTIMES",
    "ExportError",
    "blockable_depthwise_layers",
    "export_model",
]

#: format -> file extension
FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".ts"}
INPUT_NAME, OUTPUT_NAME = "image", "logits"

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
            # Every shape in the step is static (the sample is a batch of 1, the layers ExportConvs
            # for batch 1).
            y = self.model(sample.unsqueeze(0))
            return carry.clone(), y.squeeze(0).clone()  # a scan body may not return its inputs

        return _scan()(step, x.new_zeros(()), x)[1]


class ExportError(DyconvError):
    """The model could not be exported, or the exported file computes something else."""


def blockable_depthwise_layers(model: nn.Module) -> int:
    """How many float32 dynamic layers of ``model`` ``runtime="onnxruntime"`` runs in
    onnxruntime's blocked conv (:func:`dyconv.export.ort_blocked.blocks_layer`)."""
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
#: (:mod:`dyconv.export.ort_blocked`); faster in onnxruntime, refused by runtimes without
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
    :mod:`dyconv.export.fold`); ``model`` itself is not changed.
    ``runtime="any"`` (default): standard ONNX operators only, a file every ONNX runtime loads
    (onnxruntime, OpenVINO, ...). ``runtime="onnxruntime"`` (ONNX only, explicit): depthwise
    layers whose channels 16 divides run their computed kernels through onnxruntime's blocked
    conv, which the file also defines in standard operators as ONNX functions
    (:mod:`dyconv.export.ort_blocked`); faster in onnxruntime, but runtimes without model-local
    functions (OpenVINO) refuse it. ``"auto"`` is accepted for compatibility and means ``"any"``.
    """
    path = Path(path)
    _check_format(fmt)
    runtime = _resolve_runtime(runtime, fmt)
    if batch is not None and batch < 1:
        raise ConfigError(f"batch must be a positive integer or null (any batch), got {batch}")
    model.eval()
    path.parent.mkdir(parents=True, exist_ok=True)
    dynamic = any(isinstance(m, DynamicConvNd) for m in model.modules())
    net: nn.Module = model
    if dynamic and fmt != "torchscript":  # TorchScript scripts the layers themselves
        # Each dynamic layer becomes an ExportConv for the graph's batch (any batch: the batch-1
        # graph, run once per sample by _PerSample); in ONNX files small depthwise convs take
        # onnxruntime's batch-1 form (ExportConv._mixes_single), except those
        # runtime=onnxruntime runs blocked (aggregated).
        def mix_depthwise(layer: DynamicConvNd) -> bool:
            return fmt == "onnx" and not (runtime == "onnxruntime" and blocks_layer(layer))

        net = prepare_for_export(model, fold_bn=fold_bn, batch=batch or 1, mix_depthwise=mix_depthwise)
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
        with warnings.catch_warnings():
            # Tracing the scan body, dynamo reaches a torch.compile call (Lightning wraps it) that
            # export ignores, and says so once per process: nothing a user can act on.
            warnings.filterwarnings("ignore", message="torch.compile is ignored when called inside torch.export")
            if fmt == "onnx":
                _quiet_onnx_loggers()
                external = _onnx_external_data(model)  # weights over 2 GiB: a side file
                # Without gradients torch.export traces no backward: the per-sample Scan's joint
                # forward/backward graph alone took about as long as the rest of the export.
                with torch.no_grad():
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


