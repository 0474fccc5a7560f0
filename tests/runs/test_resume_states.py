"""Trust model, resume: a crafted checkpoint whose config matches but whose optimizer, scheduler,
callback or loop states are malformed is refused in one line before Lightning restores them
(before: ``AttributeError 'int' ... param_groups``, ``ValueError unknown schedule kind``,
``KeyError best_model_score`` tracebacks)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from dyconv.errors import ConfigError
from dyconv.runs.resume import check_resume
from trained import real_run


@pytest.fixture(scope="module")
def real_ckpt(tmp_path_factory) -> dict:
    return torch.load(real_run(tmp_path_factory.getbasetemp()) / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=True)


def _model_checkpoint_key(ckpt: dict) -> str:
    return next(k for k in ckpt["callbacks"] if k.startswith("ModelCheckpoint"))


def _set(path: tuple, value):
    def edit(ckpt: dict) -> None:
        node = ckpt
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value
    return edit


def _pop_best_score(ckpt: dict) -> None:
    del ckpt["callbacks"][_model_checkpoint_key(ckpt)]["best_model_score"]


def _wrong_momentum_shape(ckpt: dict) -> None:
    ckpt["optimizer_states"][0]["state"][0]["momentum_buffer"] = torch.zeros(3)


#: name -> (edit, words the one-line refusal must hold)
ATTACKS = {
    "optimizer_states=[5]": (_set(("optimizer_states",), [5]), "optimizer_states[0] is 5, not an optimizer state"),
    "optimizer_states is an int": (_set(("optimizer_states",), 5), "optimizer_states is 5"),
    "no optimizer state": (_set(("optimizer_states",), []), "optimizer_states is a list, not a list holding"),
    "unknown schedule kind": (_set(("lr_schedulers", 0, "lr_lambdas", 0, "kind"), "evil"),
                              "lr_schedulers[0].lr_lambdas[0].kind is 'evil', not one of"),
    "no best_model_score": (_pop_best_score, "has no 'best_model_score'"),
    "best_model_score a string": (lambda c: c["callbacks"][_model_checkpoint_key(c)].__setitem__("best_model_score",
                                                                                                 "high"),
                                  ".best_model_score is 'high', not a number"),
    "lr a string": (_set(("optimizer_states", 0, "param_groups", 0, "lr"), "0.1"),
                    "param_groups[0].lr is '0.1', not a finite number"),
    "too few parameters": (lambda c: c["optimizer_states"][0]["param_groups"][0]["params"].pop(),
                           "param_groups[0] holds 13 parameters, this run's has 14"),
    "momentum of the wrong shape": (_wrong_momentum_shape, "state[0].momentum_buffer has shape [3]"),
    "an extra parameter group": (lambda c: c["optimizer_states"][0]["param_groups"].append(
        copy.deepcopy(c["optimizer_states"][0]["param_groups"][0])), "param_groups has 2 groups"),
    "base_lrs too long": (lambda c: c["lr_schedulers"][0]["base_lrs"].append(0.1), "base_lrs has 2 entries"),
    "a scheduler's optimizer replaced": (_set(("lr_schedulers", 0, "optimizer"), 5), "holds 'optimizer': 5"),
    "last_epoch a string": (_set(("lr_schedulers", 0, "last_epoch"), "x"), "last_epoch is 'x', not an integer"),
    "two schedulers": (lambda c: c["lr_schedulers"].append({}), "this run has 1 scheduler(s)"),
    "temperature a string": (_set(("callbacks", "TemperatureScheduler", "current"), "hot"),
                             "current is 'hot', not a temperature"),
    "loops an int": (_set(("loops",), 3), "loops is 3"),
    "rng_states an int": (_set(("rng_states",), 5), "rng_states is 5, not the python, numpy and torch"),
    "a short python generator state": (_set(("rng_states", "python", "state"), [1, 2]),
                                       "rng_states.python.state has 2 entries, not 625"),
    "a torch generator state of text": (_set(("rng_states", "torch"), "x"), "rng_states.torch is a str"),
    "a training metric of the wrong shape": (
        _set(("dyconv_train_epoch", "metrics", "train_metrics.train/acc_top5", "state", "tp"), torch.zeros(7)),
        "state.tp is [7], this run's metric holds shape [10]"),
    "a training epoch without metrics": (_set(("dyconv_train_epoch",), {"epoch": 0}), "dyconv_train_epoch is a"),
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_malformed_training_states_are_refused_in_one_line(name, real_ckpt, tmp_path):
    edit, words = ATTACKS[name]
    ckpt = copy.deepcopy(real_ckpt)
    edit(ckpt)
    path = tmp_path / "crafted.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(ConfigError) as info:
        check_resume(path, ckpt["dyconv"]["config"])  # the config matches: only the states are broken
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"refusing to resume {path}: its ") and words in text, text


def test_a_real_checkpoints_states_pass(real_ckpt, tmp_path):
    path = tmp_path / "real.ckpt"
    torch.save(real_ckpt, path)
    assert check_resume(path, real_ckpt["dyconv"]["config"]) == real_ckpt["global_step"]


def test_cli_resume_from_malformed_states_is_one_line(cli, real_ckpt, tmp_path):
    """The whole launch: the refusal is printed without a traceback and no run folder is left."""
    ckpt = copy.deepcopy(real_ckpt)
    ckpt["optimizer_states"] = [5]
    evil = tmp_path / "handed.ckpt"
    torch.save(ckpt, evil)
    run_dir = tmp_path / "resumed"
    proc = cli("train", "data.splits=[256,64,64]", "trainer.max_epochs=2", "callbacks.progress_bar=null", "logger=[]",
               f"hydra.run.dir={run_dir}", f"ckpt_path={evil}", check=False)
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr and "AttributeError" not in proc.stderr
    assert f"error: refusing to resume {evil}: its optimizer_states[0] is 5" in proc.stderr, proc.stderr[-2000:]
    assert not Path(run_dir, "checkpoints").exists()


def test_states_are_checked_by_structure_when_the_optimizer_cannot_be_built_on_meta(real_ckpt, tmp_path, monkeypatch):
    """An optimizer option the meta device lacks (say fused=true) must not block a good resume;
    the structure is still checked."""
    from dyconv.runs import resume_states

    def cannot(run_config):
        raise RuntimeError("fused=True requires all the params to be CUDA tensors")

    monkeypatch.setattr(resume_states, "expected_states", cannot)
    path = tmp_path / "x.ckpt"
    torch.save(real_ckpt, path)
    assert check_resume(path, real_ckpt["dyconv"]["config"]) == real_ckpt["global_step"]
    for name in ("optimizer_states=[5]", "unknown schedule kind", "a scheduler's optimizer replaced",
                 "no best_model_score"):
        ckpt = copy.deepcopy(real_ckpt)
        ATTACKS[name][0](ckpt)
        torch.save(ckpt, path)
        with pytest.raises(ConfigError, match="refusing to resume"):
            check_resume(path, ckpt["dyconv"]["config"])
