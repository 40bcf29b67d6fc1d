"""Window attention (compiled CPU kernel, padded pure torch) against a dense float64 reference."""

import pytest
import torch

from gtlib.attention import Pattern, attend
from gtlib.attention.backends import windows
from gtlib.attention.backends.windows import padded_window_attention, window_attention

COMPILED = pytest.param(
    True, marks=pytest.mark.skipif(not windows.available(), reason="window kernel not built")
)


def dense_reference(q, k, v, ptr, index, scale):
    """All-pairs float64 attention with a mask built from the windows (rows in no window: 0)."""
    n = q.size(0)
    q, k, v = q.double(), k.double(), v.double()
    rows = torch.arange(int(ptr[-1])) if index is None else index
    window = torch.full((n,), -1, dtype=torch.long)
    for w in range(ptr.numel() - 1):
        window[rows[ptr[w] : ptr[w + 1]]] = w
    allowed = (window[:, None] == window[None, :]) & (window[:, None] >= 0)
    scores = torch.einsum("ihc,jhc->hij", q, k) * scale
    scores = scores.masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("hij,jhc->ihc", weights, v)


def problem(seed, n=40, heads=2, channels=5, value_channels=None, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    value_channels = value_channels or channels
    q = torch.randn(n, heads, channels, generator=gen, dtype=dtype)
    k = torch.randn(n, heads, channels, generator=gen, dtype=dtype)
    v = torch.randn(n, heads, value_channels, generator=gen, dtype=dtype)
    # windows of sizes 7, 0, 1, 12, 9, 3 (an empty one, a single token); 8 rows in no window
    ptr = torch.tensor([0, 7, 7, 8, 20, 29, 32])
    index = torch.randperm(n, generator=gen)[:32]
    return q, k, v, ptr, index


@pytest.mark.parametrize("compiled", [COMPILED, False])
@pytest.mark.parametrize("channels,value_channels", [(5, 5), (32, 32), (16, 16), (6, 3)])
@pytest.mark.parametrize("use_index", [True, False])
def test_matches_dense_reference(compiled, channels, value_channels, use_index):
    q, k, v, ptr, index = problem(0, channels=channels, value_channels=value_channels)
    index = index if use_index else None
    out = window_attention(q, k, v, ptr, index, scale=0.7, compiled=compiled)
    expected = dense_reference(q, k, v, ptr, index, 0.7)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=1e-12)
    covered = torch.zeros(q.size(0), dtype=torch.bool)
    covered[index if use_index else torch.arange(32)] = True
    assert bool((out[~covered] == 0).all())


@pytest.mark.parametrize("compiled", [COMPILED, False])
def test_float32_and_default_scale(compiled):
    q, k, v, ptr, index = problem(1, channels=32, dtype=torch.float32)
    out = window_attention(q, k, v, ptr, index, compiled=compiled)
    expected = dense_reference(q, k, v, ptr, index, 32**-0.5)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.double(), expected, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize(
    "compiled,channels",
    [pytest.param(True, c, marks=COMPILED.marks) for c in (3, 16)] + [(False, 3)],
)
def test_gradcheck(compiled, channels):
    q, k, v, ptr, index = problem(2, n=20, channels=channels)
    ptr = torch.tensor([0, 5, 6, 6, 14])
    index = torch.randperm(20, generator=torch.Generator().manual_seed(3))[:14]
    inputs = tuple(x.requires_grad_() for x in (q, k, v))
    assert torch.autograd.gradcheck(
        lambda q, k, v: window_attention(q, k, v, ptr, index, 0.9, compiled=compiled),
        inputs,
        fast_mode=True,
    )


@pytest.mark.parametrize("compiled", [COMPILED, False])
def test_gradients_match_reference(compiled):
    q, k, v, ptr, index = problem(4, channels=32)
    grad = torch.randn_like(v)
    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    window_attention(*inputs, ptr, index, 0.5, compiled=compiled).backward(grad)
    reference = [x.clone().requires_grad_() for x in (q, k, v)]
    dense_reference(*reference, ptr, index, 0.5).backward(grad)
    for got, want in zip(inputs, reference, strict=True):
        torch.testing.assert_close(got.grad, want.grad, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("channels,value_channels", [(32, 32), (16, 8), (6, 3), (40, 24)])
def test_large_windows_against_reference(dtype, channels, value_channels):
    """Windows of 1 to 64 tokens: every row-block remainder (tiles of 4 rows), column tile (four
    vectors with AVX-512VL, two vectors, one vector, single columns) and transpose (8 x 8 register
    blocks for float32 rows of a multiple of 8 channels, element by element otherwise) of the
    compiled kernel, forward and gradients."""
    if not windows.available():
        pytest.skip("window kernel not built")
    gen = torch.Generator().manual_seed(9)
    sizes = torch.tensor([64, 33, 17, 0, 5, 1, 2, 3, 40, 8, 9, 16])
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), sizes.cumsum(0)])
    n = int(ptr[-1]) + 6
    index = torch.randperm(n, generator=gen)[: int(ptr[-1])]
    q, k = (torch.randn(n, 3, channels, generator=gen, dtype=dtype) for _ in range(2))
    v = torch.randn(n, 3, value_channels, generator=gen, dtype=dtype)
    grad = torch.randn(n, 3, value_channels, generator=gen, dtype=dtype)
    inputs = [x.clone().requires_grad_() for x in (q, k, v)]
    out = window_attention(*inputs, ptr, index, 0.4, compiled=True)
    out.backward(grad)
    reference = [x.double().requires_grad_() for x in (q, k, v)]
    expected = dense_reference(*reference, ptr, index, 0.4)
    expected.backward(grad.double())
    tol = {"atol": 1e-11, "rtol": 1e-11} if dtype == torch.float64 else {"atol": 2e-5, "rtol": 1e-4}
    torch.testing.assert_close(out.double(), expected, **tol)
    for got, want in zip(inputs, reference, strict=True):
        torch.testing.assert_close(got.grad.double(), want.grad, **tol)


def test_padded_chunks(monkeypatch):
    q, k, v, ptr, index = problem(5)
    monkeypatch.setattr(windows, "PADDED_CHUNK_SCORES", 1)  # one window per chunk
    out = padded_window_attention(q, k, v, ptr, index, 0.3)
    torch.testing.assert_close(out, dense_reference(q, k, v, ptr, index, 0.3))


@pytest.mark.parametrize(
    "sizes,routed",
    [
        ([3, 5, 5, 2], True),
        ([64, 33, 33, 10], True),
        ([7, 7], False),
        ([9, 4], False),
        ([200, 3, 1], False),
    ],
)
def test_dense_backend_routes_block_patterns(sizes, routed):
    """attend(mode="dense") on block patterns equals the dense reference, through the window
    kernel when built (several block sizes up to MAX_WINDOW) and SDPA otherwise."""
    gen = torch.Generator().manual_seed(6)
    n = sum(sizes) + 4
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    pattern = Pattern.full(batch)
    q, k, v = (torch.randn(n - 4, 2, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    out = attend(pattern, v, query=q, key=k, mode="dense")
    ptr = torch.zeros(len(sizes) + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(torch.tensor(sizes), 0)
    torch.testing.assert_close(out, dense_reference(q, k, v, ptr, None, 8**-0.5))
    assert windows.routes(q, pattern) == (routed and windows.available())


def test_octree_layout_keeps_serial_order():
    gen = torch.Generator().manual_seed(7)
    pos = torch.rand(300, 3, generator=gen)
    level = Pattern.octree(pos, 16)[0]
    groups = level.window_groups(caller_order=True)
    ptr, index, largest = windows.block_layout(groups.pattern)
    assert torch.equal(ptr, level.window_ptr) and torch.equal(index, level.perm)
    assert largest == int(level.window_sizes.max())
    ptr, index, _ = windows.block_layout(level.with_relays())
    assert torch.equal(ptr, level.window_ptr + torch.arange(level.num_windows + 1))
    # every window's points in serial order, then its relay token
    for w in range(level.num_windows):
        run = index[ptr[w] : ptr[w + 1]]
        expected = torch.arange(int(level.window_ptr[w]), int(level.window_ptr[w + 1]))
        assert torch.equal(run[:-1], expected) and int(run[-1]) == 300 + w


def test_invalid_arguments():
    q, k, v, ptr, index = problem(8)
    with pytest.raises(TypeError, match="query"):
        window_attention(q.long(), k, v, ptr)
    with pytest.raises(ValueError, match="key"):
        window_attention(q, k[:, :1], v, ptr)
    with pytest.raises(ValueError, match="ptr"):
        window_attention(q, k, v, torch.tensor([1, 3]))
    with pytest.raises(ValueError, match="ptr"):
        window_attention(q, k, v, torch.tensor([0, 5, 3]))
    with pytest.raises(ValueError, match="index"):
        window_attention(q, k, v, ptr, index[:-1])
    with pytest.raises(ValueError, match="index"):
        window_attention(q, k, v, ptr, index + 100)
    with pytest.raises(TypeError, match="ptr"):
        window_attention(q, k, v, ptr.float())
    with pytest.raises(ValueError, match="exceeds"):
        window_attention(q, k, v, torch.tensor([0, 100]))
