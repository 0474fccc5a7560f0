"""dyconv: Dynamic Convolution (Chen et al., CVPR 2020) for PyTorch, Lightning and Hydra."""

__version__ = "0.2.0"
