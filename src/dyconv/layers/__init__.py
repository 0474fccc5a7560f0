"""Plain ``nn.Module`` building blocks; nothing here knows of Lightning or Hydra."""

from dyconv.layers.convert import (
    KernelSpec,
    ModuleFilter,
    convert_to_dynamic,
    dynamic_layers,
    get_temperature,
    resolve_num_kernels,
    set_num_kernels,
    set_recompute_kernels,
    set_temperature,
)
from dyconv.layers.dynamic_conv import PATHS, DynamicConv2d, choose_path

__all__ = [
    "PATHS",
    "DynamicConv2d",
    "KernelSpec",
    "ModuleFilter",
    "choose_path",
    "convert_to_dynamic",
    "dynamic_layers",
    "get_temperature",
    "resolve_num_kernels",
    "set_num_kernels",
    "set_recompute_kernels",
    "set_temperature",
]
