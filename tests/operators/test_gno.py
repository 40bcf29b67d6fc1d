"""GNO and GINO against dense float64 O(N^2) references, neighbourhoods against brute force."""

import math
import warnings

import pytest
import torch
import torch.nn.functional as F

from gtlib.operators.gino import GINO
from gtlib.operators.gno import GNO, kernel_integral, radius_pattern, sinusoidal_embedding

TRANSFORMS = ["linear", "linear_kernelonly", "nonlinear", "nonlinear_kernelonly"]


def brute_force_pairs(x, y, r):
    """Set of (receiver, sender) with ||x_j - y_i|| <= r, from all pairs in float64."""
    dist = torch.linalg.vector_norm(y.double()[:, None] - x.double()[None], dim=-1)
    return set(map(tuple, torch.nonzero(dist <= r).tolist()))


def pattern_pairs(pattern):
    return set(zip(pattern.row.tolist(), pattern.col.tolist()))


def dense_gno(gno, y, x, f):
    """out_i = reduce_j mask_ij * k([e(y_j), e(x_i), f_j]) (* f_j): all pairs, full MLP
    (y the input points, x the queries, as neuraloperator names them)."""
    m, n = x.shape[0], y.shape[0]
    mask = torch.linalg.vector_norm(x[:, None] - y[None], dim=-1) <= gno.radius  # [M, N]
    ex, ey = gno.embed(y), gno.embed(x)
    pairs = torch.cat([ex[None].expand(m, -1, -1), ey[:, None].expand(-1, n, -1)], dim=-1)
    batched = f is not None and f.dim() == 3
    fb = None if f is None else (f if batched else f[None])
    if gno.transform_type.startswith("nonlinear"):
        pairs = torch.cat(
            [pairs[None].expand(fb.shape[0], -1, -1, -1), fb[:, None].expand(-1, m, -1, -1)], -1
        )
    h = pairs
    for i, layer in enumerate(gno.kernel):
        h = layer(h if i == 0 else gno.activation(h))
    if gno.transform_type in ("linear", "nonlinear") and fb is not None:
        h = h * fb[:, None]  # [B, M, N, C]
    if h.dim() == 3:
        h = h[None]
    out = (h * mask[None, :, :, None]).sum(2)
    if gno.reduction == "mean":
        out = out / mask.sum(1).clamp(min=1)[None, :, None]
    if not batched:
        return out[0]
    return out.expand(fb.shape[0], -1, -1)


def grads_or_zeros(loss, inputs):
    grads = torch.autograd.grad(loss, inputs, allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, grads)]


def make_gno(transform, reduction, chunk, dim=2, radius=0.3, embedding="transformer"):
    gno = GNO(
        3,
        3,
        dim,
        radius,
        transform_type=transform,
        channel_mlp_layers=[8, 6],
        pos_embedding_type=embedding,
        pos_embedding_channels=2,
        reduction=reduction,
        chunk_size=chunk,
    )
    return gno.double()


# ---------------------------------------------------------------- neighbourhoods
@pytest.mark.parametrize("dim", [1, 2, 3])
def test_radius_pattern_matches_brute_force(dim):
    torch.manual_seed(dim)
    x = torch.rand(400, dim, dtype=torch.float64)
    x[:50] = x[50:100]  # duplicates
    x[100:150, 0] = 0.5  # a flat slab
    y = torch.cat([torch.rand(300, dim, dtype=torch.float64) * 1.4 - 0.2, x[:20]])
    for r in (0.05, 0.2, 3.0):
        pattern = radius_pattern(x, y, r)
        assert pattern.num_src == 400 and pattern.num_dst == 320
        assert pattern_pairs(pattern) == brute_force_pairs(x, y, r)
        assert torch.equal(
            pattern.ptr[1:] - pattern.ptr[:-1], torch.bincount(pattern.row, minlength=320)
        )
    same = radius_pattern(x, x, 0.1)  # same tensor: Pattern.radius with self loops
    assert pattern_pairs(same) == brute_force_pairs(x, x, 0.1)
    assert pattern_pairs(radius_pattern(x, x.clone(), 0.1)) == pattern_pairs(same)


def test_radius_pattern_exact_boundary_and_empty():
    # Integer lattice with radius 1: distances exactly 1 are neighbours.
    g = torch.stack(torch.meshgrid(torch.arange(5.0), torch.arange(4.0), indexing="ij"), -1)
    x = g.reshape(-1, 2)
    y = x[::3] + 0.0
    assert pattern_pairs(radius_pattern(x, y, 1.0)) == brute_force_pairs(x, y, 1.0)
    empty = radius_pattern(x[:0], y, 1.0)
    assert empty.num_edges == 0 and empty.ptr.shape == (y.shape[0] + 1,)
    assert radius_pattern(x, y[:0], 1.0).num_edges == 0


# ---------------------------------------------------------------- values and gradients
@pytest.mark.parametrize("transform", TRANSFORMS)
@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("same_set", [False, True])
def test_gno_matches_dense_reference(transform, reduction, same_set):
    torch.manual_seed(0)
    y = torch.rand(60, 2, dtype=torch.float64, requires_grad=True)
    x = y if same_set else torch.rand(45, 2, dtype=torch.float64).mul(1.2).requires_grad_()
    f = torch.randn(2, 60, 3, dtype=torch.float64, requires_grad=True)
    results = []
    for chunk in (None, 5, 64, 10**6):
        torch.manual_seed(1)
        gno = make_gno(transform, reduction, chunk)
        out = gno(y=y, x=x, f_y=f)
        weights = torch.randn_like(out)
        grads = grads_or_zeros((out * weights).sum(), [y, f, *gno.parameters()])
        results.append((out, grads))
    torch.manual_seed(1)
    ref_gno = make_gno(transform, reduction, None)
    ref = dense_gno(ref_gno, y, x, f)
    assert ref.shape == (2, x.shape[0], 3)
    ref_grads = grads_or_zeros((ref * weights).sum(), [y, f, *ref_gno.parameters()])
    assert (ref.abs().sum(-1) > 0).sum() > 10
    for out, grads in results:
        torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
        for g, rg in zip(grads, ref_grads):
            torch.testing.assert_close(g, rg, rtol=1e-9, atol=1e-10)
    # Chunking changes nothing beyond rounding (whole receivers per chunk; only BLAS blocking
    # of the per-chunk matrix products differs).
    for out, grads in results[1:]:
        torch.testing.assert_close(out, results[0][0], rtol=1e-14, atol=1e-14)
        for g, g0 in zip(grads, results[0][1]):
            torch.testing.assert_close(g, g0, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("transform", TRANSFORMS)
def test_gno_gradcheck_chunked(transform):
    torch.manual_seed(2)
    gno = make_gno(transform, "mean", 4, dim=2, radius=0.5, embedding=None)
    y = torch.rand(9, 2, dtype=torch.float64, requires_grad=True)
    x = torch.rand(7, 2, dtype=torch.float64, requires_grad=True)
    f = torch.randn(9, 3, dtype=torch.float64, requires_grad=True)
    pattern = gno.neighbors(y=y, x=x)
    assert pattern.num_edges > 10

    def run(y, x, f, w):
        params = {"kernel.1.weight": w}
        return torch.func.functional_call(gno, params, (), dict(y=y, x=x, f_y=f, pattern=pattern))

    w = gno.kernel[1].weight.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(run, (y, x, f, w))


def test_unbatched_features_and_kernel_only():
    torch.manual_seed(3)
    y = torch.rand(50, 3, dtype=torch.float64)
    x = torch.rand(30, 3, dtype=torch.float64)
    f = torch.randn(50, 3, dtype=torch.float64)
    gno = make_gno("linear", "sum", 16, dim=3, radius=0.35)
    out = gno(y=y, x=x, f_y=f)
    assert out.shape == (30, 3)
    torch.testing.assert_close(out, dense_gno(gno, y, x, f), rtol=1e-10, atol=1e-10)
    kernel_only = gno(y=y, x=x, f_y=None)  # f_y None: (a) the integral of the kernel alone
    torch.testing.assert_close(kernel_only, dense_gno(gno, y, x, None), rtol=1e-10, atol=1e-10)
    # One channel of f broadcasts over the kernel's channels.
    out1 = gno(y=y, x=x, f_y=f[:, :1])
    torch.testing.assert_close(out1, dense_gno(gno, y, x, f[:, :1]), rtol=1e-10, atol=1e-10)


def test_points_without_neighbours_get_zeros():
    torch.manual_seed(4)
    y = torch.rand(20, 2, dtype=torch.float64, requires_grad=True)
    x = torch.tensor([[5.0, 5.0], [0.5, 0.5], [-3.0, 1.0]], dtype=torch.float64)
    f = torch.randn(20, 3, dtype=torch.float64, requires_grad=True)
    for reduction in ("sum", "mean"):
        gno = make_gno("nonlinear", reduction, 8, radius=0.4)
        out = gno(y=y, x=x, f_y=f)
        assert torch.equal(out[0], torch.zeros(3, dtype=torch.float64))
        assert torch.equal(out[2], torch.zeros(3, dtype=torch.float64))
        assert out[1].abs().sum() > 0
        out.sum().backward()
        assert torch.isfinite(y.grad).all() and torch.isfinite(f.grad).all()
        y.grad = f.grad = None
    # No input points at all.
    out = make_gno("linear", "mean", 8)(y=y[:0].detach(), x=x, f_y=f[:0].detach())
    assert torch.equal(out, torch.zeros(3, 3, dtype=torch.float64))


def test_chunked_backward_stores_no_per_edge_activations():
    torch.manual_seed(5)
    x = torch.rand(2000, 2)
    f = torch.randn(2000, 4, requires_grad=True)
    gno = GNO(4, 4, 2, 0.065, channel_mlp_layers=[64, 64], chunk_size=1024)
    pattern = gno.neighbors(x, x)
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = gno(x, x, f)
    out.sum().backward()
    hidden_per_edge = pattern.num_edges * 64
    assert pattern.num_edges > 40_000
    assert sum(saved) < hidden_per_edge / 4
    # The unchunked path does store them: the check above can fail.
    saved.clear()
    gno.chunk_size = None
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        gno(x, x, f)
    assert sum(saved) > hidden_per_edge


def test_embedding_matches_formula():
    pos = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    emb = sinusoidal_embedding(pos, 3, "transformer", 10000)
    freqs = [10000 ** (-2 * k / 3) for k in range(3)]
    expected = [fn(p * w) for p in (0.3, -1.2) for w in freqs for fn in (math.sin, math.cos)]
    torch.testing.assert_close(emb[0], torch.tensor(expected, dtype=torch.float64))
    nerf = sinusoidal_embedding(pos, 2, "nerf")
    expected = [
        fn(p * 2**k * math.pi) for p in (0.3, -1.2) for k in range(2) for fn in (math.sin, math.cos)
    ]
    torch.testing.assert_close(nerf[0], torch.tensor(expected, dtype=torch.float64))


def test_neighbourhoods_are_cached_per_geometry():
    y, x = torch.rand(30, 2), torch.rand(20, 2)
    gno = GNO(1, 1, 2, 0.3, channel_mlp_layers=[4])
    p1 = gno.neighbors(y=y, x=x)
    assert gno.neighbors(y=y, x=x) is p1
    assert gno.neighbors(y=y, x=x.clone()) is not p1
    p2 = gno.neighbors(y=y, x=x)
    x.add_(0.1)  # in-place change of the geometry
    assert gno.neighbors(y=y, x=x) is not p2


def test_kernel_integral_without_hidden_layers():
    torch.manual_seed(6)
    x = torch.rand(20, 2, dtype=torch.float64)
    pattern = radius_pattern(x, x, 0.3)
    a = torch.randn(20, 2, dtype=torch.float64, requires_grad=True)
    b = torch.randn(20, 2, dtype=torch.float64, requires_grad=True)
    f = torch.randn(1, 20, 2, dtype=torch.float64)
    out = kernel_integral(pattern, a, b, [], f_y=f, reduction="sum", chunk_size=7)
    adjacency = torch.zeros(20, 20, dtype=torch.float64)
    adjacency[pattern.row, pattern.col] = 1.0
    ref = (adjacency[..., None] * (a[None] + b[:, None]) * f[0][None]).sum(1)
    torch.testing.assert_close(out[0], ref)
    assert torch.autograd.gradcheck(
        lambda a, b: kernel_integral(pattern, a, b, [], f_y=f, chunk_size=7), (a, b)
    )


def test_bad_inputs_raise():
    gno = GNO(2, 2, 2, 0.2, channel_mlp_layers=[4])
    y, f = torch.rand(10, 2), torch.randn(10, 2)
    with pytest.raises(ValueError, match="x must have shape"):
        gno(y=y, x=torch.rand(5, 3), f_y=f)
    with pytest.raises(ValueError, match="y must have shape"):
        gno(y=torch.rand(10), x=y, f_y=f)
    with pytest.raises(TypeError, match="y must be a floating-point"):
        gno(y=torch.ones(10, 2, dtype=torch.long), x=y, f_y=f)
    with pytest.raises(ValueError, match="non-finite"):
        gno(y=torch.full((10, 2), float("nan")), x=y, f_y=f)
    with pytest.raises(ValueError, match="f_y must have shape"):
        gno(y, y, torch.randn(9, 2))
    with pytest.raises(ValueError, match="1 or out_channels"):
        gno(y, y, torch.randn(10, 5))
    with pytest.raises(ValueError, match="needs features f_y"):
        GNO(2, 2, 2, 0.2, transform_type="nonlinear", channel_mlp_layers=[4])(y, y)
    with pytest.raises(ValueError, match="pattern has"):
        gno(y, y, f, pattern=radius_pattern(y[:4], y, 0.2))
    with pytest.raises(ValueError, match="radius"):
        GNO(2, 2, 2, 0.0)
    with pytest.raises(ValueError, match="radius"):
        GNO(2, 2, 2, float("inf"))
    with pytest.raises(TypeError, match="radius"):
        GNO(2, 2, 2, "0.1")
    with pytest.raises(ValueError, match="transform_type"):
        GNO(2, 2, 2, 0.1, transform_type="quadratic")
    with pytest.raises(ValueError, match="reduction"):
        GNO(2, 2, 2, 0.1, reduction="max")
    with pytest.raises(ValueError, match="chunk_size"):
        GNO(2, 2, 2, 0.1, chunk_size=0)
    with pytest.raises(ValueError, match="same coordinate dimension"):
        radius_pattern(torch.rand(3, 2), torch.rand(3, 3), 0.1)
    assert "GNO(2, 2, coord_dim=2" in repr(gno)


# ---------------------------------------------------------------- GINO
def small_gino(**kwargs):
    options = dict(
        in_gno_channel_mlp_layers=[16],
        out_gno_channel_mlp_layers=[16],
        gno_pos_embedding_channels=4,
        fno_n_modes=(4, 4),
        fno_hidden_channels=8,
        fno_n_layers=2,
        projection_channels=16,
        gno_chunk_size=64,
    )
    options.update(kwargs)
    return GINO(1, 2, (8, 8), 0.25, **options)


def test_gino_shapes_and_dense_stages():
    torch.manual_seed(7)
    model = small_gino().double()
    x = torch.rand(70, 2, dtype=torch.float64)
    out_pos = torch.rand(25, 2, dtype=torch.float64)
    f = torch.randn(3, 70, 1, dtype=torch.float64)
    out = model(x, f, out_pos)
    assert out.shape == (3, 25, 2)
    assert model(x, f[0], out_pos).shape == (25, 2)
    torch.testing.assert_close(model(x, f[0], out_pos), out[0])

    # Dense reference of both GNO stages around the same FNO and projection.
    grid = torch.stack(
        torch.meshgrid(*[torch.linspace(0, 1, 8, dtype=torch.float64)] * 2, indexing="ij"), -1
    ).reshape(-1, 2)
    latent = dense_gno(model.gno_in, x, grid, f)  # [B, 64, 3]
    latent = model.fno(latent.transpose(1, 2).reshape(3, 3, 8, 8))
    latent = latent.reshape(3, 8, 64).transpose(1, 2)
    ref = model.projection(dense_gno(model.gno_out, grid, out_pos, latent))
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)

    # A latent box moves the grid.
    box = ([-0.5, -0.5], [1.5, 1.5])
    moved = model(x, f, out_pos, latent_box=box)
    assert moved.shape == out.shape and not torch.allclose(moved, out)
    assert model.latent_grid(box, torch.float64)[0].tolist() == [-0.5, -0.5]
    # Neighbourhoods are reused for the same geometry.
    pattern = model.gno_in.neighbors(y=x, x=model.latent_grid(None, torch.float64))
    model(x, f, out_pos)
    assert model.gno_in.neighbors(y=x, x=model.latent_grid(None, torch.float64)) is pattern


def test_gino_bad_inputs():
    with pytest.raises(ValueError, match="latent_resolution"):
        GINO(1, 1, (8, 1), 0.1)
    with pytest.raises(ValueError, match="coord_dim"):
        GINO(1, 1, 8, 0.1)
    with pytest.raises(ValueError, match="in_channels"):
        GINO(2, 1, (8, 8), 0.1, gno_in_channels=3)
    model = small_gino()
    with pytest.raises(ValueError, match="input_pos"):
        model(torch.rand(10, 3), torch.randn(10, 1), torch.rand(5, 2))
    with pytest.raises(ValueError, match="channels"):
        model(torch.rand(10, 2), torch.randn(10, 4), torch.rand(5, 2))
    with pytest.raises(ValueError, match="latent_box"):
        model(torch.rand(10, 2), torch.randn(10, 1), torch.rand(5, 2), latent_box=([0, 0], [0, 1]))


def smooth_functions(coeffs, points):
    """Sums of low cosine modes with the given coefficients ``[B, 3, 3]``, at ``points``."""
    k = torch.arange(3.0) * math.pi
    bx, by = torch.cos(points[:, 0:1] * k), torch.cos(points[:, 1:2] * k)  # [P, 3]
    return torch.einsum("bij,pi,pj->bp", coeffs, bx, by).unsqueeze(-1)


def test_gino_learns_to_interpolate():
    """Maps smooth functions sampled at random points to their values at other points."""
    torch.manual_seed(8)
    x = torch.rand(300, 2)
    out_pos = torch.rand(100, 2) * 0.9 + 0.05
    decay = 1 / (1 + torch.arange(3.0))
    train_c = torch.randn(32, 3, 3) * decay[:, None] * decay
    test_c = torch.randn(32, 3, 3) * decay[:, None] * decay
    train_f, train_u = smooth_functions(train_c, x), smooth_functions(train_c, out_pos)
    test_f, test_u = smooth_functions(test_c, x), smooth_functions(test_c, out_pos)

    model = GINO(
        1,
        1,
        (12, 12),
        0.15,
        out_radius=0.15,
        in_gno_channel_mlp_layers=[32],
        out_gno_channel_mlp_layers=[32],
        gno_pos_embedding_type=None,
        fno_n_modes=(6, 6),
        fno_hidden_channels=16,
        fno_n_layers=2,
        projection_channels=32,
        out_gno_reduction="mean",
        gno_chunk_size=4096,
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(40):
        optimizer.zero_grad()
        loss = F.mse_loss(model(x, train_f, out_pos), train_u)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pred = model(x, test_f, out_pos)
    relative = float(torch.linalg.vector_norm(pred - test_u) / torch.linalg.vector_norm(test_u))
    assert relative < 0.4, relative  # predicting zero (or the untrained model) gives ~1


# ---------------------------------------------------------------- argument order (neuraloperator's)
def test_argument_order_transition_never_swaps_silently():
    """y = input points (where f_y lives), x = queries; old calls either keep their result
    (the old keyword f=) or fail/warn, never compute the swapped integral silently."""
    torch.manual_seed(9)
    points = torch.rand(40, 2, dtype=torch.float64)
    queries = torch.rand(25, 2, dtype=torch.float64)
    f = torch.randn(40, 3, dtype=torch.float64)
    gno = make_gno("linear", "sum", 16)
    expected = dense_gno(gno, points, queries, f)
    torch.testing.assert_close(gno(y=points, x=queries, f_y=f), expected, rtol=1e-10, atol=1e-10)
    # Positional points could mean either order: refused, with the new order in the message.
    with pytest.raises(TypeError, match=r"by keyword.*y=<input points>"):
        gno(queries, points, f)
    with pytest.raises(TypeError, match="by keyword"):
        gno(points, queries)
    with pytest.raises(TypeError, match="by keyword"):
        gno.neighbors(queries, points)
    # The old keyword f= marks an old call: read in the old order (queries first), with a warning.
    with pytest.warns(FutureWarning, match="previous order"):
        old = gno(y=queries, x=points, f=f)
    torch.testing.assert_close(old, expected, rtol=1e-10, atol=1e-10)
    with pytest.warns(FutureWarning, match="previous order"):
        old_positional = gno(queries, points, f=f)
    torch.testing.assert_close(old_positional, expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(TypeError, match="f_y only"):
        gno(y=points, x=queries, f_y=f, f=f)
    # A kernel-only keyword call looks the same in both orders: it warns until f_y is explicit.
    with pytest.warns(FutureWarning, match="Pass f_y explicitly"):
        kernel_only = gno(y=points, x=queries)
    torch.testing.assert_close(
        kernel_only, dense_gno(gno, points, queries, None), rtol=1e-10, atol=1e-10
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(gno(y=points, x=queries, f_y=None), kernel_only)
        # Same tensor for both: the order cannot matter, positional calls stay allowed.
        same = gno(points, points, f)
        torch.testing.assert_close(same, dense_gno(gno, points, points, f), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(gno(y=points, x=points), gno(points, points, None))
    # f_y on the wrong point set (an old positional order in keywords) is a clear error.
    with pytest.raises(ValueError, match=r"f_y must have shape.*N = y.shape\[0\] = 25"):
        gno(y=queries, x=points, f_y=f)
    with pytest.raises(TypeError, match="needs x"):
        gno(y=points, f_y=f)


def test_renamed_keywords_of_radius_pattern_and_kernel_integral():
    torch.manual_seed(10)
    data, queries = torch.rand(30, 2), torch.rand(20, 2)
    pattern = radius_pattern(data, queries, 0.3)
    assert pattern.num_src == 30 and pattern.num_dst == 20
    assert pattern_pairs(pattern) == brute_force_pairs(data, queries, 0.3)
    assert pattern_pairs(radius_pattern(data=data, queries=queries, radius=0.3)) == pattern_pairs(
        pattern
    )
    with pytest.warns(FutureWarning, match="x is deprecated, use data"):
        old = radius_pattern(x=data, y=queries, radius=0.3)  # the old names, the old meaning
    assert pattern_pairs(old) == pattern_pairs(pattern)
    a, b = torch.randn(30, 2), torch.randn(20, 2)
    f = torch.randn(1, 30, 2)
    new = kernel_integral(pattern, a, b, [], f_y=f)
    with pytest.warns(FutureWarning, match="f is deprecated, use f_y"):
        torch.testing.assert_close(kernel_integral(pattern, a, b, [], f=f), new)
