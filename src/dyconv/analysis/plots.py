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


def _label(name: str, routing: str) -> str:
    return f"{name} [{routing}]"


def attention_figures(summary: AttentionSummary) -> dict[str, Figure]:
    """Figures of a summary; every layer is labelled ``name [routing]``.

    Layers with a kernel softmax (``softmax``, ``omni``): ``entropy`` (per layer vs log K) and
    ``mean_pi`` (layer x kernel). ``sigmoid`` layers: ``mean_gate`` and ``gate_on`` (fraction of
    samples with the gate above 0.5), layer x kernel. All layers: ``win_rate``. ``omni`` layers:
    ``omni_attention`` (mean and input dependence of the input/output/spatial attentions). With
    recorded labels: ``class_mean_pi/<layer>`` (or ``class_mean_gate/<layer>``) for the deepest layer.
    """
    figs: dict[str, Figure] = {}
    items = list(summary.layers.items())
    softmax = [(n, la) for n, la in items if la.spec.kernel_softmax]
    gates = [(n, la) for n, la in items if not la.spec.kernel_softmax]

    def grid(layers: list, values) -> np.ndarray:
        out = np.full((len(layers), max(la.num_kernels for _, la in layers)), np.nan)
        for i, (_, la) in enumerate(layers):
            out[i, : la.num_kernels] = values(la).numpy()
        return out

    def labels(layers: list) -> list[str]:
        return [_label(n, la.routing) for n, la in layers]

    if softmax:
        fig = _figure(2.5 + 0.25 * len(softmax), 3.6)
        ax = fig.add_subplot()
        x = np.arange(len(softmax))
        ax.bar(x, [la.mean_entropy for _, la in softmax], label="mean entropy")
        ax.plot(x, [la.max_entropy for _, la in softmax], "r_", markersize=12, label="log K (uniform)")
        ax.set_xticks(x, labels(softmax), rotation=90, fontsize=7)
        ax.set_ylabel("nats")
        ax.set_title("Kernel attention entropy per layer (softmax over K)")
        ax.legend(fontsize=7)
        figs["entropy"] = fig
        figs["mean_pi"] = _heatmap(grid(softmax, lambda la: la.mean_pi), labels(softmax), "Mean kernel attention",
                                   "kernel", "mean pi_k")
    if gates:
        figs["mean_gate"] = _heatmap(grid(gates, lambda la: la.mean_weight), labels(gates),
                                     "Mean kernel gate (independent sigmoids)", "kernel", "mean gate_k")
        figs["gate_on"] = _heatmap(grid(gates, lambda la: la.gate_on_rate), labels(gates), "How often each gate > 0.5",
                                   "kernel", "fraction")
    figs["win_rate"] = _heatmap(grid(items, lambda la: la.win_rate), labels(items), "How often each kernel wins",
                                "kernel", "fraction")
    omni = [(n, la) for n, la in items if la.parts]
    if omni:
        figs["omni_attention"] = _omni_figure(omni)
    name, last = items[-1]
    if last.num_classes and float(last.class_count.sum()) > 0:
        what = "pi" if last.spec.kernel_softmax else "gate"
        figs[f"class_mean_{what}/{name}"] = _heatmap(
            last.class_mean_weight.numpy(),
            [str(c) for c in range(last.num_classes)],
            f"Per-class mean kernel {what}, {_label(name, last.routing)}",
            "kernel",
            f"mean {what}_k",
        )
    return figs


def _omni_figure(layers: list) -> Figure:
    """Mean and input dependence (mean over channels of the std across samples) of ODConv's
    sigmoid attentions, one group of bars per layer."""
    from dyconv.analysis.summary import OMNI_PARTS

    fig = _figure(3.0 + 0.35 * len(layers), 5.5)
    axes = fig.subplots(2, 1, sharex=True)
    x = np.arange(len(layers))
    width = 0.8 / len(OMNI_PARTS)
    for j, (part, short) in enumerate(OMNI_PARTS.items()):
        means = [la.parts[part].mean if part in la.parts else np.nan for _, la in layers]
        stds = [la.parts[part].sample_std if part in la.parts else np.nan for _, la in layers]
        axes[0].bar(x + (j - 1) * width, means, width, label=short)
        axes[1].bar(x + (j - 1) * width, stds, width, label=short)
    axes[0].set_ylabel("mean")
    axes[0].set_ylim(0, 1)
    axes[0].set_title("ODConv sigmoid attentions (in / out channels, spatial positions)")
    axes[0].legend(fontsize=7)
    axes[1].set_ylabel("std across samples")
    axes[1].set_xticks(x, [_label(n, la.routing) for n, la in layers], rotation=90, fontsize=7)
    return fig


def temperature_figure(temperatures: list[float], ratios: list[float]) -> Figure:
    """Mean normalised entropy (entropy / log K) of the kernel softmax against the temperature
    (layers whose attention the temperature changes: ``softmax`` and ``omni``)."""
    fig = _figure(4.0, 3.0)
    ax = fig.add_subplot()
    ax.plot(temperatures, ratios, "o-")
    ax.set_xscale("log")
    ax.set_xlabel("temperature")
    ax.set_ylabel("mean entropy / log K")
    ax.set_ylim(0, 1.05)
    ax.set_title("Attention sharpness vs temperature")
    return fig
