"""Sparse-matrix attention: SDDMM scores, exact segment softmax, SpMM aggregation.

The per-edge state is ``[H, E]`` (scores and weights, head-major so that every head's values
are one contiguous CSR value array); nothing of size ``E x H x C`` is kept. Dot-product scores
are a sampled dense-dense product (``torch.sparse.sampled_addmm``) and aggregation is a CSR
sparse-dense product, one head at a time, with a hand-written backward (the transposed
products use the pattern's cached sender-sorted CSR). GATv2 scores and their gradients, and
per-edge key/value terms, are formed in receiver-sorted chunks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gtlib.attention.stream import (
    _Config,
    chunk_scores,
    edge_slice,
    gather,
    gatv2_hidden_gradient,
    store,
)


def sparse_attention_csr(
    query, key, value, pattern, score, att, negative_slope, key_edge, value_edge, bias, scale,
    dropout, chunk_size,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Returns the output ``[N_dst, H, C_v]`` and the detached weights ``[E, H]`` (sorted)."""
    config = _Config(pattern, score, negative_slope, scale, dropout, chunk_size, query, value)
    out, weights_h = _SparseAttention.apply(
        config, query, key, value, att, key_edge, value_edge, bias
    )
    return out, weights_h.t()


def _heads_first(x: Tensor) -> Tensor:
    return x.permute(1, 0, 2).contiguous()


def _sddmm(pattern, left: Tensor, right: Tensor, out: Tensor, alpha: float = 1.0) -> None:
    """Writes ``alpha * left[i] . right[j]`` for the receiver-sorted edges into ``out [E]``.

    ``torch.sparse.sampled_addmm`` corrupts memory on repeated (sender, receiver) pairs, so
    patterns with duplicate edges compute on their distinct pairs and copy back.
    """
    if pattern.unique_edges:
        matrix = pattern.sparse_matrix(out.zero_())  # beta=0 would still propagate NaN garbage
        torch.sparse.sampled_addmm(matrix, left, right.t(), beta=0.0, alpha=alpha, out=matrix)
        return
    _, senders, inverse = pattern.deduplicated()
    distinct = out.new_zeros(senders.numel())
    matrix = pattern.sparse_matrix(distinct, "unique")
    torch.sparse.sampled_addmm(matrix, left, right.t(), beta=0.0, alpha=alpha, out=matrix)
    torch.index_select(distinct, 0, inverse, out=out)


def _spmm_heads(pattern, values_h: Tensor, dense_h: Tensor, transpose: bool = False) -> Tensor:
    """Per head ``A_h @ dense_h`` with ``A_h`` holding ``values_h[h]``; returns ``[N, H, C]``."""
    heads = values_h.size(0)
    rows = pattern.num_src if transpose else pattern.num_dst
    layout = "transpose" if transpose else "csr"
    out = dense_h.new_empty(rows, heads, dense_h.size(-1))
    for h in range(heads):
        out[:, h] = pattern.sparse_matrix(values_h[h], layout) @ dense_h[h]
    return out


def _softmax_heads_first(scores_h: Tensor, pattern) -> Tensor:
    """In-place stable softmax of ``[H, E]`` receiver-sorted scores over each receiver."""
    if scores_h.numel() == 0:
        return scores_h
    offsets = pattern.ptr.expand(scores_h.size(0), -1).contiguous()
    lowest = torch.finfo(scores_h.dtype).min  # all -inf (masked) scores give weights 0
    segment_max = torch.segment_reduce(scores_h, "max", offsets=offsets, axis=1).clamp_(min=lowest)
    weights = scores_h.sub_(segment_max.index_select(1, pattern.row)).exp_()
    segment_sum = torch.segment_reduce(weights, "sum", offsets=offsets, axis=1)
    tiny = torch.finfo(scores_h.dtype).tiny
    return weights.div_(segment_sum.clamp_(min=tiny).index_select(1, pattern.row))


def _edge_scores(config, query, key, att, key_edge, bias, query_h, key_h) -> Tensor:
    pattern = config.pattern
    heads = query.size(1)
    scores_h = query.new_empty(heads, pattern.num_edges)
    if config.score == "dot":
        for h in range(heads):
            _sddmm(pattern, query_h[h], key_h[h], scores_h[h], config.scale)
        if key_edge is not None:
            work = config.workspace(query, 1)
            for chunk in config.chunks():
                query_i = gather(query, chunk.dst, work.take(0, chunk.size, config.channels))
                extra = query_i.mul_(edge_slice(key_edge, chunk)).sum(-1).mul_(config.scale)
                scores_h[:, chunk.start : chunk.end] += extra.t()
        if bias is not None:
            scores_h += pattern.to_sorted(bias).t()
        return scores_h
    work = config.workspace(query, 3)
    for chunk in config.chunks():
        scores, _ = chunk_scores(config, chunk, work, query, key, att, key_edge, bias)
        scores_h[:, chunk.start : chunk.end] = scores.t()
    return scores_h


class _SparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, config, query, key, value, att, key_edge, value_edge, bias):
        pattern = config.pattern
        query_h, key_h, value_h = (_heads_first(x) for x in (query, key, value))
        scores_h = _edge_scores(config, query, key, att, key_edge, bias, query_h, key_h)
        weights_h = _softmax_heads_first(scores_h, pattern)
        keep = None
        dropped_h = weights_h
        if config.dropout > 0:
            keep = torch.rand_like(weights_h) >= config.dropout
            dropped_h = weights_h * keep / (1.0 - config.dropout)
        out = _spmm_heads(pattern, dropped_h, value_h)
        if value_edge is not None:
            for chunk in config.chunks():
                piece = dropped_h[:, chunk.start : chunk.end].t().unsqueeze(-1)
                messages = edge_slice(value_edge, chunk) * piece
                out[chunk.first : chunk.stop].index_add_(0, chunk.local, messages)
        ctx.mark_non_differentiable(weights_h)
        ctx.config = config
        ctx.save_for_backward(
            query, key, value, att, key_edge, value_edge, query_h, key_h, value_h,
            weights_h, keep, out,
        )  # fmt: skip
        return out, weights_h

    @staticmethod
    def backward(ctx, grad_out, _grad_weights):
        config = ctx.config
        pattern = config.pattern
        (query, key, value, att, key_edge, value_edge, query_h, key_h, value_h,
         weights_h, keep, out) = ctx.saved_tensors  # fmt: skip
        needs = ctx.needs_input_grad[1:]  # query, key, value, att, key_edge, value_edge, bias
        heads = query.size(1)
        grad_out = grad_out.contiguous()
        grad_out_h = _heads_first(grad_out)
        order_t = pattern.transpose_csr()[2] if (needs[1] or needs[2]) else None
        keep_scale = 1.0 / (1.0 - config.dropout)
        dropped_h = weights_h if keep is None else weights_h * keep * keep_scale

        grad_value = grad_value_edge = None
        if needs[2]:
            grad_value = _spmm_heads(pattern, dropped_h.index_select(1, order_t), grad_out_h, True)
        if needs[5]:
            grad_value_edge = torch.empty_like(value_edge)
            for chunk in config.chunks():
                piece = dropped_h[:, chunk.start : chunk.end].t().unsqueeze(-1)
                store(grad_value_edge, chunk, grad_out.index_select(0, chunk.dst).mul_(piece))

        grad_query = grad_key = grad_att = grad_key_edge = grad_bias = None
        if any(needs[i] for i in (0, 1, 3, 4, 6)):
            grad_scores_h = torch.empty_like(weights_h)
            for h in range(heads):
                _sddmm(pattern, grad_out_h[h], value_h[h], grad_scores_h[h])
            if value_edge is not None:
                for chunk in config.chunks():
                    grad_out_i = grad_out.index_select(0, chunk.dst)
                    extra = grad_out_i.mul_(edge_slice(value_edge, chunk)).sum(-1)
                    grad_scores_h[:, chunk.start : chunk.end] += extra.t()
            if keep is not None:
                grad_scores_h.mul_(keep).mul_(keep_scale)
            delta = (grad_out_h * out.transpose(0, 1)).sum(-1)  # [H, N_dst]
            grad_scores_h.sub_(delta.index_select(1, pattern.row)).mul_(weights_h)
            if needs[6]:
                grad_bias = pattern.to_caller(grad_scores_h.t().contiguous())
            grad_scores_h.mul_(config.scale)
            if config.score == "dot":
                grad_query, grad_key, grad_key_edge = _dot_score_backward(
                    config, needs, grad_scores_h, query, key_edge, query_h, key_h, order_t
                )
            else:
                grad_query, grad_key, grad_att, grad_key_edge = _gatv2_score_backward(
                    config, needs, grad_scores_h, query, key, att, key_edge
                )
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


def _dot_score_backward(config, needs, grad_scores_h, query, key_edge, query_h, key_h, order_t):
    pattern = config.pattern
    grad_query = grad_key = grad_key_edge = None
    if needs[0]:
        grad_query = _spmm_heads(pattern, grad_scores_h, key_h)
    if needs[1]:
        grad_key = _spmm_heads(pattern, grad_scores_h.index_select(1, order_t), query_h, True)
    if key_edge is not None and (needs[0] or needs[4]):
        grad_key_edge = torch.empty_like(key_edge) if needs[4] else None
        for chunk in config.chunks():
            grad_chunk = grad_scores_h[:, chunk.start : chunk.end].t().unsqueeze(-1)
            if needs[0]:
                piece = edge_slice(key_edge, chunk) * grad_chunk
                grad_query[chunk.first : chunk.stop].index_add_(0, chunk.local, piece)
            if needs[4]:
                store(grad_key_edge, chunk, query.index_select(0, chunk.dst).mul_(grad_chunk))
    return grad_query, grad_key, grad_key_edge


def _gatv2_score_backward(config, needs, grad_scores_h, query, key, att, key_edge):
    grad_query = torch.zeros_like(query) if needs[0] else None
    grad_key = torch.zeros_like(key) if needs[1] else None
    grad_att = torch.zeros_like(att) if needs[3] else None
    grad_key_edge = torch.empty_like(key_edge) if needs[4] else None
    work = config.workspace(query, 3)
    grad_chunks = grad_scores_h.t()
    for chunk in config.chunks():
        _, (activated,) = chunk_scores(config, chunk, work, query, key, att, key_edge, None)
        grad_chunk = grad_chunks[chunk.start : chunk.end].unsqueeze(-1)
        scratch = work.take(1, chunk.size, config.channels)
        if needs[3]:
            grad_att += torch.mul(activated, grad_chunk, out=scratch).sum(0)
        grad_hidden = gatv2_hidden_gradient(config, activated, att, grad_chunk, scratch)
        if needs[0]:
            grad_query[chunk.first : chunk.stop].index_add_(0, chunk.local, grad_hidden)
        if needs[1]:
            grad_key.index_add_(0, chunk.src, grad_hidden)
        if needs[4]:
            store(grad_key_edge, chunk, grad_hidden)
    return grad_query, grad_key, grad_att, grad_key_edge
