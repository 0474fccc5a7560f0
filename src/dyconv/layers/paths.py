"""How a dynamic layer computes: the exact strategies and the rule that picks one per call."""

from typing import List

__all__ = ["GROUPED_MAX_BYTES_UNTUNED", "MIXTURE_MAX_PIXELS", "PATHS", "choose_path"]

#: Computation strategies. ``auto`` picks one per call with :func:`choose_path`.
PATHS = ("auto", "grouped", "mixture", "bmm")

#: Output maps smaller than this many positions use ``mixture`` for dense convs (measured in 2-D).
MIXTURE_MAX_PIXELS = 32
#: Per-sample kernels larger than this are slow to allocate under glibc's default malloc.
GROUPED_MAX_BYTES_UNTUNED = 128 * 2**20


def choose_path(
    batch: int,
    in_channels: int,
    out_channels: int,
    groups: int,
    kernel_size: List[int],
    out_hw: int,
    cheap_alloc: bool = True,
    mixture_max_pixels: int = MIXTURE_MAX_PIXELS,
    grouped_max_bytes_untuned: int = GROUPED_MAX_BYTES_UNTUNED,
    spatial_attention: bool = False,
) -> str:
    """Pick the cheapest exact formulation for one call; the rule the ``auto`` path follows.

    - ``grouped``: aggregate one kernel per sample (``B*K*Cout*Cin/g*prod(kernel)`` MACs) and
      run ONE convolution over the batch folded into groups. Cost ~ static conv + aggregation;
      the best choice on maps of 7x7 and larger and for depthwise/grouped convs. At batch 1 it
      is one ordinary conv with the aggregated kernel.
    - ``mixture``: the K kernels as one dense conv with ``K*Cout`` outputs, outputs mixed by
      ``pi``: K times the static FLOPs but no per-sample kernels. Wins for dense convs on maps
      under ``MIXTURE_MAX_PIXELS`` positions (4x4, 2x2), where ``B`` copies of a large kernel
      cost more than the convolution itself. Not exact with a per-sample spatial attention
      (ODConv), so never chosen then.
    - ``bmm``: per-sample kernels applied by batched matmul, per group (pointwise convs
      directly, others via unfold): the best choice for dense pointwise convs (MobileNet
      expand/project).

    ``out_hw`` is the number of output positions (``H*W``; ``L`` in 1-D, ``D*H*W`` in 3-D).
    ``cheap_alloc`` is False on a CPU process whose malloc returns big blocks to the OS (see
    :mod:`dyconv.runtime`); then per-sample kernels over ``GROUPED_MAX_BYTES_UNTUNED`` bytes
    make ``grouped`` page-fault-bound and ``mixture`` is faster.
    Measured with ``scripts/benchmark_layer.py`` (README table).
    """
    if batch == 1:
        return "grouped"
    taps = 1
    for k in kernel_size:
        taps *= k
    if groups == 1:
        if taps == 1:
            return "bmm"
        if not spatial_attention:
            if out_hw < mixture_max_pixels:
                return "mixture"
            if not cheap_alloc and 4 * batch * out_channels * in_channels * taps > grouped_max_bytes_untuned:
                return "mixture"
    return "grouped"
