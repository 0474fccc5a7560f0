"""DynamicConv1d/2d/3d and the three routings against an independent naive reference: for each
sample, build that sample's kernel from the attention by hand and run F.conv1d/2d/3d."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dyconv.layers import (
    PATHS,
    DynamicConv1d,
    DynamicConv2d,
    DynamicConv3d,
    DynamicOptions,
    OmniAttention,
    convert_to_dynamic,
    dynamic_layers,
)
from naive import naive_forward

CLASSES = {1: DynamicConv1d, 2: DynamicConv2d, 3: DynamicConv3d}
INPUT = {1: (9,), 2: (7, 8), 3: (5, 6, 5)}


GEOMETRIES = [
    # (in, out, kernel, stride, padding, dilation, groups)
    (4, 6, 3, 1, 1, 1, 1),
    (4, 4, 3, 2, 1, 1, 4),  # depthwise, strided
    (4, 6, 3, 1, "same", 2, 2),  # grouped, dilated, "same"
    (4, 6, 2, 1, "same", 1, 1),  # even kernel: asymmetric "same"
    (4, 6, 1, 2, 0, 1, 1),  # strided pointwise
    (6, 4, 2, 2, "valid", 1, 2),
]


def _layer(nd, geometry, **kwargs):
    cin, cout, k, s, p, d, g = geometry
    return CLASSES[nd](cin, cout, k, s, p, d, g, **kwargs).double()


def _check_forward_and_grads(layer, x):
    y = layer(x)
    ref = naive_forward(layer, x)
    assert y.shape == ref.shape
    torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
    named = [("x", x), *layer.named_parameters()]
    wrt = [t for _, t in named]
    grads = torch.autograd.grad((y * y.detach().sin()).sum(), wrt, allow_unused=True)
    grads_ref = torch.autograd.grad((ref * ref.detach().sin()).sum(), wrt, allow_unused=True)
    for (name, _), a, b in zip(named, grads, grads_ref):
        if b is None:
            assert a is None or not a.any(), name
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=name)


@pytest.mark.parametrize("nd", [1, 3])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "-".join(map(str, g)))
@pytest.mark.parametrize("path", PATHS)
def test_1d_3d_match_naive_reference(nd, geometry, path):
    torch.manual_seed(0)
    modes = ["zeros", "reflect", "replicate", "circular"] if geometry[4] != "valid" else ["zeros"]
    for padding_mode, bias in itertools.product(modes, [True, False]):
        if padding_mode != "zeros" and isinstance(geometry[4], str):
            continue  # nn.ConvNd: "same" with a non-zero mode only where symmetric; covered in 2-D
        layer = _layer(nd, geometry, bias=bias, padding_mode=padding_mode, num_kernels=3, path=path,
                       temperature=0.7)
        x = torch.randn((3, geometry[0]) + INPUT[nd], dtype=torch.float64, requires_grad=True)
        _check_forward_and_grads(layer, x)


@pytest.mark.parametrize("routing", ["sigmoid", "omni"])
@pytest.mark.parametrize("nd", [1, 2, 3])
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "-".join(map(str, g)))
def test_routings_match_naive_reference(routing, nd, geometry):
    torch.manual_seed(1)
    paths = [p for p in PATHS if not (p == "mixture" and routing == "omni" and geometry[2] != 1)]
    for path, (bias, k) in itertools.product(paths, [(True, 3), (False, 1)]):
        layer = _layer(nd, geometry, bias=bias, num_kernels=k, path=path, routing=routing, temperature=1.7)
        layer.train(path == "grouped")  # omni: BatchNorm in the attention, batch statistics in training
        x = torch.randn((3, geometry[0]) + INPUT[nd], dtype=torch.float64, requires_grad=True)
        _check_forward_and_grads(layer, x)


def test_omni_attention_parts_and_heads():
    torch.manual_seed(0)
    layer = DynamicConv2d(8, 12, 3, padding=1, num_kernels=4, routing="omni", reduction=16, min_hidden=16).eval()
    x = torch.randn(5, 8, 6, 6)
    att = layer.attention(x)
    assert isinstance(att, OmniAttention) and layer.routing.kind == "omni"
    assert att.kernel.shape == (5, 4) and att.in_channel.shape == (5, 8)
    assert att.out_channel.shape == (5, 12) and att.spatial.shape == (5, 3, 3)
    torch.testing.assert_close(att.kernel.sum(1), torch.ones(5))
    # ODConv's attention by hand: fc (no bias), BN, ReLU, heads; every logit divided by T.
    t = float(layer.temperature)
    h = F.relu(layer.attn_bn(x.mean((2, 3)) @ layer.attn_fc1.weight.t()))
    torch.testing.assert_close(att.kernel, torch.softmax(layer.attn_fc2(h) / t, 1))
    torch.testing.assert_close(att.in_channel, torch.sigmoid(layer.attn_in(h) / t))
    torch.testing.assert_close(att.spatial.flatten(1), torch.sigmoid(layer.attn_spatial(h) / t))
    assert layer.hidden_channels == 16 and layer.attn_fc1.bias is None
    # Heads ODConv skips: the output attention of a depthwise conv, the spatial one of a 1x1 conv,
    # the kernel one with one kernel.
    dw = DynamicConv2d(8, 8, 3, groups=8, num_kernels=1, routing="omni").eval()
    att = dw.attention(x)
    assert dw.attn_out is None and dw.attn_fc2 is None and att.out_channel is None
    assert torch.equal(att.kernel, torch.ones(5, 1))
    pw = DynamicConv1d(8, 4, 1, routing="omni")
    assert pw.attn_spatial is None and pw.attention(torch.randn(2, 8, 5)).spatial is None
    with pytest.raises(ValueError, match="more than one sample per batch in training mode"):
        DynamicConv2d(8, 12, 3, routing="omni").train()(torch.randn(1, 8, 6, 6))
    with pytest.raises(ValueError, match="path='mixture' cannot apply ODConv's per-sample spatial attention"):
        DynamicConv3d(4, 4, 3, routing="omni", path="mixture")


def test_sigmoid_is_condconv_routing():
    torch.manual_seed(0)
    layer = DynamicConv2d(6, 4, 3, num_kernels=3, routing="sigmoid", temperature=9.0)
    x = torch.randn(4, 6, 5, 5)
    # One linear layer on the pooled input, sigmoid, no temperature (CondConv).
    assert isinstance(layer.attn_fc1, nn.Identity)
    expected = torch.sigmoid(x.mean((2, 3)) @ layer.attn_fc2.weight.t() + layer.attn_fc2.bias)
    torch.testing.assert_close(layer.attention(x), expected)
    assert sum(p.numel() for p in layer.parameters()) == 3 * 4 * 6 * 9 + 3 * 4 + 6 * 3 + 3


@pytest.mark.parametrize("nd", [1, 2, 3])
def test_num_kernels_one_is_exactly_convnd(nd):
    torch.manual_seed(0)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd](4, 6, 3, 2, 1, bias=True)
    layer = CLASSES[nd](4, 6, 3, 2, 1, num_kernels=1)
    with torch.no_grad():
        layer.weight[0].copy_(conv.weight)
        layer.bias[0].copy_(conv.bias)
    for b in (1, 3):
        x = torch.randn((b, 4) + INPUT[nd])
        assert torch.equal(layer(x), conv(x))


@pytest.mark.parametrize("nd", [1, 3])
def test_batch_one_and_recompute(nd):
    torch.manual_seed(0)
    for routing in ("softmax", "omni"):
        layer = CLASSES[nd](4, 6, 3, 1, 1, num_kernels=3, routing=routing).double().eval()
        x = torch.randn((3, 4) + INPUT[nd], dtype=torch.float64, requires_grad=True)
        full = layer(x)
        for i in range(3):
            torch.testing.assert_close(layer(x[i : i + 1]), full[i : i + 1], rtol=1e-10, atol=1e-10)
        recompute = CLASSES[nd](4, 6, 3, 1, 1, num_kernels=3, routing=routing, path="grouped",
                                recompute_kernels=True).double().eval()
        recompute.load_state_dict(layer.state_dict())
        _check_forward_and_grads(recompute, x)


def test_wrong_dims_and_attention_kinds_are_refused():
    with pytest.raises(ValueError, match=r"Expected 4D \(unbatched\) or 5D \(batched\) input to DynamicConv3d, "
                                         r"but got input of size: \[2, 4, 4\]"):
        DynamicConv3d(2, 2, 3)(torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match=r"expected input\[1, 1, 2, 4, 4\] to have 2 channels, but got 1"):
        DynamicConv3d(2, 2, 3)(torch.randn(1, 2, 4, 4))
    unbatched = torch.randn(2, 5)
    conv1d = DynamicConv1d(2, 3, 3, routing="sigmoid").eval()
    torch.testing.assert_close(conv1d(unbatched), conv1d(unbatched[None])[0], rtol=0, atol=0)
    with pytest.raises(TypeError, match=r"DynamicConv1d\.from_conv takes an nn\.Conv1d, got Conv2d"):
        DynamicConv1d.from_conv(nn.Conv2d(2, 2, 3))
    omni = DynamicConv1d(2, 2, 3, routing="omni")
    with pytest.raises(TypeError, match="needs an OmniAttention"):
        omni.forward_with_attention(torch.randn(1, 2, 5), torch.ones(1, 4))
    with pytest.raises(ValueError, match="routing must be one of softmax, sigmoid, omni"):
        DynamicConv2d(2, 2, 3, routing="cond")


@pytest.mark.parametrize("routing", ["softmax", "sigmoid", "omni"])
@pytest.mark.parametrize("nd", [1, 2, 3])
def test_from_conv_is_exact_for_every_routing(routing, nd):
    torch.manual_seed(0)
    conv = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[nd](4, 6, 3, padding=1, groups=2).double()
    layer = CLASSES[nd].from_conv(conv, DynamicOptions(num_kernels=3, routing=routing, temperature=5.0))
    layer.eval()
    x = torch.randn((3, 4) + INPUT[nd], dtype=torch.float64)
    torch.testing.assert_close(layer(x), conv(x), rtol=1e-12, atol=1e-12)
    if routing != "softmax":  # the attention starts neutral but learns from the first step
        y = layer.train()(x)
        (y.square().sum()).backward()
        assert any(h.weight.grad.abs().sum() > 0 for h in layer.attention_heads())


def _tiny_1d_net():
    return nn.Sequential(
        nn.Conv1d(2, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU(),
        nn.Conv1d(8, 8, 3, padding=2, dilation=2, groups=8, padding_mode="reflect"), nn.ReLU(),
        nn.Conv1d(8, 16, 1), nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 3),
    )


@pytest.mark.parametrize("routing", ["softmax", "omni"])
def test_convert_1d_network_exact(routing):
    torch.manual_seed(0)
    net = _tiny_1d_net().eval()
    x = torch.randn(4, 2, 40)
    expected = net(x)
    dyn = convert_to_dynamic(net, DynamicOptions(num_kernels=3, routing=routing), inplace=False).eval()
    layers = dict(dynamic_layers(dyn))
    assert list(layers) == ["0", "3", "5"] and all(isinstance(m, DynamicConv1d) for m in layers.values())
    assert layers["3"].padding_mode == "reflect" and layers["3"].dilation == (2,)
    torch.testing.assert_close(dyn(x), expected, rtol=1e-5, atol=1e-5)


def test_convert_torchvision_r3d_18_exact():
    # CI's compatibility job runs this file on the oldest torch without torchvision.
    r3d_18 = pytest.importorskip("torchvision.models.video").r3d_18

    torch.manual_seed(0)
    model = r3d_18(num_classes=5).eval()
    x = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        expected = model(x)
        dyn = convert_to_dynamic(model, DynamicOptions(num_kernels=2), skip_first=True, inplace=False).eval()
        layers = dict(dynamic_layers(dyn))
        statics = [n for n, m in dyn.named_modules() if type(m) is nn.Conv3d]
        assert statics == ["stem.0"] and len(layers) == 19
        assert all(isinstance(m, DynamicConv3d) for m in layers.values())
        assert layers["layer2.0.conv1.0"].stride == (2, 2, 2)
        assert layers["layer2.0.downsample.0"].kernel_size == (1, 1, 1)
        torch.testing.assert_close(dyn(x), expected, rtol=1e-4, atol=1e-4)
        # ... and it trains: the attention gets a gradient once the copies differ.
        noisy = convert_to_dynamic(model, DynamicOptions(num_kernels=2), skip_first=True, noise=0.1, inplace=False)
    noisy.train()(x).square().mean().backward()
    assert all(m.attn_fc2.weight.grad.abs().sum() > 0 for _, m in dynamic_layers(noisy))


def test_torchscript_every_dim():
    torch.manual_seed(0)
    for nd in (1, 2, 3):
        for path in PATHS:
            for routing in ("softmax", "sigmoid"):
                layer = CLASSES[nd](4, 6, 3, padding=1, num_kernels=3, path=path, routing=routing).eval()
                x = torch.randn((2, 4) + INPUT[nd])
                torch.testing.assert_close(torch.jit.script(layer)(x), layer(x))


def test_options_build_1d_and_3d_model_code_with_per_layer_k():
    from dyconv.layers import build_dynamic_convs

    for dims, cls in ((1, DynamicConv1d), (3, DynamicConv3d)):
        options = DynamicOptions(num_kernels={"1": 5}, routing="sigmoid", reduction=2)
        conv = options.conv_layer_for(dims)
        net = nn.Sequential(conv(2, 4, 3, padding=1), conv(4, 4, 1))
        build_dynamic_convs(net, options)
        assert [type(m) for m in net] == [cls, cls] and [m.num_kernels for m in net] == [4, 5]
        assert {m.routing.kind for m in net} == {"sigmoid"}
        one_k = DynamicOptions(num_kernels=2, routing="omni").conv_layer_for(dims)(4, 6, 3)
        assert isinstance(one_k, cls) and one_k.num_kernels == 2 and one_k.routing.kind == "omni"
    with pytest.raises(ValueError, match="1, 2 or 3 spatial dims"):
        DynamicOptions().conv_layer_for(4)
