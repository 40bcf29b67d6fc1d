"""Window attention: softmax dot-product attention inside disjoint windows of a serialised order.

A window is a run ``ptr[w]:ptr[w + 1]`` of serial positions; position ``t`` is row ``index[t]``
of the ``[N, H, C]`` inputs (row ``t`` without ``index``), and every token of a window attends
to every token of it (itself included). Octree windows (:meth:`Pattern.octree
<gtlib.attention.Pattern.octree>`) and every block pattern (:meth:`Pattern.windows`,
:meth:`Pattern.full`, ...) are of this form, and the dense backend sends block patterns of small
blocks here (:func:`window_attention`).

Two implementations compute the same thing:

- a fused CPU kernel (``csrc/window_attention.cpp``, OpenMP, parallel over windows): no gather,
  no padding and nothing of size ``L x s`` (window ``s``) kept for the backward, which recomputes
  the scores from the forward's log-sum-exp ``[L, H]``. It is built on first use and cached like
  the fused sparse kernel (:mod:`gtlib.attention.backends.cpu`: the same build directory and the
  same switch ``GTLIB_FUSED_CPU``: ``0`` never builds, ``1`` requires it, ``auto`` warns once and
  falls back);
- pure torch (:func:`padded_window_attention`): windows padded to the largest size, a key mask,
  batched matmuls in chunks of windows (bounded memory), autograd for the backward. Used without
  the compiled kernel, off the CPU, and for float16/bfloat16.
"""

from __future__ import annotations

import math
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from gtlib.attention.backends import cpu
from gtlib.attention.backends._autograd import differentiable_backward
from gtlib.validation import check_index, check_tensor

SOURCE = Path(__file__).resolve().parent / "csrc" / "window_attention.cpp"
# Largest window the dense backend routes to window attention (beyond it: SDPA per block size;
# measured: SDPA is about 2x faster per block from 128 nodes on).
MAX_WINDOW = 128
# Scores held at once by the padded implementation: windows x heads x size x size (chunks).
PADDED_CHUNK_SCORES = 1 << 24

_LAYOUT = "windows.layout"  # the key of the window layout in Pattern.derived


# ---------------------------------------------------------------------------------- building
def available() -> bool:
    """Whether the compiled window kernel is usable; builds (or loads) it on the first call.

    Follows ``GTLIB_FUSED_CPU`` like :func:`gtlib.attention.backends.cpu.available` (same build
    cache, flags and fallback rules).
    """
    return _STATE.available()


def build_info() -> dict | None:
    """How the extension was obtained (keys as :func:`gtlib.attention.backends.cpu.build_info`),
    ``{"error": ...}`` after a failed build, ``None`` before the first use."""
    return _STATE.build_info()


def _smoke_test(module: ModuleType) -> None:
    """One window of two tokens against a hand computation (a broken build counts as missing)."""
    q = torch.tensor([[[1.0, 0.0]], [[0.0, 0.0]]])
    k = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    v = torch.tensor([[[1.0]], [[3.0]]])
    out, lse = module.forward(q, k, v, torch.tensor([0, 2]), torch.empty(0, dtype=torch.long), 1.0)
    e = math.e
    if (
        abs(float(out[0, 0, 0]) - (e + 3.0) / (e + 1.0)) > 1e-5
        or abs(float(out[1, 0, 0]) - 2.0) > 1e-5
        or abs(float(lse[0, 0]) - math.log(e + 1.0)) > 1e-5
    ):
        raise RuntimeError("the compiled window kernel failed its self-test")


_STATE = cpu._State(
    prefix="gtlib_window_cpu",
    source=SOURCE,
    smoke_test=_smoke_test,
    what="window attention kernel",
    owner="gtlib.attention.backends.windows",
)


# ---------------------------------------------------------------------------------- public API
def window_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    ptr: Tensor,
    index: Tensor | None = None,
    scale: float | None = None,
    compiled: bool | None = None,
) -> Tensor:
    r"""Softmax attention inside windows: for serial positions :math:`t, u` of window
    :math:`w` (``ptr[w] <= t, u < ptr[w + 1]``) and rows :math:`i = \mathrm{index}[t]`,
    :math:`j = \mathrm{index}[u]`,
    :math:`o_i = \sum_j \mathrm{softmax}_j(\text{scale}\; q_i \cdot k_j)\, v_j`.

    Args:
        query: ``[N, H, C]``.
        key: ``[N, H, C]``.
        value: ``[N, H, C_v]``.
        ptr: ``[W + 1]`` int64 window offsets in serial positions, non-decreasing from 0.
        index: ``[L]`` int64 row of every serial position (``L = ptr[-1]``), each row at most
            once (``None``: position ``t`` is row ``t``, ``L <= N``). Rows in no window get zeros.
        scale: score multiplier (default ``1 / sqrt(C)``).
        compiled: use the compiled CPU kernel (``None``: when :func:`available` and the inputs
            are float32/float64 CPU tensors; ``False``: :func:`padded_window_attention`).

    Returns:
        ``[N, H, C_v]``, differentiable in ``query``, ``key`` and ``value`` (the kernel's backward
        is first order; with ``create_graph=True`` it differentiates
        :func:`padded_window_attention` instead, so higher derivatives are exact).

    Shapes:
        - **input:** query, key :math:`(N, H, C)`, value :math:`(N, H, C_v)`, ptr
          :math:`(W + 1)`, index :math:`(L)`.
        - **output:** :math:`(N, H, C_v)`.
    """
    _check(query, key, value, ptr, index)
    if scale is None:
        scale = query.size(-1) ** -0.5
    native = query.device.type == "cpu" and query.dtype in (torch.float32, torch.float64)
    if compiled is None:
        compiled = native and available()
    elif compiled and not (native and available()):
        raise ValueError("compiled=True needs float32/float64 CPU tensors and the built kernel")
    if not compiled:
        return padded_window_attention(query, key, value, ptr, index, scale)
    empty = torch.empty(0, dtype=torch.long)
    return _WindowAttention.apply(query.contiguous(), key.contiguous(), value.contiguous(),
                                  ptr.contiguous(), empty if index is None else index.contiguous(),
                                  float(scale))  # fmt: skip


def padded_window_attention(
    query: Tensor,
    key: Tensor,
    value: Tensor,
    ptr: Tensor,
    index: Tensor | None = None,
    scale: float | None = None,
) -> Tensor:
    """:func:`window_attention` in pure torch: windows padded to the largest one, padded keys
    masked, batched matmuls over chunks of windows (at most :data:`PADDED_CHUNK_SCORES` scores
    at once), autograd for the backward."""
    _check(query, key, value, ptr, index)
    if scale is None:
        scale = query.size(-1) ** -0.5
    n, heads = query.size(0), query.size(1)
    sizes = ptr[1:] - ptr[:-1]
    starts, sizes = ptr[:-1][sizes > 0], sizes[sizes > 0]  # empty windows: nothing to do
    num_windows = sizes.numel()
    if num_windows == 0:
        return value.new_zeros(n, heads, value.size(-1))
    largest = int(sizes.max())
    chunk = max(1, PADDED_CHUNK_SCORES // (heads * largest * largest))
    offsets = torch.arange(largest, device=ptr.device)
    outputs, rows = [], []
    for begin in range(0, num_windows, chunk):
        first, counts = starts[begin : begin + chunk], sizes[begin : begin + chunk]
        valid = offsets < counts[:, None]  # [w, s]
        position = torch.where(valid, first[:, None] + offsets, first[:, None])
        row = position if index is None else index[position]
        q, k, v = (x[row].transpose(1, 2) for x in (query, key, value))  # [w, H, s, C]
        scores = torch.matmul(q, k.transpose(-1, -2)) * scale
        scores = scores.masked_fill(~valid[:, None, None, :], float("-inf"))
        out = torch.matmul(torch.softmax(scores, dim=-1), v).transpose(1, 2)  # [w, s, H, C]
        outputs.append(out[valid])
        rows.append(row[valid])
    out, rows = torch.cat(outputs), torch.cat(rows)
    return value.new_zeros(n, heads, value.size(-1)).index_copy(0, rows, out.to(value.dtype))


def block_layout(pattern) -> tuple[Tensor, Tensor | None, int]:
    """A block pattern as windows: ``(ptr, index, largest block)``, ``index`` ``None`` when the
    blocks are the nodes ``0..N-1`` in order. Kept with the pattern (:meth:`Pattern.derived`)."""

    def build() -> tuple[Tensor, Tensor | None, int]:
        blocks = pattern.blocks
        device = blocks[0].device if blocks else torch.device("cpu")
        sizes = torch.cat([
            torch.full((block.size(0),), block.size(1), dtype=torch.long, device=device)
            for block in blocks
        ]) if blocks else torch.zeros(0, dtype=torch.long, device=device)  # fmt: skip
        ptr = torch.zeros(sizes.numel() + 1, dtype=torch.long, device=device)
        torch.cumsum(sizes, 0, out=ptr[1:])
        index = torch.cat([block.reshape(-1) for block in blocks]) if blocks else None
        if index is not None and index.numel() <= pattern.num_src:
            if torch.equal(index, torch.arange(index.numel(), device=device)):
                index = None
        largest = int(sizes.max()) if sizes.numel() else 0
        return ptr, index, largest

    return pattern.derived(_LAYOUT, build)


class _WindowAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, query, key, value, ptr, index, scale):
        out, lse = _STATE.kernels().forward(query, key, value, ptr, index, scale)
        ctx.save_for_backward(query, key, value, lse, ptr, index)
        ctx.scale = scale
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, value, lse, ptr, index = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph=True: gradients that differentiate again
            rows = None if index.numel() == 0 else index
            dq, dk, dv = differentiable_backward(
                lambda q, k, v: padded_window_attention(q, k, v, ptr, rows, ctx.scale),
                (query, key, value), ctx.needs_input_grad[:3], grad_out,
            )  # fmt: skip
            return dq, dk, dv, None, None, None
        dq, dk, dv = _STATE.kernels().backward(
            grad_out.contiguous(), query, key, value, lse, ptr, index, ctx.scale
        )
        return dq, dk, dv, None, None, None


def _check(query, key, value, ptr, index) -> None:
    for name, x in (("query", query), ("key", key), ("value", value)):
        check_tensor(x, name, floating=True, dim=3)
    if key.shape != query.shape or value.shape[:2] != query.shape[:2]:
        raise ValueError(
            f"key must have the shape of query {list(query.shape)} and value the same [N, H], "
            f"got key {list(key.shape)}, value {list(value.shape)}"
        )
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise TypeError("query, key and value must share a dtype")
    for name, x in (("ptr", ptr), ("index", index)):
        if x is None:
            continue
        check_tensor(x, name, dim=1, device=query.device, values=True)
        if x.dtype != torch.long:
            raise TypeError(f"{name} must be an int64 tensor, got {x.dtype}")
    if ptr.numel() == 0 or int(ptr[0]) != 0 or bool((ptr[1:] < ptr[:-1]).any()):
        raise ValueError("ptr must be non-decreasing from 0 ([W + 1] window offsets)")
    length = int(ptr[-1])
    if index is None:
        if length > query.size(0):
            raise ValueError(f"ptr[-1] = {length} exceeds the {query.size(0)} rows (no index)")
    elif index.numel() != length:
        raise ValueError(f"index must hold ptr[-1] = {length} rows, got {index.numel()}")
    else:
        check_index(index, "index", query.size(0))


def routes(query: Tensor, pattern) -> bool:
    """Whether the dense backend sends ``pattern`` (a block pattern) to the compiled window kernel:
    float32/float64 CPU inputs, blocks of three sizes or more (one or two sizes are one or two
    SDPA calls, faster than the kernel), of at most :data:`MAX_WINDOW` nodes, the kernel built."""
    if query.device.type != "cpu" or query.dtype not in (torch.float32, torch.float64):
        return False
    if not pattern.blocks or len(pattern.blocks) < 3 or pattern.num_src != pattern.num_dst:
        return False
    if max(block.size(1) for block in pattern.blocks) > MAX_WINDOW:
        return False
    return available()


def register_layout(pattern, ptr: Tensor, index: Tensor | None) -> None:
    """Records the window layout of a block pattern whose blocks are the windows
    ``ptr[w]:ptr[w + 1]`` of ``index`` (so that :func:`block_layout` keeps that order, e.g. an
    octree's serialisation, instead of grouping the blocks by size). Call it before the
    pattern's first use; the windows must be the pattern's blocks."""
    sizes = ptr[1:] - ptr[:-1]
    largest = int(sizes.max()) if sizes.numel() else 0
    expected = sum(block.numel() for block in pattern.blocks)
    if int(ptr[-1]) != expected or largest > max((b.size(1) for b in pattern.blocks), default=0):
        raise ValueError("the window layout does not cover the pattern's blocks")
    if index is not None and torch.equal(index, torch.arange(index.numel(), device=index.device)):
        index = None
    pattern.derived(_LAYOUT, lambda: (ptr, index, largest))
