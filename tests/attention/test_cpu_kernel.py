"""The fused CPU kernel (``gtlib.attention.backends.cpu``) against independent references.

The compiled-path tests skip when the extension cannot be built (or ``GTLIB_FUSED_CPU=0``); the
fallback, environment-variable and validation tests always run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gtlib.attention import Pattern, sparse_attention
from gtlib.attention.backends import cpu

REPO = Path(__file__).resolve().parents[2]
INPUTS = ("query", "key", "value", "att", "key_edge", "value_edge", "bias")


@pytest.fixture(scope="module")
def kernel():
    """The compiled kernel, or a skip saying why it is missing."""
    if cpu.setting() == "0":
        pytest.skip(f"{cpu.ENV_VAR}=0 disables the compiled kernel")
    if not cpu.available():
        pytest.skip(f"the fused CPU kernel could not be built: {cpu.build_info()}")
    return cpu


@pytest.fixture
def no_kernel(monkeypatch):
    """Forces the pure-torch fallback."""
    monkeypatch.setenv(cpu.ENV_VAR, "0")


# ------------------------------------------------------------------------------ references
def dense_reference(query, key, value, pattern, *, score="dot", att=None, negative_slope=0.2,
                    key_edge=None, value_edge=None, bias=None, scale=1.0):  # fmt: skip
    """Masked softmax over a dense ``[N_dst, E]`` score matrix (one column per receiver-sorted
    edge, so duplicate edges stay distinct): every receiver is scored against every edge and the
    edges of other receivers are masked with -inf. Differentiable; returns (out, weights)."""
    row, col = pattern.row, pattern.col
    num_dst, num_edges = query.size(0), col.numel()
    keys = key[col] if key_edge is None else key[col] + key_edge  # [E, H, C]
    if score == "dot":
        scores = torch.einsum("ihc,ehc->ieh", query, keys) * scale
    else:
        hidden = F.leaky_relu(query[:, None] + keys[None], negative_slope)  # [N, E, H, C]
        scores = (hidden * att).sum(-1) * scale
    if bias is not None:
        scores = scores + bias[None]
    mask = row[None, :] == torch.arange(num_dst)[:, None]  # [N, E]
    scores = scores.masked_fill(~mask[..., None], float("-inf"))
    top = scores.amax(1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    exp = torch.exp(scores - top)
    total = exp.sum(1, keepdim=True)
    alpha = exp / torch.where(total > 0, total, torch.ones_like(total))  # [N, E, H]
    values = value[col] if value_edge is None else value[col] + value_edge
    out = torch.einsum("ieh,ehc->ihc", alpha, values)
    return out, alpha[row, torch.arange(num_edges)]


def make_problem(seed, num_src=9, num_dst=11, num_edges=60, heads=2, channels=3,
                 value_channels=4, dtype=torch.float64, isolated=2):  # fmt: skip
    """Random receiver-sorted problem: duplicate edges, the last ``isolated`` receivers have no
    senders. Per-edge tensors are in the pattern's receiver-sorted order."""
    gen = torch.Generator().manual_seed(seed)
    senders = torch.randint(0, num_src, (num_edges,), generator=gen)
    receivers = torch.randint(0, max(num_dst - isolated, 1), (num_edges,), generator=gen)
    if num_edges >= 3:  # a guaranteed duplicate pair
        senders[1], receivers[1] = senders[0], receivers[0]
        senders[2], receivers[2] = senders[0], receivers[0]
    pattern = Pattern.from_edge_index(torch.stack([senders, receivers]), (num_src, num_dst))

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    tensors = dict(
        query=rand(num_dst, heads, channels),
        key=rand(num_src, heads, channels),
        value=rand(num_src, heads, value_channels),
        att=rand(heads, channels),
        key_edge=rand(num_edges, heads, channels),
        value_edge=rand(num_edges, heads, value_channels),
        bias=rand(num_edges, heads),
    )
    return pattern, tensors


def options(tensors, score, extras, scale=0.7):
    """Keyword arguments of fused_attention for a score and with or without per-edge terms."""
    kwargs = dict(score=score, scale=scale, negative_slope=0.3)
    if score != "dot":
        kwargs["att"] = tensors["att"]
    if extras:
        kwargs.update(
            key_edge=tensors["key_edge"], value_edge=tensors["value_edge"], bias=tensors["bias"]
        )
    return kwargs


def run_both(pattern, tensors, score, extras, dtype=None):
    """(fused output, fused weights, reference output, reference weights) in float64."""
    cast = (lambda x: x.to(dtype)) if dtype is not None else (lambda x: x)
    cast_tensors = {name: cast(x) for name, x in tensors.items()}
    kwargs = options(cast_tensors, score, extras)
    q, k, v = cast_tensors["query"], cast_tensors["key"], cast_tensors["value"]
    out = cpu.fused_attention(q, k, v, pattern, **kwargs)
    weights = cpu.fused_attention_weights(q, k, v, pattern, **kwargs)
    # the reference sees the same (rounded) values, in float64
    ref_kwargs = {n: x.double() if torch.is_tensor(x) else x for n, x in kwargs.items()}
    ref_out, ref_weights = dense_reference(q.double(), k.double(), v.double(), pattern,
                                           **ref_kwargs)  # fmt: skip
    return out, weights, ref_out, ref_weights


# ------------------------------------------------------------------------------ compiled kernel
@pytest.mark.parametrize("score", ["dot", "additive"])
@pytest.mark.parametrize("extras", [False, True])
@pytest.mark.parametrize("sizes", [(9, 11), (13, 5), (7, 7)], ids=["src<dst", "src>dst", "square"])
def test_matches_dense_reference_float64(kernel, score, extras, sizes):
    num_src, num_dst = sizes
    pattern, tensors = make_problem(0, num_src=num_src, num_dst=num_dst)
    out, weights, ref_out, ref_weights = run_both(pattern, tensors, score, extras)
    assert out.dtype == torch.float64 and out.shape == ref_out.shape
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-10, atol=1e-12)
    assert torch.all(out[-2:] == 0)  # receivers without senders
    # second reference: the library's scatter mode (per-edge tensors in the sorted order)
    kwargs = options(tensors, score, extras)
    kwargs["score"] = "gatv2" if score == "additive" else "dot"
    scatter = sparse_attention(tensors["query"], tensors["key"], tensors["value"],
                               cpu._sorted_view(pattern), mode="scatter", **kwargs)  # fmt: skip
    torch.testing.assert_close(out, scatter, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("score", ["dot", "additive"])
@pytest.mark.parametrize("extras", [False, True])
@pytest.mark.parametrize("channels", [32, 16, 5])  # specialised sizes and the generic loops
def test_matches_dense_reference_float32(kernel, score, extras, channels):
    # 5 heads: a group of 4 (the vectorized head reductions) and a remainder head
    pattern, tensors = make_problem(
        1, num_src=40, num_dst=30, num_edges=400, heads=5, channels=channels,
        value_channels=channels,
    )  # fmt: skip
    out, weights, ref_out, ref_weights = run_both(pattern, tensors, score, extras, torch.float32)
    assert out.dtype == torch.float32 and weights.dtype == torch.float32
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(weights.double(), ref_weights, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("score", ["dot", "additive"])
@pytest.mark.parametrize("extras", [False, True])
def test_gradcheck(kernel, score, extras):
    pattern, tensors = make_problem(2, num_src=6, num_dst=7, num_edges=20)
    names = [n for n in INPUTS if n in ("query", "key", "value")]
    if score != "dot":
        names.append("att")
    if extras:
        names += ["key_edge", "value_edge", "bias"]
    inputs = tuple(tensors[n].clone().requires_grad_() for n in names)

    def fn(*args):
        given = dict(zip(names, args))
        q, k, v = given.pop("query"), given.pop("key"), given.pop("value")
        return cpu.fused_attention(q, k, v, pattern, score=score, scale=0.7, **given)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("score", ["dot", "additive"])
@pytest.mark.parametrize("channels", [32, 7])
def test_gradients_match_reference_float32(kernel, score, channels):
    """Float32 (and the fixed-size loops) against the float64 dense reference's gradients."""
    pattern, tensors = make_problem(
        3, num_src=25, num_dst=20, num_edges=150, heads=5, channels=channels,
        value_channels=channels,
    )  # fmt: skip
    grad_out = torch.randn(20, 5, channels, dtype=torch.float64)
    names = ["query", "key", "value", "key_edge", "value_edge", "bias"]
    names += ["att"] if score != "dot" else []
    grads = {}
    for dtype in (torch.float32, torch.float64):
        leaves = {n: tensors[n].to(dtype).requires_grad_() for n in names}
        kwargs = {n: leaves[n] for n in names[3:]}
        q, k, v = leaves["query"], leaves["key"], leaves["value"]
        if dtype == torch.float32:
            out = cpu.fused_attention(q, k, v, pattern, score=score, scale=0.5, **kwargs)
        else:
            out, _ = dense_reference(q, k, v, pattern, score=score, scale=0.5, **kwargs)
        out.backward(grad_out.to(dtype))
        grads[dtype] = {n: leaves[n].grad for n in names}
    for name in names:
        torch.testing.assert_close(
            grads[torch.float32][name].double(), grads[torch.float64][name], rtol=1e-4,
            atol=1e-5, msg=lambda m, name=name: f"grad of {name}: {m}",
        )  # fmt: skip


@pytest.mark.parametrize("score", ["dot", "additive"])
@pytest.mark.parametrize("extras", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels", [32, 5])
def test_key_is_value_against_reference(kernel, score, extras, dtype, channels):
    """Key and value one tensor (GATv2's x_l: the receiver sweeps run as one): outputs, weights
    and gradients against the dense float64 reference, the shared tensor's gradient summing both
    roles; and the same as with a copy of the table (the two-sweep path)."""
    pattern, tensors = make_problem(6, num_src=30, num_dst=25, num_edges=300, heads=5,
                                    channels=channels, value_channels=channels)  # fmt: skip
    names = ["key_edge", "value_edge", "bias"] if extras else []
    names += ["att"] if score != "dot" else []
    grad_out = torch.randn(25, 5, channels, dtype=torch.float64)

    def run(shared: bool, reference: bool = False):
        work = torch.float64 if reference else dtype
        table = tensors["key"].to(work).requires_grad_()
        query = tensors["query"].to(work).requires_grad_()
        extra = {n: tensors[n].to(work).requires_grad_() for n in names}
        value = table if shared else table.detach().clone().requires_grad_()
        if reference:
            out, _ = dense_reference(query, table, value, pattern, score=score, scale=0.6,
                                     **extra)  # fmt: skip
        else:
            out = cpu.fused_attention(query, table, value, pattern, score=score, scale=0.6,
                                      **extra)  # fmt: skip
        leaves = [query, table, *extra.values()] + ([] if shared else [value])
        grads = torch.autograd.grad(out, leaves, grad_out.to(work))
        if not shared:  # the table's gradient sums its key and value roles
            grads = (grads[0], grads[1] + grads[-1], *grads[2:-1])
        return out.detach(), grads

    out, grads = run(shared=True)
    ref_out, ref_grads = run(shared=True, reference=True)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.double(), ref_out, **tol)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got.double(), want, **tol)
    two_sweeps_out, two_sweeps_grads = run(shared=False)
    torch.testing.assert_close(out, two_sweeps_out, rtol=1e-6, atol=1e-7)
    for got, want in zip(grads, two_sweeps_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("score", ["dot", "additive"])
@pytest.mark.parametrize("alias", ["same", "detached", "views"])
def test_key_is_value_gradient_paths(kernel, score, alias):
    """One gradient for one input in both places (summed in the kernel), but only for the same
    tensor: a detached alias of the same memory, or two views of one leaf, keep their own
    gradients. Senders 0 and 1 send nothing (their rows of the summed gradient are zeros)."""
    gen = torch.Generator().manual_seed(11)
    senders = torch.randint(2, 10, (70,), generator=gen)
    receivers = torch.randint(0, 8, (70,), generator=gen)
    pattern = Pattern.from_edge_index(torch.stack([senders, receivers]), (10, 8))
    base = torch.randn(10, 2 * 4, generator=gen, dtype=torch.float64, requires_grad=True)
    query = torch.randn(8, 2, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    att = torch.randn(2, 4, generator=gen, dtype=torch.float64) if score != "dot" else None
    grad_out = torch.randn(8, 2, 4, generator=gen, dtype=torch.float64)
    key = base.view(10, 2, 4)
    if alias == "same":
        value, leaves = key, [query, base]
    elif alias == "detached":  # shares key's memory, but is its own leaf
        value = key.detach().requires_grad_()
        leaves = [query, base, value]
    else:  # two view nodes of one leaf
        value, leaves = base.view(10, 2, 4), [query, base]
    out = cpu.fused_attention(query, key, value, pattern, score=score, att=att, scale=0.5)
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref_value = value.detach().clone().requires_grad_() if alias == "detached" else value
    ref, _ = dense_reference(query, key, ref_value, pattern, score=score, att=att, scale=0.5)
    expected = torch.autograd.grad(ref, [query, base] + ([ref_value] if alias == "detached"
                                                          else []), grad_out)  # fmt: skip
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    if alias == "same":
        assert torch.count_nonzero(grads[1][:2]) == 0  # sender rows without edges


@pytest.mark.parametrize("score", ["dot", "additive"])
def test_key_is_value_gradcheck(kernel, score):
    pattern, tensors = make_problem(7, num_src=6, num_dst=7, num_edges=24, channels=4,
                                    value_channels=4)  # fmt: skip
    names = ["query", "key", "key_edge", "value_edge", "bias"]
    names += ["att"] if score != "dot" else []
    inputs = tuple(tensors[n].clone().requires_grad_() for n in names)

    def fn(query, table, *rest):
        given = dict(zip(names[2:], rest))
        return cpu.fused_attention(query, table, table, pattern, score=score, scale=0.7, **given)

    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("score", ["dot", "additive"])
@pytest.mark.parametrize("layout", ["expanded", "row-strided", "transposed"])
def test_output_gradient_layouts(kernel, score, layout):
    """An output gradient with contiguous rows and any row stride is read in place (the gradient
    of ``out.sum()`` is one row expanded to all); others are copied. Gradients are bitwise those
    of the same values given contiguous, and match the dense reference."""
    pattern, tensors = make_problem(8, num_src=12, num_dst=10, num_edges=70, channels=4,
                                    value_channels=4)  # fmt: skip
    kwargs = {"att": tensors["att"]} if score != "dot" else {}
    gen = torch.Generator().manual_seed(0)
    if layout == "expanded":
        grad_out = torch.randn(1, 2, 4, generator=gen, dtype=torch.float64).expand(10, 2, 4)
    elif layout == "row-strided":
        grad_out = torch.randn(10, 3, 2, 4, generator=gen, dtype=torch.float64)[:, 1]
    else:  # [H, C] rows not contiguous
        grad_out = torch.randn(10, 4, 2, generator=gen, dtype=torch.float64).transpose(1, 2)
    assert not grad_out.is_contiguous()

    def grads(g, reference=False):
        q, k, v = (tensors[n].clone().requires_grad_() for n in ("query", "key", "value"))
        if reference:
            out, _ = dense_reference(q, k, v, pattern, score=score, **kwargs)
        else:
            out = cpu.fused_attention(q, k, v, pattern, score=score, **kwargs)
        return torch.autograd.grad(out, (q, k, v), g)

    strided, contiguous = grads(grad_out), grads(grad_out.contiguous())
    for a, b, ref in zip(strided, contiguous, grads(grad_out.contiguous(), reference=True)):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("score", ["dot", "additive"])
def test_partial_gradients(kernel, score):
    """Asking for one input's gradient gives the same values as asking for all of them."""
    pattern, tensors = make_problem(4, num_src=8, num_dst=9, num_edges=40)
    names = list(INPUTS) if score != "dot" else [n for n in INPUTS if n != "att"]
    grad_out = torch.randn(9, 2, 4, dtype=torch.float64)

    def grads_of(wanted):
        leaves = {n: tensors[n].clone().requires_grad_(n in wanted) for n in names}
        q, k, v = leaves.pop("query"), leaves.pop("key"), leaves.pop("value")
        out = cpu.fused_attention(q, k, v, pattern, score=score, **leaves)
        wanted_leaves = [x for n, x in zip(names, [q, k, v, *leaves.values()]) if n in wanted]
        return dict(zip(wanted, torch.autograd.grad(out, wanted_leaves, grad_out)))

    everything = grads_of(names)
    for name in names:
        torch.testing.assert_close(grads_of([name])[name], everything[name], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("score", ["dot", "additive"])
@pytest.mark.parametrize("shared", [False, True], ids=["key-value", "one-table"])
@pytest.mark.parametrize("bias_grad", [False, True])
def test_repeated_backward_matches_reference(kernel, score, shared, bias_grad):
    """The first backward writes the score gradients over the saved weights; a second backward
    of the same graph (``retain_graph=True``) must recompute them: both equal the float64 dense
    reference, and each other bit for bit (the recomputation is deterministic)."""
    pattern, tensors = make_problem(6, num_src=12, num_dst=12, num_edges=90, heads=3,
                                    channels=4, value_channels=4)  # fmt: skip
    grad_out = torch.randn(12, 3, 4, dtype=torch.float64)
    names = ["query", "key", "value", "key_edge", "value_edge"]
    names += ["att"] if score != "dot" else []
    leaves = {n: tensors[n].clone().requires_grad_() for n in names}
    bias = tensors["bias"].clone().requires_grad_(bias_grad)
    if shared:
        leaves["value"] = leaves["key"]
    extra = {n: leaves[n] for n in names[3:]}
    q, k, v = leaves["query"], leaves["key"], leaves["value"]
    inputs = [q, k, *([] if shared else [v]), *extra.values(), *([bias] if bias_grad else [])]
    out = cpu.fused_attention(q, k, v, pattern, score=score, scale=0.6, bias=bias, **extra)
    first = torch.autograd.grad(out, inputs, grad_out, retain_graph=True)
    second = torch.autograd.grad(out, inputs, grad_out)
    ref_out, _ = dense_reference(q, k, v, pattern, score=score, scale=0.6, bias=bias, **extra)
    expected = torch.autograd.grad(ref_out, inputs, grad_out)
    for a, b, ref in zip(first, second, expected):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("score", ["dot", "additive"])
def test_low_precision_accumulates_in_float32(kernel, dtype, score):
    pattern, tensors = make_problem(5, num_src=30, num_dst=20, num_edges=200, heads=2,
                                    channels=32, value_channels=32)  # fmt: skip
    low = {n: x.to(dtype).requires_grad_() for n, x in tensors.items()}
    kwargs = options(low, score, extras=True)
    out = cpu.fused_attention(low["query"], low["key"], low["value"], pattern, **kwargs)
    assert out.dtype == dtype
    full = {n: x.float() if torch.is_tensor(x) else x for n, x in kwargs.items()}
    ref = cpu.fused_attention(low["query"].float(), low["key"].float(), low["value"].float(),
                              pattern, **full)  # fmt: skip
    torch.testing.assert_close(out.float(), ref, rtol=1e-2, atol=1e-2)
    out.float().sum().backward()
    assert low["query"].grad.dtype == dtype and torch.isfinite(low["query"].grad.float()).all()
    weights = cpu.fused_attention_weights(low["query"], low["key"], low["value"], pattern,
                                          **kwargs)  # fmt: skip
    assert weights.dtype == dtype and weights.shape == (pattern.num_edges, 2)


def test_masked_and_empty_receivers_give_zeros(kernel):
    pattern, tensors = make_problem(6, num_src=8, num_dst=10, num_edges=50, isolated=3)
    bias = tensors["bias"].clone()
    first = int(pattern.row[0])
    bias[pattern.row == first] = float("-inf")  # receiver `first`: every score -inf
    leaves = {n: tensors[n].clone().requires_grad_() for n in ("query", "key", "value")}
    out = cpu.fused_attention(leaves["query"], leaves["key"], leaves["value"], pattern,
                              bias=bias, scale=0.5)  # fmt: skip
    ref, _ = dense_reference(tensors["query"], tensors["key"], tensors["value"], pattern,
                             bias=bias, scale=0.5)  # fmt: skip
    assert torch.isfinite(out).all()
    assert torch.all(out[first] == 0) and torch.all(out[-3:] == 0)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-12)
    out.pow(2).sum().backward()
    for x in leaves.values():
        assert torch.isfinite(x.grad).all()
    assert torch.all(leaves["query"].grad[first] == 0)
    weights = cpu.fused_attention_weights(tensors["query"], tensors["key"], tensors["value"],
                                          pattern, bias=bias, scale=0.5)  # fmt: skip
    assert torch.all(weights[pattern.row == first] == 0)


def test_empty_pattern(kernel):
    pattern = Pattern.from_edge_index(torch.zeros(2, 0, dtype=torch.long), (4, 3))
    q = torch.randn(3, 2, 5, requires_grad=True)
    k = torch.randn(4, 2, 5, requires_grad=True)
    v = torch.randn(4, 2, 6, requires_grad=True)
    out = cpu.fused_attention(q, k, v, pattern)
    assert out.shape == (3, 2, 6) and torch.all(out == 0)
    out.sum().backward()
    assert torch.all(q.grad == 0) and torch.all(k.grad == 0) and torch.all(v.grad == 0)
    assert cpu.fused_attention_weights(q, k, v, pattern).shape == (0, 2)


@pytest.mark.parametrize("score", ["dot", "additive"])
def test_skewed_degrees_and_threads(kernel, score):
    """A hub receiver and a hub sender, above the parallel threshold: results, the reduced grad of
    att included, do not depend on the thread count (the chunking depends on the pattern)."""
    gen = torch.Generator().manual_seed(7)
    num_nodes, num_edges = 500, 20_000
    senders = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    receivers = torch.randint(0, num_nodes, (num_edges,), generator=gen)
    receivers[:6000] = 3  # hub receiver
    senders[6000:9000] = 11  # hub sender
    pattern = Pattern.from_edge_index(torch.stack([senders, receivers]), num_nodes)
    q, k, v = (torch.randn(num_nodes, 4, 32, generator=gen) for _ in range(3))
    bias = torch.randn(num_edges, 4, generator=gen)
    att = torch.randn(4, 32, generator=gen) if score == "additive" else None
    grad_out = torch.randn(num_nodes, 4, 32, generator=gen)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            leaves = [x.clone().requires_grad_() for x in (q, k, v, bias)]
            extra = {} if att is None else {"att": att.clone().requires_grad_()}
            out = cpu.fused_attention(*leaves[:3], pattern, bias=leaves[3], scale=0.2,
                                      score=score, **extra)  # fmt: skip
            out.backward(grad_out)
            grads = [x.grad for x in [*leaves, *extra.values()]]
            results.append([out.detach(), *grads])
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)
    # too big for the dense reference: the library's scatter mode in float64
    ref = sparse_attention(
        q.double(), k.double(), v.double(), cpu._sorted_view(pattern), bias=bias.double(),
        scale=0.2, score="gatv2" if score == "additive" else "dot",
        att=None if att is None else att.double(), mode="scatter",
    )  # fmt: skip
    torch.testing.assert_close(results[0][0].double(), ref, rtol=1e-5, atol=1e-5)


def test_gatv2_alias_and_non_contiguous_inputs(kernel):
    pattern, tensors = make_problem(8, channels=5, value_channels=5)
    q = tensors["query"].transpose(1, 2).contiguous().transpose(1, 2)  # non-contiguous view
    assert not q.is_contiguous()
    kwargs = dict(att=tensors["att"], bias=tensors["bias"])
    a = cpu.fused_attention(q, tensors["key"], tensors["value"], pattern, score="gatv2", **kwargs)
    b = cpu.fused_attention(tensors["query"], tensors["key"], tensors["value"], pattern,
                            score="additive", **kwargs)  # fmt: skip
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_build_info_and_cached_load_in_a_second_process(kernel):
    info = cpu.build_info()
    assert info["path"].endswith(".so") and os.path.exists(info["path"])
    assert info["seconds"] > 0 and "-O3" in info["flags"]
    script = (
        "import json, time\n"
        "import gtlib.attention.backends.cpu as cpu\n"
        "start = time.perf_counter()\n"
        "ok = cpu.available()\n"
        "print(json.dumps({'ok': ok, 'seconds': time.perf_counter() - start,"
        " 'info': cpu.build_info()}))\n"
    )
    result = _run_python(script)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["info"]["cached"] and report["info"]["name"] == info["name"]
    assert report["seconds"] < 1.0, report


def test_extension_name_tracks_the_source():
    flags = ("-O3",)
    assert cpu._extension_name(b"a", flags) != cpu._extension_name(b"b", flags)
    assert cpu._extension_name(b"a", flags) != cpu._extension_name(b"a", ("-O2",))
    assert cpu._extension_name(b"a", flags) == cpu._extension_name(b"a", flags)


# ------------------------------------------------------------------------------ fallback
@pytest.mark.parametrize("score", ["dot", "additive"])
def test_fallback_matches_reference(no_kernel, score):
    assert not cpu.available()
    pattern, tensors = make_problem(9)
    out, weights, ref_out, ref_weights = run_both(pattern, tensors, score, extras=True)
    torch.testing.assert_close(out, ref_out, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(weights, ref_weights, rtol=1e-10, atol=1e-12)
    leaves = {n: tensors[n].clone().requires_grad_() for n in ("query", "key", "value", "bias")}
    fused = cpu.fused_attention(leaves["query"], leaves["key"], leaves["value"], pattern,
                                bias=leaves["bias"], scale=0.5)  # fmt: skip
    fused.sum().backward()
    ref_leaves = {n: tensors[n].clone().requires_grad_() for n in leaves}
    ref, _ = dense_reference(ref_leaves["query"], ref_leaves["key"], ref_leaves["value"],
                             pattern, bias=ref_leaves["bias"], scale=0.5)  # fmt: skip
    ref.sum().backward()
    for name in leaves:
        torch.testing.assert_close(leaves[name].grad, ref_leaves[name].grad)


def test_fallback_low_precision(no_kernel):
    pattern, tensors = make_problem(10, num_edges=300, num_dst=30, num_src=30)
    low = {n: x.bfloat16() for n, x in tensors.items()}
    out = cpu.fused_attention(low["query"], low["key"], low["value"], pattern, bias=low["bias"])
    assert out.dtype == torch.bfloat16
    ref, _ = dense_reference(low["query"].double(), low["key"].double(), low["value"].double(),
                             pattern, bias=low["bias"].double())  # fmt: skip
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)


def test_env_zero_never_builds_in_a_fresh_process():
    script = (
        "import json\n"
        "import gtlib.attention.backends.cpu as cpu\n"
        "print(json.dumps({'ok': cpu.available(), 'info': cpu.build_info(),"
        " 'tried': cpu._STATE.tried}))\n"
    )
    result = _run_python(script, {cpu.ENV_VAR: "0"})
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report == {"ok": False, "info": None, "tried": False}


def test_env_values(monkeypatch):
    monkeypatch.setenv(cpu.ENV_VAR, "0")
    assert cpu.setting() == "0" and cpu.available() is False
    monkeypatch.setenv(cpu.ENV_VAR, "auto")
    assert cpu.setting() == "auto"
    monkeypatch.delenv(cpu.ENV_VAR)
    assert cpu.setting() == "auto"
    monkeypatch.setenv(cpu.ENV_VAR, "sometimes")
    with pytest.raises(ValueError, match=cpu.ENV_VAR):
        cpu.setting()


def test_failed_build_warns_once_or_raises(monkeypatch):
    """A build failure (e.g. no compiler): auto warns once and falls back; '1' raises."""

    def broken_build():
        raise OSError("no C++ compiler")

    state = cpu._State()
    monkeypatch.setattr(state, "build", broken_build)
    monkeypatch.setattr(cpu, "_STATE", state)
    monkeypatch.setenv(cpu.ENV_VAR, "auto")
    with pytest.warns(RuntimeWarning, match="no C\\+\\+ compiler"):
        assert cpu.available() is False
    pattern, tensors = make_problem(11)
    q, k, v = tensors["query"], tensors["key"], tensors["value"]
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is not repeated
        out = cpu.fused_attention(q, k, v, pattern)
    torch.testing.assert_close(out, dense_reference(q, k, v, pattern)[0])
    assert "no C++ compiler" in cpu.build_info()["error"]
    monkeypatch.setenv(cpu.ENV_VAR, "1")
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        cpu.available()
    with pytest.raises(RuntimeError, match=cpu.ENV_VAR):
        cpu.fused_attention(q, k, v, pattern)


def test_without_a_compiler_in_a_fresh_process(tmp_path):
    """A real failed build (no compiler at $CXX): auto warns and falls back, '1' raises."""
    script = (
        "import json, warnings\n"
        "import torch\n"
        "import gtlib.attention.backends.cpu as cpu\n"
        "from gtlib.attention import Pattern\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    ok = cpu.available()\n"
        "p = Pattern.from_edge_index(torch.tensor([[0, 1], [1, 1]]), 2)\n"
        "x = torch.randn(2, 1, 4)\n"
        "out = cpu.fused_attention(x, x, x, p)\n"
        "print(json.dumps({'ok': ok, 'warned': [str(w.message)[:60] for w in caught],"
        " 'zeros': bool((out[0] == 0).all())}))\n"
    )
    env = {"CXX": str(tmp_path / "no-such-c++"), cpu.BUILD_DIR_VAR: str(tmp_path / "build")}
    report = json.loads(_run_python(script, env).stdout.strip().splitlines()[-1])
    assert report["ok"] is False and report["zeros"] is True
    assert len(report["warned"]) == 1 and "could not be built" in report["warned"][0]
    strict = "import gtlib.attention.backends.cpu as cpu\ncpu.available()\n"
    result = _run_python(strict, {**env, cpu.ENV_VAR: "1"}, check=False)
    assert result.returncode != 0 and "RuntimeError" in result.stderr


def test_build_retries_without_native_flags(monkeypatch):
    """When the -march=native build fails, the portable flags are tried."""
    tried = []

    def fake_build_with(source, flags, path, prefix):
        tried.append(flags)
        if "-march=native" in flags:
            raise RuntimeError("unsupported -march")
        return "module", {"flags": list(flags)}

    monkeypatch.setattr(cpu, "_build_with", fake_build_with)
    module, info = cpu._State(smoke_test=lambda module: None).build()
    assert module == "module" and "-march=native" not in info["flags"]
    assert len(tried) == 2 and "-O3" in tried[1]


# ------------------------------------------------------------------------------ validation
def test_validation_names_the_argument():
    pattern, t = make_problem(12)
    q, k, v = t["query"], t["key"], t["value"]
    with pytest.raises(TypeError, match="pattern"):
        cpu.fused_attention(q, k, v, pattern.edge_index)
    with pytest.raises(TypeError, match="key"):
        cpu.fused_attention(q, k.float(), v, pattern)
    with pytest.raises(TypeError, match="query"):
        cpu.fused_attention(q.long(), k, v, pattern)
    with pytest.raises(ValueError, match="query"):
        cpu.fused_attention(q[:-1], k, v, pattern)
    with pytest.raises(ValueError, match="value"):
        cpu.fused_attention(q, k, v[:, :1], pattern)
    with pytest.raises(ValueError, match="key"):
        cpu.fused_attention(q, k[..., :2], v, pattern)
    with pytest.raises(ValueError, match="query"):
        cpu.fused_attention(q.to("meta"), k, v, pattern)
    with pytest.raises(ValueError, match="score"):
        cpu.fused_attention(q, k, v, pattern, score="cosine")
    with pytest.raises(ValueError, match="att"):
        cpu.fused_attention(q, k, v, pattern, score="additive")
    with pytest.raises(ValueError, match="att"):
        cpu.fused_attention(q, k, v, pattern, att=t["att"])
    with pytest.raises(ValueError, match="key_edge"):
        cpu.fused_attention(q, k, v, pattern, key_edge=t["key_edge"][1:])
    with pytest.raises(ValueError, match="value_edge"):
        cpu.fused_attention(q, k, v, pattern, value_edge=t["key_edge"])
    with pytest.raises(TypeError, match="bias"):
        cpu.fused_attention(q, k, v, pattern, bias=t["bias"].float())
    with pytest.raises(ValueError, match="bias"):
        cpu.fused_attention_weights(q, k, v, pattern, bias=t["bias"][:, :1])
    with pytest.raises(TypeError, match="scale"):
        cpu.fused_attention(q, k, v, pattern, scale="big")
    with pytest.raises(ValueError, match="negative_slope"):
        cpu.fused_attention(q, k, v, pattern, score="additive", att=t["att"], negative_slope=-1)


def _run_python(script: str, env: dict | None = None, check: bool = True):
    """Runs ``script`` in a fresh interpreter (repository on the path) and returns the result."""
    environment = dict(os.environ)
    environment["PYTHONPATH"] = os.pathsep.join(
        [str(REPO), *filter(None, [environment.get("PYTHONPATH")])]
    )
    environment.update(env or {})
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=environment,
        cwd=REPO, timeout=600,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, result.stderr
    return result
