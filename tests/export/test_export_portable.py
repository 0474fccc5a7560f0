"""The default ONNX file of every export route is standard ONNX: it loads in onnxruntime and in
OpenVINO (CPU, f32) and computes what eager PyTorch computes at batch 1 and 5.

Routes: ``export_model`` for any batch (one ``Scan`` over the samples), for a fixed batch of 1
(also without BatchNorm folding) and of 5, and a user's own ``torch.onnx.export`` with
``dynamo=False`` and ``dynamo=True``. The model holds 1-D, 2-D and 3-D dynamic layers with the
three routings and the dense, depthwise, pointwise and grouped kinds; to keep the suite fast
only the batch-1 file and the ``dynamo=False`` route take all of it, the others its 2-D branch
(the 1-D and 3-D any-batch files are checked in onnxruntime by test_export_nd.py).
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from dyconv.export import export_model
from dyconv.layers import DynamicConv1d, DynamicConv2d, DynamicConv3d, dynamic_layers

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
ov = pytest.importorskip("openvino")

CONVS = {1: DynamicConv1d, 2: DynamicConv2d, 3: DynamicConv3d}
BNS = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
POOLS = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}


def _branch(dims: int) -> nn.Sequential:
    """Dense softmax + BatchNorm, depthwise sigmoid, pointwise omni, grouped omni + BatchNorm."""
    conv, bn = CONVS[dims], BNS[dims]
    return nn.Sequential(
        conv(2, 8, 3, padding=1, num_kernels=3, temperature=2.0), bn(8), nn.ReLU(),
        conv(8, 8, 3, stride=2, padding=1, groups=8, routing="sigmoid"),
        conv(8, 4, 1, routing="omni", temperature=2.0),
        conv(4, 4, 3, padding=1, groups=2, bias=False, routing="omni", reduction=2), bn(4),
        POOLS[dims](1), nn.Flatten(),
    )


class Branches(nn.Module):
    """The three branches on one ``(B, 2, 4, 4)`` input (a 16-step sequence, an image, a 2x2x4 volume)."""

    def __init__(self) -> None:
        super().__init__()
        self.seq, self.image, self.volume = _branch(1), _branch(2), _branch(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        volume = x.reshape(x.shape[0], 2, 2, 2, 4)
        return torch.cat([self.seq(x.flatten(2)), self.image(x), self.volume(volume)], dim=1)


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    net = Branches()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # attention far from uniform and BatchNorm statistics that matter
        for _, layer in dynamic_layers(net):
            for head in layer.attention_heads():
                head.bias.normal_(0, 1.5, generator=gen)
        for m in net.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    return net.eval()


def _inputs(batch: int) -> torch.Tensor:
    return torch.randn(batch, 2, 4, 4, generator=torch.Generator().manual_seed(batch))


def _runners(path):
    """The file in onnxruntime and in OpenVINO (CPU at f32: its default lower precision hint
    changes the outputs of static models too)."""
    import openvino.properties.hint as hints

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    compiled = ov.Core().compile_model(str(path), "CPU", {hints.inference_precision: ov.Type.f32})
    return {
        "onnxruntime": lambda x: session.run(None, {session.get_inputs()[0].name: x})[0],
        "openvino": lambda x: compiled(x)[compiled.output(0)],
    }


def _check(path, model: nn.Module, batches: tuple[int, ...]) -> None:
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain for o in proto.opset_import} <= {"", "ai.onnx"} and not proto.functions
    for runtime, run in _runners(path).items():
        for batch in batches:
            x = _inputs(batch)
            with torch.no_grad():
                expected = model(x)
            scale = float(expected.abs().max())
            assert scale > 0.05
            got = torch.from_numpy(run(x.numpy()))
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5 * scale, msg=f"{runtime} at batch {batch}")


class Image(nn.Module):
    """The 2-D branch alone, on the same input."""

    def __init__(self, branches: Branches) -> None:
        super().__init__()
        self.image = branches.image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.image(x)


@pytest.mark.parametrize(
    ("batch", "options", "part"),
    [(None, {}, "image"), (1, {}, "all"), (5, {}, "image"), (1, {"fold_bn": False, "runtime": "auto"}, "image")],
    ids=["any-batch", "batch1", "batch5", "batch1-unfolded-auto"],
)
def test_export_model_default_file_runs_in_onnxruntime_and_openvino(model, tmp_path, batch, options, part):
    net = Image(model) if part == "image" else model
    path = tmp_path / "model.onnx"
    info = export_model(net, _inputs(2), path, "onnx", batch=batch, **options)
    assert info.get("blocked_depthwise_convs", 0) == 0
    _check(path, net, (1, 5) if batch is None else (batch,))


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-exporter", "dynamo-exporter"])
def test_a_users_torch_onnx_export_runs_in_onnxruntime_and_openvino(model, tmp_path, dynamo):
    pytest.importorskip("onnxscript")
    model = Image(model) if dynamo else model
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.9+: dynamo=False is deprecated
        if dynamo:
            batch = torch.export.Dim("batch", min=1, max=64)
            torch.onnx.export(model, (_inputs(2),), str(path), dynamo=True, input_names=["x"],
                              dynamic_shapes=({0: batch},), verbose=False)
        else:
            torch.onnx.export(model, (_inputs(2),), str(path), dynamo=False, input_names=["x"],
                              output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    _check(path, model, (1, 5))
