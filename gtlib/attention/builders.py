"""Index arithmetic behind the :class:`~gtlib.attention.Pattern` constructors.

These helpers return plain index tensors (no :class:`~gtlib.attention.Pattern`), on the device of
their inputs; the constructors in :mod:`gtlib.attention.pattern` validate arguments and assemble
patterns from them. The neighbour search of :meth:`Pattern.radius` and :meth:`Pattern.knn` lives in
:mod:`gtlib.attention.neighbors`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from itertools import product

import torch
from torch import Tensor

from gtlib.validation import check_bool, check_int

NumNodes = int | tuple[int, int] | None


# ---------------------------------------------------------------------- sizes and batches
def as_size(value, name: str) -> int:
    """A non-negative Python int from an integer (``bool`` and floats are refused)."""
    size = check_int(value, name)
    if size < 0:
        raise ValueError(f"{name} must be non-negative, got {size}")
    return size


def normalize_num_nodes(num_nodes) -> tuple[int, int] | None:
    """``num_nodes`` as ``(num_src, num_dst)`` (or ``None``), validated.

    Raises:
        TypeError: not ``None``, an int or a pair of ints (e.g. ``2.7``, ``"3"``, ``True``).
        ValueError: a negative size.
    """
    if num_nodes is None:
        return None
    if isinstance(num_nodes, (tuple, list)):
        if len(num_nodes) != 2:
            raise TypeError(
                f"num_nodes must be None, an int or a pair (num_src, num_dst), got {num_nodes!r}"
            )
        num_src = as_size(num_nodes[0], "num_nodes")
        return num_src, as_size(num_nodes[1], "num_nodes")
    if isinstance(num_nodes, str):
        raise TypeError(
            f"num_nodes must be None, an int or a pair (num_src, num_dst), got {num_nodes!r}"
        )
    size = as_size(num_nodes, "num_nodes")
    return size, size


def check_batch(batch: Tensor) -> None:
    """``batch`` is a 1-D int64 tensor of non-negative graph ids sorted ascending."""
    if not isinstance(batch, Tensor) or batch.dtype != torch.long:
        raise TypeError("batch must be an int64 tensor of graph ids")
    if batch.dim() != 1:
        raise ValueError(f"batch must be 1-D [N], got shape {list(batch.shape)}")
    if batch.numel() and (int(batch.min()) < 0 or bool((batch[1:] < batch[:-1]).any())):
        raise ValueError("batch must hold non-negative graph ids sorted ascending")


def batch_or_single_graph(
    batch: Tensor | None, num_nodes, device: torch.device | str | None, caller: str
) -> Tensor:
    """``batch`` checked, or one graph of ``num_nodes`` nodes on ``device`` when ``None``."""
    if batch is None:
        if num_nodes is None:
            raise ValueError(f"{caller} needs batch or a non-negative num_nodes")
        size = as_size(num_nodes, "num_nodes")
        return torch.zeros(size, dtype=torch.long, device=device)
    if isinstance(batch, Tensor) and batch.dtype in (torch.int32, torch.int16, torch.int8,
                                                     torch.uint8):  # fmt: skip
        batch = batch.long()  # narrower integer ids are read as int64
    check_batch(batch)
    if num_nodes is not None and as_size(num_nodes, "num_nodes") != batch.numel():
        raise ValueError(
            f"num_nodes ({num_nodes}) must equal the length of batch ({batch.numel()})"
        )
    return batch


# ---------------------------------------------------------------------- CSR arithmetic
def ptr_to_row(ptr: Tensor, num_edges: int) -> Tensor:
    """The receiver of every edge from the CSR offsets."""
    degree = ptr[1:] - ptr[:-1]
    return torch.repeat_interleave(
        torch.arange(degree.numel(), device=ptr.device), degree, output_size=num_edges
    )


def index_to_ptr(sorted_index: Tensor, size: int) -> Tensor:
    """CSR offsets ``[size + 1]`` of a sorted index."""
    try:
        ptr = torch.zeros(size + 1, dtype=torch.long, device=sorted_index.device)
    except RuntimeError as err:  # includes torch.OutOfMemoryError
        raise ValueError(
            f"cannot allocate the {size + 1} receiver offsets of a pattern with {size} receivers "
            f"({8 * (size + 1) / 1e9:.3g} GB): check num_nodes (or num_segments)"
        ) from err
    if sorted_index.numel():
        ptr[1:] = torch.cumsum(torch.bincount(sorted_index, minlength=size), 0)
    return ptr


# ---------------------------------------------------------------------- edge inputs
def edge_index_class() -> type | None:
    """PyG's ``EdgeIndex`` if PyG is loaded (an ``EdgeIndex`` argument implies it is)."""
    module = sys.modules.get("torch_geometric")
    return getattr(module, "EdgeIndex", None)


def sparse_tensor_class() -> type | None:
    """``torch_sparse.SparseTensor`` if torch_sparse is loaded (a ``SparseTensor`` argument
    implies it is), without importing it."""
    module = sys.modules.get("torch_sparse")
    return getattr(module, "SparseTensor", None)


def plain_tensor(edge_index: Tensor) -> Tensor:
    edge_index_cls = edge_index_class()
    if edge_index_cls is not None and isinstance(edge_index, edge_index_cls):
        return edge_index.as_tensor()
    return edge_index


def sparse_tensor_parts(adj_t) -> tuple[Tensor, Tensor, int, int] | None:
    """``(ptr, col, num_src, num_dst)`` of a ``torch_sparse.SparseTensor`` adjacency, or
    ``None`` when ``adj_t`` is not one (torch_sparse is never imported here).

    ``adj_t`` follows PyG's convention: ``adj_t[i, j]`` nonzero means receiver ``i`` receives
    from sender ``j``, shape ``[num_dst, num_src]``, so its CSR is the pattern's CSR.
    """
    sparse_cls = sparse_tensor_class()
    if sparse_cls is None or not isinstance(adj_t, sparse_cls):
        return None
    num_dst, num_src = (int(s) for s in adj_t.sparse_sizes())
    return adj_t.storage.rowptr().long(), adj_t.storage.col().long(), num_src, num_dst


def torch_sparse_edges(adj_t: Tensor) -> tuple[str, Tensor, Tensor, int, int]:
    """A torch sparse adjacency ``[num_dst, num_src]`` as ``(kind, a, b, num_src, num_dst)``.

    ``kind`` is ``"csr"`` with ``(a, b) = (ptr, senders)`` or ``"edges"`` with
    ``(a, b) = (senders, receivers)`` in the matrix's entry order.
    """
    layout = adj_t.layout
    if layout not in (torch.sparse_coo, torch.sparse_csr, torch.sparse_csc):
        raise TypeError(
            f"edge_index as a sparse tensor must have layout sparse_coo, sparse_csr or "
            f"sparse_csc, got {layout}"
        )
    # Dense value dimensions (a hybrid tensor) are fine: only the sparsity counts.
    if adj_t.sparse_dim() != 2 or adj_t.dim() - adj_t.dense_dim() != 2:
        raise ValueError(
            f"edge_index as a sparse matrix must be 2-D [num_dst, num_src] (no batch "
            f"dimensions), got shape {list(adj_t.shape)}"
        )
    num_dst, num_src = (int(s) for s in adj_t.shape[:2])
    if layout == torch.sparse_coo:
        indices = adj_t._indices()
        return "edges", indices[1].long(), indices[0].long(), num_src, num_dst
    if layout == torch.sparse_csr:
        return "csr", adj_t.crow_indices().long(), adj_t.col_indices().long(), num_src, num_dst
    ccol, receivers = adj_t.ccol_indices().long(), adj_t.row_indices().long()
    check_ptr(ccol, num_src, receivers.numel(), "edge_index (sparse CSC)")
    return "edges", ptr_to_row(ccol, receivers.numel()), receivers, num_src, num_dst


def check_ptr(ptr: Tensor, size: int, num_edges: int, name: str) -> None:
    """``ptr`` is ``[size + 1]`` offsets from ``0`` to ``num_edges``, non-decreasing."""
    if ptr.dim() != 1 or ptr.numel() != size + 1:
        raise ValueError(f"{name} must have {size + 1} row offsets, got {list(ptr.shape)}")
    if int(ptr[0]) != 0 or int(ptr[-1]) != num_edges or bool((ptr[1:] < ptr[:-1]).any()):
        raise ValueError(f"{name} has invalid row offsets (not 0 .. {num_edges} non-decreasing)")


def check_index_range(index: Tensor, size: int, name: str) -> None:
    if index.numel() == 0:
        return
    lo, hi = int(index.min()), int(index.max())
    if lo < 0 or hi >= size:
        raise ValueError(f"{name} must lie in [0, {size}), found values in [{lo}, {hi}]")


# ---------------------------------------------------------------------- blocks
def block_num_edges(blocks: Sequence[Tensor]) -> int:
    """Edges of all-to-all blocks, from their shapes alone (works on the ``meta`` device)."""
    return sum(int(block.shape[0]) * int(block.shape[1]) ** 2 for block in blocks)


def expand_blocks(
    blocks: Sequence[Tensor], num_nodes: int, num_edges: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """``(ptr, col, row)`` of all-to-all blocks, sorted by (receiver, sender), without a sort
    of the edges: every receiver lies in one block, whose sorted members are its senders."""
    degree = torch.zeros(num_nodes, dtype=torch.long, device=device)
    for block in blocks:
        degree[block.reshape(-1)] = block.shape[1]
    ptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=device)
    ptr[1:] = torch.cumsum(degree, 0)
    col = torch.empty(num_edges, dtype=torch.long, device=device)
    row = torch.empty(num_edges, dtype=torch.long, device=device)
    for block in blocks:
        count, size = block.shape
        members = torch.sort(block, dim=1).values
        positions = ptr[:-1][block].unsqueeze(2) + torch.arange(size, device=device)
        positions = positions.reshape(-1)
        col[positions] = members.unsqueeze(1).expand(count, size, size).reshape(-1)
        row[positions] = block.unsqueeze(2).expand(count, size, size).reshape(-1)
    return ptr, col, row


def full_blocks(batch: Tensor) -> list[Tensor]:
    """The graphs of a sorted ``batch`` as blocks of consecutive nodes, grouped by size."""
    device = batch.device
    sizes = torch.bincount(batch) if batch.numel() else batch.new_zeros(0)
    sizes = sizes[sizes > 0]
    starts = torch.cumsum(sizes, 0) - sizes
    blocks = []
    for size in torch.unique(sizes).tolist():
        blocks.append(starts[sizes == size][:, None] + torch.arange(size, device=device))
    return blocks


def per_dim(value, dims: int, name: str, kind=int) -> list:
    """``value`` (one for all ``dims`` dimensions, or a sequence of ``dims``) as a list of ints
    (``kind=int``, integers only) or bools (``kind=bool``, bools only)."""
    if isinstance(value, (list, tuple)):
        if len(value) != dims:
            raise ValueError(f"{name} must have {dims} entries, got {len(value)}")
        values = list(value)
    else:
        values = [value] * dims
    check = check_bool if kind is bool else check_int
    return [check(v, name) for v in values]


def window_segments(
    size: int, window: int, shift: int, periodic: bool, device: torch.device | None
) -> dict[int, Tensor]:
    """Index segments of one grid dimension, grouped by length: ``{length: [count, length]}``."""
    shift %= window
    if periodic:
        starts = torch.arange(size // window, device=device) * window + shift
        seg = (starts[:, None] + torch.arange(window, device=device)) % size
        return {window: seg}
    bounds = sorted({0, size, *range(shift, size, window)})
    groups: dict[int, list[Tensor]] = {}
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        groups.setdefault(hi - lo, []).append(torch.arange(lo, hi, device=device))
    return {length: torch.stack(parts) for length, parts in groups.items()}


def window_blocks(
    grid_shape: list[int],
    window: list[int],
    shift: list[int],
    periodic: list[bool],
    device: torch.device | None,
) -> list[Tensor]:
    """The windows of a grid (nodes in C order) as blocks grouped by size."""
    dims = len(grid_shape)
    segments_per_dim = [
        window_segments(size, w, s, wrap, device)
        for size, w, s, wrap in zip(grid_shape, window, shift, periodic)
    ]
    strides = [math.prod(grid_shape[d + 1 :]) for d in range(dims)]
    groups: dict[int, list[Tensor]] = {}
    for combo in product(*[sorted(seg.keys()) for seg in segments_per_dim]):
        flat = torch.zeros(1, 1, dtype=torch.long, device=device)
        for d, length in enumerate(combo):
            seg = segments_per_dim[d][length] * strides[d]  # [num_segments, length]
            flat = (flat[:, None, :, None] + seg[None, :, None, :]).flatten(0, 1).flatten(1)
        groups.setdefault(flat.size(1), []).append(flat)
    return [torch.cat(groups[size]) for size in sorted(groups)]


# ---------------------------------------------------------------------- BigBird
def bigbird_edges(
    batch: Tensor,
    window: int,
    num_random: int,
    num_global: int,
    generator: torch.Generator | None,
) -> Tensor:
    """The distinct BigBird ``(sender, receiver)`` pairs of a sorted ``batch``, ``[2, E]``,
    sorted by (receiver, sender), on the device of ``batch``.

    The random senders are drawn on the generator's device (``batch``'s without one) in
    float64, so a CPU generator gives the same pattern on every device.
    """
    device = batch.device
    num_nodes = batch.numel()
    sizes = torch.bincount(batch) if num_nodes else torch.zeros(0, dtype=torch.long, device=device)
    starts = torch.cumsum(sizes, 0) - sizes
    node_start, node_size = starts[batch], sizes[batch]
    nodes = torch.arange(num_nodes, device=device)
    position = nodes - node_start
    senders, receivers = [], []
    largest = int(sizes.max()) if sizes.numel() else 0
    # offsets and global tokens beyond the largest graph add nothing (and would loop long)
    low, high = max(-((window - 1) // 2), -largest), min(window // 2, largest)
    num_global = min(num_global, largest)
    for offset in range(low, high + 1) if window else ():
        target = position + offset
        keep = (target >= 0) & (target < node_size)
        senders.append(node_start[keep] + target[keep])
        receivers.append(nodes[keep])
    for token in range(num_global):
        keep = token < node_size
        # every node receives from the token and the token receives from every node
        senders += [node_start[keep] + token, nodes[keep]]
        receivers += [nodes[keep], node_start[keep] + token]
    if num_random and num_nodes:
        if num_nodes * num_random > 2**40:
            raise ValueError(
                f"num_random={num_random} draws for each of {num_nodes} nodes is more than a "
                "pattern can hold"
            )
        draw_device = generator.device if generator is not None else device
        draws = torch.rand(
            num_nodes, num_random, generator=generator, dtype=torch.float64, device=draw_device
        ).to(device)
        picks = (draws * node_size[:, None]).long().clamp_max_(node_size[:, None] - 1)
        senders.append((node_start[:, None] + picks).reshape(-1))
        receivers.append(nodes.repeat_interleave(num_random))
    if not senders:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    scale = max(num_nodes, 1)
    key = torch.unique(torch.cat(receivers) * scale + torch.cat(senders))
    return torch.stack([key % scale, key // scale])


# ---------------------------------------------------------------------- Exphormer
# Edge type ids of :func:`exphormer_edges` (and ``Pattern.exphormer``).
GRAPH_EDGE, EXPANDER_EDGE, VIRTUAL_EDGE = 0, 1, 2


def graph_sizes(batch: Tensor) -> Tensor:
    """``[G]`` number of nodes of every graph id ``0 .. max(batch)`` of a sorted ``batch``."""
    if batch.numel() == 0:
        return torch.zeros(0, dtype=torch.long, device=batch.device)
    return torch.bincount(batch)


# Exphormer's expander: retries per graph until the spectral gap reaches the bound (as the
# official preprocessing, which draws up to 100 times and keeps the best draw), checked densely
# up to EXPANDER_DENSE_NODES nodes, with ARPACK up to EXPANDER_CHECKED_NODES; larger random
# regular graphs meet the bound with overwhelming probability (Friedman's theorem).
EXPANDER_MAX_TRIES = 100
EXPANDER_DENSE_NODES = 256
EXPANDER_CHECKED_NODES = 20_000


def expander_gap_bound(degree: int) -> float:
    r"""The official Exphormer code's lower bound on the spectral gap of a random
    ``2 * degree``-regular expander: :math:`\max(0, 2d - 2\sqrt{2d - 1} - 0.1)`, i.e. the
    Ramanujan bound of the Laplacian's second eigenvalue less 0.1."""
    return max(0.0, 2 * degree - 2 * math.sqrt(2 * degree - 1) - 0.1)


def expander_edges(
    batch: Tensor,
    degree: int,
    generator: torch.Generator | None,
    max_tries: int = EXPANDER_MAX_TRIES,
) -> Tensor:
    r"""Exphormer's random expander of every graph of a sorted ``batch``, ``[2, E]``.

    Per graph of :math:`n > d` nodes (:math:`d` = ``degree``), :math:`d` uniform random
    permutations :math:`\pi_t` give the edges :math:`i \to \pi_t(i)` and
    :math:`\pi_t(i) \to i` (the "Random-d" algorithm of the official code): a
    :math:`2d`-regular multigraph, self-loops and repeated pairs kept, so every node sends and
    receives exactly ``2 * degree`` edges. As in the official preprocessing the permutations
    are redrawn, up to ``max_tries`` draws per graph, until the spectral gap
    :math:`\lambda_2(L)` of the multigraph's Laplacian :math:`L = D - A` reaches
    :func:`expander_gap_bound`; a graph that never does keeps its draw with the largest gap.
    The gap is checked for graphs of up to :data:`EXPANDER_CHECKED_NODES` nodes.

    A graph of :math:`1 \le n \le d` nodes (too few for :math:`d` permutations to give
    :math:`2d` distinct neighbours) gets the complete graph instead: every ordered pair
    :math:`i \ne j` once (no edges for one node).

    Draws: a permutation of every graph at once sorts the nodes by ``(graph, u)`` with ``u``
    uniform in ``[0, 1)``, drawn in float64 on the generator's device (``batch``'s without
    one); redraws draw for the failing graphs' nodes only, so one generator state gives one
    pattern on every device. Edges are listed per permutation ``t``: the forward edges
    :math:`s \to \pi_t(s)` of all nodes, then their reverses; the complete graphs last.
    """
    device = batch.device
    num_nodes = batch.numel()
    if num_nodes == 0 or degree == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    sizes = graph_sizes(batch)
    tiny = sizes <= degree
    random_nodes = (~tiny)[batch].nonzero().view(-1)
    images = _random_permutations(batch, random_nodes, degree, generator)
    checked = (~tiny) & (sizes >= 2) & (sizes <= EXPANDER_CHECKED_NODES)
    if bool(checked.any()):
        images = _retry_until_gap(batch, sizes, images, checked, degree, generator, max_tries)
    senders, receivers = [], []
    for t in range(degree if random_nodes.numel() else 0):
        senders += [random_nodes, images[t]]
        receivers += [images[t], random_nodes]
    empty = batch.new_zeros(0)
    edges = torch.stack([torch.cat([empty, *senders]), torch.cat([empty, *receivers])])
    if bool(tiny.any()):
        edges = torch.cat([edges, _complete_graph_edges(sizes, tiny, device)], dim=1)
    return edges


def _random_permutations(
    batch: Tensor, nodes: Tensor, degree: int, generator: torch.Generator | None
) -> Tensor:
    """``[degree, len(nodes)]``: ``degree`` random permutations of ``nodes`` (sorted global
    node ids, whole graphs of the sorted ``batch``) within their graphs, as global ids."""
    device = batch.device
    if nodes.numel() == 0:
        return nodes.new_zeros(degree, 0)
    draw_device = generator.device if generator is not None else device
    draws = torch.rand(
        degree, nodes.numel(), generator=generator, dtype=torch.float64, device=draw_device
    ).to(device)
    keys = batch.index_select(0, nodes).to(torch.float64)
    # nodes are sorted by graph, so the k-th node in (graph, u) order lies in node k's graph
    return torch.stack([nodes.index_select(0, torch.argsort(keys + draws[t])) for t in
                        range(degree)])  # fmt: skip


def _retry_until_gap(
    batch: Tensor,
    sizes: Tensor,
    images: Tensor,
    checked: Tensor,
    degree: int,
    generator: torch.Generator | None,
    max_tries: int,
) -> Tensor:
    """Redraws the permutations of the ``checked`` graphs whose spectral gap is below the
    bound, keeping each graph's best draw. ``images`` holds the non-tiny nodes in order."""
    bound = expander_gap_bound(degree)
    starts = torch.cumsum(sizes, 0) - sizes
    random_graphs = (sizes > degree).nonzero().view(-1)
    # position of each non-tiny graph's first node inside ``images``
    offsets = torch.cumsum(sizes[random_graphs], 0) - sizes[random_graphs]
    column = torch.full_like(sizes, -1)
    column[random_graphs] = offsets
    best_gap = torch.full(sizes.shape, float("inf"), dtype=torch.float64)
    pending = checked.nonzero().view(-1)
    best_gap[pending] = _spectral_gaps(images, column, starts, sizes, pending, degree)
    for _ in range(max_tries - 1):
        pending = pending[best_gap[pending] < bound - 1e-9]  # float64 eigenvalue rounding
        if pending.numel() == 0:
            break
        nodes = _graph_nodes(starts, sizes, pending, batch.device)
        fresh = images.clone()
        cols = _graph_nodes(column, sizes, pending, batch.device)
        fresh[:, cols] = _random_permutations(batch, nodes, degree, generator)
        gaps = _spectral_gaps(fresh, column, starts, sizes, pending, degree)
        better = gaps > best_gap[pending]
        if bool(better.any()):
            improved = pending[better]
            best_gap[improved] = gaps[better]
            cols = _graph_nodes(column, sizes, improved, batch.device)
            images[:, cols] = fresh[:, cols]
    return images


def _graph_nodes(starts: Tensor, sizes: Tensor, graphs: Tensor, device) -> Tensor:
    """The indices ``starts[g] .. starts[g] + sizes[g] - 1`` of every graph ``g`` in order."""
    counts = sizes[graphs]
    first = torch.repeat_interleave(starts[graphs], counts)
    local = torch.arange(int(counts.sum()), device=device)
    local = local - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    return (first + local).to(device)


def _spectral_gaps(
    images: Tensor, column: Tensor, starts: Tensor, sizes: Tensor, graphs: Tensor, degree: int
) -> Tensor:
    r"""``[len(graphs)]`` float64 (CPU): :math:`\lambda_2(D - A)` of each graph's
    ``2 * degree``-regular multigraph given by ``images`` (dense ``eigvalsh`` up to
    :data:`EXPANDER_DENSE_NODES` nodes, ARPACK beyond)."""
    images, column = images.cpu(), column.cpu()
    starts, sizes, graphs = starts.cpu(), sizes.cpu(), graphs.cpu()
    gaps = torch.zeros(graphs.numel(), dtype=torch.float64)
    for size in torch.unique(sizes[graphs]).tolist():
        where = (sizes[graphs] == size).nonzero().view(-1)
        group = graphs[where]
        # local (sender, receiver) of the forward edges, [G, degree * size]
        cols = column[group, None] + torch.arange(size)
        local_dst = (images[:, cols] - starts[group].view(1, -1, 1)).permute(1, 0, 2)
        local_dst = local_dst.reshape(group.numel(), -1)
        local_src = torch.arange(size).repeat(degree).expand_as(local_dst)
        if size <= EXPANDER_DENSE_NODES:
            per_chunk = max(1, (1 << 22) // (size * size))
            for lo in range(0, group.numel(), per_chunk):
                src, dst = local_src[lo : lo + per_chunk], local_dst[lo : lo + per_chunk]
                adjacency = torch.zeros(src.size(0), size, size, dtype=torch.float64)
                flat = adjacency.view(src.size(0), -1)
                ones = torch.ones(src.shape, dtype=torch.float64)
                flat.scatter_add_(1, dst * size + src, ones)
                flat.scatter_add_(1, src * size + dst, ones)
                laplacian = torch.diag_embed(adjacency.sum(-1)) - adjacency
                gaps[where[lo : lo + per_chunk]] = torch.linalg.eigvalsh(laplacian)[:, 1]
        else:
            for k in range(group.numel()):
                gaps[where[k]] = _sparse_gap(local_src[k], local_dst[k], size, degree)
    return gaps


def _sparse_gap(src: Tensor, dst: Tensor, size: int, degree: int) -> float:
    r""":math:`\lambda_2(L) = 2d - \lambda_2(A)` of a ``2d``-regular multigraph by ARPACK
    (deterministic start vector)."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import eigsh

    rows = np.concatenate([dst.numpy(), src.numpy()])
    cols = np.concatenate([src.numpy(), dst.numpy()])
    adjacency = coo_matrix((np.ones(rows.size), (rows, cols)), shape=(size, size)).tocsr()
    start = np.linspace(1.0, 2.0, size)
    values = eigsh(adjacency, k=2, which="LA", v0=start, return_eigenvectors=False)
    return float(2 * degree - np.sort(values)[0])


def _complete_graph_edges(sizes: Tensor, graphs: Tensor, device) -> Tensor:
    """Every ordered pair ``i != j`` within each graph where ``graphs`` (a mask) holds."""
    starts = torch.cumsum(sizes, 0) - sizes
    parts = []
    for size in torch.unique(sizes[graphs]).tolist():
        if size < 2:
            continue
        first = starts[graphs & (sizes == size)]
        local = torch.arange(size, device=device)
        src, dst = local.repeat_interleave(size), local.repeat(size)
        off = src != dst
        parts.append(torch.stack([(first[:, None] + src[off]).reshape(-1),
                                  (first[:, None] + dst[off]).reshape(-1)]))  # fmt: skip
    if not parts:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    return torch.cat(parts, dim=1).to(device)


def virtual_node_edges(batch: Tensor, num_virtual: int, num_graphs: int | None = None) -> Tensor:
    """Edges between the real nodes of a sorted ``batch`` and ``num_virtual`` virtual nodes per
    graph, ``[2, E]``.

    Index layout: the ``N`` real nodes keep their indices ``0 .. N - 1``; virtual node ``v`` of
    graph ``g`` is ``N + g * num_virtual + v`` (``num_graphs * num_virtual`` of them, graphs
    ``0 .. num_graphs - 1``, default ``max(batch) + 1``). Every virtual node sends to and
    receives from every real node of its graph, and the virtual nodes of a graph are linked
    both ways among themselves (no self-loops).
    """
    device = batch.device
    num_nodes = batch.numel()
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if num_nodes else 0
    if num_virtual == 0 or num_graphs == 0:
        return torch.zeros(2, 0, dtype=torch.long, device=device)
    offsets = torch.arange(num_virtual, device=device)
    real = torch.arange(num_nodes, device=device).repeat_interleave(num_virtual)
    virtual = (num_nodes + batch[:, None] * num_virtual + offsets).reshape(-1)
    first = num_nodes + torch.arange(num_graphs, device=device) * num_virtual
    pair_src = (first[:, None, None] + offsets[None, :, None]).expand(-1, -1, num_virtual)
    pair_dst = (first[:, None, None] + offsets[None, None, :]).expand(-1, num_virtual, -1)
    distinct = pair_src != pair_dst
    senders = torch.cat([real, virtual, pair_src[distinct]])
    receivers = torch.cat([virtual, real, pair_dst[distinct]])
    return torch.stack([senders, receivers])


def exphormer_edges(
    edge_index: Tensor | None,
    batch: Tensor,
    degree: int,
    num_virtual: int,
    generator: torch.Generator | None,
    num_graphs: int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The union of the graph's edges, the expander (:func:`expander_edges`) and the virtual
    node edges (:func:`virtual_node_edges`), repeated pairs merged.

    Returns ``(edges [2, E], edge_type [E], graph_edge [E])`` sorted by (receiver, sender):
    ``edge_type`` is :data:`GRAPH_EDGE` (0), :data:`EXPANDER_EDGE` (1) or :data:`VIRTUAL_EDGE`
    (2), the lowest type of the merged copies (a graph edge that the expander repeats stays a
    graph edge); ``graph_edge`` is the column of ``edge_index`` of a graph edge (its first
    copy), ``-1`` for the other types.
    """
    device = batch.device
    num_nodes = batch.numel()
    if num_graphs is None:
        num_graphs = int(batch.max()) + 1 if num_nodes else 0
    total = num_nodes + num_graphs * num_virtual
    parts = []
    if edge_index is not None and edge_index.numel():
        parts.append((edge_index.long(), GRAPH_EDGE))
    parts.append((expander_edges(batch, degree, generator), EXPANDER_EDGE))
    parts.append((virtual_node_edges(batch, num_virtual, num_graphs), VIRTUAL_EDGE))
    edges = torch.cat([p for p, _ in parts], dim=1)
    types = torch.cat([torch.full((p.size(1),), t, dtype=torch.long, device=device)
                       for p, t in parts])  # fmt: skip
    origin = torch.arange(edges.size(1), device=device)
    scale = max(total, 1)
    key = (edges[1] * scale + edges[0]) * 3 + types
    key, order = torch.sort(key, stable=True)  # ties keep the caller's order of graph edges
    pair = key // 3
    first = torch.ones_like(pair, dtype=torch.bool)
    first[1:] = pair[1:] != pair[:-1]
    pair, types, origin = pair[first], (key % 3)[first], origin[order][first]
    graph_edge = torch.where(types == GRAPH_EDGE, origin, torch.full_like(origin, -1))
    return torch.stack([pair % scale, pair // scale]), types, graph_edge
