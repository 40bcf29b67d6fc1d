"""The Triton backend (``gtlib.attention.backends.gpu``) against independent references.

Without a GPU the kernels run through Triton's interpreter (``TRITON_INTERPRET=1`` on CPU
tensors); the tests that need Triton skip when it is not installed (the ``gpu-test`` extra), the
schedule and validation tests always run. Tests marked ``gpu`` need a CUDA device.
"""

from __future__ import annotations

import pytest
import torch

from gtlib.attention import Pattern, attend, sparse_attention
from gtlib.attention.backends import gpu
from tests.attention.reference import reference_attention

NAMES = ("query", "key", "value", "att", "key_edge", "value_edge", "bias")


@pytest.fixture
def interpreter():
    """Triton's interpreter on CPU tensors (skips without Triton, or on a GPU run, where
    ``tests/conftest.py`` leaves the interpreter off and the ``gpu`` tests run instead)."""
    pytest.importorskip("triton")
    if not gpu.interpreting():
        pytest.skip("TRITON_INTERPRET=1 is not set (tests/conftest.py sets it without CUDA)")
    return gpu


def _graph(num_nodes=9, num_edges=40, hub_edges=0, seed=0):
    """Random edges with duplicates, isolated receivers and optionally one very high-degree hub."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, num_nodes, (num_edges,), generator=g)
    dst = torch.randint(0, num_nodes - 2, (num_edges,), generator=g)  # last two: no senders
    src[1], dst[1] = src[0], dst[0]  # a duplicate edge
    if hub_edges:
        src = torch.cat([src, torch.randint(0, num_nodes, (hub_edges,), generator=g)])
        dst = torch.cat([dst, torch.full((hub_edges,), 2)])
    return torch.stack([src, dst])


def _inputs(edge_index, num_nodes, score, heads=2, channels=5, value_channels=3,
            dtype=torch.float32, edge_terms=True, seed=1):  # fmt: skip
    g = torch.Generator().manual_seed(seed)
    num_edges = edge_index.size(1)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dtype).requires_grad_()

    tensors = dict(
        query=rand(num_nodes, heads, channels),
        key=rand(num_nodes, heads, channels),
        value=rand(num_nodes, heads, value_channels),
        att=rand(heads, channels) if score == "additive" else None,
    )
    if edge_terms:
        tensors.update(key_edge=rand(num_edges, heads, channels),
                       value_edge=rand(num_edges, heads, value_channels),
                       bias=rand(num_edges, heads))  # fmt: skip
    return tensors


def _reference(edge_index, tensors, score, scale, negative_slope=0.2):
    t = {k: None if v is None else v.detach().double().requires_grad_() for k, v in tensors.items()}
    out, weights = reference_attention(
        t["query"], t["key"], t["value"], edge_index,
        score="dot" if score == "dot" else "gatv2", att=t.get("att"),
        negative_slope=negative_slope, key_edge=t.get("key_edge"),
        value_edge=t.get("value_edge"), bias=t.get("bias"), scale=scale,
    )  # fmt: skip
    return out, weights, t


def _grads(out, tensors, grad):
    leaves = [tensors[n] for n in NAMES if tensors.get(n) is not None]
    return dict(zip([n for n in NAMES if tensors.get(n) is not None],
                    torch.autograd.grad(out, leaves, grad), strict=True))  # fmt: skip


def _triton(pattern, tensors, score, scale, split=gpu.DEFAULT_SPLIT, negative_slope=0.2,
            dropout=0.0, return_attention=False):  # fmt: skip
    sorted_terms = {k: None if tensors.get(k) is None else pattern.to_sorted(tensors[k])
                    for k in ("key_edge", "value_edge", "bias")}  # fmt: skip
    return gpu.triton_attention(
        tensors["query"], tensors["key"], tensors["value"], pattern, score=score,
        att=tensors.get("att"), negative_slope=negative_slope, scale=scale, split=split,
        dropout=dropout, return_attention=return_attention, **sorted_terms,
    )  # fmt: skip


def _close(actual, expected, rtol, what):
    actual, expected = actual.double(), expected.double()
    error = (actual - expected).abs().max().item() if actual.numel() else 0.0
    size = expected.abs().max().item() if expected.numel() else 0.0
    assert error <= rtol * max(size, 1e-3), f"{what}: max error {error:.3e} (scale {size:.3e})"


# ------------------------------------------------------------------------------ values, grads
@pytest.mark.parametrize("score", ["dot", "additive"])
@pytest.mark.parametrize("split", [gpu.DEFAULT_SPLIT, 4])
def test_float32_values_gradients_weights(interpreter, score, split):
    """Duplicate edges, isolated receivers and a hub of 30 senders; split=4 cuts the hub (and
    other receivers) into several work items."""
    num_nodes = 9
    edge_index = _graph(num_nodes, 40, hub_edges=30)
    pattern = Pattern.from_edge_index(edge_index, num_nodes)
    tensors = _inputs(edge_index, num_nodes, score)
    out, weights = _triton(pattern, tensors, score, 0.7, split=split, return_attention=True)
    expected, expected_weights, ref = _reference(edge_index, tensors, score, 0.7)
    _close(out, expected, 1e-5, "output")
    _close(pattern.to_caller(weights), expected_weights, 1e-5, "weights")
    assert out[-2:].abs().max() == 0  # receivers without senders get zeros
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(3))
    got, want = _grads(out, tensors, grad), _grads(expected, ref, grad.double())
    for name in want:
        _close(got[name], want[name], 1e-5, f"grad of {name}")


def test_identity_activation_and_no_edge_terms(interpreter):
    num_nodes = 7
    edge_index = _graph(num_nodes, 25, seed=4)
    pattern = Pattern.from_edge_index(edge_index, num_nodes)
    tensors = _inputs(edge_index, num_nodes, "additive", edge_terms=False, channels=3)
    out = _triton(pattern, tensors, "additive", 1.3, negative_slope=None)
    t = {k: v.detach().double().requires_grad_() for k, v in tensors.items() if v is not None}
    src, dst = edge_index
    scores = ((t["query"][dst] + t["key"][src]) * t["att"]).sum(-1) * 1.3  # act = identity
    expected = torch.zeros(num_nodes, 2, 3, dtype=torch.float64)
    for i in range(num_nodes):
        mask = dst == i
        if mask.any():
            alpha = torch.softmax(scores[mask], 0)
            expected[i] = (alpha[..., None] * t["value"][src[mask]]).sum(0)
    _close(out, expected, 1e-5, "output")
    grad = torch.randn(out.shape)
    got = _grads(out, tensors, grad)
    names = ["query", "key", "value", "att"]
    leaves = [t[name] for name in names]
    want = dict(zip(names, torch.autograd.grad(expected, leaves, grad.double()), strict=True))
    # a . (q_i + k_j) shifts all of i's scores equally: the query gradient is exactly zero
    assert want["query"].abs().max() < 1e-12 and got["query"].abs().max() < 1e-5
    for name in ("key", "value", "att"):
        _close(got[name], want[name], 1e-5, f"grad of {name}")


@pytest.mark.parametrize("score", ["dot", "additive"])
def test_bfloat16_to_its_precision(interpreter, score):
    num_nodes = 9
    edge_index = _graph(num_nodes, 40, hub_edges=10, seed=5)
    pattern = Pattern.from_edge_index(edge_index, num_nodes)
    tensors = _inputs(edge_index, num_nodes, score, dtype=torch.bfloat16)
    out = _triton(pattern, tensors, score, 0.5, split=8)
    assert out.dtype == torch.bfloat16
    expected, _, ref = _reference(edge_index, tensors, score, 0.5)
    _close(out, expected, 2e-2, "output")  # bf16 has 8 bits of mantissa: 2^-8 = 4e-3 per op
    grad = torch.randn(out.shape).to(torch.bfloat16)
    got, want = _grads(out, tensors, grad), _grads(expected, ref, grad.double())
    for name in want:
        assert got[name].dtype == torch.bfloat16
        _close(got[name], want[name], 3e-2, f"grad of {name}")


def test_zero_edges_and_empty_receivers(interpreter):
    pattern = Pattern.from_edge_index(torch.empty(2, 0, dtype=torch.long), 5)
    tensors = _inputs(torch.empty(2, 0, dtype=torch.long), 5, "dot")
    out, weights = _triton(pattern, tensors, "dot", 1.0, return_attention=True)
    assert out.shape == (5, 2, 3) and weights.shape == (0, 2)
    assert out.abs().max() == 0
    grads = _grads(out, tensors, torch.ones_like(out))
    assert all(torch.count_nonzero(g) == 0 for g in grads.values())


def test_dropout_mask_is_regenerated_in_the_backward(interpreter):
    """The kept edges are read off with one-hot per-edge values; the backward with the same
    seed must equal the reference attention with exactly that mask."""
    num_nodes, p = 8, 0.4
    edge_index = _graph(num_nodes, 30, seed=6)
    num_edges = edge_index.size(1)
    pattern = Pattern.from_edge_index(edge_index, num_nodes)
    tensors = _inputs(edge_index, num_nodes, "dot", edge_terms=False)
    one_hot = torch.eye(num_edges)[:, None, :].expand(-1, 2, -1).contiguous()
    probe = dict(tensors, value=torch.zeros(num_nodes, 2, num_edges), value_edge=one_hot)
    torch.manual_seed(11)
    revealed = _triton(pattern, probe, "dot", 0.5, dropout=p).detach()  # [N, H, E]
    _, weights, _ = _reference(edge_index, tensors, "dot", 0.5)
    dst = edge_index[1]
    factor = revealed[dst, :, torch.arange(num_edges)]  # [E, H]: alpha * keep / (1 - p)
    keep = factor > 0
    _close(factor, weights.detach() * keep / (1 - p), 1e-5, "dropout factors")
    assert 0.15 < 1 - keep.double().mean().item() < 0.65  # about p of the weights dropped
    torch.manual_seed(11)  # the same seed: the same mask
    out = _triton(pattern, tensors, "dot", 0.5, dropout=p)
    out_ref, alpha_ref, t = _reference(edge_index, tensors, "dot", 0.5)
    # rebuild the dropped output from the reference weights and the revealed mask
    src = edge_index[0]
    message = (alpha_ref * keep / (1 - p))[..., None] * t["value"][src]
    expected = torch.zeros_like(out_ref).index_add(0, dst, message)
    _close(out, expected, 1e-5, "output with dropout")
    grad = torch.randn(out.shape)
    got = _grads(out, tensors, grad)
    want = dict(zip(["query", "key", "value"], torch.autograd.grad(
        expected, [t["query"], t["key"], t["value"]], grad.double()), strict=True))  # fmt: skip
    for name in want:
        _close(got[name], want[name], 1e-5, f"grad of {name} with dropout")


# ------------------------------------------------------------------------- through the engine
@pytest.mark.parametrize("score", ["dot", "gatv2"])
def test_engine_mode_triton_matches_scatter(interpreter, score):
    num_nodes = 8
    edge_index = _graph(num_nodes, 30, seed=7)
    pattern = Pattern.from_edge_index(edge_index, num_nodes)
    tensors = _inputs(edge_index, num_nodes, "additive" if score == "gatv2" else "dot")
    kwargs = {k: tensors[k] for k in ("att", "key_edge", "value_edge", "bias")}
    args = (tensors["query"], tensors["key"], tensors["value"], pattern)
    out, alpha = sparse_attention(*args, score=score, mode="triton", return_attention=True,
                                  **kwargs)  # fmt: skip
    expected, expected_alpha = sparse_attention(*args, score=score, mode="scatter",
                                                return_attention=True, **kwargs)  # fmt: skip
    _close(out, expected, 1e-5, "output")
    _close(alpha, expected_alpha, 1e-5, "weights (caller order)")
    grad = torch.randn(out.shape)
    got, want = _grads(out, tensors, grad), _grads(expected, tensors, grad)
    for name in want:
        _close(got[name], want[name], 1e-5, f"grad of {name}")


def test_engine_keeps_bfloat16_inputs_for_triton(interpreter):
    num_nodes = 6
    edge_index = _graph(num_nodes, 20, seed=8)
    pattern = Pattern.from_edge_index(edge_index, num_nodes)
    t = _inputs(edge_index, num_nodes, "dot", dtype=torch.bfloat16, edge_terms=False)
    out = attend(pattern, t["value"], query=t["query"], key=t["key"], mode="triton")
    expected = attend(pattern, t["value"].float(), query=t["query"].float(),
                      key=t["key"].float(), mode="scatter")  # fmt: skip
    assert out.dtype == torch.bfloat16
    _close(out, expected, 2e-2, "output")


# ------------------------------------------------------------------- schedule and validation
def test_schedule_covers_every_edge_once_within_the_split():
    edge_index = _graph(12, 60, hub_edges=50, seed=9)
    pattern = Pattern.from_edge_index(edge_index, 12)
    for split in (1, 3, 7, 1000):
        schedule = gpu._schedule(pattern, split)
        covered = torch.zeros(pattern.num_edges, dtype=torch.long)
        ptr = pattern.ptr
        for dst, start, end in zip(schedule.dst.tolist(), schedule.start.tolist(),
                                   schedule.end.tolist(), strict=True):  # fmt: skip
            assert ptr[dst] <= start <= end <= ptr[dst + 1]
            assert end - start <= split
            covered[start:end] += 1
        assert torch.equal(covered, torch.ones_like(covered))
        assert schedule.split == (pattern.max_degree > split)
        assert set(schedule.dst.tolist()) == set(range(12))  # every receiver has an item


def test_mode_triton_errors_clearly(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    pattern = Pattern.from_edge_index(torch.tensor([[0, 1], [1, 0]]), 2)
    q = k = v = torch.randn(2, 1, 4)
    with pytest.raises(RuntimeError, match="mode='triton' needs Triton and a CUDA device"):
        attend(pattern, v, query=q, key=k, mode="triton")
    with pytest.raises(ValueError, match="mode='triton' takes score='dot' or 'additive'"):
        attend(pattern, v, score="static", src_score=torch.randn(2, 1), mode="triton")
    with pytest.raises(ValueError, match="mode='triton' runs the softmax family"):
        attend(pattern, v, score=None, reduce="sum", mode="triton")


def test_auto_never_picks_triton_on_the_cpu(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # Triton usable on the CPU, still not chosen
    pattern = Pattern.from_edge_index(torch.randint(0, 300, (2, 4000)), 300)
    q = k = v = torch.randn(300, 4, 16)
    from gtlib.attention import engine

    mode = engine._resolve_mode("auto", pattern, engine.ScoreSpec("dot", 0.25, None), v, None,
                                None, 0.0, True, False, 4)  # fmt: skip
    assert mode in ("fused", "sparse")
    out = attend(pattern, v, query=q, key=k)
    assert torch.allclose(out, attend(pattern, v, query=q, key=k, mode="scatter"), atol=1e-5)


# ------------------------------------------------------------------------------ on a real GPU
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("score", ["dot", "gatv2"])
def test_cuda_auto_picks_triton_and_matches_scatter(score, monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    num_nodes = 2000
    edge_index = torch.randint(0, num_nodes, (2, 40000), device="cuda")
    pattern = Pattern.from_edge_index(edge_index, num_nodes)
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(num_nodes, 4, 32, device="cuda", generator=g, requires_grad=True)
               for _ in range(3))  # fmt: skip
    att = torch.randn(4, 32, device="cuda", requires_grad=True) if score == "gatv2" else None
    out = sparse_attention(q, k, v, pattern, score=score, att=att)
    ref = sparse_attention(q, k, v, pattern, score=score, att=att, mode="scatter")
    _close(out, ref, 1e-5, "output")
    grad = torch.randn_like(out)
    leaves = [x for x in (q, k, v, att) if x is not None]
    for got, want in zip(torch.autograd.grad(out, leaves, grad),
                         torch.autograd.grad(ref, leaves, grad), strict=True):  # fmt: skip
        _close(got, want, 1e-4, "gradient")


def test_float64_is_not_sent_to_the_float32_kernels(interpreter):
    pattern = Pattern.from_edge_index(torch.tensor([[0, 1], [1, 0]]), 2)
    q = k = v = torch.randn(2, 1, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="mode='triton' computes in float32"):
        attend(pattern, v, query=q, key=k, mode="triton")


@pytest.mark.parametrize("layer", ["GATv2Conv", "TransformerConv"])
def test_layers_on_the_triton_backend_match_pyg(interpreter, layer, monkeypatch):
    """The layer -> engine -> Triton path (what mode='auto' takes on CUDA) against PyG's layer
    with copied weights."""
    import torch_geometric.nn as pyg_nn

    import gtlib.nn as gt_nn
    from gtlib.nn import _conv_common

    monkeypatch.setattr(_conv_common, "attention_mode", lambda returns_weights: "triton")
    calls = []
    kernel = gpu.triton_attention
    monkeypatch.setattr(gpu, "triton_attention", lambda *a, **k: calls.append(1) or kernel(*a, **k))
    torch.manual_seed(0)
    x = torch.randn(10, 6)
    edge_index = _graph(10, 30, seed=12)
    pyg = getattr(pyg_nn, layer)(6, 4, heads=2)
    ours = getattr(gt_nn, layer)(6, 4, heads=2)
    ours.load_state_dict(pyg.state_dict(), strict=True)
    outputs, grads = [], []
    for conv in (pyg, ours):
        xi = x.clone().requires_grad_()
        out = conv(xi, edge_index)
        out.backward(torch.ones_like(out))
        outputs.append(out)
        grads.append(xi.grad)
    assert calls  # the layer ran on the Triton kernels
    _close(outputs[1], outputs[0], 1e-5, "output")
    _close(grads[1], grads[0], 1e-5, "input gradient")
