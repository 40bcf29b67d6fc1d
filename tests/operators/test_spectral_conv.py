"""SpectralConv against an explicit-DFT-matrix reference (numpy float64)."""

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from gtlib.operators import SpectralConv


def kept_frequencies(n_modes):
    """Signed frequencies per dimension in the weight's order (documented convention)."""
    freqs = [np.arange(m) - m // 2 for m in n_modes[:-1]]
    freqs.append(np.arange(n_modes[-1] // 2 + 1))
    return freqs


def dft_reference(x, weight, n_modes, bias=None):
    """Spectral convolution with dense DFT matrices.

    Forward: full complex DFT along every spatial axis, 'forward' normalisation (1/N).
    Product: the weight sits at the kept (signed) frequencies of a full-spectrum mask, zero
    elsewhere. Inverse: a real signal given its Hermitian half-spectrum over the last axis,
    v(n) = Re sum_k gamma(k_d) V(k) exp(+2 pi i k.n / N), gamma = 1 at k_d = 0 (and Nyquist),
    2 for 0 < k_d < N_d / 2, 0 for the negative last-axis frequencies.
    """
    x = np.asarray(x, dtype=np.float64)
    weight = np.asarray(weight)
    d = x.ndim - 2
    sizes = x.shape[2:]
    spec = x.astype(np.complex128)
    for axis, n in enumerate(sizes):
        k = np.arange(n)
        forward = np.exp(-2j * np.pi * np.outer(k, k) / n) / n
        spec = np.moveaxis(np.tensordot(spec, forward, axes=([2 + axis], [1])), -1, 2 + axis)

    full_weight = np.zeros(weight.shape[:2] + tuple(sizes), dtype=np.complex128)
    freqs = kept_frequencies(n_modes)
    wrapped = np.ix_(*[f % n for f, n in zip(freqs, sizes)])
    full_weight[(slice(None), slice(None), *wrapped)] = weight
    out_spec = np.einsum("bi...,io...->bo...", spec, full_weight)

    n_last = sizes[-1]
    gamma = np.zeros(n_last)
    gamma[0] = 1.0
    gamma[1 : (n_last + 1) // 2] = 2.0
    if n_last % 2 == 0:
        gamma[n_last // 2] = 1.0
    out_spec = out_spec * gamma

    out = out_spec
    for axis, n in enumerate(sizes):
        k = np.arange(n)
        inverse = np.exp(2j * np.pi * np.outer(k, k) / n)
        out = np.moveaxis(np.tensordot(out, inverse, axes=([2 + axis], [1])), -1, 2 + axis)
    out = out.real
    if bias is not None:
        out = out + np.asarray(bias).reshape(1, -1, *([1] * d))
    return out


CASES = [
    ((7,), (16,)),
    ((6,), (11,)),
    ((6, 5), (12, 9)),
    ((5, 4), (8, 10)),
    ((4, 4, 6), (6, 7, 8)),
]


@pytest.mark.parametrize("n_modes,sizes", CASES)
def test_matches_dft_matrix_reference(n_modes, sizes):
    torch.manual_seed(0)
    layer = SpectralConv(3, 2, n_modes).double()
    with torch.no_grad():
        layer.bias.normal_()
    x = torch.randn(2, 3, *sizes, dtype=torch.float64)
    out = layer(x)
    assert out.shape == (2, 2, *sizes) and out.dtype == torch.float64
    expected = dft_reference(
        x.numpy(), layer.get_weight().detach().numpy(), n_modes, layer.bias.detach().numpy()
    )
    np.testing.assert_allclose(out.detach().numpy(), expected, rtol=0, atol=1e-10)


def test_int_n_modes_is_1d_and_repr():
    layer = SpectralConv(2, 3, 8, bias=False)
    assert layer.n_modes == (8,) and layer.get_weight().shape == (2, 3, 5)
    assert layer.bias is None
    assert repr(layer) == "SpectralConv(2, 3, n_modes=(8,))"
    tucker = SpectralConv(2, 3, (8, 8), factorization="tucker", rank=(2, 2, 4, 3))
    assert "tucker" in repr(tucker) and "(2, 2, 4, 3)" in repr(tucker)


def test_gradcheck():
    torch.manual_seed(1)
    layer = SpectralConv(2, 2, (4, 3)).double()
    x = torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]

    def fn(x, *params):
        return functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params))


def test_gradcheck_tucker():
    torch.manual_seed(2)
    layer = SpectralConv(2, 2, 4, factorization="tucker", rank=(2, 1, 2)).double()
    x = torch.randn(1, 2, 6, dtype=torch.float64, requires_grad=True)
    names = [name for name, _ in layer.named_parameters()]
    params = [p.detach().clone().requires_grad_(True) for p in layer.parameters()]

    def fn(x, *params):
        return functional_call(layer, dict(zip(names, params)), (x,))

    assert torch.autograd.gradcheck(fn, (x, *params))


@pytest.mark.parametrize("n_modes", [(6,), (6, 4), (4, 4, 4)])
def test_tucker_equals_dense_with_reconstructed_weight(n_modes):
    torch.manual_seed(3)
    tucker = SpectralConv(3, 4, n_modes, factorization="tucker", rank=0.5).double()
    with torch.no_grad():
        tucker.bias.normal_()
    # Reconstruct W = G x_1 U_in x_2 U_out x_3 U_1 ... independently, in numpy.
    core = torch.view_as_complex(tucker.core.detach()).numpy()
    weight = core
    for axis, factor in enumerate(tucker.factors):
        u = torch.view_as_complex(factor.detach()).numpy()
        weight = np.moveaxis(np.tensordot(weight, u, axes=([axis], [1])), -1, axis)
    assert weight.shape == tucker.weight_shape

    dense = SpectralConv(3, 4, n_modes).double()
    with torch.no_grad():
        dense.weight.copy_(torch.view_as_real(torch.from_numpy(weight)))
        dense.bias.copy_(tucker.bias)
    x = torch.randn(2, 3, *[2 * m + 1 for m in n_modes], dtype=torch.float64)
    torch.testing.assert_close(tucker(x), dense(x), rtol=0, atol=1e-12)

    # rank=0.5 keeps about half the dense parameters.
    n_dense = 2 * math.prod(tucker.weight_shape)
    n_tucker = tucker.core.numel() + sum(f.numel() for f in tucker.factors)
    assert 0.2 * n_dense < n_tucker <= 0.5 * n_dense


def band_limited(sizes, coefficients):
    """Evaluate sum over signed frequencies k of Re(c_k exp(2 pi i k.x)) on [0,1)^d grids."""
    grids = np.meshgrid(*[np.arange(n) / n for n in sizes], indexing="ij")
    out = np.zeros((coefficients.shape[0], coefficients.shape[1], *sizes))
    it = np.ndindex(*coefficients.shape[2:])
    half = [s // 2 for s in coefficients.shape[2:]]
    for idx in it:
        k = [i - h for i, h in zip(idx, half)]
        phase = np.exp(2j * np.pi * sum(kj * g for kj, g in zip(k, grids)))
        out += np.real(coefficients[(slice(None), slice(None), *idx)][..., None, None] * phase)
    return out


def test_resolution_invariance_2d():
    rng = np.random.default_rng(4)
    n_modes = (8, 8)  # keeps k_1 in -4..3 and k_2 in 0..4
    # Input frequencies |k_j| <= 3: inside the kept set and below every grid's Nyquist frequency.
    coefficients = rng.standard_normal((2, 3, 7, 7)) + 1j * rng.standard_normal((2, 3, 7, 7))
    torch.manual_seed(4)
    layer = SpectralConv(3, 2, n_modes).double()
    with torch.no_grad():
        layer.bias.normal_()
    coarse_sizes, factor = (12, 10), (3, 2)
    fine_sizes = tuple(n * f for n, f in zip(coarse_sizes, factor))
    coarse = layer(torch.from_numpy(band_limited(coarse_sizes, coefficients)))
    fine = layer(torch.from_numpy(band_limited(fine_sizes, coefficients)))
    torch.testing.assert_close(fine[:, :, :: factor[0], :: factor[1]], coarse, rtol=0, atol=1e-12)


@pytest.mark.parametrize("fft_norm", ["forward", "backward", "ortho"])
def test_resolution_invariance_1d(fft_norm):
    """The forward and inverse normalisations multiply to 1/N, so every norm is invariant."""
    rng = np.random.default_rng(5)
    coefficients = rng.standard_normal((1, 1, 7)) + 1j * rng.standard_normal((1, 1, 7))

    def sample(n):
        x = np.arange(n) / n
        out = np.zeros((1, 1, n))
        for i, k in enumerate(range(-3, 4)):
            out += np.real(coefficients[:, :, i, None] * np.exp(2j * np.pi * k * x))
        return torch.from_numpy(out)

    torch.manual_seed(5)
    layer = SpectralConv(1, 1, 8, fft_norm=fft_norm).double()
    torch.testing.assert_close(layer(sample(64))[..., ::4], layer(sample(16)), rtol=0, atol=1e-12)


def test_validation():
    layer = SpectralConv(3, 2, (8, 8))
    with pytest.raises(ValueError, match="spatial dimension"):
        layer(torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="in_channels=3"):
        layer(torch.randn(2, 4, 16, 16))
    with pytest.raises(ValueError, match="too small"):
        layer(torch.randn(2, 3, 16, 6))
    with pytest.raises(TypeError, match="floating"):
        layer(torch.ones(2, 3, 16, 16, dtype=torch.long))
    with pytest.raises(ValueError, match="n_modes"):
        SpectralConv(3, 2, (4, 4, 4, 4))
    with pytest.raises(ValueError, match="factorization"):
        SpectralConv(3, 2, 4, factorization="cp")
    with pytest.raises(ValueError, match="rank"):
        SpectralConv(3, 2, 4, factorization="tucker", rank=(2, 2))
    layer(torch.randn(1, 3, 8, 8))  # the smallest valid resolution runs


def test_reset_parameters_and_dtype_conversion():
    torch.manual_seed(6)
    layer = SpectralConv(16, 16, (6, 6))
    std = layer.get_weight().abs().pow(2).mean().sqrt().item()
    assert abs(std - layer.init_std) < 0.1 * layer.init_std
    tucker = SpectralConv(16, 16, (6, 6), factorization="tucker", rank=0.5)
    std = tucker.get_weight().abs().pow(2).mean().sqrt().item()
    assert 0.5 * tucker.init_std < std < 2.0 * tucker.init_std
    assert layer.double().get_weight().dtype == torch.complex128
