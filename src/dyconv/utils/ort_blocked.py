"""The ``runtime=onnxruntime`` export target: depthwise convs with computed kernels in onnxruntime's
blocked layout.

onnxruntime lays a ``Conv`` out in its blocked NCHWc format (its fast depthwise kernels) only when
the weight is a constant; a depthwise conv whose kernel the graph computes (a dynamic layer's
attention-mixed kernel) runs channel by channel instead. Its internal ``com.microsoft.nchwc``
``Conv`` reads the weight at run time, so this module rewrites each such conv into
``ReorderInput`` -> blocked ``Conv`` (the kernel reordered in the graph to the blocked ``OIHWBo``
layout) -> ``ReorderOutput``. The block is the CPU's (8 with AVX2, 16 with AVX-512): the graph
reads it when it runs (a ``ReorderInput`` of 8 channels pads them to one block), and only convs
whose channel count 16 divides are rewritten, so the padded layout is the same for both.

The rewritten file runs only in onnxruntime's CPU execution provider (other runtimes do not know
the domain; onnxruntime may have no blocked kernels on ARM). ``scripts/benchmark_export.py
--runtime-onnxruntime`` measures the gain.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = ["CHANNEL_MULTIPLE", "NCHWC_DOMAIN", "block_size", "blocks_layer", "rewrite_depthwise_blocked"]

NCHWC_DOMAIN = "com.microsoft.nchwc"
#: A conv is rewritten only when this divides its channels: every NCHWc block (8, 16) then pads
#: them the same way (not at all), so one graph serves every CPU.
CHANNEL_MULTIPLE = 16


@functools.cache
def block_size() -> int:
    """onnxruntime's NCHWc block on this CPU (8 or 16; 0 when it has no blocked kernels); probed
    once per process (export_checkpoint and export_model both check it)."""
    import onnxruntime as ort
    from onnx import TensorProto
    from onnx import helper as h

    graph = h.make_graph([h.make_node("ReorderInput", ["x"], ["y"], domain=NCHWC_DOMAIN)], "probe",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 1, 1])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    probe = h.make_model(graph, opset_imports=[h.make_opsetid("", 18), h.make_opsetid(NCHWC_DOMAIN, 1)])
    try:
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        return int(session.run(None, {"x": np.zeros((1, 8, 1, 1), np.float32)})[0].shape[1])
    except Exception:  # no such kernels in this build or on this CPU
        return 0


def blocks_layer(layer: Any) -> bool:
    """Whether the dynamic layer ``layer`` exports as a conv :func:`rewrite_depthwise_blocked`
    rewrites (2-D depthwise, channels :data:`CHANNEL_MULTIPLE` divides, no dilation): the export
    then aggregates its kernels (the conv the rewrite looks for) instead of mixing K convs."""
    channels = layer.groups
    return (layer._ndim == 2 and channels == layer.in_channels == layer.out_channels
            and channels % CHANNEL_MULTIPLE == 0 and all(d == 1 for d in layer.dilation))


def rewrite_depthwise_blocked(proto: Any) -> int:
    """Rewrite, in place, every depthwise ``Conv`` of ``proto`` (an ``onnx.ModelProto``; subgraphs
    such as a ``Scan`` body included) whose kernel is computed and whose channels
    :data:`CHANNEL_MULTIPLE` divides; returns how many. Adds the ``com.microsoft.nchwc`` opset."""
    from onnx import helper as h

    count = _rewrite(proto.graph, set())
    if count and not any(o.domain == NCHWC_DOMAIN for o in proto.opset_import):
        proto.opset_import.append(h.make_opsetid(NCHWC_DOMAIN, 1))
    return count


def _dims(value: Any) -> list[int] | None:
    shape = value.type.tensor_type.shape
    if not value.type.tensor_type.HasField("shape"):
        return None
    dims = [d.dim_value if d.HasField("dim_value") else -1 for d in shape.dim]
    return None if any(d < 0 for d in dims) else dims


def _depthwise_channels(node: Any, constants: set[str], shapes: dict[str, list[int]]) -> int | None:
    """The channel count of a 2-D depthwise ``Conv`` with a computed kernel that can be rewritten."""
    from onnx import helper as h

    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    if node.input[1] in constants:
        return None
    attrs = {a.name: h.get_attribute_value(a) for a in node.attribute}
    groups = int(attrs.get("group", 1))
    weight, x = shapes.get(node.input[1]), shapes.get(node.input[0])
    if groups < 2 or groups % CHANNEL_MULTIPLE or weight is None or len(weight) != 4:
        return None
    if weight[:2] != [groups, 1] or (x is not None and (len(x) != 4 or x[1] != groups)):
        return None
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        return None
    if attrs.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        return None
    return groups


def _rewrite(graph: Any, outer_constants: set[str]) -> int:
    from onnx import helper as h
    from onnx import numpy_helper as nh

    constants = set(outer_constants) | {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    shapes = {v.name: d for v in (*graph.value_info, *graph.input, *graph.output) if (d := _dims(v)) is not None}
    shapes |= {i.name: list(i.dims) for i in graph.initializer}
    count, nodes = 0, []
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                count += _rewrite(sub, constants)
        channels = _depthwise_channels(node, constants, shapes)
        if channels is None:
            nodes.append(node)
            continue
        kh, kw = shapes[node.input[1]][2:]
        t = f"dyconv_blocked_{channels}_{len(nodes)}_"
        graph.initializer.extend([
            nh.from_array(np.array([channels], np.int64), t + "c"),
            nh.from_array(np.array([kh * kw], np.int64), t + "taps"),
            nh.from_array(np.array([channels, 1, kh, kw], np.int64), t + "merge"),
        ])
        # OIHW -> OIHWBo: blocks of `block` channels, the channel innermost.
        nodes += [
            h.make_node("Div", [t + "c", "dyconv_nchwc_block"], [t + "blocks"]),
            h.make_node("Concat", [t + "blocks", "dyconv_nchwc_block", t + "taps"], [t + "split"], axis=0),
            h.make_node("Reshape", [node.input[1], t + "split"], [t + "w_split"]),
            h.make_node("Transpose", [t + "w_split"], [t + "w_t"], perm=[0, 2, 1]),
            h.make_node("Reshape", [t + "w_t", t + "merge"], [t + "w"]),
            h.make_node("ReorderInput", [node.input[0]], [t + "x"], domain=NCHWC_DOMAIN),
        ]
        attrs = {a.name: h.get_attribute_value(a) for a in node.attribute
                 if a.name in ("kernel_shape", "pads", "strides", "dilations")}
        inputs = [t + "x", t + "w", *node.input[2:3]]
        nodes += [
            h.make_node("Conv", inputs, [t + "y"], domain=NCHWC_DOMAIN, group=channels, **attrs),
            h.make_node("ReorderOutput", [t + "y"], [node.output[0]], domain=NCHWC_DOMAIN, channels=channels),
        ]
        count += 1
    if len(nodes) != len(graph.node):  # this graph has rewrites: read the block first
        graph.initializer.append(nh.from_array(np.zeros((1, 8, 1, 1), np.float32), "dyconv_nchwc_probe"))
        probe = [
            h.make_node("ReorderInput", ["dyconv_nchwc_probe"], ["dyconv_nchwc_probe_blocked"], domain=NCHWC_DOMAIN),
            h.make_node("Shape", ["dyconv_nchwc_probe_blocked"], ["dyconv_nchwc_block"], start=1, end=2),
        ]
        del graph.node[:]
        graph.node.extend(probe + nodes)
    return count
