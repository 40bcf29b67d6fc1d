"""Train a neural operator (FNO, TFNO, MgNO, ScOT or GINO) on PDE data and evaluate it.

Data (``--data``): a dataset folder in The Well's layout (``<base>/<name>`` holding
``data/{train,valid,test}/*.hdf5``), a single Well file or a PDEBench file, read with
:class:`gtlib.datasets.PDEDataset`. Without ``--data`` a Darcy flow set (-div(a grad u) = 1,
u = 0 on the boundary, piecewise-constant a) of ``--n-train`` / ``--n-test`` samples at
``--resolution`` is generated under ``--root`` with :func:`gtlib.datasets.generate.pde.darcy`
(skipped when the files are already there).

Models (``--model``):

- ``fno``, ``tfno``: :class:`gtlib.operators.FNO` (Li et al. 2021; ``tfno`` with Tucker-factorised
  spectral weights, Kossaifi et al. 2024). ``--modes`` counts frequencies as the FNO paper does
  (``modes`` of each sign per dimension, i.e. ``n_modes = 2 * modes`` in neuraloperator's
  convention). Any grid size works, so ``--eval-resolution`` evaluates zero-shot.
- ``mgno``: :class:`gtlib.operators.MgNO` (He, Liu, Xu 2024), zero padding (Dirichlet) for Darcy
  and circular padding otherwise; fewer ``--levels`` on grids too small for them.
- ``scot``: :class:`gtlib.operators.ScOT` (Poseidon's Swin operator transformer); the only model
  that takes the lead time through its time-conditioned norms. Built for one ``image_size``.
- ``gino``: :class:`gtlib.operators.GINO`: grid points are treated as a point cloud (positions in
  [0, 1]^d, features = the input channels) and the solution is predicted at the same points.

Time-dependent data (e.g. Navier-Stokes vorticity): ``--n-steps-input`` snapshots predict
``--n-steps-output`` snapshots ``--time-stride`` steps apart; ``--all2all`` trains on every pair
(t_i, t_j), i <= j, of a trajectory with the lead time t_j - t_i (Poseidon). ScOT receives the lead
time directly; the other models as one extra constant input channel. ``--lead-steps`` reports the
test errors separately for the listed lead times (in time steps).

Training follows the FNO paper: inputs and targets are normalised with Gaussian statistics of the
training set (per grid point by default), the model predicts normalised targets, and the loss
(relative L2 with ``--loss l2``, relative H1 with ``--loss h1``) is taken on the denormalised
prediction, so every reported error is in physical units. Metrics on the test split: mean relative
L2 error and Poseidon's median relative L1 error in percent. Every epoch prints one line and
replaces ``--out``/checkpoint.pt atomically; ``--resume`` continues from it and reproduces an
uninterrupted run exactly (``--stop-after`` ends a run early on purpose; the learning-rate
schedule always spans ``--epochs``, so resume with the same arguments).

Several processes (``torchrun --nproc_per_node N train_operator.py ...``; see
:mod:`gtlib.distributed`): DistributedDataParallel with ``--batch-size`` samples per process. Each
epoch's shuffled order is the one of a single process; it is cut into global batches of
``batch-size x N`` samples, each process trains on its part of every global batch (a process
whose part of a short last batch is empty runs one placeholder sample with weight 0) and the
losses are weighted so that the averaged gradient is the one of the global batch: N processes
with ``--batch-size B`` take the steps of one process with ``--batch-size N*B``. Test (and
zero-shot) predictions are sharded and gathered, so the metrics are those of one process. Rank 0
alone generates data, writes the checkpoint, the results and the figure; the checkpoint stores
the global batch size, so ``--resume`` works with another number of processes that keeps it.

Outputs under ``--out``: ``results.json`` (arguments, parameter count, training time, per-epoch
history, final test metrics, per-lead-time and zero-shot results), ``prediction.png`` (input, truth,
prediction and error of one test sample) and ``checkpoint.pt``.

Run (generates 1000/200 Darcy samples at 64x64 first):

    python examples/pde/train_operator.py --model fno --epochs 50 --out runs/darcy_fno

    python examples/pde/train_operator.py --model fno --n-train 64 --n-test 16 --resolution 32 \
        --epochs 20 --eval-resolution 63 --out runs/darcy_small

    python examples/pde/train_operator.py --model scot --data data/pde/ns/navier_stokes_2d \
        --input-fields vorticity --target-fields vorticity --all2all --lead-steps 1 5 10 \
        --out runs/ns_scot
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from gtlib.distributed import (
    all_gather_cat,
    all_reduce,
    broadcast_module,
    distributed_session,
    get_world_size,
    is_main,
    on_main,
    print_main,
    progress,
    resolve_device,
    rng_states,
    save_checkpoint,
    seed_everything,
    set_rng_states,
    shard,
    shard_bounds,
    wrap_ddp,
    write_json,
)
from gtlib.io import atomic_write

MODELS = ("fno", "tfno", "mgno", "scot", "gino")
CHECKPOINT_FORMAT = 1
CHECKPOINT_NAME = "checkpoint.pt"
# arguments that may differ between an interrupted run and its resumption
# (--batch-size and the world size may change when the global batch size stays: it is compared;
# --out may change when the folder was moved)
RESUMABLE_DIFFERENCES = frozenset(
    {"resume", "no_progress", "threads", "stop_after", "device", "batch_size", "world_size",
     "out"}
)  # fmt: skip
EPS = 1e-6
DARCY_FIELDS = (["coefficient"], ["solution"])  # fields of gtlib.datasets.generate.pde.darcy


# ------------------------------------------------------------------------------------ arguments
def _number(kind: type, low: float | None, what: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not math.isfinite(value) or (low is not None and value < low):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value

    return parse


positive_int = _number(int, 1, "a positive integer")
non_negative_int = _number(int, 0, "a non-negative integer")
positive_float = _number(float, 1e-300, "a positive number")
non_negative_float = _number(float, 0.0, "a non-negative number")


def _add_data_arguments(parser: argparse.ArgumentParser) -> None:
    """The data options of :func:`parse_args`."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--data",
        type=Path,
        default=None,
        help="a Well dataset folder <base>/<name>, a Well file or a PDEBench file; "
        "default: a Darcy set generated under --root",
    )
    data.add_argument(
        "--root", type=Path, default=Path("data/pde"), help="where generated Darcy sets go"
    )
    data.add_argument(
        "--n-train",
        type=positive_int,
        default=None,
        help="training samples (items: windows or all2all pairs) from the start of the train "
        "split; default: all (1000 for the generated Darcy set; 80%% of a file without splits)",
    )
    data.add_argument(
        "--n-test",
        type=positive_int,
        default=None,
        help="test samples; default: all (200 for the generated Darcy set; the last 20%% of a "
        "file without splits)",
    )
    data.add_argument(
        "--resolution", type=positive_int, default=64, help="grid of the generated Darcy set"
    )
    data.add_argument("--data-seed", type=int, default=0, help="seed of the Darcy generator")
    data.add_argument(
        "--subsample", type=positive_int, default=1, help="keep every k-th grid point of --data"
    )
    data.add_argument("--input-fields", nargs="+", default=None, help="input fields (Well)")
    data.add_argument("--target-fields", nargs="+", default=None, help="target fields (Well)")
    data.add_argument("--n-steps-input", type=positive_int, default=1, help="input snapshots")
    data.add_argument("--n-steps-output", type=positive_int, default=1, help="output snapshots")
    data.add_argument("--time-stride", type=positive_int, default=1, help="steps between frames")
    data.add_argument(
        "--all2all",
        action="store_true",
        help="train on all pairs (t_i, t_j), i <= j, with the lead time as an input (Poseidon)",
    )
    data.add_argument(
        "--lead-steps",
        type=non_negative_int,
        nargs="+",
        default=None,
        help="also report test errors at these lead times (in time steps)",
    )
    data.add_argument(
        "--normalize",
        choices=("pointwise", "gaussian", "none"),
        default="pointwise",
        help="Gaussian normalisation of inputs and targets with training-set statistics: per "
        "channel and grid point (default; the FNO paper's UnitGaussianNormalizer, resampled "
        "linearly for --eval-resolution), per channel, or none",
    )


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model options of :func:`parse_args`."""
    model = parser.add_argument_group("model")
    model.add_argument(
        "--width",
        type=positive_int,
        default=None,
        help="hidden channels (default: fno/tfno/gino 32, mgno 24, scot 48 = embedding width; "
        "scot uses width // 16 heads on the first stage)",
    )
    model.add_argument(
        "--modes", type=positive_int, default=12, help="Fourier modes per sign and dimension"
    )
    model.add_argument(
        "--layers",
        type=positive_int,
        default=None,
        help="layers (default: fno/tfno/gino 4 Fourier layers, mgno 5 V-cycle layers, scot 2 "
        "SwinV2 blocks per stage)",
    )
    model.add_argument("--levels", type=positive_int, default=5, help="mgno multigrid levels")
    model.add_argument(
        "--rank", type=positive_float, default=0.5, help="Tucker rank of tfno (fraction)"
    )
    model.add_argument(
        "--domain-padding",
        type=non_negative_float,
        default=None,
        help="FNO domain padding fraction (default 0.1 for Darcy, 0 for other data)",
    )
    model.add_argument("--patch-size", type=positive_int, default=4, help="scot patch size")
    model.add_argument("--window-size", type=positive_int, default=8, help="scot window size")
    model.add_argument(
        "--radius",
        type=positive_float,
        default=None,
        help="gino GNO radius (default 1.5 latent grid spacings)",
    )
    model.add_argument(
        "--latent-resolution", type=positive_int, default=16, help="gino latent grid size"
    )


def _add_training_arguments(parser: argparse.ArgumentParser) -> None:
    """The training options of :func:`parse_args`."""
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=positive_int, default=500, help="training epochs")
    train.add_argument(
        "--batch-size",
        type=positive_int,
        default=20,
        help="samples per batch (per process under torchrun)",
    )
    train.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate")
    train.add_argument("--weight-decay", type=non_negative_float, default=1e-4, help="Adam decay")
    train.add_argument(
        "--scheduler",
        choices=("step", "cosine", "none"),
        default="step",
        help="step: halve the rate every epochs/5 epochs (FNO paper: StepLR(100, 0.5) over "
        "500 epochs); cosine: cosine annealing to 0 over --epochs",
    )
    train.add_argument("--loss", choices=("l2", "h1"), default="l2", help="relative L2 or H1")
    train.add_argument("--seed", type=int, default=0, help="seed of initialisation and shuffling")
    train.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    train.add_argument("--device", default="auto", help="'auto', 'cpu', 'cuda', 'cuda:1'")


def _add_evaluation_arguments(parser: argparse.ArgumentParser) -> None:
    """The evaluation and output options of :func:`parse_args`."""
    evaluation = parser.add_argument_group("evaluation and outputs")
    evaluation.add_argument(
        "--eval-resolution",
        type=positive_int,
        default=None,
        help="zero-shot evaluation on another grid (e.g. 2 * resolution - 1): a Darcy test set "
        "generated at this resolution, or --data's test split subsampled to it",
    )
    evaluation.add_argument(
        "--out", type=Path, default=None, help="results folder (default runs/pde_<model>)"
    )
    evaluation.add_argument(
        "--resume", action="store_true", help="continue from --out/checkpoint.pt if it exists"
    )
    evaluation.add_argument(
        "--stop-after",
        type=positive_int,
        default=None,
        help="stop after this epoch (resume later with --resume; the schedule still spans "
        "--epochs)",
    )
    evaluation.add_argument("--no-progress", action="store_true", help="hide progress bars")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=MODELS, default="fno", help="operator to train")
    _add_data_arguments(parser)
    _add_model_arguments(parser)
    _add_training_arguments(parser)
    _add_evaluation_arguments(parser)
    args = parser.parse_args(argv)
    if args.data is not None and not args.data.exists():
        parser.error(f"--data {args.data}: no such file or folder")
    if args.out is None:
        args.out = Path("runs") / f"pde_{args.model}"
    width, layers = DEFAULTS[args.model]
    args.width = width if args.width is None else args.width
    args.layers = layers if args.layers is None else args.layers
    if args.lead_steps and not args.all2all:
        parser.error("--lead-steps needs --all2all (test pairs at several lead times)")
    try:
        args.device = resolve_device(args.device)  # cuda:LOCAL_RANK under torchrun
    except (RuntimeError, ValueError) as exc:
        parser.error(f"--device: {exc}")
    args.world_size = get_world_size()
    args.global_batch_size = args.batch_size * args.world_size
    return args


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON-serialisable arguments (paths and devices as strings)."""
    return {
        key: str(value) if isinstance(value, Path | torch.device) else value
        for key, value in sorted(vars(args).items())
    }


# ------------------------------------------------------------------------------------------ data
class Split:
    """One split in memory: inputs ``x [N, C_in, *S]``, targets ``y [N, C_out, *S]`` (physical
    units) and lead times ``lead [N]`` (physical time; 0 for stationary problems)."""

    def __init__(self, x: Tensor, y: Tensor, lead: Tensor) -> None:
        self.x, self.y, self.lead = x, y, lead

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def spatial(self) -> tuple[int, ...]:
        return tuple(self.x.shape[2:])


def _darcy_dir(root: Path, resolution: int, n_train: int, n_test: int, seed: int) -> Path:
    return root / f"darcy_r{resolution}_n{n_train}-{n_test}_seed{seed}"


def generate_darcy(
    root: Path, resolution: int, n_train: int, n_test: int, seed: int, show: bool
) -> Path:
    """The Well-layout Darcy folder ``<root>/darcy_r..._seed.../darcy`` (generated if absent)."""
    from gtlib.datasets.generate import darcy

    base = _darcy_dir(root, resolution, n_train, n_test, seed)
    folder = base / "darcy"
    if all(list((folder / "data" / part).glob("*.hdf5")) for part in ("train", "test")):
        return folder
    total = n_train + n_test
    print_main(f"generating {total} Darcy samples ({resolution}^2) in {base}", file=sys.stderr)
    darcy(
        total,
        resolution=resolution,
        seed=seed,
        out=base,
        layout="well",
        splits=(n_train / total, 0.0, n_test / total),
        progress=show,
    )
    return folder


def _pde_dataset(path: Path, split: str | None, args: argparse.Namespace, subsample: int):
    from gtlib.datasets import PDEDataset

    inputs, targets = args.input_fields, args.target_fields
    if args.data is None and inputs is None and targets is None:
        inputs, targets = DARCY_FIELDS  # the generated Well files name no default fields
    return PDEDataset(
        path,
        split=split,
        input_fields=inputs,
        target_fields=targets,
        n_steps_input=args.n_steps_input,
        n_steps_output=args.n_steps_output,
        time_stride=args.time_stride,
        all2all=args.all2all,
        normalize=False,
        subsample=subsample,
        output="grid",
    )


def materialize(dataset, indices: Sequence[int], show: bool, desc: str) -> Split:
    """Stack the grid items ``indices`` of a PDEDataset into one in-memory :class:`Split`."""
    xs, ys, leads = [], [], []
    for i in progress(indices, enabled=show, desc=desc, leave=False):
        item = dataset[int(i)]
        xs.append(torch.as_tensor(item["x"], dtype=torch.float32))
        ys.append(torch.as_tensor(item["y"], dtype=torch.float32))
        leads.append(torch.as_tensor(item["lead_time"], dtype=torch.float32).reshape(1))
    if not xs:
        raise SystemExit(f"error: the {desc} split is empty")
    return Split(torch.stack(xs), torch.stack(ys), torch.cat(leads))


def _has_split(path: Path, split: str) -> bool:
    return path.is_dir() and any((path / "data" / split).glob("*.h*5"))


def load_data(args: argparse.Namespace) -> tuple[Split, Split, dict[str, Any]]:
    """Training and test splits in memory, plus a summary for the results."""
    show = not args.no_progress
    info: dict[str, Any] = {}
    if args.data is None:
        n_train, n_test = args.n_train or 1000, args.n_test or 200
        # rank 0 generates the files (if absent), then every rank reads them
        path = on_main(
            generate_darcy, args.root, args.resolution, n_train, n_test, args.data_seed, show
        )
        info.update(name="darcy", generated=True, resolution=args.resolution)
        subsample = 1
    else:
        path, n_train, n_test, subsample = args.data, args.n_train, args.n_test, args.subsample
        info.update(name=path.stem if path.is_file() else path.name, generated=False)
    info["path"] = str(path)
    if _has_split(path, "train") and _has_split(path, "test"):
        train_set = _pde_dataset(path, "train", args, subsample)
        test_set = _pde_dataset(path, "test", args, subsample)
        train_index = range(min(len(train_set), n_train or len(train_set)))
        test_index = range(min(len(test_set), n_test or len(test_set)))
    else:  # one file without splits (PDEBench): the first samples train, the last ones test
        train_set = test_set = _pde_dataset(path, None, args, subsample)
        total = len(train_set)
        n_test = n_test or max(1, total // 5)
        n_train = n_train or total - n_test
        if n_train + n_test > total:
            raise SystemExit(f"error: --n-train + --n-test > {total} items in {path}")
        train_index, test_index = range(n_train), range(total - n_test, total)
    train = materialize(train_set, train_index, show, "train")
    test = materialize(test_set, test_index, show, "test")
    time_grid = np.asarray(train_set.time, dtype=np.float64)
    longest = float(train.lead.abs().max())
    info.update(
        n_train=len(train),
        n_test=len(test),
        spatial=list(train.spatial),
        in_channels=int(train.x.shape[1]),
        out_channels=int(train.y.shape[1]),
        # one stored time step (the unit of --lead-steps) and the lead time fed to models as 1
        dt=float(time_grid[1] - time_grid[0]) if time_grid.size > 1 else 1.0,
        lead_scale=longest if longest > 0 else 1.0,
    )
    return train, test, info


def _zero_shot_data(args: argparse.Namespace, info: dict[str, Any]) -> Split:
    """The test split at ``--eval-resolution``."""
    show = not args.no_progress
    resolution = args.eval_resolution
    if args.data is None:
        n_test = args.n_test or 200
        # another seed: a fresh test set from the same distribution on the other grid (plus one
        # training sample: the generator computes stats.yaml from a non-empty train split)
        path = on_main(generate_darcy, args.root, resolution, 1, n_test, args.data_seed + 1, show)
        dataset = _pde_dataset(path, "test", args, 1)
        return materialize(dataset, range(min(n_test, len(dataset))), show, "zero-shot test")
    path = args.data
    split = "test" if _has_split(path, "test") else None
    native = _pde_dataset(path, split, args, 1)
    size = int(native[0]["x"].shape[-1])
    if size == resolution:
        factor = 1
    elif resolution > 1 and (size - 1) % (resolution - 1) == 0:
        factor = (size - 1) // (resolution - 1)
    elif size % resolution == 0:
        factor = size // resolution
    else:
        raise ValueError(f"--data's grid ({size}) cannot be subsampled to {resolution}")
    dataset = _pde_dataset(path, split, args, factor) if factor > 1 else native
    if any(n != resolution for n in dataset.spatial_shape):
        grids = f"{native.spatial_shape} -> {dataset.spatial_shape}"
        raise ValueError(f"--data's grid cannot be subsampled to {resolution}: {grids}")
    n_test = min(len(dataset), args.n_test or info["n_test"])
    indices = range(n_test) if split else range(len(dataset) - n_test, len(dataset))
    return materialize(dataset, indices, show, "zero-shot test")


class Normalizer(nn.Module):
    """Gaussian normalisation ``(v - mean) / (std + eps)`` with statistics of the training set:
    per channel (``"gaussian"``), per channel and grid point (``"pointwise"``, the FNO paper's
    ``UnitGaussianNormalizer``; resampled linearly for other grid sizes) or the identity."""

    def __init__(self, data: Tensor, kind: str) -> None:
        super().__init__()
        self.kind = kind
        if kind == "pointwise":
            mean, std = data.mean(0), data.std(0)
        else:
            dims = [0, *range(2, data.dim())]
            shape = (data.shape[1],) + (1,) * (data.dim() - 2)
            mean, std = data.mean(dims).reshape(shape), data.std(dims).reshape(shape)
        if kind == "none":
            mean, std = torch.zeros_like(mean), torch.ones_like(std) - EPS
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def _stats(self, spatial: Sequence[int]) -> tuple[Tensor, Tensor]:
        if self.kind != "pointwise" or tuple(self.mean.shape[1:]) == tuple(spatial):
            return self.mean, self.std
        mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
        stats = torch.stack([self.mean, self.std])
        stats = nn.functional.interpolate(stats, size=tuple(spatial), mode=mode, align_corners=True)
        return stats[0], stats[1]

    def encode(self, v: Tensor) -> Tensor:
        mean, std = self._stats(v.shape[2:])
        return (v - mean) / (std + EPS)

    def decode(self, v: Tensor) -> Tensor:
        mean, std = self._stats(v.shape[2:])
        return v * (std + EPS) + mean


# ---------------------------------------------------------------------------------------- models
def _is_darcy(info: dict[str, Any]) -> bool:
    return "darcy" in str(info.get("name", "")).lower()


# per-model defaults of --width and --layers (the published configurations)
DEFAULTS = {
    "fno": (32, 4),  # FNO paper, Darcy
    "tfno": (32, 4),
    "mgno": (24, 5),  # MgNO paper, Darcy
    "scot": (48, 2),  # Poseidon-T's embedding width; --layers = SwinV2 blocks per stage
    "gino": (32, 4),  # FNO on the latent grid
}


def make_fno(args, in_channels: int, out_channels: int, spatial: Sequence[int], info) -> nn.Module:
    from gtlib.operators import FNO

    padding = args.domain_padding
    if padding is None:
        padding = 0.1 if _is_darcy(info) else 0.0
    # the FNO paper keeps `modes` frequencies of each sign; neuraloperator counts both signs
    n_modes = tuple(min(2 * args.modes, n) for n in spatial)
    return FNO(
        in_channels,
        out_channels,
        n_modes,
        hidden_channels=args.width,
        n_layers=args.layers,
        domain_padding=padding,
        factorization="tucker" if args.model == "tfno" else None,
        rank=args.rank,
    )


def make_mgno(args, in_channels: int, out_channels: int, spatial: Sequence[int], info):
    from gtlib.operators import MgNO

    padding = "zeros" if _is_darcy(info) else "circular"

    def fits(levels: int) -> bool:
        # periodic grids must halve exactly; otherwise the coarsest level keeps >= 2 points
        if padding == "circular":
            return all(n % 2 ** (levels - 1) == 0 for n in spatial)
        return all(math.ceil(n / 2 ** (levels - 1)) >= 2 for n in spatial)

    levels = args.levels
    while levels > 1 and not fits(levels):
        levels -= 1
    return MgNO(
        in_channels,
        out_channels,
        hidden_channels=args.width,
        n_layers=args.layers,
        n_levels=levels,
        padding_mode=padding,
        dim=len(spatial),
    )


def make_scot(args, in_channels: int, out_channels: int, spatial: Sequence[int], info):
    from gtlib.operators import ScOT

    if len(spatial) != 2:
        raise SystemExit(f"error: scot needs 2-D grids, got spatial shape {tuple(spatial)}")
    if any(n % args.patch_size for n in spatial):
        raise SystemExit(f"error: scot needs grid sides divisible by --patch-size, got {spatial}")
    # up to 4 stages (Poseidon at 128^2: token grids 32, 16, 8, 4); every stage halves the token
    # grid, which must stay integral and keep >= 4 tokens per side (the skips' 7x7 convolutions)
    tokens = [n // args.patch_size for n in spatial]
    stages = 4
    while stages > 1 and any(t % 2 ** (stages - 1) or t // 2 ** (stages - 1) < 4 for t in tokens):
        stages -= 1
    heads = max(1, args.width // 16)
    return ScOT(
        in_channels,
        out_channels,
        tuple(spatial),
        patch_size=args.patch_size,
        embed_dim=args.width,
        depths=(args.layers,) * stages,
        heads=tuple(heads * 2**s for s in range(stages)),
        window_size=args.window_size,
        skip_connection_blocks=(2,) * (stages - 1) + (0,),
        periodic=not _is_darcy(info),
    )


def make_gino(args, in_channels: int, out_channels: int, spatial: Sequence[int], info):
    from gtlib.operators import GINO

    latent = args.latent_resolution
    # the output GNO must reach a latent point from every output point
    radius = args.radius if args.radius is not None else 1.5 / (latent - 1)
    return GINO(
        in_channels,
        out_channels,
        latent_resolution=(latent,) * len(spatial),
        radius=radius,
        gno_in_channels=in_channels if in_channels > 1 else 3,
        fno_n_modes=tuple(min(2 * args.modes, latent) for _ in spatial),
        fno_hidden_channels=args.width,
        fno_n_layers=args.layers,
    )


FACTORIES = {
    "fno": make_fno,
    "tfno": make_fno,
    "mgno": make_mgno,
    "scot": make_scot,
    "gino": make_gino,
}


class Operator(nn.Module):
    """One interface for all models: normalised grid in, normalised grid out, plus lead time.

    ``forward(x [B, C_in, *S], lead [B]) -> [B, C_out, *S]``, the lead time divided by
    ``lead_scale`` (the longest lead time of the training set). ScOT takes the lead time itself;
    with ``--all2all`` the others get it as a constant extra input channel. GINO sees the grid as
    a point cloud: positions in [0, 1]^d, the input channels as features, predictions at the same
    points (the positions are built once per grid, so GINO's neighbourhoods are cached)."""

    def __init__(self, name: str, net: nn.Module, lead_channel: bool, lead_scale: float) -> None:
        super().__init__()
        self.name = name
        self.net = net
        self.lead_channel = lead_channel
        self.lead_scale = lead_scale
        self._pos: dict[tuple, Tensor] = {}

    def forward(self, x: Tensor, lead: Tensor) -> Tensor:
        lead = lead.to(x.dtype) / self.lead_scale
        if self.name == "scot":
            return self.net(x, lead)
        if self.lead_channel:
            shape = (x.shape[0], 1, *x.shape[2:])
            x = torch.cat([x, lead.reshape(-1, *(1,) * (x.dim() - 1)).expand(shape)], 1)
        if self.name == "gino":
            return self._points(x)
        return self.net(x)

    def _points(self, x: Tensor) -> Tensor:
        spatial = tuple(x.shape[2:])
        key = (spatial, x.dtype, x.device)
        if key not in self._pos:
            axes = [torch.linspace(0, 1, n, device=x.device, dtype=x.dtype) for n in spatial]
            grid = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)
            self._pos[key] = grid.reshape(-1, len(spatial))
        pos = self._pos[key]
        features = x.flatten(2).transpose(1, 2)  # [B, N, C]
        out = self.net(pos, features, pos)  # [B, N, C_out]
        return out.transpose(1, 2).reshape(x.shape[0], -1, *spatial)


def build_model(args, info: dict[str, Any]) -> Operator:
    lead_channel = args.all2all and args.model != "scot"
    in_channels = info["in_channels"] + int(lead_channel)
    net = FACTORIES[args.model](args, in_channels, info["out_channels"], info["spatial"], info)
    return Operator(args.model, net, lead_channel, info["lead_scale"])


# ------------------------------------------------------------------------------------- metrics
def relative_errors(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per sample: relative L2 error over all channels and points, and Poseidon's relative L1
    error (per channel, averaged over channels)."""
    b, c = target.shape[:2]
    l2 = (pred - target).reshape(b, -1).norm(dim=1) / target.reshape(b, -1).norm(dim=1)
    diff = (pred - target).reshape(b, c, -1).abs().sum(-1)
    l1 = (diff / target.reshape(b, c, -1).abs().sum(-1).clamp_min(1e-12)).mean(1)
    return l2, l1


def predict(model: Operator, x_norm: Normalizer, y_norm: Normalizer, data: Split, args) -> Tensor:
    """Denormalised predictions for every sample of ``data`` (on the CPU): each rank predicts
    its contiguous part, and the parts are gathered in order on every rank."""
    return all_gather_cat(predict_part(model, x_norm, y_norm, data, args))


@torch.no_grad()
def predict_part(
    model: Operator, x_norm: Normalizer, y_norm: Normalizer, data: Split, args
) -> Tensor:
    """This rank's contiguous part of the predictions (all of them in one process)."""
    model.eval()
    first, stop = shard_bounds(len(data))
    outputs = [data.y.new_empty((0, *data.y.shape[1:]))]
    for start in range(first, stop, args.batch_size):
        end = min(start + args.batch_size, stop)
        x = x_norm.encode(data.x[start:end].to(args.device))
        lead = data.lead[start:end].to(args.device)
        outputs.append(y_norm.decode(model(x, lead)).cpu())
    return torch.cat(outputs)


def summarize(pred: Tensor, data: Split, mask: Tensor | None = None) -> dict[str, float]:
    l2, l1 = relative_errors(pred, data.y)
    if mask is not None:
        l2, l1 = l2[mask], l1[mask]
    return {
        "rel_l2": float(l2.mean()),
        "median_rel_l1_pct": float(100 * l1.median()),
        "n": int(l2.numel()),
    }


# ---------------------------------------------------------------------------------- training
def make_scheduler(args, optimizer: torch.optim.Optimizer):
    if args.scheduler == "step":  # FNO paper: StepLR(100, 0.5) over 500 epochs
        return torch.optim.lr_scheduler.StepLR(optimizer, max(1, round(args.epochs / 5)), 0.5)
    if args.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: 1.0)


def make_loss(args, info: dict[str, Any]) -> nn.Module:
    from gtlib.operators import H1Loss, LpLoss

    d = len(info["spatial"])
    if args.loss == "h1":
        return H1Loss(d, periodic=not _is_darcy(info))
    return LpLoss(d, p=2)


def load_checkpoint(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (``None`` if there is none yet), validated against
    ``config``."""
    if not path.exists():
        return None
    try:
        # holds RNG states (NumPy arrays, tuples): not weights-only loadable
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - report any unreadable file the same way
        raise SystemExit(f"error: {path}: cannot read the checkpoint ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"error: {path} is not a checkpoint of this script")
    saved = {k: v for k, v in state["config"].items() if k not in RESUMABLE_DIFFERENCES}
    current = {k: v for k, v in config.items() if k not in RESUMABLE_DIFFERENCES}
    differences = [
        f"{key}: checkpoint {saved.get(key)!r} vs now {current.get(key)!r}"
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    ]
    if differences:
        raise SystemExit(
            f"error: {path} was written with other settings ({', '.join(differences)}); resume "
            "with the same arguments (only --threads, --device, --stop-after, --no-progress and, "
            "with the same global batch, --batch-size and the number of processes may change)"
        )
    return state


def train(
    args, model: Operator, train_data: Split, test_data: Split, x_norm, y_norm, loss_fn
) -> dict[str, Any]:
    """The epoch loop with per-epoch checkpoints; returns the training state.

    Every rank holds the whole training split and draws the same order per epoch; each global
    batch of ``batch_size x world_size`` samples is split by rank (:func:`shard`) and a rank's
    mean loss is weighted by its share, so DDP's averaged gradient is the global batch's.
    """
    config = run_config(args)
    checkpoint = args.out / CHECKPOINT_NAME
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    scheduler = make_scheduler(args, optimizer)
    shuffle = torch.Generator().manual_seed(args.seed)
    state: dict[str, Any] = {"epoch": 0, "history": [], "training_time_s": 0.0}
    if args.resume:  # rank 0 reads and validates the checkpoint; every rank gets it
        saved = on_main(load_checkpoint, checkpoint, config)
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            set_rng_states(saved["rng"], {"shuffle": shuffle})
            state = saved["state"]
            print_main(f"resumed from {checkpoint} after epoch {state['epoch']}", file=sys.stderr)
        else:
            print_main(f"no checkpoint at {checkpoint} yet: starting from scratch", file=sys.stderr)
    show = not args.no_progress
    x_train = x_norm.encode(train_data.x).to(args.device)
    y_train, lead_train = train_data.y.to(args.device), train_data.lead.to(args.device)
    world_size = get_world_size()
    unused = world_size > 1 and _has_unused_parameters(model, x_train[:1], lead_train[:1])
    ddp = wrap_ddp(model, find_unused_parameters=unused)
    last = args.epochs if args.stop_after is None else min(args.epochs, args.stop_after)
    bar = progress(range(state["epoch"] + 1, last + 1), enabled=show, initial=state["epoch"],
                   total=args.epochs, desc="epochs")  # fmt: skip
    for epoch in bar:
        start = time.perf_counter()
        model.train()
        order = torch.randperm(len(train_data), generator=shuffle)  # the same on every rank
        total, count = _train_epoch(args, ddp, optimizer, order, (x_train, y_train, lead_train),
                                    y_norm, loss_fn, epoch)  # fmt: skip
        lr = optimizer.param_groups[0]["lr"]
        scheduler.step()
        train_time = time.perf_counter() - start
        state["training_time_s"] += train_time
        broadcast_module(model, buffers_only=True)
        metrics = summarize(predict(model, x_norm, y_norm, test_data, args), test_data)
        record = {
            "epoch": epoch,
            "train_loss": total / max(count, 1),
            "test_rel_l2": metrics["rel_l2"],
            "test_median_rel_l1_pct": metrics["median_rel_l1_pct"],
            "lr": lr,
            "train_time_s": train_time,
            "epoch_time_s": time.perf_counter() - start,
        }
        state["history"].append(record)
        state["epoch"] = epoch
        bar.set_postfix(loss=f"{record['train_loss']:.4f}", test=f"{record['test_rel_l2']:.4f}")
        print_main(
            f"epoch {epoch:4d}  train {args.loss} {record['train_loss']:.5f}  test rel L2 "
            f"{record['test_rel_l2']:.5f}  median rel L1 {record['test_median_rel_l1_pct']:.3f}%  "
            f"lr {lr:.2e}  ({record['epoch_time_s']:.1f} s)",
            file=sys.stderr,
        )
        save_checkpoint(  # rank 0 only
            {
                "format": CHECKPOINT_FORMAT,
                "config": config,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": state,
                "rng": rng_states({"shuffle": shuffle}),
            },
            checkpoint,
        )
    bar.close()
    return state


def _train_epoch(
    args, ddp: nn.Module, optimizer, order: Tensor, tensors: tuple, y_norm, loss_fn, epoch: int
) -> tuple[float, int]:
    """One epoch's optimisation steps over ``order``: ``(sum of sample losses, samples)`` over
    all ranks."""
    x_train, y_train, lead_train = tensors
    world_size = get_world_size()
    global_batch = args.batch_size * world_size
    show = not args.no_progress
    total, count = 0.0, 0
    batches = range(0, len(order), global_batch)
    for first in progress(batches, enabled=show, desc=f"epoch {epoch}", leave=False):
        batch = order[first : first + global_batch]
        index = shard(batch)  # this rank's part of the global batch
        placeholder = index.numel() == 0  # a short last batch: nothing left for this rank
        weight = index.numel() * world_size / batch.numel()  # 1.0 in one process
        index = (batch[:1] if placeholder else index).to(args.device)
        optimizer.zero_grad(set_to_none=True)
        pred = y_norm.decode(ddp(x_train[index], lead_train[index]))
        if placeholder:  # takes part in the gradient all-reduce with zeros
            loss = pred.sum() * 0.0
        else:
            loss = loss_fn(pred, y_train[index])
            total += loss.item() * len(index)
            count += len(index)
        (loss if world_size == 1 else loss * weight).backward()
        optimizer.step()
    return all_reduce(total), all_reduce(count)


def _has_unused_parameters(model: nn.Module, x: Tensor, lead: Tensor) -> bool:
    """Whether some trainable parameter gets no gradient (e.g. MgNO's coarsest smoother on a grid
    too small for all its levels): DDP must then look for unused parameters in every step. One
    forward and backward pass in eval mode (no state changes); gradients are cleared after."""
    was_training = model.training
    model.eval()
    model(x, lead).sum().backward()
    unused = any(p.grad is None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return unused


# ---------------------------------------------------------------------------------- evaluation
def lead_time_results(pred: Tensor, data: Split, steps: Sequence[int], dt: float) -> dict[str, Any]:
    """Test metrics of the pairs whose lead time is ``step`` stored time steps, per step."""
    results: dict[str, Any] = {}
    in_steps = torch.round(data.lead.double() / dt)
    for step in steps:
        mask = in_steps == step
        if not bool(mask.any()):
            results[str(step)] = {"error": f"no test pairs with lead time {step} steps"}
        else:
            results[str(step)] = summarize(pred, data, mask)
    return results


def zero_shot(args, model: Operator, x_norm, y_norm, info: dict[str, Any]) -> dict[str, Any]:
    """Evaluate at ``--eval-resolution`` without retraining; failures are reported, not raised."""
    result: dict[str, Any] = {"resolution": args.eval_resolution}
    try:
        data = _zero_shot_data(args, info)
    except (ValueError, OSError) as exc:
        result.update(supported=False, reason=f"no test data at this resolution: {exc}")
        return result
    error = None
    try:
        part = predict_part(model, x_norm, y_norm, data, args)
    except (RuntimeError, ValueError) as exc:
        error, part = exc, None
    if all_reduce(int(error is not None), "max"):  # a failure on any rank: reported by all
        reason = error if error is not None else "failed on another process"
        result.update(
            supported=False, reason=f"{args.model} cannot run at {data.spatial}: {reason}"
        )
        return result
    pred = all_gather_cat(part)
    result.update(supported=True, spatial=list(data.spatial), **summarize(pred, data))
    return result


def plot_prediction(path: Path, data: Split, pred: Tensor, index: int = 0) -> bool:
    """Input / truth / prediction / error panels of one test sample (first channels)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        warnings.warn("matplotlib is missing: no prediction.png", stacklevel=2)
        return False
    if len(data.spatial) != 2:
        warnings.warn("prediction.png is drawn for 2-D grids only", stacklevel=2)
        return False
    panels = {
        "input": data.x[index, -1],
        "truth": data.y[index, 0],
        "prediction": pred[index, 0],
        "|error|": (pred[index, 0] - data.y[index, 0]).abs(),
    }
    truth = panels["truth"]
    limits = {"truth": truth, "prediction": truth}  # truth and prediction share a colour scale
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, (title, field) in zip(axes, panels.items()):
        scale = limits.get(title, field)
        image = ax.imshow(  # x to the right, y up
            field.T.numpy(), origin="lower", cmap="viridis",
            vmin=float(scale.min()), vmax=float(scale.max()),
        )  # fmt: skip
        ax.set_title(title)
        ax.set_axis_off()
        fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    atomic_write(path, lambda temporary: fig.savefig(temporary, format="png", dpi=80))
    plt.close(fig)
    return True


# ------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Train, evaluate and write the outputs; returns the results (on every rank; under torchrun
    rank 0 alone writes, and ``prediction_png`` is ``None`` on the other ranks)."""
    with distributed_session():
        return _main(argv)


def _main(argv: list[str] | None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    seed_everything(args.seed)  # the same seed on every rank
    train_data, test_data, info = load_data(args)
    x_norm = Normalizer(train_data.x, args.normalize).to(args.device)
    y_norm = Normalizer(train_data.y, args.normalize).to(args.device)
    torch.manual_seed(args.seed)  # the initialisation does not depend on the data loading
    model = build_model(args, info).to(args.device)
    num_parameters = sum(p.numel() for p in model.parameters())
    print_main(
        f"{info['name']}: {info['n_train']} train / {info['n_test']} test samples on "
        f"{info['spatial']}, {info['in_channels']} -> {info['out_channels']} channels; "
        f"{args.model} with {num_parameters} parameters on {args.device}"
        + (f" x {args.world_size} processes" if args.world_size > 1 else ""),
        file=sys.stderr,
    )
    loss_fn = make_loss(args, info)
    state = train(args, model, train_data, test_data, x_norm, y_norm, loss_fn)

    pred = predict(model, x_norm, y_norm, test_data, args)
    final = {"epoch": state["epoch"], **summarize(pred, test_data)}
    if state["history"]:
        final["train_loss"] = state["history"][-1]["train_loss"]
    payload: dict[str, Any] = {
        "script": "train_operator",
        "config": run_config(args),
        "dataset": info,
        "model": args.model,
        "num_parameters": num_parameters,
        "epochs_run": state["epoch"],
        "finished": state["epoch"] == args.epochs,
        "training_time_s": state["training_time_s"],
        "history": state["history"],
        "final": final,
        "test_rel_l2": final["rel_l2"],
        "test_median_rel_l1_pct": final["median_rel_l1_pct"],
    }
    if args.lead_steps:
        payload["lead_times"] = lead_time_results(pred, test_data, args.lead_steps, info["dt"])
    if args.eval_resolution is not None:
        payload["zero_shot"] = zero_shot(args, model, x_norm, y_norm, info)
    payload["prediction_png"] = None
    if is_main():
        payload["prediction_png"] = plot_prediction(args.out / "prediction.png", test_data, pred)
    write_json(args.out / "results.json", payload)  # rank 0 only
    print_main(
        f"{args.model} after {state['epoch']} epochs: test rel L2 {final['rel_l2']:.5f}, median "
        f"rel L1 {final['median_rel_l1_pct']:.3f}%; wrote {args.out / 'results.json'}",
        file=sys.stderr,
    )
    if "zero_shot" in payload and payload["zero_shot"].get("supported"):
        print_main(
            f"zero-shot at {args.eval_resolution}: rel L2 {payload['zero_shot']['rel_l2']:.5f}",
            file=sys.stderr,
        )
    return payload


if __name__ == "__main__":
    main()
