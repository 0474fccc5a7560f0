"""Small shared pieces of the framework tests."""

from torch import nn

from dyconv.layers import DynamicConv2d


def tiny_net(num_classes: int = 10) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        DynamicConv2d(4, 8, 3, padding=1, num_kernels=3),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, num_classes),
    )
