r"""Phase-diagram sweep of hypoelliptic AOUPs (eps = 0, k = 1, soft repulsion) at N = 1024.

Simulates one trajectory per (v0, gamma, phi) point with
:func:`gtlib.datasets.particles.simulate` (resumable: one file per point; rerunning skips
finished points and resumes unfinished ones exactly), recording a snapshot every ``--spacing``
time units so that cluster growth can be followed. Analyse the files with
``examples/entropy/mips_phase_analysis.py``.

Force balance sets how soft the discs are: a particle pushed with :math:`v_0|g|` overlaps its
neighbour until :math:`\mathrm{softplus}_\beta(2r_0 - r) = v_0|g|`, i.e. at
:math:`r \approx 1.95, 1.7, 1.4` for :math:`v_0 = 0.1, 0.25, 0.5` (:math:`|g| \approx 1.25`,
:math:`\beta = 7.5`, :math:`r_0 = 1`): only small :math:`v_0` gives nearly hard discs, and then
the persistence length :math:`v_0/\gamma` needs a small :math:`\gamma` and long runs. Keep
``dt * v0`` at about 0.005 (the step is limited by the displacement per step, not by the force
stiffness, which is at most a few units).

The points run for issue 16 (each about 3-10 minutes on one shared core)::

    S=examples/entropy/mips_phase_sweep.py
    python $S --root /tmp/mips/pilot \
       --v0s 0.25 --gammas 0.005 --phis 0.5 --snapshots 12 --spacing 50
    python $S --root /tmp/mips/pilot \
       --v0s 0.1 --gammas 0.002 --phis 0.5 --snapshots 12 --spacing 50
    python $S --root /tmp/mips/pilot \
       --v0s 0.5 --gammas 0.002 --phis 0.5 --snapshots 24 --spacing 100
    python $S --root /tmp/mips/pilot \
       --v0s 0.25 --gammas 0.001 --phis 0.5 --snapshots 24 --spacing 100
    python $S --root /tmp/mips/pilot \
       --v0s 0.5 --gammas 0.005 --phis 0.7 --snapshots 12 --spacing 100
    python $S --root /tmp/mips/soft --v0s 0.1 --gammas 0.001 --phis 0.5 0.7 --dt 0.05 \
        --snapshots 25 --spacing 200
    python $S --root /tmp/mips/soft --v0s 0.1 --gammas 0.001 --phis 0.3 --dt 0.05 \
        --snapshots 13 --spacing 200
    python $S --root /tmp/mips/soft --v0s 0.05 --gammas 0.0005 --phis 0.6 --dt 0.1 \
        --snapshots 25 --spacing 400
    python $S --root /tmp/mips/mid --v0s 0.25 --gammas 0.005 --phis 0.6 --dt 0.04 \
        --snapshots 26 --spacing 200
    python $S --root /tmp/mips/ballistic --v0s 0.1 --gammas 0.0001 --phis 0.5 --dt 0.05 \
        --snapshots 16 --spacing 200

Second round (issue 16, ``/tmp/mips/s2``). Cost: 0.9 ms per step at N = 1024 on a quiet core
(1.1-1.7 ms on the shared machine, more at higher :math:`\phi`), so with ``dt * v0 = 0.005`` one
persistence time is :math:`200\,v_0/\gamma` steps whatever :math:`v_0`, i.e. 0.2-0.35 s per
unit of :math:`v_0/\gamma` (20-35 s per persistence time at :math:`v_0/\gamma = 100`). The
``lp100`` runs continue the files of an earlier ``--continue-from`` run of the ``soft`` points
(new seed)::

    python $S --root /tmp/mips/s2/cost --v0s 0.05 --gammas 0.001 --phis 0.6 --dt 0.1 \
        --snapshots 5 --spacing 500
    python $S --root /tmp/mips/s2/lp50 --v0s 0.05 --gammas 0.001 --phis 0.5 --dt 0.1 \
        --snapshots 41 --spacing 1000
    python $S --root /tmp/mips/s2/lp250 --v0s 0.05 --gammas 0.0002 --phis 0.5 --dt 0.1 \
        --snapshots 21 --spacing 2500
    python $S --root /tmp/mips/s2/lp500 --v0s 0.05 --gammas 0.0001 --phis 0.5 --dt 0.1 \
        --snapshots 13 --spacing 5000
    python $S --root /tmp/mips/s2/lp100 --v0s 0.05 --gammas 0.0005 --phis 0.6 --dt 0.1 \
        --snapshots 31 --spacing 2000 --seed 7 \
        --continue-from /tmp/mips/soft/continued/aoup_n1024_v0.05_g0.0005_phi0.6.h5
    python $S --root /tmp/mips/s2/lp50 --v0s 0.05 --gammas 0.001 --phis 0.7 --dt 0.1 \
        --snapshots 41 --spacing 1000
    python $S --root /tmp/mips/s2/lp250 --v0s 0.05 --gammas 0.0002 --phis 0.7 --dt 0.1 \
        --snapshots 21 --spacing 2500
    python $S --root /tmp/mips/s2/lp250 --v0s 0.05 --gammas 0.0002 --phis 0.6 --dt 0.1 \
        --snapshots 21 --spacing 2500
    python $S --root /tmp/mips/s2/lp50 --v0s 0.05 --gammas 0.001 --phis 0.6 --dt 0.1 \
        --snapshots 41 --spacing 1000
    python $S --root /tmp/mips/s2/lp100 --v0s 0.1 --gammas 0.001 --phis 0.7 --dt 0.05 \
        --snapshots 21 --spacing 1000 --seed 7 \
        --continue-from /tmp/mips/soft/continued/aoup_n1024_v0.1_g0.001_phi0.7.h5
    python $S --root /tmp/mips/s2/lp250 --v0s 0.05 --gammas 0.0002 --phis 0.6 --dt 0.1 \
        --snapshots 21 --spacing 2500 --seed 7 \
        --continue-from /tmp/mips/s2/lp250/aoup_n1024_v0.05_g0.0002_phi0.6.h5

None of them phase separates (``examples/entropy/figures/mips_sweep2_*``): over 10-40
persistence times the largest cluster and :math:`S(q_{min})` (2-7, single snapshots up to 10.5)
fluctuate without a trend, and the local packing fraction histogram stays unimodal.

Third round: does a dense cluster, once there, persist? (The authors' data generator starts its
systems at :math:`\phi \ge 0.25` from a dense Gaussian blob.) Each run starts from one disc of
the 1024 sites of a triangular lattice at packing fraction 0.8 (spacing 2.13, just beyond the
analysis' contact distance 2.1, hence a largest cluster of 0 at t = 0) in the box centre,
``g`` from its stationary law; 10 persistence times each (about 3-8 minutes at one thread)::

    python $S --root /tmp/mips/s3 --initial cluster --v0s 0.05 --gammas 0.0005 0.001 \
        --phis 0.5 --dt 0.1 --snapshots 20 --spacing 1000
    python $S --root /tmp/mips/s3 --initial cluster --v0s 0.05 --gammas 0.0002 \
        --phis 0.5 --dt 0.1 --snapshots 20 --spacing 2500
    python examples/entropy/mips_phase_analysis.py /tmp/mips/s3/cluster0.8/*.h5 \
        --out /tmp/mips/s3/phase

The disc dissolves within half a persistence time at all three persistence lengths (50, 100,
250): the largest cluster falls to 0.12, 0.22 and 0.45 of N at the first snapshot and then
fluctuates at 0.05-0.31 as in the runs from the lattice, and the local packing fraction stays
unimodal (``examples/entropy/figures/mips_cluster_start_*``). At :math:`\phi = 0.5` these
systems have no dense phase to coexist with: the homogeneous state is not a nucleation-limited
artefact of the lattice start.

Fourth round (issue 16, ``/tmp/mips/s4``): the authors' point and system size. Their public
notebook names its data files ``OU_v0=0.025_N=16384_gamma=0.0001_phi=0.5_dt=0.1_beta=7.5_...
_A=0.0_k=1.0_eps=0.0``; their training set has N = 4096, and their generator starts from a
Gaussian blob (``--initial blob``). At exactly that point (v0 = 0.025, gamma = 1e-4, so
:math:`v_0/\gamma = 250`, phi = 0.5, beta = 7.5, dt = 0.1), float32, one core each::

    python $S --root /tmp/mips/s4 --initial blob --v0s 0.025 --gammas 0.0001 --phis 0.5 \
        --dt 0.1 --snapshots 101 --spacing 2000                      # N = 1024, 33 min
    python $S --root /tmp/mips/s4 --num-particles 4096 --initial blob --v0s 0.025 \
        --gammas 0.0001 --phis 0.5 --dt 0.1 --snapshots 81 --spacing 1000     # 30 min
    python $S --root /tmp/mips/s4 --num-particles 4096 --initial lattice --v0s 0.025 \
        --gammas 0.0001 --phis 0.5 --dt 0.1 --snapshots 61 --spacing 1000     # 30 min
    python examples/entropy/mips_phase_analysis.py /tmp/mips/s4/blob/*.h5 \
        /tmp/mips/s4/aoup_n4096_*.h5 --out /tmp/mips/s4/phase_all --contact 2.3

**N = 4096 phase separates, N = 1024 does not** (``examples/entropy/figures/mips_paper_point_*``):

* N = 4096 from the uniform lattice: one dense cluster nucleates and coarsens within two
  persistence times and stays to the end (6 persistence times): :math:`S(q_{min}) = 179`, local
  packing fraction q10/50/90 = 0.25 / 0.81 / 1.13, bimodal (gas near 0.25, cluster near 1.0).
* N = 4096 from the blob: the cluster stays for 8 persistence times, :math:`S(q_{min}) = 153`,
  the same bimodal histogram.
* N = 1024 from the blob: the blob dissolves within a tenth of a persistence time (on the
  GPU probe the "solid" fraction fell from 0.37 to 0.22 by t = 1000, while at N = 4096 it rose
  to 0.45) and the system stays homogeneous for 20 persistence times:
  :math:`S(q_{min}) = 7.9`, unimodal local packing fraction (q10/50/90 = 0.31 / 0.56 / 0.69).

(The contact distance 2.3 of the cluster analysis is just beyond the force balance of these
slower particles, 2.18 at :math:`|g| = 1.25`; at that distance the largest cluster percolates
through the homogeneous N = 1024 system too, so :math:`S(q_{min})` and the histogram decide.)
The same was seen on an H200 with ``examples/entropy/mips_phase_probe.py`` (8 trajectories of
1024 and 4 of 4096 per start, 0.9 persistence times): from the blob, 4096 stays clustered and
bimodal while 1024 dissolves; from the lattice, 4096 coarsens.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from gtlib.datasets import ActiveOUParticles, blob_state, load_trajectory, simulate


def point_path(root: Path, n: int, v0: float, gamma: float, phi: float) -> Path:
    return root / f"aoup_n{n}_v{v0:g}_g{gamma:g}_phi{phi:g}.h5"


def cluster_state(system: ActiveOUParticles, cluster_phi: float, seed: int):
    """``(pos, g)``: the ``N`` sites of a triangular lattice (packing fraction ``cluster_phi``)
    nearest the box centre, jittered by 2% of the spacing, and ``g`` from its stationary law."""
    n, r0 = system.num_particles, system.r0
    if system.dim != 2 or not 0.0 < cluster_phi < 0.9:
        raise ValueError("--initial cluster needs d = 2 and 0 < --cluster-phi < 0.9")
    spacing = r0 * math.sqrt(2.0 * math.pi / (math.sqrt(3.0) * cluster_phi))
    side = math.ceil(math.sqrt(4.0 * n)) + 2
    i, j = torch.meshgrid(torch.arange(-side, side + 1.0), torch.arange(-side, side + 1.0),
                          indexing="ij")  # fmt: skip
    sites = torch.stack([i + 0.5 * j, j * math.sqrt(3.0) / 2.0], -1).reshape(-1, 2) * spacing
    sites = sites[sites.norm(dim=1).argsort()[:n]].double()
    if 2.0 * float(sites.norm(dim=1).max()) + spacing > system.box_length:
        raise ValueError(f"a cluster at --cluster-phi {cluster_phi} does not fit in the box")
    generator = torch.Generator().manual_seed(seed)
    jitter = 0.02 * spacing * (torch.rand(n, 2, generator=generator, dtype=torch.float64) - 0.5)
    g = torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return system.wrap(sites + jitter), g


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=str, default="/tmp/mips/sweep")
    parser.add_argument("--num-particles", type=int, default=1024)
    parser.add_argument("--v0s", type=float, nargs="+", default=[0.25])
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.01, 0.03, 0.1, 1.0])
    parser.add_argument("--phis", type=float, nargs="+", default=[0.3, 0.45, 0.6, 0.75])
    parser.add_argument("--dt", type=float, default=0.02)
    parser.add_argument("--spacing", type=float, default=50.0)
    parser.add_argument("--snapshots", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--continue-from",
        type=str,
        default=None,
        help="finished file whose last snapshot (pos, g) starts the run (one point only)",
    )
    parser.add_argument(
        "--initial",
        choices=("lattice", "cluster", "blob"),
        default="lattice",
        help="lattice: the simulator's jittered lattice filling the box; cluster: one dense "
        "disc (triangular lattice at --cluster-phi) in the gas-free box centre, to test "
        "whether a cluster persists (coexistence) or dissolves; blob: a Gaussian blob of "
        "standard deviation L/4 about the centre (the authors' generator)",
    )
    parser.add_argument("--cluster-phi", type=float, default=0.8)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    points = [(v0, gamma, phi) for v0 in args.v0s for gamma in args.gammas for phi in args.phis]
    initial = None
    if args.continue_from is not None:
        if len(points) != 1:
            parser.error("--continue-from needs exactly one (v0, gamma, phi) point")
        previous = load_trajectory(args.continue_from)
        initial = (previous["pos"][-1], previous["g"][-1])
        root = root / "continued"
        root.mkdir(parents=True, exist_ok=True)
    if args.initial != "lattice":
        if initial is not None:
            parser.error(f"--initial {args.initial} and --continue-from exclude each other")
        root = root / (f"cluster{args.cluster_phi:g}" if args.initial == "cluster" else "blob")
        root.mkdir(parents=True, exist_ok=True)
    for v0, gamma, phi in points:
        path = point_path(root, args.num_particles, v0, gamma, phi)
        system = ActiveOUParticles(
            args.num_particles, packing_fraction=phi, v0=v0, gamma=gamma, k=1.0
        )
        if args.initial == "cluster":
            initial = cluster_state(system, args.cluster_phi, args.seed)
        elif args.initial == "blob":
            initial = blob_state(system, args.seed)  # seeded as simulate: kept to reproduce
        simulate(
            system,
            args.snapshots,
            args.dt,
            spacing=args.spacing,
            seed=args.seed,
            out=str(path),
            progress=False,
            checkpoint_every=2,
            dtype=torch.float32,
            initial=initial,
        )
        print(f"done {path}", flush=True)


if __name__ == "__main__":
    main()
