"""Model zoo: registry, torchvision twins, published parameter counts, which convs are dynamic."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torchvision
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch import nn

import dyconv
from dyconv.layers import (
    DynamicConv1d,
    DynamicConv2d,
    DynamicOptions,
    convert_to_dynamic,
    dynamic_layers,
    get_temperature,
)
from dyconv.models import create_model, list_models, load_torchvision_backbone_state_dict, register_model
from dyconv.models.factory import DYNAMIC_KWARGS

CONF_DIR = Path(dyconv.__file__).parent / "conf" / "model"
STATIC = [n for n in list_models() if not n.startswith(("dy_", "od_"))]
DYNAMIC = list_models("dy_*")
ODCONV = list_models("od_*")  # ODConv's networks (tests/models/test_odconv_zoo.py)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def truncated_millions(n: int) -> str:
    return f"{math.floor(n / 1e4) / 100:.2f}M"


# ----------------------------------------------------------------------------------- registry
def test_registry_lists_every_family_static_and_dynamic():
    expected = {
        "cnn1d",
        "simple_cnn",
        "resnet10",
        "resnet18",
        "resnet34",
        "resnet50",
        "mobilenetv2",
        "mobilenetv3_small",
        "mobilenetv3_large",
        "deeplabv3plus",
        "mobilenetv3_small_ref",
        "mobilenetv3_large_ref",
    }
    assert expected <= set(STATIC)
    assert {"dy_" + n for n in STATIC} == set(DYNAMIC)
    assert set(ODCONV) == {"od_resnet18", "od_resnet34", "od_resnet50", "od_resnet101", "od_mobilenetv2"}
    assert list_models("resnet1*") == ["resnet10", "resnet101", "resnet18"]


def test_registry_rejects_duplicates_and_unknown_names():
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda **kw: nn.Identity(), name="resnet18")
    with pytest.raises(ValueError, match=r"did you mean.*resnet18"):
        create_model("resnet81")


@pytest.mark.parametrize("name", STATIC)
@pytest.mark.parametrize("key", DYNAMIC_KWARGS[:2])
def test_static_builders_reject_dynamic_options(name, key):
    with pytest.raises(TypeError, match=f"dy_{name}"):
        create_model(name, **{key: 4})


# ------------------------------------------------------------------------- torchvision twins
TWINS = [
    ("resnet18", torchvision.models.resnet18, {}, 11_689_512),
    ("mobilenetv2", torchvision.models.mobilenet_v2, {}, 3_504_872),
    ("mobilenetv3_small", torchvision.models.mobilenet_v3_small, {}, 2_542_856),
    ("mobilenetv3_large", torchvision.models.mobilenet_v3_large, {}, 5_483_032),
    ("mobilenetv2", torchvision.models.mobilenet_v2, {"width_mult": 0.35}, None),
    ("mobilenetv3_large", torchvision.models.mobilenet_v3_large, {"width_mult": 0.75, "dilated": True}, None),
    ("mobilenetv3_small", torchvision.models.mobilenet_v3_small, {"reduced_tail": True}, None),
]


@pytest.mark.parametrize(("name", "tv_builder", "kwargs", "count"), TWINS)
def test_static_models_equal_torchvision(name, tv_builder, kwargs, count):
    torch.manual_seed(0)
    ref = tv_builder(weights=None, **kwargs).eval()
    model = create_model(name, **kwargs).eval()
    assert n_params(model) == n_params(ref)
    if count is not None:
        assert n_params(model) == count
    model.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)


def test_resnet34_resnet50_resnet101_counts_and_keys():
    for name in ("resnet34", "resnet50", "resnet101"):
        with torch.device("meta"):
            ours = create_model(name)
            ref = getattr(torchvision.models, name)()
        assert n_params(ours) == n_params(ref)
        assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in ref.state_dict().items()}


# ---------------------------------------------------------------------- published counts
@pytest.mark.parametrize(
    ("width", "static", "dynamic"), [(1.0, "5.00M", "19.80M"), (0.5, "1.27M", "4.97M"), (0.25, "0.33M", "1.25M")]
)
def test_tiny_imagenet_resnet10_counts(width, static, dynamic):
    with torch.device("meta"):
        s = create_model("resnet10", num_classes=200, stem="small", width_mult=width)
        d = create_model("dy_resnet10", num_classes=200, stem="small", width_mult=width)
    assert truncated_millions(n_params(s)) == static
    assert truncated_millions(n_params(d)) == dynamic


def test_voc_deeplabv3plus_counts():
    with torch.device("meta"):
        assert n_params(create_model("deeplabv3plus", num_classes=21)) == 5_816_053
        assert n_params(create_model("dy_deeplabv3plus", num_classes=21)) == 18_414_806


def test_convert_to_dynamic_equals_dy_resnet18():
    converted = convert_to_dynamic(create_model("resnet18"), exclude="conv1")
    with torch.device("meta"):
        native = create_model("dy_resnet18")
    assert n_params(converted) == n_params(native)
    assert [n for n, _ in dynamic_layers(converted)] == [n for n, _ in dynamic_layers(native)]


# ------------------------------------------------------------------- which convs are dynamic
def _convs(model: nn.Module) -> tuple[list[str], list[str]]:
    static = [n for n, m in model.named_modules() if type(m) is nn.Conv2d]
    dyn = [n for n, _ in dynamic_layers(model)]
    return static, dyn


@pytest.mark.parametrize("name", STATIC)
def test_static_models_have_no_dynamic_conv(name):
    with torch.device("meta"):
        assert not list(dynamic_layers(create_model(name)))


def test_dynamic_conv_placement():
    with torch.device("meta"):
        static, dyn = _convs(create_model("dy_resnet18"))
        assert static == ["conv1"] and len(dyn) == 16 + 3
        static, dyn = _convs(create_model("dy_mobilenetv2"))
        assert static == ["features.0.0"] and "features.1.conv.0.0" in dyn  # depthwise included
        static, dyn = _convs(create_model("dy_mobilenetv3_small"))
        assert static[0] == "features.0.0" and all(".fc" in n for n in static[1:]) and len(static) > 1
        static, dyn = _convs(create_model("dy_simple_cnn"))
        assert static == ["features.0.0"] and dyn == ["features.2.0"]
        static, dyn = _convs(create_model("dy_deeplabv3plus"))
        assert all(n.startswith("backbone.") for n in static)  # the reference: classifier dynamic too
        assert len(dyn) == 6 + 4 and "aspp.convs.4.1.0" in dyn and "decoder.reduce.0" in dyn
        assert "decoder.classifier" in dyn
        static, dyn = _convs(create_model("dy_deeplabv3plus", dynamic_backbone=True))
        assert static == ["backbone.features.0.0"]
        static, dyn = _convs(create_model("dy_mobilenetv3_small_ref"))
        assert static == ["features.0.0"] and len(dyn) == 35 and "features.1.expand.0" in dyn  # 16 -> 16 kept
        assert "head.0" in dyn


def test_per_layer_num_kernels_follow_named_modules_order():
    ks = [2, 2, 2, 3, 2, 3, 6, 3, 6, 9, 6]  # the reference's Resnet_DY_Improve_05
    model = create_model("dy_resnet10", num_classes=200, stem="small", width_mult=0.5, num_kernels=ks)
    layers = list(dynamic_layers(model))
    assert [m.num_kernels for _, m in layers] == ks
    assert [n for n, _ in layers][:5] == [
        "layer1.0.conv1",
        "layer1.0.conv2",
        "layer2.0.conv1",
        "layer2.0.conv2",
        "layer2.0.downsample.0",
    ]
    model = create_model("dy_resnet18", width_mult=0.25, num_kernels={"layer4.*": 8, "*downsample*": 2})
    got = {n: m.num_kernels for n, m in dynamic_layers(model)}
    assert got["layer4.1.conv2"] == 8 and got["layer3.0.downsample.0"] == 2 and got["layer1.0.conv1"] == 4
    with pytest.raises(ValueError, match="entries"):
        create_model("dy_resnet10", num_kernels=[4, 4])


def test_one_options_object_builds_each_layer_once(monkeypatch):
    built = []
    original = DynamicConv2d.reset_parameters
    monkeypatch.setattr(DynamicConv2d, "reset_parameters", lambda self: (built.append(self), original(self)))
    ks = [2, 2, 2, 3, 2, 3, 6, 3, 6, 9, 6]
    options = DynamicOptions(num_kernels=ks, reduction=8, temperature=4.0, recompute_kernels=True)
    model = create_model("dy_resnet10", width_mult=0.25, dynamic=options)
    layers = [m for _, m in dynamic_layers(model)]
    assert len(built) == len(layers) == 11  # no placeholder K, no rebuild
    assert [m.num_kernels for m in layers] == ks
    assert all(m.recompute_kernels and m.reduction == 8 and float(m.temperature) == 4.0 for m in layers)
    # Flat keys (configs, stored run configs) override the object's fields.
    model = create_model("dy_resnet10", width_mult=0.25, dynamic=options, num_kernels=3, recompute_kernels=False)
    assert {(m.num_kernels, m.recompute_kernels, m.reduction) for _, m in dynamic_layers(model)} == {(3, False, 8)}
    with pytest.raises(TypeError, match="dy_resnet10"):
        create_model("resnet10", dynamic=options)
    with pytest.raises(ValueError, match="routing must be one of"):
        create_model("dy_resnet10", routing="odconv")
    omni = create_model("dy_resnet10", width_mult=0.25, routing="omni", num_kernels=[2] + [3] * 10)
    assert {m.routing.kind for _, m in dynamic_layers(omni)} == {"omni"}


def test_dynamic_kernels_initialised_one_by_one():
    torch.manual_seed(0)
    model = create_model("dy_resnet18", num_kernels={"layer4.*": 3})  # rebuilt layers get the model's init too
    for name in ("layer3.1.conv2", "layer4.1.conv2"):
        layer = dict(dynamic_layers(model))[name]
        fan_out = layer.out_channels * 9
        for w in layer.weight.unbind(0):
            assert w.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)
        assert not torch.equal(layer.weight[0], layer.weight[1])


# ----------------------------------------------------------------------------- DeepLabV3+
@pytest.mark.parametrize("name", ["deeplabv3plus", "dy_deeplabv3plus"])
@pytest.mark.parametrize("output_stride", [16, 8])
def test_deeplab_logits_at_input_resolution(name, output_stride):
    model = create_model(name, width_mult=0.25, backbone_width_mult=0.35, output_stride=output_stride).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 65, 97))
    assert out.shape == (2, 21, 65, 97)


def test_deeplab_param_groups_cover_every_parameter_once():
    model = create_model("dy_deeplabv3plus", width_mult=0.25)
    groups = model.param_groups()
    assert set(groups) == {"backbone", "head"}
    ids = [id(p) for ps in groups.values() for p in ps]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))
    assert {id(p) for p in model.parameters()} == set(ids)


def test_deeplab_options_are_validated():
    with pytest.raises(TypeError, match="dynamic_backbone"):
        create_model("deeplabv3plus", dynamic_backbone=True)
    with pytest.raises(ValueError, match="pretrained_backbone"):  # raised before any download
        create_model("dy_deeplabv3plus", dynamic_backbone=True, pretrained_backbone=True)
    with pytest.raises(ValueError, match="output_stride"):
        create_model("deeplabv3plus", output_stride=32)


def test_deeplab_loads_torchvision_backbone():
    torch.manual_seed(0)
    ref = torchvision.models.mobilenet_v2(weights=None).eval()
    model = create_model("deeplabv3plus").eval()
    load_torchvision_backbone_state_dict(model, ref.state_dict())
    torch.testing.assert_close(model.backbone.features[17].conv[1][0].weight, ref.features[17].conv[1][0].weight)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        feats = model.backbone(x)
        torch.testing.assert_close(feats["low_level"], ref.features[:4](x), rtol=0, atol=0)
    assert feats["out"].shape == (1, 320, 4, 4)  # output stride 16


# ------------------------------------------------------------ every model, forward + backward
SMALL = {
    "cnn1d": ({}, (1, 40)),  # MNIST-1D sequences: 1-D convs
    "simple_cnn": ({}, (1, 28, 28)),
    "resnet10": ({"width_mult": 0.25, "stem": "small"}, (3, 32, 32)),
    "resnet18": ({"width_mult": 0.25}, (3, 64, 64)),
    "resnet34": ({"width_mult": 0.125}, (3, 64, 64)),
    "resnet50": ({"width_mult": 0.125}, (3, 64, 64)),
    "resnet101": ({"width_mult": 0.125}, (3, 32, 32)),
    "mobilenetv2": ({"width_mult": 0.35}, (3, 64, 64)),
    "mobilenetv3_small": ({"width_mult": 0.5}, (3, 64, 64)),
    "mobilenetv3_large": ({"width_mult": 0.5}, (3, 64, 64)),
    "deeplabv3plus": ({"width_mult": 0.25, "backbone_width_mult": 0.35}, (3, 64, 64)),
}


@pytest.mark.parametrize("name", list_models())
def test_every_model_forward_backward(name):
    base = name.removeprefix("dy_").removeprefix("od_")
    kwargs, shape = SMALL.get(base, ({}, (3, 64, 64)))
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=shape[0], **kwargs).train()
    out = model(torch.randn(2, *shape))
    assert out.shape[:2] == (2, 10)
    if base == "deeplabv3plus":
        assert out.shape[2:] == shape[1:]
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if name.startswith(("dy_", "od_")):
        dynamic_class = DynamicConv1d if len(shape) == 2 else DynamicConv2d
        assert any(isinstance(m, dynamic_class) for m in model.modules())


# --------------------------------------------------------------------------- Hydra configs
def test_every_registered_model_has_a_config_that_instantiates():
    files = sorted(CONF_DIR.glob("*.yaml"))
    assert {f.stem for f in files} == set(list_models())
    for f in files:
        conf = OmegaConf.load(f)
        assert conf.name == f.stem
        assert ("num_kernels" in conf) == f.stem.startswith(("dy_", "od_"))
        cfg = OmegaConf.create({"data": {"num_classes": 7, "in_channels": 3}, "model": conf})
        with torch.device("meta"):
            model = instantiate(cfg.model)
        assert any(7 in p.shape[:2] for p in model.parameters())  # (K, classes, ...) if dynamic
    resnet10 = OmegaConf.load(CONF_DIR / "dy_resnet10.yaml")
    assert resnet10.stem == "small" and resnet10.num_kernels == 4
    # One temperature key: callbacks.temperature owns it; the dy_ configs do not repeat it.
    assert not [f.stem for f in files if "temperature" in OmegaConf.load(f)]
    assert get_temperature(create_model("dy_resnet10", width_mult=0.25)) == 30.0
    # A stored run config with the old flat key still rebuilds, with that initial value.
    assert get_temperature(create_model("dy_resnet10", width_mult=0.25, temperature=5.0)) == 5.0


def test_config_list_num_kernels_through_hydra():
    conf = OmegaConf.load(CONF_DIR / "dy_resnet10.yaml")
    conf.width_mult = 0.5
    conf.num_kernels = [2, 2, 2, 3, 2, 3, 6, 3, 6, 9, 6]
    cfg = OmegaConf.create({"data": {"num_classes": 200, "in_channels": 3}, "model": conf})
    model = instantiate(cfg.model)  # not on meta: rebuilding a layer reads its temperature
    assert [m.num_kernels for _, m in dynamic_layers(model)] == list(conf.num_kernels)


# ------------------------------------------------------------ the reference's MobileNetV3
@pytest.mark.parametrize(
    ("width", "classes", "static", "dynamic"),
    [(0.5, 200, 877_872, 2_525_336), (1.0, 200, 1_913_568, 6_048_458), (0.25, 10, 274_330, 998_570),
     (0.5, 10, 634_482, 2_281_946), (1.0, 10, 1_670_178, 5_805_068)],
)  # fmt: skip
def test_reference_mobilenetv3_counts(width, classes, static, dynamic):
    """The reference code's exact counts (experiments.md; its README prints them truncated)."""
    with torch.device("meta"):
        assert n_params(create_model("mobilenetv3_small_ref", num_classes=classes, width_mult=width)) == static
        assert n_params(create_model("dy_mobilenetv3_small_ref", num_classes=classes, width_mult=width)) == dynamic


def test_reference_mobilenetv3_structure():
    """Not torchvision's: SE is bias-free Linear with c // 4 hidden; head 1x1 conv 576 -> 1280 with bias,
    then Linear(1280, classes)."""
    model = create_model("mobilenetv3_small_ref", num_classes=7)
    se = model.features[1].se
    assert isinstance(se.fc1, torch.nn.Linear) and se.fc1.bias is None and se.fc1.out_features == 16 // 4
    head = model.head[0]
    assert (head.in_channels, head.out_channels, head.bias is not None) == (576, 1280, True)
    assert (model.classifier[-1].in_features, model.classifier[-1].out_features) == (1280, 7)
    tv = torchvision.models.mobilenet_v3_small(num_classes=7)
    assert n_params(model) != n_params(tv)


def test_deeplab_align_corners_option():
    """align_corners=True (the reference's) and False give different logits from the same weights."""
    torch.manual_seed(0)
    a = create_model("deeplabv3plus", width_mult=0.25, backbone_width_mult=0.35).eval()
    b = create_model("deeplabv3plus", width_mult=0.25, backbone_width_mult=0.35, align_corners=False).eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(1, 3, 48, 48)
    with torch.no_grad():
        ya, yb = a(x), b(x)
        ref = torch.nn.functional.interpolate(
            a.decoder(a.aspp(a.backbone(x)["out"]), a.backbone(x)["low_level"]),
            size=(48, 48),
            mode="bilinear",
            align_corners=True,
        )
    assert a.align_corners and torch.allclose(ya, ref) and not torch.allclose(ya, yb)
