"""convert_to_dynamic and the temperature / per-layer K helpers, on real torchvision/timm models."""

import pytest
import torch
import torchvision
from torch import nn

from dyconv.layers import (
    DynamicConv2d,
    DynamicOptions,
    build_dynamic_convs,
    convert_to_dynamic,
    dynamic_layers,
    get_temperature,
    resolve_num_kernels,
    set_temperature,
)


def _randomise_attention(model: nn.Module) -> None:
    """Make the attention far from uniform so any kernel mismatch would show."""
    with torch.no_grad():
        for _, layer in dynamic_layers(model):
            layer.attn_fc2.bias.normal_(0, 3)
            layer.temperature.fill_(1.0)


@pytest.mark.parametrize("builder", [torchvision.models.resnet18, torchvision.models.mobilenet_v2])
def test_converted_torchvision_models_reproduce_originals(builder):
    torch.manual_seed(0)
    model = builder(num_classes=10).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = model(x)
    dyn = convert_to_dynamic(model, inplace=False)
    _randomise_attention(dyn)
    n_convs = sum(type(m) is nn.Conv2d for m in model.modules())
    assert len(list(dynamic_layers(dyn))) == n_convs
    assert not any(type(m) is nn.Conv2d for m in dyn.modules())
    with torch.no_grad():
        torch.testing.assert_close(dyn(x), ref, rtol=1e-4, atol=1e-4)
    # The original is untouched by a copy conversion.
    assert not list(dynamic_layers(model))


def test_inplace_and_filters():
    model = torchvision.models.mobilenet_v2(num_classes=10)
    convs = [n for n, m in model.named_modules() if type(m) is nn.Conv2d]
    out = convert_to_dynamic(model, skip_first=True, skip_depthwise=True, exclude="features.18.*")
    assert out is model
    names = {n for n, _ in dynamic_layers(model)}
    assert convs[0] not in names  # first conv stays static
    assert "features.18.0" not in names
    for n, m in model.named_modules():
        if type(m) is nn.Conv2d and n != convs[0] and n != "features.18.0":
            assert m.groups == m.in_channels  # only depthwise stay static
    model = torchvision.models.resnet18()
    convert_to_dynamic(model, include=lambda name, m: m.kernel_size == (1, 1))
    assert {n for n, _ in dynamic_layers(model)} == {f"layer{i}.0.downsample.0" for i in (2, 3, 4)}
    model = torchvision.models.resnet18()
    convert_to_dynamic(model, include=["layer4.*"], skip_pointwise=True)
    assert {n for n, _ in dynamic_layers(model)} == {f"layer4.{b}.conv{c}" for b in (0, 1) for c in (1, 2)}


def test_num_kernels_spec_in_named_modules_order():
    model = torchvision.models.resnet18()
    convert_to_dynamic(model, DynamicOptions(num_kernels={"layer4.*": 8, "layer1.*": 2}), include="layer*")
    ks = {n: m.num_kernels for n, m in dynamic_layers(model)}
    assert ks["layer4.0.downsample.0"] == 8 and ks["layer1.1.conv2"] == 2 and ks["layer2.0.conv1"] == 4
    model = torchvision.models.resnet18()
    names = [n for n, m in model.named_modules() if type(m) is nn.Conv2d]
    convert_to_dynamic(model, DynamicOptions(num_kernels=list(range(1, len(names) + 1))))
    assert [m.num_kernels for _, m in dynamic_layers(model)] == list(range(1, len(names) + 1))
    with pytest.raises(ValueError, match="20 dynamic convs"):
        convert_to_dynamic(torchvision.models.resnet18(), DynamicOptions(num_kernels=[2, 3]))
    with pytest.raises(ValueError, match="match no dynamic conv"):
        convert_to_dynamic(torchvision.models.resnet18(), DynamicOptions(num_kernels={"layer9.*": 2}))
    with pytest.raises(ValueError, match="positive integer"):
        resolve_num_kernels([1, 0], ["a", "b"])


def test_pending_convs_are_built_once_with_their_own_k():
    options = DynamicOptions(num_kernels={"1": 2}, reduction=2, temperature=7.0, recompute_kernels=True)
    net = nn.Sequential(options.conv_layer(4, 8, 3), options.conv_layer(8, 8, 3, padding=1, bias=False))
    build_dynamic_convs(net, options)
    assert [type(m) for m in net] == [DynamicConv2d, DynamicConv2d]
    assert [m.weight.shape[0] for m in net] == [4, 2]  # unmatched layers: K = 4
    assert net[1].bias is None and net[1].padding == (1, 1) and net[0].hidden_channels == 2
    assert float(net[0].temperature) == 7.0 and net[1].recompute_kernels


def test_options_are_validated_and_frozen():
    with pytest.raises(ValueError, match="routing must be one of softmax, sigmoid, omni, got 'condconv'"):
        DynamicOptions(routing="condconv")
    with pytest.raises(ValueError, match="positive integer"):
        DynamicOptions(num_kernels=[2, 0])
    with pytest.raises(ValueError, match="path"):
        DynamicOptions(path="fast")
    with pytest.raises(TypeError):
        DynamicOptions(num_kernels="4")
    options = DynamicOptions(num_kernels=[2, 3])
    with pytest.raises(AttributeError):
        options.num_kernels = 4  # type: ignore[misc]
    assert options.num_kernels == (2, 3) and hash(options) == hash(DynamicOptions(num_kernels=[2, 3]))
    flat = {"num_kernels": 3, "temperature": 5.0, "width_mult": 0.5}
    assert DynamicOptions.pop_from(flat) == DynamicOptions(num_kernels=3, temperature=5.0)
    assert flat == {"width_mult": 0.5}


def test_noise_breaks_symmetry_and_copies_are_exact_without_it():
    conv = nn.Conv2d(8, 8, 3)
    exact = DynamicConv2d.from_conv(conv, DynamicOptions(num_kernels=3, recompute_kernels=True))
    assert all(torch.equal(w, conv.weight) for w in exact.weight)
    assert exact.recompute_kernels  # from_conv keeps every option
    noisy = DynamicConv2d.from_conv(
        conv, DynamicOptions(num_kernels=3), noise=0.01, generator=torch.Generator().manual_seed(0)
    )
    assert not torch.equal(noisy.weight[0], noisy.weight[1])
    rel = (noisy.weight - conv.weight).std() / conv.weight.std()
    assert 0.005 < rel.item() < 0.02


def test_subclasses_left_alone_unless_asked():
    timm = pytest.importorskip("timm")
    from timm.layers import Conv2dSame

    model = nn.Sequential(Conv2dSame(3, 8, 3, stride=2), nn.Conv2d(8, 8, 3))
    convert_to_dynamic(model)
    assert type(model[0]) is Conv2dSame and isinstance(model[1], DynamicConv2d)
    convert_to_dynamic(model, conv_types=(Conv2dSame,))
    assert isinstance(model[0], DynamicConv2d)
    # A timm network converts and still runs.
    net = timm.create_model("resnet10t", num_classes=5)
    convert_to_dynamic(net, skip_first=True)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 5)


def test_shared_module_is_replaced_everywhere_and_top_level_conv():
    shared = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    convert_to_dynamic(model)
    assert model[0] is model[2] and isinstance(model[0], DynamicConv2d)
    top = convert_to_dynamic(nn.Conv2d(4, 4, 3))
    assert isinstance(top, DynamicConv2d)


def test_temperature_helpers():
    model = convert_to_dynamic(torchvision.models.resnet18())
    assert get_temperature(model) == 30.0
    assert set_temperature(model, 5.0) == 20
    assert get_temperature(model) == 5.0
    assert get_temperature(nn.Linear(2, 2)) is None
    next(iter(dynamic_layers(model)))[1].temperature.fill_(2.0)
    with pytest.raises(ValueError, match="different temperatures"):
        get_temperature(model)
    with pytest.raises(ValueError):
        set_temperature(model, 0.0)


def test_options_as_keywords_equal_the_options_object():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 1))
    by_kw = convert_to_dynamic(model, inplace=False, num_kernels=[2, 3], reduction=2, routing="omni", temperature=5.0)
    by_obj = convert_to_dynamic(
        model, DynamicOptions(num_kernels=[2, 3], reduction=2, routing="omni", temperature=5.0), inplace=False
    )
    assert repr(by_kw) == repr(by_obj)
    assert [(m.num_kernels, m.routing.kind, m.hidden_channels) for _, m in dynamic_layers(by_kw)] == [
        (2, "omni", 1), (3, "omni", 4)
    ]
    conv = nn.Conv2d(4, 4, 3)
    layer = DynamicConv2d.from_conv(conv, num_kernels=3, routing="sigmoid", recompute_kernels=True)
    assert (layer.num_kernels, layer.routing.kind, layer.recompute_kernels) == (3, "sigmoid", True)
    with pytest.raises(ValueError, match=r"convert_to_dynamic\(\) got options= and the keyword option\(s\) "
                                         r"num_kernels; pass one form"):
        convert_to_dynamic(model, DynamicOptions(), num_kernels=2, inplace=False)
    with pytest.raises(ValueError, match=r"DynamicConv2d\.from_conv\(\) got options= and the keyword option"):
        DynamicConv2d.from_conv(conv, DynamicOptions(), num_kernels=2)
    with pytest.raises(TypeError, match=r"unexpected keyword argument.*'kernels'; the dynamic options are num_kernels"):
        convert_to_dynamic(model, kernels=2, inplace=False)
    with pytest.raises(ValueError, match="routing must be one of"):
        DynamicConv2d.from_conv(conv, routing="condconv")
