"""gtlib's layers on PyG ``NeighborLoader`` mini-batches, against PyG's layers with copied
weights. PyG's neighbour sampler needs ``pyg-lib`` or ``torch-sparse`` (the ``scatter`` extra);
without either the test is skipped."""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch_geometric.nn as pyg_nn
from torch_geometric.data import Data

import gtlib.nn as gt_nn

HAS_SAMPLER = any(importlib.util.find_spec(name) for name in ("pyg_lib", "torch_sparse"))


class TwoLayers(torch.nn.Module):
    def __init__(self, module, name: str) -> None:
        super().__init__()
        conv = getattr(module, name)
        self.conv1 = conv(8, 6, heads=2)
        self.conv2 = conv(12, 3, heads=1)

    def forward(self, x, edge_index):
        return self.conv2(self.conv1(x, edge_index).relu(), edge_index)


@pytest.mark.skipif(not HAS_SAMPLER, reason="NeighborLoader needs pyg-lib or torch-sparse")
@pytest.mark.parametrize("name", ["GATConv", "GATv2Conv", "TransformerConv"])
def test_neighbor_loader_batches_match_pyg(name):
    from torch_geometric.loader import NeighborLoader

    torch.manual_seed(0)
    data = Data(x=torch.randn(300, 8), edge_index=torch.randint(0, 300, (2, 2000)))
    ours, theirs = TwoLayers(gt_nn, name).double(), TwoLayers(pyg_nn, name).double()
    theirs.load_state_dict(ours.state_dict())
    loader = NeighborLoader(data, num_neighbors=[5, 5], batch_size=32, shuffle=True)
    for step, batch in enumerate(loader):
        x = batch.x.double().requires_grad_()
        out = ours(x, batch.edge_index)[: batch.batch_size]
        expected = theirs(x, batch.edge_index)[: batch.batch_size]
        torch.testing.assert_close(out, expected)
        grad = torch.autograd.grad(out.square().sum(), x)[0]
        expected_grad = torch.autograd.grad(expected.square().sum(), x)[0]
        torch.testing.assert_close(grad, expected_grad)
        if step == 3:
            break
