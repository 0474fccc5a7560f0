"""Matplotlib figures of attention summaries (headless, Agg backend)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dyconv.analysis.summary import AttentionSummary

__all__ = ["attention_figures", "temperature_figure"]


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    return Figure(figsize=(width, height), layout="constrained")


def _heatmap(values: np.ndarray, rows: list[str], title: str, xlabel: str, cbar: str) -> Figure:
    fig = _figure(2.0 + 0.5 * values.shape[1], 1.2 + 0.28 * len(rows))
    ax = fig.add_subplot()
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(1e-9, float(np.nanmax(values))))
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xticks(range(values.shape[1]))
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label=cbar)
    return fig


def attention_figures(summary: AttentionSummary) -> dict[str, Figure]:
    """``entropy`` (per layer vs log K), ``mean_pi`` and ``win_rate`` (layer x kernel heatmaps)
    and, when labels were recorded, ``class_mean_pi/<layer>`` for the deepest layer."""
    names = list(summary.layers)
    layers = list(summary.layers.values())
    kmax = max(la.num_kernels for la in layers)
    figs: dict[str, Figure] = {}

    fig = _figure(2.5 + 0.25 * len(names), 3.2)
    ax = fig.add_subplot()
    x = np.arange(len(names))
    ax.bar(x, [la.mean_entropy for la in layers], label="mean entropy")
    ax.plot(x, [la.max_entropy for la in layers], "r_", markersize=12, label="log K (uniform)")
    ax.set_xticks(x, names, rotation=90, fontsize=7)
    ax.set_ylabel("nats")
    ax.set_title("Attention entropy per layer")
    ax.legend(fontsize=7)
    figs["entropy"] = fig

    def grid(attr: str) -> np.ndarray:
        out = np.full((len(layers), kmax), np.nan)
        for i, la in enumerate(layers):
            out[i, : la.num_kernels] = getattr(la, attr).numpy()
        return out

    figs["mean_pi"] = _heatmap(grid("mean_pi"), names, "Mean attention weight", "kernel", "mean pi_k")
    figs["win_rate"] = _heatmap(grid("win_rate"), names, "How often each kernel wins", "kernel", "fraction")
    last = layers[-1]
    if last.num_classes and float(last.class_count.sum()) > 0:
        figs[f"class_mean_pi/{names[-1]}"] = _heatmap(
            last.class_mean_pi.numpy(),
            [str(c) for c in range(last.num_classes)],
            f"Per-class mean attention, {names[-1]}",
            "kernel",
            "mean pi_k",
        )
    return figs


def temperature_figure(temperatures: list[float], ratios: list[float]) -> Figure:
    """Mean normalised entropy (entropy / log K) of the attention against the temperature."""
    fig = _figure(4.0, 3.0)
    ax = fig.add_subplot()
    ax.plot(temperatures, ratios, "o-")
    ax.set_xscale("log")
    ax.set_xlabel("temperature")
    ax.set_ylabel("mean entropy / log K")
    ax.set_ylim(0, 1.05)
    ax.set_title("Attention sharpness vs temperature")
    return fig
