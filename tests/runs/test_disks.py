"""Read-only and full disks in the tools: refused before any work, named as what they are.

A read-only file system is simulated by denying write access where the tools ask the OS
(``os.access``, what a read-only mount answers even for root), a full disk by a writer raising
``OSError(ENOSPC)``; ``umount``-free, so the tests run anywhere."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from dyconv.cli import run_job
from dyconv.config import CONF_DIR, register_resolvers
from dyconv.errors import ConfigError
from dyconv.runs import disks
from dyconv.runs.hydra_callbacks import PlantedLinkGuard
from trained import make_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("disks") / "run" / "checkpoints" / "last.ckpt",
                           ["data=fashion_mnist", "model=dy_simple_cnn"])


def _compose(name: str, *overrides: str, hydra: bool = False):
    register_resolvers()
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose(name, overrides=list(overrides), return_hydra_config=hydra)


def _read_only(monkeypatch, *folders: Path) -> None:
    """``os.access`` (as the tools call it) says: no writing at or under ``folders``."""
    real = os.access

    def access(path, mode, *args, **kwargs):
        p = Path(path).absolute()
        if mode & os.W_OK and any(p == f or f in p.parents for f in folders):
            return False
        return real(path, mode, *args, **kwargs)

    monkeypatch.setattr(disks.os, "access", access)


def test_inspect_refuses_a_read_only_output_dir_before_computing(ckpt, tmp_path, monkeypatch):
    """Before: inspect computed everything and then failed with OSError EROFS from its writer."""
    import dyconv.inspect as inspect_tool

    ro = tmp_path / "mounted"
    ro.mkdir()
    _read_only(monkeypatch, ro)
    computed = []
    monkeypatch.setattr(inspect_tool, "inspect_checkpoint", lambda *a, **k: computed.append(a))
    cfg = _compose("inspect", f"ckpt_path={ckpt}", f"output_dir={ro / 'attn'}")
    with pytest.raises(ConfigError) as info:
        inspect_tool.run_inspection(cfg)
    text = str(info.value)
    assert "\n" not in text and f"output_dir={ro / 'attn'} cannot be written ({ro}: " in text
    assert "nothing was computed" in text and computed == []
    assert list(ro.iterdir()) == []


def test_export_onto_a_full_disk_names_the_disk_not_training_advice(ckpt, tmp_path, monkeypatch):
    """Before: "no space left on device: <run>/export; ... resume with ... ckpt_path=last"."""
    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch.onnx, "export", full)
    out = tmp_path / "exports" / "model.onnx"
    out.parent.mkdir()
    cfg = _compose("export", f"ckpt_path={ckpt}", f"output={out}", "verify=false")
    with pytest.raises(SystemExit) as info:
        run_job(__import__("dyconv.export", fromlist=["run_export"]).run_export, cfg)
    text = str(info.value.code)
    assert "\n" not in text and text.startswith("error: [Errno 28] no space left on device writing the export")
    assert str(out.parent) in text and "on the disk mounted at " in text and "MiB free" in text
    assert "pass output=<a file on another disk>" in text
    assert "ckpt_path" not in text and "resume" not in text
    assert list(out.parent.iterdir()) == []  # nothing left behind


def test_eval_results_onto_a_full_disk_name_the_disk(monkeypatch, tmp_path):
    from dyconv import eval as eval_tool
    from dyconv.utils import files

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "metrics.json"))

    monkeypatch.setattr(files, "create_new_file", full)
    monkeypatch.setattr(eval_tool, "create_new_file", full)
    with pytest.raises(Exception) as info, disks.naming_full_disk(tmp_path, "the evaluation's metrics.json", "fix"):
        eval_tool.write_result(tmp_path, "{}")
    assert f"writing the evaluation's metrics.json ({tmp_path / 'metrics.json'}, on the disk" in str(info.value)


@pytest.mark.parametrize("where", ["run folder", ".hydra", "log file"])
def test_hydra_writing_into_a_read_only_folder_is_one_line_naming_it(where, ckpt, tmp_path, monkeypatch):
    """Before: Hydra's own OSError traceback from writing .hydra/config.yaml or eval.log."""
    run = tmp_path / "ev"
    (run / ".hydra").mkdir(parents=True)
    (run / "eval.log").write_text("")
    denied = {"run folder": run, ".hydra": run / ".hydra", "log file": run / "eval.log"}[where]
    _read_only(monkeypatch, denied)
    cfg = _compose("eval", f"ckpt_path={ckpt}", f"hydra.run.dir={run}", hydra=True)
    with pytest.raises(SystemExit) as info:
        PlantedLinkGuard().on_run_start(config=cfg)
    text = str(info.value.code)
    assert "\n" not in text and text.startswith(f"error: cannot write the launch folder {run} ({denied}: ")
    assert "pass hydra.run.dir=<a folder you can write>" in text


def test_a_writable_launch_folder_passes(ckpt, tmp_path):
    cfg = _compose("eval", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'new' / 'ev'}", hydra=True)
    PlantedLinkGuard().on_run_start(config=cfg)  # no exit
    sweep = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "sweep")}}, "task_name": "inspect"})
    disks.refuse_unwritable_hydra_folder(sweep, sweep=True)
