"""One bounded, picklable cache of patterns (and other structures derived from tensors).

Layers that turn an input tensor (an ``edge_index``, a ``batch`` vector, point positions) into a
:class:`~gtlib.attention.Pattern` call :meth:`PatternCache.get` on the module-level
:data:`pattern_cache`, so that repeated forward passes on the same, unmodified tensor build the
pattern once, every layer of a model shares it, and the memory it holds stays bounded.

An entry is keyed on

- the *identity* of its source tensors (``id``) and their version counters (``._version``, which
  every in-place change increments), so a new tensor or an in-place change misses; the sources are
  held by weak reference, so an entry dies with its source and never keeps it alive;
- a hashable ``key`` tuple of everything else the value depends on (sizes, options, device). By
  convention its first item names the builder (e.g. ``("gps.full", num_nodes, device)``), so two
  builders over one source never collide.

``sources=()`` gives a purely structural entry (e.g. a window pattern of a grid shape), which
lives until it is the least recently used of more than ``max_size`` entries.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any, TypeVar

from torch import Tensor

__all__ = ["PatternCache", "pattern_cache"]

T = TypeVar("T")
DEFAULT_MAX_SIZE = 64


class PatternCache:
    """A least-recently-used cache keyed on source tensors (identity and version) and a key.

    Args:
        max_size: the most entries kept; the least recently used entry goes first.

    Pickling (or deep-copying) a cache, or an object that holds one, gives an empty cache of the
    same ``max_size``: entries hold weak references, which do not pickle, and are cheap to
    rebuild.
    """

    def __init__(self, max_size: int = DEFAULT_MAX_SIZE) -> None:
        if isinstance(max_size, bool) or not isinstance(max_size, int):
            raise TypeError(f"max_size must be an int, got {type(max_size).__name__}")
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        self.max_size = max_size
        self._init_state()

    def _init_state(self) -> None:
        # (source ids, key) -> (weak refs to the sources, their versions, value)
        self._entries: OrderedDict[tuple, tuple[tuple[weakref.ref, ...], tuple[int, ...], Any]]
        self._entries = OrderedDict()
        self._lock = threading.RLock()
        self.hits = 0
        self.misses = 0

    def get(
        self,
        sources: Tensor | Any | tuple | list,
        key: Hashable,
        build: Callable[[], T],
    ) -> T:
        """The cached value for ``(sources, key)``, or ``build()`` remembered under it.

        Args:
            sources: a tensor, or a tuple/list of tensors (any weakly referenceable objects; a
                ``_version`` attribute, when present, is part of the key), or ``()``.
            key: a hashable description of everything else the value depends on (sizes,
                options, device), starting with the builder's name by convention.
            build: makes the value on a miss (called outside the cache's lock).

        Raises:
            TypeError: ``key`` is not hashable or a source cannot be weakly referenced.
        """
        sources = _as_tuple(sources)
        if not callable(build):
            raise TypeError(f"build must be callable, got {type(build).__name__}")
        try:
            hash(key)
        except TypeError as error:
            raise TypeError(f"key must be hashable, got {key!r}") from error
        ids = tuple(id(source) for source in sources)
        versions = tuple(_version(source) for source in sources)
        entry_key = (ids, key)
        with self._lock:
            entry = self._entries.get(entry_key)
            if entry is not None:
                refs, cached_versions, value = entry
                alive = all(ref() is source for ref, source in zip(refs, sources))
                if alive and cached_versions == versions:
                    self._entries.move_to_end(entry_key)
                    self.hits += 1
                    return value
            self.misses += 1

        refs = tuple(_weak_ref(source, self._forget_callback(entry_key)) for source in sources)
        value = build()
        with self._lock:
            self._entries[entry_key] = (refs, versions, value)
            self._entries.move_to_end(entry_key)
            while len(self._entries) > self.max_size:
                self._entries.popitem(last=False)
        return value

    def _forget_callback(self, entry_key: tuple) -> Callable[[weakref.ref], None]:
        cache_ref = weakref.ref(self)

        def forget(dead_ref: weakref.ref) -> None:
            cache = cache_ref()
            if cache is None:
                return
            with cache._lock:
                entry = cache._entries.get(entry_key)
                if entry is not None and any(ref is dead_ref for ref in entry[0]):
                    del cache._entries[entry_key]

        return forget

    def clear(self) -> None:
        """Drops every entry (and resets the hit and miss counters)."""
        with self._lock:
            self._entries.clear()
            self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __getstate__(self) -> dict:
        return {"max_size": self.max_size}

    def __setstate__(self, state: dict) -> None:
        self.max_size = state["max_size"]
        self._init_state()

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}(size={len(self)}, max_size={self.max_size}, "
            f"hits={self.hits}, misses={self.misses})"
        )


def _as_tuple(sources) -> tuple:
    if isinstance(sources, (tuple, list)):
        return tuple(sources)
    if sources is None:
        raise TypeError("sources must be a tensor, a tuple of tensors or (), got None")
    return (sources,)


def _version(source) -> int:
    version = getattr(source, "_version", 0)
    return version if isinstance(version, int) else 0


def _weak_ref(source, callback: Callable[[weakref.ref], None]) -> weakref.ref:
    try:
        return weakref.ref(source, callback)
    except TypeError as error:
        raise TypeError(
            f"sources must be tensors or other weakly referenceable objects, got "
            f"{type(source).__name__}"
        ) from error


#: The cache every layer of gtlib uses.
pattern_cache = PatternCache()
