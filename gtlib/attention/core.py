"""``sparse_attention``: per-edge scores, segment softmax and weighted aggregation."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from gtlib.attention.pattern import Pattern
from gtlib.attention.softmax import _csr_softmax
from gtlib.attention.sparse import sparse_attention_csr
from gtlib.attention.stream import stream_attention, stream_attention_weights

SCORES = ("dot", "gatv2")
MODES = ("auto", "scatter", "sparse", "stream", "dense")
_LOW_PRECISION = (torch.float16, torch.bfloat16)
# From this many per-edge elements (E * H * C) on, "auto" uses the sparse-matrix kernels.
SPARSE_THRESHOLD = 1 << 16


def sparse_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    pattern: Pattern,
    *,
    score: str = "dot",
    att: Tensor | None = None,
    negative_slope: float = 0.2,
    key_edge: Tensor | None = None,
    value_edge: Tensor | None = None,
    bias: Tensor | None = None,
    scale: float | None = None,
    dropout: float = 0.0,
    mode: str = "auto",
    chunk_size: int | None = None,
    return_attention: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Multi-head attention restricted to a sparsity pattern.

    For every receiver :math:`i` and head :math:`h`:

    .. math::
        s_{ij} &= \text{scale} \cdot \begin{cases}
            q_i \cdot (k_j + e^k_{ij}) & \text{score="dot"} \\
            a \cdot \mathrm{LeakyReLU}(q_i + k_j + e^k_{ij}) & \text{score="gatv2"}
        \end{cases} \; + \; b_{ij} \\
        \alpha_{ij} &= \operatorname{softmax}_{j \in N(i)}(s_{ij}), \qquad
        o_i = \sum_{j \in N(i)} \operatorname{dropout}(\alpha_{ij}) \, (v_j + e^v_{ij})

    Receivers without senders get zeros. The softmax subtracts each receiver's max.

    Modes:
        - ``"scatter"``: gathers per-edge tensors and differentiates with autograd; compiles under
          ``torch.compile(fullgraph=True)``.
        - ``"sparse"``: sparse-matrix kernels (``torch.sparse`` CSR: sampled dense-dense products
          for dot-product scores, sparse-dense products for aggregation) with a hand-written
          backward; keeps ``[E, H]`` per-edge state and nothing of size ``E x H x C``.
        - ``"stream"``: walks receiver-sorted edges in chunks of ``chunk_size`` with an online
          softmax and recomputes them in a custom backward, so memory does not grow with
          ``E x H x C``.
        - ``"dense"``: block patterns (:meth:`Pattern.full`, :meth:`Pattern.windows`) go to
          :func:`torch.nn.functional.scaled_dot_product_attention`, block by block size; a
          per-edge ``bias`` is gathered into each block's ``[H, size, size]`` additive mask
          (e.g. Swin's relative position bias).
        - ``"auto"``: dense for block patterns when the options allow, sparse (stream off the
          CPU) for large patterns, scatter for small ones (and under ``torch.compile``).

    Args:
        query: ``[N_dst, H, C]``.
        key: ``[N_src, H, C]``.
        value: ``[N_src, H, C_v]``.
        pattern: the :class:`Pattern` of (sender, receiver) pairs.
        score: ``"dot"`` or ``"gatv2"``.
        att: ``[H, C]`` attention vector for ``score="gatv2"``.
        negative_slope: LeakyReLU slope for ``score="gatv2"``.
        key_edge: ``[E, H, C]`` per-edge term added to the key.
        value_edge: ``[E, H, C_v]`` per-edge term added to the value.
        bias: ``[E, H]`` additive score term (applied after ``scale``).
        scale: score multiplier; default ``1 / sqrt(C)`` for ``"dot"`` and ``1`` for ``"gatv2"``.
        dropout: probability of dropping an attention weight (applied whenever > 0; pass
            ``p if self.training else 0.0`` from a module).
        mode: ``"auto"``, ``"scatter"``, ``"sparse"``, ``"stream"`` or ``"dense"``.
        chunk_size: edges per chunk in stream mode (and for per-edge terms in sparse mode).
        return_attention: also return the softmax weights ``[E, H]`` (before dropout) in the
            pattern's caller edge order. They are differentiable in scatter mode and detached in
            the sparse and stream modes.

    Per-edge tensors are in the caller's edge order (the order of ``pattern.edge_index``).
    float16/bfloat16 inputs are computed in float32 and the output cast back.

    Shapes:
        query ``[N_dst, H, C]``, key ``[N_src, H, C]``, value ``[N_src, H, C_v]``
        -> ``[N_dst, H, C_v]`` (and ``[E, H]``).
    """
    _validate(query, key, value, pattern, score, att, key_edge, value_edge, bias, dropout, mode)
    head_dim = query.size(-1)
    if scale is None:
        scale = 1.0 / math.sqrt(head_dim) if score == "dot" else 1.0
    if not float(negative_slope) >= 0.0:
        raise ValueError(f"negative_slope must be >= 0, got {negative_slope}")
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be a positive int, got {chunk_size!r}")

    extras = key_edge is not None or value_edge is not None
    dense_ok = pattern.blocks is not None and score == "dot" and not extras
    if mode == "dense" and not dense_ok:
        raise ValueError(
            "mode='dense' needs a block pattern (Pattern.full or Pattern.windows), score='dot' "
            "and no key_edge or value_edge"
        )
    if mode == "dense" and return_attention:
        raise ValueError("mode='dense' cannot return attention weights; use mode='scatter'")
    if mode == "auto":
        width = query.size(1) * max(head_dim, value.size(-1))
        if torch.compiler.is_compiling():
            mode = "scatter"
        elif dense_ok and not return_attention:
            mode = "dense"
        elif pattern.num_edges * width >= SPARSE_THRESHOLD:
            # the sparse-matrix kernels are measured on CPU (MKL); elsewhere stream is plain torch
            mode = "sparse" if query.device.type == "cpu" else "stream"
        else:
            mode = "scatter"

    out_dtype = query.dtype
    if out_dtype in _LOW_PRECISION and mode != "dense":
        query, key, value = query.float(), key.float(), value.float()
        att = None if att is None else att.float()
        key_edge = None if key_edge is None else key_edge.float()
        value_edge = None if value_edge is None else value_edge.float()
        bias = None if bias is None else bias.float()

    weights = None
    if mode == "dense":
        out = _dense_attention(query, key, value, pattern, scale, dropout, bias)
    elif mode == "scatter":
        out, weights = _scatter_attention(
            query, key, value, pattern, score, att, negative_slope, key_edge, value_edge, bias,
            scale, dropout,
        )  # fmt: skip
    elif mode == "sparse":
        out, weights = sparse_attention_csr(
            query, key, value, pattern, score, att, negative_slope, key_edge, value_edge, bias,
            scale, dropout, chunk_size,
        )  # fmt: skip
    else:
        args = (query, key, value, pattern, score, att, negative_slope, key_edge, value_edge)
        out = stream_attention(*args, bias, scale, dropout, chunk_size)
        if return_attention:
            weights = stream_attention_weights(*args, bias, scale, chunk_size)

    out = out.to(out_dtype)
    if return_attention:
        return out, pattern.to_caller(weights).to(out_dtype)
    return out


def edge_scores(
    query_i: Tensor,
    key_j: Tensor,
    score: str,
    att: Tensor | None,
    negative_slope: float,
    scale: float,
) -> Tensor:
    """Per-edge scores ``[E, H]`` from gathered receiver queries and sender keys ``[E, H, C]``."""
    if score == "dot":
        return (query_i * key_j).sum(-1) * scale
    hidden = F.leaky_relu(query_i + key_j, negative_slope)
    scores = (hidden * att).sum(-1)
    return scores * scale if scale != 1.0 else scores


def _scatter_attention(
    query, key, value, pattern, score, att, negative_slope, key_edge, value_edge, bias, scale,
    dropout,
):  # fmt: skip
    row, col = pattern.row, pattern.col
    key_j = key.index_select(0, col)
    if key_edge is not None:
        key_j = key_j + pattern.to_sorted(key_edge)
    scores = edge_scores(query.index_select(0, row), key_j, score, att, negative_slope, scale)
    if bias is not None:
        scores = scores + pattern.to_sorted(bias)
    weights = _csr_softmax(scores, pattern.ptr, row)
    alpha = F.dropout(weights, dropout) if dropout > 0 else weights
    value_j = value.index_select(0, col)
    if value_edge is not None:
        value_j = value_j + pattern.to_sorted(value_edge)
    messages = alpha.unsqueeze(-1) * value_j
    out = value.new_zeros(pattern.num_dst, value.size(1), value.size(2))
    return out.index_add(0, row, messages), weights


def _dense_attention(query, key, value, pattern, scale, dropout, bias=None):
    outputs, nodes = [], []
    heads = query.size(1)
    positions = pattern.block_edge_positions() if bias is not None else None
    starts = pattern.block_starts()
    for index, block in enumerate(pattern.blocks):
        num_blocks, size = block.shape
        flat = block.reshape(-1)
        start = starts[index]

        def gather(x: Tensor, flat=flat, num_blocks=num_blocks, size=size, start=start) -> Tensor:
            rows = x.index_select(0, flat) if start is None else x[start : start + flat.numel()]
            return rows.view(num_blocks, size, heads, -1).transpose(1, 2)

        mask = None
        if bias is not None:
            edge_bias = bias.to(query.dtype).index_select(0, positions[index].reshape(-1))
            mask = edge_bias.view(num_blocks, size, size, heads).permute(0, 3, 1, 2)
        out = F.scaled_dot_product_attention(
            gather(query), gather(key), gather(value), attn_mask=mask, dropout_p=dropout,
            scale=scale,
        )  # fmt: skip
        outputs.append(out.transpose(1, 2).reshape(num_blocks * size, heads, -1))
        nodes.append(flat)
    if not outputs:  # no receivers
        return value.new_zeros(pattern.num_dst, heads, value.size(-1))
    if len(outputs) == 1 and starts[0] == 0 and nodes[0].numel() == pattern.num_dst:
        return outputs[0]  # the blocks tile the nodes in order
    order = torch.cat(nodes)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return torch.cat(outputs).index_select(0, inverse)


def _validate(query, key, value, pattern, score, att, key_edge, value_edge, bias, dropout, mode):
    if not isinstance(pattern, Pattern):
        raise TypeError(f"pattern must be a gtlib.attention.Pattern, got {type(pattern)}")
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
            raise TypeError(f"{name} must be a floating-point tensor [N, H, C]")
        if x.dim() != 3:
            raise ValueError(f"{name} must have shape [N, H, C], got {list(x.shape)}")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise TypeError(
            f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, "
            f"{value.dtype}"
        )
    if query.size(0) != pattern.num_dst:
        raise ValueError(
            f"query has {query.size(0)} rows but the pattern has {pattern.num_dst} receivers"
        )
    if key.size(0) != pattern.num_src or value.size(0) != pattern.num_src:
        raise ValueError(
            f"key and value must have {pattern.num_src} rows (the pattern's senders), got "
            f"{key.size(0)} and {value.size(0)}"
        )
    if key.size(1) != query.size(1) or value.size(1) != query.size(1):
        raise ValueError(
            f"query, key and value must have the same number of heads, got {query.size(1)}, "
            f"{key.size(1)}, {value.size(1)}"
        )
    if key.size(2) != query.size(2):
        raise ValueError(
            f"query and key must have the same channels, got {query.size(2)} and {key.size(2)}"
        )
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
    heads, channels = query.size(1), query.size(2)
    if score == "gatv2":
        if att is None:
            raise ValueError("score='gatv2' needs the attention vector att [H, C]")
        _check_tensor("att", att, (heads, channels), query.dtype)
    elif att is not None:
        raise ValueError("att is only used with score='gatv2'")
    num_edges = pattern.num_edges
    if key_edge is not None:
        _check_tensor("key_edge", key_edge, (num_edges, heads, channels), query.dtype)
    if value_edge is not None:
        _check_tensor("value_edge", value_edge, (num_edges, heads, value.size(2)), query.dtype)
    if bias is not None:
        _check_tensor("bias", bias, (num_edges, heads), query.dtype)
    devices = {x.device for x in (query, key, value) if x is not None}
    if len(devices) > 1 or pattern.device not in devices:
        raise ValueError(
            f"inputs and pattern must be on one device, got {devices | {pattern.device}}"
        )


def _check_tensor(name: str, x, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor of shape {list(shape)}")
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {list(shape)}, got {list(x.shape)}")
    if x.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} like query, got {x.dtype}")
