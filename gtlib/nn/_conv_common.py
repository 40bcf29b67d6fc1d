"""Helpers shared by the GAT-family convolutions: argument checks, self-loops, patterns."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Module
from torch_geometric.utils.loop import compute_loop_attr

from gtlib.attention import Pattern, attend
from gtlib.attention.cache import pattern_cache
from gtlib.validation import (
    check_bool,
    check_choice,
    check_finite,
    check_int,
    check_real,
    check_tensor,
    describe,
)

_FILL_REDUCTIONS = ("add", "sum", "mean", "min", "max", "mul")


def check_conv_arguments(
    in_channels, out_channels, heads, dropout, edge_dim, kwargs, flags=None
) -> None:
    """Validates the constructor arguments common to the attention convolutions (``flags``:
    the layer's boolean arguments by name)."""
    if isinstance(in_channels, tuple | list):
        if len(in_channels) != 2:
            raise ValueError(f"in_channels must be an int or a pair of ints, got {in_channels!r}")
        for i, value in enumerate(in_channels):
            _check_channels(value, f"in_channels[{i}]")
    else:
        _check_channels(in_channels, "in_channels")
    check_int(out_channels, "out_channels", minimum=1)
    check_int(heads, "heads", minimum=1)
    dropout = check_real(dropout, "dropout", minimum=0.0)
    if not dropout < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
    if edge_dim is not None:
        _check_channels(edge_dim, "edge_dim")
    for name, value in (flags or {}).items():
        check_bool(value, name)
    allowed = {"aggr": ("add", "sum"), "flow": ("source_to_target",)}
    for name, value in kwargs.items():
        if name not in allowed:
            raise TypeError(f"unexpected keyword argument {name!r}")
        check_choice(value, name, allowed[name])


def _check_channels(value, name: str) -> int:
    """A positive int, or ``-1`` (lazy initialisation, as PyG's ``Linear``)."""
    value = check_int(value, name)
    if value < 1 and value != -1:
        raise ValueError(f"{name} must be a positive int (or -1 for lazy), got {value}")
    return value


def check_fill_value(fill_value) -> None:
    if isinstance(fill_value, str):
        if fill_value not in _FILL_REDUCTIONS:
            raise ValueError(f"fill_value must be one of {_FILL_REDUCTIONS}, got {fill_value!r}")
    elif fill_value is not None and not isinstance(fill_value, int | float | Tensor):
        raise TypeError(
            f"fill_value must be a number, a tensor or a reduction name, got {type(fill_value)}"
        )


def split_node_features(
    x: Tensor | tuple[Tensor, Tensor | None],
    src_layers: list[Module | None],
    dst_layers: list[Module | None],
    dst_optional: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``(x_src, x_dst)`` from ``x`` or a pair, checking ``[N, F]`` shapes against the linear
    layers that will read them (``x_dst`` is ``x_src`` itself for a single tensor)."""
    if isinstance(x, Tensor):
        x_src = x_dst = x
    elif isinstance(x, tuple | list) and len(x) == 2:
        x_src, x_dst = x
    else:
        raise TypeError(f"x must be a tensor [N, F] or a pair (x_src, x_dst), got {type(x)}")
    _check_features("x_src" if x_src is not x_dst else "x", x_src, src_layers)
    if x_dst is None:
        if not dst_optional:
            raise ValueError("x_dst must be a tensor [N_dst, F_dst], got None")
    elif x_dst is not x_src:
        _check_features("x_dst", x_dst, dst_layers)
        if x_dst.dtype != x_src.dtype:
            raise TypeError(
                f"x_src and x_dst must share a dtype, got {x_src.dtype} and {x_dst.dtype}"
            )
    else:
        _check_features("x", x_dst, dst_layers)
    return x_src, x_dst


def _check_features(name: str, x, layers: list[Module | None]) -> None:
    if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor [N, F], got {describe(x)}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape [N, F], got {list(x.shape)}")
    for layer in layers:
        expected = getattr(layer, "in_channels", -1)
        if expected != -1 and x.size(1) != expected:
            raise ValueError(f"{name} must have {expected} features, got {x.size(1)}")
    check_finite(x, name)


def check_edge_attr(
    edge_attr: Tensor | None, edge_dim: int | None, edge_index, required: bool = False
) -> Tensor | None:
    """Validates ``edge_attr`` against ``edge_dim`` and the number of input edges."""
    if edge_attr is None:
        if required and edge_dim is not None:
            raise ValueError(f"the layer was built with edge_dim={edge_dim}: pass edge_attr")
        return None
    if edge_dim is None:
        raise ValueError(
            "edge_attr was given but the layer was built with edge_dim=None; construct it with "
            "edge_dim=<edge feature size> to use edge features"
        )
    if not isinstance(edge_attr, Tensor) or not edge_attr.dtype.is_floating_point:
        raise TypeError(
            f"edge_attr must be a floating-point tensor [E, D], got {describe(edge_attr)}"
        )
    num_edges = _num_input_edges(edge_index)
    one_dim = edge_attr.dim() == 1 and edge_dim in (1, -1)
    if not (edge_attr.dim() == 2 or one_dim):
        raise ValueError(f"edge_attr must have shape [E, {edge_dim}], got {list(edge_attr.shape)}")
    if edge_attr.size(0) != num_edges:
        raise ValueError(
            f"edge_attr must have one row per edge ({num_edges}), got {edge_attr.size(0)}"
        )
    if edge_attr.dim() == 2 and edge_dim != -1 and edge_attr.size(1) != edge_dim:
        raise ValueError(
            f"edge_attr must have edge_dim={edge_dim} columns, got {edge_attr.size(1)}"
        )
    check_finite(edge_attr, "edge_attr")
    return edge_attr


def is_sparse_adjacency(edge_index) -> bool:
    """Whether ``edge_index`` is a sparse adjacency ``adj_t [N_dst, N_src]`` (a torch sparse
    COO/CSR/CSC tensor or a ``torch_sparse.SparseTensor``) rather than a ``[2, E]`` edge list."""
    if isinstance(edge_index, Tensor):
        return edge_index.layout != torch.strided
    return type(edge_index).__name__ == "SparseTensor"


def _num_input_edges(edge_index) -> int:
    if isinstance(edge_index, Pattern):
        return edge_index.num_edges
    _check_edge_index(edge_index)
    if is_sparse_adjacency(edge_index):
        if not isinstance(edge_index, Tensor):
            return int(edge_index.nnz())
        if edge_index.layout == torch.sparse_coo:
            return edge_index._nnz()
        return edge_index.values().numel()
    return edge_index.size(1)


def _check_edge_index(edge_index) -> None:
    if isinstance(edge_index, Pattern) or is_sparse_adjacency(edge_index):
        return
    if not isinstance(edge_index, Tensor):
        raise TypeError(
            "edge_index must be a [2, E] integer tensor, a PyG EdgeIndex or a gtlib Pattern, "
            f"got {type(edge_index)}"
        )
    check_tensor(edge_index, "edge_index", integer=True)
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")


def attention_mode(returns_weights: bool) -> str:
    """The core's mode: its scatter path keeps returned attention weights differentiable."""
    return "scatter" if returns_weights and torch.is_grad_enabled() else "auto"


class AttentionGraph(NamedTuple):
    """What a conv attends over (:func:`attention_graph`)."""

    pattern: Pattern
    """the pattern of the attention"""
    edge_attr: Tensor | None
    """edge features in the pattern's edge order (self-loop features appended)"""
    edge_index: Tensor | None
    """the ``[2, E']`` edge index to report (``None``: ``pattern.edge_index``)"""
    loop_bias: Tensor | None
    """``[E']`` additive score bias, ``-inf`` on input self-loops that stay in the pattern
    (under ``torch.compile``, see :func:`_traced_graph`); ``None`` when nothing is masked.
    Pass it to :func:`run_attention`."""


def attention_graph(
    edge_index: Tensor | Pattern,
    edge_attr: Tensor | None,
    num_src: int,
    num_dst: int,
    *,
    loop_nodes: int | None,
    fill_value=None,
) -> AttentionGraph:
    """The pattern a layer attends over, its edge features, the edge index to report and the
    self-loop score bias (an :class:`AttentionGraph`).

    ``loop_nodes=None`` uses the edges as given; an int removes self-loops and appends loops
    ``(i, i)`` for ``i < loop_nodes`` like PyG (kept edges in their order, then the loops), with
    ``fill_value`` edge features. Patterns are cached per input (identity and version) in
    :data:`~gtlib.attention.cache.pattern_cache`, so repeated forwards on one graph sort it once.
    """
    _check_edge_index(edge_index)
    if is_sparse_adjacency(edge_index):  # adj_t [N_dst, N_src]: the pattern in its entry order
        edge_index = Pattern.cached(edge_index, (num_src, num_dst))
    if isinstance(edge_index, Pattern):
        if (edge_index.num_src, edge_index.num_dst) != (num_src, num_dst):
            raise ValueError(
                f"the pattern has (num_src, num_dst) = ({edge_index.num_src}, "
                f"{edge_index.num_dst}) but x gives ({num_src}, {num_dst})"
            )
        if loop_nodes is None:
            return AttentionGraph(edge_index, edge_attr, None, None)
    elif torch.compiler.is_compiling():
        return _traced_graph(edge_index, edge_attr, num_src, num_dst, loop_nodes, fill_value)
    elif loop_nodes is None:
        pattern = Pattern.cached(edge_index, (num_src, num_dst))
        return AttentionGraph(pattern, edge_attr, edge_index, None)

    pattern, looped, kept = _looped_graph(edge_index, num_src, num_dst, loop_nodes)
    if edge_attr is not None:
        if kept is not None:
            edge_attr = edge_attr.index_select(0, kept)
        kept_edges = looped[:, : looped.size(1) - loop_nodes]
        loop_attr = compute_loop_attr(kept_edges, edge_attr, loop_nodes, False, fill_value)
        edge_attr = torch.cat([edge_attr, loop_attr], dim=0)
    return AttentionGraph(pattern, edge_attr, looped, None)


def _looped_graph(
    source: Tensor | Pattern, num_src: int, num_dst: int, loop_nodes: int
) -> tuple[Pattern, Tensor, Tensor | None]:
    """``(pattern, looped edge_index, kept edge ids or None)``, cached while ``source`` lives."""
    return pattern_cache.get(
        source,
        ("conv.looped_graph", num_src, num_dst, loop_nodes),
        lambda: _build_looped_graph(source, num_src, num_dst, loop_nodes),
    )


def _build_looped_graph(
    source: Tensor | Pattern, num_src: int, num_dst: int, loop_nodes: int
) -> tuple[Pattern, Tensor, Tensor | None]:
    if isinstance(source, Pattern):
        edges = source.edge_index
    else:
        edges = source.as_tensor() if hasattr(source, "as_tensor") else source
    not_loop = edges[0] != edges[1]
    if bool(not_loop.all()):
        kept, kept_edges = None, edges
    else:
        kept = not_loop.nonzero().view(-1)
        kept_edges = edges.index_select(1, kept)
    loops = torch.arange(loop_nodes, device=edges.device, dtype=edges.dtype)
    looped = torch.cat([kept_edges, loops.view(1, -1).expand(2, -1)], dim=1)
    return Pattern.from_edge_index(looped, (num_src, num_dst)), looped, kept


def explain_edge_mask(module: Module, num_edges: int, edge_origin: Tensor | None = None) -> Tensor:
    """PyG's edge mask of a layer in explain mode, extended to the ``num_edges`` edges it
    attends over, as :meth:`torch_geometric.nn.MessagePassing.explain_message` does: the
    entries of the caller's non-loop edges in order, then ones for the appended self-loops.
    With ``edge_origin`` (``[num_edges]``: the caller's edge each attended edge comes from,
    ``-1`` for edges the layer adds) the mask is gathered with it, ones at ``-1``."""
    edge_mask = module._edge_mask
    if edge_mask is None:
        raise ValueError(
            "Could not find a pre-defined 'edge_mask' to explain. Did you forget to initialize it?"
        )
    if module._apply_sigmoid:
        edge_mask = edge_mask.sigmoid()
    if edge_origin is not None:
        gathered = edge_mask.index_select(0, edge_origin.clamp(min=0))
        return torch.where(edge_origin >= 0, gathered, torch.ones_like(gathered))
    if edge_mask.size(0) != num_edges:
        edge_mask = edge_mask[module._loop_mask]
        loops = edge_mask.new_ones(num_edges - edge_mask.size(0))
        edge_mask = torch.cat([edge_mask, loops], dim=0)
    return edge_mask


def run_attention(
    module: Module,
    pattern: Pattern,
    value: Tensor,
    *,
    value_edge: Tensor | None = None,
    dropout: float = 0.0,
    return_attention: bool = False,
    edge_origin: Tensor | None = None,
    loop_bias: Tensor | None = None,
    **score: object,
) -> tuple[Tensor, Tensor | None]:
    """``(out [N_dst, H, C], alpha [E, H] or None)`` of a conv's attention over ``pattern``.

    The fast path is one :func:`~gtlib.attention.attend` call. When PyG's machinery watches the
    layer (explain mode set by an explainer, or message forward hooks such as
    ``AttentionExplainer``'s), the softmax weights are formed first and the messages reduced
    with them, as PyG's ``propagate`` does: dropout on the weights, then the edge mask
    (``explain_message``) on each message, the hooks called with ``alpha`` in the message
    arguments (a hook that returns new messages replaces them before the sum, as in PyG's
    ``propagate``), and the weights kept in ``module._alpha``.

    ``edge_origin`` (``[E]``, for layers that attend over more edges than the caller gave,
    e.g. Exphormer's expander): the caller's edge of each attended edge, ``-1`` for the
    layer's own. The edge mask is gathered with it (ones at ``-1``), and the hooks see the
    caller's edges first, in the caller's order, then the layer's own (as PyG's layers list
    their added self-loops last), so ``alpha[:E_in]`` belongs to the caller's edges.

    ``loop_bias`` (``[E]``, :attr:`AttentionGraph.loop_bias`) is added to every head's score.
    """
    explain = bool(getattr(module, "_explain", None))
    hooks = getattr(module, "_message_forward_hooks", None)
    if loop_bias is not None:  # input self-loops masked under torch.compile (_traced_graph)
        score["bias"] = loop_bias.to(value.dtype).view(-1, 1).expand(-1, value.size(1))
    if not explain and not hooks:
        result = attend(
            pattern,
            value,
            value_edge=value_edge,
            dropout=dropout,
            # under torch.compile: the traceable backend, without a size-dependent choice
            mode="scatter" if torch.compiler.is_compiling() else attention_mode(return_attention),
            return_attention=return_attention,
            **score,
        )
        return result if return_attention else (result, None)

    _, alpha = attend(
        pattern, value, value_edge=value_edge, mode="scatter", return_attention=True, **score
    )
    weights = F.dropout(alpha, p=dropout, training=dropout > 0)
    if explain:
        mask = explain_edge_mask(module, weights.size(0), edge_origin)
        weights = weights * mask.to(weights.dtype).view(-1, 1)
    out = attend(
        pattern, value, value_edge=value_edge, reduce="weights", weights=weights, mode="scatter"
    )
    module._alpha = alpha
    if hooks:
        src, dst = pattern.edge_index[0], pattern.edge_index[1]
        hook_alpha = alpha
        if edge_origin is not None:  # the caller's edges first, in its order
            tail = edge_origin.size(0) + torch.arange(edge_origin.size(0), device=src.device)
            order = torch.argsort(torch.where(edge_origin >= 0, edge_origin, tail))
            src, dst = src.index_select(0, order), dst.index_select(0, order)
            hook_alpha, weights = alpha.index_select(0, order), weights.index_select(0, order)
            if value_edge is not None:
                value_edge = value_edge.index_select(0, order)
        x_j = value.index_select(0, src)
        if value_edge is not None:
            x_j = x_j + value_edge
        messages = x_j * weights.unsqueeze(-1)
        msg_kwargs = {"x_j": x_j, "alpha": hook_alpha, "index": dst}
        changed = False
        for hook in list(hooks.values()):
            result = hook(module, (msg_kwargs,), messages)
            if result is not None:  # a hook rewrote the messages: aggregate them as PyG does
                messages, changed = result, True
        if changed:
            out = messages.new_zeros((pattern.num_dst,) + tuple(messages.shape[1:]))
            out = out.index_add(0, dst, messages)
    return out, alpha


def _traced_graph(
    edge_index: Tensor,
    edge_attr: Tensor | None,
    num_src: int,
    num_dst: int,
    loop_nodes: int | None,
    fill_value,
) -> AttentionGraph:
    """:func:`attention_graph` under ``torch.compile``: no cache, no data-dependent branch or
    output size, so one graph serves every batch size (``dynamic=True``).

    Existing self-loops are not removed (that has a data-dependent size): they stay in the
    pattern and ``loop_bias`` is ``-inf`` on them, so their weight is exactly zero and the
    outputs equal the eager ones; returned attention then lists them with weight zero. The
    bias is ``None`` without self-loop handling. Indices are not range-checked (eager calls
    check them).
    """
    edges = edge_index.as_tensor() if hasattr(edge_index, "as_tensor") else edge_index
    src, dst = edges[0].long(), edges[1].long()
    bias = None
    if loop_nodes is not None:
        is_loop = src == dst
        if edge_attr is not None:
            loop_attr = _masked_loop_attr(dst, edge_attr, ~is_loop, loop_nodes, fill_value)
            edge_attr = torch.cat([edge_attr, loop_attr], dim=0)
        loops = torch.arange(loop_nodes, device=src.device, dtype=src.dtype)
        src, dst = torch.cat([src, loops]), torch.cat([dst, loops])
        bias = torch.cat([is_loop, loops.new_zeros(loop_nodes, dtype=torch.bool)])
        bias = torch.zeros(bias.shape, device=src.device).masked_fill(bias, float("-inf"))
    perm = torch.argsort(dst, stable=True)
    counts = torch.zeros(num_dst, dtype=torch.long, device=dst.device)
    counts = counts.index_add(0, dst, torch.ones_like(dst))
    ptr = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    pattern = Pattern(ptr, src[perm], num_src, num_dst, perm=perm, row=dst[perm])
    return AttentionGraph(pattern, edge_attr, torch.stack([src, dst]), bias)


def _masked_loop_attr(
    dst: Tensor, edge_attr: Tensor, keep: Tensor, loop_nodes: int, fill_value
) -> Tensor:
    """PyG's ``compute_loop_attr`` over the edges where ``keep`` holds, without selecting them."""
    if fill_value is None:
        return edge_attr.new_ones((loop_nodes,) + edge_attr.shape[1:])
    if isinstance(fill_value, int | float):
        return edge_attr.new_full((loop_nodes,) + edge_attr.shape[1:], fill_value)
    if isinstance(fill_value, Tensor):
        value = fill_value.to(edge_attr.device, edge_attr.dtype)
        if edge_attr.dim() != value.dim():
            value = value.unsqueeze(0)
        return value.expand((loop_nodes,) + edge_attr.shape[1:])
    shape = (-1,) + (1,) * (edge_attr.dim() - 1)
    keep = keep.view(shape)
    size = (loop_nodes,) + edge_attr.shape[1:]
    index = dst.view(shape).expand_as(edge_attr).clamp(max=max(loop_nodes - 1, 0))
    in_range = (dst < loop_nodes).view(shape) & keep
    count = torch.zeros(size, dtype=edge_attr.dtype, device=edge_attr.device)
    count = count.scatter_add(0, index, in_range.to(edge_attr.dtype).expand_as(edge_attr))
    if fill_value in ("add", "sum", "mean"):
        total = torch.zeros(size, dtype=edge_attr.dtype, device=edge_attr.device)
        total = total.scatter_add(0, index, edge_attr.masked_fill(~in_range, 0.0))
        return total / count.clamp(min=1) if fill_value == "mean" else total
    neutral = {"min": float("inf"), "max": float("-inf"), "mul": 1.0}[fill_value]
    reduce = {"min": "amin", "max": "amax", "mul": "prod"}[fill_value]
    out = torch.full(size, neutral, dtype=edge_attr.dtype, device=edge_attr.device)
    out = out.scatter_reduce(0, index, edge_attr.masked_fill(~in_range, neutral), reduce)
    return out.masked_fill(count == 0, 0.0) if fill_value != "mul" else out
