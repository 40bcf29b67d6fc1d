"""LpLoss and H1Loss against closed-form values on uniform grids."""

import math

import numpy as np
import pytest
import torch

from gtlib.operators import H1Loss, LpLoss


def grid_1d(n, length=1.0):
    return torch.arange(n, dtype=torch.float64) * (length / n)


def test_lp_relative_1d_closed_form():
    # sin and cos are orthogonal on the grid; mean of sin^2 = mean of cos^2 = 1/2 (N > 2).
    x = grid_1d(64)
    y = torch.sin(2 * math.pi * x)
    eps = torch.tensor([0.1, 0.3], dtype=torch.float64)
    target = y.expand(2, 1, 64)
    pred = target + eps[:, None, None] * torch.cos(2 * math.pi * x)
    assert LpLoss(d=1)(pred, target).item() == pytest.approx(0.2, abs=1e-14)
    assert LpLoss(d=1, reduction="sum")(pred, target).item() == pytest.approx(0.4, abs=1e-14)


def test_lp_absolute_uses_quadrature_weights():
    n = 50
    length = 2 * math.pi
    x = grid_1d(n, length)
    target = torch.sin(x)[None, None]
    pred = target + 0.1 * torch.cos(x)
    # ||0.1 cos||_{L2(0, 2 pi)} = 0.1 sqrt(pi), exact for the trapezoidal (= uniform) rule.
    loss = LpLoss(d=1, relative=False, L=length)(pred, target)
    assert loss.item() == pytest.approx(0.1 * math.sqrt(math.pi), abs=1e-14)
    # p = 1: h * sum |e| by hand, close to the integral 0.1 * 4 = 0.4.
    loss1 = LpLoss(d=1, p=1, relative=False, L=length)(pred, target)
    by_hand = length / n * np.abs(0.1 * np.cos(x.numpy())).sum()
    assert loss1.item() == pytest.approx(by_hand, abs=1e-14)
    assert loss1.item() == pytest.approx(0.4, abs=1e-3)


def test_lp_relative_2d_over_channels():
    n1, n2 = 16, 12
    x, y = torch.meshgrid(grid_1d(n1), grid_1d(n2), indexing="ij")
    target = torch.sin(2 * math.pi * x) * torch.sin(2 * math.pi * y)
    err = 0.2 * torch.cos(2 * math.pi * x) * torch.cos(4 * math.pi * y)
    # Two channels, one exact: the per-sample norm runs over channels and grid jointly.
    target2 = torch.stack([target, target])[None]
    pred2 = torch.stack([target + err, target])[None]
    assert LpLoss(d=2)(pred2, target2).item() == pytest.approx(0.2 / math.sqrt(2), abs=1e-14)


def test_h1_periodic_1d_closed_form():
    n = 32
    h = 1.0 / n
    x = grid_1d(n)
    target = torch.sin(2 * math.pi * x)[None, None]
    eps = 0.1
    pred = target + eps * torch.sin(4 * math.pi * x)
    # Central differences of sin(2 pi k x) give omega_k cos(2 pi k x), omega_k = sin(2 pi k h)/h.
    omega1 = math.sin(2 * math.pi * h) / h
    omega2 = math.sin(4 * math.pi * h) / h
    expected = eps * math.sqrt((1 + omega2**2) / (1 + omega1**2))
    assert H1Loss(d=1)(pred, target).item() == pytest.approx(expected, rel=1e-13)
    # and it approaches the continuum value with exact derivatives.
    continuum = eps * math.sqrt((1 + 16 * math.pi**2) / (1 + 4 * math.pi**2))
    assert H1Loss(d=1)(pred, target).item() == pytest.approx(continuum, rel=2e-2)


def test_h1_periodic_2d_absolute():
    n = 20
    h = 1.0 / n
    x, y = torch.meshgrid(grid_1d(n), grid_1d(n), indexing="ij")
    target = (torch.sin(2 * math.pi * x) * torch.cos(2 * math.pi * y))[None, None]
    omega = math.sin(2 * math.pi * h) / h
    # |u|^2, |D_x u|^2, |D_y u|^2 each average 1/4 (times omega^2 for the derivatives).
    expected = math.sqrt(0.25 * (1 + 2 * omega**2))
    loss = H1Loss(d=2, relative=False)(torch.zeros_like(target), target)
    assert loss.item() == pytest.approx(expected, rel=1e-13)


def test_h1_non_periodic_exact_on_quadratics():
    # Central and second-order one-sided differences are exact for quadratics on [0, 1].
    n = 11
    x = torch.linspace(0, 1, n, dtype=torch.float64)
    target = (x**2)[None, None]
    pred = target + x  # error e = x, e' = 1; target' = 2x
    xn = x.numpy()
    expected = math.sqrt((np.sum(xn**2) + n) / (np.sum(xn**4) + np.sum(4 * xn**2)))
    loss = H1Loss(d=1, periodic=False)(pred, target)
    assert loss.item() == pytest.approx(expected, rel=1e-13)
    absolute = H1Loss(d=1, relative=False, periodic=False)(pred, target)
    assert absolute.item() == pytest.approx(math.sqrt((np.sum(xn**2) + n) / (n - 1)), rel=1e-13)


def test_loss_validation():
    with pytest.raises(ValueError, match="same shape"):
        LpLoss(d=1)(torch.zeros(2, 1, 8), torch.zeros(2, 1, 9))
    with pytest.raises(ValueError, match="reduction"):
        LpLoss(d=1, reduction="none")
    with pytest.raises(ValueError, match="at least 3"):
        H1Loss(d=1, periodic=False)(torch.zeros(1, 1, 2), torch.ones(1, 1, 2))
