"""DynamicConv2d against an independent naive reference (a loop over samples, F.conv2d)."""

import itertools
import math

import pytest
import torch
from torch import nn

from dyconv.layers import PATHS, DynamicConv2d, choose_path
from naive import naive_forward

FORCED_PATHS = [p for p in PATHS if p != "auto"]


GEOMETRIES = [
    # (in, out, kernel, stride, padding, dilation, groups)
    (8, 12, 3, 1, 1, 1, 1),
    (8, 8, 3, 2, 1, 1, 8),  # depthwise, strided
    (8, 12, (3, 1), 1, "same", 1, 1),  # non-square, "same"
    (8, 12, 3, 1, "same", 2, 2),  # grouped, dilated, "same" (asymmetric total padding)
    (8, 12, 1, 2, 0, 1, 1),  # strided 1x1 (ResNet downsample)
    (8, 12, 1, 1, 0, 1, 1),  # pointwise
    (6, 4, (2, 3), 1, "valid", 1, 2),
    (8, 12, (2, 4), (2, 3), (1, 2), (2, 1), 1),  # everything non-square
]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: "-".join(map(str, g)))
@pytest.mark.parametrize("path", PATHS)
def test_matches_naive_reference(geometry, path):
    cin, cout, k, s, p, d, g = geometry
    torch.manual_seed(0)
    for padding_mode, bias in itertools.product(["zeros", "reflect", "replicate", "circular"], [True, False]):
        layer = DynamicConv2d(
            cin, cout, k, s, p, d, g, bias, padding_mode, num_kernels=3, path=path, temperature=0.7
        ).double()
        x = torch.randn(3, cin, 9, 10, dtype=torch.float64, requires_grad=True)
        y = layer(x)
        ref = naive_forward(layer, x)
        assert y.shape == ref.shape
        torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
        # Gradients: input, kernels, biases and the attention MLP (through pi).
        wrt = [x, layer.weight, layer.attn_fc1.weight, layer.attn_fc2.bias] + ([layer.bias] if bias else [])
        grads = torch.autograd.grad((y * y.detach().sin()).sum(), wrt)
        grads_ref = torch.autograd.grad((ref * ref.detach().sin()).sum(), wrt)
        for a, b in zip(grads, grads_ref):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("path", FORCED_PATHS)
@pytest.mark.parametrize("geometry", [(4, 6, 3, 1, 1, 1, 1), (4, 4, 3, 2, 1, 1, 4), (4, 6, 1, 1, 0, 1, 1)])
def test_gradcheck(path, geometry):
    cin, cout, k, s, p, d, g = geometry
    torch.manual_seed(1)
    layer = DynamicConv2d(cin, cout, k, s, p, d, g, num_kernels=3, path=path, temperature=2.0).double()
    x = torch.randn(2, cin, 5, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(layer, (x,))
    # Parameters too (kernels, biases, attention), through torch.func.functional_call.
    names = ["weight", "bias", "attn_fc1.weight"]
    params = [dict(layer.named_parameters())[n].detach().clone().requires_grad_(True) for n in names]

    def as_function_of_params(*ps):
        return torch.func.functional_call(layer, dict(zip(names, ps)), (x.detach(),))

    assert torch.autograd.gradcheck(as_function_of_params, params)


def test_num_kernels_one_is_exactly_conv2d():
    torch.manual_seed(0)
    for kwargs in [dict(padding=1), dict(stride=2, groups=4), dict(padding="same", padding_mode="reflect")]:
        conv = nn.Conv2d(8, 12, 3, **kwargs)
        dyn = DynamicConv2d(8, 12, 3, **kwargs, num_kernels=1)
        with torch.no_grad():
            dyn.weight.copy_(conv.weight[None])
            dyn.bias.copy_(conv.bias[None])
        for b in (1, 5):
            x = torch.randn(b, 8, 11, 11)
            assert torch.equal(dyn(x), conv(x))


@pytest.mark.parametrize("path", PATHS)
def test_batch_of_one_equals_sample_in_batch(path):
    torch.manual_seed(0)
    layer = DynamicConv2d(16, 16, 3, padding=1, path=path, temperature=1.0)
    x = torch.randn(6, 16, 12, 12)
    full = layer(x)
    for i in (0, 3):
        torch.testing.assert_close(layer(x[i : i + 1]), full[i : i + 1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("path", PATHS)
def test_memory_layouts(path):
    torch.manual_seed(0)
    layer = DynamicConv2d(8, 8, 3, padding=1, path=path, temperature=1.0)
    x = torch.randn(4, 8, 10, 10)
    ref = layer(x)
    cl = x.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(layer(cl), ref, rtol=1e-5, atol=1e-5)
    # Non-contiguous: a transposed-then-transposed-back view and a strided slice.
    nc = x.transpose(2, 3).contiguous().transpose(2, 3)
    assert not nc.is_contiguous()
    torch.testing.assert_close(layer(nc), ref, rtol=1e-5, atol=1e-5)
    big = torch.randn(8, 8, 10, 10)
    torch.testing.assert_close(layer(big[::2]), naive_forward(layer, big[::2]), rtol=1e-4, atol=1e-5)


def test_attention_is_softmax_with_temperature():
    torch.manual_seed(0)
    layer = DynamicConv2d(8, 8, 3, num_kernels=5, temperature=1.0)
    x = torch.randn(3, 8, 6, 6)
    pi = layer.attention(x)
    assert pi.shape == (3, 5)
    torch.testing.assert_close(pi.sum(1), torch.ones(3))
    # Hand-written: GAP -> fc1 -> ReLU -> fc2 -> softmax(z / T).
    z = layer.attn_fc2(torch.relu(layer.attn_fc1(x.mean((2, 3)))))
    torch.testing.assert_close(pi, torch.softmax(z, 1))
    layer.temperature.fill_(30.0)
    torch.testing.assert_close(layer.attention(x), torch.softmax(z / 30.0, 1))
    # Large temperature -> near-uniform attention (the paper's early-training regime).
    layer.temperature.fill_(1e6)
    torch.testing.assert_close(layer.attention(x), torch.full((3, 5), 0.2), rtol=1e-4, atol=1e-4)


def test_hidden_width_and_parameter_count():
    layer = DynamicConv2d(64, 128, 3, num_kernels=4, reduction=4)
    assert layer.hidden_channels == 16
    expected = 4 * 128 * 64 * 9 + 4 * 128 + (64 * 16 + 16) + (16 * 4 + 4)
    assert sum(p.numel() for p in layer.parameters()) == expected
    # min_hidden bounds tiny layers (the reference's parameter counts need it).
    assert DynamicConv2d(3, 8, 3).hidden_channels == 1
    assert DynamicConv2d(3, 8, 3, min_hidden=4).hidden_channels == 4


def test_public_state_and_conversions():
    layer = DynamicConv2d(8, 16, (3, 5), stride=2, padding=(1, 2), groups=2, num_kernels=3)
    assert layer.weight.shape == (3, 16, 4, 3, 5)
    assert layer.bias.shape == (3, 16)
    assert (layer.in_channels, layer.out_channels, layer.groups) == (8, 16, 2)
    assert layer.kernel_size == (3, 5) and layer.stride == (2, 2) and layer.padding == (1, 2)
    assert layer.dilation == (1, 1) and layer.padding_mode == "zeros"
    assert not isinstance(layer, nn.Conv2d)
    sd = layer.state_dict()
    assert "temperature" in sd and float(sd["temperature"]) == 30.0
    assert "num_kernels=3" in repr(layer) and "temperature=30" in repr(layer)
    x = torch.randn(2, 8, 9, 9)
    assert layer.double()(x.double()).dtype == torch.float64
    assert layer.weight.dtype == torch.float64 and layer.temperature.dtype == torch.float64
    half = DynamicConv2d(8, 8, 3, padding=1).half()
    assert half.weight.dtype == torch.float16
    assert half.to("meta").weight.is_meta
    dtyped = DynamicConv2d(8, 8, 3, dtype=torch.float64)
    assert dtyped.weight.dtype == dtyped.attn_fc1.weight.dtype == dtyped.temperature.dtype == torch.float64


def test_temperature_buffer_is_changed_in_place_and_loaded():
    layer = DynamicConv2d(4, 4, 3)
    buf = layer.temperature
    layer.temperature.fill_(3.0)
    assert layer.temperature is buf
    other = DynamicConv2d(4, 4, 3)
    other.load_state_dict(layer.state_dict())
    assert float(other.temperature) == 3.0


def test_reset_parameters_initialises_each_kernel_like_conv2d():
    torch.manual_seed(0)
    layer = DynamicConv2d(32, 64, 3, num_kernels=4)
    fan_in = 32 * 9
    bound = 1 / math.sqrt(fan_in)  # kaiming_uniform(a=sqrt(5)) of nn.Conv2d
    for w in layer.weight.unbind(0):
        assert w.abs().max() <= bound
        assert w.abs().max() > 0.95 * bound  # a 5-D fan-in (x64) would give a far smaller bound
        assert w.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert layer.bias.abs().max() <= bound and layer.bias.abs().max() > 0.8 * bound
    # Kernels are independent draws, not copies.
    assert not torch.allclose(layer.weight[0], layer.weight[1])


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(groups=0),
        dict(groups=3),  # in_channels % groups
        dict(in_channels=6, groups=3),  # out_channels % groups (8 % 3)
        dict(padding="full"),
        dict(padding="same", stride=2),
        dict(padding_mode="mirror"),
    ],
)
def test_invalid_arguments_raise_conv2d_errors(kwargs):
    args = dict(in_channels=8, out_channels=8, kernel_size=3)
    args.update(kwargs)
    with pytest.raises(ValueError) as expected:
        nn.Conv2d(**args)
    with pytest.raises(ValueError) as got:
        DynamicConv2d(**args)
    assert str(got.value) == str(expected.value)


@pytest.mark.parametrize(
    "kwargs", [dict(num_kernels=0), dict(reduction=0), dict(min_hidden=0), dict(temperature=0.0), dict(path="fast")]
)
def test_invalid_dynamic_arguments(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        DynamicConv2d(4, 4, 3, **kwargs)


@pytest.mark.parametrize("routing", ["softmax", "omni"])
def test_unbatched_input_and_input_errors_as_nn_conv2d(routing):
    """``(C, H, W)`` runs as a batch of one, as in ``nn.Conv2d``; a wrong rank or channel count
    fails before any computation, naming the expected shape as ``nn.Conv2d``'s message does."""
    torch.manual_seed(0)
    layer = DynamicConv2d(4, 6, 3, padding=1, routing=routing).eval()
    x = torch.randn(4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), layer(x.unsqueeze(0))[0], rtol=0, atol=0)
    assert layer(x).shape == nn.Conv2d(4, 6, 3, padding=1)(x).shape == (6, 8, 8)
    for bad in (torch.randn(2, 3, 8, 8), torch.randn(3, 8, 8)):
        with pytest.raises(RuntimeError) as static:
            nn.Conv2d(4, 6, 3)(bad)
        # nn.Conv2d: "Given groups=1, weight of size [...], expected input[1, 3, 8, 8] to have 4 channels, ..."
        expected = "expected input" + str(static.value).split("expected input", 1)[1]
        with pytest.raises(ValueError) as got:
            layer(bad)
        assert str(got.value) == "DynamicConv2d(4, 6, ...) " + expected
    with pytest.raises(RuntimeError) as static:
        nn.Conv2d(4, 6, 3)(torch.randn(8, 8))
    with pytest.raises(ValueError) as got:
        layer(torch.randn(8, 8))
    assert str(got.value) == str(static.value).replace("conv2d", "DynamicConv2d")


def test_works_inside_unmodified_modules():
    torch.manual_seed(0)
    net = nn.Sequential(
        DynamicConv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), DynamicConv2d(8, 8, 3, groups=8, padding=1)
    )
    y = net(torch.randn(4, 3, 16, 16))
    y.mean().backward()
    assert net[0].weight.grad is not None and net[0].attn_fc1.weight.grad is not None


def test_choose_path_rule():
    # Documented rule of the auto path.
    assert choose_path(1, 512, 512, 1, (3, 3), 4) == "grouped"  # batch 1: aggregate once
    assert choose_path(32, 24, 144, 1, (1, 1), 56 * 56) == "bmm"  # pointwise
    assert choose_path(32, 144, 144, 144, (3, 3), 7 * 7) == "grouped"  # depthwise
    assert choose_path(32, 256, 256, 1, (3, 3), 4 * 4) == "mixture"  # tiny map
    assert choose_path(32, 64, 64, 1, (3, 3), 16 * 16) == "grouped"
    assert choose_path(32, 512, 512, 1, (3, 3), 7 * 7, cheap_alloc=False) == "mixture"
    assert choose_path(32, 512, 512, 1, (3, 3), 7 * 7, cheap_alloc=True) == "grouped"


def test_autocast_bf16_cpu():
    torch.manual_seed(0)
    for path in PATHS:
        layer = DynamicConv2d(8, 16, 3, padding=1, path=path, temperature=1.0)
        x = torch.randn(4, 8, 12, 12)
        ref = layer(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = layer(x)
            y.float().sum().backward()
        assert y.dtype == torch.bfloat16
        torch.testing.assert_close(y.float(), ref, rtol=5e-2, atol=5e-2)
        assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()


@pytest.mark.parametrize("geometry", GEOMETRIES[:4], ids=lambda g: "-".join(map(str, g)))
def test_recompute_kernels_matches_reference_and_saves_memory(geometry):
    cin, cout, k, s, p, d, g = geometry
    torch.manual_seed(0)
    for padding_mode, bias, batch in itertools.product(["zeros", "reflect"], [True, False], [1, 3]):
        layer = DynamicConv2d(
            cin, cout, k, s, p, d, g, bias, padding_mode, num_kernels=3, path="grouped", temperature=0.7,
            recompute_kernels=True,
        ).double()
        x = torch.randn(batch, cin, 9, 10, dtype=torch.float64, requires_grad=True)
        y, ref = layer(x), naive_forward(layer, x)
        torch.testing.assert_close(y, ref, rtol=1e-10, atol=1e-10)
        wrt = [x, layer.weight, layer.attn_fc1.weight] + ([layer.bias] if bias else [])
        for a, b in zip(torch.autograd.grad((y * y.detach().sin()).sum(), wrt),
                        torch.autograd.grad((ref * ref.detach().sin()).sum(), wrt)):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    assert torch.autograd.gradcheck(layer, (x[:2].detach().requires_grad_(True),))

    def saved_bytes(m: nn.Module, inp: torch.Tensor) -> int:
        params = {q.data_ptr() for q in m.parameters()}
        seen: dict[int, int] = {}

        def pack(t):
            if t.data_ptr() not in params:
                seen[t.data_ptr()] = t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            m(inp)
        return sum(seen.values())

    big = torch.randn(16, 64, 8, 8)
    plain = DynamicConv2d(64, 64, 3, padding=1, path="grouped")
    lean = DynamicConv2d(64, 64, 3, padding=1, path="grouped", recompute_kernels=True)
    # The 16 per-sample kernels (16 x 64 x 64 x 9 floats = 2.4 MB) are not kept for backward.
    assert saved_bytes(plain, big) - saved_bytes(lean, big) >= 16 * 64 * 64 * 9 * 4
    assert "recompute_kernels=True" in repr(lean)


@pytest.mark.parametrize("routing", ["softmax", "sigmoid", "omni"])
def test_reused_kernel_memory_gives_the_same_outputs_and_gradients(routing, monkeypatch):
    """Under glibc's default malloc (the test process tunes it: undo that for the layer), the CPU
    grouped path builds its per-sample kernels in the layer's workspace, forward and backward;
    the results are those of the plain autograd path (no workspace) bit for bit."""
    import copy
    import pickle

    from dyconv.layers import KernelWorkspace, convert_to_dynamic, dynamic_layers

    monkeypatch.delenv("MALLOC_MMAP_MAX_", raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)
    torch.manual_seed(0)
    reused = DynamicConv2d(48, 48, 3, padding=1, path="grouped", routing=routing).double().train()
    with torch.no_grad():
        for head in reused.attention_heads():
            head.bias.normal_(0, 1)
    plain = copy.deepcopy(reused)
    plain.kernel_workspace = None
    x = torch.randn(8, 48, 5, 5, dtype=torch.double, requires_grad=True)
    assert reused._workspace_for(x, torch.ones(8, 4, dtype=torch.double)) is reused.kernel_workspace
    for _ in range(2):  # the second call reuses the memory the first left
        y_reused, y_plain = reused(x), plain(x)
        grad = torch.randn_like(y_plain)
        wrt = [x, *reused.parameters()]
        got = torch.autograd.grad(y_reused, wrt, grad)
        expected = torch.autograd.grad(y_plain, [x, *plain.parameters()], grad)
        torch.testing.assert_close(y_reused, y_plain, rtol=0, atol=0)
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(reused.eval()(x), plain.eval()(x), rtol=0, atol=0)
    # One workspace per converted model; copies and pickles start with their own, empty one.
    model = convert_to_dynamic(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3)))
    shared = {id(m.kernel_workspace) for _, m in dynamic_layers(model)}
    assert len(shared) == 1 and isinstance(model[0].kernel_workspace, KernelWorkspace)
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        copies = {id(m.kernel_workspace) for _, m in dynamic_layers(twin)}
        assert len(copies) == 1 and copies != shared
    assert "kernel_workspace" not in str(list(model.state_dict()))
