"""Trust model, values: a handed checkpoint's sizes, resource settings and data paths are guarded.

- Sizes (``num_classes``, ``width_mult``, ``num_kernels``, ``image_size``) are checked before any
  real memory is used: the model is built on the ``meta`` device and compared with the weights.
- Resource settings (``num_workers``, batch sizes) are capped to this machine; the command line
  still sets them.
- Data folders a checkpoint names are read-only to eval/inspect/export.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dyconv.errors import ConfigError, DyconvError
from dyconv.runs.checkpoint_values import MAX_STORED_BATCH, available_cores
from dyconv.runs.rebuild import load_trained_run
from fakedata import make_mnist
from trained import make_checkpoint

SRC = Path(__file__).parents[2] / "src"
TESTS = Path(__file__).parents[1]


def _edited(good: Path, out: Path, **edits) -> Path:
    """A copy of ``good`` whose stored config has ``section__key=value`` set."""
    ckpt = torch.load(good, map_location="cpu", weights_only=True)
    config = ckpt["dyconv"]["config"]
    for name, value in edits.items():
        section, key = name.split("__")
        config[section][key] = value
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out)
    return out


@pytest.fixture(scope="module")
def dynamic_ckpt(tmp_path_factory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("values") / "checkpoints" / "last.ckpt",
                           ["data=fashion_mnist", "model=dy_simple_cnn"])


# ---------------------------------------------------------------------------------------- sizes
#: name -> (stored config edits, what the one-line error must say)
SIZE_ATTACKS = {
    "model.num_classes": (dict(model__num_classes=200_000_000, task__num_classes=200_000_000,
                               data__num_classes=200_000_000), "[200000000, 128] in the model"),
    "model.width_mult": (dict(model__width_mult=100_000.0), "[3200000, 1, 3, 3] in the model"),
    "model.width_mult overflow": (dict(model__width_mult=1e30), "cannot be built"),
    "model.num_kernels": (dict(model__num_kernels=100_000), "[100000, 64, 32, 3, 3] in the model"),
    "task.num_classes": (dict(task__num_classes=200_000_000), "task.num_classes=200000000"),
    "data.num_classes": (dict(data__num_classes=200_000_000), "data.num_classes=200000000"),
    "data.image_size": (dict(data__image_size=100_000), "data.image_size=100000 is outside 1..2048"),
    "data.image_size zero": (dict(data__image_size=0), "data.image_size=0 is outside"),
}

_CHILD = r"""
import json, re, resource, sys, time
from dyconv.export import export_checkpoint
from dyconv.inspect import inspect_checkpoint
from dyconv.runs.rebuild import load_trained_run

vm = int(re.search(r"VmSize:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 1536 * 2**20, resource.RLIM_INFINITY))  # 1.5 GiB more, at most
tools = {"load": load_trained_run, "inspect": inspect_checkpoint,
         "export": lambda p: export_checkpoint(p, "onnx", p + ".onnx", verify=False)}
out = {}
for name, path in json.loads(sys.argv[1]).items():
    for tool, fn in tools.items():
        start = time.perf_counter()
        try:
            fn(path)
            result = {"error": None}
        except BaseException as e:
            result = {"error": type(e).__name__, "dyconv": type(e).__module__.startswith("dyconv"), "text": str(e)}
        result["seconds"] = time.perf_counter() - start
        out[f"{name} / {tool}"] = result
print("RESULTS " + json.dumps(out))
"""


def test_sizes_from_a_checkpoint_are_refused_in_one_line_before_any_allocation(dynamic_ckpt, tmp_path):
    """The attack: a checkpoint whose stored config asks for 8 GB to petabytes. Under a
    1.5 GiB address-space cap, eval's loader, inspect and export each refuse in one line naming
    the key (and the two shapes), quickly, instead of a MemoryError or an allocation."""
    paths = {name: str(_edited(dynamic_ckpt, tmp_path / f"{i}.ckpt", **edits))
             for i, (name, (edits, _)) in enumerate(SIZE_ATTACKS.items())}
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), str(TESTS)]))
    proc = subprocess.run([sys.executable, "-c", _CHILD, json.dumps(paths)], capture_output=True, text=True, env=env,
                          cwd=tmp_path)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")), None)
    assert line is not None, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(line.removeprefix("RESULTS "))
    for name, (_, expected) in SIZE_ATTACKS.items():
        for tool in ("load", "inspect", "export"):
            r = results[f"{name} / {tool}"]
            assert r["error"] == "ConfigError" and r["dyconv"], (name, tool, r)
            assert "\n" not in r["text"] and expected in r["text"], (name, tool, r["text"])
            assert paths[name] in r["text"] and "damaged or was edited" in r["text"]
            assert r["seconds"] < 20, (name, tool, r["seconds"])
    assert not list(tmp_path.glob("*.onnx*")), "export wrote something"


def test_a_checkpoint_whose_config_fits_its_weights_still_loads(dynamic_ckpt):
    """The meta-device check changes nothing for a real checkpoint: the weights are the stored ones."""
    run = load_trained_run(dynamic_ckpt)
    stored = torch.load(dynamic_ckpt, map_location="cpu", weights_only=True)["state_dict"]
    loaded = run.task.state_dict()
    assert set(loaded) == set(stored)
    assert all(torch.equal(loaded[k], stored[k]) for k in stored)
    assert not any(t.is_meta for t in loaded.values())


def test_a_missing_or_extra_weight_is_named(dynamic_ckpt, tmp_path):
    ckpt = torch.load(dynamic_ckpt, map_location="cpu", weights_only=True)
    key = next(k for k in ckpt["state_dict"] if k.endswith("weight"))
    missing = copy.deepcopy(ckpt)
    del missing["state_dict"][key]
    torch.save(missing, tmp_path / "missing.ckpt")
    with pytest.raises(ConfigError, match=rf"{re.escape(key)} is missing from the checkpoint"):
        load_trained_run(tmp_path / "missing.ckpt")
    extra = copy.deepcopy(ckpt)
    extra["state_dict"]["model.planted"] = torch.zeros(3)
    torch.save(extra, tmp_path / "extra.ckpt")
    with pytest.raises(ConfigError, match=r"the checkpoint holds model\.planted, which the model"):
        load_trained_run(tmp_path / "extra.ckpt")


# ---------------------------------------------------------------------------------------- resources
def _eval_overrides(*args: str) -> dict:
    """The ``data`` overrides ``python -m dyconv.eval`` passes for these command-line arguments."""
    from hydra import compose, initialize_config_dir

    from dyconv.config import CONF_DIR, to_plain

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("eval", overrides=["ckpt_path=x", *args])
    return to_plain(cfg.data)


def test_a_checkpoints_worker_count_and_batch_sizes_are_capped_to_the_machine(dynamic_ckpt, tmp_path, caplog):
    """The attack: data.num_workers=48 made eval start 48 DataLoader workers."""
    ckpt = _edited(dynamic_ckpt, tmp_path / "greedy.ckpt", data__num_workers=48, data__batch_size=10**9,
                   data__eval_batch_size=10**9)
    run = load_trained_run(ckpt)
    dm = run.datamodule(_eval_overrides())
    cores = available_cores()
    assert cores < 48 and dm.num_workers == cores
    assert f"Using data.num_workers={cores}, not the checkpoint's 48" in caplog.text
    assert dm.batch_size == dm.eval_batch_size == MAX_STORED_BATCH
    assert run.config["data"]["num_workers"] == 48  # recorded as stored
    # The command line still sets them, above the caps too.
    dm = run.datamodule(_eval_overrides("data.num_workers=48", "data.eval_batch_size=2000"))
    assert dm.num_workers == 48 and dm.eval_batch_size == 2000
    # A batch of large images is lowered further: one batch of inputs stays under 1 GiB of float32.
    big = load_trained_run(_edited(dynamic_ckpt, tmp_path / "big.ckpt", data__image_size=2048,
                                   data__eval_batch_size=1000)).datamodule(_eval_overrides())
    assert big.eval_batch_size == 2**28 // (2048 * 2048)


def test_resources_within_the_machine_are_kept(dynamic_ckpt):
    dm = load_trained_run(dynamic_ckpt).datamodule(_eval_overrides())
    assert (dm.num_workers, dm.batch_size, dm.eval_batch_size) == (0, 128, 500)


# ---------------------------------------------------------------------------------------- data paths
def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}


def test_a_checkpoints_data_root_is_read_only_to_the_tools(dynamic_ckpt, tmp_path):
    """The attack: a Fashion-MNIST root naming another folder that holds a .gz made eval
    write ``<folder>/FashionMNIST/raw/train-images-idx3-ubyte.tmp`` and then advise deleting the
    user's file. Nothing is created there now, and the message says how to go on."""
    victim = tmp_path / "someone"
    raw = victim / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip, and not yours to touch")
    before = _snapshot(victim)
    run = load_trained_run(_edited(dynamic_ckpt, tmp_path / "rooted.ckpt", data__root=str(victim)))
    dm = run.datamodule(_eval_overrides())
    assert dm.read_only
    with pytest.raises(ConfigError) as info:
        dm.prepare_data()
    text = str(info.value)
    assert "\n" not in text and f"data.root={victim} comes from the checkpoint" in text
    assert "pass data.root=<a folder of yours>" in text and "Delete" not in text
    assert _snapshot(victim) == before
    # Turning downloads on, or unpacking a local copy, from the command line does not make the
    # stored root writable either.
    with pytest.raises(ConfigError, match="comes from the checkpoint"):
        run.datamodule(_eval_overrides("data.download=true")).prepare_data()
    system = tmp_path / "system"
    system.mkdir()
    (system / "train-images-idx3-ubyte.gz").write_bytes(b"x")
    with pytest.raises(ConfigError, match=f"comes from the checkpoint.*the files of {system} are decompressed"):
        run.datamodule(_eval_overrides(f"data.system_dir={system}")).prepare_data()
    assert _snapshot(victim) == before
    # A root the command line names is the user's: prepared there as usual.
    mine = tmp_path / "mine"
    data = make_mnist(mine, folder="FashionMNIST")
    for f in data["raw_dir"].iterdir():
        if not f.name.endswith(".gz"):
            f.unlink()
    dm = run.datamodule(_eval_overrides(f"data.root={mine}"))
    assert not dm.read_only
    with pytest.raises(DyconvError, match="md5"):  # decompressed (the fake files fail Fashion-MNIST's md5)
        dm.prepare_data()


def test_a_prepared_dataset_at_a_checkpoints_root_is_read(tmp_path):
    """Reading is fine: an existing MNIST at the stored root is set up without writing."""
    root = tmp_path / "datasets"
    make_mnist(root)
    ckpt = make_checkpoint(tmp_path / "mnist.ckpt", ["data=mnist", f"data.root={root}", "model=simple_cnn",
                                                     "data.val_size=5"])
    before = _snapshot(root)
    dm = load_trained_run(ckpt).datamodule(_eval_overrides())
    assert dm.read_only
    dm.prepare_data()
    dm.setup("test")
    assert len(dm.test_set) == 10
    assert _snapshot(root) == before


def test_a_missing_mnist1d_cache_is_not_generated_at_a_checkpoints_root(tmp_path):
    root = tmp_path / "elsewhere"
    root.mkdir()
    ckpt = make_checkpoint(tmp_path / "m1d.ckpt", ["data=mnist1d", f"data.root={root}", "model=cnn1d"])
    dm = load_trained_run(ckpt).datamodule(_eval_overrides())
    with pytest.raises(ConfigError, match="generated MNIST-1D arrays are cached in"):
        dm.prepare_data()
    assert list(root.iterdir()) == []


@pytest.mark.parametrize("stored_sbd", [False, True])
def test_a_checkpoints_voc_folders_are_read_only_to_the_tools(stored_sbd, tmp_path):
    """Archive datasets: a download the command line turns on never writes into a folder the
    checkpoint names (root, or VOC+SBD's sbd_root while the command line moves root)."""
    theirs, mine = tmp_path / "theirs", tmp_path / "mine"
    theirs.mkdir()
    overrides = ["data=voc_sbd", "model=deeplabv3plus", f"data.root={theirs}"]
    if stored_sbd:
        overrides.append(f"data.sbd_root={theirs / 'sbd'}")
    run = load_trained_run(make_checkpoint(tmp_path / "voc.ckpt", overrides))
    cli = ["data.download=true"] + ([f"data.root={mine}"] if stored_sbd else [])
    dm = run.datamodule(_eval_overrides(*cli))
    assert dm.read_only and dm.download
    key = "data.sbd_root" if stored_sbd else "data.root"
    with pytest.raises(ConfigError, match=rf"{key}=\S+ comes from the checkpoint.*downloads"):
        dm.prepare_data()
    assert list(theirs.iterdir()) == [] and not mine.exists()
