"""``torch_sparse.SparseTensor`` adjacencies (``adj_t [N_dst, N_src]``) as the ``edge_index`` of
gtlib's attention convolutions, against PyG's layers with copied weights (float64). Skipped
when ``torch-sparse`` is not installed."""

from __future__ import annotations

import pytest
import torch
import torch_geometric.nn as pyg_nn
from torch_geometric.utils import coalesce

from gtlib.nn.gat_conv import GATConv
from gtlib.nn.gatv2_conv import GATv2Conv
from gtlib.nn.transformer_conv import TransformerConv

torch_sparse = pytest.importorskip("torch_sparse")

TOL = dict(rtol=1e-9, atol=1e-10)
LAYERS = {
    "gat": (GATConv, pyg_nn.GATConv),
    "gatv2": (GATv2Conv, pyg_nn.GATv2Conv),
    "transformer": (TransformerConv, pyg_nn.TransformerConv),
}


@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def layer_pair(name, in_channels, **kwargs):
    ours_cls, pyg_cls = LAYERS[name]
    torch.manual_seed(0)
    theirs = pyg_cls(in_channels, 4, heads=2, **kwargs)
    ours = ours_cls(in_channels, 4, heads=2, **kwargs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return ours, theirs


def assert_same(ours, theirs, x, adj_t, edge_index):
    """Outputs and input gradients equal PyG's with ``adj_t`` and with the edge list."""
    inputs = [x] if torch.is_tensor(x) else [t for t in x if t is not None]
    for t in inputs:
        t.requires_grad_(True)
    out = ours(x, adj_t)
    expected = theirs(x, adj_t)
    torch.testing.assert_close(out, expected, **TOL)
    torch.testing.assert_close(out, theirs(x, edge_index), **TOL)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad((out * weight).sum(), inputs)
    expected_grads = torch.autograd.grad((expected * weight).sum(), inputs)
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want, **TOL)


@pytest.mark.parametrize("name", list(LAYERS))
def test_sparse_tensor_adj_t(name):
    """One graph with a self-loop in the input (the GAT layers replace it, as PyG does)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(12, 8, generator=gen)
    edge_index = torch.randint(0, 12, (2, 40), generator=gen)
    edge_index[:, 0] = torch.tensor([4, 4])
    edge_index = coalesce(edge_index, num_nodes=12)
    adj_t = torch_sparse.SparseTensor(row=edge_index[1], col=edge_index[0], sparse_sizes=(12, 12))
    ours, theirs = layer_pair(name, 8)
    assert_same(ours, theirs, x, adj_t, edge_index)


@pytest.mark.parametrize("name", list(LAYERS))
def test_sparse_tensor_adj_t_bipartite(name):
    """``(x_src, x_dst)`` with a rectangular ``adj_t [N_dst, N_src]`` (GAT layers without
    self-loops, as PyG requires for bipartite inputs)."""
    gen = torch.Generator().manual_seed(2)
    x_src, x_dst = torch.randn(9, 8, generator=gen), torch.randn(5, 6, generator=gen)
    edge_index = torch.stack(
        [torch.randint(0, 9, (25,), generator=gen), torch.randint(0, 5, (25,), generator=gen)]
    )
    edge_index = coalesce(edge_index, num_nodes=9)
    adj_t = torch_sparse.SparseTensor(row=edge_index[1], col=edge_index[0], sparse_sizes=(5, 9))
    kwargs = {} if name == "transformer" else {"add_self_loops": False}
    ours, theirs = layer_pair(name, (8, 6), **kwargs)
    assert_same(ours, theirs, (x_src, x_dst), adj_t, edge_index)
