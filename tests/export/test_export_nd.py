"""Export and BatchNorm folding for 1-D/3-D dynamic layers and every routing: the exported
file (onnxruntime) against PyTorch at batch 1 and 5, and the folded copy against the model."""

import pytest
import torch
from torch import nn

from dyconv.export import export_model, verify_export
from dyconv.export.fold import fold_batchnorm, prepare_for_export
from dyconv.layers import DynamicConv1d, DynamicConv3d, DynamicOptions, convert_to_dynamic

pytest.importorskip("onnxruntime")


def _net(nd: int, routing: str) -> nn.Module:
    """conv-BN-ReLU, depthwise conv-BN, pointwise conv (with bias) and a head, made dynamic."""
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd]
    bn = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[nd]
    pool = {1: nn.AdaptiveAvgPool1d, 2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[nd]
    net = nn.Sequential(
        conv(3, 8, 3, padding=1, bias=False), bn(8), nn.ReLU(),
        conv(8, 8, 3, stride=2, padding=1, groups=8, bias=False), bn(8), nn.ReLU(),
        conv(8, 12, 1), nn.ReLU(), pool(1), nn.Flatten(), nn.Linear(12, 4),
    )
    convert_to_dynamic(net, DynamicOptions(num_kernels=3, routing=routing, temperature=3.0), noise=0.3,
                       generator=torch.Generator().manual_seed(0))
    # Random heads and statistics, so that every attention and BN matters.
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.5)
                if m.bias is not None:
                    m.bias.normal_(0, 0.5)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2)
                m.weight.normal_(1, 0.2)
                m.bias.normal_(0, 0.2)
    return net.eval()


SHAPES = {1: (3, 24), 2: (3, 12, 12), 3: (3, 4, 8, 8)}


@pytest.mark.parametrize("routing", ["softmax", "sigmoid", "omni"])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_folding_is_exact_for_every_routing(nd, routing):
    torch.manual_seed(0)
    net = _net(nd, routing)
    x = torch.randn((5,) + SHAPES[nd])
    with torch.no_grad():
        expected = net(x)
        folded = prepare_for_export(net)
        assert [type(folded[i]) for i in (1, 4)] == [nn.Identity, nn.Identity]  # both BNs folded
        torch.testing.assert_close(folded(x), expected, rtol=1e-4, atol=1e-5)
    assert fold_batchnorm(_net(nd, routing)) == 2


@pytest.mark.parametrize(("nd", "routing"), [(1, "softmax"), (1, "sigmoid"), (3, "omni")])
def test_onnx_export_any_batch(tmp_path, nd, routing):
    torch.manual_seed(0)
    net = _net(nd, routing)
    path = tmp_path / "m.onnx"
    export_model(net, torch.randn((2,) + SHAPES[nd]), path, "onnx")
    diffs = verify_export(net, path, "onnx", SHAPES[nd], batches=(1, 5))
    assert set(diffs) == {1, 5}


def test_fixed_batch_exports_of_a_3d_omni_layer(tmp_path):
    torch.manual_seed(0)
    layer = DynamicConv3d(4, 6, 3, padding=1, num_kernels=2, routing="omni").eval()
    net = nn.Sequential(layer)
    for batch in (1, 3):
        path = tmp_path / f"b{batch}.onnx"
        export_model(net, torch.randn(1, 4, 3, 5, 5), path, "onnx", batch=batch)
        verify_export(net, path, "onnx", (4, 3, 5, 5), batches=(batch,))


def test_pt2_export_1d(tmp_path):
    torch.manual_seed(0)
    net = nn.Sequential(DynamicConv1d(2, 4, 5, padding=2, padding_mode="circular", num_kernels=3)).eval()
    path = tmp_path / "m.pt2"
    export_model(net, torch.randn(2, 2, 16), path, "pt2")
    verify_export(net, path, "pt2", (2, 16), batches=(1, 5))


def test_torchscript_exports_omni_layers(tmp_path):
    """TorchScript scripts ODConv's attention (its optional parts included): the saved file
    computes what the model computes at batch 1 and 5."""
    torch.manual_seed(0)
    net = nn.Sequential(DynamicConv1d(2, 4, 3, routing="omni", temperature=2.0),
                        DynamicConv1d(4, 4, 3, groups=4, routing="omni"), DynamicConv1d(4, 3, 1, routing="omni"))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.normal_(0, 1.0)
    net.eval()
    path = tmp_path / "m.ts"
    export_model(net, torch.randn(2, 2, 8), path, "torchscript")
    diffs = verify_export(net, path, "torchscript", (2, 8), batches=(1, 5), rtol=1e-5, atol=1e-6)
    assert set(diffs) == {1, 5}


def test_verification_of_tiny_outputs_is_relative_to_their_scale(tmp_path):
    """An untrained network in eval mode can give logits of 1e-14, far below ``atol``: the check
    must still tell the exported graph from another one, and pass the right one."""
    from dyconv.export import ExportError

    torch.manual_seed(0)
    net = _net(2, "softmax")
    with torch.no_grad():
        net[-1].weight.mul_(1e-12)
        net[-1].bias.mul_(1e-12)
    path = tmp_path / "tiny.onnx"
    export_model(net, torch.randn((2,) + SHAPES[2]), path, "onnx")
    assert max(verify_export(net, path, "onnx", SHAPES[2], batches=(1, 5)).values()) < 1e-15
    with torch.no_grad():
        net[-1].bias.add_(torch.tensor([1e-12, -1e-12, 0.0, 0.0]))  # the same outputs moved by their own size
    with pytest.raises(ExportError, match="largest magnitude"):
        verify_export(net, path, "onnx", SHAPES[2], batches=(1,))
