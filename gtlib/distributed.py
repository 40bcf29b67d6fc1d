"""Data-parallel training under ``torchrun``: process group, rank queries, sharding, gathering.

Every trainer of gtlib (the examples and :func:`gtlib.entropy.train_score`) runs unchanged in one
process and under ``torchrun --nproc_per_node N`` (or several nodes with ``--nnodes`` and a
rendezvous endpoint). In one process every helper here is a no-op that returns its input, so the
same code serves both. The conventions:

- **One global batch, split by rank.** A step processes a *global batch* of
  ``per_rank_batch x world_size`` samples, drawn exactly as a one-process run with that batch
  size draws it (same seed, same order; :class:`ShardedBatchSampler`, :func:`shard`). Rank ``r``
  takes the ``r``-th contiguous part (:func:`torch.tensor_split` sizes: parts differ by at most
  one sample in a short last batch), so the union of the ranks' batches *is* the one-process
  batch. A rank whose part is empty (a last batch with fewer samples than ranks) runs one
  placeholder sample with loss weight 0, so that every rank takes part in every gradient
  all-reduce.
- **Gradients average to the global batch's.** DDP averages gradients over ranks; a rank's
  mean loss over ``n_r`` of the ``n`` samples of a global batch is weighted by
  ``n_r * world_size / n`` (:func:`mean_weight`), so the averaged gradient is the gradient of
  the mean over the whole global batch. Two ranks with batch ``B`` then take the same steps as
  one process with batch ``2B`` (to float round-off), and checkpoints (which store the epoch or
  step, the generator states and the *global* batch size) resume with any world size.
- **Rank 0 writes and reports**: checkpoints, results, logs and progress bars
  (:func:`is_main`, :func:`progress`, :func:`print_main`, :func:`save_checkpoint`,
  :func:`write_json`); work that writes shared files (generating data, processing a dataset)
  runs on rank 0 first (:func:`on_main`, :func:`main_first`).
- **Evaluation is sharded and gathered**: each rank predicts a contiguous part of the evaluation
  set and :func:`all_gather_cat` reassembles the predictions in order on every rank (uneven parts
  are padded for the collective and trimmed, so no sample counts twice); metrics are then those
  of a one-process evaluation.
- **Seeds are shared**: every rank seeds its generators with the same seed, so random draws that
  are not per sample (model initialisation, shuffling, dropout of full-batch models) agree.

BatchNorm: under DDP each rank normalises with its own batch statistics; :func:`wrap_ddp` converts
BatchNorm to :class:`torch.nn.SyncBatchNorm` on GPUs (statistics of the global batch, as in one
process). SyncBatchNorm needs GPUs, so on the CPU (gloo) a model with BatchNorm trains with
per-rank statistics and does not match a one-process run exactly.

Backends: NCCL when CUDA is available (each process on ``cuda:LOCAL_RANK``), gloo otherwise.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import random
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Sampler
from tqdm.auto import tqdm

from gtlib.io import atomic_torch_save, atomic_write_text
from gtlib.validation import check_bool, check_int

__all__ = [
    "ShardedBatchSampler",
    "all_gather_cat",
    "all_reduce",
    "all_reduce_gradients",
    "barrier",
    "broadcast_module",
    "broadcast_object",
    "destroy_distributed",
    "distributed_session",
    "get_local_rank",
    "get_rank",
    "get_world_size",
    "init_distributed",
    "is_distributed",
    "is_main",
    "main_first",
    "mean_weight",
    "on_main",
    "print_main",
    "progress",
    "resolve_device",
    "rng_states",
    "save_checkpoint",
    "seed_everything",
    "set_rng_states",
    "shard",
    "shard_bounds",
    "unwrap",
    "wrap_ddp",
    "write_json",
]

T = TypeVar("T")
_REDUCE_OPS = ("sum", "mean", "max", "min")


# ------------------------------------------------------------------------------ process group
def init_distributed(backend: str | None = None, *, timeout: timedelta | None = None) -> bool:
    """Join the process group described by the ``torchrun`` environment, if there is one.

    Reads ``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` (set by
    ``torchrun``). With ``WORLD_SIZE`` unset or 1, or a process group already initialised, it
    does nothing. On CUDA machines the process is bound to ``cuda:LOCAL_RANK``.

    Args:
        backend: ``"nccl"``, ``"gloo"`` (or another :mod:`torch.distributed` backend); default
            NCCL when CUDA is available, gloo otherwise.
        timeout: collective timeout (default: PyTorch's).

    Returns:
        ``True`` if this call created the process group (the caller then owns it and should
        call :func:`destroy_distributed` at the end), ``False`` otherwise.
    """
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be a string or None, got {type(backend).__name__}")
    if timeout is not None and not isinstance(timeout, timedelta):
        raise TypeError(f"timeout must be a datetime.timedelta or None, got {timeout!r}")
    if not dist.is_available() or dist.is_initialized():
        return False
    try:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        text = os.environ["WORLD_SIZE"]
        raise ValueError(f"WORLD_SIZE must be an integer, got {text!r}") from None
    if world_size <= 1:
        return False
    missing = [key for key in ("RANK", "MASTER_ADDR", "MASTER_PORT") if key not in os.environ]
    if missing:
        raise RuntimeError(
            f"WORLD_SIZE={world_size} but {', '.join(missing)} unset: launch with torchrun"
        )
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(get_local_rank())
    kwargs = {} if timeout is None else {"timeout": timeout}
    dist.init_process_group(backend=backend, **kwargs)
    return True


def destroy_distributed() -> None:
    """Leave the process group (no-op without one)."""
    if is_distributed():
        dist.destroy_process_group()


@contextmanager
def distributed_session(backend: str | None = None) -> Iterator[bool]:
    """``with distributed_session():`` runs the block in the torchrun process group.

    Initialises the group on entry (:func:`init_distributed`) and destroys it on exit if it was
    created here; yields whether it was. A no-op in one process.
    """
    owns = init_distributed(backend)
    try:
        yield owns
    finally:
        if owns:
            destroy_distributed()


def is_distributed() -> bool:
    """Whether a process group is initialised (``torchrun`` with more than one process)."""
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    """This process's global rank (0 in one process)."""
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    """The number of processes (1 in one process)."""
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    """This process's rank on its node (``LOCAL_RANK``; 0 in one process)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def _launched() -> bool:
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def is_main() -> bool:
    """Whether this is rank 0, the one process that writes files and reports."""
    return get_rank() == 0


def barrier() -> None:
    """Wait until every rank gets here (no-op in one process)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def _comm_device() -> torch.device:
    """Where collective buffers live: the current GPU for NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or ``"cuda:1"`` as a device.

    Under ``torchrun`` a CUDA device without an index is this process's GPU,
    ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: ``name`` is not a device, or asks for CUDA where there is none.
    """
    if isinstance(name, torch.device):
        device = name
    elif isinstance(name, str):
        if name == "auto":
            name = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            device = torch.device(name)
        except RuntimeError as exc:
            raise ValueError(f"device: {name!r} is not a device ({exc})") from None
    else:
        raise TypeError(f"device must be a string or torch.device, got {type(name).__name__}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {str(device)!r} requested but CUDA is not available")
        if device.index is None and (is_distributed() or _launched()):
            device = torch.device("cuda", get_local_rank())
    return device


# -------------------------------------------------------------------------------- collectives
def all_reduce(value: T, op: str = "sum") -> T:
    """Reduce a tensor or a number over all ranks and return the result on every rank.

    Args:
        value: a tensor (same shape and dtype on every rank), an ``int`` or a ``float``.
        op: ``"sum"``, ``"mean"``, ``"max"`` or ``"min"``.

    Returns:
        A new tensor on ``value``'s device, or a Python number (``"mean"`` of ints: a float).
        In one process, ``value`` itself (a tensor: a detached copy).
    """
    if op not in _REDUCE_OPS:
        raise ValueError(f"op must be one of {_REDUCE_OPS}, got {op!r}")
    if isinstance(value, Tensor):
        tensor = value.detach()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        dtype = torch.float64 if isinstance(value, float) else torch.long
        tensor = torch.tensor(value, dtype=dtype)
    else:
        raise TypeError(f"value must be a tensor, int or float, got {type(value).__name__}")
    if not is_distributed():
        return value.detach().clone() if isinstance(value, Tensor) else value
    work = tensor.clone().to(_comm_device())
    if op == "mean" and not work.is_floating_point():
        work = work.double()
    reduce_op = {"sum": dist.ReduceOp.SUM, "mean": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                 "min": dist.ReduceOp.MIN}[op]  # fmt: skip
    dist.all_reduce(work, op=reduce_op)
    if op == "mean":
        work = work / get_world_size()
    if isinstance(value, Tensor):
        return work.to(value.device)
    return work.item()


def all_gather_cat(tensor: Tensor) -> Tensor:
    """Concatenate every rank's ``tensor`` along dim 0, in rank order, on every rank.

    The ranks' first dimensions may differ (including 0): parts are padded to the longest for
    the collective and trimmed, so each row appears exactly once. The other dimensions and the
    dtype must agree. In one process, ``tensor`` itself.
    """
    if not isinstance(tensor, Tensor):
        raise TypeError(f"tensor must be a torch.Tensor, got {type(tensor).__name__}")
    if tensor.dim() == 0:
        raise ValueError("tensor must have at least one dimension (the one to concatenate)")
    if not is_distributed():
        return tensor
    layouts = [None] * get_world_size()
    dist.all_gather_object(layouts, (int(tensor.shape[0]), tuple(tensor.shape[1:]), tensor.dtype))
    if any(layout[1:] != layouts[0][1:] for layout in layouts):
        raise ValueError(f"tensor: trailing shapes and dtypes differ between ranks: {layouts}")
    sizes = [layout[0] for layout in layouts]
    local = tensor.detach()
    is_bool = local.dtype == torch.bool
    if is_bool:  # not every backend gathers bool tensors
        local = local.to(torch.uint8)
    padded = local.new_zeros((max(sizes), *local.shape[1:]), device=_comm_device())
    padded[: local.shape[0]] = local
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    out = torch.cat([part[:size] for part, size in zip(parts, sizes)]).to(tensor.device)
    return out.bool() if is_bool else out


def broadcast_object(obj: T, src: int = 0) -> T:
    """``obj`` of rank ``src`` on every rank (picklable; ``obj`` of other ranks is ignored)."""
    if not is_distributed():
        return obj
    holder = [obj]
    kwargs = {"device": _comm_device()} if dist.get_backend() == "nccl" else {}
    dist.broadcast_object_list(holder, src=src, **kwargs)
    return holder[0]


def on_main(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn(*args, **kwargs)`` on rank 0 only and return its result on every rank.

    Use it for work that must happen once (generating or downloading data, reading a
    checkpoint that need not be on every node's disk). An exception raised by ``fn`` is raised
    on every rank (as itself when picklable, else as a ``RuntimeError`` naming it), so the ranks
    stop together. The result must be picklable.
    """
    if not callable(fn):
        raise TypeError(f"fn must be callable, got {type(fn).__name__}")
    if not is_distributed():
        return fn(*args, **kwargs)
    payload = None
    if is_main():
        try:
            payload = (True, fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - handed to every rank below
            payload = (False, _picklable(exc))
    ok, value = broadcast_object(payload)
    if not ok:
        raise value
    return value


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # noqa: BLE001 - any failure to round-trip
        return RuntimeError(f"on rank 0: {type(exc).__name__}: {exc}")
    return exc


@contextmanager
def main_first() -> Iterator[None]:
    """Run the block on rank 0 first, then on the other ranks.

    For blocks that create files the others then read (e.g. a dataset that processes its raw
    files on first use): rank 0 creates them, the others find them ready.
    """
    if not is_main():
        barrier()
    try:
        yield
    finally:
        if is_main():
            barrier()


# ----------------------------------------------------------------------------------- sharding
def shard_bounds(
    num_items: int, rank: int | None = None, world_size: int | None = None
) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank``'s contiguous part of ``num_items`` items.

    Parts have the sizes of :func:`torch.tensor_split`: the first ``num_items % world_size``
    parts hold one item more. Default rank and world size: this process's.
    """
    rank, world_size = _rank_world(rank, world_size)
    if isinstance(num_items, bool) or not isinstance(num_items, int) or num_items < 0:
        raise ValueError(f"num_items must be a non-negative int, got {num_items!r}")
    base, extra = divmod(num_items, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (rank < extra)


def shard(items: Any, rank: int | None = None, world_size: int | None = None) -> Any:
    """Rank ``rank``'s contiguous part of ``items`` (a tensor along dim 0, or a sequence).

    The parts of all ranks, in rank order, concatenate to ``items``; see :func:`shard_bounds`.
    In one process, all of ``items``.
    """
    if isinstance(items, Tensor):
        if items.dim() == 0:
            raise ValueError("items must have at least one dimension")
        start, stop = shard_bounds(int(items.shape[0]), rank, world_size)
    elif isinstance(items, Sequence):
        start, stop = shard_bounds(len(items), rank, world_size)
    else:
        raise TypeError(f"items must be a tensor or a sequence, got {type(items).__name__}")
    return items[start:stop]


def _rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    world_size = get_world_size() if world_size is None else world_size
    rank = get_rank() if rank is None else rank
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive int, got {world_size!r}")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an int in [0, {world_size}), got {rank!r}")
    return rank, world_size


class ShardedBatchSampler(Sampler[list[int]]):
    """Index batches for data-parallel training: each rank's part of every global batch.

    Each epoch the indices ``0 .. n - 1`` are ordered (a permutation drawn from a generator seeded
    with ``seed + epoch`` when ``shuffle``, else in order) and cut into global batches of
    ``batch_size * world_size`` (the last one shorter, or dropped with ``drop_last``). Every rank
    computes the same global batches; rank ``r`` yields the ``r``-th part of each
    (:func:`shard`). The global batches do not depend on the world size, so ``world_size`` ranks
    with ``batch_size`` see, step for step, the batches of one process with ``batch_size *
    world_size``, and a run can resume with another world size at an epoch boundary.

    A rank whose part of a (short, last) global batch is empty yields a placeholder: the
    batch's first index. :meth:`shares` tells which steps those are, so the training loop can
    give the placeholder's loss weight 0 (it still takes part in the gradient all-reduce).

    Use it as a :class:`~torch.utils.data.DataLoader`'s ``batch_sampler`` with any map-style
    dataset (``PDEDataset``, ``ParticleDataset``, ``OGBGraphDataset``, a tensor's indices) and
    call :meth:`set_epoch` before each epoch.

    Args:
        data_source: the dataset (anything with ``len``) or its length.
        batch_size: samples per rank and step.
        shuffle: draw a new order every epoch.
        seed: seed of the order (the same on every rank).
        drop_last: drop a last global batch shorter than ``batch_size * world_size``.
        rank, world_size: default this process's (from the process group; 0 and 1 without).
    """

    def __init__(
        self,
        data_source: Sized | int,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        if isinstance(data_source, Sized) and not isinstance(data_source, (str, bytes)):
            num_samples = len(data_source)
        else:
            num_samples = check_int(data_source, "data_source", minimum=0)
        self.rank, self.world_size = _rank_world(rank, world_size)
        self.num_samples = num_samples
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.shuffle = check_bool(shuffle, "shuffle")
        self.seed = check_int(seed, "seed")
        self.drop_last = check_bool(drop_last, "drop_last")
        self.epoch = 0

    @property
    def global_batch_size(self) -> int:
        """``batch_size * world_size``: the samples of one step over all ranks."""
        return self.batch_size * self.world_size

    def set_epoch(self, epoch: int) -> None:
        """Select the order of epoch ``epoch`` (with ``shuffle``, a new one per epoch)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be a non-negative int, got {epoch!r}")
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        """What a checkpoint needs to reproduce the order: the epoch and the seed."""
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restore :meth:`state_dict` (from a run with any world size)."""
        if not isinstance(state, dict) or not {"epoch", "seed"} <= set(state):
            raise ValueError(f"state must be a dict with 'epoch' and 'seed', got {state!r}")
        self.seed = int(state["seed"])
        self.set_epoch(int(state["epoch"]))

    def global_batches(self) -> list[Tensor]:
        """The global batches (index tensors) of the current epoch, identical on every rank."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self.num_samples, generator=generator)
        else:
            order = torch.arange(self.num_samples)
        batches = list(torch.split(order, self.global_batch_size))
        if self.drop_last and batches and batches[-1].numel() < self.global_batch_size:
            batches.pop()
        return batches

    def shares(self) -> list[tuple[int, ...]]:
        """Per step of the current epoch, how many real samples each rank gets (0: placeholder)."""
        return [
            tuple(part.numel() for part in torch.tensor_split(batch, self.world_size))
            for batch in self.global_batches()
        ]

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.global_batches():
            part = shard(batch, self.rank, self.world_size)
            yield part.tolist() if part.numel() else batch[:1].tolist()

    def __len__(self) -> int:
        if self.drop_last:
            return self.num_samples // self.global_batch_size
        return math.ceil(self.num_samples / self.global_batch_size)


def mean_weight(local_count: int, global_count: int | None = None) -> float:
    """Weight of a rank's mean loss over ``local_count`` terms so that DDP's gradient average
    equals the gradient of the mean over all ``global_count`` terms of the global batch:
    ``local_count * world_size / global_count``.

    Without ``global_count`` it is all-reduced (one collective: call it on every rank). 1.0 in
    one process; 0.0 when there is nothing to average (give such a rank's loss weight 0).
    """
    if isinstance(local_count, bool) or not isinstance(local_count, int) or local_count < 0:
        raise ValueError(f"local_count must be a non-negative int, got {local_count!r}")
    if not is_distributed():
        return 1.0
    if global_count is None:
        global_count = all_reduce(local_count)
    if global_count <= 0:
        return 0.0
    return local_count * get_world_size() / global_count


# ------------------------------------------------------------------------------------- models
def wrap_ddp(model: nn.Module, *, sync_batchnorm: bool = True, **ddp_kwargs: Any) -> nn.Module:
    """``DistributedDataParallel(model)`` under torchrun; ``model`` itself in one process.

    The model must already be on its device (``cuda:LOCAL_RANK``, see :func:`resolve_device`, or
    the CPU). With ``sync_batchnorm`` its BatchNorm layers become :class:`~torch.nn.SyncBatchNorm`
    on GPUs (in place: the module keeps its parameters, an optimizer built on them stays
    valid); on the CPU, where SyncBatchNorm does not run, a warning says the statistics are per
    rank. ``ddp_kwargs`` go to :class:`~torch.nn.parallel.DistributedDataParallel` (e.g.
    ``find_unused_parameters=True``).

    Evaluate with :func:`unwrap` (the plain module): DDP's forward synchronises buffers, which
    would hang when ranks evaluate different numbers of batches.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not is_distributed():
        return model
    param = next(model.parameters(), None)
    if param is None:
        raise ValueError("model has no parameters to train")
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if sync_batchnorm and has_bn:
        if param.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        elif is_main():
            warnings.warn(
                "BatchNorm under DDP on the CPU normalises with per-rank batch statistics "
                "(SyncBatchNorm needs GPUs): results differ from a one-process run",
                stacklevel=2,
            )
    device_ids = [param.device.index] if param.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids, **ddp_kwargs)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside a DDP wrapper (``model`` itself otherwise)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def all_reduce_gradients(model: nn.Module | Iterable[Tensor], op: str = "mean") -> None:
    """Average (``"mean"``) or sum (``"sum"``) the ``.grad`` of ``model``'s parameters over ranks.

    For training loops that do not use DDP (e.g. losses with double backward or forward-mode
    derivatives): call it after ``backward()`` on every rank. A parameter with a gradient on
    some rank gets one (zeros elsewhere) on every rank. One flat all-reduce; no-op in one
    process.
    """
    if op not in ("mean", "sum"):
        raise ValueError(f"op must be 'mean' or 'sum', got {op!r}")
    params = list(model.parameters() if isinstance(model, nn.Module) else model)
    if not is_distributed():
        return
    params = [p for p in params if p.requires_grad]
    has_grad = torch.tensor([p.grad is not None for p in params], dtype=torch.uint8)
    has_grad = all_reduce(has_grad, op="max").bool().tolist()
    grads = []
    for param, needed in zip(params, has_grad):
        if needed and param.grad is None:
            param.grad = torch.zeros_like(param)
        if needed:
            grads.append(param.grad)
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]).to(_comm_device())
    dist.all_reduce(flat)
    if op == "mean":
        flat /= get_world_size()
    offset = 0
    for grad in grads:
        grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
        offset += grad.numel()


@torch.no_grad()
def broadcast_module(module: nn.Module, src: int = 0, *, buffers_only: bool = False) -> None:
    """Copy rank ``src``'s parameters and buffers (or buffers only) to every rank, in place."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    if not is_distributed():
        return
    tensors = list(module.buffers()) + ([] if buffers_only else list(module.parameters()))
    for tensor in tensors:
        work = tensor.data.to(_comm_device())
        dist.broadcast(work, src=src)
        if work.data_ptr() != tensor.data.data_ptr():
            tensor.data.copy_(work)


# ------------------------------------------------------------------------ seeds, RNG states, IO
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA), the same way on every rank."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_states(generators: dict[str, torch.Generator] | None = None) -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global generators (CPU and CUDA) and of
    ``generators`` (by name), for a checkpoint."""
    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    for name, generator in (generators or {}).items():
        states[f"generator:{name}"] = generator.get_state()
    return states


def set_rng_states(
    states: dict[str, Any], generators: dict[str, torch.Generator] | None = None
) -> None:
    """Restore :func:`rng_states` (CUDA states only where CUDA is available)."""
    if not isinstance(states, dict):
        raise TypeError(f"states must be a dict from rng_states(), got {type(states).__name__}")
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        cuda = states["cuda"][: torch.cuda.device_count()]
        torch.cuda.set_rng_state_all(cuda)
    for name, generator in (generators or {}).items():
        key = f"generator:{name}"
        if key not in states:
            raise ValueError(f"states: no state of the generator {name!r}")
        generator.set_state(states[key])


def progress(iterable: Iterable[T] | None = None, *, enabled: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar on rank 0 (stderr); disabled on the other ranks or when not ``enabled``."""
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=not (enabled and is_main()), **kwargs)


def print_main(*objects: Any, sep: str = " ", end: str = "\n", file: Any = None) -> None:
    """``print`` on rank 0 only (through ``tqdm.write``, so progress bars stay intact)."""
    if is_main():
        tqdm.write(sep.join(map(str, objects)), file=file or sys.stdout, end=end)


def save_checkpoint(obj: Any, path: str | os.PathLike[str]) -> None:
    """``torch.save(obj, path)`` atomically, on rank 0 only (other ranks return at once)."""
    if is_main():
        atomic_torch_save(obj, path)


def write_json(path: str | os.PathLike[str], payload: Any) -> None:
    """Write ``payload`` as indented JSON atomically, on rank 0 only.

    Non-finite floats become ``null`` (strict JSON has no NaN); NumPy scalars, paths and devices
    are converted.
    """
    if is_main():
        text = json.dumps(_json_safe(payload), indent=2, allow_nan=False) + "\n"
        atomic_write_text(Path(path), text)


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    if isinstance(value, np.generic):
        return _json_safe(value.item())
    if isinstance(value, Path | torch.device):
        return str(value)
    return value
