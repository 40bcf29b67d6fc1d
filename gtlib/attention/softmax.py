"""Numerically stable softmax over the edges of each receiver."""

from __future__ import annotations

import torch
from torch import Tensor

from gtlib.attention.pattern import _MAX_INFERRED_NODES, Pattern, _index_to_ptr
from gtlib.validation import (
    all_finite,
    check_index,
    check_int,
    check_tensor,
    finite_checks_enabled,
)


def segment_softmax(
    scores: Tensor,
    pattern_or_index: Pattern | Tensor,
    num_segments: int | None = None,
) -> Tensor:
    r"""Softmax of per-edge scores over each receiver's edges.

    .. math::
        \alpha_{ij} = \frac{\exp(s_{ij} - m_i)}{\sum_{k \in N(i)} \exp(s_{ik} - m_i)},
        \qquad m_i = \max_{k \in N(i)} s_{ik}

    The max is subtracted per receiver, so large scores do not overflow; receivers without edges
    simply produce no output rows (and never NaN). The gradient is the exact softmax Jacobian
    product :math:`\alpha (g - \sum_k \alpha_k g_k)`.

    Args:
        scores: ``[E, *]`` per-edge scores (e.g. ``[E, H]``), in the caller's edge order.
        pattern_or_index: a :class:`Pattern` (edges in the order of its ``edge_index``) or an
            int64 ``[E]`` tensor with the receiver of every edge (any order).
        num_segments: number of receivers when an index is given (default ``max + 1``).

    Shapes:
        scores ``[E, *]`` -> ``[E, *]``.

    Raises:
        TypeError: ``scores`` not a floating-point tensor, ``pattern_or_index`` neither a
            :class:`Pattern` nor an int32/int64 tensor, ``num_segments`` not an int.
        ValueError: NaN or ``+inf`` scores (on CPU by default, see
            :func:`gtlib.validation.set_finite_checks`), shapes that disagree, indices outside
            ``[0, num_segments)``, a meta index, or an inferred ``num_segments`` above
            ``2**31`` (pass it explicitly).
    """
    if not isinstance(scores, Tensor) or not scores.dtype.is_floating_point:
        raise TypeError("scores must be a floating-point tensor [E, *]")
    if scores.dim() == 0:
        raise ValueError("scores must have at least one dimension (edges first)")
    if finite_checks_enabled(scores.device) and not all_finite(scores, True):
        raise ValueError("scores contain NaN or +inf (-inf is allowed: it masks an edge)")
    if isinstance(pattern_or_index, Pattern):
        pattern = pattern_or_index
        if scores.size(0) != pattern.num_edges:
            raise ValueError(
                f"scores has {scores.size(0)} edges, the pattern has {pattern.num_edges}"
            )
        sorted_scores = pattern.to_sorted(scores)
        return pattern.to_caller(_csr_softmax(sorted_scores, pattern.ptr, pattern.row))
    index = pattern_or_index
    if not isinstance(index, Tensor) or index.dtype not in (torch.int32, torch.int64):
        raise TypeError("pattern_or_index must be a Pattern or an integer tensor [E]")
    if index.dim() != 1 or index.numel() != scores.size(0):
        raise ValueError(
            f"index must have shape [{scores.size(0)}] (one receiver per edge), "
            f"got {list(index.shape)}"
        )
    check_tensor(index, "pattern_or_index", values=True)
    index = index.long()
    if num_segments is None:
        num_segments = int(index.max()) + 1 if index.numel() else 0
        if num_segments > _MAX_INFERRED_NODES:
            raise ValueError(
                f"index holds receiver {num_segments - 1}: inferring num_segments = "
                f"{num_segments} would allocate {8 * num_segments / 1e9:.3g} GB of offsets; pass "
                "num_segments explicitly if there really are that many receivers"
            )
    num_segments = check_int(num_segments, "num_segments", minimum=0)
    check_index(index, "index", num_segments)
    if index.numel() > 1 and not bool((index[1:] >= index[:-1]).all()):
        order = torch.argsort(index, stable=True)
        sorted_index = index[order]
        alpha = _csr_softmax(scores[order], _index_to_ptr(sorted_index, num_segments), sorted_index)
        return torch.empty_like(alpha).index_copy_(0, order, alpha)
    return _csr_softmax(scores, _index_to_ptr(index, num_segments), index)


def _csr_softmax(scores: Tensor, ptr: Tensor, row: Tensor) -> Tensor:
    """Softmax of receiver-sorted scores; ``ptr`` are receiver offsets, ``row`` receivers."""
    return _CSRSoftmax.apply(scores, ptr, row)


def csr_softmax_forward(scores: Tensor, ptr: Tensor, row: Tensor) -> Tensor:
    """Non-differentiable kernel: stable softmax of receiver-sorted scores."""
    if scores.numel() == 0:
        return scores.clone()
    accumulate = torch.float32 if scores.dtype in (torch.float16, torch.bfloat16) else None
    work = scores if accumulate is None else scores.to(accumulate)
    lowest, tiny = torch.finfo(work.dtype).min, torch.finfo(work.dtype).tiny
    # clamps: a receiver whose scores are all -inf (masked) gets weights 0, not NaN
    segment_max = torch.segment_reduce(work, "max", offsets=ptr, axis=0).clamp_(min=lowest)
    shifted = work - segment_max.index_select(0, row)
    exp = shifted.exp_()
    segment_sum = torch.segment_reduce(exp, "sum", offsets=ptr, axis=0).clamp_(min=tiny)
    alpha = exp.div_(segment_sum.index_select(0, row))
    return alpha if accumulate is None else alpha.to(scores.dtype)


def csr_softmax_backward(alpha: Tensor, grad: Tensor, ptr: Tensor, row: Tensor) -> Tensor:
    """Vector-Jacobian product of the segment softmax: ``alpha * (g - sum(alpha * g))``."""
    if alpha.numel() == 0:
        return grad.clone()
    weighted = alpha * grad
    total = torch.segment_reduce(weighted, "sum", offsets=ptr, axis=0)
    return weighted - alpha * total.index_select(0, row)


class _CSRSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores: Tensor, ptr: Tensor, row: Tensor) -> Tensor:
        alpha = csr_softmax_forward(scores, ptr, row)
        ctx.save_for_backward(alpha, ptr, row)
        return alpha

    @staticmethod
    def backward(ctx, grad: Tensor):
        alpha, ptr, row = ctx.saved_tensors
        return csr_softmax_backward(alpha, grad, ptr, row), None, None
