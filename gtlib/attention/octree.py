r"""Point-cloud and token-set patterns: octree windows, relay tokens, cross-attention.

:meth:`Pattern.octree <gtlib.attention.Pattern.octree>` serialises the points of every cloud
along a z-order (Morton) curve, so that every octree cell is a contiguous run of points, and
cuts every cell into windows of at most ``window_size`` points. Windows are therefore
contiguous blocks of the serialised order, and a window pattern is a block pattern, which the
engine sends to dense ``scaled_dot_product_attention`` (the point of serialising, as in Point
Transformer V3 and OctFormer). Each level of the returned :class:`Octree` uses cells one octree
depth coarser than the previous one (growing windows), optionally shifted by half a cell (Swin),
in Cartesian ``(x, y, z)`` or cylindrical ``(r, theta, z)`` coordinates about a sensor origin
(HOTFormerLoc's cylindrical octree windows for spinning lidar).

Relay tokens (HOTFormerLoc, one per window) get their patterns from :class:`OctreeLevel`:
window points -> relay (:meth:`OctreeLevel.relay_gather`), relay <-> relay within a cloud
(:meth:`OctreeLevel.relay_global`), relay -> window points (:meth:`OctreeLevel.relay_scatter`),
and the joint blocks "window points + their relay" (:meth:`OctreeLevel.with_relays`).
:func:`cross_pattern` (``Pattern.cross``) is all-to-all bipartite attention between two token
sets within each graph (CrossViT's CLS token of one branch over the other branch's tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from gtlib.attention import builders
from gtlib.validation import check_bool, check_int, describe

__all__ = ["BlockGroups", "Octree", "OctreeLevel", "cross_pattern", "morton_code", "octree"]

# Points are quantised to QBITS bits per axis; a shift adds up to half a cell, so the codes
# interleave QBITS + 1 bits per axis (at most 21 fit three axes into an int64).
QBITS = 19
MAX_DEPTH = QBITS - 1


def morton_code(coords: Tensor) -> Tensor:
    """Interleaves the bits of ``[N, 3]`` non-negative int64 coordinates (< 2**21 each) into
    z-order codes ``[N]``: bit ``b`` of axis ``a`` goes to bit ``3 * b + (2 - a)``."""
    out = torch.zeros(coords.size(0), dtype=torch.long, device=coords.device)
    for axis in range(3):
        v = coords[:, axis] & 0x1FFFFF
        v = (v | (v << 32)) & 0x1F00000000FFFF
        v = (v | (v << 16)) & 0x1F0000FF0000FF
        v = (v | (v << 8)) & 0x100F00F00F00F00F
        v = (v | (v << 4)) & 0x10C30C30C30C30C3
        v = (v | (v << 2)) & 0x1249249249249249
        out |= v << (2 - axis)
    return out


class BlockGroups:
    """A block pattern (every node in exactly one all-to-all block) in the order the caller
    keeps its inputs, run through :func:`~gtlib.attention.attend` (the dense backend gathers
    all blocks once, runs one SDPA per block size and scatters once, so many block sizes cost
    no more than one).

    ``outer``: ``[N]`` caller index of every node of ``pattern`` (e.g. a serialisation
    ``perm``): the blocks are re-expressed in caller indices, so inputs and output stay in the
    caller's order and the serialisation costs no gather of its own.
    """

    def __init__(
        self, pattern, outer: Tensor | None = None, windows: tuple[Tensor, Tensor] | None = None
    ) -> None:
        from gtlib.attention.backends.windows import register_layout
        from gtlib.attention.pattern import Pattern

        if pattern.blocks is None:
            raise ValueError("BlockGroups needs a block pattern")
        if sum(block.numel() for block in pattern.blocks) != pattern.num_dst:
            raise ValueError("BlockGroups needs every node in exactly one block")
        blocks = pattern.blocks if outer is None else [outer[b] for b in pattern.blocks]
        n = pattern.num_dst
        self.pattern = Pattern(None, None, n, n, blocks=list(blocks))
        self.pattern._unique_edges = True
        if windows is not None:  # the blocks as windows in serial order, for the window kernel
            ptr, index = windows
            register_layout(self.pattern, ptr, index if outer is None else outer[index])

    def attend(self, value: Tensor, query: Tensor, key: Tensor, dropout: float = 0.0) -> Tensor:
        """Softmax dot-product attention over the blocks: ``[N, H, C]`` inputs -> ``[N, H, C]``."""
        from gtlib.attention.engine import attend

        return attend(self.pattern, value, query=query, key=key, dropout=dropout, mode="dense")


@dataclass(eq=False)
class OctreeLevel:
    r"""One level of an :class:`Octree`: the points' windows in octree cells of one depth.

    Indices of the patterns refer to the *serialised* order: point ``t`` of the serialised
    order is the caller's point ``perm[t]`` (``x_s = x[perm]``, ``x = x_s[inverse]``), and the
    windows are the contiguous runs ``window_ptr[w]:window_ptr[w + 1]`` of that order, each
    inside one octree cell of depth :attr:`depth` (of side ``2**-depth`` of the normalised cloud),
    of one cloud, with at most ``window_size`` points. Relay token ``w`` belongs to window ``w``.

    Attributes:
        depth: octree depth of the cells the windows lie in.
        shift: whether the cells are shifted by half a cell along every axis.
        perm: ``[N]`` caller index of every serialised point.
        inverse: ``[N]`` serialised position of every caller point.
        cell: ``[N]`` int64 id of the cell of every caller point (equal within a cloud iff same
            cell; the z-order code of the cell's corner).
        window: ``[N]`` window of every caller point.
        window_ptr: ``[W + 1]`` window offsets in the serialised order.
        window_batch: ``[W]`` cloud of every window (sorted ascending).
        pattern: the window attention, a block pattern over the ``N`` serialised points.
    """

    depth: int
    shift: bool
    perm: Tensor
    inverse: Tensor
    cell: Tensor
    window: Tensor
    window_ptr: Tensor
    window_batch: Tensor
    pattern: object  # Pattern (imported lazily: pattern.py imports this module's callers)
    _relay_cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_points(self) -> int:
        return self.perm.numel()

    @property
    def num_windows(self) -> int:
        return self.window_ptr.numel() - 1

    @property
    def window_sizes(self) -> Tensor:
        return self.window_ptr[1:] - self.window_ptr[:-1]

    def serialise(self, x: Tensor) -> Tensor:
        """``x [N, ...]`` in the caller's order -> the serialised order."""
        return x.index_select(0, self.perm)

    def deserialise(self, x: Tensor) -> Tensor:
        """``x [N, ...]`` in the serialised order -> the caller's order."""
        return x.index_select(0, self.inverse)

    def _serial_window(self) -> Tensor:
        return builders.ptr_to_row(self.window_ptr, self.num_points)

    def relay_gather(self):
        """Window points -> relay: relay ``w`` (receiver) attends to the points of window
        ``w`` (senders, serialised order). ``num_src = N``, ``num_dst = W``."""
        from gtlib.attention.pattern import Pattern

        if "gather" not in self._relay_cache:
            n = self.num_points
            col = torch.arange(n, device=self.perm.device)
            pattern = Pattern(self.window_ptr, col, n, self.num_windows, row=self._serial_window())
            pattern._unique_edges = True
            self._relay_cache["gather"] = pattern
        return self._relay_cache["gather"]

    def relay_global(self):
        """Relay <-> relay: every relay attends to all relays of its cloud (itself included),
        a block pattern over the ``W`` relays."""
        from gtlib.attention.pattern import Pattern

        if "global" not in self._relay_cache:
            self._relay_cache["global"] = Pattern.full(self.window_batch, device=self.perm.device)
        return self._relay_cache["global"]

    def relay_scatter(self):
        """Relay -> window points: serialised point ``t`` (receiver) attends to the relay of its
        window (sender). ``num_src = W``, ``num_dst = N``."""
        from gtlib.attention.pattern import Pattern

        if "scatter" not in self._relay_cache:
            n = self.num_points
            ptr = torch.arange(n + 1, device=self.perm.device)
            row = torch.arange(n, device=self.perm.device)
            pattern = Pattern(ptr, self._serial_window(), self.num_windows, n, row=row)
            pattern._unique_edges = True
            self._relay_cache["scatter"] = pattern
        return self._relay_cache["scatter"]

    def window_groups(self, relays: bool = False, caller_order: bool = False) -> BlockGroups:
        """:attr:`pattern` (or :meth:`with_relays` when ``relays``) as :class:`BlockGroups`,
        the fast way to run it when windows have many sizes. With ``caller_order`` (windows
        only) its inputs and output are in the caller's point order (the serialisation is
        folded into its one gather). Cached."""
        if relays and caller_order:
            raise ValueError("caller_order applies to the windows alone (relays=False)")
        key = ("groups", relays, caller_order)
        if key not in self._relay_cache:
            pattern = self.with_relays() if relays else self.pattern
            outer = self.perm if caller_order else None
            self._relay_cache[key] = BlockGroups(pattern, outer, self._window_layout(relays))
        return self._relay_cache[key]

    def _window_layout(self, relays: bool) -> tuple[Tensor, Tensor]:
        """The windows in serial order as ``(ptr, index)``; with ``relays`` every window is
        followed by its relay token ``N + w``."""
        n, device = self.num_points, self.perm.device
        if not relays:
            return self.window_ptr, torch.arange(n, device=device)
        num_windows = self.num_windows
        ptr = self.window_ptr + torch.arange(num_windows + 1, device=device)
        index = torch.empty(n + num_windows, dtype=torch.long, device=device)
        relay_slot = ptr[1:] - 1
        is_point = torch.ones(n + num_windows, dtype=torch.bool, device=device)
        is_point[relay_slot] = False
        index[is_point] = torch.arange(n, device=device)
        index[relay_slot] = n + torch.arange(num_windows, device=device)
        return ptr, index

    def with_relays(self):
        """Windows with their relay tokens: a block pattern over ``N + W`` tokens (the ``N``
        serialised points, then the ``W`` relays), each block being the points of window ``w``
        and relay ``N + w``, all-to-all (HOTFormerLoc's window attention with the relay token
        appended)."""
        from gtlib.attention.backends.windows import register_layout
        from gtlib.attention.pattern import Pattern

        if "joint" not in self._relay_cache:
            n, num_windows = self.num_points, self.num_windows
            blocks = _window_blocks(self.window_ptr, extra=n)
            pattern = Pattern(None, None, n + num_windows, n + num_windows, blocks=blocks,
                              device=self.perm.device)  # fmt: skip
            pattern._unique_edges = True
            register_layout(pattern, *self._window_layout(relays=True))
            self._relay_cache["joint"] = pattern
        return self._relay_cache["joint"]


@dataclass(eq=False)
class Octree:
    """The levels of :meth:`Pattern.octree <gtlib.attention.Pattern.octree>`.

    Attributes:
        levels: one :class:`OctreeLevel` per level, finest cells first.
        batch: ``[N]`` cloud of every point (caller order).
        num_clouds: number of clouds (``max(batch) + 1``).
        window_size: the largest window.
        cylindrical: whether cells are boxes in ``(r, theta, z)`` about ``origin``.
    """

    levels: list[OctreeLevel]
    batch: Tensor
    num_clouds: int
    window_size: int
    cylindrical: bool

    def __len__(self) -> int:
        return len(self.levels)

    def __getitem__(self, index: int) -> OctreeLevel:
        return self.levels[index]

    def __iter__(self):
        return iter(self.levels)


# ---------------------------------------------------------------------- construction
def octree(
    pos: Tensor,
    window_size: int,
    levels: int = 1,
    batch: Tensor | None = None,
    shift: bool | list[bool] = False,
    cylindrical: bool = False,
    origin: Tensor | None = None,
    depth: int | None = None,
) -> Octree:
    """See :meth:`Pattern.octree <gtlib.attention.Pattern.octree>`."""
    if not isinstance(pos, Tensor) or not pos.dtype.is_floating_point:
        raise TypeError(f"pos must be a floating-point tensor [N, 3], got {describe(pos)}")
    if pos.dim() != 2 or pos.size(1) != 3:
        raise ValueError(f"pos must have shape [N, 3], got {list(pos.shape)}")
    if pos.numel() and not bool(torch.isfinite(pos).all()):
        raise ValueError("pos must hold finite coordinates")
    window_size = check_int(window_size, "window_size", minimum=1)
    levels = check_int(levels, "levels", minimum=1)
    cylindrical = check_bool(cylindrical, "cylindrical")
    shifts = _shifts(shift, levels)
    n, device = pos.size(0), pos.device
    if batch is None:
        batch = torch.zeros(n, dtype=torch.long, device=device)
    else:
        builders.check_batch(batch)
        if batch.numel() != n:
            raise ValueError(f"batch must have one entry per point ({n}), got {batch.numel()}")
        if batch.device != device:
            raise ValueError(f"batch is on {batch.device} but pos on {device}")
    num_clouds = int(batch.max()) + 1 if n else 0
    if origin is not None and not cylindrical:
        raise ValueError("origin is only used with cylindrical=True")
    unit = _normalise(pos.detach(), batch, num_clouds, cylindrical, origin)
    quantised = (unit * (1 << QBITS)).long().clamp_(0, (1 << QBITS) - 1)
    base_code = None
    if depth is None:
        base_code = morton_code(quantised)
        depth = _default_depth(base_code, batch, window_size, levels)
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise TypeError(f"depth must be an int, got {depth!r}")
    if depth > MAX_DEPTH or depth - levels + 1 < 0:
        raise ValueError(f"depth must lie in [levels - 1 = {levels - 1}, {MAX_DEPTH}], got {depth}")
    out = []
    for level in range(levels):
        level_depth = depth - level
        if shifts[level]:
            offset = 1 << (QBITS - level_depth - 1) if level_depth < QBITS else 0
            code = morton_code(quantised + offset)
        else:
            if base_code is None:
                base_code = morton_code(quantised)
            code = base_code
        out.append(_level(code, batch, level_depth, shifts[level], window_size))
    return Octree(out, batch, num_clouds, window_size, cylindrical)


def _level(code: Tensor, batch: Tensor, depth: int, shift: bool, window_size: int) -> OctreeLevel:
    from gtlib.attention.pattern import Pattern

    n, device = code.numel(), code.device
    # Cells of this depth; with a shift the codes have QBITS + 1 bits per axis.
    cell = code >> (3 * (QBITS - depth))
    # Serialise by (cloud, z-order code): two stable sorts.
    order = torch.sort(code, stable=True).indices
    perm = order[torch.sort(batch[order], stable=True).indices]
    inverse = torch.empty_like(perm)
    inverse[perm] = torch.arange(n, device=device)
    cell_s, batch_s = cell[perm], batch[perm]
    new_group = torch.ones(n, dtype=torch.bool, device=device)
    if n > 1:
        new_group[1:] = (cell_s[1:] != cell_s[:-1]) | (batch_s[1:] != batch_s[:-1])
    group = torch.cumsum(new_group, 0) - 1
    group_start = torch.nonzero(new_group).view(-1)
    num_groups = group_start.numel()
    group_size = torch.diff(group_start, append=torch.tensor([n], device=device))
    # Balanced chunks: a cell of n_g points gives m_g = ceil(n_g / w) windows of sizes
    # floor(n_g / m_g) or ceil(n_g / m_g) <= w.
    chunks = (group_size + window_size - 1) // window_size
    chunk_offset = torch.cumsum(chunks, 0) - chunks
    within = torch.arange(n, device=device) - group_start[group]
    chunk = within * chunks[group] // group_size[group]
    window_s = chunk_offset[group] + chunk
    num_windows = int(chunks.sum()) if num_groups else 0
    window_ptr = builders.index_to_ptr(window_s, num_windows)
    window_batch = batch_s[window_ptr[:-1]] if num_windows else batch_s.new_zeros(0)
    blocks = _window_blocks(window_ptr)
    if blocks:
        pattern = Pattern(None, None, n, n, blocks=blocks)
    else:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        pattern = Pattern(torch.zeros(n + 1, dtype=torch.long, device=device), empty, n, n,
                          row=empty, blocks=[])  # fmt: skip
    pattern._unique_edges = True
    if blocks:
        from gtlib.attention.backends.windows import register_layout

        register_layout(pattern, window_ptr, None)
    return OctreeLevel(
        depth=depth,
        shift=shift,
        perm=perm,
        inverse=inverse,
        cell=cell,
        window=window_s[inverse],
        window_ptr=window_ptr,
        window_batch=window_batch,
        pattern=pattern,
    )


def _window_blocks(window_ptr: Tensor, extra: int | None = None) -> list[Tensor]:
    """Blocks of contiguous windows grouped by size; with ``extra`` every block also holds its
    relay token ``extra + w``."""
    starts, sizes = window_ptr[:-1], window_ptr[1:] - window_ptr[:-1]
    blocks = []
    for size in torch.unique(sizes).tolist():
        chosen = torch.nonzero(sizes == size).view(-1)
        block = starts[chosen][:, None] + torch.arange(size, device=window_ptr.device)
        if extra is not None:
            block = torch.cat([block, extra + chosen[:, None]], dim=1)
        blocks.append(block)
    return blocks


def _normalise(
    pos: Tensor, batch: Tensor, num_clouds: int, cylindrical: bool, origin: Tensor | None
) -> Tensor:
    """Coordinates in ``[0, 1]`` per cloud: Cartesian by the cloud's bounding cube (one scale
    for all axes), cylindrical ``(r / r_max, (theta + pi) / 2 pi, (z - z_min) / z_extent)``."""
    if pos.numel() == 0:
        return pos.new_zeros(0, 3, dtype=torch.float64)
    pos = pos.double()
    if cylindrical:
        if origin is None:
            origin = pos.new_zeros(3)
        if not isinstance(origin, Tensor) or not origin.dtype.is_floating_point:
            raise TypeError(f"origin must be a floating-point tensor [3] or [B, 3], got "
                            f"{describe(origin)}")  # fmt: skip
        if origin.shape != (3,) and origin.shape != (num_clouds, 3):
            raise ValueError(
                f"origin must have shape [3] or [num_clouds={num_clouds}, 3], got "
                f"{list(origin.shape)}"
            )
        origin = origin.detach().to(pos.device, torch.float64)
        rel = pos - (origin if origin.dim() == 1 else origin[batch])
        r = torch.hypot(rel[:, 0], rel[:, 1])
        theta = torch.atan2(rel[:, 1], rel[:, 0])
        r_max = _per_cloud(r, batch, num_clouds, "amax")[batch]
        z_min = _per_cloud(rel[:, 2], batch, num_clouds, "amin")[batch]
        z_ext = _per_cloud(rel[:, 2], batch, num_clouds, "amax")[batch] - z_min
        return torch.stack(
            [
                r / torch.where(r_max > 0, r_max, 1.0),
                (theta + math.pi) / (2 * math.pi),
                (rel[:, 2] - z_min) / torch.where(z_ext > 0, z_ext, 1.0),
            ],
            dim=1,
        ).clamp_(0.0, 1.0)
    low = torch.stack([_per_cloud(pos[:, a], batch, num_clouds, "amin") for a in range(3)], 1)
    high = torch.stack([_per_cloud(pos[:, a], batch, num_clouds, "amax") for a in range(3)], 1)
    extent = (high - low).amax(dim=1)
    extent = torch.where(extent > 0, extent, 1.0)
    return ((pos - low[batch]) / extent[batch, None]).clamp_(0.0, 1.0)


def _per_cloud(values: Tensor, batch: Tensor, num_clouds: int, reduce: str) -> Tensor:
    out = values.new_zeros(num_clouds)
    return out.scatter_reduce(0, batch, values, reduce, include_self=False)


def _default_depth(code: Tensor, batch: Tensor, window_size: int, levels: int) -> int:
    """The deepest depth at which the occupied cells hold ``window_size / 2`` points on
    average (binary search: occupancy only grows as cells coarsen), at least ``levels - 1``."""
    n = code.numel()
    if n == 0:
        return max(levels - 1, 1)
    # Sorting by (cloud, code) sorts by (cloud, cell) at every depth: count the changes.
    order = torch.sort(code, stable=True).indices
    order = order[torch.sort(batch[order], stable=True).indices]
    code, batch = code[order], batch[order]
    same_cloud = batch[1:] == batch[:-1]
    low, high = 0, MAX_DEPTH  # occupancy(low) >= target always (one cell per cloud)
    target = max(window_size / 2, 1.0)
    while low < high:
        mid = (low + high + 1) // 2
        cell = code >> (3 * (QBITS - mid))
        cells = n - int(((cell[1:] == cell[:-1]) & same_cloud).sum())
        if n / cells >= target:
            low = mid
        else:
            high = mid - 1
    return int(min(max(low, levels - 1, 1), MAX_DEPTH))


def _shifts(shift, levels: int) -> list[bool]:
    if isinstance(shift, bool):
        return [shift] * levels
    if isinstance(shift, (list, tuple)):
        if len(shift) != levels or not all(isinstance(s, bool) for s in shift):
            raise ValueError(
                f"shift must be a bool or {levels} bools (one per level), got {shift!r}"
            )
        return list(shift)
    raise TypeError(f"shift must be a bool or a list of bools, got {shift!r}")


# ---------------------------------------------------------------------- token sets
def cross_pattern(batch_src: Tensor, batch_dst: Tensor):
    """See :meth:`Pattern.cross <gtlib.attention.Pattern.cross>`."""
    from gtlib.attention.pattern import Pattern

    for name, b in (("batch_src", batch_src), ("batch_dst", batch_dst)):
        if not isinstance(b, Tensor) or b.dtype != torch.long:
            raise TypeError(f"{name} must be an int64 tensor of graph ids, got {describe(b)}")
        if b.dim() != 1:
            raise ValueError(f"{name} must be 1-D, got shape {list(b.shape)}")
        if b.numel() and int(b.min()) < 0:
            raise ValueError(f"{name} must hold non-negative graph ids")
    if batch_src.device != batch_dst.device:
        raise ValueError(f"batch_src is on {batch_src.device} but batch_dst on {batch_dst.device}")
    num_src, num_dst, device = batch_src.numel(), batch_dst.numel(), batch_src.device
    num_graphs = max(int(batch_src.max()) + 1 if num_src else 0,
                     int(batch_dst.max()) + 1 if num_dst else 0)  # fmt: skip
    # Senders grouped by graph (ascending index within a graph).
    src_order = torch.sort(batch_src, stable=True).indices
    src_count = torch.bincount(batch_src, minlength=num_graphs)
    src_start = torch.cumsum(src_count, 0) - src_count
    degree = src_count[batch_dst] if num_dst else src_count.new_zeros(0)
    ptr = torch.zeros(num_dst + 1, dtype=torch.long, device=device)
    ptr[1:] = torch.cumsum(degree, 0)
    num_edges = int(ptr[-1])
    row = torch.repeat_interleave(torch.arange(num_dst, device=device), degree,
                                  output_size=num_edges)  # fmt: skip
    offset = torch.arange(num_edges, device=device) - ptr[:-1][row]
    col = src_order[src_start[batch_dst][row] + offset] if num_edges else row.clone()
    pattern = Pattern(ptr, col, num_src, num_dst, row=row)
    pattern._unique_edges = True
    return pattern
