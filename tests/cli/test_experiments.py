"""Every ``conf/experiment/*.yaml``: its recipe numbers, its model at the real size (published
parameter counts), and one real training step (``dyconv.train.train``, ``fast_dev_run``) on fake
data with the batch shrunk to 2 and images to 32 px."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

import dyconv.train  # registers the OmegaConf resolvers the configs use
from dyconv.config import plain
from dyconv.layers import dynamic_layers
from dyconv.runs.safe_config import check_run_config

CONF = Path(dyconv.train.CONF_DIR)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "experiments.md"
#: Miniature studies on data that ships offline (docs/results.md), not published rows: checked below.
MINIATURES = ("fmnist_temperature", "fmnist_width_sweep")
#: Studies swept over study arms (``+arm=``, conf/arm/): checked below.
STUDIES = ("fmnist_routing", "mnist1d_ablation", "mnist1d_routing")
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml") if p.stem not in MINIATURES + STUDIES)

# ---------------------------------------------------------------------------------------------- recipes
# The numbers each experiment must keep (experiments.md / the paper); a silent change fails here.
TINY_RESNET = dict(
    data="tinyimagenet",
    epochs=100,
    batch=64,
    lr=0.1,
    wd=1e-4,
    momentum=0.9,
    sched=("step", 30, 0.1),
    stem="small",
    image_size=64,
)
TINY_MOBILENET = dict(
    data="tinyimagenet", epochs=300, batch=600, lr=0.05, wd=4e-5, momentum=0.9, sched=("cosine",), image_size=64
)
VOC = dict(
    epochs=100,
    batch=16,
    lr=0.007,
    wd=5e-4,
    momentum=0.9,
    sched=("cosine",),
    lr_mult={"backbone": 1.0, "head": 10.0},
    image_size=513,
)
IMAGENETTE = dict(
    data="imagenette", epochs=200, batch=256, lr=0.1, wd=3e-5, momentum=0.9, sched=("cosine",), image_size=224
)
IMAGENET_RESNET = dict(
    data="imagenet",
    epochs=100,
    batch=256,
    lr=0.1,
    wd=1e-4,
    momentum=0.9,
    sched=("multistep", [30, 60, 90], 0.1),
    stem="imagenet",
    image_size=224,
)
IMAGENET_MOBILE = dict(
    data="imagenet", epochs=300, batch=256, lr=0.05, wd=4e-5, momentum=0.9, sched=("cosine",), image_size=224
)
REF_TEMPERATURE = ("epoch", 9)  # the reference: T(e) = 30 - 29 (min(e, 10) - 1) / 9, e 1-based
PAPER_TEMPERATURE = ("step", 10)  # the paper: 30 -> 1 linearly over the first 10 epochs
PER_LAYER_K = [2, 2, 2, 3, 2, 3, 6, 3, 6, 9, 6]

TINY_MOBILENETV3 = dict(
    data="tinyimagenet", epochs=200, batch=256, lr=0.1, wd=3e-5, momentum=0.9, sched=("cosine",), image_size=64
)

RECIPES: dict[str, dict[str, Any]] = {
    "tinyimagenet_dy_resnet10_x05_smooth": dict(
        TINY_RESNET, model="dy_resnet10", width=0.5, k=4, temperature=REF_TEMPERATURE, label_smoothing=0.1
    ),
    "tinyimagenet_dy_resnet10_x05_per_layer_k": dict(
        TINY_RESNET, model="dy_resnet10", width=0.5, k=PER_LAYER_K, temperature=REF_TEMPERATURE
    ),
    "voc_deeplabv3plus": dict(VOC, data="voc", model="deeplabv3plus", width=1.0),
    "voc_dy_deeplabv3plus": dict(
        VOC, data="voc", model="dy_deeplabv3plus", width=1.0, k=4, temperature=REF_TEMPERATURE
    ),
    "voc_sbd_deeplabv3plus_x05": dict(VOC, data="voc_sbd", model="deeplabv3plus", width=0.5),
    "voc_sbd_dy_deeplabv3plus_x05": dict(
        VOC, data="voc_sbd", model="dy_deeplabv3plus", width=0.5, k=4, temperature=REF_TEMPERATURE
    ),
}


def _pair(name: str, recipe: dict[str, Any], model: str, width: float, temperature: tuple[str, int]) -> None:
    """Register the static experiment ``name`` and its ``dy_`` twin."""
    RECIPES[name] = dict(recipe, model=model, width=width)
    dy = name.replace("_", "_dy_", 1)
    RECIPES[dy] = dict(recipe, model=f"dy_{model}", width=width, k=4, temperature=temperature)


for _w, _sfx in [(1.0, ""), (0.5, "_x05"), (0.25, "_x025")]:
    _pair(f"tinyimagenet_resnet10{_sfx}", TINY_RESNET, "resnet10", _w, REF_TEMPERATURE)
for _w, _sfx in [(1.0, ""), (0.35, "_x035")]:
    _pair(f"tinyimagenet_mobilenetv2{_sfx}", TINY_MOBILENET, "mobilenetv2", _w, REF_TEMPERATURE)
for _w, _sfx in [(1.0, ""), (0.5, "_x05")]:
    _pair(f"tinyimagenet_mobilenetv3_small{_sfx}", TINY_MOBILENETV3, "mobilenetv3_small_ref", _w, REF_TEMPERATURE)
for _w, _sfx in [(1.0, ""), (0.5, "_x05"), (0.25, "_x025")]:
    _pair(f"imagenette_mobilenetv3_small{_sfx}", IMAGENETTE, "mobilenetv3_small_ref", _w, REF_TEMPERATURE)
for _m in ["resnet10", "resnet18"]:
    _pair(f"imagenet_{_m}", IMAGENET_RESNET, _m, 1.0, PAPER_TEMPERATURE)
_pair("imagenet_mobilenetv2", IMAGENET_MOBILE, "mobilenetv2", 1.0, PAPER_TEMPERATURE)
_pair("imagenet_mobilenetv2_x05", IMAGENET_MOBILE, "mobilenetv2", 0.5, PAPER_TEMPERATURE)
_pair("imagenet_mobilenetv3_small", IMAGENET_MOBILE, "mobilenetv3_small", 1.0, PAPER_TEMPERATURE)

# ODConv's README (OSVAI/ODConv): ResNets the paper's recipe with dropout 0.2 (its example command);
# MobileNetV2 150 epochs. Static baselines: ODConv's plain ResNet (no dropout, classifier init
# normal(0, 0.01)); MobileNetV2 the model's own dropout (the README states none).
ODCONV_RESNET = dict(IMAGENET_RESNET)
ODCONV_MOBILE = dict(IMAGENET_MOBILE, epochs=150)
for _m, _ks in [("resnet18", (1, 4)), ("resnet50", (1, 4)), ("resnet101", (1, 2))]:
    RECIPES[f"odconv_{_m}"] = dict(ODCONV_RESNET, model=_m, width=1.0, dropout=None, fc_init_std=0.01)
    for _k in _ks:
        RECIPES[f"odconv_{_m}_{_k}x"] = dict(
            ODCONV_RESNET, model=f"od_{_m}", width=1.0, k=_k, temperature=PAPER_TEMPERATURE, dropout=0.2
        )
for _w, _sfx in [(1.0, ""), (0.75, "_x075"), (0.5, "_x05")]:
    RECIPES[f"odconv_mobilenetv2{_sfx}"] = dict(ODCONV_MOBILE, model="mobilenetv2", width=_w, dropout=None)
    for _k in (1, 4):
        RECIPES[f"odconv_mobilenetv2{_sfx}_{_k}x"] = dict(
            ODCONV_MOBILE, model="od_mobilenetv2", width=_w, k=_k, temperature=PAPER_TEMPERATURE, dropout=0.2
        )

# The reference README's printed parameter counts, typed here from the README (independently of
# dyconv.published's exact integers): the experiment's model must print the same.
README_PARAMS = {
    "tinyimagenet_resnet10": "5.00M", "tinyimagenet_dy_resnet10": "19.80M",
    "tinyimagenet_resnet10_x05": "1.27M", "tinyimagenet_dy_resnet10_x05": "4.97M",
    "tinyimagenet_dy_resnet10_x05_smooth": "4.97M",
    "tinyimagenet_resnet10_x025": "0.33M", "tinyimagenet_dy_resnet10_x025": "1.25M",
    "tinyimagenet_mobilenetv2_x035": "0.65M", "tinyimagenet_dy_mobilenetv2_x035": "2.09M",
    "tinyimagenet_mobilenetv3_small_x05": "0.87M", "tinyimagenet_dy_mobilenetv3_small_x05": "2.52M",
    "tinyimagenet_mobilenetv3_small": "1.91M", "tinyimagenet_dy_mobilenetv3_small": "6.04M",
    "imagenette_mobilenetv3_small_x025": "0.27M", "imagenette_dy_mobilenetv3_small_x025": "0.99M",
    "imagenette_mobilenetv3_small_x05": "0.63M", "imagenette_dy_mobilenetv3_small_x05": "2.28M",
    "imagenette_mobilenetv3_small": "1.67M", "imagenette_dy_mobilenetv3_small": "5.80M",
    "voc_deeplabv3plus": "5.81M", "voc_dy_deeplabv3plus": "18.4M",
    "voc_sbd_deeplabv3plus_x05": "3.40M", "voc_sbd_dy_deeplabv3plus_x05": "8.44M",
    # ODConv's README (rounded to 0.01M)
    "odconv_resnet18": "11.69M", "odconv_resnet18_1x": "11.94M", "odconv_resnet18_4x": "44.90M",
    "odconv_resnet50": "25.56M", "odconv_resnet50_1x": "28.64M", "odconv_resnet50_4x": "90.67M",
    "odconv_resnet101": "44.55M", "odconv_resnet101_1x": "50.82M", "odconv_resnet101_2x": "90.44M",
    "odconv_mobilenetv2": "3.50M", "odconv_mobilenetv2_1x": "4.94M", "odconv_mobilenetv2_4x": "11.51M",
    "odconv_mobilenetv2_x075": "2.64M", "odconv_mobilenetv2_x075_1x": "3.51M", "odconv_mobilenetv2_x075_4x": "7.50M",
    "odconv_mobilenetv2_x05": "1.97M", "odconv_mobilenetv2_x05_1x": "2.43M", "odconv_mobilenetv2_x05_4x": "4.44M",
}  # fmt: skip
# Exact counts of the reference code where docs/experiments.md states them.
EXACT_PARAMS = {
    "voc_deeplabv3plus": 5_816_053, "voc_dy_deeplabv3plus": 18_414_806,
    "voc_sbd_deeplabv3plus_x05": 3_409_413, "voc_sbd_dy_deeplabv3plus_x05": 8_444_120,
    "imagenet_resnet18": 11_689_512, "imagenet_mobilenetv2": 3_504_872, "imagenet_mobilenetv3_small": 2_542_856,
}  # fmt: skip


def _truncated(n: int, printed: str) -> bool:
    """Whether ``n`` prints as ``printed`` ("19.80M", "18.4M"): truncated (the reference's habit) or rounded."""
    digits = len(printed.rstrip("M").split(".")[1])
    scale = 10**digits
    return printed.rstrip("M") in {f"{math.floor(n / 1e6 * scale) / scale:.{digits}f}", f"{n / 1e6:.{digits}f}"}


REAL_NUM_CLASSES = {"tinyimagenet": 200, "voc": 21, "voc_sbd": 21, "imagenette": 10, "imagenet": 1000}


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


@functools.cache
def _experiment(name: str) -> DictConfig:
    """``experiment=<name>`` composed once per test process, read-only (a test that changes a config
    composes its own): several tests read the same experiment."""
    cfg = _compose([f"experiment={name}"])
    OmegaConf.set_readonly(cfg, True)
    return cfg


def _leaves(node: Any, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in _leaves(value, f"{prefix}{key}.")]
    return [prefix.rstrip(".")]


def _has_key(cfg: DictConfig, dotted: str) -> bool:
    """Whether the dotted key exists, without resolving interpolations on the way; below a null
    placeholder (e.g. ``task.lr_mult: null``) any key is accepted."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, DictConfig) or part not in node:
            return False
        node = node._get_node(part)
        if node._is_none():
            return True
    return True


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def data_roots(tmp_path_factory) -> dict[str, tuple[Path, int]]:
    """{data config: (fixture root, number of classes in the fixture)} for every dataset an experiment uses."""
    from fakedata import make_imagenet, make_imagenette, make_tinyimagenet, make_voc, make_voc_sbd

    base = tmp_path_factory.mktemp("experiment_data")
    make_tinyimagenet(base / "tiny", num_classes=3, n_train=2, n_val=2, n_test=1, n_gray=1)
    make_imagenette(base / "imagenette", num_classes=2, n_train=2, n_val=2)
    make_imagenet(base / "imagenet", num_classes=2, n_train=2, n_val=2)
    make_voc(base / "voc", n_train=2, n_val=2)
    make_voc_sbd(base / "voc_sbd")
    return {
        "tinyimagenet": (base / "tiny", 3),
        "imagenette": (base / "imagenette", 2),
        "imagenet": (base / "imagenet", 2),
        "voc": (base / "voc", 21),
        "voc_sbd": (base / "voc_sbd", 21),
    }


@pytest.fixture
def one_thread():
    """Batches of 2 at 32 px: intra-op threads only add synchronisation (2x slower on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- tests
def test_every_experiment_has_a_recipe():
    """A new config needs its numbers here; a renamed or deleted one is noticed."""
    assert sorted(RECIPES) == EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_file_states_only_what_differs_from_its_base(name, tmp_path):
    """The file is a `# @package _global_` experiment: a recipe base from `_base/`, then group
    overrides, a stable run name, and keys that exist (a typo such as `trainer.max_epoch` would be
    added silently) and that change something (a value equal to the base's is a second copy)."""
    path = CONF / "experiment" / f"{name}.yaml"
    text = path.read_text()
    assert text.startswith("# @package _global_\n")
    assert "dyconv.published" in text and f"experiment={name} trainer=gpu" in text
    raw = OmegaConf.to_container(OmegaConf.load(path))  # unresolved
    base, *overrides = raw.pop("defaults")
    assert isinstance(base, str) and base.startswith("_base/"), base
    groups = {}
    for entry in overrides:
        ((key, value),) = entry.items()
        assert key.startswith("override /"), entry
        groups[key.removeprefix("override /")] = value
    assert "model" in groups and set(groups) <= {"data", "model"}
    assert raw.pop("run_name") == f"{name}-seed${{seed}}"
    # the experiment without its own keys: a probe experiment with the same defaults list only
    (tmp_path / "experiment").mkdir()
    probe = {"defaults": [base] + [{f"override /{g}": v} for g, v in groups.items()]}
    (tmp_path / "experiment" / "probe.yaml").write_text("# @package _global_\n" + OmegaConf.to_yaml(probe))
    without = _compose(["experiment=probe", f"hydra.searchpath=[file://{tmp_path}]"])
    for leaf in _leaves(raw) if raw else []:
        assert _has_key(without, leaf), f"{name}: {leaf} is not a key of its groups' configs (typo?)"
        assert OmegaConf.select(without, leaf) != OmegaConf.select(OmegaConf.create(raw), leaf), (
            f"{name}: {leaf} repeats its base's value"
        )
    # leave the device to trainer=gpu / accelerator auto, and precision to the recipe (none states one)
    assert not {"accelerator", "devices", "precision", "strategy"} & set(raw.get("trainer", {}))


def test_experiment_overrides_order():
    """Experiment values win over the base's, command-line values over both."""
    cfg = _compose(["experiment=tinyimagenet_dy_resnet10_x05_smooth"])
    assert cfg.task.label_smoothing == 0.1 and cfg.model.width_mult == 0.5 and cfg.optimizer.lr == 0.1
    cfg = _compose(["experiment=tinyimagenet_dy_resnet10_x05_smooth", "task.label_smoothing=0.2", "optimizer.lr=0.3"])
    assert cfg.task.label_smoothing == 0.2 and cfg.optimizer.lr == 0.3


def test_every_published_row_has_an_experiment_and_a_source():
    from dyconv.published import ROWS, SOURCES, TABLES

    for row in ROWS:
        assert row.experiment in EXPERIMENTS and row.table in TABLES and row.source in SOURCES
        assert (row.params_published is None) == (row.source == "paper"), row.experiment
    published = {row.experiment for row in ROWS if row.params_published is not None}
    assert published == set(README_PARAMS)


def test_generated_tables_are_up_to_date():
    """docs/experiments.md carries the tables dyconv.published generates (run
    `python scripts/published_tables.py` after changing it), the overview of every result included."""
    from dyconv.published import TABLES, render

    text = DOCS.read_text()
    assert render(text) == text, f"{DOCS} is out of date: python scripts/published_tables.py"
    assert all(f"<!-- published:{key} -->" in text for key in TABLES)
    assert "<!-- published:readme -->" in text


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_recipe_numbers(name):
    r = RECIPES[name]
    cfg = _experiment(name)
    # What train stores of it passes the checkpoint allow-list (else its runs could not be evaluated).
    stored = plain(cfg, "model", "data", "task", "optimizer", "scheduler", "seed")
    assert check_run_config(stored, "x") is stored
    choices = cfg.hydra.runtime.choices
    assert (choices.data, choices.model, choices.optimizer) == (r["data"], r["model"], "sgd")
    assert cfg.run_name == f"{name}-seed{cfg.seed}"
    assert cfg.model.name == r["model"] and cfg.model.width_mult == r["width"]
    assert cfg.data.batch_size == r["batch"] and cfg.data.image_size == r["image_size"]
    assert cfg.trainer.max_epochs == r["epochs"] and cfg.trainer.accelerator == "auto"
    assert cfg.optimizer._target_ == "torch.optim.SGD" and not cfg.optimizer.nesterov
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.optimizer.momentum) == (r["lr"], r["wd"], r["momentum"])

    sched, kind = cfg.scheduler, r["sched"]
    assert sched.interval == "epoch" and sched.scheduler._target_ == f"dyconv.tasks.schedulers.{kind[0]}"
    if kind[0] == "step":
        assert (sched.scheduler.step_size, sched.scheduler.gamma) == kind[1:]
    elif kind[0] == "multistep":
        assert (list(sched.scheduler.milestones), sched.scheduler.gamma) == (kind[1], kind[2])
    else:
        assert (sched.scheduler.warmup_steps, sched.scheduler.min_lr_factor) == (0, 0.0)
    assert sched.scheduler.get("total_steps") is None  # bound by the task: max_epochs

    assert cfg.task.label_smoothing == r.get("label_smoothing", 0.0)
    lr_mult = OmegaConf.to_container(cfg.task.lr_mult) if cfg.task.lr_mult is not None else None
    assert lr_mult == r.get("lr_mult")
    if "stem" in r:
        assert cfg.model.stem == r["stem"]

    if r.get("dropout") is not None:
        assert cfg.model.dropout == r["dropout"]
    if "fc_init_std" in r:
        assert cfg.model.fc_init_std == r["fc_init_std"]
    temp = cfg.callbacks.temperature
    if r["model"].startswith(("dy_", "od_")):
        k = cfg.model.num_kernels
        assert (OmegaConf.to_container(k) if not isinstance(k, int) else k) == r["k"]
        if r["model"].startswith("od_"):  # ODConv: omni attention, r = 1/16, hidden width at least 16
            assert (cfg.model.routing, cfg.model.reduction, cfg.model.min_hidden) == ("omni", 16, 16)
        else:
            assert cfg.model.reduction == 4
        interval, epochs = r["temperature"]
        assert (temp.start, temp.end, temp.mode, temp.interval, temp.epochs) == (30.0, 1.0, "linear", interval, epochs)
        if interval == "epoch":  # the reference's per-epoch sequence, epoch by epoch
            from dyconv.callbacks import temperature_at

            ref = [30 + (min(e, 10) - 1) * (1 - 30) / 9 for e in range(1, 16)]
            ours = [temperature_at(e / temp.epochs, temp.start, temp.end, temp.mode) for e in range(15)]
            assert ours == pytest.approx(ref)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_model_at_real_size(name):
    """The experiment's model as it will be trained: published parameter counts, per-layer K, lr groups."""
    from hydra.utils import instantiate

    from dyconv.published import by_experiment

    r = RECIPES[name]
    cfg = _experiment(name)
    assert cfg.data.num_classes == REAL_NUM_CLASSES[r["data"]]
    model = instantiate(cfg.model)
    n = sum(p.numel() for p in model.parameters())
    row = by_experiment(name)
    if row is not None and row.params is not None:  # the published data's exact count
        assert n == row.params, (name, n)
    if name in README_PARAMS:  # independently: the reference README's printed figure
        assert _truncated(n, README_PARAMS[name]), (name, n, README_PARAMS[name])
    if name in EXACT_PARAMS:
        assert n == EXACT_PARAMS[name]
    layers = list(dynamic_layers(model))
    assert bool(layers) == r["model"].startswith(("dy_", "od_"))
    if r.get("k") == PER_LAYER_K:
        assert len(layers) == 11  # ResNet-10 x0.5, small stem: 2 + 3 + 3 + 3 dynamic convs, stem static
        assert [layer.num_kernels for _, layer in layers] == PER_LAYER_K
        assert [layer_name for layer_name, _ in layers][:5] == [
            "layer1.0.conv1",
            "layer1.0.conv2",
            "layer2.0.conv1",
            "layer2.0.conv2",
            "layer2.0.downsample.0",
        ]
    elif layers:
        assert {layer.num_kernels for _, layer in layers} == {r["k"]}
    if r["model"] == "dy_mobilenetv3_small_ref":
        assert len(layers) == 35
    if r["model"] == "dy_deeplabv3plus":
        assert len(layers) == 10 and "decoder.classifier" in dict(layers)
    if r["model"].endswith("deeplabv3plus"):
        assert model.align_corners  # the reference's upsampling
    # docs/experiments.md lists every published row with its command and exact count
    if row is not None:
        line = next((x for x in DOCS.read_text().splitlines() if f"experiment={name} trainer=gpu`" in x), None)
        assert line is not None, f"docs/experiments.md has no row for {name}"
        if row.params is not None:
            assert f"{n:,}" in line, line
    if "lr_mult" in r:
        task = instantiate(cfg.task, _partial_=True, _convert_="all")(model=model, optimizer=instantiate(cfg.optimizer))
        lrs = {g["name"]: g["lr"] for g in task.parameter_groups()}
        assert lrs == pytest.approx({"backbone": 0.007, "head": 0.07})


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_one_training_step(name, data_roots, tmp_path, one_thread):
    """Compose the experiment, shrink it (batch 2, 32 px, fixture data) and run dyconv.train.train:
    datamodule, model, optimizer, scheduler, callbacks and task are all built from the config and
    one train / val / test batch runs."""
    from hydra.core.hydra_config import HydraConfig

    root, num_classes = data_roots[RECIPES[name]["data"]]
    cfg = _compose(
        [
            f"experiment={name}",
            f"data.root={root}",
            f"data.num_classes={num_classes}",
            "data.batch_size=2",
            "data.image_size=32",
            "data.num_workers=0",
            "data.pin_memory=false",
            "data.persistent_workers=false",
            "++trainer.fast_dev_run=1",
            "trainer.accelerator=cpu",
            "trainer.enable_model_summary=false",
            "callbacks.progress_bar=null",
            "~logger",
            f"paths.log_dir={tmp_path / 'logs'}",
            f"paths.data_dir={tmp_path / 'datasets'}",
        ]
    )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")  # what Hydra's run_job sets: ${hydra:...} resolve
    HydraConfig.instance().set_config(cfg)
    try:
        metrics = dyconv.train.train(cfg)
    finally:
        HydraConfig.instance().cfg = None
    assert math.isfinite(metrics["train/loss_step"])
    if cfg.data.get("ignore_index") is not None:
        assert 0.0 <= metrics["test/miou"] <= 1.0 and 0.0 <= metrics["test/pixel_acc"] <= 1.0
    else:  # fast_dev_run tests one batch of 2 images: the accuracy is a count of 2
        assert metrics["test/acc"] * 2 == pytest.approx(round(metrics["test/acc"] * 2), abs=1e-6)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == pytest.approx(metrics, rel=1e-6, nan_ok=True)


@pytest.mark.parametrize("name", MINIATURES)
def test_miniature_sweeps_compose_with_their_grid(name):
    """The Fashion-MNIST miniature: ResNet-10 static vs dynamic over widths and seeds, and the
    temperature ablation; a single cell composes to the model its sweep names."""
    cfg = _experiment(name)
    params = {k: str(v) for k, v in cfg.hydra.sweeper.params.items()}
    assert cfg.hydra.runtime.choices.data == "fashion_mnist" and params["seed"] == "0,1,2"
    if name == "fmnist_width_sweep":
        assert params["model"] == "resnet10,dy_resnet10" and len(params["model.width_mult"].split(",")) >= 3
    else:
        assert params["model"] == "dy_resnet10" and params["callbacks.temperature.start"] == "30.0,1.0"
    cell = _compose([f"experiment={name}", "model=resnet10", "model.width_mult=0.25"])
    assert (cell.model.name, cell.model.width_mult, cell.model.stem) == ("resnet10", 0.25, "small")
    assert cell.trainer.max_epochs == 3 and cell.callbacks.temperature.end == 1.0


#: Per study: its data, its arms in sweep order (the first is the reference the report compares
#: with) -> (model, routing or None for static), and its seeds.
STUDY_GRIDS = {
    "fmnist_routing": ("fashion_mnist", {"resnet10_static": ("resnet10", None),
                                          "resnet10_softmax": ("dy_resnet10", "softmax"),
                                          "resnet10_omni": ("dy_resnet10", "omni")}, "0,1,2"),
    "mnist1d_routing": ("mnist1d", {"cnn1d_static": ("cnn1d", None), "cnn1d_softmax": ("dy_cnn1d", "softmax"),
                                    "cnn1d_sigmoid": ("dy_cnn1d", "sigmoid"), "cnn1d_omni": ("dy_cnn1d", "omni")},
                        "0,1,2,3,4"),
    "mnist1d_ablation": ("mnist1d", {f"cnn1d_ablation_{d}_{t}": ("dy_cnn1d", "softmax")
                                     for t in ("annealed", "t1") for d in ("decay", "nodecay")}, "0,1,2,3,4"),
}


@pytest.mark.parametrize("name", STUDIES)
def test_studies_sweep_their_arms_and_each_cell_composes(name):
    data, arms, seeds = STUDY_GRIDS[name]
    cfg = _experiment(name)
    params = {k: str(v) for k, v in cfg.hydra.sweeper.params.items()}
    assert params == {"+arm": params["+arm"], "seed": seeds} | ({"model.width_mult": "0.0625,0.125"}
                                                               if name == "fmnist_routing" else {})
    assert set(params["+arm"].split(",")) == set(arms)
    assert cfg.hydra.runtime.choices.data == data
    for arm, (model, routing) in arms.items():
        cell = _compose([f"experiment={name}", f"+arm={arm}", "seed=3"])
        assert cell.model.name == model and cell.get("seed") == 3
        assert cell.model.get("routing") == routing  # the arm's override /model wins over the experiment's
    if data == "mnist1d":  # the benchmark's recipe (mnist1d's notebooks/train.py): Adam 1e-2, batch 100, ~8k steps
        assert (cell.optimizer._target_, cell.optimizer.lr, cell.data.batch_size) == ("torch.optim.Adam", 0.01, 100)
        assert cell.trainer.max_epochs * (4000 - cell.data.val_size) // cell.data.batch_size == 7920
        assert cell.callbacks.model_checkpoint is None  # the final weights are tested, as the benchmark's
        assert cell.callbacks.temperature.epochs == 0.2 * cell.trainer.max_epochs
        assert cell.scheduler.scheduler is None
    if name == "mnist1d_routing":
        assert cell.optimizer.weight_decay == 0.0
    if name == "mnist1d_ablation":
        assert params["+arm"].split(",")[0] == "cnn1d_ablation_decay_annealed"  # the framework's behaviour first
        assert cell.optimizer.weight_decay == 5e-4
        for arm in arms:
            c = _compose([f"experiment={name}", f"+arm={arm}"])
            assert c.task.attention_weight_decay == ("_decay_" in arm)
            assert (c.callbacks.temperature.start, c.callbacks.temperature.end) == (
                (30.0, 1.0) if arm.endswith("annealed") else (1.0, 1.0))
