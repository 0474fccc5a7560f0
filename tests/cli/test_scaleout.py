"""Scale-out for real on one machine: DDP (2 CPU processes, gloo) with resume, bf16 mixed precision,
``torch.compile``, and the SLURM launcher config (composed and turned into an sbatch script)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import pytest
import torch

from dyconv.layers import dynamic_layers

pytestmark = pytest.mark.slow

QUIET = ["callbacks.progress_bar=null", "logger=[]"]


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["epoch"] == 1
    return {k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}


def test_ddp_resume_matches_straight_run(cli, tmp_path):
    """2 gloo processes: 2 epochs straight == resumed with ckpt_path=last from the end of epoch 1.

    The resumed run starts from the straight run's own epoch-1 checkpoint (copied to its
    ``last.ckpt``: same bytes a 1-epoch run writes, one DDP launch less). Dropout stays on: every
    rank restores its own RNG stream (RNGStateCallback gathers them into the checkpoint). The LR
    is constant so no schedule length depends on max_epochs.
    """
    common = [
        "trainer=ddp_cpu",
        "trainer.devices=2",
        "trainer.max_epochs=2",
        "data.splits=[128,32,32]",
        "data.batch_size=32",
        "scheduler=none",
        "deterministic=true",
        "test=false",
        *QUIET,
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cli("train", *common, "callbacks.model_checkpoint.save_top_k=-1", f"hydra.run.dir={straight}")
    first_path = straight / "checkpoints" / "epoch_000.ckpt"
    first = torch.load(first_path, map_location="cpu", weights_only=True)
    assert first["epoch"] == 0 and first["global_step"] == 4  # 128 images, global batch 32
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(first_path, resumed / "checkpoints" / "last.ckpt")
    again = cli("train", *common, f"hydra.run.dir={resumed}", "ckpt_path=last")
    assert "Resuming from" in again.stdout + again.stderr

    a, b = _final_weights(straight), _final_weights(resumed)
    assert a.keys() == b.keys()
    moved = 0.0
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
        if a[key].is_floating_point():
            moved = max(moved, float((a[key] - first["state_dict"]["model." + key]).abs().max()))
    assert moved > 1e-4  # the second epoch really trained
    # Epoch 1's training metrics (mean over both ranks' batches) start from zero after a resume
    # from a completed epoch: not the checkpoint's epoch-0 sums, not counted once per rank.
    ma, mb = (json.loads((d / "metrics.json").read_text()) for d in (straight, resumed))
    for key in ("train/loss_epoch", "train/acc", "val/acc"):
        assert mb[key] == pytest.approx(ma[key], rel=1e-5), key


def test_bf16_mixed_precision_trains_a_dynamic_model(cli, tmp_path):
    """A real run under bf16 autocast on CPU: finite losses, float32 weights in the checkpoint,
    attention statistics (softmax kept in float32) logged."""
    run_dir = tmp_path / "bf16"
    cli("train", "trainer.precision=bf16-mixed", "trainer.max_epochs=1", "data.splits=[128,64,64]",
        "data.batch_size=32", *QUIET, f"hydra.run.dir={run_dir}")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert all(math.isfinite(metrics[k]) for k in ("train/loss", "val/loss", "test/loss"))
    assert 0.0 < metrics["attention/entropy_ratio"] <= 1.0 + 1e-6
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert all(v.dtype == torch.float32 for k, v in state.items() if v.is_floating_point())


def test_compile_with_bf16_keeps_checkpoint_keys(tmp_path):
    """compile=true (inductor) and bf16-mixed on the smallest dynamic model: one optimiser step,
    and the checkpoint loads into an uncompiled network (no ``_orig_mod`` in its keys)."""
    import lightning as L
    from hydra.utils import instantiate

    from dyconv.runs.rebuild import load_trained_run
    from trained import compose_run_config

    torch._dynamo.reset()
    config = compose_run_config(["compile=true", "data.splits=[32,32,32]", "data.batch_size=32"])
    model = instantiate(config["model"])
    make_task = instantiate(config["task"], _partial_=True, _convert_="all")
    task = make_task(model=model, optimizer=instantiate(config["optimizer"]), run_config=config)
    assert task.compile
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = L.Trainer(
        accelerator="cpu", devices=1, precision="bf16-mixed", max_steps=1, num_sanity_val_steps=0,
        limit_val_batches=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path,
    )
    trainer.fit(task, datamodule=instantiate(config["data"]))
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    path = tmp_path / "compiled.ckpt"
    trainer.save_checkpoint(path)
    keys = list(torch.load(path, map_location="cpu", weights_only=True)["state_dict"])
    assert keys and not any("_orig_mod" in k for k in keys)
    assert all(k.startswith("model.") for k in keys)
    run = load_trained_run(path)  # compile off, strict load
    name, layer = next(iter(dynamic_layers(run.model)))
    assert not torch.equal(layer.weight, before[f"{name}.weight"])  # the trained weights were saved


def test_slurm_launcher_composes(cli):
    """`hydra/launcher=slurm` composes from the CLI (no SLURM needed; Hydra refuses -m with --cfg)."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    proc = cli("train", "hydra/launcher=slurm", "--cfg", "hydra", "-p", "hydra.launcher")
    assert "SlurmLauncher" in proc.stdout
    assert "tasks_per_node: ${trainer.devices}" in proc.stdout
    assert "nodes: ${trainer.num_nodes}" in proc.stdout


def test_slurm_launcher_writes_one_sbatch_per_run_with_the_trainer_geometry(tmp_path, monkeypatch):
    """The launcher's parameters, resolved against trainer=ddp and passed to submitit exactly as
    hydra-submitit-launcher does, give an sbatch script with N nodes x devices tasks and GPUs."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    submitit = pytest.importorskip("submitit")
    from hydra import compose, initialize_config_dir
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    from dyconv.train import CONF_DIR

    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    (fake_bin / "srun").write_text("#!/bin/sh\nexit 0\n")
    (fake_bin / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")  # submitit looks for srun
    monkeypatch.setenv("DYCONV_LOG_DIR", str(tmp_path / "logs"))
    overrides = ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2",
                 "hydra.launcher.partition=gpu", "hydra.launcher.account=proj42"]
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert params["_target_"].endswith("SlurmLauncher")
    # hydra_submitit_launcher.submitit_launcher.BaseSubmititLauncher.launch, minus the submission
    executor = submitit.AutoExecutor(
        folder=tmp_path / "submitit", cluster="slurm", slurm_max_num_timeout=params["max_num_timeout"]
    )
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{  # raises on any key submitit does not know
        k if k in base else f"slurm_{k}": v
        for k, v in params.items()
        if k not in ("submitit_folder", "max_num_timeout", "_target_")
    })
    script = executor._executor._make_submission_file_text("python -m dyconv.train", "uid")
    for line in ("--nodes=2", "--ntasks-per-node=4", "--gpus-per-node=4", "--partition=gpu", "--account=proj42",
                 "--signal=USR2@120"):
        assert f"#SBATCH {line}\n" in script, script
    assert "\nsrun " in script


def test_ddp_on_cpu_syncs_metrics_across_ranks(cli, tmp_path):
    """Two gloo processes; the logged val/acc is the accuracy over the WHOLE val set, which each
    rank only sees half of."""
    run_dir = tmp_path / "ddp"
    cli(
        "train",
        "trainer=ddp_cpu",
        "trainer.devices=2",
        "trainer.max_epochs=1",
        "data.splits=[256,100,100]",
        "data.batch_size=32",
        "model.recompute_kernels=true",  # the memory-saving autograd Function, under DDP
        "callbacks.progress_bar=null",
        f"hydra.run.dir={run_dir}",
    )
    from dyconv.runs.rebuild import load_trained_run

    run = load_trained_run(run_dir / "checkpoints" / "last.ckpt")
    dm = run.datamodule()
    dm.setup("fit")
    correct = total = 0
    with torch.no_grad():
        for x, y in dm.val_dataloader():
            correct += int((run.task(x).argmax(1) == y).sum())
            total += len(y)
    assert total == 100
    assert json.loads((run_dir / "metrics.json").read_text())["val/acc"] == pytest.approx(correct / total, abs=1e-6)
    assert list(dynamic_layers(run.model))


def test_multirun_with_in_process_ddp_is_refused(cli):
    """Lightning's DDP launcher would re-run each worker with the whole sweep's arguments."""
    proc = cli("train", "-m", "trainer=ddp_cpu", "trainer.devices=2", "seed=1,2", "callbacks.progress_bar=null",
               check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "basic launcher is not supported" in out and "hydra/launcher=slurm" in out
