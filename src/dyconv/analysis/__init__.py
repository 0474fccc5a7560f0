"""Analysis of learned attention: the recorder (forward hooks on each dynamic layer's
``routing``), per-layer summaries, figures and the Lightning callback that logs them.

``dyconv.analysis.callback`` needs Lightning and is not imported here; the rest is plain torch
(figures import matplotlib when drawn).
"""

from dyconv.analysis.plots import attention_figures, temperature_figure
from dyconv.analysis.recorder import AttentionRecorder
from dyconv.analysis.summary import AttentionSummary, LayerAttention, entropy

__all__ = [
    "AttentionRecorder",
    "AttentionSummary",
    "LayerAttention",
    "attention_figures",
    "entropy",
    "temperature_figure",
]
