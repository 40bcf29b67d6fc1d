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

Vocabulary. ``dim`` is always the spatial dimension ``d`` (of the systems, the files and
:class:`ParticleDataset`); the state size of :class:`LinearSDE` is ``num_coordinates``. Both
systems take ``num_particles, packing_fraction, box_length, v0, (gamma | rotational_diffusion),
k, beta, r0, trap, eps, cutoff`` in this order (``eps``: translational diffusion; the AOUP
also takes ``dim`` before ``cutoff``, the ABP is two-dimensional). Nothing here
is chunked: the neighbour search works on all particles of a batch at once.

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

The code is split by job into private sibling modules, all re-exported here: the physics
(``_particle_systems``: soft discs, AOUP, ABP, state layout), the neighbour lists
(``_particle_neighbours``: cell-list pairs, Verlet list), the simulator and its checkpoint
(``_particle_simulate``), the trajectory files (``_particle_io``: writer, readers,
:func:`load_trajectory`) and the dataset (``_particle_dataset``: :class:`ParticleDataset`).
:class:`LinearSDE` lives in :mod:`gtlib.entropy.reference`.
"""

from __future__ import annotations

from gtlib.datasets._particle_dataset import ParticleDataset
from gtlib.datasets._particle_io import (
    _ATTRS_DIGEST,
    _attrs_digest,
    _check_layout,
    _open_checked,
    _read_array,
    _write_attrs,
    _write_trajectory,
    load_trajectory,
    trajectory_attrs,
)
from gtlib.datasets._particle_neighbours import _NeighbourCache, radius_pairs
from gtlib.datasets._particle_simulate import (
    _CHECKPOINT_FORMAT,
    DEFAULT_SKIN,
    _append_snapshots,
    _discard_run_files,
    _initial_positions,
    _read_checkpoint,
    _run_files,
    _run_signature,
    _snapshot_bytes,
    _state_digest,
    blob_state,
    simulate,
)
from gtlib.datasets._particle_systems import (
    DEFAULT_FORCE_TOLERANCE,
    ActiveBrownianParticles,
    ActiveOUParticles,
    ParticleSystem,
    _SoftDiscs,
    from_state,
    softplus_force_cutoff,
    to_state,
)
from gtlib.entropy.reference import LinearSDE

__all__ = [
    "ActiveBrownianParticles",
    "ActiveOUParticles",
    "LinearSDE",
    "ParticleDataset",
    "blob_state",
    "from_state",
    "load_trajectory",
    "simulate",
    "softplus_force_cutoff",
    "to_state",
    "trajectory_attrs",
]

# Names kept importable from here for code written before the split (not public API).
_COMPATIBILITY = (
    DEFAULT_FORCE_TOLERANCE,
    DEFAULT_SKIN,
    ParticleSystem,
    _ATTRS_DIGEST,
    _CHECKPOINT_FORMAT,
    _NeighbourCache,
    _SoftDiscs,
    _append_snapshots,
    _attrs_digest,
    _check_layout,
    _discard_run_files,
    _initial_positions,
    _open_checked,
    _read_array,
    _read_checkpoint,
    _run_files,
    _run_signature,
    _snapshot_bytes,
    _state_digest,
    _write_attrs,
    _write_trajectory,
    radius_pairs,
)
