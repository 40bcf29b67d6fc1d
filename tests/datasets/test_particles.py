"""Particle systems, the simulator and the HDF5 dataset.

References: brute-force O(N^2) minimum-image force sums in numpy, autograd divergences, the
closed-form stationary covariance of the AOUP in a harmonic trap (gtlib.entropy.reference) and the
exact stationary covariance of the discretised scheme (scipy's discrete Lyapunov solver), the
orientation autocorrelation and mean-squared displacement of free active Brownian particles, the
exact OU transition by quadrature, and the written arrays themselves.
"""

from __future__ import annotations

import math
import os
import pickle

import h5py
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import torch

import gtlib.datasets.particles as particles
from gtlib.datasets.particles import (
    ActiveBrownianParticles,
    ActiveOUParticles,
    LinearSDE,
    ParticleDataset,
    blob_state,
    from_state,
    load_trajectory,
    simulate,
    softplus_force_cutoff,
    to_state,
)
from gtlib.entropy.reference import aoup_harmonic_trap


def brute_force(pos: np.ndarray, L: float | None, beta: float, r0: float, cutoff: float | None):
    """All-pairs minimum-image forces and divergence sum, float64 numpy."""
    n, d = pos.shape
    forces = np.zeros_like(pos)
    divergence = 0.0
    for i in range(n):
        for j in range(n):
            if i == j:
                continue
            delta = pos[i] - pos[j]
            if L is not None:
                delta = delta - L * np.rint(delta / L)
            r = np.sqrt((delta**2).sum())
            if cutoff is not None and r > cutoff:
                continue
            f = np.logaddexp(0.0, beta * (2 * r0 - r)) / beta
            forces[i] += f * delta / r
            df = -1.0 / (1.0 + np.exp(-beta * (2 * r0 - r)))
            divergence += df + (d - 1) * f / r
    return forces, divergence


# ------------------------------------------------------------------------------------------------
# Forces
def test_minimum_image_is_the_library_convention():
    from gtlib.attention.neighbors import minimum_image

    system = ActiveOUParticles(20, packing_fraction=0.3)
    L = system.box_length
    delta = (torch.rand(50, 2, dtype=torch.float64) - 0.5) * 3 * L
    torch.testing.assert_close(system.minimum_image(delta), minimum_image(delta, L))
    assert bool((system.minimum_image(delta).abs() <= L / 2).all())
    assert torch.equal(minimum_image(delta, None), delta)


@pytest.mark.parametrize("phi", [0.1, 0.45, 0.75])
def test_forces_match_brute_force_minimum_image(phi):
    gen = torch.Generator().manual_seed(1)
    system = ActiveOUParticles(60, packing_fraction=phi, beta=7.5, r0=1.0)
    L = system.box_length
    assert L == pytest.approx(math.sqrt(60 * math.pi / phi))
    pos = (torch.rand(60, 2, generator=gen, dtype=torch.float64) - 0.5) * L
    # Pairs across the boundary, in x, in y and through the corner.
    w = L / 2
    pos[0] = torch.tensor([-w + 0.3, 0.0])
    pos[1] = torch.tensor([w - 0.6, 0.4])
    pos[2] = torch.tensor([0.5, w - 0.2])
    pos[3] = torch.tensor([0.9, -w + 0.7])
    pos[4] = torch.tensor([w - 0.1, w - 0.3])
    pos[5] = torch.tensor([-w + 0.2, -w + 0.9])
    reference, _ = brute_force(pos.numpy(), L, 7.5, 1.0, system.cutoff)
    forces = system.interaction_forces(pos)
    torch.testing.assert_close(forces, torch.from_numpy(reference), rtol=1e-12, atol=1e-12)
    assert forces[:6].abs().max() > 0.1  # the boundary pairs interact
    # Truncation at the cutoff changes nothing beyond the documented 1e-8 per pair.
    untruncated, _ = brute_force(pos.numpy(), L, 7.5, 1.0, None)
    assert np.abs(forces.numpy() - untruncated).max() < 1e-6
    # Positions shifted by whole box lengths give the same forces.
    shifted = pos + L * torch.randint(-2, 3, pos.shape, generator=gen).double()
    torch.testing.assert_close(system.interaction_forces(shifted), forces, rtol=1e-9, atol=1e-9)


def test_forces_batched_3d_and_free_space():
    gen = torch.Generator().manual_seed(2)
    system = ActiveOUParticles(40, packing_fraction=0.3, dim=3, beta=5.0, r0=0.8, cutoff=3.0)
    L = system.box_length
    assert system.packing_fraction == pytest.approx(0.3)
    pos = (torch.rand(3, 40, 3, generator=gen, dtype=torch.float64) - 0.5) * L
    forces = system.interaction_forces(pos)
    assert forces.shape == (3, 40, 3)
    for b in range(3):
        reference, _ = brute_force(pos[b].numpy(), L, 5.0, 0.8, 3.0)
        torch.testing.assert_close(forces[b], torch.from_numpy(reference), rtol=1e-12, atol=1e-12)
    free = ActiveOUParticles(30, trap=0.5)
    assert free.box is None and free.packing_fraction is None
    pos = torch.randn(30, 2, generator=gen, dtype=torch.float64) * 4
    reference, _ = brute_force(pos.numpy(), None, 7.5, 1.0, free.cutoff)
    torch.testing.assert_close(
        free.interaction_forces(pos), torch.from_numpy(reference), rtol=1e-12, atol=1e-12
    )


def test_cutoff_bounds_force():
    rc = softplus_force_cutoff(7.5, 1.0)
    assert rc == pytest.approx(2 + math.log(1 / (7.5e-8)) / 7.5)
    f = np.logaddexp(0.0, 7.5 * (2 - rc)) / 7.5
    assert 0.9e-8 < f <= 1e-8


def test_force_divergence_matches_autograd():
    gen = torch.Generator().manual_seed(3)
    system = ActiveOUParticles(20, packing_fraction=0.5, k=2.0, trap=0.3, v0=0.7)
    L = system.box_length
    pos = (torch.rand(2, 20, 2, generator=gen, dtype=torch.float64) - 0.5) * L
    pos[:, 0] = torch.tensor([-L / 2 + 0.2, 0.0])
    pos[:, 1] = torch.tensor([L / 2 - 0.9, 0.3])
    g = torch.randn(2, 20, 2, generator=gen, dtype=torch.float64)
    analytic = system.force_divergence(pos)
    assert analytic.shape == (2,)
    for b in range(2):

        def b_x(flat, b=b):
            return system.drift(flat.reshape(20, 2), g[b])[0].reshape(-1)

        jac = torch.autograd.functional.jacobian(b_x, pos[b].reshape(-1))
        torch.testing.assert_close(analytic[b], torch.diagonal(jac).sum(), rtol=1e-10, atol=1e-10)
        _, reference = brute_force(pos[b].numpy(), L, 7.5, 1.0, system.cutoff)
        expected = 2.0 * reference - 0.3 * 20 * 2
        assert float(analytic[b]) == pytest.approx(expected, rel=1e-10, abs=1e-10)


def test_force_jacobian_matches_autograd_blocks():
    gen = torch.Generator().manual_seed(4)
    system = ActiveOUParticles(16, packing_fraction=0.55, k=1.5, trap=0.2, v0=0.7)
    L = system.box_length
    pos = (torch.rand(2, 16, 2, generator=gen, dtype=torch.float64) - 0.5) * L
    pos[:, 0] = torch.tensor([-L / 2 + 0.2, 0.0])  # a pair across the periodic boundary
    pos[:, 1] = torch.tensor([L / 2 - 0.9, 0.3])
    jacobian = system.force_jacobian(pos)
    assert jacobian.shape == (2, 16, 2, 2)
    for b in range(2):

        def passive(flat):
            at = flat.reshape(16, 2)
            return system.drift(at, torch.zeros_like(at))[0].reshape(-1)

        full = torch.autograd.functional.jacobian(passive, pos[b].reshape(-1))
        blocks = full.reshape(16, 2, 16, 2).diagonal(dim1=0, dim2=2).permute(2, 0, 1)
        torch.testing.assert_close(jacobian[b], blocks, rtol=1e-10, atol=1e-12)
    traces = jacobian.diagonal(dim1=-2, dim2=-1).sum((-1, -2))
    torch.testing.assert_close(traces, system.force_divergence(pos), rtol=1e-12, atol=1e-12)
    assert float(jacobian.abs().amax(dim=(-1, -2)).min()) > 0  # every particle has the trap


def test_drift_diffusion_and_state_layout():
    system = ActiveOUParticles(5, trap=2.0, k=0.0, v0=0.5, gamma=3.0, eps=0.25, dim=2)
    pos = torch.randn(5, 2, dtype=torch.float64)
    g = torch.randn(5, 2, dtype=torch.float64)
    b_x, b_g = system.drift(pos, g)
    torch.testing.assert_close(b_x, 0.5 * g - 2.0 * pos)
    torch.testing.assert_close(b_g, -3.0 * g)
    assert system.diffusion.tolist() == [0.25, 0.25, 3.0, 3.0]
    assert system.flat_diffusion.shape == (20,)
    state = to_state(pos, g)
    assert state.shape == (5, 4)
    assert torch.equal(state[2], torch.cat([pos[2], g[2]]))
    p2, g2 = from_state(state)
    assert torch.equal(p2, pos) and torch.equal(g2, g)
    # The flat state and flat_diffusion agree with the closed-form linear system's D.
    reference = aoup_harmonic_trap(2.0, 0.5, 3.0, 0.25, num_particles=1, dim=2)
    assert sorted(system.diffusion.tolist()) == sorted(reference.diffusion.tolist())
    assert "ActiveOUParticles" in repr(system) and "trap=2" in repr(system)
    # Hypoelliptic identity sigma = -E[sum_i div_{x_i} F_i]: without interactions the divergence
    # is the constant -A N d, which is the closed-form EPR of the trapped AOUP at eps = 0.
    hypo = ActiveOUParticles(5, trap=2.0, k=0.0, v0=0.5, gamma=3.0, eps=0.0, dim=2)
    sigma = aoup_harmonic_trap(2.0, 0.5, 3.0, 0.0, num_particles=5, dim=2).sigma
    torch.testing.assert_close(hypo.force_divergence(pos[None]), torch.tensor([-sigma]).double())


# ------------------------------------------------------------------------------------------------
# Integrator against closed forms
def test_aoup_trap_stationary_covariance():
    kappa, gamma, v0, eps, dt = 1.0, 2.0, 1.5, 0.3, 5e-3
    n = 3000
    system = ActiveOUParticles(n, trap=kappa, k=0.0, v0=v0, gamma=gamma, eps=eps)
    gen = torch.Generator().manual_seed(0)
    initial = (torch.zeros(n, 2, dtype=torch.float64), torch.randn(n, 2, generator=gen).double())
    run = simulate(system, 8, dt, burn_in=4.0, spacing=1.5, initial=initial, seed=5, progress=False)
    x = run["pos"].reshape(-1).numpy()
    g = run["g"].reshape(-1).numpy()
    empirical = np.array([np.mean(x * x), np.mean(x * g), np.mean(g * g)])
    closed = aoup_harmonic_trap(kappa, v0, gamma, eps).stationary_covariance.numpy()
    closed = np.array([closed[0, 0], closed[0, 1], closed[1, 1]])
    # Exact stationary covariance of the discrete scheme (EM in x, exact OU in g): its distance
    # to the closed form is the time-step bias, O(kappa dt) ~ 0.5% here. The burn-in (x starts at
    # 0, g stationary) leaves a relative error of order e^{-2 kappa t} ~ 3e-4.
    a = math.exp(-gamma * dt)
    M = np.array([[1 - kappa * dt, v0 * dt], [0.0, a]])
    discrete = scipy.linalg.solve_discrete_lyapunov(M, np.diag([2 * eps * dt, 1 - a * a]))
    discrete = np.array([discrete[0, 0], discrete[0, 1], discrete[1, 1]])
    assert np.all(np.abs(discrete - closed) < 0.01 * np.abs(closed)), (discrete, closed)
    # Sampling error of second moments of Gaussians from m = 48000 values: var(x^2) = 2 C_xx^2,
    # var(x g) = C_xx C_gg + C_xg^2. Snapshots are 1.5 relaxation times apart (correlation
    # <= e^-1.5 = 0.22), which inflates the error by < 10%; allow 5 standard errors plus the
    # exactly known time-step bias.
    m = x.size
    c_xx, c_xg, c_gg = closed
    se = np.sqrt(np.array([2 * c_xx**2, c_xx * c_gg + c_xg**2, 2 * c_gg**2]) / m) * 1.1
    assert np.all(np.abs(empirical - closed) < 5 * se + np.abs(discrete - closed)), (
        empirical,
        closed,
    )


def test_exact_ou_step_for_g():
    system = ActiveOUParticles(20000, trap=1.0, k=0.0, gamma=1.5)
    pos = torch.zeros(20000, 2, dtype=torch.float64)
    # From g = 5 everywhere, one huge step lands exactly in the stationary law N(0, 1).
    gen = torch.Generator().manual_seed(0)
    _, g = system.step(pos, torch.full((20000, 2), 5.0, dtype=torch.float64), 100.0, gen)
    values = g.reshape(-1)
    assert abs(float(values.mean())) < 5 * math.sqrt(1 / values.numel())
    assert abs(float(values.var()) - 1) < 5 * math.sqrt(2 / values.numel())
    # The update is exactly e^{-gamma dt} g + sqrt(1 - e^{-2 gamma dt}) zeta (eps = 0: only zeta
    # is drawn), so N(0, 1) is preserved for any dt.
    g0 = torch.randn(20000, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dt = 0.37
    _, g1 = system.step(pos, g0, dt, torch.Generator().manual_seed(2))
    zeta = torch.randn(20000, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    decay = math.exp(-1.5 * dt)
    torch.testing.assert_close(g1, decay * g0 + math.sqrt(1 - decay**2) * zeta)
    assert abs(float(g1.var()) - 1) < 5 * math.sqrt(2 / g1.numel())


def test_linear_sde_exact_step():
    A = np.array([[-1.0, 0.8], [-0.3, -0.5]])
    D = np.array([0.4, 1.1])
    sde = LinearSDE(A, D)
    dt = 0.7
    E = torch.linalg.matrix_exp(torch.tensor(A) * dt)
    # Transition covariance by quadrature: int_0^dt e^{As} 2D e^{A^T s} ds.
    Q = scipy.integrate.quad_vec(
        lambda s: scipy.linalg.expm(A * s) @ np.diag(2 * D) @ scipy.linalg.expm(A.T * s), 0, dt
    )[0]
    E_sde, Q_sde = sde.transition(dt)
    torch.testing.assert_close(E_sde, E, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(Q_sde, torch.tensor(Q), rtol=1e-8, atol=1e-10)
    n = 40000
    x0 = torch.tensor([1.5, -2.0], dtype=torch.float64).expand(n, 2)
    x1 = sde.step_exact(x0, dt, torch.Generator().manual_seed(0))
    mean = x1.mean(0)
    cov = torch.cov(x1.T)
    mean_se = torch.sqrt(torch.diagonal(torch.tensor(Q)) / n)
    assert bool(((mean - E @ x0[0]).abs() < 5 * mean_se).all())
    cov_se = torch.sqrt(2 * torch.tensor(Q).abs().max() ** 2 / n)
    assert bool(((cov - torch.tensor(Q)).abs() < 5 * cov_se).all())
    # Stationary samples stay stationary under the exact step.
    C = sde.stationary_covariance
    torch.testing.assert_close(
        C @ torch.tensor(A).T + torch.tensor(A) @ C, -torch.diag(2 * torch.tensor(D))
    )
    x = sde.sample_stationary(n, torch.Generator().manual_seed(1))
    y = sde.step_exact(x, 0.2, torch.Generator().manual_seed(2))
    assert bool(((torch.cov(y.T) - C).abs() < 5 * math.sqrt(2 / n) * C.abs().max()).all())
    torch.testing.assert_close(sde.drift(x[:3]), x[:3] @ torch.tensor(A).T)
    assert sde.diffusion.tolist() == [0.4, 1.1]


def test_abp_orientation_autocorrelation_and_msd():
    U, Dr, Dt, dt = 1.0, 1.0, 0.1, 2e-3
    n = 6000
    system = ActiveBrownianParticles(
        n, packing_fraction=0.001, v0=U, rotational_diffusion=Dr, k=0.0, eps=Dt
    )
    assert system.aoup_equivalent == {"gamma": Dr, "v0": U / math.sqrt(2)}
    assert system.diffusion.tolist() == [Dt, Dt, Dr]
    run = simulate(system, 5, dt, spacing=0.5, seed=1, progress=False)
    t = run["time"].numpy()
    g = run["g"][:, 0]
    assert torch.allclose(g.norm(dim=-1), torch.ones(()).double())
    correlation = (g * g[0]).sum(-1).mean(-1).numpy()
    # cos of a Gaussian angle increment: variance <= 1/2, so the standard error is <= 0.71/sqrt(n).
    assert np.all(np.abs(correlation - np.exp(-Dr * t)) < 5 * 0.71 / math.sqrt(n))
    delta = system.minimum_image(run["pos"][:, 0] - run["pos"][0, 0])
    msd = (delta**2).sum(-1).mean(-1).numpy()
    expected = 4 * Dt * t + 2 * U**2 / Dr**2 * (Dr * t - 1 + np.exp(-Dr * t))
    # |Delta|^2 has a relative standard deviation of about 1 (exponential-like in 2D): 5 standard
    # errors is 6.5%; the Euler bias (orientation frozen over dt) is O(Dr dt) = 0.2%.
    assert np.allclose(msd[1:], expected[1:], rtol=5 / math.sqrt(n))


# ------------------------------------------------------------------------------------------------
# Simulator: Verlet list, resume, atomic write
def _interacting_system():
    return ActiveOUParticles(64, packing_fraction=0.45, v0=3.0, gamma=1.0, eps=0.1, k=2.0)


def test_verlet_list_equals_search_every_step():
    system = _interacting_system()
    kwargs = dict(spacing=0.05, burn_in=0.1, n_trajectories=2, seed=3, progress=False)
    with_skin = simulate(system, 4, 5e-3, **kwargs)
    every_step = simulate(system, 4, 5e-3, skin=0.0, **kwargs)
    assert torch.equal(with_skin["pos"], every_step["pos"])
    assert torch.equal(with_skin["g"], every_step["g"])
    # And against the public step with a fresh search each time, from the same initial state.
    gen = torch.Generator().manual_seed(9)
    pos, g = with_skin["pos"][0], with_skin["g"][0]
    p, q = pos, g
    for _ in range(10):
        p, q = system.step(p, q, 5e-3, gen)
    run = simulate(
        system, 2, 5e-3, spacing=0.05, initial=(pos, g), n_trajectories=2, seed=0, progress=False
    )
    assert run["pos"].shape == (2, 2, 64, 2)
    assert torch.isfinite(p).all() and float(p.abs().max()) <= system.box_length / 2


class Interrupt(RuntimeError):
    pass


@pytest.mark.parametrize("cls", ["aoup", "abp"])
def test_resume_is_bit_for_bit_and_write_is_atomic(tmp_path, cls, monkeypatch):
    if cls == "aoup":
        system = _interacting_system()
    else:
        system = ActiveBrownianParticles(64, 0.45, v0=3.0, eps=0.1, k=2.0)
    kwargs = dict(
        burn_in=0.2, spacing=0.025, n_trajectories=2, seed=11, checkpoint_every=3, progress=False
    )
    dt = 5e-3  # 40 burn-in steps, 5 steps between snapshots, checkpoints every 15 steps
    reference = simulate(system, 12, dt, out=tmp_path / "ref.h5", **kwargs)
    in_memory = simulate(system, 12, dt, **kwargs)
    assert torch.equal(reference["pos"], in_memory["pos"])

    out = tmp_path / "run.h5"

    def fail(s, state):
        if s == 7:
            raise Interrupt

    with pytest.raises(Interrupt):
        simulate(system, 12, dt, out=out, callback=fail, **kwargs)
    assert not out.exists() and os.path.exists(str(out) + ".partial")
    state = torch.load(str(out) + ".partial.state", weights_only=True)
    assert state["n_done"] == 6 and state["step"] == 40 + 5 * 5  # checkpoint after snapshot 5
    # The snapshot file holds snapshots 0..5 (pos then g, raw bytes), as the reference has them.
    raw = np.fromfile(str(out) + ".partial", dtype=np.float64).reshape(6, 2, 2, 64, 2)
    assert np.array_equal(raw[:, 0], reference["pos"][:6].numpy())
    assert np.array_equal(raw[:, 1], reference["g"][:6].numpy())
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

    # A second interruption inside the burn-in of a fresh run, by failing the integrator.
    out2 = tmp_path / "run2.h5"
    calls = {"n": 0}
    original = type(system)._advance

    def failing_advance(self, *args):
        calls["n"] += 1
        if calls["n"] == 35:
            raise Interrupt
        return original(self, *args)

    monkeypatch.setattr(type(system), "_advance", failing_advance)
    with pytest.raises(Interrupt):
        simulate(system, 12, dt, out=out2, **kwargs)
    monkeypatch.setattr(type(system), "_advance", original)
    assert not out2.exists()

    # The skin and the checkpoint interval change the cost only, so a resume may change them.
    other = {**kwargs, "checkpoint_every": 4, "skin": 1.0}
    for path, settings in ((out, other), (out2, kwargs)):
        resumed = simulate(system, 12, dt, out=path, **settings)
        assert path.exists() and not os.path.exists(str(path) + ".partial")
        assert not os.path.exists(str(path) + ".partial.state")
        for key in ("pos", "g", "time"):
            assert torch.equal(resumed[key], reference[key]), key
        loaded = load_trajectory(path)
        for key in ("pos", "g", "time"):
            assert torch.equal(loaded[key], reference[key]), key
        with h5py.File(path, "r") as handle:
            assert "checkpoint" not in handle and bool(handle.attrs["complete"])
    # A complete file with the same settings is read back; different settings are refused.
    again = simulate(system, 12, dt, out=out, **kwargs)
    assert torch.equal(again["pos"], reference["pos"])
    with pytest.raises(ValueError, match="different run"):
        simulate(system, 12, dt, out=out, **{**kwargs, "seed": 12})


def test_inconsistent_checkpoint_is_refused(tmp_path):
    """A checkpoint whose step, snapshot count or snapshot bytes disagree never resumes."""
    system = ActiveOUParticles(16, packing_fraction=0.3, v0=1.0)
    kwargs = dict(spacing=0.02, n_trajectories=2, seed=5, checkpoint_every=2, progress=False)

    def stop(s, state):
        if s == 4:
            raise Interrupt

    out = tmp_path / "run.h5"
    sidecar, snapshots = tmp_path / "run.h5.partial.state", tmp_path / "run.h5.partial"
    with pytest.raises(Interrupt):
        simulate(system, 8, 1e-2, out=out, callback=stop, **kwargs)
    good_state, good_bytes = sidecar.read_bytes(), snapshots.read_bytes()
    state = torch.load(sidecar, weights_only=True)
    assert state["n_done"] == 4 and len(good_bytes) == 4 * 2 * 2 * 16 * 2 * 8

    def refused(match):
        with pytest.raises(ValueError, match=match):
            simulate(system, 8, 1e-2, out=out, **kwargs)
        sidecar.write_bytes(good_state)
        snapshots.write_bytes(good_bytes)

    def resign(**changes):  # a checkpoint with a valid digest but inconsistent content
        changed = {**state, **changes}
        changed["state_sha256"] = particles._state_digest(changed)
        return changed

    torch.save(resign(n_done=3), sidecar)  # step and count disagree
    refused("run.h5.partial.state.*step 6 and snapshot count 3 disagree")
    torch.save(resign(step=8), sidecar)  # a step past the snapshot it claims
    refused("run.h5.partial.state.*step 8 and snapshot count 4 disagree")
    torch.save({**state, "step": 8}, sidecar)  # content changed behind the digest's back
    refused("run.h5.partial.state.*fails its SHA-256 check")
    snapshots.write_bytes(good_bytes[:-8])  # snapshots lost
    refused("run.h5.partial.state.*holds .* bytes")
    flipped = bytearray(good_bytes)
    flipped[100] ^= 0x10
    snapshots.write_bytes(bytes(flipped))  # a flipped bit in a snapshot
    refused("run.h5.partial.state.*SHA-256")
    sidecar.write_bytes(good_state[: len(good_state) // 2])  # a torn sidecar
    refused("run.h5.partial.state.*unreadable")
    # Extra bytes beyond the checkpoint (a kill during the next append) are ignored: exact resume.
    snapshots.write_bytes(good_bytes + b"\x01" * 1000)
    resumed = simulate(system, 8, 1e-2, out=out, **kwargs)
    reference = simulate(system, 8, 1e-2, **kwargs)
    assert torch.equal(resumed["pos"], reference["pos"]) and torch.equal(
        resumed["g"], reference["g"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.h5"]


def test_hdf5_layout_and_dataset(tmp_path):
    system = ActiveOUParticles(32, packing_fraction=0.3, v0=1.0)
    path = tmp_path / "aoup.h5"
    run = simulate(
        system, 3, 1e-2, spacing=0.05, n_trajectories=2, seed=4, out=path, progress=False
    )
    with h5py.File(path, "r") as handle:
        assert handle["pos"].shape == (3, 2, 32, 2) and handle["time"].shape == (3,)
        assert handle.attrs["system"] == "ActiveOUParticles"
        assert handle.attrs["box_length"] == pytest.approx(system.box_length)
        assert handle.attrs["v0"] == 1.0 and handle.attrs["seed"] == 4
        assert handle.attrs["dt"] == 1e-2
    dataset = ParticleDataset(path)
    assert len(dataset) == 6
    for idx in range(6):
        s, b = divmod(idx, 2)
        data = dataset[idx]
        assert torch.equal(data.pos, run["pos"][s, b]) and torch.equal(data.g, run["g"][s, b])
        assert data.num_nodes == 32
        assert float(data.time) == pytest.approx(float(run["time"][s]))
        torch.testing.assert_close(data.box, system.box)
    # Picklable without an open handle (worker processes open their own).
    dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[5].pos, run["pos"][2, 1])
    from torch_geometric.loader import DataLoader

    batch = next(iter(DataLoader(dataset, batch_size=4)))
    assert batch.pos.shape == (128, 2) and batch.num_graphs == 4
    with_transform = ParticleDataset(path, transform=lambda d: d.update({"pos": d.pos * 0}))
    assert float(with_transform[1].pos.abs().sum()) == 0.0
    free = ActiveOUParticles(8, trap=1.0, eps=0.5)
    free_run = simulate(free, 2, 1e-2, out=tmp_path / "free.h5", progress=False)
    item = ParticleDataset(tmp_path / "free.h5")[1]
    assert "box" not in item and torch.equal(item.pos, free_run["pos"][1, 0])
    assert math.isnan(load_trajectory(tmp_path / "free.h5")["attrs"]["box_length"])


def test_dataset_errors_name_the_file(tmp_path):
    missing = tmp_path / "missing.h5"
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        ParticleDataset(missing)
    corrupt = tmp_path / "corrupt.h5"
    corrupt.write_bytes(b"not an hdf5 file at all")
    with pytest.raises(ValueError, match="corrupt.h5"):
        ParticleDataset(corrupt)
    partial = tmp_path / "partial.h5"
    with h5py.File(partial, "w") as handle:
        handle["pos"] = np.zeros((2, 1, 3, 2))
        handle["time"] = np.zeros(2)
    with pytest.raises(ValueError, match="partial.h5.*'g'"):
        ParticleDataset(partial)
    with h5py.File(partial, "a") as handle:
        handle["g"] = np.zeros((2, 1, 4, 2))
    with pytest.raises(ValueError, match="partial.h5.*shape"):
        ParticleDataset(partial)


# ------------------------------------------------------------------------------------------------
# Bad input
def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="num_particles"):
        ActiveOUParticles(-3, packing_fraction=0.5)
    with pytest.raises(TypeError, match="num_particles"):
        ActiveOUParticles(True, packing_fraction=0.5)
    for phi in (0.0, -0.1, 1.0, 1.5):
        with pytest.raises(ValueError, match="packing_fraction"):
            ActiveOUParticles(64, packing_fraction=phi)
    with pytest.raises(ValueError, match="packing_fraction"):
        ActiveBrownianParticles(64, packing_fraction=1.0)
    with pytest.raises(ValueError, match="at most one"):
        ActiveOUParticles(64, packing_fraction=0.5, box_length=20.0)
    with pytest.raises(ValueError, match="gamma"):
        ActiveOUParticles(64, packing_fraction=0.5, gamma=0.0)
    with pytest.raises(ValueError, match="cutoff"):
        ActiveOUParticles(4, packing_fraction=0.5)  # L = 5 < 2 * 4.19
    system = ActiveOUParticles(16, packing_fraction=0.3)
    pos = torch.zeros(16, 2, dtype=torch.float64)
    bad = pos.clone()
    bad[3, 1] = math.nan
    with pytest.raises(ValueError, match="pos.*NaN"):
        system.interaction_forces(bad)
    with pytest.raises(ValueError, match="g.*NaN"):
        system.drift(pos, bad)
    with pytest.raises(ValueError, match=r"pos.*\[\.\.\., 16, 2\]"):
        system.drift(torch.zeros(15, 2, dtype=torch.float64), torch.zeros(15, 2))
    with pytest.raises(ValueError, match="pos"):
        system.force_divergence(torch.zeros(16, 3, dtype=torch.float64))
    with pytest.raises(ValueError, match="same shape"):
        system.drift(torch.zeros(2, 16, 2), torch.zeros(16, 2))
    with pytest.raises(TypeError, match="pos"):
        system.interaction_forces(np.zeros((16, 2)))
    with pytest.raises(ValueError, match="dt"):
        simulate(system, 2, 0.0, progress=False)
    with pytest.raises(ValueError, match="spacing"):
        simulate(system, 2, 0.1, spacing=0.01, progress=False)
    with pytest.raises(TypeError, match="system"):
        simulate(LinearSDE([[-1.0]], [1.0]), 2, 0.1, progress=False)
    with pytest.raises(ValueError, match="initial"):
        simulate(
            system,
            2,
            0.1,
            initial=(torch.zeros(3, 16, 2), torch.zeros(3, 16, 2)),
            n_trajectories=2,
            progress=False,
        )
    with pytest.raises(ValueError, match="stable"):
        LinearSDE([[1.0, 0.0], [0.0, -1.0]], [1.0, 1.0])
    with pytest.raises(ValueError, match="x"):
        LinearSDE([[-1.0]], [1.0]).step_exact(torch.zeros(4, 2), 0.1)
    with pytest.raises(ValueError, match="state"):
        from_state(torch.zeros(4, 3))


def test_device_cpu_is_the_default_run(tmp_path):
    system = _interacting_system()
    kwargs = dict(spacing=0.02, n_trajectories=2, seed=3, progress=False)
    default = simulate(system, 4, 5e-3, out=tmp_path / "a.h5", **kwargs)
    # a folder that does not exist yet is made for the file
    on_cpu = simulate(system, 4, 5e-3, out=tmp_path / "new" / "b.h5", device="cpu", **kwargs)
    assert torch.equal(default["pos"], on_cpu["pos"]) and torch.equal(default["g"], on_cpu["g"])
    signatures = [
        load_trajectory(path)["attrs"]["run_signature"]
        for path in (tmp_path / "a.h5", tmp_path / "new" / "b.h5")
    ]
    assert signatures[0] == signatures[1] and '"device"' not in signatures[0]


def test_bad_device_is_named():
    system = _interacting_system()
    with pytest.raises(ValueError, match="device"):
        simulate(system, 2, 5e-3, device="nonsense", progress=False)
    with pytest.raises(TypeError, match="device"):
        simulate(system, 2, 5e-3, device=1.5, progress=False)


def test_blob_state_is_a_wrapped_gaussian_and_starts_a_run(tmp_path):
    system = ActiveOUParticles(64, packing_fraction=0.5, v0=0.025, gamma=1e-4)
    L = system.box_length
    pos, g = blob_state(system, seed=11)
    generator = torch.Generator().manual_seed(11)  # the draws by hand
    raw = 0.25 * L * torch.randn(64, 2, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(g, torch.randn(64, 2, generator=generator, dtype=torch.float64))
    torch.testing.assert_close(pos, torch.remainder(raw + L / 2, L) - L / 2)
    assert bool((pos >= -L / 2).all() and (pos < L / 2).all())
    batch_pos, batch_g = blob_state(system, seed=11, n_trajectories=3, std=0.1)
    assert batch_pos.shape == batch_g.shape == (3, 64, 2)
    torch.testing.assert_close(batch_g[0], g)  # trajectory after trajectory, one generator
    assert not torch.equal(batch_pos[1], batch_pos[2])
    assert float(batch_pos.abs().max()) < L / 2  # std 0.1 L: a tight blob
    run = simulate(system, 2, 0.1, spacing=0.2, n_trajectories=3, initial=(batch_pos, batch_g),
                   seed=1, progress=False, out=tmp_path / "blob.h5")  # fmt: skip
    assert run["pos"].shape == (2, 3, 64, 2)
    with pytest.raises(ValueError, match="periodic box"):
        blob_state(ActiveOUParticles(8, v0=1.0, gamma=1.0), seed=0)
    with pytest.raises(ValueError, match="std"):
        blob_state(system, std=0.0)
    with pytest.raises(ValueError, match="n_trajectories"):
        blob_state(system, n_trajectories=0)
