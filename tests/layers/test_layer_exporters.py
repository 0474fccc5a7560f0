"""A user's own models holding dynamic layers go through every exporter PyTorch users call
directly, and the result equals eager PyTorch at batch 1 and at a batch other than the traced one.

The model (:class:`UserModel`) holds 1-D, 2-D and 3-D dynamic layers with the three routings and
the four conv kinds (dense, depthwise, pointwise, grouped); none of it is dyconv's model zoo.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from dyconv.layers import DynamicConv1d, DynamicConv2d, DynamicConv3d, dynamic_layers

CONVS = {1: DynamicConv1d, 2: DynamicConv2d, 3: DynamicConv3d}
POOLS = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}
TRACED_BATCH, OTHER_BATCH = 2, 3


def _branch(dims: int) -> nn.Sequential:
    """Dense softmax, depthwise sigmoid, pointwise omni, grouped omni, dense strided omni."""
    conv = CONVS[dims]
    return nn.Sequential(
        conv(3, 16, 3, padding=1, num_kernels=3, temperature=1.0),
        nn.ReLU(),
        conv(16, 16, 3, padding=1, groups=16, routing="sigmoid"),
        conv(16, 8, 1, routing="omni", temperature=1.0),
        conv(8, 8, 3, padding=1, groups=2, routing="omni", temperature=1.0, reduction=2),
        nn.ReLU(),
        conv(8, 6, 3, stride=2, padding=1, bias=False, routing="omni", temperature=1.0),
        POOLS[dims](1),
        nn.Flatten(),
    )


class UserModel(nn.Module):
    """A 1-D, a 2-D and a 3-D branch of dynamic layers on one ``(B, 3, 8, 8)`` input (seen as a
    sequence of 64 steps and as a 4x4x4 volume), so one export covers the three layer classes."""

    def __init__(self) -> None:
        super().__init__()
        self.seq, self.image, self.volume = _branch(1), _branch(2), _branch(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        volume = x.reshape(x.shape[0], 3, 4, 4, 4)
        return torch.cat([self.seq(x.flatten(2)), self.image(x), self.volume(volume)], dim=1)


def user_model() -> nn.Module:
    torch.manual_seed(0)
    model = UserModel()
    with torch.no_grad():  # attention far from uniform, so a wrong mixture shows
        for _, layer in dynamic_layers(model):
            for head in layer.attention_heads():
                head.bias.normal_(0, 1.5)
    return model.eval()


def inputs(batch: int) -> torch.Tensor:
    return torch.randn(batch, 3, 8, 8, generator=torch.Generator().manual_seed(batch))


def check_any_batch(run, model: nn.Module) -> None:
    for batch in (1, OTHER_BATCH):
        x = inputs(batch)
        with torch.no_grad():
            expected = model(x)
        got = run(x)
        torch.testing.assert_close(torch.as_tensor(got), expected, rtol=1e-4, atol=1e-5)


def test_jit_trace():
    model = user_model()
    with warnings.catch_warnings():
        warnings.simplefilter("error", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, inputs(TRACED_BATCH))
    check_any_batch(traced, model)


def test_jit_script():
    model = user_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.script is deprecated"
        scripted = torch.jit.script(model)
    check_any_batch(scripted, model)


def test_torch_export_dynamic_batch():
    model = user_model()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (inputs(TRACED_BATCH),), dynamic_shapes=({0: batch},))
    check_any_batch(program.module(), model)


def _onnxruntime(path):
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: torch.from_numpy(session.run(None, {name: x.numpy()})[0])


def test_onnx_export_torchscript_exporter(tmp_path):
    """``dynamo=False`` (the default exporter up to torch 2.8) with a dynamic batch axis."""
    pytest.importorskip("onnx")
    model = user_model()
    path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.9+: dynamo=False is deprecated
        torch.onnx.export(model, (inputs(TRACED_BATCH),), str(path), dynamo=False, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}})
    check_any_batch(_onnxruntime(path), model)


def test_onnx_export_dynamo_exporter(tmp_path, capfd):
    """``dynamo=True`` with a dynamic batch; nothing about the layer's internals reaches the console."""
    pytest.importorskip("onnxscript")
    model = user_model()
    path = tmp_path / "model.onnx"
    batch = torch.export.Dim("batch", min=1, max=64)
    torch.onnx.export(model, (inputs(TRACED_BATCH),), str(path), dynamo=True, input_names=["x"],
                      dynamic_shapes=({0: batch},), verbose=False)
    check_any_batch(_onnxruntime(path), model)
    assert "Pred is a Python constant" not in "".join(capfd.readouterr())
