"""Published results, as data: the one place that holds each reproducible row's figures.

Every :class:`Published` row names the ``conf/experiment/`` config that reproduces it, the
parameter count of the model that produced the number and the number itself with its source
(torchvision's ``Weights.meta`` is the model). ``tests/test_experiments.py`` checks every
experiment's model against ``params``; the README's results table and ``docs/experiments.md``
are generated from :data:`ROWS` (``python scripts/published_tables.py`` rewrites them, a test
fails if they drift).

Sources: ``ref-first`` / ``ref-latest`` are the first and the latest README of the 2021 reference
implementation (TArdelean/DynamicConvolution); ``paper`` is Chen et al., CVPR 2020; ``odconv`` is
the README of ODConv's official code (OSVAI/ODConv; Li, Zhou, Yao, "Omni-Dimensional Dynamic
Convolution", ICLR 2022), whose networks are the ``od_*`` models.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ROWS", "SOURCES", "TABLES", "Published", "by_experiment", "docs_table", "readme_table", "render", "rows"]

SOURCES = {
    "ref-first": "reference implementation, first README",
    "ref-latest": "reference implementation, latest README",
    "paper": "the paper (Chen et al., CVPR 2020)",
    "odconv": "ODConv's README (Li et al., ICLR 2022)",
}

#: table key -> (title, metric)
TABLES = {
    "tinyimagenet": ("Tiny ImageNet (200 classes, 64 px), top-1 % on val", "top-1"),
    "imagenette": ("Imagenette (10 classes, imagenette2-320, 224 px crops), top-1 % on val", "top-1"),
    "voc": ("Pascal VOC 2012 val (21 classes), mIoU %", "mIoU"),
    "imagenet": ("ImageNet (1000 classes, 224 px), top-1 % on val", "top-1"),
    "imagenet_odconv": ("ImageNet (1000 classes, 224 px), ODConv's networks and recipes, top-1 % on val", "top-1"),
}


@dataclass(frozen=True)
class Published:
    """One published result and the experiment that reproduces it.

    Attributes:
        experiment: ``conf/experiment/<experiment>.yaml``.
        table: key of :data:`TABLES`.
        network: display name.
        params: exact parameter count of the model behind the number (the reference code's, which
            the experiment's model equals); None where the source gives none.
        params_published: the count as the source prints it ("5.00M"), None if it prints none.
        value: the published metric (latest source); None if none was published.
        source: key of :data:`SOURCES` for ``value``.
        value_first: the first README's figure where it differs from the latest one.
        config: the source's own config file, if any.
        trained_on: training data where it is not the table's default.
        note: a caveat printed next to the row.
    """

    experiment: str
    table: str
    network: str
    params: int | None
    params_published: str | None
    value: float | None
    source: str
    value_first: float | None = None
    config: str | None = None
    trained_on: str | None = None
    note: str | None = None


_OD_BASELINE = (
    "ODConv's README gives no dropout for its static MobileNetV2 baselines (its training script's default is 0); "
    "the experiment uses the model's default, 0.2"
)

_NLL = (
    "the reference's MobileNetV2 returned raw logits under NLLLoss, so its number is not comparable; "
    "dyconv trains it with cross-entropy"
)

ROWS: tuple[Published, ...] = (
    # Tiny ImageNet: ResNet-10 (small stem), the reference's first table
    Published(
        "tinyimagenet_resnet10",
        "tinyimagenet",
        "ResNet-10",
        5_000_712,
        "5.00M",
        56.86,
        "ref-latest",
        config="Resnet_Vanilla_1.yaml",
    ),
    Published(
        "tinyimagenet_dy_resnet10",
        "tinyimagenet",
        "DY-ResNet-10",
        19_806_100,
        "19.80M",
        58.17,
        "ref-latest",
        config="Resnet_DY_1.yaml",
    ),
    Published(
        "tinyimagenet_resnet10_x05",
        "tinyimagenet",
        "ResNet-10 x0.5",
        1_277_800,
        "1.27M",
        52.78,
        "ref-latest",
        config="Resnet_Vanilla_05.yaml",
    ),
    Published(
        "tinyimagenet_dy_resnet10_x05",
        "tinyimagenet",
        "DY-ResNet-10 x0.5",
        4_979_780,
        "4.97M",
        53.92,
        "ref-latest",
        config="Resnet_DY_05.yaml",
    ),
    Published(
        "tinyimagenet_dy_resnet10_x05_smooth",
        "tinyimagenet",
        "DY-ResNet-10 x0.5, label smoothing 0.1",
        4_979_780,
        "4.97M",
        55.38,
        "ref-latest",
        config="Resnet_DY_Leaky_05_smooth.yaml",
    ),
    Published(
        "tinyimagenet_resnet10_x025",
        "tinyimagenet",
        "ResNet-10 x0.25",
        333_336,
        "0.33M",
        46.17,
        "ref-latest",
        config="Resnet_Vanilla_025.yaml",
    ),
    Published(
        "tinyimagenet_dy_resnet10_x025",
        "tinyimagenet",
        "DY-ResNet-10 x0.25",
        1_259_164,
        "1.25M",
        48.05,
        "ref-latest",
        config="Resnet_DY_025.yaml",
    ),
    # Tiny ImageNet: the later rows
    Published(
        "tinyimagenet_mobilenetv2_x035",
        "tinyimagenet",
        "MobileNetV2 x0.35",
        652_328,
        "0.65M",
        34.05,
        "ref-latest",
        config="MobileNetV2_Vanilla_035.yaml",
        note=_NLL,
    ),
    Published(
        "tinyimagenet_dy_mobilenetv2_x035",
        "tinyimagenet",
        "DY-MobileNetV2 x0.35",
        2_095_172,
        "2.09M",
        31.91,
        "ref-latest",
        config="MobileNetV2_DY_035.yaml",
        note=_NLL,
    ),
    Published(
        "tinyimagenet_mobilenetv3_small_x05",
        "tinyimagenet",
        "MobileNetV3 x0.5 (reference's)",
        877_872,
        "0.87M",
        53.36,
        "ref-latest",
        config="MobileNetV3_Vanilla_05_Tiny.yaml",
    ),
    Published(
        "tinyimagenet_dy_mobilenetv3_small_x05",
        "tinyimagenet",
        "DY-MobileNetV3 x0.5 (reference's)",
        2_525_336,
        "2.52M",
        50.95,
        "ref-latest",
        config="MobileNetV3_DY_05_Tiny.yaml",
    ),
    Published(
        "tinyimagenet_mobilenetv3_small",
        "tinyimagenet",
        "MobileNetV3 x1 (reference's)",
        1_913_568,
        "1.91M",
        55.53,
        "ref-latest",
        config="MobileNetV3_Vanilla_1_Tiny.yaml",
    ),
    Published(
        "tinyimagenet_dy_mobilenetv3_small",
        "tinyimagenet",
        "DY-MobileNetV3 x1 (reference's)",
        6_048_458,
        "6.04M",
        53.59,
        "ref-latest",
        config="MobileNetV3_DY_1_Tiny.yaml",
    ),
    # Imagenette
    Published(
        "imagenette_mobilenetv3_small_x025",
        "imagenette",
        "MobileNetV3 x0.25 (reference's)",
        274_330,
        "0.27M",
        85.07,
        "ref-latest",
        config="MobileNetV3_Vanilla_025_Imagenette.yaml",
    ),
    Published(
        "imagenette_dy_mobilenetv3_small_x025",
        "imagenette",
        "DY-MobileNetV3 x0.25 (reference's)",
        998_570,
        "0.99M",
        85.24,
        "ref-latest",
        config="MobileNetV3_DY_025_Imagenette.yaml",
    ),
    Published(
        "imagenette_mobilenetv3_small_x05",
        "imagenette",
        "MobileNetV3 x0.5 (reference's)",
        634_482,
        "0.63M",
        87.31,
        "ref-latest",
        config="MobileNetV3_Vanilla_05_Imagenette.yaml",
    ),
    Published(
        "imagenette_dy_mobilenetv3_small_x05",
        "imagenette",
        "DY-MobileNetV3 x0.5 (reference's)",
        2_281_946,
        "2.28M",
        87.89,
        "ref-latest",
        config="MobileNetV3_DY_05_Imagenette.yaml",
    ),
    Published(
        "imagenette_mobilenetv3_small",
        "imagenette",
        "MobileNetV3 x1 (reference's)",
        1_670_178,
        "1.67M",
        88.40,
        "ref-latest",
        config="MobileNetV3_Vanilla_1_Imagenette.yaml",
    ),
    Published(
        "imagenette_dy_mobilenetv3_small",
        "imagenette",
        "DY-MobileNetV3 x1 (reference's)",
        5_805_068,
        "5.80M",
        89.32,
        "ref-latest",
        config="MobileNetV3_DY_1_Imagenette.yaml",
    ),
    # Pascal VOC 2012
    Published(
        "voc_deeplabv3plus",
        "voc",
        "DeepLabV3+ (MobileNetV2)",
        5_816_053,
        "5.81M",
        65.09,
        "ref-latest",
        value_first=61.33,
        config="deeplabv3plus.yaml",
        trained_on="VOC train",
    ),
    Published(
        "voc_dy_deeplabv3plus",
        "voc",
        "DY-DeepLabV3+ (MobileNetV2)",
        18_414_806,
        "18.4M",
        65.45,
        "ref-latest",
        value_first=61.21,
        config="dy_deeplabv3plus.yaml",
        trained_on="VOC train",
    ),
    Published(
        "voc_sbd_deeplabv3plus_x05",
        "voc",
        "DeepLabV3+ x0.5",
        3_409_413,
        "3.40M",
        70.23,
        "ref-latest",
        config="deeplabv3plus_0.5.yaml",
        trained_on="VOC + SBD",
    ),
    Published(
        "voc_sbd_dy_deeplabv3plus_x05",
        "voc",
        "DY-DeepLabV3+ x0.5",
        8_444_120,
        "8.44M",
        71.09,
        "ref-latest",
        config="dy_deeplabv3plus_0.5.yaml",
        trained_on="VOC + SBD",
    ),
    # ImageNet: the paper (its parameter counts are not part of this record; torchvision's exact counts are)
    Published("imagenet_resnet10", "imagenet", "ResNet-10", None, None, 63.5, "paper"),
    Published("imagenet_dy_resnet10", "imagenet", "DY-ResNet-10", None, None, 67.7, "paper"),
    Published("imagenet_resnet18", "imagenet", "ResNet-18", 11_689_512, None, 70.4, "paper"),
    Published("imagenet_dy_resnet18", "imagenet", "DY-ResNet-18", None, None, 72.7, "paper"),
    Published("imagenet_mobilenetv2", "imagenet", "MobileNetV2 x1.0", 3_504_872, None, 72.0, "paper"),
    Published("imagenet_dy_mobilenetv2", "imagenet", "DY-MobileNetV2 x1.0", None, None, 75.2, "paper"),
    Published("imagenet_dy_mobilenetv2_x05", "imagenet", "DY-MobileNetV2 x0.5", None, None, 69.9, "paper"),
    Published("imagenet_mobilenetv3_small", "imagenet", "MobileNetV3-Small", 2_542_856, None, 67.4, "paper"),
    Published("imagenet_dy_mobilenetv3_small", "imagenet", "DY-MobileNetV3-Small", None, None, 70.3, "paper"),
    # ImageNet: ODConv's README (its own re-implementation's figures; r = 1/16; `config`: its --arch and K)
    Published(
        "odconv_resnet18",
        "imagenet_odconv",
        "ResNet-18",
        11_689_512,
        "11.69M",
        70.25,
        "odconv",
        config="--arch resnet18",
    ),
    Published(
        "odconv_resnet18_1x",
        "imagenet_odconv",
        "ResNet-18 + ODConv (1x)",
        11_943_944,
        "11.94M",
        73.05,
        "odconv",
        config="--arch od_resnet18 --kernel_num 1",
    ),
    Published(
        "odconv_resnet18_4x",
        "imagenet_odconv",
        "ResNet-18 + ODConv (4x)",
        44_901_640,
        "44.90M",
        74.19,
        "odconv",
        config="--arch od_resnet18 --kernel_num 4",
    ),
    Published(
        "odconv_resnet50",
        "imagenet_odconv",
        "ResNet-50",
        25_557_032,
        "25.56M",
        76.23,
        "odconv",
        config="--arch resnet50",
    ),
    Published(
        "odconv_resnet50_1x",
        "imagenet_odconv",
        "ResNet-50 + ODConv (1x)",
        28_635_112,
        "28.64M",
        77.87,
        "odconv",
        config="--arch od_resnet50 --kernel_num 1",
    ),
    Published(
        "odconv_resnet50_4x",
        "imagenet_odconv",
        "ResNet-50 + ODConv (4x)",
        90_670_888,
        "90.67M",
        78.50,
        "odconv",
        config="--arch od_resnet50 --kernel_num 4",
    ),
    Published(
        "odconv_resnet101",
        "imagenet_odconv",
        "ResNet-101",
        44_549_160,
        "44.55M",
        77.44,
        "odconv",
        config="--arch resnet101",
    ),
    Published(
        "odconv_resnet101_1x",
        "imagenet_odconv",
        "ResNet-101 + ODConv (1x)",
        50_818_769,
        "50.82M",
        78.84,
        "odconv",
        config="--arch od_resnet101 --kernel_num 1",
    ),
    Published(
        "odconv_resnet101_2x",
        "imagenet_odconv",
        "ResNet-101 + ODConv (2x)",
        90_441_623,
        "90.44M",
        79.15,
        "odconv",
        config="--arch od_resnet101 --kernel_num 2",
    ),
    Published(
        "odconv_mobilenetv2",
        "imagenet_odconv",
        "MobileNetV2 x1.0",
        3_504_872,
        "3.50M",
        71.65,
        "odconv",
        config="--arch mobilenetv2_100",
        note=_OD_BASELINE,
    ),
    Published(
        "odconv_mobilenetv2_1x",
        "imagenet_odconv",
        "MobileNetV2 x1.0 + ODConv (1x)",
        4_940_185,
        "4.94M",
        74.74,
        "odconv",
        config="--arch od_mobilenetv2_100 --kernel_num 1",
    ),
    Published(
        "odconv_mobilenetv2_4x",
        "imagenet_odconv",
        "MobileNetV2 x1.0 + ODConv (4x)",
        11_512_149,
        "11.51M",
        75.29,
        "odconv",
        config="--arch od_mobilenetv2_100 --kernel_num 4",
    ),
    Published(
        "odconv_mobilenetv2_x075",
        "imagenet_odconv",
        "MobileNetV2 x0.75",
        2_636_424,
        "2.64M",
        69.18,
        "odconv",
        config="--arch mobilenetv2_075",
        note=_OD_BASELINE,
    ),
    Published(
        "odconv_mobilenetv2_x075_1x",
        "imagenet_odconv",
        "MobileNetV2 x0.75 + ODConv (1x)",
        3_507_113,
        "3.51M",
        72.71,
        "odconv",
        config="--arch od_mobilenetv2_075 --kernel_num 1",
    ),
    Published(
        "odconv_mobilenetv2_x075_4x",
        "imagenet_odconv",
        "MobileNetV2 x0.75 + ODConv (4x)",
        7_496_013,
        "7.50M",
        74.01,
        "odconv",
        config="--arch od_mobilenetv2_075 --kernel_num 4",
    ),
    Published(
        "odconv_mobilenetv2_x05",
        "imagenet_odconv",
        "MobileNetV2 x0.5",
        1_968_680,
        "1.97M",
        64.30,
        "odconv",
        config="--arch mobilenetv2_050",
        note=_OD_BASELINE,
    ),
    Published(
        "odconv_mobilenetv2_x05_1x",
        "imagenet_odconv",
        "MobileNetV2 x0.5 + ODConv (1x)",
        2_425_537,
        "2.43M",
        68.06,
        "odconv",
        config="--arch od_mobilenetv2_050 --kernel_num 1",
    ),
    Published(
        "odconv_mobilenetv2_x05_4x",
        "imagenet_odconv",
        "MobileNetV2 x0.5 + ODConv (4x)",
        4_435_501,
        "4.44M",
        70.23,
        "odconv",
        config="--arch od_mobilenetv2_050 --kernel_num 4",
    ),
)

_BY_EXPERIMENT = {row.experiment: row for row in ROWS}
assert len(_BY_EXPERIMENT) == len(ROWS), "one row per experiment"


def rows(table: str | None = None) -> list[Published]:
    """The rows of ``table`` (all rows if None), in publication order."""
    return [r for r in ROWS if table is None or r.table == table]


def by_experiment(name: str) -> Published | None:
    """The published row an experiment reproduces, or None (an experiment with no published figure)."""
    return _BY_EXPERIMENT.get(name)


def _value(r: Published) -> str:
    if r.value is None:
        return "-"
    if r.value_first is not None:
        return f"{r.value:.2f} (first README: {r.value_first:.2f})"
    return f"{r.value:g}" if r.source == "paper" else f"{r.value:.2f}"


def _params(r: Published) -> str:
    if r.params is None:
        return "-"
    exact = f"{r.params:,}"
    return f"{exact} ({r.params_published})" if r.params_published else exact


def _source(r: Published) -> str:
    text = SOURCES[r.source]
    return f"{text}, `{r.config}`" if r.config else text


def readme_table() -> str:
    """The README's results table (markdown), one line per published row."""
    lines = ["| experiment | published | params | source | dyconv |", "| --- | ---: | ---: | --- | ---: |"]
    notes: list[str] = []
    for table, (title, _) in TABLES.items():
        lines.append(f"| **{title}** | | | | |")
        for r in rows(table):
            extra = f" ({r.trained_on})" if r.trained_on else ""
            lines.append(f"| `{r.experiment}`{extra} | {_value(r)}{_mark(r, notes)} | {_params(r)} | {_source(r)} | |")
    return "\n".join(lines + _footnotes(notes))


def _mark(r: Published, notes: list[str]) -> str:
    """`` (n)`` for a row with a note (numbered in order of first use, collected in ``notes``)."""
    if not r.note:
        return ""
    if r.note not in notes:
        notes.append(r.note)
    return f" ({notes.index(r.note) + 1})"


def _footnotes(notes: list[str]) -> list[str]:
    out: list[str] = []
    for i, note in enumerate(notes, 1):
        out += ["", f"({i}) {note[0].upper()}{note[1:]}."]
    return out


def docs_table(table: str) -> str:
    """``docs/experiments.md``'s table for ``table``: network, command, published figure, params, source."""
    lines = [
        "| Network | Command | Published | Params (exact, source's) | Source | dyconv |",
        "| --- | --- | ---: | ---: | --- | ---: |",
    ]
    notes: list[str] = []
    for r in rows(table):
        network = r.network + (f" ({r.trained_on})" if r.trained_on else "")
        cmd = f"`python -m dyconv.train experiment={r.experiment} trainer=gpu`"
        lines.append(f"| {network} | {cmd} | {_value(r)}{_mark(r, notes)} | {_params(r)} | {_source(r)} | |")
    return "\n".join(lines + _footnotes(notes))


#: generated regions: ``<!-- published:<key> -->`` ... ``<!-- /published:<key> -->``
def _generated(key: str) -> str:
    return readme_table() if key == "readme" else docs_table(key)


def render(text: str) -> str:
    """``text`` with every generated region (between ``<!-- published:KEY -->`` and
    ``<!-- /published:KEY -->``, KEY ``readme`` or a :data:`TABLES` key) rewritten from :data:`ROWS`."""
    import re

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        return f"<!-- published:{key} -->\n{_generated(key)}\n<!-- /published:{key} -->"

    return re.sub(r"<!-- published:(\w+) -->\n.*?<!-- /published:\1 -->", sub, text, flags=re.S)
