"""gtlib's graph convolutions inside PyG's own machinery, against PyG's layers with copied weights.

Sequential, ``to_hetero``, ``HeteroConv``, sparse ``adj_t`` inputs,
``EdgeIndex``, lazy initialisation, ``GNNExplainer`` / ``AttentionExplainer`` and
``torch.compile(dynamic=True, fullgraph=True)``. Comparisons run in float64.
``to_hetero_with_bases`` is in ``test_hetero_bases.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as pyg_nn
from torch_geometric import EdgeIndex
from torch_geometric.explain import Explainer
from torch_geometric.explain.algorithm import AttentionExplainer, GNNExplainer
from torch_geometric.explain.algorithm.utils import clear_masks, set_masks
from torch_geometric.nn import HeteroConv, MessagePassing, to_hetero
from torch_geometric.utils import coalesce

from gtlib.nn.gat_conv import GATConv
from gtlib.nn.gatv2_conv import GATv2Conv
from gtlib.nn.transformer_conv import TransformerConv

TOL = dict(rtol=1e-9, atol=1e-10)
LAYERS = {
    "gat": (GATConv, pyg_nn.GATConv),
    "gatv2": (GATv2Conv, pyg_nn.GATv2Conv),
    "transformer": (TransformerConv, pyg_nn.TransformerConv),
}
NAMES = list(LAYERS)
METADATA = (
    ["paper", "author"],
    [("paper", "cites", "paper"), ("author", "writes", "paper"), ("paper", "rev", "author")],
)


@pytest.fixture(autouse=True)
def float64():
    """Builds every module and tensor in float64 (lazy parameters included)."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def graph(num_nodes=12, num_edges=40, seed=0, unique=False):
    """Random features ``[N, 8]`` and edges with self-loops (and duplicates unless ``unique``)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_nodes, 8, generator=gen)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=gen)
    edge_index[:, :2] = torch.tensor([[1, 3], [1, 3]])  # self-loops
    if unique:
        edge_index = coalesce(edge_index, num_nodes=num_nodes)
    return x, edge_index


def hetero_graph(seed=0):
    gen = torch.Generator().manual_seed(seed)
    sizes = {"paper": 9, "author": 6}
    x_dict = {key: torch.randn(n, 8, generator=gen) for key, n in sizes.items()}
    edge_index_dict = {}
    for src, rel, dst in METADATA[1]:
        senders = torch.randint(0, sizes[src], (20,), generator=gen)
        receivers = torch.randint(0, sizes[dst], (20,), generator=gen)
        edge_index_dict[(src, rel, dst)] = torch.stack([senders, receivers])
    return x_dict, edge_index_dict


def conv_kwargs(name, bipartite=False):
    """Two heads; GAT layers on bipartite edge types without self-loops (as PyG requires)."""
    kwargs = dict(heads=2)
    if bipartite and name != "transformer":
        kwargs["add_self_loops"] = False
    return kwargs


class Net(torch.nn.Module):
    """Two convolutions with a ReLU between them and a log-softmax head."""

    def __init__(self, cls, in_channels=8, log_softmax=False, **kwargs):
        super().__init__()
        self.conv1 = cls(in_channels, 4, **kwargs)
        self.conv2 = cls(-1 if isinstance(in_channels, int) else (-1, -1), 3, **kwargs)
        self.log_softmax = log_softmax

    def forward(self, x, edge_index):
        x = self.conv1(x, edge_index).relu()
        x = self.conv2(x, edge_index)
        return x.log_softmax(dim=-1) if self.log_softmax else x


def copy_weights(ours, theirs, *args):
    """Runs both models once (materialising lazy parameters), then loads PyG's weights."""
    with torch.no_grad():
        theirs(*args)
        ours(*args)
    ours.load_state_dict(theirs.state_dict(), strict=True)


@pytest.mark.parametrize("name", NAMES)
def test_is_message_passing(name):
    ours_cls, pyg_cls = LAYERS[name]
    layer, pyg_layer = ours_cls(8, 4, heads=2), pyg_cls(8, 4, heads=2)
    assert isinstance(layer, MessagePassing)
    assert (layer.aggr, layer.node_dim, layer.flow) == ("add", 0, "source_to_target")
    assert repr(layer) == repr(pyg_layer)
    assert set(layer.state_dict()) == set(pyg_layer.state_dict())


@pytest.mark.parametrize("name", NAMES)
def test_sequential_and_lazy_initialisation(name):
    ours_cls, pyg_cls = LAYERS[name]
    x, edge_index = graph()

    def build(cls):
        torch.manual_seed(0)
        return pyg_nn.Sequential(
            "x, edge_index",
            [
                (cls(-1, 4, heads=2), "x, edge_index -> x"),
                torch.nn.ReLU(),
                (cls(-1, 3, heads=2), "x, edge_index -> x"),
            ],
        )

    ours, theirs = build(ours_cls), build(pyg_cls)
    copy_weights(ours, theirs, x, edge_index)
    x.requires_grad_(True)
    out, expected = ours(x, edge_index), theirs(x, edge_index)
    torch.testing.assert_close(out, expected, **TOL)
    grad = torch.autograd.grad(out.square().sum(), x)[0]
    torch.testing.assert_close(grad, torch.autograd.grad(expected.square().sum(), x)[0], **TOL)


@pytest.mark.parametrize("name", NAMES)
def test_to_hetero_outputs_per_node_type(name):
    ours_cls, pyg_cls = LAYERS[name]
    x_dict, edge_index_dict = hetero_graph()
    kwargs = conv_kwargs(name, bipartite=True)
    ours = to_hetero(Net(ours_cls, (-1, -1), **kwargs), METADATA, aggr="sum")
    theirs = to_hetero(Net(pyg_cls, (-1, -1), **kwargs), METADATA, aggr="sum")
    copy_weights(ours, theirs, x_dict, edge_index_dict)
    out, expected = ours(x_dict, edge_index_dict), theirs(x_dict, edge_index_dict)
    assert set(out) == set(expected) == {"paper", "author"}
    for key in expected:
        torch.testing.assert_close(out[key], expected[key], **TOL)


@pytest.mark.parametrize("name", NAMES)
def test_hetero_conv(name):
    ours_cls, pyg_cls = LAYERS[name]
    x_dict, edge_index_dict = hetero_graph(seed=1)

    def build(cls):
        convs = {
            edge_type: cls((-1, -1), 4, **conv_kwargs(name, bipartite=True))
            for edge_type in METADATA[1]
        }
        return HeteroConv(convs, aggr="sum")

    ours, theirs = build(ours_cls), build(pyg_cls)
    copy_weights(ours, theirs, x_dict, edge_index_dict)
    out, expected = ours(x_dict, edge_index_dict), theirs(x_dict, edge_index_dict)
    assert set(out) == set(expected)
    for key in expected:
        torch.testing.assert_close(out[key], expected[key], **TOL)


@pytest.mark.parametrize("layout", ["coo", "csr"])
@pytest.mark.parametrize("name", NAMES)
def test_sparse_adj_t(name, layout):
    ours_cls, pyg_cls = LAYERS[name]
    x, edge_index = graph(unique=True)
    torch.manual_seed(0)
    pyg_layer = pyg_cls(8, 4, heads=2)
    layer = ours_cls(8, 4, heads=2)
    layer.load_state_dict(pyg_layer.state_dict(), strict=True)
    values = torch.ones(edge_index.size(1))
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), values, (12, 12)).coalesce()
    if layout == "csr":
        adj_t = adj_t.to_sparse_csr()
    x.requires_grad_(True)
    out = layer(x, adj_t)
    torch.testing.assert_close(out, pyg_layer(x, adj_t), **TOL)
    torch.testing.assert_close(out, pyg_layer(x, edge_index), **TOL)
    grad = torch.autograd.grad(out.sum(), x)[0]
    expected = torch.autograd.grad(pyg_layer(x, edge_index).sum(), x)[0]
    torch.testing.assert_close(grad, expected, **TOL)


@pytest.mark.parametrize("name", NAMES)
def test_edge_index_input(name):
    ours_cls, pyg_cls = LAYERS[name]
    x, edge_index = graph()
    torch.manual_seed(0)
    pyg_layer = pyg_cls(8, 4, heads=2)
    layer = ours_cls(8, 4, heads=2)
    layer.load_state_dict(pyg_layer.state_dict(), strict=True)
    index = EdgeIndex(edge_index, sparse_size=(12, 12)).sort_by("col")[0]
    torch.testing.assert_close(layer(x, index), pyg_layer(x, index.as_tensor()), **TOL)
    torch.testing.assert_close(layer(x, index), pyg_layer(x, edge_index), **TOL)


def explain_pair(name, algorithm_factory, **explainer_kwargs):
    """``(ours, PyG's)`` explanations of node 3 of a two-layer model with shared weights."""
    ours_cls, pyg_cls = LAYERS[name]
    x, edge_index = graph(seed=3)
    torch.manual_seed(0)
    theirs = Net(pyg_cls, 8, log_softmax=True, heads=2)
    ours = Net(ours_cls, 8, log_softmax=True, heads=2)
    copy_weights(ours, theirs, x, edge_index)
    explanations = []
    for model in (ours, theirs):
        explainer = Explainer(
            model.eval(),
            algorithm=algorithm_factory(),
            explanation_type="model",
            edge_mask_type="object",
            model_config=dict(
                mode="multiclass_classification", task_level="node", return_type="log_probs"
            ),
            **explainer_kwargs,
        )
        torch.manual_seed(1)
        explanations.append(explainer(x, edge_index, index=3))
        assert not any(getattr(m, "explain", None) for m in model.modules())  # masks cleared
    return explanations, edge_index


@pytest.mark.parametrize("name", NAMES)
def test_gnn_explainer_edge_mask(name):
    (ours, theirs), edge_index = explain_pair(
        name, lambda: GNNExplainer(epochs=20), node_mask_type="attributes"
    )
    mask = ours.edge_mask
    assert mask.shape == (edge_index.size(1),)
    torch.testing.assert_close(mask, theirs.edge_mask, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(ours.node_mask, theirs.node_mask, rtol=1e-6, atol=1e-8)
    # two layers: only edges into node 3 or into its in-neighbours can matter
    hop1 = torch.cat([torch.tensor([3]), edge_index[0, edge_index[1] == 3]])
    inside = torch.isin(edge_index[1], hop1)
    assert bool((mask[~inside] == 0).all()), "edges outside the receptive field got weight"
    assert mask[inside].std() > 0, "the edge mask is constant"


@pytest.mark.parametrize("name", NAMES)
def test_explain_mask_gradient_with_edge_features(name):
    """PyG's ``set_masks`` on one layer with edge features and a self-loop in the input: the
    same outputs and mask gradients as PyG's layer (zero for the removed self-loop of the GAT
    layers), and the fast path again once the masks are cleared."""
    ours_cls, pyg_cls = LAYERS[name]
    torch.manual_seed(0)
    pyg_layer = pyg_cls(8, 4, heads=2, edge_dim=3)
    layer = ours_cls(8, 4, heads=2, edge_dim=3)
    layer.load_state_dict(pyg_layer.state_dict(), strict=True)
    x, edge_index = graph(10, 30, seed=5)
    edge_attr = torch.randn(30, 3)
    init = torch.randn(30)
    results = []
    for module in (layer, pyg_layer):
        mask = torch.nn.Parameter(init.clone())
        set_masks(module, mask, edge_index, apply_sigmoid=True)
        out = module(x, edge_index, edge_attr)
        out[:4].square().sum().backward()
        clear_masks(module)
        results.append((out.detach(), mask.grad))
    torch.testing.assert_close(results[0][0], results[1][0], **TOL)
    torch.testing.assert_close(results[0][1], results[1][1], **TOL)
    assert results[0][1].abs().sum() > 0
    assert not layer.explain
    torch.testing.assert_close(
        layer(x, edge_index, edge_attr), pyg_layer(x, edge_index, edge_attr), **TOL
    )


@pytest.mark.parametrize("name", NAMES)
def test_attention_explainer(name):
    (ours, theirs), edge_index = explain_pair(name, AttentionExplainer)
    assert ours.edge_mask.shape == (edge_index.size(1),)
    assert ours.edge_mask.abs().sum() > 0
    torch.testing.assert_close(ours.edge_mask, theirs.edge_mask, **TOL)


@pytest.mark.parametrize(("name", "backend"), [("gat", "inductor"), ("transformer", "aot_eager")])
def test_compile_dynamic_no_recompile(name, backend):
    """One graph for every batch size: no graph break, no recompile (with self-loops removed
    and re-added, and edge features filled by ``mean``). ``aot_eager`` traces like inductor
    (fake tensors, symbolic sizes) without its code generation, to keep the test short."""
    from torch._dynamo.utils import counters

    ours_cls, pyg_cls = LAYERS[name]
    torch.manual_seed(0)
    pyg_layer = pyg_cls(8, 4, heads=2, edge_dim=3)
    layer = ours_cls(8, 4, heads=2, edge_dim=3)
    layer.load_state_dict(pyg_layer.state_dict(), strict=True)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(layer, dynamic=True, fullgraph=True, backend=backend)
    for num_nodes, num_edges in ((10, 30), (17, 50), (23, 70)):
        x, edge_index = graph(num_nodes, num_edges, seed=num_nodes)
        edge_attr = torch.randn(edge_index.size(1), 3)
        out = compiled(x, edge_index, edge_attr)
        torch.testing.assert_close(out, pyg_layer(x, edge_index, edge_attr), **TOL)
    assert counters["stats"]["unique_graphs"] == 1
    assert not counters["recompiles"]
    assert not counters["graph_break"]
    torch._dynamo.reset()
