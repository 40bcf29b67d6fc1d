"""Radius and k-nearest-neighbour graphs of point clouds with cell lists (and a k-d tree).

This is the library's one neighbour search (:meth:`gtlib.attention.Pattern.radius` and
:meth:`~gtlib.attention.Pattern.knn` build on it). Points are binned into cells whose side is at
least the search radius, so every pair within the radius lies in the same or in adjacent cells;
only those candidate pairs are ever compared. With an orthorhombic periodic ``box`` positions
(anywhere, e.g. in ``[0, L)`` or ``[-L/2, L/2)``) are wrapped into ``[0, L)`` for the search and
distances use the minimum image (:func:`minimum_image`). Candidate pairs are generated in bounded
chunks of receivers, so memory stays proportional to the chunk size plus the output. On the CPU
the k-nearest search takes its candidates from scipy's k-d tree (compiled, threaded) and keeps
the cell lists for the receivers whose choice the tree's float64 distances leave open (ties).

The receivers are the senders themselves by default, or a separate point set ``pos_dst``
(bipartite search, e.g. from input points to query points). Both functions return
``(edge_index, displacement)`` in the PyG convention: ``edge_index[0]`` is the sender ``j``
(an index into ``pos``), ``edge_index[1]`` the receiver ``i`` (an index into ``pos_dst``, which
defaults to ``pos``), and ``displacement = pos[j] - pos_dst[i]`` (minimum image when periodic).
Edges are sorted by receiver, then by distance, then by sender.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from gtlib.validation import check_bool, check_int, check_real, finite_checks_enabled

__all__ = ["knn_edges", "minimum_image", "radius_edges"]

BoxLike = Tensor | Sequence[float] | float

# Candidate pairs (sender, receiver) materialised at once; bounds peak memory of one chunk.
MAX_CANDIDATES_PER_CHUNK = 1 << 20
# Graph id times cell count plus linear cell index must fit in int64.
_MAX_CELL_KEYS = 1 << 62
# Cells are made at least this much (relative) wider than the radius, so that rounding in the
# binning or in the distance cannot hide a pair that lies just inside the radius.
_CELL_SIDE_MARGIN = 1e-5
# k-NN: the smallest radius tried, relative to the point cloud's extent.
_KNN_MIN_RELATIVE_RADIUS = 2.0**-40


def minimum_image(delta: Tensor, box: BoxLike | None) -> Tensor:
    r"""The minimum image :math:`\Delta - L\,\mathrm{round}(\Delta / L)` of displacements.

    The library's one periodic convention: every component ends up in ``[-L/2, L/2]`` (ties
    round half to even, so exactly ``L/2`` stays). Differentiable in ``delta`` (the gradient is
    the identity), whatever the interval the positions were taken from (``[0, L)``,
    ``[-L/2, L/2)``, or unwrapped).

    Args:
        delta: ``[..., d]`` floating-point displacements.
        box: orthorhombic box lengths: a scalar or ``d`` values (tensor or sequence); ``None``
            returns ``delta`` unchanged (open boundaries).

    Raises:
        TypeError: ``delta`` is not a floating-point tensor, or ``box`` is not numeric.
        ValueError: a box length is not finite and ``> 0`` (a tensor ``box`` on an accelerator
            is not read back for this check unless ``GTLIB_CHECK_FINITE=1``).
    """
    if not isinstance(delta, Tensor) or not delta.is_floating_point():
        raise TypeError(f"delta must be a floating-point tensor, got {_describe(delta)}")
    if box is None:
        return delta
    if isinstance(box, Tensor):
        if box.is_complex() or box.dtype == torch.bool:
            raise TypeError(f"box must be real, got dtype {box.dtype}")
        lengths = box.detach().to(device=delta.device, dtype=delta.dtype)
        if finite_checks_enabled(lengths.device):  # a device tensor is not read back (no sync)
            _check_lengths(lengths)
    elif isinstance(box, bool):
        raise TypeError("box must be a number, a sequence of numbers or a tensor, got bool")
    elif isinstance(box, numbers.Real):
        lengths = check_real(box, "box", positive=True)
    else:
        try:
            lengths = torch.as_tensor(box, dtype=delta.dtype, device=delta.device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(
                f"box must be a number, a sequence of numbers or a tensor, got {box!r}"
            ) from error
        if any(isinstance(v, bool) for v in box):
            raise TypeError(f"box must hold numbers, got {box!r}")
        _check_lengths(lengths)
    return delta - lengths * torch.round(delta.detach() / lengths)


def _check_lengths(lengths: Tensor) -> None:
    if lengths.numel() and not bool((torch.isfinite(lengths) & (lengths > 0)).all()):
        raise ValueError(f"box lengths must be finite and > 0, got {lengths.tolist()}")


def radius_edges(
    pos: Tensor,
    r: float,
    box: BoxLike | None = None,
    batch: Tensor | None = None,
    max_num_neighbors: int | None = None,
    loop: bool = False,
    *,
    pos_dst: Tensor | None = None,
    batch_dst: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """All pairs of points at distance ``<= r``, found with cell lists.

    Points are binned into cells of side ``>= r``; each receiver compares only the senders of
    its own and the adjacent cells, so the cost grows with ``N`` times the local density. With a
    ``box`` every pair appears once per direction, with its minimum image. A pair at distance
    exactly ``r`` is connected, and so is a pair of coincident points.

    Args:
        pos: ``[N, d]`` floating-point positions of the senders (and of the receivers when
            ``pos_dst`` is ``None``).
        r: cutoff radius; pairs with distance ``<= r`` are connected. Must be finite and ``> 0``,
            and with a ``box`` at most ``min(box) / 2`` (beyond that the minimum image of a pair
            is not the only image within ``r``).
        box: orthorhombic periodic box lengths, a scalar or ``d`` values (tensor or sequence);
            ``None`` for open boundaries. Positions may lie anywhere; the search wraps them
            into ``[0, L)``.
        batch: ``[N]`` integer graph id of each sender, sorted ascending; points only connect
            within their graph. ``None`` puts all points in one graph.
        max_num_neighbors: keep only the ``max_num_neighbors`` nearest senders of each receiver
            (the self-loop counts among them when ``loop=True``). ``None`` keeps all.
        loop: include the self edge ``(i, i)`` (zero displacement) for every point. Only
            meaningful without ``pos_dst``: a bipartite search keeps every pair within ``r``.
        pos_dst: ``[M, d]`` positions of a separate receiver set (same dtype and device as
            ``pos``); ``None`` searches ``pos`` against itself.
        batch_dst: ``[M]`` graph id of each receiver, sorted ascending (with ``pos_dst`` only;
            given together with ``batch``). Graph ids are matched by value with ``batch``.

    Returns:
        ``(edge_index, displacement)``: ``edge_index`` is int64 ``[2, E]`` with row 0 the sender
        ``j`` and row 1 the receiver ``i``, sorted by receiver, then distance, then sender;
        ``displacement`` is ``[E, d]`` with ``pos[j] - pos_dst[i]`` (minimum image when periodic)
        in the dtype of ``pos``, differentiable with respect to the positions when they require
        grad.

    Raises:
        TypeError: ``pos``/``pos_dst`` is not a floating-point tensor, ``batch``/``batch_dst``
            not an integer tensor, or a scalar argument has the wrong type.
        ValueError: bad shapes, non-finite positions, ``r`` not positive and finite, ``r`` larger
            than half the box, non-positive box lengths, unsorted ``batch`` or
            ``max_num_neighbors < 1``.
    """
    pos = _check_pos(pos)
    pos_dst = _check_pos_dst(pos_dst, pos)
    radius = check_real(r, "r", positive=True)
    loop = check_bool(loop, "loop")
    box_lengths = _check_box(box, pos)
    graph, graph_dst, num_graphs = _check_graphs(batch, pos, batch_dst, pos_dst)
    if max_num_neighbors is not None:
        max_num_neighbors = check_int(max_num_neighbors, "max_num_neighbors", minimum=1)
    if box_lengths is not None and radius > float(box_lengths.min()) / 2:
        raise ValueError(
            f"r={radius} exceeds half the smallest box length {float(box_lengths.min())}: the "
            "minimum image of a pair would be ambiguous; use r <= min(box) / 2"
        )
    receivers_pos = pos if pos_dst is None else pos_dst
    if pos.shape[0] == 0 or receivers_pos.shape[0] == 0:
        return _empty_result(pos)
    factor = _scale_factor(pos, pos_dst, box_lengths, radius)
    if factor != 1.0:  # search at unit scale: squared distances neither overflow nor underflow
        scaled = _scaled(pos, pos_dst, box_lengths, factor)
        found = radius_edges(scaled[0], radius * factor, scaled[2], batch, max_num_neighbors, loop,
                             pos_dst=scaled[1], batch_dst=batch_dst)  # fmt: skip
        return _unscaled(found, factor, pos, pos_dst, box_lengths)

    space = _Space.create(pos, box_lengths, pos_dst)
    exclude_self = not loop and not space.bipartite
    grid = _build_cell_lists(space, graph, num_graphs, _cell_side(radius, space))
    receivers = torch.arange(receivers_pos.shape[0], device=pos.device)
    ranges = _neighbour_ranges(grid, *_receiver_cells(space, grid, graph_dst, receivers))

    senders_out, receivers_out, displacement_out = [], [], []
    for chunk_receivers, local, sender_slot in _candidate_chunks(receivers, ranges):
        quota = None
        if max_num_neighbors is not None:
            quota = torch.full_like(chunk_receivers, max_num_neighbors)
        local, senders, displacement = _sorted_pairs_within(
            space, grid, chunk_receivers, local, sender_slot, radius, exclude_self, quota
        )
        if max_num_neighbors is not None:
            rank = _rank_within_receiver(local, chunk_receivers.numel())
            keep = torch.nonzero(rank < max_num_neighbors).squeeze(1)
            local = local.index_select(0, keep)
            senders, displacement = (
                senders.index_select(0, keep),
                displacement.index_select(0, keep),
            )
        senders_out.append(senders)
        receivers_out.append(chunk_receivers.index_select(0, local))
        displacement_out.append(displacement)

    return _assemble(pos, receivers_pos, space, senders_out, receivers_out, displacement_out)


def knn_edges(
    pos: Tensor,
    k: int,
    box: BoxLike | None = None,
    batch: Tensor | None = None,
    loop: bool = False,
    *,
    pos_dst: Tensor | None = None,
    batch_dst: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The ``k`` nearest senders of every receiver, found with cell lists.

    A radius giving about ``2k`` expected neighbours at the mean density is the starting point.
    Each receiver then moves to a radius suited to its local density (the number of points in
    its neighbouring cells), in steps of a factor ``2 ** (1/3)``: smaller in clusters, larger
    in sparse regions. A receiver that finds fewer than ``k`` points within its radius retries
    with a larger one. Once the radius reaches the extent of the point cloud (or half the box
    when periodic) all senders of the receiver's graph are compared, so the result is exact for
    any distribution of points. Only the pairs within the radius are ever sorted.

    Args:
        pos: ``[N, d]`` floating-point positions of the senders (and of the receivers when
            ``pos_dst`` is ``None``).
        k: number of neighbours per receiver, ``>= 1``. A receiver whose graph has fewer
            candidates gets all of them.
        box: orthorhombic periodic box lengths, a scalar or ``d`` values (tensor or sequence);
            ``None`` for open boundaries. Distances use the minimum image.
        batch: ``[N]`` integer graph id of each sender, sorted ascending; points only connect
            within their graph. ``None`` puts all points in one graph.
        loop: let a point be its own neighbour (it then counts as one of the ``k``; like any
            tie, a coincident point with a smaller index comes before it). Only meaningful
            without ``pos_dst``: a bipartite search considers every sender.
        pos_dst: ``[M, d]`` positions of a separate receiver set (same dtype and device as
            ``pos``); ``None`` searches ``pos`` against itself.
        batch_dst: ``[M]`` graph id of each receiver, sorted ascending (with ``pos_dst`` only;
            given together with ``batch``).

    Returns:
        ``(edge_index, displacement)``: ``edge_index`` is int64 ``[2, E]`` with row 0 the sender
        ``j`` and row 1 the receiver ``i``, sorted by receiver, then distance, then sender;
        ``displacement`` is ``[E, d]`` with ``pos[j] - pos_dst[i]`` (minimum image when periodic)
        in the dtype of ``pos``, differentiable with respect to the positions when they require
        grad.

    Raises:
        TypeError: ``pos``/``pos_dst`` is not a floating-point tensor, ``batch``/``batch_dst``
            not an integer tensor, or a scalar argument has the wrong type.
        ValueError: bad shapes, non-finite positions, ``k < 1``, non-positive box lengths or
            unsorted ``batch``.
    """
    pos = _check_pos(pos)
    pos_dst = _check_pos_dst(pos_dst, pos)
    k = check_int(k, "k", minimum=1)
    loop = check_bool(loop, "loop")
    box_lengths = _check_box(box, pos)
    graph, graph_dst, num_graphs = _check_graphs(batch, pos, batch_dst, pos_dst)
    receivers_pos = pos if pos_dst is None else pos_dst
    if pos.shape[0] == 0 or receivers_pos.shape[0] == 0:
        return _empty_result(pos)
    factor = _scale_factor(pos, pos_dst, box_lengths)
    if factor != 1.0:  # search at unit scale: squared distances neither overflow nor underflow
        scaled = _scaled(pos, pos_dst, box_lengths, factor)
        found = knn_edges(scaled[0], k, scaled[2], batch, loop, pos_dst=scaled[1],
                          batch_dst=batch_dst)  # fmt: skip
        return _unscaled(found, factor, pos, pos_dst, box_lengths)

    space = _Space.create(pos, box_lengths, pos_dst)
    exclude_self = not loop and not space.bipartite
    graph_sizes = torch.bincount(graph, minlength=num_graphs)
    wanted = graph_sizes.index_select(0, graph_dst) - int(exclude_self)
    wanted = wanted.clamp(max=k)
    search = _KnnSearch(_KnnRadii.create(space, graph_sizes, k), wanted, exclude_self)
    pending = torch.nonzero(wanted > 0).squeeze(1)

    senders_out, receivers_out, displacement_out = [], [], []
    if (
        pending.numel() > 0
        and _use_kdtree(space)
        and pos.shape[0] >= _KDTREE_MIN_GRAPH * num_graphs
    ):
        found, pending = _kdtree_nearest(space, graph, graph_dst, graph_sizes, wanted, exclude_self)
        for out, part in zip((senders_out, receivers_out, displacement_out), found, strict=True):
            out.append(part)
    while pending.numel() > 0:
        retry = [pending[:0]]
        pending_levels = search.level.index_select(0, pending)
        for current_level in torch.unique(pending_levels).tolist():
            group = pending[pending_levels == current_level]
            radius = search.plan.radius(current_level)
            grid = _build_cell_lists(space, graph, num_graphs, _cell_side(radius, space))
            ranges = _neighbour_ranges(grid, *_receiver_cells(space, grid, graph_dst, group))
            if math.isfinite(radius):
                look, moved = search.triage(group, ranges.candidates, current_level)
                retry.append(moved)
                group, ranges = group[look], ranges.select(look)

            for chunk_receivers, local, sender_slot in _candidate_chunks(group, ranges):
                local, senders, displacement = _sorted_pairs_within(
                    space,
                    grid,
                    chunk_receivers,
                    local,
                    sender_slot,
                    radius,
                    exclude_self,
                    quota=wanted.index_select(0, chunk_receivers),
                )
                keep, incomplete, found = search.nearest(chunk_receivers, local)
                senders_out.append(senders.index_select(0, keep))
                receivers_out.append(chunk_receivers.index_select(0, local.index_select(0, keep)))
                displacement_out.append(displacement.index_select(0, keep))
                if incomplete.numel() > 0:
                    if not math.isfinite(radius):
                        raise RuntimeError("knn_edges: exhaustive search found too few neighbours")
                    retry.append(search.grow(chunk_receivers[incomplete], found[incomplete]))
        pending = torch.cat(retry)

    if len(receivers_out) > 1:
        receivers_all = torch.cat(receivers_out)
        # Each receiver's edges come from one search and are already in distance order.
        if not bool((receivers_all[1:] >= receivers_all[:-1]).all()):
            order = torch.sort(receivers_all, stable=True).indices
            senders_out = [torch.cat(senders_out).index_select(0, order)]
            receivers_out = [receivers_all.index_select(0, order)]
            displacement_out = [torch.cat(displacement_out).index_select(0, order)]
    return _assemble(pos, receivers_pos, space, senders_out, receivers_out, displacement_out)


# k-NN on the CPU: candidates from scipy's k-d tree (compiled, threaded), the final choice and
# order in the dtype of the positions like the cell-list search. Extra candidates per receiver
# beyond the k wanted: rank changes between float64 and the positions' dtype stay among them.
_KDTREE_MARGIN = 4
# Receivers whose nearest candidate left out is within this many units of the positions' dtype
# rounding (relative to the coordinates' magnitude) of the last one chosen go to the cell lists.
_KDTREE_TOLERANCE_ULPS = 32.0
# One tree per graph costs about a millisecond: batches of small graphs (mean below this many
# senders) stay on the vectorised cell lists (measured: 2000 graphs of 30 points took 3.4 s with
# a tree each against 0.25 s; 8 graphs of 5000 points 0.13-0.20 s against 0.24 s).
_KDTREE_MIN_GRAPH = 1024


def _use_kdtree(space: _Space) -> bool:
    """Whether the k-d tree can serve this search: CPU positions and scipy importable."""
    if space.positions.device.type != "cpu":
        return False
    try:
        from scipy.spatial import cKDTree  # noqa: F401
    except ImportError:  # pragma: no cover - scipy is a core dependency
        return False
    return True


def _kdtree_nearest(
    space: _Space,
    graph: Tensor,
    graph_dst: Tensor,
    graph_sizes: Tensor,
    wanted: Tensor,
    exclude_self: bool,
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
    """The ``wanted`` nearest senders of every receiver from k-d tree candidates.

    The tree proposes ``wanted + margin`` candidates per receiver in float64 (all senders of
    the receiver's graph when it has no more); their distances are recomputed in the positions'
    dtype and sorted by (distance, sender), exactly as the cell-list search orders them. A
    receiver is resolved when every sender left out is farther (in float64) than the last one
    chosen by more than the dtype's rounding can change; the others (ties, duplicate points,
    lattices) are returned for the exact cell-list search.

    Returns:
        ``((senders, receivers, displacement), unresolved)``: the resolved receivers' edges,
        sorted by receiver, then distance, then sender, and the unresolved receivers.
    """
    from scipy.spatial import cKDTree

    positions, dst_positions, box = space.positions, space.dst_positions, space.box
    num_graphs = graph_sizes.numel()
    senders_ptr = torch.zeros(num_graphs + 1, dtype=torch.long)
    senders_ptr[1:] = torch.cumsum(graph_sizes, 0)
    receivers_ptr = torch.zeros(num_graphs + 1, dtype=torch.long)
    receivers_ptr[1:] = torch.cumsum(torch.bincount(graph_dst, minlength=num_graphs), 0)
    extra = int(exclude_self) + _KDTREE_MARGIN
    boxsize = None if box is None else box.double().numpy()
    scale = max(float(positions.abs().max()), float(dst_positions.abs().max()), 1.0)
    if box is not None:
        scale = max(scale, float(box.max()))
    tolerance = _KDTREE_TOLERANCE_ULPS * torch.finfo(positions.dtype).eps * scale

    def tree_points(x: Tensor):
        x = x.double().numpy()
        if boxsize is not None:  # in [0, L): a remainder rounded up to L wraps to 0
            x = x.copy()
            x[x >= boxsize] = 0.0
        return x

    out: list[tuple[Tensor, Tensor, Tensor]] = []
    unresolved: list[Tensor] = []
    threads = max(1, torch.get_num_threads())
    for g in range(num_graphs):
        s0, s1 = int(senders_ptr[g]), int(senders_ptr[g + 1])
        r0, r1 = int(receivers_ptr[g]), int(receivers_ptr[g + 1])
        if r0 == r1 or s0 == s1:
            continue
        receivers = torch.arange(r0, r1)
        want = wanted[r0:r1]
        count = min(int(want.max()) + extra, s1 - s0)
        if count <= 0:
            continue
        tree = cKDTree(tree_points(positions[s0:s1]), boxsize=boxsize, balanced_tree=False)
        queries = tree_points(dst_positions[r0:r1])
        if space.bipartite:
            far, local = tree.query(queries, k=count, workers=threads)
            far, local = torch.from_numpy(far), torch.from_numpy(local)
        else:  # queried in the tree's leaf order (neighbouring queries, warm caches), rows
            # then put back in receiver order
            leaf_order = tree.indices
            far, local = tree.query(queries[leaf_order], k=count, workers=threads)
            back = torch.empty(r1 - r0, dtype=torch.long)
            back[torch.from_numpy(leaf_order.astype("int64"))] = torch.arange(r1 - r0)
            far, local = torch.from_numpy(far)[back], torch.from_numpy(local)[back]
        far = far.reshape(r1 - r0, count)
        candidates = local.reshape(r1 - r0, count).long() + s0
        # distances in the positions' dtype exactly as the cell lists compute them (minimum
        # image, then vector_norm over the last axis: a sum of squares rounds differently)
        distance = torch.empty(candidates.shape, dtype=positions.dtype)
        rows = max(1, MAX_CANDIDATES_PER_CHUNK // count)
        for first in range(0, r1 - r0, rows):
            block = slice(first, first + rows)
            delta = positions[candidates[block]] - dst_positions[receivers[block]][:, None]
            distance[block] = torch.linalg.vector_norm(minimum_image(delta, box), dim=2)
        if exclude_self:
            distance = distance.masked_fill(candidates == receivers[:, None], math.inf)
        # rows in (distance, sender) order; the tree's float64 order already is, except where
        # rounding to the dtype ties or swaps neighbours: only those rows are sorted
        step_down = distance[:, 1:] < distance[:, :-1]
        tie = (distance[:, 1:] == distance[:, :-1]) & (candidates[:, 1:] < candidates[:, :-1])
        unsorted = torch.nonzero((step_down | tie).any(1)).squeeze(1)
        if unsorted.numel() > 0:
            c, d = candidates[unsorted], distance[unsorted]
            order = torch.argsort(c, dim=1, stable=True)
            order = order.gather(1, torch.argsort(d.gather(1, order), dim=1, stable=True))
            candidates[unsorted], distance[unsorted] = c.gather(1, order), d.gather(1, order)
            far_sorted = far.clone()
            far_sorted[unsorted] = far[unsorted].gather(1, order)
        else:
            far_sorted = far
        chosen = torch.arange(count)[None, :] < want[:, None]
        # resolved: every sender of the graph was a candidate, or the nearest one left out
        # (farther than the tree's last candidate) is clearly farther than the last chosen
        last = (want - 1).clamp(min=0)[:, None]
        # the farthest chosen in float64 (the dtype's order may swap near-equal neighbours)
        last_chosen = far_sorted.masked_fill(~chosen, -math.inf).max(1).values
        complete = count >= (s1 - s0)
        resolved = torch.full((r1 - r0,), complete, dtype=torch.bool)
        if not complete:
            resolved = far.max(1).values > last_chosen + tolerance
        resolved &= torch.isfinite(distance.gather(1, last).squeeze(1))
        unresolved.append(receivers[~resolved])
        keep = chosen & resolved[:, None]
        senders, kept_receivers = candidates[keep], receivers[keep.nonzero()[:, 0]]
        delta = positions.index_select(0, senders) - dst_positions.index_select(0, kept_receivers)
        out.append((senders, kept_receivers, minimum_image(delta, box)))
    if not out:
        empty = torch.zeros(0, dtype=torch.long)
        out.append((empty, empty, positions.new_zeros(0, positions.shape[1])))
    senders, receivers, displacement = (torch.cat(parts) for parts in zip(*out, strict=True))
    pending = torch.cat(unresolved) if unresolved else torch.zeros(0, dtype=torch.long)
    return (senders, receivers, displacement), pending[wanted[pending] > 0]


class _Space(NamedTuple):
    """Positions prepared for the search (detached, wrapped into the box when periodic).

    The binned region spans the senders and the receivers. Without a separate receiver set the
    receiver fields are the sender fields themselves.
    """

    positions: Tensor  # [N, d] sender positions in the dtype of pos
    positions_by_axis: Tensor  # [d, N] contiguous copy of the positions, one row per axis
    dst_positions: Tensor  # [M, d] receiver positions
    dst_positions_by_axis: Tensor  # [d, M]
    bipartite: bool  # whether the receivers are a separate point set
    box: Tensor | None  # [d] box lengths in the dtype of pos
    box_list: list[float] | None  # the same box lengths as Python floats
    lower: Tensor  # [d] float64 lower corner of the binned region
    extent: Tensor  # [d] float64 size of the binned region
    sender_extent: Tensor  # [d] float64 size of the senders' region (their density)

    @staticmethod
    def create(pos: Tensor, box_lengths: Tensor | None, pos_dst: Tensor | None = None) -> _Space:
        positions = pos.detach()
        dst_positions = positions if pos_dst is None else pos_dst.detach()
        box = box_list = None
        if box_lengths is None:
            lower = positions.min(0).values.double()
            upper = positions.max(0).values.double()
            sender_extent = upper - lower
            if pos_dst is not None:
                lower = torch.minimum(lower, dst_positions.min(0).values.double())
                upper = torch.maximum(upper, dst_positions.max(0).values.double())
            extent = upper - lower
        else:
            box = box_lengths.to(pos.dtype)
            box_list = box.tolist()
            positions = torch.remainder(positions, box)
            if pos_dst is None:
                dst_positions = positions
            else:
                dst_positions = torch.remainder(dst_positions, box)
            extent = sender_extent = box.double()
            lower = torch.zeros_like(extent)
        by_axis = positions.t().contiguous()
        dst_by_axis = by_axis if pos_dst is None else dst_positions.t().contiguous()
        return _Space(
            positions,
            by_axis,
            dst_positions,
            dst_by_axis,
            pos_dst is not None,
            box,
            box_list,
            lower,
            extent,
            sender_extent,
        )


class _CellLists(NamedTuple):
    """Senders sorted by (graph, cell), with the occupied cells as ranges of that order."""

    sorted_points: Tensor  # [N] sender indices ordered by (graph, cell, index)
    sorted_positions_by_axis: Tensor  # [d, N] positions in that order, one row per axis
    point_keys: Tensor  # [N] key graph * total_cells + linear cell index of every sender
    point_coords: Tensor  # [N, d] integer cell coordinates of every sender
    cell_keys: Tensor  # [U] sorted keys of the occupied cells
    cell_starts: Tensor  # [U] first sorted slot of each occupied cell
    cell_sizes: Tensor  # [U] number of points in each occupied cell
    cells: list[int]  # cells along each axis
    cell_side: Tensor  # [d] float64 side of the cells
    periodic: bool


def _cell_side(radius: float, space: _Space) -> float:
    """Smallest admissible cell side for ``radius`` (``inf``: one cell spanning everything)."""
    if not math.isfinite(radius):
        return math.inf
    relative_margin = max(_CELL_SIDE_MARGIN, 8 * torch.finfo(space.positions.dtype).eps)
    binning_error = 4 * torch.finfo(torch.float64).eps * float(space.extent.max())
    return radius * (1 + relative_margin) + binning_error


def _build_cell_lists(
    space: _Space, graph: Tensor, num_graphs: int, min_cell_side: float
) -> _CellLists:
    """Bins the senders (in float64) into cells of side ``>= min_cell_side``, sorted by cell.

    Without a box the grid spans the bounding box of senders and receivers; with one, the box
    (one cell wraps onto the other end). The cell count is capped so that keys fit in int64,
    which only makes cells larger.
    """
    extent = space.extent.tolist()
    dim = len(extent)
    cells = [max(1, int(min(e / min_cell_side, 2.0**62))) for e in extent]
    while math.prod(cells) * max(num_graphs, 1) > _MAX_CELL_KEYS:
        widest = max(range(dim), key=cells.__getitem__)
        cells[widest] = max(1, cells[widest] // 2)

    device = space.positions.device
    cells_t = torch.tensor(cells, dtype=torch.long, device=device)
    if space.box is not None:
        cell_side = space.extent / cells_t
    else:
        cell_side = torch.clamp(space.extent / cells_t, min=min(min_cell_side, 1e300))
    point_coords, keys = _bin(space.positions, graph, space.lower, cell_side, cells)
    sorted_keys, sorted_points = torch.sort(keys, stable=True)
    cell_keys, cell_sizes = torch.unique_consecutive(sorted_keys, return_counts=True)
    cell_starts = torch.cumsum(cell_sizes, 0) - cell_sizes
    return _CellLists(
        sorted_points,
        space.positions_by_axis[:, sorted_points].contiguous(),
        keys,
        point_coords,
        cell_keys,
        cell_starts,
        cell_sizes,
        cells,
        cell_side,
        space.box is not None,
    )


def _bin(
    positions: Tensor, graph: Tensor, lower: Tensor, cell_side: Tensor, cells: list[int]
) -> tuple[Tensor, Tensor]:
    """Integer cell coordinates ``[P, d]`` and keys ``graph * total_cells + linear cell``."""
    cells_t = torch.tensor(cells, dtype=torch.long, device=positions.device)
    coords = torch.floor((positions.double() - lower) / cell_side).long()
    coords = torch.minimum(coords.clamp(min=0), cells_t - 1)
    strides = [math.prod(cells[axis + 1 :]) for axis in range(len(cells))]
    strides_t = torch.tensor(strides, dtype=torch.long, device=positions.device)
    return coords, graph * math.prod(cells) + (coords * strides_t).sum(1)


def _receiver_cells(
    space: _Space, grid: _CellLists, graph_dst: Tensor, receivers: Tensor
) -> tuple[Tensor, Tensor]:
    """Cell keys ``[R]`` and coordinates ``[R, d]`` of ``receivers`` in ``grid``."""
    if not space.bipartite:
        return grid.point_keys.index_select(0, receivers), grid.point_coords[receivers]
    return _bin(
        space.dst_positions.index_select(0, receivers),
        graph_dst.index_select(0, receivers),
        space.lower,
        grid.cell_side,
        grid.cells,
    )[::-1]


class _NeighbourRanges(NamedTuple):
    """Where the candidate senders of each receiver lie in the sorted order of the senders.

    The tables are per distinct cell of the receivers; empty neighbouring cells (and, without a
    box, those outside the grid) have size 0.
    """

    receiver_cell: Tensor  # [R] row of each receiver's cell in the tables
    starts: Tensor  # [C, K] first sorted slot of each neighbouring cell
    sizes: Tensor  # [C, K] number of points in each neighbouring cell
    candidates: Tensor  # [R] number of candidate senders of each receiver (itself included)

    def select(self, mask: Tensor) -> _NeighbourRanges:
        return _NeighbourRanges(
            self.receiver_cell[mask], self.starts, self.sizes, self.candidates[mask]
        )


def _neighbour_ranges(
    grid: _CellLists, receiver_keys: Tensor, receiver_coords: Tensor
) -> _NeighbourRanges:
    """The sorted-slot ranges of the cells around each receiver's cell.

    Args:
        grid: the senders' cell lists.
        receiver_keys: ``[R]`` cell key of each receiver (graph and cell, as in ``grid``).
        receiver_coords: ``[R, d]`` integer cell coordinates of each receiver.
    """
    device = receiver_keys.device
    distinct_keys, receiver_cell = torch.unique(receiver_keys, return_inverse=True)
    dim = len(grid.cells)
    cell_coords = receiver_coords.new_empty((distinct_keys.numel(), dim))
    cell_coords[receiver_cell] = receiver_coords
    total_cells = math.prod(grid.cells)
    strides = [math.prod(grid.cells[axis + 1 :]) for axis in range(dim)]
    offsets = _neighbour_offsets(grid.cells, grid.periodic).to(device)
    graph_index = torch.div(distinct_keys, total_cells, rounding_mode="floor")
    graph_base = graph_index * total_cells
    keys = graph_base.unsqueeze(1).expand(-1, len(offsets))
    valid = torch.ones(keys.shape, dtype=torch.bool, device=device)
    for axis in range(dim):
        axis_coords = cell_coords[:, axis : axis + 1] + offsets[:, axis]
        if grid.periodic:
            axis_coords = torch.remainder(axis_coords, grid.cells[axis])
        else:
            valid &= (axis_coords >= 0) & (axis_coords < grid.cells[axis])
        keys = keys + axis_coords * strides[axis]
    found = torch.searchsorted(grid.cell_keys, keys).clamp(max=grid.cell_keys.numel() - 1)
    valid &= grid.cell_keys[found] == keys
    starts = torch.where(valid, grid.cell_starts[found], 0)
    sizes = torch.where(valid, grid.cell_sizes[found], 0)
    candidates = sizes.sum(1).index_select(0, receiver_cell)
    return _NeighbourRanges(receiver_cell, starts, sizes, candidates)


def _neighbour_offsets(cells: list[int], periodic: bool) -> Tensor:
    """Cell offsets to visit, ``[K, d]``, each distinct neighbouring cell exactly once.

    With periodic wrapping and fewer than three cells along an axis, the offsets -1 and +1 land
    on the same cell (or on the cell itself), so only the distinct ones are kept.
    """
    per_axis = []
    for count in cells:
        if periodic and count < 3:
            per_axis.append(list(range(count)))
        elif count == 1:
            per_axis.append([0])
        else:
            per_axis.append([-1, 0, 1])
    return torch.tensor(list(itertools.product(*per_axis)), dtype=torch.long)


def _candidate_chunks(
    receivers: Tensor, ranges: _NeighbourRanges
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """Candidate pairs in chunks of whole receivers of about ``MAX_CANDIDATES_PER_CHUNK`` pairs.

    Yields:
        ``(chunk_receivers, local, sender_slot)``: the chunk's receivers, and per candidate pair
        the position of its receiver in ``chunk_receivers`` (ascending) and the sorted slot of
        its sender (``grid.sorted_points[sender_slot]`` is the sender).
    """
    if receivers.numel() == 0:
        return
    per_receiver = ranges.candidates
    cumulative = torch.cumsum(per_receiver, 0)
    device = receivers.device
    begin, done = 0, 0
    while begin < receivers.numel():
        limit = torch.tensor([done + MAX_CANDIDATES_PER_CHUNK], device=device)
        end = max(begin + 1, int(torch.searchsorted(cumulative, limit, right=True)))
        total = int(cumulative[end - 1]) - done
        rows = ranges.receiver_cell[begin:end]
        run_lengths = ranges.sizes.index_select(0, rows).flatten()
        run_offsets = torch.cumsum(run_lengths, 0) - run_lengths
        sender_slot = torch.arange(total, device=device) + torch.repeat_interleave(
            ranges.starts.index_select(0, rows).flatten() - run_offsets,
            run_lengths,
            output_size=total,
        )
        local = torch.repeat_interleave(
            torch.arange(end - begin, device=device), per_receiver[begin:end], output_size=total
        )
        yield receivers[begin:end], local, sender_slot
        begin, done = end, done + total


def _sorted_pairs_within(
    space: _Space,
    grid: _CellLists,
    chunk_receivers: Tensor,
    local: Tensor,
    sender_slot: Tensor,
    radius: float,
    exclude_self: bool,
    quota: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Candidate pairs within ``radius`` (without self pairs if ``exclude_self``), sorted.

    A cheap squared-distance pass over all candidates (axis by axis, in place) discards the far
    ones; displacements and distances are then computed for the survivors only. With a
    ``quota`` (per chunk receiver) only pairs that surely include the ``quota`` nearest of each
    receiver are kept, which spares sorting far pairs.

    Returns:
        ``(local, senders, displacement)`` of the kept pairs, sorted by receiver (``local``
        indexes ``chunk_receivers``), then distance, then sender.
    """
    if math.isfinite(radius):
        receiver_coords = space.dst_positions_by_axis.index_select(1, chunk_receivers)
        squared = None
        for axis in range(receiver_coords.shape[0]):
            delta = grid.sorted_positions_by_axis[axis].index_select(0, sender_slot)
            delta.sub_(receiver_coords[axis].index_select(0, local))
            if space.box is not None:
                length = space.box_list[axis]
                delta = torch.minimum(delta.abs_(), length - delta)
            delta.mul_(delta)
            squared = delta if squared is None else squared.add_(delta)
        # Generous bound: the exact test below decides, this only drops clearly far pairs.
        near = torch.nonzero(squared <= radius * radius * (1 + 1e-3)).squeeze(1)
        local, sender_slot = local.index_select(0, near), sender_slot.index_select(0, near)

    senders = grid.sorted_points.index_select(0, sender_slot)
    receivers = chunk_receivers.index_select(0, local)
    displacement = space.positions.index_select(0, senders)
    displacement -= space.dst_positions.index_select(0, receivers)
    displacement = minimum_image(displacement, space.box)
    distance = torch.linalg.vector_norm(displacement, dim=1)
    keep = distance <= radius
    if exclude_self:
        keep &= senders != receivers
    keep = torch.nonzero(keep).squeeze(1)
    kept_local, kept_distance = local.index_select(0, keep), distance.index_select(0, keep)
    if quota is not None:
        nearest = _superset_of_nearest(kept_local, kept_distance, quota, space.positions.shape[1])
        if nearest is not None:
            keep = keep.index_select(0, nearest)
            kept_local = kept_local.index_select(0, nearest)
            kept_distance = kept_distance.index_select(0, nearest)
    kept_senders = senders.index_select(0, keep)
    order = _receiver_distance_sender_order(kept_local, kept_distance, kept_senders)
    return (
        kept_local.index_select(0, order),
        kept_senders.index_select(0, order),
        displacement.index_select(0, keep.index_select(0, order)),
    )


def _superset_of_nearest(local: Tensor, distance: Tensor, quota: Tensor, dim: int) -> Tensor | None:
    """Indices of pairs that include the ``quota`` nearest of every receiver, or ``None`` (all).

    A receiver with many more pairs than its quota keeps those within a radius expected (at
    uniform density) to hold about twice the quota, provided that radius holds at least the
    quota; otherwise, and for the other receivers, all pairs are kept.
    """
    num_receivers = quota.numel()
    found = torch.bincount(local, minlength=num_receivers)
    crowded = found > 3 * quota
    if not bool(crowded.any()):
        return None
    farthest = torch.zeros(num_receivers, dtype=distance.dtype, device=distance.device)
    farthest.scatter_reduce_(0, local, distance, "amax")
    shrink = (2 * quota / found.clamp(min=1)).to(distance.dtype) ** (1 / dim)
    cutoff = torch.where(crowded, farthest * shrink, farthest)
    inside = distance <= cutoff.index_select(0, local)
    enough = torch.bincount(local[inside], minlength=num_receivers) >= quota
    return torch.nonzero(inside | ~enough.index_select(0, local)).squeeze(1)


def _receiver_distance_sender_order(local: Tensor, distance: Tensor, senders: Tensor) -> Tensor:
    """Permutation sorting pairs by receiver, then distance, then sender.

    One integer sort on ``receiver << 32 | float32 bits of distance`` (the bits of a
    non-negative float order like its value); pairs whose keys tie (equal or, for float64,
    nearly equal distances) are then re-sorted exactly by distance and sender.
    """
    distance_bits = distance.to(torch.float32).view(torch.int32).long()
    sorted_keys, order = torch.sort((local << 32) | distance_bits)
    tied = sorted_keys[1:] == sorted_keys[:-1]
    if bool(tied.any()):
        in_tie = torch.zeros_like(sorted_keys, dtype=torch.bool)
        in_tie[1:] |= tied
        in_tie[:-1] |= tied
        tie_slots = torch.nonzero(in_tie).squeeze(1)
        members = order[tie_slots]
        refine = torch.sort(senders[members], stable=True).indices
        refine = refine[torch.sort(distance[members][refine], stable=True).indices]
        refine = refine[torch.sort(sorted_keys[tie_slots][refine], stable=True).indices]
        order[tie_slots] = members[refine]
    return order


def _rank_within_receiver(local: Tensor, num_receivers: int) -> Tensor:
    """Position of each pair among its receiver's pairs (pairs grouped by receiver)."""
    counts = torch.bincount(local, minlength=num_receivers)
    first = torch.cumsum(counts, 0) - counts
    return torch.arange(local.numel(), device=local.device) - first.index_select(0, local)


class _KnnRadii(NamedTuple):
    """Search radii of the k-NN levels, ``base * 2 ** (level / LEVELS_PER_DOUBLING)``.

    ``base`` gives about ``2k`` expected neighbours at the mean density. Radii stop at ``cap``:
    half the smallest box length when periodic, the diagonal of the bounding box otherwise. The
    level after ``cap_level`` (or ``cap_level`` itself without a box, where the cap covers every
    pair) compares all points of the receiver's graph.
    """

    base: float
    cap: float
    cap_level: int
    exhaustive_level: int
    min_level: int
    dim: int
    expected_candidates: float

    LEVELS_PER_DOUBLING = 3

    @staticmethod
    def create(space: _Space, graph_sizes: Tensor, k: int) -> _KnnRadii:
        dim = space.extent.numel()
        # Points in the 3^d cells around a receiver when 2k are expected within the radius.
        expected_candidates = 2 * k * 3**dim / _unit_ball_volume(dim)
        largest = float(space.extent.max())
        sender_largest = float(space.sender_extent.max())
        if sender_largest == 0.0:  # all senders coincide: compare them all at once
            return _KnnRadii(1.0, 0.0, 0, 0, 0, dim, expected_candidates)
        occupied = graph_sizes[graph_sizes > 0]
        points_per_graph = float(occupied.double().mean())
        # Density of the senders; flat point clouds get a minimum thickness.
        extent = space.sender_extent.clamp(min=sender_largest / points_per_graph)
        density = points_per_graph / float(torch.prod(extent))
        base = (2 * k / (density * _unit_ball_volume(dim))) ** (1 / dim)
        if space.box is not None:
            cap = float(space.extent.min()) / 2
        else:
            cap = float(torch.linalg.vector_norm(space.extent))
        steps = _KnnRadii.LEVELS_PER_DOUBLING
        if cap <= base:
            base, cap_level = cap, 0
        else:
            cap_level = math.ceil(steps * math.log2(cap / base))
        exhaustive_level = cap_level + (1 if space.box is not None else 0)
        min_level = min(0, math.floor(steps * math.log2(largest * _KNN_MIN_RELATIVE_RADIUS / base)))
        return _KnnRadii(
            base, cap, cap_level, exhaustive_level, min_level, dim, expected_candidates
        )

    def radius(self, level: int) -> float:
        if level >= self.exhaustive_level:
            return math.inf
        if level == self.cap_level:
            return self.cap
        return self.base * 2.0 ** (level / self.LEVELS_PER_DOUBLING)

    def suggested_level(self, num_candidates: Tensor, level: int) -> Tensor:
        """Level at which the candidate count would be closest to ``expected_candidates``."""
        # A (bipartite) receiver may have no candidate at all: count half a point.
        ratio = self.expected_candidates / num_candidates.double().clamp(min=0.5)
        step = torch.round(self.LEVELS_PER_DOUBLING * torch.log2(ratio) / self.dim).long()
        return (level + step).clamp(self.min_level, self.cap_level)

    def grown_level(self, level: Tensor, found: Tensor, wanted: Tensor) -> Tensor:
        """A larger level where about ``2 * wanted`` points are expected within the radius,
        given that ``found`` were within the current one; after the cap, the exhaustive level.
        """
        ratio = 2 * wanted.double() / found.double().clamp(min=0.5)
        step = torch.ceil(self.LEVELS_PER_DOUBLING * torch.log2(ratio) / self.dim).long()
        grown = torch.clamp(level + step.clamp(min=1), max=self.cap_level)
        return torch.where(level < self.cap_level, grown, self.exhaustive_level)


class _KnnSearch:
    """The search level of every receiver in :func:`knn_edges` and the rules that move it.

    A receiver not yet looked at may move to the level its local density suggests, up or down;
    afterwards only down until it is searched, and after a search that found too few neighbours
    only up. Levels therefore settle, and the exhaustive level always succeeds, so the search
    ends.
    """

    def __init__(self, plan: _KnnRadii, wanted: Tensor, exclude_self: bool) -> None:
        self.plan = plan
        self.wanted = wanted  # [M] neighbours each receiver must get
        self.exclude_self = exclude_self  # whether a receiver's own point is among candidates
        self.level = torch.zeros_like(wanted)
        self.unseen = torch.ones_like(wanted, dtype=torch.bool)
        self.may_shrink = torch.ones_like(wanted, dtype=torch.bool)

    def triage(
        self, group: Tensor, num_candidates: Tensor, current_level: int
    ) -> tuple[Tensor, Tensor]:
        """Decides, from their candidate counts, which receivers of ``group`` to search now.

        Returns:
            ``(search_mask, moved)``: a mask over ``group`` and the receivers sent to another
            level instead.
        """
        suggested = self.plan.suggested_level(num_candidates, current_level)
        move = (self.may_shrink[group] & (suggested < current_level)) | (
            self.unseen[group] & (suggested > current_level)
        )
        self.unseen[group] = False
        moving = group[move]
        self.level[moving] = suggested[move]
        self.may_shrink[moving[suggested[move] > current_level]] = False
        # Fewer candidates than wanted: no need to look, grow the radius right away.
        available = num_candidates - int(self.exclude_self)
        hopeless = ~move & (available < self.wanted[group])
        grown = self.grow(group[hopeless], available[hopeless])
        return ~(move | hopeless), torch.cat([moving, grown])

    def grow(self, receivers: Tensor, found: Tensor) -> Tensor:
        """Moves ``receivers``, which found only ``found`` neighbours, to a larger radius."""
        current = self.level[receivers]
        self.level[receivers] = self.plan.grown_level(current, found, self.wanted[receivers])
        self.may_shrink[receivers] = False
        return receivers

    def nearest(self, chunk_receivers: Tensor, local: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Selects neighbours among a chunk's pairs (sorted by receiver, then distance).

        Returns:
            ``(keep, incomplete, found)``: the pairs to keep (the first ``wanted`` of every
            receiver that found enough), the positions in ``chunk_receivers`` of the receivers
            that did not, and the number of pairs each receiver found.
        """
        num_receivers = chunk_receivers.numel()
        chunk_wanted = self.wanted.index_select(0, chunk_receivers)
        found = torch.bincount(local, minlength=num_receivers)
        complete = found >= chunk_wanted
        quota = torch.where(complete, chunk_wanted, 0).index_select(0, local)
        keep = torch.nonzero(_rank_within_receiver(local, num_receivers) < quota).squeeze(1)
        return keep, torch.nonzero(~complete).squeeze(1), found


def _assemble(
    pos: Tensor,
    pos_dst: Tensor,
    space: _Space,
    senders_out: list[Tensor],
    receivers_out: list[Tensor],
    displacement_out: list[Tensor],
) -> tuple[Tensor, Tensor]:
    """Concatenates chunk results; recomputes displacements with autograd if the positions
    (``pos`` or ``pos_dst``) need it."""
    needs_grad = (pos.requires_grad or pos_dst.requires_grad) and torch.is_grad_enabled()
    if not senders_out and not needs_grad:
        return _empty_result(pos)
    empty = torch.zeros(0, dtype=torch.long, device=pos.device)
    senders = torch.cat(senders_out) if senders_out else empty
    receivers = torch.cat(receivers_out) if receivers_out else empty
    if needs_grad:
        displacement = pos.index_select(0, senders) - pos_dst.index_select(0, receivers)
        displacement = minimum_image(displacement, space.box)
    else:
        displacement = torch.cat(displacement_out)
    return torch.stack([senders, receivers]), displacement


# Coordinates (and radius, box) whose largest magnitude lies outside [2^-_SCALE_RANGE,
# 2^_SCALE_RANGE] are searched at unit scale (squared float32 distances overflow near 1e19).
_SCALE_RANGE = 32


def _scale_factor(pos: Tensor, pos_dst: Tensor | None, box: Tensor | None, r: float = 0.0) -> float:
    """A power of two bringing the largest magnitude of the geometry near 1 when it is huge or
    tiny (scaling by a power of two is exact, so the neighbours do not change), else 1."""
    largest = max(float(pos.detach().abs().max()), abs(r))
    if pos_dst is not None and pos_dst.numel():
        largest = max(largest, float(pos_dst.detach().abs().max()))
    if box is not None:
        largest = max(largest, float(box.abs().max()))
    if largest == 0.0 or 2.0**-_SCALE_RANGE <= largest <= 2.0**_SCALE_RANGE:
        return 1.0
    # at most 2**1000 per step (2**1074 would overflow); the search recurses on the rest
    return math.ldexp(1.0, max(-1000, min(1000, -math.frexp(largest)[1])))


def _scaled(pos, pos_dst, box, factor: float):
    scale = lambda x: None if x is None else x.detach().double() * factor  # noqa: E731
    dtype = pos.dtype
    scaled = [scale(pos), scale(pos_dst), scale(box)]
    return [None if x is None else x.to(dtype) if i < 2 else x for i, x in enumerate(scaled)]


def _unscaled(found, factor: float, pos, pos_dst, box) -> tuple[Tensor, Tensor]:
    """The displacements of a search at scale ``factor`` back at the caller's scale (recomputed
    with autograd when the positions need it)."""
    edge_index, displacement = found
    senders, receivers = edge_index
    if (pos.requires_grad or (pos_dst is not None and pos_dst.requires_grad)) and (
        torch.is_grad_enabled()
    ):
        receivers_pos = pos if pos_dst is None else pos_dst
        delta = pos.index_select(0, senders) - receivers_pos.index_select(0, receivers)
        return edge_index, minimum_image(delta, None if box is None else box.to(pos.dtype))
    return edge_index, (displacement.double() / factor).to(pos.dtype)


def _empty_result(pos: Tensor) -> tuple[Tensor, Tensor]:
    edge_index = torch.empty((2, 0), dtype=torch.long, device=pos.device)
    return edge_index, pos.new_empty((0, pos.shape[1]))


def _unit_ball_volume(dim: int) -> float:
    return math.pi ** (dim / 2) / math.gamma(dim / 2 + 1)


def _check_pos(pos: Tensor) -> Tensor:
    if not isinstance(pos, Tensor):
        raise TypeError(f"pos must be a torch.Tensor, got {type(pos).__name__}")
    if not pos.is_floating_point():
        raise TypeError(f"pos must be a floating-point tensor, got dtype {pos.dtype}")
    if pos.dim() != 2 or pos.shape[1] == 0:
        raise ValueError(f"pos must have shape [N, d] with d >= 1, got {tuple(pos.shape)}")
    if not bool(torch.isfinite(pos).all()):
        raise ValueError("pos must contain only finite values")
    return pos


def _check_box(box: BoxLike | None, pos: Tensor) -> Tensor | None:
    """Box lengths as a float64 ``[d]`` tensor on the device of ``pos``."""
    if box is None:
        return None
    dim = pos.shape[1]
    if isinstance(box, bool) or (isinstance(box, (list, tuple)) and
                                 any(isinstance(v, bool) for v in box)):  # fmt: skip
        raise TypeError(f"box must be a number, a sequence or a tensor of lengths, got {box!r}")
    if isinstance(box, Tensor):
        if box.is_complex():
            raise TypeError("box must be real")
        lengths = box.detach().to(device=pos.device, dtype=torch.float64)
    else:
        try:
            lengths = torch.as_tensor(box, dtype=torch.float64, device=pos.device)
        except (TypeError, ValueError, RuntimeError) as error:
            raise TypeError(f"box must be a number, a sequence or a tensor, got {box!r}") from error
    if lengths.dim() == 0:
        lengths = lengths.expand(dim)
    if lengths.shape != (dim,):
        raise ValueError(f"box must be a scalar or have shape [{dim}], got {tuple(lengths.shape)}")
    if not bool((torch.isfinite(lengths) & (lengths > 0)).all()):
        raise ValueError(f"box lengths must be finite and > 0, got {lengths.tolist()}")
    return lengths.clone()


def _check_batch(
    batch: Tensor | None, pos: Tensor, name: str = "batch", pos_name: str = "pos"
) -> tuple[Tensor, int]:
    """Graph index per point, renumbered ``0..G-1`` (int64), and the number of graphs ``G``."""
    num_points = pos.shape[0]
    if batch is None:
        return torch.zeros(num_points, dtype=torch.long, device=pos.device), min(num_points, 1)
    batch = _validated_batch(batch, pos, name, pos_name)
    if num_points == 0:
        return batch, 0
    # Renumber so that gaps between graph ids cost nothing.
    graph_ids, graph = torch.unique_consecutive(batch, return_inverse=True)
    return graph, graph_ids.numel()


def _validated_batch(batch: Tensor, pos: Tensor, name: str, pos_name: str) -> Tensor:
    """``batch`` as int64 after checking type, shape, device, sign and order."""
    num_points = pos.shape[0]
    if not isinstance(batch, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(batch).__name__}")
    if batch.dtype == torch.bool or batch.is_floating_point() or batch.is_complex():
        raise TypeError(f"{name} must be an integer tensor, got dtype {batch.dtype}")
    if batch.shape != (num_points,):
        raise ValueError(f"{name} must have shape [{num_points}], got {tuple(batch.shape)}")
    if batch.device != pos.device:
        raise ValueError(f"{name} is on {batch.device} but {pos_name} on {pos.device}")
    batch = batch.long()
    if num_points == 0:
        return batch
    if bool((batch < 0).any()):
        raise ValueError(f"{name} must not contain negative graph ids")
    if bool((batch[1:] < batch[:-1]).any()):
        raise ValueError(f"{name} must be sorted in ascending order")
    return batch


def _check_graphs(
    batch: Tensor | None, pos: Tensor, batch_dst: Tensor | None, pos_dst: Tensor | None
) -> tuple[Tensor, Tensor, int]:
    """Graph index of every sender and every receiver (one numbering ``0..G-1``) and ``G``."""
    if pos_dst is None:
        if batch_dst is not None:
            raise ValueError("batch_dst needs pos_dst (the receivers default to pos and batch)")
        graph, num_graphs = _check_batch(batch, pos)
        return graph, graph, num_graphs
    if (batch is None) != (batch_dst is None):
        raise ValueError(
            "batch and batch_dst must be given together (graph ids of senders and receivers)"
        )
    if batch is None:
        graph = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
        graph_dst = torch.zeros(pos_dst.shape[0], dtype=torch.long, device=pos.device)
        return graph, graph_dst, 1
    batch = _validated_batch(batch, pos, "batch", "pos")
    batch_dst = _validated_batch(batch_dst, pos_dst, "batch_dst", "pos_dst")
    # One renumbering for both sides, so that equal ids keep meaning the same graph.
    graph_ids = torch.unique(torch.cat([batch, batch_dst]))
    graph = torch.searchsorted(graph_ids, batch)
    graph_dst = torch.searchsorted(graph_ids, batch_dst)
    return graph, graph_dst, max(graph_ids.numel(), 1)


def _check_pos_dst(pos_dst: Tensor | None, pos: Tensor) -> Tensor | None:
    if pos_dst is None:
        return None
    if not isinstance(pos_dst, Tensor):
        raise TypeError(f"pos_dst must be a torch.Tensor, got {type(pos_dst).__name__}")
    if not pos_dst.is_floating_point():
        raise TypeError(f"pos_dst must be a floating-point tensor, got dtype {pos_dst.dtype}")
    if pos_dst.dim() != 2 or pos_dst.shape[1] != pos.shape[1]:
        raise ValueError(
            f"pos_dst must have shape [M, {pos.shape[1]}] (the dimension of pos), got "
            f"{tuple(pos_dst.shape)}"
        )
    if pos_dst.dtype != pos.dtype:
        raise TypeError(f"pos_dst must have the dtype of pos ({pos.dtype}), got {pos_dst.dtype}")
    if pos_dst.device != pos.device:
        raise ValueError(f"pos_dst is on {pos_dst.device} but pos on {pos.device}")
    if not bool(torch.isfinite(pos_dst).all()):
        raise ValueError("pos_dst must contain only finite values")
    return pos_dst


def _describe(value) -> str:
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor"
    return type(value).__name__
