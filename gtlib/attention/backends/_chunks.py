"""Receiver-sorted edge chunks and reusable chunk buffers, shared by the chunked backends."""

from __future__ import annotations

import bisect

import torch
from torch import Tensor

from gtlib.attention.terms import ScoreSpec

# Per-chunk budget of E x H x C elements; ~16k edges at 4 heads x 32 channels stay in cache.
CHUNK_ELEMENTS = 1 << 21


def default_chunk_size(heads: int, channels: int) -> int:
    return max(256, CHUNK_ELEMENTS // max(1, heads * channels))


class Chunk:
    """A run ``[start, end)`` of receiver-sorted edges; receivers ``[first, stop)`` touch it."""

    __slots__ = ("start", "end", "size", "first", "stop", "src", "dst", "local", "offsets", "edges")

    def __init__(self, pattern, start: int, end: int, first: int, stop: int) -> None:
        self.start, self.end, self.size = start, end, end - start
        self.first, self.stop = first, stop
        self.src = pattern.col[start:end]
        self.dst = pattern.row[start:end]
        self.local = self.dst - first
        self.offsets = pattern.ptr[first : stop + 1].clamp(start, end) - start
        # the chunk's edges in the caller's order
        self.edges = slice(start, end) if pattern.perm is None else pattern.perm[start:end]

    def take(self, x: Tensor | None) -> Tensor | None:
        """The chunk's rows of a per-edge tensor given in the caller's edge order."""
        if x is None:
            return None
        if isinstance(self.edges, slice):
            return x[self.edges]
        return x.index_select(0, self.edges)

    def store(self, target: Tensor, values: Tensor) -> None:
        """Writes the chunk's per-edge ``values`` into ``target`` (caller's edge order)."""
        if isinstance(self.edges, slice):
            target[self.edges] = values
        else:
            target.index_copy_(0, self.edges, values)


class Workspace:
    """Chunk-sized ``[rows, H, C]`` buffers, allocated once per call and reused by every chunk
    (fresh multi-megabyte tensors would cost a page fault per 4 KiB on first touch)."""

    def __init__(self, rows: int, heads: int, channels: int, like: Tensor, count: int) -> None:
        self.heads = heads
        self.flat = [like.new_empty(rows * heads * channels) for _ in range(count)]
        self.scores = like.new_empty(rows, heads)

    def take(self, slot: int, rows: int, channels: int) -> Tensor:
        return self.flat[slot][: rows * self.heads * channels].view(rows, self.heads, channels)


class ChunkPlan:
    """How a call walks its pattern: the score spec, sizes, dropout and the chunk length."""

    def __init__(
        self,
        pattern,
        spec: ScoreSpec,
        heads: int,
        channels: int,
        value_channels: int,
        dropout: float = 0.0,
        chunk_size: int | None = None,
    ) -> None:
        self.pattern = pattern
        self.spec = spec
        self.dropout = float(dropout)
        self.heads = heads
        self.channels = channels
        self.value_channels = value_channels
        width = max(channels, value_channels)
        self.chunk_size = int(chunk_size or default_chunk_size(heads, width))

    def workspace(self, like: Tensor, count: int = 4) -> Workspace:
        rows = max(1, min(self.chunk_size, self.pattern.num_edges))
        width = max(self.channels, self.value_channels)
        return Workspace(rows, self.heads, width, like, count)

    def chunks(self):
        """Fixed-size runs of edges (a receiver may straddle two chunks)."""
        pattern = self.pattern
        num_edges = pattern.num_edges
        if num_edges == 0:
            return
        starts = list(range(0, num_edges, self.chunk_size))
        ends = [min(s + self.chunk_size, num_edges) for s in starts]
        bounds = torch.tensor(starts + [e - 1 for e in ends], device=pattern.row.device)
        receivers = pattern.row.index_select(0, bounds).tolist()
        count = len(starts)
        for i in range(count):
            yield Chunk(pattern, starts[i], ends[i], receivers[i], receivers[count + i] + 1)


def receiver_chunks(pattern, chunk_size: int) -> list[Chunk]:
    """Chunks of whole receivers with at most ``chunk_size`` edges each (a receiver with more
    edges is a chunk of its own); together they cover every receiver ``[0, num_dst)``."""
    offsets = pattern.ptr.tolist()
    num_dst = len(offsets) - 1
    chunks, first = [], 0
    while first < num_dst:
        stop = bisect.bisect_right(offsets, offsets[first] + chunk_size, lo=first + 1) - 1
        stop = min(max(stop, first + 1), num_dst)
        chunks.append(Chunk(pattern, offsets[first], offsets[stop], first, stop))
        first = stop
    return chunks
