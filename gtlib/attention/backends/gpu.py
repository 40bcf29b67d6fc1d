"""The GPU backend of the sparse-attention core: fused Triton kernels (FlashAttention over a CSR).

For every receiver ``i`` and head ``h`` one program walks the receiver's senders (the pattern's
receiver-sorted CSR) in tiles of ``BLOCK_E`` edges: it gathers the key rows, forms the scores
(dot or additive, per-edge key term, scale, bias), keeps an online softmax (running maximum and
sum) and accumulates the weighted value rows (per-edge value term, dropout) in registers. Nothing
per edge is written: the forward keeps the output and one log-sum-exp per receiver and head.

The backward recomputes the scores tile by tile from the log-sum-exp (FlashAttention-2's
``D_i = dO_i . O_i`` trick, which holds with dropout too), accumulates the query gradient per
receiver in registers and adds the key and value gradients into their rows with atomic adds
(float32 accumulators, so their summation order, and the last bits, can differ between runs).
Per-edge gradients (key/value terms, bias) are written straight to their edges.

**Skewed degrees.** Receivers with more than ``split`` senders are cut into several work items
of at most ``split`` edges, each with its own program; the forward combines the items of a
receiver with their log-sum-exps (a softmax of partial softmaxes), the backward adds them with
the same atomics. A star graph's hub therefore runs on many programs, not one.

**Dropout** draws its keep mask from a counter-based generator (Philox, ``tl.rand``) seeded per
call and indexed by edge and head, so the backward regenerates it instead of storing it.

**Precision.** Inputs are read in their dtype (float32, bfloat16, float16) and everything is
accumulated in float32; the output and the gradients are cast back to the inputs' dtypes.

**Testing without a GPU.** With ``TRITON_INTERPRET=1`` Triton runs these kernels on CPU tensors
(slowly, one program after another); the kernels are made when first needed for a given
interpreter setting, so tests can switch it on after import.

Per-edge tensors here are in the pattern's receiver-sorted order (``pattern.to_sorted``).
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from gtlib.attention.pattern import Pattern

#: Receivers with more senders than this are split into several work items (programs).
DEFAULT_SPLIT = 1024
_LOW_PRECISION = (torch.float16, torch.bfloat16)
_SCORES = {"dot": 0, "additive": 1}


def interpreting() -> bool:
    """Whether Triton's interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on")


def available(device: torch.device | str | None = None) -> bool:
    """Whether the Triton kernels can run on ``device``: Triton is installed and the device is a
    CUDA device, or the interpreter is on and the device is the CPU."""
    if importlib.util.find_spec("triton") is None:
        return False
    device = torch.device(device) if device is not None else None
    if interpreting():
        return device is None or device.type == "cpu"
    return torch.cuda.is_available() and (device is None or device.type == "cuda")


# ------------------------------------------------------------------------------------ kernels
_KERNELS = Path(__file__).resolve().parent / "_triton_kernels.py"


@functools.cache
def kernels(interpret: bool) -> ModuleType:
    """The module of jitted kernels, loaded once per interpreter setting (Triton reads
    ``TRITON_INTERPRET`` when it decorates a kernel, so tests can switch it on after import)."""
    name = f"gtlib_triton_kernels_{'interpreted' if interpret else 'compiled'}"
    spec = importlib.util.spec_from_file_location(name, _KERNELS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ------------------------------------------------------------------------------- the schedule
@dataclass
class _Schedule:
    """Work items (receiver, first edge, end edge) with at most ``split`` edges each."""

    dst: Tensor
    start: Tensor
    end: Tensor
    split: bool  # whether any receiver has several items

    @property
    def size(self) -> int:
        return self.dst.numel()


def _schedule(pattern: Pattern, split: int) -> _Schedule:
    ptr = pattern.ptr
    num_dst = pattern.num_dst
    receivers = torch.arange(num_dst, device=ptr.device)
    if pattern.num_dst == 0 or pattern.max_degree <= split:
        return _Schedule(receivers, ptr[:-1], ptr[1:], False)
    degree = ptr[1:] - ptr[:-1]
    pieces = ((degree + split - 1) // split).clamp_(min=1)
    dst = receivers.repeat_interleave(pieces)
    first = torch.cumsum(pieces, 0) - pieces
    rank = torch.arange(dst.numel(), device=ptr.device) - first.index_select(0, dst)
    start = ptr[:-1].index_select(0, dst) + rank * split
    end = torch.minimum(start + split, ptr[1:].index_select(0, dst))
    return _Schedule(dst, start, end, True)


def _blocks(pattern: Pattern, channels: int, value_channels: int) -> dict:
    """Tile sizes: channels padded to a power of two; edges per tile near the mean degree (a
    receiver of average degree takes one tile), at most 4,096 elements per gathered tile."""
    import triton

    block_c = triton.next_power_of_2(max(channels, 1))
    block_v = triton.next_power_of_2(max(value_channels, 1))
    widest = max(block_c, block_v)
    mean_degree = pattern.num_edges / max(pattern.num_dst, 1)
    block_e = triton.next_power_of_2(max(int(math.ceil(mean_degree)), 1))
    block_e = max(16, min(block_e, 4096 // widest, 128))
    return dict(BLOCK_E=block_e, BLOCK_C=block_c, BLOCK_CV=block_v)


# ----------------------------------------------------------------------------- the function
@dataclass
class _Config:
    pattern: Pattern
    schedule: _Schedule
    score: int
    negative_slope: float | None
    scale: float
    dropout: float
    seed: int
    blocks: dict  # tile sizes (BLOCK_E, BLOCK_C, BLOCK_CV)

    def flags(self, ke, ve, bias) -> dict:
        return dict(
            SCORE=self.score, HAS_SLOPE=self.negative_slope is not None, HAS_KE=ke is not None,
            HAS_VE=ve is not None, HAS_BIAS=bias is not None, DROPOUT=self.dropout > 0,
        )  # fmt: skip

    def scalars(self) -> tuple:
        slope = 0.0 if self.negative_slope is None else float(self.negative_slope)
        return (float(self.scale), slope, int(self.seed), float(self.dropout))


def _contiguous(x: Tensor | None) -> Tensor | None:
    return None if x is None else x.contiguous()


def _forward(cfg: _Config, q, k, v, att, ke, ve, bias) -> tuple[Tensor, Tensor]:
    pattern, schedule = cfg.pattern, cfg.schedule
    heads, channels, value_channels = q.size(1), q.size(2), v.size(2)
    items = schedule.size
    out = torch.empty(items, heads, value_channels, device=q.device, dtype=torch.float32)
    lse = torch.empty(items, heads, device=q.device, dtype=torch.float32)
    if items and heads:
        dummy = q
        kernels(interpreting()).forward_kernel[(items, heads)](
            q, k, v, att if att is not None else dummy, ke if ke is not None else dummy,
            ve if ve is not None else dummy, bias if bias is not None else dummy, pattern.col,
            schedule.dst, schedule.start, schedule.end, out, lse,
            heads, channels, value_channels, *cfg.scalars(),
            **cfg.flags(ke, ve, bias), **cfg.blocks,
        )  # fmt: skip
    if not schedule.split:
        return out, lse
    # a softmax of the items' partial softmaxes
    index = schedule.dst
    total = lse.new_full((pattern.num_dst, heads), float("-inf"))
    total.scatter_reduce_(0, index[:, None].expand(-1, heads), lse, "amax")
    safe = torch.where(torch.isinf(total), torch.zeros_like(total), total)
    weight = (lse - safe.index_select(0, index)).exp_()
    norm = lse.new_zeros(pattern.num_dst, heads).index_add_(0, index, weight)
    combined = out.new_zeros(pattern.num_dst, heads, value_channels)
    combined.index_add_(0, index, out * weight[..., None])
    positive = norm > 0
    combined = torch.where(positive[..., None], combined / norm.clamp(min=1e-38)[..., None], 0.0)
    lse_all = torch.where(positive, safe + norm.clamp(min=1e-38).log(), total)
    return combined, lse_all


class _TritonAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cfg: _Config, q, k, v, att, ke, ve, bias):
        out, lse = _forward(cfg, q, k, v, att, ke, ve, bias)
        ctx.cfg = cfg
        ctx.save_for_backward(q, k, v, att, ke, ve, bias, out, lse)
        return out.to(v.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        cfg: _Config = ctx.cfg
        q, k, v, att, ke, ve, bias, out, lse = ctx.saved_tensors
        needs = ctx.needs_input_grad[1:]
        if not any(needs):
            return (None,) * 8
        grads = _backward(cfg, q, k, v, att, ke, ve, bias, out, lse, grad_out)
        return (None, *(g if need else None for g, need in zip(grads, needs, strict=True)))


def _backward(cfg: _Config, q, k, v, att, ke, ve, bias, out, lse, grad_out) -> tuple:
    pattern, schedule = cfg.pattern, cfg.schedule
    heads, channels, value_channels = q.size(1), q.size(2), v.size(2)
    grad_out = grad_out.contiguous()
    delta = (grad_out.float() * out).sum(-1).contiguous()  # D_i = dO_i . O_i

    def zeros(like: Tensor | None, rows: int | None = None) -> Tensor | None:
        if like is None:
            return None
        shape = (rows, *like.shape[1:]) if rows is not None else like.shape
        return torch.zeros(shape, device=like.device, dtype=torch.float32)

    dq, dk, dv = zeros(q), zeros(k), zeros(v)
    datt = zeros(q, schedule.size) if att is not None else None
    dke, dve = zeros(ke), zeros(ve)
    dbias = zeros(bias)
    if schedule.size and heads and pattern.num_edges:
        dummy = dq
        kernels(interpreting()).backward_kernel[(schedule.size, heads)](
            q, k, v, att if att is not None else q, ke if ke is not None else q,
            ve if ve is not None else q, bias if bias is not None else q, pattern.col,
            schedule.dst, schedule.start, schedule.end, lse, delta, grad_out,
            dq, dk, dv, datt if datt is not None else dummy, dke if dke is not None else dummy,
            dve if dve is not None else dummy, dbias if dbias is not None else dummy, dummy,
            heads, channels, value_channels, *cfg.scalars(),
            **cfg.flags(ke, ve, bias), WEIGHTS_ONLY=False, **cfg.blocks,
        )  # fmt: skip
    if datt is not None:
        datt = datt.sum(0)

    def cast(grad: Tensor | None, like: Tensor | None) -> Tensor | None:
        return None if grad is None else grad.to(like.dtype)

    return tuple(
        cast(g, x)
        for g, x in ((dq, q), (dk, k), (dv, v), (datt, att), (dke, ke), (dve, ve), (dbias, bias))
    )


def _config(pattern, score, negative_slope, scale, dropout, split, channels, value_channels):
    if score not in _SCORES:
        raise ValueError(f"the Triton backend takes score='dot' or 'additive', got {score!r}")
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item()) if dropout > 0 else 0
    return _Config(pattern, _schedule(pattern, split), _SCORES[score], negative_slope, scale,
                   float(dropout), seed, _blocks(pattern, channels, value_channels))  # fmt: skip


def triton_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    pattern: Pattern,
    *,
    score: str = "dot",
    att: Tensor | None = None,
    negative_slope: float | None = 0.2,
    key_edge: Tensor | None = None,
    value_edge: Tensor | None = None,
    bias: Tensor | None = None,
    scale: float = 1.0,
    dropout: float = 0.0,
    split: int = DEFAULT_SPLIT,
    return_attention: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    r"""Softmax attention over ``pattern`` with the fused Triton kernels.

    For receiver :math:`i`, head :math:`h` and senders :math:`j \in N(i)`:
    :math:`s_{ij} = \text{scale} \cdot q_i \cdot (k_j + e^k_{ij})` (``score="dot"``) or
    :math:`\text{scale} \cdot a_h \cdot \mathrm{act}(q_i + k_j + e^k_{ij})` (``"additive"``,
    ``act`` a LeakyReLU with ``negative_slope``, ``None`` for identity), plus ``bias``;
    :math:`\alpha = \mathrm{softmax}_j(s)`, dropout on :math:`\alpha` (scaled by
    :math:`1/(1-p)`), :math:`o_i = \sum_j \alpha_{ij} (v_j + e^v_{ij})`. Receivers without senders
    get zeros. Differentiable in every tensor argument (first order).

    Shapes: ``query [N_dst, H, C]``, ``key [N_src, H, C]``, ``value [N_src, H, C_v]``,
    ``att [H, C]``, ``key_edge [E, H, C]``, ``value_edge [E, H, C_v]``, ``bias [E, H]``
    (per-edge tensors in the pattern's receiver-sorted order). Returns ``[N_dst, H, C_v]`` in the
    dtype of ``value`` and, with ``return_attention``, the weights ``[E, H]`` (float32, receiver-
    sorted order, before dropout). The engine (:func:`~gtlib.attention.attend`, ``mode="triton"``)
    validates the arguments; this function assumes valid input on one device.
    """
    cfg = _config(pattern, score, negative_slope, scale, dropout, split, query.size(-1),
                  value.size(-1))  # fmt: skip
    tensors = [_contiguous(x) for x in (query, key, value, att, key_edge, value_edge, bias)]
    out = _TritonAttention.apply(cfg, *tensors)
    if not return_attention:
        return out
    return out, triton_attention_weights(cfg, *tensors)


def triton_attention_weights(cfg: _Config, q, k, v, att, ke, ve, bias) -> Tensor:
    """Softmax weights ``[E, H]`` (receiver-sorted order, float32, detached)."""
    pattern = cfg.pattern
    heads, channels, value_channels = q.size(1), q.size(2), v.size(2)
    with torch.no_grad():
        _, lse = _forward(cfg, q, k, v, att, ke, ve, bias)
        weights = torch.zeros(pattern.num_edges, heads, device=q.device, dtype=torch.float32)
        if cfg.schedule.size and heads and pattern.num_edges:
            kernels(interpreting()).backward_kernel[(cfg.schedule.size, heads)](
                q, k, v, att if att is not None else q, ke if ke is not None else q,
                ve if ve is not None else q, bias if bias is not None else q, pattern.col,
                cfg.schedule.dst, cfg.schedule.start, cfg.schedule.end, lse, lse, q,
                weights, weights, weights, weights, weights, weights, weights, weights,
                heads, channels, value_channels, *cfg.scalars(),
                **cfg.flags(ke, ve, bias), WEIGHTS_ONLY=True, **cfg.blocks,
            )  # fmt: skip
    return weights
