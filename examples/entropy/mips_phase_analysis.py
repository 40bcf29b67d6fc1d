r"""Phase-separation evidence for AOUP simulations: local packing fraction, clusters, S(q).

Reads the finished HDF5 files written by ``examples/entropy/mips_phase_sweep.py`` and computes,
with :mod:`gtlib.entropy.structure`:

* the histogram of the per-particle local packing fraction (disc of radius ``--radius``) over
  the last ``--tail`` of the snapshots -- bimodal (gas peak + dense peak) when phase separated;
* the largest cluster (contact distance ``--contact``) as a fraction of ``N`` against time --
  grows to a finite fraction when phase separated;
* the shell-averaged structure factor :math:`S(q)` over the last snapshots -- a peak at the
  smallest :math:`q = 2\pi/L` when phase separated.

A point is called phase separated when, averaged over the last snapshots, the largest cluster
holds at least ``--cluster-threshold`` of the particles and :math:`S(q_{min})` is at least
``--sq-threshold``. Writes ``phase.json`` (every number), ``phase_diagram.png`` (persistence
length :math:`v_0/\gamma` against :math:`\phi`, coloured by the largest-cluster fraction),
``snapshots.png`` (last snapshot of every point, particles coloured by local packing fraction),
``local_phi_hist.png``, ``largest_cluster.png`` and ``structure_factor.png``.

Example::

    python examples/entropy/mips_phase_analysis.py /tmp/mips/sweep/*.h5* --out /tmp/mips/phase
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from gtlib.datasets import load_trajectory  # noqa: E402
from gtlib.entropy import (  # noqa: E402
    cluster_sizes,
    local_packing_fraction,
    structure_factor,
)
from gtlib.io import atomic_write_text  # noqa: E402


def read_snapshots(path: str) -> dict[str, Any]:
    """Positions ``[S, N, d]`` (first trajectory), times and parameters of a finished file."""
    run = load_trajectory(path)
    attrs = run["attrs"]
    params = attrs["parameters"]
    params = json.loads(params) if isinstance(params, str) else params
    return {
        "pos": run["pos"][:, 0].double(),
        "time": run["time"].tolist(),
        "box_length": float(attrs["box_length"]),
        "params": params,
    }


def analyse(path: str, radius: float, contact: float, tail: float, n_max: int) -> dict[str, Any]:
    data = read_snapshots(path)
    pos, L, params = data["pos"], data["box_length"], data["params"]
    n = pos.shape[1]
    phi = n * math.pi * params["r0"] ** 2 / L**2
    largest = [int(cluster_sizes(p, L, contact)[0]) / n for p in pos]
    first_tail = max(0, int(math.floor((1.0 - tail) * pos.shape[0])))
    last = pos[first_tail:]
    local = local_packing_fraction(last, L, radius=radius, r0=params["r0"])
    # one bin per neighbour count (phi_i is a multiple of (r0 / R)^d): no empty aliasing bins
    unit = (params["r0"] / radius) ** pos.shape[-1]
    edges = (np.arange(0, round(1.3 / unit) + 2) - 0.5) * unit
    hist, edges = np.histogram(local.numpy().ravel(), bins=edges, density=True)
    q, S, _ = structure_factor(last, L, n_max=n_max)
    return {
        "file": path,
        "v0": params["v0"],
        "gamma": params["gamma"],
        "persistence_length": params["v0"] / params["gamma"],
        "packing_fraction": phi,
        "num_particles": n,
        "box_length": L,
        "time": data["time"],
        "largest_cluster_fraction": largest,
        "largest_cluster_tail": float(np.mean(largest[first_tail:])),
        "local_phi_hist": hist.tolist(),
        "local_phi_edges": edges.tolist(),
        "local_phi_tail_quantiles": np.quantile(local.numpy(), [0.1, 0.5, 0.9]).tolist(),
        "q": q.tolist(),
        "S": S.tolist(),
        "S_qmin": float(S[0]),
        "last_pos": pos[-1].tolist(),
        "last_local_phi": local_packing_fraction(pos[-1], L, radius=radius).tolist(),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--out", type=str, default="/tmp/mips/phase")
    parser.add_argument("--radius", type=float, default=4.0)
    parser.add_argument("--contact", type=float, default=2.1)
    parser.add_argument("--tail", type=float, default=0.25)
    parser.add_argument("--n-max", type=int, default=12)
    parser.add_argument("--cluster-threshold", type=float, default=0.3)
    parser.add_argument("--sq-threshold", type=float, default=10.0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    results = []
    for path in sorted(args.files):
        if not path.endswith(".h5"):
            print(f"skipping {path} (not a finished .h5 file)")
            continue
        r = analyse(path, args.radius, args.contact, args.tail, args.n_max)
        r["phase_separated"] = bool(
            r["largest_cluster_tail"] >= args.cluster_threshold and r["S_qmin"] >= args.sq_threshold
        )
        results.append(r)
        print(
            f"N={r['num_particles']} v0={r['v0']:g} gamma={r['gamma']:g} "
            f"l_p={r['persistence_length']:g} phi={r['packing_fraction']:.3f} t={r['time'][-1]:g} "
            f"largest={r['largest_cluster_tail']:.3f} S(qmin)={r['S_qmin']:.1f} "
            f"phi_loc q10/50/90={np.round(r['local_phi_tail_quantiles'], 3).tolist()} "
            f"-> {'MIPS' if r['phase_separated'] else 'homogeneous'}",
            flush=True,
        )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = [
        {k: v for k, v in r.items() if k not in ("last_pos", "last_local_phi")} for r in results
    ]
    atomic_write_text(out / "phase.json", json.dumps({"args": vars(args), "points": summary}))

    def label(r: dict[str, Any]) -> str:
        return (
            f"N={r['num_particles']} v0={r['v0']:g} l_p={r['persistence_length']:g} "
            f"phi={r['packing_fraction']:.2f}"
        )

    # Phase diagram.
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    speeds = sorted({r["v0"] for r in results})
    for r in results:
        # points at the same (phi, l_p) but different v0 side by side
        shift = 0.012 * (speeds.index(r["v0"]) - (len(speeds) - 1) / 2)
        ax.scatter(
            r["packing_fraction"] + shift,
            r["persistence_length"],
            c=[r["largest_cluster_tail"]],
            vmin=0,
            vmax=1,
            cmap="viridis",
            marker="o" if r["phase_separated"] else "x",
            s=120,
        )
        ax.annotate(
            f"{r['v0']:g}",
            (r["packing_fraction"] + shift, r["persistence_length"]),
            fontsize=6,
            xytext=(0, 7),
            textcoords="offset points",
            ha="center",
        )
    sm = plt.cm.ScalarMappable(cmap="viridis", norm=plt.Normalize(0, 1))
    fig.colorbar(sm, ax=ax, label="largest cluster / N")
    ax.set_yscale("log")
    ax.set_xlabel(r"packing fraction $\phi$")
    ax.set_ylabel(r"persistence length $v_0/\gamma$")
    ax.set_title("AOUP, N=1024, eps=0, k=1 (o: MIPS, x: homogeneous; labels: v0)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "phase_diagram.png", dpi=120)
    plt.close(fig)

    cols = min(4, len(results))
    rows = math.ceil(len(results) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax, r in zip(axes.ravel(), results, strict=False):
        p = np.asarray(r["last_pos"])
        sc = ax.scatter(p[:, 0], p[:, 1], c=r["last_local_phi"], s=2, cmap="magma", vmin=0, vmax=1)
        ax.set_aspect("equal")
        ax.set_title(label(r) + f"\nt={r['time'][-1]:g}", fontsize=7)
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in axes.ravel()[len(results) :]:
        ax.axis("off")
    fig.colorbar(sc, ax=axes.ravel().tolist(), label="local packing fraction", shrink=0.6)
    fig.savefig(out / "snapshots.png", dpi=120)
    plt.close(fig)

    for name, plot in (
        (
            "local_phi_hist",
            lambda ax, r: ax.plot(
                0.5 * (np.array(r["local_phi_edges"][1:]) + np.array(r["local_phi_edges"][:-1])),
                r["local_phi_hist"],
                label=label(r),
            ),
        ),
        (
            "largest_cluster",
            lambda ax, r: ax.plot(r["time"], r["largest_cluster_fraction"], label=label(r)),
        ),
        ("structure_factor", lambda ax, r: ax.loglog(r["q"], r["S"], "o-", ms=3, label=label(r))),
    ):
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in results:
            plot(ax, r)
        ax.set_xlabel(
            {
                "local_phi_hist": "local packing fraction",
                "largest_cluster": "time",
                "structure_factor": "q",
            }[name]
        )
        ax.set_ylabel(
            {
                "local_phi_hist": "density",
                "largest_cluster": "largest cluster / N",
                "structure_factor": "S(q)",
            }[name]
        )
        ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)


if __name__ == "__main__":
    main()
