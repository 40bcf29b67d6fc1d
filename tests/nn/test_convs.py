"""GATConv, GATv2Conv and TransformerConv against PyG 2.8's layers with the same weights.

Every comparison runs both layers on the same inputs in float64 and checks outputs, returned
attention (edge order included) and the gradients of all parameters and inputs to 1e-10.
"""

from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as pyg_nn
from torch_geometric import EdgeIndex

from gtlib.attention import Pattern
from gtlib.attention.core import SPARSE_THRESHOLD
from gtlib.nn.gat_conv import GATConv
from gtlib.nn.gatv2_conv import GATv2Conv
from gtlib.nn.transformer_conv import TransformerConv

TOL = dict(rtol=1e-10, atol=1e-10)
LAYERS = {
    "gat": (GATConv, pyg_nn.GATConv),
    "gatv2": (GATv2Conv, pyg_nn.GATv2Conv),
    "transformer": (TransformerConv, pyg_nn.TransformerConv),
}


def make_graph(num_src, num_dst, num_edges, seed, sort=False):
    """Random edges with a duplicate, self-loops (when square) and an isolated last receiver."""
    gen = torch.Generator().manual_seed(seed)
    senders = torch.randint(0, num_src, (num_edges,), generator=gen)
    receivers = torch.randint(0, max(num_dst - 1, 1), (num_edges,), generator=gen)
    senders[1], receivers[1] = senders[0], receivers[0]
    if num_src == num_dst:
        senders[2:4] = receivers[2:4]
    edge_index = torch.stack([senders, receivers])
    if sort:  # receiver-major order: the pattern keeps the caller's order
        key = edge_index[1] * num_src + edge_index[0]
        edge_index = edge_index[:, torch.argsort(key)]
        edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    return edge_index


def make_pair(name, *args, dtype=torch.float64, seed=0, **kwargs):
    """(gtlib layer, PyG layer) sharing PyG's weights through a strict state_dict load."""
    ours_cls, pyg_cls = LAYERS[name]
    torch.manual_seed(seed)
    pyg_layer = pyg_cls(*args, **kwargs).to(dtype)
    layer = ours_cls(*args, **kwargs).to(dtype)
    layer.load_state_dict(pyg_layer.state_dict(), strict=True)
    return layer, pyg_layer


def features(shape, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=dtype)


def run(module, x, edge_index, edge_attr, forward_kwargs, seed=None):
    """Forward + backward of a fixed random functional; returns outputs and all gradients."""
    x = tuple(t.clone().requires_grad_() if t is not None else None for t in x)
    edge_attr = None if edge_attr is None else edge_attr.clone().requires_grad_()
    if seed is not None:
        torch.manual_seed(seed)
    module.zero_grad()
    result = module(x[0] if len(x) == 1 else x, edge_index, edge_attr, **forward_kwargs)
    out, attention = result if isinstance(result, tuple) else (result, None)
    loss = (out * features(out.shape, 99, out.dtype)).sum()
    if attention is not None:
        loss = loss + (attention[1] * features(attention[1].shape, 98, out.dtype)).sum()
    loss.backward()
    grads = {name: p.grad for name, p in module.named_parameters()}
    grads.update({f"x{i}": t.grad for i, t in enumerate(x) if t is not None})
    if edge_attr is not None:
        grads["edge_attr"] = edge_attr.grad
    return out, attention, grads


def assert_parity(layer, pyg_layer, x, edge_index, edge_attr=None, ours_edge_index=None,
                  tol=TOL, seed=None, **forward_kwargs):  # fmt: skip
    ours_edge_index = edge_index if ours_edge_index is None else ours_edge_index
    out, attention, grads = run(layer, x, ours_edge_index, edge_attr, forward_kwargs, seed)
    ref_out, ref_attention, ref_grads = run(
        pyg_layer, x, edge_index, edge_attr, forward_kwargs, seed
    )
    torch.testing.assert_close(out, ref_out, **tol)
    assert (attention is None) == (ref_attention is None)
    if attention is not None:
        assert torch.equal(
            attention[0].as_subclass(torch.Tensor), ref_attention[0].as_subclass(torch.Tensor)
        )
        torch.testing.assert_close(attention[1], ref_attention[1], **tol)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        if ref_grads[name] is None:
            assert grad is None or not grad.any(), name
        else:
            torch.testing.assert_close(grad, ref_grads[name], **tol, msg=name)
    return out


# --------------------------------------------------------------------------- argument grid
GATV2_CASES = [
    dict(),
    dict(heads=3, concat=False),
    dict(heads=2, edge_dim=3),
    dict(heads=2, edge_dim=3, fill_value="add"),
    dict(edge_dim=3, fill_value="max"),
    dict(edge_dim=3, fill_value=0.5),
    dict(heads=2, edge_dim=3, fill_value=torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)),
    dict(edge_dim=1, fill_value="min"),
    dict(heads=2, edge_dim=3, add_self_loops=False),
    dict(heads=2, share_weights=True, residual=True),
    dict(heads=2, concat=False, bias=False, residual=True, negative_slope=0.05),
    dict(heads=2, edge_dim=3, edge_attr=False),  # edge_dim set, edge_attr omitted
]
GAT_CASES = [
    *[case for case in GATV2_CASES if "share_weights" not in case],
    dict(heads=2, edge_dim=2, fill_value="mul", residual=True),
]
TRANSFORMER_CASES = [
    dict(),
    dict(heads=3, concat=False),
    dict(heads=2, beta=True),
    dict(heads=2, concat=False, beta=True, edge_dim=3),
    dict(heads=2, root_weight=False, beta=True),
    dict(heads=2, edge_dim=3, bias=False),
    dict(edge_dim=1),
]


def _call_case(name, case, num_nodes=9, num_edges=30, in_channels=5, out_channels=4):
    case = dict(case)
    give_edge_attr = case.pop("edge_attr", True)
    layer, pyg_layer = make_pair(name, in_channels, out_channels, **case)
    edge_index = make_graph(num_nodes, num_nodes, num_edges, seed=1)
    x = (features((num_nodes, in_channels), 2),)
    edge_attr = None
    edge_dim = case.get("edge_dim")
    if edge_dim is not None and give_edge_attr:
        edge_attr = features((num_edges, edge_dim), 3)
        if edge_dim == 1 and name != "transformer":
            edge_attr = edge_attr.view(-1)  # PyG's GAT layers take [E] edge weights
    return layer, pyg_layer, x, edge_index, edge_attr


@pytest.mark.parametrize("case", GATV2_CASES, ids=str)
def test_gatv2_matches_pyg(case):
    layer, pyg_layer, x, edge_index, edge_attr = _call_case("gatv2", case)
    assert_parity(layer, pyg_layer, x, edge_index, edge_attr, return_attention_weights=True)
    assert_parity(layer, pyg_layer, x, edge_index, edge_attr)


@pytest.mark.parametrize("case", GAT_CASES, ids=str)
def test_gat_matches_pyg(case):
    layer, pyg_layer, x, edge_index, edge_attr = _call_case("gat", case)
    assert_parity(layer, pyg_layer, x, edge_index, edge_attr, return_attention_weights=True)
    assert_parity(layer, pyg_layer, x, edge_index, edge_attr)


@pytest.mark.parametrize("case", TRANSFORMER_CASES, ids=str)
def test_transformer_matches_pyg(case):
    layer, pyg_layer, x, edge_index, edge_attr = _call_case("transformer", case)
    assert_parity(layer, pyg_layer, x, edge_index, edge_attr, return_attention_weights=True)
    assert_parity(layer, pyg_layer, x, edge_index, edge_attr)
    # like PyG, any bool (False included) returns the attention weights
    out = layer(x[0], edge_index, edge_attr, return_attention_weights=False)
    assert isinstance(out, tuple) and out[1][1].shape == (edge_index.size(1), case.get("heads", 1))


def test_transformer_skip_hook_sees_the_projection():
    """The skip connection is added into lin_skip's output in place, except when a forward hook
    on lin_skip may keep that output: the hook's tensor stays the projection itself."""
    layer, pyg_layer, x, edge_index, edge_attr = _call_case("transformer", dict(heads=2))
    seen = []
    handle = layer.lin_skip.register_forward_hook(lambda module, args, out: seen.append(out))
    assert_parity(layer, pyg_layer, x, edge_index, edge_attr)
    handle.remove()
    expected = torch.nn.functional.linear(x[0], layer.lin_skip.weight, layer.lin_skip.bias)
    assert seen and all(torch.equal(out, expected) for out in seen)


@pytest.mark.parametrize(
    "name, case",
    [
        ("gatv2", dict(heads=2, edge_dim=2)),
        ("gatv2", dict(heads=2, edge_dim=2, add_self_loops=False, residual=True)),
        ("gatv2", dict(heads=2, share_weights=True, add_self_loops=False)),
        ("gat", dict(heads=2, edge_dim=2, residual=True)),
        ("gat", dict(heads=2, add_self_loops=False, concat=False)),
        ("transformer", dict(heads=2, edge_dim=2, beta=True)),
    ],
    ids=str,
)
def test_bipartite_matches_pyg(name, case):
    num_src, num_dst, num_edges = 7, 5, 20
    in_channels = (6, 6) if case.get("share_weights") else (6, 3)
    layer, pyg_layer = make_pair(name, in_channels, 4, **case)
    edge_index = make_graph(num_src, num_dst, num_edges, seed=4)
    x = (features((num_src, in_channels[0]), 5), features((num_dst, in_channels[1]), 6))
    edge_attr = features((num_edges, 2), 7) if "edge_dim" in case else None
    assert_parity(layer, pyg_layer, x, edge_index, edge_attr, return_attention_weights=True)


def test_gat_special_inputs_match_pyg():
    # a layer built bipartite, called with one tensor
    layer, pyg_layer = make_pair("gat", (5, 5), 3, heads=2, residual=True)
    edge_index = make_graph(8, 8, 25, seed=8)
    x = (features((8, 5), 9),)
    assert_parity(layer, pyg_layer, x, edge_index, return_attention_weights=True)
    # (x_src, None): receivers only score themselves through the sender term
    layer, pyg_layer = make_pair("gat", 5, 3, heads=2, edge_dim=2)
    edge_attr = features((25, 2), 10)
    assert_parity(layer, pyg_layer, (x[0], None), edge_index, edge_attr)
    # size given explicitly, bipartite without self-loops
    layer, pyg_layer = make_pair("gat", (5, 3), 3, heads=2, add_self_loops=False)
    bipartite = make_graph(8, 6, 20, seed=11)
    x_pair = (features((8, 5), 12), features((6, 3), 13))
    assert_parity(layer, pyg_layer, x_pair, bipartite, size=(8, 6))
    with pytest.raises(ValueError, match="size"):
        layer(x_pair, bipartite, size=(8, 7))


@pytest.mark.parametrize("name", ["gat", "gatv2", "transformer"])
def test_float32_matches_pyg(name):
    kwargs = dict(heads=2, edge_dim=3)
    layer, pyg_layer = make_pair(name, 5, 4, dtype=torch.float32, **kwargs)
    edge_index = make_graph(9, 9, 30, seed=1)
    x = (features((9, 5), 2, torch.float32),)
    edge_attr = features((30, 3), 3, torch.float32)
    tol = dict(rtol=1e-5, atol=1e-5)
    assert_parity(layer, pyg_layer, x, edge_index, edge_attr, tol=tol)


@pytest.mark.parametrize("name", ["gat", "gatv2", "transformer"])
def test_large_graph_sparse_path_matches_pyg(name):
    """Big enough for the core's "auto" mode to leave the scatter path."""
    num_nodes, num_edges, heads, channels = 300, 2500, 4, 8
    assert num_edges * heads * channels >= SPARSE_THRESHOLD
    layer, pyg_layer = make_pair(name, 6, channels, heads=heads, edge_dim=2)
    edge_index = make_graph(num_nodes, num_nodes, num_edges, seed=14)
    x = (features((num_nodes, 6), 15),)
    edge_attr = features((num_edges, 2), 16)
    assert_parity(layer, pyg_layer, x, edge_index, edge_attr)


@pytest.mark.parametrize("name", ["gat", "gatv2", "transformer"])
def test_training_dropout_matches_pyg_under_a_seed(name):
    """On receiver-sorted edges both layers draw one [E, H] dropout mask from the same seed."""
    kwargs = dict(heads=2, dropout=0.5, edge_dim=3)
    if name != "transformer":
        kwargs["add_self_loops"] = False
    layer, pyg_layer = make_pair(name, 5, 4, **kwargs)
    layer.train(), pyg_layer.train()
    edge_index = make_graph(9, 9, 40, seed=17, sort=True)
    x = (features((9, 5), 18),)
    edge_attr = features((edge_index.size(1), 3), 19)
    out = assert_parity(layer, pyg_layer, x, edge_index, edge_attr, seed=123)
    again = run(layer, x, edge_index, edge_attr, {}, seed=123)[0]
    torch.testing.assert_close(again, out, rtol=0, atol=0)
    other = run(layer, x, edge_index, edge_attr, {}, seed=124)[0]
    assert not torch.allclose(other, out)
    layer.eval()
    _, (_, alpha) = layer(x[0], edge_index, edge_attr, return_attention_weights=True)
    sums = torch.zeros(9, 2, dtype=alpha.dtype).index_add_(0, edge_index[1], alpha)
    has_edges = torch.bincount(edge_index[1], minlength=9) > 0
    torch.testing.assert_close(sums[has_edges], torch.ones_like(sums[has_edges]))


# --------------------------------------------------------------------------- graph inputs
@pytest.mark.parametrize(
    "name, loops", [("gat", True), ("gat", False), ("gatv2", True), ("gatv2", False),
                    ("transformer", False)]
)  # fmt: skip
def test_pattern_and_edge_index_inputs_match_pyg(name, loops):
    kwargs = dict(heads=2, edge_dim=3)
    if name != "transformer":
        kwargs["add_self_loops"] = loops
    layer, pyg_layer = make_pair(name, 5, 4, **kwargs)
    edge_index = make_graph(9, 9, 30, seed=20)
    x = (features((9, 5), 21),)
    edge_attr = features((30, 3), 22)
    pattern = Pattern.from_edge_index(edge_index, 9)
    assert_parity(layer, pyg_layer, x, edge_index, edge_attr, ours_edge_index=pattern,
                  return_attention_weights=True)  # fmt: skip
    for sort_order in (None, "row", "col"):
        typed = EdgeIndex(edge_index, sparse_size=(9, 9))
        perm = torch.arange(30)
        if sort_order is not None:
            typed, perm = typed.sort_by(sort_order)
        attr = edge_attr[perm]
        assert_parity(layer, pyg_layer, x, typed, attr, return_attention_weights=True)


def test_patterns_are_cached_per_graph(monkeypatch):
    calls = []
    build = Pattern.from_edge_index.__func__

    def counting(cls, *args, **kwargs):
        calls.append(1)
        return build(cls, *args, **kwargs)

    monkeypatch.setattr(Pattern, "from_edge_index", classmethod(counting))
    x = features((9, 5), 24)
    for name, kwargs in (("gatv2", {}), ("gat", {}), ("transformer", {})):
        edge_index = make_graph(9, 9, 30, seed=23)
        calls.clear()
        layer, pyg_layer = make_pair(name, 5, 4, **kwargs)
        second, _ = make_pair(name, 5, 4, **kwargs)
        layer(x, edge_index), layer(x, edge_index), second(x, edge_index)
        assert len(calls) == 1, name
        edge_index[0, 5] = (edge_index[0, 5] + 1) % 9  # in place: the next call must rebuild
        torch.testing.assert_close(layer(x, edge_index), pyg_layer(x, edge_index), **TOL)
        assert len(calls) == 2, name
        layer(x, edge_index.clone())
        assert len(calls) == 3, name


@pytest.mark.parametrize("name", ["gat", "gatv2", "transformer"])
def test_compiles_without_graph_breaks_on_a_pattern(name):
    kwargs = dict(heads=2, edge_dim=3)
    if name != "transformer":
        kwargs["add_self_loops"] = False
    layer, _ = make_pair(name, 5, 4, **kwargs)
    edge_index = make_graph(9, 9, 30, seed=25)
    pattern = Pattern.from_edge_index(edge_index, 9)
    x, edge_attr = features((9, 5), 26), features((30, 3), 27)
    torch._dynamo.reset()
    explanation = torch._dynamo.explain(layer)(x, pattern, edge_attr)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    with_attention = torch._dynamo.explain(
        lambda *args: layer(*args, return_attention_weights=True)
    )(x, pattern, edge_attr)
    assert with_attention.graph_break_count == 0, with_attention.break_reasons
    compiled = torch.compile(layer, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, pattern, edge_attr), layer(x, pattern, edge_attr), **TOL)
    torch._dynamo.reset()


# --------------------------------------------------------------------------- construction
@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("gatv2", dict(heads=2, edge_dim=3, residual=True, share_weights=True)),
        ("gatv2", dict(heads=2, edge_dim=3, residual=True, bias=False)),
        ("gat", dict(heads=2, edge_dim=3, residual=True)),
        ("transformer", dict(heads=2, edge_dim=3, beta=True)),
        ("transformer", dict(concat=False, bias=False, root_weight=False)),
    ],
    ids=str,
)
def test_same_init_repr_and_state_dict_both_ways(name, kwargs):
    ours_cls, pyg_cls = LAYERS[name]
    for in_channels in (5, (5, 3)):
        if kwargs.get("share_weights") and in_channels != 5:
            continue
        torch.manual_seed(30)
        pyg_layer = pyg_cls(in_channels, 4, **kwargs)
        torch.manual_seed(30)
        layer = ours_cls(in_channels, 4, **kwargs)
        assert repr(layer) == repr(pyg_layer)
        ours_state = layer.state_dict()
        pyg_state = {key: value.clone() for key, value in pyg_layer.state_dict().items()}
        assert ours_state.keys() == pyg_state.keys()
        for key, value in pyg_state.items():  # the same seed gives PyG's initial weights
            assert torch.equal(ours_state[key], value), key
        layer.reset_parameters()
        pyg_layer.load_state_dict(layer.state_dict(), strict=True)
        assert not torch.equal(pyg_layer.state_dict()[key], pyg_state[key])


def test_lazy_in_channels():
    layer, pyg_layer = make_pair("gatv2", -1, 4, heads=2, dtype=torch.float32)
    edge_index = make_graph(9, 9, 30, seed=31)
    x = features((9, 5), 32)
    layer(x.float(), edge_index), pyg_layer(x.float(), edge_index)  # materialise both
    layer.double(), pyg_layer.double()
    assert layer.lin_l.weight.shape == (8, 5)
    layer.load_state_dict(pyg_layer.state_dict(), strict=True)
    assert_parity(layer, pyg_layer, (x,), edge_index)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("name", ["gat", "gatv2", "transformer"])
def test_bad_input_raises_clear_errors(name):
    ours_cls, _ = LAYERS[name]
    layer = ours_cls(5, 4, heads=2, edge_dim=3).double()
    plain = ours_cls(5, 4, heads=2).double()
    edge_index = make_graph(9, 9, 30, seed=33)
    x, edge_attr = features((9, 5), 34), features((30, 3), 35)
    with pytest.raises(ValueError, match=r"x must have shape \[N, F\]"):
        layer(x.view(-1), edge_index, edge_attr)
    with pytest.raises(ValueError, match="x must have 5 features"):
        layer(x[:, :4], edge_index, edge_attr)
    with pytest.raises(TypeError, match="x must be a floating-point tensor"):
        layer(x.long(), edge_index, edge_attr)
    with pytest.raises(TypeError, match="x must be a tensor"):
        layer([x, x, x], edge_index, edge_attr)
    with pytest.raises(ValueError, match="x_dst must have 5 features"):
        layer((x, x[:, :2]), edge_index, edge_attr)
    with pytest.raises(ValueError, match="edge_attr must have edge_dim=3 columns"):
        layer(x, edge_index, edge_attr[:, :2])
    with pytest.raises(ValueError, match=r"edge_attr must have one row per edge \(30\)"):
        layer(x, edge_index, edge_attr[:29])
    with pytest.raises(ValueError, match=r"edge_attr must have shape \[E, 3\]"):
        layer(x, edge_index, edge_attr.view(30, 3, 1))
    with pytest.raises(ValueError, match="edge_dim=None"):
        plain(x, edge_index, edge_attr)
    with pytest.raises(TypeError, match="edge_index must have an integer dtype"):
        layer(x, edge_index.double(), edge_attr)
    with pytest.raises(ValueError, match=r"edge_index must have shape \[2, E\]"):
        layer(x, edge_index[:1], edge_attr)
    with pytest.raises(ValueError, match="one row per edge"):  # adj_t: one row per nonzero
        layer(x, torch.eye(9).to_sparse(), edge_attr)
    bad = edge_index.clone()
    bad[0, 0] = 9
    with pytest.raises(ValueError, match="must lie in"):
        layer(x, bad, edge_attr)
    with pytest.raises(ValueError, match="the pattern has"):
        layer(x, Pattern.from_edge_index(edge_index, 10), edge_attr)
    with pytest.raises(TypeError, match="unexpected keyword argument 'node_dim'"):
        ours_cls(5, 4, node_dim=1)
    with pytest.raises(ValueError, match="aggr must be one of"):
        ours_cls(5, 4, aggr="mean")
    with pytest.raises(ValueError, match="heads"):
        ours_cls(5, 4, heads=0)
    if name == "transformer":
        with pytest.raises(ValueError, match="pass edge_attr"):
            layer(x, edge_index)
    else:
        with pytest.raises(ValueError, match="fill_value must be one of"):
            ours_cls(5, 4, fill_value="median")
        with pytest.raises(TypeError, match="fill_value must be"):
            ours_cls(5, 4, fill_value=[1.0])
