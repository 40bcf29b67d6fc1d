"""OctreeTransformer against a dense float64 masked-attention reference written here."""

import math

import pytest
import torch
import torch.nn.functional as F

from gtlib.nn import OctreeTransformer


def _data(sizes, in_channels=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    pos = torch.rand(n, 3, generator=gen, dtype=torch.float64) * torch.tensor(
        [2.0, 1.0, 0.5], dtype=torch.float64
    )
    x = torch.randn(n, in_channels, generator=gen, dtype=torch.float64)
    batch = torch.cat([torch.full((s,), b, dtype=torch.long) for b, s in enumerate(sizes)])
    return pos, x, batch


def _mha(attn, x_dst, x_src, mask):
    """Dense masked multi-head attention with the module's projections."""
    heads = attn.heads
    c = attn.channels // heads
    q = attn.lin_query(x_dst).view(-1, heads, c)
    k = attn.lin_key(x_src).view(-1, heads, c)
    v = attn.lin_value(x_src).view(-1, heads, c)
    scores = torch.einsum("ihc,jhc->hij", q, k) / math.sqrt(c)
    weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).nan_to_num(0.0)
    out = torch.einsum("hij,jhc->ihc", weights, v).reshape(-1, attn.channels)
    return attn.lin_out(out)


def _block(block, h, window, window_batch):
    n, num_windows = h.size(0), window_batch.numel()
    member = (window[None, :] == torch.arange(num_windows)[:, None]).to(h.dtype)  # [W, N]
    relay = member @ h / member.sum(1, keepdim=True)
    normed = block.norm_relay(relay)
    relay_mask = window_batch[:, None] == window_batch[None, :]
    relay = relay + _mha(block.relay_attn, normed, normed, relay_mask)
    tokens = torch.cat([h, relay])
    owner = torch.cat([window, torch.arange(num_windows)])
    normed = block.norm_window(tokens)
    tokens = tokens + _mha(block.window_attn, normed, normed, owner[:, None] == owner[None, :])
    tokens = tokens + block.ffn.lin2(F.gelu(block.ffn.lin1(block.norm_ffn(tokens))))
    return tokens[:n]


def _pool(pool, h, member):
    heads = pool.heads
    c = pool.channels // heads
    hn = pool.norm(h)
    k = pool.lin_key(hn).view(-1, heads, c)
    v = pool.lin_value(hn).view(-1, heads, c)
    scores = torch.einsum("hc,ihc->hi", pool.seed, k) / math.sqrt(c)  # [H, N]
    scores = scores[None].expand(member.size(0), -1, -1).masked_fill(~member[:, None], -math.inf)
    weights = torch.softmax(scores, dim=-1)  # [G, H, N]
    out = torch.einsum("ghi,ihc->ghc", weights, v).reshape(member.size(0), -1)
    return pool.lin_out(out)


def _reference(model, pos, x, batch):
    trees = model.octrees(pos, batch)
    num_clouds = int(batch.max()) + 1
    member = batch[None, :] == torch.arange(num_clouds)[:, None]
    weights = member.to(pos.dtype) / member.sum(1, keepdim=True)
    rel = pos - (weights @ pos)[batch]
    radius = (weights @ rel.square().sum(-1, keepdim=True)).sqrt()
    rel = rel / radius[batch]
    if model.pos_encoding == "cylindrical":
        rel = torch.stack([rel[:, :2].norm(dim=-1), rel[:, 2]], dim=-1)
    h = model.lin_in(x) + model.pos_mlp(rel)
    descriptors = []
    for index, blocks in enumerate(model.blocks):
        for b, block in enumerate(blocks):
            level = trees[b % 2 == 1][index]
            h = _block(block, h, level.window, level.window_batch)
        descriptors.append(_pool(model.pools[index], h, member))
    return F.normalize(model.lin_out(torch.cat(descriptors, -1)), dim=-1)


@pytest.mark.parametrize("pos_encoding", ["xyz", "cylindrical"])
def test_matches_dense_reference_values_and_gradients(pos_encoding):
    torch.manual_seed(0)
    pos, x, batch = _data([70, 45, 30])
    model = OctreeTransformer(3, 8, 5, heads=2, window_size=6, levels=2, num_blocks=2,
                              pos_encoding=pos_encoding).double()  # fmt: skip
    trees = model.octrees(pos, batch)
    assert set(trees) == {False, True}
    assert all(lv.window_sizes.max() <= 6 for t in trees.values() for lv in t)
    out = model(pos, x, batch)
    ref = _reference(model, pos, x, batch)
    assert out.shape == (3, 5)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(out.square().sum() + out[:, 0].sum(), list(model.parameters()))
    ref_grads = torch.autograd.grad(ref.square().sum() + ref[:, 0].sum(), list(model.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-8, atol=1e-10)


def test_gradcheck_float64():
    torch.manual_seed(1)
    pos, x, batch = _data([14, 10], in_channels=2, seed=1)
    model = OctreeTransformer(2, 4, 3, heads=2, window_size=4, levels=2, num_blocks=2).double()
    pos.requires_grad_(True)
    x.requires_grad_(True)
    model.octrees(pos, batch)  # the pattern depends on the positions, not their gradient
    assert torch.autograd.gradcheck(
        lambda p, f: model(p, f, batch), (pos, x), atol=1e-6, fast_mode=True
    )


def test_permutation_invariance_and_batch_independence():
    torch.manual_seed(2)
    pos, x, batch = _data([60, 40, 50], seed=2)
    model = OctreeTransformer(3, 8, 6, heads=2, window_size=8, levels=3, num_blocks=2).double()
    out = model(pos, x, batch)
    perm = torch.cat([torch.randperm(60), 60 + torch.randperm(40), 100 + torch.randperm(50)])
    torch.testing.assert_close(model(pos[perm], x[perm], batch), out, rtol=1e-10, atol=1e-10)
    for b in range(3):
        mask = batch == b
        alone = model(pos[mask], x[mask])
        torch.testing.assert_close(alone[0], out[b], rtol=1e-10, atol=1e-10)


def test_cylindrical_windows_and_positions_only():
    pos, _, batch = _data([50, 30], seed=3)
    origin = torch.tensor([[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    model = OctreeTransformer(0, 8, 4, heads=2, window_size=8, levels=2, cylindrical=True,
                              normalize=False).double()  # fmt: skip
    out = model(pos, batch=batch, origin=origin)
    assert out.shape == (2, 4) and torch.isfinite(out).all()
    level = model.octrees(pos, batch, origin)[False][0]
    plain = OctreeTransformer(0, 8, 4, heads=2, window_size=8, levels=2).octrees(pos, batch)
    assert not torch.equal(level.window, plain[False][0].window)  # other cells


def test_bad_inputs():
    model = OctreeTransformer(3, 8, 4, heads=2)
    pos = torch.rand(10, 3)
    with pytest.raises(ValueError, match="x"):
        model(pos, torch.rand(10, 2))
    with pytest.raises(ValueError, match="x"):
        model(pos)
    with pytest.raises(ValueError, match="pos"):
        model(torch.rand(10, 2), torch.rand(10, 3))
    with pytest.raises(TypeError, match="batch"):
        model(pos, torch.rand(10, 3), torch.zeros(10))
    with pytest.raises(ValueError, match="batch"):
        model(pos, torch.rand(10, 3), torch.tensor([1] * 5 + [0] * 5))
    with pytest.raises(ValueError, match="hidden_channels"):
        OctreeTransformer(3, 7, 4, heads=2)
    with pytest.raises(TypeError, match="window_size"):
        OctreeTransformer(3, 8, 4, window_size=2.0)
    with pytest.raises(ValueError, match="pos_encoding"):
        OctreeTransformer(3, 8, 4, pos_encoding="polar")
    assert "OctreeTransformer(3, 8, 4" in repr(model)
