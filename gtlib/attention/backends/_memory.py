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
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading

ENV_VAR = "GTLIB_RELEASE_MEMORY"
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
