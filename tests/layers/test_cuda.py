"""Dynamic convs on CUDA (skipped without a GPU; scripts/gpu_check.py runs these on a GPU
machine): every path computes what the CPU computes, forward and backward, fp32 and bf16."""

import pytest
import torch

from dyconv.layers import PATHS, DynamicConv1d, DynamicConv2d, DynamicConv3d

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

CASES = [  # (cin, cout, kernel, stride, groups, side)
    (8, 16, 3, 1, 1, 12),
    (16, 16, 3, 2, 16, 12),  # depthwise
    (16, 24, 1, 1, 1, 6),  # pointwise
    (32, 32, 3, 1, 1, 3),  # small map: mixture under auto
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("batch", [1, 5])
def test_paths_match_cpu(case, path, batch):
    cin, cout, k, s, g, side = case
    torch.manual_seed(0)
    layer = DynamicConv2d(cin, cout, k, s, k // 2, groups=g, temperature=1.0, path=path)
    x = torch.randn(batch, cin, side, side, requires_grad=True)
    ref = layer(x)
    ref.square().sum().backward()
    ref_grads = [x.grad.clone(), layer.weight.grad.clone()]
    gpu = layer.cuda()
    gpu.zero_grad()
    xc = x.detach().cuda().requires_grad_(True)
    out = gpu(xc)
    out.square().sum().backward()
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(xc.grad.cpu(), ref_grads[0], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gpu.weight.grad.cpu(), ref_grads[1], rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("path", PATHS)
def test_bf16_autocast_close_to_fp32(path):
    torch.manual_seed(0)
    layer = DynamicConv2d(16, 32, 3, padding=1, temperature=1.0, path=path).cuda()
    x = torch.randn(4, 16, 8, 8, device="cuda")
    ref = layer(x)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=5e-2, atol=5e-2)


@pytest.mark.parametrize("routing", ["softmax", "sigmoid", "omni"])
@pytest.mark.parametrize(("cls", "shape"), [(DynamicConv1d, (20,)), (DynamicConv3d, (4, 6, 6))])
@pytest.mark.parametrize("path", PATHS)
def test_nd_and_routings_match_cpu(cls, shape, routing, path):
    if path == "mixture" and routing == "omni":
        pytest.skip("omni with a spatial attention has no mixture path")
    torch.manual_seed(0)
    layer = cls(8, 12, 3, 1, 1, num_kernels=3, temperature=1.5, path=path, routing=routing).eval()
    x = torch.randn((5, 8, *shape), requires_grad=True)
    ref = layer(x)
    ref.square().sum().backward()
    ref_grad = x.grad.clone()
    gpu = layer.cuda()
    xc = x.detach().cuda().requires_grad_(True)
    out = gpu(xc)
    out.square().sum().backward()
    torch.testing.assert_close(out.cpu(), ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(xc.grad.cpu(), ref_grad, rtol=1e-3, atol=1e-3)
