r"""Learn the entropy production of active particles (AOUP, MIPS) with a ParticleTransformer score.

Hypoelliptic active Ornstein–Uhlenbeck particles (noise on the self-propulsion only,
:math:`\varepsilon = 0`, periodic box, soft repulsion; Boffi & Vanden-Eijnden, PNAS 2024). The
score of the self-propulsions, :math:`s_{g_i} = \nabla_{g_i}\log\rho`, is learned on stationary
snapshots with a spatially local transformer, in the parametrisation :math:`s_g = \mathrm{net} - g`
(:math:`v_g = -\gamma\,\mathrm{net}`), by exact implicit score matching (``--loss implicit``: the
divergence over :math:`g` is exact per particle, see ``ParticleScore.score_and_divergence``; no
noise level) or antithetic denoising score matching (``--loss dsm --sigma ...``). With
``--force-features`` (default) the network also gets each particle's passive force and its
Jacobian block (it learned faster with them). On held-out
snapshots the script reports the entropy production rate

.. math::  \sigma = \gamma^{-1}\sum_i E|v_{g_i}|^2 \quad\text{(learned)}, \qquad
           \sigma = -E\Big[\sum_i\nabla_{x_i}\cdot F_i\Big] \quad\text{(score-free identity)},

per particle (the quadratic form :math:`|v_{g_i}|^2/\gamma`), a Hutchinson estimate of
:math:`E[\nabla\cdot v]` (0 at stationarity), and the same for other files (``--eval-data``, e.g. a
4x larger system: the model is local, so it transfers).

Data: an HDF5 file from :func:`gtlib.datasets.particles.simulate` (``--data``), or, without one, a
small system simulated into ``--root``. The last ``--holdout`` of the trajectories (or, with one
trajectory, of the snapshots) are held out for evaluation.

Outputs in ``--out``: ``results.json`` (written atomically), ``model.pt`` (the network's
``state_dict`` and its configuration), ``epr_map.png`` (a held-out snapshot, particles coloured by
their local EPR) and ``epr_hist.png`` (histogram of per-particle local EPR).

Several processes (``torchrun --nproc_per_node N mips.py ...``): ``--batch-size`` is per
process; :func:`~gtlib.entropy.training.train_score` draws every global batch of ``batch-size x
N`` snapshots on all processes, each trains on its part and the gradients are summed, so N
processes with ``--batch-size B`` take the steps of one with ``N*B``. Rank 0 alone simulates the
data, writes the checkpoint and the outputs; the (comparatively cheap) evaluation runs in every
process on all held-out snapshots, with the same probes, so it is that of one process.

Example::

    python examples/entropy/mips.py --data aoup_n256_phi0.6.h5 --steps 20000 --batch-size 4 \
        --out runs/mips256 --checkpoint runs/mips256/ckpt.pt --eval-data aoup_n1024_phi0.6.h5
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from gtlib.datasets import (  # noqa: E402
    ActiveOUParticles,
    blob_state,
    load_trajectory,
    simulate,
    trajectory_attrs,
)
from gtlib.distributed import (  # noqa: E402
    distributed_session,
    get_world_size,
    is_main,
    on_main,
    print_main,
    resolve_device,
    save_checkpoint,
    write_json,
)
from gtlib.entropy import (  # noqa: E402
    ParticleEntropyProduction,
    ParticleScore,
    class_means,
    density_classes,
    local_packing_fraction,
    particle_entropy_production,
    train_score,
)
from gtlib.io import atomic_write  # noqa: E402
from gtlib.nn import ParticleTransformer  # noqa: E402


def _output_scale(text: str) -> float | str:
    """``--output-scale``: ``auto`` or a finite number > 0."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be 'auto' or a finite number > 0, got {text!r}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=str, default=None, help="HDF5 file from simulate()")
    data.add_argument("--root", type=str, default="data/mips", help="where to simulate")
    # --particles: under torchrun "--n" is an ambiguous abbreviation of its own options
    data.add_argument(
        "--particles", "--n", dest="n", type=int, default=64, help="particles (simulated data)"
    )
    data.add_argument("--packing-fraction", type=float, default=0.6)
    data.add_argument("--v0", type=float, default=1.0)
    data.add_argument("--gamma", type=float, default=1.0)
    data.add_argument("--dt", type=float, default=1e-3)
    data.add_argument("--burn-in", type=float, default=5.0)
    data.add_argument("--spacing", type=float, default=0.5)
    data.add_argument("--snapshots", type=int, default=50)
    data.add_argument("--trajectories", type=int, default=8)
    data.add_argument(
        "--initial",
        choices=("lattice", "blob"),
        default="lattice",
        help="initial state of the simulated data: the simulator's jittered lattice, or a "
        "Gaussian blob of standard deviation L/4 per trajectory (the MIPS paper's dense start)",
    )
    data.add_argument("--holdout", type=float, default=0.25, help="fraction held out")
    data.add_argument("--eval-data", type=str, nargs="*", default=[], help="transfer files")
    data.add_argument("--eval-snapshots", type=int, default=None, help="cap per evaluation")
    model = parser.add_argument_group("model")
    model.add_argument("--hidden", type=int, default=128)
    model.add_argument("--layers", type=int, default=4)
    model.add_argument("--heads", type=int, default=4)
    model.add_argument("--ff", type=int, default=256)
    model.add_argument("--neighbors", type=int, default=32)
    model.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help="particles per chunk, recomputed in the backward (default: 512 above "
        f"{AUTO_CHUNK_ABOVE} particles, else none); 0: no chunks",
    )
    model.add_argument(
        "--force-features",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="give the network each particle's passive force and its Jacobian block",
    )
    model.add_argument(
        "--output-scale",
        type=_output_scale,
        default=1.0,
        help="a factor on the network's output, or 'auto': the RMS that the training snapshots' "
        "score-free EPR implies (ParticleScore.natural_output_scale; needed at small gamma)",
    )
    train = parser.add_argument_group("training")
    train.add_argument("--steps", type=int, default=2000)
    train.add_argument(
        "--batch-size", type=int, default=4, help="snapshots per step (per process with torchrun)"
    )
    train.add_argument(
        "--loss",
        choices=["implicit", "dsm"],
        default="implicit",
        help="exact implicit score matching (per-particle divergence) or denoising",
    )
    train.add_argument("--sigma", type=float, default=0.01, help="DSM noise level")
    train.add_argument("--lr", type=float, default=1e-3)
    train.add_argument("--ema", type=float, default=0.999)
    train.add_argument("--checkpoint", type=str, default=None)
    train.add_argument("--checkpoint-every", type=int, default=500)
    train.add_argument(
        "--stop-after",
        type=int,
        default=None,
        help="stop after this step, checkpointed (resume later with the same command without it)",
    )
    train.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True)
    train.add_argument("--seed", type=int, default=0)
    train.add_argument(
        "--device", type=str, default="cpu", help="cpu, cuda (cuda:LOCAL_RANK under torchrun)"
    )
    train.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    train.add_argument("--no-progress", action="store_true")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--eval-batch-size", type=int, default=8, help="snapshots per chunk")
    evaluation.add_argument("--divergence-probes", type=int, default=1, help="0: skip E[div v]")
    evaluation.add_argument("--bins", type=int, default=16)
    evaluation.add_argument(
        "--local-radius",
        type=float,
        default=4.0,
        help="radius of the local packing fraction that classes particles gas / interface / bulk",
    )
    evaluation.add_argument("--gas-below", type=float, default=0.45, help="gas: local phi below")
    evaluation.add_argument("--bulk-above", type=float, default=0.8, help="bulk: local phi from")
    evaluation.add_argument(
        "--monitor-every",
        type=int,
        default=0,
        help="steps between held-out evaluations during training (EMA weights: held-out loss "
        "and EPR, best.pt and learning_curve.png); 0: none",
    )
    evaluation.add_argument(
        "--monitor-snapshots", type=int, default=8, help="held-out snapshots used while training"
    )
    parser.add_argument("--out", type=str, default="runs/mips")
    args = parser.parse_args(argv)
    for name in ("n", "steps", "batch_size", "snapshots", "trajectories", "eval_batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.chunk_size is not None and args.chunk_size < 0:
        parser.error("--chunk-size must be >= 0")
    if args.monitor_every < 0 or args.monitor_snapshots < 2:
        parser.error("--monitor-every must be >= 0 and --monitor-snapshots >= 2")
    if not 0.0 < args.holdout < 1.0:
        parser.error("--holdout must lie in (0, 1)")
    if not args.sigma > 0:
        parser.error("--sigma must be > 0")
    if not 0 < args.gas_below < args.bulk_above:
        parser.error("need 0 < --gas-below < --bulk-above")
    if args.stop_after is not None:
        if args.checkpoint is None:
            parser.error("--stop-after needs --checkpoint (to resume from)")
        if not 1 <= args.stop_after <= args.steps:
            parser.error(f"--stop-after must lie in [1, --steps = {args.steps}]")
    return args


class _Stopped(Exception):
    """Raised by the training callback at ``--stop-after``."""


def _system_from_file(attrs: dict[str, Any]) -> ActiveOUParticles:
    if str(attrs.get("system")) != "ActiveOUParticles":
        raise ValueError(f"expected an ActiveOUParticles file, got system={attrs.get('system')!r}")
    system = ActiveOUParticles(**json.loads(attrs["parameters"]))
    if system.eps != 0.0:
        raise ValueError("this example is for hypoelliptic AOUPs (eps = 0)")
    if system.box is None:
        raise ValueError("this example needs a periodic box")
    return system


# Above this many particles the network runs in chunks of 512 particles by default: every
# activation of the whole system then exceeds glibc's largest heap-reused block (32 MB), is
# mapped afresh and page-faulted on every step. At N = 4096 (33 tokens per particle, 4 layers
# of 128) chunks of 512 took one forward + backward from 10 s to 6 s and the peak from 4.1 to
# 1.7 GB on 2 cores; at N = 1024 they cost 10% (the recomputation).
AUTO_CHUNK_ABOVE = 2048


def _chunk_size(requested: int | None, num_particles: int) -> int | None:
    if requested is None:
        return 512 if num_particles > AUTO_CHUNK_ABOVE else None
    return requested or None


def _simulate_default(args: argparse.Namespace) -> str:
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device).type
    name = (
        f"aoup_n{args.n}_phi{args.packing_fraction:g}_v{args.v0:g}_g{args.gamma:g}_"
        f"s{args.snapshots}x{args.trajectories}_seed{args.seed}"
        f"{'' if args.initial == 'lattice' else '_' + args.initial}"
        f"{'' if device == 'cpu' else '_' + device}.h5"
    )
    path = root / name
    system = ActiveOUParticles(
        args.n, packing_fraction=args.packing_fraction, v0=args.v0, gamma=args.gamma, k=1.0
    )
    initial = None
    if args.initial == "blob":  # its own seed: simulate's noise starts from args.seed
        initial = blob_state(system, seed=args.seed + 1, n_trajectories=args.trajectories)
    simulate(
        system,
        args.snapshots,
        args.dt,
        burn_in=args.burn_in,
        spacing=args.spacing,
        n_trajectories=args.trajectories,
        initial=initial,
        seed=args.seed,
        out=path,
        progress=not args.no_progress,
        device=resolve_device(args.device),  # a GPU integrates large batches much faster
    )
    return str(path)


def _split(pos: Tensor, g: Tensor, holdout: float) -> tuple[tuple[Tensor, Tensor], ...]:
    """``[S, B, N, d]`` -> train / held-out ``[*, N, d]``, by trajectory when ``B > 1``."""
    num_snapshots, num_trajectories = pos.shape[:2]
    if num_trajectories > 1:
        cut = num_trajectories - max(1, round(holdout * num_trajectories))
        parts = [(pos[:, :cut], g[:, :cut]), (pos[:, cut:], g[:, cut:])]
    else:
        cut = num_snapshots - max(1, round(holdout * num_snapshots))
        if cut < 1:
            raise ValueError("too few snapshots to hold some out")
        parts = [(pos[:cut], g[:cut]), (pos[cut:], g[cut:])]
    return tuple((p.reshape(-1, *p.shape[2:]), q.reshape(-1, *q.shape[2:])) for p, q in parts)


def _cap(pos: Tensor, g: Tensor, limit: int | None) -> tuple[Tensor, Tensor]:
    if limit is None or pos.shape[0] <= limit:
        return pos, g
    index = torch.linspace(0, pos.shape[0] - 1, limit).round().long()
    return pos[index], g[index]


def _check_files(args: Any, system: ActiveOUParticles, path: Any) -> None:
    """Before training: ``--local-radius`` against the training file's box, and every transfer
    file's system and box, from its attributes alone (its data is read after training)."""
    _check_local_radius(args.local_radius, system, path)
    for other in args.eval_data:
        try:
            other_system = _system_from_file(trajectory_attrs(other))
        except (FileNotFoundError, ValueError) as exc:
            raise SystemExit(f"error: --eval-data {other}: {exc}") from None
        _check_local_radius(args.local_radius, other_system, other)


def _check_local_radius(radius: float, system: ActiveOUParticles, path: Any) -> None:
    if radius > float(system.box_length) / 2:
        raise SystemExit(
            f"error: --local-radius {radius:g} exceeds half the box of {path} "
            f"({float(system.box_length) / 2:.4g})"
        )


def _by_density(
    result: ParticleEntropyProduction, pos: Tensor, system: ActiveOUParticles, args: Any
) -> dict[str, dict[str, float]]:
    """Learned EPR per particle in the gas, at the interfaces and in the bulk of the clusters
    (classes of the local packing fraction within ``--local-radius``), and the fraction of
    particles in each."""
    box = float(system.box_length)
    phi = local_packing_fraction(pos, box, radius=args.local_radius, r0=system.r0)
    classes = density_classes(phi, args.gas_below, args.bulk_above)
    return class_means(result.per_particle.detach().cpu(), classes)


def _summary(result: ParticleEntropyProduction, seconds: float) -> dict[str, Any]:
    out = result.summary()
    out["per_particle_min"] = float(result.per_particle.min())
    out["per_particle_max"] = float(result.per_particle.max())
    out["relative_difference_to_score_free"] = (result.total - result.score_free) / abs(
        result.score_free
    )
    out["eval_seconds"] = seconds
    return out


def _plot(
    result: ParticleEntropyProduction, pos: Tensor, box: float, out: Path, title: str
) -> None:
    values = result.per_particle
    fig, ax = plt.subplots(figsize=(5.5, 4.8))
    half = box / 2
    wrapped = torch.remainder(pos[0] + half, box) - half
    scatter = ax.scatter(
        wrapped[:, 0], wrapped[:, 1], c=values[0], s=max(2.0, 4000.0 / pos.shape[1]), cmap="magma"
    )
    fig.colorbar(scatter, ax=ax, label=r"local EPR $|v_{g_i}|^2/\gamma$")
    ax.set(xlim=(-half, half), ylim=(-half, half), aspect="equal", title=title)
    fig.tight_layout()
    atomic_write(out / "epr_map.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.hist(values.flatten().numpy(), bins=60, color="tab:blue")
    ax.axvline(result.per_particle_mean, color="k", ls="--", label="mean (learned)")
    ax.axvline(
        result.score_free / result.num_particles, color="tab:red", ls=":", label="score-free"
    )
    ax.set(xlabel="per-particle local EPR", ylabel="count", yscale="log")
    ax.legend()
    fig.tight_layout()
    atomic_write(out / "epr_hist.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def _plot_learning_curve(result: Any, held_out: dict[str, Any], out: Path) -> None:
    """Training loss, held-out loss and held-out EPR per particle against the step."""
    steps = [h["step"] for h in result.history]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    losses = torch.tensor(result.losses)
    window = max(1, len(losses) // 50)
    smooth = losses.unfold(0, window, window).mean(1) if len(losses) >= window else losses
    axes[0].plot(
        torch.arange(1, len(smooth) + 1) * window, smooth, label=f"train (mean of {window})"
    )
    axes[0].plot(steps, [h["heldout_loss"] for h in result.history], "o-", label="held-out (EMA)")
    axes[0].axvline(result.best_step, color="k", ls=":", label="best held-out")
    axes[0].set(xlabel="step", ylabel="score-matching loss")
    axes[0].legend(fontsize=8)
    if "heldout_epr_per_particle" in result.history[0]:
        axes[1].plot(steps, [h["heldout_epr_per_particle"] for h in result.history], "o-",
                     label="learned (EMA)")  # fmt: skip
        axes[1].axhline(result.history[0]["heldout_score_free_per_particle"], color="tab:red",
                        ls="--", label="score-free (same snapshots)")  # fmt: skip
        axes[1].axhline(held_out["score_free"] / held_out["num_particles"], color="tab:red",
                        ls=":", label="score-free (all held-out)")  # fmt: skip
        axes[1].axvline(result.best_step, color="k", ls=":")
        axes[1].set(xlabel="step", ylabel="held-out EPR per particle")
        axes[1].legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out / "learning_curve.png", lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate and write the outputs; returns the results (rank 0 writes under
    torchrun)."""
    with distributed_session():
        return _main(argv)


def _main(argv: list[str] | None) -> dict[str, Any]:
    args = parse_args(argv)
    out = Path(args.out)
    torch.manual_seed(args.seed)  # the same seed on every rank
    dtype = getattr(torch, args.dtype)
    try:
        device = resolve_device(args.device)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"error: --device: {exc}") from None

    # rank 0 simulates, the others read its file
    path = args.data if args.data is not None else on_main(_simulate_default, args)
    data = load_trajectory(path)
    system = _system_from_file(data["attrs"])
    _check_files(args, system, path)  # found now, not after training
    (train_pos, train_g), (test_pos, test_g) = _split(data["pos"], data["g"], args.holdout)
    states = torch.cat([train_pos, train_g], dim=-1).to(dtype)
    dim = system.dim

    net = ParticleTransformer(
        ParticleScore.input_channels(dim, force_features=args.force_features),
        dim,
        dim=dim,
        num_neighbors=args.neighbors,
        hidden_channels=args.hidden,
        num_layers=args.layers,
        heads=args.heads,
        ff_channels=args.ff,
        chunk_size=_chunk_size(args.chunk_size, system.num_particles),
    )
    output_scale = (
        ParticleScore.natural_output_scale(system, train_pos, train_g)
        if args.output_scale == "auto"
        else args.output_scale
    )

    def score_model(system_: ActiveOUParticles, zero_init: bool) -> ParticleScore:
        """The network as a score of ``system_`` (training and every evaluation alike)."""
        return ParticleScore(
            net,
            system_,
            force_features=args.force_features,
            zero_init=zero_init,
            output_scale=output_scale,
        ).to(device=device, dtype=dtype)

    model = score_model(system, zero_init=True)
    if args.loss == "implicit":
        loss_options: dict[str, Any] = {"loss_kwargs": {"divergence": "model"}}
    else:
        loss_options = {"sigma": args.sigma}

    monitor: dict[str, Any] = {}
    if args.monitor_every > 0:
        mon_pos, mon_g = _cap(test_pos, test_g, args.monitor_snapshots)

        def heldout_epr(scorer: torch.nn.Module) -> dict[str, float]:
            estimate = particle_entropy_production(
                scorer, system, mon_pos, mon_g, batch_size=args.eval_batch_size
            )
            return {
                "heldout_epr_per_particle": estimate.per_particle_mean,
                "heldout_score_free_per_particle": estimate.score_free / estimate.num_particles,
            }

        monitor = {
            "eval_data": torch.cat([mon_pos, mon_g], dim=-1).to(dtype),
            "eval_every": args.monitor_every,
            "eval_batch_size": args.eval_batch_size,
            "eval_fn": heldout_epr,
            "best_checkpoint": out / "best.pt",
        }

    def stop(step: int, loss: float, model: torch.nn.Module) -> None:
        if step == args.stop_after:  # train_score checkpoints, then lets this through
            raise _Stopped(step)

    start = time.perf_counter()
    try:
        result = train_score(
            model,
            states,
            loss=args.loss,
            **loss_options,
            noisy=model.noisy,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            ema_decay=args.ema,
            checkpoint=args.checkpoint,
            checkpoint_every=args.checkpoint_every,
            resume=args.resume,
            progress=not args.no_progress,
            seed=args.seed,
            callback=stop if args.stop_after is not None else None,
            **monitor,
        )
    except _Stopped as stopped:
        print_main(
            f"stopped after step {stopped.args[0]}; checkpoint {args.checkpoint} (resume with the "
            "same command without --stop-after)"
        )
        return {"stopped_after": stopped.args[0], "checkpoint": args.checkpoint}
    train_seconds = time.perf_counter() - start
    steps_run = args.steps - result.resumed_from

    def evaluate(
        system_: ActiveOUParticles, pos: Tensor, g: Tensor, name: str
    ) -> tuple[dict[str, Any], ParticleEntropyProduction]:
        scorer = score_model(system_, zero_init=False)
        scorer.eval()
        begin = time.perf_counter()
        estimate = particle_entropy_production(
            scorer,
            system_,
            pos,
            g,
            batch_size=args.eval_batch_size,
            bins=args.bins,
            divergence_probes=args.divergence_probes,
            seed=args.seed,
        )
        summary = _summary(estimate, time.perf_counter() - begin)
        summary["by_density"] = _by_density(estimate, pos, system_, args)
        summary["file"] = name
        summary["box_length"] = float(system_.box_length)
        summary["packing_fraction"] = float(system_.packing_fraction)
        return summary, estimate

    test_pos, test_g = _cap(test_pos, test_g, args.eval_snapshots)
    held_out, estimate = evaluate(system, test_pos, test_g, str(path))
    if is_main():
        _plot(
            estimate,
            test_pos,
            float(system.box_length),
            out,
            f"N={system.num_particles}, phi={system.packing_fraction:.2f}: "
            f"sigma/N={estimate.per_particle_mean:.3g}",
        )
    best = None
    if result.best_state_dict is not None:  # the weights with the best held-out loss
        final_state = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(result.best_state_dict)
        best, _ = evaluate(system, test_pos, test_g, str(path))
        best["step"] = result.best_step
        best["heldout_loss"] = result.best_loss
        model.load_state_dict(final_state)
        if is_main():
            _plot_learning_curve(result, held_out, out)
    transfer = []
    for other in args.eval_data:
        other_data = load_trajectory(other)
        other_system = _system_from_file(other_data["attrs"])
        pos = other_data["pos"].reshape(-1, *other_data["pos"].shape[2:])
        g = other_data["g"].reshape(-1, *other_data["g"].shape[2:])
        pos, g = _cap(pos, g, args.eval_snapshots)
        summary, _ = evaluate(other_system, pos, g, other)
        summary["per_particle_ratio_to_training"] = (
            summary["per_particle_mean"] / held_out["per_particle_mean"]
            if held_out["per_particle_mean"] != 0
            else math.nan
        )
        transfer.append(summary)

    config = {k: v for k, v in vars(args).items()}
    config["output_scale_value"] = output_scale
    results = {
        "config": config,
        "world_size": get_world_size(),
        "global_batch_size": args.batch_size * get_world_size(),
        "data": str(path),
        "system": json.loads(data["attrs"]["parameters"]),
        "num_train_snapshots": int(states.shape[0]),
        "num_eval_snapshots": int(test_pos.shape[0]),
        "train_seconds": train_seconds,
        "seconds_per_step": train_seconds / max(1, steps_run),
        "steps": args.steps,
        "resumed_from": result.resumed_from,
        "final_loss": sum(result.losses[-50:]) / max(1, len(result.losses[-50:])),
        "num_parameters": sum(p.numel() for p in net.parameters()),
        "held_out": held_out,
        "best_heldout_checkpoint": best,
        "history": result.history,
        "transfer": transfer,
    }
    save_checkpoint({"state_dict": net.state_dict(), "config": config}, out / "model.pt")
    write_json(out / "results.json", results)  # rank 0 only
    print_main(
        f"held-out EPR {held_out['total']:.4g} +- {held_out['stderr']:.2g} "
        f"(per particle {held_out['per_particle_mean']:.4g}); score-free "
        f"{held_out['score_free']:.4g} +- {held_out['score_free_stderr']:.2g}; "
        f"E[div v] {held_out['divergence']}; {results['seconds_per_step']:.3g} s/step"
    )
    print_main(
        "held-out EPR per particle by local density: "
        + ", ".join(
            f"{name} {item['mean_per_particle']:.4g} ({100 * item['fraction_of_particles']:.0f}%)"
            for name, item in held_out["by_density"].items()
        )
    )
    for item in transfer:
        print_main(
            f"transfer {item['file']}: N={item['num_particles']}, per particle "
            f"{item['per_particle_mean']:.4g} (score-free "
            f"{item['score_free'] / item['num_particles']:.4g})"
        )
    return results


if __name__ == "__main__":
    main()
