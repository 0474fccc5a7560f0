"""``verify_export``: run an exported file (onnxruntime, ``torch.export.load``,
``torch.jit.load``) and compare its outputs with PyTorch's."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dyconv.errors import ConfigError
from dyconv.export.exporter import INPUT_NAME, ExportError

__all__ = ["VERIFY_BATCHES", "verify_export"]

#: The batch sizes an any-batch export is verified at.
VERIFY_BATCHES = (1, 5)


def _load_runner(path: Path, fmt: str) -> Any:
    """A callable ``numpy/tensor batch -> tensor`` running the exported file."""
    if fmt == "onnx":
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ConfigError(
                "verifying an ONNX export needs onnxruntime: pip install onnxruntime (or pass verify=false)"
            ) from e
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return lambda x: torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])
    if fmt == "pt2":
        module = torch.export.load(str(path)).module()
        return lambda x: module(x)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit.load is deprecated"
        scripted = torch.jit.load(str(path), map_location="cpu")
    return lambda x: scripted(x)


def verify_export(
    model: nn.Module,
    path: str | os.PathLike[str],
    fmt: str,
    shape: tuple[int, ...],
    *,
    batches: tuple[int, ...] = VERIFY_BATCHES,
    rtol: float = 1e-3,
    atol: float = 1e-4,
    seed: int = 0,
) -> dict[int, float]:
    """Max abs difference between the exported file's and PyTorch's outputs per batch size;
    raises :class:`ExportError` if any element differs beyond ``atol * min(1, s) + rtol *
    |expected|``, ``s`` the largest ``|expected|``: outputs far below ``atol`` (an untrained
    network in eval mode can give logits of 1e-14) are compared relative to their scale, so a
    wrong graph cannot pass because every output is tiny."""
    run = _load_runner(Path(path), fmt)
    gen = torch.Generator().manual_seed(seed)
    diffs: dict[int, float] = {}
    for b in batches:
        x = torch.randn((b, *shape), generator=gen)
        with torch.no_grad():
            expected = model(x)
            got = run(x)
        if got.shape != expected.shape:
            raise ExportError(f"{path} returns shape {tuple(got.shape)} at batch {b}, PyTorch {tuple(expected.shape)}")
        diff = (got.float() - expected.float()).abs()
        diffs[b] = float(diff.max())
        magnitude = expected.float().abs()
        scale = float(magnitude.max()) if expected.numel() else 0.0
        bound = atol * min(1.0, scale) + rtol * magnitude
        if not bool((diff <= bound).all()) or not math.isfinite(diffs[b]):
            scaled = f" x {scale:.3g} (the outputs' largest magnitude)" if scale < 1.0 else ""
            raise ExportError(
                f"{path} differs from PyTorch at batch {b}: max abs difference {diffs[b]:.3g} "
                f"(allowed atol={atol}{scaled} + rtol={rtol} x |output|); the export is not usable as is"
            )
    return diffs


