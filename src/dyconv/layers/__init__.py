"""Plain ``nn.Module`` building blocks; nothing here knows of Lightning or Hydra."""

from dyconv.layers.convert import (
    ModuleFilter,
    convert_to_dynamic,
    dynamic_layers,
    get_temperature,
    set_recompute_kernels,
    set_temperature,
)
from dyconv.layers.dynamic_conv import PATHS, DynamicConv2d, choose_path
from dyconv.layers.options import ROUTINGS, DynamicOptions, KernelSpec, build_dynamic_convs, resolve_num_kernels

__all__ = [
    "PATHS",
    "ROUTINGS",
    "DynamicConv2d",
    "DynamicOptions",
    "KernelSpec",
    "ModuleFilter",
    "build_dynamic_convs",
    "choose_path",
    "convert_to_dynamic",
    "dynamic_layers",
    "get_temperature",
    "resolve_num_kernels",
    "set_recompute_kernels",
    "set_temperature",
]
