"""The reference backend: gather, score, reduce, scatter, differentiated by autograd.

Any score (built-in terms, a user ``score_mod``), any message (``v_j + e_ij`` or a user
``message_fn``) and any reduction (softmax, sum, mean, max, given weights). Over all edges at once
it is the ``"scatter"`` mode (``torch.compile`` traces it without graph breaks). Over chunks of
whole receivers it is the ``"chunked"`` mode: one autograd function that keeps nothing per edge,
recomputes each chunk in the backward and differentiates it with autograd, gathering and
scattering node-level gradients itself (so a chunk costs its edges, never a dense ``[N, ...]``
gradient). Arbitrary message functions (e.g. a neural operator's kernel MLP on edge geometry)
therefore need no autograd code of their own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from gtlib.attention.backends._chunks import receiver_chunks
from gtlib.attention.softmax import _csr_softmax
from gtlib.attention.terms import ScoreSpec, edge_scores

# How each engine input is gathered for an edge: by sender, by receiver, by edge, or whole.
SOURCE_INPUTS = ("key", "value", "src_score")
TARGET_INPUTS = ("query", "dst_score")
EDGE_INPUTS = ("key_edge", "value_edge", "bias", "weights")
WHOLE_INPUTS = ("att",)


class Edges(NamedTuple):
    """The edges a ``message_fn`` or ``score_mod`` is called on (receiver-sorted).

    Attributes:
        src: ``[Ec]`` senders.
        dst: ``[Ec]`` receivers.
        index: ``[Ec]`` position of each edge in the caller's edge order.
        x_src: the ``src_inputs`` gathered at the senders (``[Ec, ...]`` each).
        x_dst: the ``dst_inputs`` gathered at the receivers.
        x_edge: the ``edge_inputs`` taken at these edges.
    """

    src: Tensor
    dst: Tensor
    index: Tensor
    x_src: tuple[Tensor, ...] = ()
    x_dst: tuple[Tensor, ...] = ()
    x_edge: tuple[Tensor, ...] = ()


class Reduction(NamedTuple):
    """What the engine computes besides the score terms: messages and their reduction."""

    reduce: str  # "softmax" | "sum" | "mean" | "max" | "weights"
    message_fn: Callable[[Edges], Tensor] | None
    score_mod: Callable[[Tensor, Edges], Tensor] | None
    dropout: float
    num_src_inputs: int = 0
    num_dst_inputs: int = 0
    num_edge_inputs: int = 0


def input_layout(reduction: Reduction) -> list[tuple[str, str]]:
    """``(name, how it is gathered)`` of every tensor the engine passes, in order."""
    layout = [(name, "src") for name in SOURCE_INPUTS]
    layout += [(f"src_input{i}", "src") for i in range(reduction.num_src_inputs)]
    layout += [(name, "dst") for name in TARGET_INPUTS]
    layout += [(f"dst_input{i}", "dst") for i in range(reduction.num_dst_inputs)]
    layout += [(name, "edge") for name in EDGE_INPUTS]
    layout += [(f"edge_input{i}", "edge") for i in range(reduction.num_edge_inputs)]
    layout += [(name, "whole") for name in WHOLE_INPUTS]
    return layout


def reference_attend(pattern, spec: ScoreSpec, reduction: Reduction, tensors: list):
    """All edges at once with autograd. Returns the output and the sorted softmax weights."""
    edges = slice(None) if pattern.perm is None else pattern.perm
    index = pattern.perm if pattern.perm is not None else None
    pieces = _gather(input_layout(reduction), tensors, pattern.col, pattern.row, edges)
    return _chunk_output(
        spec, reduction, pieces, pattern.col, pattern.row, index, pattern.row, pattern.ptr,
        pattern.num_dst, None,
    )  # fmt: skip


def chunked_attend(pattern, spec: ScoreSpec, reduction: Reduction, tensors: list, chunk_size):
    """Chunks of whole receivers, recomputed in the backward. Returns the output and the sorted
    softmax weights (detached) or ``None``."""
    chunks = receiver_chunks(pattern, chunk_size)
    layout = input_layout(reduction)
    captured = _captured_leaves(spec, reduction, layout, tensors, pattern.device)
    seed = None
    if reduction.dropout > 0:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    plan = _Plan(pattern, spec, reduction, layout, chunks, seed, len(tensors))
    out, alpha = _ChunkedAttend.apply(plan, *tensors, *captured)
    return out, (alpha if reduction.reduce == "softmax" else None)


class _Plan(NamedTuple):
    pattern: object
    spec: ScoreSpec
    reduction: Reduction
    layout: list
    chunks: list
    seed: int | None
    num_inputs: int


def _gather(layout, tensors, src, dst, edges) -> dict[str, Tensor | None]:
    pieces: dict[str, Tensor | None] = {}
    for (name, kind), x in zip(layout, tensors):
        if x is None:
            pieces[name] = None
        elif kind == "src":
            pieces[name] = x.index_select(0, src)
        elif kind == "dst":
            pieces[name] = x.index_select(0, dst)
        elif kind == "edge":
            pieces[name] = x[edges] if isinstance(edges, slice) else x.index_select(0, edges)
        else:
            pieces[name] = x
    return pieces


def _chunk_output(
    spec, reduction, pieces, src, dst, index, local, offsets, num_receivers, generator
) -> tuple[Tensor, Tensor | None]:
    """The output rows of ``num_receivers`` consecutive receivers from their edges' pieces."""
    if index is None:
        index = torch.arange(src.numel(), device=src.device)
    edges = Edges(
        src, dst, index,
        tuple(pieces[f"src_input{i}"] for i in range(reduction.num_src_inputs)),
        tuple(pieces[f"dst_input{i}"] for i in range(reduction.num_dst_inputs)),
        tuple(pieces[f"edge_input{i}"] for i in range(reduction.num_edge_inputs)),
    )  # fmt: skip
    weight = alpha = None
    if reduction.reduce == "softmax":
        scores = edge_scores(spec, pieces)
        if reduction.score_mod is not None:
            scores = reduction.score_mod(scores, edges)
        alpha = _csr_softmax(scores, offsets, local)
        weight = _dropout(alpha, reduction.dropout, generator)
    elif reduction.reduce == "weights":
        weight = pieces["weights"]
    if reduction.message_fn is not None:
        messages = reduction.message_fn(edges)
    else:
        messages = pieces["value"]
        if pieces["value_edge"] is not None:
            messages = messages + pieces["value_edge"]
    if weight is not None:
        messages = messages * weight.view(*weight.shape, *([1] * (messages.dim() - 2)))
    out_shape = (num_receivers, *messages.shape[1:])
    if reduction.reduce == "max":
        index_max = local.view(-1, *([1] * (messages.dim() - 1))).expand_as(messages)
        out = messages.new_zeros(out_shape).scatter_reduce(
            0, index_max, messages, "amax", include_self=False
        )
        return out, None
    out = messages.new_zeros(out_shape).index_add(0, local, messages)
    if reduction.reduce == "mean":
        degree = (offsets[1:] - offsets[:-1]).clamp(min=1).to(out.dtype)
        out = out / degree.view(-1, *([1] * (out.dim() - 1)))
    return out, alpha


def _dropout(alpha: Tensor, p: float, generator) -> Tensor:
    if p <= 0:
        return alpha
    if generator is None:
        return torch.nn.functional.dropout(alpha, p)
    keep = torch.rand(alpha.shape, generator=generator, device=alpha.device) >= p
    return alpha * keep / (1.0 - p)


def _chunk_generator(plan: _Plan, chunk_index: int, device) -> torch.Generator | None:
    if plan.seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(plan.seed + chunk_index)
    return generator


def _captured_leaves(spec, reduction, layout, tensors, device) -> list[Tensor]:
    """The leaf tensors requiring grad that ``message_fn``/``score_mod`` close over (module
    parameters): found by running them on zero edges and walking the autograd graph."""
    if reduction.message_fn is None and reduction.score_mod is None:
        return []
    if not torch.is_grad_enabled():
        return []
    empty = torch.zeros(0, dtype=torch.long, device=device)
    with torch.enable_grad():
        pieces = {
            name: None if x is None else (x[:0].detach() if kind != "whole" else x.detach())
            for (name, kind), x in zip(layout, tensors)
        }
        offsets = torch.zeros(1, dtype=torch.long, device=device)
        out, _ = _chunk_output(spec, reduction, pieces, empty, empty, empty, empty, offsets, 0,
                               None)  # fmt: skip
    leaves, seen, stack = [], set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        variable = getattr(node, "variable", None)
        if variable is not None:
            if all(variable is not leaf for leaf in leaves):
                leaves.append(variable)
            continue
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


class _ChunkedAttend(torch.autograd.Function):
    @staticmethod
    def forward(ctx, plan: _Plan, *tensors):
        inputs = list(tensors[: plan.num_inputs])
        pattern = plan.pattern
        outputs, weights = [], []
        for k, chunk in enumerate(plan.chunks):
            pieces = _gather(plan.layout, inputs, chunk.src, chunk.dst, chunk.edges)
            index = _edge_index(chunk)
            out, alpha = _chunk_output(
                plan.spec, plan.reduction, pieces, chunk.src, chunk.dst, index, chunk.local,
                chunk.offsets, chunk.stop - chunk.first, _chunk_generator(plan, k, pattern.device),
            )  # fmt: skip
            outputs.append(out)
            weights.append(alpha)
        if outputs:
            out = torch.cat(outputs)
        else:
            out = _empty_output(plan, inputs)
        alpha = torch.cat(weights) if weights and weights[0] is not None else out.new_zeros(0)
        ctx.mark_non_differentiable(alpha)
        ctx.plan = plan
        ctx.save_for_backward(*tensors)
        return out, alpha

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out, _grad_alpha):
        plan = ctx.plan
        tensors = ctx.saved_tensors
        inputs, captured = list(tensors[: plan.num_inputs]), list(tensors[plan.num_inputs :])
        needs = ctx.needs_input_grad[1:]
        grads: list[Tensor | None] = []
        for x, need in zip(inputs, needs):
            grads.append(torch.zeros_like(x) if need and x is not None else None)
        captured_needs = needs[plan.num_inputs :]
        captured_grads = [
            torch.zeros_like(c) if n else None for c, n in zip(captured, captured_needs)
        ]
        grad_out = grad_out.contiguous()
        for k, chunk in enumerate(plan.chunks):
            with torch.no_grad():
                pieces = _gather(plan.layout, inputs, chunk.src, chunk.dst, chunk.edges)
            leaves = []
            for (name, _), need in zip(plan.layout, needs):
                piece = pieces[name]
                if piece is not None:
                    piece = piece.detach().requires_grad_(need)
                    pieces[name] = piece
                if need and piece is not None:
                    leaves.append((name, piece))
            wanted = [c for c, n in zip(captured, captured_needs) if n]
            with torch.enable_grad():
                out, _ = _chunk_output(
                    plan.spec, plan.reduction, pieces, chunk.src, chunk.dst, _edge_index(chunk),
                    chunk.local, chunk.offsets, chunk.stop - chunk.first,
                    _chunk_generator(plan, k, plan.pattern.device),
                )  # fmt: skip
            targets = [piece for _, piece in leaves] + wanted
            if not targets or not out.requires_grad:
                continue
            results = torch.autograd.grad(
                out, targets, grad_out[chunk.first : chunk.stop], allow_unused=True
            )
            by_name = dict(zip((name for name, _ in leaves), results[: len(leaves)]))
            for position, ((name, kind), _) in enumerate(zip(plan.layout, inputs)):
                grad = by_name.get(name)
                if grad is not None and grads[position] is not None:
                    _accumulate(grads[position], kind, grad, chunk)
            wanted_grads = iter(results[len(leaves) :])
            for i, need in enumerate(captured_needs):
                if need:
                    grad = next(wanted_grads)
                    if grad is not None:
                        captured_grads[i] += grad
        return (None, *grads, *captured_grads)


def _accumulate(target: Tensor, kind: str, grad: Tensor, chunk) -> None:
    """Adds a chunk's gradient of a gathered input into the input's gradient."""
    if kind == "src":
        target.index_add_(0, chunk.src, grad)
    elif kind == "dst":
        target[chunk.first : chunk.stop].index_add_(0, chunk.local, grad)
    elif kind == "edge" and isinstance(chunk.edges, slice):
        target[chunk.edges] += grad
    elif kind == "edge":
        target.index_add_(0, chunk.edges, grad)
    else:
        target += grad


def _edge_index(chunk) -> Tensor:
    if isinstance(chunk.edges, slice):
        return torch.arange(chunk.start, chunk.end, device=chunk.src.device)
    return chunk.edges


def _empty_output(plan: _Plan, inputs: list) -> Tensor:
    """Zeros ``[num_dst, ...]`` when there are no chunks (no receivers)."""
    pattern = plan.pattern
    device = pattern.device
    empty = torch.zeros(0, dtype=torch.long, device=device)
    pieces = {name: None if x is None else (x[:0] if kind != "whole" else x)
              for (name, kind), x in zip(plan.layout, inputs)}  # fmt: skip
    offsets = torch.zeros(1, dtype=torch.long, device=device)
    out, _ = _chunk_output(plan.spec, plan.reduction, pieces, empty, empty, empty, empty, offsets,
                           0, None)  # fmt: skip
    return out.new_zeros(pattern.num_dst, *out.shape[1:])
