"""Dynamic convolution inside a torchvision detector (Faster R-CNN, MobileNetV3-Large FPN backbone).

    python examples/detection.py            # convert, check, one training step, export (CPU, seconds)

``convert_to_dynamic`` replaces the backbone's ``nn.Conv2d`` layers with ``DynamicConv2d`` whose
K kernels are copies of the original weight, so the converted detector computes what the
original did (check it with :func:`max_output_difference`); then it trains like any torchvision
detector, and the backbone exports to ``torch.export`` / ONNX. See docs/detection.md.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, fasterrcnn_mobilenet_v3_large_320_fpn

from dyconv.layers import DynamicOptions, convert_to_dynamic, dynamic_layers


def build_detector(num_classes: int = 3, image_size: int = 160, **kwargs: Any) -> FasterRCNN:
    """A small Faster R-CNN; ``weights`` / ``weights_backbone`` may be passed for pretrained ones
    (the default downloads nothing). ``image_size`` is the resize target (320 in torchvision)."""
    kwargs.setdefault("weights", None)
    kwargs.setdefault("weights_backbone", None)
    return fasterrcnn_mobilenet_v3_large_320_fpn(
        num_classes=num_classes, min_size=image_size, max_size=image_size, **kwargs
    )


def make_backbone_dynamic(detector: FasterRCNN, num_kernels: int = 4, **kwargs: Any) -> int:
    """Convert the trainable convs of the backbone body (MobileNetV3 features) in place; returns
    how many became dynamic. Layers a pretrained detector freezes (``requires_grad=False``)
    stay static, so ``trainable_backbone_layers`` keeps its meaning; the FPN stays static."""
    body = detector.backbone.body
    trainable = {name for name, m in body.named_modules()
                 if type(m) is nn.Conv2d and m.weight.requires_grad}
    options = DynamicOptions(num_kernels=num_kernels)
    convert_to_dynamic(body, options, include=lambda name, m: name in trainable, **kwargs)
    return len(list(dynamic_layers(body)))


@torch.no_grad()
def max_output_difference(a: nn.Module, b: nn.Module, images: list[torch.Tensor]) -> float:
    """Largest absolute difference between two detectors' backbone features and detections
    (eval mode) on ``images``."""
    a.eval()
    b.eval()
    diff = 0.0
    batch_a, _ = a.transform(images)
    batch_b, _ = b.transform(images)
    for fa, fb in zip(a.backbone(batch_a.tensors).values(), b.backbone(batch_b.tensors).values()):
        diff = max(diff, (fa - fb).abs().max().item())
    for da, db in zip(a(images), b(images)):
        if da["boxes"].shape != db["boxes"].shape or not torch.equal(da["labels"], db["labels"]):
            return float("inf")
        for key in ("boxes", "scores"):
            if da[key].numel():
                diff = max(diff, (da[key] - db[key]).abs().max().item())
    return diff


def synthetic_batch(
    batch_size: int = 2, image_size: int = 160, num_classes: int = 3, generator: torch.Generator | None = None
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Random images with 1-3 random boxes each (labels in 1..num_classes-1; 0 is background)."""
    images, targets = [], []
    for _ in range(batch_size):
        n = int(torch.randint(1, 4, (), generator=generator))
        xy = torch.rand(n, 2, generator=generator) * image_size * 0.6
        wh = torch.rand(n, 2, generator=generator) * image_size * 0.3 + 8
        boxes = torch.cat([xy, (xy + wh).clamp(max=image_size - 1)], dim=1)
        labels = torch.randint(1, num_classes, (n,), generator=generator)
        images.append(torch.rand(3, image_size, image_size, generator=generator))
        targets.append({"boxes": boxes, "labels": labels})
    return images, targets


def train_step(
    detector: FasterRCNN, optimizer: torch.optim.Optimizer, images: list[torch.Tensor],
    targets: list[dict[str, torch.Tensor]],
) -> dict[str, float]:
    """One optimisation step on the summed torchvision detection losses; returns the losses."""
    detector.train()
    losses = detector(images, targets)
    total = sum(losses.values())
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    return {k: v.item() for k, v in losses.items()} | {"total": total.item()}


def export_backbone(detector: FasterRCNN, path: str | Path, image_size: int = 160) -> Path:
    """Export the (dynamic) backbone + FPN: ``.pt2`` (``torch.export``) or ``.onnx`` (ONNX via
    ``torch.export``). The detection heads (RPN, RoI) are plain torchvision code, unchanged by the
    conversion; see docs/detection.md for what exports as a whole."""
    backbone = detector.backbone.eval()
    example = (torch.rand(1, 3, image_size, image_size),)
    path = Path(path)
    if path.suffix == ".onnx":
        torch.onnx.export(backbone, example, str(path), dynamo=True, external_data=False, verbose=False)
    else:
        torch.export.save(torch.export.export(backbone, example), str(path))
    return path


def main() -> None:
    import copy
    import tempfile

    torch.manual_seed(0)
    detector = build_detector()
    reference = copy.deepcopy(detector)
    n = make_backbone_dynamic(detector)
    images, targets = synthetic_batch()
    print(f"{n} backbone convs are dynamic; max |difference| after conversion: "
          f"{max_output_difference(reference, detector, images):.2e}")
    optimizer = torch.optim.SGD(detector.parameters(), lr=0.01, momentum=0.9)
    print("one training step:", train_step(detector, optimizer, images, targets))
    with tempfile.TemporaryDirectory() as tmp:
        out = export_backbone(detector, Path(tmp) / "backbone.onnx")
        print(f"exported the backbone to ONNX ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
