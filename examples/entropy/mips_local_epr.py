r"""Score-free local entropy production of hypoelliptic AOUPs, conditioned on the local density.

For the hypoelliptic AOUP (:math:`\varepsilon = 0`) the score-free identity
:math:`\sigma = -E[\sum_i \nabla_{x_i}\cdot f_i]` (:math:`f_i = kF_i - Ax_i`, the passive force)
splits over particles in *divergence form*,

.. math::  \tilde\sigma_i(x) = -\operatorname{tr}\frac{\partial f_i}{\partial x_i}(x),

whose sum over particles has the expectation :math:`\sigma`. It is not the quadratic form
:math:`|v_{g_i}|^2/\gamma` of the learned score (the two agree in expectation of the sum, not
particle by particle, nor conditioned on the density), so this script gives a score-free
reference for where the *divergence-form* production sits, not the paper's learned picture.

Per particle it computes the local packing fraction (:func:`gtlib.entropy.local_packing_fraction`),
classes gas / interface / bulk (:func:`gtlib.entropy.density_classes`, thresholds
``--gas-below`` and ``--bulk-above``) and the mean of :math:`\tilde\sigma_i` per class with its
standard error over snapshots. Writes ``local_epr.json`` and ``local_epr.png`` (last snapshot
coloured by :math:`\tilde\sigma_i` and by class).

Example::

    python examples/entropy/mips_local_epr.py /tmp/mips/pilot/aoup_n1024_v0.5_g0.002_phi0.5.h5 \
        --out /tmp/mips/local_epr
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from gtlib.datasets import ActiveOUParticles, load_trajectory  # noqa: E402
from gtlib.entropy import class_means, density_classes, local_packing_fraction  # noqa: E402
from gtlib.io import atomic_write_text  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("file")
    parser.add_argument("--out", type=str, default="/tmp/mips/local_epr")
    parser.add_argument("--radius", type=float, default=4.0)
    parser.add_argument("--gas-below", type=float, default=0.45)
    parser.add_argument("--bulk-above", type=float, default=0.8)
    parser.add_argument("--skip", type=float, default=0.5, help="fraction of snapshots dropped")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    run = load_trajectory(args.file)
    params = run["attrs"]["parameters"]
    system = ActiveOUParticles(**(json.loads(params) if isinstance(params, str) else params))
    pos = run["pos"].double()
    pos = pos[int(args.skip * pos.shape[0]) :].reshape(-1, *pos.shape[2:])
    local = []
    for snapshot in pos:
        jac = system.force_jacobian(snapshot)
        local.append(-torch.diagonal(jac, dim1=-2, dim2=-1).sum(-1))
    local = torch.stack(local)  # [S, N]
    phi = local_packing_fraction(pos, system.box_length, radius=args.radius, r0=system.r0)
    classes = density_classes(phi, args.gas_below, args.bulk_above)
    result = {
        "file": args.file,
        "num_snapshots": int(pos.shape[0]),
        "score_free_total_per_particle": float(local.sum(1).mean() / pos.shape[1]),
        "classes": {},
    }
    result["classes"] = class_means(local, classes)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "local_epr.json", json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
    p = pos[-1].numpy()
    sc = axes[0].scatter(p[:, 0], p[:, 1], c=local[-1].numpy(), s=3, cmap="magma")
    fig.colorbar(sc, ax=axes[0], label=r"$-\nabla_{x_i}\cdot f_i$ (divergence form)")
    sc = axes[1].scatter(p[:, 0], p[:, 1], c=classes[-1].numpy(), s=3, cmap="viridis")
    fig.colorbar(sc, ax=axes[1], ticks=[0, 1, 2], label="0 gas, 1 interface, 2 bulk")
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out / "local_epr.png", dpi=120)
    plt.close(fig)
    return result


if __name__ == "__main__":
    main()
