"""``TransformerConv``: graph transformer attention on the sparse-attention core (PyG drop-in)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.modules.module import _global_forward_hooks
from torch_geometric.nn.conv import MessagePassing
from torch_geometric.nn.dense.linear import Linear

from gtlib.attention import Pattern
from gtlib.nn._conv_common import (
    attention_graph,
    check_conv_arguments,
    check_edge_attr,
    run_attention,
    split_node_features,
)


class TransformerConv(MessagePassing):
    r"""The graph transformer operator from `"Masked Label Prediction: Unified Message Passing
    Model for Semi-Supervised Classification" <https://arxiv.org/abs/2009.03509>`_ (Shi et al.,
    IJCAI 2021), computed by :func:`gtlib.attention.attend` with its dot-product score.

    A drop-in replacement for :class:`torch_geometric.nn.TransformerConv`: same constructor
    arguments and defaults, same parameter names (PyG state dicts load with ``strict=True`` both
    ways), same forward signature and outputs. ``edge_index`` may also be a
    :class:`gtlib.attention.Pattern` or a sparse adjacency ``adj_t [N_dst, N_src]`` (torch sparse
    COO/CSR). ``torch.compile(dynamic=True, fullgraph=True)`` traces it over ``[2, E]`` edge
    tensors with one graph for every graph size.

    It is a :class:`torch_geometric.nn.MessagePassing` (``aggr="add"``, ``node_dim=0``), so
    ``to_hetero``, ``HeteroConv`` and PyG's explainers treat it as their own (see
    :class:`~gtlib.nn.GATConv`); the computation stays on :func:`gtlib.attention.attend`.

    .. math::
        \mathbf{x}'_i = \mathbf{W}_1 \mathbf{x}_i + \sum_{j \in \mathcal{N}(i)} \alpha_{ij}
        \left(\mathbf{W}_2 \mathbf{x}_j + \mathbf{W}_6 \mathbf{e}_{ij}\right),
        \qquad
        \alpha_{ij} = \operatorname{softmax}_j\left(
        \frac{(\mathbf{W}_3 \mathbf{x}_i)^\top (\mathbf{W}_4 \mathbf{x}_j + \mathbf{W}_6
        \mathbf{e}_{ij})}{\sqrt{C}}\right)

    per head (``lin_skip`` :math:`W_1`, ``lin_value`` :math:`W_2`, ``lin_query`` :math:`W_3`,
    ``lin_key`` :math:`W_4`, ``lin_edge`` :math:`W_6`). Heads are concatenated or averaged into
    :math:`\mathbf{m}_i`. With ``beta`` the skip connection is gated,
    :math:`\mathbf{x}'_i = \beta_i \mathbf{W}_1 \mathbf{x}_i + (1 - \beta_i) \mathbf{m}_i` with
    :math:`\beta_i = \sigma(\mathbf{w}_5^\top [\mathbf{m}_i, \mathbf{W}_1 \mathbf{x}_i,
    \mathbf{m}_i - \mathbf{W}_1 \mathbf{x}_i])` (``lin_beta``).

    Args:
        in_channels: input features, or ``(source, target)`` features for bipartite graphs
            (``-1`` for lazy initialisation).
        out_channels: features per head.
        heads: number of attention heads.
        concat: concatenate the heads (else average them).
        beta: gate the skip connection (only with ``root_weight``).
        dropout: dropout probability of the attention weights (training only).
        edge_dim: edge feature dimension (``None``: no edge features).
        bias: biases in the linear layers.
        root_weight: add the skip connection ``lin_skip(x_i)``.
        **kwargs: accepted for PyG compatibility: ``aggr="add"`` and
            ``flow="source_to_target"`` only.

    ``return_attention_weights`` set to ``True`` or ``False`` (as in PyG, any bool) returns
    ``(out, (edge_index, alpha))``, ``alpha [E, H]`` before dropout, in the edge order.

    Shapes:
        - **input:** ``x`` ``[N, F]`` or ``([N_src, F_s], [N_dst, F_t])``, ``edge_index``
          ``[2, E]``, a PyG ``EdgeIndex`` or a ``Pattern``, ``edge_attr`` ``[E, D]`` (or ``[E]``
          when ``D = 1``).
        - **output:** ``[N_dst, H * C]`` (``[N_dst, C]`` without ``concat``), and with
          ``return_attention_weights`` also ``([2, E], [E, H])``.
    """

    def __init__(
        self,
        in_channels: int | tuple[int, int],
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        beta: bool = False,
        dropout: float = 0.0,
        edge_dim: int | None = None,
        bias: bool = True,
        root_weight: bool = True,
        **kwargs,
    ) -> None:
        check_conv_arguments(
            in_channels, out_channels, heads, dropout, edge_dim, kwargs,
            flags=dict(concat=concat, beta=beta, bias=bias, root_weight=root_weight),
        )  # fmt: skip
        super().__init__(node_dim=0, **{"aggr": "add", **kwargs})
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.beta = beta and root_weight
        self.root_weight = root_weight
        self.concat = concat
        self.dropout = dropout
        self.edge_dim = edge_dim

        src_channels, dst_channels = (
            (in_channels, in_channels) if isinstance(in_channels, int) else in_channels
        )
        self.lin_key = Linear(src_channels, heads * out_channels, bias=bias)
        self.lin_query = Linear(dst_channels, heads * out_channels, bias=bias)
        self.lin_value = Linear(src_channels, heads * out_channels, bias=bias)
        if edge_dim is not None:
            self.lin_edge = Linear(edge_dim, heads * out_channels, bias=False)
        else:
            self.register_parameter("lin_edge", None)
        total_out_channels = heads * out_channels if concat else out_channels
        self.lin_skip = Linear(dst_channels, total_out_channels, bias=bias)
        if self.beta:
            self.lin_beta = Linear(3 * total_out_channels, 1, bias=False)
        else:
            self.register_parameter("lin_beta", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for layer in (self.lin_key, self.lin_query, self.lin_value, self.lin_edge, self.lin_skip):
            if layer is not None:
                layer.reset_parameters()
        if self.lin_beta is not None:
            self.lin_beta.reset_parameters()

    def forward(
        self,
        x: Tensor | tuple[Tensor, Tensor],
        edge_index: Tensor | Pattern,
        edge_attr: Tensor | None = None,
        return_attention_weights: bool | None = None,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        """Runs the layer; see the class docstring for the arguments and shapes."""
        heads, channels = self.heads, self.out_channels
        skip = self.lin_skip if self.root_weight else None
        x_src, x_dst = split_node_features(
            x, [self.lin_key, self.lin_value], [self.lin_query, skip]
        )
        edge_attr = check_edge_attr(edge_attr, self.edge_dim, edge_index, required=True)
        pattern, _, used_edge_index, loop_bias = attention_graph(
            edge_index, None, x_src.size(0), x_dst.size(0), loop_nodes=None
        )

        # the skip first: autograd runs the later nodes of a backward first, so the attention's
        # gradients are formed and consumed before the skip's gradient of x is allocated
        x_skip = self.lin_skip(x_dst) if self.root_weight else None
        query = self.lin_query(x_dst).view(-1, heads, channels)
        key = self.lin_key(x_src).view(-1, heads, channels)
        value = self.lin_value(x_src).view(-1, heads, channels)
        edge = None
        if edge_attr is not None and self.lin_edge is not None:
            edge = self.lin_edge(edge_attr.view(-1, 1) if edge_attr.dim() == 1 else edge_attr)
            edge = edge.view(-1, heads, channels)

        returns_weights = isinstance(return_attention_weights, bool)
        out, alpha = run_attention(
            self,
            pattern,
            value,
            query=query,
            key=key,
            score="dot",
            key_edge=edge,
            value_edge=edge,
            dropout=self.dropout if self.training else 0.0,
            return_attention=returns_weights,
            loop_bias=loop_bias,
        )

        out = out.reshape(-1, heads * channels) if self.concat else out.mean(dim=1)
        if x_skip is not None:
            if self.lin_beta is not None:
                gate = self.lin_beta(torch.cat([out, x_skip, out - x_skip], dim=-1)).sigmoid()
                out = gate * x_skip + (1 - gate) * out
            else:
                # into the projection's own output (Linear's backward does not read it): one
                # [N, heads * out_channels] block less at the peak; not when a forward hook may
                # have kept that output
                private = not (self.lin_skip._forward_hooks or _global_forward_hooks)
                same = x_skip.dtype == out.dtype and x_skip.shape == out.shape
                out = x_skip.add_(out) if private and same else out + x_skip
        if returns_weights:
            return out, (pattern.edge_index if used_edge_index is None else used_edge_index, alpha)
        return out

    def message(self, x_j: Tensor, alpha: Tensor) -> Tensor:
        """PyG's message ``alpha_ij * (v_j + e_ij)`` (``[E, H, C]``, ``x_j`` holding
        ``v_j + e_ij``); the forward computes it in :func:`gtlib.attention.attend`."""
        return alpha.unsqueeze(-1) * x_j

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"heads={self.heads})"
        )
