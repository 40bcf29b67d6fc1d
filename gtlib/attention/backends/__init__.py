"""Backends of the attention engine: reference (gather/scatter), chunked streaming, sparse-matrix,
dense blocks (SDPA) and the fused CPU kernel (compiled C++).

The compiled kernels' output pool (opt-in, ``GTLIB_OUTPUT_POOL``, see
:mod:`gtlib.attention.backends._memory`) is inspected with :func:`output_pool_stats` and emptied
with :func:`release_output_pool`."""

from gtlib.attention.backends._memory import output_pool_stats, release_output_pool

__all__ = ["output_pool_stats", "release_output_pool"]
