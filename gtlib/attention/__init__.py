"""The sparse-attention core: patterns (who attends to whom) and the engine (how scores are
formed and reduced), with ``sparse_attention`` and ``segment_softmax`` as its common cases."""

from gtlib.attention.cache import PatternCache, pattern_cache
from gtlib.attention.core import sparse_attention
from gtlib.attention.engine import Edges, attend
from gtlib.attention.neighbors import minimum_image
from gtlib.attention.pattern import Pattern
from gtlib.attention.softmax import segment_softmax

__all__ = [
    "Edges",
    "Pattern",
    "PatternCache",
    "attend",
    "minimum_image",
    "pattern_cache",
    "segment_softmax",
    "sparse_attention",
]
