"""MNIST-1D (Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024; Apache-2.0).

Ten 1-D digit templates passed through random padding, scaling, translation, correlated and iid
noise and shear, resampled to sequences of length 40. The benchmark's data are generated offline
by the ``mnist1d`` package with its default arguments (``mnist1d.data.get_dataset_args()``:
5,000 sequences, the first 4,000 train and the last 1,000 test, generator seed 42), in a few
seconds, so nothing is downloaded. The arrays are cached under ``root/MNIST1D/`` as one ``.npz``
(no pickle) that records the generator arguments and a SHA-256 of the arrays; a cache that does
not match (corrupt, truncated, other arguments) is regenerated. A seeded validation holdout
(``val_size``) comes out of the 4,000 training sequences; test is the benchmark's 1,000.
Samples are ``(1, 40)`` float32 tensors, the layout of ``nn.Conv1d``.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import TensorDataset

from dyconv.datamodules.base import BaseDataModule
from dyconv.datamodules.download import check_data_root, resolve_root
from dyconv.errors import ConfigError
from dyconv.utils.files import atomic_write_bytes

__all__ = ["CACHE_NAME", "MNIST1DDataModule", "generate_mnist1d", "load_cache", "mnist1d_args"]

log = logging.getLogger(__name__)

#: The cache file under ``root/MNIST1D/``.
CACHE_NAME = "mnist1d_default.npz"
_ARRAYS = ("x", "y", "x_test", "y_test")
_LAYOUT = """\
<root>/MNIST1D/
  mnist1d_default.npz   (generated here by the mnist1d package; no download)"""


def _import_mnist1d() -> Any:
    try:
        import mnist1d.data
    except ImportError as e:  # pragma: no cover - mnist1d is a runtime dependency
        raise ConfigError("data=mnist1d needs the mnist1d package: pip install mnist1d") from e
    return mnist1d.data


def mnist1d_args() -> dict[str, Any]:
    """The benchmark's default generator arguments (``get_dataset_args()``, without its download URL)."""
    args = dict(_import_mnist1d().get_dataset_args(as_dict=True))
    args.pop("url", None)
    return args


def generate_mnist1d(args: dict[str, Any]) -> dict[str, np.ndarray]:
    """The four arrays ``make_dataset`` builds from ``args``. The generator seeds NumPy's and
    Python's global RNGs; both are restored afterwards, so generating leaves a run's random
    stream untouched."""
    from mnist1d.utils import ObjectView

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = _import_mnist1d().make_dataset(ObjectView(dict(args)))
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {"x": np.ascontiguousarray(data["x"], dtype=np.float64),
            "y": np.ascontiguousarray(data["y"], dtype=np.int64),
            "x_test": np.ascontiguousarray(data["x_test"], dtype=np.float64),
            "y_test": np.ascontiguousarray(data["y_test"], dtype=np.int64)}


def _digest(arrays: dict[str, np.ndarray], args_json: str) -> str:
    """SHA-256 of the arguments and of each array's dtype, shape and bytes."""
    h = hashlib.sha256(args_json.encode())
    for name in _ARRAYS:
        a = arrays[name]
        h.update(f"{name}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _cache_bytes(arrays: dict[str, np.ndarray], args: dict[str, Any]) -> bytes:
    args_json = json.dumps(args, sort_keys=True)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays, args=np.array(args_json), sha256=np.array(_digest(arrays, args_json)))
    return buffer.getvalue()


def load_cache(path: Path, args: dict[str, Any]) -> dict[str, np.ndarray]:
    """The arrays of the cache at ``path`` if it holds ``args``' data intact (never unpickles).

    Raises:
        ValueError: why the file is not a valid cache for ``args`` (one line).
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            stored = {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise ValueError(f"unreadable ({type(e).__name__}: {e})") from None
    missing = [k for k in (*_ARRAYS, "args", "sha256") if k not in stored]
    if missing:
        raise ValueError(f"not an MNIST-1D cache (no {', '.join(missing)})")
    args_json = str(stored["args"])
    if args_json != json.dumps(args, sort_keys=True):
        raise ValueError(f"generated with other arguments ({args_json})")
    arrays = {k: stored[k] for k in _ARRAYS}
    if str(stored["sha256"]) != _digest(arrays, args_json):
        raise ValueError("its arrays do not match their SHA-256 (corrupt)")
    return arrays


class MNIST1DDataModule(BaseDataModule):
    """MNIST-1D (10 classes, sequences of length 40 as ``(1, 40)``): train / seeded val holdout
    of the benchmark's 4,000 training sequences, its 1,000 test sequences.

    Args:
        root: folder that holds (or receives) ``MNIST1D/mnist1d_default.npz``.
        val_size: training sequences held out (seeded by ``split_seed``) for validation.
        split_seed: seed of that holdout.
        seq_length: the sequence length (40, the benchmark's; checked against the data).
        num_classes / in_channels: 10 / 1 (checked against the data).
        **kwargs: :class:`BaseDataModule` arguments (global ``batch_size``, workers, ...).
    """

    NAME = "MNIST1D"

    def __init__(
        self,
        *,
        root: str | os.PathLike[str] = "datasets",
        val_size: int = 400,
        split_seed: int = 0,
        seq_length: int = 40,
        num_classes: int = 10,
        in_channels: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, image_size=seq_length, **kwargs)
        if in_channels != 1:
            raise ConfigError(f"data.in_channels must be 1 for MNIST-1D (one signal per sequence), got {in_channels}")
        if val_size < 1:
            raise ConfigError(f"data.val_size must be >= 1, got {val_size}")
        self.root = resolve_root(root)
        self.val_size = int(val_size)
        self.split_seed = int(split_seed)
        self.seq_length = int(seq_length)
        self.args = mnist1d_args()
        if self.seq_length != int(self.args["final_seq_length"]):
            raise ConfigError(
                f"data.seq_length={self.seq_length} but the MNIST-1D benchmark's sequences have length "
                f"{self.args['final_seq_length']}; set data.seq_length={self.args['final_seq_length']}"
            )

    @property
    def input_shape(self) -> tuple[int, int]:
        """One sample's shape ``(channels, length)`` (what FLOP counts and exports feed the model)."""
        return (self.in_channels, self.seq_length)

    @property
    def cache_path(self) -> Path:
        return self.root / self.NAME / CACHE_NAME

    def _cached(self) -> dict[str, np.ndarray] | None:
        """The cache's arrays, or None when it is missing or invalid (why is logged)."""
        path = self.cache_path
        if not path.is_file():
            return None
        try:
            return load_cache(path, self.args)
        except ValueError as e:
            log.warning("MNIST-1D cache %s is not usable (%s); generating it again", path, e)
            return None

    def prepare_data(self) -> None:
        """Generate the arrays and write the cache (atomically) unless a valid one is there."""
        folder = self.cache_path.parent
        check_data_root(self.root, layout=_LAYOUT, folders=(folder,))
        if self._cached() is not None:
            return
        check_data_root(self.root, layout=_LAYOUT, folders=(folder,),
                        writes=f"the generated MNIST-1D arrays are cached in {self.cache_path}",
                        read_only="data.root" in self.read_only)
        arrays = generate_mnist1d(self.args)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.cache_path, _cache_bytes(arrays, self.args))
        log.info("MNIST-1D: generated with the mnist1d package's default arguments, cached in %s", self.cache_path)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        check_data_root(self.root, layout=_LAYOUT, folders=(self.cache_path.parent,))
        arrays = self._cached()
        if arrays is None:
            raise ConfigError(
                f"no valid MNIST-1D cache at {self.cache_path}: run prepare_data() first (the training "
                "entry point does), which generates it"
            )
        x, y = arrays["x"], arrays["y"]
        if x.shape[1:] != (self.seq_length,) or arrays["x_test"].shape[1:] != (self.seq_length,):
            raise ConfigError(f"MNIST-1D sequences have shape {x.shape[1:]}, expected ({self.seq_length},)")
        self.check_num_classes(int(max(y.max(), arrays["y_test"].max())) + 1, f"MNIST-1D in {self.cache_path}")
        n = len(y)
        if self.val_size >= n:
            raise ConfigError(f"data.val_size={self.val_size} must be smaller than the {n} training sequences")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed))
        idx_val, idx_train = perm[: self.val_size], perm[self.val_size :]
        xs = torch.from_numpy(x).float().unsqueeze(1)
        ys = torch.from_numpy(y).long()
        self.train_set = TensorDataset(xs[idx_train], ys[idx_train])
        self.val_set = TensorDataset(xs[idx_val], ys[idx_val])
        self.test_set = TensorDataset(torch.from_numpy(arrays["x_test"]).float().unsqueeze(1),
                                      torch.from_numpy(arrays["y_test"]).long())
