"""Parity with neuraloperator (``neuralop``) with copied weights: SpectralConv and GNO."""

import pytest
import torch

neuralop = pytest.importorskip("neuralop")
from neuralop.layers.gno_block import GNOBlock  # noqa: E402
from neuralop.layers.neighbor_search import native_neighbor_search  # noqa: E402
from neuralop.layers.spectral_convolution import SpectralConv as NeuralopSpectralConv  # noqa: E402

from gtlib.operators import SpectralConv  # noqa: E402
from gtlib.operators.gno import GNO, radius_pattern  # noqa: E402


@pytest.mark.parametrize(
    "n_modes,sizes",
    [
        ((7,), (32,)),
        ((8,), (21,)),
        ((6, 5), (16, 12)),
        ((5, 8), (12, 17)),
        ((4, 4, 6), (8, 10, 9)),
        ((5, 8), (11, 17)),
        ((4, 4, 6), (9, 7, 10)),
    ],
)
def test_spectral_conv_matches_neuralop(n_modes, sizes, monkeypatch):
    """Float32 only: neuralop 2.0.0 allocates its output spectrum as complex64 whatever the input.

    neuralop 2.0.0 undoes its ``fftshift`` of the leading dimensions with a second ``fftshift``
    instead of ``ifftshift``, which misplaces the modes when a leading dimension has odd size
    (its outputs there are not a spectral convolution). For such sizes we compare against
    neuralop with that inverse shift corrected.
    """
    if any(n % 2 for n in sizes[:-1]):
        original, calls = torch.fft.fftshift, []

        def shift_then_unshift(t, dim=None):
            calls.append(dim)
            return original(t, dim=dim) if len(calls) % 2 else torch.fft.ifftshift(t, dim=dim)

        monkeypatch.setattr(torch.fft, "fftshift", shift_then_unshift)
    torch.manual_seed(0)
    theirs = NeuralopSpectralConv(3, 4, n_modes, bias=True, fft_norm="forward")
    ours = SpectralConv(3, 4, n_modes, bias=True, fft_norm="forward")
    ours.load_neuralop_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, *sizes)
    expected = theirs(x)
    out = ours(x)
    assert out.shape == expected.shape == (2, 4, *sizes)
    scale = float(expected.detach().abs().max())
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5 * scale)
    # Gradients agree too.
    x.requires_grad_(True)
    g_ours = torch.autograd.grad(ours(x).square().sum(), x)[0]
    g_theirs = torch.autograd.grad(theirs(x).square().sum(), x)[0]
    torch.testing.assert_close(g_ours, g_theirs, rtol=1e-4, atol=1e-4 * float(g_theirs.abs().max()))


def safe_radius(x, y, radius, margin=1e-4):
    """A radius near ``radius`` with no pair distance within ``margin``, so float32 rounding in
    either library's distance cannot decide a neighbourhood."""
    dist = torch.cdist(y.double(), x.double()).flatten()
    while bool(((dist - radius).abs() < margin).any()):
        radius += 1.7 * margin
    return radius


def neuralop_pairs(x, y, radius):
    nbrs = native_neighbor_search(x, y, radius)
    counts = nbrs["neighbors_row_splits"][1:] - nbrs["neighbors_row_splits"][:-1]
    rows = torch.repeat_interleave(torch.arange(y.shape[0]), counts)
    return set(zip(rows.tolist(), nbrs["neighbors_index"].tolist()))


@pytest.mark.parametrize("dim", [2, 3])
def test_neighbourhoods_match_neuralop(dim):
    torch.manual_seed(dim)
    x = torch.rand(300, dim)
    y = torch.rand(200, dim)
    radius = safe_radius(x, y, 0.15)
    ours = radius_pattern(x, y, radius)
    assert set(zip(ours.row.tolist(), ours.col.tolist())) == neuralop_pairs(x, y, radius)
    same = radius_pattern(x, x, safe_radius(x, x, 0.15))  # includes each point itself
    assert set(zip(same.row.tolist(), same.col.tolist())) == neuralop_pairs(
        x, x, safe_radius(x, x, 0.15)
    )


@pytest.mark.parametrize(
    "transform,reduction,embedding,batched",
    [
        ("linear", "sum", "transformer", False),
        ("linear", "mean", "nerf", True),
        ("linear_kernelonly", "mean", "transformer", False),
        ("nonlinear", "sum", None, True),
        ("nonlinear_kernelonly", "mean", "transformer", False),
        ("nonlinear", "mean", "transformer", False),
    ],
)
def test_gno_matches_neuralop_gnoblock(transform, reduction, embedding, batched):
    torch.manual_seed(0)
    dim, channels = 3, 4
    y = torch.rand(400, dim)  # input points (neuraloperator's names)
    x = torch.rand(150, dim)  # queries
    radius = safe_radius(y, x, 0.2)
    options = dict(
        transform_type=transform,
        reduction=reduction,
        pos_embedding_type=embedding,
        pos_embedding_channels=4,
    )
    theirs = GNOBlock(
        channels,
        channels,
        dim,
        radius,
        channel_mlp_layers=[24, 16],  # a fresh list: GNOBlock appends to it
        use_torch_scatter_reduce=False,
        use_open3d_neighbor_search=False,
        **options,
    )
    ours = GNO(
        channels, channels, dim, radius, channel_mlp_layers=[24, 16], chunk_size=500, **options
    )
    ours.load_neuralop_state_dict(theirs.state_dict())

    f = torch.randn(2, 400, channels) if batched else torch.randn(400, channels)
    f_arg = None if transform == "linear_kernelonly" else f  # neuralop multiplies by any f given
    expected = theirs(y=y, x=x, f_y=f_arg)
    out = ours(y=y, x=x, f_y=f_arg)  # the same call
    assert out.shape == expected.shape
    scale = float(expected.detach().abs().max())
    assert scale > 0
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=2e-6 * scale)


def test_load_neuralop_state_dict_copies_weight_and_bias():
    torch.manual_seed(1)
    theirs = NeuralopSpectralConv(3, 4, (6, 5), bias=True)
    with torch.no_grad():
        theirs.bias.normal_()
    ours = SpectralConv(3, 4, (6, 5), bias=True).double()
    ours.load_neuralop_state_dict(theirs.state_dict())
    assert ours.weight.dtype == torch.float64  # cast to our dtype
    torch.testing.assert_close(ours.get_weight(), theirs.weight.to_tensor().detach().cdouble())
    torch.testing.assert_close(ours.bias, theirs.bias.detach().reshape(-1).double())
    # The older tensorly-torch key and a bias-free layer load too.
    state = {"weight._tensor": theirs.state_dict()["weight.tensor"]}
    plain = SpectralConv(3, 4, (6, 5), bias=False)
    plain.load_neuralop_state_dict(state)
    torch.testing.assert_close(plain.get_weight(), theirs.weight.to_tensor().detach())


@pytest.mark.parametrize(
    "theirs_kwargs,ours_kwargs,match",
    [
        (dict(factorization="tucker", rank=0.5), {}, "only dense"),
        ({}, dict(factorization="tucker"), "needs a dense"),
        ({}, dict(n_modes=(6, 7)), "does not match"),
        (dict(max_n_modes=(8, 5)), {}, "does not match"),
        ({}, dict(out_channels=5), "does not match"),
        (dict(bias=False), {}, "no bias"),
        ({}, dict(bias=False), "bias=False"),
    ],
)
def test_load_neuralop_state_dict_rejects_mismatch(theirs_kwargs, ours_kwargs, match):
    theirs_args = dict(in_channels=3, out_channels=4, n_modes=(6, 5), bias=True)
    ours_args = dict(theirs_args)
    ours_args.update(ours_kwargs)
    theirs = NeuralopSpectralConv(**{**theirs_args, **theirs_kwargs})
    ours = SpectralConv(**ours_args)
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(ValueError, match=match):
        ours.load_neuralop_state_dict(theirs.state_dict())
    for key, value in ours.state_dict().items():  # nothing copied on failure
        assert torch.equal(value, before[key])


def test_load_neuralop_state_dict_rejects_prefixed_keys():
    theirs = NeuralopSpectralConv(3, 4, (6, 5))
    prefixed = {f"conv.{k}": v for k, v in theirs.state_dict().items()}
    with pytest.raises(ValueError, match="no neuralop spectral weight"):
        SpectralConv(3, 4, (6, 5)).load_neuralop_state_dict(prefixed)
    extra = {**theirs.state_dict(), "other": torch.zeros(1)}
    with pytest.raises(ValueError, match="unexpected keys"):
        SpectralConv(3, 4, (6, 5)).load_neuralop_state_dict(extra)
