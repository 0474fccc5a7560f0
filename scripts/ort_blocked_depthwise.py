"""What onnxruntime's blocked (NCHWc) conv would give the depthwise layers of an exported model.

An experiment, not an export option: onnxruntime converts a ``Conv`` to its blocked layout only
when the weight is a constant, so a depthwise conv with a computed (attention-mixed) kernel runs
channel by channel, and ``dyconv.export`` uses K pre-packed convs mixed by ``pi`` on small maps
instead (see docs/deployment.md). This script takes the ``batch=1`` file with every depthwise
kernel aggregated, rewrites each such conv into onnxruntime's own ``com.microsoft.nchwc`` nodes
(``ReorderInput``, ``Conv`` with the kernel reordered in the graph to the blocked
``OIHWBo`` layout, ``ReorderOutput``), checks every rewritten conv's output against the original
file's, and times static / shipped ``batch=1`` file / rewritten file, interleaved in one process.

The rewritten file runs only in onnxruntime's CPU execution provider, and the blocked layout
depends on the CPU (block 8 with AVX2, 16 with AVX-512; this script reads it from onnxruntime),
so it is not portable: it measures what an onnxruntime-specific export target could gain.

    python scripts/ort_blocked_depthwise.py                      # dy_mobilenetv2 x0.5, 224 px
    python scripts/ort_blocked_depthwise.py --width 1.0 --rounds 40
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto
from onnx import helper as h
from onnx import numpy_helper as nh

from dyconv.export import export_model
from dyconv.layers.dynamic_conv import DynamicConvNd
from dyconv.models import create_model
from dyconv.runtime import tune_malloc

NCHWC = "com.microsoft.nchwc"


def session(model: onnx.ModelProto) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def block_size() -> int:
    """onnxruntime's NCHWc block on this CPU: the channels ``ReorderInput`` pads 8 channels to."""
    g = h.make_graph([h.make_node("ReorderInput", ["x"], ["y"], domain=NCHWC)], "probe",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 1, 1])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    probe = h.make_model(g, opset_imports=[h.make_opsetid("", 18), h.make_opsetid(NCHWC, 1)])
    return int(session(probe).run(None, {"x": np.zeros((1, 8, 1, 1), np.float32)})[0].shape[1])


def computed_depthwise(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    constants = {i.name for i in model.graph.initializer}
    return [n for n in model.graph.node if n.op_type == "Conv" and n.input[1] not in constants
            and next((a.i for a in n.attribute if a.name == "group"), 1) > 1]


def rewrite(model: onnx.ModelProto, block: int) -> tuple[onnx.ModelProto, int]:
    """``model`` with each computed-kernel depthwise conv run by onnxruntime's blocked conv."""
    out = copy.deepcopy(model)
    targets = {n.output[0] for n in computed_depthwise(model)}
    nodes, inits = [], []
    for i, n in enumerate(out.graph.node):
        if n.output[0] not in targets:
            nodes.append(n)
            continue
        attrs = {a.name: h.get_attribute_value(a) for a in n.attribute}
        c = attrs["group"]
        padded = -(-c // block) * block
        kh, kw = attrs.get("kernel_shape", [3, 3])
        t = f"blocked{i}_"
        inits += [nh.from_array(np.array([0, 0, 0, 0, padded - c, 0, 0, 0], np.int64), t + "pads"),
                  nh.from_array(np.array([padded // block, block, kh, kw], np.int64), t + "split"),
                  nh.from_array(np.array([padded, 1, kh, kw], np.int64), t + "merge")]
        # OIHW -> OIHWBo: blocks of `block` output channels, the channel innermost.
        nodes += [h.make_node("Pad", [n.input[1], t + "pads"], [t + "w_pad"]),
                  h.make_node("Reshape", [t + "w_pad", t + "split"], [t + "w_split"]),
                  h.make_node("Transpose", [t + "w_split"], [t + "w_t"], perm=[0, 2, 3, 1]),
                  h.make_node("Reshape", [t + "w_t", t + "merge"], [t + "w"]),
                  h.make_node("ReorderInput", [n.input[0]], [t + "x"], domain=NCHWC)]
        inputs = [t + "x", t + "w"]
        if len(n.input) > 2 and n.input[2]:
            inits.append(nh.from_array(np.array([0, padded - c], np.int64), t + "bpads"))
            nodes.append(h.make_node("Pad", [n.input[2], t + "bpads"], [t + "b"]))
            inputs.append(t + "b")
        keep = {k: v for k, v in attrs.items() if k in ("strides", "pads", "dilations", "activation",
                                                        "activation_params")}
        nodes += [h.make_node("Conv", inputs, [t + "y"], domain=NCHWC, group=padded, **keep),
                  h.make_node("ReorderOutput", [t + "y"], [n.output[0]], domain=NCHWC, channels=c)]
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(inits)
    out.opset_import.append(h.make_opsetid(NCHWC, 1))
    return out, len(targets)


def max_relative_difference(a: onnx.ModelProto, b: onnx.ModelProto, names: list[str], x: np.ndarray) -> float:
    """Largest ``max|a - b| / max|a|`` over the named tensors (every rewritten conv's output)."""
    def outputs(m: onnx.ModelProto) -> list[np.ndarray]:
        m = copy.deepcopy(m)
        m.graph.output.extend(h.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
        return session(m).run(names, {"image": x})

    return max(float(np.abs(u - v).max() / (np.abs(u).max() + 1e-30)) for u, v in zip(outputs(a), outputs(b)))


def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the experiment; returns the median ms per file (``static``, ``shipped``, ``blocked``)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=60)
    args = parser.parse_args(argv)
    tune_malloc()
    torch.manual_seed(0)
    kwargs = {"num_classes": 1000, "width_mult": args.width}
    static, dynamic = create_model("mobilenetv2", **kwargs).eval(), create_model("dy_mobilenetv2", **kwargs).eval()
    x = torch.randn(1, 3, args.size, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        export_model(static, x, Path(tmp) / "static.onnx", "onnx")
        export_model(dynamic, x, Path(tmp) / "shipped.onnx", "onnx", batch=1)
        rule = DynamicConvNd._export_mixture_single
        DynamicConvNd._export_mixture_single = lambda self, x: False  # every depthwise kernel aggregated
        try:
            export_model(dynamic, x, Path(tmp) / "aggregated.onnx", "onnx", batch=1)
        finally:
            DynamicConvNd._export_mixture_single = rule
        files = {name: onnx.load(str(Path(tmp) / f"{name}.onnx")) for name in ("static", "shipped", "aggregated")}
    block = block_size()
    files["blocked"], count = rewrite(files["aggregated"], block)
    image = x.numpy()
    names = [n.output[0] for n in computed_depthwise(files["aggregated"])]
    diff = max_relative_difference(files["aggregated"], files["blocked"], names, image)
    print(f"onnxruntime {ort.__version__}, NCHWc block {block}: {count} depthwise convs rewritten; "
          f"largest relative difference of their outputs {diff:.1e}")
    if diff > 1e-5:
        raise SystemExit("the rewritten convs compute something else")
    runs = {name: session(m) for name, m in files.items() if name != "aggregated"}
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name in list(runs) if r % 2 else list(runs)[::-1]:
            t0 = time.perf_counter()
            runs[name].run(None, {"image": image})
            times[name].append(time.perf_counter() - t0)
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    print(f"dy_mobilenetv2 x{args.width} ({args.size} px), batch 1, 1 thread, median of {args.rounds} interleaved "
          "rounds:")
    for name, label in (("static", "static twin"), ("shipped", "dyconv batch=1 file"),
                        ("blocked", "depthwise convs rewritten to onnxruntime's blocked conv")):
        print(f"  {label:58s} {ms[name]:6.2f} ms  {ms[name] / ms['static']:.2f}x")
    return ms


if __name__ == "__main__":
    main()
