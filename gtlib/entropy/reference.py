r"""Closed-form references for entropy production in linear (Ornstein–Uhlenbeck) systems.

Convention: :math:`k_B = 1`, every variable is even under time reversal (Seifert's convention), and
entropy production rates (EPR) are per unit time, in nats. Under the Fodor/Bonilla convention, where
the self-propulsion of an active particle is odd, an AOUP in a harmonic trap has zero EPR; here it
does not.

A linear system

.. math::  dX = A X\,dt + \sqrt{2D}\,dW, \qquad X \in \mathbb{R}^d,

with :math:`A` stable (every eigenvalue has negative real part) and :math:`D` symmetric positive
semi-definite has the Gaussian stationary law :math:`\mathcal N(0, C)`, where :math:`C` solves the
Lyapunov equation :math:`A C + C A^\top + 2D = 0`. :math:`C` is positive definite exactly when
:math:`(A, D)` is controllable (noise reaches every coordinate through the drift); every function
here requires it. Then

- score :math:`s(x) = -C^{-1} x`;
- probability-flow velocity :math:`v(x) = b(x) - D s(x) = \Omega x` with
  :math:`\Omega = A + D C^{-1}`;
- :math:`\mathrm{tr}\Omega = 0` (trace of :math:`C^{-1}(AC + CA^\top + 2D) = 0`), so
  :math:`\nabla\cdot v = 0` pointwise, and :math:`v\cdot s = 0` pointwise;
- EPR :math:`\sigma = E[v^\top D^+ v] = \mathrm{tr}(\Omega^\top D^+ \Omega C)`, the sum
  running only over the noisy block (the range of :math:`D`; :math:`D^+` is the pseudo-inverse).

Expanding :math:`\Omega` and using :math:`\mathrm{tr}(C^{-1} D) = -\mathrm{tr} A` (trace of the
Lyapunov equation multiplied by :math:`C^{-1}`) gives, with :math:`\Pi = D D^+` the projector onto
the noisy block,

.. math::  \sigma = \mathrm{tr}(A^\top D^+ A C) + 2\,\mathrm{tr}(\Pi A) - \mathrm{tr} A
           = \mathrm{tr}(A^\top D^+ A C) + \mathrm{tr} A_{NN} - \mathrm{tr} A_{ZZ},

where :math:`N` is the noisy and :math:`Z` the noiseless block (for diagonal :math:`D`). With
:math:`D` invertible this is the familiar :math:`\mathrm{tr}(A^\top D^{-1} A C) + \mathrm{tr} A`.
In the hypoelliptic case it is *not* :math:`\mathrm{tr}(A^\top D^+ A C)` plus the trace of
:math:`A` over the noisy block alone: the noiseless block enters with the opposite sign. For the
AOUP with :math:`\varepsilon = 0` (noise on :math:`g` only),
:math:`\mathrm{tr}(A^\top D^+ A C) = \gamma C_{gg} = \gamma`, :math:`A_{gg} = -\gamma`,
:math:`A_{xx} = -\kappa`, so :math:`\sigma = \kappa`, the known closed form.

For diagonal :math:`D` the EPR splits per coordinate,
:math:`\sigma_k = (\Omega C \Omega^\top)_{kk} / D_{kk}` on noisy coordinates (zero on noiseless
ones), and these sum to :math:`\sigma`.

All matrices are returned as ``torch.float64`` tensors and rates as Python floats.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

__all__ = [
    "LinearSystem",
    "aoup_harmonic_trap",
    "bead_chain",
    "brownian_gyrator",
    "linear_entropy_production",
    "linear_score",
    "linear_stationary_covariance",
    "linear_velocity_matrix",
    "rotating_particle",
    "stationary_sample_linear",
]

ArrayLike = Tensor | np.ndarray | list | tuple


def _to_numpy_matrix(value: ArrayLike, name: str) -> np.ndarray:
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    array = np.asarray(value, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"`{name}` must contain only finite values")
    return array


def _validate(A: ArrayLike, D: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Check shapes, stability of ``A`` and symmetric PSD ``D`` (a vector means a diagonal)."""
    A_np = _to_numpy_matrix(A, "A")
    D_np = _to_numpy_matrix(D, "D")
    if A_np.ndim != 2 or A_np.shape[0] != A_np.shape[1] or A_np.shape[0] == 0:
        raise ValueError(f"`A` must be a non-empty square matrix, got shape {tuple(A_np.shape)}")
    d = A_np.shape[0]
    if D_np.ndim == 1:
        D_np = np.diag(D_np)
    if D_np.shape != (d, d):
        raise ValueError(
            f"`D` must have shape ({d}, {d}) or ({d},) to match `A`, got {tuple(D_np.shape)}"
        )
    scale = max(1.0, float(np.abs(D_np).max()))
    if not np.allclose(D_np, D_np.T, rtol=0.0, atol=1e-12 * scale):
        raise ValueError("`D` must be symmetric")
    eig_d = np.linalg.eigvalsh(0.5 * (D_np + D_np.T))
    if eig_d.min() < -1e-12 * scale:
        raise ValueError(
            f"`D` must be positive semi-definite, smallest eigenvalue {eig_d.min():.3g}"
        )
    eig_a = np.linalg.eigvals(A_np)
    if eig_a.real.max() >= 0.0:
        raise ValueError(
            "`A` must be stable (every eigenvalue with negative real part), "
            f"largest real part {eig_a.real.max():.3g}"
        )
    return A_np, 0.5 * (D_np + D_np.T)


def _covariance_np(A: np.ndarray, D: np.ndarray) -> np.ndarray:
    C = scipy.linalg.solve_continuous_lyapunov(A, -2.0 * D)
    C = 0.5 * (C + C.T)
    eig = np.linalg.eigvalsh(C)
    if eig.min() <= 1e-12 * max(eig.max(), 1e-300):
        raise ValueError(
            "the stationary covariance is singular: (A, D) is not controllable (the noise does not "
            "reach every coordinate), so there is no stationary density and no score"
        )
    return C


def _tensor(array: np.ndarray) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float64)


def linear_stationary_covariance(A: ArrayLike, D: ArrayLike) -> Tensor:
    r"""Stationary covariance :math:`C` of :math:`dX = AX\,dt + \sqrt{2D}\,dW`.

    Solves :math:`A C + C A^\top + 2D = 0` with ``scipy.linalg.solve_continuous_lyapunov``.

    Args:
        A: drift matrix ``[d, d]``, stable (all eigenvalues with negative real part).
        D: diffusion matrix ``[d, d]`` (or its diagonal ``[d]``), symmetric positive semi-definite.

    Returns:
        ``C [d, d]`` in float64, symmetric positive definite.

    Raises:
        ValueError: on bad shapes, non-finite entries, unstable ``A``, non-symmetric or indefinite
            ``D``, or a singular ``C`` (``(A, D)`` not controllable).
    """
    A_np, D_np = _validate(A, D)
    return _tensor(_covariance_np(A_np, D_np))


def linear_score(A: ArrayLike, D: ArrayLike) -> Tensor:
    r"""Score matrix :math:`S = -C^{-1}`, so that :math:`s(x) = \nabla \log\rho(x) = S x`.

    For a batch ``x [n, d]`` the scores are ``x @ S.T`` (``S`` is symmetric).
    """
    A_np, D_np = _validate(A, D)
    C = _covariance_np(A_np, D_np)
    return _tensor(-np.linalg.inv(C))


def linear_velocity_matrix(A: ArrayLike, D: ArrayLike) -> Tensor:
    r"""Probability-flow velocity matrix :math:`\Omega = A + D C^{-1}`: :math:`v(x) = \Omega x`.

    :math:`\mathrm{tr}\Omega = 0`, so :math:`\nabla\cdot v = 0` at stationarity.
    """
    A_np, D_np = _validate(A, D)
    C = _covariance_np(A_np, D_np)
    return _tensor(A_np + D_np @ np.linalg.inv(C))


def linear_entropy_production(A: ArrayLike, D: ArrayLike) -> tuple[float, Tensor | None]:
    r"""Stationary entropy production rate of a linear system, total and per coordinate.

    Total (trace route, see the module docstring for the derivation):

    .. math::  \sigma = \mathrm{tr}(A^\top D^+ A C) + 2\mathrm{tr}(\Pi A)
               - \mathrm{tr}A, \qquad \Pi = D D^+,

    which reduces to :math:`\mathrm{tr}(A^\top D^{-1} A C) + \mathrm{tr} A` for invertible
    :math:`D`. Per coordinate (velocity route, diagonal :math:`D` only):
    :math:`\sigma_k = (\Omega C\Omega^\top)_{kk} / D_{kk}` on noisy coordinates, 0 on noiseless
    ones; these sum to :math:`\sigma`.

    Returns:
        ``(sigma, per_coordinate)``: ``sigma`` a float, ``per_coordinate`` a float64 tensor ``[d]``,
        or ``None`` when ``D`` is not diagonal (the split per coordinate is then not defined).
    """
    A_np, D_np = _validate(A, D)
    C = _covariance_np(A_np, D_np)
    scale = max(float(np.abs(D_np).max()), 1e-300)
    D_pinv = np.linalg.pinv(D_np, rcond=1e-12, hermitian=True)
    projector = D_np @ D_pinv
    total = float(
        np.trace(A_np.T @ D_pinv @ A_np @ C) + 2.0 * np.trace(projector @ A_np) - np.trace(A_np)
    )
    off_diagonal = D_np - np.diag(np.diag(D_np))
    if np.abs(off_diagonal).max(initial=0.0) > 1e-12 * scale:
        return total, None
    omega = A_np + D_np @ np.linalg.inv(C)
    flux = np.diag(omega @ C @ omega.T)
    diag = np.diag(D_np)
    noisy = diag > 1e-12 * scale
    per_coordinate = np.where(noisy, flux / np.where(noisy, diag, 1.0), 0.0)
    return total, _tensor(per_coordinate)


def stationary_sample_linear(
    A: ArrayLike, D: ArrayLike, n: int, generator: torch.Generator | None = None
) -> Tensor:
    r"""Exact independent samples from the stationary law :math:`\mathcal N(0, C)`.

    ``x = z L^\top`` with :math:`C = L L^\top` (Cholesky) and ``z`` standard normal drawn from
    ``generator`` (seeded by the caller).

    Returns:
        ``[n, d]`` float64 tensor.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise ValueError(f"`n` must be a positive int, got {n!r}")
    A_np, D_np = _validate(A, D)
    C = _covariance_np(A_np, D_np)
    L = _tensor(np.linalg.cholesky(C))
    z = torch.randn(n, C.shape[0], generator=generator, dtype=torch.float64)
    return z @ L.T


@dataclass(frozen=True)
class LinearSystem:
    r"""A linear system :math:`dX = AX\,dt + \sqrt{2D}\,dW` with its closed-form EPR.

    Attributes:
        A: drift matrix ``[d, d]`` (float64).
        D: diffusion matrix ``[d, d]`` (float64, diagonal for every case here).
        sigma: closed-form total entropy production rate (nats per unit time).
        covariance: closed-form stationary covariance ``[d, d]`` where one is known, else ``None``.
        parts: further closed-form quantities by name (e.g. ``"sigma_g"`` for the AOUP).
        groups: integer labellings of the coordinates by name (e.g. ``"particle"``, ``"dof"``),
            ready for :func:`gtlib.entropy.entropy_production`'s ``groups``.
    """

    A: Tensor
    D: Tensor
    sigma: float
    covariance: Tensor | None = None
    parts: dict[str, float] = field(default_factory=dict)
    groups: dict[str, Tensor] = field(default_factory=dict)

    @property
    def diffusion(self) -> Tensor:
        """The diagonal of ``D`` as a ``[d]`` vector (the estimators' ``diffusion`` argument)."""
        return torch.diagonal(self.D).clone()


def _positive(value: float, name: str, allow_zero: bool = False) -> float:
    value = float(value)
    if not np.isfinite(value) or value < 0.0 or (value == 0.0 and not allow_zero):
        kind = "non-negative" if allow_zero else "positive"
        raise ValueError(f"`{name}` must be finite and {kind}, got {value}")
    return value


def rotating_particle(k: float, a: float, d: float) -> LinearSystem:
    r"""Rotationally driven particle: :math:`A = [[-k, -a], [a, -k]]`, :math:`D = d I`.

    :math:`C = (d/k) I`, :math:`\Omega = [[0, -a], [a, 0]]`, :math:`\sigma = 2a^2/k` (independent of
    :math:`d`), split equally between the two coordinates.
    """
    k = _positive(k, "k")
    d = _positive(d, "d")
    a = float(a)
    A = torch.tensor([[-k, -a], [a, -k]], dtype=torch.float64)
    D = d * torch.eye(2, dtype=torch.float64)
    return LinearSystem(
        A=A,
        D=D,
        sigma=2.0 * a * a / k,
        covariance=(d / k) * torch.eye(2, dtype=torch.float64),
    )


def brownian_gyrator(K: ArrayLike, T1: float, T2: float) -> LinearSystem:
    r"""Brownian gyrator: :math:`A = -K` (``K`` symmetric positive definite), :math:`D =
    \operatorname{diag}(T_1, T_2)`.

    .. math::  \sigma = \frac{k_{12}^2 (T_1 - T_2)^2}{T_1 T_2 (k_{11} + k_{22})}.
    """
    K_np = _to_numpy_matrix(K, "K")
    if K_np.shape != (2, 2):
        raise ValueError(f"`K` must have shape (2, 2), got {tuple(K_np.shape)}")
    if not np.allclose(K_np, K_np.T, rtol=0.0, atol=1e-12 * max(1.0, np.abs(K_np).max())):
        raise ValueError("`K` must be symmetric")
    if np.linalg.eigvalsh(K_np).min() <= 0.0:
        raise ValueError("`K` must be positive definite (so that A = -K is stable)")
    T1 = _positive(T1, "T1")
    T2 = _positive(T2, "T2")
    k11, k12, k22 = K_np[0, 0], K_np[0, 1], K_np[1, 1]
    sigma = k12**2 * (T1 - T2) ** 2 / (T1 * T2 * (k11 + k22))
    return LinearSystem(A=_tensor(-K_np), D=_tensor(np.diag([T1, T2])), sigma=float(sigma))


def bead_chain(num_beads: int, k: float, e: float, T1: float, T2: float) -> LinearSystem:
    r"""Two-temperature bead-spring chain between walls.

    ``num_beads`` beads, springs of stiffness ``k`` between neighbours and to both walls, friction
    ``e``, temperatures :math:`T_i` = ``linspace(T1, T2, num_beads)``:
    :math:`A = (k/e)\,\mathrm{tridiag}(1, -2, 1)`, :math:`D = \operatorname{diag}(T_i)/e`.

    Closed forms: :math:`N = 1`: :math:`\sigma = 0` (equilibrium);
    :math:`N = 2`: :math:`\sigma = k (T_1 - T_2)^2 / (4 e T_1 T_2)`;
    :math:`N = 5`: :math:`\sigma = k (T_1-T_2)^2 (111 T_1^2 + 430 T_1 T_2 + 111 T_2^2) /
    (495\, e\, T_1 T_2 (3T_1+T_2)(T_1+3T_2))`.
    For other ``num_beads`` no closed form is coded and ``sigma`` is computed by the Lyapunov route
    (:func:`linear_entropy_production`); ``parts["closed_form"]`` is 1.0 or 0.0 accordingly.
    """
    if isinstance(num_beads, bool) or not isinstance(num_beads, int) or num_beads < 1:
        raise ValueError(f"`num_beads` must be a positive int, got {num_beads!r}")
    k = _positive(k, "k")
    e = _positive(e, "e")
    T1 = _positive(T1, "T1")
    T2 = _positive(T2, "T2")
    n = num_beads
    A = (k / e) * (-2.0 * np.eye(n) + np.diag(np.ones(n - 1), 1) + np.diag(np.ones(n - 1), -1))
    D = np.diag(np.linspace(T1, T2, n)) / e
    if n == 1:
        sigma, closed = 0.0, True
    elif n == 2:
        sigma, closed = k * (T1 - T2) ** 2 / (4.0 * e * T1 * T2), True
    elif n == 5:
        numerator = k * (T1 - T2) ** 2 * (111 * T1**2 + 430 * T1 * T2 + 111 * T2**2)
        denominator = 495 * e * T1 * T2 * (3 * T1 + T2) * (T1 + 3 * T2)
        sigma, closed = numerator / denominator, True
    else:
        sigma, closed = linear_entropy_production(A, D)[0], False
    return LinearSystem(
        A=_tensor(A),
        D=_tensor(D),
        sigma=float(sigma),
        parts={"closed_form": 1.0 if closed else 0.0},
        groups={"bead": torch.arange(n)},
    )


def aoup_harmonic_trap(
    kappa: float,
    v0: float,
    gamma: float,
    eps: float,
    num_particles: int = 1,
    dim: int = 1,
) -> LinearSystem:
    r"""Independent active Ornstein–Uhlenbeck particles in a harmonic trap.

    Per particle and Cartesian dimension:

    .. math::  dx = (-\kappa x + v_0 g)\,dt + \sqrt{2\varepsilon}\,dW, \qquad
               dg = -\gamma g\,dt + \sqrt{2\gamma}\,dB.

    State ordering: the ``num_particles * dim`` positions first (particle-major, ``i * dim + a``),
    then the self-propulsions in the same order; ``groups["particle"]`` maps each coordinate to its
    particle and ``groups["dof"]`` to 0 (``x``) or 1 (``g``).

    Closed forms per particle and dimension (multiply by ``num_particles * dim``):
    :math:`C_{xx} = (\varepsilon(\gamma+\kappa) + v_0^2) / (\kappa(\gamma+\kappa))`,
    :math:`C_{xg} = v_0/(\gamma+\kappa)`, :math:`C_{gg} = 1`;
    for :math:`\varepsilon > 0`: :math:`\sigma = \gamma v_0^2 / (\varepsilon(\gamma+\kappa))`,
    :math:`\sigma_g = \gamma\kappa v_0^2 / (\varepsilon(\gamma+\kappa)^2 + \gamma v_0^2)`,
    :math:`\sigma_x = \sigma - \sigma_g`; hypoelliptic :math:`\varepsilon = 0` (requires
    :math:`v_0 \neq 0`): :math:`\sigma = \sigma_g = \kappa`, :math:`\sigma_x = 0` (no noise on
    ``x``).
    ``parts`` holds the totals ``"sigma_x"``, ``"sigma_g"`` and the per-particle-per-dimension
    ``"sigma_x_1"``, ``"sigma_g_1"``, ``"sigma_1"``.
    """
    kappa = _positive(kappa, "kappa")
    gamma = _positive(gamma, "gamma")
    eps = _positive(eps, "eps", allow_zero=True)
    v0 = float(v0)
    if not np.isfinite(v0):
        raise ValueError(f"`v0` must be finite, got {v0}")
    if eps == 0.0 and v0 == 0.0:
        raise ValueError("with `eps` = 0, `v0` must be non-zero (else x has no stationary density)")
    for name, value in (("num_particles", num_particles), ("dim", dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, got {value!r}")
    m = num_particles * dim
    eye = np.eye(m)
    A = np.block([[-kappa * eye, v0 * eye], [np.zeros((m, m)), -gamma * eye]])
    D = np.diag(np.concatenate([np.full(m, eps), np.full(m, gamma)]))
    c_xx = (eps * (gamma + kappa) + v0**2) / (kappa * (gamma + kappa))
    c_xg = v0 / (gamma + kappa)
    C = np.block([[c_xx * eye, c_xg * eye], [c_xg * eye, eye]])
    if eps > 0.0:
        sigma_1 = gamma * v0**2 / (eps * (gamma + kappa))
        sigma_g_1 = gamma * kappa * v0**2 / (eps * (gamma + kappa) ** 2 + gamma * v0**2)
    else:
        sigma_1 = sigma_g_1 = kappa
    sigma_x_1 = sigma_1 - sigma_g_1
    particle = torch.arange(num_particles).repeat_interleave(dim)
    return LinearSystem(
        A=_tensor(A),
        D=_tensor(D),
        sigma=float(m * sigma_1),
        covariance=_tensor(C),
        parts={
            "sigma_x": float(m * sigma_x_1),
            "sigma_g": float(m * sigma_g_1),
            "sigma_1": float(sigma_1),
            "sigma_x_1": float(sigma_x_1),
            "sigma_g_1": float(sigma_g_1),
        },
        groups={
            "particle": torch.cat([particle, particle]),
            "dof": torch.cat([torch.zeros(m, dtype=torch.long), torch.ones(m, dtype=torch.long)]),
        },
    )
