"""Double backward (create_graph=True) through the first-order compiled kernels.

The compiled kernels compute their gradients outside autograd; asked for a graph they
differentiate a recomputation instead. Checked against the all-edges scatter mode (plain torch
operations) in float64 and with ``gradgradcheck``.
"""

from __future__ import annotations

import pytest
import torch

from gtlib.attention import Pattern, sparse_attention
from gtlib.attention.backends import cpu

pytestmark = pytest.mark.skipif(not cpu.available(), reason="the compiled CPU kernel is not built")


def _problem(score: str, seed: int = 0, n: int = 7, heads: int = 2, channels: int = 3):
    gen = torch.Generator().manual_seed(seed)
    src = torch.randint(0, n, (3 * n,), generator=gen)
    dst = torch.randint(0, n, (3 * n,), generator=gen)
    pattern = Pattern.from_edge_index(torch.stack([src, dst]), num_nodes=n)

    def leaf(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    q, k, v = leaf(n, heads, channels), leaf(n, heads, channels), leaf(n, heads, channels)
    bias = leaf(pattern.num_edges, heads)
    att = leaf(heads, channels) if score == "gatv2" else None
    return pattern, q, k, v, bias, att


def _attend(mode, pattern, q, k, v, bias, att, score):
    return sparse_attention(q, k, v, pattern, score=score, att=att, bias=bias, mode=mode)


@pytest.mark.parametrize("score", ["dot", "gatv2"])
def test_gradient_penalty_matches_scatter_mode(score):
    pattern, q, k, v, bias, att = _problem(score)
    inputs = [x for x in (q, k, v, bias, att) if x is not None]
    weight = torch.randn(q.shape[0], q.shape[1], v.shape[2], dtype=torch.float64)
    results = {}
    for mode in ("fused", "scatter"):
        out = _attend(mode, pattern, q, k, v, bias, att, score)
        first = torch.autograd.grad((out * weight).sum(), inputs, create_graph=True)
        penalty = sum((g**2).sum() for g in first)
        results[mode] = torch.autograd.grad(penalty, inputs)
    for fused, scatter in zip(results["fused"], results["scatter"]):
        torch.testing.assert_close(fused, scatter, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("score", ["dot", "gatv2"])
def test_gradgradcheck(score):
    pattern, q, k, v, bias, att = _problem(score, seed=1, n=5)
    extra = (att,) if att is not None else ()

    def fn(q, k, v, bias, *att):
        return _attend("fused", pattern, q, k, v, bias, att[0] if att else None, score)

    assert torch.autograd.gradgradcheck(fn, (q, k, v, bias, *extra))


def test_first_order_backward_keeps_the_kernel():
    # without create_graph the gradients come from the compiled backward: no graph attached
    pattern, q, k, v, bias, _ = _problem("dot", seed=2)
    out = _attend("fused", pattern, q, k, v, bias, None, "dot")
    grads = torch.autograd.grad(out.sum(), (q, k))
    assert all(g.grad_fn is None for g in grads)
    reference = torch.autograd.grad(
        _attend("scatter", pattern, q, k, v, bias, None, "dot").sum(), (q, k)
    )
    for g, r in zip(grads, reference):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)


def test_window_kernel_double_backward_matches_padded():
    from gtlib.attention.backends import windows

    if not windows.available():
        pytest.skip("the compiled window kernel is not built")
    gen = torch.Generator().manual_seed(3)
    n, heads, channels = 11, 2, 3
    ptr = torch.tensor([0, 3, 4, 8, 10])  # windows of 3, 1, 4 and 2 tokens; row 10 in none
    index = torch.randperm(n, generator=gen)[:10]

    def leaf():
        return torch.randn(n, heads, channels, generator=gen, dtype=torch.float64).requires_grad_()

    q, k, v = leaf(), leaf(), leaf()
    weight = torch.randn(n, heads, channels, generator=gen, dtype=torch.float64)
    results = []
    for compiled in (True, False):
        out = windows.window_attention(q, k, v, ptr, index, compiled=compiled)
        first = torch.autograd.grad((out * weight).sum(), (q, k, v), create_graph=True)
        penalty = sum((g**2).sum() for g in first)
        results.append(torch.autograd.grad(penalty, (q, k, v)))
    for kernel, padded in zip(*results):
        torch.testing.assert_close(kernel, padded, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradgradcheck(
        lambda q, k, v: windows.window_attention(q, k, v, ptr, index, compiled=True), (q, k, v)
    )
