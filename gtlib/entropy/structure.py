r"""Structure of particle snapshots: local packing fraction, clusters, structure factor.

Diagnostics of motility-induced phase separation (MIPS) in periodic boxes, used to locate the
phase-separated regime of :class:`gtlib.datasets.particles.ActiveOUParticles` and to condition
entropy production on the local density (gas, interface, cluster bulk):

* :func:`local_packing_fraction` -- per particle, the packing fraction of the disc of radius ``R``
  around it: :math:`\phi_i = n_i\,(r_0/R)^d` with :math:`n_i` the number of particles (itself
  included) within ``R`` under the minimum image. In a phase-separated state its histogram is
  bimodal (a gas peak and a dense peak).
* :func:`cluster_labels` -- connected components of the contact graph (pairs closer than
  ``contact``), by cell lists (:meth:`gtlib.attention.Pattern.radius`) and
  :func:`scipy.sparse.csgraph.connected_components`; in MIPS the largest cluster grows with
  time to a finite fraction of ``N``.
* :func:`structure_factor` -- :math:`S(\mathbf q) = |\sum_j e^{-i\mathbf q\cdot x_j}|^2 / N`
  on the wave vectors of the box, :math:`\mathbf q = 2\pi\mathbf n / L`, averaged over shells of
  width :math:`2\pi/L`; phase separation shows as a peak at the smallest ``q`` (a density
  modulation on the scale of the box).
* :func:`density_classes` -- gas / interface / bulk labels from two thresholds on the local
  packing fraction.

Shapes: ``pos [N, d]`` or a batch ``[..., N, d]`` where stated; the box is ``[-L/2, L/2)^d``
(any origin works: only minimum-image differences and phases :math:`e^{-iq\cdot x}` with
:math:`qL \in 2\pi\mathbb Z` are used).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import scipy.sparse
import scipy.sparse.csgraph
import torch
from torch import Tensor

from gtlib.attention.pattern import Pattern
from gtlib.validation import all_finite, check_int, check_real, check_tensor, describe

__all__ = [
    "GAS",
    "INTERFACE",
    "BULK",
    "CLASS_NAMES",
    "class_means",
    "cluster_labels",
    "cluster_sizes",
    "density_classes",
    "local_packing_fraction",
    "structure_factor",
]

GAS, INTERFACE, BULK = 0, 1, 2
CLASS_NAMES = ("gas", "interface", "bulk")  # indexed by GAS, INTERFACE, BULK
MAX_WAVE_VECTORS = 2**24  # structure_factor refuses larger grids (memory)


def _check_pos(pos: Any, name: str = "pos") -> Tensor:
    check_tensor(pos, name, floating=True, values=True)
    if pos.dim() < 2 or pos.shape[-2] < 1 or pos.shape[-1] < 1:
        raise ValueError(
            f"{name} must have shape [..., N, d] with N, d >= 1, got {tuple(pos.shape)}"
        )
    # Always checked: these diagnostics read the positions back to the host anyway.
    if not all_finite(pos):
        raise ValueError(f"{name} contains NaN or infinite values")
    return pos


def _check_radius(radius: Any, box_length: float, name: str) -> float:
    radius = check_real(radius, name, positive=True)
    if radius > box_length / 2:
        raise ValueError(
            f"{name}={radius:g} exceeds half the box length {box_length:g} (the minimum "
            "image would be ambiguous)"
        )
    return radius


def _counts_within(pos: Tensor, box_length: float, radius: float) -> Tensor:
    """Number of other particles within ``radius`` of each particle, ``[..., N]``."""
    n, d = pos.shape[-2:]
    flat = pos.detach().reshape(-1, d).double()
    batches = flat.shape[0] // n
    batch = torch.arange(batches).repeat_interleave(n) if batches > 1 else None
    pattern = Pattern.radius(flat, radius, box=box_length, batch=batch)
    return pattern.degree().reshape(pos.shape[:-1])


def local_packing_fraction(
    pos: Tensor, box_length: float, radius: float = 4.0, r0: float = 1.0
) -> Tensor:
    r"""Per-particle packing fraction of the disc of radius ``radius`` around each particle.

    .. math:: \phi_i = \frac{n_i V_d r_0^d}{V_d R^d} = n_i \Big(\frac{r_0}{R}\Big)^d,

    :math:`n_i` counting particle ``i`` and every particle within ``R`` of it (minimum image).
    Its mean over particles is the global packing fraction weighted by the local density, and in
    a uniform fluid it fluctuates around :math:`\phi = N V_d r_0^d / L^d`.

    Args:
        pos: positions ``[..., N, d]`` in a periodic box of side ``box_length``.
        box_length: ``L > 0``.
        radius: ``R``, at most ``L / 2`` (default ``4 r0``, a few particle diameters).
        r0: particle radius.

    Shapes:
        pos: ``[..., N, d]`` -> ``[..., N]`` (float64).
    """
    pos = _check_pos(pos)
    box_length = check_real(box_length, "box_length", positive=True)
    radius = _check_radius(radius, box_length, "radius")
    r0 = check_real(r0, "r0", positive=True)
    counts = _counts_within(pos, box_length, radius) + 1
    return counts.double() * (r0 / radius) ** pos.shape[-1]


def cluster_labels(pos: Tensor, box_length: float, contact: float = 2.0) -> Tensor:
    r"""Cluster index of every particle: connected components of the graph joining pairs closer
    than ``contact`` (minimum image), numbered by decreasing size (0 is the largest cluster).

    Args:
        pos: one snapshot ``[N, d]`` in a periodic box of side ``box_length``.
        box_length: ``L > 0``.
        contact: contact distance (``2 r0`` for touching discs), at most ``L / 2``.

    Shapes:
        pos: ``[N, d]`` -> ``[N]`` (int64).
    """
    pos = _check_pos(pos)
    if pos.dim() != 2:
        raise ValueError(f"pos must be one snapshot [N, d], got {tuple(pos.shape)}")
    box_length = check_real(box_length, "box_length", positive=True)
    contact = _check_radius(contact, box_length, "contact")
    n = pos.shape[0]
    pattern = Pattern.radius(pos.detach().double(), contact, box=box_length)
    row, col = pattern.row.numpy(), pattern.col.numpy()
    graph = scipy.sparse.coo_matrix((np.ones(row.shape[0]), (row, col)), shape=(n, n))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    sizes = np.bincount(labels)
    # Renumber by decreasing size (ties by first appearance), so label 0 is the largest.
    order = np.lexsort((np.arange(sizes.shape[0]), -sizes))
    rank = np.empty_like(order)
    rank[order] = np.arange(order.shape[0])
    return torch.from_numpy(rank[labels].astype(np.int64))


def cluster_sizes(pos: Tensor, box_length: float, contact: float = 2.0) -> Tensor:
    """Sizes of the clusters of :func:`cluster_labels`, largest first, ``[n_clusters]``."""
    labels = cluster_labels(pos, box_length, contact)
    return torch.bincount(labels)


def structure_factor(
    pos: Tensor, box_length: float, q_max: float | None = None, n_max: int = 16
) -> tuple[Tensor, Tensor, Tensor]:
    r"""Static structure factor, shell-averaged over the box's wave vectors.

    .. math::
        S(\mathbf q) = \frac{1}{N}\Big|\sum_{j} e^{-i\mathbf q\cdot x_j}\Big|^2, \qquad
        \mathbf q = \frac{2\pi}{L}\mathbf n,\ \mathbf n \in \mathbb Z^d \setminus \{0\},

    averaged over the snapshots in ``pos`` and over the wave vectors in each shell
    :math:`|\mathbf q| \in [(m - \tfrac12)\,2\pi/L, (m + \tfrac12)\,2\pi/L)`, ``m = 1, 2, ...``
    up to ``q_max`` (default: ``n_max`` shells).

    Args:
        pos: positions ``[..., N, d]`` in a periodic box of side ``box_length``.
        box_length: ``L > 0``.
        q_max: largest ``|q|`` kept (default ``2 pi n_max / L``).
        n_max: number of shells when ``q_max`` is not given.

    Returns:
        ``(q, S, count)``: shell centres ``2 pi m / L`` ``[M]``, mean :math:`S` per shell ``[M]``
        (float64) and the number of wave vectors per shell ``[M]`` (shells without any are
        dropped).
    """
    pos = _check_pos(pos)
    box_length = check_real(box_length, "box_length", positive=True)
    n_max = check_int(n_max, "n_max", minimum=1)
    dq = 2.0 * math.pi / box_length
    name = "n_max" if q_max is None else "q_max"
    q_max = dq * n_max if q_max is None else check_real(q_max, "q_max", positive=True)
    m = int(math.floor(q_max / dq + 0.5))
    if m < 1:
        raise ValueError(f"q_max={q_max:g} is below the smallest wave vector 2 pi / L = {dq:g}")
    d = pos.shape[-1]
    if (2 * m + 1) ** d > MAX_WAVE_VECTORS:
        raise ValueError(
            f"{name}: {m} shells in {d} dimensions need a grid of (2 * {m} + 1)**{d} wave "
            f"vectors, more than {MAX_WAVE_VECTORS}; lower {name}"
        )
    axis = torch.arange(-m, m + 1, dtype=torch.float64)
    grid = torch.stack(torch.meshgrid(*([axis] * d), indexing="ij"), dim=-1).reshape(-1, d)
    norm = torch.linalg.vector_norm(grid, dim=-1)
    shell = torch.floor(norm + 0.5).long()
    keep = (norm > 0) & (shell <= m)
    grid, shell = grid[keep], shell[keep]
    q = dq * grid  # [Q, d]
    x = pos.detach().double().reshape(-1, *pos.shape[-2:])  # [B, N, d]
    n = x.shape[1]
    total = torch.zeros(q.shape[0], dtype=torch.float64)
    for snapshot in x:
        phase = snapshot @ q.T  # [N, Q]
        re, im = torch.cos(phase).sum(0), torch.sin(phase).sum(0)
        total += (re * re + im * im) / n
    total /= x.shape[0]
    count = torch.bincount(shell, minlength=m + 1)[1:]
    sums = torch.zeros(m + 1, dtype=torch.float64).index_add(0, shell, total)[1:]
    present = count > 0
    centres = dq * torch.arange(1, m + 1, dtype=torch.float64)
    return centres[present], sums[present] / count[present], count[present]


def density_classes(local_phi: Tensor, gas_below: float, bulk_above: float) -> Tensor:
    """Labels :data:`GAS` (``phi < gas_below``), :data:`BULK` (``phi >= bulk_above``) and
    :data:`INTERFACE` (in between) from a local packing fraction ``[...]`` -> ``[...]`` int64."""
    check_tensor(local_phi, "local_phi", values=True)
    if local_phi.is_complex() or local_phi.dtype == torch.bool:
        raise TypeError(f"local_phi must be real, got {describe(local_phi)}")
    if not all_finite(local_phi):  # NaN would be labelled INTERFACE silently
        raise ValueError("local_phi contains NaN or infinite values")
    gas_below = check_real(gas_below, "gas_below", positive=True)
    bulk_above = check_real(bulk_above, "bulk_above", positive=True)
    if bulk_above <= gas_below:
        raise ValueError(f"bulk_above={bulk_above:g} must exceed gas_below={gas_below:g}")
    out = torch.full(local_phi.shape, INTERFACE, dtype=torch.long, device=local_phi.device)
    out[local_phi < gas_below] = GAS
    out[local_phi >= bulk_above] = BULK
    return out


def class_means(values: Tensor, classes: Tensor) -> dict[str, dict[str, float]]:
    """Mean of a per-particle quantity in each density class, with its error over snapshots.

    For every class of :data:`CLASS_NAMES` (labels from :func:`density_classes`): the fraction of
    all particles in it, the mean of ``values`` over them (``mean_per_particle``: the mean of the
    per-snapshot class means, over the snapshots where the class is present) and the standard
    error of that mean across those snapshots (NaN with fewer than two). Snapshots are treated
    as independent samples, so correlated snapshots understate the error.

    Shapes:
        values, classes: ``[S, N]`` (``S`` snapshots) -> a dict of dicts of floats.
    """
    check_tensor(values, "values", values=True)
    check_tensor(classes, "classes")
    if values.dim() != 2 or classes.shape != values.shape:
        raise ValueError(
            f"values and classes must both be [S, N], got {tuple(values.shape)} and "
            f"{tuple(classes.shape)}"
        )
    if classes.dtype != torch.long:
        raise TypeError(f"classes must be int64 labels, got {describe(classes)}")
    if not all_finite(values):
        raise ValueError("values contains NaN or infinite values")
    if classes.numel() and (int(classes.min()) < GAS or int(classes.max()) > BULK):
        raise ValueError(f"classes must lie in [{GAS}, {BULK}] (from density_classes)")
    values = values.double()
    result = {}
    for label, name in enumerate(CLASS_NAMES):
        mask = classes == label
        counts = mask.sum(1)
        present = counts > 0
        per_snapshot = ((values * mask).sum(1) / counts.clamp(min=1))[present]
        n = per_snapshot.numel()
        result[name] = {
            "fraction_of_particles": float(mask.double().mean()) if mask.numel() else math.nan,
            "mean_per_particle": float(per_snapshot.mean()) if n else math.nan,
            "stderr": float(per_snapshot.std() / math.sqrt(n)) if n > 1 else math.nan,
            "num_snapshots": int(n),
        }
    return result
