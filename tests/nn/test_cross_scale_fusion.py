"""CrossScaleFusion against a per-graph dense float64 reference written here."""

import math

import pytest
import torch
import torch.nn.functional as F

from gtlib.nn import CrossScaleFusion


def _branch_reference(cls, tokens, batch, norm_proj, proj, norm, attn, norm_back, back):
    """CrossViT's fusion graph by graph: the projected CLS is the one query over itself and
    the other branch's tokens of its graph."""
    out = []
    heads = attn.heads
    c = attn.channels // heads
    for g in range(cls.size(0)):
        proj_cls = proj(F.gelu(norm_proj(cls[g : g + 1])))
        x = norm(torch.cat([proj_cls, tokens[batch == g]]))
        q = attn.lin_query(x[:1]).view(1, heads, c)
        k = attn.lin_key(x).view(-1, heads, c)
        v = attn.lin_value(x).view(-1, heads, c)
        weights = torch.softmax(torch.einsum("hc,jhc->hj", q[0], k) / math.sqrt(c), dim=-1)
        y = proj_cls + attn.lin_out(torch.einsum("hj,jhc->hc", weights, v).reshape(1, -1))
        out.append(back(F.gelu(norm_back(y))))
    return torch.cat(out)


def _reference(m, x_a, cls_a, x_b, cls_b, batch_a, batch_b):
    a = _branch_reference(cls_a, x_b, batch_b, m.norm_proj_a, m.proj_a, m.norm_a, m.attn_a,
                          m.norm_back_a, m.back_a)  # fmt: skip
    b = _branch_reference(cls_b, x_a, batch_a, m.norm_proj_b, m.proj_b, m.norm_b, m.attn_b,
                          m.norm_back_b, m.back_b)  # fmt: skip
    return a, b


def _inputs(sizes_a, sizes_b, ca=8, cb=6, seed=0, shuffle=True):
    gen = torch.Generator().manual_seed(seed)
    batch_a = torch.cat([torch.full((n,), g) for g, n in enumerate(sizes_a)])
    batch_b = torch.cat([torch.full((n,), g) for g, n in enumerate(sizes_b)])
    if shuffle:  # token sets need not be sorted by graph
        batch_b = batch_b[torch.randperm(batch_b.numel(), generator=gen)]
    x_a = torch.randn(batch_a.numel(), ca, generator=gen, dtype=torch.float64)
    x_b = torch.randn(batch_b.numel(), cb, generator=gen, dtype=torch.float64)
    cls_a = torch.randn(len(sizes_a), ca, generator=gen, dtype=torch.float64)
    cls_b = torch.randn(len(sizes_b), cb, generator=gen, dtype=torch.float64)
    return x_a, cls_a, x_b, cls_b, batch_a, batch_b


def test_matches_dense_reference_values_and_gradients():
    torch.manual_seed(0)
    m = CrossScaleFusion(8, 6, heads=2).double()
    inputs = _inputs([30, 5, 12], [7, 0, 20])  # a graph without b-tokens: the CLS alone
    out = m(*inputs)
    ref = _reference(m, *inputs)
    for o, r in zip(out, ref):
        torch.testing.assert_close(o, r, rtol=1e-10, atol=1e-12)
    assert out[0].shape == (3, 8) and out[1].shape == (3, 6)
    loss = lambda pair: pair[0].square().sum() + pair[1].sin().sum()  # noqa: E731
    params = list(m.parameters())
    for g, r in zip(torch.autograd.grad(loss(out), params), torch.autograd.grad(loss(ref), params)):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-11)


def test_gradcheck_float64():
    torch.manual_seed(1)
    m = CrossScaleFusion(4, 2, heads=2).double()
    x_a, cls_a, x_b, cls_b, batch_a, batch_b = _inputs([4, 3], [2, 5], ca=4, cb=2, seed=1)
    tensors = [t.requires_grad_(True) for t in (x_a, cls_a, x_b, cls_b)]

    def fn(xa, ca, xb, cb):
        return m(xa, ca, xb, cb, batch_a, batch_b)

    assert torch.autograd.gradcheck(fn, tensors)


def test_batch_independence():
    torch.manual_seed(2)
    m = CrossScaleFusion(8, 6, heads=2).double()
    x_a, cls_a, x_b, cls_b, batch_a, batch_b = _inputs([9, 14], [11, 3], seed=2)
    out_a, out_b = m(x_a, cls_a, x_b, cls_b, batch_a, batch_b)
    for g in range(2):
        alone = m(x_a[batch_a == g], cls_a[g : g + 1], x_b[batch_b == g], cls_b[g : g + 1])
        torch.testing.assert_close(alone[0][0], out_a[g], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(alone[1][0], out_b[g], rtol=1e-12, atol=1e-12)


def test_bad_inputs():
    m = CrossScaleFusion(8, 6, heads=2)
    x_a, cls_a, x_b, cls_b = torch.rand(5, 8), torch.rand(2, 8), torch.rand(4, 6), torch.rand(2, 6)
    batch_a, batch_b = torch.tensor([0, 0, 1, 1, 1]), torch.tensor([1, 0, 1, 0])
    with pytest.raises(ValueError, match="x_b"):
        m(x_a, cls_a, torch.rand(4, 5), cls_b, batch_a, batch_b)
    with pytest.raises(ValueError, match="batch_a"):
        m(x_a, cls_a, x_b, cls_b, None, batch_b)
    with pytest.raises(ValueError, match="batch_b"):
        m(x_a, cls_a, x_b, cls_b, batch_a, torch.tensor([0, 2, 0, 1]))
    with pytest.raises(TypeError, match="batch_b"):
        m(x_a, cls_a, x_b, cls_b, batch_a, batch_b.float())
    with pytest.raises(ValueError, match="cls_a and cls_b"):
        m(x_a, cls_a, x_b, torch.rand(3, 6), batch_a, batch_b)
    with pytest.raises(ValueError, match="channels_b"):
        CrossScaleFusion(8, 5, heads=2)
    assert repr(m) == "CrossScaleFusion(8, 6, heads=2)"
