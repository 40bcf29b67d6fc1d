"""``to_hetero_with_bases`` with gtlib's attention convolutions, against PyG's layers with
copied weights (float64).

PyG 2.8.1's basis transform wraps every ``MessagePassing`` in ``HeteroBasisConv``, which
registers a message forward hook that scales the messages by a learned weight per edge type.
The hook checks ``len(edge_type) == messages.size(-2)`` and scales dimension ``-2``. The
attention convolutions send messages ``[E', H, C]`` (``E'`` with the added self-loops), so
dimension ``-2`` holds the *heads*: PyG's own ``GATConv``/``GATv2Conv``/``TransformerConv`` run
exactly when ``heads`` equals the number of input edges ``E`` of the grouped graph (with or
without self-loops, edge features, ``concat``), where head ``h`` of every message is scaled by
the weight of the relation of edge ``h``; for every other head count they raise
``ValueError("Number of messages ...")``. gtlib's layers call the same hook on the same
messages, so they give PyG's numbers in the first case and PyG's error in the second.
"""

from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as pyg_nn
from torch_geometric.nn import to_hetero_with_bases

from gtlib.nn.gat_conv import GATConv
from gtlib.nn.gatv2_conv import GATv2Conv
from gtlib.nn.transformer_conv import TransformerConv

TOL = dict(rtol=1e-9, atol=1e-10)
LAYERS = {
    "gat": (GATConv, pyg_nn.GATConv),
    "gatv2": (GATv2Conv, pyg_nn.GATv2Conv),
    "transformer": (TransformerConv, pyg_nn.TransformerConv),
}
METADATA = (
    ["paper", "author"],
    [("paper", "cites", "paper"), ("author", "writes", "paper"), ("paper", "rev", "author")],
)
SIZES = {"paper": 5, "author": 4}
EDGES_PER_TYPE = 2  # E = 6 edges in the grouped graph


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def hetero_graph(seed=0, edge_dim=None):
    gen = torch.Generator().manual_seed(seed)
    x_dict = {key: torch.randn(n, 8, generator=gen) for key, n in SIZES.items()}
    edge_index_dict, edge_attr_dict = {}, {}
    for src, rel, dst in METADATA[1]:
        senders = torch.randint(0, SIZES[src], (EDGES_PER_TYPE,), generator=gen)
        receivers = torch.randint(0, SIZES[dst], (EDGES_PER_TYPE,), generator=gen)
        edge_index_dict[(src, rel, dst)] = torch.stack([senders, receivers])
        if edge_dim is not None:
            edge_attr_dict[(src, rel, dst)] = torch.randn(EDGES_PER_TYPE, edge_dim, generator=gen)
    # one self-loop among the papers' citations (removed and re-added by the GAT layers)
    edge_index_dict[METADATA[1][0]][:, 0] = torch.tensor([2, 2])
    return x_dict, edge_index_dict, edge_attr_dict


class Net(torch.nn.Module):
    """Two convolutions with a ReLU between them."""

    def __init__(self, cls, heads, **kwargs):
        super().__init__()
        concat = kwargs.pop("concat", True)
        self.conv1 = cls(8, 3, heads=heads, concat=concat, **kwargs)
        self.conv2 = cls(3 * heads if concat else 3, 2, heads=heads, **kwargs)

    def forward(self, x, edge_index):
        return self.conv2(self.conv1(x, edge_index).relu(), edge_index)


class EdgeNet(torch.nn.Module):
    """One convolution with edge features."""

    def __init__(self, cls, heads, **kwargs):
        super().__init__()
        self.conv = cls(8, 3, heads=heads, edge_dim=4, **kwargs)

    def forward(self, x, edge_index, edge_attr):
        return self.conv(x, edge_index, edge_attr)


def build_pair(name, model_cls, heads, **kwargs):
    """``(ours, PyG's)`` transformed models with PyG's weights (bases and relation weights)."""
    ours_cls, pyg_cls = LAYERS[name]
    if name == "transformer":
        kwargs.pop("add_self_loops", None)
    torch.manual_seed(0)
    theirs = to_hetero_with_bases(model_cls(pyg_cls, heads, **dict(kwargs)), METADATA, 2)
    torch.manual_seed(1)
    ours = to_hetero_with_bases(model_cls(ours_cls, heads, **dict(kwargs)), METADATA, 2)
    assert set(ours.state_dict()) == set(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def assert_same_outputs_and_gradients(ours, theirs, *inputs):
    x_dict = inputs[0]
    for x in x_dict.values():
        x.requires_grad_(True)
    results = []
    for model in (ours, theirs):
        out = model(*inputs)
        assert set(out) == set(SIZES)
        loss = sum((value.square() * (i + 1)).sum() for i, value in enumerate(out.values()))
        params = [p for _, p in sorted(model.named_parameters())]
        grads = torch.autograd.grad(loss, params + list(x_dict.values()))
        results.append((out, grads, [n for n, _ in sorted(model.named_parameters())]))
    (out, grads, names), (expected, expected_grads, expected_names) = results
    assert names == expected_names
    for key in SIZES:
        assert out[key].shape[0] == SIZES[key]
        torch.testing.assert_close(out[key], expected[key], **TOL)
    for grad_name, grad, expected_grad in zip(names + list(SIZES), grads, expected_grads):
        torch.testing.assert_close(grad, expected_grad, **TOL, msg=grad_name)
    # the relation weights take part: their gradients are not all zero
    relation = [g for n, g in zip(names, grads) if n.endswith("edge_type_weight")]
    assert relation and all(g.abs().sum() > 0 for g in relation)


NUM_EDGES = EDGES_PER_TYPE * len(METADATA[1])


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize(
    "kwargs",
    [dict(add_self_loops=False), dict(add_self_loops=True), dict(concat=False)],
    ids=["no-loops", "loops", "mean-heads"],
)
def test_matches_pyg_where_pyg_runs(name, kwargs):
    """``heads == E``: the one configuration PyG's layers accept; values and all gradients."""
    ours, theirs = build_pair(name, Net, NUM_EDGES, **kwargs)
    x_dict, edge_index_dict, _ = hetero_graph()
    assert_same_outputs_and_gradients(ours, theirs, x_dict, edge_index_dict)


@pytest.mark.parametrize("name", list(LAYERS))
def test_matches_pyg_with_edge_features(name):
    ours, theirs = build_pair(name, EdgeNet, NUM_EDGES)
    x_dict, edge_index_dict, edge_attr_dict = hetero_graph(seed=1, edge_dim=4)
    assert_same_outputs_and_gradients(ours, theirs, x_dict, edge_index_dict, edge_attr_dict)


@pytest.mark.parametrize("name", list(LAYERS))
@pytest.mark.parametrize("heads", [1, 2, NUM_EDGES + sum(SIZES.values())])
def test_same_error_where_pyg_raises(name, heads):
    """Any other head count (also ``E + N``, the number of messages with self-loops): PyG's
    layer raises in its basis hook, and gtlib's raises the identical error."""
    errors = []
    x_dict, edge_index_dict, _ = hetero_graph()
    for model in build_pair(name, Net, heads):
        with pytest.raises(ValueError, match="Number of messages") as error:
            model(x_dict, edge_index_dict)
        errors.append(str(error.value))
    assert errors[0] == errors[1]
