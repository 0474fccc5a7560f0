"""Matplotlib figures of attention summaries (headless, Agg backend)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from dyconv.analysis.summary import AttentionSummary

__all__ = ["attention_figures", "class_figure", "most_class_dependent", "shown_classes", "temperature_figure"]

#: Per-class rows shown (in the figure and the inspect text): the classes furthest from the layer mean.
MAX_CLASSES = 20


def _figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure  # no pyplot: no global state, no display needed

    return Figure(figsize=(width, height), layout="constrained")


def _heatmap(values: np.ndarray, rows: list[str], title: str, xlabel: str, cbar: str) -> Figure:
    fig = _figure(max(4.8, 2.0 + 0.5 * values.shape[1]), 1.4 + 0.28 * len(rows))
    ax = fig.add_subplot()
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=0.0, vmax=max(1e-9, float(np.nanmax(values))))
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xticks(range(values.shape[1]))
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    fig.colorbar(im, ax=ax, label=cbar)
    return fig


def most_class_dependent(summary: AttentionSummary) -> str | None:
    """The layer whose per-class mean kernel weights deviate most from its overall mean (the
    largest absolute deviation of any class and kernel); None without recorded labels. The
    inspect text and its per-class figure both show this layer."""
    spread = {name: float((la.class_mean_weight - la.mean_weight).abs().max())
              for name, la in summary.layers.items()
              if la.num_classes and la.class_count is not None and float(la.class_count.sum()) > 0}
    return max(spread, key=spread.get) if spread else None


def shown_classes(summary: AttentionSummary, name: str, max_classes: int = MAX_CLASSES) -> list[int]:
    """The classes of layer ``name`` with images, at most ``max_classes`` of them: those furthest
    from the layer's mean kernel weights, in class order."""
    la = summary.layers[name]
    deviation = (la.class_mean_weight - la.mean_weight).abs().amax(dim=1)
    classes = [c for c in range(la.num_classes) if la.class_count[c] > 0]
    return sorted(sorted(classes, key=lambda c: -float(deviation[c]))[:max_classes])


def class_figure(summary: AttentionSummary, name: str, max_classes: int = MAX_CLASSES) -> Figure:
    """Per-class mean kernel weights of layer ``name`` (one row per class of
    :func:`shown_classes`, its value written in each cell; the colours span the values shown, so
    that small differences between classes are visible), with the layer's mean as the last row."""
    la = summary.layers[name]
    what = "pi" if la.spec.kernel_softmax else "gate"
    classes = shown_classes(summary, name, max_classes)
    values = np.vstack([la.class_mean_weight[classes].numpy(), la.mean_weight.numpy()[None, :]])
    rows = [f"class {c} ({int(la.class_count[c])})" for c in classes] + ["all classes"]
    fig = _figure(max(5.0, 2.4 + 0.6 * la.num_kernels), 1.8 + 0.3 * len(rows))
    ax = fig.add_subplot()
    low, high = float(values.min()), float(values.max())
    im = ax.imshow(values, aspect="auto", cmap="viridis", vmin=low, vmax=max(high, low + 1e-12))
    ax.set_yticks(range(len(rows)), rows, fontsize=7)
    ax.set_xticks(range(values.shape[1]))
    ax.axhline(len(classes) - 0.5, color="white", linewidth=2)
    if values.size <= 400:
        middle, digits = (low + high) / 2, 3 if high - low >= 0.01 else 4
        for (i, k), v in np.ndenumerate(values):
            ax.text(k, i, f"{v:.{digits}f}", ha="center", va="center", fontsize=6,
                    color="black" if v > middle else "white")
    ax.set_xlabel("kernel")
    shown = "" if len(classes) == int((la.class_count > 0).sum()) else f", the {len(classes)} classes furthest from it"
    ax.set_title(f"Per-class mean kernel {what}: {_label(name, la.routing)}\n(the most class-dependent layer{shown})",
                 fontsize=9)
    fig.colorbar(im, ax=ax, label=f"mean {what}_k")
    return fig


def _label(name: str, routing: str) -> str:
    return f"{name} [{routing}]"


def attention_figures(summary: AttentionSummary, max_classes: int = MAX_CLASSES) -> dict[str, Figure]:
    """Figures of a summary; every layer is labelled ``name [routing]``.

    Layers with a kernel softmax (``softmax``, ``omni``): ``entropy`` (per layer vs log K) and
    ``mean_pi`` (layer x kernel). ``sigmoid`` layers: ``mean_gate`` and ``gate_on`` (fraction of
    samples with the gate above 0.5), layer x kernel. All layers: ``win_rate``. ``omni`` layers:
    ``omni_attention`` (mean and input dependence of the input/output/spatial attentions). With
    recorded labels: ``class_mean_pi/<layer>`` (or ``class_mean_gate/<layer>``) for the most
    class-dependent layer (:func:`class_figure`).
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
        fig = _figure(max(4.8, 2.5 + 0.25 * len(softmax)), 4.0)
        ax = fig.add_subplot()
        x = np.arange(len(softmax))
        ax.bar(x, [la.mean_entropy for _, la in softmax], label="mean entropy")
        ax.plot(x, [la.max_entropy for _, la in softmax], "r_", markersize=12, label="log K (uniform)")
        ax.set_xticks(x, labels(softmax), rotation=90, fontsize=7)
        ax.set_ylabel("nats")
        ax.set_title("Kernel attention entropy per layer (softmax over K)", fontsize=10)
        fig.legend(fontsize=7, loc="outside lower center", ncols=2)  # not over the bars
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
    name = most_class_dependent(summary)
    if name is not None:
        what = "pi" if summary.layers[name].spec.kernel_softmax else "gate"
        figs[f"class_mean_{what}/{name}"] = class_figure(summary, name, max_classes)
    return figs


def _omni_figure(layers: list) -> Figure:
    """Mean and input dependence (mean over channels of the std across samples) of ODConv's
    sigmoid attentions, one group of bars per layer."""
    from dyconv.analysis.summary import OMNI_PARTS

    fig = _figure(max(5.2, 3.0 + 0.35 * len(layers)), 5.5)
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
    axes[0].set_title("ODConv sigmoid attentions (in / out channels, spatial positions)", fontsize=10)
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
