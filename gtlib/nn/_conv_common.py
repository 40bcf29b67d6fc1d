"""Helpers shared by the GAT-family convolutions: argument checks, self-loops, patterns."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Module
from torch_geometric.utils.loop import compute_loop_attr

from gtlib.attention import Pattern
from gtlib.attention.cache import pattern_cache

_FILL_REDUCTIONS = ("add", "sum", "mean", "min", "max", "mul")


def check_conv_arguments(in_channels, out_channels, heads, dropout, edge_dim, kwargs) -> None:
    """Validates the constructor arguments common to the attention convolutions."""
    channels = in_channels if isinstance(in_channels, tuple | list) else (in_channels,)
    if isinstance(in_channels, tuple | list) and len(in_channels) != 2:
        raise ValueError(f"in_channels must be an int or a pair of ints, got {in_channels!r}")
    for value in channels:
        if not isinstance(value, int) or (value < 1 and value != -1):
            raise ValueError(f"in_channels must be positive ints (or -1), got {in_channels!r}")
    if not isinstance(out_channels, int) or out_channels < 1:
        raise ValueError(f"out_channels must be a positive int, got {out_channels!r}")
    if not isinstance(heads, int) or heads < 1:
        raise ValueError(f"heads must be a positive int, got {heads!r}")
    if not 0.0 <= float(dropout) < 1.0:
        raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
    if edge_dim is not None and (
        not isinstance(edge_dim, int) or (edge_dim < 1 and edge_dim != -1)
    ):
        raise ValueError(f"edge_dim must be None or a positive int, got {edge_dim!r}")
    allowed = {"aggr": ("add", "sum"), "flow": ("source_to_target",)}
    for name, value in kwargs.items():
        if name not in allowed:
            raise TypeError(f"unexpected keyword argument {name!r}")
        if value not in allowed[name]:
            raise ValueError(f"{name} must be one of {allowed[name]}, got {value!r}")


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
        raise TypeError(f"{name} must be a floating-point tensor [N, F], got {_describe(x)}")
    if x.dim() != 2:
        raise ValueError(f"{name} must have shape [N, F], got {list(x.shape)}")
    for layer in layers:
        expected = getattr(layer, "in_channels", -1)
        if expected != -1 and x.size(1) != expected:
            raise ValueError(f"{name} must have {expected} features, got {x.size(1)}")


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
            f"edge_attr must be a floating-point tensor [E, D], got {_describe(edge_attr)}"
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
    return edge_attr


def _num_input_edges(edge_index) -> int:
    if isinstance(edge_index, Pattern):
        return edge_index.num_edges
    _check_edge_index(edge_index)
    return edge_index.size(1)


def _check_edge_index(edge_index) -> None:
    if isinstance(edge_index, Pattern):
        return
    if not isinstance(edge_index, Tensor):
        raise TypeError(
            "edge_index must be a [2, E] integer tensor, a PyG EdgeIndex or a gtlib Pattern, "
            f"got {type(edge_index)}"
        )
    if edge_index.layout != torch.strided:
        raise TypeError(
            f"edge_index must be a dense [2, E] tensor, got layout {edge_index.layout}; convert a "
            "sparse adjacency with torch_geometric.utils.to_edge_index"
        )
    if edge_index.dtype.is_floating_point or edge_index.dtype in (torch.bool, torch.complex64):
        raise TypeError(f"edge_index must have an integer dtype, got {edge_index.dtype}")
    if edge_index.dim() != 2 or edge_index.size(0) != 2:
        raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"a {x.dtype} tensor of shape {list(x.shape)}"
    return str(type(x))


def attention_mode(returns_weights: bool) -> str:
    """The core's mode: its scatter path keeps returned attention weights differentiable."""
    return "scatter" if returns_weights and torch.is_grad_enabled() else "auto"


def attention_graph(
    edge_index: Tensor | Pattern,
    edge_attr: Tensor | None,
    num_src: int,
    num_dst: int,
    *,
    loop_nodes: int | None,
    fill_value=None,
) -> tuple[Pattern, Tensor | None, Tensor | None]:
    """The pattern a layer attends over, its edge features, and the edge index to report
    (``None``: ``pattern.edge_index``).

    ``loop_nodes=None`` uses the edges as given; an int removes self-loops and appends loops
    ``(i, i)`` for ``i < loop_nodes`` like PyG (kept edges in their order, then the loops), with
    ``fill_value`` edge features. Patterns are cached per input (identity and version) in
    :data:`~gtlib.attention.cache.pattern_cache`, so repeated forwards on one graph sort it once.
    """
    _check_edge_index(edge_index)
    if isinstance(edge_index, Pattern):
        if (edge_index.num_src, edge_index.num_dst) != (num_src, num_dst):
            raise ValueError(
                f"the pattern has (num_src, num_dst) = ({edge_index.num_src}, "
                f"{edge_index.num_dst}) but x gives ({num_src}, {num_dst})"
            )
        if loop_nodes is None:
            return edge_index, edge_attr, None
    elif loop_nodes is None:
        return Pattern.cached(edge_index, (num_src, num_dst)), edge_attr, edge_index

    pattern, looped, kept = _looped_graph(edge_index, num_src, num_dst, loop_nodes)
    if edge_attr is not None:
        if kept is not None:
            edge_attr = edge_attr.index_select(0, kept)
        kept_edges = looped[:, : looped.size(1) - loop_nodes]
        loop_attr = compute_loop_attr(kept_edges, edge_attr, loop_nodes, False, fill_value)
        edge_attr = torch.cat([edge_attr, loop_attr], dim=0)
    return pattern, edge_attr, looped


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
