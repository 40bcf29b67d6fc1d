"""Numerical checks of the PDE generators: manufactured and closed-form solutions, convergence
orders, random-field statistics, and the written layouts read back by the_well and h5py."""

from __future__ import annotations

import math
import runpy
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from gtlib.datasets.generate import _pde_writers as writers
from gtlib.datasets.generate import cli, pde

WellDataset = pytest.importorskip("the_well.data").WellDataset
ZScoreNormalization = pytest.importorskip("the_well.data.normalization").ZScoreNormalization

PI = math.pi


@pytest.fixture(autouse=True)
def _one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------- Darcy solver


def _nodes(r: int) -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(0.0, 1.0, r)
    return np.meshgrid(x, x, indexing="ij")


def _orders(errors: list[float]) -> np.ndarray:
    return np.log2(np.array(errors[:-1]) / np.array(errors[1:]))


def test_solve_darcy_constant_coefficient_second_order():
    errors = []
    for r in (17, 33, 65):
        x, y = _nodes(r)
        exact = np.sin(PI * x) * np.sin(PI * y) * np.exp(x)
        # -Lap u for u = sin(pi x) sin(pi y) e^x
        lap = (
            np.sin(PI * y)
            * np.exp(x)
            * ((1 - PI**2) * np.sin(PI * x) + 2 * PI * np.cos(PI * x) - PI**2 * np.sin(PI * x))
        )
        u = pde.solve_darcy(np.ones((r, r)), -lap)
        errors.append(np.abs(u - exact).max())
    orders = _orders(errors)
    assert np.all(np.abs(orders - 2) < 0.1), orders
    assert errors[-1] < 1e-3


def test_solve_darcy_variable_coefficient_second_order():
    errors = []
    for r in (17, 33, 65):
        x, y = _nodes(r)
        a = 1 + x**2 + 0.5 * np.sin(PI * y)
        ax, ay = 2 * x, 0.5 * PI * np.cos(PI * y)
        u = np.sin(PI * x) * np.sin(2 * PI * y)
        ux = PI * np.cos(PI * x) * np.sin(2 * PI * y)
        uy = 2 * PI * np.sin(PI * x) * np.cos(2 * PI * y)
        lap = -5 * PI**2 * u
        f = -(ax * ux + ay * uy + a * lap)
        errors.append(np.abs(pde.solve_darcy(a, f) - u).max())
    orders = _orders(errors)
    assert np.all(np.abs(orders - 2) < 0.15), orders


def test_solve_darcy_batch_matches_single_and_boundary_is_zero():
    rng = np.random.default_rng(3)
    a = rng.uniform(1, 5, size=(2, 9, 9))
    u = pde.solve_darcy(a)
    for b in range(2):
        np.testing.assert_allclose(u[b], pde.solve_darcy(a[b]), rtol=0, atol=1e-15)
    assert np.all(u[:, [0, -1], :] == 0) and np.all(u[:, :, [0, -1]] == 0)
    # the discrete operator applied to u returns f = 1 at interior nodes (5-point stencil)
    h2 = 1 / 8**2
    c = a[0]
    ub = u[0]
    i, j = 4, 5
    flux = (
        0.5 * (c[i, j] + c[i + 1, j]) * (ub[i + 1, j] - ub[i, j])
        - 0.5 * (c[i, j] + c[i - 1, j]) * (ub[i, j] - ub[i - 1, j])
        + 0.5 * (c[i, j] + c[i, j + 1]) * (ub[i, j + 1] - ub[i, j])
        - 0.5 * (c[i, j] + c[i, j - 1]) * (ub[i, j] - ub[i, j - 1])
    )
    assert abs(-flux / h2 - 1.0) < 1e-10


def test_darcy_generator_values_and_subsampling():
    coarse = pde.darcy(2, 9, seed=5, progress=False)
    assert set(np.unique(coarse["coefficient"])) <= {3.0, 12.0}
    assert coarse["solution"].dtype == np.float32 and coarse["solution"].shape == (2, 9, 9)
    # solving on 17 nodes and subsampling equals the fine solve at the coinciding nodes
    fine = pde.darcy(1, 9, solve_resolution=17, seed=5, progress=False)
    g = pde.gaussian_random_field_2d(1, 17, seed=np.random.default_rng(5))[0]
    a = np.where(g >= 0, 12.0, 3.0)
    np.testing.assert_allclose(fine["solution"][0], pde.solve_darcy(a)[::2, ::2], rtol=1e-6)
    np.testing.assert_array_equal(fine["coefficient"][0], a[::2, ::2])


# ----------------------------------------------------------------------------- random fields


def test_grf_neumann_matches_direct_cosine_sum():
    r, alpha, tau = 7, 2.0, 3.0
    g = pde.gaussian_random_field_2d(2, r, alpha=alpha, tau=tau, seed=11)
    xi = np.random.default_rng(11).standard_normal((2, r, r))
    x = np.linspace(0, 1, r)
    k = np.arange(r)
    basis = np.where(k[None, :] == 0, 1.0, math.sqrt(2) * np.cos(PI * np.outer(x, k)))  # [x, k]
    coef = tau ** (alpha - 1) * (PI**2 * (k[:, None] ** 2 + k[None, :] ** 2) + tau**2) ** (
        -alpha / 2
    )
    coef[0, 0] = 0
    direct = np.einsum("ik,jl,bkl->bij", basis, basis, coef * xi)
    np.testing.assert_allclose(g, direct, rtol=0, atol=1e-12)


def test_grf_neumann_pointwise_variance():
    r, n, alpha, tau = 9, 4000, 2.0, 3.0
    g = pde.gaussian_random_field_2d(n, r, alpha=alpha, tau=tau, seed=2)
    x = np.linspace(0, 1, r)
    k = np.arange(r)
    phi2 = np.where(k[None, :] == 0, 1.0, 2 * np.cos(PI * np.outer(x, k)) ** 2)
    lam = tau ** (2 * alpha - 2) * (PI**2 * (k[:, None] ** 2 + k[None, :] ** 2) + tau**2) ** (
        -alpha
    )
    lam[0, 0] = 0
    theory = np.einsum("ik,jl,kl->ij", phi2, phi2, lam)
    ratio = g.var(axis=0) / theory
    assert abs(ratio.mean() - 1) < 4 * math.sqrt(2 / n)
    assert np.abs(ratio - 1).max() < 6 * math.sqrt(2 / n)


def test_grf_periodic_1d_spectrum_and_variance():
    r, n, alpha, tau, scale = 32, 4000, 2.0, 5.0, 625.0
    u = pde.gaussian_random_field_1d(n, r, alpha=alpha, tau=tau, scale=scale, seed=4)
    k = np.arange(r // 2 + 1)
    lam = scale * (4 * PI**2 * k**2 + tau**2) ** (-alpha)
    lam[0] = lam[-1] = 0  # no mean, no Nyquist mode
    power = (np.abs(np.fft.rfft(u, axis=-1) / r) ** 2).mean(axis=0)
    assert power[0] < 1e-25 and power[-1] < 1e-25
    # |c_k|^2 of a complex Gaussian is exponential: relative std 1/sqrt(n) per mode
    np.testing.assert_allclose(power[1:-1] / lam[1:-1], 1, atol=5 / math.sqrt(n))
    assert abs(u.var() / (2 * lam.sum()) - 1) < 0.05


def test_grf_periodic_2d_spectrum():
    r, n, alpha, tau, scale = 16, 2000, 2.5, 7.0, 7.0**3
    w = pde.gaussian_random_field_2d(
        n, r, alpha=alpha, tau=tau, scale=scale, boundary="periodic", seed=8
    )
    m = np.fft.fftfreq(r, 1 / r)
    k2 = m[:, None] ** 2 + m[None, :] ** 2
    lam = scale * (4 * PI**2 * k2 + tau**2) ** (-alpha)
    power = (np.abs(np.fft.fft2(w) / r**2) ** 2).mean(axis=0)
    inner = (np.abs(m[:, None]) < r / 2) & (np.abs(m[None, :]) < r / 2) & (k2 > 0)
    np.testing.assert_allclose(power[inner] / lam[inner], 1, atol=5.5 / math.sqrt(n))
    assert power[~inner].max() < 1e-25


# ----------------------------------------------------------------------------- Navier–Stokes


def test_navier_stokes_taylor_green_decay():
    r, nu, dt = 32, 0.01, 0.01
    x = np.arange(r) / r
    w0 = np.cos(2 * PI * x)[:, None] * np.cos(2 * PI * x)[None, :]
    times = np.array([0.0, 0.5, 1.0])
    vort, vel = pde.solve_navier_stokes_2d(w0[None], times, nu=nu, dt=dt)
    lam = 8 * PI**2 * nu
    for t, w in zip(times, vort[0]):
        np.testing.assert_allclose(w, np.exp(-lam * t) * w0, atol=2e-5 * np.exp(-lam * t))
        # the nonlinear term is exactly zero, so the error is the CN factor's alone
        cn = ((1 - lam * dt / 2) / (1 + lam * dt / 2)) ** round(t / dt)
        np.testing.assert_allclose(w, cn * w0, rtol=0, atol=1e-12)
    # u = psi_y, v = -psi_x with psi = w / (8 pi^2)
    u_exact = -np.cos(2 * PI * x)[:, None] * np.sin(2 * PI * x)[None, :] / (4 * PI)
    np.testing.assert_allclose(vel[0, 0, ..., 0], u_exact, atol=1e-14)
    np.testing.assert_allclose(vel[0, 0, ..., 1], -u_exact.T, atol=1e-14)


def test_navier_stokes_second_order_in_time():
    r = 32
    w0 = pde.gaussian_random_field_2d(
        2, r, alpha=2.5, tau=7.0, scale=7.0**3 * 400, boundary="periodic", seed=1
    )
    forcing = pde._ns_forcing(r)
    times = [0.0, 0.4]
    sols = [
        pde.solve_navier_stokes_2d(w0, times, nu=1e-2, forcing=forcing, dt=dt)[0][:, -1]
        for dt in (0.04, 0.02, 0.01)
    ]
    e1 = np.linalg.norm(sols[0] - sols[1])
    e2 = np.linalg.norm(sols[1] - sols[2])
    assert abs(math.log2(e1 / e2) - 2) < 0.15, math.log2(e1 / e2)


def test_navier_stokes_velocity_divergence_free_and_curl_is_vorticity():
    out = pde.navier_stokes_2d(2, 32, t_final=1.0, n_snapshots=3, seed=3, progress=False)
    assert out["vorticity"].shape == (2, 3, 32, 32)
    assert out["velocity"].shape == (2, 3, 32, 32, 2)
    np.testing.assert_allclose(out["time"], [0, 0.5, 1.0])
    m = np.fft.fftfreq(32, 1 / 32)
    m = np.where(np.abs(m) == 16, 0, m)
    kx, ky = 2j * PI * m[:, None], 2j * PI * m[None, :]
    u_hat = np.fft.fft2(out["velocity"][..., 0].astype(np.float64))
    v_hat = np.fft.fft2(out["velocity"][..., 1].astype(np.float64))
    w_hat = np.fft.fft2(out["vorticity"].astype(np.float64))
    scale = np.abs(w_hat).max()
    assert np.abs(kx * u_hat + ky * v_hat).max() < 1e-5 * scale
    curl = kx * v_hat - ky * u_hat
    inner = (np.abs(m[:, None]) > 0) | (np.abs(m[None, :]) > 0)
    inner = inner & (np.abs(np.fft.fftfreq(32, 1 / 32))[:, None] < 16)
    inner = inner & (np.abs(np.fft.fftfreq(32, 1 / 32))[None, :] < 16)
    np.testing.assert_allclose(curl[..., inner], w_hat[..., inner], atol=1e-5 * scale)
    x = np.arange(32) / 32
    s = 2 * PI * (x[:, None] + x[None, :])
    np.testing.assert_allclose(out["forcing"], 0.1 * (np.sin(s) + np.cos(s)), atol=1e-7)


# ----------------------------------------------------------------------------- Burgers


def _cole_hopf(x: np.ndarray, t: float, nu: float) -> np.ndarray:
    e = np.exp(-4 * PI**2 * nu * t)
    return 4 * PI * nu * e * np.sin(2 * PI * x) / (2 + e * np.cos(2 * PI * x))


def test_burgers_cole_hopf_exact_solution():
    r, nu = 64, 0.1
    x = np.arange(r) / r
    times = np.array([0.0, 0.25, 0.5])
    u = pde.solve_burgers_1d(_cole_hopf(x, 0.0, nu)[None], times, nu=nu, dt=0.005)
    for k, t in enumerate(times):
        np.testing.assert_allclose(u[0, k], _cole_hopf(x, t, nu), rtol=0, atol=5e-9)


def test_burgers_convergence_in_dt():
    r, nu = 128, 0.1
    x = np.arange(r) / r
    errors = [
        np.abs(
            pde.solve_burgers_1d(_cole_hopf(x, 0.0, nu)[None], [0.0, 0.5], nu=nu, dt=dt)[0, -1]
            - _cole_hopf(x, 0.5, nu)
        ).max()
        for dt in (0.1, 0.05, 0.025)
    ]
    orders = _orders(errors)
    assert np.all(np.abs(orders - 4) < 0.3), orders  # ETDRK4 against the exact solution
    # a rough random initial field: self-convergence (mild stiff order reduction is expected)
    u0 = pde.gaussian_random_field_1d(2, r, seed=6)
    times = [0.0, 0.2]
    sols = [pde.solve_burgers_1d(u0, times, nu=0.05, dt=dt)[:, -1] for dt in (0.02, 0.01, 0.005)]
    e1 = np.linalg.norm(sols[0] - sols[1])
    e2 = np.linalg.norm(sols[1] - sols[2])
    assert math.log2(e1 / e2) > 3.3, math.log2(e1 / e2)
    # the CFL-driven default agrees with the fine fixed step
    auto = pde.solve_burgers_1d(u0, times, nu=0.05)[:, -1]
    assert np.abs(auto - sols[2]).max() < 1e-6 * np.abs(sols[2]).max()


def test_burgers_generator_shapes_and_conservation():
    out = pde.burgers_1d(3, 64, t_final=0.5, n_snapshots=6, seed=1, progress=False)
    assert out["u"].shape == (3, 6, 64) and out["u"].dtype == np.float32
    np.testing.assert_allclose(out["time"], np.linspace(0, 0.5, 6))
    # the mean is conserved (zero for the mean-free initial field); energy decays
    assert np.abs(out["u"].mean(axis=-1)).max() < 1e-6
    energy = (out["u"].astype(np.float64) ** 2).mean(axis=-1)
    assert np.all(np.diff(energy, axis=1) < 0)
    fine = pde.burgers_1d(3, 32, solve_resolution=64, t_final=0.5, n_snapshots=6, seed=1,
                          progress=False)  # fmt: skip
    np.testing.assert_array_equal(fine["u"], out["u"][..., ::2])


# ----------------------------------------------------------------------------- layouts


def _well(path: Path, **kwargs) -> WellDataset:
    return WellDataset(path=str(path), well_split_name="train", use_normalization=False, **kwargs)


def test_well_layout_navier_stokes_loads_in_the_well(tmp_path):
    out = pde.navier_stokes_2d(
        5, 16, t_final=0.3, n_snapshots=4, seed=2, out=tmp_path, progress=False
    )
    root = tmp_path / "navier_stokes_2d"
    for split, count in (("train", 4), ("valid", 1)):
        with h5py.File(root / "data" / split / "navier_stokes_2d.hdf5") as f:
            assert f.attrs["n_trajectories"] == count
            assert f["t1_fields/velocity"].shape == (count, 4, 16, 16, 2)
    assert not (root / "data" / "test").exists()  # floor(0.9 * 5 + 0.5) = 5: no test sample
    ds = _well(root, n_steps_input=2, n_steps_output=1)
    assert len(ds) == 4 * 2
    sample = ds[3]  # trajectory 1, window starting at t = 1
    expected = np.concatenate([out["vorticity"][1, 1:4, ..., None], out["velocity"][1, 1:4]], -1)
    np.testing.assert_array_equal(sample["input_fields"].numpy(), expected[:2])
    np.testing.assert_array_equal(sample["output_fields"].numpy(), expected[2:])
    np.testing.assert_array_equal(sample["constant_fields"].numpy()[..., 0], out["forcing"])
    assert sample["boundary_conditions"].tolist() == [[2, 2], [2, 2]]  # periodic
    np.testing.assert_allclose(sample["space_grid"][:, 0, 0].numpy(), np.arange(16) / 16)
    # stats.yaml: the_well format, train split only, and its normaliser accepts it
    stats = yaml.safe_load((root / "stats.yaml").read_text())
    train_v = out["vorticity"][:4].astype(np.float64)
    assert stats["mean"]["vorticity"] == pytest.approx(train_v.mean(), rel=1e-9, abs=1e-12)
    assert stats["std"]["vorticity"] == pytest.approx(train_v.std(), rel=1e-9)
    d = np.diff(out["velocity"][:4].astype(np.float64), axis=1)
    np.testing.assert_allclose(stats["rms_delta"]["velocity"], np.sqrt((d**2).mean((0, 1, 2, 3))))
    assert "forcing" in stats["mean"] and "forcing" not in stats["mean_delta"]
    normed = WellDataset(
        path=str(root),
        well_split_name="train",
        use_normalization=True,
        normalization_type=ZScoreNormalization,
        n_steps_input=1,
        n_steps_output=1,
    )[0]
    np.testing.assert_allclose(
        normed["input_fields"][..., 0].numpy(),
        (out["vorticity"][0, :1] - stats["mean"]["vorticity"]) / stats["std"]["vorticity"],
        rtol=1e-5,
        atol=1e-5,
    )


def test_well_layout_burgers_and_darcy_load_in_the_well(tmp_path):
    out = pde.burgers_1d(
        4, 32, t_final=0.1, n_snapshots=3, seed=0, out=tmp_path, splits=(0.5, 0.5, 0.0),
        progress=False,
    )  # fmt: skip
    ds = _well(tmp_path / "burgers_1d", n_steps_input=1, n_steps_output=1)
    assert len(ds) == 2 * 2
    sample = ds[3]
    np.testing.assert_array_equal(sample["input_fields"].numpy()[..., 0], out["u"][1, 1:2])
    np.testing.assert_array_equal(sample["output_fields"].numpy()[..., 0], out["u"][1, 2:3])
    assert sample["boundary_conditions"].tolist() == [[2, 2]]
    valid = WellDataset(
        path=str(tmp_path / "burgers_1d"), well_split_name="valid", n_steps_output=2
    )
    np.testing.assert_array_equal(valid[1]["output_fields"].numpy()[..., 0], out["u"][3, 1:])

    dout = pde.darcy(3, 9, seed=1, out=tmp_path, splits=(1.0, 0.0, 0.0), progress=False)
    ds = _well(tmp_path / "darcy", n_steps_input=0, n_steps_output=1)
    assert len(ds) == 3
    sample = ds[2]
    assert "input_fields" not in sample
    np.testing.assert_array_equal(sample["output_fields"].numpy()[0, ..., 0], dout["solution"][2])
    np.testing.assert_array_equal(sample["constant_fields"].numpy()[..., 0], dout["coefficient"][2])
    assert sample["boundary_conditions"].tolist() == [[0, 0], [0, 0]]  # wall
    np.testing.assert_allclose(sample["space_grid"][:, 0, 0].numpy(), np.linspace(0, 1, 9))
    stats = yaml.safe_load((tmp_path / "darcy" / "stats.yaml").read_text())
    assert stats["mean"]["coefficient"] == pytest.approx(dout["coefficient"].mean(), rel=1e-6)
    assert stats["std_delta"]["solution"] == 0.0


def test_darcy_loads_in_pde_dataset_without_field_arguments(tmp_path):
    from gtlib.datasets import PDEDataset

    dout = pde.darcy(4, 9, seed=2, out=tmp_path, splits=(0.5, 0.25, 0.25), progress=False)
    for split in ("train", "valid", "test"):
        with h5py.File(tmp_path / f"darcy/data/{split}/darcy.hdf5") as f:
            for key, names in (("input_fields", ["coefficient"]), ("target_fields", ["solution"])):
                attr = f.attrs[key]
                assert isinstance(attr, np.ndarray) and attr.dtype.kind == "O"  # string array
                assert [v.decode() if isinstance(v, bytes) else v for v in attr] == names
    for split, first in (("train", 0), ("valid", 2), ("test", 3)):
        ds = PDEDataset(tmp_path / "darcy", split=split)
        assert ds.input_fields == ["coefficient"] and ds.target_fields == ["solution"]
        assert ds.steady and len(ds) == {"train": 2, "valid": 1, "test": 1}[split]
        for i in range(len(ds)):
            item = ds[i]
            assert item["x"].shape == item["y"].shape == (1, 9, 9)
            np.testing.assert_array_equal(item["x"][0].numpy(), dout["coefficient"][first + i])
            np.testing.assert_array_equal(item["y"][0].numpy(), dout["solution"][first + i])
            assert float(item["lead_time"]) == 0.0


def test_test_only_set_generates_without_stats(tmp_path):
    first = pde.darcy(3, 9, seed=3, out=tmp_path, progress=False)
    with pytest.warns(UserWarning, match="no train split, so no stats.yaml") as record:
        dout = pde.darcy(2, 9, seed=5, out=tmp_path / "only", splits=(0, 0, 1), progress=False)
    assert "older" not in str(record[0].message)
    root = tmp_path / "only" / "darcy"
    assert [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()] == [
        "data/test/darcy.hdf5"
    ]
    with h5py.File(root / "data/test/darcy.hdf5") as f:
        assert f.attrs["n_trajectories"] == 2
        np.testing.assert_array_equal(f["t0_fields/coefficient"][...], dout["coefficient"])
        np.testing.assert_array_equal(f["t0_fields/solution"][:, 0], dout["solution"])
    from gtlib.datasets import PDEDataset

    test = PDEDataset(root, split="test")
    np.testing.assert_array_equal(test[1]["y"][0].numpy(), dout["solution"][1])
    # normalise a test-only set with its training set's statistics
    normed = PDEDataset(root, split="test", normalize=True, stats=tmp_path / "darcy/stats.yaml")
    stats = yaml.safe_load((tmp_path / "darcy/stats.yaml").read_text())
    mean, std = stats["mean"]["solution"], stats["std"]["solution"]
    np.testing.assert_allclose(
        normed[0]["y"][0].numpy(), (dout["solution"][0] - mean) / std, rtol=1e-5, atol=1e-6
    )
    assert first["solution"].shape == (3, 9, 9)
    # regenerating a test-only set over an existing one: the older stats.yaml is named
    with pytest.warns(UserWarning, match="older .*stats.yaml is left as it was"):
        pde.darcy(1, 9, seed=6, out=tmp_path, splits=(0.0, 0.0, 1.0), progress=False)
    # the writer alone: no train split never reaches well_stats (the KeyError of before)
    data = np.ones((2, 1, 4), dtype=np.float32)
    with pytest.warns(UserWarning, match="no train split"):
        written = writers.write_well_dataset(
            tmp_path / "w", "u1", fields=[writers.WellField("u", data)], time=np.zeros(1),
            coords={"x": np.arange(4.0)}, boundaries=[], parameters={}, n=2, splits=(0, 0.5, 0.5),
        )  # fmt: skip
    assert sorted(written) == ["test", "valid"]
    assert not (tmp_path / "w/u1/stats.yaml").exists()
    with pytest.raises(ValueError, match="both input_fields and target_fields"):
        writers.write_well_dataset(
            tmp_path / "w", "u2", fields=[writers.WellField("u", data)], time=np.zeros(1),
            coords={"x": np.arange(4.0)}, boundaries=[], parameters={}, n=2, splits=(1, 0, 0),
            input_fields=["u"],
        )  # fmt: skip
    with pytest.raises(ValueError, match="target_fields must name fields of"):
        writers.write_well_dataset(
            tmp_path / "w", "u3", fields=[writers.WellField("u", data)], time=np.zeros(1),
            coords={"x": np.arange(4.0)}, boundaries=[], parameters={}, n=2, splits=(1, 0, 0),
            input_fields=["u"], target_fields=["v"],
        )  # fmt: skip


def test_pdebench_layout_round_trip(tmp_path):
    d = pde.darcy(3, 9, seed=0, out=tmp_path / "darcy.hdf5", layout="pdebench", progress=False)
    with h5py.File(tmp_path / "darcy.hdf5") as f:
        assert set(f) == {"tensor", "nu", "x-coordinate", "y-coordinate"}
        np.testing.assert_array_equal(f["tensor"][:], d["solution"][:, None])
        np.testing.assert_array_equal(f["nu"][:], d["coefficient"])
        np.testing.assert_allclose(f["x-coordinate"][:], np.linspace(0, 1, 9))
        assert f.attrs["beta"] == 1.0
    b = pde.burgers_1d(
        2, 16, t_final=0.2, n_snapshots=3, out=tmp_path / "b.hdf5", layout="pdebench",
        progress=False,
    )  # fmt: skip
    with h5py.File(tmp_path / "b.hdf5") as f:
        assert set(f) == {"tensor", "x-coordinate", "t-coordinate"}
        np.testing.assert_array_equal(f["tensor"][:], b["u"])
        np.testing.assert_allclose(f["t-coordinate"][:], [0, 0.1, 0.2, 0.3], atol=1e-7)
        np.testing.assert_allclose(f["x-coordinate"][:], np.arange(16) / 16)
        assert f.attrs["Nu"] == pytest.approx(0.1)
    ns = pde.navier_stokes_2d(
        2, 16, t_final=0.2, n_snapshots=3, out=tmp_path / "ns.hdf5", layout="pdebench",
        progress=False,
    )  # fmt: skip
    with h5py.File(tmp_path / "ns.hdf5") as f:
        assert set(f) == {"velocity", "force", "t"}
        np.testing.assert_array_equal(f["velocity"][:], ns["velocity"])
        assert f["force"].shape == (2, 16, 16, 2) and f["t"].shape == (2, 3)
        force = f["force"][0].astype(np.float64)
    # the velocity forcing is divergence-free and its curl is the vorticity forcing
    m = np.fft.fftfreq(16, 1 / 16)
    kx, ky = 2j * PI * m[:, None], 2j * PI * m[None, :]
    fx, fy = np.fft.fft2(force[..., 0]), np.fft.fft2(force[..., 1])
    np.testing.assert_allclose(np.fft.ifft2(kx * fx + ky * fy).real, 0, atol=1e-6)
    np.testing.assert_allclose(np.fft.ifft2(kx * fy - ky * fx).real, ns["forcing"], atol=1e-5)


def test_writes_are_atomic(tmp_path, monkeypatch):
    real_create = h5py.Group.create_dataset
    calls = {"n": 0}

    def failing_create(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (injected)")
        return real_create(self, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", failing_create)
    with pytest.raises(OSError, match="injected"):
        pde.burgers_1d(
            2, 16, t_final=0.1, n_snapshots=2, out=tmp_path / "b.hdf5", layout="pdebench",
            progress=False,
        )  # fmt: skip
    assert list(tmp_path.iterdir()) == []
    calls["n"] = -100  # the first train file succeeds, the valid file fails part-way
    monkeypatch.setattr(writers, "well_stats", lambda fields: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        pde.burgers_1d(2, 16, t_final=0.1, n_snapshots=2, out=tmp_path, progress=False)
    root = tmp_path / "burgers_1d"
    assert not (root / "stats.yaml").exists()
    leftovers = [p.name for p in root.rglob("*") if p.is_file()]
    assert all(not name.endswith(".tmp") for name in leftovers)


# ----------------------------------------------------------------------------- CLI and input


def test_cli_writes_files(tmp_path, capsys):
    args = ["generate", "burgers_1d", "--n", "3", "--resolution", "16", "--t-final", "0.1"]
    args += ["--n-snapshots", "3", "--nu", "0.05", "--out", str(tmp_path), "--no-progress"]
    assert cli.main(args) == 0
    with h5py.File(tmp_path / "burgers_1d/data/train/burgers_1d.hdf5") as f:
        assert f["t0_fields/u"].shape == (2, 3, 16)
        assert f.attrs["nu"] == pytest.approx(0.05)
    assert (tmp_path / "burgers_1d/stats.yaml").exists()
    target = tmp_path / "d.hdf5"
    args = ["generate", "darcy", "--n", "2", "--resolution", "9", "--layout", "pdebench"]
    assert cli.main(args + ["--out", str(target), "--no-progress", "--seed", "4"]) == 0
    with h5py.File(target) as f:
        expected = pde.darcy(2, 9, seed=4, progress=False)["solution"]
        np.testing.assert_array_equal(f["tensor"][:, 0], expected)
    assert set(cli.GENERATORS) >= {"darcy", "navier_stokes_2d", "burgers_1d"}


def test_cli_bad_arguments_name_the_argument(tmp_path, capsys):
    base = ["generate", "darcy", "--out", str(tmp_path)]
    with pytest.raises(SystemExit) as err:
        cli.main(base + ["--n", "-3"])
    assert err.value.code == 2 and "--n" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(base + ["--n", "2", "--layout", "zarr"])
    assert "--layout" in capsys.readouterr().err
    assert cli.main(base + ["--n", "2", "--resolution", "2", "--no-progress"]) == 2
    assert "resolution" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["generate", "heat_3d", "--n", "2", "--out", str(tmp_path)])


def test_cli_module_entry_point(tmp_path, monkeypatch):
    argv = ["cli", "generate", "darcy", "--n", "1", "--resolution", "5", "--out", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv + ["--no-progress", "--splits", "1", "0", "0"])
    monkeypatch.delitem(sys.modules, "gtlib.datasets.generate.cli", raising=False)
    with pytest.raises(SystemExit) as done:
        runpy.run_module("gtlib.datasets.generate.cli", run_name="__main__")
    assert done.value.code == 0
    assert (tmp_path / "darcy/data/train/darcy.hdf5").exists()


@pytest.mark.parametrize(
    ("func", "kwargs", "error", "name"),
    [
        (pde.darcy, {"n": 0}, ValueError, "n"),
        (pde.darcy, {"n": 1.5}, TypeError, "n"),
        (pde.darcy, {"n": 2, "resolution": 2}, ValueError, "resolution"),
        (pde.darcy, {"n": 2, "resolution": 9, "solve_resolution": 20}, ValueError, "solve_res"),
        (pde.darcy, {"n": 2, "splits": (0.5, 0.5, 0.5)}, ValueError, "splits"),
        (pde.darcy, {"n": 2, "splits": (0.5, 0.5)}, ValueError, "splits"),
        (pde.darcy, {"n": 2, "splits": (-0.5, 0.5, 1.0)}, ValueError, "splits"),
        (pde.darcy, {"n": 2, "layout": "zarr"}, ValueError, "layout"),
        (pde.navier_stokes_2d, {"n": -1}, ValueError, "n"),
        (pde.navier_stokes_2d, {"n": 2, "nu": -1.0}, ValueError, "nu"),
        (
            pde.navier_stokes_2d,
            {"n": 2, "resolution": 16, "solve_resolution": 24},
            ValueError,
            "solve_resolution",
        ),  # fmt: skip
        (pde.burgers_1d, {"n": 2, "n_snapshots": 1}, ValueError, "n_snapshots"),
        (pde.burgers_1d, {"n": 2, "t_final": 0.0}, ValueError, "t_final"),
        (pde.burgers_1d, {"n": 2, "resolution": 3}, ValueError, "resolution"),
    ],
)
def test_bad_input_names_the_argument(func, kwargs, error, name):
    with pytest.raises(error, match=name):
        func(progress=False, **kwargs)


def test_solve_darcy_rejects_bad_coefficients():
    with pytest.raises(ValueError, match="a must"):
        pde.solve_darcy(np.zeros((5, 5)))
    with pytest.raises(ValueError, match="a must"):
        pde.solve_darcy(np.ones(5))
    with pytest.raises(ValueError, match="f must"):
        pde.solve_darcy(np.ones((5, 5)), np.ones((4, 4)))
