"""The GPS graph transformer layer with per-graph global attention on the sparse-attention core."""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Dropout, Linear, Module, MultiheadAttention, Sequential
from torch_geometric.nn.attention import PerformerAttention
from torch_geometric.nn.attention.performer import generalized_kernel
from torch_geometric.nn.inits import reset
from torch_geometric.nn.resolver import activation_resolver, normalization_resolver

from gtlib.attention import Pattern, sparse_attention
from gtlib.attention.cache import pattern_cache
from gtlib.nn.exphormer_conv import ExphormerConv
from gtlib.validation import check_choice, check_finite, check_int, check_real, describe

ATTN_TYPES = ("multihead", "performer", "sparse", "exphormer")
# attn_kwargs that shape the BigBird pattern of attn_type="sparse" (the rest go to the projections)
SPARSE_DEFAULTS = {"window": 3, "num_random": 2, "num_global": 1}
# attn_kwargs of attn_type="exphormer" (ExphormerConv's arguments) and their defaults
EXPHORMER_DEFAULTS = {"degree": 3, "num_virtual": 1, "dropout": 0.0, "bias": False, "clamp": 5.0}


class GPSConv(Module):
    r"""The general, powerful, scalable (GPS) graph transformer layer from the
    `"Recipe for a General, Powerful, Scalable Graph Transformer"
    <https://arxiv.org/abs/2205.12454>`_ paper, with its global attention computed per graph on
    :func:`gtlib.attention.sparse_attention` (no padding to the largest graph of the batch).

    A local message-passing layer and a global attention layer each get dropout, a residual and a
    norm; their sum goes through a two-layer MLP with residual and norm:

    .. math::
        \mathbf{h}^{L} &= \mathrm{Norm}_1\big(\mathbf{x} + \mathrm{Dropout}(
            \mathrm{MPNN}(\mathbf{x}, \mathbf{A}))\big), \qquad
        \mathbf{h}^{G} = \mathrm{Norm}_2\big(\mathbf{x} + \mathrm{Dropout}(
            \mathrm{GlobalAttn}(\mathbf{x}))\big) \\
        \mathbf{h} &= \mathbf{h}^{L} + \mathbf{h}^{G}, \qquad
        \mathbf{out} = \mathrm{Norm}_3\big(\mathbf{h} + \mathrm{MLP}(\mathbf{h})\big)

    Global attention types (``attn_type``):

    - ``"multihead"``: softmax attention of every node over all nodes of its own graph,
      :math:`\mathbf{o}_i = \mathbf{W}_o \, \Vert_h \sum_{j \in G(i)}
      \mathrm{softmax}_j(\mathbf{q}_i^h \cdot \mathbf{k}_j^h / \sqrt{d})\, \mathbf{v}_j^h`,
      with the parameters of a :class:`torch.nn.MultiheadAttention` (``self.attn``), so a PyG
      :class:`~torch_geometric.nn.conv.GPSConv` ``state_dict`` loads strictly and gives PyG's
      outputs (PyG pads with ``to_dense_batch`` and masks the padding).
    - ``"performer"``: FAVOR+ linear attention with PyG's
      :class:`~torch_geometric.nn.attention.PerformerAttention` parameters and random features,
      :math:`\mathbf{o}_i = \phi(\mathbf{q}_i)^\top \sum_{j \in G(i)} \phi(\mathbf{k}_j)
      \mathbf{v}_j^\top \,/\, \phi(\mathbf{q}_i)^\top \sum_{j \in G(i)} \phi(\mathbf{k}_j)`,
      :math:`\phi(\mathbf{u}) = \mathrm{kernel}(\mathbf{P}\mathbf{u}) + 10^{-3}`, summed over
      each graph's own nodes. PyG agrees when no graph is padded (one graph, or graphs of equal
      size); with padding PyG's padded keys add :math:`10^{-3}` terms to the denominator.
    - ``"sparse"``: BigBird-style attention (Zaheer et al., `"Big Bird: Transformers for Longer
      Sequences" <https://arxiv.org/abs/2007.14062>`_) with ``multihead``'s parameters: node
      :math:`i` attends, within its graph and in node order, to a window of ``window`` nodes
      (local offsets ``-(window - 1) // 2 .. window // 2``), to ``num_random`` nodes drawn
      uniformly (with replacement, duplicates merged, redrawn every call) and to the first
      ``num_global`` nodes, which in turn attend to all nodes of their graph. These three go in
      ``attn_kwargs`` (defaults 3, 2, 1) beside the :class:`torch.nn.MultiheadAttention` ones.
      :meth:`bigbird_pattern` (:meth:`Pattern.bigbird <gtlib.attention.Pattern.bigbird>`)
      builds the pattern, e.g. to pass it as ``global_pattern``.
    - ``"exphormer"``: Exphormer's sparse attention (Shirzad et al., `"Exphormer: Sparse
      Transformers for Graphs" <https://arxiv.org/abs/2303.06147>`_) as in the official GPS
      layer with ``global_model_type="Exphormer"``: ``self.attn`` is an
      :class:`~gtlib.nn.ExphormerConv` (``heads`` heads of ``channels // heads`` channels,
      concatenated, no output projection) over the graph's edges, a random expander of
      ``2 * degree`` edges per node and ``num_virtual`` virtual nodes per graph. ``attn_kwargs``
      takes ``degree`` (3), ``num_virtual`` (1), ``dropout`` (0, on the attention weights),
      ``bias`` (``False``, as the official layer) and ``clamp`` (5). The pattern is built once
      per unmodified ``(edge_index, batch)`` in :data:`gtlib.attention.cache.pattern_cache`, so
      all layers of a model share one expander; ``global_pattern`` may instead be the
      ``(Pattern, edge_type, graph_edge)`` triple of :meth:`Pattern.exphormer
      <gtlib.attention.Pattern.exphormer>`.

    PyG's machinery finds the two parts where it finds them in PyG's
    :class:`~torch_geometric.nn.conv.GPSConv`: the local layer is the child ``conv`` (a
    :class:`~torch_geometric.nn.MessagePassing` such as :class:`~gtlib.nn.GATConv` gets the
    explainers' edge masks and hooks) and the global attention the child ``attn``; with
    ``"exphormer"`` that is an :class:`~gtlib.nn.ExphormerConv`, itself a ``MessagePassing``, so
    an explainer's edge mask also weighs the graph's edges inside the global attention.

    Args:
        channels: size of each input and output sample.
        conv: the local message-passing layer, or ``None``.
        heads: number of attention heads.
        dropout: dropout probability of the intermediate embeddings.
        act: the MLP's activation (a name or callable).
        act_kwargs: arguments of the activation.
        norm: the normalization (a name or callable, ``None`` for none).
        norm_kwargs: arguments of the normalization.
        attn_type: ``"multihead"``, ``"performer"``, ``"sparse"`` or ``"exphormer"``.
        attn_kwargs: arguments of the attention: :class:`torch.nn.MultiheadAttention`'s
            (``dropout`` on the attention weights, ``bias``) for ``"multihead"`` and
            ``"sparse"`` (plus ``window``, ``num_random``, ``num_global``),
            :class:`~torch_geometric.nn.attention.PerformerAttention`'s for ``"performer"``.

    Shapes:
        - **input:** node features :math:`(N, F)`, edge indices :math:`(2, E)`, batch vector
          :math:`(N)` (optional, sorted graph ids), ``global_pattern`` a
          :class:`~gtlib.attention.Pattern` over the :math:`N` nodes (optional).
        - **output:** node features :math:`(N, F)`; with ``return_attention_weights=True`` also
          ``(local, global)``: the local conv's attention weights (or ``None`` when it has none)
          and the global branch's ``(edge_index (2, E'), weights (E', H))`` (``None`` for
          ``"performer"``).
    """

    def __init__(
        self,
        channels: int,
        conv: Module | None,
        heads: int = 1,
        dropout: float = 0.0,
        act: str | Any = "relu",
        act_kwargs: dict[str, Any] | None = None,
        norm: str | Any | None = "batch_norm",
        norm_kwargs: dict[str, Any] | None = None,
        attn_type: str = "multihead",
        attn_kwargs: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        channels = check_int(channels, "channels", minimum=1)
        heads = check_int(heads, "heads", minimum=1)
        if channels % heads != 0:
            raise ValueError(f"channels ({channels}) must be divisible by heads ({heads})")
        dropout = check_real(dropout, "dropout", minimum=0.0)
        if not dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        attn_type = check_choice(attn_type, "attn_type", ATTN_TYPES)
        if conv is not None and not isinstance(conv, Module):
            raise TypeError(f"conv must be a torch.nn.Module or None, got {type(conv)}")
        for name, value in (
            ("act_kwargs", act_kwargs),
            ("norm_kwargs", norm_kwargs),
            ("attn_kwargs", attn_kwargs),
        ):
            if value is not None and not isinstance(value, dict):
                raise TypeError(f"{name} must be a dict or None, got {describe(value)}")

        self.channels = channels
        self.conv = conv
        self.heads = heads
        self.dropout = dropout
        self.attn_type = attn_type
        self.window = self.num_random = self.num_global = 0
        self.attn = self._build_attention(dict(attn_kwargs or {}))
        self.mlp = Sequential(
            Linear(channels, channels * 2),
            _resolve("act", activation_resolver, act, act_kwargs),
            Dropout(dropout),
            Linear(channels * 2, channels),
            Dropout(dropout),
        )
        self.norm1 = _resolve("norm", normalization_resolver, norm, norm_kwargs, channels)
        self.norm2 = _resolve("norm", normalization_resolver, norm, norm_kwargs, channels)
        self.norm3 = _resolve("norm", normalization_resolver, norm, norm_kwargs, channels)
        self.norm_with_batch = False
        if self.norm1 is not None:
            self.norm_with_batch = "batch" in inspect.signature(self.norm1.forward).parameters
        self.conv_returns_attention = False
        if conv is not None:
            parameters = inspect.signature(conv.forward).parameters
            self.conv_returns_attention = "return_attention_weights" in parameters

    def _build_attention(self, attn_kwargs: dict[str, Any]) -> Module:
        """The global attention module of ``attn_type`` (``"sparse"`` first takes its pattern
        arguments out of ``attn_kwargs``)."""
        channels, heads = self.channels, self.heads
        if self.attn_type == "sparse":
            for name, default in SPARSE_DEFAULTS.items():
                setattr(self, name, _non_negative_int(attn_kwargs.pop(name, default), name))
        if self.attn_type == "performer":
            return PerformerAttention(channels=channels, heads=heads, **attn_kwargs)
        if self.attn_type == "exphormer":
            unknown = set(attn_kwargs) - set(EXPHORMER_DEFAULTS)
            if unknown:
                raise ValueError(
                    f"attn_kwargs of attn_type='exphormer' take {sorted(EXPHORMER_DEFAULTS)}, "
                    f"got {sorted(unknown)}"
                )
            options = {**EXPHORMER_DEFAULTS, **attn_kwargs}
            return ExphormerConv(channels, channels // heads, heads=heads, **options)
        attn = MultiheadAttention(channels, heads, batch_first=True, **attn_kwargs)
        if attn.bias_k is not None or attn.add_zero_attn:
            raise ValueError("attn_kwargs add_bias_kv and add_zero_attn are not supported")
        if not attn._qkv_same_embed_dim:
            raise ValueError("attn_kwargs kdim and vdim must equal channels (self-attention)")
        return attn

    def reset_parameters(self) -> None:
        r"""Resets all learnable parameters of the module."""
        if self.conv is not None:
            self.conv.reset_parameters()
        if self.attn_type == "exphormer":
            self.attn.reset_parameters()
        else:
            self.attn._reset_parameters()
        reset(self.mlp)
        for norm in (self.norm1, self.norm2, self.norm3):
            if norm is not None:
                norm.reset_parameters()

    def forward(
        self,
        x: Tensor,
        edge_index: Tensor,
        batch: Tensor | None = None,
        *,
        global_pattern: Pattern | tuple[Pattern, Tensor, Tensor] | None = None,
        return_attention_weights: bool = False,
        **kwargs: Any,
    ) -> Tensor | tuple[Tensor, tuple[Any, tuple[Tensor, Tensor] | None]]:
        r"""Runs the layer.

        Args:
            x: node features ``[N, channels]``.
            edge_index: the graph for the local conv.
            batch: ``[N]`` sorted graph id of each node (``None``: one graph).
            global_pattern: a precomputed :class:`~gtlib.attention.Pattern` for the global
                attention (e.g. ``Pattern.full(batch)`` or :meth:`bigbird_pattern`), built once
                per batch and shared by all layers. Not used by ``"performer"``.
                For ``"exphormer"`` the triple of ``Pattern.exphormer``.
            return_attention_weights: also return ``(local, global)`` attention weights.
            **kwargs: passed to the local conv (e.g. ``edge_attr``).
        """
        num_nodes = self._check_inputs(x, batch, global_pattern)

        hs = []
        local_attention = None
        if self.conv is not None:
            if return_attention_weights and self.conv_returns_attention:
                h, local_attention = self.conv(
                    x, edge_index, return_attention_weights=True, **kwargs
                )
            else:
                h = self.conv(x, edge_index, **kwargs)
            h = F.dropout(h, p=self.dropout, training=self.training)
            hs.append(self._norm(self.norm1, h + x, batch))

        if self.attn_type == "performer":
            h, global_attention = self._performer_attention(x, batch, num_nodes), None
        elif self.attn_type == "exphormer":
            result = self.attn(
                x,
                edge_index,
                batch,
                pattern=global_pattern,
                return_attention_weights=return_attention_weights,
            )
            h, global_attention = result if return_attention_weights else (result, None)
        else:
            pattern = global_pattern
            if pattern is None:
                pattern = self._default_pattern(batch, num_nodes, x.device)
            h, global_attention = self._softmax_attention(x, pattern, return_attention_weights)
        h = F.dropout(h, p=self.dropout, training=self.training)
        hs.append(self._norm(self.norm2, h + x, batch))

        out = sum(hs)
        out = self._norm(self.norm3, out + self.mlp(out), batch)
        if return_attention_weights:
            return out, (local_attention, global_attention)
        return out

    # ------------------------------------------------------------------ global attention
    def _softmax_attention(
        self, x: Tensor, pattern: Pattern, return_attention: bool
    ) -> tuple[Tensor, tuple[Tensor, Tensor] | None]:
        """Multi-head softmax attention over ``pattern`` with ``self.attn``'s parameters."""
        attn: MultiheadAttention = self.attn
        num_nodes, head_dim = x.size(0), self.channels // self.heads
        qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias)
        query, key, value = qkv.view(num_nodes, 3, self.heads, head_dim).unbind(1)
        if num_nodes == 0:  # the core's dense path has no blocks to run on an empty batch
            out, weights = value, value.new_zeros(0, self.heads)
        else:
            result = sparse_attention(
                query,
                key,
                value,
                pattern,
                dropout=attn.dropout if self.training else 0.0,
                return_attention=return_attention,
            )
            out, weights = result if return_attention else (result, None)
        out = attn.out_proj(out.reshape(num_nodes, self.channels))
        if return_attention:
            return out, (pattern.edge_index, weights)
        return out, None

    def _performer_attention(self, x: Tensor, batch: Tensor | None, num_nodes: int) -> Tensor:
        """FAVOR+ linear attention over each graph's own nodes, graphs grouped by size."""
        attn: PerformerAttention = self.attn
        heads, head_dim = attn.heads, attn.head_channels
        projection = attn.fast_attn.projection_matrix

        def features(t: Tensor) -> Tensor:  # [N, H, D] -> [N, H, M]
            t = t.view(num_nodes, heads, head_dim).transpose(0, 1).unsqueeze(0)
            return generalized_kernel(t, projection, attn.fast_attn.kernel)[0].transpose(0, 1)

        query, key = features(attn.q(x)), features(attn.k(x))
        value = attn.v(x).view(num_nodes, heads, head_dim)
        outputs, nodes = [], []
        for block in _graph_blocks(batch, num_nodes, x.device):
            num_graphs, size = block.shape
            flat = block.reshape(-1)
            query_g = query.index_select(0, flat).view(num_graphs, size, heads, -1)
            key_g = key.index_select(0, flat).view(num_graphs, size, heads, -1)
            value_g = value.index_select(0, flat).view(num_graphs, size, heads, head_dim)
            key_value = torch.einsum("bshm,bshd->bhmd", key_g, value_g)
            numerator = torch.einsum("bshm,bhmd->bshd", query_g, key_value)
            denominator = torch.einsum("bshm,bhm->bsh", query_g, key_g.sum(1))
            outputs.append((numerator / denominator.unsqueeze(-1)).reshape(-1, heads, head_dim))
            nodes.append(flat)
        out = x.new_zeros(num_nodes, heads, head_dim)
        if nodes:
            out = out.index_put((torch.cat(nodes),), torch.cat(outputs))
        return attn.dropout(attn.attn_out(out.reshape(num_nodes, heads * head_dim)))

    def _default_pattern(self, batch: Tensor | None, num_nodes: int, device) -> Pattern:
        if self.attn_type == "sparse":
            return Pattern.bigbird(
                batch,
                self.window,
                self.num_random,
                self.num_global,
                num_nodes=num_nodes,
                device=device,
            ).to(device)
        return _full_pattern(batch, num_nodes, device)

    @staticmethod
    def bigbird_pattern(
        batch: Tensor | None,
        window: int = 3,
        num_random: int = 2,
        num_global: int = 1,
        num_nodes: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Pattern:
        r"""The BigBird pattern of ``attn_type="sparse"``, within each graph of a batch:
        :meth:`Pattern.bigbird <gtlib.attention.Pattern.bigbird>` (see there), built on the
        device of ``batch``.

        Args:
            batch: ``[N]`` sorted graph ids, or ``None`` for one graph of ``num_nodes`` nodes.
            window: window width :math:`w` (``0`` for none).
            num_random: random senders per node.
            num_global: global tokens :math:`g` per graph.
            num_nodes: number of nodes when ``batch`` is ``None``.
            generator: random generator for the random senders.
        """
        return Pattern.bigbird(
            batch, window, num_random, num_global, generator=generator, num_nodes=num_nodes
        )

    # ------------------------------------------------------------------ helpers
    def _norm(self, norm: Module | None, h: Tensor, batch: Tensor | None) -> Tensor:
        if norm is None:
            return h
        return norm(h, batch=batch) if self.norm_with_batch else norm(h)

    def _check_inputs(self, x: Tensor, batch: Tensor | None, global_pattern) -> int:
        if not isinstance(x, Tensor) or not x.dtype.is_floating_point:
            raise TypeError("x must be a floating-point tensor [N, channels]")
        if x.dim() != 2 or x.size(1) != self.channels:
            raise ValueError(f"x must have shape [N, {self.channels}], got {list(x.shape)}")
        check_finite(x, "x")
        num_nodes = x.size(0)
        if batch is not None:
            if not isinstance(batch, Tensor) or batch.dtype != torch.long:
                raise TypeError("batch must be an int64 tensor of graph ids [N]")
            if batch.dim() != 1 or batch.numel() != num_nodes:
                raise ValueError(
                    f"batch must have shape [{num_nodes}] (one graph id per node of x), got "
                    f"{list(batch.shape)}"
                )
            if num_nodes and (int(batch.min()) < 0 or bool((batch[1:] < batch[:-1]).any())):
                raise ValueError("batch must hold non-negative graph ids sorted ascending")
        if global_pattern is not None and self.attn_type == "exphormer":
            if not isinstance(global_pattern, tuple) or len(global_pattern) != 3:
                raise TypeError(
                    "global_pattern of attn_type='exphormer' must be the (Pattern, edge_type, "
                    "graph_edge) triple of Pattern.exphormer"
                )
        elif global_pattern is not None:
            if self.attn_type == "performer":
                raise ValueError("global_pattern is not used by attn_type='performer'")
            if not isinstance(global_pattern, Pattern):
                raise TypeError(
                    f"global_pattern must be a gtlib.attention.Pattern, got {type(global_pattern)}"
                )
            if global_pattern.num_src != num_nodes or global_pattern.num_dst != num_nodes:
                raise ValueError(
                    f"global_pattern must span the {num_nodes} nodes of x, got "
                    f"{global_pattern.num_src} senders and {global_pattern.num_dst} receivers"
                )
        return num_nodes

    def __repr__(self) -> str:
        return (
            f"{self.__class__.__name__}({self.channels}, conv={self.conv}, heads={self.heads}, "
            f"attn_type={self.attn_type})"
        )


def _non_negative_int(value: Any, name: str) -> int:
    return check_int(value, name, minimum=0)


def _resolve(name: str, resolver, query: Any, kwargs: dict | None, *args: Any) -> Any:
    """PyG's ``resolver(query, *args, **kwargs)`` with errors that name the argument."""
    if query is None and name == "norm":
        return None
    if not (isinstance(query, str) or callable(query)):
        raise TypeError(f"{name} must be a name or a callable, got {describe(query)}")
    try:
        return resolver(query, *args, **(kwargs or {}))
    except ValueError as err:
        raise ValueError(f"{name}={query!r} is not known ({err})") from None


def _graph_blocks(batch: Tensor | None, num_nodes: int, device) -> list[Tensor]:
    """Node indices of the graphs, grouped by graph size: a list of ``[num_graphs, size]``."""
    if batch is None:
        return [torch.arange(num_nodes, device=device)[None]] if num_nodes else []
    sizes = torch.bincount(batch)
    starts = torch.cumsum(sizes, 0) - sizes
    blocks = []
    for size in torch.unique(sizes[sizes > 0]).tolist():
        blocks.append(starts[sizes == size][:, None] + torch.arange(size, device=device))
    return blocks


def _full_pattern(batch: Tensor | None, num_nodes: int, device: torch.device) -> Pattern:
    """``Pattern.full(batch)`` on ``device``, built once while the same unmodified ``batch``
    tensor is passed (all layers of a model share it), in the library's pattern cache."""
    if batch is None:
        return pattern_cache.get(
            (),
            ("Pattern.full", num_nodes, str(device)),
            lambda: Pattern.full(None, num_nodes=num_nodes, device=device),
        )
    return pattern_cache.get(
        batch, ("Pattern.full", str(device)), lambda: Pattern.full(batch).to(device)
    )
