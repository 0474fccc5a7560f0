"""The figures ``dyconv.report`` and ``dyconv.inspect`` draw, as a reader sees them: legends that
name numbers as people write them and leave the axes their room, titles inside the figure, the
per-class figure on the layer the text names."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg

import dyconv.reporting.figures as figures
from dyconv.analysis import AttentionSummary, plots
from dyconv.inspect import Inspection, format_report
from dyconv.report import build_report
from dyconv.reporting.groups import Group

#: An Optuna search's sampled values (as Hydra writes them into overrides.yaml).
TRIALS = [
    {"optimizer.lr": "0.0031622776601683794", "optimizer.weight_decay": "1.2345678901234567e-05",
     "model.num_kernels": "4", "callbacks.temperature.start": "23.456789012345678"},
    {"optimizer.lr": "0.11247991058580172", "optimizer.weight_decay": "0.00018787249753397036",
     "model.num_kernels": "2", "callbacks.temperature.start": "2.5788907490503243"},
    {"optimizer.lr": "0.030025089766937508", "optimizer.weight_decay": "4.521975247309754e-06",
     "model.num_kernels": "8", "callbacks.temperature.start": "38.74419980188669"},
    {"optimizer.lr": "0.0489091814729305", "optimizer.weight_decay": "5.643116602388943e-06",
     "model.num_kernels": "4", "callbacks.temperature.start": "11.99167593158845"},
]


def _trials(sweep: Path, trials: list[dict[str, str]]) -> Path:
    for i, params in enumerate(trials):
        job = sweep / f"trial_{i}"
        (job / ".hydra").mkdir(parents=True)
        (job / ".hydra" / "overrides.yaml").write_text("".join(f"- {k}={v}\n" for k, v in params.items()))
        (job / "metrics.json").write_text(json.dumps({"val/acc": 0.8 + i / 100, "model/params": 5000.0 + i,
                                                      "model/gflops": 0.001}))
        (job / "job_status.json").write_text(json.dumps({"status": "completed", "num": i}))
    return sweep


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The matplotlib figures the report turns into PNGs, drawn as saved."""
    figs = []
    real = figures.png_bytes

    def keep(fig):
        figs.append(fig)
        return real(fig)

    monkeypatch.setattr(figures, "png_bytes", keep)
    return figs


def _significant_digits(number: str) -> int:
    mantissa = number.lower().split("e")[0].replace(".", "").lstrip("0")
    return len(mantissa)


def _draw(fig) -> None:
    """Lay ``fig`` out and draw it as its PNG is (an Agg canvas: the figures use no pyplot)."""
    FigureCanvasAgg(fig).draw()


def _inside_figure(fig, artist) -> bool:
    box = artist.get_window_extent(fig.canvas.get_renderer())
    return box.x0 >= -1 and box.y0 >= -1 and box.x1 <= fig.bbox.width + 1 and box.y1 <= fig.bbox.height + 1


def test_an_optuna_sweep_gets_rounded_legend_values_and_keeps_its_axes(tmp_path, drawn):
    sweep = _trials(tmp_path / "optuna", TRIALS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # constrained_layout's "axes sizes collapsed to zero" among them
        build_report(sweep)
    assert len(drawn) == 2
    for fig in drawn:
        _draw(fig)
        (legend,) = fig.legends
        labels = [t.get_text() for t in legend.get_texts()]
        assert len(set(labels)) == len(TRIALS)
        numbers = [n for label in labels for n in re.findall(r"=(-?[\d.]+(?:e-?\d+)?)", label)]
        assert len(numbers) == 4 * len(TRIALS) and max(map(_significant_digits, numbers)) <= 3, labels
        assert "lr=0.00316" in labels[0] and "weight_decay=1.23e-05" in labels[0]
        (ax,) = fig.axes
        box = ax.get_position()
        assert box.width > 0.6 and box.height > 0.4  # the axes keep most of the figure
        assert _inside_figure(fig, legend) and _inside_figure(fig, ax.title)


def test_rounded_values_keep_distinct_values_apart():
    groups = [Group((("optimizer.lr", v), ("model", m))) for v, m in
              [("0.0031622776601683794", "a"), ("0.0031625", "a"), ("8", "b"), ("0.125", "b")]]
    shown = figures.rounded_values(groups)
    assert shown["optimizer.lr", "0.0031622776601683794"] == "0.0031623"  # 3 digits would equal the next
    assert shown["optimizer.lr", "0.0031625"] == "0.0031625"
    assert shown["optimizer.lr", "8"] == "8" and shown["optimizer.lr", "0.125"] == "0.125"
    assert shown["model", "a"] == "a"
    assert figures.short_keys(["optimizer.lr", "model.lr", "callbacks.temperature.start"]) == {
        "optimizer.lr": "optimizer.lr", "model.lr": "model.lr", "callbacks.temperature.start": "start"}


def test_a_long_search_gets_no_legend_but_says_so(tmp_path, drawn):
    trials = [{**TRIALS[i % 4], "optimizer.lr": str(0.001 * (i + 1) / 3)}
              for i in range(figures.MAX_LEGEND_ENTRIES + 1)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_report(_trials(tmp_path / "long", trials))
    for fig in drawn:
        assert not fig.legends and not fig.axes[0].get_legend()
        assert any("13 groups (no legend" in t.get_text() for t in fig.axes[0].texts)


def _summary(num_classes: int = 3) -> AttentionSummary:
    """Two softmax layers: ``early`` routes each class to its own kernel mix, ``late`` (the
    deepest, which the figure used to show) is the same for every class."""
    summary = AttentionSummary({"features.early": 3, "features.late": 3}, num_classes=num_classes)
    labels = torch.arange(num_classes).repeat(4)
    summary.set_labels(labels)
    early = torch.full((len(labels), 3), 0.2)
    early[torch.arange(len(labels)), labels % 3] = 0.6
    summary("features.early", early)
    summary("features.late", torch.full((len(labels), 3), 1 / 3))
    return summary


@pytest.mark.parametrize("num_classes", [3, 30])
def test_inspects_per_class_figure_shows_the_layer_and_classes_its_text_names(num_classes):
    summary = _summary(num_classes)
    text = format_report(Inspection(Path("run/last.ckpt"), "val", summary, per_class=True))
    (named,) = re.findall(r"Per-class mean kernel pi of (\S+) \[softmax\]", text)
    assert named == "features.early"
    figs = plots.attention_figures(summary)
    (key,) = [k for k in figs if k.startswith("class_mean")]
    assert key == f"class_mean_pi/{named}"
    fig = figs[key]
    _draw(fig)
    (ax, _colorbar) = fig.axes
    assert named in ax.get_title()
    rows = [t.get_text() for t in ax.get_yticklabels()]
    text_classes = [int(c) for c in re.findall(r"^  class +(\d+) ", text, flags=re.M)]
    assert rows == [f"class {c} (4)" for c in text_classes] + ["all classes"]
    assert len(text_classes) == min(num_classes, 20) and plots.most_class_dependent(summary) == named


def test_every_inspect_figure_keeps_its_title_and_legend_inside():
    figs = plots.attention_figures(_summary())
    figs["temperature"] = plots.temperature_figure([1.0, 30.0], [0.5, 0.9])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for name, fig in figs.items():
            _draw(fig)
            for artist in [*(ax.title for ax in fig.axes), *fig.legends, *(ax.get_legend() for ax in fig.axes)]:
                if artist is not None and getattr(artist, "get_text", lambda: "x")():
                    assert _inside_figure(fig, artist), name
