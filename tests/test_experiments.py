"""Every ``conf/experiment/*.yaml``: its recipe numbers, its model at the real size (published
parameter counts), and one real training step (``dyconv.train.train``, ``fast_dev_run``) on fake
data with the batch shrunk to 2 and images to 32 px."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import DictConfig, OmegaConf, open_dict

import dyconv.train  # registers the OmegaConf resolvers the configs use
from dyconv.layers import dynamic_layers

CONF = Path(dyconv.train.CONF_DIR)
DOCS = Path(__file__).resolve().parents[1] / "docs" / "experiments.md"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

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

RECIPES: dict[str, dict[str, Any]] = {
    # Tiny ImageNet table: params are the published ones (200 classes, millions, truncated to 2 decimals)
    "tinyimagenet_resnet10": dict(TINY_RESNET, model="resnet10", width=1.0, params="5.00"),
    "tinyimagenet_dy_resnet10": dict(
        TINY_RESNET, model="dy_resnet10", width=1.0, params="19.80", k=4, temperature=REF_TEMPERATURE
    ),
    "tinyimagenet_resnet10_x05": dict(TINY_RESNET, model="resnet10", width=0.5, params="1.27"),
    "tinyimagenet_dy_resnet10_x05": dict(
        TINY_RESNET, model="dy_resnet10", width=0.5, params="4.97", k=4, temperature=REF_TEMPERATURE
    ),
    "tinyimagenet_dy_resnet10_x05_smooth": dict(
        TINY_RESNET,
        model="dy_resnet10",
        width=0.5,
        params="4.97",
        k=4,
        temperature=REF_TEMPERATURE,
        label_smoothing=0.1,
    ),
    "tinyimagenet_resnet10_x025": dict(TINY_RESNET, model="resnet10", width=0.25, params="0.33"),
    "tinyimagenet_dy_resnet10_x025": dict(
        TINY_RESNET, model="dy_resnet10", width=0.25, params="1.25", k=4, temperature=REF_TEMPERATURE
    ),
    "tinyimagenet_dy_resnet10_x05_per_layer_k": dict(
        TINY_RESNET, model="dy_resnet10", width=0.5, k=PER_LAYER_K, temperature=REF_TEMPERATURE
    ),
    "tinyimagenet_mobilenetv2": dict(TINY_MOBILENET, model="mobilenetv2", width=1.0),
    "tinyimagenet_dy_mobilenetv2": dict(
        TINY_MOBILENET, model="dy_mobilenetv2", width=1.0, k=4, temperature=REF_TEMPERATURE
    ),
    # VOC table: exact published counts (21 classes)
    "voc_deeplabv3plus": dict(VOC, data="voc", model="deeplabv3plus", width=1.0, exact_params=5_816_053),
    "voc_dy_deeplabv3plus": dict(
        VOC, data="voc", model="dy_deeplabv3plus", width=1.0, exact_params=18_381_907, k=4, temperature=REF_TEMPERATURE
    ),
    "voc_sbd_deeplabv3plus_x05": dict(VOC, data="voc_sbd", model="deeplabv3plus", width=0.5),
    "voc_sbd_dy_deeplabv3plus_x05": dict(
        VOC, data="voc_sbd", model="dy_deeplabv3plus", width=0.5, k=4, temperature=REF_TEMPERATURE
    ),
    "imagenette_mobilenetv3_small": dict(IMAGENETTE, model="mobilenetv3_small", width=1.0),
    "imagenette_dy_mobilenetv3_small": dict(
        IMAGENETTE, model="dy_mobilenetv3_small", width=1.0, k=4, temperature=REF_TEMPERATURE
    ),
    # The paper's ImageNet recipes
    "imagenet_resnet10": dict(IMAGENET_RESNET, model="resnet10", width=1.0),
    "imagenet_dy_resnet10": dict(IMAGENET_RESNET, model="dy_resnet10", width=1.0, k=4, temperature=PAPER_TEMPERATURE),
    "imagenet_resnet18": dict(IMAGENET_RESNET, model="resnet18", width=1.0, exact_params=11_689_512),
    "imagenet_dy_resnet18": dict(IMAGENET_RESNET, model="dy_resnet18", width=1.0, k=4, temperature=PAPER_TEMPERATURE),
    "imagenet_mobilenetv2": dict(IMAGENET_MOBILE, model="mobilenetv2", width=1.0, exact_params=3_504_872),
    "imagenet_dy_mobilenetv2": dict(
        IMAGENET_MOBILE, model="dy_mobilenetv2", width=1.0, k=4, temperature=PAPER_TEMPERATURE
    ),
    "imagenet_mobilenetv2_x05": dict(IMAGENET_MOBILE, model="mobilenetv2", width=0.5),
    "imagenet_dy_mobilenetv2_x05": dict(
        IMAGENET_MOBILE, model="dy_mobilenetv2", width=0.5, k=4, temperature=PAPER_TEMPERATURE
    ),
    "imagenet_mobilenetv3_small": dict(IMAGENET_MOBILE, model="mobilenetv3_small", width=1.0, exact_params=2_542_856),
    "imagenet_dy_mobilenetv3_small": dict(
        IMAGENET_MOBILE, model="dy_mobilenetv3_small", width=1.0, k=4, temperature=PAPER_TEMPERATURE
    ),
}
REAL_NUM_CLASSES = {"tinyimagenet": 200, "voc": 21, "voc_sbd": 21, "imagenette": 10, "imagenet": 1000}


def _compose(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("train", overrides=overrides, return_hydra_config=True)


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
def test_experiment_file_overrides_existing_keys_only(name):
    """The file is a `# @package _global_` experiment: groups by `override /group`, a stable run name,
    and no key that its groups' configs lack (a typo such as `trainer.max_epoch` would be added silently)."""
    path = CONF / "experiment" / f"{name}.yaml"
    text = path.read_text()
    assert text.startswith("# @package _global_\n")
    assert "Published" in text and f"experiment={name} trainer=gpu" in text
    raw = OmegaConf.to_container(OmegaConf.load(path))  # unresolved
    groups = {}
    for entry in raw.pop("defaults"):
        ((key, value),) = entry.items()
        assert key.startswith("override /"), entry
        groups[key.removeprefix("override /")] = value
    assert set(groups) == {"data", "model", "optimizer", "scheduler"}
    assert raw["run_name"] == f"{name}-seed${{seed}}"
    base = _compose([f"{g}={v}" for g, v in groups.items()])
    for leaf in _leaves(raw):
        assert _has_key(base, leaf), f"{name}: {leaf} is not a key of its groups' configs (typo?)"
    # leave the device to trainer=gpu / accelerator auto, and precision to the recipe (none states one)
    assert not {"accelerator", "devices", "precision", "strategy"} & set(raw.get("trainer", {}))


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_recipe_numbers(name):
    r = RECIPES[name]
    cfg = _compose([f"experiment={name}"])
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

    temp = cfg.callbacks.temperature
    if r["model"].startswith("dy_"):
        k = cfg.model.num_kernels
        assert (OmegaConf.to_container(k) if not isinstance(k, int) else k) == r["k"]
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

    r = RECIPES[name]
    cfg = _compose([f"experiment={name}"])
    assert cfg.data.num_classes == REAL_NUM_CLASSES[r["data"]]
    model = instantiate(cfg.model)
    n = sum(p.numel() for p in model.parameters())
    if "params" in r:  # published in millions, truncated to two decimals
        assert f"{math.floor(n / 1e4) / 100:.2f}" == r["params"], n
    if "exact_params" in r:
        assert n == r["exact_params"]
    layers = list(dynamic_layers(model))
    assert bool(layers) == r["model"].startswith("dy_")
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
    # docs/experiments.md lists it with its command and this parameter count
    row = next((line for line in DOCS.read_text().splitlines() if f"experiment={name} trainer=gpu`" in line), None)
    assert row is not None, f"docs/experiments.md has no row for {name}"
    assert f"{math.floor(n / 1e4) / 100:.2f}M" in row or f"{n:,}" in row, row
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
    metric = "test/miou" if cfg.data.get("ignore_index") is not None else "test/acc"
    assert 0.0 <= metrics[metric] <= 1.0
    assert (tmp_path / "run" / "metrics.json").is_file()
