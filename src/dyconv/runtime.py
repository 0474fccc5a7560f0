"""Process-level CPU tuning that dynamic convolutions benefit from.

glibc's malloc serves large blocks (> 32 MiB at most) with ``mmap`` and returns them with
``munmap``, so every forward pass that builds per-sample kernels (``B`` copies of a weight,
hundreds of MB for a 512-channel layer) page-faults all of that memory in again, which can cost
more than the convolution itself (docs/benchmark_layer.md measures it). jemalloc/tcmalloc
(``LD_PRELOAD``) avoid it; :func:`tune_malloc` does the same with glibc's own knobs, at the price
of the process keeping its peak heap instead of returning freed memory to the OS (what a CUDA
caching allocator does for GPU memory). The entry points call it when ``tune_malloc=true``; a
library user need not: the layers reuse their per-sample kernel memory themselves
(:class:`dyconv.layers.KernelWorkspace`), which recovers part of the gap
(docs/benchmark_layer.md).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from dyconv.layers.dynamic_conv import large_alloc_cheap

__all__ = ["large_alloc_cheap", "tune_malloc"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_TUNED = False


def tune_malloc() -> bool:
    """Keep freed heap memory for reuse (glibc only). Returns True if applied.

    Sets ``M_MMAP_MAX=0`` (no mmap-backed blocks) and a 2 GiB trim threshold, the runtime
    equivalent of ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``. A no-op returning
    False on non-glibc platforms (macOS, Windows, musl).
    """
    global _TUNED
    if _TUNED:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version") or not hasattr(libc, "mallopt"):  # glibc only
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _TUNED = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    if _TUNED:
        # The process now behaves as if started with these: the layers (which import nothing of
        # dyconv) read the state from here (dyconv.layers.dynamic_conv.large_alloc_cheap).
        os.environ["MALLOC_MMAP_MAX_"] = "0"
        os.environ["MALLOC_TRIM_THRESHOLD_"] = str(2**31 - 1)
    return _TUNED
