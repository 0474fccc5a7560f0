"""The default ONNX export form (``runtime=auto``/``onnxruntime``): depthwise convs with computed
kernels in onnxruntime's blocked layout, with a standard-ONNX fallback for every other runtime.

onnxruntime lays a ``Conv`` out in its blocked NCHWc format (its fast depthwise kernels) only when
the weight is a constant; a depthwise conv whose kernel the graph computes (a dynamic layer's
attention-mixed kernel) runs channel by channel instead. Its internal ``com.microsoft.nchwc``
``Conv`` reads the weight at run time, so this module rewrites each such conv into
``ReorderInput`` -> blocked ``Conv`` (the kernel reordered in the graph to the blocked ``OIHWBo``
layout) -> ``ReorderOutput``. The block is the CPU's (8 with AVX2, 16 with AVX-512): the graph
reads it when it runs (a ``ReorderInput`` of 4 channels pads them to one block), and only convs
whose channel count 16 divides are rewritten, so the padded layout is the same for both.

The file also defines those three operators as ONNX model-local functions in standard operators
(:func:`fallback_functions`): the reorders are identities and the conv is the standard ``Conv``.
onnxruntime runs its own kernels where it has them (x86-64 CPUs) and expands the functions where
it does not; other runtimes that support model-local functions expand them, and
``onnx.inliner.inline_local_functions`` turns the file into standard operators only. Expanded,
the probe's reorder pads nothing and the graph takes the block as 1, for which the kernel reorder
is the identity: the fallback computes exactly the standard conv. ``scripts/benchmark_export.py`` measures the gain.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = [
    "CHANNEL_MULTIPLE", "NCHWC_DOMAIN", "block_size", "blocks_layer", "fallback_functions", "rewrite_depthwise_blocked",
]

NCHWC_DOMAIN = "com.microsoft.nchwc"
#: A conv is rewritten only when this divides its channels: every NCHWc block (8, 16) then pads
#: them the same way (not at all), so one graph serves every CPU.
CHANNEL_MULTIPLE = 16
#: Channels of the block probe: onnxruntime's ``ReorderInput`` takes multiples of 4 and pads them
#: to its block (8 or 16); the expanded (identity) reorder leaves 4, which reads as block 1.
_PROBE = 4


@functools.cache
def block_size() -> int:
    """onnxruntime's NCHWc block on this CPU (8 or 16; 0 when it has no blocked kernels); probed
    once per process (export_checkpoint and export_model both check it)."""
    import onnxruntime as ort
    from onnx import TensorProto
    from onnx import helper as h

    graph = h.make_graph([h.make_node("ReorderInput", ["x"], ["y"], domain=NCHWC_DOMAIN)], "probe",
                         [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, _PROBE, 1, 1])],
                         [h.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    probe = h.make_model(graph, opset_imports=[h.make_opsetid("", 18), h.make_opsetid(NCHWC_DOMAIN, 1)])
    try:
        session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
        return int(session.run(None, {"x": np.zeros((1, _PROBE, 1, 1), np.float32)})[0].shape[1])
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
    if count:
        if not any(o.domain == NCHWC_DOMAIN for o in proto.opset_import):
            proto.opset_import.append(h.make_opsetid(NCHWC_DOMAIN, 1))
        opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 18)
        defined = {(f.domain, f.name) for f in proto.functions}
        proto.functions.extend(f for f in fallback_functions(opset) if (f.domain, f.name) not in defined)
    return count


#: The attributes the rewrite sets on a blocked ``Conv`` (the functions declare exactly these).
_CONV_ATTRIBUTES = ("group", "kernel_shape", "pads", "strides")


def fallback_functions(opset: int) -> list[Any]:
    """``ReorderInput``, ``Conv`` and ``ReorderOutput`` of the ``com.microsoft.nchwc`` domain as
    model-local functions in standard operators (opset ``opset``), as the rewrite uses them:
    channels that 16 divides (the reorders pad nothing, so they are identities) and a block probe
    read as block 1 once expanded (the kernel keeps its standard layout)."""
    from onnx import AttributeProto
    from onnx import helper as h

    std = [h.make_opsetid("", opset)]
    conv = h.make_node("Conv", ["X", "W", "B"], ["Y"])
    for name in _CONV_ATTRIBUTES:
        kind = AttributeProto.INT if name == "group" else AttributeProto.INTS
        conv.attribute.append(AttributeProto(name=name, ref_attr_name=name, type=kind))
    return [
        h.make_function(NCHWC_DOMAIN, "ReorderInput", ["X"], ["Y"], [h.make_node("Identity", ["X"], ["Y"])], std),
        h.make_function(NCHWC_DOMAIN, "Conv", ["X", "W", "B"], ["Y"], [conv], std, attributes=list(_CONV_ATTRIBUTES)),
        h.make_function(NCHWC_DOMAIN, "ReorderOutput", ["X"], ["Y"], [h.make_node("Identity", ["X"], ["Y"])], std,
                        attributes=["channels"]),
    ]


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
        given = {a.name: h.get_attribute_value(a) for a in node.attribute}
        # Every attribute the fallback function reads, set (defaults spelled out), and a bias.
        attrs = {"group": channels, "kernel_shape": [kh, kw], "pads": given.get("pads", [0, 0, 0, 0]),
                 "strides": given.get("strides", [1, 1])}
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else t + "b"
        if bias == t + "b":
            graph.initializer.append(nh.from_array(np.zeros(channels, np.float32), bias))
        nodes += [
            h.make_node("Conv", [t + "x", t + "w", bias], [t + "y"], domain=NCHWC_DOMAIN, **attrs),
            h.make_node("ReorderOutput", [t + "y"], [node.output[0]], domain=NCHWC_DOMAIN, channels=channels),
        ]
        count += 1
    if len(nodes) != len(graph.node):  # this graph has rewrites: read the block first
        graph.initializer.extend([
            nh.from_array(np.zeros((1, _PROBE, 1, 1), np.float32), "dyconv_nchwc_probe"),
            nh.from_array(np.array([_PROBE], np.int64), "dyconv_nchwc_probe_channels"),
            nh.from_array(np.array([1], np.int64), "dyconv_nchwc_one"),
        ])
        # onnxruntime pads the probe's channels to its block; expanded, the reorder keeps them, and
        # the block is 1 (the kernel keeps its standard layout, as the standard Conv reads it).
        probe = [
            h.make_node("ReorderInput", ["dyconv_nchwc_probe"], ["dyconv_nchwc_probe_blocked"], domain=NCHWC_DOMAIN),
            h.make_node("Shape", ["dyconv_nchwc_probe_blocked"], ["dyconv_nchwc_padded"], start=1, end=2),
            h.make_node("Equal", ["dyconv_nchwc_padded", "dyconv_nchwc_probe_channels"], ["dyconv_nchwc_expanded"]),
            h.make_node("Where", ["dyconv_nchwc_expanded", "dyconv_nchwc_one", "dyconv_nchwc_padded"],
                        ["dyconv_nchwc_block"]),
        ]
        del graph.node[:]
        graph.node.extend(probe + nodes)
    return count
