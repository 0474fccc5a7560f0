"""ODConv's networks (``od_*``; Li, Zhou, Yao, "Omni-Dimensional Dynamic Convolution", ICLR 2022):
parameter counts against the figures ODConv's README publishes, which convs are ODConv, forward."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from dyconv.analysis import AttentionRecorder
from dyconv.layers import DynamicConv2d, dynamic_layers
from dyconv.models import create_model


def n_params(model: nn.Module) -> int:
    """Trainable parameters (BatchNorm running statistics are buffers, not counted)."""
    return sum(p.numel() for p in model.parameters())


# ODConv's README (OSVAI/ODConv), ImageNet: (model, K (None: static), width) -> published params.
PUBLISHED = [
    ("resnet18", None, 1.0, "11.69M"),
    ("od_resnet18", 1, 1.0, "11.94M"),
    ("od_resnet18", 4, 1.0, "44.90M"),
    ("resnet50", None, 1.0, "25.56M"),
    ("od_resnet50", 1, 1.0, "28.64M"),
    ("od_resnet50", 4, 1.0, "90.67M"),
    ("resnet101", None, 1.0, "44.55M"),
    ("od_resnet101", 1, 1.0, "50.82M"),
    ("od_resnet101", 2, 1.0, "90.44M"),
    ("mobilenetv2", None, 1.0, "3.50M"),
    ("od_mobilenetv2", 1, 1.0, "4.94M"),
    ("od_mobilenetv2", 4, 1.0, "11.51M"),
    ("mobilenetv2", None, 0.75, "2.64M"),
    ("od_mobilenetv2", 1, 0.75, "3.51M"),
    ("od_mobilenetv2", 4, 0.75, "7.50M"),
    ("mobilenetv2", None, 0.5, "1.97M"),
    ("od_mobilenetv2", 1, 0.5, "2.43M"),
    ("od_mobilenetv2", 4, 0.5, "4.44M"),
]


@pytest.mark.parametrize(("name", "k", "width", "published"), PUBLISHED)
def test_parameter_counts_equal_odconv_readme(name, k, width, published):
    kwargs = {"width_mult": width} if k is None else {"width_mult": width, "num_kernels": k}
    with torch.device("meta"):
        model = create_model(name, num_classes=1000, **kwargs)
    assert f"{n_params(model) / 1e6:.2f}M" == published


def test_default_is_odconv_4x_and_flat_keys_override():
    with torch.device("meta"):
        default = create_model("od_resnet18")
        assert n_params(default) == n_params(create_model("od_resnet18", num_kernels=4))
        layer = dict(dynamic_layers(default))["layer4.1.conv2"]
        assert (layer.num_kernels, layer.routing.kind, layer.reduction, layer.min_hidden) == (4, "omni", 16, 16)
        other = dict(dynamic_layers(create_model("od_resnet18", num_kernels=2, reduction=4)))["layer4.1.conv2"]
        assert (other.num_kernels, other.routing.kind, other.hidden_channels) == (2, "omni", 512 // 4)
        softmax = dict(dynamic_layers(create_model("od_mobilenetv2", routing="softmax")))["features.18.0"]
        assert softmax.routing.kind == "softmax" and softmax.min_hidden == 16


def _conv_names(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize(("name", "tv_name"), [("od_resnet18", "resnet18"), ("od_resnet50", "resnet50")])
def test_resnet_block_convs_are_omni_stem_downsample_fc_static(name, tv_name):
    with torch.device("meta"):
        model = create_model(name, num_kernels=1)
        ref = getattr(torchvision.models, tv_name)()
    static = _conv_names(model)
    dynamic = dict(dynamic_layers(model))
    tv = _conv_names(ref)
    assert static == [n for n in tv if n == "conv1" or "downsample" in n]  # as torchvision: stem and shortcuts
    assert list(dynamic) == [n for n in tv if n not in static]  # every block conv
    assert type(model.fc) is nn.Linear and isinstance(model.dropout, nn.Dropout)
    for layer_name, layer in dynamic.items():
        assert layer.routing.kind == "omni" and layer.num_kernels == 1
        assert layer.hidden_channels == max(layer.in_channels // 16, 16), layer_name
        assert layer.attn_fc2 is None  # K = 1: no kernel attention
        assert (layer.attn_spatial is None) == (layer.kernel_size == (1, 1)), layer_name
        assert layer.attn_out is not None and layer.bias is None
    assert dynamic["layer4.1.conv2"].hidden_channels == 32 and dynamic["layer1.0.conv1"].hidden_channels == 16


def test_mobilenetv2_every_conv_but_the_stem_is_omni():
    with torch.device("meta"):
        model = create_model("od_mobilenetv2")
        ref = torchvision.models.mobilenet_v2()
    dynamic = dict(dynamic_layers(model))
    assert _conv_names(model) == ["features.0.0"]
    assert list(dynamic) == _conv_names(ref)[1:]  # expand, depthwise, project, last 1x1 to 1280
    assert dynamic["features.18.0"].out_channels == model.last_channel == 1280
    for layer in dynamic.values():
        assert layer.routing.kind == "omni" and layer.num_kernels == 4 and layer.attn_fc2 is not None
        depthwise = layer.groups == layer.in_channels == layer.out_channels
        assert (layer.attn_out is None) == depthwise  # no output-channel attention for a depthwise conv
    assert isinstance(model.classifier[0], nn.Dropout) and model.classifier[0].p == 0.2


def test_resnet_options_dropout_fc_init_and_static_downsample_for_dy():
    torch.manual_seed(0)
    model = create_model("od_resnet18", width_mult=0.25, dropout=0.2)
    assert model.dropout.p == 0.2
    assert model.fc.weight.std().item() == pytest.approx(0.01, rel=0.05) and not model.fc.bias.any()
    plain = create_model("resnet18", width_mult=0.25)
    assert plain.dropout.p == 0.0 and plain.fc.weight.std().item() > 0.02  # torchvision's default init
    dy = create_model("dy_resnet18", width_mult=0.25, downsample_conv_layer=nn.Conv2d)
    assert _conv_names(dy) == ["conv1", "layer2.0.downsample.0", "layer3.0.downsample.0", "layer4.0.downsample.0"]
    with pytest.raises(ValueError, match="dropout"):
        create_model("od_resnet18", width_mult=0.25, dropout=1.0)


@pytest.mark.parametrize("name", ["od_resnet18", "od_mobilenetv2"])
@pytest.mark.parametrize("k", [1, 4])
def test_tiny_forward_train_and_eval(name, k):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, width_mult=0.25, num_kernels=k)
    assert any(isinstance(m, DynamicConv2d) for m in model.modules())
    x = torch.randn(2, 3, 32, 32)
    out = model.train()(x)
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    model.eval()
    with torch.no_grad():
        both = model(x)
        alone = model(x[1:])  # per-sample attention: a sample's output does not depend on the batch
    assert both.shape == (2, 10) and torch.isfinite(both).all()
    torch.testing.assert_close(both[1:], alone, rtol=1e-4, atol=1e-5)


def test_attention_recorder_sees_the_kernel_attention():
    model = create_model("od_resnet18", num_classes=10, width_mult=0.25).eval()
    seen: dict[str, torch.Tensor] = {}
    with torch.no_grad(), AttentionRecorder(model, seen.__setitem__, kernel_only=True):
        model(torch.randn(2, 3, 32, 32))
    assert list(seen) == [n for n, _ in dynamic_layers(model)]
    for pi in seen.values():
        assert pi.shape == (2, 4)
        torch.testing.assert_close(pi.sum(1), torch.ones(2))
