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

import warnings
from typing import Any

import numpy as np
import scipy.linalg
import torch
from torch import Tensor

from gtlib.validation import check_finite, check_index, check_int, check_real, check_tensor

__all__ = [
    "LinearSDE",
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
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise TypeError(f"`{name}` must be a real matrix or vector, got {value!r}") from error
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
    n = check_int(n, "n", minimum=1)
    A_np, D_np = _validate(A, D)
    C = _covariance_np(A_np, D_np)
    L = _tensor(np.linalg.cholesky(C))
    z = torch.randn(n, C.shape[0], generator=generator, dtype=torch.float64)
    return z @ L.T


class LinearSDE:
    r"""The linear SDE :math:`dX = AX\,dt + \sqrt{2D}\,dW` (Ornstein–Uhlenbeck process) with
    its closed forms.

    Stationary law :math:`\mathcal N(0, C)`, :math:`AC + CA^\top + 2D = 0`; exact transition
    over a time :math:`t`: Gaussian with mean :math:`e^{At}x` and covariance
    :math:`C - e^{At} C e^{A^\top t}`; score :math:`-C^{-1}x`, probability-flow velocity
    :math:`\Omega x`, entropy production rate :math:`\sigma` (see the module docstring).
    The constructors of this module (:func:`rotating_particle`, :func:`brownian_gyrator`,
    :func:`bead_chain`, :func:`aoup_harmonic_trap`) return one with the closed forms they know;
    built from ``A`` and ``D`` alone, ``sigma`` comes from :func:`linear_entropy_production`
    and the covariance from the Lyapunov equation. (Formerly two classes: ``LinearSystem``,
    still importable with a deprecation warning, and ``LinearSDE``.)

    Args:
        A: ``[n, n]`` stable drift matrix (every eigenvalue with negative real part).
        D: ``[n]`` diagonal or ``[n, n]`` symmetric positive semi-definite diffusion matrix,
            with ``(A, D)`` controllable (the stationary covariance is positive definite).
        sigma: closed-form total entropy production rate, if known (nats per unit time).
        covariance: closed-form stationary covariance ``[n, n]``, if known; it must solve the
            Lyapunov equation (checked).
        parts: further closed-form quantities by name (e.g. ``"sigma_g"`` for the AOUP).
        groups: integer labellings of the coordinates by name (e.g. ``"particle"``, ``"dof"``),
            ready for :func:`gtlib.entropy.entropy_production`'s ``groups``.

    Attributes:
        A, D: the matrices ``[n, n]`` (float64).
        num_coordinates: ``n``.

    Shapes:
        x: ``[..., n]``.
    """

    def __init__(
        self,
        A: ArrayLike,
        D: ArrayLike,
        *,
        sigma: float | None = None,
        covariance: ArrayLike | None = None,
        parts: dict[str, float] | None = None,
        groups: dict[str, Tensor] | None = None,
    ) -> None:
        A_np, D_np = _validate(A, D)
        self._lyapunov = _covariance_np(A_np, D_np)  # raises unless (A, D) is controllable
        self.A = _tensor(A_np)
        self.D = _tensor(D_np)
        self.num_coordinates = A_np.shape[0]
        self._sigma = None if sigma is None else check_real(sigma, "sigma")
        self._covariance = None
        if covariance is not None:
            self._covariance = _tensor(self._check_covariance(covariance))
        self.parts = {} if parts is None else self._check_parts(parts)
        self.groups = {} if groups is None else self._check_groups(groups)

    # -------------------------------------------------------------- construction checks
    def _check_covariance(self, covariance: ArrayLike) -> np.ndarray:
        C = _to_numpy_matrix(covariance, "covariance")
        n = self.num_coordinates
        if C.shape != (n, n):
            raise ValueError(f"`covariance` must have shape ({n}, {n}), got {tuple(C.shape)}")
        A, D = self.A.numpy(), self.D.numpy()
        residual = np.abs(A @ C + C @ A.T + 2.0 * D).max()
        scale = max(np.abs(A).max() * np.abs(C).max(), np.abs(D).max(), 1e-300)
        if residual > 1e-8 * scale:
            raise ValueError(
                f"`covariance` does not solve A C + C A^T + 2D = 0 (residual {residual:.3g})"
            )
        return C

    @staticmethod
    def _check_parts(parts: Any) -> dict[str, float]:
        if not isinstance(parts, dict):
            raise TypeError(f"`parts` must be a dict of floats, got {type(parts).__name__}")
        return {str(key): check_real(value, f"parts[{key!r}]") for key, value in parts.items()}

    def _check_groups(self, groups: Any) -> dict[str, Tensor]:
        if not isinstance(groups, dict):
            raise TypeError(f"`groups` must be a dict of tensors, got {type(groups).__name__}")
        out = {}
        for key, value in groups.items():
            name = f"groups[{key!r}]"
            check_tensor(value, name, integer=True, dim=1)
            if value.numel() != self.num_coordinates:
                raise ValueError(
                    f"{name} must label the {self.num_coordinates} coordinates, got "
                    f"{value.numel()} labels"
                )
            out[str(key)] = check_index(value, name)
        return out

    # -------------------------------------------------------------- closed forms
    @property
    def stationary_covariance(self) -> Tensor:
        """:math:`C` ``[n, n]``: the closed form given to the constructor, else the solution
        of the Lyapunov equation (float64)."""
        if self._covariance is not None:
            return self._covariance.clone()
        return _tensor(self._lyapunov)

    @property
    def covariance(self) -> Tensor:
        """Deprecated name of :attr:`stationary_covariance`."""
        _deprecated(
            "LinearSDE.covariance is deprecated, use LinearSDE.stationary_covariance", stacklevel=3
        )
        return self.stationary_covariance

    @property
    def dim(self) -> int:
        """Deprecated name of :attr:`num_coordinates` (``dim`` is the spatial dimension
        elsewhere in gtlib)."""
        _deprecated("LinearSDE.dim is deprecated, use LinearSDE.num_coordinates", stacklevel=3)
        return self.num_coordinates

    @property
    def sigma(self) -> float:
        """Total entropy production rate: the closed form given to the constructor, else
        :func:`linear_entropy_production`'s trace route."""
        if self._sigma is None:
            self._sigma = linear_entropy_production(self.A, self.D)[0]
        return self._sigma

    @property
    def score_matrix(self) -> Tensor:
        """:math:`S = -C^{-1}`: the score is :math:`s(x) = Sx` (:func:`linear_score`)."""
        return _tensor(-np.linalg.inv(self._lyapunov))

    @property
    def velocity_matrix(self) -> Tensor:
        r""":math:`\Omega = A + DC^{-1}`: :math:`v(x) = \Omega x`
        (:func:`linear_velocity_matrix`)."""
        return _tensor(self.A.numpy() + self.D.numpy() @ np.linalg.inv(self._lyapunov))

    @property
    def diffusion(self) -> Tensor:
        """The diagonal of ``D`` as a ``[n]`` vector (the estimators' ``diffusion`` argument)."""
        return torch.diagonal(self.D).clone()

    # -------------------------------------------------------------- dynamics
    def _check_x(self, x: Any) -> Tensor:
        check_tensor(x, "x", floating=True)
        if x.dim() < 1 or x.shape[-1] != self.num_coordinates:
            raise ValueError(
                f"`x` must have shape [..., {self.num_coordinates}], got {tuple(x.shape)}"
            )
        check_finite(x, "x")
        return x

    def drift(self, x: Tensor) -> Tensor:
        """:math:`b(x) = Ax`, ``[..., n]`` -> ``[..., n]``."""
        x = self._check_x(x)
        return x @ self.A.to(dtype=x.dtype, device=x.device).T

    def sample_stationary(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        r"""``n`` exact independent samples of :math:`\mathcal N(0, C)`, ``[n, num_coordinates]``
        float64 (the numbers of :func:`stationary_sample_linear`)."""
        n = check_int(n, "n", minimum=1)
        L = _tensor(np.linalg.cholesky(self._lyapunov))
        z = torch.randn(n, self.num_coordinates, generator=generator, dtype=torch.float64)
        return z @ L.T

    def transition(self, dt: float) -> tuple[Tensor, Tensor]:
        """``(expm(A dt), C - expm(A dt) C expm(A dt)^T)`` in float64."""
        dt = check_real(dt, "dt", positive=True)
        E = scipy.linalg.expm(self.A.numpy() * dt)
        C = self._lyapunov
        Q = C - E @ C @ E.T
        return _tensor(E), _tensor(0.5 * (Q + Q.T))

    def step_exact(self, x: Tensor, dt: float, generator: torch.Generator | None = None) -> Tensor:
        """Exact OU transition over ``dt``: ``x' = e^{A dt} x + Q^{1/2} z``.

        Shapes:
            x: ``[..., n]`` -> ``[..., n]``.
        """
        x = self._check_x(x)
        E, Q = self.transition(dt)
        eigval, eigvec = torch.linalg.eigh(Q)
        root = eigvec * eigval.clamp(min=0.0).sqrt()
        z = torch.randn(x.shape, generator=generator, dtype=torch.float64)
        out = x.double().cpu() @ E.T + z @ root.T
        return out.to(dtype=x.dtype, device=x.device)

    def __repr__(self) -> str:
        known = "closed form" if self._sigma is not None else "Lyapunov"
        return f"LinearSDE(num_coordinates={self.num_coordinates}, sigma from {known})"


def _deprecated(message: str, stacklevel: int = 2) -> None:
    warnings.warn(message, FutureWarning, stacklevel=stacklevel + 1)


def __getattr__(name: str) -> Any:
    if name == "LinearSystem":  # the former name of the linear systems' class
        _deprecated(
            "gtlib.entropy.reference.LinearSystem is deprecated, use LinearSDE (one class for "
            "the linear SDE)"
        )
        return LinearSDE
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _positive(value: Any, name: str, allow_zero: bool = False) -> float:
    return check_real(value, name, positive=not allow_zero, nonnegative=allow_zero)


def rotating_particle(k: float, a: float, d: float) -> LinearSDE:
    r"""Rotationally driven particle: :math:`A = [[-k, -a], [a, -k]]`, :math:`D = d I`.

    :math:`C = (d/k) I`, :math:`\Omega = [[0, -a], [a, 0]]`, :math:`\sigma = 2a^2/k` (independent of
    :math:`d`), split equally between the two coordinates.
    """
    k = _positive(k, "k")
    d = _positive(d, "d")
    a = check_real(a, "a")
    A = torch.tensor([[-k, -a], [a, -k]], dtype=torch.float64)
    D = d * torch.eye(2, dtype=torch.float64)
    return LinearSDE(
        A=A,
        D=D,
        sigma=2.0 * a * a / k,
        covariance=(d / k) * torch.eye(2, dtype=torch.float64),
    )


def brownian_gyrator(K: ArrayLike, T1: float, T2: float) -> LinearSDE:
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
    return LinearSDE(A=_tensor(-K_np), D=_tensor(np.diag([T1, T2])), sigma=float(sigma))


def bead_chain(num_beads: int, k: float, e: float, T1: float, T2: float) -> LinearSDE:
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
    num_beads = check_int(num_beads, "num_beads", minimum=1)
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
    return LinearSDE(
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
) -> LinearSDE:
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
    v0 = check_real(v0, "v0")
    if eps == 0.0 and v0 == 0.0:
        raise ValueError("with `eps` = 0, `v0` must be non-zero (else x has no stationary density)")
    num_particles = check_int(num_particles, "num_particles", minimum=1)
    dim = check_int(dim, "dim", minimum=1)
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
    return LinearSDE(
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
