r"""Soft-disc active particle systems: the physics of :mod:`gtlib.datasets.particles`.

:class:`ActiveOUParticles` (AOUP) and :class:`ActiveBrownianParticles` (ABP) share the geometry
(periodic box or free space, minimum image), the soft pair repulsion
:math:`F(r) = \mathrm{softplus}_\beta(2r_0 - |r|)\, r/|r|` truncated at a cutoff, the harmonic
trap and one vocabulary of arguments (``num_particles, packing_fraction, box_length, v0, ...,
k, beta, r0, trap, eps, cutoff``). The state layout helpers :func:`to_state` and
:func:`from_state` live here too. Users import everything from :mod:`gtlib.datasets.particles`
(or :mod:`gtlib.datasets`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from gtlib.attention.neighbors import minimum_image
from gtlib.datasets._particle_neighbours import radius_pairs
from gtlib.validation import (
    check_finite,
    check_int,
    check_real,
    check_tensor,
    renamed_arguments,
)

__all__ = [
    "ActiveBrownianParticles",
    "ActiveOUParticles",
    "ParticleSystem",
    "from_state",
    "softplus_force_cutoff",
    "to_state",
]

# Default force tolerance: the cutoff is where the pair force magnitude falls below it.
DEFAULT_FORCE_TOLERANCE = 1e-8


# ------------------------------------------------------------------------------------------------
# State layout
def to_state(pos: Tensor, g: Tensor) -> Tensor:
    """Concatenates positions and self-propulsion per particle: ``[..., N, 2d]`` = ``[x_i, g_i]``.

    Shapes:
        pos, g: ``[..., N, d]`` (same shape) -> ``[..., N, 2d]``.
    """
    check_tensor(pos, "pos")
    check_tensor(g, "g")
    if pos.shape != g.shape or pos.dim() < 2:
        raise ValueError(
            f"`pos` and `g` must have the same shape [..., N, d], got {tuple(pos.shape)} and "
            f"{tuple(g.shape)}"
        )
    return torch.cat([pos, g], dim=-1)


def from_state(state: Tensor) -> tuple[Tensor, Tensor]:
    """Splits ``state [..., N, 2d]`` back into ``(pos [..., N, d], g [..., N, d])``."""
    check_tensor(state, "state")
    if state.dim() < 2 or state.shape[-1] % 2 != 0 or state.shape[-1] == 0:
        raise ValueError(f"`state` must have shape [..., N, 2d], got {tuple(state.shape)}")
    d = state.shape[-1] // 2
    return state[..., :d], state[..., d:]


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
    beta = check_real(beta, "beta", positive=True)
    r0 = check_real(r0, "r0", positive=True)
    tolerance = check_real(tolerance, "tolerance", positive=True)
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
        self.num_particles = check_int(num_particles, "num_particles", minimum=1)
        self.dim = dim
        self.k = check_real(k, "k", nonnegative=True)
        self.beta = check_real(beta, "beta", positive=True)
        self.r0 = check_real(r0, "r0", positive=True)
        self.trap = check_real(trap, "trap", nonnegative=True)
        if packing_fraction is not None and box_length is not None:
            raise ValueError("give at most one of `packing_fraction` and `box_length`")
        if packing_fraction is not None:
            phi = check_real(packing_fraction, "packing_fraction")
            if not 0.0 < phi < 1.0:
                raise ValueError(f"`packing_fraction` must lie in (0, 1), got {phi}")
            volume = self.num_particles * _ball_volume(dim) * self.r0**dim / phi
            self.box_length = volume ** (1.0 / dim)
        elif box_length is not None:
            self.box_length = check_real(box_length, "box_length", positive=True)
        else:
            self.box_length = None
        if cutoff is None:
            self.cutoff = softplus_force_cutoff(self.beta, self.r0)
        else:
            self.cutoff = check_real(cutoff, "cutoff", positive=True)
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
        check_tensor(pos, name, floating=True)
        n, d = self.num_particles, self.dim
        if pos.dim() < 2 or tuple(pos.shape[-2:]) != (n, d):
            raise ValueError(
                f"`{name}` must have shape [..., {n}, {d}] (num_particles, dim), "
                f"got {tuple(pos.shape)}"
            )
        check_finite(pos.detach(), name)  # detached: a finiteness test needs no graph
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
        return radius_pairs(flat_pos, radius, self.box_length, batch)

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
        dim = check_int(dim, "dim", minimum=1)
        self.v0 = check_real(v0, "v0")
        self.gamma = check_real(gamma, "gamma", positive=True)
        self.eps = check_real(eps, "eps", nonnegative=True)
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
        dt = check_real(dt, "dt", positive=True)
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
        self.v0 = check_real(v0, "v0")
        self.rotational_diffusion = check_real(
            rotational_diffusion, "rotational_diffusion", positive=True
        )
        self.eps = check_real(eps, "eps", nonnegative=True)
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
        check_tensor(state, "state", floating=True)
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
        dt = check_real(dt, "dt", positive=True)
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


ParticleSystem = ActiveOUParticles | ActiveBrownianParticles
