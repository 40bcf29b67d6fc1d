"""The sparse-attention core: patterns, segment softmax and sparse attention."""

from gtlib.attention.core import sparse_attention
from gtlib.attention.pattern import Pattern
from gtlib.attention.softmax import segment_softmax

__all__ = ["Pattern", "segment_softmax", "sparse_attention"]
