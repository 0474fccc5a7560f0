"""What ``python -m dyconv.inspect`` computes and writes: the attention every dynamic layer of a
trained checkpoint routes over a split (:func:`inspect_checkpoint`), the kernel softmax's sharpness
at other temperatures (:func:`temperature_sweep`), the tables and figures (:func:`write_outputs`)
and the console report (:func:`format_report`). The command line, its run folder and its Hydra job
are :mod:`dyconv.inspect`'s."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from dyconv.analysis import plots
from dyconv.analysis.recorder import AttentionRecorder
from dyconv.analysis.summary import OMNI_PARTS, AttentionSummary, LayerSpec
from dyconv.config import resolved_config
from dyconv.errors import ConfigError
from dyconv.layers import dynamic_layers
from dyconv.layers.routing import ROUTINGS
from dyconv.runs.layout import RESOLVED_CONFIG
from dyconv.runs.rebuild import load_trained_run
from dyconv.utils.files import atomic_write_bytes, atomic_write_text, create_new_file, first_free_folder, png_bytes

__all__ = ["Inspection", "format_report", "inspect_checkpoint", "temperature_sweep", "write_outputs"]


@dataclass
class Inspection:
    """What :func:`inspect_checkpoint` found (also what it writes to disk)."""

    ckpt_path: Path
    split: str
    summary: AttentionSummary
    #: ``{temperature: {layer: mean entropy / log K}}`` over the first batches of the split,
    #: for the layers whose routing uses the temperature (not ``sigmoid``).
    sweep: dict[float, dict[str, float]] = field(default_factory=dict)
    #: The temperature as trained (the checkpoint's buffers) of each layer whose routing uses it.
    trained_temperatures: dict[str, float] = field(default_factory=dict)
    per_class: bool = False
    #: Why there are no per-class means (when ``per_class`` is False).
    per_class_note: str = ""
    files: list[Path] = field(default_factory=list)
    #: The checkpoint's epoch and global step (None when it does not record them).
    epoch: int | None = None
    global_step: int | None = None


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device={name!r} is not a torch device; use auto, cpu or cuda[:N]") from e
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device={name} but torch sees no CUDA device; use device=cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device={name} but torch sees {torch.cuda.device_count()} CUDA device(s); "
                              "use device=cuda:0 or device=cpu")
    return dev


def _batches(loader: Iterable[Any], max_batches: int | None) -> Iterable[tuple[torch.Tensor, torch.Tensor | None]]:
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            return
        if isinstance(batch, (list, tuple)):
            yield batch[0], (batch[1] if len(batch) > 1 else None)
        else:
            yield batch, None


def temperature_sweep(
    model: torch.nn.Module, inputs: Sequence[torch.Tensor], temperatures: Sequence[float]
) -> dict[float, dict[str, float]]:
    """Mean entropy / log K of the kernel softmax of every dynamic layer that uses the
    temperature (``softmax``, ``omni``; not ``sigmoid``) on ``inputs`` with all layers set to
    each temperature in turn; every layer's own temperature is restored afterwards, even on error."""
    layers = dict(dynamic_layers(model))
    swept = [name for name, layer in layers.items() if LayerSpec.of(layer).uses_temperature]
    original = {name: layer.temperature.detach().clone() for name, layer in layers.items()}
    out: dict[float, dict[str, float]] = {}
    if not swept:
        return out
    try:
        for t in temperatures:
            if not t > 0:
                raise ConfigError(f"temperatures must all be > 0, got {t}")
            for layer in layers.values():
                layer.temperature.fill_(float(t))
            summary = AttentionSummary.for_model(model)
            with torch.no_grad(), AttentionRecorder(model, summary):
                for x in inputs:
                    model(x)
            out[float(t)] = {name: summary.layers[name].entropy_ratio for name in swept}
    finally:
        for name, layer in layers.items():
            layer.temperature.copy_(original[name])
    return out


def inspect_checkpoint(
    ckpt_path: str | Path,
    split: str = "val",
    *,
    max_batches: int | None = None,
    temperatures: Sequence[float] = (1.0, 5.0, 30.0),
    temperature_batches: int = 4,
    data_overrides: Mapping[str, Any] | None = None,
    device: str = "auto",
) -> Inspection:
    """Collect the attention of every dynamic layer of a checkpoint's model over ``split``.

    ``temperatures`` (plus each layer's trained value) are swept over the first
    ``temperature_batches`` batches; nothing of the model is changed in the end.
    """
    if split not in ("val", "test"):
        raise ConfigError(f"split must be 'val' or 'test', got {split!r}")
    if max_batches is not None and max_batches < 1:
        raise ConfigError(f"max_batches must be >= 1 (or null for the whole split), got {max_batches}")
    bad = [t for t in temperatures if not float(t) > 0]
    if bad or temperature_batches < 0:
        raise ConfigError(f"temperatures must all be > 0 and temperature_batches >= 0, got {list(temperatures)}, "
                          f"{temperature_batches}")
    dev = _device(device)  # before loading anything: device=cuda without CUDA is a config error
    run = load_trained_run(ckpt_path)
    model = run.model
    layers = dict(dynamic_layers(model))
    if not layers:
        name = run.config.get("model", {}).get("name", type(model).__name__)
        raise ConfigError(
            f"{run.ckpt_path} holds the static model {name!r}: it has no dynamic convolutions, so there is no "
            "attention to inspect. Inspect the checkpoint of a dynamic model (dy_*)."
        )
    model.to(dev).eval()
    datamodule = run.datamodule(data_overrides)
    datamodule.prepare_data()
    datamodule.setup("validate" if split == "val" else "test")
    loader = datamodule.val_dataloader() if split == "val" else datamodule.test_dataloader()

    segmentation = run.task.kind == "segmentation"
    num_classes = 0 if segmentation else int(run.config.get("data", {}).get("num_classes") or 0)
    summary = AttentionSummary.for_model(model, num_classes)
    kept: list[torch.Tensor] = []
    with torch.no_grad(), AttentionRecorder(model, summary):
        for x, y in _batches(loader, max_batches):
            x = x.to(dev)
            summary.set_labels(None if segmentation else y)
            model(x)
            if len(kept) < temperature_batches:
                kept.append(x)
    if not next(iter(summary.layers.values())).count:
        raise ConfigError(f"the {split} split of {run.ckpt_path}'s data is empty: nothing to inspect")

    uses = {name for name, la in summary.layers.items() if la.spec.uses_temperature}
    trained = {name: float(layer.temperature) for name, layer in layers.items() if name in uses}
    temps = sorted({float(t) for t in temperatures} | set(trained.values())) if trained else []
    sweep = temperature_sweep(model, kept, temps) if temps and kept else {}
    note = (
        "segmentation labels are per pixel, the attention per image"
        if segmentation
        else "the data config has no num_classes"
    )
    return Inspection(run.ckpt_path, split, summary, sweep, trained, per_class=num_classes > 0, per_class_note=note,
                      epoch=run.checkpoint.get("epoch"), global_step=run.checkpoint.get("global_step"))


def _csv_bytes(rows: list[dict[str, Any]]) -> bytes:
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue().encode()


def _per_class_rows(summary: AttentionSummary) -> list[dict[str, Any]]:
    rows = []
    for name, la in summary.layers.items():
        means = la.class_mean_weight
        column = "mean_pi_{}" if la.spec.kernel_softmax else "mean_gate_{}"
        for c in range(la.num_classes):
            row: dict[str, Any] = {"layer": name, "routing": la.routing, "class": c, "samples": int(la.class_count[c])}
            row.update({column.format(k): float(means[c, k]) for k in range(la.num_kernels)})
            rows.append(row)
    return rows


def _resolved_config_text(result: Inspection, config: DictConfig | Mapping[str, Any] | None, out: Path) -> str:
    record = resolved_config(config)
    record["output_dir"] = str(out)  # where the files are (a taken output_dir: its free <folder>+N)
    record["ckpt_path"] = str(Path(result.ckpt_path).expanduser().absolute())
    record["split"] = result.split
    record["checkpoint"] = {"path": record["ckpt_path"], "epoch": result.epoch, "global_step": result.global_step}
    return OmegaConf.to_yaml(OmegaConf.create(record))


def _output_files(result: Inspection) -> dict[str, bytes]:
    """Every table and figure of ``result``, by file name (``layers.csv`` first)."""
    files = {"layers.csv": _csv_bytes(result.summary.rows())}
    if result.per_class:
        files["per_class.csv"] = _csv_bytes(_per_class_rows(result.summary))
    if result.sweep:
        rows = [
            {"temperature": t, "layer": name, "entropy_ratio": r}
            for t, by_layer in result.sweep.items()
            for name, r in by_layer.items()
        ]
        files["temperature.csv"] = _csv_bytes(rows)
    figures = plots.attention_figures(result.summary)
    if result.sweep:
        temps = list(result.sweep)
        figures["temperature"] = plots.temperature_figure(
            temps, [sum(v.values()) / len(v) for v in result.sweep.values()]
        )
    for tag, fig in figures.items():
        files[tag.replace("/", "_") + ".png"] = png_bytes(fig)
    return files


def write_outputs(
    result: Inspection, output_dir: str | Path, config: DictConfig | Mapping[str, Any] | None = None
) -> list[Path]:
    """Write the CSV tables, PNG figures and ``resolved_config.yaml`` (``config`` resolved, plus
    the absolute checkpoint path, its epoch and global step) of ``result`` into ``output_dir``, or,
    when that folder already holds an inspection's ``layers.csv``, into the first free
    ``<output_dir>+1``, ``+2``, ...: an inspection never replaces or mixes with an earlier one.
    Everything is produced before the first file is written; returns the files
    (``resolved_config.yaml`` last: it is written once the others are)."""
    contents = _output_files(result)
    first = next(iter(contents))
    out = first_free_folder(output_dir, lambda f: create_new_file(f / first, contents[first]), "inspection outputs")
    files = [out / first]
    for name, data in contents.items():
        if name != first:
            files.append(atomic_write_bytes(out / name, data))
    files.append(atomic_write_text(out / RESOLVED_CONFIG, _resolved_config_text(result, config, out)))
    result.files = files
    return files


def _floats(values: Iterable[float]) -> str:
    return " ".join(f"{float(v):.3f}" for v in values)


def format_report(result: Inspection, max_classes: int = 20) -> str:
    """The human-readable tables printed by the CLI (at most ``max_classes`` per-class rows)."""
    summary = result.summary
    layers = summary.layers
    first = next(iter(layers.values()))
    temps = sorted(set(result.trained_temperatures.values()))
    routings = sorted(set(summary.routings.values()), key=ROUTINGS.index)
    trained = f"trained temperature {', '.join(f'{t:g}' for t in temps)}" if temps else "no temperature used"
    lines = [
        f"Attention of {result.ckpt_path} on {result.split} ({int(first.count)} images, routing "
        f"{', '.join(routings)}, {trained})",
    ]
    width = max(len("layer"), *(len(n) for n in layers))
    softmax = {n: la for n, la in layers.items() if la.spec.kernel_softmax}
    gates = {n: la for n, la in layers.items() if not la.spec.kernel_softmax}
    if softmax:
        lines.append("Kernel softmax (softmax, omni): entropy/logK 1 = uniform over the K kernels, 0 = one kernel per "
                     "image; wins: how often each kernel is the argmax; sample std: mean over kernels of the std of "
                     "pi across images (0 = the same for every input)")
        pi_width = 6 * max(la.num_kernels for la in softmax.values()) - 1
        lines.append(f"{'layer':<{width}}  {'routing':<7}  {'K':>2}  {'entropy':>7}  {'/logK':>5}  "
                     f"{'mean pi':<{pi_width}}  {'wins':<{pi_width}}  sample std")
        for name, la in softmax.items():
            lines.append(
                f"{name:<{width}}  {la.routing:<7}  {la.num_kernels:>2}  {la.mean_entropy:>7.4f}  "
                f"{la.entropy_ratio:>5.3f}  {_floats(la.mean_pi):<{pi_width}}  {_floats(la.win_rate):<{pi_width}}  "
                f"{la.weights.sample_std:.4f}"
            )
    if gates:
        lines.append("Kernel gates (sigmoid, CondConv): independent, in (0, 1), not summing to 1; gate sum: mean of "
                     "sum_k gate_k; >0.5: how often each gate is above 0.5; norm. entropy: entropy of the gates "
                     "divided by their sum (how evenly they spread; log K = evenly)")
        g_width = 6 * max(la.num_kernels for la in gates.values()) - 1
        lines.append(f"{'layer':<{width}}  {'routing':<7}  {'K':>2}  {'gate sum':>8}  {'norm. entropy':>13}  "
                     f"{'mean gate':<{g_width}}  {'>0.5':<{g_width}}  {'wins':<{g_width}}  sample std")
        for name, la in gates.items():
            lines.append(
                f"{name:<{width}}  {la.routing:<7}  {la.num_kernels:>2}  {float(la.mean_weight.sum()):>8.4f}  "
                f"{la.normalised_gate_entropy:>13.4f}  {_floats(la.mean_weight):<{g_width}}  "
                f"{_floats(la.gate_on_rate):<{g_width}}  {_floats(la.win_rate):<{g_width}}  {la.weights.sample_std:.4f}"
            )
    omni = {n: la for n, la in layers.items() if la.parts}
    if omni:
        lines.append("ODConv sigmoid attentions (omni): mean / std across channels (or positions) of the mean / "
                     "input dependence (mean over channels of the std across images); '-': the layer has none "
                     "(out: depthwise, spatial: 1x1)")
        lines.append(f"{'layer':<{width}}  " + "  ".join(f"{short:<23}" for short in OMNI_PARTS.values()).rstrip())
        for name, la in omni.items():
            cells = [
                f"{p.mean:.3f} / {p.position_std:.3f} / {p.sample_std:.4f}" if (p := la.parts.get(part)) else "-"
                for part in OMNI_PARTS
            ]
            lines.append(f"{name:<{width}}  " + "  ".join(f"{c:<23}" for c in cells).rstrip())
    if result.per_class:
        # The most class-dependent layer (the per-class figure shows the same one and classes).
        name = plots.most_class_dependent(summary)
        la = layers[name]
        classes = [c for c in range(la.num_classes) if la.class_count[c] > 0]
        shown = plots.shown_classes(summary, name, max_classes)
        which = "" if len(shown) == len(classes) else f", the {len(shown)} classes furthest from the layer mean"
        what = "pi" if la.spec.kernel_softmax else "gates"
        lines.append(f"Per-class mean kernel {what} of {name} [{la.routing}] (most class-dependent layer{which}; "
                     "all in per_class.csv):")
        for c in shown:
            lines.append(f"  class {c:>4} ({int(la.class_count[c]):>5} images): {_floats(la.class_mean_weight[c])}")
    else:
        lines.append(f"Per-class means: not computed ({result.per_class_note})")
    if result.sweep:
        lines.append("Mean entropy/logK of the kernel softmax over layers vs temperature (first batches of the split):")
        lines.append("  " + "  ".join(f"T={t:g}: {sum(v.values()) / len(v):.3f}" for t, v in result.sweep.items()))
    elif gates and not softmax:
        lines.append("Temperature sweep: none (sigmoid routing does not use the temperature)")
    if result.files:
        lines.append(f"Files in {result.files[0].parent}: " + ", ".join(p.name for p in result.files))
    return "\n".join(lines)
