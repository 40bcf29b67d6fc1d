"""Closed forms for linear systems: special cases vs the general Lyapunov route, and bad inputs."""

import numpy as np
import pytest
import torch

from gtlib.entropy.reference import (
    aoup_harmonic_trap,
    bead_chain,
    brownian_gyrator,
    linear_entropy_production,
    linear_score,
    linear_stationary_covariance,
    linear_velocity_matrix,
    rotating_particle,
    stationary_sample_linear,
)


def _random_stable(rng: np.random.Generator, d: int) -> np.ndarray:
    M = rng.normal(size=(d, d))
    shift = np.linalg.eigvals(M).real.max() + 0.5
    return M - shift * np.eye(d)


def _omega_route(A, D) -> float:
    """EPR by the velocity route alone: tr(Omega^T D^+ Omega C), no trace identity used."""
    A = np.asarray(A, dtype=np.float64)
    D = np.asarray(D, dtype=np.float64)
    C = linear_stationary_covariance(A, D).numpy()
    omega = linear_velocity_matrix(A, D).numpy()
    return float(np.trace(omega.T @ np.linalg.pinv(D) @ omega @ C))


def test_lyapunov_residual_and_symmetry():
    rng = np.random.default_rng(0)
    A = _random_stable(rng, 4)
    D = np.diag(rng.uniform(0.2, 2.0, size=4))
    C = linear_stationary_covariance(A, D).numpy()
    assert C.dtype == np.float64
    np.testing.assert_allclose(A @ C + C @ A.T + 2 * D, 0.0, atol=1e-10)
    np.testing.assert_allclose(C, C.T, atol=1e-12)
    assert np.linalg.eigvalsh(C).min() > 0
    # A vector D means its diagonal.
    np.testing.assert_allclose(linear_stationary_covariance(A, np.diag(D)).numpy(), C)
    np.testing.assert_allclose(linear_score(A, D).numpy(), -np.linalg.inv(C), rtol=1e-10)


@pytest.mark.parametrize("singular", [False, True])
def test_velocity_is_divergence_free_and_orthogonal_to_score(singular):
    rng = np.random.default_rng(1)
    A = _random_stable(rng, 5)
    diag = rng.uniform(0.3, 1.5, size=5)
    if singular:
        diag[[1, 3]] = 0.0
    omega = linear_velocity_matrix(A, np.diag(diag)).numpy()
    S = linear_score(A, np.diag(diag)).numpy()
    assert abs(np.trace(omega)) < 1e-10  # E[div v] = div v = tr(Omega) = 0
    # v . s = x^T Omega^T S x = 0 for every x  <=>  sym(Omega^T S) = 0
    sym = omega.T @ S + S.T @ omega
    np.testing.assert_allclose(sym, 0.0, atol=1e-9)


@pytest.mark.parametrize("seed", [2, 3, 4])
@pytest.mark.parametrize("num_noiseless", [0, 1, 2])
def test_trace_formula_matches_velocity_route(seed, num_noiseless):
    rng = np.random.default_rng(seed)
    d = 4
    A = _random_stable(rng, d)
    diag = rng.uniform(0.2, 2.0, size=d)
    diag[:num_noiseless] = 0.0
    total, per_coordinate = linear_entropy_production(A, np.diag(diag))
    assert total >= 0
    assert abs(total - _omega_route(A, np.diag(diag))) < 1e-9 * max(1.0, total)
    assert abs(float(per_coordinate.sum()) - total) < 1e-9 * max(1.0, total)
    assert torch.all(per_coordinate[:num_noiseless] == 0)
    assert torch.all(per_coordinate >= -1e-12)


def test_non_diagonal_d_total_only():
    rng = np.random.default_rng(5)
    A = _random_stable(rng, 3)
    B = rng.normal(size=(3, 2))
    D = B @ B.T  # rank 2, not diagonal
    total, per_coordinate = linear_entropy_production(A, D)
    assert per_coordinate is None
    assert abs(total - _omega_route(A, D)) < 1e-9 * max(1.0, total)


def test_equilibrium_has_zero_epr():
    # Gradient drift with isotropic noise: detailed balance.
    rng = np.random.default_rng(6)
    M = rng.normal(size=(3, 3))
    K = M @ M.T + np.eye(3)
    total, per_coordinate = linear_entropy_production(-K, 0.7 * np.eye(3))
    assert abs(total) < 1e-10
    assert per_coordinate.abs().max() < 1e-10


@pytest.mark.parametrize("k,a,d", [(1.0, 2.0, 0.5), (0.3, -0.7, 2.0)])
def test_rotating_particle(k, a, d):
    system = rotating_particle(k, a, d)
    assert system.sigma == pytest.approx(2 * a * a / k, rel=1e-14)
    total, per_coordinate = linear_entropy_production(system.A, system.D)
    assert total == pytest.approx(system.sigma, rel=1e-10)
    np.testing.assert_allclose(per_coordinate.numpy(), [a * a / k] * 2, rtol=1e-10)
    C = linear_stationary_covariance(system.A, system.D)
    torch.testing.assert_close(C, system.stationary_covariance, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "K,T1,T2",
    [([[2.0, 0.7], [0.7, 1.0]], 1.0, 3.0), ([[1.0, -0.4], [-0.4, 3.0]], 5.0, 0.5)],
)
def test_brownian_gyrator(K, T1, T2):
    system = brownian_gyrator(K, T1, T2)
    k11, k12, k22 = K[0][0], K[0][1], K[1][1]
    expected = k12**2 * (T1 - T2) ** 2 / (T1 * T2 * (k11 + k22))
    assert system.sigma == pytest.approx(expected, rel=1e-14)
    total, per_coordinate = linear_entropy_production(system.A, system.D)
    assert total == pytest.approx(expected, rel=1e-10)
    assert float(per_coordinate.sum()) == pytest.approx(expected, rel=1e-10)
    assert brownian_gyrator(K, 2.0, 2.0).sigma == 0.0


def test_bead_chain_numbers_from_the_reference():
    assert bead_chain(2, 1.0, 1.0, 1.0, 10.0).sigma == pytest.approx(2.025, abs=1e-12)
    assert bead_chain(5, 1.0, 1.0, 1.0, 10.0).sigma == pytest.approx(0.629817, abs=5e-7)
    assert bead_chain(1, 1.0, 1.0, 1.0, 10.0).sigma == 0.0


@pytest.mark.parametrize("num_beads", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("k,e,T1,T2", [(1.0, 1.0, 1.0, 10.0), (2.5, 0.4, 3.0, 0.7)])
def test_bead_chain_matches_lyapunov(num_beads, k, e, T1, T2):
    system = bead_chain(num_beads, k, e, T1, T2)
    assert system.A.shape == (num_beads, num_beads)
    np.testing.assert_allclose(torch.diagonal(system.D).numpy(), np.linspace(T1, T2, num_beads) / e)
    total, per_coordinate = linear_entropy_production(system.A, system.D)
    assert _omega_route(system.A, system.D) == pytest.approx(system.sigma, rel=1e-9, abs=1e-12)
    assert total == pytest.approx(system.sigma, rel=1e-9, abs=1e-12)
    assert float(per_coordinate.sum()) == pytest.approx(system.sigma, rel=1e-9, abs=1e-12)
    assert system.parts["closed_form"] == (1.0 if num_beads in (1, 2, 5) else 0.0)


@pytest.mark.parametrize("eps", [0.0, 0.05, 0.2, 1.0])
@pytest.mark.parametrize("num_particles,dim", [(1, 1), (3, 2)])
def test_aoup_harmonic_trap(eps, num_particles, dim):
    kappa, v0, gamma = 1.3, 0.8, 0.4
    system = aoup_harmonic_trap(kappa, v0, gamma, eps, num_particles, dim)
    m = num_particles * dim
    C = linear_stationary_covariance(system.A, system.D)
    torch.testing.assert_close(C, system.stationary_covariance, rtol=1e-9, atol=1e-12)
    total, per_coordinate = linear_entropy_production(system.A, system.D)
    assert total == pytest.approx(system.sigma, rel=1e-9)
    assert _omega_route(system.A, system.D) == pytest.approx(system.sigma, rel=1e-9)
    dof = system.groups["dof"]
    sigma_x = float(per_coordinate[dof == 0].sum())
    sigma_g = float(per_coordinate[dof == 1].sum())
    assert sigma_g == pytest.approx(system.parts["sigma_g"], rel=1e-9)
    assert sigma_x == pytest.approx(system.parts["sigma_x"], rel=1e-9, abs=1e-12)
    per_particle = torch.zeros(num_particles, dtype=torch.float64).index_add_(
        0, system.groups["particle"], per_coordinate
    )
    np.testing.assert_allclose(per_particle.numpy(), dim * system.parts["sigma_1"], rtol=1e-9)
    if eps == 0.0:
        # Hypoelliptic: sigma_g = kappa per particle and dimension, all of it on g.
        assert system.sigma == pytest.approx(kappa * m, rel=1e-12)
        assert sigma_g == pytest.approx(kappa * m, rel=1e-9)
        assert torch.all(per_coordinate[dof == 0] == 0)
    else:
        assert system.sigma == pytest.approx(m * gamma * v0**2 / (eps * (gamma + kappa)), rel=1e-12)


def test_aoup_g_part_is_continuous_at_eps_zero():
    parts = [aoup_harmonic_trap(1.0, 0.5, 0.3, eps).parts["sigma_g"] for eps in (1e-8, 0.0)]
    assert parts[0] == pytest.approx(parts[1], rel=1e-6)


def test_stationary_samples_have_the_covariance():
    system = bead_chain(3, 1.0, 1.0, 1.0, 4.0)
    x = stationary_sample_linear(system.A, system.D, 40_000, torch.Generator().manual_seed(0))
    assert x.shape == (40_000, 3) and x.dtype == torch.float64
    C = linear_stationary_covariance(system.A, system.D)
    empirical = x.T @ x / x.shape[0]
    # Entry-wise sampling error of a covariance: sqrt((C_ii C_jj + C_ij^2) / n).
    err = torch.sqrt((torch.outer(C.diagonal(), C.diagonal()) + C**2) / x.shape[0])
    assert torch.all((empirical - C).abs() < 5 * err)
    again = stationary_sample_linear(system.A, system.D, 40_000, torch.Generator().manual_seed(0))
    assert torch.equal(x, again)


@pytest.mark.parametrize(
    "A,D,match",
    [
        ([[0.1, 0.0], [0.0, -1.0]], [1.0, 1.0], "stable"),
        ([[0.0, 1.0], [-1.0, 0.0]], [1.0, 1.0], "stable"),
        ([[-1.0, 0.0], [0.0, -1.0]], [1.0, -0.5], "positive semi-definite"),
        ([[-1.0, 0.0], [0.0, -1.0]], [[1.0, 0.3], [0.0, 1.0]], "symmetric"),
        ([[-1.0, 0.0], [0.0, -1.0]], [1.0, 1.0, 1.0], "shape"),
        ([[-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]], [1.0, 1.0], "square"),
        ([[-1.0, 0.0], [0.0, -1.0]], [1.0, float("nan")], "finite"),
        ([[-1.0, 0.0], [0.0, -1.0]], [1.0, 0.0], "controllable"),
    ],
)
def test_bad_inputs_raise(A, D, match):
    with pytest.raises(ValueError, match=match):
        linear_stationary_covariance(A, D)
    with pytest.raises(ValueError, match=match):
        linear_entropy_production(A, D)


def test_bad_special_case_parameters_raise():
    with pytest.raises(ValueError, match="K"):
        brownian_gyrator([[1.0, 2.0], [2.0, 1.0]], 1.0, 2.0)  # indefinite
    with pytest.raises(ValueError, match="T1"):
        brownian_gyrator([[1.0, 0.0], [0.0, 1.0]], -1.0, 2.0)
    with pytest.raises(ValueError, match="num_beads"):
        bead_chain(0, 1.0, 1.0, 1.0, 2.0)
    with pytest.raises(ValueError, match="v0"):
        aoup_harmonic_trap(1.0, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="kappa"):
        aoup_harmonic_trap(-1.0, 1.0, 1.0, 0.1)
    with pytest.raises(ValueError, match="n"):
        stationary_sample_linear([[-1.0]], [1.0], 0)


# ------------------------------------------------------------------------------------------------
# One class for the linear SDE (formerly LinearSDE in gtlib.datasets and LinearSystem here)
def test_one_linear_sde_class_under_every_name():
    import gtlib.datasets
    import gtlib.datasets.particles
    import gtlib.entropy
    from gtlib.entropy.reference import LinearSDE

    assert gtlib.entropy.LinearSDE is LinearSDE
    assert gtlib.datasets.LinearSDE is LinearSDE
    assert gtlib.datasets.particles.LinearSDE is LinearSDE
    with pytest.warns(FutureWarning, match="LinearSystem is deprecated, use LinearSDE"):
        assert gtlib.entropy.LinearSystem is LinearSDE
    with pytest.warns(FutureWarning, match="LinearSystem is deprecated, use LinearSDE"):
        from gtlib.entropy.reference import LinearSystem
    assert LinearSystem is LinearSDE
    for system in (
        rotating_particle(1.0, 2.0, 0.5),
        brownian_gyrator([[2.0, 0.7], [0.7, 1.0]], 1.0, 3.0),
        bead_chain(3, 1.0, 1.0, 1.0, 2.0),
        aoup_harmonic_trap(1.3, 0.8, 0.4, 0.2),
    ):
        assert isinstance(system, LinearSDE) and isinstance(system, LinearSystem)
    with pytest.raises(AttributeError, match="no attribute"):
        gtlib.entropy.NoSuchName  # noqa: B018


@pytest.mark.parametrize("k,a,d", [(1.0, 2.0, 0.5), (0.3, -0.7, 2.0)])
def test_linear_sde_from_matrices_has_the_rotating_particle_closed_forms(k, a, d):
    from gtlib.entropy import LinearSDE

    A = [[-k, -a], [a, -k]]
    sde = LinearSDE(A, [d, d])  # no closed form given: Lyapunov and trace routes
    assert sde.num_coordinates == 2
    assert sde.sigma == pytest.approx(2 * a * a / k, rel=1e-10)
    eye = torch.eye(2, dtype=torch.float64)
    torch.testing.assert_close(sde.stationary_covariance, (d / k) * eye, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sde.score_matrix, -(k / d) * eye, rtol=1e-10, atol=1e-12)
    omega = torch.tensor([[0.0, -a], [a, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(sde.velocity_matrix, omega, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(sde.score_matrix, linear_score(A, [d, d]))
    torch.testing.assert_close(sde.velocity_matrix, linear_velocity_matrix(A, [d, d]))
    # Exact transition: e^{At} = e^{-kt} R(at), Q = (d/k)(1 - e^{-2kt}) I.
    t = 0.37
    c, s = np.cos(a * t), np.sin(a * t)
    E, Q = sde.transition(t)
    expected_E = np.exp(-k * t) * torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    torch.testing.assert_close(E, expected_E, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(Q, (d / k) * (1 - np.exp(-2 * k * t)) * eye, rtol=1e-10, atol=1e-13)
    # The same numbers as the constructor's system, which carries the closed forms.
    closed = rotating_particle(k, a, d)
    assert sde.sigma == pytest.approx(closed.sigma, rel=1e-10)
    torch.testing.assert_close(closed.transition(t)[0], E)
    x = torch.randn(5, 2, dtype=torch.float64)
    torch.testing.assert_close(closed.drift(x), x @ torch.tensor(A, dtype=torch.float64).T)


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_linear_sde_lyapunov_route_matches_the_aoup_closed_forms(eps):
    from gtlib.entropy import LinearSDE

    closed = aoup_harmonic_trap(1.3, 0.8, 0.4, eps, num_particles=2, dim=2)
    plain = LinearSDE(closed.A, closed.D)
    assert plain.sigma == pytest.approx(closed.sigma, rel=1e-9)
    torch.testing.assert_close(
        plain.stationary_covariance, closed.stationary_covariance, rtol=1e-9, atol=1e-12
    )
    assert plain.parts == {} and plain.groups == {}
    assert closed.parts["sigma_g"] > 0 and set(closed.groups) == {"particle", "dof"}
    torch.testing.assert_close(plain.diffusion, torch.diagonal(closed.D))
    # Exact stationary samples: the numbers of stationary_sample_linear.
    x = closed.sample_stationary(1000, torch.Generator().manual_seed(3))
    y = stationary_sample_linear(closed.A, closed.D, 1000, torch.Generator().manual_seed(3))
    assert torch.equal(x, y)
    # The exact step keeps the input's dtype (its law: tests/datasets/test_particles.py).
    z = closed.step_exact(x.float(), 0.1, torch.Generator().manual_seed(4))
    assert z.dtype == torch.float32 and z.shape == x.shape


def test_linear_sde_deprecated_attributes_warn():
    system = rotating_particle(1.0, 2.0, 0.5)
    with pytest.warns(FutureWarning, match="use LinearSDE.stationary_covariance"):
        C = system.covariance
    torch.testing.assert_close(C, system.stationary_covariance)
    with pytest.warns(FutureWarning, match="use LinearSDE.num_coordinates"):
        assert system.dim == 2


def test_linear_sde_bad_inputs_raise():
    from gtlib.entropy import LinearSDE

    A, D = [[-1.0, 0.0], [0.0, -2.0]], [1.0, 1.0]
    with pytest.raises(ValueError, match="covariance.*does not solve"):
        LinearSDE(A, D, covariance=torch.eye(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"covariance.*shape"):
        LinearSDE(A, D, covariance=torch.eye(3))
    with pytest.raises(ValueError, match="sigma"):
        LinearSDE(A, D, sigma=float("nan"))
    with pytest.raises(TypeError, match="sigma"):
        LinearSDE(A, D, sigma="1.0")
    with pytest.raises(ValueError, match=r"groups\['particle'\]"):
        LinearSDE(A, D, groups={"particle": torch.arange(3)})
    with pytest.raises(TypeError, match=r"groups\['particle'\]"):
        LinearSDE(A, D, groups={"particle": torch.zeros(2)})
    with pytest.raises(TypeError, match="parts"):
        LinearSDE(A, D, parts=[1.0])
    with pytest.raises(TypeError, match="`A`"):
        LinearSDE("not a matrix", D)
    with pytest.raises(ValueError, match="controllable"):
        LinearSDE(A, [1.0, 0.0])
    sde = LinearSDE(A, D)
    with pytest.raises(ValueError, match="x"):
        sde.drift(torch.zeros(3, 3))
    with pytest.raises(TypeError, match="x"):
        sde.drift(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="x"):
        sde.step_exact(torch.full((3, 2), float("nan")), 0.1)
    with pytest.raises(ValueError, match="dt"):
        sde.transition(0.0)
    with pytest.raises(ValueError, match="n"):
        sde.sample_stationary(0)
    with pytest.raises(TypeError, match="n"):
        sde.sample_stationary(2.5)
