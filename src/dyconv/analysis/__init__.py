"""Analysis of learned attention: the recorder (forward hooks on each dynamic layer's
``routing``), per-layer summaries for each routing (softmax, sigmoid, omni), figures and the
Lightning callback that logs them.

``dyconv.analysis.callback`` needs Lightning and is not imported here; the rest is plain torch
(figures import matplotlib when drawn).
"""

from dyconv.analysis.plots import attention_figures, temperature_figure
from dyconv.analysis.recorder import AttentionRecorder, detach_attention
from dyconv.analysis.summary import AttentionSummary, LayerAttention, LayerSpec, PartStats, entropy, kernel_weights

__all__ = [
    "AttentionRecorder",
    "AttentionSummary",
    "LayerAttention",
    "LayerSpec",
    "PartStats",
    "attention_figures",
    "detach_attention",
    "entropy",
    "kernel_weights",
    "temperature_figure",
]
