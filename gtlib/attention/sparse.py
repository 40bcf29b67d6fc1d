"""Sparse-matrix attention: SDDMM scores, exact segment softmax, SpMM aggregation.

The per-edge state is ``[E, H]`` (scores and weights); nothing of size ``E x H x C`` is kept.
Dot-product scores are a sampled dense-dense product (``torch.sparse.sampled_addmm``) and
aggregation is a CSR sparse-dense product, one head at a time, with a hand-written backward
(the transposed products go through the pattern's cached sender-sorted CSR). GATv2 scores and
their gradients, and per-edge key/value terms, are formed in receiver-sorted chunks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gtlib.attention.softmax import csr_softmax_forward
from gtlib.attention.stream import (
    _chunk_scores,
    _Config,
    _edge_slice,
    _store,
    default_chunk_size,
)


def sparse_attention_csr(
    query, key, value, pattern, score, att, negative_slope, key_edge, value_edge, bias, scale,
    dropout, chunk_size,
) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Returns the output ``[N_dst, H, C_v]`` and the detached weights ``[E, H]`` (sorted)."""
    if chunk_size is None:
        chunk_size = default_chunk_size(query.size(1), max(query.size(2), value.size(2)))
    config = _Config(pattern, score, negative_slope, scale, dropout, chunk_size)
    return _SparseAttention.apply(config, query, key, value, att, key_edge, value_edge, bias)


def _heads_first(x: Tensor) -> Tensor:
    return x.permute(1, 0, 2).contiguous()


def _sddmm(pattern, left: Tensor, right: Tensor, alpha: float = 1.0) -> Tensor:
    """``[E]`` values ``alpha * left[i] . right[j]`` on the receiver-sorted edges."""
    mask = pattern.sparse_matrix(left.new_zeros(pattern.num_edges))
    return torch.sparse.sampled_addmm(mask, left, right.t(), beta=0.0, alpha=alpha).values()


def _spmm(pattern, values: Tensor, dense: Tensor, transpose: bool = False) -> Tensor:
    return pattern.sparse_matrix(values, transpose) @ dense


def _edge_scores(config, query, key, att, key_edge, bias, query_h, key_h) -> Tensor:
    pattern = config.pattern
    heads = query.size(1)
    if config.score == "dot":
        scores = query.new_empty(pattern.num_edges, heads)
        for h in range(heads):
            scores[:, h] = _sddmm(pattern, query_h[h], key_h[h], config.scale)
        if key_edge is not None:
            for chunk in config.chunks():
                query_i = query.index_select(0, chunk.dst)
                extra = (query_i * _edge_slice(key_edge, chunk)).sum(-1).mul_(config.scale)
                scores[chunk.start : chunk.end] += extra
        if bias is not None:
            scores += pattern.to_sorted(bias)
        return scores
    scores = query.new_empty(pattern.num_edges, heads)
    for chunk in config.chunks():
        scores[chunk.start : chunk.end], _ = _chunk_scores(
            config, chunk, query, key, att, key_edge, bias
        )
    return scores


class _SparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, config, query, key, value, att, key_edge, value_edge, bias):
        pattern = config.pattern
        heads = query.size(1)
        query_h, key_h, value_h = (_heads_first(x) for x in (query, key, value))
        scores = _edge_scores(config, query, key, att, key_edge, bias, query_h, key_h)
        weights = csr_softmax_forward(scores, pattern.ptr, pattern.row)
        keep = None
        dropped = weights
        if config.dropout > 0:
            keep = torch.rand_like(weights) >= config.dropout
            dropped = weights * keep / (1.0 - config.dropout)
        dropped_h = dropped.t().contiguous()
        out = torch.stack([_spmm(pattern, dropped_h[h], value_h[h]) for h in range(heads)], 1)
        if value_edge is not None:
            for chunk in config.chunks():
                messages = _edge_slice(value_edge, chunk) * dropped[chunk.start : chunk.end, :, None]
                out[chunk.first : chunk.stop].index_add_(0, chunk.local, messages)
        ctx.mark_non_differentiable(weights)
        ctx.config = config
        ctx.save_for_backward(
            query, key, value, att, key_edge, value_edge, bias, query_h, key_h, value_h,
            weights, keep, out,
        )  # fmt: skip
        return out, weights

    @staticmethod
    def backward(ctx, grad_out, _grad_weights):
        config = ctx.config
        pattern = config.pattern
        (query, key, value, att, key_edge, value_edge, bias, query_h, key_h, value_h,
         weights, keep, out) = ctx.saved_tensors  # fmt: skip
        needs = ctx.needs_input_grad[1:]  # query, key, value, att, key_edge, value_edge, bias
        heads = query.size(1)
        grad_out = grad_out.contiguous()
        grad_out_h = _heads_first(grad_out)
        _, _, order_t = pattern.transpose_csr() if (needs[1] or needs[2]) else (None, None, None)
        keep_scale = 1.0 / (1.0 - config.dropout)
        dropped = weights if keep is None else weights * keep * keep_scale

        grad_value = grad_value_edge = None
        if needs[2]:
            dropped_t = dropped.index_select(0, order_t).t().contiguous()
            grad_value = torch.stack(
                [_spmm(pattern, dropped_t[h], grad_out_h[h], True) for h in range(heads)], 1
            )
        if needs[5]:
            grad_value_edge = torch.empty_like(value_edge)
            for chunk in config.chunks():
                grad_out_i = grad_out.index_select(0, chunk.dst)
                piece = grad_out_i.mul_(dropped[chunk.start : chunk.end, :, None])
                _store(grad_value_edge, chunk, piece)

        grad_query = grad_key = grad_att = grad_key_edge = grad_bias = None
        if any(needs[i] for i in (0, 1, 3, 4, 6)):
            grad_probs = weights.new_empty(weights.shape)
            for h in range(heads):
                grad_probs[:, h] = _sddmm(pattern, grad_out_h[h], value_h[h])
            if value_edge is not None:
                for chunk in config.chunks():
                    grad_out_i = grad_out.index_select(0, chunk.dst)
                    extra = (grad_out_i * _edge_slice(value_edge, chunk)).sum(-1)
                    grad_probs[chunk.start : chunk.end] += extra
            if keep is not None:
                grad_probs.mul_(keep).mul_(keep_scale)
            delta = (grad_out * out).sum(-1)
            grad_scores = grad_probs.sub_(delta.index_select(0, pattern.row)).mul_(weights)
            if needs[6]:
                grad_bias = pattern.to_caller(grad_scores)
            grad_scores = grad_scores.mul_(config.scale)
            if config.score == "dot":
                grad_query, grad_key, grad_key_edge = _dot_score_backward(
                    config, needs, grad_scores, query, key_edge, query_h, key_h, order_t
                )
            else:
                grad_query, grad_key, grad_att, grad_key_edge = _gatv2_score_backward(
                    config, needs, grad_scores, query, key, att, key_edge
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


def _dot_score_backward(config, needs, grad_scores, query, key_edge, query_h, key_h, order_t):
    pattern = config.pattern
    heads = query.size(1)
    grad_query = grad_key = grad_key_edge = None
    grad_scores_h = grad_scores.t().contiguous()
    if needs[0]:
        grad_query = torch.stack(
            [_spmm(pattern, grad_scores_h[h], key_h[h]) for h in range(heads)], 1
        )
    if needs[1]:
        grad_scores_t = grad_scores.index_select(0, order_t).t().contiguous()
        grad_key = torch.stack(
            [_spmm(pattern, grad_scores_t[h], query_h[h], True) for h in range(heads)], 1
        )
    if key_edge is not None and (needs[0] or needs[4]):
        grad_key_edge = torch.empty_like(key_edge) if needs[4] else None
        for chunk in config.chunks():
            grad_chunk = grad_scores[chunk.start : chunk.end, :, None]
            if needs[0]:
                piece = _edge_slice(key_edge, chunk) * grad_chunk
                grad_query[chunk.first : chunk.stop].index_add_(0, chunk.local, piece)
            if needs[4]:
                _store(grad_key_edge, chunk, query.index_select(0, chunk.dst).mul_(grad_chunk))
    return grad_query, grad_key, grad_key_edge


def _gatv2_score_backward(config, needs, grad_scores, query, key, att, key_edge):
    grad_query = torch.zeros_like(query) if needs[0] else None
    grad_key = torch.zeros_like(key) if needs[1] else None
    grad_att = torch.zeros_like(att) if needs[3] else None
    grad_key_edge = torch.empty_like(key_edge) if needs[4] else None
    for chunk in config.chunks():
        _, (hidden, activated) = _chunk_scores(config, chunk, query, key, att, key_edge, None)
        grad_chunk = grad_scores[chunk.start : chunk.end, :, None]
        if needs[3]:
            grad_att += (activated.mul_(grad_chunk)).sum(0)
        slope = torch.where(hidden > 0, 1.0, config.negative_slope).to(hidden.dtype)
        grad_hidden = slope.mul_(att).mul_(grad_chunk)
        if needs[0]:
            grad_query[chunk.first : chunk.stop].index_add_(0, chunk.local, grad_hidden)
        if needs[1]:
            grad_key.index_add_(0, chunk.src, grad_hidden)
        if needs[4]:
            _store(grad_key_edge, chunk, grad_hidden)
    return grad_query, grad_key, grad_att, grad_key_edge
