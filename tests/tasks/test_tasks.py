"""Tasks: checkpoint keys, hyperparameters, parameter groups, LR schedules, metrics, kind/monitor."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from torch import nn

from dyconv.models import create_model
from dyconv.tasks import ClassificationTask, SegmentationTask
from dyconv.tasks.schedulers import cosine, multistep, poly, step
from tinynets import tiny_net as _tiny_net


def test_compile_does_not_change_checkpoint_keys():
    torch.manual_seed(0)
    plain = ClassificationTask(_tiny_net(), num_classes=10)
    compiled = ClassificationTask(_tiny_net(), num_classes=10, compile=True)
    assert plain.state_dict().keys() == compiled.state_dict().keys()
    assert not any("_orig_mod" in k for k in compiled.state_dict())


def test_hyperparameters_hold_no_modules_or_partials():
    task = ClassificationTask(
        _tiny_net(), num_classes=10, optimizer=functools.partial(torch.optim.SGD, lr=0.1), run_config={"a": 1}
    )
    for value in task.hparams.values():
        assert not isinstance(value, (nn.Module, functools.partial))
    # The run config is stored once per checkpoint, under "dyconv", with the task's kind.
    assert "run_config" not in task.hparams
    checkpoint: dict = {}
    task.on_save_checkpoint(checkpoint)
    assert checkpoint["dyconv"] == {"version": 1, "kind": "classification", "config": {"a": 1}}


class _Grouped(nn.Module):
    """A model with named parameter groups (as DeepLabV3+ has)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4))
        self.head = nn.Linear(4, 2)

    def forward(self, x):
        return self.head(self.backbone(x).mean((2, 3)))

    def param_groups(self):
        return {"backbone": list(self.backbone.parameters()), "head": list(self.head.parameters())}


def test_parameter_groups_lr_mult_and_no_weight_decay():
    task = ClassificationTask(
        _Grouped(),
        num_classes=2,
        optimizer=functools.partial(torch.optim.SGD, lr=0.01, weight_decay=1e-4),
        lr_mult={"backbone": 1.0, "head": 10.0},
        no_weight_decay_norm_bias=True,
    )
    opt = task.configure_optimizers()
    groups = {g["name"]: g for g in opt.param_groups}
    assert groups["backbone"]["lr"] == pytest.approx(0.01) and groups["head"]["lr"] == pytest.approx(0.1)
    assert groups["head_no_decay"]["lr"] == pytest.approx(0.1)
    # conv weight decays; conv bias, BN weight and BN bias do not; the linear bias does not.
    assert len(groups["backbone"]["params"]) == 1 and groups["backbone"]["weight_decay"] == 1e-4
    assert len(groups["backbone_no_decay"]["params"]) == 3 and groups["backbone_no_decay"]["weight_decay"] == 0.0
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(task.model.parameters()))
    # DynamicConv2d's (K, C) bias counts as a bias too.
    dyn = ClassificationTask(
        _tiny_net(), num_classes=10, optimizer=functools.partial(torch.optim.SGD, lr=0.1),
        no_weight_decay_norm_bias=True,
    )
    no_decay = {id(p) for g in dyn.configure_optimizers().param_groups if g["name"].endswith("no_decay")
                for p in g["params"]}
    assert id(dyn.model[3].bias) in no_decay and id(dyn.model[3].weight) not in no_decay
    with pytest.raises(ValueError, match="model's groups"):
        ClassificationTask(_Grouped(), num_classes=2, optimizer=functools.partial(torch.optim.SGD, lr=0.1),
                           lr_mult={"decoder": 2.0}).configure_optimizers()


def test_schedules_match_hand_computed_values():
    def lrs(factory, n):
        opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
        sched = factory(opt)
        out = []
        for _ in range(n):
            out.append(opt.param_groups[0]["lr"])
            opt.step()
            sched.step()
        return out

    assert lrs(lambda o: step(o, total_steps=100, step_size=30), 91)[::30] == pytest.approx([1, 0.1, 0.01, 0.001])
    assert lrs(lambda o: multistep(o, 100, [2, 4]), 5) == pytest.approx([1, 1, 0.1, 0.1, 0.01])
    c = lrs(lambda o: cosine(o, total_steps=10), 11)
    assert c[0] == 1 and c[5] == pytest.approx(0.5) and c[10] == pytest.approx(0.0, abs=1e-12)
    w = lrs(lambda o: cosine(o, total_steps=10, warmup_steps=2, warmup_start_factor=0.0), 3)
    assert w == pytest.approx([0.0, 0.5, 1.0])
    p = lrs(lambda o: poly(o, total_steps=4, power=2.0), 4)
    assert p == pytest.approx([1.0, 0.5625, 0.25, 0.0625])


def test_scheduler_total_steps_bound_by_the_task():
    class FakeTrainer:
        estimated_stepping_batches = 123
        max_epochs = 7

    for interval, expected in (("step", 123), ("epoch", 7)):
        task = ClassificationTask(
            _tiny_net(), num_classes=10, optimizer=functools.partial(torch.optim.SGD, lr=0.1),
            scheduler={"scheduler": functools.partial(cosine), "interval": interval},
        )
        task._trainer = FakeTrainer()  # what Lightning attaches
        conf = task.configure_optimizers()
        assert conf["lr_scheduler"]["interval"] == interval
        assert conf["lr_scheduler"]["scheduler"].lr_lambdas[0].total == expected


def test_segmentation_miou_is_dataset_level():
    task = SegmentationTask(nn.Identity(), num_classes=3, ignore_index=255)
    m = task.val_metrics
    pred = torch.tensor([[[0, 1], [2, 2]]])
    target = torch.tensor([[[0, 1], [2, 255]]])
    m.update(pred, target)
    m.update(torch.tensor([[[1, 1], [1, 1]]]), torch.tensor([[[1, 1], [0, 0]]]))
    out = m.compute()
    # Confusion over both batches (ignoring 255): class 0: tp 1, fp 0, fn 2 -> 1/3;
    # class 1: tp 3, fp 2, fn 0 -> 3/5; class 2: tp 1, fp 0, fn 0 -> 1.
    assert float(out["val/miou"]) == pytest.approx((1 / 3 + 3 / 5 + 1) / 3)
    assert float(out["val/pixel_acc"]) == pytest.approx(5 / 7)


def test_model_checkpoint_monitor_and_paths_resolve_in_default_config(tmp_path):
    from hydra import compose, initialize_config_dir

    import dyconv.train  # registers resolvers

    with initialize_config_dir(config_dir=str(Path(dyconv.train.CONF_DIR)), version_base="1.3"):
        cfg = compose("train", overrides=["data=voc"])
    assert cfg.callbacks.model_checkpoint.monitor == "val/miou" and cfg.task._target_.endswith("SegmentationTask")
    with initialize_config_dir(config_dir=str(Path(dyconv.train.CONF_DIR)), version_base="1.3"):
        cfg = compose("train")
    assert cfg.callbacks.model_checkpoint.monitor == "val/acc" and cfg.model.name == "dy_simple_cnn"


@pytest.mark.parametrize("name", ["classification", "segmentation"])
def test_task_kind_and_monitor_are_declared_once_by_the_class(name):
    from hydra.utils import get_class
    from omegaconf import OmegaConf

    import dyconv.train

    conf = OmegaConf.load(Path(dyconv.train.CONF_DIR) / "task" / f"{name}.yaml")
    cls = get_class(conf._target_)
    assert cls.kind == name
    # The config's knob starts from the class's declaration (one definition, two readers).
    assert (conf.monitor, conf.monitor_mode) == (cls.monitor, cls.monitor_mode)
    task = cls(nn.Identity(), num_classes=3)
    assert (task.kind, task.monitor) == (name, {"classification": "val/acc", "segmentation": "val/miou"}[name])
    assert cls(nn.Identity(), num_classes=3, monitor="val/loss", monitor_mode="min").monitor_mode == "min"


@pytest.mark.parametrize("routing", ["softmax", "sigmoid", "omni"])
def test_attention_weight_decay_off_moves_only_the_attention_to_no_decay(routing):
    def groups(**task_kwargs):
        torch.manual_seed(0)
        task = ClassificationTask(
            create_model("dy_cnn1d", routing=routing), num_classes=10,
            optimizer=functools.partial(torch.optim.Adam, lr=0.01, weight_decay=5e-4), **task_kwargs,
        )
        names = {id(p): n for n, p in task.model.named_parameters()}
        opt = task.configure_optimizers()
        return {g["name"]: (g["weight_decay"], sorted(names[id(p)] for p in g["params"])) for g in opt.param_groups}

    every = sorted(n for n, _ in create_model("dy_cnn1d", routing=routing).named_parameters())
    # attention parameters by name, independently of the task's rule: everything under attn_* of conv2/conv3
    attention = [n for n in every if n.split(".")[1].startswith("attn_")]
    assert attention and all(n.startswith(("conv2.", "conv3.")) for n in attention)
    assert groups() == {"all": (5e-4, every)}  # the default: as before, one group, all decayed
    assert groups(attention_weight_decay=False) == {
        "all": (5e-4, sorted(set(every) - set(attention))),
        "all_no_decay": (0.0, attention),
    }
    # with the norm/bias split too: attention joins the biases in the no-decay group
    both = groups(attention_weight_decay=False, no_weight_decay_norm_bias=True)
    biases = [n for n in every if n.endswith("bias")]
    assert both["all_no_decay"] == (0.0, sorted(set(attention) | set(biases)))
    assert both["all"] == (5e-4, sorted(set(every) - set(attention) - set(biases)))
