"""examples/detection.py: dynamic convs in a torchvision Faster R-CNN backbone (docs/detection.md)."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch
from torch import nn

from dyconv.layers import DynamicConv2d, dynamic_layers

_spec = importlib.util.spec_from_file_location(
    "dyconv_detection_example", Path(__file__).parents[2] / "examples" / "detection.py"
)
detection = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(detection)

SIZE = 128


@pytest.fixture(scope="module")
def detectors():
    torch.manual_seed(0)
    # box_score_thresh=0: an untrained detector keeps its (low-score) detections, so they are compared too.
    original = detection.build_detector(num_classes=3, image_size=SIZE, box_score_thresh=0.0,
                                        box_detections_per_img=20)
    dynamic = copy.deepcopy(original)
    n = detection.make_backbone_dynamic(dynamic, num_kernels=4)
    return original, dynamic, n


def test_backbone_conversion_is_exact(detectors):
    original, dynamic, n = detectors
    convs = [m for m in original.backbone.body.modules() if type(m) is nn.Conv2d]
    assert n == len(convs) > 50  # every conv of the MobileNetV3 body
    assert not any(type(m) is nn.Conv2d for m in dynamic.backbone.body.modules())
    assert not any(isinstance(m, DynamicConv2d) for m in dynamic.backbone.fpn.modules())
    # Make the attention far from uniform: identical kernels must still give the original output.
    with torch.no_grad():
        for _, layer in dynamic_layers(dynamic):
            layer.attn_fc2.bias.normal_(0, 3)
            layer.temperature.fill_(1.0)
    images, _ = detection.synthetic_batch(2, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        dets = original.eval()(images)
    assert all(len(d["boxes"]) > 0 for d in dets)  # detections are really compared
    assert detection.max_output_difference(original, dynamic, images) < 1e-4


def test_pretrained_frozen_layers_stay_static():
    # What torchvision does with weights_backbone: early layers frozen (requires_grad=False).
    det = detection.build_detector(num_classes=3, image_size=SIZE)
    frozen = [name for name, p in det.backbone.body.named_parameters() if name.startswith("0.")]
    for name, p in det.backbone.body.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    detection.make_backbone_dynamic(det)
    assert all(not name.startswith("0.") for name, _ in dynamic_layers(det.backbone.body))
    assert any(True for _ in dynamic_layers(det.backbone.body))


def test_one_training_step_and_export(detectors, tmp_path):
    _, dynamic, _ = detectors
    dynamic = copy.deepcopy(dynamic)
    images, targets = detection.synthetic_batch(2, SIZE, generator=torch.Generator().manual_seed(2))
    before = {n: m.weight.detach().clone() for n, m in dynamic_layers(dynamic)}
    optimizer = torch.optim.SGD(dynamic.parameters(), lr=0.01)
    losses = detection.train_step(dynamic, optimizer, images, targets)
    assert set(losses) >= {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    layers = dict(dynamic_layers(dynamic))
    grads = [m.weight.grad for m in layers.values()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum().item() > 0 for g in grads) == len(grads)  # every dynamic kernel bank learns
    assert any(not torch.equal(before[n], m.weight) for n, m in layers.items())

    path = detection.export_backbone(dynamic, tmp_path / "backbone.pt2", image_size=SIZE)
    program = torch.export.load(str(path))
    x = torch.rand(1, 3, SIZE, SIZE)
    with torch.no_grad():
        eager = dynamic.backbone.eval()(x)
    exported = program.module()(x)
    assert list(exported) == list(eager)
    for key in eager:
        torch.testing.assert_close(exported[key], eager[key], rtol=1e-4, atol=1e-5)
