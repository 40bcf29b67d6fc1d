"""The reference backend: gather, score, reduce, scatter, differentiated by autograd.

Any score (built-in terms, a user ``score_mod``), any message (``v_j + e_ij`` or a user
``message_fn``) and any reduction (softmax, sum, mean, max, given weights). Run over all edges at
once it is the ``"scatter"`` mode (``torch.compile`` traces it without graph breaks); run over
chunks of whole receivers under activation checkpointing it is the ``"chunked"`` mode, whose
memory grows with the chunk, not with ``E``: the backward recomputes each chunk, so arbitrary
message functions (e.g. a neural operator's kernel MLP on edge geometry) need no autograd code of
their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from gtlib.attention.backends._chunks import receiver_chunks
from gtlib.attention.softmax import _csr_softmax
from gtlib.attention.terms import ScoreInputs, ScoreSpec, edge_scores


class Edges(NamedTuple):
    """The edges a ``message_fn`` or ``score_mod`` is called on (receiver-sorted).

    Attributes:
        src: ``[Ec]`` senders.
        dst: ``[Ec]`` receivers.
        index: ``[Ec]`` position of each edge in the caller's edge order (to index per-edge
            tensors such as edge features or the pattern's displacements).
    """

    src: Tensor
    dst: Tensor
    index: Tensor


class Reduction(NamedTuple):
    """What the reference backend computes besides the score: messages and their reduction."""

    reduce: str  # "softmax" | "sum" | "mean" | "max" | "weights"
    value: Tensor | None
    value_edge: Tensor | None
    weights: Tensor | None  # [E, H] caller order, for reduce="weights"
    message_fn: Callable[[Edges], Tensor] | None
    score_mod: Callable[[Tensor, Edges], Tensor] | None
    dropout: float


def reference_attend(
    pattern, spec: ScoreSpec, inputs: ScoreInputs, reduction: Reduction
) -> tuple[Tensor, Tensor | None]:
    """All edges at once. Returns the output and the softmax weights (sorted order) or None."""
    edges = slice(None) if pattern.perm is None else pattern.perm
    return _receivers_output(
        pattern, spec, inputs, reduction, pattern.col, pattern.row, pattern.row, pattern.ptr,
        edges, pattern.num_dst,
    )  # fmt: skip


def chunked_attend(
    pattern, spec: ScoreSpec, inputs: ScoreInputs, reduction: Reduction, chunk_size: int
) -> tuple[Tensor, Tensor | None]:
    """Chunks of whole receivers, each recomputed in the backward (activation checkpointing)."""
    outputs, weights = [], []
    differentiable = torch.is_grad_enabled()
    for chunk in receiver_chunks(pattern, chunk_size):

        def run(chunk=chunk):
            return _receivers_output(
                pattern, spec, inputs, reduction, chunk.src, chunk.dst, chunk.local,
                chunk.offsets, chunk.edges, chunk.stop - chunk.first,
            )  # fmt: skip

        if differentiable:
            out, alpha = checkpoint(run, use_reentrant=False)
        else:
            out, alpha = run()
        outputs.append(out)
        weights.append(alpha)
    if not outputs:  # no receivers
        empty = _empty_output(pattern, inputs, reduction)
        return empty, None
    alpha = torch.cat(weights) if weights[0] is not None else None
    return torch.cat(outputs), alpha


def _receivers_output(
    pattern, spec, inputs, reduction, src, dst, local, offsets, edges, num_receivers
) -> tuple[Tensor, Tensor | None]:
    """The output rows of ``num_receivers`` consecutive receivers whose edges are given."""
    index = edges if isinstance(edges, Tensor) else _edge_range(edges, src)
    batch = Edges(src, dst, index)
    weight = alpha = None
    if reduction.reduce == "softmax":
        scores = edge_scores(spec, inputs, src, dst, edges)
        if reduction.score_mod is not None:
            scores = reduction.score_mod(scores, batch)
        alpha = _csr_softmax(scores, offsets, local)
        weight = F.dropout(alpha, reduction.dropout) if reduction.dropout > 0 else alpha
    elif reduction.reduce == "weights":
        weight = reduction.weights[edges]
    if reduction.message_fn is not None:
        messages = reduction.message_fn(batch)
    else:
        messages = reduction.value.index_select(0, src)
        if reduction.value_edge is not None:
            messages = messages + reduction.value_edge[edges]
    if weight is not None:
        messages = messages * weight.view(*weight.shape, *([1] * (messages.dim() - 2)))
    out_shape = (num_receivers, *messages.shape[1:])
    if reduction.reduce == "max":
        out = messages.new_zeros(out_shape).scatter_reduce(
            0, _expand_index(local, messages), messages, "amax", include_self=False
        )
        return out, None
    out = messages.new_zeros(out_shape).index_add(0, local, messages)
    if reduction.reduce == "mean":
        degree = (offsets[1:] - offsets[:-1]).clamp(min=1).to(out.dtype)
        out = out / degree.view(-1, *([1] * (out.dim() - 1)))
    return out, alpha


def _edge_range(edges: slice, like: Tensor) -> Tensor:
    start = 0 if edges.start is None else edges.start
    stop = start + like.numel() if edges.stop is None else edges.stop
    return torch.arange(start, stop, device=like.device)


def _expand_index(index: Tensor, like: Tensor) -> Tensor:
    return index.view(-1, *([1] * (like.dim() - 1))).expand_as(like)


def _empty_output(pattern, inputs, reduction) -> Tensor:
    if reduction.value is not None:
        value = reduction.value
        return value.new_zeros(pattern.num_dst, *value.shape[1:])
    device = pattern.device
    empty = Edges(*(torch.zeros(0, dtype=torch.long, device=device) for _ in range(3)))
    messages = reduction.message_fn(empty)
    return messages.new_zeros(pattern.num_dst, *messages.shape[1:])
