"""Exphormer's sparse attention (expander graph + virtual nodes) on the sparse-attention core."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import Embedding, Linear, Parameter
from torch_geometric.nn.conv import MessagePassing

from gtlib.attention import Edges, Pattern, attend
from gtlib.attention.cache import pattern_cache
from gtlib.nn._conv_common import run_attention
from gtlib.validation import check_bool, check_finite, check_int, check_real, check_tensor

ExphormerPattern = tuple[Pattern, Tensor, Tensor]


class ExphormerConv(MessagePassing):
    r"""The sparse attention of Exphormer from the `"Exphormer: Sparse Transformers for Graphs"
    <https://arxiv.org/abs/2303.06147>`_ paper (Shirzad et al., ICML 2023), on
    :func:`gtlib.attention.attend`.

    Every node attends over the Exphormer pattern :meth:`Pattern.exphormer
    <gtlib.attention.Pattern.exphormer>`: the input graph's edges, a random expander of
    ``2 * degree`` edges per node (``degree`` random permutations per graph, redrawn until
    the spectral gap reaches the official bound; graphs of at most ``degree`` nodes get the
    complete graph; see :func:`gtlib.attention.builders.expander_edges`) and
    ``num_virtual`` virtual nodes per graph linked to all its nodes. Each edge carries an embedding
    :math:`\mathbf{E}_{ij}` of its type (graph, expander, virtual; plus a projection of
    ``edge_attr`` on graph edges when ``edge_dim`` is set), which multiplies the key elementwise,
    as in the official ``ExphormerAttention``:

    .. math::
        s_{ij}^h &= \operatorname{clamp}\Big(\frac{\mathbf{q}_i^h \cdot (\mathbf{k}_j^h \odot
            \mathbf{E}_{ij}^h)}{\sqrt{d}},\ -c,\ c\Big), \qquad
        \mathbf{q}_i = \mathbf{W}_Q \mathbf{h}_i,\ \mathbf{k}_j = \mathbf{W}_K \mathbf{h}_j,\
        \mathbf{v}_j = \mathbf{W}_V \mathbf{h}_j \\
        \mathbf{o}_i^h &= \sum_{j \in N(i)} \operatorname{softmax}_j(s_{ij}^h)\,
            \mathbf{v}_j^h, \qquad \mathbf{E}_{ij} = \mathbf{T}_{\mathrm{type}(ij)}
            \;(+\ \mathbf{W}_E \mathbf{e}_{ij} \text{ on graph edges})

    with :math:`d` = ``out_channels`` and :math:`c` = ``clamp`` (5 in the paper's code). The
    message is :math:`\mathbf{v}_j` alone (the official code does not apply the edge embedding to
    the values). The official code normalises by :math:`\sum_j e^{s_{ij}} + 10^{-6}`; here the
    softmax has no :math:`10^{-6}` (a relative difference below :math:`10^{-6} e^{c}`). The
    hidden states :math:`\mathbf{h}` are ``x`` followed by the learnable virtual-node embeddings
    (``virtual_emb``, the same for every graph); only the real nodes' outputs are returned.
    :math:`\mathbf{T}` (``edge_type_emb``) starts at ones, so the layer starts as plain
    dot-product attention.

    The pattern is built once per ``(edge_index, batch)`` pair of tensors (while unmodified) in
    :data:`gtlib.attention.cache.pattern_cache`, so all layers of a model see the same expander;
    pass ``pattern`` to choose it (e.g. from a seeded generator).

    It is a :class:`torch_geometric.nn.MessagePassing` (``aggr="add"``, ``node_dim=0``), so
    PyG's explainers find it (also as ``GPSConv(attn_type="exphormer").attn``). In explain mode
    PyG's edge mask (one entry per column of ``edge_index``) multiplies the attention weights
    of the graph edges; expander and virtual-node edges get weight one, as PyG's layers treat
    their added self-loops. Message forward hooks (``AttentionExplainer``) see the graph edges
    first, in ``edge_index`` order, then the layer's own edges, with their ``alpha``. Repeated
    columns of ``edge_index`` are merged into one attended edge (the first copy's mask entry
    applies). Otherwise the forward is one :func:`~gtlib.attention.attend` call.

    Args:
        in_channels: size of each input sample.
        out_channels: size of each output sample per head.
        heads: number of attention heads.
        concat: concatenate the heads (``heads * out_channels`` outputs) or average them.
        degree: random permutations per graph of the expander (node degree ``2 * degree``).
        num_virtual: virtual nodes per graph.
        edge_dim: size of ``edge_attr`` (``None``: no edge features).
        bias: whether the query, key, value (and edge) projections have a bias.
        dropout: dropout probability of the attention weights.
        clamp: bound :math:`c` of the scores (``None``: no clamping).

    Shapes:
        - **input:** node features :math:`(N, F_{in})`, edge indices :math:`(2, E)`, batch
          vector :math:`(N)` (optional, sorted graph ids), edge features :math:`(E, D)`
          (optional), ``pattern`` (optional) the ``(Pattern, edge_type, graph_edge)`` triple
          of :meth:`Pattern.exphormer <gtlib.attention.Pattern.exphormer>`.
        - **output:** node features :math:`(N, H \cdot F_{out})` or :math:`(N, F_{out})`
          (``concat=False``); with ``return_attention_weights=True`` also
          ``(edge_index (2, E'), weights (E', H))`` over the pattern's nodes (virtual ones
          included).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        heads: int = 1,
        concat: bool = True,
        degree: int = 3,
        num_virtual: int = 1,
        edge_dim: int | None = None,
        bias: bool = True,
        dropout: float = 0.0,
        clamp: float | None = 5.0,
    ) -> None:
        super().__init__(aggr="add", node_dim=0)
        in_channels = check_int(in_channels, "in_channels", minimum=1)
        out_channels = check_int(out_channels, "out_channels", minimum=1)
        heads = check_int(heads, "heads", minimum=1)
        degree = check_int(degree, "degree", minimum=0)
        num_virtual = check_int(num_virtual, "num_virtual", minimum=0)
        if edge_dim is not None:
            edge_dim = check_int(edge_dim, "edge_dim", minimum=1)
        dropout = check_real(dropout, "dropout", minimum=0.0)
        if not dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if clamp is not None:
            clamp = check_real(clamp, "clamp", positive=True)
        concat, bias = check_bool(concat, "concat"), check_bool(bias, "bias")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.heads = heads
        self.concat = concat
        self.degree = degree
        self.num_virtual = num_virtual
        self.edge_dim = edge_dim
        self.dropout = float(dropout)
        self.clamp = None if clamp is None else float(clamp)

        width = heads * out_channels
        self.lin_query = Linear(in_channels, width, bias=bias)
        self.lin_key = Linear(in_channels, width, bias=bias)
        self.lin_value = Linear(in_channels, width, bias=bias)
        self.edge_type_emb = Embedding(3, width)
        self.lin_edge = Linear(edge_dim, width, bias=bias) if edge_dim is not None else None
        self.virtual_emb = Parameter(torch.empty(num_virtual, in_channels))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        r"""Resets all learnable parameters of the module."""
        for lin in (self.lin_query, self.lin_key, self.lin_value, self.lin_edge):
            if lin is not None:
                lin.reset_parameters()
        torch.nn.init.ones_(self.edge_type_emb.weight)
        torch.nn.init.normal_(self.virtual_emb)

    # ------------------------------------------------------------------ pattern
    def exphormer_pattern(
        self, edge_index: Tensor, batch: Tensor | None, num_nodes: int
    ) -> ExphormerPattern:
        """The layer's :meth:`Pattern.exphormer <gtlib.attention.Pattern.exphormer>` triple,
        built once per unmodified ``(edge_index, batch)`` in the library's pattern cache."""
        sources = (edge_index,) if batch is None else (edge_index, batch)
        key = ("Pattern.exphormer", self.degree, self.num_virtual, num_nodes)
        return pattern_cache.get(
            sources,
            key,
            lambda: Pattern.exphormer(
                edge_index, batch, self.degree, self.num_virtual, num_nodes=num_nodes
            ),
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        batch: Tensor | None = None,
        edge_attr: Tensor | None = None,
        *,
        pattern: ExphormerPattern | None = None,
        return_attention_weights: bool = False,
    ) -> Tensor | tuple[Tensor, tuple[Tensor, Tensor]]:
        r"""Runs the layer.

        Args:
            x: node features ``[N, in_channels]``.
            edge_index: ``[2, E]`` the graph's (sender, receiver) pairs.
            batch: ``[N]`` sorted graph id of each node (``None``: one graph).
            edge_attr: ``[E, edge_dim]`` edge features (needs ``edge_dim``).
            pattern: the ``(Pattern, edge_type, graph_edge)`` triple of
                :meth:`Pattern.exphormer <gtlib.attention.Pattern.exphormer>` with this
                layer's ``num_virtual`` (default: built from ``edge_index`` and ``batch``).
            return_attention_weights: also return the pattern's ``edge_index`` and the
                ``[E', H]`` attention weights.
        """
        self._check_inputs(x, edge_index, batch, edge_attr)
        num_nodes = x.size(0)
        if pattern is None:
            pattern = self.exphormer_pattern(edge_index, batch, num_nodes)
        graph_pattern, edge_type, graph_edge = pattern = self._check_pattern(pattern, num_nodes)
        total = graph_pattern.num_dst
        num_graphs = (total - num_nodes) // max(self.num_virtual, 1)

        heads, channels = self.heads, self.out_channels
        hidden = x
        if self.num_virtual and num_graphs:
            virtual = self.virtual_emb.to(x.dtype).repeat(num_graphs, 1)
            hidden = torch.cat([x, virtual], dim=0)
        query = self.lin_query(hidden).view(total, heads, channels)
        key = self.lin_key(hidden).view(total, heads, channels)
        value = self.lin_value(hidden).view(total, heads, channels)
        score = dict(
            score=None,
            score_mod=self._score_mod(),
            src_inputs=(key,),
            dst_inputs=(query,),
            edge_inputs=(self._edge_input(edge_type, graph_edge, edge_attr, x.dtype),),
            dropout=self.dropout if self.training else 0.0,
            return_attention=return_attention_weights,
        )
        if self._explain or self._message_forward_hooks:  # PyG's explainers watch the layer
            out, weights = run_attention(
                self, graph_pattern, value, edge_origin=graph_edge, **score
            )
        else:
            result = attend(graph_pattern, value, **score)
            out, weights = result if return_attention_weights else (result, None)
        out = out[:num_nodes]
        out = out.reshape(num_nodes, heads * channels) if self.concat else out.mean(1)
        if return_attention_weights:
            return out, (graph_pattern.edge_index, weights)
        return out

    def _check_inputs(
        self, x: Tensor, edge_index: Tensor, batch: Tensor | None, edge_attr: Tensor | None
    ) -> None:
        """The forward's tensors: types, shapes and (where the checks are on) finiteness."""
        check_tensor(x, "x", floating=True)
        if x.dim() != 2 or x.size(1) != self.in_channels:
            raise ValueError(f"x must have shape [N, {self.in_channels}], got {list(x.shape)}")
        check_finite(x, "x")
        check_tensor(edge_index, "edge_index", integer=True)
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
        if batch is not None:
            check_tensor(batch, "batch", integer=True, dim=1)
            if batch.numel() != x.size(0):
                raise ValueError(
                    f"batch must have shape [N] = [{x.size(0)}], got {list(batch.shape)}"
                )
        if edge_attr is None:
            return
        if self.lin_edge is None:
            raise ValueError("edge_attr needs a layer built with edge_dim")
        check_tensor(edge_attr, "edge_attr", floating=True)
        if edge_attr.dim() != 2 or edge_attr.shape != (edge_index.size(-1), self.edge_dim):
            raise ValueError(
                f"edge_attr must have shape [{edge_index.size(-1)}, {self.edge_dim}], got "
                f"{list(edge_attr.shape)}"
            )
        check_finite(edge_attr, "edge_attr")

    def _check_pattern(self, pattern: ExphormerPattern, num_nodes: int) -> ExphormerPattern:
        """``pattern`` if it is a triple spanning ``x``'s nodes plus the virtual nodes."""
        if not isinstance(pattern, tuple) or len(pattern) != 3:
            raise TypeError("pattern must be the (Pattern, edge_type, graph_edge) triple")
        total = pattern[0].num_dst
        rest = (total - num_nodes) % max(self.num_virtual, 1)
        if rest or total < num_nodes or (self.num_virtual == 0 and total != num_nodes):
            raise ValueError(
                f"pattern spans {total} nodes, not the {num_nodes} nodes of x plus "
                f"{self.num_virtual} virtual nodes per graph"
            )
        return pattern

    def _edge_input(
        self, edge_type: Tensor, graph_edge: Tensor, edge_attr: Tensor | None, dtype: torch.dtype
    ) -> Tensor:
        """The edge types (embedded inside the score) or, with ``edge_attr``, the edge
        embeddings ``[E', H, C]``."""
        if edge_attr is None:
            return edge_type  # embedded per chunk inside the score
        edge_emb = self.edge_type_emb(edge_type)
        is_graph = graph_edge >= 0
        features = self.lin_edge(edge_attr).index_select(0, graph_edge[is_graph])
        edge_emb = edge_emb.index_put((is_graph.nonzero().view(-1),), features, accumulate=True)
        return edge_emb.to(dtype).view(-1, self.heads, self.out_channels)

    def _score_mod(self):
        """The score ``clamp(q_i . (k_j * E_ij) / sqrt(d), -c, c)`` as the core's
        ``score_mod``."""
        heads, channels = self.heads, self.out_channels
        type_weight = self.edge_type_emb.weight
        scale = 1.0 / math.sqrt(channels)
        bound = self.clamp

        def score_mod(_scores: Tensor, edges: Edges) -> Tensor:
            (key_j,), (query_i,), (emb,) = edges.x_src, edges.x_dst, edges.x_edge
            if not emb.dtype.is_floating_point:
                emb = type_weight.to(key_j.dtype).index_select(0, emb).view(-1, heads, channels)
            scores = (query_i * key_j * emb).sum(-1) * scale
            return scores if bound is None else scores.clamp(-bound, bound)

        return score_mod

    def message(self, x_j: Tensor, alpha: Tensor) -> Tensor:
        """The message ``alpha_ij * v_j`` (``[E, H, C]``); the forward computes it in
        :func:`gtlib.attention.attend`."""
        return alpha.unsqueeze(-1) * x_j

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.in_channels}, {self.out_channels}, "
            f"heads={self.heads}, degree={self.degree}, num_virtual={self.num_virtual})"
        )
