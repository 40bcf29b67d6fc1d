r"""A training loop for score models: AdamW, EMA weights, clipping, cosine schedule, checkpoints.

:func:`train_score` fits a score model with one of the losses of
:mod:`gtlib.entropy.score_matching` and is deterministic given ``seed``: every random draw
(minibatch indices, denoising noise, probes) comes from one :class:`torch.Generator`, whose state
is checkpointed with the model, its EMA copy, the optimizer and the scheduler, so an interrupted
run resumed from a checkpoint ends with the same weights, bit for bit, as an uninterrupted one
(same device, same threads).

Under ``torchrun`` (see :mod:`gtlib.distributed`) ``batch_size`` is per rank: every rank draws
the same *global* batch of ``batch_size x world_size`` samples and the same noise for it (the
draws of a one-process run with that batch size), evaluates the model on its own contiguous
part of the rows only, and the gradients are summed over ranks, so the steps are those of one
process with the global batch (to float round-off) and a checkpoint resumes with any world size
that keeps the global batch.
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.nn import Module
from tqdm.auto import tqdm

from gtlib.distributed import (
    all_reduce,
    all_reduce_gradients,
    broadcast_module,
    get_world_size,
    is_distributed,
    is_main,
    on_main,
    save_checkpoint,
    shard_bounds,
)
from gtlib.entropy.score_matching import (
    denoising_score_matching,
    implicit_score_matching,
    sliced_score_matching,
)

__all__ = ["TrainResult", "train_score"]

DataSource = Tensor | Callable[[int, torch.Generator], Tensor]


@dataclass
class TrainResult:
    """What :func:`train_score` returns.

    Attributes:
        model: the trained model, the same object that was passed in, holding the EMA weights
            (``ema_decay=None``: the last weights).
        losses: the training loss at every step ``1..steps`` (including steps run before a
            resume, read back from the checkpoint).
        raw_state_dict: the last (non-averaged) weights, detached copies.
        steps: the number of optimisation steps done in total.
        resumed_from: the step a checkpoint was resumed from (``0``: a fresh start).
        history: held-out monitoring, one dict per evaluation (``eval_data``): ``step``,
            ``heldout_loss`` and the metrics of ``eval_fn`` (empty without ``eval_data``).
        best_step: the evaluated step with the lowest held-out loss (``None`` without
            ``eval_data``); ``best_loss`` that loss; ``best_state_dict`` the evaluated
            (EMA) weights at that step.
    """

    model: Module
    losses: list[float]
    raw_state_dict: dict[str, Tensor] = field(repr=False)
    steps: int
    resumed_from: int = 0
    history: list[dict[str, float]] = field(default_factory=list)
    best_step: int | None = None
    best_loss: float | None = None
    best_state_dict: dict[str, Tensor] | None = field(default=None, repr=False)


def _ema_decay(base: float, step: int) -> float:
    # Warm-up (as in common EMA implementations) so the average forgets the initial weights.
    return min(base, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def _ema_update(ema: Module, model: Module, decay: float) -> None:
    ema_params = list(ema.parameters())
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers(), strict=True):
        b_ema.copy_(b)


class _RankRows:
    """A score function for one rank's rows of a global batch (data-parallel training).

    The loss functions see the whole global batch (and so draw the noise of the whole batch,
    as one process does); this wrapper evaluates the model on this rank's rows ``[start, stop)``
    of each block of ``size`` rows it is given (antithetic DSM passes two blocks) in one call,
    and fills the other rows with detached outputs whose loss terms are zero: zeros (implicit
    and sliced score matching, Hutchinson probes) or ``-(y - x) / sigma**2`` for denoising
    score matching. The loss is then ``(1 / size) * sum`` of this rank's per-sample terms, and
    the sum over ranks is the global batch mean.
    """

    def __init__(
        self,
        model: Callable[..., Tensor],
        batch: Tensor,
        start: int,
        stop: int,
        sigma: float | None,
        model_kwargs: dict[str, Any],
    ) -> None:
        self.model = model
        self.batch = batch
        self.size = batch.shape[0]
        self.start, self.stop = start, stop
        self.sigma = sigma
        self.model_kwargs = model_kwargs
        own_mask = getattr(model, "noisy", None)
        if isinstance(own_mask, Tensor):
            self.noisy = own_mask

    def _rows(self, y: Tensor) -> tuple[int, Tensor]:
        if y.shape[0] % self.size:
            raise ValueError(f"the loss passed {y.shape[0]} rows, not a multiple of {self.size}")
        blocks = y.shape[0] // self.size
        offsets = torch.arange(self.start, self.stop, device=y.device)
        index = torch.cat([offsets + block * self.size for block in range(blocks)])
        return blocks, index

    def _neutral(self, y: Tensor, base: int, first: int, last: int) -> Tensor:
        """Outputs for rows ``first:last`` of the block at ``base`` whose loss terms vanish."""
        rows = y[base + first : base + last]
        if self.sigma is None:
            return torch.zeros(rows.shape, dtype=rows.dtype, device=rows.device)
        # DSM: y = x +- sigma z, and s = -(y - x) / sigma^2 = -+z / sigma cancels the target
        return -(rows.detach() - self.batch[first:last]) / self.sigma**2

    def _assemble(self, y: Tensor, blocks: int, local: Tensor) -> Tensor:
        count = self.stop - self.start
        pieces = []
        for block in range(blocks):
            base = block * self.size
            pieces.append(self._neutral(y, base, 0, self.start))
            pieces.append(local[block * count : (block + 1) * count])
            pieces.append(self._neutral(y, base, self.stop, self.size))
        return torch.cat(pieces)

    def __call__(self, y: Tensor) -> Tensor:
        blocks, index = self._rows(y)
        return self._assemble(y, blocks, self.model(y[index], **self.model_kwargs))

    def score_and_divergence(self, y: Tensor) -> tuple[Tensor, Tensor]:
        blocks, index = self._rows(y)
        s, div = self.model.score_and_divergence(y[index], **self.model_kwargs)
        zeros = div.new_zeros
        count = self.stop - self.start
        divs = []
        for block in range(blocks):
            divs += [zeros(self.start), div[block * count : (block + 1) * count],
                     zeros(self.size - self.stop)]  # fmt: skip
        return self._assemble(y, blocks, s), torch.cat(divs)


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (on the CPU), or ``None`` when there is none yet."""
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"`{name}` must be an int >= {minimum}, got {value!r}")
    return value


def train_score(
    model: Module,
    data: DataSource,
    *,
    loss: Literal["dsm", "implicit", "sliced"] = "dsm",
    sigma: float | None = None,
    noisy: Tensor | None = None,
    steps: int,
    batch_size: int,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    ema_decay: float | None = 0.999,
    clip_grad_norm: float | None = 1.0,
    lr_schedule: Literal["cosine"] | None = "cosine",
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int = 1000,
    resume: bool = True,
    progress: bool = True,
    seed: int = 0,
    callback: Callable[[int, float, Module], None] | None = None,
    model_kwargs_fn: Callable[[Tensor], dict[str, Any]] | None = None,
    loss_kwargs: dict[str, Any] | None = None,
    eval_data: Tensor | None = None,
    eval_every: int = 100,
    eval_batch_size: int | None = None,
    eval_fn: Callable[[Module], dict[str, float]] | None = None,
    best_checkpoint: str | os.PathLike[str] | None = None,
) -> TrainResult:
    r"""Fit a score model :math:`s_\theta \approx \nabla\log\rho` to samples of :math:`\rho`.

    Each step draws a batch, evaluates the loss (``"dsm"``:
    :func:`~gtlib.entropy.score_matching.denoising_score_matching`, antithetic, noise level
    ``sigma``; ``"implicit"``: :func:`~gtlib.entropy.score_matching.implicit_score_matching`;
    ``"sliced"``: :func:`~gtlib.entropy.score_matching.sliced_score_matching`), clips the
    gradient norm to ``clip_grad_norm``, takes an AdamW step, updates the learning rate (cosine
    decay from ``lr`` to ``lr / 100`` over ``steps``, or constant) and the exponential moving
    average of the weights, with decay :math:`\min(\text{ema\_decay}, (1+t)/(10+t))` at step
    :math:`t` (the warm-up lets the average forget the initial weights in short runs).

    At the end the EMA weights are copied into ``model`` (in place), which is returned in the
    result; the last raw weights are in ``TrainResult.raw_state_dict``.

    Checkpoints (``checkpoint`` a file path) hold the model, the EMA weights, the optimizer, the
    scheduler, the step, the loss history and the generator state; they are written atomically
    (a temporary file in the same folder, then :func:`os.replace`) every ``checkpoint_every``
    steps, at the end, and when ``callback`` raises (a clean interruption point). With
    ``resume=True`` an existing checkpoint is loaded and training continues from its step; the
    result is bit-for-bit that of an uninterrupted run.

    Held-out monitoring (``eval_data``): every ``eval_every`` steps and at the end, the loss on
    the held-out samples is computed with the weights the run returns (the EMA weights, or the
    raw ones with ``ema_decay=None``), in chunks of ``eval_batch_size``, with the noise/probes of
    a separate generator reseeded to ``seed + 2`` at every evaluation (the same draws each time,
    so evaluations compare the weights alone; the training draws are untouched, so monitoring
    changes no training step and resumes stay exact). ``eval_fn(model)`` adds metrics (e.g. the
    held-out EPR) computed on those weights. Each evaluation is appended to
    ``TrainResult.history`` (and to the checkpoint); the weights with the lowest held-out loss
    are kept in ``TrainResult.best_state_dict`` and, with ``best_checkpoint``, saved there
    atomically as ``{"step", "heldout_loss", "model"}``. Under ``torchrun`` every rank evaluates
    all held-out samples (identical weights, identical numbers); rank 0 writes.

    Data-parallel (under ``torchrun``, see :mod:`gtlib.distributed`): ``batch_size`` is per
    rank and the global batch is ``batch_size x world_size``. Every rank draws that global batch
    and its noise with the shared generator (the draws of one process with the global batch
    size), runs the model on its own ``batch_size`` rows only, and the gradients are summed over
    ranks before clipping, so the steps are those of one process with the global batch, to
    float round-off. Rank 0 alone writes checkpoints and shows the bar; a checkpoint stores the
    global batch size and resumes under any world size that keeps it (e.g. a 2-process run with
    ``batch_size=B`` in one process with ``2B``). The model's parameters are broadcast from rank
    0 at the start. ``callback`` and ``model_kwargs_fn`` run on every rank (the latter gets the
    rank's rows); a callback must raise on all ranks or none.

    Args:
        model: the score model, ``[B, *event] -> [B, *event]`` (``model_kwargs_fn`` supplies
            extra keyword arguments).
        data: samples ``[n, *event]``, from which each batch is drawn uniformly with
            replacement, or a callable ``(batch_size, generator) -> [batch_size, *event]`` that
            must draw its randomness from the given generator for resumes to be exact. Batches
            are moved to the dtype and device of the model's parameters.
        loss: ``"dsm"``, ``"implicit"`` or ``"sliced"``.
        sigma: the DSM noise level (required for ``"dsm"``).
        noisy: boolean mask of the noisy coordinates (broadcastable to the event shape, e.g.
            ``diffusion > 0``); the score is learned on those only.
        steps: total number of optimisation steps.
        batch_size: samples per step (per rank under ``torchrun``).
        lr: peak learning rate.
        weight_decay: AdamW weight decay.
        ema_decay: EMA decay in ``[0, 1)``, or ``None`` for no averaging.
        clip_grad_norm: maximum gradient norm, or ``None``.
        lr_schedule: ``"cosine"`` or ``None``.
        checkpoint: checkpoint file path, or ``None``.
        checkpoint_every: steps between checkpoints.
        resume: continue from ``checkpoint`` when it exists.
        progress: show a tqdm bar with the (running-mean) loss.
        seed: seeds the generator of every random draw (the model's initialisation is the
            caller's).
        callback: called as ``callback(step, loss, model)`` after every step (``model`` holds
            the raw weights); raising from it stops training after checkpointing.
        model_kwargs_fn: maps a batch to keyword arguments for ``model``.
        loss_kwargs: further keyword arguments for the loss (e.g. ``{"divergence":
            "hutchinson"}`` or ``{"n_projections": 4}``).
        eval_data: held-out samples ``[m, *event]`` (same event shape as the training data),
            or ``None`` for no monitoring.
        eval_every: steps between held-out evaluations.
        eval_batch_size: samples per held-out chunk (default ``batch_size``).
        eval_fn: ``eval_fn(model) -> {name: float}``, further held-out metrics.
        best_checkpoint: file for the best held-out weights, or ``None``.

    Returns:
        :class:`TrainResult`.
    """
    if not isinstance(model, Module):
        raise TypeError(f"`model` must be a torch.nn.Module, got {type(model).__name__}")
    steps = _check_int(steps, "steps", 1)
    batch_size = _check_int(batch_size, "batch_size", 1)
    checkpoint_every = _check_int(checkpoint_every, "checkpoint_every", 1)
    if loss not in ("dsm", "implicit", "sliced"):
        raise ValueError(f"`loss` must be 'dsm', 'implicit' or 'sliced', got {loss!r}")
    if loss == "dsm" and sigma is None:
        raise ValueError("`sigma` is required for loss='dsm'")
    if lr_schedule not in ("cosine", None):
        raise ValueError(f"`lr_schedule` must be 'cosine' or None, got {lr_schedule!r}")
    if ema_decay is not None and not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"`ema_decay` must be in [0, 1) or None, got {ema_decay}")
    if not math.isfinite(lr) or lr <= 0:
        raise ValueError(f"`lr` must be positive, got {lr}")
    if clip_grad_norm is not None and not clip_grad_norm > 0:
        raise ValueError(f"`clip_grad_norm` must be positive or None, got {clip_grad_norm}")
    param = next(model.parameters(), None)
    if param is None:
        raise ValueError("`model` has no parameters")
    dtype, device = param.dtype, param.device
    eval_every = _check_int(eval_every, "eval_every", 1)
    eval_batch_size = _check_int(
        batch_size if eval_batch_size is None else eval_batch_size, "eval_batch_size", 1
    )
    if eval_data is not None:
        if not isinstance(eval_data, Tensor) or not eval_data.is_floating_point():
            raise TypeError("`eval_data` must be a floating-point torch.Tensor [m, *event]")
        if eval_data.dim() < 2 or eval_data.shape[0] < 1:
            raise ValueError(
                f"`eval_data` must have shape [m, *event], got {tuple(eval_data.shape)}"
            )
        if isinstance(data, Tensor) and eval_data.shape[1:] != data.shape[1:]:
            raise ValueError(
                f"`eval_data` has event shape {tuple(eval_data.shape[1:])}, the training data "
                f"{tuple(data.shape[1:])}"
            )
        eval_samples = eval_data.to(device=device, dtype=dtype)
    elif eval_fn is not None or best_checkpoint is not None:
        raise ValueError("`eval_fn` and `best_checkpoint` need `eval_data`")
    if eval_fn is not None and not callable(eval_fn):
        raise TypeError("`eval_fn` must be callable as eval_fn(model) -> dict")
    world_size = get_world_size()
    global_batch = batch_size * world_size  # drawn on every rank, as one process draws it
    first, last = shard_bounds(global_batch)  # this rank's rows of it
    if isinstance(data, Tensor):
        if data.dim() < 2 or data.shape[0] < 1:
            raise ValueError(f"`data` must have shape [n, *event], got {tuple(data.shape)}")
        if not data.is_floating_point():
            raise TypeError(f"`data` must be a floating-point tensor, got {data.dtype}")
        samples = data.to(device=device, dtype=dtype)

        def draw(generator: torch.Generator) -> Tensor:
            index = torch.randint(samples.shape[0], (global_batch,), generator=generator)
            return samples[index.to(device)]

    elif callable(data):

        def draw(generator: torch.Generator) -> Tensor:
            batch = data(global_batch, generator)
            if not isinstance(batch, Tensor):
                raise TypeError(f"`data` must return a Tensor, got {type(batch).__name__}")
            return batch.to(device=device, dtype=dtype)

    else:
        raise TypeError(f"`data` must be a Tensor or a callable, got {type(data).__name__}")

    loss_kwargs = dict(loss_kwargs or {})
    if noisy is not None:
        loss_kwargs["noisy"] = noisy.to(device)
    if loss == "dsm":
        loss_fn = partial(denoising_score_matching, sigma=float(sigma), **loss_kwargs)
    elif loss == "implicit":
        loss_fn = partial(implicit_score_matching, **loss_kwargs)
    else:
        loss_fn = partial(sliced_score_matching, **loss_kwargs)

    if is_distributed():  # every rank starts from rank 0's weights
        broadcast_module(model)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    noise_generator = generator if device.type == "cpu" else torch.Generator(device=device)
    if noise_generator is not generator:
        noise_generator.manual_seed(seed + 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if lr_schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps, eta_min=lr / 100)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    ema = copy.deepcopy(model) if ema_decay is not None else None
    if ema is not None:
        ema.requires_grad_(False)
    losses: list[float] = []
    history: list[dict[str, float]] = []
    best: dict[str, Any] = {"step": None, "loss": None, "state_dict": None}
    start = 0
    path = Path(checkpoint) if checkpoint is not None else None
    best_path = Path(best_checkpoint) if best_checkpoint is not None else None
    eval_generator = torch.Generator(device=device)

    def evaluate(step: int) -> None:
        """Held-out loss (and ``eval_fn``) of the weights the run returns, at ``step``."""
        monitored = ema if ema is not None else model
        was_training = monitored.training
        monitored.eval()
        eval_generator.manual_seed(seed + 2)
        total, count = 0.0, eval_samples.shape[0]
        for first_row in range(0, count, eval_batch_size):
            chunk = eval_samples[first_row : first_row + eval_batch_size]
            score_fn = monitored
            if model_kwargs_fn is not None:
                score_fn = partial(monitored, **model_kwargs_fn(chunk))
            value = loss_fn(score_fn, chunk, generator=eval_generator)
            total += float(value.detach()) * chunk.shape[0]
        record = {"step": step, "heldout_loss": total / count}
        if eval_fn is not None:
            with torch.no_grad():
                metrics = eval_fn(monitored)
            if not isinstance(metrics, dict):
                raise TypeError(f"`eval_fn` must return a dict, got {type(metrics).__name__}")
            record.update({str(k): float(v) for k, v in metrics.items()})
        monitored.train(was_training)
        history.append(record)
        if best["loss"] is None or record["heldout_loss"] < best["loss"]:
            best["step"], best["loss"] = step, record["heldout_loss"]
            best["state_dict"] = {k: v.detach().clone() for k, v in monitored.state_dict().items()}
            if best_path is not None:
                save_checkpoint(
                    {"step": step, "heldout_loss": record["heldout_loss"],
                     "model": best["state_dict"]},
                    best_path,
                )  # fmt: skip

    def state(step: int) -> dict[str, Any]:
        return {
            "step": step,
            "model": model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "generator": generator.get_state(),
            "noise_generator": noise_generator.get_state(),
            "losses": list(losses),
            "history": [dict(h) for h in history],
            "best": dict(best),
            "config": {
                "loss": loss,
                "steps": steps,
                "batch_size": batch_size,
                "world_size": world_size,
                "global_batch_size": global_batch,
                "seed": seed,
            },
        }

    # rank 0 reads the checkpoint and hands it to the others (no shared disk needed)
    saved = None
    if path is not None and resume:
        saved = on_main(_load_checkpoint, path)
    if saved is not None:
        saved_batch = saved.get("config", {}).get("global_batch_size", global_batch)
        if saved_batch != global_batch:
            raise ValueError(
                f"`batch_size`: checkpoint {path} was written with a global batch of "
                f"{saved_batch} samples (batch_size x world_size), this run has {global_batch}; "
                "resume with the same global batch"
            )
        model.load_state_dict(saved["model"])
        if ema is not None:
            if saved["ema"] is None:
                raise ValueError(f"checkpoint {path} has no EMA weights but `ema_decay` is set")
            ema.load_state_dict(saved["ema"])
        optimizer.load_state_dict(saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        generator.set_state(saved["generator"].cpu())
        if noise_generator is not generator:
            noise_generator.set_state(saved["noise_generator"].cpu())
        losses = list(saved["losses"])
        history = list(saved.get("history", []))
        best.update(saved.get("best", {}))
        start = int(saved["step"])
        if start > steps:
            raise ValueError(f"checkpoint {path} is at step {start}, past `steps` = {steps}")

    model.train()
    show = progress and is_main()
    bar = tqdm(total=steps, initial=start, disable=not show, desc=f"score ({loss})")
    running = None
    try:
        for step in range(start + 1, steps + 1):
            batch = draw(generator)
            if world_size == 1:
                score_fn = model
                if model_kwargs_fn is not None:
                    score_fn = partial(model, **model_kwargs_fn(batch))
                value = loss_fn(score_fn, batch, generator=noise_generator)
                total = value.detach()
            else:  # this rank's share of the global mean; the shares sum to it
                kwargs = model_kwargs_fn(batch[first:last]) if model_kwargs_fn is not None else {}
                score_fn = _RankRows(model, batch, first, last, sigma if loss == "dsm" else None,
                                     kwargs)  # fmt: skip
                value = loss_fn(score_fn, batch, generator=noise_generator)
                total = all_reduce(value.detach(), "sum")
            if not torch.isfinite(total):
                raise FloatingPointError(f"non-finite loss at step {step}: {float(total)}")
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            all_reduce_gradients(model, op="sum")
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            optimizer.step()
            scheduler.step()
            if ema is not None:
                _ema_update(ema, model, _ema_decay(ema_decay, step))
            losses.append(float(total))
            running = losses[-1] if running is None else 0.98 * running + 0.02 * losses[-1]
            bar.update(1)
            if show and (step % 10 == 0 or step == steps):
                bar.set_postfix(loss=f"{running:.4g}")
            if eval_data is not None and (step % eval_every == 0 or step == steps):
                evaluate(step)
            if path is not None and (step % checkpoint_every == 0 or step == steps):
                save_checkpoint(state(step), path)
            if callback is not None:
                try:
                    callback(step, losses[-1], model)
                except BaseException:
                    if path is not None:
                        save_checkpoint(state(step), path)
                    raise
    finally:
        bar.close()

    raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if ema is not None:
        model.load_state_dict(ema.state_dict())
    model.eval()
    return TrainResult(
        model=model,
        losses=losses,
        raw_state_dict=raw,
        steps=steps,
        resumed_from=start,
        history=history,
        best_step=best["step"],
        best_loss=best["loss"],
        best_state_dict=best["state_dict"],
    )
