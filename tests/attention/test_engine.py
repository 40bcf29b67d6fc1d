"""The engine's general entry ``attend``: new scores, messages and reductions without new
autograd code, against dense per-receiver references in float64 (values and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gtlib.attention import Edges, Pattern, attend

ALL_EDGE_MODES = ["scatter", "chunked", "sparse", "stream"]
GENERAL_MODES = ["scatter", "chunked"]


def _fused_available() -> bool:
    from gtlib.attention.backends import cpu

    return cpu.setting() != "0" and cpu.available()


# the compiled CPU kernel runs GAT's static score as its additive one with one channel
FUSED = pytest.param(
    "fused", marks=pytest.mark.skipif(not _fused_available(), reason="no compiled CPU kernel")
)


def random_graph(seed, num_src=7, num_dst=6, num_edges=30, isolated=1):
    gen = torch.Generator().manual_seed(seed)
    senders = torch.randint(0, num_src, (num_edges,), generator=gen)
    receivers = torch.randint(0, num_dst - isolated, (num_edges,), generator=gen)
    senders[1], receivers[1] = senders[0], receivers[0]  # a duplicate edge
    return torch.stack([senders, receivers]), gen


def rand(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=torch.float64).requires_grad_()


def loop_softmax(scores, values, edge_index, num_dst):
    """out_i = sum_j softmax_j(scores) values_j, one receiver at a time."""
    heads, channels = values.shape[1], values.shape[2]
    rows = []
    for i in range(num_dst):
        edges = (edge_index[1] == i).nonzero().flatten()
        if edges.numel() == 0:
            rows.append(values.new_zeros(heads, channels))
            continue
        alpha = torch.softmax(scores[edges], dim=0)
        rows.append((alpha.unsqueeze(-1) * values[edges]).sum(0))
    return torch.stack(rows)


@pytest.mark.parametrize("mode", [*ALL_EDGE_MODES, FUSED])
@pytest.mark.parametrize("with_dst", [True, False])
def test_static_score_matches_reference(mode, with_dst):
    """GAT's static score LeakyReLU(s_j + d_i + e_ij) is a term of the engine."""
    edge_index, gen = random_graph(0)
    pattern = Pattern.from_edge_index(edge_index, (7, 6))
    src, dst, edge = rand(gen, 7, 2), rand(gen, 6, 2), rand(gen, 30, 2)
    value = rand(gen, 7, 2, 3)

    def function(src, dst, edge, value):
        return attend(pattern, value, score="static", src_score=src,
                      dst_score=dst if with_dst else None, key_edge=edge, negative_slope=0.2,
                      mode=mode, chunk_size=4)  # fmt: skip

    out = function(src, dst, edge, value)
    pre = src[edge_index[0]] + edge + (dst[edge_index[1]] if with_dst else 0)
    expected = loop_softmax(F.leaky_relu(pre, 0.2), value[edge_index[0]], edge_index, 6)
    torch.testing.assert_close(out, expected)
    assert torch.autograd.gradcheck(function, (src, dst, edge, value))


@pytest.mark.skipif(not _fused_available(), reason="no compiled CPU kernel")
@pytest.mark.parametrize("slope", [0.2, None])
@pytest.mark.parametrize("channels", [32, 5])
def test_static_score_fused_float32_matches_float64_reference(slope, channels):
    """The fused kernel's static score in float32 (the fixed-width value loops for 32 channels)
    against the scatter mode in float64: output, attention weights and every gradient."""
    edge_index, gen = random_graph(3, num_src=40, num_dst=30, num_edges=400)
    pattern = Pattern.from_edge_index(edge_index, (40, 30))
    inputs = dict(src_score=rand(gen, 40, 4), dst_score=rand(gen, 30, 4),
                  key_edge=rand(gen, 400, 4), value=rand(gen, 40, 4, channels),
                  bias=rand(gen, 400, 4))  # fmt: skip
    grad_out = torch.randn(30, 4, channels, generator=gen, dtype=torch.float64)
    results = {}
    for mode, dtype in (("fused", torch.float32), ("scatter", torch.float64)):
        leaves = {n: x.detach().to(dtype).requires_grad_() for n, x in inputs.items()}
        out, alpha = attend(pattern, score="static", negative_slope=slope, mode=mode,
                            scale=0.8, return_attention=True, **leaves)  # fmt: skip
        grads = torch.autograd.grad(out, list(leaves.values()), grad_out.to(dtype))
        results[mode] = (out, alpha, dict(zip(leaves, grads)))
    (out, alpha, grads), (ref_out, ref_alpha, ref_grads) = results["fused"], results["scatter"]
    torch.testing.assert_close(out.double(), ref_out, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(alpha.double(), ref_alpha, rtol=1e-5, atol=1e-6)
    for name in inputs:
        torch.testing.assert_close(grads[name].double(), ref_grads[name], rtol=1e-4, atol=1e-5,
                                   msg=lambda m, name=name: f"grad of {name}: {m}")  # fmt: skip


def test_static_score_without_activation_and_attention_weights():
    edge_index, gen = random_graph(1)
    pattern = Pattern.from_edge_index(edge_index, (7, 6))
    src, value = rand(gen, 7, 1), rand(gen, 7, 1, 4)
    for mode in ALL_EDGE_MODES + (["fused"] if _fused_available() else []):
        out, alpha = attend(pattern, value, score="static", src_score=src, negative_slope=None,
                            mode=mode, return_attention=True)  # fmt: skip
        expected = loop_softmax(src[edge_index[0]], value[edge_index[0]], edge_index, 6)
        torch.testing.assert_close(out, expected)
        sums = torch.zeros(6, 1, dtype=alpha.dtype).index_add_(0, edge_index[1], alpha)
        torch.testing.assert_close(sums[:5], torch.ones(5, 1, dtype=alpha.dtype))


@pytest.mark.parametrize("mode", GENERAL_MODES)
def test_graphormer_pair_bias_from_a_user_function(mode):
    """A Graphormer-style score: q.k/sqrt(C) + b[spd(i, j)], the bias table a parameter the
    score_mod closes over; gradients reach the table through the chunked backend too."""
    edge_index, gen = random_graph(2)
    pattern = Pattern.from_edge_index(edge_index, (7, 6))
    query, key, value = rand(gen, 6, 2, 3), rand(gen, 7, 2, 3), rand(gen, 7, 2, 4)
    distance = torch.randint(0, 4, (6, 7), generator=gen)  # a "shortest-path distance" per pair
    table = torch.nn.Parameter(torch.randn(4, 2, generator=gen, dtype=torch.float64))

    def spatial_bias(scores: torch.Tensor, edges: Edges) -> torch.Tensor:
        return scores + table[distance[edges.dst, edges.src]]

    out = attend(pattern, value, query=query, key=key, score_mod=spatial_bias, mode=mode,
                 chunk_size=5)  # fmt: skip
    scores = (query[edge_index[1]] * key[edge_index[0]]).sum(-1) / 3**0.5
    scores = scores + table[distance[edge_index[1], edge_index[0]]]
    expected = loop_softmax(scores, value[edge_index[0]], edge_index, 6)
    torch.testing.assert_close(out, expected)
    weight = torch.randn_like(out)
    inputs = (query, key, value, table)
    got = torch.autograd.grad((out * weight).sum(), inputs)
    want = torch.autograd.grad((expected * weight).sum(), inputs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert table.grad is None  # autograd.grad leaves .grad alone

    def function(query, key, value):
        return attend(pattern, value, query=query, key=key, score_mod=spatial_bias, mode=mode,
                      chunk_size=5)  # fmt: skip

    assert torch.autograd.gradcheck(function, (query, key, value))


@pytest.mark.parametrize("mode", GENERAL_MODES)
def test_score_mod_alone_with_dropout_mask_reused_in_backward(mode):
    edge_index, gen = random_graph(3)
    pattern = Pattern.from_edge_index(edge_index, (7, 6))
    value, pair = rand(gen, 7, 2, 3), rand(gen, 30, 2)

    def function(value, pair):
        torch.manual_seed(5)
        return attend(pattern, value, score=None, edge_inputs=(pair,),
                      score_mod=lambda s, e: s + e.x_edge[0], dropout=0.3, mode=mode,
                      chunk_size=4)  # fmt: skip

    assert torch.autograd.gradcheck(function, (value, pair))
    with torch.no_grad():
        plain = attend(pattern, value, score=None, edge_inputs=(pair,),
                       score_mod=lambda s, e: s + e.x_edge[0], mode=mode)  # fmt: skip
    expected = loop_softmax(pair, value[edge_index[0]], edge_index, 6)
    torch.testing.assert_close(plain, expected)


def kernel_reference(edge_index, a, b, f, weight, reduce, num_dst):
    messages = torch.tanh(a[edge_index[0]] + b[edge_index[1]]) @ weight * f[edge_index[0]]
    rows = []
    for i in range(num_dst):
        edges = (edge_index[1] == i).nonzero().flatten()
        if edges.numel() == 0:
            rows.append(messages.new_zeros(messages.shape[1:]))
        elif reduce == "sum":
            rows.append(messages[edges].sum(0))
        elif reduce == "mean":
            rows.append(messages[edges].mean(0))
        else:
            rows.append(messages[edges].max(0).values)
    return torch.stack(rows)


@pytest.mark.parametrize("mode", GENERAL_MODES)
@pytest.mark.parametrize("reduce", ["sum", "mean", "max"])
@pytest.mark.parametrize("chunk_size", [1, 3, 1000])
def test_message_fn_reductions_like_a_kernel_integral(mode, reduce, chunk_size):
    """GNO's kernel integral: a learned kernel on the pair times f_j, summed or averaged."""
    edge_index, gen = random_graph(4)
    pattern = Pattern.from_edge_index(edge_index, (7, 6))
    a, b, f = rand(gen, 7, 5), rand(gen, 6, 5), rand(gen, 7, 3)
    weight = torch.nn.Parameter(torch.randn(5, 3, generator=gen, dtype=torch.float64))

    def kernel(edges: Edges) -> torch.Tensor:
        a_j, f_j = edges.x_src
        return torch.tanh(a_j + edges.x_dst[0]) @ weight * f_j

    def function(a, b, f, weight_value):
        with torch.no_grad():
            weight.copy_(weight_value)
        return attend(pattern, message_fn=kernel, src_inputs=(a, f), dst_inputs=(b,),
                      reduce=reduce, mode=mode, chunk_size=chunk_size)  # fmt: skip

    out = function(a, b, f, weight.detach())
    expected = kernel_reference(edge_index, a, b, f, weight, reduce, 6)
    torch.testing.assert_close(out, expected)
    cotangent = torch.randn_like(out)
    got = torch.autograd.grad((out * cotangent).sum(), (a, b, f, weight))
    want = torch.autograd.grad((expected * cotangent).sum(), (a, b, f, weight))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)


def test_given_weights_reduction():
    edge_index, gen = random_graph(5)
    pattern = Pattern.from_edge_index(edge_index, (7, 6))
    value, weights = rand(gen, 7, 2, 3), rand(gen, 30, 2)
    expected = torch.zeros(6, 2, 3, dtype=torch.float64).index_add(
        0, edge_index[1], weights.unsqueeze(-1) * value[edge_index[0]]
    )
    for mode in GENERAL_MODES:
        out = attend(pattern, value, reduce="weights", weights=weights, mode=mode, chunk_size=4)
        torch.testing.assert_close(out, expected)
        assert torch.autograd.gradcheck(
            lambda v, w, mode=mode: attend(pattern, v, reduce="weights", weights=w, mode=mode),
            (value, weights),
        )


def test_empty_pattern_and_receivers_without_senders():
    pattern = Pattern.from_edge_index(torch.zeros(2, 0, dtype=torch.long), (3, 4))
    value = torch.randn(3, 2, 5)
    for mode in GENERAL_MODES:
        out = attend(pattern, message_fn=lambda e: e.x_src[0] * 2, src_inputs=(value,),
                     reduce="mean", mode=mode)  # fmt: skip
        assert out.shape == (4, 2, 5) and not out.any()


def test_bad_arguments_are_named():
    edge_index, gen = random_graph(6)
    pattern = Pattern.from_edge_index(edge_index, (7, 6))
    value = torch.randn(7, 2, 3)
    cases = [
        (ValueError, "exactly one", lambda: attend(pattern)),
        (ValueError, "exactly one", lambda: attend(pattern, value, message_fn=lambda e: e.src)),
        (ValueError, "reduce", lambda: attend(pattern, value, reduce="median")),
        (ValueError, "src_score", lambda: attend(pattern, value, score="static")),
        (ValueError, "senders", lambda: attend(pattern, value, score="static",
                                               src_score=torch.randn(3, 2))),  # fmt: skip
        (ValueError, "src_inputs", lambda: attend(pattern, message_fn=lambda e: e.src,
                                                  src_inputs=(torch.randn(2, 1),))),  # fmt: skip
        (TypeError, "message_fn", lambda: attend(pattern, message_fn=3)),
        (ValueError, "weights", lambda: attend(pattern, value, reduce="weights")),
        (ValueError, "score_mod", lambda: attend(pattern, value, score=None)),
        (ValueError, "scatter", lambda: attend(pattern, value, query=torch.randn(6, 2, 3),
                                               key=torch.randn(7, 2, 3),
                                               score_mod=lambda s, e: s, mode="sparse")),
    ]  # fmt: skip
    for error, message, thunk in cases:
        with pytest.raises(error, match=message):
            thunk()


class _HoldsPatterns(torch.nn.Module):
    """A model that keeps its patterns as attributes (as LargeGT-like models do)."""

    def __init__(self) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(7)
        self.pos = torch.rand(40, 3, generator=gen)
        self.graph = Pattern.from_edge_index(torch.randint(0, 40, (2, 200), generator=gen), 40)
        self.blocks = Pattern.full(torch.arange(4).repeat_interleave(10))
        self.geometry = Pattern.radius(self.pos, 0.3, box=1.0)
        self.lin = torch.nn.Linear(3, 2 * 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.cat([x, self.pos], 0)[: x.size(0)]
        q = k = v = self.lin(h).view(-1, 2, 4)
        out = attend(self.graph, v, query=q, key=k) + attend(self.blocks, v, query=q, key=k)
        kernel = attend(self.geometry, message_fn=lambda e: e.x_edge[0].sum(-1, keepdim=True),
                        edge_inputs=(self.geometry.displacement,), reduce="mean")  # fmt: skip
        return out.flatten(1) + kernel


def test_a_model_holding_patterns_pickles(tmp_path):
    import copy
    import pickle

    model = _HoldsPatterns()
    x = torch.randn(40, 3)
    expected = model(x)
    for restored in (
        pickle.loads(pickle.dumps(model)),
        copy.deepcopy(model),
    ):
        assert restored.blocks.blocks is not None  # still a block pattern
        torch.testing.assert_close(restored(x), expected)
    torch.save(model, tmp_path / "model.pt")
    restored = torch.load(tmp_path / "model.pt", weights_only=False)
    torch.testing.assert_close(restored(x), expected)
    torch.testing.assert_close(restored.geometry.displacement, model.geometry.displacement)
