"""Sparsity patterns: who attends to whom, stored CSR by receiver.

:class:`Pattern` is the only builder of sparsity in gtlib: every constructor (edge lists and
sparse adjacencies, all-to-all blocks, windows, radius and k-nearest neighbourhoods, BigBird)
returns a :class:`Pattern`, built on the device of its inputs. Layers that build patterns from
their inputs remember them in :data:`gtlib.attention.cache.pattern_cache`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from gtlib.attention import builders
from gtlib.attention.builders import NumNodes
from gtlib.attention.cache import pattern_cache
from gtlib.validation import check_device, check_int, check_tensor

BoxLike = Tensor | Sequence[float] | float

# State that defines a pattern (pickled, moved by ``to``); derived caches are rebuilt on demand.
_STATE = (
    "_ptr",
    "_col",
    "_row",
    "perm",
    "blocks",
    "displacement",
    "num_src",
    "num_dst",
    "_num_edges",
    "_device",
    "_unique_edges",
    "_max_degree",
    "_block_starts",
)


class Pattern:
    r"""A sparsity pattern for attention and message passing.

    Edge :math:`(j, i)` means receiver :math:`i` attends to (receives from) sender :math:`j`.
    The pattern stores the edges compressed by receiver (CSR): receiver :math:`i`'s senders are
    ``col[ptr[i]:ptr[i + 1]]``. ``perm`` maps the sorted edges back to the caller's edge order:
    sorted edge ``t`` is the caller's edge ``perm[t]``. Per-edge tensors (edge features, biases,
    returned attention weights, :attr:`displacement`) are always in the caller's order, i.e. the
    order of :attr:`edge_index`.

    Constructors, each returning a :class:`Pattern` on the device of its inputs:

    - :meth:`from_edge_index`: a ``[2, E]`` tensor, a PyG ``EdgeIndex``, a
      ``torch_sparse.SparseTensor`` or a torch sparse COO/CSR/CSC adjacency; :meth:`cached`
      remembers it per input tensor.
    - :meth:`full`: all-to-all attention within each graph of a batch.
    - :meth:`windows`: Swin-style (shifted) windows on a regular grid.
    - :meth:`radius` and :meth:`knn`: geometric neighbourhoods by cell lists (periodic box,
      batch, bipartite sender and receiver sets); they carry :attr:`displacement`.
    - :meth:`bigbird`: BigBird's window, random and global attention within each graph.

    Patterns made of dense all-to-all blocks (:meth:`full`, :meth:`windows`) keep their blocks,
    which lets :func:`~gtlib.attention.sparse_attention` send them to
    :func:`torch.nn.functional.scaled_dot_product_attention`; their edge lists are only expanded
    when an edge-wise computation asks for them, and stay unexpanded through :meth:`to`. A
    pattern pickles (``pickle``, ``torch.save``); derived caches (:meth:`transpose_csr`,
    :meth:`sparse_matrix` indices, :meth:`deduplicated`, :meth:`block_edge_positions`) are
    rebuilt after unpickling.

    Attributes:
        ptr: ``[num_dst + 1]`` int64 offsets of each receiver's senders.
        col: ``[E]`` int64 senders in receiver-sorted order.
        row: ``[E]`` int64 receivers in receiver-sorted order.
        perm: ``[E]`` int64 caller edge index of each sorted edge, or ``None`` when the caller's
            order already is the sorted order.
        num_src, num_dst: numbers of senders and receivers.
        blocks: ``None`` or a list of ``[num_blocks, block_size]`` node-index tensors; every block
            is all-to-all and every receiver lies in exactly one block.
        displacement: ``[E, d]`` geometry of the edges, ``pos[sender] - pos_dst[receiver]``
            (minimum image in a periodic box) in the caller's edge order, for :meth:`radius` and
            :meth:`knn` patterns; ``None`` otherwise.
    """

    def __init__(
        self,
        ptr: Tensor | None,
        col: Tensor | None,
        num_src: int,
        num_dst: int,
        perm: Tensor | None = None,
        row: Tensor | None = None,
        blocks: list[Tensor] | None = None,
        num_edges: int | None = None,
        displacement: Tensor | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if (ptr is None) != (col is None):
            raise ValueError("ptr and col must be given together")
        if col is None and blocks is None:
            raise ValueError("a Pattern needs its edges (ptr, col) or its blocks")
        self._ptr, self._col, self._row = ptr, col, row
        if num_edges is None:
            num_edges = col.numel() if col is not None else builders.block_num_edges(blocks)
        self._num_edges = num_edges if isinstance(num_edges, torch.SymInt) else int(num_edges)
        if col is not None:
            self._device = col.device
        elif blocks:
            self._device = blocks[0].device
        else:
            self._device = check_device(device if device is not None else "cpu")
        self.num_src = num_src if isinstance(num_src, torch.SymInt) else _size(num_src, "num_src")
        self.num_dst = num_dst if isinstance(num_dst, torch.SymInt) else _size(num_dst, "num_dst")
        self.perm = perm
        self.blocks = blocks
        self.displacement = displacement
        self._unique_edges: bool | None = None
        self._max_degree: int | None = None
        self._block_starts: list[int | None] | None = None
        self._clear_derived()

    def _clear_derived(self) -> None:
        self._transpose: tuple[Tensor, Tensor, Tensor] | None = None
        self._csr_indices: dict[str, tuple[Tensor, Tensor]] = {}
        self._deduplicated: tuple[Tensor, Tensor, Tensor] | None = None
        self._block_positions: list[Tensor] | None = None
        self._derived: dict[str, Any] = {}

    def derived(self, key: str, build: Callable[[], Any]) -> Any:
        """A value computed once from this pattern and kept with it: ``build()`` on the first
        call with ``key``, the same object afterwards. Backends keep their per-pattern layouts
        here (like :meth:`transpose_csr`), not in caches of their own; not pickled, and rebuilt
        after unpickling."""
        if key not in self._derived:
            self._derived[key] = build()
        return self._derived[key]

    # ------------------------------------------------------------------ edges of blocks
    @property
    def expanded(self) -> bool:
        """Whether the edge lists exist (block patterns expand them on first use)."""
        return self._col is not None

    def _materialize(self) -> None:
        if self._col is None:
            self._ptr, self._col, self._row = builders.expand_blocks(
                self.blocks, self.num_dst, self._num_edges, self._device
            )
        if self._row is None:
            self._row = builders.ptr_to_row(self._ptr, self._col.numel())

    @property
    def ptr(self) -> Tensor:
        self._materialize()
        return self._ptr

    @property
    def col(self) -> Tensor:
        self._materialize()
        return self._col

    @property
    def row(self) -> Tensor:
        self._materialize()
        return self._row

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_edge_index(cls, edge_index, num_nodes: NumNodes = None) -> Pattern:
        """Builds a pattern from edges or a sparse adjacency, on their device.

        Args:
            edge_index: one of

                - an integer tensor ``[2, E]``: row 0 holds senders, row 1 receivers; the
                  caller's edge order is the column order. A :class:`torch_geometric.EdgeIndex`
                  sorted by column reuses its cached CSC.
                - a ``torch_sparse.SparseTensor`` or a torch sparse tensor (COO, CSR or CSC) in
                  PyG's ``adj_t`` convention: ``adj_t[i, j]`` nonzero means receiver ``i``
                  receives from sender ``j``, shape ``[num_dst, num_src]``. The caller's edge
                  order is the order of the stored entries; a ``SparseTensor`` or a CSR tensor
                  is the pattern's CSR as is (no sort). Values are ignored.
            num_nodes: ``None`` (``max index + 1``, or the ``EdgeIndex`` / sparse matrix sizes),
                an ``int`` for both sides, or ``(num_src, num_dst)`` for bipartite patterns.
                With a sparse matrix it must agree with the matrix's shape.

        Raises:
            TypeError: ``edge_index`` is of another type or has a non-integer dtype, or
                ``num_nodes`` is not ``None``, an int or a pair of ints.
            ValueError: bad shapes (a ``[2, E]`` tensor, a 2-D sparse matrix), indices out of
                range, negative sizes, or ``num_nodes`` disagreeing with a sparse matrix.
        """
        sizes = builders.normalize_num_nodes(num_nodes)
        sparse_parts = builders.sparse_tensor_parts(edge_index)
        if sparse_parts is not None:
            ptr, col, num_src, num_dst = sparse_parts
            _check_sparse_sizes(sizes, num_src, num_dst)
            return cls._from_csr(ptr, col, num_src, num_dst, "edge_index (SparseTensor)")
        if not isinstance(edge_index, Tensor):
            raise TypeError(
                "edge_index must be a torch.Tensor [2, E], a PyG EdgeIndex, a "
                f"torch_sparse.SparseTensor or a torch sparse matrix, got {type(edge_index)}"
            )
        if edge_index.layout != torch.strided:
            kind, first, second, num_src, num_dst = builders.torch_sparse_edges(edge_index)
            _check_sparse_sizes(sizes, num_src, num_dst)
            if kind == "csr":
                return cls._from_csr(first, second, num_src, num_dst, "edge_index (sparse CSR)")
            builders.check_index_range(first, num_src, "edge_index senders (columns)")
            builders.check_index_range(second, num_dst, "edge_index receivers (rows)")
            return cls._from_sorted_or_unsorted(first, second, num_src, num_dst)

        if edge_index.dtype.is_floating_point or edge_index.dtype.is_complex:
            raise TypeError(f"edge_index must have an integer dtype, got {edge_index.dtype}")
        if edge_index.dtype == torch.bool:
            raise TypeError(f"edge_index must have an integer dtype, got {edge_index.dtype}")
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")

        if edge_index.device.type == "meta":
            raise ValueError(
                "edge_index is on the meta device: building a Pattern reads the indices; build "
                "it on a real device (block patterns then move anywhere with .to())"
            )
        num_src, num_dst = _resolve_num_nodes(edge_index, sizes)
        edge_index_data = builders.plain_tensor(edge_index)
        src = edge_index_data[0].long()
        dst = edge_index_data[1].long()
        builders.check_index_range(src, num_src, "edge_index senders")
        builders.check_index_range(dst, num_dst, "edge_index receivers")

        csc = _cached_csc(edge_index, num_src, num_dst)
        if csc is not None:
            ptr, col, perm = csc
            return cls(ptr, col, num_src, num_dst, perm=perm)
        pattern = cls._from_sorted_or_unsorted(src, dst, num_src, num_dst)
        # Never alias the caller's tensor: an in-place change of it must not alter the pattern.
        if pattern.perm is None and _shares_storage(pattern._col, edge_index_data):
            pattern._col, pattern._row = pattern._col.clone(), pattern._row.clone()
        return pattern

    @classmethod
    def cached(cls, edge_index, num_nodes: NumNodes = None) -> Pattern:
        """:meth:`from_edge_index`, remembered in :data:`~gtlib.attention.cache.pattern_cache`.

        Passing the same, unmodified object again (same identity and version counter) returns
        the same :class:`Pattern` without re-sorting; an in-place change of ``edge_index`` or
        other ``num_nodes`` builds a new one, and the entry dies with ``edge_index``. Layers
        call this in ``forward``.
        """
        sizes = builders.normalize_num_nodes(num_nodes)
        sparse_cls = builders.sparse_tensor_class()
        if not isinstance(edge_index, Tensor) and not (
            sparse_cls is not None and isinstance(edge_index, sparse_cls)
        ):
            raise TypeError(
                "edge_index must be a torch.Tensor [2, E], a PyG EdgeIndex, a "
                f"torch_sparse.SparseTensor or a torch sparse matrix, got {type(edge_index)}"
            )
        return pattern_cache.get(
            edge_index,
            ("Pattern.from_edge_index", sizes),
            lambda: cls.from_edge_index(edge_index, sizes),
        )

    @classmethod
    def _from_csr(cls, ptr: Tensor, col: Tensor, num_src: int, num_dst: int, name: str) -> Pattern:
        """A pattern whose caller order is the given CSR's order (no sort when its senders are
        sorted within each receiver, as PyG and torch keep them)."""
        builders.check_ptr(ptr, num_dst, col.numel(), name)
        builders.check_index_range(col, num_src, f"{name} senders")
        row = builders.ptr_to_row(ptr, col.numel())
        # rows are sorted (they come from ptr); no row * num_src key, which could overflow
        in_order = (row[1:] != row[:-1]) | (col[1:] >= col[:-1])
        if col.numel() > 1 and not bool(in_order.all()):
            return cls._from_sorted_or_unsorted(col, row, num_src, num_dst)
        return cls(ptr, col, num_src, num_dst, row=row)

    @classmethod
    def _from_sorted_or_unsorted(
        cls, src: Tensor, dst: Tensor, num_src: int, num_dst: int, canonical: bool = False
    ) -> Pattern:
        """Sorts edges by (receiver, sender). With ``canonical`` the sorted order becomes the
        caller's order (used by generated patterns whose edge order is ours to choose)."""
        perm = _pair_sort(dst, src, num_dst, num_src)
        if perm is not None:
            src, dst = src[perm], dst[perm]
        ptr = builders.index_to_ptr(dst, num_dst)
        pattern = cls(ptr, src, num_src, num_dst, perm=None if canonical else perm, row=dst)
        distinct = (dst[1:] != dst[:-1]) | (src[1:] != src[:-1])
        pattern._unique_edges = dst.numel() < 2 or bool(distinct.all())
        return pattern

    @classmethod
    def full(
        cls,
        batch: Tensor | None = None,
        num_nodes: int | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> Pattern:
        """All-to-all attention within each graph of a batch (self-loops included), no padding.

        The pattern keeps one block per graph (grouped by size); its edge list is only
        expanded when asked for.

        Args:
            batch: ``[N]`` int64 graph id of each node, sorted ascending (PyG convention). The
                pattern lives on its device. ``None`` means one graph of ``num_nodes`` nodes.
            num_nodes: number of nodes when ``batch`` is ``None``.
            device: the device when ``batch`` is ``None`` (default: torch's default device).
        """
        if batch is None:  # one graph: no data-dependent sizes (works on any device)
            if num_nodes is None:
                raise ValueError("Pattern.full needs batch or a non-negative num_nodes")
            n = builders.as_size(num_nodes, "num_nodes")
            device = check_device(device)
            blocks = [torch.arange(n, device=device)[None]] if n else []
        else:
            batch = builders.batch_or_single_graph(batch, num_nodes, None, "Pattern.full")
            n, device = batch.numel(), batch.device
            blocks = builders.full_blocks(batch)
        if not blocks:
            empty = torch.zeros(0, dtype=torch.long, device=device)
            ptr = torch.zeros(n + 1, dtype=torch.long, device=device)
            pattern = cls(ptr, empty, n, n, row=empty, blocks=[])
        else:
            pattern = cls(None, None, n, n, blocks=blocks)
        pattern._unique_edges = True
        return pattern

    @classmethod
    def windows(
        cls,
        grid_shape: Sequence[int],
        window: int | Sequence[int],
        shift: int | Sequence[int] = 0,
        periodic: bool | Sequence[bool] = True,
        device: torch.device | str | None = None,
    ) -> Pattern:
        """Swin-style window attention on a regular grid (nodes are grid points in C order).

        Each receiver attends to all points of its window. Windows tile the grid with their
        corners at ``shift + a * window`` along each dimension. On a periodic dimension the
        windows wrap around (the grid size must be a multiple of the window); on a non-periodic
        one the windows that cross the boundary are cut there, which is what Swin's cyclic shift
        with its attention mask computes.

        Args:
            grid_shape: the grid's size per dimension.
            window: window size, one for all dimensions or one per dimension.
            shift: window offset (Swin uses ``window // 2`` on every other layer).
            periodic: whether each dimension wraps around.
            device: where to build the pattern (default: torch's default device).
        """
        if not isinstance(grid_shape, (list, tuple, torch.Size)):
            raise TypeError(f"grid_shape must be a sequence of ints, got {grid_shape!r}")
        grid_shape = builders.per_dim(list(grid_shape), len(grid_shape), "grid_shape")
        dims = len(grid_shape)
        if dims == 0 or any(g < 1 for g in grid_shape):
            raise ValueError(f"grid_shape must be positive sizes, got {grid_shape}")
        window = builders.per_dim(window, dims, "window")
        shift = builders.per_dim(shift, dims, "shift")
        periodic = builders.per_dim(periodic, dims, "periodic", kind=bool)
        for d in range(dims):
            size, w, wrap = grid_shape[d], window[d], periodic[d]
            if w < 1 or w > size:
                raise ValueError(f"window[{d}]={w} must lie in [1, grid_shape[{d}]={size}]")
            if wrap and size % w != 0:
                raise ValueError(
                    f"periodic windows need grid_shape[{d}]={size} to be a multiple of "
                    f"window[{d}]={w}"
                )
        device = check_device(device)
        blocks = builders.window_blocks(grid_shape, window, shift, periodic, device)
        num_nodes = math.prod(grid_shape)
        pattern = cls(None, None, num_nodes, num_nodes, blocks=blocks)
        pattern._unique_edges = True
        return pattern

    @classmethod
    def radius(
        cls,
        pos: Tensor,
        r: float,
        box: BoxLike | None = None,
        batch: Tensor | None = None,
        max_num_neighbors: int | None = None,
        loop: bool = False,
        *,
        pos_dst: Tensor | None = None,
        batch_dst: Tensor | None = None,
    ) -> Pattern:
        """Radius neighbourhoods by cell lists, with the periodic minimum image when ``box``.

        Sender ``j`` connects to receiver ``i`` when ``|pos[j] - pos_dst[i]| <= r`` (a point at
        exactly ``r`` is a neighbour, and so is a coincident point). The caller's edge order
        (:attr:`edge_index`) is by receiver, then distance, then sender; ``max_num_neighbors``
        keeps the nearest ones. :attr:`displacement` holds ``pos[j] - pos_dst[i]`` (minimum
        image) in that order, differentiable with respect to the positions when they require
        grad. See :func:`gtlib.attention.neighbors.radius_edges` for the arguments.

        Args:
            pos: ``[N, d]`` sender positions (also the receivers unless ``pos_dst``).
            r: the cutoff, finite, ``> 0`` and (periodic) at most half the smallest box length.
            box: periodic box lengths (scalar or ``d`` values) or ``None``; positions may lie
                anywhere (e.g. in ``[0, L)`` or ``[-L/2, L/2)``).
            batch: ``[N]`` sorted graph ids of the senders, or ``None``.
            max_num_neighbors: keep the nearest ones per receiver, or ``None`` for all.
            loop: include self edges ``(i, i)``; only meaningful without ``pos_dst``.
            pos_dst: ``[M, d]`` receiver positions of a bipartite pattern (``num_dst = M``).
            batch_dst: ``[M]`` sorted graph ids of the receivers (with ``pos_dst`` and
                ``batch``).
        """
        from gtlib.attention.neighbors import radius_edges

        edge_index, displacement = radius_edges(
            pos,
            r,
            box=box,
            batch=batch,
            max_num_neighbors=max_num_neighbors,
            loop=loop,
            pos_dst=pos_dst,
            batch_dst=batch_dst,
        )
        return cls._geometric(edge_index, displacement, pos, pos_dst)

    @classmethod
    def knn(
        cls,
        pos: Tensor,
        k: int,
        box: BoxLike | None = None,
        batch: Tensor | None = None,
        loop: bool = False,
        *,
        pos_dst: Tensor | None = None,
        batch_dst: Tensor | None = None,
    ) -> Pattern:
        """The ``k`` nearest senders of every receiver by cell lists (minimum image with
        ``box``), with :attr:`displacement` as in :meth:`radius`.

        The caller's edge order is by receiver, then distance, then sender, so
        ``pattern.edge_index[0].view(M, k)`` lists every receiver's neighbours nearest first
        when every graph has more than ``k`` candidates. See
        :func:`gtlib.attention.neighbors.knn_edges` for the arguments.
        """
        from gtlib.attention.neighbors import knn_edges

        edge_index, displacement = knn_edges(
            pos, k, box=box, batch=batch, loop=loop, pos_dst=pos_dst, batch_dst=batch_dst
        )
        return cls._geometric(edge_index, displacement, pos, pos_dst)

    @classmethod
    def _geometric(
        cls, edge_index: Tensor, displacement: Tensor, pos: Tensor, pos_dst: Tensor | None
    ) -> Pattern:
        num_src = pos.size(0)
        num_dst = num_src if pos_dst is None else pos_dst.size(0)
        pattern = cls._from_sorted_or_unsorted(edge_index[0], edge_index[1], num_src, num_dst)
        pattern.displacement = displacement
        return pattern

    @classmethod
    def bigbird(
        cls,
        batch: Tensor | None = None,
        window: int = 3,
        num_random: int = 2,
        num_global: int = 1,
        generator: torch.Generator | None = None,
        num_nodes: int | None = None,
        *,
        device: torch.device | str | None = None,
    ) -> Pattern:
        r"""BigBird attention (Zaheer et al., `"Big Bird: Transformers for Longer Sequences"
        <https://arxiv.org/abs/2007.14062>`_) within each graph of a batch, in node order.

        Node :math:`i` (position :math:`p` in its graph of :math:`n` nodes) receives from the
        positions :math:`p - \lfloor (w - 1)/2 \rfloor, \dots, p + \lfloor w/2 \rfloor` that
        exist (window), from ``num_random`` positions drawn uniformly with replacement, and
        from positions :math:`0, \dots, g - 1` (global); the global positions receive from all
        :math:`n` nodes. Repeated pairs are merged; edges are sorted by (receiver, sender).

        Args:
            batch: ``[N]`` sorted int64 graph ids (the pattern lives on its device), or ``None``
                for one graph of ``num_nodes`` nodes.
            window: window width :math:`w` (``0`` for none).
            num_random: random senders per node.
            num_global: global tokens :math:`g` per graph.
            generator: random generator for the random senders (draws happen on its device, so
                one generator state gives one pattern on every device).
            num_nodes: number of nodes when ``batch`` is ``None``.
            device: the device when ``batch`` is ``None`` (default: torch's default device).
        """
        window = _non_negative_int(window, "window")
        num_random = _non_negative_int(num_random, "num_random")
        num_global = _non_negative_int(num_global, "num_global")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator)}")
        batch = builders.batch_or_single_graph(batch, num_nodes, check_device(device),
                                               "Pattern.bigbird")  # fmt: skip
        edge_index = builders.bigbird_edges(batch, window, num_random, num_global, generator)
        n = batch.numel()
        ptr = builders.index_to_ptr(edge_index[1], n)
        pattern = cls(ptr, edge_index[0], n, n, row=edge_index[1])
        pattern._unique_edges = True
        return pattern

    @classmethod
    def expander(
        cls,
        num_nodes: int | None = None,
        degree: int = 3,
        batch: Tensor | None = None,
        generator: torch.Generator | None = None,
        num_virtual: int = 0,
        *,
        device: torch.device | str | None = None,
    ) -> Pattern:
        r"""Exphormer's expander and virtual-node attention (Shirzad et al., `"Exphormer:
        Sparse Transformers for Graphs" <https://arxiv.org/abs/2303.06147>`_) within each
        graph of a batch.

        Per graph, ``degree`` uniform random permutations :math:`\pi_t` of its nodes give the
        edges :math:`i \to \pi_t(i)` and :math:`\pi_t(i) \to i`, as the official code's
        ``Random-d`` algorithm does (its ``exp_deg`` is ``degree``): a
        :math:`2 \cdot \text{degree}`-regular multigraph whose self-loops and repeated pairs
        are kept (the official code computes a self-loop filter but keeps the unfiltered
        edges), so every real node of a graph of more than ``degree`` nodes has exactly
        ``2 * degree`` senders and receivers, counted with multiplicity; a repeated pair weighs
        twice in a softmax, as in the official multigraph. As in the official preprocessing,
        each graph's permutations are redrawn (up to 100 draws, the best kept) until the
        spectral gap :math:`\lambda_2(D - A)` reaches
        :math:`\max(0, 2d - 2\sqrt{2d - 1} - 0.1)`, checked for graphs of up to 20,000 nodes. A
        graph of at most ``degree`` nodes gets the complete graph instead (every ordered pair
        :math:`i \neq j` once; the official code does so for graphs of at most 10 nodes).

        With ``num_virtual > 0`` every graph gets that many virtual nodes after the real
        ones: real nodes keep their indices ``0 .. N - 1`` and virtual node ``v`` of graph
        ``g`` is ``N + g * num_virtual + v`` (graphs ``0 .. max(batch)``). A virtual node
        sends to and receives from every real node of its graph and the other virtual nodes
        of its graph (the official code has no virtual-virtual edges and orders the virtual
        nodes ``N + v * num_graphs + g``). The pattern then spans
        ``N + num_graphs * num_virtual`` nodes. Edges are sorted by (receiver, sender), which
        is also their caller order.

        Args:
            num_nodes: number of nodes when ``batch`` is ``None`` (one graph).
            degree: number of random permutations per graph (node degree ``2 * degree``).
            batch: ``[N]`` sorted int64 graph ids (the pattern lives on its device).
            generator: random generator for the permutations (draws happen on its device, so
                one generator state gives one pattern on every device).
            num_virtual: virtual nodes per graph.
            device: the device when ``batch`` is ``None`` (default: torch's default device).

        Raises:
            TypeError: ``degree``/``num_virtual`` not ints, ``generator`` not a
                :class:`torch.Generator`, ``batch`` not an int64 tensor.
            ValueError: negative sizes, unsorted ``batch``, or neither ``batch`` nor
                ``num_nodes``.
        """
        degree = _non_negative_int(degree, "degree")
        num_virtual = _non_negative_int(num_virtual, "num_virtual")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator)}")
        batch = builders.batch_or_single_graph(batch, num_nodes, check_device(device),
                                               "Pattern.expander")  # fmt: skip
        num_graphs = builders.graph_sizes(batch).numel()
        edges = torch.cat(
            [
                builders.expander_edges(batch, degree, generator),
                builders.virtual_node_edges(batch, num_virtual, num_graphs),
            ],
            dim=1,
        )
        n = batch.numel() + num_graphs * num_virtual
        return cls._from_sorted_or_unsorted(edges[0], edges[1], n, n, canonical=True)

    @classmethod
    def exphormer(
        cls,
        edge_index: Tensor | None,
        batch: Tensor | None = None,
        degree: int = 3,
        num_virtual: int = 1,
        generator: torch.Generator | None = None,
        num_nodes: int | None = None,
    ) -> tuple[Pattern, Tensor, Tensor]:
        r"""Exphormer's attention pattern: the union of the graph's edges, the expander of
        :meth:`expander` and its virtual-node edges, repeated pairs merged into one edge.

        Node layout as in :meth:`expander` (virtual nodes after the ``N`` real nodes). The
        official code concatenates the three edge sets without merging; here a pair present
        in several sets is one edge carrying the lowest type id.

        Args:
            edge_index: ``[2, E_g]`` the input graph's (sender, receiver) pairs, within the
                graphs of ``batch``, or ``None``.
            batch: ``[N]`` sorted int64 graph ids, or ``None`` for one graph of ``num_nodes``.
            degree: permutations per graph of the expander (node degree ``2 * degree``).
            num_virtual: virtual nodes per graph.
            generator: random generator of the expander.
            num_nodes: number of real nodes when ``batch`` is ``None`` (default: from
                ``edge_index``).

        Returns:
            ``(pattern, edge_type, graph_edge)``: the pattern over ``N + G * num_virtual``
            nodes with edges sorted by (receiver, sender) (also their caller order);
            ``edge_type [E]`` int64: ``0`` graph edge, ``1`` expander edge, ``2`` virtual-node
            edge, for edge-type embeddings; ``graph_edge [E]`` int64: the column of
            ``edge_index`` a graph edge comes from (to gather its ``edge_attr``), ``-1``
            otherwise.
        """
        degree = _non_negative_int(degree, "degree")
        num_virtual = _non_negative_int(num_virtual, "num_virtual")
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator, got {type(generator)}")
        if edge_index is not None:
            if not isinstance(edge_index, Tensor):
                raise TypeError(f"edge_index must be a tensor [2, E], got {type(edge_index)}")
            edge_index = builders.plain_tensor(edge_index)
            check_tensor(edge_index, "edge_index", integer=True, values=True)
            if edge_index.dim() != 2 or edge_index.size(0) != 2:
                raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")
            if batch is None and num_nodes is None:
                num_nodes = int(edge_index.max()) + 1 if edge_index.numel() else 0
        device = edge_index.device if edge_index is not None else None
        batch = builders.batch_or_single_graph(batch, num_nodes, device, "Pattern.exphormer")
        n = batch.numel()
        if edge_index is not None and edge_index.numel():
            builders.check_index_range(edge_index, n, "edge_index")
            if bool((batch[edge_index[0]] != batch[edge_index[1]]).any()):
                raise ValueError("edge_index has edges between different graphs of batch")
        num_graphs = builders.graph_sizes(batch).numel()
        edges, edge_type, graph_edge = builders.exphormer_edges(
            edge_index, batch, degree, num_virtual, generator, num_graphs
        )
        total = n + num_graphs * num_virtual
        ptr = builders.index_to_ptr(edges[1], total)
        pattern = cls(ptr, edges[0], total, total, row=edges[1])
        pattern._unique_edges = True
        return pattern, edge_type, graph_edge

    @classmethod
    def octree(
        cls,
        pos: Tensor,
        window_size: int,
        levels: int = 1,
        batch: Tensor | None = None,
        shift: bool | Sequence[bool] = False,
        cylindrical: bool = False,
        origin: Tensor | None = None,
        depth: int | None = None,
    ):
        r"""Octree-window attention over point clouds (OctFormer / HOTFormerLoc style).

        Every cloud is normalised into its bounding cube (Cartesian) or, with ``cylindrical``,
        into :math:`(r / r_{max}, (\theta + \pi) / 2\pi, (z - z_{min}) / \Delta z)` about the
        sensor ``origin``; the points are serialised by (cloud, z-order code), so every octree
        cell is a contiguous run, and the points of every cell of depth ``depth - l`` are cut
        into :math:`\lceil n / w \rceil` windows of nearly equal size, at most ``window_size``
        each, contiguous in the serialised order. The window pattern of each level is a block
        pattern over the serialised points (dense SDPA in the engine); each level also hands
        out the relay-token patterns (one relay per window).

        Args:
            pos: ``[N, 3]`` point positions (not differentiated through).
            window_size: the largest window :math:`w`.
            levels: number of levels; level ``l`` uses cells of depth ``depth - l``.
            batch: ``[N]`` sorted int64 cloud ids, or ``None`` for one cloud.
            shift: shift the cells by half a cell along every axis (Swin's shifted windows):
                one bool for every level or one per level.
            cylindrical: cells in :math:`(r, \theta, z)` instead of :math:`(x, y, z)`.
            origin: ``[3]`` or ``[num_clouds, 3]`` sensor position(s) of the cylindrical
                variant (default: the coordinate origin).
            depth: octree depth of level 0's cells (default: the deepest at which the
                occupied cells hold ``window_size / 2`` points on average). ``depth=0`` makes
                the whole cloud one cell: windows are then fixed-size patches of the z-order
                serialisation (Point Transformer V3's serialised patches).

        Returns:
            An :class:`~gtlib.attention.octree.Octree` whose ``levels`` are
            :class:`~gtlib.attention.octree.OctreeLevel` objects carrying ``perm``/``inverse``
            (serialisation), ``window``/``window_ptr``/``window_batch``, ``pattern`` (windows)
            and ``relay_gather()``, ``relay_global()``, ``relay_scatter()``, ``with_relays()``;
            ``window_groups()`` runs the windows (or windows with relays) through the engine
            one block size at a time with a single gather each way (the fast path when
            windows have many sizes).

        Raises:
            TypeError: ``pos`` not a floating tensor, non-int ``window_size``/``levels``/
                ``depth``, non-bool ``shift``/``cylindrical``, bad ``batch``/``origin`` types.
            ValueError: bad shapes, non-finite positions, sizes below 1, ``depth`` out of
                range, unsorted ``batch``, ``origin`` without ``cylindrical``.
        """
        from gtlib.attention.octree import octree

        return octree(pos, window_size, levels, batch, shift, cylindrical, origin, depth)

    @classmethod
    def cross(cls, batch_src: Tensor, batch_dst: Tensor) -> Pattern:
        """Cross-attention between two token sets: receiver ``i`` attends to every sender
        ``j`` of its graph (``batch_src[j] == batch_dst[i]``), e.g. CrossViT's CLS token of one
        branch (``batch_dst = arange(G)``) over the other branch's tokens, or attentional
        pooling of a batch of clouds. The ids need not be sorted. Edges are sorted by receiver,
        then sender index (also their caller order); ``num_src = len(batch_src)``,
        ``num_dst = len(batch_dst)``.

        Raises:
            TypeError: the ids are not int64 tensors.
            ValueError: not 1-D, negative ids, or on different devices.
        """
        from gtlib.attention.octree import cross_pattern

        return cross_pattern(batch_src, batch_dst)

    # ------------------------------------------------------------------ views
    @property
    def num_edges(self) -> int:
        return self._num_edges

    @property
    def edge_index(self) -> Tensor:
        """``[2, E]`` (sender, receiver) in the caller's edge order."""
        sorted_edges = torch.stack([self.col, self.row])
        if self.perm is None:
            return sorted_edges
        out = torch.empty_like(sorted_edges)
        out[:, self.perm] = sorted_edges
        return out

    @property
    def max_degree(self) -> int:
        if self._max_degree is None:
            degree = self.ptr[1:] - self.ptr[:-1]
            self._max_degree = int(degree.max()) if degree.numel() else 0
        return self._max_degree

    @property
    def unique_edges(self) -> bool:
        """Whether no (sender, receiver) pair occurs twice (computed once and cached)."""
        if self._unique_edges is None:
            row, col = self.row, self.col
            order = _pair_sort(row, col, self.num_dst, self.num_src)  # no int64 key overflow
            if order is not None:
                row, col = row[order], col[order]
            repeated = (row[1:] == row[:-1]) & (col[1:] == col[:-1])
            self._unique_edges = not bool(repeated.any())
        return self._unique_edges

    def degree(self) -> Tensor:
        """Number of senders of every receiver, ``[num_dst]``."""
        return self.ptr[1:] - self.ptr[:-1]

    def block_starts(self) -> list[int | None]:
        """For each entry of :attr:`blocks`, the first node when its blocks are one contiguous
        run of nodes in order (so gathering them is a slice), else ``None``. Cached."""
        if self.blocks is None:
            raise ValueError("block_starts needs a block pattern (full or windows)")
        if self._block_starts is None and self.device.type == "meta":
            return [None] * len(self.blocks)  # values unknown: gathered, never sliced
        if self._block_starts is None:
            starts: list[int | None] = []
            for block in self.blocks:
                flat = block.reshape(-1)
                first = int(flat[0]) if flat.numel() else 0
                run = torch.arange(first, first + flat.numel(), device=flat.device)
                starts.append(first if torch.equal(flat, run) else None)
            self._block_starts = starts
        return self._block_starts

    def block_edge_positions(self) -> list[Tensor]:
        """For a block pattern, the caller-order edge index of every (receiver, sender) pair of
        every block: one ``[num_blocks, size, size]`` tensor per entry of :attr:`blocks`, entry
        ``[b, i, j]`` being the edge from ``blocks[k][b, j]`` to ``blocks[k][b, i]``. Cached."""
        if self.blocks is None:
            raise ValueError("block_edge_positions needs a block pattern (full or windows)")
        if self._block_positions is None:
            keys = self.row * self.num_src + self.col  # increasing: sorted by (receiver, sender)
            positions = []
            for block in self.blocks:
                pairs = block[:, :, None] * self.num_src + block[:, None, :]
                sorted_pos = torch.searchsorted(keys, pairs)
                positions.append(sorted_pos if self.perm is None else self.perm[sorted_pos])
            self._block_positions = positions
        return self._block_positions

    def to_sorted(self, edge_values: Tensor) -> Tensor:
        """Reorders a per-edge tensor from the caller's order to receiver-sorted order."""
        self._check_edge_rows(edge_values, "edge_values")
        return edge_values if self.perm is None else edge_values.index_select(0, self.perm)

    def to_caller(self, sorted_values: Tensor) -> Tensor:
        """Reorders a per-edge tensor from receiver-sorted order to the caller's order."""
        self._check_edge_rows(sorted_values, "sorted_values")
        if self.perm is None:
            return sorted_values
        out = torch.empty_like(sorted_values)
        out[self.perm] = sorted_values
        return out

    def _check_edge_rows(self, values: Tensor, name: str) -> None:
        if not isinstance(values, Tensor):
            raise TypeError(f"{name} must be a tensor [E, ...], got {type(values).__name__}")
        if values.dim() == 0 or values.size(0) != self.num_edges:
            raise ValueError(
                f"{name} must have one row per edge ({self.num_edges}), got shape "
                f"{list(values.shape)}"
            )

    def transpose_csr(self) -> tuple[Tensor, Tensor, Tensor]:
        """The pattern compressed by sender: ``(ptr_t [num_src + 1], receivers [E], order [E])``,
        where ``order[t]`` is the receiver-sorted position of the ``t``-th sender-sorted edge.
        Computed once and cached."""
        if self._transpose is None:
            order = torch.argsort(self.col, stable=True)
            ptr_t = builders.index_to_ptr(self.col.index_select(0, order), self.num_src)
            self._transpose = (ptr_t, self.row.index_select(0, order), order)
        return self._transpose

    def deduplicated(self) -> tuple[Tensor, Tensor, Tensor]:
        """The distinct (sender, receiver) pairs: ``(ptr [num_dst + 1], senders [U], inverse [E])``
        with ``inverse[t]`` the pair of the ``t``-th receiver-sorted edge. Cached."""
        if self._deduplicated is None:
            row, col = self.row, self.col
            order = _pair_sort(row, col, self.num_dst, self.num_src)  # None: receiver-sorted
            if order is not None:
                row, col = row[order], col[order]
            is_new = torch.ones_like(row, dtype=torch.bool)
            is_new[1:] = (row[1:] != row[:-1]) | (col[1:] != col[:-1])
            pair = torch.cumsum(is_new, 0) - 1  # the pair of every edge in that order
            inverse = pair if order is None else torch.empty_like(pair).index_copy_(0, order, pair)
            ptr = builders.index_to_ptr(row[is_new], self.num_dst)
            self._deduplicated = (ptr, col[is_new], inverse)
        return self._deduplicated

    def sparse_matrix(self, values: Tensor, layout: str = "csr") -> Tensor:
        """A ``torch.sparse_csr`` matrix holding ``values``.

        ``layout`` is ``"csr"`` (``[num_dst, num_src]``, receiver-sorted edges), ``"transpose"``
        (``[num_src, num_dst]``, sender-sorted edges, see :meth:`transpose_csr`) or ``"unique"``
        (``[num_dst, num_src]``, the distinct pairs of :meth:`deduplicated`).
        """
        if layout not in self._csr_indices:
            if layout == "csr":
                ptr, index = self.ptr, self.col
            elif layout == "transpose":
                ptr, index = self.transpose_csr()[:2]
            elif layout == "unique":
                ptr, index = self.deduplicated()[:2]
            else:
                raise ValueError(f"layout must be 'csr', 'transpose' or 'unique', got {layout!r}")
            if max(self.num_src, self.num_dst, self.num_edges) < 2**31 - 1:
                ptr, index = ptr.int(), index.int()  # what MKL/cuSPARSE take without a copy
            self._csr_indices[layout] = (ptr, index)
        ptr, index = self._csr_indices[layout]
        transpose = layout == "transpose"
        size = (self.num_src, self.num_dst) if transpose else (self.num_dst, self.num_src)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
            return torch.sparse_csr_tensor(ptr, index, values, size, check_invariants=False)

    def to(self, device: torch.device | str) -> Pattern:
        """The pattern on ``device`` (``self`` when already there).

        Whatever exists moves: edge lists, blocks, ``perm``, :attr:`displacement` (differentiably).
        A block pattern whose edges were never expanded stays unexpanded.
        """
        device = check_device(device)
        if device is None:
            raise TypeError("device must be a torch.device or a string, got None")
        if device == self.device:
            return self
        state = self.__getstate__(detach=False)
        for name in ("_ptr", "_col", "_row", "perm", "displacement"):
            if state[name] is not None:
                state[name] = state[name].to(device)
        if state["blocks"] is not None:
            state["blocks"] = [block.to(device) for block in state["blocks"]]
        state["_device"] = device
        moved = Pattern.__new__(Pattern)
        moved.__setstate__(state)
        return moved

    @property
    def device(self) -> torch.device:
        return self._device

    def __getstate__(self, detach: bool = True) -> dict:
        state = {name: getattr(self, name) for name in _STATE}
        if detach and state["displacement"] is not None:
            state["displacement"] = state["displacement"].detach()  # the graph does not pickle
        if state["blocks"] is not None:
            state["blocks"] = list(state["blocks"])
        return state

    def __setstate__(self, state: dict) -> None:
        for name in _STATE:
            setattr(self, name, state.get(name))
        self._clear_derived()

    def __repr__(self) -> str:
        kind = "" if self.blocks is None else f", blocks={len(self.blocks)} sizes"
        geometry = "" if self.displacement is None else ", displacement"
        return (
            f"Pattern(num_src={self.num_src}, num_dst={self.num_dst}, "
            f"num_edges={self.num_edges}{kind}{geometry})"
        )


# ---------------------------------------------------------------------- helpers
# Kept for modules that import them from here (softmax.py); the code lives in builders.
_index_to_ptr = builders.index_to_ptr
_ptr_to_row = builders.ptr_to_row


def _pair_sort(first: Tensor, second: Tensor, size_first: int, size_second: int) -> Tensor | None:
    """The stable permutation sorting pairs by ``(first, second)``, or ``None`` when they are
    sorted. One sort of ``first * size_second + second`` when that key fits in int64, otherwise
    two stable sorts (so huge bipartite sizes cannot overflow the key)."""
    if first.numel() < 2:
        return None
    if size_first * max(size_second, 1) < 2**62:
        key = first * max(size_second, 1) + second
        if bool((key[1:] >= key[:-1]).all()):
            return None
        return torch.sort(key, stable=True).indices
    ordered = (first[1:] > first[:-1]) | ((first[1:] == first[:-1]) & (second[1:] >= second[:-1]))
    if bool(ordered.all()):
        return None
    perm = torch.sort(second, stable=True).indices
    return perm.index_select(0, torch.sort(first.index_select(0, perm), stable=True).indices)


# Inferring more nodes than this from the largest index is refused (pass num_nodes instead).
_MAX_INFERRED_NODES = 2**31


def _resolve_num_nodes(edge_index: Tensor, sizes: tuple[int, int] | None) -> tuple[int, int]:
    if sizes is not None:
        return sizes
    sparse_size = getattr(edge_index, "sparse_size", None)
    if callable(sparse_size):
        n_src, n_dst = sparse_size()
        if n_src is not None and n_dst is not None:
            return int(n_src), int(n_dst)
    data = builders.plain_tensor(edge_index)
    n = int(data.max()) + 1 if data.numel() else 0
    if n > _MAX_INFERRED_NODES:
        raise ValueError(
            f"edge_index holds node id {n - 1}: inferring num_nodes = {n} would allocate "
            f"{8 * n / 1e9:.3g} GB of offsets; pass num_nodes explicitly if the graph really has "
            "that many nodes"
        )
    return n, n


def _check_sparse_sizes(sizes: tuple[int, int] | None, num_src: int, num_dst: int) -> None:
    if sizes is not None and sizes != (num_src, num_dst):
        raise ValueError(
            f"num_nodes gives (num_src, num_dst) = {sizes} but the sparse matrix edge_index "
            f"has shape [num_dst, num_src] = [{num_dst}, {num_src}]"
        )


def _shares_storage(a: Tensor, b: Tensor) -> bool:
    if a.device.type == "meta" or a.numel() == 0:
        return False
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


def _cached_csc(
    edge_index: Tensor, num_src: int, num_dst: int
) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """Reuses a sorted PyG ``EdgeIndex``'s CSC (colptr, row, perm) when its sizes agree."""
    edge_index_cls = builders.edge_index_class()
    if edge_index_cls is None or not isinstance(edge_index, edge_index_cls):
        return None
    if edge_index.sort_order is None:
        return None
    if tuple(edge_index.sparse_size()) != (num_src, num_dst):
        return None
    (colptr, senders), perm = edge_index.get_csc()
    return colptr.as_subclass(Tensor).long(), senders.as_subclass(Tensor).long(), perm


def _non_negative_int(value, name: str) -> int:
    return check_int(value, name, minimum=0)


def _size(value, name: str) -> int:
    """A node count: a non-negative int (a symbolic size under ``torch.compile`` passes)."""
    return int(check_int(value, name, minimum=0))
