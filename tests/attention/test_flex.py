"""Block patterns through one ``flex_attention`` call (``backends.dense.flex_block_attention``).

FlexAttention has no CPU backward, so on the CPU the forward is checked (flex's eager path)
against the scatter reference; values and gradients on a GPU run in the ``gpu`` tests.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from gtlib.attention import Pattern, sparse_attention
from gtlib.attention.backends.dense import dense_attention, flex_block_attention


def _qkv(n, heads=2, channels=4, device="cpu", dtype=torch.float64, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(n, heads, channels, generator=g, device=device, dtype=dtype)
            for _ in range(3)]  # fmt: skip


def _flex(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # flex's eager path warns that it is unfused
        return flex_block_attention(*args, **kwargs)


@pytest.mark.parametrize("with_bias", [False, True])
def test_mixed_graph_sizes_match_scatter(with_bias):
    batch = torch.tensor([0] * 5 + [1] * 3 + [2] * 5 + [3] * 7 + [4])  # sizes 5, 3, 5, 7, 1
    pattern = Pattern.full(batch)
    assert len(pattern.blocks) > 1  # several sizes: the case flex serves in one call
    q, k, v = _qkv(batch.numel())
    bias = torch.randn(pattern.num_edges, 2, dtype=torch.float64) if with_bias else None
    out = _flex(q, k, v, pattern, 0.5, bias, compiled=False)
    expected = sparse_attention(q, k, v, pattern, bias=bias, scale=0.5, mode="scatter")
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_windows_with_bias():
    """Windows of a grid: each block's nodes are not contiguous in the node order."""
    windows = Pattern.windows((6, 6), (3, 3))
    assert windows.block_starts() == [None]
    q, k, v = _qkv(36, seed=2)
    bias = torch.randn(windows.num_edges, 2, dtype=torch.float64)
    out = _flex(q, k, v, windows, 0.5, bias, compiled=False)
    expected = sparse_attention(q, k, v, windows, bias=bias, scale=0.5, mode="scatter")
    torch.testing.assert_close(out, expected)
    # the SDPA path agrees too, and dense_attention picks SDPA on the CPU
    torch.testing.assert_close(dense_attention(q, k, v, windows, 0.5, 0.0, bias), expected)


def test_no_blocks_gives_zeros():
    pattern = Pattern.full(torch.empty(0, dtype=torch.long))
    q, k, v = _qkv(0)
    assert _flex(q, k, v, pattern, 1.0, compiled=False).shape == (0, 2, 4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("with_bias", [False, True])
def test_cuda_flex_values_and_gradients(with_bias):
    sizes = torch.tensor([37, 5, 120, 64, 1, 300])
    batch = torch.repeat_interleave(torch.arange(sizes.numel()), sizes).cuda()
    pattern = Pattern.full(batch)
    q, k, v = (x.float().requires_grad_() for x in _qkv(batch.numel(), 4, 32, device="cuda"))
    bias = None
    if with_bias:
        bias = torch.randn(pattern.num_edges, 4, device="cuda", requires_grad=True)
    out = dense_attention(q, k, v, pattern, 0.2, 0.0, bias, flex=True)
    expected = sparse_attention(q, k, v, pattern, bias=bias, scale=0.2, mode="scatter")
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    grad = torch.randn_like(out)
    leaves = [x for x in (q, k, v, bias) if x is not None]
    for got, want in zip(torch.autograd.grad(out, leaves, grad),
                         torch.autograd.grad(expected, leaves, grad), strict=True):  # fmt: skip
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4)
