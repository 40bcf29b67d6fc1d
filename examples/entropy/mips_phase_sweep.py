r"""Phase-diagram sweep of hypoelliptic AOUPs (eps = 0, k = 1, soft repulsion) at N = 1024.

Simulates one trajectory per (gamma, phi) point with :func:`gtlib.datasets.particles.simulate`
(resumable HDF5, one file per point; rerunning skips finished points and resumes unfinished ones
exactly), recording a snapshot every ``--spacing`` time units so that cluster growth can be
followed. Analyse the files with ``examples/entropy/mips_phase_analysis.py``.

Example (about 2 minutes per point on one core)::

    OMP_NUM_THREADS=1 python examples/entropy/mips_phase_sweep.py --root /tmp/mips/sweep \
        --gammas 0.01 0.03 0.1 1.0 --phis 0.3 0.45 0.6 0.75
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from gtlib.datasets.particles import ActiveOUParticles, simulate


def point_path(root: Path, n: int, v0: float, gamma: float, phi: float) -> Path:
    return root / f"aoup_n{n}_v{v0:g}_g{gamma:g}_phi{phi:g}.h5"


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
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    points = [(v0, gamma, phi) for v0 in args.v0s for gamma in args.gammas for phi in args.phis]
    for v0, gamma, phi in points:
        path = point_path(root, args.num_particles, v0, gamma, phi)
        system = ActiveOUParticles(
            args.num_particles, packing_fraction=phi, v0=v0, gamma=gamma, k=1.0
        )
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
        )
        print(f"done {path}", flush=True)


if __name__ == "__main__":
    main()
