r"""A time-limited probe of one hypoelliptic AOUP point on any device (GPU included).

Runs ``--batch`` independent systems of :class:`gtlib.datasets.ActiveOUParticles` (eps = 0,
k = 1, softplus repulsion) with the library's integrator (:func:`gtlib.datasets.simulate`'s
step: Euler-Maruyama for x, exact Ornstein-Uhlenbeck for g) and its Verlet list, for
``--seconds`` of wall time, and records every ``--spacing`` time units

* the fraction of particles with at least 5 neighbours within 2.4 (the authors' "solid"
  test) and with at most 2 (their "gas" test), per system;
* the positions (float16, as fractions of the box) of every system.

It exists to search the phase diagram where :func:`~gtlib.datasets.simulate` (CPU,
resumable, one file per point) would take hours: a phase-separated system shows a solid
fraction and a gas fraction that both stay large, and a bimodal local packing fraction
(``examples/entropy/mips_phase_analysis.py`` on the positions). The result is an ``.npz``
(``--out``) with ``time``, ``solid``/``gas`` ``[S, B]``, ``pos`` ``[S, B, N, 2]`` and the
parameters, written atomically. No resume: a probe is short by design.

    python examples/entropy/mips_phase_probe.py --device cuda --num-particles 4096 \
        --phi 0.5 --v0 0.025 --gamma 1e-4 --batch 4 --initial blob --seconds 240 \
        --spacing 500 --out /tmp/probe.npz

The authors' MIPS point (file names in their public notebook): v0 = 0.025, gamma = 1e-4,
phi = 0.5, beta = 7.5, dt = 0.1, k = 1, eps = 0, N = 4096 for training and up to 32768.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from gtlib.datasets import ActiveOUParticles
from gtlib.datasets._particle_neighbours import _NeighbourCache
from gtlib.datasets._particle_simulate import _initial_positions
from gtlib.io import atomic_write

SOLID, GAS, CONTACT = 5, 2, 2.4


def dense_edges(system: ActiveOUParticles, flat: torch.Tensor, radius: float) -> torch.Tensor:
    """``[2, E]`` pairs ``(j, i)``, ``j < i``, within ``radius`` by all-pairs distances per
    system (the fallback when the cell lists cannot run on the device)."""
    n = system.num_particles
    pos = flat.reshape(-1, n, flat.shape[-1])
    delta = system.minimum_image(pos[:, None, :, :] - pos[:, :, None, :])
    close = torch.linalg.vector_norm(delta, dim=-1) < radius
    close &= torch.ones(n, n, dtype=torch.bool, device=flat.device).tril(-1)
    b, i, j = close.nonzero(as_tuple=True)
    return torch.stack([b * n + j, b * n + i])


def coordination(system: ActiveOUParticles, pos: torch.Tensor, edges: torch.Tensor):
    """Neighbours within :data:`CONTACT` per particle, ``[B, N]``."""
    flat = pos.reshape(-1, pos.shape[-1])
    _, r, _ = system._edge_geometry(flat, edges)
    close = (r < CONTACT).to(flat.dtype)
    count = torch.zeros(flat.shape[0], dtype=flat.dtype, device=flat.device)
    count = count.index_add(0, edges[0], close).index_add(0, edges[1], close)
    return count.reshape(pos.shape[:-1])


def initial_state(system: ActiveOUParticles, kind: str, batch: int, seed: int, device, dtype):
    generator = torch.Generator().manual_seed(seed)
    n, d = system.num_particles, system.dim
    if kind == "blob":
        pos = 0.25 * system.box_length * torch.randn(batch, n, d, generator=generator, dtype=dtype)
        pos = system.wrap(pos)
    else:
        pos = _initial_positions(system, batch, generator, dtype)
    g = torch.randn(batch, n, d, generator=generator, dtype=dtype)
    return pos.to(device), g.to(device)


def run(args: argparse.Namespace) -> dict:
    device = torch.device(args.device)
    system = ActiveOUParticles(
        args.num_particles,
        packing_fraction=args.phi,
        v0=args.v0,
        gamma=args.gamma,
        k=1.0,
        beta=args.beta,
    )
    dtype = getattr(torch, args.dtype)
    pos, g = initial_state(system, args.initial, args.batch, args.seed, device, dtype)
    generator = torch.Generator(device=device).manual_seed(args.seed + 1)
    cache = _NeighbourCache(system, args.skin)
    neighbour_search = "cell lists"
    try:
        cache.forces(pos)
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, NotImplementedError) as error:  # no cell lists on this device
        neighbour_search = f"all pairs ({type(error).__name__}: {error})"[:300]
        system._edges = lambda flat, batch, radius: dense_edges(system, flat, radius)
        cache.invalidate()
        cache.forces(pos)
    steps_per_snapshot = max(1, round(args.spacing / args.dt))
    times, solid, gas, snaps = [], [], [], []

    def record(step: int) -> None:
        edges = cache.edges  # every pair within the cutoff now, and the cutoff exceeds 2.4 ...
        if system.cutoff < CONTACT:  # ... unless the discs are much harder: search afresh
            flat, batch, _ = system._flatten(pos)
            edges = system._edges(flat, batch, CONTACT)
        count = coordination(system, pos, edges)
        times.append(step * args.dt)
        solid.append((count >= SOLID).float().mean(-1).cpu().numpy())
        gas.append((count <= GAS).float().mean(-1).cpu().numpy())
        fraction = (pos / system.box_length).cpu().numpy().astype(np.float16)
        snaps.append(fraction)

    start = time.perf_counter()
    step = 0
    record(step)
    while time.perf_counter() - start < args.seconds:
        for _ in range(steps_per_snapshot):
            pos, g = system._advance(pos, g, args.dt, generator, cache.forces)
        step += steps_per_snapshot
        record(step)
        if args.verbose:
            print(f"t={step * args.dt:.0f} solid={solid[-1].mean():.3f} gas={gas[-1].mean():.3f}",
                  flush=True)  # fmt: skip
    elapsed = time.perf_counter() - start
    return {
        "time": np.asarray(times),
        "solid": np.stack(solid),
        "gas": np.stack(gas),
        "pos": np.stack(snaps),
        "parameters": json.dumps(
            {
                **system.parameters(),
                "packing_fraction": args.phi,
                "dt": args.dt,
                "dtype": args.dtype,
                "initial": args.initial,
                "batch": args.batch,
                "seed": args.seed,
                "device": str(device),
                "steps": step,
                "seconds": elapsed,
                "steps_per_second": step / elapsed,
                "persistence_times": step * args.dt * args.gamma,
                "neighbour_search": neighbour_search,
                "verlet_rebuilds": cache.rebuilds,
            }
        ),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-particles", type=int, default=1024)
    parser.add_argument("--phi", type=float, default=0.5)
    parser.add_argument("--v0", type=float, default=0.025)
    parser.add_argument("--gamma", type=float, default=1e-4)
    parser.add_argument("--beta", type=float, default=7.5)
    parser.add_argument("--dt", type=float, default=0.1)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--initial", choices=("blob", "lattice"), default="blob")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--spacing", type=float, default=500.0)
    parser.add_argument("--skin", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)
    for name in ("num_particles", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("phi", "gamma", "beta", "dt", "seconds", "spacing"):
        if not getattr(args, name) > 0:
            parser.error(f"--{name} must be positive")
    if args.spacing < args.dt:
        parser.error("--spacing must be at least --dt")
    if args.skin < 0:
        parser.error("--skin must not be negative")
    result = run(args)

    def write(path) -> None:
        with open(path, "wb") as file:
            np.savez(file, **result)

    atomic_write(args.out, write)
    parameters = json.loads(result["parameters"])
    print(
        f"{args.out}: {parameters['steps']} steps, {parameters['steps_per_second']:.0f}/s, "
        f"{parameters['persistence_times']:.2f} persistence times; solid/gas at the end "
        f"{result['solid'][-1].mean():.3f}/{result['gas'][-1].mean():.3f}; "
        f"{parameters['neighbour_search']}",
        flush=True,
    )


if __name__ == "__main__":
    main()
