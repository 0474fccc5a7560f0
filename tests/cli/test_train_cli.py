"""The real entry point, in subprocesses: default run, resume, sweeps, DDP, bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from dyconv.layers import dynamic_layers

pytestmark = pytest.mark.slow

CONF = Path(__file__).parents[2] / "src" / "dyconv" / "conf"
QUIET = ["callbacks.progress_bar=null"]
SMALL_DATA = ["data.splits=[512,128,128]"]


def _metrics(run_dir: Path) -> dict[str, float]:
    return json.loads((run_dir / "metrics.json").read_text())


def _load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)  # plain types only


def test_default_command_trains_offline_model(cli, tmp_path):
    """`python -m dyconv.train` with no arguments: offline data, >= 95% test accuracy, and it says
    where everything is."""
    proc = cli("train")
    run_dir = tmp_path / "logs" / "train" / "runs" / "dy_simple_cnn-mnist_offline-seed42"
    assert _metrics(run_dir)["test/acc"] >= 0.95
    for label in ("Run directory:", "Checkpoints:", "TensorBoardLogger:", "Resolved config:"):
        assert label in proc.stdout
    assert str(run_dir) in proc.stdout
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / ".hydra" / "resolved_config.yaml").is_file()
    assert list((run_dir / ".hydra" / "launches").iterdir())
    ckpt = _load(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["dyconv"]["config"]["model"]["name"] == "dy_simple_cnn"
    assert all(not k.startswith("model._orig_mod") for k in ckpt["state_dict"])


def test_resume_after_sigkill_is_exact(cli, tmp_path):
    """Lightning's own recipe: one run straight; the same command in another directory killed
    in the middle of epoch 1's validation (last.ckpt is written when an epoch's training ends,
    before validation), relaunched with ckpt_path=last: same weights, metrics and history."""
    common = [
        *QUIET,
        *SMALL_DATA,
        "trainer.max_epochs=3",
        "deterministic=true",
        "callbacks.temperature.epochs=2",
        "logger=many",
    ]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    cli("train", *common, f"hydra.run.dir={straight}")
    killed = cli(
        "train",
        *common,
        f"hydra.run.dir={resumed}",
        "ckpt_path=last",  # nothing there yet: starts fresh, with a message
        "+callbacks.killer._target_=killer.KillInValidation",
        check=False,
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert "starting from scratch" in killed.stdout + killed.stderr
    assert _load(resumed / "checkpoints" / "last.ckpt")["epoch"] == 1  # epoch 1 trained, not validated
    again = cli("train", *common, f"hydra.run.dir={resumed}", "ckpt_path=last")
    assert "Resuming from" in again.stdout + again.stderr

    a, b = _load(straight / "checkpoints" / "last.ckpt"), _load(resumed / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] and a["epoch"] == b["epoch"] == 2
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        torch.testing.assert_close(a["state_dict"][key], b["state_dict"][key], rtol=0, atol=1e-7, msg=key)
    ma, mb = _metrics(straight), _metrics(resumed)
    ma, mb = ({k: v for k, v in m.items() if not k.startswith("time/")} for m in (ma, mb))
    assert ma == pytest.approx(mb, rel=1e-6, abs=1e-7)
    assert ma["temperature"] == mb["temperature"] == 1.0
    # The CSV history of the killed launch is kept, once: epochs 0, 1, 2 with no duplicates.
    with open(resumed / "csv" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/acc")]
    assert [int(float(r["epoch"])) for r in rows] == [0, 1, 2]

    def train_epoch_rows(run_dir: Path) -> list[tuple[float, ...]]:
        with open(run_dir / "csv" / "metrics.csv") as f:
            return [(float(r["epoch"]), float(r["train/loss_epoch"]), float(r["train/acc"]))
                    for r in csv.DictReader(f) if r.get("train/loss_epoch")]

    # Epoch 1's training metrics were accumulated before the kill: the pre-validation checkpoint
    # carries them, so the resumed run logs the same training history (epochs 0, 1, 2).
    straight_rows = train_epoch_rows(straight)
    assert [r[0] for r in straight_rows] == [0, 1, 2]
    resumed_rows = train_epoch_rows(resumed)
    assert len(resumed_rows) == len(straight_rows)
    for got, want in zip(resumed_rows, straight_rows):
        assert got == pytest.approx(want, rel=1e-6)
    assert len(list((resumed / ".hydra" / "launches").iterdir())) == 2

    # A requeue script relaunching the finished run with ckpt_path=last changes nothing.
    before = {p.name: p.read_bytes() for p in [resumed / "metrics.json", *(resumed / "checkpoints").iterdir()]}
    relaunch = cli("train", *common, f"hydra.run.dir={resumed}", "ckpt_path=last")
    assert "already finished" in relaunch.stdout
    assert {p.name: p.read_bytes() for p in [resumed / "metrics.json", *(resumed / "checkpoints").iterdir()]} \
        == before
    # Relaunching a finished run without ckpt_path refuses instead of overwriting.
    refused = cli("train", *common, f"hydra.run.dir={resumed}", check=False)
    assert refused.returncode != 0
    assert "already holds checkpoints" in refused.stderr and "ckpt_path=last" in refused.stderr
    assert "Traceback" not in refused.stderr
    # Resuming with another model config refuses and names the difference.
    changed = cli("train", *common, f"hydra.run.dir={resumed}", "ckpt_path=last", "model.width_mult=0.5",
                  check=False)
    assert changed.returncode != 0 and "model.width_mult: 1.0 -> 0.5" in changed.stderr


def test_multirun_gives_each_job_its_own_complete_directory(cli, tmp_path):
    """Two good jobs and two that fail at start: the sweep goes on and reports the failure."""
    proc = cli(
        "train",
        "-m",
        "model=simple_cnn,dy_simple_cnn",
        "optimizer.lr=0.05,-1",
        "data.splits=[256,64,64]",
        "trainer.max_epochs=1",
        "sweep_name=sweep",
        *QUIET,
        check=False,
    )
    assert proc.returncode != 0
    assert "optimizer.lr must be > 0" in proc.stdout + proc.stderr
    sweep = tmp_path / "logs" / "train" / "multiruns" / "sweep"
    done = sorted(p for p in sweep.iterdir() if (p / "metrics.json").is_file())
    assert [p.name.split("__model-")[1].split("__")[0] for p in done] == ["dy_simple_cnn", "simple_cnn"]
    for job in done:
        assert "__optimizer.lr-0.05__" in job.name
        assert (job / "checkpoints" / "last.ckpt").is_file()
        assert (job / ".hydra" / "config.yaml").is_file()
        assert "test/acc" in _metrics(job)
    # The sweep's summary lists all four jobs, the failed ones with their error.
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["model"], r["optimizer.lr"], r["status"]) for r in rows) == [
        ("dy_simple_cnn", "-1", "failed"), ("dy_simple_cnn", "0.05", "completed"),
        ("simple_cnn", "-1", "failed"), ("simple_cnn", "0.05", "completed")]
    assert all("optimizer.lr must be > 0" in r["error"] for r in rows if r["status"] == "failed")
    done_rows = [r for r in rows if r["status"] == "completed"]
    assert all(float(r["model/params"]) > 0 and float(r["model/gflops"]) > 0 for r in done_rows)
    assert (sweep / "summary.md").is_file()


#: Deeper twins of configs kept here (same code, only more blocks): tests/models/test_models.py
#: instantiates their configs and tests/cli/test_experiments.py trains each one step.
DEEPER_TWINS = ("resnet101", "dy_resnet101", "od_resnet34", "od_resnet50", "od_resnet101")


#: 1-D models take sequences, not images: tests/datamodules/test_mnist1d.py trains them from the CLI.
SEQUENCE_MODELS = ("cnn1d", "dy_cnn1d")


def _classification_model_configs() -> list[str]:
    return sorted(
        p.stem for p in (CONF / "model").glob("*.yaml")
        if "deeplab" not in p.stem and p.stem not in DEEPER_TWINS + SEQUENCE_MODELS
    )


def test_fast_dev_run_every_classification_model(cli, tmp_path):
    """One multirun process runs every model config on the offline data, resized to 32 px RGB."""
    models = _classification_model_configs()
    assert {"simple_cnn", "dy_simple_cnn", "dy_resnet10", "dy_mobilenetv2", "od_resnet18", "od_mobilenetv2"} <= set(
        models
    )
    cli(
        "train",
        "-m",
        f"model={','.join(models)}",
        "debug=fast_dev_run",
        "data.image_size=32",
        "data.in_channels=3",
        "data.batch_size=4",
        "data.splits=[8,8,8]",
        "sweep_name=sweep",
        *QUIET,
    )
    jobs = list((tmp_path / "logs" / "debug" / "multiruns" / "sweep").glob("*model-*"))  # key-value__key-value
    assert len(jobs) == len(models)
    for job in jobs:
        m = _metrics(job)
        # One SGD step leaves BatchNorm's running statistics far from the data, so eval-mode
        # test losses of deep nets can overflow here; the training step itself must be finite.
        # fast_dev_run tests one batch of 4 images: the accuracy is a count of 4.
        assert m["test/acc"] * 4 == pytest.approx(round(m["test/acc"] * 4), abs=1e-6) and 0 <= m["test/acc"] <= 1
        assert torch.isfinite(torch.tensor(m["train/loss_step"]))


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
        *QUIET,
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
    assert _metrics(run_dir)["val/acc"] == pytest.approx(correct / total, abs=1e-6)
    assert list(dynamic_layers(run.model))


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["model=resnet999"], ["Could not find 'model/resnet999'", "dy_resnet10"]),
        (["optimizer.lr=-0.1"], ["optimizer.lr must be > 0"]),
        (["data=tinyimagenet", "model=resnet10"], ["tiny-imagenet-200", "data.download=true"]),
        (["data.batch_size=63", "trainer=ddp_cpu", "trainer.devices=2"], ["must divide by the world size"]),
        (["model=resnet10", "+model.stme=small"], ["unexpected keyword argument 'stme'"]),
        (["seed=-1"], ["seed must be an integer in [0, 2**32 - 1]"]),
        (["ckpt_path=missing.ckpt"], ["ckpt_path=missing.ckpt: no such file"]),
        (["trainer.devices=0"], ["Trainer(devices=0)", "(in trainer)"]),  # Lightning's check, before any write
        # A misspelled key of a group chosen on the same line: Hydra's refusal, then the closest key.
        (["model=dy_resnet10", "model.widht_mult=0.5"], ["did you mean 'model.width_mult'?"]),
    ],
)
def test_bad_input_fails_at_start_with_one_clear_message(cli, tmp_path, args, expected):
    proc = cli("train", *args, *QUIET, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    for text in expected:
        assert text in out, out[-3000:]
    assert "Traceback" not in out
    runs = tmp_path / "logs" / "train" / "runs"
    assert not (runs.is_dir() and any(runs.iterdir())), "a failed start left a run directory behind"


def test_misspelled_key_hint_names_the_closest_key_only_for_keys_the_config_lacks():
    from dyconv.cli import misspelled_key_hint

    hint = misspelled_key_hint("train", ["trainer.max_epoch=1", "optimizer.lr=0.1", "modle=dy_resnet10"])
    assert hint.splitlines() == [
        "dyconv: the config has no key 'trainer.max_epoch'; did you mean 'trainer.max_epochs'? "
        "(+trainer.max_epoch=... adds a new key)",
        "dyconv: the config has no key 'modle'; did you mean 'model'? (+modle=... adds a new key)",
    ]
    assert "'split'" in misspelled_key_hint("eval", ["ckpt_path=x.ckpt", "splt=val"])
    # Existing keys, new keys (+), Hydra's own keys and flags: nothing to say.
    assert misspelled_key_hint("train", ["trainer.max_epochs=1", "+foo.bar=1", "hydra.job.name=x", "-m"]) is None
    assert misspelled_key_hint("train", ["data=tinyimagenet", "data.image_size=32"]) is None
    # Only siblings under the same parent count: a checkpoint's data key set without its + (eval
    # and inspect keep only some data keys) is not "data.pin_memory".
    assert misspelled_key_hint("eval", ["ckpt_path=x.ckpt", "data.split_seed=1", "data.image_size=3"]) is None
    # A group that cannot be composed hides nothing else and gets no guesses under it.
    assert misspelled_key_hint("train", ["data=mnist", "data.root=/x", "modle=dy_resnet10"]).count("did you") == 1
    assert misspelled_key_hint("train", ["model=dy_resnet100", "model.stem=large"]) is None


def test_last_checkpoint_is_written_every_epoch_even_without_improvement(cli, tmp_path):
    """Lightning 2.6's save_last only rewrites last.ckpt when the monitored best improved; with a
    learning rate of ~0 nothing improves after epoch 0, yet last.ckpt must hold the final epoch."""
    run_dir = tmp_path / "flat"
    cli("train", "optimizer.lr=1e-12", "trainer.max_epochs=3", "data.splits=[64,32,32]", "test=false", *QUIET,
        f"hydra.run.dir={run_dir}")
    assert _load(run_dir / "checkpoints" / "last.ckpt")["epoch"] == 2
    best = [p for p in (run_dir / "checkpoints").glob("epoch_*.ckpt")]
    assert [p.name for p in best] == ["epoch_000.ckpt"]
    # dyconv.eval rebuilds everything from the checkpoint alone; data overrides apply.
    proc = cli("eval", f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}", "split=val", "data.batch_size=8")
    (result,) = (run_dir / "eval").glob("val_*/metrics.json")
    record = json.loads(result.read_text())
    # last.ckpt holds the weights of the run's final validation: eval must reproduce its accuracy.
    assert record["split"] == "val"
    assert record["metrics"]["val/acc"] == pytest.approx(_metrics(run_dir)["val/acc"], abs=1e-6)
    assert str(result) in proc.stdout


def test_multirun_with_in_process_ddp_is_refused(cli):
    """Lightning's DDP launcher would re-run each worker with the whole sweep's arguments."""
    proc = cli("train", "-m", "trainer=ddp_cpu", "trainer.devices=2", "seed=1,2", *QUIET, check=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "basic launcher is not supported" in out and "hydra/launcher=slurm" in out


def test_train_false_tests_the_checkpoint_it_is_given(cli, tmp_path, tmp_path_factory):
    """``train=false ckpt_path=...`` tests that checkpoint's weights (it tested the untrained
    model), and the finished run it came from is left as it was."""
    from trained import real_run

    run = real_run(tmp_path_factory.getbasetemp())
    trained = _metrics(run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    out = tmp_path / "test_only"
    proc = cli("train", "data.splits=[256,64,64]", "callbacks.progress_bar=null", "logger=[]", "train=false",
               f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={out}")
    assert "Testing the checkpoint" in proc.stdout + proc.stderr
    tested = _metrics(out)
    for key in ("test/acc", "test/loss"):
        assert tested[key] == pytest.approx(trained[key], rel=1e-6), key
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_a_launch_that_does_not_run_leaves_the_runs_hydra_files(cli, tmp_path, tmp_path_factory):
    """Hydra writes .hydra/{config,overrides,hydra}.yaml before the job runs: a relaunch that is
    refused (or finds the run finished) puts the run's own files back."""
    import shutil

    from trained import real_run

    run = tmp_path / "run"
    shutil.copytree(real_run(tmp_path_factory.getbasetemp()), run)
    hydra_files = {p.name: p.read_bytes() for p in (run / ".hydra").iterdir() if p.is_file()}
    common = ["data.splits=[256,64,64]", "callbacks.progress_bar=null", "logger=[]", f"hydra.run.dir={run}"]
    refused = cli("train", *common, "optimizer.lr=0.5", check=False)
    assert refused.returncode != 0 and "already holds checkpoints" in refused.stderr
    finished = cli("train", *common, "trainer.max_epochs=1", "ckpt_path=last")
    assert "already finished" in finished.stdout
    assert {p.name: p.read_bytes() for p in (run / ".hydra").iterdir() if p.is_file()} == hydra_files
