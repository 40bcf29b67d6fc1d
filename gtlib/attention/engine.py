"""The attention engine: how scores are formed and reduced over a :class:`Pattern`, once.

:func:`attend` composes a score from the terms of :mod:`gtlib.attention.terms` (or a user
``score_mod``), a message (``v_j + e_ij`` or a user ``message_fn``) and a reduction (softmax,
sum, mean, max or given weights), and sends the call to a backend:

============  ===========================================================================
``scatter``   gather/scatter over all edges, autograd; anything; compiles with ``torch.compile``
``chunked``   the same over chunks of whole receivers with recompute in the backward; anything
``sparse``    softmax family on sparse-matrix kernels (SDDMM + SpMM), ``[E, H]`` state
``stream``    softmax family, online softmax over edge chunks, recomputing backward
``fused``     softmax family (dot/additive/static scores), compiled C++ kernel on the CPU
``triton``    softmax family (dot/additive scores, dropout), fused Triton kernels on CUDA devices
              (on CPU tensors through Triton's interpreter, ``TRITON_INTERPRET=1``, for tests)
``dense``     block patterns (per-graph all-to-all, windows) through SDPA
============  ===========================================================================
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from gtlib.attention.backends._chunks import ChunkPlan, default_chunk_size
from gtlib.attention.backends.dense import dense_attention
from gtlib.attention.backends.reference import (
    Edges,
    Reduction,
    chunked_attend,
    input_layout,
    reference_attend,
)
from gtlib.attention.backends.sparse import sparse_attention_csr
from gtlib.attention.backends.stream import stream_attention, stream_attention_weights
from gtlib.attention.pattern import Pattern
from gtlib.attention.terms import ScoreSpec
from gtlib.validation import (
    all_finite,
    check_bool,
    check_choice,
    check_int,
    check_real,
    finite_checks_enabled,
)

__all__ = ["Edges", "attend", "MODES", "REDUCTIONS", "SCORES"]

SCORES = ("dot", "additive", "static", None)
REDUCTIONS = ("softmax", "sum", "mean", "max", "weights")
MODES = ("auto", "scatter", "chunked", "sparse", "stream", "fused", "triton", "dense")
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_TRITON_DTYPES = (torch.float32, *_LOW_PRECISION)
# From this many per-edge elements (E * H * C) on, "auto" leaves the all-edges scatter mode.
SPARSE_THRESHOLD = 1 << 16
# Edges per chunk of the chunked mode when no chunk_size is given and the width is unknown.
CHUNKED_EDGES = 8192


def attend(
    pattern: Pattern,
    value: Tensor | None = None,
    *,
    query: Tensor | None = None,
    key: Tensor | None = None,
    score: str | None = "dot",
    att: Tensor | None = None,
    negative_slope: float | None = 0.2,
    src_score: Tensor | None = None,
    dst_score: Tensor | None = None,
    key_edge: Tensor | None = None,
    value_edge: Tensor | None = None,
    bias: Tensor | None = None,
    scale: float | None = None,
    score_mod: Callable[[Tensor, Edges], Tensor] | None = None,
    message_fn: Callable[[Edges], Tensor] | None = None,
    src_inputs: tuple[Tensor, ...] = (),
    dst_inputs: tuple[Tensor, ...] = (),
    edge_inputs: tuple[Tensor, ...] = (),
    reduce: str = "softmax",
    weights: Tensor | None = None,
    dropout: float = 0.0,
    mode: str = "auto",
    chunk_size: int | None = None,
    return_attention: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Scores, weights and reduces messages over the edges of a pattern.

    For every receiver :math:`i`, over its senders :math:`j \in N(i)`:

    .. math::
        s_{ij} &= \mathrm{score\_mod}\Big(\text{scale} \cdot t_{ij} + b_{ij}\Big), \qquad
        t_{ij} = \begin{cases}
            q_i \cdot (k_j + e^k_{ij}) & \texttt{score="dot"} \\
            a \cdot \mathrm{act}(q_i + k_j + e^k_{ij}) & \texttt{score="additive"} \\
            \mathrm{act}(s_j + d_i + e^k_{ij}) & \texttt{score="static"} \\
            0 & \texttt{score=None}
        \end{cases} \\
        m_{ij} &= v_j + e^v_{ij} \quad\text{or}\quad \mathrm{message\_fn}(\text{edges}) \\
        o_i &= \textstyle\sum_j \operatorname{softmax}_j(s_{ij})\, m_{ij}\ (\texttt{softmax}),\
            \sum_j w_{ij} m_{ij}\ (\texttt{weights}),\ \sum_j m_{ij},\
            \tfrac{1}{|N(i)|}\sum_j m_{ij},\ \max_j m_{ij}

    ``act`` is a LeakyReLU with ``negative_slope`` (``None``: no activation). Receivers without
    senders get zeros, never NaN. Scores are only formed for ``reduce="softmax"``.

    Args:
        pattern: who attends to whom (:class:`Pattern`).
        value: ``[N_src, H, C_v]`` values, or ``None`` with a ``message_fn``.
        query, key: ``[N_dst, H, C]`` and ``[N_src, H, C]`` for ``"dot"``/``"additive"``.
        score: ``"dot"``, ``"additive"`` (GATv2), ``"static"`` (GAT) or ``None``.
        att: ``[H, C]`` attention vector of ``"additive"``.
        negative_slope: LeakyReLU slope of ``"additive"``/``"static"``; ``None``: identity.
        src_score, dst_score: ``[N_src, H]`` and ``[N_dst, H]`` per-node terms of ``"static"``
            (``dst_score`` optional).
        key_edge: per-edge score term: ``[E, H, C]`` added to the key, or ``[E, H]`` added to
            the static score.
        value_edge: ``[E, H, C_v]`` per-edge term added to the value.
        bias: ``[E, H]`` additive score term (after ``scale``).
        scale: score multiplier; default ``1 / sqrt(C)`` for ``"dot"``, else 1.
        score_mod: ``f(scores [Ec, H], edges: Edges) -> [Ec, H]`` applied last (e.g. a
            Graphormer-style bias of the pair); differentiated by autograd.
        message_fn: ``f(edges: Edges) -> [Ec, ...]`` messages in place of ``v_j + e_ij`` (e.g. a
            kernel on edge geometry); ``[Ec, H, ...]`` when weighted.
        src_inputs, dst_inputs, edge_inputs: node tensors ``[N_src, ...]``, ``[N_dst, ...]`` and
            per-edge tensors ``[E, ...]`` that ``message_fn``/``score_mod`` read, handed to them
            gathered at the chunk's edges as ``edges.x_src``, ``edges.x_dst``, ``edges.x_edge``.
            ``message_fn`` and ``score_mod`` may close over parameters (leaf tensors); tensors
            computed from parameters must come in through these arguments, so that the chunked
            backend gathers and scatters their gradients edge by edge.
        reduce: ``"softmax"``, ``"sum"``, ``"mean"``, ``"max"`` or ``"weights"``.
        weights: ``[E, H]`` given weights for ``reduce="weights"``.
        dropout: probability of dropping a softmax weight (pass ``p if training else 0``).
        mode: a backend (see the module docstring) or ``"auto"``.
        chunk_size: edges per chunk of the chunked backends.
        return_attention: also return the softmax weights ``[E, H]`` (before dropout) in the
            caller's edge order (differentiable in the scatter and chunked modes).

    Per-edge tensors are in the caller's edge order (``pattern.edge_index``); float16/bfloat16
    inputs are computed in float32 and cast back (except through ``message_fn``).

    Shapes:
        -> ``[N_dst, H, C_v]`` (or ``[N_dst, ...]`` from ``message_fn``), and ``[E, H]``.
    """
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a gtlib.attention.Pattern, got {type(pattern).__name__}")
    _check_user_inputs(pattern, src_inputs, dst_inputs, edge_inputs, score_mod, message_fn)
    spec, heads = _validate(
        pattern, value, query, key, score, att, negative_slope, src_score, dst_score, key_edge,
        value_edge, bias, scale, score_mod, message_fn, reduce, weights, dropout, mode,
        chunk_size, return_attention,
    )  # fmt: skip
    builtin = score_mod is None and message_fn is None and reduce == "softmax"
    mode = _resolve_mode(mode, pattern, spec, value, key_edge, value_edge, dropout, builtin,
                         return_attention, heads)  # fmt: skip
    tensors = dict(query=query, key=key, value=value, att=att, src_score=src_score,
                   dst_score=dst_score, key_edge=key_edge, value_edge=value_edge, bias=bias,
                   weights=weights)  # fmt: skip
    for prefix, given in (("src_input", src_inputs), ("dst_input", dst_inputs),
                          ("edge_input", edge_inputs)):  # fmt: skip
        tensors.update({f"{prefix}{i}": x for i, x in enumerate(given)})
    out_dtype = None if value is None else value.dtype  # message_fn outputs are left alone
    tensors = _backend_tensors(tensors, pattern, spec, reduce, heads, mode, out_dtype)
    call = _Call(pattern, spec, heads, mode, reduce, message_fn, score_mod, float(dropout),
                 chunk_size, return_attention, (len(src_inputs), len(dst_inputs),
                 len(edge_inputs)))  # fmt: skip
    out, alpha = _BACKENDS[mode](call, tensors)
    if out_dtype is not None:
        out = out.to(out_dtype)
    if finite_checks_enabled(out.device) and not all_finite(out):
        _raise_not_finite(tensors)
    if return_attention:
        return out, pattern.to_caller(alpha).to(out.dtype)
    return out


def _backend_tensors(tensors, pattern, spec, reduce, heads, mode, out_dtype) -> dict:
    """The inputs as the backends take them: float32 for half-precision values (except the
    dense and Triton backends, which read them as they are), a zero bias when only a
    ``score_mod`` forms the scores."""
    if out_dtype in _LOW_PRECISION and mode not in ("dense", "triton"):
        tensors = {k: t if t is None or "_input" in k else t.float() for k, t in tensors.items()}
    if spec.kind is None and tensors["bias"] is None and reduce == "softmax":
        like = tensors["value"] if tensors["value"] is not None else tensors["query"]
        if like is None:
            raise ValueError("score=None needs a bias [E, H] or a value to count the heads")
        tensors["bias"] = like.new_zeros(pattern.num_edges, heads)
    return tensors


class _Call(NamedTuple):
    """What a backend needs besides the tensors."""

    pattern: Pattern
    spec: ScoreSpec
    heads: int
    mode: str
    reduce: str
    message_fn: Callable | None
    score_mod: Callable | None
    dropout: float
    chunk_size: int | None
    return_attention: bool
    num_inputs: tuple[int, int, int]  # src_inputs, dst_inputs, edge_inputs


def _run_dense(call: _Call, t: dict):
    out = dense_attention(t["query"], t["key"], t["value"], call.pattern, call.spec.scale,
                          call.dropout, t["bias"])  # fmt: skip
    return out, None


def _run_reference(call: _Call, t: dict):
    reduction = Reduction(call.reduce, call.message_fn, call.score_mod, call.dropout,
                          *call.num_inputs)  # fmt: skip
    ordered = [t.get(name) for name, _ in input_layout(reduction)]
    if call.mode == "scatter":
        return reference_attend(call.pattern, call.spec, reduction, ordered)
    value = t["value"]
    width = call.heads * (value.size(-1) if value is not None else 64)
    size = call.chunk_size or (default_chunk_size(1, width) if value is not None else
                               CHUNKED_EDGES)  # fmt: skip
    return chunked_attend(call.pattern, call.spec, reduction, ordered, size)


def _sorted_edge_terms(call: _Call, t: dict) -> dict:
    return {k: None if t[k] is None else call.pattern.to_sorted(t[k])
            for k in ("key_edge", "value_edge", "bias")}  # fmt: skip


def _run_fused(call: _Call, t: dict):
    spec = call.spec
    edge_terms = _sorted_edge_terms(call, t)
    if spec.kind == "static":
        args, kwargs = _static_as_additive(call, t, edge_terms)
    else:
        args = (t["query"], t["key"], t["value"], call.pattern)
        kwargs = dict(score=spec.kind, att=t["att"], negative_slope=spec.negative_slope,
                      scale=spec.scale, **edge_terms)  # fmt: skip
    fused = _fused_backend()
    out = fused.fused_attention(*args, **kwargs)
    alpha = fused.fused_attention_weights(*args, **kwargs) if call.return_attention else None
    return out, alpha


def _static_as_additive(call: _Call, t: dict, edge_terms: dict) -> tuple[tuple, dict]:
    """GAT's static score ``scale act(s_j + d_i + e_ij)`` as the kernel's additive score with one
    channel: ``scale att . act(q_i + k_j + ek_ij)`` with ``q = d``, ``k = s``, ``ek = e`` (each
    ``[*, H, 1]``) and ``att = 1``; no activation is LeakyReLU with slope 1."""
    src, dst, spec = t["src_score"], t["dst_score"], call.spec
    if dst is None:
        dst = src.new_zeros(call.pattern.num_dst, src.size(1))
    key_edge = edge_terms.pop("key_edge")
    kwargs = dict(
        score="additive",
        att=src.new_ones(src.size(1), 1),
        negative_slope=1.0 if spec.negative_slope is None else spec.negative_slope,
        scale=spec.scale,
        key_edge=None if key_edge is None else key_edge.unsqueeze(-1),
        **edge_terms,
    )
    return (dst.unsqueeze(-1), src.unsqueeze(-1), t["value"], call.pattern), kwargs


def _run_triton(call: _Call, t: dict):
    spec = call.spec
    result = _triton_backend().triton_attention(
        t["query"], t["key"], t["value"], call.pattern, score=spec.kind, att=t["att"],
        negative_slope=spec.negative_slope, scale=spec.scale, dropout=call.dropout,
        return_attention=call.return_attention, **_sorted_edge_terms(call, t),
    )  # fmt: skip
    return result if call.return_attention else (result, None)


def _run_chunk_plan(call: _Call, t: dict):
    plan = ChunkPlan(call.pattern, call.spec, call.heads, _channels(t), t["value"].size(-1),
                     call.dropout, call.chunk_size)  # fmt: skip
    if call.mode == "sparse":
        return sparse_attention_csr(plan, t)
    out = stream_attention(plan, t)
    return out, stream_attention_weights(plan, t) if call.return_attention else None


_BACKENDS = {"dense": _run_dense, "scatter": _run_reference, "chunked": _run_reference,
             "fused": _run_fused, "triton": _run_triton, "sparse": _run_chunk_plan,
             "stream": _run_chunk_plan}  # fmt: skip


def _raise_not_finite(tensors: dict) -> None:
    """Names the input that made the output non-finite (a ``-inf`` bias masks, it is valid)."""
    for name, x in tensors.items():
        if x is None or not x.dtype.is_floating_point:
            continue
        bad = torch.isnan(x) | (x == float("inf")) if name == "bias" else ~torch.isfinite(x)
        if bool(bad.any()):
            what = "NaN or +inf" if name == "bias" else "NaN or infinite"
            raise ValueError(f"{name} contains {int(bad.sum())} {what} value(s)")
    raise ValueError(
        "the attention output is not finite although every input is: scores or values "
        "overflowed the dtype, or a message_fn/score_mod produced NaN or inf"
    )


def _channels(tensors: dict) -> int:
    query = tensors["query"]
    return query.size(-1) if query is not None else 1


def _resolve_mode(
    mode, pattern, spec, value, key_edge, value_edge, dropout, builtin, return_attention, heads
) -> str:
    """The backend: ``mode`` checked against what it supports, or the fastest that fits."""
    extras = key_edge is not None or value_edge is not None
    dense_ok = pattern.blocks is not None and spec.kind == "dot" and not extras and builtin
    fusable = spec.kind in ("dot", "static") or (
        spec.kind == "additive" and spec.negative_slope is not None
    )
    triton_dtype = value is not None and value.dtype in _TRITON_DTYPES
    if mode != "auto":
        _check_mode(mode, pattern, spec, value, dropout, builtin, return_attention, dense_ok,
                    fusable, triton_dtype)  # fmt: skip
        return mode
    width = heads * max(_width(value), 1)
    large = pattern.num_edges * width >= SPARSE_THRESHOLD
    if torch.compiler.is_compiling():
        return "scatter"
    if not builtin:
        return "chunked" if large else "scatter"
    if dense_ok and not return_attention:
        return "dense"
    if not large or spec.kind is None:
        return "scatter"
    if pattern.device.type != "cpu":
        triton_ok = (
            spec.kind in ("dot", "additive")
            and triton_dtype
            and _triton_backend().available(pattern.device)
        )
        return "triton" if triton_ok else "stream"
    if fusable and dropout == 0 and _fused_backend().available():
        return "fused"
    return "sparse"


def _check_mode(mode, pattern, spec, value, dropout, builtin, return_attention, dense_ok,
                fusable, triton_dtype) -> None:  # fmt: skip
    if mode == "dense" and not dense_ok:
        raise ValueError(
            "mode='dense' needs a block pattern (Pattern.full or Pattern.windows), score='dot', "
            "no key_edge or value_edge, no score_mod or message_fn and reduce='softmax'"
        )
    if mode == "dense" and return_attention:
        raise ValueError("mode='dense' cannot return attention weights; use mode='scatter'")
    if mode in ("sparse", "stream", "fused", "triton") and not builtin:
        raise ValueError(
            f"mode={mode!r} runs the softmax family with built-in scores and values; "
            "score_mod, message_fn and other reductions need mode='scatter' or 'chunked'"
        )
    if mode in ("sparse", "stream") and spec.kind is None:
        raise ValueError(f"mode={mode!r} needs a score term (score='dot', 'additive' or 'static')")
    if mode == "fused":
        _check_fused(pattern, dropout, fusable)
    if mode == "triton":
        _check_triton(pattern, spec, value, triton_dtype)


def _check_fused(pattern, dropout, fusable) -> None:
    if not fusable or dropout > 0 or pattern.device.type != "cpu":
        raise ValueError(
            "mode='fused' (the compiled CPU kernel) takes score='dot', 'static' or 'additive' "
            "with a LeakyReLU, no dropout, on CPU tensors"
        )
    if not _fused_backend().available():
        raise RuntimeError(
            "mode='fused' needs the compiled CPU kernel, which is not available here (no "
            "working compiler, or GTLIB_FUSED_CPU=0); use mode='auto' to fall back"
        )


def _check_triton(pattern, spec, value, triton_dtype) -> None:
    if spec.kind not in ("dot", "additive"):
        raise ValueError("mode='triton' takes score='dot' or 'additive'")
    if not triton_dtype:
        raise ValueError(
            "mode='triton' computes in float32: it takes float32, bfloat16 or float16 "
            f"tensors, got {None if value is None else value.dtype} (use mode='stream')"
        )
    backend = _triton_backend()
    if not backend.available(pattern.device):
        # CPU tensors with Triton installed: the inputs do not fit the mode (a ValueError);
        # no Triton: the environment lacks it (a RuntimeError)
        installed = importlib.util.find_spec("triton") is not None
        error = _ModeInputError if installed and pattern.device.type != "cuda" else RuntimeError
        raise error(
            "mode='triton' needs Triton and a CUDA device (or TRITON_INTERPRET=1 with CPU "
            f"tensors); the pattern is on {pattern.device}"
        )


class _ModeInputError(ValueError, RuntimeError):
    """A backend asked for by ``mode`` cannot take these inputs (e.g. ``mode="triton"`` with
    CPU tensors): a :class:`ValueError` of the call, and a :class:`RuntimeError` as this error
    was before."""


def _check_user_inputs(pattern, src_inputs, dst_inputs, edge_inputs, score_mod, message_fn):
    sizes = (("src_inputs", src_inputs, pattern.num_src, "senders"),
             ("dst_inputs", dst_inputs, pattern.num_dst, "receivers"),
             ("edge_inputs", edge_inputs, pattern.num_edges, "edges"))  # fmt: skip
    for name, given, size, what in sizes:
        if not isinstance(given, (tuple, list)):
            raise TypeError(f"{name} must be a tuple of tensors, got {type(given).__name__}")
        if given and score_mod is None and message_fn is None:
            raise ValueError(f"{name} are read by a message_fn or score_mod; neither was given")
        for i, x in enumerate(given):
            if not isinstance(x, Tensor):
                raise TypeError(f"{name}[{i}] must be a tensor, got {type(x).__name__}")
            if x.dim() == 0 or x.size(0) != size:
                raise ValueError(
                    f"{name}[{i}] must have {size} rows (the pattern's {what}), got shape "
                    f"{list(x.shape)}"
                )
            if x.device != pattern.device:
                raise ValueError(
                    f"{name}[{i}] is on {x.device} but the pattern on {pattern.device}"
                )


def _fused_backend():
    """The compiled CPU backend's module (imported on first use: it may build the kernel)."""
    from gtlib.attention.backends import cpu

    return cpu


def _triton_backend():
    """The Triton backend's module (its kernels are made on first use)."""
    from gtlib.attention.backends import gpu

    return gpu


def _width(value: Tensor | None) -> int:
    return 0 if value is None else value.size(-1)


def _validate(
    pattern, value, query, key, score, att, negative_slope, src_score, dst_score, key_edge,
    value_edge, bias, scale, score_mod, message_fn, reduce, weights, dropout, mode, chunk_size,
    return_attention,
) -> tuple[ScoreSpec, int]:  # fmt: skip
    score = _check_options(score, reduce, mode, dropout, chunk_size, score_mod, message_fn,
                           value, negative_slope, return_attention)  # fmt: skip
    check = _TensorCheck(pattern)
    heads = None
    if reduce == "softmax" and score in ("dot", "additive"):
        heads = _check_query_key(check, pattern, score, query, key, att, key_edge)
    elif reduce == "softmax" and score == "static":
        heads = _check_static(check, pattern, src_score, dst_score, key_edge)
    elif reduce == "softmax" and score is None and score_mod is None:
        raise ValueError("score=None needs a score_mod to form the scores")
    if reduce != "softmax" or score is None:
        unused = {"query": query, "key": key, "att": att, "src_score": src_score,
                  "dst_score": dst_score, "key_edge": key_edge}  # fmt: skip
        for name, x in unused.items():
            if x is not None:
                raise ValueError(f"{name} is only used by a softmax with a score term")
    heads = _check_values(check, pattern, heads, value, value_edge, bias, weights)
    _check_reduction_arguments(reduce, weights, bias, dropout, return_attention)
    if check.device is not None and check.device != pattern.device:
        raise ValueError(f"the inputs are on {check.device} but the pattern on {pattern.device}")
    if score == "dot" and scale is None and query is not None:
        scale = 1.0 / math.sqrt(query.size(-1))
    scale = 1.0 if scale is None else check_real(scale, "scale")
    slope = None if negative_slope is None else float(negative_slope)
    return ScoreSpec(score, scale, slope), (heads or 1)


def _check_options(score, reduce, mode, dropout, chunk_size, score_mod, message_fn, value,
                   negative_slope, return_attention) -> str | None:  # fmt: skip
    """The non-tensor arguments; returns the score's canonical name."""
    if score == "gatv2":
        score = "additive"
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES} (or 'gatv2'), got {score!r}")
    check_choice(reduce, "reduce", REDUCTIONS)
    check_choice(mode, "mode", MODES)
    if not 0.0 <= check_real(dropout, "dropout") < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    if chunk_size is not None:
        check_int(chunk_size, "chunk_size", minimum=1)
    for name, fn in (("score_mod", score_mod), ("message_fn", message_fn)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    check_bool(return_attention, "return_attention")
    if (value is None) == (message_fn is None):
        raise ValueError("pass exactly one of value and message_fn")
    if negative_slope is not None:
        check_real(negative_slope, "negative_slope", nonnegative=True)
    return score


class _TensorCheck:
    """Checks tensors one by one: floating point, the shape asked for, one dtype and device."""

    def __init__(self, pattern: Pattern) -> None:
        self.num_edges = pattern.num_edges
        self.dtype = self.device = None

    def __call__(self, name, x, shape, what="a floating-point tensor") -> None:
        if x is None:
            return
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be {what} of shape {_shape_text(shape)}")
        sizes = [size for size, _ in shape]
        if x.dim() != len(shape) or any(s is not None and s != d for s, d in zip(sizes, x.shape)):
            raise ValueError(f"{name} must have shape {_shape_text(shape)}, got {list(x.shape)}")
        if self.dtype is None:
            self.dtype, self.device = x.dtype, x.device
        elif x.dtype != self.dtype:
            raise TypeError(
                f"the inputs must share a dtype: {name} has {x.dtype}, others {self.dtype}"
            )
        if x.device != self.device:
            raise ValueError(f"{name} is on {x.device} but the other inputs on {self.device}")


def _check_query_key(check, pattern, score, query, key, att, key_edge) -> int:
    if query is None or key is None:
        raise ValueError(f"score={score!r} needs query [N_dst, H, C] and key [N_src, H, C]")
    check("query", query, ((pattern.num_dst, "receivers"), (None, "heads"), (None, "channels")))
    heads, channels = query.size(1), query.size(2)
    if channels == 0:
        raise ValueError(f"query must have at least one channel, got shape {list(query.shape)}")
    check("key", key, ((pattern.num_src, "senders"), (heads, "heads"), (channels, "channels")))
    if score == "additive":
        if att is None:
            raise ValueError("score='additive' needs the attention vector att [H, C]")
        check("att", att, ((heads, "heads"), (channels, "channels")))
    elif att is not None:
        raise ValueError("att is only used with score='additive'")
    edge_shape = ((check.num_edges, "edges"), (heads, "heads"), (channels, "channels"))
    check("key_edge", key_edge, edge_shape)
    return heads


def _check_static(check, pattern, src_score, dst_score, key_edge) -> int:
    if src_score is None:
        raise ValueError("score='static' needs src_score [N_src, H]")
    check("src_score", src_score, ((pattern.num_src, "senders"), (None, "heads")))
    heads = src_score.size(1)
    check("dst_score", dst_score, ((pattern.num_dst, "receivers"), (heads, "heads")))
    check("key_edge", key_edge, ((check.num_edges, "edges"), (heads, "heads")))
    return heads


def _check_values(check, pattern, heads, value, value_edge, bias, weights) -> int | None:
    if value is not None:
        check("value", value, ((pattern.num_src, "senders"), (heads, "heads"), (None, "channels")))
        heads = value.size(1) if heads is None else heads
        edge_shape = ((check.num_edges, "edges"), (heads, "heads"), (value.size(2), "channels"))
        check("value_edge", value_edge, edge_shape)
    elif value_edge is not None:
        raise ValueError("value_edge needs value (a message_fn forms its own messages)")
    if bias is not None or weights is not None:
        given = bias if bias is not None else weights
        if heads is None and isinstance(given, Tensor) and given.dim() == 2:
            heads = given.size(1)
        check("bias", bias, ((check.num_edges, "edges"), (heads, "heads")))
        check("weights", weights, ((check.num_edges, "edges"), (heads, "heads")))
    return heads


def _check_reduction_arguments(reduce, weights, bias, dropout, return_attention) -> None:
    if reduce == "weights" and weights is None:
        raise ValueError("reduce='weights' needs weights [E, H]")
    if reduce != "weights" and weights is not None:
        raise ValueError("weights are only used with reduce='weights'")
    if bias is not None and reduce != "softmax":
        raise ValueError("bias is only used with reduce='softmax'")
    if dropout > 0 and reduce != "softmax":
        raise ValueError("dropout applies to softmax weights; use reduce='softmax'")
    if return_attention and reduce != "softmax":
        raise ValueError("return_attention needs reduce='softmax'")


def _shape_text(shape) -> str:
    return "[" + ", ".join(f"{'*' if s is None else s} {what}" for s, what in shape) + "]"
