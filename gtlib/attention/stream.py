"""Streaming sparse attention: receiver-sorted edge chunks, online softmax, recomputing backward.

Memory holds the inputs, the output, one log-sum-exp per receiver and head, and a few
chunk-sized buffers that every chunk reuses (fresh multi-megabyte tensors would cost a page
fault per 4 KiB on first touch); nothing of size ``E x H x C`` is kept.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

# Per-chunk budget of E x H x C elements; ~16k edges at 4 heads x 32 channels stay in cache.
CHUNK_ELEMENTS = 1 << 21


def default_chunk_size(heads: int, channels: int) -> int:
    return max(256, CHUNK_ELEMENTS // max(1, heads * channels))


def stream_attention(
    query, key, value, pattern, score, att, negative_slope, key_edge, value_edge, bias, scale,
    dropout, chunk_size,
) -> Tensor:  # fmt: skip
    """Streaming forward with a recomputing backward (see :func:`sparse_attention`)."""
    config = _Config(pattern, score, negative_slope, scale, dropout, chunk_size, query, value)
    return _StreamAttention.apply(config, query, key, value, att, key_edge, value_edge, bias)


def stream_attention_weights(
    query, key, value, pattern, score, att, negative_slope, key_edge, value_edge, bias, scale,
    chunk_size,
) -> Tensor:  # fmt: skip
    """Softmax weights ``[E, H]`` in receiver-sorted order, computed chunk by chunk (detached)."""
    config = _Config(pattern, score, negative_slope, scale, 0.0, chunk_size, query, value)
    with torch.no_grad():
        _, lse, _ = _forward(config, query, key, value, att, key_edge, None, bias, need_out=False)
        weights = query.new_empty(pattern.num_edges, query.size(1))
        work = config.workspace(query)
        for chunk in config.chunks():
            scores, _ = chunk_scores(config, chunk, work, query, key, att, key_edge, bias)
            weights[chunk.start : chunk.end] = scores.sub_(lse.index_select(0, chunk.dst)).exp_()
    return weights


class _Chunk:
    __slots__ = ("start", "end", "size", "first", "stop", "src", "dst", "local", "offsets", "edges")

    def __init__(self, pattern, start: int, end: int, first: int, stop: int) -> None:
        self.start, self.end, self.size = start, end, end - start
        self.first, self.stop = first, stop  # receivers [first, stop) touch this chunk
        self.src = pattern.col[start:end]
        self.dst = pattern.row[start:end]
        self.local = self.dst - first
        self.offsets = pattern.ptr[first : stop + 1].clamp(start, end) - start
        # the chunk's edges in the caller's order
        self.edges = slice(start, end) if pattern.perm is None else pattern.perm[start:end]


class _Workspace:
    """Chunk-sized ``[rows, H, C]`` buffers, allocated once per call and reused by every chunk."""

    def __init__(self, rows: int, heads: int, channels: int, like: Tensor, count: int) -> None:
        self.heads = heads
        self.flat = [like.new_empty(rows * heads * channels) for _ in range(count)]
        self.scores = like.new_empty(rows, heads)

    def take(self, slot: int, rows: int, channels: int) -> Tensor:
        return self.flat[slot][: rows * self.heads * channels].view(rows, self.heads, channels)


class _Config:
    def __init__(
        self, pattern, score, negative_slope, scale, dropout, chunk_size, query, value
    ) -> None:
        self.pattern = pattern
        self.score = score
        self.negative_slope = float(negative_slope)
        self.scale = float(scale)
        self.dropout = float(dropout)
        self.heads = query.size(1)
        self.channels = query.size(2)
        self.value_channels = value.size(2)
        width = max(self.channels, self.value_channels)
        self.chunk_size = int(chunk_size or default_chunk_size(self.heads, width))

    def workspace(self, like: Tensor, count: int = 4) -> _Workspace:
        rows = max(1, min(self.chunk_size, self.pattern.num_edges))
        width = max(self.channels, self.value_channels)
        return _Workspace(rows, self.heads, width, like, count)

    def chunks(self):
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
            yield _Chunk(pattern, starts[i], ends[i], receivers[i], receivers[count + i] + 1)


def edge_slice(x: Tensor | None, chunk: _Chunk) -> Tensor | None:
    """The chunk's rows of a per-edge tensor given in the caller's edge order."""
    if x is None:
        return None
    return x[chunk.edges] if isinstance(chunk.edges, slice) else x.index_select(0, chunk.edges)


def store(target: Tensor, chunk: _Chunk, values: Tensor) -> None:
    """Writes the chunk's per-edge ``values`` into ``target`` (caller's edge order)."""
    if isinstance(chunk.edges, slice):
        target[chunk.edges] = values
    else:
        target.index_copy_(0, chunk.edges, values)


def gather(source: Tensor, index: Tensor, out: Tensor) -> Tensor:
    return torch.index_select(source, 0, index, out=out)


def chunk_scores(config, chunk, work, query, key, att, key_edge, bias):
    """Scores ``[Ec, H]`` (a workspace view) and the gathered pieces the backward needs.

    Uses workspace slots 0-2. Returns ``saved = (query_i, key_j)`` for dot scores (slots 0, 1)
    and ``saved = (activated,)`` for GATv2 (slot 0, ``LeakyReLU(q_i + k_j + e_ij)``; its sign
    is the sign of the pre-activation because ``negative_slope >= 0``).
    """
    n, channels = chunk.size, config.channels
    query_i = gather(query, chunk.dst, work.take(0, n, channels))
    key_j = gather(key, chunk.src, work.take(1, n, channels))
    if key_edge is not None:
        key_j += edge_slice(key_edge, chunk)
    scores = work.scores[:n]
    if config.score == "dot":
        product = torch.mul(query_i, key_j, out=work.take(2, n, channels))
        torch.sum(product, -1, out=scores).mul_(config.scale)
        saved = (query_i, key_j)
    else:
        activated = F.leaky_relu_(query_i.add_(key_j), config.negative_slope)
        torch.sum(torch.mul(activated, att, out=key_j), -1, out=scores)
        if config.scale != 1.0:
            scores.mul_(config.scale)
        saved = (activated,)
    if bias is not None:
        scores += edge_slice(bias, chunk)
    return scores, saved


def gatv2_hidden_gradient(config, activated: Tensor, att: Tensor, grad_scores: Tensor, out):
    """``dL/d(q_i + k_j + e_ij) = grad_scores * att * LeakyReLU'`` for a chunk, into ``out``."""
    derivative = torch.gt(activated, 0, out=out)
    derivative.mul_(1.0 - config.negative_slope).add_(config.negative_slope)
    return derivative.mul_(att).mul_(grad_scores)


def chunk_values(config, chunk, work, value, value_edge, slot: int) -> Tensor:
    value_j = gather(value, chunk.src, work.take(slot, chunk.size, config.value_channels))
    if value_edge is not None:
        value_j += edge_slice(value_edge, chunk)
    return value_j


def _forward(config, query, key, value, att, key_edge, value_edge, bias, need_out=True):
    pattern = config.pattern
    heads = query.size(1)
    num_dst = pattern.num_dst
    tiny = torch.finfo(query.dtype).tiny
    lowest = torch.finfo(query.dtype).min
    out = query.new_zeros(num_dst, heads, config.value_channels) if need_out else None
    running_max = query.new_full((num_dst, heads), float("-inf"))
    running_sum = query.new_zeros(num_dst, heads)
    keep = None
    if need_out and config.dropout > 0:
        keep = torch.empty(pattern.num_edges, heads, dtype=torch.bool, device=query.device)
    work = config.workspace(query)
    for chunk in config.chunks():
        scores, _ = chunk_scores(config, chunk, work, query, key, att, key_edge, bias)
        receivers = slice(chunk.first, chunk.stop)
        chunk_max = torch.segment_reduce(scores, "max", offsets=chunk.offsets, axis=0)
        old_max = running_max[receivers]
        new_max = torch.maximum(old_max, chunk_max).clamp_(min=lowest)
        rescale = (old_max - new_max).exp_()
        probs = scores.sub_(new_max.index_select(0, chunk.local)).exp_()
        chunk_sum = torch.segment_reduce(probs, "sum", offsets=chunk.offsets, axis=0)
        running_sum[receivers] = running_sum[receivers] * rescale + chunk_sum
        running_max[receivers] = new_max
        if not need_out:
            continue
        if keep is not None:
            chunk_keep = torch.rand_like(probs) >= config.dropout
            keep[chunk.start : chunk.end] = chunk_keep
            probs = probs * chunk_keep / (1.0 - config.dropout)
        messages = chunk_values(config, chunk, work, value, value_edge, 0)
        messages.mul_(probs.unsqueeze(-1))
        out[receivers].mul_(rescale.unsqueeze(-1)).index_add_(0, chunk.local, messages)
    lse = running_max + running_sum.clamp(min=tiny).log()
    if need_out:
        out.div_(running_sum.clamp(min=tiny).unsqueeze(-1))
    return out, lse, keep


class _StreamAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, config, query, key, value, att, key_edge, value_edge, bias):
        out, lse, keep = _forward(config, query, key, value, att, key_edge, value_edge, bias)
        ctx.config = config
        ctx.save_for_backward(query, key, value, att, key_edge, value_edge, bias, out, lse, keep)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        config = ctx.config
        query, key, value, att, key_edge, value_edge, bias, out, lse, keep = ctx.saved_tensors
        needs = ctx.needs_input_grad  # (config, query, key, value, att, key_edge, value_edge, bias)
        grad_out = grad_out.contiguous()
        delta = (grad_out * out).sum(-1)  # [N_dst, H]: sum_j p_ij dO_i . v_ij
        grad_query = torch.zeros_like(query) if needs[1] else None
        grad_key = torch.zeros_like(key) if needs[2] else None
        grad_value = torch.zeros_like(value) if needs[3] else None
        grad_att = torch.zeros_like(att) if needs[4] else None
        grad_key_edge = torch.empty_like(key_edge) if needs[5] else None
        grad_value_edge = torch.empty_like(value_edge) if needs[6] else None
        grad_bias = torch.empty_like(bias) if needs[7] else None
        keep_scale = 1.0 / (1.0 - config.dropout)
        need_score_grad = any(needs[i] for i in (1, 2, 4, 5, 7))
        work = config.workspace(query)
        value_channels = config.value_channels

        for chunk in config.chunks():
            receivers = slice(chunk.first, chunk.stop)
            scores, saved = chunk_scores(config, chunk, work, query, key, att, key_edge, bias)
            probs = scores.sub_(lse.index_select(0, chunk.dst)).exp_()
            grad_out_i = gather(grad_out, chunk.dst, work.take(3, chunk.size, value_channels))
            dropped = probs
            if keep is not None:
                chunk_keep = keep[chunk.start : chunk.end] * keep_scale
                dropped = probs * chunk_keep
            if needs[3] or needs[6]:
                grad_value_j = torch.mul(
                    grad_out_i, dropped.unsqueeze(-1), out=work.take(2, chunk.size, value_channels)
                )
                if needs[3]:
                    grad_value.index_add_(0, chunk.src, grad_value_j)
                if needs[6]:
                    store(grad_value_edge, chunk, grad_value_j)
            if not need_score_grad:
                continue
            value_j = chunk_values(config, chunk, work, value, value_edge, 2)
            grad_probs = value_j.mul_(grad_out_i).sum(-1)
            if keep is not None:
                grad_probs.mul_(chunk_keep)
            grad_scores = probs.mul_(grad_probs.sub_(delta.index_select(0, chunk.dst)))
            if needs[7]:
                store(grad_bias, chunk, grad_scores)
            grad_scores = grad_scores.mul_(config.scale).unsqueeze(-1)
            if config.score == "dot":
                query_i, key_j = saved
                if needs[1]:
                    grad_query[receivers].index_add_(0, chunk.local, key_j.mul_(grad_scores))
                grad_key_j = query_i.mul_(grad_scores)
            else:
                (activated,) = saved
                scratch = work.take(1, chunk.size, config.channels)
                if needs[4]:
                    grad_att += torch.mul(activated, grad_scores, out=scratch).sum(0)
                grad_key_j = gatv2_hidden_gradient(config, activated, att, grad_scores, scratch)
                if needs[1]:
                    grad_query[receivers].index_add_(0, chunk.local, grad_key_j)
            if grad_key is not None:
                grad_key.index_add_(0, chunk.src, grad_key_j)
            if needs[5]:
                store(grad_key_edge, chunk, grad_key_j)
        return (
            None,
            grad_query,
            grad_key,
            grad_value,
            grad_att,
            grad_key_edge,
            grad_value_edge,
            grad_bias,
        )
