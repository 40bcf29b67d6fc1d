"""Giving freed memory back to the system during a training step (opt-in).

With glibc's default allocator, blocks under its dynamic mmap threshold come from the heap, and
that threshold rises to the size of every mapped block freed (up to 32 MB). A training step on a
large graph allocates and frees many ``[N, H, C]`` tensors of tens of MB; after the first step they
all come from the heap, and pages freed between blocks still in use stay resident. The process's
peak resident memory then runs well above its live tensors (TransformerConv at 50k nodes, 1M
edges, 4 heads x 32: 0.42-0.52 GB resident at peak for about 0.3 GB live).

With ``GTLIB_RELEASE_MEMORY=1`` the compiled attention kernel hands the heap's free pages back
(glibc's ``malloc_trim``, which also releases free pages inside the heap) at the start of each
backward on a large problem, where the forward's temporaries have just been freed and the
backward's are about to be allocated. That brings the peak close to the live tensors (0.30-0.34 GB
above), at a price: the released pages are faulted in again when reused, about +20% time per step
on that layer. It never touches memory in use, so no result changes. Off by default; a no-op where
``malloc_trim`` does not exist (other C libraries, macOS, Windows).

The opposite trade, speed for resident memory, is the **output pool** (opt-in,
``GTLIB_OUTPUT_POOL``). glibc maps every block above 32 MB afresh and unmaps it when it is freed,
so each step on a large problem (a point cloud of a million points: ``[N, H, C]`` outputs of
512 MB) faults in every page of every large output again, about 0.12 s per 512 MB on this
project's 2-core VM and more when the first writes are scattered. With the pool on, the compiled
kernels' outputs of at least 32 MB come from blocks that earlier outputs freed (a block of the
size or up to 1/4 larger), mapped once in 2 MB units and advised for transparent huge pages; a
freed output's block waits in the pool for the next call, up to the pool's limit of idle bytes
(beyond it the oldest idle blocks are unmapped). In repeated steps of the same shapes the step's
peak is unchanged (a block is reused only after its tensor is freed); what changes is that idle
blocks stay resident between steps, like PyTorch's CUDA caching allocator, until
:func:`release_output_pool`; idle blocks that no later output fits (other shapes) add to the
resident memory, up to the limit. Values: ``0`` (default, off), ``1`` (a limit of a quarter of
the memory the process may use: the machine's, or its cgroup's limit), or a limit of at least
32 MB in bytes with an optional ``K``, ``M`` or ``G`` suffix (``4G``). Results are bitwise the
same either way. Pooled outputs are tensors over memory gtlib mapped: they cannot be resized
(``resize_``, ``out=`` of another shape), and PyTorch's memory profiler does not count them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import os
import threading

ENV_VAR = "GTLIB_RELEASE_MEMORY"
POOL_ENV_VAR = "GTLIB_OUTPUT_POOL"
# a kernel call moving at least this many bytes of tensors releases free memory around it
MIN_BYTES = 64 << 20
_SETTINGS = {"0": False, "off": False, "false": False, "1": True, "on": True, "true": True}
_lock = threading.Lock()
_trim = None
_loaded = False


def enabled() -> bool:
    """Whether :func:`release` gives memory back in this process (``GTLIB_RELEASE_MEMORY=1`` and a
    C library with ``malloc_trim``)."""
    setting = os.environ.get(ENV_VAR, "0").strip().lower()
    if setting not in _SETTINGS:
        raise ValueError(f"{ENV_VAR} must be '0' or '1', got {setting!r}")
    return _SETTINGS[setting] and _malloc_trim() is not None


def release(nbytes: int) -> bool:
    """Gives the heap's free pages back to the system when a kernel call moves ``nbytes`` bytes
    of tensors (at least :data:`MIN_BYTES`) and :func:`enabled`. Returns whether it did."""
    if nbytes < MIN_BYTES or not enabled():
        return False
    _malloc_trim()(0)
    return True


def _malloc_trim():
    global _trim, _loaded
    if not _loaded:
        with _lock:
            if not _loaded:
                try:
                    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                    _trim = libc.malloc_trim
                    _trim.argtypes = [ctypes.c_size_t]
                    _trim.restype = ctypes.c_int
                except (OSError, AttributeError):  # not glibc
                    _trim = None
                _loaded = True
    return _trim


# ------------------------------------------------------------------------------- output pool
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
# the smallest output the pool serves (glibc's heap reuses smaller blocks by itself); also the
# smallest limit that keeps anything
POOL_MIN_BYTES = 32 << 20
_pools: dict[int, object] = {}  # id -> loaded extension module
_pool_settings: dict[int, tuple] = {}  # id -> (raw setting, min bytes) it was configured with


def output_pool_limit() -> int:
    """The most idle bytes the compiled kernels' output pool keeps, from ``GTLIB_OUTPUT_POOL``
    (0: off, the default)."""
    raw = os.environ.get(POOL_ENV_VAR, "0")
    setting = raw.strip().upper()
    if setting in ("0", "OFF", "FALSE", ""):
        return 0
    if setting in ("1", "ON", "TRUE"):
        return max(_physical_memory() // 4, POOL_MIN_BYTES)
    number, unit = (setting[:-1], setting[-1]) if setting[-1] in _UNITS else (setting, "")
    try:
        value = float(number) * _UNITS[unit]
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not POOL_MIN_BYTES <= value < 2**63:
        raise ValueError(
            f"{POOL_ENV_VAR} must be 0, 1 or a limit of at least 32M (bytes, or with K, M or G: "
            f"4G, 512M), got {raw!r}"
        )
    return int(value)


def configure_pool(module) -> None:
    """Gives a compiled extension's output pool the limit of ``GTLIB_OUTPUT_POOL`` (only when the
    setting changed since the last call for that module)."""
    if module is None or not hasattr(module, "pool_configure"):
        return
    key, setting = id(module), (os.environ.get(POOL_ENV_VAR, "0"), POOL_MIN_BYTES)
    if _pool_settings.get(key) != setting:
        limit = output_pool_limit()
        with _lock:
            module.pool_configure(limit, POOL_MIN_BYTES)
            _pools[key], _pool_settings[key] = module, setting


def release_output_pool() -> None:
    """Unmaps every idle block of the output pool (the memory goes back to the system; outputs
    in use are untouched)."""
    for module in list(_pools.values()):
        module.pool_release()


def output_pool_stats() -> dict:
    """The output pool as the kernels last configured it (the extensions may share one pool or
    have one each; summed): ``limit`` (bytes, per pool; 0: off), ``idle_bytes``, ``idle_blocks``,
    ``hits`` (outputs that reused a block) and ``misses`` (outputs that mapped a new one)."""
    stats = {"limit": 0, "idle_bytes": 0, "idle_blocks": 0, "hits": 0, "misses": 0}
    seen = set()
    for module in list(_pools.values()):
        pool, limit, idle_bytes, idle_blocks, hits, misses = module.pool_stats()
        if pool in seen:  # the extensions share one pool
            continue
        seen.add(pool)
        stats["limit"] = max(stats["limit"], limit)
        stats["idle_bytes"] += idle_bytes
        stats["idle_blocks"] += idle_blocks
        stats["hits"] += hits
        stats["misses"] += misses
    return stats


def _physical_memory() -> int:
    """The memory this process may use: the machine's, or its cgroup's limit when lower."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # no sysconf: 16 GB (a limit of 4 GB)
        total = 16 << 30
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                value = f.read().strip()
        except OSError:
            continue
        if value.isdigit():
            total = min(total, int(value))
    return total
