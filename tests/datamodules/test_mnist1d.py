"""MNIST-1D: the generated benchmark data (layout, splits, determinism, cache), the benchmark's CNN
and its dynamic twin, and a short CLI training run that must beat chance."""

from __future__ import annotations

import io
import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_cli
from dyconv.datamodules import MNIST1DDataModule
from dyconv.datamodules import mnist1d as m1d
from dyconv.errors import ConfigError
from dyconv.layers import DynamicConv1d, dynamic_layers
from dyconv.models import create_model

COMMON = {"batch_size": 100, "num_workers": 0, "seed": 0}


@pytest.fixture
def small_args(monkeypatch):
    """The benchmark's generator with 500 sequences instead of 5,000 (400 train / 100 test;
    generation in a fraction of a second instead of seconds)."""
    args = dict(m1d.mnist1d_args(), num_samples=500)
    monkeypatch.setattr(m1d, "mnist1d_args", lambda: dict(args))
    return args


@pytest.fixture(scope="module")
def cli_data_root(tmp_path_factory):
    """A data folder whose cache a subprocess accepts as the default data: 2,000 sequences of the
    benchmark's generator (1,600 train / 400 test) recorded under the default arguments, so the
    CLI test does not spend seconds generating 5,000."""
    root = tmp_path_factory.mktemp("datasets")
    arrays = m1d.generate_mnist1d(dict(m1d.mnist1d_args(), num_samples=2000))
    (root / "MNIST1D").mkdir()
    (root / "MNIST1D" / m1d.CACHE_NAME).write_bytes(m1d._cache_bytes(arrays, m1d.mnist1d_args()))
    return root


def _rows(x: torch.Tensor) -> set[bytes]:
    return {r.tobytes() for r in x.squeeze(1).numpy()}


def test_the_benchmarks_default_arguments():
    """4,000 train / 1,000 test sequences of length 40 (the benchmark's split of 5,000), seed 42."""
    from mnist1d.data import get_dataset_args

    args = m1d.mnist1d_args()
    assert args == {k: v for k, v in get_dataset_args(as_dict=True).items() if k != "url"}
    assert (args["num_samples"], args["train_split"], args["final_seq_length"], args["seed"]) == (5000, 0.8, 40, 42)


def test_layout_splits_and_values_are_the_generators(small_args, tmp_path):
    from mnist1d.data import make_dataset
    from mnist1d.utils import ObjectView

    ref = make_dataset(ObjectView(dict(small_args)))  # the package called directly: the reference
    dm = MNIST1DDataModule(root=tmp_path, val_size=40, **COMMON)
    dm.prepare_data()
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set), len(dm.test_set)) == (360, 40, 100)
    x, y = dm.train_set.tensors
    assert x.shape == (360, 1, 40) and x.dtype == torch.float32 and y.dtype == torch.long
    assert dm.input_shape == (1, 40)
    # train + val are the generator's training sequences (each once, label kept), test its test ones in order
    xv, yv = dm.val_set.tensors
    got = {r.tobytes(): int(c) for r, c in zip(torch.cat([x, xv]).squeeze(1).numpy(), torch.cat([y, yv]))}
    want = {r.astype(np.float32).tobytes(): int(c) for r, c in zip(ref["x"], ref["y"])}
    assert got == want and len(got) == 400
    xt, yt = dm.test_set.tensors
    np.testing.assert_array_equal(xt.squeeze(1).numpy(), ref["x_test"].astype(np.float32))
    np.testing.assert_array_equal(yt.numpy(), ref["y_test"])
    assert sorted(torch.unique(y).tolist()) == list(range(10))
    batch_x, batch_y = next(iter(dm.train_dataloader()))
    assert batch_x.shape == (100, 1, 40) and batch_y.shape == (100,)


def test_holdout_is_seeded_and_generation_keeps_the_global_rngs(small_args, tmp_path):
    MNIST1DDataModule(root=tmp_path / "a", **COMMON).prepare_data()
    splits = []
    for seed in (0, 0, 1):
        dm = MNIST1DDataModule(root=tmp_path / "a", split_seed=seed, val_size=40, **COMMON)
        dm.setup()
        splits.append(_rows(dm.val_set.tensors[0]))
        assert len(splits[-1]) == 40 and not splits[-1] & _rows(dm.train_set.tensors[0])
    assert splits[0] == splits[1] and splits[0] != splits[2]
    # generating seeds NumPy's and Python's global RNGs inside mnist1d; the caller's streams continue
    np.random.seed(123)
    random.seed(123)
    expected = (np.random.rand(3), random.random())
    np.random.seed(123)
    random.seed(123)
    MNIST1DDataModule(root=tmp_path / "b", **COMMON).prepare_data()
    assert np.array_equal(np.random.rand(3), expected[0]) and random.random() == expected[1]


def test_cache_is_reused_and_a_bad_one_regenerated(small_args, tmp_path, monkeypatch, caplog):
    dm = MNIST1DDataModule(root=tmp_path, val_size=20, **COMMON)
    dm.prepare_data()
    path = tmp_path / "MNIST1D" / m1d.CACHE_NAME
    good = path.read_bytes()
    assert not list(path.parent.glob(".*tmp"))  # the atomic write left no temp file
    calls = []
    original = m1d.generate_mnist1d
    monkeypatch.setattr(m1d, "generate_mnist1d", lambda args: (calls.append(1), original(args))[1])
    dm.prepare_data()
    assert calls == []  # a valid cache is not generated again
    # corrupt (one value changed, the stored checksum kept), truncated, other arguments, pickled object:
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    flipped = dict(arrays, x=arrays["x"].copy())
    flipped["x"][0, 0] += 1.0
    def npz(**a) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, **a)
        return buf.getvalue()

    foreign = dict(arrays, args=np.array(json.dumps(dict(small_args, seed=7), sort_keys=True)))
    pickled = dict(arrays, x=np.array([{"a": 1}], dtype=object))
    bad_files = {"corrupt": npz(**flipped), "truncated": good[: len(good) // 2], "arguments": npz(**foreign),
                 "pickle": npz(**pickled)}
    for why, data in bad_files.items():
        path.write_bytes(data)
        with pytest.raises(ValueError):
            m1d.load_cache(path, small_args)
        caplog.clear()
        dm2 = MNIST1DDataModule(root=tmp_path, val_size=20, **COMMON)
        dm2.prepare_data()
        assert any("generating it again" in r.getMessage() for r in caplog.records), why
        assert path.read_bytes() == good, why  # the same arrays again
        dm2.setup()
    assert len(calls) == len(bad_files)
    # setup never generates: without a cache it says to run prepare_data
    path.unlink()
    with pytest.raises(ConfigError, match="prepare_data"):
        MNIST1DDataModule(root=tmp_path, val_size=20, **COMMON).setup()


def test_bad_options_are_one_line_errors(small_args, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"data\.root") as e:
        MNIST1DDataModule(root=blocker, **COMMON).prepare_data()
    assert "not a folder" in str(e.value).splitlines()[0]
    with pytest.raises(ConfigError, match=r"data\.seq_length=40"):
        MNIST1DDataModule(root=tmp_path, seq_length=50, **COMMON)
    with pytest.raises(ConfigError, match="in_channels must be 1"):
        MNIST1DDataModule(root=tmp_path, in_channels=3, **COMMON)
    dm = MNIST1DDataModule(root=tmp_path, val_size=400, **COMMON)
    dm.prepare_data()
    with pytest.raises(ConfigError, match="val_size=400 must be smaller than the 400"):
        dm.setup()


# ---------------------------------------------------------------------------------------------- models
class _BenchmarkCNN(nn.Module):
    """The benchmark's CNN as the MNIST-1D paper describes it: conv 5/3/3 (stride 2, padding 1, 25
    channels), ReLU after each, a linear classifier on the flattened 25 x 5 features."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(1, 25, 5, 2, 1), nn.Conv1d(25, 25, 3, 2, 1), nn.Conv1d(25, 25, 3, 2, 1)])
        self.fc = nn.Linear(125, 10)

    def forward(self, x):
        for conv in self.convs:
            x = conv(x).relu()
        return self.fc(x.flatten(1))


def test_cnn1d_is_the_benchmarks_cnn():
    ref = _BenchmarkCNN().eval()
    model = create_model("cnn1d").eval()
    n = sum(p.numel() for p in model.parameters())
    assert n == sum(p.numel() for p in ref.parameters()) == 5210
    model.load_state_dict(dict(zip(model.state_dict(), ref.state_dict().values())))
    x = torch.randn(4, 1, 40)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), rtol=0, atol=0)
    assert model(x).shape == (4, 10)


@pytest.mark.parametrize("routing", ["softmax", "sigmoid", "omni"])
def test_dy_cnn1d_routing_and_which_convs_are_dynamic(routing):
    model = create_model("dy_cnn1d", routing=routing)
    layers = dict(dynamic_layers(model))
    assert list(layers) == ["conv2", "conv3"] and type(model.conv1) is nn.Conv1d
    assert all(isinstance(m, DynamicConv1d) and m.num_kernels == 4 and m.routing.kind == routing
               for m in layers.values())
    assert model(torch.randn(3, 1, 40)).shape == (3, 10)
    with pytest.raises(TypeError, match="dy_cnn1d"):
        create_model("cnn1d", routing=routing)


def test_dy_cnn1d_with_one_kernel_computes_the_static_cnn():
    """K = 1 softmax attention is 1 for every input: the same function as cnn1d with those kernels."""
    static = create_model("cnn1d").eval()
    dyn = create_model("dy_cnn1d", num_kernels=1).eval()
    sd = dict(static.state_dict())
    for name in ("conv2", "conv3"):
        getattr(dyn, name).weight.data.copy_(sd[f"{name}.weight"].unsqueeze(0))
        getattr(dyn, name).bias.data.copy_(sd[f"{name}.bias"].unsqueeze(0))
    for name in ("conv1.weight", "conv1.bias", "linear.weight", "linear.bias"):
        dyn.get_parameter(name).data.copy_(sd[name])
    x = torch.randn(5, 1, 40)
    with torch.no_grad():
        torch.testing.assert_close(dyn(x), static(x), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_trains_dy_cnn1d_well_above_chance(cli_data_root, tmp_path):
    """An 8-epoch run (112 steps) of the routing study's softmax arm from the command line."""
    run_cli("train", "experiment=mnist1d_routing", "+arm=cnn1d_softmax", "trainer.max_epochs=8",
            "data.val_size=200", "callbacks.temperature.epochs=2", "logger=csv", cwd=tmp_path,
            env={"DYCONV_DATA_DIR": str(cli_data_root), "OMP_NUM_THREADS": "1"})
    run = tmp_path / "logs" / "mnist1d" / "runs" / "cnn1d_softmax-seed0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["test/acc"] > 0.3  # chance is 0.1 (10 balanced classes; 400 test sequences)
    assert metrics["model/params"] == 16978
    assert 0 < metrics["model/gflops"] < 1e-3  # counted on one (1, 40) sequence
    assert 0.0 < metrics["attention/entropy_ratio"] <= 1.0
