"""``GATConv``: static graph attention on the sparse-attention core (a drop-in for PyG's)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import Parameter
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear
from torch_geometric.nn.inits import glorot, zeros

from gtlib.attention import Pattern
from gtlib.nn._conv_common import (
    attention_graph,
    check_conv_arguments,
    check_edge_attr,
    check_fill_value,
    is_sparse_adjacency,
    run_attention,
    split_node_features,
)
from gtlib.validation import check_real


class GATConv(MessagePassing):
    r"""The graph attention operator from `"Graph Attention Networks"
    <https://arxiv.org/abs/1710.10903>`_ (Veličković et al., ICLR 2018), computed by
    :func:`gtlib.attention.attend` with its static score term.

    A drop-in replacement for :class:`torch_geometric.nn.GATConv`: same constructor arguments
    and defaults, same parameter names (PyG state dicts load with ``strict=True`` both ways),
    same forward signature and outputs. ``edge_index`` may also be a
    :class:`gtlib.attention.Pattern` or a sparse adjacency ``adj_t [N_dst, N_src]`` (torch sparse
    COO/CSR). ``torch.compile(dynamic=True, fullgraph=True)`` traces it over ``[2, E]`` edge
    tensors with one graph for every graph size (under compile, existing self-loops stay in the
    returned edge index with attention weight zero instead of being removed).

    It is a :class:`torch_geometric.nn.MessagePassing` (``aggr="add"``, ``node_dim=0``), so
    PyG's machinery treats it as its own: ``to_hetero`` aggregates it per node type, and in
    explain mode the layer multiplies each message by PyG's edge mask and exposes its attention
    to message forward hooks and ``_alpha`` (``AttentionExplainer``). The computation itself
    stays on :func:`gtlib.attention.attend`; :meth:`message` only documents PyG's message.

    .. math::
        \mathbf{x}'_i = \sum_{j \in \mathcal{N}(i) \cup \{i\}} \alpha_{ij}\,\Theta_s \mathbf{x}_j,
        \qquad
        \alpha_{ij} = \operatorname{softmax}_j\Big(\mathrm{LeakyReLU}\big(
        \mathbf{a}_s^\top \Theta_s \mathbf{x}_j + \mathbf{a}_t^\top \Theta_t \mathbf{x}_i
        + \mathbf{a}_e^\top \Theta_e \mathbf{e}_{ij}\big)\Big)

    per head. The attention is *static*: the ranking of the senders does not depend on the
    receiver. The per-node terms :math:`\mathbf{a}^\top\Theta\mathbf{x}` are one-channel queries
    and keys of the core's additive (``"gatv2"``) score with an attention vector of ones, the
    edge term its ``key_edge``. Heads are concatenated or averaged; an optional residual and
    ``bias`` are added. Self-loops are handled as in :class:`GATv2Conv`.

    Args:
        in_channels: input features, or ``(source, target)`` features for bipartite graphs
            (``-1`` for lazy initialisation).
        out_channels: features per head.
        heads: number of attention heads.
        concat: concatenate the heads (else average them).
        negative_slope: LeakyReLU slope.
        dropout: dropout probability of the attention weights (training only).
        add_self_loops: remove existing self-loops and add one to every node.
        edge_dim: edge feature dimension (``None``: no edge features; passing ``edge_attr``
            then raises, where PyG ignores it).
        fill_value: edge features of the added self-loops: a number, a tensor, or a reduction
            (``"add"``, ``"sum"``, ``"mean"``, ``"min"``, ``"max"``, ``"mul"``).
        bias: learn an additive output bias.
        residual: add a learnable skip connection ``res``.
        **kwargs: accepted for PyG compatibility: ``aggr="add"`` and
            ``flow="source_to_target"`` only.

    ``return_attention_weights=True`` returns ``(out, (edge_index, alpha))`` with the edge
    index actually used and ``alpha [E', H]`` in its order (taken before attention dropout).

    Shapes:
        - **input:** ``x`` ``[N, F]`` or ``([N_src, F_s], [N_dst, F_t] or None)``,
          ``edge_index`` ``[2, E]``, a PyG ``EdgeIndex`` or a ``Pattern``, ``edge_attr``
          ``[E, D]`` (or ``[E]`` when ``D = 1``), ``size`` ``(N_src, N_dst)``.
        - **output:** ``[N_dst, H * C]`` (``[N_dst, C]`` without ``concat``), and with
          ``return_attention_weights`` also ``([2, E'], [E', H])``.
    """

    def __init__(
        self,
        in_channels: int | tuple[int, int],
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        negative_slope: float = 0.2,
        dropout: float = 0.0,
        add_self_loops: bool = True,
        edge_dim: int | None = None,
        fill_value: float | Tensor | str = "mean",
        bias: bool = True,
        residual: bool = False,
        **kwargs,
    ) -> None:
        check_conv_arguments(
            in_channels, out_channels, heads, dropout, edge_dim, kwargs,
            flags=dict(concat=concat, add_self_loops=add_self_loops, bias=bias, residual=residual),
        )  # fmt: skip
        negative_slope = check_real(negative_slope, "negative_slope")
        check_fill_value(fill_value)
        super().__init__(node_dim=0, **{"aggr": "add", **kwargs})
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.concat = concat
        self.negative_slope = negative_slope
        self.dropout = dropout
        self.add_self_loops = add_self_loops
        self.edge_dim = edge_dim
        self.fill_value = fill_value
        self.residual = residual

        self.lin = self.lin_src = self.lin_dst = None
        if isinstance(in_channels, int):
            self.lin = Linear(in_channels, heads * out_channels, False, weight_initializer="glorot")
        else:
            self.lin_src = Linear(
                in_channels[0], heads * out_channels, False, weight_initializer="glorot"
            )
            self.lin_dst = Linear(
                in_channels[1], heads * out_channels, False, weight_initializer="glorot"
            )
        self.att_src = Parameter(torch.empty(1, heads, out_channels))
        self.att_dst = Parameter(torch.empty(1, heads, out_channels))
        if edge_dim is not None:
            self.lin_edge = Linear(
                edge_dim, heads * out_channels, bias=False, weight_initializer="glorot"
            )
            self.att_edge = Parameter(torch.empty(1, heads, out_channels))
        else:
            self.lin_edge = None
            self.register_parameter("att_edge", None)
        total_out_channels = out_channels * (heads if concat else 1)
        if residual:
            dst_channels = in_channels if isinstance(in_channels, int) else in_channels[1]
            self.res = Linear(
                dst_channels, total_out_channels, bias=False, weight_initializer="glorot"
            )
        else:
            self.register_parameter("res", None)
        if bias:
            self.bias = Parameter(torch.empty(total_out_channels))
        else:
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.lin, self.lin_src, self.lin_dst, self.lin_edge, self.res):
            if layer is not None:
                layer.reset_parameters()
        glorot(self.att_src)
        glorot(self.att_dst)
        glorot(self.att_edge)
        zeros(self.bias)

    def forward(
        self,
        x: Tensor | tuple[Tensor, Tensor | None],
        edge_index: Tensor | Pattern,
        edge_attr: Tensor | None = None,
        size: tuple[int, int] | None = None,
        return_attention_weights: bool | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """Runs the layer; see the class docstring for the arguments and shapes."""
        heads, channels = self.heads, self.out_channels
        src_layer = self.lin if self.lin is not None else self.lin_src
        dst_layer = self.lin if self.lin is not None else self.lin_dst
        x_src, x_dst = split_node_features(x, [src_layer], [dst_layer, self.res], dst_optional=True)
        edge_attr = check_edge_attr(edge_attr, self.edge_dim, edge_index)
        num_src, num_dst = self._sizes(x_src, x_dst, edge_index, size)

        res = self.res(x_dst) if self.res is not None and x_dst is not None else None
        h_src = src_layer(x_src).view(-1, heads, channels)
        if x_dst is None:
            h_dst = None
        elif x_dst is x_src and self.lin is not None:
            h_dst = h_src
        else:
            h_dst = dst_layer(x_dst).view(-1, heads, channels)

        if self.add_self_loops:
            loop_nodes = num_src if x_dst is None else min(num_src, num_dst)
            loop_nodes = min(size) if size is not None else loop_nodes
        else:
            loop_nodes = None
        if num_dst is None:  # (x_src, None) without size: PyG sizes the output by the receivers
            num_dst = _receiver_count(edge_index, loop_nodes)
        pattern, edge_attr, used_edge_index, loop_bias = attention_graph(
            edge_index, edge_attr, num_src, num_dst, loop_nodes=loop_nodes,
            fill_value=self.fill_value,
        )  # fmt: skip

        # the static score LeakyReLU(a_s . Theta x_j + a_d . Theta x_i + a_e . Theta_e e_ij)
        score_src = (h_src * self.att_src).sum(dim=-1)
        score_dst = None if h_dst is None else (h_dst * self.att_dst).sum(dim=-1)
        score_edge = None
        if edge_attr is not None and self.lin_edge is not None:
            edge = self.lin_edge(edge_attr.view(-1, 1) if edge_attr.dim() == 1 else edge_attr)
            score_edge = (edge.view(-1, heads, channels) * self.att_edge).sum(-1)

        returns_weights = bool(return_attention_weights)
        out, alpha = run_attention(
            self,
            pattern,
            h_src,
            score="static",
            src_score=score_src,
            dst_score=score_dst,
            key_edge=score_edge,
            negative_slope=self.negative_slope,
            dropout=self.dropout if self.training else 0.0,
            return_attention=returns_weights,
            loop_bias=loop_bias,
        )

        out = out.reshape(-1, heads * channels) if self.concat else out.mean(dim=1)
        if res is not None:
            out = out + res
        if self.bias is not None:
            out = out + self.bias
        if returns_weights:
            return out, (pattern.edge_index if used_edge_index is None else used_edge_index, alpha)
        return out

    def message(self, x_j: Tensor, alpha: Tensor) -> Tensor:
        """PyG's message ``alpha_ij * x_j`` (``[E, H, C]``); the forward computes it in
        :func:`gtlib.attention.attend`."""
        return alpha.unsqueeze(-1) * x_j

    @staticmethod
    def _sizes(x_src, x_dst, edge_index, size) -> tuple[int, int | None]:
        num_src = x_src.size(0)
        num_dst = None if x_dst is None else x_dst.size(0)
        if isinstance(edge_index, Pattern) and num_dst is None:
            num_dst = edge_index.num_dst
        if is_sparse_adjacency(edge_index) and num_dst is None:
            num_dst = int(edge_index.size(0))
        if size is None:
            return num_src, num_dst
        if not (isinstance(size, tuple | list) and len(size) == 2):
            raise ValueError(f"size must be a pair (num_src, num_dst), got {size!r}")
        if size[0] is not None and int(size[0]) != num_src:
            raise ValueError(f"size[0] = {size[0]} but x_src has {num_src} nodes")
        if num_dst is not None and size[1] is not None and int(size[1]) != num_dst:
            raise ValueError(f"size[1] = {size[1]} but x_dst has {num_dst} nodes")
        return num_src, num_dst if num_dst is not None else int(size[1])

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"heads={self.heads})"
        )


def _receiver_count(edge_index: Tensor, loop_nodes: int | None) -> int:
    receivers = edge_index[1]
    count = int(receivers.max()) + 1 if receivers.numel() else 0
    return max(count, loop_nodes or 0)
