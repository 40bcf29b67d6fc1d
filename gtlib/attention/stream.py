"""Streaming sparse attention: receiver-sorted edge chunks, online softmax, recomputing backward.

Memory holds the inputs, the output, one log-sum-exp per receiver and head, and the
per-chunk temporaries; nothing of size ``E x H x C`` is kept between chunks.
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
    if chunk_size is None:
        chunk_size = default_chunk_size(query.size(1), max(query.size(2), value.size(2)))
    config = _Config(pattern, score, negative_slope, scale, dropout, chunk_size)
    return _StreamAttention.apply(config, query, key, value, att, key_edge, value_edge, bias)


def stream_attention_weights(
    query, key, value, pattern, score, att, negative_slope, key_edge, value_edge, bias, scale,
    chunk_size,
) -> Tensor:  # fmt: skip
    """Softmax weights ``[E, H]`` in receiver-sorted order, computed chunk by chunk (detached)."""
    if chunk_size is None:
        chunk_size = default_chunk_size(query.size(1), query.size(2))
    config = _Config(pattern, score, negative_slope, scale, 0.0, chunk_size)
    with torch.no_grad():
        _, lse, _ = _forward(config, query, key, value, att, key_edge, None, bias, need_out=False)
        weights = query.new_empty(pattern.num_edges, query.size(1))
        for chunk in config.chunks():
            scores, _ = _chunk_scores(config, chunk, query, key, att, key_edge, bias)
            weights[chunk.start : chunk.end] = (scores - lse.index_select(0, chunk.dst)).exp_()
    return weights


class _Chunk:
    __slots__ = ("start", "end", "first", "stop", "src", "dst", "local", "offsets", "edges")

    def __init__(self, pattern, start: int, end: int, first: int, stop: int) -> None:
        self.start, self.end = start, end
        self.first, self.stop = first, stop  # receivers [first, stop) touch this chunk
        self.src = pattern.col[start:end]
        self.dst = pattern.row[start:end]
        self.local = self.dst - first
        self.offsets = pattern.ptr[first : stop + 1].clamp(start, end) - start
        self.edges = (
            slice(start, end) if pattern.perm is None else pattern.perm[start:end]
        )  # the chunk's edges in the caller's order


class _Config:
    def __init__(self, pattern, score, negative_slope, scale, dropout, chunk_size) -> None:
        self.pattern = pattern
        self.score = score
        self.negative_slope = float(negative_slope)
        self.scale = float(scale)
        self.dropout = float(dropout)
        self.chunk_size = int(chunk_size)

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


def _edge_slice(x: Tensor | None, chunk: _Chunk) -> Tensor | None:
    if x is None:
        return None
    return x[chunk.edges] if isinstance(chunk.edges, slice) else x.index_select(0, chunk.edges)


def _chunk_scores(config, chunk, query, key, att, key_edge, bias):
    """Scores ``[Ec, H]`` and the gathered pieces the backward needs."""
    query_i = query.index_select(0, chunk.dst)
    key_j = key.index_select(0, chunk.src)
    if key_edge is not None:
        key_j += _edge_slice(key_edge, chunk)
    if config.score == "dot":
        scores = (query_i * key_j).sum(-1).mul_(config.scale)
        saved = (query_i, key_j)
    else:
        hidden = query_i.add_(key_j)
        activated = F.leaky_relu(hidden, config.negative_slope)
        scores = (activated * att).sum(-1)
        if config.scale != 1.0:
            scores.mul_(config.scale)
        saved = (hidden, activated)
    if bias is not None:
        scores += _edge_slice(bias, chunk)
    return scores, saved


def _leaky_relu_derivative(hidden: Tensor, negative_slope: float) -> Tensor:
    """1 where ``hidden > 0`` else ``negative_slope``, in ``hidden``'s dtype."""
    return (hidden > 0).to(hidden.dtype).mul_(1.0 - negative_slope).add_(negative_slope)


def _chunk_values(chunk, value, value_edge):
    value_j = value.index_select(0, chunk.src)
    if value_edge is not None:
        value_j += _edge_slice(value_edge, chunk)
    return value_j


def _forward(config, query, key, value, att, key_edge, value_edge, bias, need_out=True):
    pattern = config.pattern
    heads, value_channels = value.size(1), value.size(2)
    num_dst = pattern.num_dst
    tiny = torch.finfo(query.dtype).tiny
    lowest = torch.finfo(query.dtype).min
    out = query.new_zeros(num_dst, heads, value_channels) if need_out else None
    running_max = query.new_full((num_dst, heads), float("-inf"))
    running_sum = query.new_zeros(num_dst, heads)
    keep = None
    if need_out and config.dropout > 0:
        keep = torch.empty(pattern.num_edges, heads, dtype=torch.bool, device=query.device)
    for chunk in config.chunks():
        scores, _ = _chunk_scores(config, chunk, query, key, att, key_edge, bias)
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
        messages = _chunk_values(chunk, value, value_edge).mul_(probs.unsqueeze(-1))
        block = out[receivers]
        block.mul_(rescale.unsqueeze(-1)).index_add_(0, chunk.local, messages)
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
        pattern = config.pattern
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

        for chunk in config.chunks():
            receivers = slice(chunk.first, chunk.stop)
            scores, saved = _chunk_scores(config, chunk, query, key, att, key_edge, bias)
            probs = scores.sub_(lse.index_select(0, chunk.dst)).exp_()
            grad_out_i = grad_out.index_select(0, chunk.dst)
            dropped = probs
            if keep is not None:
                chunk_keep = keep[chunk.start : chunk.end] * keep_scale
                dropped = probs * chunk_keep
            if needs[3] or needs[6]:
                grad_value_j = grad_out_i * dropped.unsqueeze(-1)
                if needs[3]:
                    grad_value.index_add_(0, chunk.src, grad_value_j)
                if needs[6]:
                    _store(grad_value_edge, chunk, grad_value_j)
            if not need_score_grad:
                continue
            value_j = _chunk_values(chunk, value, value_edge)
            grad_probs = (grad_out_i * value_j).sum(-1)
            if keep is not None:
                grad_probs.mul_(chunk_keep)
            grad_scores = probs.mul_(grad_probs.sub_(delta.index_select(0, chunk.dst)))
            if needs[7]:
                _store(grad_bias, chunk, grad_scores)
            grad_scores = grad_scores.mul_(config.scale).unsqueeze(-1)
            if config.score == "dot":
                query_i, key_j = saved
                if needs[1]:
                    grad_query[receivers].index_add_(0, chunk.local, key_j.mul_(grad_scores))
                grad_key_j = query_i.mul_(grad_scores)
            else:
                hidden, activated = saved
                if needs[4]:
                    grad_att += (activated * grad_scores).sum(0)
                slope = _leaky_relu_derivative(hidden, config.negative_slope)
                grad_key_j = slope.mul_(att).mul_(grad_scores)
                if needs[1]:
                    grad_query[receivers].index_add_(0, chunk.local, grad_key_j)
            if grad_key is not None:
                grad_key.index_add_(0, chunk.src, grad_key_j)
            if needs[5]:
                _store(grad_key_edge, chunk, grad_key_j)
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


def _store(target: Tensor, chunk: _Chunk, values: Tensor) -> None:
    if isinstance(chunk.edges, slice):
        target[chunk.edges] = values
    else:
        target.index_copy_(0, chunk.edges, values)
