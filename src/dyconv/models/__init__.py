"""Model zoo: every network static (``<name>``) and dynamic (``dy_<name>``) from one code path.

``create_model("dy_resnet10", num_classes=200, stem="small", width_mult=0.5)`` builds any
registered model; ``list_models()`` lists them. Importing this package registers them all.
"""

from dyconv.models import cnn1d, deeplabv3plus, mobilenetv2, mobilenetv3, mobilenetv3_ref, resnet, simple_cnn
from dyconv.models.cnn1d import CNN1d
from dyconv.models.deeplabv3plus import DeepLabV3Plus, load_torchvision_backbone_state_dict
from dyconv.models.factory import ConvNormAct, init_weights, make_divisible
from dyconv.models.mobilenetv2 import MobileNetV2
from dyconv.models.mobilenetv3 import MobileNetV3
from dyconv.models.mobilenetv3_ref import RefMobileNetV3
from dyconv.models.registry import create_model, get_model_builder, is_model, list_models, register_model
from dyconv.models.resnet import BasicBlock, Bottleneck, ResNet
from dyconv.models.simple_cnn import SimpleCNN

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CNN1d",
    "ConvNormAct",
    "DeepLabV3Plus",
    "MobileNetV2",
    "MobileNetV3",
    "RefMobileNetV3",
    "ResNet",
    "SimpleCNN",
    "cnn1d",
    "create_model",
    "deeplabv3plus",
    "get_model_builder",
    "init_weights",
    "is_model",
    "list_models",
    "load_torchvision_backbone_state_dict",
    "make_divisible",
    "mobilenetv2",
    "mobilenetv3",
    "mobilenetv3_ref",
    "register_model",
    "resnet",
    "simple_cnn",
]
