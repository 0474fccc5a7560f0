"""Run and sweep folder names: the planted-link guard holds for every run-name form, sweep job folders
have paths that can be typed as command-line values, and a relaunch of an older sweep continues in its
old job folders."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from dyconv.config import CONF_DIR
from dyconv.runs.layout import job_dirname, legacy_job_dirname
from hydra_launch import launch


def _victim(tmp_path: Path) -> Path:
    victim = tmp_path / "home" / "notes.txt"
    victim.parent.mkdir(parents=True, exist_ok=True)
    victim.write_text("precious")
    return victim


def _plant(folder: Path, victim: Path) -> Path:
    """A handed run folder with a link where Hydra writes the launch's overrides."""
    link = folder / ".hydra" / "overrides.yaml"
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim)
    return link


# ----------------------------------------------------------------------- the planted-link guard
@pytest.mark.parametrize("form", ["generated", "explicit"])
def test_a_relaunch_never_writes_through_a_planted_link_whatever_the_run_name(tmp_path, form):
    """The default run name (``${hydra:runtime.choices.model}-...``) resolves before Hydra sets its
    config: the guard used to warn and guard nothing. A link at ``<run>/.hydra/overrides.yaml``
    pointing outside: the relaunch with ckpt_path=last leaves the outside file as it was, with no
    warning, for the generated name and an explicit ``run_name=``."""
    victim = _victim(tmp_path)
    args = [f"paths.log_dir={tmp_path / 'logs'}", "ckpt_path=last"] + (["run_name=mine"] if form == "explicit" else [])
    name = "mine" if form == "explicit" else "dy_simple_cnn-mnist_offline-seed42"
    run = tmp_path / "logs" / "train" / "runs" / name
    link = _plant(run, victim)
    folders, warned = launch("train", args)
    assert folders == [str(run)]
    assert victim.read_text() == "precious"
    assert not link.is_symlink() and "ckpt_path=last" in link.read_text()  # Hydra wrote the run's own file
    assert warned == []


def test_a_sweep_relaunch_never_writes_through_links_planted_in_its_job_folders(tmp_path):
    victim = _victim(tmp_path)
    sweep = tmp_path / "logs" / "train" / "multiruns" / "s"
    links = [_plant(sweep / "seed-1", victim), _plant(sweep / "seed-2", victim)]
    (sweep / "multirun.yaml").symlink_to(victim)
    folders, warned = launch("train", [f"paths.log_dir={tmp_path / 'logs'}", "sweep_name=s", "seed=1,2",
                                       "ckpt_path=last"], multirun=True)
    assert folders == [str(sweep / "seed-1"), str(sweep / "seed-2")]
    assert victim.read_text() == "precious"
    assert not any(p.is_symlink() for p in (*links, sweep / "multirun.yaml"))
    assert warned == []


@pytest.mark.parametrize("tool", ["eval", "inspect"])
def test_a_tools_folder_in_a_handed_run_is_never_a_link_out(tmp_path, tool):
    """eval and inspect write into ``<run>/<tool>/...``: a link planted there is removed, so the
    tool's Hydra files land in the run and the linked folder stays empty."""
    run = tmp_path / "handed"
    (run / "checkpoints").mkdir(parents=True)
    outside = tmp_path / "home" / "Projects"
    outside.mkdir(parents=True)
    (run / tool).symlink_to(outside)
    folders, warned = launch(tool, [f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    assert Path(folders[0]).parent == run / tool and not (run / tool).is_symlink()
    assert (Path(folders[0]) / ".hydra" / "overrides.yaml").is_file()
    assert list(outside.iterdir()) == [] and warned == []


# ----------------------------------------------------------------------- typeable job folders
def test_sweep_job_folders_have_no_equals_or_commas_and_never_share_a_name():
    assert job_dirname(["+arm=cnn1d_static", "experiment=mnist1d_routing", "seed=3"]) == \
        "arm-cnn1d_static__experiment-mnist1d_routing__seed-3"
    assert job_dirname(["seed=3", "model.width_mult=0.0625"]) == "model.width_mult-0.0625__seed-3"  # Hydra's order
    assert job_dirname(["ckpt_path=x", "seed=1"], exclude_keys=["ckpt_path"]) == "seed-1"
    odd = [["data.splits=[256,64,64]"], ["data.splits=[256,64,65]"], ["a=b__c-d"], ["a=b", "c=d"], ["x='1,2'"]]
    names = [job_dirname(o) for o in odd]
    assert len(set(names)) == len(names)
    assert not any(c in n for n in names for c in "=,[]'\"/ ")
    assert names[0].startswith("data.splits-256_64_64-")  # readable, and a hash: characters were replaced
    relaunch = job_dirname(["ckpt_path=last", "data.splits=[256,64,64]", "trainer.devices=2"],
                           exclude_keys=["ckpt_path", "trainer.devices"])
    assert relaunch == names[0]  # the hash covers only what names the job: a relaunch finds its folder
    assert names[3] == "a-b__c-d" and names[2].startswith("a-b_c-d-")


def test_a_sweep_checkpoint_path_is_a_plain_command_line_value(tmp_path):
    """``ckpt_path=<sweep>/<job>/checkpoints/last.ckpt`` parses as Hydra reads a command line (no
    quoting) for eval, inspect and export, and eval runs on it; an earlier sweep's folder
    (``+arm=...,seed=3``) is still read when quoted."""
    from dyconv.eval import evaluate
    from trained import make_checkpoint

    sweep = tmp_path / "logs" / "train" / "multiruns" / "s"
    job = job_dirname(["model=simple_cnn", "+arm=cnn1d_static", "seed=3"])
    ckpt = make_checkpoint(sweep / job / "checkpoints" / "last.ckpt", ["model=simple_cnn", "data.splits=[64,32,32]"])
    old = sweep / legacy_job_dirname(["+arm=cnn1d_static", "seed=3"]) / "checkpoints" / "last.ckpt"
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        for tool in ("eval", "inspect", "export"):
            assert compose(tool, overrides=[f"ckpt_path={ckpt}"]).ckpt_path == str(ckpt)
            assert compose(tool, overrides=[f"ckpt_path='{old}'"]).ckpt_path == str(old)
        cfg = compose("eval", overrides=[f"ckpt_path={ckpt}", f"paths.output_dir={tmp_path / 'out'}",
                                         "trainer.accelerator=cpu", "trainer.enable_progress_bar=false",
                                         "trainer.limit_test_batches=1", "tune_malloc=false"])
    assert "test/acc" in evaluate(cfg)


def test_a_relaunch_of_an_earlier_sweep_continues_in_its_old_job_folders(tmp_path):
    """A sweep started before the rename has ``+arm=cnn1d_static,seed=1``-style job folders: its
    relaunch (same sweep_name) uses them; a job without an old folder gets a new name."""
    sweep = tmp_path / "logs" / "train" / "multiruns" / "s"
    old = sweep / "seed=1"
    (old / "checkpoints").mkdir(parents=True)
    folders, _ = launch("train", [f"paths.log_dir={tmp_path / 'logs'}", "sweep_name=s", "seed=1,2",
                                  "ckpt_path=last"], multirun=True)
    assert folders == [str(old), str(sweep / "seed-2")]


