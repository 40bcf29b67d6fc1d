r"""Evaluation time of a particle score model per snapshot against the number of particles.

The score network (:class:`gtlib.nn.particle_transformer.ParticleTransformer` inside
:class:`gtlib.entropy.ParticleScore`) is local -- each particle attends to its ``K`` nearest
neighbours found by cell lists -- so evaluating the learned EPR of one snapshot
(:func:`gtlib.entropy.particle_entropy_production`, quadratic form) costs :math:`O(N)`. This
script times it at several ``N`` (same packing fraction, snapshots from a short simulation of
hypoelliptic AOUPs: the cost does not depend on the weights) and writes ``eval_timing.json`` with
the seconds per snapshot, the seconds per particle and their ratio to the smallest ``N``
(flat = linear).

Example (one thread)::

    OMP_NUM_THREADS=1 python examples/entropy/eval_timing.py --sizes 1024 4096 32768 \
        --out /tmp/mips/eval_timing
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gtlib.datasets import ActiveOUParticles, simulate
from gtlib.entropy import ParticleScore, particle_entropy_production
from gtlib.io import atomic_write_text
from gtlib.nn import ParticleTransformer


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096, 32768])
    parser.add_argument("--packing-fraction", type=float, default=0.5)
    parser.add_argument("--snapshots", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--neighbors", type=int, default=16)
    parser.add_argument("--out", type=str, default="runs/eval_timing")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    rows = []
    for n in args.sizes:
        system = ActiveOUParticles(n, packing_fraction=args.packing_fraction, v0=0.25, gamma=0.01)
        run = simulate(system, args.snapshots, 0.02, burn_in=2.0, spacing=1.0, progress=False)
        pos, g = run["pos"][:, 0].float(), run["g"][:, 0].float()
        net = ParticleTransformer(
            2, 2, dim=2, num_neighbors=args.neighbors, hidden_channels=args.hidden,
            num_layers=args.layers, heads=4, ff_channels=2 * args.hidden,
        )  # fmt: skip
        model = ParticleScore(net, system, zero_init=False).eval()
        best = float("inf")
        for _ in range(args.repeats):
            start = time.perf_counter()
            particle_entropy_production(model, system, pos, g, batch_size=1)
            best = min(best, (time.perf_counter() - start) / args.snapshots)
        rows.append({"num_particles": n, "seconds_per_snapshot": best,
                     "seconds_per_particle": best / n})  # fmt: skip
        print(rows[-1], flush=True)
    base = rows[0]["seconds_per_particle"]
    for row in rows:
        row["per_particle_ratio_to_smallest"] = row["seconds_per_particle"] / base
    result = {"args": vars(args), "threads": torch.get_num_threads(), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "eval_timing.json", json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
