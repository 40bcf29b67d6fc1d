r"""Active particle systems, a restartable simulator writing HDF5, and a PyG dataset of snapshots.

Models (Boffi & Vanden-Eijnden, "Deep learning probability flows and entropy production rates in
active matter", PNAS 2024; every variable even under time reversal, :math:`k_B = 1`):

* :class:`ActiveOUParticles` -- active Ornstein–Uhlenbeck particles (AOUP) with soft repulsion,

  .. math::
      dx_i &= \Big[v_0 g_i + k \sum_{j \neq i} F(x_i - x_j) - A x_i\Big] dt
              + \sqrt{2\varepsilon}\, dW_i, \\
      dg_i &= -\gamma g_i\, dt + \sqrt{2\gamma}\, dB_i, \qquad
      F(r) = \mathrm{softplus}_\beta(2 r_0 - |r|)\, \frac{r}{|r|},\quad
      \mathrm{softplus}_\beta(z) = \tfrac{1}{\beta}\log(1 + e^{\beta z}),

  in a periodic box :math:`[-w, w)^d` (:math:`L = 2w`, minimum image) or in free space.
* :class:`ActiveBrownianParticles` -- active Brownian particles (ABP) in :math:`d = 2` with an
  orientation angle :math:`\theta_i` diffusing on the circle.
* :class:`LinearSDE` -- :math:`dX = AX\,dt + \sqrt{2D}\,dW` with exact stationary sampling and the
  exact Ornstein–Uhlenbeck transition (defined in :mod:`gtlib.entropy.reference`, re-exported).

State layout. A snapshot of ``N`` particles in ``d`` dimensions is ``pos [N, d]`` and
``g [N, d]`` (self-propulsion); every function also takes a batch ``[B, N, d]`` (any leading
dimensions). The flat coordinate vector used by :mod:`gtlib.entropy` is per particle
``[x_i (d values), g_i (d values)]``: ``state [..., N, 2d]`` (:func:`to_state` /
:func:`from_state`), flattened particle-major to ``[..., N * 2d]`` when an estimator needs one
vector; the matching diagonal of :math:`D` is :attr:`ActiveOUParticles.flat_diffusion`.

Simulation (:func:`simulate`): Euler–Maruyama for ``x`` and the exact Ornstein–Uhlenbeck update
for ``g`` (:math:`g \leftarrow e^{-\gamma\,dt} g + \sqrt{1 - e^{-2\gamma\,dt}}\,\zeta`), pair
forces over cell-list neighbours (:meth:`gtlib.attention.Pattern.radius`) kept in a Verlet list
with a skin. Results go to HDF5 atomically, with checkpoints that make an interrupted run resume
to exactly the same numbers as an uninterrupted one.

HDF5 layout (written by :func:`simulate`, read by :class:`ParticleDataset` and
:func:`load_trajectory`)::

    /pos   [S, B, N, d]   positions, wrapped into [-w, w) when periodic
    /g     [S, B, N, d]   self-propulsion (ABP: unit orientation vectors e(theta))
    /time  [S]            time of each snapshot (burn-in included)
    attrs: system (class name), parameters (JSON), every parameter by name, box_length (NaN in
           free space), dim, num_particles, dt, seed, burn_in, spacing, n_snapshots,
           n_trajectories, run_signature, complete
    Every data set carries a Fletcher-32 checksum (chunks of one snapshot), checked on read.

An unfinished run keeps its snapshots as raw bytes in ``out + ".partial"`` and its integrator
state in the sidecar ``out + ".partial.state"`` (see :func:`simulate`).
"""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import h5py
import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data, Dataset

from gtlib.attention.neighbors import minimum_image
from gtlib.attention.pattern import Pattern
from gtlib.entropy.reference import LinearSDE
from gtlib.io import (
    HDF5_ERRORS,
    HDF5_LIBVER,
    atomic_torch_save,
    atomic_write,
    hdf5_member,
    read_hdf5,
    remove_stale_temporaries,
)
from gtlib.validation import renamed_arguments

__all__ = [
    "ActiveBrownianParticles",
    "ActiveOUParticles",
    "LinearSDE",
    "ParticleDataset",
    "from_state",
    "load_trajectory",
    "simulate",
    "softplus_force_cutoff",
    "to_state",
]

# Default force tolerance: the cutoff is where the pair force magnitude falls below it.
DEFAULT_FORCE_TOLERANCE = 1e-8
# Default Verlet skin of the simulator, in units of r0 (fastest in timings at phi = 0.55).
DEFAULT_SKIN = 0.5


# ------------------------------------------------------------------------------------------------
# State layout
def to_state(pos: Tensor, g: Tensor) -> Tensor:
    """Concatenates positions and self-propulsion per particle: ``[..., N, 2d]`` = ``[x_i, g_i]``.

    Shapes:
        pos, g: ``[..., N, d]`` (same shape) -> ``[..., N, 2d]``.
    """
    if not isinstance(pos, Tensor) or not isinstance(g, Tensor):
        raise TypeError("`pos` and `g` must be torch.Tensors")
    if pos.shape != g.shape or pos.dim() < 2:
        raise ValueError(
            f"`pos` and `g` must have the same shape [..., N, d], got {tuple(pos.shape)} and "
            f"{tuple(g.shape)}"
        )
    return torch.cat([pos, g], dim=-1)


def from_state(state: Tensor) -> tuple[Tensor, Tensor]:
    """Splits ``state [..., N, 2d]`` back into ``(pos [..., N, d], g [..., N, d])``."""
    if not isinstance(state, Tensor):
        raise TypeError(f"`state` must be a torch.Tensor, got {type(state).__name__}")
    if state.dim() < 2 or state.shape[-1] % 2 != 0 or state.shape[-1] == 0:
        raise ValueError(f"`state` must have shape [..., N, 2d], got {tuple(state.shape)}")
    d = state.shape[-1] // 2
    return state[..., :d], state[..., d:]


# ------------------------------------------------------------------------------------------------
# Argument checks
def _int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"`{name}` must be an int, got {type(value).__name__}")
    if int(value) < minimum:
        raise ValueError(f"`{name}` must be >= {minimum}, got {value}")
    return int(value)


def _real(value: Any, name: str, *, positive: bool = False, nonnegative: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value}")
    if positive and value <= 0.0:
        raise ValueError(f"`{name}` must be > 0, got {value}")
    if nonnegative and value < 0.0:
        raise ValueError(f"`{name}` must be >= 0, got {value}")
    return value


def softplus_force_cutoff(
    beta: float, r0: float, tolerance: float = DEFAULT_FORCE_TOLERANCE
) -> float:
    r"""Distance beyond which the soft repulsion is below ``tolerance``.

    For :math:`r > 2r_0`, :math:`\mathrm{softplus}_\beta(2r_0 - r) < e^{-\beta(r - 2r_0)}/\beta`,
    so the force magnitude is below :math:`\tau` for
    :math:`r \geq r_c = 2 r_0 + \log(1/(\beta\tau))/\beta` (never below :math:`2r_0`). Its
    derivative there, :math:`\sigma(\beta(2r_0 - r_c)) < \beta\tau`, bounds the truncation error of
    the divergence. With :math:`\beta = 7.5`, :math:`r_0 = 1`, :math:`\tau = 10^{-8}`:
    :math:`r_c \approx 4.19`.
    """
    beta = _real(beta, "beta", positive=True)
    r0 = _real(r0, "r0", positive=True)
    tolerance = _real(tolerance, "tolerance", positive=True)
    return 2.0 * r0 + max(0.0, math.log(1.0 / (beta * tolerance)) / beta)


def _renamed_attribute(cls: type, old: str, new: str) -> None:
    """The deprecation warning of an attribute renamed in the one vocabulary."""
    warnings.warn(
        f"{cls.__name__}.{old} is deprecated, use {cls.__name__}.{new}",
        FutureWarning,
        stacklevel=3,
    )


def _ball_volume(dim: int) -> float:
    return math.pi ** (dim / 2) / math.gamma(dim / 2 + 1)


# ------------------------------------------------------------------------------------------------
# Soft discs: geometry and pair forces shared by the AOUP and ABP models
class _SoftDiscs:
    """Periodic (or free) box, soft-repulsion pair forces and neighbour search."""

    dim: int
    num_particles: int
    k: float
    beta: float
    r0: float
    trap: float
    cutoff: float
    box_length: float | None

    def _setup_geometry(
        self,
        num_particles: Any,
        packing_fraction: Any,
        box_length: Any,
        dim: int,
        k: Any,
        beta: Any,
        r0: Any,
        trap: Any,
        cutoff: Any,
    ) -> None:
        self.num_particles = _int(num_particles, "num_particles")
        self.dim = dim
        self.k = _real(k, "k", nonnegative=True)
        self.beta = _real(beta, "beta", positive=True)
        self.r0 = _real(r0, "r0", positive=True)
        self.trap = _real(trap, "trap", nonnegative=True)
        if packing_fraction is not None and box_length is not None:
            raise ValueError("give at most one of `packing_fraction` and `box_length`")
        if packing_fraction is not None:
            phi = _real(packing_fraction, "packing_fraction")
            if not 0.0 < phi < 1.0:
                raise ValueError(f"`packing_fraction` must lie in (0, 1), got {phi}")
            volume = self.num_particles * _ball_volume(dim) * self.r0**dim / phi
            self.box_length = volume ** (1.0 / dim)
        elif box_length is not None:
            self.box_length = _real(box_length, "box_length", positive=True)
        else:
            self.box_length = None
        if cutoff is None:
            self.cutoff = softplus_force_cutoff(self.beta, self.r0)
        else:
            self.cutoff = _real(cutoff, "cutoff", positive=True)
        if self.box_length is not None and self.cutoff > self.box_length / 2:
            raise ValueError(
                f"`cutoff`={self.cutoff:.4g} exceeds half the box length {self.box_length:.4g}: "
                "the minimum image would be ambiguous; use more particles, a larger box or a "
                "smaller cutoff"
            )

    # -------------------------------------------------------------- geometry
    @property
    def packing_fraction(self) -> float | None:
        r""":math:`\phi = N V_d r_0^d / L^d` (:math:`V_2 = \pi`), ``None`` in free space."""
        if self.box_length is None:
            return None
        return (
            self.num_particles
            * _ball_volume(self.dim)
            * self.r0**self.dim
            / self.box_length ** (self.dim)
        )

    @property
    def box(self) -> Tensor | None:
        """Box lengths ``[d]`` (float64), or ``None`` in free space."""
        if self.box_length is None:
            return None
        return torch.full((self.dim,), self.box_length, dtype=torch.float64)

    def wrap(self, pos: Tensor) -> Tensor:
        """Wraps positions into ``[-w, w)^d`` (identity in free space)."""
        if self.box_length is None:
            return pos
        L = self.box_length
        return pos - L * torch.floor((pos + 0.5 * L) / L)

    def minimum_image(self, delta: Tensor) -> Tensor:
        r""":math:`\Delta - L\,\mathrm{rint}(\Delta / L)` (identity in free space): the
        library's convention, :func:`gtlib.attention.neighbors.minimum_image`."""
        return minimum_image(delta, self.box_length)

    # -------------------------------------------------------------- validation
    def _check_pos(self, pos: Any, name: str = "pos") -> Tensor:
        if not isinstance(pos, Tensor):
            raise TypeError(f"`{name}` must be a torch.Tensor, got {type(pos).__name__}")
        if not pos.is_floating_point():
            raise TypeError(f"`{name}` must be a floating-point tensor, got {pos.dtype}")
        n, d = self.num_particles, self.dim
        if pos.dim() < 2 or tuple(pos.shape[-2:]) != (n, d):
            raise ValueError(
                f"`{name}` must have shape [..., {n}, {d}] (num_particles, dim), "
                f"got {tuple(pos.shape)}"
            )
        if not bool(torch.isfinite(pos).all()):
            raise ValueError(f"`{name}` contains NaN or infinite values")
        return pos

    def _check_pair(self, pos: Any, g: Any) -> tuple[Tensor, Tensor]:
        pos = self._check_pos(pos, "pos")
        g = self._check_pos(g, "g")
        if pos.shape != g.shape:
            raise ValueError(
                f"`pos` and `g` must have the same shape, got {tuple(pos.shape)} and "
                f"{tuple(g.shape)}"
            )
        return pos, g

    # -------------------------------------------------------------- forces
    def _magnitude(self, r: Tensor) -> Tensor:
        z = self.beta * (2.0 * self.r0 - r)
        return torch.logaddexp(torch.zeros_like(z), z) / self.beta

    def _edges(self, flat_pos: Tensor, batch: Tensor | None, radius: float) -> Tensor:
        """``[2, E]`` pairs ``(j, i)`` with ``j < i`` within ``radius`` (cell lists, minimum
        image), each unordered pair once, sorted by ``i`` then ``j``."""
        pattern = Pattern.radius(flat_pos.detach(), radius, box=self.box_length, batch=batch)
        edges = torch.stack([pattern.col, pattern.row])
        return edges[:, edges[0] < edges[1]].contiguous()

    def _edge_geometry(self, flat_pos: Tensor, edges: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x_i - x_j`` (minimum image), ``|x_i - x_j|`` and the within-cutoff mask per pair."""
        delta = flat_pos.index_select(0, edges[1]) - flat_pos.index_select(0, edges[0])
        delta = self.minimum_image(delta)
        r = torch.linalg.vector_norm(delta, dim=-1)
        return delta, r, r <= self.cutoff

    def _forces_from_edges(self, flat_pos: Tensor, edges: Tensor) -> Tensor:
        """Pair forces, each pair computed once and applied to both particles (F is odd)."""
        delta, r, inside = self._edge_geometry(flat_pos, edges)
        scale = torch.where(inside, self._magnitude(r) / r, torch.zeros_like(r))
        pair = scale[:, None] * delta
        out = torch.zeros_like(flat_pos).index_add(0, edges[1], pair)
        return out.index_add(0, edges[0], -pair)

    @staticmethod
    def _flatten(pos: Tensor) -> tuple[Tensor, Tensor | None, int]:
        n = pos.shape[-2]
        flat = pos.reshape(-1, pos.shape[-1])
        batches = flat.shape[0] // max(n, 1)
        batch = None
        if batches > 1:
            batch = torch.arange(batches, device=pos.device).repeat_interleave(n)
        return flat, batch, batches

    def interaction_forces(self, pos: Tensor) -> Tensor:
        r"""Pair forces :math:`\sum_{j \neq i} F(x_i - x_j)` (without the factor ``k``).

        Pairs within :attr:`cutoff` (minimum image when periodic) come from cell lists; the
        force is differentiable with respect to ``pos``.

        Shapes:
            pos: ``[..., N, d]`` -> ``[..., N, d]``.
        """
        pos = self._check_pos(pos)
        flat, batch, _ = self._flatten(pos)
        edges = self._edges(flat, batch, self.cutoff)
        return self._forces_from_edges(flat, edges).reshape(pos.shape)

    def interaction_jacobian(self, pos: Tensor) -> Tensor:
        r"""Diagonal blocks :math:`\partial F_i / \partial x_i` of the pair forces'
        Jacobian, :math:`F_i = \sum_{j \neq i} F(x_i - x_j)` (without the factor ``k``).

        With :math:`F = f(r)\hat r`: :math:`\partial F/\partial r = f'(r)\,\hat r\hat r^\top
        + f(r)/r\,(I - \hat r\hat r^\top)`, summed over the neighbours; the trace is the
        particle's share of :meth:`force_divergence`. Differentiable with respect to ``pos``.

        Shapes:
            pos: ``[..., N, d]`` -> ``[..., N, d, d]``.
        """
        pos = self._check_pos(pos)
        flat, batch, _ = self._flatten(pos)
        edges = self._edges(flat, batch, self.cutoff)
        delta, r, inside = self._edge_geometry(flat, edges)
        safe_r = torch.where(inside, r, torch.ones_like(r))
        unit = delta / safe_r[:, None]
        df = -torch.sigmoid(self.beta * (2.0 * self.r0 - safe_r))
        f_over_r = self._magnitude(safe_r) / safe_r
        outer = unit[:, :, None] * unit[:, None, :]
        eye = torch.eye(self.dim, dtype=pos.dtype, device=pos.device)
        pair = df[:, None, None] * outer + f_over_r[:, None, None] * (eye - outer)
        pair = torch.where(inside[:, None, None], pair, torch.zeros_like(pair))
        # F(x_i - x_j) and F(x_j - x_i) = -F(x_i - x_j) have the same Jacobian block.
        out = flat.new_zeros(flat.shape[0], self.dim, self.dim)
        out = out.index_add(0, edges[1], pair).index_add(0, edges[0], pair)
        return out.reshape(*pos.shape, self.dim)

    def _interaction_divergence(self, pos: Tensor) -> Tensor:
        r""":math:`\sum_i \nabla_{x_i}\cdot\sum_{j\neq i} F(x_i - x_j)`, ``[...]``."""
        flat, batch, _ = self._flatten(pos)
        edges = self._edges(flat, batch, self.cutoff)
        _, r, inside = self._edge_geometry(flat, edges)
        f = self._magnitude(r)
        df = -torch.sigmoid(self.beta * (2.0 * self.r0 - r))
        # F(x_i - x_j) and F(x_j - x_i) have the same divergence: count each pair twice.
        per_edge = torch.where(inside, df + (self.dim - 1) * f / r, torch.zeros_like(r))
        per_edge = 2.0 * per_edge
        graph = edges[1] // self.num_particles
        batches = flat.shape[0] // self.num_particles
        out = torch.zeros(batches, dtype=pos.dtype, device=pos.device).index_add(0, graph, per_edge)
        return out.reshape(pos.shape[:-2])

    def _geometry_repr(self) -> str:
        box = "free" if self.box_length is None else f"{self.box_length:.6g}"
        return f"num_particles={self.num_particles}, dim={self.dim}, box_length={box}"


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


# ------------------------------------------------------------------------------------------------
class ActiveOUParticles(_SoftDiscs):
    r"""Active Ornstein–Uhlenbeck particles with soft repulsion (Boffi & Vanden-Eijnden 2024).

    .. math::
        dx_i &= \Big[v_0 g_i + k \sum_{j \neq i} F(x_i - x_j) - A x_i\Big] dt
                + \sqrt{2\varepsilon}\, dW_i, \qquad
        dg_i = -\gamma g_i\, dt + \sqrt{2\gamma}\, dB_i, \\
        F(r) &= \mathrm{softplus}_\beta(2 r_0 - |r|)\, r / |r|, \qquad
        \mathrm{softplus}_\beta(z) = \log(1 + e^{\beta z}) / \beta.

    The stationary law of every :math:`g_i` is :math:`\mathcal N(0, I_d)` (persistence time
    :math:`1/\gamma`). Geometry: a periodic box :math:`[-w, w)^d`, :math:`L = 2w`, given by
    ``box_length`` or by the packing fraction
    :math:`\phi = N V_d r_0^d / L^d` (:math:`V_d` the unit-ball volume, :math:`V_2 = \pi`, so
    :math:`\phi = N\pi r_0^2/L^2` in 2D); distances use the minimum image
    :math:`\Delta - L\,\mathrm{rint}(\Delta/L)`. With neither, space is free (use ``trap > 0`` to
    confine). In a box the trap acts on the wrapped position, so it is only meaningful when the
    trap keeps particles well inside the box. Pair forces are truncated at :attr:`cutoff`,
    by default :func:`softplus_force_cutoff` (force below :math:`10^{-8}`; 4.19 for
    :math:`\beta = 7.5, r_0 = 1`); pairs are found by cell lists.

    Args:
        num_particles: ``N``.
        packing_fraction: :math:`\phi \in (0, 1)`; sets the box.
        box_length: ``L`` (alternative to ``packing_fraction``).
        v0: self-propulsion speed scale :math:`v_0`.
        gamma: :math:`\gamma > 0`, inverse persistence time.
        k: interaction strength (>= 0).
        beta: softplus sharpness :math:`\beta > 0`.
        r0: particle radius :math:`r_0 > 0`.
        trap: harmonic trap stiffness :math:`A \geq 0`.
        eps: translational diffusion :math:`\varepsilon \geq 0` (0: hypoelliptic).
        dim: spatial dimension ``d``.
        cutoff: pair-force cutoff; ``None`` for the default above.

    Shapes:
        pos, g: ``[..., N, d]``; state (:func:`to_state`): ``[..., N, 2d]`` = ``[x_i, g_i]``.
    """

    def __init__(
        self,
        num_particles: int,
        packing_fraction: float | None = None,
        box_length: float | None = None,
        v0: float = 1.0,
        gamma: float = 1.0,
        k: float = 1.0,
        beta: float = 7.5,
        r0: float = 1.0,
        trap: float = 0.0,
        eps: float = 0.0,
        dim: int = 2,
        cutoff: float | None = None,
    ) -> None:
        dim = _int(dim, "dim")
        self.v0 = _real(v0, "v0")
        self.gamma = _real(gamma, "gamma", positive=True)
        self.eps = _real(eps, "eps", nonnegative=True)
        self._setup_geometry(
            num_particles, packing_fraction, box_length, dim, k, beta, r0, trap, cutoff
        )

    @property
    def diffusion(self) -> Tensor:
        """Diagonal of :math:`D` per particle in the ``[x, g]`` layout: ``[2d]`` =
        ``[eps] * d + [gamma] * d`` (float64)."""
        d = self.dim
        return torch.tensor([self.eps] * d + [self.gamma] * d, dtype=torch.float64)

    @property
    def flat_diffusion(self) -> Tensor:
        """:attr:`diffusion` for the flattened state ``[N * 2d]`` (particle-major)."""
        return self.diffusion.repeat(self.num_particles)

    def drift(self, pos: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        r"""``(b_x, b_g)`` with :math:`b_x = v_0 g + kF - A x`, :math:`b_g = -\gamma g`.

        Shapes:
            pos, g: ``[..., N, d]`` -> two ``[..., N, d]`` tensors.
        """
        pos, g = self._check_pair(pos, g)
        return self._drift_x(pos, g, self.interaction_forces), -self.gamma * g

    def _drift_x(self, pos: Tensor, g: Tensor, forces: Callable[[Tensor], Tensor]) -> Tensor:
        b = self.v0 * g
        if self.k != 0.0:
            b = b + self.k * forces(pos)
        if self.trap != 0.0:
            b = b - self.trap * pos
        return b

    def force_jacobian(self, pos: Tensor) -> Tensor:
        r"""Diagonal blocks :math:`\partial f_i/\partial x_i` of the passive force
        :math:`f_i = k F_i - A x_i` (the drift of :math:`x_i` at :math:`g = 0`), analytic; their
        traces sum to :meth:`force_divergence`.

        Shapes:
            pos: ``[..., N, d]`` -> ``[..., N, d, d]``.
        """
        pos = self._check_pos(pos)
        eye = torch.eye(self.dim, dtype=pos.dtype, device=pos.device)
        out = -self.trap * eye.expand(*pos.shape, self.dim)
        if self.k != 0.0:
            out = out + self.k * self.interaction_jacobian(pos)
        return out

    def force_divergence(self, pos: Tensor) -> Tensor:
        r""":math:`\sum_i \nabla_{x_i}\cdot(k F_i - A x_i)` (analytic).

        With :math:`F = f(r)\hat r`, :math:`f(r) = \mathrm{softplus}_\beta(2r_0 - r)`:
        :math:`\nabla\cdot F = f'(r) + (d - 1) f(r)/r`, :math:`f'(r) = -\sigma(\beta(2r_0 - r))`,
        so the sum is :math:`k \sum_i\sum_{j\neq i}[f'(r_{ij}) + (d-1) f(r_{ij})/r_{ij}] - A N d`.
        For the hypoelliptic AOUP (``eps = 0``) the entropy production rate is
        :math:`\sigma = -\mathbb E[\text{this}]`.

        Shapes:
            pos: ``[..., N, d]`` -> ``[...]``.
        """
        pos = self._check_pos(pos)
        out = torch.zeros(pos.shape[:-2], dtype=pos.dtype, device=pos.device)
        if self.k != 0.0:
            out = out + self.k * self._interaction_divergence(pos)
        return out - self.trap * self.num_particles * self.dim

    def _advance(
        self,
        pos: Tensor,
        g: Tensor,
        dt: float,
        generator: torch.Generator | None,
        forces: Callable[[Tensor], Tensor],
    ) -> tuple[Tensor, Tensor]:
        """One step: Euler–Maruyama for ``x``, exact OU for ``g``. Draws ``W`` (if ``eps > 0``)
        then ``zeta``."""
        new_pos = pos + dt * self._drift_x(pos, g, forces)
        if self.eps > 0.0:
            noise = torch.randn(pos.shape, generator=generator, dtype=pos.dtype, device=pos.device)
            new_pos = new_pos + math.sqrt(2.0 * self.eps * dt) * noise
        decay = math.exp(-self.gamma * dt)
        zeta = torch.randn(g.shape, generator=generator, dtype=g.dtype, device=g.device)
        new_g = decay * g + math.sqrt(-math.expm1(-2.0 * self.gamma * dt)) * zeta
        return self.wrap(new_pos), new_g

    def step(
        self, pos: Tensor, g: Tensor, dt: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """One integrator step (fresh neighbour search); see :func:`simulate`.

        Shapes:
            pos, g: ``[..., N, d]`` -> two ``[..., N, d]`` tensors.
        """
        pos, g = self._check_pair(pos, g)
        dt = _real(dt, "dt", positive=True)
        return self._advance(pos, g, dt, generator, self.interaction_forces)

    def _initial_g(self, shape: tuple[int, ...], generator: torch.Generator, dtype) -> Tensor:
        return torch.randn(shape, generator=generator, dtype=dtype)

    def parameters(self) -> dict[str, Any]:
        """Constructor arguments (box given by its length)."""
        return {
            "num_particles": self.num_particles,
            "box_length": self.box_length,
            "v0": self.v0,
            "gamma": self.gamma,
            "k": self.k,
            "beta": self.beta,
            "r0": self.r0,
            "trap": self.trap,
            "eps": self.eps,
            "dim": self.dim,
            "cutoff": self.cutoff,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._geometry_repr()}, v0={self.v0:g}, "
            f"gamma={self.gamma:g}, k={self.k:g}, beta={self.beta:g}, r0={self.r0:g}, "
            f"trap={self.trap:g}, eps={self.eps:g}, cutoff={self.cutoff:.4g})"
        )


class ActiveBrownianParticles(_SoftDiscs):
    r"""Active Brownian particles with soft repulsion in :math:`d = 2`; speed :math:`U`
    (``v0``), translational diffusion :math:`D_t` (``eps``), rotational diffusion :math:`D_r`:

    .. math::
        dx_i = \Big[U e(\theta_i) + k \sum_{j\neq i} F(x_i - x_j) - A x_i\Big] dt
               + \sqrt{2 D_t}\, dW_i,
        \qquad d\theta_i = \sqrt{2 D_r}\, dB_i,

    :math:`e(\theta) = (\cos\theta, \sin\theta)`, :math:`F` as in :class:`ActiveOUParticles`.
    Snapshots store ``g = e(theta)`` (a unit vector, same key as the AOUP's self-propulsion).
    Since :math:`\langle e(t)\cdot e(0)\rangle = e^{-D_r t}` in 2D, the AOUP with the same
    self-propulsion autocorrelation has :math:`\gamma = D_r`, :math:`v_0 = U/\sqrt{d}`.
    The orientation noise is multiplicative in ``g``; :attr:`diffusion` is therefore given in the
    ``[x, theta]`` layout: ``[D_t, D_t, D_r]`` per particle. :meth:`orientation` gives theta.

    Entropy production (``D_t > 0``) is computed in the angle layout ``[x_i, theta_i]``
    (:meth:`angle_state`, :meth:`angle_drift`, :meth:`angle_drift_divergence`,
    :attr:`flat_angle_diffusion`), where the noise is additive and constant, so
    :func:`gtlib.entropy.entropy_production` (learned score) and
    :func:`gtlib.entropy.score_free_entropy_production` apply. For non-interacting ABPs in the
    trap (``k = 0``) the stationary moments :math:`E[e\cdot x] = U/(A + D_r)` and
    :math:`E|x|^2 = (U^2/(A + D_r) + 2 D_t)/A` give the closed form
    :meth:`trap_entropy_production`, :math:`\sigma = N U^2 D_r / (D_t (A + D_r))`.

    Arguments share the names and the order of :class:`ActiveOUParticles` (``v0`` for the
    speed :math:`U`, ``eps`` for :math:`D_t`; ``rotational_diffusion`` stands where the AOUP has
    ``gamma``); those after ``box_length`` are keyword-only, so a call written for the former
    order (``speed`` third) fails instead of meaning something else. The former names
    ``speed`` and ``trans_diffusion`` still work, with a deprecation warning.

    Args:
        num_particles: ``N``.
        packing_fraction: :math:`\phi = N\pi r_0^2/L^2 \in (0, 1)`.
        box_length: ``L`` instead of ``packing_fraction``.
        v0: the self-propulsion speed ``U``.
        rotational_diffusion: :math:`D_r > 0`.
        k, beta, r0: interaction as in :class:`ActiveOUParticles`.
        trap: harmonic trap stiffness :math:`A \geq 0` (as in :class:`ActiveOUParticles`; use
            free space, no box, for a trap).
        eps: translational diffusion :math:`D_t \geq 0` (the AOUP's :math:`\varepsilon`).
        cutoff: pair-force cutoff (default :func:`softplus_force_cutoff`).

    Shapes:
        pos, g: ``[..., N, 2]``; theta: ``[..., N]``; angle state: ``[..., N, 3]``.
    """

    @renamed_arguments(speed="v0", trans_diffusion="eps")
    def __init__(
        self,
        num_particles: int,
        packing_fraction: float | None = None,
        box_length: float | None = None,
        *,
        v0: float = 1.0,
        rotational_diffusion: float = 1.0,
        k: float = 1.0,
        beta: float = 7.5,
        r0: float = 1.0,
        trap: float = 0.0,
        eps: float = 0.0,
        cutoff: float | None = None,
    ) -> None:
        self.v0 = _real(v0, "v0")
        self.rotational_diffusion = _real(
            rotational_diffusion, "rotational_diffusion", positive=True
        )
        self.eps = _real(eps, "eps", nonnegative=True)
        self._setup_geometry(
            num_particles, packing_fraction, box_length, 2, k, beta, r0, trap, cutoff
        )

    @property
    def speed(self) -> float:
        """Deprecated name of :attr:`v0`."""
        _renamed_attribute(type(self), "speed", "v0")
        return self.v0

    @property
    def trans_diffusion(self) -> float:
        """Deprecated name of :attr:`eps`."""
        _renamed_attribute(type(self), "trans_diffusion", "eps")
        return self.eps

    @property
    def diffusion(self) -> Tensor:
        """Diagonal of :math:`D` per particle in the ``[x, theta]`` layout: ``[D_t, D_t, D_r]``."""
        dt, dr = self.eps, self.rotational_diffusion
        return torch.tensor([dt, dt, dr], dtype=torch.float64)

    @property
    def aoup_equivalent(self) -> dict[str, float]:
        """The AOUP parameters with the same self-propulsion autocorrelation."""
        return {"gamma": self.rotational_diffusion, "v0": self.v0 / math.sqrt(2.0)}

    @staticmethod
    def orientation(g: Tensor) -> Tensor:
        """Orientation angle ``theta = atan2(g_y, g_x)`` ``[..., N]`` of ``g [..., N, 2]``."""
        return torch.atan2(g[..., 1], g[..., 0])

    def drift(self, pos: Tensor, g: Tensor) -> tuple[Tensor, Tensor]:
        """``(b_x, b_theta)``: :math:`b_x = U g + kF - Ax`, :math:`b_\\theta = 0` ``[..., N]``."""
        pos, g = self._check_pair(pos, g)
        return self._drift_x(pos, g, self.interaction_forces), torch.zeros(
            g.shape[:-1], dtype=g.dtype, device=g.device
        )

    def _drift_x(self, pos: Tensor, g: Tensor, forces: Callable[[Tensor], Tensor]) -> Tensor:
        b = self.v0 * g
        if self.k != 0.0:
            b = b + self.k * forces(pos)
        if self.trap != 0.0:
            b = b - self.trap * pos
        return b

    def force_divergence(self, pos: Tensor) -> Tensor:
        r""":math:`\sum_i \nabla_{x_i}\cdot(kF_i - A x_i)`, ``[...]`` (see
        :class:`ActiveOUParticles`)."""
        pos = self._check_pos(pos)
        out = torch.zeros(pos.shape[:-2], dtype=pos.dtype, device=pos.device)
        if self.k != 0.0:
            out = out + self.k * self._interaction_divergence(pos)
        return out - self.trap * self.num_particles * self.dim

    def force_jacobian(self, pos: Tensor) -> Tensor:
        r"""Diagonal blocks :math:`\partial f_i/\partial x_i` of the passive force
        :math:`f_i = kF_i - Ax_i` (see :meth:`ActiveOUParticles.force_jacobian`).

        Shapes:
            pos: ``[..., N, 2]`` -> ``[..., N, 2, 2]``.
        """
        pos = self._check_pos(pos)
        eye = torch.eye(self.dim, dtype=pos.dtype, device=pos.device)
        out = -self.trap * eye.expand(*pos.shape, self.dim)
        if self.k != 0.0:
            out = out + self.k * self.interaction_jacobian(pos)
        return out

    # -------------------------------------------------------------- angle layout [x, theta]
    @property
    def flat_angle_diffusion(self) -> Tensor:
        """:attr:`diffusion` ``[D_t, D_t, D_r]`` repeated for the flattened angle state
        ``[N * 3]`` (particle-major)."""
        return self.diffusion.repeat(self.num_particles)

    def angle_state(self, pos: Tensor, g: Tensor) -> Tensor:
        """Per particle ``[x_i, theta_i]``: ``[..., N, 3]`` from ``pos, g [..., N, 2]``."""
        pos, g = self._check_pair(pos, g)
        return torch.cat([pos, self.orientation(g)[..., None]], dim=-1)

    def _split_angle_state(self, state: Any) -> tuple[Tensor, Tensor]:
        if not isinstance(state, Tensor) or not state.is_floating_point():
            raise TypeError("`state` must be a floating-point tensor [..., N, 3] ([x, theta])")
        if state.dim() < 2 or tuple(state.shape[-2:]) != (self.num_particles, 3):
            raise ValueError(
                f"`state` must have shape [..., {self.num_particles}, 3] ([x, theta]), got "
                f"{tuple(state.shape)}"
            )
        theta = state[..., 2]
        return state[..., :2], torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)

    def angle_drift(self, state: Tensor) -> Tensor:
        r"""Drift in the angle layout, ``[U e(\theta_i) + kF_i - A x_i, 0]``, differentiable.

        Shapes:
            state: ``[..., N, 3]`` -> ``[..., N, 3]``.
        """
        pos, g = self._split_angle_state(state)
        pos = self._check_pos(pos)
        b = self._drift_x(pos, g, self.interaction_forces)
        return torch.cat([b, torch.zeros_like(b[..., :1])], dim=-1)

    def angle_drift_divergence(self, state: Tensor) -> Tensor:
        r"""Divergence of :meth:`angle_drift`: :meth:`force_divergence` (the angle drift is 0
        and :math:`U e(\theta_i)` does not depend on :math:`x_i`), ``[..., N, 3]`` -> ``[...]``."""
        pos, _ = self._split_angle_state(state)
        return self.force_divergence(pos)

    def trap_entropy_production(self) -> float:
        r"""Closed-form EPR of non-interacting ABPs in the trap (``k = 0``, ``A > 0``,
        ``D_t > 0``), every variable even under time reversal:

        .. math::  \sigma = N\,\frac{U^2 D_r}{D_t\,(A + D_r)}.

        Derivation (per particle): the score-free identity
        :math:`\sigma = E[|b_x|^2/D_t + \nabla\cdot b]` with :math:`b_x = Ue - Ax`,
        :math:`\nabla\cdot b = -2A`, and the stationary moments from It\^o's formula
        (:math:`de = -D_r e\,dt + \sqrt{2D_r}\,e^\perp dB`):
        :math:`\tfrac{d}{dt}E[e\cdot x] = U - (A + D_r)E[e\cdot x] = 0`,
        :math:`\tfrac{d}{dt}E|x|^2 = 2U E[e\cdot x] - 2AE|x|^2 + 4D_t = 0`, so
        :math:`E|b_x|^2 = U^2 - 2AU^2/(A+D_r) + A(U^2/(A+D_r) + 2D_t)` and
        :math:`\sigma = U^2 D_r/(D_t(A + D_r))`. At :math:`A \to 0` it is the free ABP's
        :math:`U^2/D_t`; it equals the AOUP closed form with :math:`\gamma = D_r`,
        :math:`v_0 = U/\sqrt 2`, :math:`\varepsilon = D_t` (the identity only sees second
        moments).
        """
        if self.k != 0.0 or self.trap <= 0.0 or self.eps <= 0.0:
            raise ValueError(
                "trap_entropy_production needs non-interacting particles in a trap with "
                f"translational noise (k = 0, trap > 0, eps > 0); got k={self.k:g}, "
                f"trap={self.trap:g}, eps={self.eps:g}"
            )
        u, dr = self.v0, self.rotational_diffusion
        return self.num_particles * u * u * dr / (self.eps * (self.trap + dr))

    def _advance(
        self,
        pos: Tensor,
        g: Tensor,
        dt: float,
        generator: torch.Generator | None,
        forces: Callable[[Tensor], Tensor],
    ) -> tuple[Tensor, Tensor]:
        """Euler–Maruyama for ``x``, exact Brownian step for ``theta``; draws ``W`` (if
        ``D_t > 0``) then the angle increments."""
        new_pos = pos + dt * self._drift_x(pos, g, forces)
        if self.eps > 0.0:
            noise = torch.randn(pos.shape, generator=generator, dtype=pos.dtype, device=pos.device)
            new_pos = new_pos + math.sqrt(2.0 * self.eps * dt) * noise
        theta = self.orientation(g)
        increment = torch.randn(
            theta.shape, generator=generator, dtype=theta.dtype, device=theta.device
        )
        theta = theta + math.sqrt(2.0 * self.rotational_diffusion * dt) * increment
        return self.wrap(new_pos), torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)

    def step(
        self, pos: Tensor, g: Tensor, dt: float, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """One integrator step (fresh neighbour search)."""
        pos, g = self._check_pair(pos, g)
        dt = _real(dt, "dt", positive=True)
        return self._advance(pos, g, dt, generator, self.interaction_forces)

    def _initial_g(self, shape: tuple[int, ...], generator: torch.Generator, dtype) -> Tensor:
        theta = 2.0 * math.pi * torch.rand(shape[:-1], generator=generator, dtype=dtype)
        return torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)

    def parameters(self) -> dict[str, Any]:
        """Constructor arguments (box given by its length)."""
        return {
            "num_particles": self.num_particles,
            "box_length": self.box_length,
            "v0": self.v0,
            "rotational_diffusion": self.rotational_diffusion,
            "k": self.k,
            "beta": self.beta,
            "r0": self.r0,
            "trap": self.trap,
            "eps": self.eps,
            "cutoff": self.cutoff,
        }

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._geometry_repr()}, v0={self.v0:g}, "
            f"rotational_diffusion={self.rotational_diffusion:g}, k={self.k:g}, "
            f"beta={self.beta:g}, r0={self.r0:g}, trap={self.trap:g}, eps={self.eps:g}, "
            f"cutoff={self.cutoff:.4g})"
        )


# ------------------------------------------------------------------------------------------------
# Simulation
ParticleSystem = ActiveOUParticles | ActiveBrownianParticles


def _initial_positions(
    system: _SoftDiscs, batch: int, generator: torch.Generator, dtype: torch.dtype
) -> Tensor:
    """Jittered lattice: ``N`` random sites of a cubic lattice filling the box (free space: of
    spacing ``2.5 r0`` around the origin), each moved by up to ``5%`` of the spacing."""
    n, d = system.num_particles, system.dim
    per_side = math.ceil(n ** (1.0 / d) - 1e-9)
    if system.box_length is not None:
        spacing = system.box_length / per_side
        origin = -0.5 * system.box_length + 0.5 * spacing
    else:
        spacing = 2.5 * system.r0
        origin = -0.5 * spacing * (per_side - 1)
    axes = [torch.arange(per_side, dtype=dtype) for _ in range(d)]
    sites = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, d)
    out = []
    for _ in range(batch):
        chosen = sites[torch.randperm(sites.shape[0], generator=generator)[:n]]
        jitter = 0.1 * (torch.rand(n, d, generator=generator, dtype=dtype) - 0.5)
        out.append(origin + spacing * (chosen + jitter))
    return system.wrap(torch.stack(out))


def _run_signature(
    system: _SoftDiscs,
    dt: float,
    seed: int,
    n_snapshots: int,
    batch: int,
    burn_steps: int,
    spacing_steps: int,
    dtype: torch.dtype,
    initial_hash: str,
) -> str:
    return json.dumps(
        {
            "system": type(system).__name__,
            "parameters": system.parameters(),
            "dt": dt,
            "seed": seed,
            "n_snapshots": n_snapshots,
            "n_trajectories": batch,
            "burn_steps": burn_steps,
            "spacing_steps": spacing_steps,
            "dtype": str(dtype),
            "initial": initial_hash,
        },
        sort_keys=True,
    )


def _write_attrs(handle: h5py.File, system: _SoftDiscs, run: dict[str, Any]) -> None:
    params = system.parameters()
    handle.attrs["system"] = type(system).__name__
    handle.attrs["parameters"] = json.dumps(params, sort_keys=True)
    for name, value in params.items():
        if value is not None:
            handle.attrs[name] = value
    handle.attrs["box_length"] = math.nan if system.box_length is None else system.box_length
    handle.attrs["dim"] = system.dim
    handle.attrs["num_particles"] = system.num_particles
    for name, value in run.items():
        handle.attrs[name] = value
    handle.attrs[_ATTRS_DIGEST] = _attrs_digest({key: handle.attrs[key] for key in handle.attrs})


# Root attribute holding the SHA-256 of the other root attributes (HDF5 checksums data only).
_ATTRS_DIGEST = "attrs_sha256"


def _attr_text(value: Any) -> str:
    """A canonical text of an attribute value as h5py reads it back (exact for floats)."""
    if isinstance(value, bool | np.bool_):
        return f"b:{bool(value)}"
    if isinstance(value, numbers.Integral):
        return f"i:{int(value)}"
    if isinstance(value, numbers.Real):
        return f"f:{float(value).hex()}"
    if isinstance(value, bytes):
        return f"s:{value.decode('utf-8', 'backslashreplace')}"
    if isinstance(value, str):
        return f"s:{value}"
    if isinstance(value, np.ndarray):
        return f"a{value.shape}:" + ",".join(_attr_text(v) for v in value.ravel().tolist())
    return f"r:{value!r}"


def _attrs_digest(attrs: dict[str, Any]) -> str:
    """SHA-256 of the root attributes (all but the digest itself), by sorted name."""
    text = "\n".join(f"{k}={_attr_text(attrs[k])}" for k in sorted(attrs) if k != _ATTRS_DIGEST)
    return hashlib.sha256(text.encode()).hexdigest()


# Checkpoint format of an unfinished run (the sidecar written by simulate()).
_CHECKPOINT_FORMAT = "gtlib.datasets.simulate/2"


def _run_files(path: str) -> tuple[str, str]:
    """The snapshot file and the integrator-state sidecar of an unfinished run of ``path``."""
    return path + ".partial", path + ".partial.state"


def _discard_run_files(path: str) -> None:
    """Remove what an unfinished run of ``path`` left: snapshots, sidecar, stale temporaries."""
    for name in (path, *_run_files(path)):
        remove_stale_temporaries(name)
    for name in _run_files(path):
        try:
            os.remove(name)
        except FileNotFoundError:
            pass


def _snapshot_bytes(all_pos: Tensor, all_g: Tensor, start: int, stop: int) -> bytes:
    """Snapshots ``start:stop`` as raw bytes, per snapshot ``pos`` then ``g`` (C order)."""
    return b"".join(
        all_pos[s].numpy().tobytes() + all_g[s].numpy().tobytes() for s in range(start, stop)
    )


def _append_snapshots(path: str, offset: int, data: bytes) -> None:
    """Write ``data`` at ``offset`` of the snapshot file, drop what lies beyond (bytes of a write
    the last checkpoint does not cover) and flush it to disk before the sidecar records it."""
    with open(path, "r+b" if os.path.exists(path) else "wb") as handle:
        handle.seek(offset)
        handle.write(data)
        handle.truncate()
        handle.flush()
        os.fsync(handle.fileno())


def _state_digest(state: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's content (torch.load checks no CRC: a flipped bit would load)."""
    digest = hashlib.sha256()
    for key in ("format", "run_signature", "step", "n_done", "snapshot_bytes", "snapshot_sha256"):
        digest.update(f"{key}={state.get(key)!r}\n".encode())
    for key in ("pos", "g", "generator_state"):
        value = state.get(key)
        if isinstance(value, Tensor):
            digest.update(f"{key}:{value.dtype}:{tuple(value.shape)}\n".encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
        else:
            digest.update(f"{key}:{type(value).__name__}\n".encode())
    return digest.hexdigest()


def _checkpoint_error(sidecar: str, problem: str) -> ValueError:
    return ValueError(
        f"{sidecar}: {problem}; the checkpoint of this unfinished run is inconsistent (delete "
        "it or pass resume=False to start over)"
    )


def _read_checkpoint(
    path: str,
    signature: str,
    snapshot_shape: tuple[int, ...],
    dtype: torch.dtype,
    snapshot_steps: Sequence[int],
) -> dict[str, Any]:
    """Load and cross-check the checkpoint of an unfinished run of ``path`` (``{}``: none).

    The sidecar (written atomically) is the truth: its step must match its snapshot count under
    the run's schedule, and the snapshot file must hold at least the bytes it records, with the
    recorded SHA-256; bytes beyond (a write the kill interrupted) are ignored and overwritten.
    """
    snapshots, sidecar = _run_files(path)
    if not os.path.exists(sidecar):
        return {}
    try:
        state = torch.load(sidecar, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - whatever an unreadable pickle raises
        raise _checkpoint_error(sidecar, f"unreadable ({type(error).__name__}: {error})") from error
    if not isinstance(state, dict) or state.get("format") != _CHECKPOINT_FORMAT:
        raise _checkpoint_error(sidecar, "not a checkpoint written by simulate()")
    if state.get("state_sha256") != _state_digest(state):
        raise _checkpoint_error(sidecar, "the checkpoint fails its SHA-256 check (corrupt)")
    if state.get("run_signature") != signature:
        raise ValueError(
            f"{path}: an unfinished run with different settings exists; delete it or "
            "pass resume=False"
        )
    step, n_done = state.get("step"), state.get("n_done")
    if not isinstance(step, int) or not isinstance(n_done, int) or step < 0:
        raise _checkpoint_error(sidecar, f"step {step!r} and snapshot count {n_done!r}")
    expected = sum(1 for t in snapshot_steps if t <= step)
    if n_done != expected:
        raise _checkpoint_error(
            sidecar,
            f"step {step} and snapshot count {n_done} disagree (the schedule takes {expected} "
            f"snapshots by step {step})",
        )
    itemsize = torch.empty((), dtype=dtype).element_size()
    per_snapshot = 2 * math.prod(snapshot_shape) * itemsize
    nbytes = state.get("snapshot_bytes")
    if nbytes != n_done * per_snapshot:
        raise _checkpoint_error(
            sidecar,
            f"{nbytes!r} snapshot bytes recorded for {n_done} snapshots of {per_snapshot} bytes",
        )
    for name in ("pos", "g"):
        value = state.get(name)
        if not isinstance(value, Tensor) or value.shape != snapshot_shape or value.dtype != dtype:
            raise _checkpoint_error(sidecar, f"bad integrator state '{name}'")
    try:
        with open(snapshots, "rb") as handle:
            data = handle.read(nbytes)
    except OSError as error:
        raise _checkpoint_error(
            sidecar, f"snapshot file {snapshots} unreadable ({error})"
        ) from error
    if len(data) != nbytes:
        raise _checkpoint_error(
            sidecar, f"snapshot file {snapshots} holds {len(data)} bytes, {nbytes} recorded"
        )
    digest = hashlib.sha256(data)
    if digest.hexdigest() != state.get("snapshot_sha256"):
        raise _checkpoint_error(sidecar, f"snapshot file {snapshots} fails its SHA-256 check")
    np_dtype = np.float64 if dtype == torch.float64 else np.float32
    snaps = torch.from_numpy(
        np.frombuffer(data, dtype=np_dtype).reshape(n_done, 2, *snapshot_shape).copy()
    )
    return {
        "pos": state["pos"],
        "g": state["g"],
        "step": step,
        "generator_state": state["generator_state"],
        "n_done": n_done,
        "snap_pos": snaps[:, 0],
        "snap_g": snaps[:, 1],
        "digest": digest,
    }


def _write_trajectory(
    path: str, system: _SoftDiscs, run: dict[str, Any], pos: Tensor, g: Tensor, time: Tensor
) -> None:
    """Write a complete run to ``path`` atomically, with Fletcher-32 checksums on every data set
    (chunks of one snapshot, so a reader checks only what it reads)."""
    chunks = (1, *pos.shape[1:])

    def write(tmp: Any) -> None:
        with h5py.File(tmp, "w", libver=HDF5_LIBVER) as handle:
            _write_attrs(handle, system, run)
            checked = {"fletcher32": True, "fillvalue": np.nan}  # a lost chunk reads as NaN
            handle.create_dataset("pos", data=pos.numpy(), chunks=chunks, **checked)
            handle.create_dataset("g", data=g.numpy(), chunks=chunks, **checked)
            handle.create_dataset("time", data=time.numpy(), **checked)

    atomic_write(path, write)


def simulate(
    system: ParticleSystem,
    n_snapshots: int,
    dt: float,
    *,
    burn_in: float = 0.0,
    spacing: float | None = None,
    n_trajectories: int = 1,
    initial: tuple[Tensor, Tensor] | None = None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    resume: bool = True,
    progress: bool = True,
    checkpoint_every: int = 100,
    skin: float | None = None,
    dtype: torch.dtype = torch.float64,
    callback: Callable[[int, dict[str, Tensor]], None] | None = None,
) -> dict[str, Tensor]:
    r"""Simulates ``n_trajectories`` independent copies and records ``n_snapshots`` snapshots.

    Integrator (per step ``dt``): Euler–Maruyama for positions,
    :math:`x \leftarrow x + b_x\,dt + \sqrt{2\varepsilon\,dt}\,\xi`, and the exact
    Ornstein–Uhlenbeck update :math:`g \leftarrow e^{-\gamma dt} g +
    \sqrt{1 - e^{-2\gamma dt}}\,\zeta` (ABP: exact angle increments), so ``g`` keeps its law
    :math:`\mathcal N(0, I)` for any ``dt``. Positions are wrapped into the box after each step.
    Pair forces use a Verlet list of radius ``cutoff + skin`` from cell lists, rebuilt when a
    particle has moved ``skin / 2`` and at every checkpoint; forces equal a fresh search.

    Snapshot ``s`` is taken after ``round(burn_in / dt) + s * round(spacing / dt)`` steps.
    Initial positions: a jittered lattice (``initial`` overrides), ``g`` from its stationary law.

    With ``out``, every ``checkpoint_every`` snapshots (and every ``checkpoint_every * spacing``
    steps of burn-in) the new snapshots are appended to ``out + ".partial"`` and flushed to disk,
    then the full integrator state (positions, ``g``, step, generator state, snapshot count and
    the SHA-256 of the snapshot bytes) replaces the sidecar ``out + ".partial.state"``
    atomically (:func:`gtlib.io.atomic_torch_save`). A kill at any instant therefore leaves the
    previous or the next checkpoint, and ``resume=True`` continues to exactly the numbers of an
    uninterrupted run; a checkpoint whose step, snapshot count and snapshot bytes disagree raises
    a :class:`ValueError` naming the file instead of resuming wrongly. The complete run is
    written to ``out`` atomically (HDF5, Fletcher-32 checksums on every data set), then the
    ``.partial`` files are removed; stale temporaries of killed writes are removed on the next
    call. An existing complete ``out`` with the same settings is read back instead of simulated
    again.

    Args:
        system: an :class:`ActiveOUParticles` or :class:`ActiveBrownianParticles`.
        n_snapshots: ``S >= 1``.
        dt: time step.
        burn_in: time simulated before the first snapshot.
        spacing: time between snapshots (default ``dt``).
        n_trajectories: independent copies ``B`` run as one batch.
        initial: ``(pos, g)`` of shape ``[N, d]`` or ``[B, N, d]``.
        seed: seeds the ``torch.Generator`` used for everything random.
        out: HDF5 path, or ``None`` to keep the result in memory only.
        resume: continue a matching ``.partial`` file (else start over).
        progress: show a tqdm progress bar.
        checkpoint_every: snapshots between checkpoints.
        skin: Verlet skin (default ``0.5 r0``; ``0`` searches every step). The skin changes
            the cost only, never the numbers.
        dtype: floating-point type of the simulation and the stored arrays.
        callback: called as ``callback(s, {"pos", "g", "time"})`` after snapshot ``s``.

    Returns:
        ``{"pos": [S, B, N, d], "g": [S, B, N, d], "time": [S]}``.
    """
    if not isinstance(system, ActiveOUParticles | ActiveBrownianParticles):
        raise TypeError(
            "`system` must be an ActiveOUParticles or ActiveBrownianParticles, got "
            f"{type(system).__name__}"
        )
    n_snapshots = _int(n_snapshots, "n_snapshots")
    dt = _real(dt, "dt", positive=True)
    burn_in = _real(burn_in, "burn_in", nonnegative=True)
    spacing = dt if spacing is None else _real(spacing, "spacing", positive=True)
    batch = _int(n_trajectories, "n_trajectories")
    seed = _int(seed, "seed", minimum=0)
    checkpoint_every = _int(checkpoint_every, "checkpoint_every")
    if dtype not in (torch.float32, torch.float64):
        raise TypeError(f"`dtype` must be torch.float32 or torch.float64, got {dtype}")
    skin = DEFAULT_SKIN * system.r0 if skin is None else _real(skin, "skin", nonnegative=True)
    burn_steps = round(burn_in / dt)
    spacing_steps = round(spacing / dt)
    if spacing_steps < 1:
        raise ValueError(f"`spacing`={spacing} must be at least `dt`={dt}")

    generator = torch.Generator().manual_seed(seed)
    n, d = system.num_particles, system.dim
    if initial is not None:
        if not isinstance(initial, tuple | list) or len(initial) != 2:
            raise TypeError("`initial` must be a (pos, g) pair of tensors")
        pos0, g0 = system._check_pair(initial[0], initial[1])
        if pos0.dim() not in (2, 3) or (pos0.dim() == 3 and pos0.shape[0] != batch):
            raise ValueError(
                f"`initial` tensors must have shape [{n}, {d}] or [{batch}, {n}, {d}], got "
                f"{tuple(pos0.shape)}"
            )
        pos0 = system.wrap(pos0.detach().to(dtype).expand(batch, n, d).clone())
        g0 = g0.detach().to(dtype).expand(batch, n, d).clone()
        initial_hash = hashlib.sha256(pos0.numpy().tobytes() + g0.numpy().tobytes()).hexdigest()
    else:
        pos0 = _initial_positions(system, batch, generator, dtype)
        g0 = system._initial_g((batch, n, d), generator, dtype)
        initial_hash = "lattice"

    signature = _run_signature(
        system,
        dt,
        seed,
        n_snapshots,
        batch,
        burn_steps,
        spacing_steps,
        dtype,
        initial_hash,
    )
    time = torch.tensor(
        [(burn_steps + s * spacing_steps) * dt for s in range(n_snapshots)], dtype=torch.float64
    )
    all_pos = torch.empty(n_snapshots, batch, n, d, dtype=dtype)
    all_g = torch.empty(n_snapshots, batch, n, d, dtype=dtype)

    path = sidecar = snapshots = None
    if out is not None:
        path = os.fspath(out)
        snapshots, sidecar = _run_files(path)
        if os.path.exists(path) and resume:
            finished = load_trajectory(path)
            if finished["attrs"].get("run_signature") != signature:
                raise ValueError(
                    f"{path} exists and holds a different run; delete it or pass resume=False"
                )
            _discard_run_files(path)  # leftovers of a kill after the final rename
            return {key: finished[key] for key in ("pos", "g", "time")}

    step, n_done = 0, 0
    pos, g = pos0, g0
    state: dict[str, Any] = {}
    snapshot_shape = (batch, n, d)
    if path is not None:
        if resume:
            state = _read_checkpoint(
                path,
                signature,
                snapshot_shape,
                dtype,
                [burn_steps + s * spacing_steps for s in range(n_snapshots)],
            )
        if not state:  # a fresh start (or interrupted before the first checkpoint)
            _discard_run_files(path)
    digest = state.get("digest", hashlib.sha256())
    if state:
        pos, g, step, n_done = state["pos"], state["g"], state["step"], state["n_done"]
        generator.set_state(state["generator_state"])
        all_pos[:n_done] = state["snap_pos"]
        all_g[:n_done] = state["snap_g"]
    run_attrs = {
        "dt": dt,
        "seed": seed,
        "burn_in": burn_steps * dt,
        "spacing": spacing_steps * dt,
        "n_snapshots": n_snapshots,
        "n_trajectories": batch,
        "run_signature": signature,
        "complete": True,
    }

    snap_steps = {burn_steps + s * spacing_steps: s for s in range(n_snapshots)}
    unit = checkpoint_every * spacing_steps
    checkpoints = set(range(0, burn_steps, unit)) | {burn_steps}
    checkpoints |= {
        burn_steps + s * spacing_steps
        for s in range(n_snapshots)
        if (s + 1) % checkpoint_every == 0 or s == n_snapshots - 1
    }
    final_step = burn_steps + (n_snapshots - 1) * spacing_steps
    written = n_done

    def save_checkpoint(current: int) -> None:
        nonlocal written
        if sidecar is None:
            return
        itemsize = all_pos.element_size()
        data = _snapshot_bytes(all_pos, all_g, written, n_done)
        _append_snapshots(snapshots, 2 * written * math.prod(snapshot_shape) * itemsize, data)
        digest.update(data)
        written = n_done
        checkpoint = {
            "format": _CHECKPOINT_FORMAT,
            "run_signature": signature,
            "step": current,
            "n_done": n_done,
            "snapshot_bytes": 2 * n_done * math.prod(snapshot_shape) * itemsize,
            "snapshot_sha256": digest.hexdigest(),
            "pos": pos.clone(),
            "g": g.clone(),
            "generator_state": generator.get_state(),
        }
        checkpoint["state_sha256"] = _state_digest(checkpoint)
        atomic_torch_save(checkpoint, sidecar)

    cache = _NeighbourCache(system, skin)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=final_step, initial=step, desc=type(system).__name__, unit="step")

    def record(current: int) -> None:
        nonlocal n_done
        s = snap_steps.get(current)
        if s is not None and s == n_done:
            all_pos[s] = pos
            all_g[s] = g
            n_done += 1
            if callback is not None:
                callback(s, {"pos": pos, "g": g, "time": time[s]})

    if step == 0 and n_done == 0:
        record(0)
        save_checkpoint(0)
    try:
        while step < final_step:
            pos, g = system._advance(pos, g, dt, generator, cache.forces)
            step += 1
            record(step)
            if step in checkpoints:
                cache.invalidate()
                save_checkpoint(step)
            if bar is not None and (step % 256 == 0 or step == final_step):
                bar.n = step
                bar.refresh()
    finally:
        if bar is not None:
            bar.close()

    if path is not None:
        _write_trajectory(path, system, run_attrs, all_pos, all_g, time)
        _discard_run_files(path)
    return {"pos": all_pos, "g": all_g, "time": time}


# ------------------------------------------------------------------------------------------------
# Reading
def _h5(path: str, what: str, read: Callable[[], Any]) -> Any:
    """``read()``, with every h5py/HDF5 error turned into a ValueError naming the file."""
    try:
        return read()
    except HDF5_ERRORS as error:
        raise ValueError(
            f"{path}: cannot read {what} ({type(error).__name__}: {error}); the file is "
            "corrupt or not written by simulate()"
        ) from error


def _finite_float(path: str, name: str, values: np.ndarray, where: str = "") -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: dataset '{name}'{where} holds NaN or infinite values")
    return values


def _check_layout(path: str, handle: h5py.File) -> dict[str, Any]:
    nodes = {}
    for name in ("pos", "g", "time"):
        node = _h5(path, f"dataset '{name}'", lambda name=name: hdf5_member(handle, name))
        if node is None:
            raise ValueError(f"{path}: missing dataset '{name}'")
        if not isinstance(node, h5py.Dataset):
            raise ValueError(f"{path}: '{name}' is a {type(node).__name__}, not a dataset")
        dtype = _h5(path, f"the dtype of dataset '{name}'", lambda node=node: node.dtype)
        if dtype.kind != "f":
            raise ValueError(
                f"{path}: dataset '{name}' has dtype {dtype}, expected real floating point"
            )
        nodes[name] = node
    shapes = {
        name: _h5(path, f"dataset '{name}'", lambda n=node: n.shape) for name, node in nodes.items()
    }
    shape = shapes["pos"]
    if len(shape) != 4 or shapes["g"] != shape or shapes["time"] != shape[:1]:
        raise ValueError(
            f"{path}: expected pos and g of shape [S, B, N, d] and time [S], got {shapes}"
        )
    attrs = _h5(path, "the attributes", lambda: {key: handle.attrs[key] for key in handle.attrs})
    if _ATTRS_DIGEST in attrs and attrs[_ATTRS_DIGEST] != _attrs_digest(attrs):
        raise ValueError(f"{path}: the root attributes fail their checksum ('{_ATTRS_DIGEST}')")
    if not bool(attrs.get("complete", True)):
        raise ValueError(f"{path}: the run is incomplete")
    box_length = attrs.get("box_length", math.nan)
    if not isinstance(box_length, numbers.Real) or not (
        math.isnan(box_length) or (math.isfinite(box_length) and box_length > 0)
    ):
        raise ValueError(f"{path}: attribute 'box_length' = {box_length!r} is not positive or NaN")
    _finite_float(path, "time", _h5(path, "dataset 'time'", lambda: read_hdf5(nodes["time"])))
    return attrs


def _open_checked(path: str) -> tuple[h5py.File, dict[str, Any]]:
    """Open a file written by :func:`simulate` and check its layout, dtypes and attributes.

    Raises:
        FileNotFoundError: no such path.
        ValueError: anything else (a folder, not HDF5, corrupt, missing or mistyped data sets,
            non-finite times, an incomplete run), naming the file and the data set.
    """
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not an HDF5 file written by simulate()")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        handle = h5py.File(path, "r")
    except HDF5_ERRORS as error:
        raise ValueError(f"{path}: not a readable HDF5 file ({error})") from error
    try:
        attrs = _check_layout(path, handle)
    except BaseException:
        handle.close()
        raise
    return handle, attrs


def _read_array(path: str, handle: h5py.File, name: str, index: Any = ()) -> np.ndarray:
    """``handle[name][index]``, checksum-verified (Fletcher-32 where written) and finite."""
    where = "" if index == () else f" at {index}"
    values = _h5(path, f"dataset '{name}'{where}", lambda: read_hdf5(handle[name], index))
    return _finite_float(path, name, np.asarray(values), where)


def load_trajectory(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a file written by :func:`simulate` into memory.

    Returns:
        ``{"pos": [S, B, N, d], "g": [S, B, N, d], "time": [S], "attrs": dict}``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is a folder, not HDF5 or corrupt (a data set failing its checksum
            included), lacks ``pos``/``g``/``time``, has non-float or non-finite values or
            inconsistent shapes, or holds an incomplete run; the message names the file and the
            data set.
    """
    path = os.fspath(path)
    handle, attrs = _open_checked(path)
    with handle:
        return {
            "pos": torch.from_numpy(_read_array(path, handle, "pos")),
            "g": torch.from_numpy(_read_array(path, handle, "g")),
            "time": torch.from_numpy(_read_array(path, handle, "time")),
            "attrs": attrs,
        }


class ParticleDataset(Dataset):
    """Snapshots of a :func:`simulate` HDF5 file, one :class:`~torch_geometric.data.Data` each.

    Item ``i`` is snapshot ``i // B`` of trajectory ``i % B``::

        Data(pos=[N, d], g=[N, d], box=[d] (periodic only), time=0-d, trajectory=0-d,
             num_nodes=N)

    The file is read lazily; each process opens its own handle (none is inherited across
    ``fork`` or pickled), so the dataset works with multi-worker data loaders.

    Args:
        path: the HDF5 file.
        transform: applied to each :class:`Data` on access.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is a folder, not HDF5 or corrupt, lacks ``pos``/``g``/``time``, has
            non-float data sets, non-finite times or inconsistent shapes, or holds an incomplete
            run (each message names the file and the data set). An item whose data fail their
            checksum or are not finite raises the same error when it is read.
    """

    def __init__(
        self, path: str | os.PathLike, *, transform: Callable[[Data], Data] | None = None
    ) -> None:
        self.path = os.fspath(path)
        handle, self.attrs = _open_checked(self.path)
        with handle:
            self.n_snapshots, self.n_trajectories, self.num_particles, self.dim = handle[
                "pos"
            ].shape
        box_length = float(self.attrs.get("box_length", math.nan))
        self.box_length = None if math.isnan(box_length) else box_length
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        super().__init__(None, transform=transform, log=False)

    def len(self) -> int:
        return self.n_snapshots * self.n_trajectories

    def _file(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            self._handle = _h5(self.path, "the file", lambda: h5py.File(self.path, "r"))
            self._pid = os.getpid()
        return self._handle

    def get(self, idx: int) -> Data:
        snapshot, trajectory = divmod(int(idx), self.n_trajectories)
        handle = self._file()
        index = (snapshot, trajectory)
        data = Data(
            pos=torch.from_numpy(_read_array(self.path, handle, "pos", index)),
            g=torch.from_numpy(_read_array(self.path, handle, "g", index)),
            time=torch.tensor(
                float(_read_array(self.path, handle, "time", snapshot)), dtype=torch.float64
            ),
            trajectory=torch.tensor(trajectory),
            num_nodes=self.num_particles,
        )
        if self.box_length is not None:
            data.box = torch.full((self.dim,), self.box_length, dtype=torch.float64)
        return data

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"ParticleDataset({self.path!r}, snapshots={self.n_snapshots}, "
            f"trajectories={self.n_trajectories}, num_particles={self.num_particles}, "
            f"dim={self.dim})"
        )
