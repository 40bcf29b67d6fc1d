"""Sparsity patterns: who attends to whom, stored CSR by receiver."""

from __future__ import annotations

import math
import sys
import warnings
import weakref
from collections.abc import Callable, Sequence
from itertools import product

import torch
from torch import Tensor

NumNodes = int | tuple[int, int] | None
# id(edge_index) -> (weak reference, version counter, num_nodes, pattern); see Pattern.cached
_PATTERN_CACHE: dict = {}


class Pattern:
    r"""A sparsity pattern for attention and message passing.

    Edge :math:`(j, i)` means receiver :math:`i` attends to (receives from) sender :math:`j`.
    The pattern stores the edges compressed by receiver (CSR): receiver :math:`i`'s senders are
    ``col[ptr[i]:ptr[i + 1]]``. ``perm`` maps the sorted edges back to the caller's edge order:
    sorted edge ``t`` is the caller's edge ``perm[t]``. Per-edge tensors (edge features, biases,
    returned attention weights) are always in the caller's order, i.e. the order of
    :attr:`edge_index`.

    Build patterns with :meth:`from_edge_index`, :meth:`full`, :meth:`windows`, :meth:`radius` or
    :meth:`knn`. Patterns made of dense all-to-all blocks (:meth:`full`, :meth:`windows`) also keep
    their blocks, which lets :func:`~gtlib.attention.sparse_attention` send them to
    :func:`torch.nn.functional.scaled_dot_product_attention`.

    Attributes:
        ptr: ``[num_dst + 1]`` int64 offsets of each receiver's senders.
        col: ``[E]`` int64 senders in receiver-sorted order.
        row: ``[E]`` int64 receivers in receiver-sorted order.
        perm: ``[E]`` int64 caller edge index of each sorted edge, or ``None`` when the caller's
            order already is the sorted order.
        num_src, num_dst: numbers of senders and receivers.
        blocks: ``None`` or a list of ``[num_blocks, block_size]`` node-index tensors; every block
            is all-to-all and every receiver lies in exactly one block.
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
        build: Callable[[], tuple[Tensor, Tensor, Tensor]] | None = None,
        num_edges: int | None = None,
    ) -> None:
        self._ptr, self._col, self._row = ptr, col, row
        # Block patterns make their (ptr, col, row) only when an edge-wise mode asks for them.
        self._build = build
        self._num_edges = int(num_edges) if num_edges is not None else col.numel()
        if col is not None:
            self._device = col.device
        else:
            self._device = blocks[0].device if blocks else torch.device("cpu")
        self.num_src = int(num_src)
        self.num_dst = int(num_dst)
        self.perm = perm
        self.blocks = blocks
        self._max_degree: int | None = None
        self._transpose: tuple[Tensor, Tensor, Tensor] | None = None
        self._csr_indices: dict[str, tuple[Tensor, Tensor]] = {}
        self._deduplicated: tuple[Tensor, Tensor, Tensor] | None = None
        self._unique_edges: bool | None = None
        self._block_positions: list[Tensor] | None = None
        self._block_starts: list[int | None] | None = None

    def _materialize(self) -> None:
        if self._build is not None:
            self._ptr, self._col, self._row = self._build()
            self._build = None
        if self._row is None:
            self._row = _ptr_to_row(self._ptr, self._col.numel())

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
    def from_edge_index(cls, edge_index: Tensor, num_nodes: NumNodes = None) -> Pattern:
        """Builds a pattern from a ``[2, E]`` (sender, receiver) tensor or a PyG ``EdgeIndex``.

        Args:
            edge_index: integer tensor ``[2, E]``; row 0 holds senders, row 1 receivers. A
                :class:`torch_geometric.EdgeIndex` sorted by column reuses its cached CSC.
            num_nodes: ``None`` (``max index + 1``, or the ``EdgeIndex`` sparse size), an ``int``
                for both sides, or ``(num_src, num_dst)`` for bipartite patterns.
        """
        if not isinstance(edge_index, Tensor):
            raise TypeError(
                f"edge_index must be a torch.Tensor of shape [2, E], got {type(edge_index)}"
            )
        if edge_index.dtype.is_floating_point or edge_index.dtype in (torch.bool, torch.complex64):
            raise TypeError(f"edge_index must have an integer dtype, got {edge_index.dtype}")
        if edge_index.dim() != 2 or edge_index.size(0) != 2:
            raise ValueError(f"edge_index must have shape [2, E], got {list(edge_index.shape)}")

        num_src, num_dst = _resolve_num_nodes(edge_index, num_nodes)
        edge_index_data = _plain_tensor(edge_index)
        src = edge_index_data[0].long()
        dst = edge_index_data[1].long()
        if src.numel() > 0:
            for name, index, size in (("senders", src, num_src), ("receivers", dst, num_dst)):
                lo, hi = int(index.min()), int(index.max())
                if lo < 0 or hi >= size:
                    raise ValueError(
                        f"edge_index {name} must lie in [0, {size}), found values in [{lo}, {hi}]"
                    )

        csc = _cached_csc(edge_index, num_src, num_dst)
        if csc is not None:
            ptr, col, perm = csc
            return cls(ptr, col, num_src, num_dst, perm=perm)
        return cls._from_sorted_or_unsorted(src, dst, num_src, num_dst)

    @classmethod
    def cached(cls, edge_index: Tensor, num_nodes: NumNodes = None) -> Pattern:
        """:meth:`from_edge_index`, remembered for as long as ``edge_index`` lives.

        Passing the same, unmodified tensor object again (same identity and version counter)
        returns the same :class:`Pattern` without re-sorting; an in-place change of
        ``edge_index`` or other ``num_nodes`` builds a new one. Layers call this in ``forward``.
        """
        sizes = tuple(num_nodes) if isinstance(num_nodes, list) else num_nodes
        key = id(edge_index)
        entry = _PATTERN_CACHE.get(key)
        if entry is not None:
            ref, version, cached_sizes, pattern = entry
            if ref() is edge_index and version == edge_index._version and cached_sizes == sizes:
                return pattern
        pattern = cls.from_edge_index(edge_index, num_nodes)

        def forget(dead_ref, key=key) -> None:
            if key in _PATTERN_CACHE and _PATTERN_CACHE[key][0] is dead_ref:
                del _PATTERN_CACHE[key]

        _PATTERN_CACHE[key] = (weakref.ref(edge_index, forget), edge_index._version, sizes, pattern)
        return pattern

    @classmethod
    def _from_sorted_or_unsorted(
        cls, src: Tensor, dst: Tensor, num_src: int, num_dst: int, canonical: bool = False
    ) -> Pattern:
        """Sorts edges by (receiver, sender). With ``canonical`` the sorted order becomes the
        caller's order (used by generated patterns whose edge order is ours to choose)."""
        key = dst * max(num_src, 1) + src
        if key.numel() > 1 and not bool((key[1:] >= key[:-1]).all()):
            key, perm = torch.sort(key, stable=True)
            src, dst = src[perm], dst[perm]
        else:
            perm = None
        ptr = _index_to_ptr(dst, num_dst)
        pattern = cls(ptr, src, num_src, num_dst, perm=None if canonical else perm, row=dst)
        pattern._unique_edges = key.numel() < 2 or bool((key[1:] != key[:-1]).all())
        return pattern

    @classmethod
    def full(cls, batch: Tensor | None = None, num_nodes: int | None = None) -> Pattern:
        """All-to-all attention within each graph of a batch (self-loops included), no padding.

        Args:
            batch: ``[N]`` int64 graph id of each node, sorted ascending (PyG convention). ``None``
                means one graph of ``num_nodes`` nodes.
            num_nodes: number of nodes when ``batch`` is ``None``.
        """
        if batch is None:
            if num_nodes is None or int(num_nodes) < 0:
                raise ValueError("Pattern.full needs batch or a non-negative num_nodes")
            sizes = torch.tensor([int(num_nodes)], dtype=torch.long)
        else:
            _check_batch(batch)
            sizes = torch.bincount(batch) if batch.numel() else batch.new_zeros(0)
            sizes = sizes[sizes > 0]
        device = sizes.device
        starts = torch.cumsum(sizes, 0) - sizes
        n = int(sizes.sum())
        num_edges = int((sizes * sizes).sum())

        def build() -> tuple[Tensor, Tensor, Tensor]:
            node_size = torch.repeat_interleave(sizes, sizes)
            node_start = torch.repeat_interleave(starts, sizes)
            ptr = torch.zeros(n + 1, dtype=torch.long, device=device)
            ptr[1:] = torch.cumsum(node_size, 0)
            nodes = torch.arange(n, device=device)
            row = torch.repeat_interleave(nodes, node_size, output_size=num_edges)
            offset_in_row = torch.arange(num_edges, device=device) - ptr[:-1][row]
            return ptr, node_start[row] + offset_in_row, row

        blocks = []
        for size in torch.unique(sizes).tolist():
            if size == 0:
                continue
            block_starts = starts[sizes == size]
            blocks.append(block_starts[:, None] + torch.arange(size, device=device))
        pattern = cls(None, None, n, n, blocks=blocks, build=build, num_edges=num_edges)
        pattern._unique_edges = True
        return pattern

    @classmethod
    def windows(
        cls,
        grid_shape: Sequence[int],
        window: int | Sequence[int],
        shift: int | Sequence[int] = 0,
        periodic: bool | Sequence[bool] = True,
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
        """
        grid_shape = [int(g) for g in grid_shape]
        dims = len(grid_shape)
        if dims == 0 or any(g < 1 for g in grid_shape):
            raise ValueError(f"grid_shape must be positive sizes, got {grid_shape}")
        window = _per_dim(window, dims, "window")
        shift = _per_dim(shift, dims, "shift")
        periodic = _per_dim(periodic, dims, "periodic", kind=bool)
        segments_per_dim = []
        for d in range(dims):
            size, w, s, wrap = grid_shape[d], window[d], shift[d], periodic[d]
            if w < 1 or w > size:
                raise ValueError(f"window[{d}]={w} must lie in [1, grid_shape[{d}]={size}]")
            if wrap and size % w != 0:
                raise ValueError(
                    f"periodic windows need grid_shape[{d}]={size} to be a multiple of "
                    f"window[{d}]={w}"
                )
            segments_per_dim.append(_window_segments(size, w, s, wrap))

        strides = [math.prod(grid_shape[d + 1 :]) for d in range(dims)]
        groups: dict[int, list[Tensor]] = {}
        for combo in product(*[sorted(seg.keys()) for seg in segments_per_dim]):
            flat = torch.zeros(1, 1, dtype=torch.long)
            for d, length in enumerate(combo):
                seg = segments_per_dim[d][length] * strides[d]  # [num_segments, length]
                flat = (flat[:, None, :, None] + seg[None, :, None, :]).flatten(0, 1).flatten(1)
            groups.setdefault(flat.size(1), []).append(flat)
        blocks = [torch.cat(groups[size]) for size in sorted(groups)]
        num_nodes = math.prod(grid_shape)

        def build() -> tuple[Tensor, Tensor, Tensor]:
            src, dst = _block_edges(blocks)
            edges = cls._from_sorted_or_unsorted(src, dst, num_nodes, num_nodes, canonical=True)
            return edges.ptr, edges.col, edges.row

        num_edges = sum(block.size(0) * block.size(1) ** 2 for block in blocks)
        pattern = cls(
            None, None, num_nodes, num_nodes, blocks=blocks, build=build, num_edges=num_edges
        )
        pattern._unique_edges = True
        return pattern

    @classmethod
    def radius(
        cls,
        pos: Tensor,
        r: float,
        box: Tensor | Sequence[float] | float | None = None,
        batch: Tensor | None = None,
        max_num_neighbors: int | None = None,
        loop: bool = False,
    ) -> tuple[Pattern, Tensor]:
        """Radius neighbourhoods by cell lists, with the periodic minimum image when ``box``.

        Returns ``(pattern, displacement)`` where ``displacement[e] = pos[sender] - pos[receiver]``
        (minimum image) in the order of ``pattern.edge_index``; within one receiver the senders
        are sorted by distance. ``max_num_neighbors`` keeps the nearest ones.
        """
        from gtlib.attention.neighbors import radius_edges

        edge_index, displacement = radius_edges(
            pos, r, box=box, batch=batch, max_num_neighbors=max_num_neighbors, loop=loop
        )
        n = pos.size(0)
        return cls._from_sorted_or_unsorted(edge_index[0], edge_index[1], n, n), displacement

    @classmethod
    def knn(
        cls,
        pos: Tensor,
        k: int,
        box: Tensor | Sequence[float] | float | None = None,
        batch: Tensor | None = None,
        loop: bool = False,
    ) -> tuple[Pattern, Tensor]:
        """The ``k`` nearest senders of every point by cell lists (minimum image with ``box``).

        Returns ``(pattern, displacement)`` as :meth:`radius` does.
        """
        from gtlib.attention.neighbors import knn_edges

        edge_index, displacement = knn_edges(pos, k, box=box, batch=batch, loop=loop)
        n = pos.size(0)
        return cls._from_sorted_or_unsorted(edge_index[0], edge_index[1], n, n), displacement

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
            key = self.row * max(self.num_src, 1) + self.col
            self._unique_edges = torch.unique(key).numel() == key.numel()
        return self._unique_edges

    def degree(self) -> Tensor:
        """Number of senders of every receiver, ``[num_dst]``."""
        return self.ptr[1:] - self.ptr[:-1]

    def block_starts(self) -> list[int | None]:
        """For each entry of :attr:`blocks`, the first node when its blocks are one contiguous
        run of nodes in order (so gathering them is a slice), else ``None``. Cached."""
        if self.blocks is None:
            raise ValueError("block_starts needs a block pattern (full or windows)")
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
        return edge_values if self.perm is None else edge_values.index_select(0, self.perm)

    def to_caller(self, sorted_values: Tensor) -> Tensor:
        """Reorders a per-edge tensor from receiver-sorted order to the caller's order."""
        if self.perm is None:
            return sorted_values
        out = torch.empty_like(sorted_values)
        out[self.perm] = sorted_values
        return out

    def transpose_csr(self) -> tuple[Tensor, Tensor, Tensor]:
        """The pattern compressed by sender: ``(ptr_t [num_src + 1], receivers [E], order [E])``,
        where ``order[t]`` is the receiver-sorted position of the ``t``-th sender-sorted edge.
        Computed once and cached."""
        if self._transpose is None:
            order = torch.argsort(self.col, stable=True)
            ptr_t = _index_to_ptr(self.col.index_select(0, order), self.num_src)
            self._transpose = (ptr_t, self.row.index_select(0, order), order)
        return self._transpose

    def deduplicated(self) -> tuple[Tensor, Tensor, Tensor]:
        """The distinct (sender, receiver) pairs: ``(ptr [num_dst + 1], senders [U], inverse [E])``
        with ``inverse[t]`` the pair of the ``t``-th receiver-sorted edge. Cached."""
        if self._deduplicated is None:
            key = self.row * max(self.num_src, 1) + self.col
            if key.numel() > 1 and not bool((key[1:] >= key[:-1]).all()):
                unique_key, inverse = torch.unique(key, return_inverse=True)
            else:
                is_new = torch.ones_like(key, dtype=torch.bool)
                is_new[1:] = key[1:] != key[:-1]
                inverse = torch.cumsum(is_new, 0) - 1
                unique_key = key[is_new]
            receivers = unique_key // max(self.num_src, 1)
            ptr = _index_to_ptr(receivers, self.num_dst)
            self._deduplicated = (ptr, unique_key - receivers * max(self.num_src, 1), inverse)
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
        if torch.device(device) == self.device:
            return self
        self._materialize()
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        blocks = None if self.blocks is None else [b.to(device) for b in self.blocks]
        return Pattern(
            move(self.ptr),
            move(self.col),
            self.num_src,
            self.num_dst,
            perm=move(self.perm),
            row=move(self.row),
            blocks=blocks,
        )

    @property
    def device(self) -> torch.device:
        return self._device

    def __repr__(self) -> str:
        kind = "" if self.blocks is None else f", blocks={len(self.blocks)} sizes"
        return (
            f"Pattern(num_src={self.num_src}, num_dst={self.num_dst}, "
            f"num_edges={self.num_edges}{kind})"
        )


# ---------------------------------------------------------------------- helpers
def _ptr_to_row(ptr: Tensor, num_edges: int) -> Tensor:
    degree = ptr[1:] - ptr[:-1]
    return torch.repeat_interleave(
        torch.arange(degree.numel(), device=ptr.device), degree, output_size=num_edges
    )


def _index_to_ptr(sorted_index: Tensor, size: int) -> Tensor:
    ptr = torch.zeros(size + 1, dtype=torch.long, device=sorted_index.device)
    if sorted_index.numel():
        ptr[1:] = torch.cumsum(torch.bincount(sorted_index, minlength=size), 0)
    return ptr


def _edge_index_class() -> type | None:
    """PyG's ``EdgeIndex`` if PyG is loaded (an ``EdgeIndex`` argument implies it is)."""
    module = sys.modules.get("torch_geometric")
    return getattr(module, "EdgeIndex", None)


def _plain_tensor(edge_index: Tensor) -> Tensor:
    edge_index_class = _edge_index_class()
    if edge_index_class is not None and isinstance(edge_index, edge_index_class):
        return edge_index.as_tensor()
    return edge_index


def _resolve_num_nodes(edge_index: Tensor, num_nodes: NumNodes) -> tuple[int, int]:
    if num_nodes is None:
        sparse_size = getattr(edge_index, "sparse_size", None)
        if callable(sparse_size):
            n_src, n_dst = sparse_size()
            if n_src is not None and n_dst is not None:
                return int(n_src), int(n_dst)
        data = _plain_tensor(edge_index)
        n = int(data.max()) + 1 if data.numel() else 0
        return n, n
    if isinstance(num_nodes, bool):
        raise TypeError("num_nodes must be None, an int or a pair (num_src, num_dst)")
    if isinstance(num_nodes, int):
        sizes = (num_nodes, num_nodes)
    elif isinstance(num_nodes, (tuple, list)) and len(num_nodes) == 2:
        sizes = tuple(num_nodes)
        if not all(isinstance(s, int) and not isinstance(s, bool) for s in sizes):
            raise TypeError(f"num_nodes must hold two ints, got {num_nodes}")
    else:
        raise TypeError(
            f"num_nodes must be None, an int or a pair (num_src, num_dst), got {num_nodes!r}"
        )
    if sizes[0] < 0 or sizes[1] < 0:
        raise ValueError(f"num_nodes must be non-negative, got {num_nodes}")
    return int(sizes[0]), int(sizes[1])


def _cached_csc(
    edge_index: Tensor, num_src: int, num_dst: int
) -> tuple[Tensor, Tensor, Tensor | None] | None:
    """Reuses a sorted PyG ``EdgeIndex``'s CSC (colptr, row, perm) when its sizes agree."""
    edge_index_class = _edge_index_class()
    if edge_index_class is None or not isinstance(edge_index, edge_index_class):
        return None
    if edge_index.sort_order is None:
        return None
    if tuple(edge_index.sparse_size()) != (num_src, num_dst):
        return None
    (colptr, senders), perm = edge_index.get_csc()
    return colptr.as_subclass(Tensor).long(), senders.as_subclass(Tensor).long(), perm


def _check_batch(batch: Tensor) -> None:
    if not isinstance(batch, Tensor) or batch.dtype != torch.long:
        raise TypeError("batch must be an int64 tensor of graph ids")
    if batch.dim() != 1:
        raise ValueError(f"batch must be 1-D [N], got shape {list(batch.shape)}")
    if batch.numel() and (int(batch.min()) < 0 or bool((batch[1:] < batch[:-1]).any())):
        raise ValueError("batch must hold non-negative graph ids sorted ascending")


def _per_dim(value, dims: int, name: str, kind=int) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != dims:
            raise ValueError(f"{name} must have {dims} entries, got {len(value)}")
        values = list(value)
    else:
        values = [value] * dims
    try:
        return [kind(v) for v in values]
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be {kind.__name__} values, got {value!r}") from err


def _window_segments(size: int, window: int, shift: int, periodic: bool) -> dict[int, Tensor]:
    """Index segments of one grid dimension, grouped by length: ``{length: [count, length]}``."""
    shift %= window
    if periodic:
        starts = torch.arange(size // window) * window + shift
        seg = (starts[:, None] + torch.arange(window)) % size
        return {window: seg}
    bounds = sorted({0, size, *range(shift, size, window)})
    groups: dict[int, list[Tensor]] = {}
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        groups.setdefault(hi - lo, []).append(torch.arange(lo, hi))
    return {length: torch.stack(parts) for length, parts in groups.items()}


def _block_edges(blocks: list[Tensor]) -> tuple[Tensor, Tensor]:
    srcs, dsts = [], []
    for block in blocks:
        nb, size = block.shape
        srcs.append(block[:, None, :].expand(nb, size, size).reshape(-1))
        dsts.append(block[:, :, None].expand(nb, size, size).reshape(-1))
    return torch.cat(srcs), torch.cat(dsts)
