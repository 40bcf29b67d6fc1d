"""gtlib's ``GPSConv`` under PyG's explainers, against PyG's ``GPSConv`` with copied weights.

PyG's explainers set their edge masks on every ``MessagePassing`` child and register hooks
there; ``GPSConv`` exposes its local layer as ``conv`` and its global attention as ``attn``,
as PyG's does (with ``attn_type="exphormer"`` the ``attn`` child is an ``ExphormerConv``, a
``MessagePassing`` over the graph's edges). Comparisons run in float64.
"""

from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as pyg_nn
from torch_geometric.explain import Explainer
from torch_geometric.explain.algorithm import AttentionExplainer, GNNExplainer
from torch_geometric.explain.algorithm.utils import clear_masks, set_masks
from torch_geometric.utils import coalesce

from gtlib.nn.gat_conv import GATConv
from gtlib.nn.gps_conv import GPSConv

CHANNELS = 8
MODEL_CONFIG = dict(mode="multiclass_classification", task_level="node", return_type="log_probs")
# local layers: (gtlib model's, PyG model's); GIN is PyG's own in both
LOCAL = {
    "gin": (
        lambda: pyg_nn.GINConv(torch.nn.Linear(CHANNELS, CHANNELS)),
        lambda: pyg_nn.GINConv(torch.nn.Linear(CHANNELS, CHANNELS)),
    ),
    "gat": (lambda: GATConv(CHANNELS, 4, heads=2), lambda: pyg_nn.GATConv(CHANNELS, 4, heads=2)),
}


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def two_graphs(seed=0):
    """Two graphs (8 and 6 nodes), unique edges, node 3 of the first with several senders."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(14, 5, generator=gen)
    batch = torch.tensor([0] * 8 + [1] * 6)
    first = torch.randint(0, 8, (2, 24), generator=gen)
    first[:, :3] = torch.tensor([[0, 5, 7], [3, 3, 3]])
    second = 8 + torch.randint(0, 6, (2, 14), generator=gen)
    edge_index = coalesce(torch.cat([first, second], dim=1), num_nodes=14)
    edge_index = edge_index[:, edge_index[0] != edge_index[1]]
    return x, edge_index, batch


class Model(torch.nn.Module):
    """An input projection, ``layers`` GPS layers and a log-softmax head."""

    def __init__(self, gps_cls, local, layers=2, **gps_kwargs):
        super().__init__()
        self.lin = torch.nn.Linear(5, CHANNELS)
        self.gps = torch.nn.ModuleList(
            gps_cls(CHANNELS, local() if local else None, heads=2, **gps_kwargs)
            for _ in range(layers)
        )
        self.out = torch.nn.Linear(CHANNELS, 3)

    def forward(self, x, edge_index, batch):
        h = self.lin(x)
        for layer in self.gps:
            h = layer(h, edge_index, batch)
        return self.out(h).log_softmax(dim=-1)


def explain(model, algorithm, x, edge_index, batch, **kwargs):
    explainer = Explainer(
        model.eval(),
        algorithm=algorithm,
        explanation_type="model",
        edge_mask_type="object",
        model_config=MODEL_CONFIG,
        **kwargs,
    )
    torch.manual_seed(1)
    return explainer(x, edge_index, batch=batch, index=3)


def pair(local, **gps_kwargs):
    """``(gtlib's, PyG's)`` two-layer models with PyG's weights loaded strictly."""
    ours_local, pyg_local = LOCAL[local]
    torch.manual_seed(0)
    theirs = Model(pyg_nn.GPSConv, pyg_local, **gps_kwargs)
    ours = Model(GPSConv, ours_local, **gps_kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


@pytest.mark.parametrize("local", list(LOCAL))
def test_gnn_explainer_edge_mask_matches_pyg(local):
    """Multihead global attention (graph-wise layer norm): the explanation of node 3 equals
    PyG's; it is non-constant inside node 3's graph and exactly zero on the other graph."""
    x, edge_index, batch = two_graphs()
    ours, theirs = pair(local, norm="layer_norm")
    torch.testing.assert_close(
        ours(x, edge_index, batch), theirs(x, edge_index, batch), rtol=1e-10, atol=1e-12
    )
    got = explain(ours, GNNExplainer(epochs=10), x, edge_index, batch)
    expected = explain(theirs, GNNExplainer(epochs=10), x, edge_index, batch)
    mask = got.edge_mask
    assert mask.shape == (edge_index.size(1),)
    torch.testing.assert_close(mask, expected.edge_mask, rtol=1e-6, atol=1e-8)
    own_graph = batch[edge_index[1]] == 0
    assert bool((mask[~own_graph] == 0).all()), "edges of the other graph got weight"
    assert mask[own_graph].std() > 0, "the edge mask is constant"
    assert not any(getattr(m, "explain", None) for m in ours.modules())  # masks cleared


@pytest.mark.parametrize("local", [None, "gat"])
def test_edge_mask_gradients_reach_exphormer_attention(local):
    """``attn_type="exphormer"``: the mask reaches the global attention too. One layer with
    node-wise norms: exactly the edges into the explained nodes get gradients (``conv=None``:
    through the attention alone), and clearing the masks restores the unmasked outputs."""
    x, edge_index, batch = two_graphs(seed=2)
    local_factory = LOCAL[local][0] if local else None
    torch.manual_seed(0)
    model = Model(
        GPSConv,
        local_factory,
        layers=1,
        norm="layer_norm",
        norm_kwargs={"mode": "node"},
        attn_type="exphormer",
        attn_kwargs={"degree": 2, "num_virtual": 1},
    ).eval()
    assert isinstance(model.gps[0].attn, pyg_nn.MessagePassing)
    before = model(x, edge_index, batch)
    mask = torch.nn.Parameter(torch.randn(edge_index.size(1)))
    set_masks(model, mask, edge_index, apply_sigmoid=True)
    masked = model(x, edge_index, batch)
    masked[[3, 9]].sum().backward()
    clear_masks(model)
    into = torch.isin(edge_index[1], torch.tensor([3, 9]))
    assert bool((mask.grad[~into] == 0).all())
    assert bool((mask.grad[into] != 0).all())
    assert not torch.allclose(masked, before)
    torch.testing.assert_close(model(x, edge_index, batch), before, rtol=0, atol=0)


def test_gnn_explainer_over_exphormer_gps():
    """A GNNExplainer edge mask over GPS with Exphormer attention and gtlib's GATConv: non-
    constant, zero outside the receptive field (one layer, node-wise norm: edges into node 3),
    and for ``conv=None`` still non-zero, i.e. produced by the global attention alone."""
    x, edge_index, batch = two_graphs(seed=4)
    into = edge_index[1] == 3
    for local in (LOCAL["gat"][0], None):
        torch.manual_seed(0)
        model = Model(
            GPSConv,
            local,
            layers=1,
            norm="layer_norm",
            norm_kwargs={"mode": "node"},
            attn_type="exphormer",
            attn_kwargs={"degree": 2, "num_virtual": 1},
        )
        mask = explain(model, GNNExplainer(epochs=10), x, edge_index, batch).edge_mask
        assert bool((mask[~into] == 0).all()), "edges outside the receptive field got weight"
        assert bool((mask[into] > 0).all()) and mask[into].std() > 0


def test_attention_explainer_matches_pyg():
    """``AttentionExplainer`` reads the local GATConv's attention through its hooks: equal to
    PyG's GPSConv with PyG's GATConv."""
    x, edge_index, batch = two_graphs(seed=1)
    ours, theirs = pair("gat", norm="layer_norm")
    got = explain(ours, AttentionExplainer(), x, edge_index, batch).edge_mask
    expected = explain(theirs, AttentionExplainer(), x, edge_index, batch).edge_mask
    assert got.abs().sum() > 0
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
