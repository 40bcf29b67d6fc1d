"""Helpers shared by the OGB example scripts: arguments, checkpoint validation and the epoch loop
with best-validation model selection and exact ``--resume``.

Not a script: ``node_classification.py`` and ``graph_classification.py`` import it. The
distribution and training plumbing (process group, rank-aware progress and printing, rank-0
writers, seeding and RNG states, sharding, gathering) is :mod:`gtlib.distributed`; both scripts run
unchanged in one process and under ``torchrun`` (rank 0 writes the checkpoint and the results).

Checkpoint contents (one ``torch.save`` file, replaced atomically after every epoch): the model and
optimizer states, the last finished epoch, the best validation metric with its epoch, metrics and
model state, the per-epoch history, the RNG states (Python, NumPy, torch CPU and CUDA) and the
run's configuration. Resuming restores all of it, so a resumed run makes the same random draws in
the same order as an uninterrupted one and reaches the same final result. The configuration holds
the *global* batch size (``--batch-size`` x the number of processes) instead of the per-process
one, so a checkpoint resumes under another world size that keeps the global batch (e.g. two
processes with ``--batch-size 64``, then one with ``128``).
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gtlib.distributed import (
    broadcast_module,
    get_world_size,
    on_main,
    print_main,
    progress,
    resolve_device,
    rng_states,
    save_checkpoint,
    set_rng_states,
    write_json,
)

CHECKPOINT_FORMAT = 1
# arguments that may differ between an interrupted run and its resumption
# (the per-process --batch-size and the world size may change too: the global batch size is
# compared instead)
RESUMABLE_DIFFERENCES = frozenset(
    {"epochs", "out", "checkpoint", "resume", "num_workers", "no_progress", "device",
     "batch_size", "world_size"}
)  # fmt: skip


# ------------------------------------------------------------------------------------ arguments
def positive_int(text: str) -> int:
    """argparse type: an int >= 1."""
    value = _parse(text, int, "an integer")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an int >= 0."""
    value = _parse(text, int, "an integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0."""
    value = _parse(text, float, "a number")
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def probability(text: str) -> float:
    """argparse type: a float in [0, 1)."""
    value = _parse(text, float, "a number")
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1), got {text}")
    return value


def _parse(text: str, kind: type, what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None


def add_common_arguments(
    parser: argparse.ArgumentParser, default_name: str, default_lr: float = 1e-3
) -> None:
    """Arguments both scripts share: data, model size, optimisation, outputs, resume."""
    data = parser.add_argument_group("data")
    data.add_argument(
        "--root", type=Path, default=Path("data"), help="folder holding the dataset folder"
    )
    data.add_argument(
        "--name",
        default=default_name,
        help=f"OGB dataset name (default {default_name}); a synthetic dataset in OGB's layout "
        "is generated under --root when its folder is absent (see --no-generate)",
    )
    data.add_argument(
        "--no-generate",
        action="store_true",
        help="fail instead of generating a synthetic dataset when the folder is absent",
    )
    model = parser.add_argument_group("model")
    model.add_argument("--hidden", type=positive_int, default=64, help="hidden channels")
    model.add_argument("--heads", type=positive_int, default=4, help="attention heads")
    model.add_argument("--layers", type=positive_int, default=3, help="number of layers")
    model.add_argument("--dropout", type=probability, default=0.2, help="dropout probability")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=positive_int, default=50, help="total training epochs")
    train.add_argument("--lr", type=positive_float, default=default_lr, help="Adam learning rate")
    train.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay")
    train.add_argument("--num-workers", type=non_negative_int, default=0, help="loader workers")
    train.add_argument("--seed", type=int, default=0, help="random seed")
    train.add_argument(
        "--device", default="auto", help="'auto' (cuda when available), 'cpu', 'cuda', 'cuda:1'"
    )
    out = parser.add_argument_group("outputs")
    out.add_argument("--out", type=Path, default=None, help="results JSON (written atomically)")
    out.add_argument(
        "--checkpoint", type=Path, default=None, help="checkpoint file, written every epoch"
    )
    out.add_argument(
        "--resume",
        action="store_true",
        help="continue from --checkpoint (starts from scratch if it does not exist yet)",
    )
    out.add_argument("--no-progress", action="store_true", help="hide the tqdm progress bars")


def check_common_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Cross-argument checks; errors go through ``parser.error`` (exit status 2)."""
    if args.resume and args.checkpoint is None:
        parser.error("--resume needs --checkpoint PATH")
    if args.hidden % args.heads:
        parser.error(f"--hidden ({args.hidden}) must be divisible by --heads ({args.heads})")
    if args.weight_decay < 0:
        parser.error(f"--weight-decay must be >= 0, got {args.weight_decay}")
    try:
        args.device = resolve_device(args.device)  # cuda:LOCAL_RANK under torchrun
    except (RuntimeError, ValueError) as exc:
        parser.error(f"--device: {exc}")
    args.world_size = get_world_size()
    if hasattr(args, "batch_size"):
        args.global_batch_size = args.batch_size * args.world_size


def run_config(args: argparse.Namespace) -> dict[str, Any]:
    """The JSON-serialisable arguments (paths as strings)."""
    config = {}
    for key, value in sorted(vars(args).items()):
        if isinstance(value, Path | torch.device):
            value = str(value)
        config[key] = value
    return config


def load_checkpoint(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """Load a checkpoint (``None`` if there is none yet) and check it was written by a run with
    the same configuration."""
    if not path.exists():
        return None
    try:
        # the checkpoint holds RNG states (NumPy arrays, tuples): not weights-only loadable
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - report any unreadable file the same way
        raise SystemExit(f"error: --checkpoint {path}: cannot read it ({exc})") from exc
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise SystemExit(f"error: --checkpoint {path}: not a checkpoint of these scripts")
    saved = {k: v for k, v in state["config"].items() if k not in RESUMABLE_DIFFERENCES}
    current = {k: v for k, v in config.items() if k not in RESUMABLE_DIFFERENCES}
    differences = {
        key: (saved.get(key), current.get(key))
        for key in sorted(set(saved) | set(current))
        if saved.get(key) != current.get(key)
    }
    if differences:
        listed = ", ".join(
            f"{k}: checkpoint {a!r} vs now {b!r}" for k, (a, b) in differences.items()
        )
        raise SystemExit(
            f"error: --checkpoint {path} was written with other settings ({listed}); "
            "use the same arguments (only --epochs, --out, --num-workers, --device and, with "
            "the same global batch, --batch-size and the number of processes may change)"
        )
    return state


# ---------------------------------------------------------------------------------- the loop
@dataclass
class TrainState:
    """Everything that changes from epoch to epoch besides the model and optimizer."""

    epoch: int = 0
    best_valid: float = -float("inf")
    best_epoch: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    best_model: dict[str, torch.Tensor] | None = None
    history: list[dict[str, float]] = field(default_factory=list)


def fit(
    *,
    args: argparse.Namespace,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    train_epoch: Callable[[int], float],
    evaluate: Callable[[], dict[str, float]],
    metric: str,
    higher_is_better: bool = True,
) -> TrainState:
    """Run epochs ``state.epoch + 1 .. args.epochs`` with checkpointing and model selection.

    ``train_epoch(epoch)`` trains epoch ``epoch`` (1-based; it selects the epoch's order of a
    sharded sampler) and returns its mean loss over the global batch, the same on every rank;
    ``evaluate()`` returns ``{'train', 'valid', 'test'}`` values of the OGB ``metric`` (gathered
    over ranks, the same on every rank). ``model`` is the plain module (not its DDP wrapper):
    its state is checkpointed, and its buffers are copied from rank 0 before every evaluation
    (DDP leaves each rank with the buffers of its own last batch). After each epoch the best
    validation epoch is tracked (its model state kept), rank 0 replaces the checkpoint (if any)
    and prints a line. On return the model holds the best-validation weights.
    """
    config = run_config(args)
    state = TrainState()
    sign = 1.0 if higher_is_better else -1.0
    if args.resume and args.checkpoint is not None:
        # rank 0 reads and validates the checkpoint; every rank gets it (or its error)
        saved = on_main(load_checkpoint, args.checkpoint, config)
        if saved is not None:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            state = TrainState(**saved["train_state"])
            set_rng_states(saved["rng"])
            print_main(f"resumed from {args.checkpoint} after epoch {state.epoch}", file=sys.stderr)
        else:
            print_main(
                f"no checkpoint at {args.checkpoint} yet: starting from scratch", file=sys.stderr
            )

    bar = progress(
        range(state.epoch + 1, args.epochs + 1),
        enabled=not args.no_progress,
        desc="epochs",
        initial=state.epoch,
        total=args.epochs,
    )
    for epoch in bar:
        start = time.perf_counter()
        loss = train_epoch(epoch)
        train_time = time.perf_counter() - start
        broadcast_module(model, buffers_only=True)
        metrics = evaluate()
        record = {
            "epoch": epoch,
            "loss": float(loss),
            **{part: float(metrics[part]) for part in ("train", "valid", "test")},
            "train_time_s": train_time,
            "epoch_time_s": time.perf_counter() - start,
        }
        state.history.append(record)
        state.epoch = epoch
        # a NaN validation metric (e.g. ROC-AUC of a split with one class) never improves
        if sign * record["valid"] > sign * state.best_valid or state.best_model is None:
            state.best_valid = record["valid"]
            state.best_epoch = epoch
            state.best_metrics = {part: record[part] for part in ("train", "valid", "test")}
            state.best_model = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        bar.set_postfix(loss=f"{loss:.4f}", valid=f"{record['valid']:.4f}")
        print_main(
            f"epoch {epoch:3d}  loss {loss:.4f}  {metric} train {record['train']:.4f}  "
            f"valid {record['valid']:.4f}  test {record['test']:.4f}  "
            f"({record['epoch_time_s']:.2f} s)",
            file=sys.stderr,
        )
        if args.checkpoint is not None:  # rank 0 only
            save_checkpoint(
                {
                    "format": CHECKPOINT_FORMAT,
                    "config": config,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "train_state": copy.copy(vars(state)),
                    "rng": rng_states(),
                },
                args.checkpoint,
            )
    bar.close()
    if state.best_model is not None:
        model.load_state_dict(state.best_model)
    return state


def results(
    *,
    script: str,
    args: argparse.Namespace,
    state: TrainState,
    metric: str,
    dataset: dict[str, Any],
    num_parameters: int,
) -> dict[str, Any]:
    """The results JSON: configuration, dataset summary, per-epoch history and the best epoch."""
    times = [record["epoch_time_s"] for record in state.history]
    return {
        "script": script,
        "config": run_config(args),
        "dataset": dataset,
        "metric": metric,
        "num_parameters": num_parameters,
        "epochs_run": state.epoch,
        "best_epoch": state.best_epoch,
        "best": state.best_metrics,  # train/valid/test at the best validation epoch
        "final": state.history[-1] if state.history else {},
        "mean_epoch_time_s": float(np.mean(times)) if times else None,
        "history": state.history,
    }


def finish(
    args: argparse.Namespace, payload: dict[str, Any], state: TrainState, metric: str
) -> None:
    """Print the summary and write ``--out`` (rank 0)."""
    best = state.best_metrics
    if best:
        print_main(
            f"best epoch {state.best_epoch}: {metric} train {best['train']:.4f}  "
            f"valid {best['valid']:.4f}  test {best['test']:.4f}"
        )
    if args.out is not None:  # rank 0 only
        write_json(args.out, payload)
        print_main(f"wrote {args.out}")


def dataset_folder_or_generate(
    root: Path, name: str, allow_generate: bool, generate: Callable[[], Path]
) -> bool:
    """Return ``True`` if the dataset folder had to be generated (synthetic data).

    Under torchrun call it inside :func:`gtlib.distributed.main_first` (rank 0 generates, the
    other ranks then find the folder)."""
    from gtlib.datasets.ogb import dataset_dir_name

    folder = root / dataset_dir_name(name)
    if folder.exists():
        return False
    if not allow_generate:
        raise SystemExit(f"error: {folder}: dataset folder not found (and --no-generate given)")
    print_main(f"{folder} not found: generating a synthetic {name}-like dataset", file=sys.stderr)
    generate()
    return True
