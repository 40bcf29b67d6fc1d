"""The one pattern cache: identity and version keys, weak sources, LRU bound, pickling."""

from __future__ import annotations

import copy
import gc
import pickle

import pytest
import torch

from gtlib.attention import Pattern
from gtlib.attention.cache import PatternCache, pattern_cache


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, value=None):
        def build():
            self.calls += 1
            return object() if value is None else value

        return build


def test_hit_for_the_same_tensor_miss_for_another_or_another_key():
    cache, count = PatternCache(), Counter()
    source = torch.arange(4)
    first = cache.get(source, ("k", 1), count())
    assert cache.get(source, ("k", 1), count()) is first
    assert cache.get((source,), ("k", 1), count()) is first  # a tuple of one source
    assert cache.get(source.clone(), ("k", 1), count()) is not first  # another object
    assert cache.get(source, ("k", 2), count()) is not first  # another key
    assert count.calls == 3
    assert (cache.hits, cache.misses) == (2, 3)


def test_in_place_change_misses_and_replaces_the_entry():
    cache, count = PatternCache(), Counter()
    source = torch.arange(4)
    first = cache.get(source, ("k",), count())
    source.add_(1)
    second = cache.get(source, ("k",), count())
    assert second is not first and count.calls == 2
    assert cache.get(source, ("k",), count()) is second
    assert len(cache) == 1


def test_several_sources_and_structural_keys():
    cache, count = PatternCache(), Counter()
    a, b = torch.zeros(3), torch.ones(3)
    pair = cache.get((a, b), ("pair",), count())
    assert cache.get((a, b), ("pair",), count()) is pair
    assert cache.get((b, a), ("pair",), count()) is not pair  # order matters
    b.mul_(2)
    assert cache.get((a, b), ("pair",), count()) is not pair
    structural = cache.get((), ("grid", 4, 4), count())
    assert cache.get([], ("grid", 4, 4), count()) is structural
    assert count.calls == 4


def test_entry_dies_with_its_source_and_never_keeps_it_alive():
    cache = PatternCache()
    source = torch.arange(10)
    alive = torch.arange(3)
    cache.get(source, ("k",), lambda: "value")
    cache.get((source, alive), ("k",), lambda: "value")
    cache.get(alive, ("k",), lambda: "value")
    assert len(cache) == 3
    del source
    gc.collect()
    assert len(cache) == 1  # both entries that held the dead source are gone
    assert cache.get(alive, ("k",), lambda: "other") == "value"


def test_bounded_lru():
    cache, count = PatternCache(max_size=3), Counter()
    sources = [torch.tensor([i]) for i in range(5)]
    for source in sources[:3]:
        cache.get(source, ("k",), count())
    cache.get(sources[0], ("k",), count())  # most recently used now
    cache.get(sources[3], ("k",), count())  # evicts sources[1]
    assert len(cache) == 3 and count.calls == 4
    cache.get(sources[0], ("k",), count())
    assert count.calls == 4
    cache.get(sources[1], ("k",), count())
    assert count.calls == 5
    cache.clear()
    assert len(cache) == 0
    assert PatternCache().max_size == 64


def test_pickling_gives_an_empty_cache():
    cache = PatternCache(max_size=5)
    source = torch.arange(3)
    cache.get(source, ("k",), lambda: Pattern.full(num_nodes=3))
    cache.get((), ("s",), lambda: 1)
    for clone in (pickle.loads(pickle.dumps(cache)), copy.deepcopy(cache)):
        assert len(clone) == 0 and clone.max_size == 5
        assert clone.get(source, ("k",), lambda: "rebuilt") == "rebuilt"
    holder = {"cache": cache, "pattern": Pattern.full(num_nodes=2)}
    restored = pickle.loads(pickle.dumps(holder))
    assert len(restored["cache"]) == 0 and restored["pattern"].num_edges == 4
    assert len(cache) == 2  # the original keeps its entries


def test_modules_that_used_the_default_cache_pickle():
    from gtlib.nn import GPSConv, ParticleTransformer

    pattern_cache.clear()
    sizes = {"hidden_channels": 8, "num_layers": 1, "heads": 2, "ff_channels": 8}
    model = ParticleTransformer(0, 2, num_neighbors=3, **sizes)
    pos = torch.rand(10, 2)
    out = model(pos, box=1.0)
    layer = GPSConv(8, None, heads=2, norm=None).eval()
    x, batch = torch.randn(6, 8), torch.tensor([0, 0, 0, 1, 1, 1])
    expected = layer(x, torch.zeros(2, 0, dtype=torch.long), batch)
    assert len(pattern_cache) >= 2
    torch.testing.assert_close(pickle.loads(pickle.dumps(model))(pos, box=1.0), out)
    clone = pickle.loads(pickle.dumps(layer))
    torch.testing.assert_close(clone(x, torch.zeros(2, 0, dtype=torch.long), batch), expected)
    copy.deepcopy(model), copy.deepcopy(layer)


def test_bad_arguments():
    with pytest.raises(ValueError, match="max_size"):
        PatternCache(max_size=0)
    with pytest.raises(TypeError, match="max_size"):
        PatternCache(max_size=2.5)
    cache = PatternCache()
    with pytest.raises(TypeError, match="key"):
        cache.get((), ["unhashable"], lambda: 1)
    with pytest.raises(TypeError, match="sources"):
        cache.get(3, ("k",), lambda: 1)
    with pytest.raises(TypeError, match="sources"):
        cache.get(None, ("k",), lambda: 1)
