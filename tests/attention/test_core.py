"""sparse_attention against an independent per-receiver reference, in values and gradients."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gtlib.attention import Pattern, segment_softmax, sparse_attention
from gtlib.attention.backends import cpu as fused_cpu
from tests.attention.reference import reference_attention

DROPOUT_MODES = ["scatter", "chunked", "sparse", "stream"]
# the compiled CPU kernel when it builds here (its own tests cover the fallback)
EDGE_MODES = DROPOUT_MODES + (["fused"] if fused_cpu.available() else [])


def random_problem(seed, num_src, num_dst, num_edges, heads=2, channels=3, value_channels=4,
                   dtype=torch.float64, isolated=2):  # fmt: skip
    """Random edges (duplicates and self-loops likely) leaving the last receivers isolated."""
    gen = torch.Generator().manual_seed(seed)
    reachable = max(num_dst - isolated, 1)
    senders = torch.randint(0, num_src, (num_edges,), generator=gen)
    receivers = torch.randint(0, reachable, (num_edges,), generator=gen)
    if num_edges >= 2:  # a guaranteed duplicate
        senders[1], receivers[1] = senders[0], receivers[0]
    edge_index = torch.stack([senders, receivers])

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()

    tensors = dict(
        query=rand(num_dst, heads, channels),
        key=rand(num_src, heads, channels),
        value=rand(num_src, heads, value_channels),
        att=rand(heads, channels),
        key_edge=rand(num_edges, heads, channels),
        value_edge=rand(num_edges, heads, value_channels),
        bias=rand(num_edges, heads),
    )
    return edge_index, tensors


def call(tensors, pattern, score, mode, extras=True, **kwargs):
    return sparse_attention(
        tensors["query"],
        tensors["key"],
        tensors["value"],
        pattern,
        score=score,
        att=tensors["att"] if score == "gatv2" else None,
        key_edge=tensors["key_edge"] if extras else None,
        value_edge=tensors["value_edge"] if extras else None,
        bias=tensors["bias"] if extras else None,
        mode=mode,
        **kwargs,
    )


def reference(tensors, edge_index, score, extras=True, **kwargs):
    return reference_attention(
        tensors["query"],
        tensors["key"],
        tensors["value"],
        edge_index,
        score=score,
        att=tensors["att"] if score == "gatv2" else None,
        key_edge=tensors["key_edge"] if extras else None,
        value_edge=tensors["value_edge"] if extras else None,
        bias=tensors["bias"] if extras else None,
        **kwargs,
    )


def grads(output, inputs):
    torch.manual_seed(123)
    weight = torch.randn_like(output)
    used = [x for x in inputs if x.requires_grad]
    if not output.requires_grad:
        return [torch.zeros_like(x) for x in used]
    result = torch.autograd.grad((output * weight).sum(), used, allow_unused=True)
    return [torch.zeros_like(x) if g is None else g for x, g in zip(used, result)]


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    num_src=st.integers(1, 9),
    num_dst=st.integers(1, 9),
    num_edges=st.integers(0, 40),
    score=st.sampled_from(["dot", "gatv2"]),
    mode=st.sampled_from(EDGE_MODES),
    extras=st.booleans(),
    chunk_size=st.sampled_from([1, 2, 3, 7, 1000]),
)
def test_matches_reference_values_and_gradients(
    seed, num_src, num_dst, num_edges, score, mode, extras, chunk_size
):
    edge_index, tensors = random_problem(seed, num_src, num_dst, num_edges)
    pattern = Pattern.from_edge_index(edge_index, (num_src, num_dst))
    out, weights = call(
        tensors, pattern, score, mode, extras, chunk_size=chunk_size, return_attention=True
    )
    ref_out, ref_weights = reference(tensors, edge_index, score, extras)
    torch.testing.assert_close(out, ref_out, atol=1e-10, rtol=1e-8)
    torch.testing.assert_close(weights, ref_weights.detach(), atol=1e-10, rtol=1e-8)
    inputs = list(tensors.values())
    for got, want in zip(grads(out, inputs), grads(ref_out, inputs)):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-7)


@pytest.mark.parametrize("mode", EDGE_MODES)
@pytest.mark.parametrize("score", ["dot", "gatv2"])
def test_gradcheck_float64(mode, score):
    edge_index, tensors = random_problem(0, 5, 6, 14)
    pattern = Pattern.from_edge_index(edge_index, (5, 6))
    names = list(tensors)
    if score == "dot":
        names.remove("att")

    def function(*args):
        local = dict(tensors, **dict(zip(names, args)))
        return call(local, pattern, score, mode, chunk_size=3)

    assert torch.autograd.gradcheck(function, [tensors[n] for n in names])


@pytest.mark.parametrize("mode", ["sparse", "stream", "scatter", "chunked"])
def test_gradcheck_with_dropout_uses_the_forward_mask(mode):
    edge_index, tensors = random_problem(1, 5, 5, 16)
    pattern = Pattern.from_edge_index(edge_index, 5)
    names = ["query", "key", "value", "bias"]

    def function(*args):
        torch.manual_seed(7)  # the same dropout mask on every evaluation
        local = dict(tensors, **dict(zip(names, args)))
        return call(local, pattern, "dot", mode, dropout=0.4, chunk_size=4)

    out = function(*[tensors[n] for n in names])
    no_dropout = call(tensors, pattern, "dot", mode)
    assert not torch.allclose(out, no_dropout)
    assert torch.autograd.gradcheck(function, [tensors[n] for n in names])


@pytest.mark.parametrize("mode", DROPOUT_MODES)
def test_dropout_is_unbiased(mode):
    edge_index, tensors = random_problem(2, 6, 6, 30, dtype=torch.float32)
    pattern = Pattern.from_edge_index(edge_index, 6)
    with torch.no_grad():
        expected = call(tensors, pattern, "dot", mode, extras=False)
        mean = torch.stack(
            [call(tensors, pattern, "dot", mode, extras=False, dropout=0.3) for _ in range(3000)]
        ).mean(0)
    torch.testing.assert_close(mean, expected, atol=0.1, rtol=0.05)


@pytest.mark.parametrize("score", ["dot", "gatv2"])
def test_stream_equals_scatter_when_chunks_split_receivers(score):
    edge_index, tensors = random_problem(3, 40, 30, 900, heads=3, channels=8, value_channels=5)
    pattern = Pattern.from_edge_index(edge_index, (40, 30))
    assert pattern.max_degree > 7
    expected = call(tensors, pattern, score, "scatter")
    for chunk_size in (1, 5, 7, 64, 899):
        torch.testing.assert_close(
            call(tensors, pattern, score, "stream", chunk_size=chunk_size), expected
        )
        torch.testing.assert_close(
            call(tensors, pattern, score, "sparse", chunk_size=chunk_size), expected
        )


@pytest.mark.parametrize("mode", EDGE_MODES)
def test_weights_sum_to_one_in_caller_order(mode):
    edge_index, tensors = random_problem(4, 8, 10, 50, isolated=3)
    pattern = Pattern.from_edge_index(edge_index, (8, 10))
    out, weights = call(tensors, pattern, "gatv2", mode, return_attention=True)
    sums = torch.zeros(10, 2, dtype=weights.dtype).index_add_(0, edge_index[1], weights)
    has_senders = torch.bincount(edge_index[1], minlength=10) > 0
    torch.testing.assert_close(sums[has_senders], torch.ones_like(sums[has_senders]))
    assert bool((out[~has_senders] == 0).all())
    # weights in the caller's order: recompute the first receiver's softmax by hand
    receiver = int(edge_index[1, 0])
    edges = (edge_index[1] == receiver).nonzero().flatten()
    _, ref_weights = reference(tensors, edge_index, "gatv2")
    torch.testing.assert_close(weights[edges], ref_weights[edges].detach())


@pytest.mark.parametrize("mode", EDGE_MODES)
def test_zero_edges_single_node_and_empty_receivers(mode):
    for num_src, num_dst, num_edges in ((1, 1, 0), (1, 1, 1), (3, 4, 0), (2, 0, 0)):
        edge_index, tensors = random_problem(5, num_src, num_dst, num_edges, isolated=0)
        pattern = Pattern.from_edge_index(edge_index, (num_src, num_dst))
        out = call(tensors, pattern, "dot", mode)
        ref, _ = reference(tensors, edge_index, "dot")
        torch.testing.assert_close(out, ref)
        if num_dst:
            out.sum().backward()


@pytest.mark.parametrize("mode", EDGE_MODES)
def test_large_scores_do_not_overflow(mode):
    edge_index, tensors = random_problem(6, 4, 4, 12, dtype=torch.float32, isolated=0)
    pattern = Pattern.from_edge_index(edge_index, 4)
    with torch.no_grad():
        bias = tensors["bias"] * 1e4
        out = sparse_attention(
            tensors["query"], tensors["key"], tensors["value"], pattern, bias=bias, mode=mode
        )
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("mode", EDGE_MODES + ["dense"])
def test_bfloat16_accumulates_in_float32(mode):
    pattern = Pattern.full(torch.tensor([0, 0, 0, 1, 1, 1, 1, 1]))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(8, 2, 16, generator=gen) for _ in range(3))
    expected = sparse_attention(q.double(), k.double(), v.double(), pattern, mode="scatter")
    out = sparse_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), pattern, mode=mode)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.double(), expected, atol=3e-2, rtol=3e-2)


def test_float32_matches_float64():
    edge_index, tensors = random_problem(7, 30, 30, 300, heads=4, channels=16, value_channels=16)
    pattern = Pattern.from_edge_index(edge_index, 30)
    ref = call(tensors, pattern, "gatv2", "scatter")
    single = {name: x.detach().float() for name, x in tensors.items()}
    for mode in EDGE_MODES:
        torch.testing.assert_close(
            call(single, pattern, "gatv2", mode).double(), ref, atol=1e-5, rtol=1e-4
        )


def block_problem(pattern, heads=2, channels=4):
    gen = torch.Generator().manual_seed(8)
    n = pattern.num_dst
    return [torch.randn(n, heads, channels, generator=gen, dtype=torch.float64).requires_grad_()
            for _ in range(3)]  # fmt: skip


@pytest.mark.parametrize(
    "pattern",
    [
        Pattern.full(torch.tensor([0, 0, 1, 1, 1, 1, 1, 3, 3, 3])),
        Pattern.windows((6, 4), (3, 2), shift=(1, 1), periodic=False),
        Pattern.windows((6, 4), (3, 2), shift=1, periodic=True),
        Pattern.windows((8,), 4, shift=2, periodic=False),
    ],
    ids=["full-batch", "windows-shifted", "windows-periodic", "windows-1d"],
)
def test_dense_mode_matches_reference(pattern):
    q, k, v = block_problem(pattern)
    out = sparse_attention(q, k, v, pattern, mode="dense")
    ref, _ = reference_attention(q, k, v, pattern.edge_index)
    torch.testing.assert_close(out, ref)
    assert sparse_attention(q, k, v, pattern).grad_fn is not None  # auto: dense
    gq, gk, gv = grads(out, [q, k, v])
    rq, rk, rv = grads(ref, [q, k, v])
    torch.testing.assert_close((gq, gk, gv), (rq, rk, rv))
    assert torch.autograd.gradcheck(
        lambda q, k, v: sparse_attention(q, k, v, pattern, mode="dense"), (q, k, v)
    )


@pytest.mark.parametrize(
    "pattern",
    [
        Pattern.full(torch.tensor([0, 0, 1, 1, 1, 1, 1, 3, 3, 3])),
        Pattern.windows((6, 4), (3, 2), shift=(1, 1), periodic=False),
        Pattern.windows((6, 4), (3, 2), shift=1, periodic=True),
    ],
    ids=["full-batch", "windows-shifted", "windows-periodic"],
)
def test_dense_mode_with_edge_bias_matches_reference(pattern):
    q, k, v = block_problem(pattern)
    gen = torch.Generator().manual_seed(3)
    bias = torch.randn(pattern.num_edges, 2, generator=gen, dtype=torch.float64)
    bias.requires_grad_()
    out = sparse_attention(q, k, v, pattern, bias=bias, mode="dense")
    ref, _ = reference_attention(q, k, v, pattern.edge_index, bias=bias)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(grads(out, [q, bias]), grads(ref, [q, bias]))
    torch.testing.assert_close(sparse_attention(q, k, v, pattern, bias=bias), ref)  # auto: dense
    assert torch.autograd.gradcheck(
        lambda q, k, v, b: sparse_attention(q, k, v, pattern, bias=b, mode="dense"),
        (q, k, v, bias),
    )


def test_segment_softmax_with_pattern_and_index():
    edge_index, _ = random_problem(9, 6, 7, 40)
    pattern = Pattern.from_edge_index(edge_index, (6, 7))
    scores = torch.randn(40, 3, dtype=torch.float64, requires_grad=True)
    expected = torch.zeros_like(scores)
    for i in range(7):
        edges = (edge_index[1] == i).nonzero().flatten()
        if edges.numel():
            expected = expected.index_put((edges,), torch.softmax(scores[edges], 0))
    torch.testing.assert_close(segment_softmax(scores, pattern), expected)
    torch.testing.assert_close(segment_softmax(scores, edge_index[1], num_segments=7), expected)
    order = torch.argsort(edge_index[1])
    torch.testing.assert_close(
        segment_softmax(scores[order], edge_index[1][order]), expected[order]
    )
    assert torch.autograd.gradcheck(lambda s: segment_softmax(s, pattern), (scores,))
    assert torch.autograd.gradcheck(lambda s: segment_softmax(s, edge_index[1]), (scores,))
    big = segment_softmax(torch.tensor([1e30, 1e30, -1e30]), torch.tensor([0, 0, 1]))
    torch.testing.assert_close(big, torch.tensor([0.5, 0.5, 1.0]))


def test_segment_softmax_bad_input():
    with pytest.raises(TypeError, match="scores"):
        segment_softmax(torch.ones(3, dtype=torch.long), torch.tensor([0, 0, 1]))
    with pytest.raises(ValueError, match="index"):
        segment_softmax(torch.ones(3), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"index must lie in \[0, 2\)"):
        segment_softmax(torch.ones(3), torch.tensor([0, 1, 5]), num_segments=2)
    with pytest.raises(TypeError, match="pattern_or_index"):
        segment_softmax(torch.ones(3), [0, 1, 2])
    with pytest.raises(ValueError, match="edges"):
        segment_softmax(torch.ones(3), Pattern.from_edge_index(torch.tensor([[0], [0]])))


def test_bad_inputs_raise_clear_errors():
    edge_index, t = random_problem(10, 4, 5, 10, dtype=torch.float32)
    pattern = Pattern.from_edge_index(edge_index, (4, 5))
    q, k, v = t["query"], t["key"], t["value"]
    cases = [
        (TypeError, "pattern", lambda: sparse_attention(q, k, v, edge_index)),
        (ValueError, "query", lambda: sparse_attention(q[:, 0], k, v, pattern)),
        (TypeError, "key", lambda: sparse_attention(q, k.long(), v, pattern)),
        (TypeError, "share a dtype", lambda: sparse_attention(q, k.double(), v, pattern)),
        (ValueError, "receivers", lambda: sparse_attention(q[:4], k, v, pattern)),
        (ValueError, "senders", lambda: sparse_attention(q, k[:3], v, pattern)),
        (ValueError, "heads", lambda: sparse_attention(q, k[:, :1], v, pattern)),
        (ValueError, "channels", lambda: sparse_attention(q, k[..., :2], v, pattern)),
        (ValueError, "score", lambda: sparse_attention(q, k, v, pattern, score="cosine")),
        (ValueError, "mode", lambda: sparse_attention(q, k, v, pattern, mode="fast")),
        (ValueError, "dropout", lambda: sparse_attention(q, k, v, pattern, dropout=1.0)),
        (ValueError, "att", lambda: sparse_attention(q, k, v, pattern, score="gatv2")),
        (ValueError, "att", lambda: sparse_attention(q, k, v, pattern, att=t["att"])),
        (
            ValueError,
            "att",
            lambda: sparse_attention(q, k, v, pattern, score="gatv2", att=t["att"][:1]),
        ),
        (ValueError, "key_edge", lambda: sparse_attention(q, k, v, pattern, key_edge=q)),
        (ValueError, "value_edge", lambda: sparse_attention(q, k, v, pattern, value_edge=q)),
        (ValueError, "bias", lambda: sparse_attention(q, k, v, pattern, bias=t["bias"][:3])),
        (
            TypeError,
            "bias",
            lambda: sparse_attention(q, k, v, pattern, bias=t["bias"].double()),
        ),
        (ValueError, "chunk_size", lambda: sparse_attention(q, k, v, pattern, chunk_size=0)),
        (ValueError, "block pattern", lambda: sparse_attention(q, k, v, pattern, mode="dense")),
    ]
    for error, message, thunk in cases:
        with pytest.raises(error, match=message):
            thunk()
    blocks = Pattern.full(num_nodes=3)
    x = torch.randn(3, 1, 2)
    with pytest.raises(ValueError, match="attention weights"):
        sparse_attention(x, x, x, blocks, mode="dense", return_attention=True)
    with pytest.raises(ValueError, match="key_edge"):
        sparse_attention(x, x, x, blocks, mode="dense", key_edge=torch.zeros(9, 1, 2))


def test_scatter_path_compiles_without_graph_breaks():
    edge_index, t = random_problem(11, 20, 20, 100, dtype=torch.float32)
    pattern = Pattern.from_edge_index(edge_index, 20)
    q, k, v, att = (t[n].detach() for n in ("query", "key", "value", "att"))

    def layer(q, k, v, att, bias):
        out = sparse_attention(q, k, v, pattern, score="gatv2", att=att, bias=bias)
        return out + sparse_attention(q, k, v, pattern, mode="scatter")

    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    bias = t["bias"].detach()
    torch.testing.assert_close(compiled(q, k, v, att, bias), layer(q, k, v, att, bias))
    explanation = torch._dynamo.explain(layer)(q, k, v, att, bias)
    assert explanation.graph_break_count == 0


@pytest.mark.slow
def test_scatter_path_compiles_with_inductor():
    edge_index, t = random_problem(12, 30, 30, 200, heads=2, channels=8, value_channels=8,
                                   dtype=torch.float32)  # fmt: skip
    pattern = Pattern.from_edge_index(edge_index, 30)
    q, k, v, att = (t[n].detach().requires_grad_() for n in ("query", "key", "value", "att"))

    def layer(q, k, v, att):
        return sparse_attention(q, k, v, pattern, score="gatv2", att=att).square().sum()

    compiled = torch.compile(layer, fullgraph=True)
    got = torch.autograd.grad(compiled(q, k, v, att), (q, k, v, att))
    want = torch.autograd.grad(layer(q, k, v, att), (q, k, v, att))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_empty_block_pattern():
    pattern = Pattern.full(num_nodes=0)
    x = torch.zeros(0, 2, 3)
    for mode in ("dense", "scatter", "sparse", "stream"):
        assert sparse_attention(x, x, x, pattern, mode=mode).shape == (0, 2, 3)


@pytest.mark.parametrize("mode", EDGE_MODES)
def test_fully_masked_receiver_gets_zeros_not_nan(mode):
    edge_index = torch.tensor([[0, 1, 2, 0], [0, 0, 1, 1]])
    pattern = Pattern.from_edge_index(edge_index, 3)
    x = torch.randn(3, 2, 4, dtype=torch.float64, requires_grad=True)
    bias = torch.tensor([[float("-inf")] * 2, [float("-inf")] * 2, [0.0, 0.0], [1.0, -1.0]])
    bias = bias.to(torch.float64)
    out = sparse_attention(x, x, x, pattern, bias=bias, mode=mode)
    assert torch.equal(out[0], torch.zeros_like(out[0]))  # every sender masked
    ref, _ = reference_attention(x, x, x, edge_index[:, 2:], bias=bias[2:])
    torch.testing.assert_close(out[1:], ref[1:])
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
