"""``GATv2Conv``: dynamic graph attention on the sparse-attention core (a drop-in for PyG's)."""

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
    run_attention,
    split_node_features,
)
from gtlib.validation import check_real


class GATv2Conv(MessagePassing):
    r"""The GATv2 operator from `"How Attentive are Graph Attention Networks?"
    <https://arxiv.org/abs/2105.14491>`_ (Brody et al., ICLR 2022), computed by
    :func:`gtlib.attention.attend` with its additive score.

    A drop-in replacement for :class:`torch_geometric.nn.GATv2Conv`: same constructor arguments
    and defaults, same parameter names (PyG state dicts load with ``strict=True`` both ways),
    same forward signature and outputs. ``edge_index`` may also be a
    :class:`gtlib.attention.Pattern`, which skips building one and, with ``add_self_loops=False``,
    lets ``torch.compile(fullgraph=True)`` trace the layer without graph breaks, or a sparse
    adjacency ``adj_t [N_dst, N_src]`` (torch sparse COO/CSR). ``[2, E]`` edge tensors also
    compile with ``dynamic=True, fullgraph=True`` into one graph for every graph size (see
    :class:`~gtlib.nn.GATConv` for the self-loops then).

    It is a :class:`torch_geometric.nn.MessagePassing` (``aggr="add"``, ``node_dim=0``), so
    ``to_hetero``, ``HeteroConv`` and PyG's explainers treat it as their own (see
    :class:`~gtlib.nn.GATConv`); the computation stays on :func:`gtlib.attention.attend`.

    .. math::
        \mathbf{x}'_i = \sum_{j \in \mathcal{N}(i) \cup \{i\}} \alpha_{ij}\,\Theta_s \mathbf{x}_j,
        \qquad
        \alpha_{ij} = \operatorname{softmax}_j\Big(\mathbf{a}^\top \mathrm{LeakyReLU}\big(
        \Theta_t \mathbf{x}_i + \Theta_s \mathbf{x}_j + \Theta_e \mathbf{e}_{ij}\big)\Big)

    per head, where :math:`\Theta_s` is ``lin_l``, :math:`\Theta_t` is ``lin_r`` and
    :math:`\Theta_e` is ``lin_edge``. Heads are concatenated (``concat=True``) or averaged; an
    optional residual ``res(x_i)`` and ``bias`` are added. With ``add_self_loops`` existing
    self-loops are removed and one loop per node is appended (for ``min(N_src, N_dst)`` nodes),
    whose edge features follow ``fill_value``.

    Args:
        in_channels: input features, or ``(source, target)`` features for bipartite graphs
            (``-1`` for lazy initialisation).
        out_channels: features per head.
        heads: number of attention heads.
        concat: concatenate the heads (else average them).
        negative_slope: LeakyReLU slope.
        dropout: dropout probability of the attention weights (training only).
        add_self_loops: remove existing self-loops and add one to every node.
        edge_dim: edge feature dimension (``None``: no edge features).
        fill_value: edge features of the added self-loops: a number, a tensor, or a reduction
            (``"add"``, ``"sum"``, ``"mean"``, ``"min"``, ``"max"``, ``"mul"``) of each node's
            incoming edge features.
        bias: learn an additive output bias (and biases in ``lin_l``/``lin_r``).
        share_weights: use one matrix for sources and targets (``lin_r is lin_l``).
        residual: add a learnable skip connection ``res``.
        **kwargs: accepted for PyG compatibility: ``aggr="add"`` and
            ``flow="source_to_target"`` only.

    ``return_attention_weights=True`` returns ``(out, (edge_index, alpha))`` with the edge
    index actually used (self-loops appended) and ``alpha [E', H]`` in its edge order. The
    weights are taken before attention dropout (PyG's after); in eval mode they agree.

    Shapes:
        - **input:** ``x`` ``[N, F]`` or ``([N_src, F_s], [N_dst, F_t])``, ``edge_index``
          ``[2, E]`` (sender, receiver), a PyG ``EdgeIndex`` or a ``Pattern``, ``edge_attr``
          ``[E, D]`` (or ``[E]`` when ``D = 1``).
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
        share_weights: bool = False,
        residual: bool = False,
        **kwargs,
    ) -> None:
        check_conv_arguments(
            in_channels, out_channels, heads, dropout, edge_dim, kwargs,
            flags=dict(concat=concat, add_self_loops=add_self_loops, bias=bias,
            share_weights=share_weights, residual=residual,),
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
        self.share_weights = share_weights

        src_channels, dst_channels = (
            (in_channels, in_channels) if isinstance(in_channels, int) else in_channels
        )
        self.lin_l = Linear(src_channels, heads * out_channels, bias, weight_initializer="glorot")
        if share_weights:
            self.lin_r = self.lin_l
        else:
            self.lin_r = Linear(
                dst_channels, heads * out_channels, bias, weight_initializer="glorot"
            )
        self.att = Parameter(torch.empty(1, heads, out_channels))
        if edge_dim is not None:
            self.lin_edge = Linear(
                edge_dim, heads * out_channels, bias=False, weight_initializer="glorot"
            )
        else:
            self.lin_edge = None
        total_out_channels = out_channels * (heads if concat else 1)
        if residual:
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
        self.lin_l.reset_parameters()
        self.lin_r.reset_parameters()
        if self.lin_edge is not None:
            self.lin_edge.reset_parameters()
        if self.res is not None:
            self.res.reset_parameters()
        glorot(self.att)
        zeros(self.bias)

    def forward(
        self,
        x: Tensor | tuple[Tensor, Tensor],
        edge_index: Tensor | Pattern,
        edge_attr: Tensor | None = None,
        return_attention_weights: bool | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """Runs the layer; see the class docstring for the arguments and shapes."""
        heads, channels = self.heads, self.out_channels
        x_src, x_dst = split_node_features(x, [self.lin_l], [self.lin_r, self.res])
        edge_attr = check_edge_attr(edge_attr, self.edge_dim, edge_index)

        res = self.res(x_dst) if self.res is not None else None
        x_l = self.lin_l(x_src).view(-1, heads, channels)
        if self.share_weights and x_dst is x_src:
            x_r = x_l
        else:
            x_r = self.lin_r(x_dst).view(-1, heads, channels)

        num_src, num_dst = x_src.size(0), x_dst.size(0)
        pattern, edge_attr, used_edge_index, loop_bias = attention_graph(
            edge_index,
            edge_attr,
            num_src,
            num_dst,
            loop_nodes=min(num_src, num_dst) if self.add_self_loops else None,
            fill_value=self.fill_value,
        )
        key_edge = None
        if edge_attr is not None and self.lin_edge is not None:
            key_edge = self.lin_edge(edge_attr.view(-1, 1) if edge_attr.dim() == 1 else edge_attr)
            key_edge = key_edge.view(-1, heads, channels)

        returns_weights = bool(return_attention_weights)
        out, alpha = run_attention(
            self,
            pattern,
            x_l,
            query=x_r,
            key=x_l,
            score="additive",
            att=self.att.view(heads, channels),
            negative_slope=self.negative_slope,
            key_edge=key_edge,
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

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"heads={self.heads})"
        )


# ---------------------------------------------------------------------------------------------
# Helpers shared by gtlib's PyG-compatible attention convolutions (GATConv, GATv2Conv,
# TransformerConv).
