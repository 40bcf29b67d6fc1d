"""FNO: shapes across resolutions, grid embedding, domain padding and a small operator fit."""

import math

import numpy as np
import pytest
import torch

from gtlib.operators import FNO, LpLoss, SpectralConv


@pytest.mark.parametrize(
    "n_modes,resolutions",
    [
        (8, [(16,), (33,), (64,)]),
        ((6, 4), [(8, 8), (12, 20), (31, 16)]),
        ((4, 4, 4), [(6, 6, 6), (8, 5, 12)]),
    ],
)
def test_shapes_at_several_resolutions(n_modes, resolutions):
    torch.manual_seed(0)
    model = FNO(2, 3, n_modes, hidden_channels=8, n_layers=2, projection_channels=16)
    for sizes in resolutions:
        out = model(torch.randn(2, 2, *sizes))
        assert out.shape == (2, 3, *sizes)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(lifting_channels=12, projection_channels=None, positional_embedding=None),
        dict(factorization="tucker", rank=0.3, domain_padding=(0.25, 0.1)),
        dict(skip="identity", domain_padding=0.5),
        dict(skip=None, act=torch.tanh),
    ],
)
def test_options_shapes(kwargs):
    torch.manual_seed(1)
    model = FNO(1, 2, (6, 6), hidden_channels=8, n_layers=3, **kwargs)
    for sizes in [(10, 12), (17, 9)]:
        assert model(torch.randn(3, 1, *sizes)).shape == (3, 2, *sizes)
    n_spectral = sum(isinstance(m, SpectralConv) for m in model.modules())
    assert n_spectral == 3


def test_grid_embedding_coordinates():
    model = FNO(1, 1, (4, 4), hidden_channels=4, n_layers=1)
    x = torch.zeros(2, 1, 5, 8, dtype=torch.float64)
    grid = model.grid(x)
    assert grid.shape == (2, 2, 5, 8) and grid.dtype == torch.float64
    gx, gy = np.meshgrid(np.arange(5) / 5, np.arange(8) / 8, indexing="ij")
    np.testing.assert_allclose(grid[1, 0].numpy(), gx, atol=1e-15)
    np.testing.assert_allclose(grid[1, 1].numpy(), gy, atol=1e-15)
    assert grid.min() == 0 and grid.max() < 1


def test_domain_padding_sizes_and_periodicity():
    torch.manual_seed(2)
    x = torch.randn(2, 1, 20, 16, dtype=torch.float64)
    shift = (5, 3)

    # Without padding or positional embedding the model commutes with circular shifts.
    periodic = FNO(1, 1, (6, 6), hidden_channels=6, n_layers=2, positional_embedding=None).double()
    out = periodic(x)
    shifted = periodic(torch.roll(x, shift, dims=(2, 3)))
    torch.testing.assert_close(shifted, torch.roll(out, shift, dims=(2, 3)), rtol=0, atol=1e-10)

    # Zero padding (right side, round(fraction * N) per dimension) breaks that wrap-around.
    padded = FNO(
        1,
        1,
        (6, 6),
        hidden_channels=6,
        n_layers=2,
        positional_embedding=None,
        domain_padding=(0.25, 0.1),
    ).double()
    padded.load_state_dict(periodic.state_dict())
    seen = []
    padded.spectral_convs[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    out = padded(x)
    assert out.shape == x.shape
    assert seen[0][2:] == (25, 18)  # 20 + round(5.0), 16 + round(1.6)
    shifted = padded(torch.roll(x, shift, dims=(2, 3)))
    assert not torch.allclose(shifted, torch.roll(out, shift, dims=(2, 3)), atol=1e-3)


def test_validation_reset_and_repr():
    model = FNO(2, 1, (4, 4), hidden_channels=4, n_layers=2)
    with pytest.raises(ValueError, match="spatial dimension"):
        model(torch.randn(1, 2, 16))
    with pytest.raises(ValueError, match="in_channels=2"):
        model(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="too small"):
        model(torch.randn(1, 2, 16, 3))
    with pytest.raises(ValueError, match="domain_padding"):
        FNO(1, 1, (4, 4), domain_padding=(0.1,))
    with pytest.raises(ValueError, match="positional_embedding"):
        FNO(1, 1, 4, positional_embedding="sine")
    before = model.spectral_convs[0].weight.detach().clone()
    model.reset_parameters()
    assert not torch.equal(before, model.spectral_convs[0].weight)
    assert repr(model).startswith("FNO(2, 1, n_modes=(4, 4)")


def antiderivative_data(n_samples, resolution, seed):
    """Random periodic band-limited u (modes 1..4) and its zero-mean antiderivative, in closed
    form: cos(2 pi k x) -> sin(2 pi k x) / (2 pi k), sin(2 pi k x) -> -cos(2 pi k x) / (2 pi k)."""
    gen = torch.Generator().manual_seed(seed)
    k = torch.arange(1, 5, dtype=torch.float64)
    a = torch.randn(n_samples, 4, generator=gen, dtype=torch.float64) / k
    b = torch.randn(n_samples, 4, generator=gen, dtype=torch.float64) / k
    phase = 2 * math.pi * k[:, None] * (torch.arange(resolution, dtype=torch.float64) / resolution)
    u = (a[..., None] * torch.cos(phase) + b[..., None] * torch.sin(phase)).sum(1)
    v = (a[..., None] * torch.sin(phase) - b[..., None] * torch.cos(phase)) / (
        2 * math.pi * k[:, None]
    )
    v = v.sum(1)
    return u[:, None].float(), v[:, None].float()


def test_fits_antiderivative_and_super_resolves():
    torch.manual_seed(0)
    u, v = antiderivative_data(256, 64, seed=0)
    model = FNO(1, 1, 12, hidden_channels=16, n_layers=2, projection_channels=32)
    loss_fn = LpLoss(d=1)
    steps = 200
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    gen = torch.Generator().manual_seed(0)
    for _ in range(steps):
        idx = torch.randint(0, u.shape[0], (32,), generator=gen)
        optimizer.zero_grad()
        loss_fn(model(u[idx]), v[idx]).backward()
        optimizer.step()
        scheduler.step()
    with torch.no_grad():
        u_test, v_test = antiderivative_data(64, 64, seed=1)
        u_fine, v_fine = antiderivative_data(64, 128, seed=1)  # same functions, 2x resolution
        err = loss_fn(model(u_test), v_test).item()
        err_fine = loss_fn(model(u_fine), v_fine).item()
        baseline = loss_fn(torch.zeros_like(v_test), v_test).item()
    assert baseline == pytest.approx(1.0)
    assert err < 0.03, err
    assert err_fine < 0.03, err_fine
