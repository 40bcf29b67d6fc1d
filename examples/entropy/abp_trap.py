r"""Learned entropy production of trapped active Brownian particles against the closed form.

Non-interacting ABPs (``k = 0``) in free space with a trap of stiffness :math:`A` and
translational noise :math:`D_t`:

.. math::
    dx = (U e(\theta) - A x)\,dt + \sqrt{2D_t}\,dW, \qquad d\theta = \sqrt{2D_r}\,dB.

Independent value (derived from the stationary moments, see
:meth:`gtlib.datasets.particles.ActiveBrownianParticles.trap_entropy_production`):
:math:`\sigma = U^2 D_r / (D_t (A + D_r))` per particle. The particles do not interact, so each
one is an independent sample of the one-particle law; the score
:math:`s = \nabla_{(x, \theta)}\log\rho` of that law is learned by exact implicit score matching
(:func:`gtlib.entropy.train_score`, ``loss="implicit"``) with a small MLP on
:math:`(x, \cos\theta, \sin\theta)` (periodic in :math:`\theta`), parametrised as
:math:`s = \mathrm{net} + D^{-1} b` (so :math:`v = b - Ds = -D\,\mathrm{net}`), trained on the
first snapshots and evaluated on the held-out last ones with
:func:`gtlib.entropy.entropy_production` (quadratic form :math:`E[v\cdot D^{-1}v]`), next to the
score-free identity :math:`E[b\cdot D^{-1}b + \nabla\cdot b]`
(:func:`gtlib.entropy.score_free_entropy_production`) on the same held-out samples.

Example (about a minute on one core; writes ``results.json``)::

    OMP_NUM_THREADS=1 python examples/entropy/abp_trap.py --out /tmp/mips/abp_trap
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from gtlib.datasets import ActiveBrownianParticles, simulate
from gtlib.entropy import entropy_production, score_free_entropy_production, train_score
from gtlib.io import atomic_write_text


class TrappedABPScore(nn.Module):
    r"""Score of one ABP in ``[x, y, theta]``: :math:`s = \mathrm{net}(x, \cos\theta,
    \sin\theta) + D^{-1} b(x, \theta)`; ``net`` starts at 0 (so :math:`v = 0`).

    Shapes:
        state: ``[B, 3]`` -> ``[B, 3]``.
    """

    def __init__(self, system: ActiveBrownianParticles, hidden: int = 64, layers: int = 3):
        super().__init__()
        if system.num_particles != 1:
            raise ValueError("`system` must describe one particle (num_particles=1)")
        self.system = system
        dims = [4] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:], strict=True):
            blocks += [nn.Linear(a, b), nn.GELU()]
        self.net = nn.Sequential(*blocks, nn.Linear(hidden, 3))
        with torch.no_grad():
            self.net[-1].weight.zero_()
            self.net[-1].bias.zero_()
        self.register_buffer("inverse_diffusion", 1.0 / system.diffusion, persistent=False)

    def forward(self, state: Tensor) -> Tensor:
        theta = state[..., 2:3]
        features = torch.cat([state[..., :2], torch.cos(theta), torch.sin(theta)], dim=-1)
        b = self.system.angle_drift(state[..., None, :])[..., 0, :]
        return self.net(features) + self.inverse_diffusion.to(state.dtype) * b


def trap_samples(system: ActiveBrownianParticles, n_snapshots: int, dt: float, seed: int) -> Tensor:
    """Stationary one-particle samples ``[n_snapshots * N, 3]`` (angle layout), snapshots
    ``3 / min(A, D_r)`` apart after a burn-in of ``10 / min(A, D_r)``."""
    relax = 1.0 / min(system.trap, system.rotational_diffusion)
    run = simulate(
        system, n_snapshots, dt, burn_in=10 * relax, spacing=3 * relax, seed=seed, progress=False
    )
    return system.angle_state(run["pos"][:, 0], run["g"][:, 0]).reshape(-1, 3)


def learned_trap_epr(
    *,
    num_particles: int = 2000,
    n_snapshots: int = 12,
    v0: float = 1.0,
    rotational_diffusion: float = 1.0,
    eps: float = 0.5,
    trap: float = 1.0,
    dt: float = 2e-3,
    steps: int = 1500,
    batch_size: int = 512,
    holdout: float = 0.25,
    seed: int = 0,
) -> dict[str, Any]:
    """Simulates, trains and evaluates; returns the numbers (per particle)."""
    torch.manual_seed(seed)
    many = ActiveBrownianParticles(
        num_particles,
        v0=v0,
        rotational_diffusion=rotational_diffusion,
        k=0.0,
        trap=trap,
        eps=eps,
    )
    one = ActiveBrownianParticles(
        1,
        v0=v0,
        rotational_diffusion=rotational_diffusion,
        k=0.0,
        trap=trap,
        eps=eps,
    )
    samples = trap_samples(many, n_snapshots, dt, seed)
    n_train = int(round((1 - holdout) * n_snapshots)) * num_particles
    train, test = samples[:n_train], samples[n_train:]
    model = TrappedABPScore(one).double()
    train_score(
        model, train, loss="implicit", steps=steps, batch_size=batch_size, progress=False, seed=seed
    )
    diffusion = one.diffusion
    model.eval()

    def drift(x: Tensor) -> Tensor:
        return one.angle_drift(x[:, None, :])[:, 0, :]

    def divergence(x: Tensor) -> Tensor:
        return one.angle_drift_divergence(x[:, None, :])

    learned = entropy_production(test, drift, model, diffusion)
    score_free, score_free_stderr = score_free_entropy_production(
        test, drift, divergence, diffusion
    )
    exact = one.trap_entropy_production()
    # Stationary moments against their closed forms (checks the simulated law).
    pos, theta = samples[:, :2], samples[:, 2]
    e = torch.stack([torch.cos(theta), torch.sin(theta)], dim=-1)
    return {
        "exact": exact,
        "learned": learned.total,
        "learned_stderr": learned.stderr,
        "learned_x": float(learned.per_coordinate[:2].sum()),
        "learned_theta": float(learned.per_coordinate[2]),
        "score_free": score_free,
        "score_free_stderr": score_free_stderr,
        "learned_rel_error": learned.total / exact - 1.0,
        "score_free_rel_error": score_free / exact - 1.0,
        "e_dot_x": float((e * pos).sum(-1).mean()),
        "e_dot_x_exact": v0 / (trap + rotational_diffusion),
        "x2": float((pos * pos).sum(-1).mean()),
        "x2_exact": (v0**2 / (trap + rotational_diffusion) + 2 * eps) / trap,
        "n_train": int(train.shape[0]),
        "n_test": int(test.shape[0]),
        "parameters": {
            "v0": v0,
            "rotational_diffusion": rotational_diffusion,
            "eps": eps,
            "trap": trap,
            "dt": dt,
            "steps": steps,
            "batch_size": batch_size,
            "num_particles": num_particles,
            "n_snapshots": n_snapshots,
        },
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=str, default="runs/abp_trap")
    parser.add_argument("--num-particles", type=int, default=2000)
    parser.add_argument("--snapshots", type=int, default=12)
    parser.add_argument("--v0", "--speed", type=float, default=1.0, help="speed U")
    parser.add_argument("--rotational-diffusion", type=float, default=1.0)
    parser.add_argument(
        "--eps", "--trans-diffusion", type=float, default=0.5, help="translational diffusion D_t"
    )
    parser.add_argument("--trap", type=float, default=1.0)
    parser.add_argument("--dt", type=float, default=2e-3)
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    result = learned_trap_epr(
        num_particles=args.num_particles,
        n_snapshots=args.snapshots,
        v0=args.v0,
        rotational_diffusion=args.rotational_diffusion,
        eps=args.eps,
        trap=args.trap,
        dt=args.dt,
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.json", json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    if not math.isfinite(result["learned"]):
        raise SystemExit("non-finite learned EPR")


if __name__ == "__main__":
    main()
