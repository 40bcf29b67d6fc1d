"""Acceptance: EPR from a *learned* score (MLPScore + train_score) against closed forms.

Each system is trained once (cached across the tests of this file) by denoising score matching on
exact stationary samples, and evaluated on held-out samples from an independent generator.
Tolerances: total within 5% (2-D particle, gyrator, 5-bead chain) or 10% (16 AOUPs, 64-dim);
per-coordinate parts within 6% of the total (low-dimensional systems) and per-group parts
(x vs g, per particle) within 10% / 15% of their closed forms (AOUPs); E[div v] within 4
standard errors plus 3% of |tr A| (the scale of the terms that cancel in div v = tr A - tr(D J_s)).
"""

import functools
import time

import pytest
import torch

from gtlib.entropy.estimators import entropy_production, probability_current_divergence
from gtlib.entropy.reference import (
    aoup_harmonic_trap,
    bead_chain,
    brownian_gyrator,
    linear_entropy_production,
    linear_score,
    rotating_particle,
    stationary_sample_linear,
)
from gtlib.entropy.training import train_score
from gtlib.nn.mlp_score import MLPScore

NUM_TRAIN = 200_000
NUM_TEST = 100_000

# name: (system, hidden_channels, steps, batch_size, lr, sigma, relative tolerance of the total)
CASES = {
    "rotating": (lambda: rotating_particle(1.0, 2.0, 0.5), 32, 600, 1024, 1e-2, 0.02, 0.05),
    "gyrator": (
        lambda: brownian_gyrator([[2.0, 0.7], [0.7, 1.0]], 1.0, 3.0),
        32,
        600,
        1024,
        1e-2,
        0.02,
        0.05,
    ),
    "chain5": (lambda: bead_chain(5, 1.0, 1.0, 1.0, 10.0), 32, 600, 1024, 1e-2, 0.02, 0.05),
    "aoup16": (
        lambda: aoup_harmonic_trap(1.0, 0.5, 0.3, 0.2, num_particles=16, dim=2),
        64,
        1000,
        256,
        1e-2,
        0.01,
        0.10,
    ),
    "aoup16_hypo": (
        lambda: aoup_harmonic_trap(1.0, 0.5, 0.3, 0.0, num_particles=16, dim=2),
        64,
        1000,
        256,
        1e-2,
        0.01,
        0.10,
    ),
}


@functools.cache
def _trained(name):
    make, hidden, steps, batch_size, lr, sigma, _ = CASES[name]
    system = make()
    A32 = system.A.float()

    def drift(x):
        return x @ A32.T.to(x.dtype)

    diffusion = system.diffusion.float()
    torch.manual_seed(0)
    model = MLPScore(system.A.shape[0], hidden, 3, drift=drift, diffusion=diffusion)
    train = stationary_sample_linear(
        system.A, system.D, NUM_TRAIN, torch.Generator().manual_seed(1)
    )
    start = time.perf_counter()
    result = train_score(
        model,
        train,
        loss="dsm",
        sigma=sigma,
        noisy=diffusion > 0,
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        progress=False,
        seed=0,
    )
    elapsed = time.perf_counter() - start
    test = stationary_sample_linear(system.A, system.D, NUM_TEST, torch.Generator().manual_seed(2))
    return system, result.model, drift, diffusion, test.float(), elapsed


def _closed_per_coordinate(system):
    total, per_coordinate = linear_entropy_production(system.A, system.D)
    assert total == pytest.approx(system.sigma, rel=1e-9)
    return per_coordinate


@pytest.mark.parametrize("name", list(CASES))
def test_learned_total_matches_closed_form(name):
    system, model, drift, diffusion, test, _ = _trained(name)
    with torch.no_grad():
        est = entropy_production(test, drift, model, diffusion)
    tol = CASES[name][-1]
    assert est.total == pytest.approx(system.sigma, rel=tol), (est.total, system.sigma)
    # Baseline: the exact score on the same held-out samples is within 1.5%.
    S = linear_score(system.A, system.D).float()
    exact = entropy_production(test, drift, lambda x: x @ S.T, diffusion)
    assert exact.total == pytest.approx(system.sigma, rel=0.015)


@pytest.mark.parametrize("name", ["rotating", "gyrator", "chain5"])
def test_learned_per_coordinate_parts(name):
    system, model, drift, diffusion, test, _ = _trained(name)
    with torch.no_grad():
        est = entropy_production(test, drift, model, diffusion, groups=torch.arange(len(diffusion)))
    torch.testing.assert_close(
        est.per_coordinate.sum(), torch.tensor(est.total, dtype=torch.float64)
    )
    torch.testing.assert_close(est.per_group, est.per_coordinate)
    closed = _closed_per_coordinate(system)
    assert (est.per_coordinate - closed).abs().max() <= 0.06 * system.sigma, (
        est.per_coordinate,
        closed,
    )


@pytest.mark.parametrize("name", ["aoup16", "aoup16_hypo"])
def test_learned_aoup_decomposition(name):
    system, model, drift, diffusion, test, _ = _trained(name)
    with torch.no_grad():
        by_dof = entropy_production(test, drift, model, diffusion, groups=system.groups["dof"])
        by_particle = entropy_production(
            test, drift, model, diffusion, groups=system.groups["particle"]
        )
    for est in (by_dof, by_particle):
        assert est.per_group.sum().item() == pytest.approx(est.total, rel=1e-9)
    m = len(diffusion) // 2
    if system.parts["sigma_x"] > 0:
        assert by_dof.per_group[0].item() == pytest.approx(system.parts["sigma_x"], rel=0.10)
    else:
        assert by_dof.per_group[0].item() == 0.0  # no noise on x: nothing to learn there
    assert by_dof.per_group[1].item() == pytest.approx(system.parts["sigma_g"], rel=0.10)
    per_particle = system.sigma / 16
    assert (by_particle.per_group - per_particle).abs().max() <= 0.15 * per_particle
    closed = _closed_per_coordinate(system)
    assert torch.allclose(
        closed[m:], torch.full((m,), system.parts["sigma_g_1"], dtype=closed.dtype)
    )


@pytest.mark.parametrize("name", list(CASES))
def test_learned_current_is_divergence_free_on_average(name):
    system, model, drift, diffusion, test, _ = _trained(name)
    _, div = probability_current_divergence(test[:10_000], drift, model, diffusion)
    per_sample = div.double().sum(dim=1)
    mean = per_sample.mean().item()
    stderr = (per_sample.std() / per_sample.shape[0] ** 0.5).item()
    scale = abs(torch.trace(system.A).item())
    assert abs(mean) <= 4 * stderr + 0.03 * scale, (mean, stderr, scale)
