"""GPSConv against PyG's GPSConv (copied weights) and dense float64 per-graph references."""

from __future__ import annotations

import copy
import math
import pickle

import pytest
import torch
import torch.nn.functional as F
from torch_geometric.nn import GATConv, GINConv, GINEConv
from torch_geometric.nn import GPSConv as PyGGPSConv

import gtlib.nn.gps_conv as gps_module
from gtlib.attention import Pattern
from gtlib.nn.gps_conv import GPSConv

CHANNELS, HEADS = 16, 4
SIZES = [3, 8, 200]  # very different graph sizes: PyG pads the small ones to 200 nodes


def make_batch(sizes, seed=0, edges_per_node=3, edge_dim=None):
    generator = torch.Generator().manual_seed(seed)
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    starts = torch.cumsum(torch.tensor(sizes), 0) - torch.tensor(sizes)
    senders, receivers = [], []
    for start, size in zip(starts.tolist(), sizes):
        count = edges_per_node * size
        senders.append(start + torch.randint(0, size, (count,), generator=generator))
        receivers.append(start + torch.randint(0, size, (count,), generator=generator))
    edge_index = torch.stack([torch.cat(senders), torch.cat(receivers)])
    x = torch.randn(batch.numel(), CHANNELS, generator=generator, dtype=torch.float64)
    edge_attr = None
    if edge_dim is not None:
        edge_attr = torch.randn(edge_index.size(1), edge_dim, generator=generator)
        edge_attr = edge_attr.double()
    return x, edge_index, batch, edge_attr


def gine() -> GINEConv:
    mlp = torch.nn.Sequential(torch.nn.Linear(CHANNELS, CHANNELS), torch.nn.ReLU())
    return GINEConv(mlp, edge_dim=5)


def pair(conv_factory, **kwargs):
    """A PyG GPSConv and a gtlib GPSConv holding the same weights (float64)."""
    torch.manual_seed(0)
    theirs = PyGGPSConv(CHANNELS, conv_factory(), heads=HEADS, **kwargs).double()
    ours = GPSConv(CHANNELS, conv_factory(), heads=HEADS, **kwargs).double()
    with torch.no_grad():  # random running stats so that eval-mode batch norm is not the identity
        for norm in (theirs.norm1, theirs.norm2, theirs.norm3):
            norm.module.running_mean.uniform_(-0.5, 0.5)
            norm.module.running_var.uniform_(0.5, 2.0)
            norm.module.weight.uniform_(0.5, 1.5)
            norm.module.bias.uniform_(-0.5, 0.5)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    return theirs, ours


def outputs_and_grads(module, x, *args, **kwargs):
    x = x.clone().requires_grad_(True)
    out = module(x, *args, **kwargs)
    weight = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view_as(out)
    (out * weight).sum().backward()
    grads = {name: p.grad for name, p in module.named_parameters() if p.grad is not None}
    grads = {name: grad.clone() for name, grad in grads.items()}
    module.zero_grad()
    return out.detach(), x.grad, grads


def assert_same_outputs_and_grads(theirs, ours, x, *args, tol=1e-10, **kwargs):
    out_t, dx_t, grads_t = outputs_and_grads(theirs, x, *args, **kwargs)
    out_o, dx_o, grads_o = outputs_and_grads(ours, x, *args, **kwargs)
    torch.testing.assert_close(out_o, out_t, atol=tol, rtol=tol)
    torch.testing.assert_close(dx_o, dx_t, atol=tol, rtol=tol)
    assert grads_o.keys() == grads_t.keys()
    for name in grads_t:
        torch.testing.assert_close(grads_o[name], grads_t[name], atol=tol, rtol=tol, msg=name)


# ---------------------------------------------------------------------- dense references
def dense_softmax_attention(x, attn, mask):
    """Masked multi-head softmax attention of one graph from MultiheadAttention's weights.

    ``mask[i, j]``: receiver ``i`` attends to sender ``j``."""
    n, heads = x.size(0), attn.num_heads
    head_dim = x.size(1) // heads
    q, k, v = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    q, k, v = (t.view(n, heads, head_dim) for t in (q, k, v))
    scores = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(head_dim)
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.einsum("hij,jhd->ihd", torch.softmax(scores, dim=-1), v)
    return attn.out_proj(out.reshape(n, -1))


def dense_favor(x, attn):
    """FAVOR+ of one graph written out densely: A = phi(Q) phi(K)^T, out = A V / A 1."""
    n, heads, head_dim = x.size(0), attn.heads, attn.head_channels
    projection = attn.fast_attn.projection_matrix  # [M, D]

    def phi(t):
        return torch.relu(torch.einsum("nhd,md->hnm", t.view(n, heads, head_dim), projection))

    q, k = phi(attn.q(x)) + 1e-3, phi(attn.k(x)) + 1e-3
    v = attn.v(x).view(n, heads, head_dim).transpose(0, 1)
    kernel = q @ k.transpose(1, 2)  # [H, n, n]
    out = (kernel @ v) / kernel.sum(-1, keepdim=True)
    return attn.attn_out(out.transpose(0, 1).reshape(n, -1))


def layer_without_local_or_norm(x, batch, global_attention, layer):
    """conv=None, norm=None: out = h + MLP(h), h = x + attention(x) per graph."""
    h = torch.cat([x[batch == g] + global_attention(x[batch == g], g) for g in batch.unique()])
    return h + layer.mlp(h)


def bigbird_mask(size, window, num_global):
    position = torch.arange(size)
    offset = position[None, :] - position[:, None]  # sender - receiver
    in_window = (offset >= -((window - 1) // 2)) & (offset <= window // 2) & (window > 0)
    is_global = position < num_global
    return in_window | is_global[None, :] | is_global[:, None]


# ---------------------------------------------------------------------- multihead
@pytest.mark.parametrize("use_batch", [True, False])
def test_multihead_matches_pyg_eval(use_batch):
    x, edge_index, batch, edge_attr = make_batch(SIZES, edge_dim=5)
    theirs, ours = pair(gine, attn_kwargs={"dropout": 0.3}, dropout=0.2)
    theirs.eval(), ours.eval()
    batch = batch if use_batch else None
    assert_same_outputs_and_grads(theirs, ours, x, edge_index, batch, edge_attr=edge_attr)


def test_multihead_matches_pyg_training_batch_norm():
    x, edge_index, batch, edge_attr = make_batch(SIZES, seed=1, edge_dim=5)
    theirs, ours = pair(gine)  # no dropout: training mode is deterministic (batch statistics)
    theirs.train(), ours.train()
    assert_same_outputs_and_grads(theirs, ours, x, edge_index, batch, edge_attr=edge_attr)
    for name, buffer in theirs.named_buffers():
        torch.testing.assert_close(dict(ours.named_buffers())[name], buffer, msg=name)


def test_multihead_graph_norm_and_no_conv():
    x, edge_index, batch, _ = make_batch([5, 1, 30], seed=2)
    torch.manual_seed(0)
    theirs = PyGGPSConv(CHANNELS, None, heads=2, norm="graph_norm").double().eval()
    ours = GPSConv(CHANNELS, None, heads=2, norm="graph_norm").double().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    assert ours.norm_with_batch
    assert_same_outputs_and_grads(theirs, ours, x, edge_index, batch)


def test_state_dict_loads_both_ways():
    theirs, ours = pair(gine)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict(), strict=True)


def test_global_pattern_kwarg_and_per_graph_invariance():
    x, edge_index, batch, _ = make_batch(SIZES, seed=3)
    torch.manual_seed(0)
    layer = GPSConv(CHANNELS, None, heads=HEADS, norm=None).double().eval()
    expected = layer(x, edge_index, batch)
    pattern = Pattern.full(batch)
    torch.testing.assert_close(layer(x, edge_index, batch, global_pattern=pattern), expected)
    # with no norm mixing graphs, each graph alone gives the same rows as inside the batch
    alone = layer(x[batch == 1], edge_index[:, :0], None)
    torch.testing.assert_close(alone, expected[batch == 1], atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="global_pattern"):
        layer(x, edge_index, batch, global_pattern=Pattern.full(batch[:-1]))
    with pytest.raises(TypeError, match="global_pattern"):
        layer(x, edge_index, batch, global_pattern=pattern.edge_index)


def test_empty_graph_ids_empty_input_and_pattern_cache():
    batch = torch.tensor([0, 0, 2, 2, 2, 5])  # graphs 1, 3 and 4 are empty
    x = torch.randn(6, CHANNELS, dtype=torch.float64)
    no_edges = torch.zeros(2, 0, dtype=torch.long)
    torch.manual_seed(0)
    theirs = PyGGPSConv(CHANNELS, None, heads=2).double().eval()
    ours = GPSConv(CHANNELS, None, heads=2).double().eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    torch.testing.assert_close(ours(x, no_edges, batch), theirs(x, no_edges, batch))
    assert ours(x[:0], no_edges, batch[:0]).shape == (0, CHANNELS)
    # Pattern.full is built once per batch tensor and rebuilt when the tensor changes in place
    first = gps_module._full_pattern(batch, 6, x.device)
    assert gps_module._full_pattern(batch, 6, x.device) is first
    batch[-1] = 4
    assert gps_module._full_pattern(batch, 6, x.device) is not first
    torch.testing.assert_close(ours(x, no_edges, batch), theirs(x, no_edges, batch))
    copy.deepcopy(ours), pickle.dumps(ours)


def test_attention_dropout_goes_to_core(monkeypatch):
    seen = []
    core = gps_module.sparse_attention

    def recording(*args, **kwargs):
        seen.append(kwargs["dropout"])
        return core(*args, **kwargs)

    monkeypatch.setattr(gps_module, "sparse_attention", recording)
    x, edge_index, batch, _ = make_batch([4, 6], seed=4)
    layer = GPSConv(CHANNELS, None, heads=HEADS, attn_kwargs={"dropout": 0.4}).double()
    layer.eval()(x, edge_index, batch)
    torch.manual_seed(0)
    train_out = layer.train()(x, edge_index, batch)
    assert seen == [0.0, 0.4]
    torch.manual_seed(1)
    assert not torch.allclose(layer(x, edge_index, batch), train_out)


# ---------------------------------------------------------------------- attention weights
def test_return_attention_weights():
    x, edge_index, batch, _ = make_batch(SIZES, seed=5)
    torch.manual_seed(0)
    layer = GPSConv(CHANNELS, GATConv(CHANNELS, CHANNELS // HEADS, heads=HEADS), heads=HEADS)
    layer = layer.double().eval()
    out, (local, (global_index, global_weights)) = layer(
        x, edge_index, batch, return_attention_weights=True
    )
    torch.testing.assert_close(out, layer(x, edge_index, batch))
    local_index, local_alpha = layer.conv(x, edge_index, return_attention_weights=True)[1]
    torch.testing.assert_close(local[0], local_index)
    torch.testing.assert_close(local[1], local_alpha)
    # global weights against torch's own MultiheadAttention weights, graph by graph
    assert global_index.size(1) == sum(n * n for n in SIZES)
    dense = torch.zeros(HEADS, x.size(0), x.size(0), dtype=x.dtype)
    dense[:, global_index[1], global_index[0]] = global_weights.t()
    for g in range(len(SIZES)):
        nodes = (batch == g).nonzero().flatten()
        h = x[nodes][None]
        _, weights = layer.attn(h, h, h, need_weights=True, average_attn_weights=False)
        block = dense[:, nodes][:, :, nodes]
        torch.testing.assert_close(block, weights[0], atol=1e-12, rtol=0)

    gin = GPSConv(CHANNELS, GINConv(torch.nn.Linear(CHANNELS, CHANNELS)), heads=2).double()
    _, (local, global_attention) = gin.eval()(x, edge_index, batch, return_attention_weights=True)
    assert local is None and global_attention[1].shape == (global_index.size(1), 2)


# ---------------------------------------------------------------------- performer
@pytest.mark.parametrize("sizes", [[7, 7, 7], None])
def test_performer_matches_pyg_without_padding(sizes):
    x, edge_index, batch, edge_attr = make_batch(sizes or [40], seed=6, edge_dim=5)
    batch = batch if sizes else None
    theirs, ours = pair(gine, attn_type="performer", attn_kwargs={"head_channels": 6})
    torch.testing.assert_close(
        ours.attn.fast_attn.projection_matrix, theirs.attn.fast_attn.projection_matrix
    )
    theirs.eval(), ours.eval()
    assert_same_outputs_and_grads(theirs, ours, x, edge_index, batch, edge_attr=edge_attr)


def test_performer_dense_reference_mixed_sizes():
    x, edge_index, batch, _ = make_batch(SIZES, seed=7)
    torch.manual_seed(0)
    layer = GPSConv(
        CHANNELS, None, heads=HEADS, norm=None, attn_type="performer",
        attn_kwargs={"head_channels": 8, "qkv_bias": True},
    ).double().eval()  # fmt: skip
    x.requires_grad_(True)
    out = layer(x, edge_index, batch)
    expected = layer_without_local_or_norm(x, batch, lambda h, g: dense_favor(h, layer.attn), layer)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(grad, expected_grad, atol=1e-10, rtol=1e-10)
    # PyG pads and its padded keys enter the denominator, so it differs here (see docstring)
    pyg = PyGGPSConv(
        CHANNELS, None, heads=HEADS, norm=None, attn_type="performer",
        attn_kwargs={"head_channels": 8, "qkv_bias": True},
    ).double().eval()  # fmt: skip
    pyg.load_state_dict(layer.state_dict(), strict=True)
    assert not torch.allclose(pyg(x, edge_index, batch), out, atol=1e-4)
    with pytest.raises(ValueError, match="global_pattern"):
        layer(x, edge_index, batch, global_pattern=Pattern.full(batch))


# ---------------------------------------------------------------------- sparse (BigBird)
@pytest.mark.parametrize("window,num_global", [(3, 1), (4, 2), (0, 1), (1, 0)])
def test_sparse_without_random_matches_dense_mask(window, num_global):
    sizes = [1, 2, 9, 30]
    x, edge_index, batch, _ = make_batch(sizes, seed=8)
    torch.manual_seed(0)
    kwargs = {"window": window, "num_random": 0, "num_global": num_global, "bias": True}
    layer = GPSConv(CHANNELS, None, heads=HEADS, norm=None, attn_type="sparse", attn_kwargs=kwargs)
    layer = layer.double().eval()
    x.requires_grad_(True)
    out = layer(x, edge_index, batch)

    def reference(h, g):
        return dense_softmax_attention(h, layer.attn, bigbird_mask(h.size(0), window, num_global))

    expected = layer_without_local_or_norm(x, batch, reference, layer)
    if window == 0 and num_global == 1:  # nodes other than the first receive from it alone
        assert torch.isfinite(expected).all()
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    (grad,) = torch.autograd.grad(out.square().sum(), x)
    (expected_grad,) = torch.autograd.grad(expected.square().sum(), x)
    torch.testing.assert_close(grad, expected_grad, atol=1e-10, rtol=1e-10)


def test_sparse_random_pattern_structure_and_reference():
    sizes = [2, 12, 50]
    x, edge_index, batch, _ = make_batch(sizes, seed=9)
    window, num_random, num_global = 3, 3, 2
    generator = torch.Generator().manual_seed(0)
    pattern = GPSConv.bigbird_pattern(batch, window, num_random, num_global, generator=generator)
    again = GPSConv.bigbird_pattern(
        batch, window, num_random, num_global, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(pattern.edge_index, again.edge_index)
    senders, receivers = pattern.edge_index
    assert (batch[senders] == batch[receivers]).all()
    pairs = set(zip(receivers.tolist(), senders.tolist()))
    assert len(pairs) == pattern.num_edges  # duplicates merged
    starts = torch.cumsum(torch.tensor(sizes), 0) - torch.tensor(sizes)
    extra = 0
    for g, (start, size) in enumerate(zip(starts.tolist(), sizes)):
        mask = bigbird_mask(size, window, num_global)
        local = {(start + i, start + j) for i, j in mask.nonzero().tolist()}
        assert local <= pairs
        in_graph = {(i, j) for i, j in pairs if batch[i] == g}
        per_receiver = torch.bincount(
            torch.tensor([i - start for i, _ in in_graph - local] or [0]), minlength=size
        )
        assert int(per_receiver.max()) <= num_random
        extra += len(in_graph - local)
    assert extra > 0  # the random senders exist

    torch.manual_seed(0)
    kwargs = {"window": window, "num_random": num_random, "num_global": num_global}
    layer = GPSConv(CHANNELS, None, heads=HEADS, norm=None, attn_type="sparse", attn_kwargs=kwargs)
    layer = layer.double().eval()
    out, (_, (index, weights)) = layer(
        x, edge_index, batch, global_pattern=pattern, return_attention_weights=True
    )
    torch.testing.assert_close(index, pattern.edge_index)
    full_mask = torch.zeros(x.size(0), x.size(0), dtype=torch.bool)
    full_mask[receivers, senders] = True

    def reference(h, g):
        nodes = (batch == g).nonzero().flatten()
        return dense_softmax_attention(h, layer.attn, full_mask[nodes][:, nodes])

    expected = layer_without_local_or_norm(x, batch, reference, layer)
    torch.testing.assert_close(out, expected, atol=1e-10, rtol=1e-10)
    sums = torch.zeros(x.size(0), HEADS, dtype=x.dtype).index_add_(0, index[1], weights)
    torch.testing.assert_close(sums, torch.ones_like(sums))
    # without global_pattern the layer draws a fresh pattern from torch's generator
    torch.manual_seed(3)
    first = layer(x, edge_index, batch)
    torch.manual_seed(3)
    torch.testing.assert_close(layer(x, edge_index, batch), first)


# ---------------------------------------------------------------------- errors and misc
def test_bad_arguments():
    with pytest.raises(ValueError, match="attn_type"):
        GPSConv(CHANNELS, None, attn_type="bigbird")
    with pytest.raises(ValueError, match="heads"):
        GPSConv(CHANNELS, None, heads=3)
    with pytest.raises(TypeError, match="window"):
        GPSConv(CHANNELS, None, attn_type="sparse", attn_kwargs={"window": 2.5})
    with pytest.raises(ValueError, match="num_random"):
        GPSConv(CHANNELS, None, attn_type="sparse", attn_kwargs={"num_random": -1})
    with pytest.raises(ValueError, match="add_zero_attn"):
        GPSConv(CHANNELS, None, attn_kwargs={"add_zero_attn": True})
    layer = GPSConv(CHANNELS, None, heads=2).double()
    x, edge_index, batch, _ = make_batch([3, 4])
    with pytest.raises(ValueError, match="x must have shape"):
        layer(x[:, :5], edge_index, batch)
    with pytest.raises(ValueError, match="batch must have shape"):
        layer(x, edge_index, batch[:-1])
    with pytest.raises(ValueError, match="sorted"):
        layer(x, edge_index, batch.flip(0))
    with pytest.raises(TypeError, match="batch"):
        layer(x, edge_index, batch.float())


def test_reset_parameters_and_repr():
    layer = GPSConv(CHANNELS, GINConv(torch.nn.Linear(CHANNELS, CHANNELS)), heads=HEADS)
    before = {name: p.clone() for name, p in layer.named_parameters()}
    layer.reset_parameters()
    changed = [name for name, p in layer.named_parameters() if not torch.equal(p, before[name])]
    assert "attn.in_proj_weight" in changed and "mlp.0.weight" in changed
    assert repr(layer).startswith("GPSConv(16, conv=GINConv(")
    assert repr(layer).endswith("heads=4, attn_type=multihead)")
