"""Sparse-matrix softmax attention: SDDMM scores, exact segment softmax, SpMM aggregation.

The per-edge state is ``[H, E]`` (scores and weights, head-major so that every head's values
are one contiguous CSR value array); nothing of size ``E x H x C`` is kept. Dot-product scores
are a sampled dense-dense product (``torch.sparse.sampled_addmm``) and aggregation is a CSR
sparse-dense product, one head at a time, with a hand-written backward (the transposed
products use the pattern's cached sender-sorted CSR). Static scores are ``[H, E]`` gathers;
additive scores, per-edge key/value terms and their gradients are formed in receiver-sorted
chunks with the shared chunk forms of :mod:`gtlib.attention.terms`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gtlib.attention.backends._chunks import ChunkPlan
from gtlib.attention.backends.stream import INPUT_NAMES, _score_inputs
from gtlib.attention.terms import chunk_score_backward, chunk_scores


def sparse_attention_csr(plan: ChunkPlan, tensors: dict) -> tuple[Tensor, Tensor]:
    """Returns the output ``[N_dst, H, C_v]`` and the detached weights ``[E, H]`` (sorted)."""
    out, weights_h = _SparseAttention.apply(plan, *(tensors.get(name) for name in INPUT_NAMES))
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


def _static_pre_activation(pattern, named) -> Tensor:
    """``s_j + d_i + e_ij`` as ``[H, E]`` in receiver-sorted order."""
    pre = named["src_score"].t().index_select(1, pattern.col)
    if named["dst_score"] is not None:
        pre += named["dst_score"].t().index_select(1, pattern.row)
    if named["key_edge"] is not None:
        pre += pattern.to_sorted(named["key_edge"]).t()
    return pre


def _edge_scores(plan, named, query_h, key_h) -> Tensor:
    pattern, spec = plan.pattern, plan.spec
    if spec.kind == "static":
        scores_h = spec.activate_(_static_pre_activation(pattern, named))
        if spec.scale != 1.0:
            scores_h.mul_(spec.scale)
    elif spec.kind == "dot":
        query, key_edge = named["query"], named["key_edge"]
        scores_h = query.new_empty(plan.heads, pattern.num_edges)
        for h in range(plan.heads):
            _sddmm(pattern, query_h[h], key_h[h], scores_h[h], spec.scale)
        if key_edge is not None:
            work = plan.workspace(query, 1)
            for chunk in plan.chunks():
                query_i = torch.index_select(
                    query, 0, chunk.dst, out=work.take(0, chunk.size, plan.channels)
                )
                extra = query_i.mul_(chunk.take(key_edge)).sum(-1).mul_(spec.scale)
                scores_h[:, chunk.start : chunk.end] += extra.t()
    else:
        inputs = _score_inputs({**named, "bias": None})
        scores_h = named["query"].new_empty(plan.heads, pattern.num_edges)
        work = plan.workspace(named["query"], 3)
        for chunk in plan.chunks():
            scores, _ = chunk_scores(plan, chunk, work, inputs)
            scores_h[:, chunk.start : chunk.end] = scores.t()
        return _add_bias(scores_h, pattern, named["bias"])
    return _add_bias(scores_h, pattern, named["bias"])


def _add_bias(scores_h: Tensor, pattern, bias: Tensor | None) -> Tensor:
    if bias is not None:
        scores_h += pattern.to_sorted(bias).t()
    return scores_h


class _SparseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, *tensors):
        named = dict(zip(INPUT_NAMES, tensors))
        pattern = plan.pattern
        dot = plan.spec.kind == "dot"
        query_h = _heads_first(named["query"]) if dot else None
        key_h = _heads_first(named["key"]) if dot else None
        value_h = _heads_first(named["value"])
        weights_h = _softmax_heads_first(_edge_scores(plan, named, query_h, key_h), pattern)
        keep = None
        dropped_h = weights_h
        if plan.dropout > 0:
            keep = torch.rand_like(weights_h) >= plan.dropout
            dropped_h = weights_h * keep / (1.0 - plan.dropout)
        out = _spmm_heads(pattern, dropped_h, value_h)
        value_edge = named["value_edge"]
        if value_edge is not None:
            for chunk in plan.chunks():
                piece = dropped_h[:, chunk.start : chunk.end].t().unsqueeze(-1)
                messages = chunk.take(value_edge) * piece
                out[chunk.first : chunk.stop].index_add_(0, chunk.local, messages)
        ctx.mark_non_differentiable(weights_h)
        ctx.plan = plan
        ctx.save_for_backward(*tensors, query_h, key_h, value_h, weights_h, keep, out)
        return out, weights_h

    @staticmethod
    def backward(ctx, grad_out, _grad_weights):
        plan = ctx.plan
        pattern, spec = plan.pattern, plan.spec
        *tensors, query_h, key_h, value_h, weights_h, keep, out = ctx.saved_tensors
        named = dict(zip(INPUT_NAMES, tensors))
        needs = dict(zip(INPUT_NAMES, ctx.needs_input_grad[1:]))
        value_edge = named["value_edge"]
        grad_out = grad_out.contiguous()
        grad_out_h = _heads_first(grad_out)
        order_t = pattern.transpose_csr()[2] if (needs["key"] or needs["value"]) else None
        keep_scale = 1.0 / (1.0 - plan.dropout)
        dropped_h = weights_h if keep is None else weights_h * keep * keep_scale
        grads: dict[str, Tensor | None] = {}

        if needs["value"]:
            grads["value"] = _spmm_heads(
                pattern, dropped_h.index_select(1, order_t), grad_out_h, True
            )
        if needs["value_edge"]:
            grads["value_edge"] = torch.empty_like(value_edge)
            for chunk in plan.chunks():
                piece = dropped_h[:, chunk.start : chunk.end].t().unsqueeze(-1)
                chunk.store(grads["value_edge"], grad_out.index_select(0, chunk.dst).mul_(piece))

        score_names = ("query", "key", "att", "src_score", "dst_score", "key_edge", "bias")
        if any(needs[name] for name in score_names):
            grad_scores_h = torch.empty_like(weights_h)
            for h in range(plan.heads):
                _sddmm(pattern, grad_out_h[h], value_h[h], grad_scores_h[h])
            if value_edge is not None:
                for chunk in plan.chunks():
                    grad_out_i = grad_out.index_select(0, chunk.dst)
                    extra = grad_out_i.mul_(chunk.take(value_edge)).sum(-1)
                    grad_scores_h[:, chunk.start : chunk.end] += extra.t()
            if keep is not None:
                grad_scores_h.mul_(keep).mul_(keep_scale)
            delta = (grad_out_h * out.transpose(0, 1)).sum(-1)  # [H, N_dst]
            grad_scores_h.sub_(delta.index_select(1, pattern.row)).mul_(weights_h)
            if needs["bias"]:
                grads["bias"] = pattern.to_caller(grad_scores_h.t().contiguous())
            if spec.kind == "dot":
                grad_scores_h.mul_(spec.scale)
                grads.update(_dot_score_backward(plan, needs, grad_scores_h, named, query_h,
                                                 key_h, order_t))  # fmt: skip
            elif spec.kind == "static":
                grads.update(_static_score_backward(plan, needs, grad_scores_h, named))
            else:
                grads.update(_chunked_score_backward(plan, needs, grad_scores_h, named))
        return (None, *(grads.get(name) for name in INPUT_NAMES))


def _dot_score_backward(plan, needs, grad_scores_h, named, query_h, key_h, order_t) -> dict:
    pattern = plan.pattern
    query, key_edge = named["query"], named["key_edge"]
    grads = {}
    if needs["query"]:
        grads["query"] = _spmm_heads(pattern, grad_scores_h, key_h)
    if needs["key"]:
        grads["key"] = _spmm_heads(pattern, grad_scores_h.index_select(1, order_t), query_h, True)
    if key_edge is not None and (needs["query"] or needs["key_edge"]):
        grads["key_edge"] = torch.empty_like(key_edge) if needs["key_edge"] else None
        for chunk in plan.chunks():
            grad_chunk = grad_scores_h[:, chunk.start : chunk.end].t().unsqueeze(-1)
            if needs["query"]:
                piece = chunk.take(key_edge) * grad_chunk
                grads["query"][chunk.first : chunk.stop].index_add_(0, chunk.local, piece)
            if needs["key_edge"]:
                chunk.store(grads["key_edge"], query.index_select(0, chunk.dst).mul_(grad_chunk))
    return grads


def _static_score_backward(plan, needs, grad_scores_h, named) -> dict:
    pattern, spec = plan.pattern, plan.spec
    if spec.scale != 1.0:
        grad_scores_h.mul_(spec.scale)
    activated = spec.activate_(_static_pre_activation(pattern, named))
    grad_pre = spec.activation_gradient_(activated, grad_scores_h, activated).t()  # [E, H]
    grads = {}
    if needs["src_score"]:
        grads["src_score"] = torch.zeros_like(named["src_score"]).index_add_(
            0, pattern.col, grad_pre
        )
    if needs["dst_score"]:
        grads["dst_score"] = torch.segment_reduce(
            grad_pre.contiguous(), "sum", offsets=pattern.ptr, axis=0
        )
    if needs["key_edge"]:
        grads["key_edge"] = pattern.to_caller(grad_pre.contiguous())
    return grads


def _chunked_score_backward(plan, needs, grad_scores_h, named) -> dict:
    inputs = _score_inputs({**named, "bias": None})
    grads = {}
    for name in ("query", "key", "att"):
        if needs[name]:
            grads[name] = torch.zeros_like(named[name])
    if needs["key_edge"]:
        grads["key_edge"] = torch.empty_like(named["key_edge"])
    work = plan.workspace(named["query"], 3)
    grad_chunks = grad_scores_h.t()
    for chunk in plan.chunks():
        _, saved = chunk_scores(plan, chunk, work, inputs)
        grad_chunk = grad_chunks[chunk.start : chunk.end]
        chunk_score_backward(plan, chunk, work, inputs, saved, grad_chunk, grads)
    return grads
