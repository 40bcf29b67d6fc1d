"""Active Brownian particles in a harmonic trap: drift, divergence, stationary moments, and the
entropy production (score-free and learned) against the closed form U^2 D_r / (D_t (A + D_r))."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from gtlib.datasets.particles import ActiveBrownianParticles, simulate
from gtlib.entropy import (
    aoup_harmonic_trap,
    linear_entropy_production,
    score_free_entropy_production,
)

_path = Path(__file__).resolve().parents[2] / "examples" / "entropy" / "abp_trap.py"
_spec = importlib.util.spec_from_file_location("abp_trap", _path)
abp_trap = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(abp_trap)


def _system(n=3, **kwargs):
    params = dict(v0=1.3, rotational_diffusion=0.7, eps=0.4, trap=0.9, k=1.0)
    params.update(kwargs)
    return ActiveBrownianParticles(n, **params)


def test_trap_drift_divergence_and_jacobian_match_autograd():
    system = _system(4)
    g = torch.Generator().manual_seed(0)
    state = torch.randn(2, 4, 3, generator=g, dtype=torch.float64) * 1.5
    drift = system.angle_drift(state)
    pos, theta = state[..., :2], state[..., 2]
    e = torch.stack([torch.cos(theta), torch.sin(theta)], -1)
    expected = 1.3 * e + system.interaction_forces(pos) - 0.9 * pos
    torch.testing.assert_close(drift[..., :2], expected)
    assert bool((drift[..., 2] == 0).all())
    # the divergence of the angle-layout drift, by autograd, per snapshot
    for b in range(2):
        x = state[b].reshape(-1).clone().requires_grad_(True)
        jac = torch.autograd.functional.jacobian(
            lambda y: system.angle_drift(y.reshape(4, 3)).reshape(-1), x
        )
        torch.testing.assert_close(system.angle_drift_divergence(state[b]), jac.trace())
        blocks = system.force_jacobian(pos[b])
        for i in range(4):
            # passive force Jacobian = d b_x_i / d x_i (the self-propulsion does not depend on x)
            torch.testing.assert_close(blocks[i], jac[3 * i : 3 * i + 2, 3 * i : 3 * i + 2])
    # the drift of the (pos, g) layout agrees
    torch.testing.assert_close(system.drift(pos, e)[0], expected)


def test_trap_closed_form_matches_aoup_equivalent():
    # sigma = N U^2 D_r / (D_t (A + D_r)) is the AOUP closed form with gamma = D_r,
    # v0 = U / sqrt(2), eps = D_t, times the N d = 2N Cartesian dimensions.
    system = _system(5, k=0.0)
    aoup = aoup_harmonic_trap(kappa=0.9, v0=1.3 / math.sqrt(2), gamma=0.7, eps=0.4)
    sigma_1d, _ = linear_entropy_production(aoup.A, aoup.D)
    assert system.trap_entropy_production() == pytest.approx(5 * 2 * sigma_1d, rel=1e-10)
    assert system.trap_entropy_production() == pytest.approx(5 * 1.3**2 * 0.7 / (0.4 * 1.6))
    with pytest.raises(ValueError, match="k = 0"):
        _system(2).trap_entropy_production()
    with pytest.raises(ValueError, match="trap"):
        ActiveBrownianParticles(2, trap=-1.0)
    with pytest.raises(ValueError, match=r"\[\.\.\., 2, 3\]"):
        _system(2).angle_drift(torch.zeros(2, 2))


def test_trapped_abp_moments_and_score_free_epr():
    # Non-interacting ABPs: E[e.x] = U / (A + D_r), E|x|^2 = (U^2/(A + D_r) + 2 D_t) / A, and
    # the score-free identity on the samples gives U^2 D_r / (D_t (A + D_r)) per particle.
    U, Dr, Dt, A, n = 1.0, 1.0, 0.5, 1.0, 4000
    many = ActiveBrownianParticles(n, v0=U, rotational_diffusion=Dr, eps=Dt, trap=A, k=0.0)
    run = simulate(many, 4, 5e-3, burn_in=10.0, spacing=3.0, seed=1, progress=False)
    samples = many.angle_state(run["pos"][:, 0], run["g"][:, 0]).reshape(-1, 3)
    pos, theta = samples[:, :2], samples[:, 2]
    e = torch.stack([torch.cos(theta), torch.sin(theta)], -1)
    assert float((e * pos).sum(-1).mean()) == pytest.approx(U / (A + Dr), rel=0.04)
    assert float((pos * pos).sum(-1).mean()) == pytest.approx(
        (U**2 / (A + Dr) + 2 * Dt) / A, rel=0.03
    )
    one = ActiveBrownianParticles(1, v0=U, rotational_diffusion=Dr, eps=Dt, trap=A, k=0.0)
    sigma, stderr = score_free_entropy_production(
        samples,
        lambda x: one.angle_drift(x[:, None, :])[:, 0, :],
        lambda x: one.angle_drift_divergence(x[:, None, :]),
        one.diffusion,
    )
    exact = one.trap_entropy_production()
    assert exact == pytest.approx(1.0)
    assert abs(sigma - exact) < 4 * stderr + 0.01


def test_abp_parameters_round_trip_and_aoup_unaffected():
    system = _system(3)
    clone = ActiveBrownianParticles(**system.parameters())
    assert clone.parameters() == system.parameters()
    assert "trap=0.9" in repr(system)


@pytest.mark.slow
def test_trapped_abp_learned_epr_within_5_percent():
    result = abp_trap.learned_trap_epr(num_particles=2000, n_snapshots=12, steps=1500, seed=0)
    assert result["exact"] == pytest.approx(1.0)
    assert abs(result["learned_rel_error"]) < 0.05
    # the x and theta parts are both present (the theta part needs the learned angle score)
    assert result["learned_theta"] > 0.1 and result["learned_x"] > 0.1
