r"""PDE data generators: Darcy flow, 2-D incompressible Navier–Stokes, 1-D viscous Burgers.

The recipes follow the FNO benchmarks (Li et al., ICLR 2021). Each public generator returns its
arrays as float32 NumPy arrays and, when ``out`` is given, writes them in The Well layout
(``layout="well"``, ``out`` is a base directory) or the PDEBench layout (``layout="pdebench"``,
``out`` is a file path). All grids are indexed ``[..., i, j]`` <-> ``(x_i, y_j)`` ("ij").

Darcy flow (steady)
    :math:`-\nabla\cdot(a\nabla u) = f` on :math:`(0,1)^2`, :math:`u=0` on the boundary, ``f = 1``.
    :math:`a = 12` where :math:`g \ge 0` and :math:`3` where :math:`g<0`, with the Gaussian field
    :math:`g \sim N(0, \tau^{2(\alpha-1)}(-\Delta + \tau^2 I)^{-\alpha})` (Neumann Laplacian,
    mean mode removed), see :func:`gaussian_random_field_2d`. Node grid with the boundary points,
    ``resolution`` points per side, spacing ``h = 1/(resolution-1)``; 5-point finite differences,
    see :func:`solve_darcy`.

Navier–Stokes (vorticity form, unit torus)
    :math:`\partial_t w + u\cdot\nabla w = \nu\Delta w + f`, :math:`u = (\partial_y\psi,
    -\partial_x\psi)`, :math:`-\Delta\psi = w`, :math:`f = 0.1(\sin 2\pi(x+y) + \cos 2\pi(x+y))`.
    :math:`w_0 \sim N(0, s\,(-\Delta + 49 I)^{-2.5})` with default ``ic_scale`` :math:`s = 7^3`:
    the FNO paper writes :math:`7^{3/2}`, which its released generator uses as the *amplitude*
    (standard-deviation prefactor :math:`\tau^{\alpha - d/2}`, the same convention as Darcy's
    :math:`\tau^{\alpha-1}`), so the variance prefactor is :math:`7^3`. Pseudo-spectral on a
    periodic grid :math:`x_j = j/R`, 2/3 dealiasing of the advection term, Crank–Nicolson for
    :math:`\nu\Delta` and Heun (explicit trapezoid) for advection and forcing, see
    :class:`NavierStokes2D`. The step is chosen per output interval from the advective CFL
    condition ``dt = cfl * dx / max|u|`` (``cfl = 0.5``), re-evaluated every step, unless ``dt``
    is given. For ``nu <= 1e-4`` use ``cfl = 0.2`` or a finer ``solve_resolution``.
    Defaults: ``nu = 1e-3``, ``t_final = 20``, ``n_snapshots = 21`` (one frame per time unit,
    including ``t = 0``).

Burgers (periodic on :math:`[0,1)`)
    :math:`u_t + (u^2/2)_x = \nu u_{xx}`, :math:`u_0 \sim N(0, 625(-\Delta + 25 I)^{-2})` (mean mode
    removed). Fourier pseudo-spectral with 2/3 dealiasing and ETDRK4 (Cox–Matthews, coefficients by
    the Kassam–Trefethen contour integral), see :class:`Burgers1D`; ``dt = cfl * dx / max|u|``
    with ``cfl = 0.5``. Defaults: ``nu = 0.1``, ``t_final = 1``, ``n_snapshots = 11``.

Where the files put things
    The Well (``<out>/<name>/data/{train,valid,test}/<name>.hdf5`` and ``<out>/<name>/stats.yaml``,
    names ``darcy``, ``navier_stokes_2d``, ``burgers_1d``); constant scalars in ``scalars/`` hold
    the simulation parameters:

    * ``navier_stokes_2d``: ``t0_fields/vorticity [N, T, R, R]``,
      ``t1_fields/velocity [N, T, R, R, 2]``, ``t0_fields/forcing [R, R]`` (sample- and
      time-invariant), ``dimensions/time [T]``, ``x [R]``, ``y [R]`` (``j/R``), periodic
      boundaries ``x_periodic``/``y_periodic``.
    * ``burgers_1d``: ``t0_fields/u [N, T, X]``, ``dimensions/time [T]``, ``x [X]``, periodic.
    * ``darcy`` (steady): one time level. ``t0_fields/coefficient [N, R, R]`` is time-invariant
      (``time_varying=False``) and ``t0_fields/solution [N, 1, R, R]`` is time-varying with
      ``dimensions/time = [0.0]``; ``x``, ``y`` are the nodes ``j/(R-1)``; ``x_wall``/``y_wall``
      boundaries (``bc_type='wall'``, homogeneous Dirichlet, ``values`` = 0). the_well's
      ``WellDataset(path=<out>/darcy, well_split_name=..., n_steps_input=0, n_steps_output=1)``
      yields ``constant_fields [R, R, 1]`` = coefficient and ``output_fields [1, R, R, 1]`` =
      solution. Delta statistics of ``solution`` are zeros (no time differences exist). Root
      attrs ``input_fields = ["coefficient"]``, ``target_fields = ["solution"]`` let
      ``gtlib.datasets.PDEDataset(<out>/darcy, split=...)`` pick inputs and targets by itself.

    Any split may be empty (``splits=(0, 0, 1)`` writes a test-only set); without a train split
    no ``stats.yaml`` is written (a warning says so): normalise such data with the statistics of
    its training set.

    PDEBench (one ``.hdf5`` with all samples):

    * Darcy: ``tensor [N, 1, X, Y]`` (solution), ``nu [N, X, Y]`` (coefficient),
      ``x-coordinate [X]``, ``y-coordinate [Y]``; attrs ``beta`` (the source ``f``), ``alpha``,
      ``tau``.
    * Burgers: ``tensor [N, T, X]``, ``x-coordinate [X]``, ``t-coordinate [T + 1]`` (as PDEBench:
      the ``T`` frame times followed by one more output interval); attr ``Nu`` (our ``nu``).
    * Navier–Stokes: ``velocity [N, T, X, Y, 2]``, ``force [N, X, Y, 2]`` (the divergence-free
      velocity forcing :math:`F = (\partial_y\chi, -\partial_x\chi)`, :math:`-\Delta\chi = f`, whose
      curl is the vorticity forcing ``f``), ``t [N, T]``; attr ``nu``. PDEBench's ``particles``
      (passive tracer fields of its own solver) has no counterpart here and is not written.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from scipy.fft import idctn
from tqdm.auto import tqdm

from gtlib.datasets.generate import _pde_writers as writers
from gtlib.validation import check_choice, check_int, check_real, describe

__all__ = [
    "Burgers1D",
    "NavierStokes2D",
    "burgers_1d",
    "darcy",
    "gaussian_random_field_1d",
    "gaussian_random_field_2d",
    "navier_stokes_2d",
    "solve_burgers_1d",
    "solve_darcy",
    "solve_navier_stokes_2d",
]

LAYOUTS = ("well", "pdebench")


# ----------------------------------------------------------------------------- validation


def _check_splits(splits: Sequence[float], n: int) -> tuple[float, float, float]:
    if isinstance(splits, str) or not isinstance(splits, (Sequence, np.ndarray)):
        raise TypeError(
            f"splits must be three fractions (train, valid, test), got {describe(splits)}"
        )
    if len(splits) != 3:
        raise ValueError(f"splits must be three fractions (train, valid, test), got {splits!r}")
    values = tuple(check_real(s, "splits", nonnegative=True) for s in splits)
    if abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"splits must be non-negative and sum to 1, got {splits!r}")
    return values  # type: ignore[return-value]


def _check_output(out: str | Path | None, layout: str) -> Path | None:
    check_choice(layout, "layout", LAYOUTS)
    if out is None:
        return None
    if not isinstance(out, (str, os.PathLike)):
        raise TypeError(f"out must be a str or Path, got {type(out).__name__}")
    return Path(out)


def _solve_grid(resolution: int, solve_resolution: int | None, *, nodal: bool) -> tuple[int, int]:
    """The solver's grid size and the subsampling stride onto ``resolution``."""
    if solve_resolution is None:
        return resolution, 1
    solve_resolution = check_int(solve_resolution, "solve_resolution", minimum=resolution)
    if nodal:
        if (solve_resolution - 1) % (resolution - 1):
            raise ValueError(
                f"solve_resolution - 1 ({solve_resolution - 1}) must be a multiple of "
                f"resolution - 1 ({resolution - 1}) so that grid nodes coincide"
            )
        return solve_resolution, (solve_resolution - 1) // (resolution - 1)
    if solve_resolution % resolution:
        raise ValueError(
            f"solve_resolution ({solve_resolution}) must be a multiple of resolution "
            f"({resolution}) so that grid points coincide"
        )
    return solve_resolution, solve_resolution // resolution


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is not None:
        try:
            seed = check_int(seed, "seed", minimum=0)
        except TypeError:
            raise TypeError(
                f"seed must be an int, a numpy Generator or None, got {describe(seed)}"
            ) from None
    return np.random.default_rng(seed)


def _snapshot_times(t_final: float, n_snapshots: int) -> np.ndarray:
    return np.linspace(0.0, t_final, n_snapshots)


# ----------------------------------------------------------------------------- random fields


def gaussian_random_field_2d(
    n: int,
    resolution: int,
    *,
    alpha: float = 2.0,
    tau: float = 3.0,
    scale: float | None = None,
    boundary: str = "neumann",
    seed: int | np.random.Generator | None = 0,
) -> np.ndarray:
    r"""Samples of :math:`g \sim N(0, s\,(-\Delta + \tau^2 I)^{-\alpha})` on :math:`[0,1]^2`.

    The Karhunen–Loève expansion over the Laplacian's eigenfunctions :math:`\phi_k` with the
    constant mode removed: :math:`g = \sum_{k \ne 0} \sqrt{s}\,(\lambda_k + \tau^2)^{-\alpha/2}
    \xi_k \phi_k`, :math:`\xi_k \sim N(0,1)` i.i.d.

    * ``boundary="neumann"``: :math:`\phi_k = c_{k_1}(x) c_{k_2}(y)`, :math:`c_0 = 1`,
      :math:`c_m = \sqrt2\cos(\pi m x)`, :math:`\lambda_k = \pi^2|k|^2`, modes
      :math:`0 \le k_i < R`, evaluated on the nodes :math:`x_j = j/(R-1)` (boundary included)
      with a type-I inverse DCT. Default ``scale`` :math:`s = \tau^{2(\alpha-1)}` (FNO's Darcy
      coefficients :math:`\tau^{\alpha-1}(\pi^2|k|^2+\tau^2)^{-\alpha/2}`).
    * ``boundary="periodic"``: real Fourier modes :math:`\sqrt2\cos(2\pi k\cdot x)`,
      :math:`\sqrt2\sin(2\pi k\cdot x)`, :math:`\lambda_k = 4\pi^2|k|^2`, all wavenumbers below
      the Nyquist frequency, on :math:`x_j = j/R`. Default ``scale`` :math:`s = \tau^{2\alpha-2}`.

    Shapes: returns float64 ``[n, R, R]``.
    """
    n = check_int(n, "n", minimum=1)
    resolution = check_int(resolution, "resolution", minimum=3)
    alpha = check_real(alpha, "alpha", positive=True)
    tau = check_real(tau, "tau", positive=True)
    scale = tau ** (2 * alpha - 2) if scale is None else check_real(scale, "scale", positive=True)
    rng = _rng(seed)
    if boundary == "neumann":
        k = np.arange(resolution)
        k2 = k[:, None] ** 2 + k[None, :] ** 2
        coef = math.sqrt(scale) * (math.pi**2 * k2 + tau**2) ** (-alpha / 2)
        coef[0, 0] = 0.0
        # idctn(type=1, norm="forward") gives A_0 + (-1)^j A_{R-1} + 2 sum_mid A_m cos(pi m j/(R-1))
        # per axis; these weights turn it into sum_m b_m c_m(x_j) with c_m = sqrt(2) cos, m > 0.
        w = np.full(resolution, 1 / math.sqrt(2))
        w[0], w[-1] = 1.0, math.sqrt(2)
        coef = coef * w[:, None] * w[None, :]
        xi = rng.standard_normal((n, resolution, resolution))
        return idctn(coef * xi, type=1, norm="forward", axes=(-2, -1))
    if boundary == "periodic":
        return _periodic_grf(rng, (n,), (resolution, resolution), alpha, tau, scale)
    raise ValueError(f"boundary must be 'neumann' or 'periodic', got {boundary!r}")


def gaussian_random_field_1d(
    n: int,
    resolution: int,
    *,
    alpha: float = 2.0,
    tau: float = 5.0,
    scale: float = 625.0,
    seed: int | np.random.Generator | None = 0,
) -> np.ndarray:
    r"""Periodic samples of :math:`u \sim N(0, s\,(-\Delta + \tau^2 I)^{-\alpha})` on :math:`[0,1)`.

    :math:`u(x) = \sum_{0 < k < R/2} \sqrt{2 s}\,(4\pi^2k^2 + \tau^2)^{-\alpha/2}(\xi_k\cos 2\pi kx
    + \eta_k \sin 2\pi kx)` on :math:`x_j = j/R`; the mean and Nyquist modes are zero. Its
    pointwise variance is :math:`2\sum_{0<k<R/2} s(4\pi^2k^2+\tau^2)^{-\alpha}`. Defaults are the
    FNO Burgers initial condition :math:`N(0, 625(-\Delta + 25I)^{-2})`.

    Shapes: returns float64 ``[n, R]``.
    """
    n = check_int(n, "n", minimum=1)
    resolution = check_int(resolution, "resolution", minimum=3)
    alpha = check_real(alpha, "alpha", positive=True)
    tau = check_real(tau, "tau", positive=True)
    scale = check_real(scale, "scale", positive=True)
    return _periodic_grf(_rng(seed), (n,), (resolution,), alpha, tau, scale)


def _periodic_grf(
    rng: np.random.Generator,
    batch: tuple[int, ...],
    shape: tuple[int, ...],
    alpha: float,
    tau: float,
    scale: float,
) -> np.ndarray:
    """Real periodic GRF: white noise filtered by the covariance's square root in Fourier space.

    With ``g = sum_k ghat_k exp(2 pi i k.x)``, ``ghat_k = sqrt(lambda_k / N) * DFT(xi)_k`` has
    ``E|ghat_k|^2 = lambda_k`` and Hermitian symmetry (``xi`` is real white noise, ``N`` points).
    """
    freqs = [np.fft.fftfreq(r, 1 / r) for r in shape[:-1]]
    freqs.append(np.fft.rfftfreq(shape[-1], 1 / shape[-1]))
    grids = np.meshgrid(*freqs, indexing="ij")
    k2 = sum(g**2 for g in grids)
    keep = k2 > 0
    for g, r in zip(grids, shape):
        keep &= np.abs(g) < r / 2  # drop the mean and the Nyquist modes
    n_points = int(np.prod(shape))
    amp = np.where(
        keep, np.sqrt(scale * n_points) * (4 * np.pi**2 * k2 + tau**2) ** (-alpha / 2), 0
    )
    axes = tuple(range(-len(shape), 0))
    noise = np.fft.rfftn(rng.standard_normal((*batch, *shape)), axes=axes)
    return np.fft.irfftn(amp * noise, s=shape, axes=axes)


# ----------------------------------------------------------------------------- Darcy


def _darcy_matrix(a: np.ndarray) -> sp.csc_matrix:
    """The 5-point operator -div(a grad .) on the interior nodes (row-major, x slowest)."""
    nx, ny = a.shape
    hx2, hy2 = (nx - 1) ** -2.0, (ny - 1) ** -2.0
    c = a[1:-1, 1:-1]
    east = 0.5 * (c + a[2:, 1:-1]) / hx2  # face (i + 1/2, j)
    west = 0.5 * (c + a[:-2, 1:-1]) / hx2
    north = 0.5 * (c + a[1:-1, 2:]) / hy2  # face (i, j + 1/2)
    south = 0.5 * (c + a[1:-1, :-2]) / hy2
    mx, my = c.shape
    diag = (east + west + north + south).ravel()
    up = -north.copy()
    up[:, -1] = 0.0  # no coupling across the end of a row (that neighbour is a boundary node)
    down = -south.copy()
    down[:, 0] = 0.0
    return sp.diags(
        [diag, up.ravel()[:-1], down.ravel()[1:], -east.ravel()[:-my], -west.ravel()[my:]],
        [0, 1, -1, my, -my],
        shape=(mx * my, mx * my),
        format="csc",
    )


def solve_darcy(a: np.ndarray, f: float | np.ndarray = 1.0) -> np.ndarray:
    r"""Solve :math:`-\nabla\cdot(a\nabla u) = f` on :math:`(0,1)^2`, :math:`u = 0` on the boundary.

    Node grid including the boundary, ``a`` given at the nodes :math:`(i h_x, j h_y)`,
    :math:`h_x = 1/(N_x-1)`, :math:`h_y = 1/(N_y-1)`. Second-order 5-point finite differences
    with face coefficients averaged from the two adjacent nodes,
    :math:`a_{i+1/2,j} = (a_{i,j} + a_{i+1,j})/2`:

    .. math:: -\frac{a_{i+1/2,j}(u_{i+1,j}-u_{ij}) - a_{i-1/2,j}(u_{ij}-u_{i-1,j})}{h_x^2}
              - \frac{a_{i,j+1/2}(u_{i,j+1}-u_{ij}) - a_{i,j-1/2}(u_{ij}-u_{i,j-1})}{h_y^2}
              = f_{ij},

    solved by a sparse LU factorisation (SuperLU) per coefficient field.

    Shapes: ``a`` ``[Nx, Ny]`` or ``[B, Nx, Ny]`` (positive, finite); ``f`` a scalar or an array
    broadcastable to ``a``'s shape (node values; boundary values are ignored). Returns float64 ``u``
    with ``a``'s shape, zero on the boundary.
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim not in (2, 3):
        raise ValueError(f"a must have shape [Nx, Ny] or [B, Nx, Ny], got {a.shape}")
    if min(a.shape[-2:]) < 3:
        raise ValueError(f"a needs at least 3 nodes per side, got {a.shape[-2:]}")
    if not np.all(np.isfinite(a)) or np.any(a <= 0):
        raise ValueError("a must be finite and strictly positive")
    try:
        f_arr = np.broadcast_to(np.asarray(f, dtype=np.float64), a.shape)
    except ValueError:
        raise ValueError(f"f must be a scalar or broadcastable to {a.shape}") from None
    if a.ndim == 2:
        return solve_darcy(a[None], f_arr[None])[0]
    u = np.zeros_like(a)
    for b in range(a.shape[0]):
        lu = spla.splu(
            _darcy_matrix(a[b]), permc_spec="MMD_AT_PLUS_A", options={"SymmetricMode": True}
        )
        u[b, 1:-1, 1:-1] = lu.solve(np.ascontiguousarray(f_arr[b, 1:-1, 1:-1]).ravel()).reshape(
            a.shape[1] - 2, a.shape[2] - 2
        )
    return u


def darcy(
    n: int,
    resolution: int = 64,
    *,
    solve_resolution: int | None = None,
    alpha: float = 2.0,
    tau: float = 3.0,
    seed: int = 0,
    out: str | Path | None = None,
    layout: str = "well",
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Generate ``n`` Darcy-flow samples (FNO recipe; see the module docstring).

    The coefficient is drawn and the equation solved on a ``solve_resolution`` node grid (default
    ``resolution``), then both are subsampled at the coinciding nodes, which requires
    ``(solve_resolution - 1) % (resolution - 1) == 0`` (e.g. 421 -> 85 or 141).

    Returns float32 ``{"coefficient": [n, R, R], "solution": [n, R, R]}`` with ``R = resolution``;
    writes them to ``out`` when given (``layout`` ``"well"``: ``out`` is a base directory;
    ``"pdebench"``: ``out`` is a file).
    """
    n = check_int(n, "n", minimum=1)
    resolution = check_int(resolution, "resolution", minimum=3)
    alpha, tau = check_real(alpha, "alpha", positive=True), check_real(tau, "tau", positive=True)
    out_path = _check_output(out, layout)
    splits = _check_splits(splits, n)
    fine, stride = _solve_grid(resolution, solve_resolution, nodal=True)
    rng = _rng(seed)
    coefficient = np.empty((n, resolution, resolution), dtype=np.float32)
    solution = np.empty_like(coefficient)
    for i in tqdm(range(n), desc="darcy", disable=not progress):
        g = gaussian_random_field_2d(1, fine, alpha=alpha, tau=tau, seed=rng)[0]
        a = np.where(g >= 0, 12.0, 3.0)
        u = solve_darcy(a, 1.0)
        coefficient[i] = a[::stride, ::stride]
        solution[i] = u[::stride, ::stride]
    result = {"coefficient": coefficient, "solution": solution}
    if out_path is not None:
        coords = np.linspace(0.0, 1.0, resolution)
        params = {"alpha": alpha, "tau": tau, "f": 1.0, "a_high": 12.0, "a_low": 3.0}
        if layout == "pdebench":
            writers.write_pdebench(
                out_path,
                {
                    "tensor": solution[:, None],
                    "nu": coefficient,
                    "x-coordinate": coords,
                    "y-coordinate": coords,
                },
                {"beta": 1.0, "alpha": alpha, "tau": tau},
            )
        else:
            mask = np.zeros(resolution, dtype=bool)
            mask[[0, -1]] = True
            writers.write_well_dataset(
                out_path,
                "darcy",
                fields=[
                    writers.WellField("coefficient", coefficient, time_varying=False),
                    writers.WellField("solution", solution[:, None]),
                ],
                time=np.zeros(1),
                coords={"x": coords, "y": coords},
                boundaries=[
                    writers.WellBoundary(
                        f"{d}_wall", [d], "wall", ["solution"], mask, np.zeros(2, np.float32)
                    )
                    for d in ("x", "y")
                ],
                parameters=params,
                n=n,
                splits=splits,
                input_fields=["coefficient"],
                target_fields=["solution"],
            )
    return result


# ----------------------------------------------------------------------------- Navier–Stokes


class NavierStokes2D:
    r"""Pseudo-spectral 2-D incompressible Navier–Stokes, vorticity form, on the unit torus.

    .. math:: \partial_t w = \nu\Delta w + N(w), \qquad N(w) = -u\cdot\nabla w + f, \qquad
              u = (\partial_y\psi, -\partial_x\psi),\ -\Delta\psi = w.

    One step of size :math:`h` (Crank–Nicolson on :math:`\nu\Delta`, Heun -- the explicit
    trapezoid -- on :math:`N`; second order, self-starting, so the step may change freely), with
    :math:`A = 1 + \tfrac{h}{2}\nu\Delta`, :math:`B = 1 - \tfrac{h}{2}\nu\Delta`:

    .. math:: w^* = B^{-1}(A w^n + h N(w^n)), \qquad
              w^{n+1} = B^{-1}\big(A w^n + \tfrac{h}{2}(N(w^n) + N(w^*))\big).

    The product :math:`u\cdot\nabla w` is formed on the grid and its spectrum truncated by the 2/3
    rule (modes with :math:`|k_x|` or :math:`|k_y| \ge R/3` removed). Everything is float64 and
    batched over trajectories.

    Shapes: physical fields ``[B, R, R]`` indexed ``[b, i, j]`` <-> ``(x_i, y_j) = (i/R, j/R)``;
    spectral fields ``[B, R, R//2 + 1]`` (``torch.fft.rfft2``).
    """

    def __init__(
        self,
        resolution: int,
        nu: float,
        forcing: np.ndarray | torch.Tensor | None = None,
        *,
        dealias: bool = True,
    ) -> None:
        self.resolution = check_int(resolution, "resolution", minimum=4)
        self.nu = check_real(nu, "nu", nonnegative=True)
        r = self.resolution
        mx = torch.fft.fftfreq(r, 1 / r, dtype=torch.float64)[:, None]
        my = torch.fft.rfftfreq(r, 1 / r, dtype=torch.float64)[None, :]
        self.k2 = (2 * math.pi) ** 2 * (mx**2 + my**2)
        nyq_x, nyq_y = mx.abs() == r / 2, my.abs() == r / 2
        # First derivatives: the Nyquist wavenumbers are set to zero (their sign is ambiguous).
        self.ikx = 2j * math.pi * torch.where(nyq_x, 0.0, mx).to(torch.complex128)
        self.iky = 2j * math.pi * torch.where(nyq_y, 0.0, my).to(torch.complex128)
        inv = torch.where(self.k2 > 0, 1 / torch.where(self.k2 > 0, self.k2, 1.0), 0.0)
        self.inv_k2 = inv
        if dealias:
            self.mask = ((mx.abs() < r / 3) & (my.abs() < r / 3)).to(torch.float64)
        else:
            self.mask = torch.ones_like(self.k2)
        if forcing is None:
            self.forcing_hat = torch.zeros_like(self.k2, dtype=torch.complex128)
        else:
            forcing = torch.as_tensor(forcing, dtype=torch.float64)
            if forcing.shape != (r, r):
                raise ValueError(f"forcing must have shape {(r, r)}, got {tuple(forcing.shape)}")
            self.forcing_hat = torch.fft.rfft2(forcing)

    def to_hat(self, w: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``rfft2`` of a physical field ``[B, R, R]``."""
        return torch.fft.rfft2(torch.as_tensor(w, dtype=torch.float64))

    def to_physical(self, w_hat: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_hat`."""
        # Two 1-D passes are faster than torch's 2-D c2r transform on CPU.
        return torch.fft.irfft(torch.fft.ifft(w_hat, dim=-2), n=self.resolution, dim=-1)

    def velocity_hat(self, w_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Spectra of :math:`u = \\partial_y\\psi`, :math:`v = -\\partial_x\\psi`."""
        psi_hat = w_hat * self.inv_k2
        return self.iky * psi_hat, -self.ikx * psi_hat

    def velocity(self, w_hat: torch.Tensor) -> torch.Tensor:
        """Velocity ``[B, R, R, 2]`` (components ``(u_x, u_y)``) from the vorticity spectrum."""
        u_hat, v_hat = self.velocity_hat(w_hat)
        return torch.stack([self.to_physical(u_hat), self.to_physical(v_hat)], dim=-1)

    def nonlinear(self, w_hat: torch.Tensor) -> torch.Tensor:
        """Spectrum of :math:`-u\\cdot\\nabla w + f`, dealiased."""
        u_hat, v_hat = self.velocity_hat(w_hat)
        stacked = torch.stack([u_hat, v_hat, self.ikx * w_hat, self.iky * w_hat])
        u, v, wx, wy = self.to_physical(stacked)
        self.last_max_speed = float((u * u + v * v).max().sqrt())
        return -torch.fft.rfft2(u * wx + v * wy) * self.mask + self.forcing_hat

    def step(self, w_hat: torch.Tensor, dt: float) -> torch.Tensor:
        """Advance the vorticity spectrum by one step ``dt`` (see the class docstring)."""
        lin = 0.5 * dt * self.nu * self.k2
        a, b_inv = 1 - lin, 1 / (1 + lin)
        n0 = self.nonlinear(w_hat)
        aw = a * w_hat
        w_star = (aw + dt * n0) * b_inv
        return (aw + 0.5 * dt * (n0 + self.nonlinear(w_star))) * b_inv

    def max_speed(self, w_hat: torch.Tensor) -> float:
        """Largest velocity magnitude over the batch and the grid."""
        vel = self.velocity(w_hat)
        return float(vel.square().sum(-1).sqrt().max())


def solve_navier_stokes_2d(
    w0: np.ndarray | torch.Tensor,
    times: Sequence[float] | np.ndarray,
    *,
    nu: float,
    forcing: np.ndarray | torch.Tensor | None = None,
    dt: float | None = None,
    cfl: float = 0.5,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Integrate :class:`NavierStokes2D` from ``w0`` and return the fields at ``times``.

    ``times`` must start at 0 and increase. With ``dt`` given, each interval between outputs is
    split into equal steps no longer than ``dt``. Otherwise the step is adapted every step to
    ``cfl * dx / max|u|`` (``dx = 1/R``, the maximum over the batch at the start of the step),
    with the steps left in an interval equalised so the output times are hit exactly. Heun is
    only weakly stable for advection, so at small viscosity (``nu <= 1e-4`` at 64^2) use
    ``cfl <= 0.2`` or a finer grid; a blow-up raises ``FloatingPointError``.

    Shapes: ``w0`` ``[B, R, R]``; returns float64 ``vorticity [B, T, R, R]`` and
    ``velocity [B, T, R, R, 2]``.
    """
    w0 = torch.as_tensor(w0, dtype=torch.float64)
    if w0.ndim != 3 or w0.shape[1] != w0.shape[2]:
        raise ValueError(f"w0 must have shape [B, R, R], got {tuple(w0.shape)}")
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times[0] != 0 or np.any(np.diff(times) <= 0):
        raise ValueError("times must be a 1-D increasing sequence starting at 0")
    if dt is not None:
        dt = check_real(dt, "dt", positive=True)
    cfl = check_real(cfl, "cfl", positive=True)
    solver = NavierStokes2D(w0.shape[-1], nu, forcing)
    dx = 1.0 / w0.shape[-1]
    w_hat = solver.to_hat(w0)
    vort = [w0]
    vel = [solver.velocity(w_hat)]
    speed = solver.max_speed(w_hat)
    for t0, t1 in tqdm(
        list(zip(times[:-1], times[1:])), desc="navier_stokes_2d", disable=not progress
    ):
        if dt is not None:
            n_sub = max(1, math.ceil((t1 - t0) / dt - 1e-9))
            for _ in range(n_sub):
                w_hat = solver.step(w_hat, (t1 - t0) / n_sub)
        else:
            t = t0
            while t1 - t > 1e-12 * max(1.0, t1):
                limit = cfl * dx / max(speed, 1e-12)
                h = (t1 - t) / math.ceil((t1 - t) / limit - 1e-9)
                w_hat = solver.step(w_hat, h)
                speed = solver.last_max_speed  # at the predictor w*, i.e. near the step end
                t += h
        w = solver.to_physical(w_hat)
        if not torch.isfinite(w).all():
            raise FloatingPointError(
                f"Navier-Stokes solution blew up before t={t1}; lower cfl or dt, or raise "
                "the resolution"
            )
        vort.append(w)
        vel.append(solver.velocity(w_hat))
        speed = solver.max_speed(w_hat)
    return torch.stack(vort, 1).numpy(), torch.stack(vel, 1).numpy()


def _ns_forcing(resolution: int) -> np.ndarray:
    x = np.arange(resolution) / resolution
    s = 2 * np.pi * (x[:, None] + x[None, :])
    return 0.1 * (np.sin(s) + np.cos(s))


def _write_navier_stokes(
    out_path: Path,
    layout: str,
    result: dict[str, np.ndarray],
    times: np.ndarray,
    nu: float,
    ic_scale: float,
    splits: tuple[float, float, float],
    grid: tuple[int, int],
) -> None:
    """Write :func:`navier_stokes_2d`'s ``result`` (snapshots at ``times``) in ``layout``;
    ``grid``: the solver's resolution and the stride onto the stored one."""
    fine, stride = grid
    n, n_snapshots, resolution = result["vorticity"].shape[:3]
    forcing_fine = _ns_forcing(fine)
    coords = np.arange(resolution) / resolution
    if layout == "pdebench":
        solver = NavierStokes2D(fine, nu)
        force = solver.velocity(solver.to_hat(forcing_fine[None]))[0].numpy()
        force = force[::stride, ::stride]
        writers.write_pdebench(
            out_path,
            {
                "velocity": result["velocity"],
                "force": np.broadcast_to(force, (n, *force.shape)),
                "t": np.broadcast_to(result["time"], (n, n_snapshots)),
            },
            {"nu": nu},
        )
        return
    mask = np.zeros(resolution, dtype=bool)
    mask[[0, -1]] = True
    writers.write_well_dataset(
        out_path,
        "navier_stokes_2d",
        fields=[
            writers.WellField("vorticity", result["vorticity"]),
            writers.WellField("velocity", result["velocity"], order=1),
            writers.WellField(
                "forcing", result["forcing"], sample_varying=False, time_varying=False
            ),
        ],
        time=times,
        coords={"x": coords, "y": coords},
        boundaries=[
            writers.WellBoundary(f"{d}_periodic", [d], "periodic", ["vorticity", "velocity"], mask)
            for d in ("x", "y")
        ],
        parameters={"nu": nu, "ic_scale": ic_scale, "ic_alpha": 2.5, "ic_tau": 7.0},
        n=n,
        splits=splits,
    )


def navier_stokes_2d(
    n: int,
    resolution: int = 64,
    *,
    nu: float = 1e-3,
    t_final: float = 20.0,
    n_snapshots: int = 21,
    dt: float | None = None,
    solve_resolution: int | None = None,
    ic_scale: float = 7.0**3,
    cfl: float = 0.5,
    seed: int = 0,
    out: str | Path | None = None,
    layout: str = "well",
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Generate ``n`` forced Navier–Stokes vorticity trajectories (FNO recipe; module docstring).

    All trajectories are integrated together in one batched FFT tensor at ``solve_resolution``
    (default ``resolution``; must be a multiple of it) and subsampled onto the ``resolution`` grid.
    Frames are stored at ``time = linspace(0, t_final, n_snapshots)``. ``dt`` caps the step
    (fixed steps); by default the step follows the CFL condition with ``cfl`` (see
    :func:`solve_navier_stokes_2d`). ``ic_scale`` is the variance prefactor of the initial
    vorticity's covariance ``ic_scale * (-Lap + 49 I)^-2.5``.

    Returns float32 ``{"vorticity": [n, T, R, R], "velocity": [n, T, R, R, 2], "time": [T],
    "forcing": [R, R]}``.
    """
    n = check_int(n, "n", minimum=1)
    resolution = check_int(resolution, "resolution", minimum=4)
    nu = check_real(nu, "nu", positive=True)
    t_final = check_real(t_final, "t_final", positive=True)
    n_snapshots = check_int(n_snapshots, "n_snapshots", minimum=2)
    ic_scale = check_real(ic_scale, "ic_scale", positive=True)
    out_path = _check_output(out, layout)
    splits = _check_splits(splits, n)
    fine, stride = _solve_grid(resolution, solve_resolution, nodal=False)
    w0 = gaussian_random_field_2d(
        n, fine, alpha=2.5, tau=7.0, scale=ic_scale, boundary="periodic", seed=seed
    )
    times = _snapshot_times(t_final, n_snapshots)
    forcing_fine = _ns_forcing(fine)
    vort, vel = solve_navier_stokes_2d(
        w0, times, nu=nu, forcing=forcing_fine, dt=dt, cfl=cfl, progress=progress
    )
    result = {
        "vorticity": vort[:, :, ::stride, ::stride].astype(np.float32),
        "velocity": vel[:, :, ::stride, ::stride].astype(np.float32),
        "time": times.astype(np.float32),
        "forcing": forcing_fine[::stride, ::stride].astype(np.float32),
    }
    if out_path is not None:
        _write_navier_stokes(out_path, layout, result, times, nu, ic_scale, splits, (fine, stride))
    return result


# ----------------------------------------------------------------------------- Burgers


class Burgers1D:
    r"""ETDRK4 pseudo-spectral solver for :math:`u_t + (u^2/2)_x = \nu u_{xx}` on :math:`[0,1)`.

    In Fourier space :math:`\hat u_t = L\hat u + N(\hat u)` with :math:`L = -\nu k^2` and
    :math:`N(\hat u) = -\tfrac{ik}{2}\,\mathcal{F}[u^2]` (2/3-rule dealiased). One step is the
    Cox–Matthews ETDRK4 scheme (fourth order), with :math:`\varphi`-function coefficients
    evaluated by the Kassam–Trefethen contour integral (32 points) to avoid cancellation for small
    :math:`|L\Delta t|`.

    Shapes: physical ``[B, X]`` on :math:`x_j = j/X`; spectral ``[B, X//2 + 1]`` (``rfft``).
    """

    def __init__(self, resolution: int, nu: float, *, dealias: bool = True) -> None:
        self.resolution = check_int(resolution, "resolution", minimum=4)
        self.nu = check_real(nu, "nu", nonnegative=True)
        m = torch.fft.rfftfreq(self.resolution, 1 / self.resolution, dtype=torch.float64)
        k = 2 * math.pi * m
        self.lin = -self.nu * k**2
        k_deriv = torch.where(m == self.resolution / 2, 0.0, k)
        mask = (m < self.resolution / 3).to(torch.float64) if dealias else torch.ones_like(k)
        self.g = -0.5j * k_deriv * mask
        self._coef_dt: float | None = None

    def _coefficients(self, dt: float) -> None:
        if self._coef_dt == dt:
            return
        lin = self.lin * dt
        roots = torch.exp(1j * math.pi * (torch.arange(1, 33, dtype=torch.float64) - 0.5) / 32)
        lr = lin[:, None].to(torch.complex128) + roots[None, :]
        elr = torch.exp(lr)
        self.e = torch.exp(lin)
        self.e2 = torch.exp(lin / 2)
        self.q = dt * torch.real(((torch.exp(lr / 2) - 1) / lr).mean(-1))
        self.f1 = dt * torch.real(((-4 - lr + elr * (4 - 3 * lr + lr**2)) / lr**3).mean(-1))
        self.f2 = dt * torch.real(((2 + lr + elr * (lr - 2)) / lr**3).mean(-1))
        self.f3 = dt * torch.real(((-4 - 3 * lr - lr**2 + elr * (4 - lr)) / lr**3).mean(-1))
        self._coef_dt = dt

    def to_hat(self, u: torch.Tensor | np.ndarray) -> torch.Tensor:
        """``rfft`` of a physical field ``[B, X]``."""
        return torch.fft.rfft(torch.as_tensor(u, dtype=torch.float64))

    def to_physical(self, u_hat: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_hat`."""
        return torch.fft.irfft(u_hat, n=self.resolution)

    def nonlinear(self, u_hat: torch.Tensor) -> torch.Tensor:
        """Spectrum of :math:`-(u^2/2)_x`, dealiased."""
        u = self.to_physical(u_hat)
        return self.g * torch.fft.rfft(u * u)

    def step(self, v: torch.Tensor, dt: float) -> torch.Tensor:
        """Advance the spectrum ``v`` by one ETDRK4 step ``dt``."""
        self._coefficients(dt)
        nv = self.nonlinear(v)
        a = self.e2 * v + self.q * nv
        na = self.nonlinear(a)
        b = self.e2 * v + self.q * na
        nb = self.nonlinear(b)
        c = self.e2 * a + self.q * (2 * nb - nv)
        nc = self.nonlinear(c)
        return self.e * v + nv * self.f1 + 2 * (na + nb) * self.f2 + nc * self.f3


def solve_burgers_1d(
    u0: np.ndarray | torch.Tensor,
    times: Sequence[float] | np.ndarray,
    *,
    nu: float,
    dt: float | None = None,
    cfl: float = 0.5,
    progress: bool = False,
) -> np.ndarray:
    """Integrate :class:`Burgers1D` from ``u0`` and return ``u`` at ``times``.

    ``times`` must start at 0 and increase; each interval is split into equal steps no longer than
    ``dt`` or, when ``dt`` is None, ``cfl * dx / max|u|`` at the start of the interval.

    Shapes: ``u0`` ``[B, X]``; returns float64 ``[B, T, X]``.
    """
    u0 = torch.as_tensor(u0, dtype=torch.float64)
    if u0.ndim != 2:
        raise ValueError(f"u0 must have shape [B, X], got {tuple(u0.shape)}")
    times = np.asarray(times, dtype=np.float64)
    if times.ndim != 1 or times[0] != 0 or np.any(np.diff(times) <= 0):
        raise ValueError("times must be a 1-D increasing sequence starting at 0")
    if dt is not None:
        dt = check_real(dt, "dt", positive=True)
    cfl = check_real(cfl, "cfl", positive=True)
    solver = Burgers1D(u0.shape[-1], nu)
    dx = 1.0 / u0.shape[-1]
    v = solver.to_hat(u0)
    frames = [u0]
    for t0, t1 in tqdm(list(zip(times[:-1], times[1:])), desc="burgers_1d", disable=not progress):
        interval = t1 - t0
        if dt is None:
            step = cfl * dx / max(float(solver.to_physical(v).abs().max()), 1e-12)
        else:
            step = dt
        n_sub = max(1, math.ceil(interval / step - 1e-9))
        h = interval / n_sub
        for _ in range(n_sub):
            v = solver.step(v, h)
        frames.append(solver.to_physical(v))
    return torch.stack(frames, 1).numpy()


def burgers_1d(
    n: int,
    resolution: int = 256,
    *,
    nu: float = 0.1,
    t_final: float = 1.0,
    n_snapshots: int = 11,
    dt: float | None = None,
    solve_resolution: int | None = None,
    ic_scale: float = 625.0,
    cfl: float = 0.5,
    seed: int = 0,
    out: str | Path | None = None,
    layout: str = "well",
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1),
    progress: bool = True,
) -> dict[str, np.ndarray]:
    """Generate ``n`` viscous Burgers trajectories (FNO recipe; see the module docstring).

    Solved at ``solve_resolution`` (default ``resolution``; a multiple of it) and subsampled.
    Frames at ``time = linspace(0, t_final, n_snapshots)``. ``dt`` caps the step (else the CFL
    condition with ``cfl``); ``ic_scale`` is the covariance prefactor of the initial field
    ``ic_scale * (-Lap + 25 I)^-2``.

    Returns float32 ``{"u": [n, T, X], "time": [T]}``.
    """
    n = check_int(n, "n", minimum=1)
    resolution = check_int(resolution, "resolution", minimum=4)
    nu = check_real(nu, "nu", positive=True)
    t_final = check_real(t_final, "t_final", positive=True)
    n_snapshots = check_int(n_snapshots, "n_snapshots", minimum=2)
    ic_scale = check_real(ic_scale, "ic_scale", positive=True)
    out_path = _check_output(out, layout)
    splits = _check_splits(splits, n)
    fine, stride = _solve_grid(resolution, solve_resolution, nodal=False)
    u0 = gaussian_random_field_1d(n, fine, alpha=2.0, tau=5.0, scale=ic_scale, seed=seed)
    times = _snapshot_times(t_final, n_snapshots)
    u = solve_burgers_1d(u0, times, nu=nu, dt=dt, cfl=cfl, progress=progress)
    result = {"u": u[:, :, ::stride].astype(np.float32), "time": times.astype(np.float32)}
    if out_path is not None:
        coords = np.arange(resolution) / resolution
        if layout == "pdebench":
            t_coord = np.append(times, times[-1] + (times[-1] - times[-2]))
            writers.write_pdebench(
                out_path,
                {"tensor": result["u"], "x-coordinate": coords, "t-coordinate": t_coord},
                {"Nu": nu},
            )
        else:
            mask = np.zeros(resolution, dtype=bool)
            mask[[0, -1]] = True
            writers.write_well_dataset(
                out_path,
                "burgers_1d",
                fields=[writers.WellField("u", result["u"])],
                time=times,
                coords={"x": coords},
                boundaries=[writers.WellBoundary("x_periodic", ["x"], "periodic", ["u"], mask)],
                parameters={"nu": nu, "ic_scale": ic_scale, "ic_alpha": 2.0, "ic_tau": 5.0},
                n=n,
                splits=splits,
            )
    return result
