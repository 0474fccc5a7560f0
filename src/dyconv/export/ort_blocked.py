"""The ``runtime="onnxruntime"`` ONNX export form: depthwise convs with computed kernels in
onnxruntime's blocked layout, with a standard-ONNX fallback for runtimes with model-local functions.

onnxruntime lays a ``Conv`` out in its blocked NCHWc format (its fast depthwise kernels) only when
the weight is a constant; a depthwise conv whose kernel the graph computes (a dynamic layer's
attention-mixed kernel) runs channel by channel instead. Its internal ``com.microsoft.nchwc``
``Conv`` reads the weight at run time, so this module rewrites each such conv into
``ReorderInput`` -> blocked ``Conv`` -> ``ReorderOutput``. The kernel goes through a
``ReorderInput`` too (seen as a ``(1, C, kh, kw)`` map, its blocked form is the conv's ``OIHWBo``
layout), so the CPU's block (8 with AVX2, 16 with AVX-512) is onnxruntime's business alone: no
value in the graph depends on it. Only convs whose channel count 16 divides are rewritten, so no
block pads them.

The file also defines those three operators as ONNX model-local functions in standard operators
(:func:`fallback_functions`): the reorders are identities and the conv is the standard ``Conv``,
which together compute exactly the original conv. onnxruntime runs its own kernels where it has
them (x86-64 CPUs) and expands the functions where it does not; other runtimes that support
model-local functions expand them, and ``onnx.inliner.inline_local_functions`` turns the file
into standard operators only. A tool that folds constants by the functions' meaning but keeps
the blocked nodes finds nothing to fold (the kernels are computed from the input).
``scripts/benchmark_export.py`` measures the gain.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["CHANNEL_MULTIPLE", "NCHWC_DOMAIN", "blocks_layer", "fallback_functions", "rewrite_depthwise_blocked"]

NCHWC_DOMAIN = "com.microsoft.nchwc"
#: A conv is rewritten only when this divides its channels: every NCHWc block (8, 16) then pads
#: them the same way (not at all), so one graph serves every CPU.
CHANNEL_MULTIPLE = 16


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
    channels that 16 divides, so the reorders pad nothing and are identities (the kernel's too: it
    keeps its standard layout), and the blocked conv is the standard one."""
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


def _depthwise_conv(
    node: Any, constants: set[str], shapes: dict[str, list[int]], float32: set[str]
) -> tuple[int, dict[str, Any]] | None:
    """Channel count and attributes of a 2-D float32 depthwise ``Conv`` with a computed kernel
    that can be rewritten (the blocked kernels are float32); None for any other node."""
    from onnx import helper as h

    if node.op_type != "Conv" or node.domain not in ("", "ai.onnx") or len(node.input) < 2:
        return None
    if node.input[1] in constants or not {node.input[0], node.input[1]} <= float32:
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
    return groups, attrs


def _rewrite(graph: Any, outer_constants: set[str]) -> int:
    from onnx import TensorProto
    from onnx import helper as h
    from onnx import numpy_helper as nh

    constants = set(outer_constants) | {i.name for i in graph.initializer}
    constants |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    values = (*graph.value_info, *graph.input, *graph.output)
    shapes = {v.name: d for v in values if (d := _dims(v)) is not None}
    shapes |= {i.name: list(i.dims) for i in graph.initializer}
    float32 = {v.name for v in values if v.type.tensor_type.elem_type == TensorProto.FLOAT}
    count, nodes = 0, []
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                count += _rewrite(sub, constants)
        found = _depthwise_conv(node, constants, shapes, float32)
        if found is None:
            nodes.append(node)
            continue
        channels, given = found
        kh, kw = shapes[node.input[1]][2:]
        t = f"dyconv_blocked_{channels}_{len(nodes)}_"
        graph.initializer.extend([
            nh.from_array(np.array([1, channels, kh, kw], np.int64), t + "as_map"),
            nh.from_array(np.array([channels, 1, kh, kw], np.int64), t + "as_kernel"),
        ])
        # The kernel (C, 1, kh, kw) in the blocked conv's OIHWBo layout is the kernel seen as a
        # (1, C, kh, kw) map, reordered like an input: onnxruntime's own ReorderInput lays it out
        # for this CPU's block; expanded, the reorder is the identity and the kernel stays OIHW.
        # Every attribute the fallback function reads, set (defaults spelled out), and a bias.
        attrs = {"group": channels, "kernel_shape": [kh, kw], "pads": given.get("pads", [0, 0, 0, 0]),
                 "strides": given.get("strides", [1, 1])}
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else t + "b"
        if bias == t + "b":
            graph.initializer.append(nh.from_array(np.zeros(channels, np.float32), bias))
        nodes += [
            h.make_node("Reshape", [node.input[1], t + "as_map"], [t + "w_map"]),
            h.make_node("ReorderInput", [t + "w_map"], [t + "w_blocked"], domain=NCHWC_DOMAIN),
            h.make_node("Reshape", [t + "w_blocked", t + "as_kernel"], [t + "w"]),
            h.make_node("ReorderInput", [node.input[0]], [t + "x"], domain=NCHWC_DOMAIN),
            h.make_node("Conv", [t + "x", t + "w", bias], [t + "y"], domain=NCHWC_DOMAIN, **attrs),
            h.make_node("ReorderOutput", [t + "y"], [node.output[0]], domain=NCHWC_DOMAIN, channels=channels),
        ]
        count += 1
    if len(nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(nodes)
    return count
