"""Local decompositions of the EPR: per particle, per degree of freedom, per spatial cell, and the
hypoelliptic score-free identity."""

import itertools
import math

import pytest
import torch

from gtlib.entropy.estimators import (
    entropy_production,
    group_sum,
    local_entropy_production,
    particle_groups,
    score_free_entropy_production_hypoelliptic,
    spatial_decomposition,
)
from gtlib.entropy.reference import (
    aoup_harmonic_trap,
    linear_entropy_production,
    linear_score,
    stationary_sample_linear,
)


def test_particle_groups_layout():
    # N = 2 particles in d = 2: [x0 x0 g0 g0 x1 x1 g1 g1]
    assert particle_groups(2, 2).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert particle_groups(2, 2, by="dof").tolist() == [0, 0, 1, 1, 0, 0, 1, 1]
    assert particle_groups(2, 2, by="particle_dof").tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    with pytest.raises(ValueError, match="by"):
        particle_groups(2, 2, by="cell")
    with pytest.raises(ValueError, match="num_particles"):
        particle_groups(0, 2)


def _per_particle_layout(num_particles, dim):
    """perm with new[:, j] = old[:, perm[j]]: the reference's [all x, all g] -> [N, 2d] rows."""
    m = num_particles * dim
    perm = []
    for i in range(num_particles):
        perm += [i * dim + a for a in range(dim)]
        perm += [m + i * dim + a for a in range(dim)]
    return torch.tensor(perm)


@pytest.mark.parametrize("eps", [0.2, 0.0], ids=["eps>0", "hypoelliptic"])
def test_per_particle_and_per_dof_in_particle_layout(eps):
    """Exact score, AOUPs stored as [N, 2d]: groups give sigma_x, sigma_g and sigma_1 d each."""
    n_part, dim = 8, 2
    system = aoup_harmonic_trap(1.0, 0.5, 0.3, eps, num_particles=n_part, dim=dim)
    perm = _per_particle_layout(n_part, dim)
    A = system.A[perm][:, perm]
    S = linear_score(system.A, system.D)[perm][:, perm]
    diffusion = system.diffusion[perm]
    x = stationary_sample_linear(system.A, system.D, 50_000, torch.Generator().manual_seed(0))
    x = x[:, perm]
    assert x.view(-1, n_part, 2 * dim).shape == (50_000, n_part, 2 * dim)

    def drift(y):
        return y @ A.T

    def score(y):
        return y @ S.T

    by_dof = entropy_production(
        x, drift, score, diffusion, groups=particle_groups(n_part, dim, by="dof")
    )
    by_particle = entropy_production(
        x, drift, score, diffusion, groups=particle_groups(n_part, dim)
    )
    both = entropy_production(
        x, drift, score, diffusion, groups=particle_groups(n_part, dim, by="particle_dof")
    )
    for est in (by_dof, by_particle, both):
        assert est.per_group.sum().item() == pytest.approx(est.total, rel=1e-12)
    expected_dof = torch.tensor([system.parts["sigma_x"], system.parts["sigma_g"]])
    err = (by_dof.per_group - expected_dof.double()).abs()
    assert (err <= 4 * by_dof.per_group_stderr + 1e-12).all(), (by_dof.per_group, expected_dof)
    per_particle = system.parts["sigma_1"] * dim
    err = (by_particle.per_group - per_particle).abs()
    assert (err <= 4 * by_particle.per_group_stderr).all()
    torch.testing.assert_close(both.per_group[0::2].sum(), by_dof.per_group[0])
    # The closed form per coordinate, permuted into this layout, agrees as well.
    _, closed = linear_entropy_production(A, torch.diag(diffusion))
    torch.testing.assert_close(closed, linear_entropy_production(system.A, system.D)[1][perm])


def test_local_sums_to_particles_and_total():
    system = aoup_harmonic_trap(1.0, 0.5, 0.3, 0.2, num_particles=3, dim=2)
    S = linear_score(system.A, system.D)
    x = stationary_sample_linear(system.A, system.D, 1000, torch.Generator().manual_seed(1))

    def drift(y):
        return y @ system.A.T

    def score(y):
        return y @ S.T

    local = local_entropy_production(x, drift, score, system.diffusion)
    assert (local >= 0).all()
    per_particle = group_sum(local, system.groups["particle"])
    assert per_particle.shape == (1000, 3)
    est = entropy_production(x, drift, score, system.diffusion, groups=system.groups["particle"])
    torch.testing.assert_close(per_particle.mean(0), est.per_group)
    torch.testing.assert_close(per_particle.sum(1).mean().item(), est.total)
    div_local = local_entropy_production(x, drift, score, system.diffusion, form="divergence")
    assert (div_local < 0).any()  # the divergence form is not pointwise non-negative
    with pytest.raises(ValueError, match="groups"):
        group_sum(local, torch.tensor([0, 1]))


def _brute_force(values, pos, box, bins, origin):
    S, N, d = pos.shape
    sums = torch.zeros(bins, dtype=torch.float64)
    counts = torch.zeros(bins, dtype=torch.long)
    for s, i in itertools.product(range(S), range(N)):
        idx = []
        for a in range(d):
            u = (pos[s, i, a].item() - origin) % box
            idx.append(min(int(u / (box / bins[a])), bins[a] - 1))
        sums[tuple(idx)] += values[s, i].item()
        counts[tuple(idx)] += 1
    return sums, counts


def test_spatial_decomposition_matches_brute_force_with_periodic_wrapping():
    gen = torch.Generator().manual_seed(3)
    S, N, w = 7, 40, 3.0
    pos = (torch.rand(S, N, 2, generator=gen, dtype=torch.float64) * 4 - 2) * w  # beyond the box
    values = torch.rand(S, N, generator=gen, dtype=torch.float64)
    bins = (4, 5)
    mean, per_area, counts = spatial_decomposition(values, pos, 2 * w, bins)
    sums, expected_counts = _brute_force(values, pos, 2 * w, bins, -w)
    assert torch.equal(counts, expected_counts)
    assert counts.sum().item() == S * N
    occupied = counts > 0
    torch.testing.assert_close(mean[occupied], sums[occupied] / counts[occupied])
    assert torch.isnan(mean[~occupied]).all()
    cell_area = (2 * w / bins[0]) * (2 * w / bins[1])
    torch.testing.assert_close(per_area, sums / (S * cell_area))
    # Integrating the density over the box gives the mean total per snapshot.
    torch.testing.assert_close((per_area * cell_area).sum(), values.sum(1).mean())
    # A shift by whole box lengths changes nothing (periodicity).
    shifted = spatial_decomposition(values, pos + torch.tensor([2 * w, -4 * w]), 2 * w, bins)
    assert torch.equal(shifted[2], counts)


def test_spatial_decomposition_origin_and_bad_input():
    pos = torch.tensor([[[0.1], [0.6], [0.99], [1.2]]], dtype=torch.float64)
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    mean, per_area, counts = spatial_decomposition(values, pos, 1.0, 2, origin=0.0)
    assert counts.tolist() == [2, 2]  # 1.2 wraps to 0.2
    torch.testing.assert_close(mean, torch.tensor([2.5, 2.5], dtype=torch.float64))
    torch.testing.assert_close(per_area, torch.tensor([10.0, 10.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="pos"):
        spatial_decomposition(values, pos[:, :3], 1.0, 2)
    with pytest.raises(ValueError, match="box"):
        spatial_decomposition(values, pos, -1.0, 2)
    with pytest.raises(ValueError, match="bins"):
        spatial_decomposition(values, pos, 1.0, (2, 2))
    with pytest.raises(ValueError, match="pos is on cpu"):  # values and pos on two devices
        spatial_decomposition(values.to("meta"), pos, 1.0, 2)


def test_hypoelliptic_score_free_identity_with_coupled_forces():
    """sigma = -E[div_x F] = tr K for F = -K x (K couples particles), against the Lyapunov route."""
    m, gamma, v0 = 4, 0.7, 0.8
    K = torch.tensor(
        [[2.0, 0.5, 0.0, 0.2], [0.5, 1.5, 0.3, 0.0], [0.0, 0.3, 1.0, 0.4], [0.2, 0.0, 0.4, 1.2]],
        dtype=torch.float64,
    )
    eye = torch.eye(m, dtype=torch.float64)
    A = torch.cat(
        [
            torch.cat([-K, v0 * eye], 1),
            torch.cat([torch.zeros(m, m, dtype=torch.float64), -gamma * eye], 1),
        ]
    )
    D = torch.diag(torch.cat([torch.zeros(m), torch.full((m,), gamma)]).double())
    lyapunov, _ = linear_entropy_production(A, D)
    x = stationary_sample_linear(A, D, 100, torch.Generator().manual_seed(0))

    def force_divergence(y):
        return torch.full((y.shape[0],), -torch.trace(K).item(), dtype=y.dtype)

    sigma, stderr = score_free_entropy_production_hypoelliptic(force_divergence, x)
    assert sigma == pytest.approx(lyapunov, rel=1e-9)
    assert sigma == pytest.approx(torch.trace(K).item(), rel=1e-12) and stderr == 0.0
    # With the exact score, the score-based estimator agrees within its standard error.
    S = linear_score(A, D)
    x = stationary_sample_linear(A, D, 50_000, torch.Generator().manual_seed(1))
    est = entropy_production(x, lambda y: y @ A.T, lambda y: y @ S.T, torch.diagonal(D))
    assert abs(est.total - sigma) <= 4 * est.stderr


def test_hypoelliptic_score_free_values_and_errors():
    values = torch.tensor([-1.0, -3.0, -2.0, -2.0], dtype=torch.float64)
    sigma, stderr = score_free_entropy_production_hypoelliptic(values)
    assert sigma == 2.0
    assert stderr == pytest.approx(math.sqrt(2.0 / 3.0) / 2.0)
    with pytest.raises(ValueError, match="x"):
        score_free_entropy_production_hypoelliptic(lambda y: y.sum(1))
    with pytest.raises(ValueError, match="force_divergence"):
        score_free_entropy_production_hypoelliptic(torch.ones(3, 2))
    with pytest.raises(ValueError, match="force_divergence"):
        score_free_entropy_production_hypoelliptic(torch.tensor([1.0, float("nan")]))
