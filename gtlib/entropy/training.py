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
from gtlib.io import remove_stale_temporaries
from gtlib.validation import (
    all_finite,
    check_choice,
    check_finite,
    check_int,
    check_real,
    check_tensor,
    describe,
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


def _check_callable(value: Any, name: str, usage: str) -> Any:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be callable as {usage}, got {describe(value)}")
    return value


def _optional_real(value: Any, name: str, **bounds: Any) -> float | None:
    return None if value is None else check_real(value, name, **bounds)


def _optional_path(value: Any, name: str) -> Path | None:
    if value is None:
        return None
    if not isinstance(value, str | os.PathLike):
        raise TypeError(f"{name} must be a file path or None, got {describe(value)}")
    return Path(value)


@dataclass(frozen=True)
class _Options:
    """The validated scalar options of one :func:`train_score` run."""

    loss: str
    sigma: float | None
    steps: int
    batch_size: int
    lr: float
    weight_decay: float
    ema_decay: float | None
    clip_grad_norm: float | None
    lr_schedule: str | None
    seed: int
    checkpoint: Path | None
    checkpoint_every: int
    resume: bool
    progress: bool
    callback: Callable[[int, float, Module], None] | None
    model_kwargs_fn: Callable[[Tensor], dict[str, Any]] | None
    loss_kwargs: dict[str, Any]


def _check_options(
    *,
    loss: Any,
    sigma: Any,
    steps: Any,
    batch_size: Any,
    lr: Any,
    weight_decay: Any,
    ema_decay: Any,
    clip_grad_norm: Any,
    lr_schedule: Any,
    checkpoint: Any,
    checkpoint_every: Any,
    resume: Any,
    progress: Any,
    seed: Any,
    callback: Any,
    model_kwargs_fn: Any,
    loss_kwargs: Any,
) -> _Options:
    """Argument checking of :func:`train_score` (everything but the model and the data)."""
    loss = check_choice(loss, "loss", ("dsm", "implicit", "sliced"))
    if loss == "dsm" and sigma is None:
        raise ValueError("sigma is required for loss='dsm'")
    if loss_kwargs is not None and not isinstance(loss_kwargs, dict):
        raise TypeError(f"loss_kwargs must be a dict or None, got {describe(loss_kwargs)}")
    return _Options(
        loss=loss,
        sigma=_optional_real(sigma, "sigma", positive=True),
        steps=check_int(steps, "steps", minimum=1),
        batch_size=check_int(batch_size, "batch_size", minimum=1),
        lr=check_real(lr, "lr", positive=True),
        weight_decay=check_real(weight_decay, "weight_decay", nonnegative=True),
        ema_decay=_optional_ema_decay(ema_decay),
        clip_grad_norm=_optional_real(clip_grad_norm, "clip_grad_norm", positive=True),
        lr_schedule=check_choice(lr_schedule, "lr_schedule", ("cosine", None)),
        seed=check_int(seed, "seed", minimum=-(2**63), maximum=2**64 - 3),  # seed + 2 too
        checkpoint=_optional_path(checkpoint, "checkpoint"),
        checkpoint_every=check_int(checkpoint_every, "checkpoint_every", minimum=1),
        resume=bool(check_choice(resume, "resume", (True, False))),
        progress=bool(check_choice(progress, "progress", (True, False))),
        callback=_check_callable(callback, "callback", "callback(step, loss, model)"),
        model_kwargs_fn=_check_callable(
            model_kwargs_fn, "model_kwargs_fn", "model_kwargs_fn(batch) -> dict"
        ),
        loss_kwargs=dict(loss_kwargs or {}),
    )


def _optional_ema_decay(value: Any) -> float | None:
    if value is None:
        return None
    value = check_real(value, "ema_decay", minimum=0.0)
    if not value < 1.0:
        raise ValueError(f"ema_decay must be in [0, 1) or None, got {value}")
    return value


def _check_model(model: Any) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of ``model``'s parameters (the batches are moved to them)."""
    if not isinstance(model, Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    param = next(model.parameters(), None)
    if param is None:
        raise ValueError("model has no parameters")
    return param.dtype, param.device


def _check_samples(value: Any, name: str, rows: str) -> Tensor:
    """A floating-point tensor ``[n, *event]`` with ``n >= 1`` and finite values."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor [{rows}, *event], got {describe(value)}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {value.dtype}")
    if value.dim() < 2 or value.shape[0] < 1:
        raise ValueError(f"{name} must have shape [{rows}, *event], got {tuple(value.shape)}")
    check_tensor(value, name, values=True)
    return check_finite(value, name)


def _make_draw(
    data: Any, global_batch: int, dtype: torch.dtype, device: torch.device
) -> Callable[[torch.Generator], Tensor]:
    """Data preparation: ``draw(generator)``, the global batch of one step."""
    if isinstance(data, Tensor):
        samples = _check_samples(data, "data", "n").to(device=device, dtype=dtype)

        def draw(generator: torch.Generator) -> Tensor:
            index = torch.randint(samples.shape[0], (global_batch,), generator=generator)
            return samples[index.to(device)]

        return draw
    if not callable(data):
        raise TypeError(f"data must be a Tensor or a callable, got {type(data).__name__}")

    def draw_from(generator: torch.Generator) -> Tensor:
        batch = data(global_batch, generator)
        if not isinstance(batch, Tensor):
            raise TypeError(f"data must return a Tensor, got {type(batch).__name__}")
        return check_finite(batch.to(device=device, dtype=dtype), "data (the drawn batch)")

    return draw_from


def _make_loss(options: _Options, noisy: Any, device: torch.device) -> Callable[..., Tensor]:
    """The loss as ``loss_fn(score_fn, batch, generator=...)``."""
    loss_kwargs = dict(options.loss_kwargs)
    if noisy is not None:
        loss_kwargs["noisy"] = check_tensor(noisy, "noisy").to(device)
    if options.loss == "dsm":
        return partial(denoising_score_matching, sigma=options.sigma, **loss_kwargs)
    if options.loss == "implicit":
        return partial(implicit_score_matching, **loss_kwargs)
    return partial(sliced_score_matching, **loss_kwargs)


def _load_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at ``path`` (on the CPU), or ``None`` when there is none yet; the
    temporaries of writes killed before their rename are removed."""
    remove_stale_temporaries(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or foreign file: name it
        raise ValueError(
            f"checkpoint {path} cannot be read as a train_score checkpoint: {err}"
        ) from err


def _model_kwargs(kwargs_fn: Callable | None, batch: Tensor) -> dict[str, Any]:
    """``model_kwargs_fn(batch)``, checked to be a dict (``{}`` without one)."""
    if kwargs_fn is None:
        return {}
    kwargs = kwargs_fn(batch)
    if not isinstance(kwargs, dict):
        raise TypeError(f"model_kwargs_fn must return a dict, got {describe(kwargs)}")
    return kwargs


def _bind(model: Module, kwargs_fn: Callable | None, batch: Tensor) -> Callable[..., Tensor]:
    """The model with the keyword arguments of ``batch`` bound (the model itself without)."""
    if kwargs_fn is None:
        return model
    return partial(model, **_model_kwargs(kwargs_fn, batch))


def _metrics(metrics: dict[Any, Any]) -> dict[str, float]:
    """``eval_fn``'s metrics as ``{str: float}``."""
    record = {}
    for key, value in metrics.items():
        try:
            record[str(key)] = float(value)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(
                f"eval_fn must return {{name: float}}, got {key!r}: {describe(value)}"
            ) from None
    return record


class _Monitor:
    """Held-out monitoring: the loss (and ``eval_fn``) on held-out samples, history, best."""

    def __init__(
        self,
        eval_data: Any,
        data: Any,
        *,
        eval_every: Any,
        eval_batch_size: Any,
        eval_fn: Any,
        best_checkpoint: Any,
        batch_size: int,
        dtype: torch.dtype,
        device: torch.device,
    ) -> None:
        self.every = check_int(eval_every, "eval_every", minimum=1)
        if eval_batch_size is None:
            eval_batch_size = batch_size
        self.batch_size = check_int(eval_batch_size, "eval_batch_size", minimum=1)
        self.samples = None
        if eval_data is not None:
            eval_data = _check_samples(eval_data, "eval_data", "m")
            if isinstance(data, Tensor) and eval_data.shape[1:] != data.shape[1:]:
                raise ValueError(
                    f"eval_data has event shape {tuple(eval_data.shape[1:])}, the training data "
                    f"{tuple(data.shape[1:])}"
                )
            self.samples = eval_data.to(device=device, dtype=dtype)
        elif eval_fn is not None or best_checkpoint is not None:
            raise ValueError("eval_fn and best_checkpoint need eval_data")
        self.eval_fn = _check_callable(eval_fn, "eval_fn", "eval_fn(model) -> dict")
        self.best_path = _optional_path(best_checkpoint, "best_checkpoint")
        self.generator = torch.Generator(device=device)
        self.history: list[dict[str, float]] = []
        self.best: dict[str, Any] = {"step": None, "loss": None, "state_dict": None}

    def due(self, step: int, steps: int) -> bool:
        return self.samples is not None and (step % self.every == 0 or step == steps)

    def heldout_loss(self, monitored: Module, options: _Options, loss_fn: Callable) -> float:
        """The mean loss over the held-out samples, with the draws of ``seed + 2``."""
        self.generator.manual_seed(options.seed + 2)
        total, count = 0.0, self.samples.shape[0]
        for first_row in range(0, count, self.batch_size):
            chunk = self.samples[first_row : first_row + self.batch_size]
            score_fn = _bind(monitored, options.model_kwargs_fn, chunk)
            value = loss_fn(score_fn, chunk, generator=self.generator)
            total += float(value.detach()) * chunk.shape[0]
        return total / count

    def evaluate(self, monitored: Module, step: int, options: _Options, loss_fn: Callable) -> None:
        """Held-out loss (and ``eval_fn``) of the weights the run returns, at ``step``."""
        was_training = monitored.training
        monitored.eval()
        record = {"step": step, "heldout_loss": self.heldout_loss(monitored, options, loss_fn)}
        if self.eval_fn is not None:
            with torch.no_grad():
                metrics = self.eval_fn(monitored)
            if not isinstance(metrics, dict):
                raise TypeError(f"eval_fn must return a dict, got {type(metrics).__name__}")
            record.update(_metrics(metrics))
        monitored.train(was_training)
        self.history.append(record)
        self._keep_best(monitored, step, record["heldout_loss"])

    def _keep_best(self, monitored: Module, step: int, heldout_loss: float) -> None:
        if self.best["loss"] is not None and not heldout_loss < self.best["loss"]:
            return
        self.best["step"], self.best["loss"] = step, heldout_loss
        self.best["state_dict"] = {k: v.detach().clone() for k, v in monitored.state_dict().items()}
        if self.best_path is not None:
            save_checkpoint(
                {"step": step, "heldout_loss": heldout_loss, "model": self.best["state_dict"]},
                self.best_path,
            )


class _Trainer:
    """The optimiser, EMA copy, scheduler and generators of a run, and its step loop."""

    def __init__(
        self,
        model: Module,
        options: _Options,
        draw: Callable[[torch.Generator], Tensor],
        loss_fn: Callable[..., Tensor],
        monitor: _Monitor,
        device: torch.device,
    ) -> None:
        self.model, self.options, self.draw = model, options, draw
        self.loss_fn, self.monitor = loss_fn, monitor
        self.world_size = get_world_size()
        self.global_batch = options.batch_size * self.world_size  # drawn on every rank
        self.rows = shard_bounds(self.global_batch)  # this rank's rows of it
        if is_distributed():  # every rank starts from rank 0's weights
            broadcast_module(model)
        self.generator = torch.Generator(device="cpu").manual_seed(options.seed)
        self.noise_generator = self.generator
        if device.type != "cpu":
            self.noise_generator = torch.Generator(device=device)
            self.noise_generator.manual_seed(options.seed + 1)
        self.optimizer = torch.optim.AdamW(
            model.parameters(), lr=options.lr, weight_decay=options.weight_decay
        )
        self.scheduler = self._scheduler()
        self.ema = copy.deepcopy(model) if options.ema_decay is not None else None
        if self.ema is not None:
            self.ema.requires_grad_(False)
        self.losses: list[float] = []
        self.start = 0

    def _scheduler(self) -> torch.optim.lr_scheduler.LRScheduler:
        if self.options.lr_schedule == "cosine":
            return torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, self.options.steps, eta_min=self.options.lr / 100
            )
        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda _: 1.0)

    # -- checkpoints -------------------------------------------------------------------------
    def state(self, step: int) -> dict[str, Any]:
        """Everything a resume needs, at ``step``."""
        options, ema = self.options, self.ema
        return {
            "step": step,
            "model": self.model.state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "generator": self.generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
            "losses": list(self.losses),
            "history": [dict(h) for h in self.monitor.history],
            "best": dict(self.monitor.best),
            "config": {
                "loss": options.loss,
                "steps": options.steps,
                "batch_size": options.batch_size,
                "world_size": self.world_size,
                "global_batch_size": self.global_batch,
                "seed": options.seed,
            },
        }

    def save(self, step: int) -> None:
        if self.options.checkpoint is not None:
            save_checkpoint(self.state(step), self.options.checkpoint)

    def resume(self) -> None:
        """Continue from ``options.checkpoint`` when it exists (rank 0 reads it and hands it to
        the others: no shared disk needed)."""
        path = self.options.checkpoint
        if self.monitor.best_path is not None and is_main():  # a kill inside its last save
            remove_stale_temporaries(self.monitor.best_path)
        if path is None or not self.options.resume:
            return
        saved = on_main(_load_checkpoint, path)
        if saved is None:
            return
        saved_batch = saved.get("config", {}).get("global_batch_size", self.global_batch)
        if saved_batch != self.global_batch:
            raise ValueError(
                f"batch_size: checkpoint {path} was written with a global batch of "
                f"{saved_batch} samples (batch_size x world_size), this run has "
                f"{self.global_batch}; resume with the same global batch"
            )
        self._restore(saved, path)

    def _restore(self, saved: dict[str, Any], path: Path) -> None:
        self.model.load_state_dict(saved["model"])
        if self.ema is not None:
            if saved["ema"] is None:
                raise ValueError(f"checkpoint {path} has no EMA weights but ema_decay is set")
            self.ema.load_state_dict(saved["ema"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.generator.set_state(saved["generator"].cpu())
        if self.noise_generator is not self.generator:
            self.noise_generator.set_state(saved["noise_generator"].cpu())
        self.losses = list(saved["losses"])
        self.monitor.history = list(saved.get("history", []))
        self.monitor.best.update(saved.get("best", {}))
        self.start = int(saved["step"])
        if self.start > self.options.steps:
            raise ValueError(
                f"checkpoint {path} is at step {self.start}, past steps = {self.options.steps}"
            )

    # -- the step loop -----------------------------------------------------------------------
    def _loss(self, batch: Tensor) -> tuple[Tensor, Tensor]:
        """This rank's loss on ``batch`` (backpropagated) and the global mean (logged)."""
        options = self.options
        if self.world_size == 1:
            score_fn = _bind(self.model, options.model_kwargs_fn, batch)
            value = self.loss_fn(score_fn, batch, generator=self.noise_generator)
            return value, value.detach()
        # this rank's share of the global mean; the shares sum to it
        first, last = self.rows
        kwargs = _model_kwargs(options.model_kwargs_fn, batch[first:last])
        sigma = options.sigma if options.loss == "dsm" else None
        score_fn = _RankRows(self.model, batch, first, last, sigma, kwargs)
        value = self.loss_fn(score_fn, batch, generator=self.noise_generator)
        return value, all_reduce(value.detach(), "sum")

    def step(self, step: int) -> float:
        """One optimisation step: draw, loss, gradient, clipping, AdamW, schedule, EMA."""
        batch = self.draw(self.generator)
        value, total = self._loss(batch)
        if not torch.isfinite(total):
            if not all_finite(batch):  # the data, not the model, is at fault
                raise ValueError(f"data: the batch of step {step} contains NaN or infinity")
            raise FloatingPointError(f"non-finite loss at step {step}: {float(total)}")
        self.optimizer.zero_grad(set_to_none=True)
        value.backward()
        all_reduce_gradients(self.model, op="sum")
        if self.options.clip_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.options.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        if self.ema is not None:
            _ema_update(self.ema, self.model, _ema_decay(self.options.ema_decay, step))
        self.losses.append(float(total))
        return self.losses[-1]

    def after_step(self, step: int) -> None:
        """Held-out evaluation, checkpoint and callback (which checkpoints when it raises)."""
        options = self.options
        if self.monitor.due(step, options.steps):
            monitored = self.ema if self.ema is not None else self.model
            self.monitor.evaluate(monitored, step, options, self.loss_fn)
        if step % options.checkpoint_every == 0 or step == options.steps:
            self.save(step)
        if options.callback is not None:
            try:
                options.callback(step, self.losses[-1], self.model)
            except BaseException:
                self.save(step)
                raise

    def run(self) -> None:
        """Steps ``start + 1 .. steps`` with a progress bar of the running-mean loss."""
        steps = self.options.steps
        self.model.train()
        show = self.options.progress and is_main()
        bar = tqdm(total=steps, initial=self.start, disable=not show,
                   desc=f"score ({self.options.loss})")  # fmt: skip
        running = None
        try:
            for step in range(self.start + 1, steps + 1):
                loss = self.step(step)
                running = loss if running is None else 0.98 * running + 0.02 * loss
                bar.update(1)
                if show and (step % 10 == 0 or step == steps):
                    bar.set_postfix(loss=f"{running:.4g}")
                self.after_step(step)
        finally:
            bar.close()

    def result(self) -> TrainResult:
        """The EMA weights swapped into the model (in eval mode), and the record of the run."""
        raw = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.ema is not None:
            self.model.load_state_dict(self.ema.state_dict())
        self.model.eval()
        best = self.monitor.best
        return TrainResult(
            model=self.model,
            losses=self.losses,
            raw_state_dict=raw,
            steps=self.options.steps,
            resumed_from=self.start,
            history=self.monitor.history,
            best_step=best["step"],
            best_loss=best["loss"],
            best_state_dict=best["state_dict"],
        )


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

    Raises:
        TypeError: an argument of the wrong type (the message names it).
        ValueError: an argument with a wrong value, e.g. ``data`` or ``eval_data`` holding NaN
            or infinity (tensors are checked up front, batches drawn from a callable at every
            step; with the finiteness checks off, see :func:`gtlib.validation.set_finite_checks`,
            a non-finite batch is still named when the loss turns out non-finite), or a
            checkpoint that cannot be read or was written with another global batch.
        FloatingPointError: a non-finite loss on finite data (the model diverged).
    """
    dtype, device = _check_model(model)
    options = _check_options(
        loss=loss, sigma=sigma, steps=steps, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, ema_decay=ema_decay, clip_grad_norm=clip_grad_norm,
        lr_schedule=lr_schedule, checkpoint=checkpoint, checkpoint_every=checkpoint_every,
        resume=resume, progress=progress, seed=seed, callback=callback,
        model_kwargs_fn=model_kwargs_fn, loss_kwargs=loss_kwargs,
    )  # fmt: skip
    monitor = _Monitor(
        eval_data, data, eval_every=eval_every, eval_batch_size=eval_batch_size,
        eval_fn=eval_fn, best_checkpoint=best_checkpoint, batch_size=options.batch_size,
        dtype=dtype, device=device,
    )  # fmt: skip
    draw = _make_draw(data, options.batch_size * get_world_size(), dtype, device)
    loss_fn = _make_loss(options, noisy, device)
    trainer = _Trainer(model, options, draw, loss_fn, monitor, device)
    trainer.resume()
    trainer.run()
    return trainer.result()
