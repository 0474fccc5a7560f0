"""Plain ``nn.Module`` building blocks; nothing here knows of Lightning or Hydra."""

from dyconv.layers.convert import (
    ModuleFilter,
    build_dynamic_convs,
    convert_to_dynamic,
    dynamic_layers,
    get_temperature,
    set_recompute_kernels,
    set_temperature,
    share_kernel_workspace,
)
from dyconv.layers.dynamic_conv import (
    PATHS,
    DynamicConv1d,
    DynamicConv2d,
    DynamicConv3d,
    DynamicConvNd,
    KernelWorkspace,
    choose_path,
    dynamic_class_for,
)
from dyconv.layers.options import DynamicOptions, KernelSpec, resolve_num_kernels
from dyconv.layers.routing import ROUTINGS, OmniAttention

__all__ = [
    "PATHS",
    "ROUTINGS",
    "DynamicConv1d",
    "DynamicConv2d",
    "DynamicConv3d",
    "DynamicConvNd",
    "DynamicOptions",
    "KernelSpec",
    "KernelWorkspace",
    "ModuleFilter",
    "OmniAttention",
    "build_dynamic_convs",
    "choose_path",
    "convert_to_dynamic",
    "dynamic_class_for",
    "dynamic_layers",
    "get_temperature",
    "resolve_num_kernels",
    "set_recompute_kernels",
    "set_temperature",
    "share_kernel_workspace",
]
