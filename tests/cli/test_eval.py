"""``dyconv.eval`` never replaces an earlier evaluation's results."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from omegaconf import OmegaConf

from dyconv.config import CONF_DIR
from dyconv.eval import evaluate, write_result


def test_eval_folders_are_named_to_the_microsecond():
    run_dir = OmegaConf.to_container(OmegaConf.load(Path(CONF_DIR) / "eval.yaml"), resolve=False)["hydra"]["run"]["dir"]
    assert run_dir.endswith("/eval/${split}_${now:%Y-%m-%d_%H-%M-%S_%f}")


def test_write_result_never_replaces_a_result(tmp_path):
    out = tmp_path / "eval" / "test_2024-01-01_00-00-00"
    out.mkdir(parents=True)
    (out / "metrics.json").write_text("first")
    assert write_result(out, "second") == tmp_path / "eval" / "test_2024-01-01_00-00-00+1" / "metrics.json"
    assert (out / "metrics.json").read_text() == "first"
    # Writers racing for one folder each get their own file; no temp file is left behind.
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda i: write_result(out, f"w{i}"), range(8)))
    assert len(set(paths)) == 8 and sorted(p.read_text() for p in paths) == sorted(f"w{i}" for i in range(8))
    assert (out / "metrics.json").read_text() == "first"
    assert not list(tmp_path.rglob(".*tmp"))


def test_two_evaluations_into_one_folder_keep_both_results(tmp_path):
    """Two evaluations started in the same second share Hydra's ``eval/<split>_<time>`` folder (here:
    the same fixed folder): the second writes beside the first, never over it."""
    from hydra import compose, initialize_config_dir

    from trained import make_checkpoint  # tests/ helper

    ckpt = make_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt",
                           ["model=simple_cnn", "data.splits=[64,32,32]"])
    out = tmp_path / "run" / "eval" / "same_second"
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={ckpt}", f"paths.output_dir={out}", "trainer.accelerator=cpu",
                                         "trainer.enable_progress_bar=false", "trainer.limit_test_batches=1",
                                         "trainer.limit_val_batches=1", "tune_malloc=false"])
    evaluate(cfg)
    cfg.split = "val"
    evaluate(cfg)
    first = json.loads((out / "metrics.json").read_text())
    second = json.loads((out.with_name("same_second+1") / "metrics.json").read_text())
    assert (first["split"], second["split"]) == ("test", "val")
    assert "test/acc" in first["metrics"] and "val/acc" in second["metrics"]
    # What produced each result, written with it (a failed relaunch can rewrite .hydra/, not this).
    assert (first["config"]["split"], second["config"]["split"]) == ("test", "val")
    assert "epoch" in first and "global_step" in first


def test_a_refused_evaluation_leaves_no_folder(tmp_path):
    """Hydra makes ``eval/<split>_<time>/`` (``.hydra/``, ``eval.log``) before the job runs: a
    refusal (here ``split=train2``) removes it again, but never a folder holding results."""
    import pytest
    from hydra import compose, initialize_config_dir

    from dyconv.errors import ConfigError

    out = tmp_path / "run" / "eval" / "train2_now"
    (out / ".hydra").mkdir(parents=True)
    for name in ("config.yaml", "overrides.yaml", "hydra.yaml"):
        (out / ".hydra" / name).write_text("x")
    (out / "eval.log").write_text("")
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=[f"ckpt_path={tmp_path / 'run' / 'checkpoints' / 'last.ckpt'}",
                                         f"paths.output_dir={out}", "split=train2", "tune_malloc=false"])
    with pytest.raises(ConfigError, match="split must be 'test' or 'val'"):
        evaluate(cfg)
    assert not out.exists()
    (out / ".hydra").mkdir(parents=True)
    (out / "metrics.json").write_text("{}")
    with pytest.raises(ConfigError, match="split must be 'test' or 'val'"):
        evaluate(cfg)
    assert (out / "metrics.json").read_text() == "{}"
