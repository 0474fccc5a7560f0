"""The real entry point: the default run, sweeps, testing a given checkpoint, bad input at start."""

from __future__ import annotations

import csv

import pytest

from trained import load_checkpoint, run_metrics

pytestmark = pytest.mark.slow

QUIET = ["callbacks.progress_bar=null"]


def test_default_command_trains_offline_model(cli, tmp_path):
    """`python -m dyconv.train` with no arguments: offline data, >= 95% test accuracy, and it says
    where everything is."""
    proc = cli("train")
    run_dir = tmp_path / "logs" / "train" / "runs" / "dy_simple_cnn-mnist_offline-seed42"
    assert run_metrics(run_dir)["test/acc"] >= 0.95
    for label in ("Run directory:", "Checkpoints:", "TensorBoardLogger:", "Resolved config:"):
        assert label in proc.stdout
    assert str(run_dir) in proc.stdout
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert (run_dir / ".hydra" / "resolved_config.yaml").is_file()
    assert list((run_dir / ".hydra" / "launches").iterdir())
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["dyconv"]["config"]["model"]["name"] == "dy_simple_cnn"
    assert all(not k.startswith("model._orig_mod") for k in ckpt["state_dict"])


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
        assert "test/acc" in run_metrics(job)
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


def test_train_false_tests_the_checkpoint_it_is_given(cli, tmp_path, tmp_path_factory):
    """``train=false ckpt_path=...`` tests that checkpoint's weights (it tested the untrained
    model), and the finished run it came from is left as it was."""
    from trained import real_run

    run = real_run(tmp_path_factory.getbasetemp())
    trained = run_metrics(run)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    out = tmp_path / "test_only"
    proc = cli("train", "data.splits=[256,64,64]", "callbacks.progress_bar=null", "logger=[]", "train=false",
               f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}", f"hydra.run.dir={out}")
    assert "Testing the checkpoint" in proc.stdout + proc.stderr
    tested = run_metrics(out)
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
