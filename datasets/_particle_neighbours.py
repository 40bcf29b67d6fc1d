"""Neighbour lists of the particle systems: cell-list pair search and the simulator's Verlet
list (a private part of :mod:`gtlib.datasets.particles`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from gtlib.attention.pattern import Pattern

if TYPE_CHECKING:
    from gtlib.datasets._particle_systems import _SoftDiscs


def radius_pairs(
    flat_pos: Tensor, radius: float, box_length: float | None, batch: Tensor | None
) -> Tensor:
    """``[2, E]`` pairs ``(j, i)`` with ``j < i`` within ``radius`` (cell lists of
    :meth:`gtlib.attention.Pattern.radius`, minimum image when ``box_length`` is given), each
    unordered pair once, sorted by ``i`` then ``j``; ``batch`` separates independent copies."""
    pattern = Pattern.radius(flat_pos.detach(), radius, box=box_length, batch=batch)
    edges = torch.stack([pattern.col, pattern.row])
    return edges[:, edges[0] < edges[1]].contiguous()


class _NeighbourCache:
    """Verlet list: pairs within ``cutoff + skin``, rebuilt once any particle moved ``skin / 2``.

    Every pair closer than the cutoff now was closer than ``cutoff + skin`` at the last build, so
    with the cutoff mask applied per step the forces equal those of a fresh search.
    """

    def __init__(self, system: _SoftDiscs, skin: float) -> None:
        self.system = system
        skin = max(0.0, skin)
        if system.box_length is not None:
            skin = min(skin, system.box_length / 2 - system.cutoff)
        self.skin = skin
        self.edges: Tensor | None = None
        self.reference: Tensor | None = None
        self.rebuilds = 0

    def invalidate(self) -> None:
        self.edges = None

    def forces(self, pos: Tensor) -> Tensor:
        system = self.system
        flat, batch, _ = system._flatten(pos)
        if self.edges is not None:
            moved = torch.linalg.vector_norm(system.minimum_image(flat - self.reference), dim=-1)
            if self.skin == 0.0 or float(moved.max()) > 0.5 * self.skin:
                self.edges = None
        if self.edges is None:
            self.edges = system._edges(flat, batch, system.cutoff + self.skin)
            self.reference = flat.clone()
            self.rebuilds += 1
        return system._forces_from_edges(flat, self.edges).reshape(pos.shape)
