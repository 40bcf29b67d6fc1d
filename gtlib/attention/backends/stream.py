"""Streaming softmax attention: receiver-sorted edge chunks, online softmax, recomputing backward.

Memory holds the inputs, the output, one log-sum-exp per receiver and head, and a few
chunk-sized buffers that every chunk reuses; nothing of size ``E x H x C`` is kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

from gtlib.attention.backends._chunks import ChunkPlan
from gtlib.attention.terms import ScoreInputs, chunk_score_backward, chunk_scores

# The differentiable inputs of the kernels, in the order they are passed to ``apply``.
INPUT_NAMES = (
    "query", "key", "value", "att", "src_score", "dst_score", "key_edge", "value_edge", "bias",
)  # fmt: skip


def stream_attention(plan: ChunkPlan, tensors: dict[str, Tensor | None]) -> Tensor:
    """Streaming forward with a recomputing backward (see :func:`~gtlib.attention.attend`)."""
    return _StreamAttention.apply(plan, *(tensors.get(name) for name in INPUT_NAMES))


def stream_attention_weights(plan: ChunkPlan, tensors: dict[str, Tensor | None]) -> Tensor:
    """Softmax weights ``[E, H]`` in receiver-sorted order, chunk by chunk (detached)."""
    inputs = _score_inputs(tensors)
    like = tensors["value"]
    with torch.no_grad():
        _, lse, _ = _forward(plan, inputs, like, None, need_out=False)
        weights = like.new_empty(plan.pattern.num_edges, plan.heads)
        work = plan.workspace(like)
        for chunk in plan.chunks():
            scores, _ = chunk_scores(plan, chunk, work, inputs)
            weights[chunk.start : chunk.end] = scores.sub_(lse.index_select(0, chunk.dst)).exp_()
    return weights


def _score_inputs(tensors: dict) -> ScoreInputs:
    names = ("query", "key", "att", "src_score", "dst_score", "key_edge", "bias")
    return ScoreInputs(**{name: tensors.get(name) for name in names})


def _chunk_values(plan, chunk, work, value, value_edge, slot: int) -> Tensor:
    value_j = torch.index_select(
        value, 0, chunk.src, out=work.take(slot, chunk.size, plan.value_channels)
    )
    if value_edge is not None:
        value_j += chunk.take(value_edge)
    return value_j


def _forward(plan, inputs, value, value_edge, need_out=True):
    pattern = plan.pattern
    heads, num_dst = plan.heads, pattern.num_dst
    like = value
    tiny, lowest = torch.finfo(like.dtype).tiny, torch.finfo(like.dtype).min
    out = like.new_zeros(num_dst, heads, plan.value_channels) if need_out else None
    running_max = like.new_full((num_dst, heads), float("-inf"))
    running_sum = like.new_zeros(num_dst, heads)
    keep = None
    if need_out and plan.dropout > 0:
        keep = torch.empty(pattern.num_edges, heads, dtype=torch.bool, device=like.device)
    work = plan.workspace(like)
    for chunk in plan.chunks():
        scores, _ = chunk_scores(plan, chunk, work, inputs)
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
            chunk_keep = torch.rand_like(probs) >= plan.dropout
            keep[chunk.start : chunk.end] = chunk_keep
            probs = probs * chunk_keep / (1.0 - plan.dropout)
        messages = _chunk_values(plan, chunk, work, value, value_edge, 0)
        messages.mul_(probs.unsqueeze(-1))
        out[receivers].mul_(rescale.unsqueeze(-1)).index_add_(0, chunk.local, messages)
    lse = running_max + running_sum.clamp(min=tiny).log()
    if need_out:
        out.div_(running_sum.clamp(min=tiny).unsqueeze(-1))
    return out, lse, keep


class _StreamAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan, *tensors):
        named = dict(zip(INPUT_NAMES, tensors))
        inputs = _score_inputs(named)
        out, lse, keep = _forward(plan, inputs, named["value"], named["value_edge"])
        ctx.plan = plan
        ctx.save_for_backward(*tensors, out, lse, keep)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        plan = ctx.plan
        *tensors, out, lse, keep = ctx.saved_tensors
        named = dict(zip(INPUT_NAMES, tensors))
        needs = dict(zip(INPUT_NAMES, ctx.needs_input_grad[1:]))
        inputs = _score_inputs(named)
        value, value_edge = named["value"], named["value_edge"]
        grad_out = grad_out.contiguous()
        delta = (grad_out * out).sum(-1)  # [N_dst, H]: sum_j p_ij dO_i . v_ij
        grads = {}
        for name in INPUT_NAMES:
            if needs[name]:
                maker = torch.empty_like if name.endswith("_edge") or name == "bias" else None
                grads[name] = (maker or torch.zeros_like)(named[name])
        keep_scale = 1.0 / (1.0 - plan.dropout)
        score_names = ("query", "key", "att", "src_score", "dst_score", "key_edge", "bias")
        need_score_grad = any(needs[name] for name in score_names)
        work = plan.workspace(value)
        value_channels = plan.value_channels

        for chunk in plan.chunks():
            scores, saved = chunk_scores(plan, chunk, work, inputs)
            probs = scores.sub_(lse.index_select(0, chunk.dst)).exp_()
            grad_out_i = torch.index_select(
                grad_out, 0, chunk.dst, out=work.take(3, chunk.size, value_channels)
            )
            dropped = probs
            if keep is not None:
                chunk_keep = keep[chunk.start : chunk.end] * keep_scale
                dropped = probs * chunk_keep
            if needs["value"] or needs["value_edge"]:
                grad_value_j = torch.mul(
                    grad_out_i, dropped.unsqueeze(-1), out=work.take(2, chunk.size, value_channels)
                )
                if needs["value"]:
                    grads["value"].index_add_(0, chunk.src, grad_value_j)
                if needs["value_edge"]:
                    chunk.store(grads["value_edge"], grad_value_j)
            if not need_score_grad:
                continue
            value_j = _chunk_values(plan, chunk, work, value, value_edge, 2)
            grad_probs = value_j.mul_(grad_out_i).sum(-1)
            if keep is not None:
                grad_probs.mul_(chunk_keep)
            grad_scores = probs.mul_(grad_probs.sub_(delta.index_select(0, chunk.dst)))
            if needs["bias"]:
                chunk.store(grads["bias"], grad_scores)
            chunk_score_backward(plan, chunk, work, inputs, saved, grad_scores, grads)
        return (None, *(grads.get(name) for name in INPUT_NAMES))
