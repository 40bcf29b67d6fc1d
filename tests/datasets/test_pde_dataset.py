"""Tests for gtlib.datasets.pde.PDEDataset against small HDF5 files written here with h5py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import DataLoader

from gtlib.datasets.pde import PDEDataset, PDEFormatError

# ---------------------------------------------------------------------------------------------
# fixture writers
# ---------------------------------------------------------------------------------------------


def grid_values(*shape: int, offset: float = 0.0) -> np.ndarray:
    """value = offset + sum_k index_k * 10**(len-1-k): every entry tells where it came from."""
    idx = np.indices(shape).astype(np.float64)
    w = 10.0 ** np.arange(len(shape) - 1, -1, -1)
    return (offset + np.tensordot(w, idx, axes=1)).astype(np.float32)


def write_pdebench_1d(path: Path, n: int = 3, t: int = 6, x: int = 8) -> np.ndarray:
    arr = grid_values(n, t, x)
    with h5py.File(path, "w") as f:
        f["tensor"] = arr
        f["x-coordinate"] = np.linspace(0.0, 1.0, x, endpoint=False).astype(np.float32)
        f["t-coordinate"] = (0.5 * np.arange(t + 1)).astype(np.float32)  # PDEBench stores T+1
        f.attrs["beta"] = 0.1
    return arr


def write_darcy(path: Path, n: int = 4, x: int = 6, y: int = 5) -> tuple[np.ndarray, np.ndarray]:
    nu = grid_values(n, x, y, offset=0.5)
    sol = grid_values(n, 1, x, y, offset=-7.0)
    with h5py.File(path, "w") as f:
        f["nu"] = nu
        f["tensor"] = sol
        f["x-coordinate"] = np.linspace(0.0, 2.0, x).astype(np.float32)
        f["y-coordinate"] = np.linspace(0.0, 3.0, y).astype(np.float32)
    return nu, sol


def write_cfd(path: Path, n: int = 2, t: int = 5, x: int = 4, y: int = 6) -> dict:
    data = {
        k: grid_values(n, t, x, y, offset=0.25 * (i + 1))
        for i, k in enumerate(["density", "pressure", "Vx", "Vy"])
    }
    with h5py.File(path, "w") as f:
        for k, v in data.items():
            f[k] = v
        f["x-coordinate"] = np.arange(x, dtype=np.float32)
        f["y-coordinate"] = np.arange(y, dtype=np.float32) * 2
        f["t-coordinate"] = np.arange(t + 1, dtype=np.float32)
    return data


def write_ns(path: Path, n: int = 2, t: int = 5, x: int = 4, y: int = 4) -> dict:
    vel = grid_values(n, t, x, y, 2)
    force = grid_values(n, x, y, 2, offset=0.5)
    tt = np.stack([0.1 * np.arange(t) ** 2 + s for s in range(n)]).astype(np.float32)
    with h5py.File(path, "w") as f:
        f["velocity"] = vel
        f["force"] = force
        f["t"] = tt
    return {"velocity": vel, "force": force, "t": tt}


def write_seeds(path: Path, n: int = 2, t: int = 5, x: int = 4, y: int = 6, c: int = 2):
    arrs = []
    with h5py.File(path, "w") as f:
        for s in range(n):
            a = grid_values(t, x, y, c, offset=10000.0 * s)
            arrs.append(a)
            g = f.create_group(f"{s:04d}")
            g["data"] = a
            g["grid/x"] = np.linspace(-1, 1, x).astype(np.float32)
            g["grid/y"] = np.linspace(0, 5, y).astype(np.float32)
            g["grid/t"] = np.linspace(0, 0.8, t).astype(np.float32)
    return np.stack(arrs)


def _flags(ds, sv: bool, tv: bool, dv=(True, True)) -> None:
    ds.attrs["sample_varying"] = sv
    ds.attrs["time_varying"] = tv
    ds.attrs["dim_varying"] = np.asarray(dv)


def write_well(
    path: Path, b: int = 2, t: int = 5, h: int = 4, w: int = 6, seed: int = 0, tracer: bool = True
) -> dict:
    """A The Well file with every attribute the_well's WellDataset reads.

    ``tracer`` (a field constant along y) is optional: the_well 1.2 tiles such fields wrongly.
    """
    off = 100000.0 * seed
    data = {
        "vorticity": grid_values(b, t, h, w, offset=off),
        "tracer": grid_values(b, t, h, offset=off + 0.5),  # does not vary along y
        "velocity": grid_values(b, t, h, w, 2, offset=off + 0.25),
        "stress": grid_values(b, t, h, w, 2, 2, offset=off + 0.75),
        "forcing": grid_values(h, w, offset=-3.0),  # constant: no sample, no time axis
    }
    time_ = (0.2 * np.arange(t)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.attrs["dataset_name"] = "toy_ns"
        f.attrs["grid_type"] = "cartesian"
        f.attrs["n_spatial_dims"] = 2
        f.attrs["n_trajectories"] = b
        f.attrs["simulation_parameters"] = ["nu"]
        f.attrs["nu"] = 1e-3
        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = ["x", "y"]
        for name, arr in (
            ("time", time_),
            ("x", np.linspace(0, 1, h).astype(np.float32)),
            ("y", np.linspace(0, 2, w).astype(np.float32)),
        ):
            d = dims.create_dataset(name, data=arr)
            d.attrs["sample_varying"] = False
            d.attrs["time_varying"] = name == "time"
        bcs = f.create_group("boundary_conditions")
        for dim, n in (("x", h), ("y", w)):
            g = bcs.create_group(f"{dim}_periodic")
            g.attrs["associated_dims"] = [dim]
            g.attrs["associated_fields"] = []
            g.attrs["bc_type"] = "periodic"
            g.attrs["sample_varying"] = False
            g.attrs["time_varying"] = False
            mask = np.zeros(n, dtype=bool)
            mask[[0, -1]] = True
            g["mask"] = mask
            g["values"] = np.zeros(0, dtype=np.float32)
        sc = f.create_group("scalars")
        sc.attrs["field_names"] = ["nu"]
        d = sc.create_dataset("nu", data=np.float32(1e-3))
        d.attrs["sample_varying"] = False
        d.attrs["time_varying"] = False
        t0 = f.create_group("t0_fields")
        t0.attrs["field_names"] = ["vorticity"] + ["tracer"] * tracer + ["forcing"]
        _flags(t0.create_dataset("vorticity", data=data["vorticity"]), True, True)
        if tracer:
            _flags(t0.create_dataset("tracer", data=data["tracer"]), True, True, (True, False))
        _flags(t0.create_dataset("forcing", data=data["forcing"]), False, False)
        t1 = f.create_group("t1_fields")
        t1.attrs["field_names"] = ["velocity"]
        _flags(t1.create_dataset("velocity", data=data["velocity"]), True, True)
        t2 = f.create_group("t2_fields")
        t2.attrs["field_names"] = ["stress"]
        _flags(t2.create_dataset("stress", data=data["stress"]), True, True)
    data["time"] = time_
    return data


def well_channels(data: dict, s: int, t: int, w: int, tracer: bool = True) -> np.ndarray:
    """Reference channel stack [vorticity, tracer, velocity_x, velocity_y, stress_xx..yy]."""
    return np.concatenate(
        [data["vorticity"][s, t][None]]
        + [np.repeat(data["tracer"][s, t][:, None], w, axis=1)[None]] * tracer
        + [
            np.moveaxis(data["velocity"][s, t], -1, 0),
            np.moveaxis(data["stress"][s, t].reshape(*data["stress"].shape[2:4], 4), -1, 0),
        ]
    )


def write_well_darcy(
    path: Path, b: int = 3, h: int = 4, w: int = 5, time_axis: bool = False, mixed: bool = False
):
    """Steady Well file; ``mixed``: constant-in-time coefficient, solution with one time step."""
    coef = grid_values(b, h, w, offset=1.0)
    sol = grid_values(b, h, w, offset=-1.0)
    with h5py.File(path, "w") as f:
        f.attrs["n_spatial_dims"] = 2
        f.attrs["n_trajectories"] = b
        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = ["x", "y"]
        if time_axis or mixed:  # the time-invariant variant omits dimensions/time altogether
            dims["time"] = np.zeros(1, dtype=np.float32)
        dims["x"] = np.linspace(0, 1, h).astype(np.float32)
        dims["y"] = np.linspace(0, 1, w).astype(np.float32)
        t0 = f.create_group("t0_fields")
        t0.attrs["field_names"] = ["coefficient", "solution"]
        for name, arr in (("coefficient", coef), ("solution", sol)):
            tv = time_axis or (mixed and name == "solution")
            _flags(t0.create_dataset(name, data=arr[:, None] if tv else arr), True, tv)
    return coef, sol


def open_file_count() -> int:
    return h5py.h5f.get_obj_count(h5py.h5f.OBJ_ALL, h5py.h5f.OBJ_FILE)


# ---------------------------------------------------------------------------------------------
# PDEBench
# ---------------------------------------------------------------------------------------------


def test_pdebench_1d_windows(tmp_path):
    p = tmp_path / "1D_Advection.hdf5"
    arr = write_pdebench_1d(p)
    ds = PDEDataset(p, n_steps_input=2, n_steps_output=2, time_stride=1)
    assert ds.layout == "pdebench" and ds.fields == {"tensor": 1}
    assert len(ds) == 3 * (6 - 3)
    assert ds.spatial_shape == (8,) and ds.n_spatial_dims == 1
    assert (ds.in_channels, ds.out_channels) == (2, 2)
    np.testing.assert_allclose(ds.time, 0.5 * np.arange(6))
    for i in range(len(ds)):
        s, t0 = divmod(i, 3)
        item = ds[i]
        assert item["x"].dtype == torch.float32 and item["index"] == i
        np.testing.assert_array_equal(item["x"].numpy(), arr[s, t0 : t0 + 2])
        np.testing.assert_array_equal(item["y"].numpy(), arr[s, t0 + 2 : t0 + 4])
        assert item["lead_time"].shape == () and float(item["lead_time"]) == 0.5

    strided = PDEDataset(p, n_steps_input=2, n_steps_output=1, time_stride=2)
    assert len(strided) == 3 * (6 - 4)
    item = strided[3]  # sample 1, window start 1: steps 1, 3 -> 5
    np.testing.assert_array_equal(item["x"].numpy(), arr[1, [1, 3]])
    np.testing.assert_array_equal(item["y"].numpy(), arr[1, [5]])
    assert float(item["lead_time"]) == pytest.approx(1.0)


def test_pdebench_all2all(tmp_path):
    p = tmp_path / "burgers.hdf5"
    arr = write_pdebench_1d(p)
    ds = PDEDataset(p, all2all=True)
    k1 = 6  # K + 1 snapshots
    assert len(ds) == 3 * k1 * (k1 + 1) // 2
    pairs = [(i, j) for i in range(k1) for j in range(i, k1)]
    for idx in (0, 1, 7, 20, 21 + 5, len(ds) - 1):
        s, local = divmod(idx, len(pairs))
        i, j = pairs[local]
        item = ds[idx]
        np.testing.assert_array_equal(item["x"].numpy(), arr[s, i][None])
        np.testing.assert_array_equal(item["y"].numpy(), arr[s, j][None])
        assert float(item["lead_time"]) == pytest.approx(0.5 * (j - i))
    near = PDEDataset(p, all2all=True, max_lead_steps=1)
    assert len(near) == 3 * (k1 + k1 - 1)
    assert max(float(near[i]["lead_time"]) for i in range(len(near))) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="n_steps_input"):
        PDEDataset(p, all2all=True, n_steps_input=2)


def test_darcy_steady_and_data_output(tmp_path):
    p = tmp_path / "2D_DarcyFlow_beta1.0.hdf5"
    nu, sol = write_darcy(p)
    ds = PDEDataset(p)
    assert ds.steady and ds.input_fields == ["nu"] and ds.target_fields == ["tensor"]
    assert len(ds) == 4 and ds.spatial_shape == (6, 5)
    for i in range(4):
        np.testing.assert_array_equal(ds[i]["x"].numpy(), nu[i][None])
        np.testing.assert_array_equal(ds[i]["y"].numpy(), sol[i])
        assert float(ds[i]["lead_time"]) == 0.0

    sub = PDEDataset(p, subsample=(2, 2), output="data")
    d = sub[1]
    xs, ys = np.linspace(0, 2, 6)[::2], np.linspace(0, 3, 5)[::2]
    gx, gy = np.meshgrid(xs, ys, indexing="ij")
    np.testing.assert_allclose(d.pos.numpy(), np.stack([gx.ravel(), gy.ravel()], -1), rtol=1e-6)
    np.testing.assert_array_equal(d.x.numpy()[:, 0], nu[1, ::2, ::2].ravel())
    np.testing.assert_array_equal(d.y.numpy()[:, 0], sol[1, 0, ::2, ::2].ravel())
    assert d.x.shape == (9, 1) and d.lead_time.shape == (1,)


def test_cfd_channel_order_and_subsample(tmp_path):
    p = tmp_path / "2D_CFD.hdf5"
    data = write_cfd(p)
    ds = PDEDataset(p, n_steps_input=2, n_steps_output=1, subsample=(2, 3))
    names = ["density", "pressure", "Vx", "Vy"]
    assert ds.input_fields == names and ds.spatial_shape == (2, 2)
    assert ds.in_channels == 8 and ds.out_channels == 4
    item = ds[4]  # sample 1, start 1
    ref_x = np.stack([data[k][1, t, ::2, ::3] for t in (1, 2) for k in names])
    ref_y = np.stack([data[k][1, 3, ::2, ::3] for k in names])
    np.testing.assert_array_equal(item["x"].numpy(), ref_x)
    np.testing.assert_array_equal(item["y"].numpy(), ref_y)
    np.testing.assert_array_equal(ds.coords[1], np.array([0.0, 6.0]))
    picked = PDEDataset(p, input_fields=["Vy", "density"], target_fields=["pressure"])
    np.testing.assert_array_equal(
        picked[0]["x"].numpy(), np.stack([data["Vy"][0, 0], data["density"][0, 0]])
    )
    np.testing.assert_array_equal(picked[0]["y"].numpy(), data["pressure"][0, 1][None])


def test_ns_vector_constant_field_and_sample_time(tmp_path):
    p = tmp_path / "ns_incom.hdf5"
    d = write_ns(p)
    ds = PDEDataset(p, input_fields=["velocity", "force"], target_fields=["velocity"])
    assert ds.constant_fields == ["force"] and ds.in_channels == 4 and ds.out_channels == 2
    assert len(ds) == 2 * 4
    item = ds[6]  # sample 1, start 2
    ref = np.concatenate(
        [np.moveaxis(d["velocity"][1, 2], -1, 0), np.moveaxis(d["force"][1], -1, 0)]
    )
    np.testing.assert_array_equal(item["x"].numpy(), ref)
    np.testing.assert_array_equal(item["y"].numpy(), np.moveaxis(d["velocity"][1, 3], -1, 0))
    assert float(item["lead_time"]) == pytest.approx(d["t"][1, 3] - d["t"][1, 2])
    sel = PDEDataset(p, samples=[1])
    assert len(sel) == 4
    np.testing.assert_array_equal(sel[0]["x"].numpy(), np.moveaxis(d["velocity"][1, 0], -1, 0))


def test_pdebench_seeds(tmp_path):
    p = tmp_path / "2D_diff-react_NA_NA.h5"
    arr = write_seeds(p)
    ds = PDEDataset(p, n_steps_input=1, n_steps_output=2, output="data", subsample=[1, 2])
    assert ds.layout == "pdebench-seeds" and ds.fields == {"data": 2}
    assert len(ds) == 2 * 3
    item = ds[5]  # sample 1, start 2
    ref_x = np.moveaxis(arr[1, 2, :, ::2], -1, 0).reshape(2, -1).T
    ref_y = np.concatenate([np.moveaxis(arr[1, t, :, ::2], -1, 0) for t in (3, 4)])
    np.testing.assert_array_equal(item.x.numpy(), ref_x)
    np.testing.assert_array_equal(item.y.numpy(), ref_y.reshape(4, -1).T)
    assert float(item.lead_time) == pytest.approx(0.2)
    gx, gy = np.meshgrid(np.linspace(-1, 1, 4), np.linspace(0, 5, 6)[::2], indexing="ij")
    np.testing.assert_allclose(item.pos.numpy(), np.stack([gx.ravel(), gy.ravel()], -1), 1e-6)


# ---------------------------------------------------------------------------------------------
# The Well
# ---------------------------------------------------------------------------------------------


def _well_tree(tmp_path: Path, tracer: bool = True) -> tuple[Path, list[dict]]:
    root = tmp_path / "toy_ns"
    train = root / "data" / "train"
    train.mkdir(parents=True)
    datas = [
        write_well(train / f"toy_ns_{k}.hdf5", b=2 + k, seed=k, tracer=tracer) for k in range(2)
    ]
    (root / "data" / "valid").mkdir()
    write_well(root / "data" / "valid" / "toy_ns_v.hdf5", b=1, seed=7)
    return root, datas


def test_well_windows_and_constant_fields(tmp_path):
    root, datas = _well_tree(tmp_path)
    fields = ["vorticity", "tracer", "velocity", "stress", "forcing"]
    ds = PDEDataset(root, split="train", input_fields=fields, n_steps_input=2)
    assert ds.layout == "well" and ds.constant_fields == ["forcing"]
    assert ds.target_fields == ["vorticity", "tracer", "velocity", "stress"]
    assert ds.in_channels == 2 * 8 + 1 and ds.out_channels == 8
    assert len(ds) == (2 + 3) * (5 - 2)
    index = [(k, s, t) for k in range(2) for s in range(2 + k) for t in range(3)]
    for i in (0, 4, len(ds) - 1):
        k, s, t = index[i]
        item = ds[i]
        ref_x = np.concatenate(
            [well_channels(datas[k], s, t, 6), well_channels(datas[k], s, t + 1, 6)]
            + [datas[k]["forcing"][None]]
        )
        np.testing.assert_array_equal(item["x"].numpy(), ref_x)
        np.testing.assert_array_equal(item["y"].numpy(), well_channels(datas[k], s, t + 2, 6))
        assert float(item["lead_time"]) == pytest.approx(0.2)
    # a single file and a split folder read the same
    one = PDEDataset(root / "data" / "train" / "toy_ns_1.hdf5", n_steps_input=2)
    np.testing.assert_array_equal(one[0]["y"].numpy(), ds[6]["y"].numpy())
    with pytest.raises(ValueError, match="split"):
        PDEDataset(root)


def test_well_matches_the_well_loader(tmp_path):
    well_data = pytest.importorskip("the_well.data")
    root, datas = _well_tree(tmp_path, tracer=False)
    split = root / "data" / "train"
    theirs = well_data.WellDataset(
        path=str(split), n_steps_input=2, n_steps_output=2, boundary_return_type=None
    )
    fields = ["vorticity", "velocity", "stress", "forcing"]
    ours = PDEDataset(split, input_fields=fields, n_steps_input=2, n_steps_output=2)
    assert len(ours) == len(theirs)
    for i in range(len(ours)):
        a, b = ours[i], theirs[i]
        c = b["input_fields"].shape[-1]
        tin = b["input_fields"].permute(0, 3, 1, 2).reshape(-1, 4, 6)
        const = b["constant_fields"].permute(2, 0, 1)
        torch.testing.assert_close(a["x"], torch.cat([tin, const]))
        torch.testing.assert_close(a["y"], b["output_fields"].permute(0, 3, 1, 2).reshape(-1, 4, 6))
        assert c == 7
        dt = b["output_time_grid"][0] - b["input_time_grid"][-1]
        assert float(a["lead_time"]) == pytest.approx(float(dt))
    ref_y = np.concatenate([well_channels(datas[1], 2, t, 6, tracer=False) for t in (3, 4)])
    np.testing.assert_array_equal(ours[len(ours) - 1]["y"].numpy(), ref_y)


@pytest.mark.parametrize("time_axis", [False, True])
def test_well_steady_darcy(tmp_path, time_axis):
    p = tmp_path / "darcy.hdf5"
    coef, sol = write_well_darcy(p, time_axis=time_axis)
    with pytest.raises(ValueError, match="steady"):
        PDEDataset(p)
    ds = PDEDataset(p, input_fields=["coefficient"])
    assert ds.steady and ds.target_fields == ["solution"] and len(ds) == 3
    np.testing.assert_array_equal(ds[2]["x"].numpy(), coef[2][None])
    np.testing.assert_array_equal(ds[2]["y"].numpy(), sol[2][None])
    ds.close()  # the cached read handle would block writing
    with h5py.File(p, "a") as f:
        f.attrs["input_fields"] = ["coefficient"]
        f.attrs["target_fields"] = ["solution"]
    assert PDEDataset(p).input_fields == ["coefficient"]


def test_well_steady_darcy_mixed_flags_default(tmp_path):
    p = tmp_path / "darcy.hdf5"
    coef, sol = write_well_darcy(p, mixed=True)
    ds = PDEDataset(p, output="data")
    assert ds.steady and ds.input_fields == ["coefficient"] and ds.target_fields == ["solution"]
    d = ds[1]
    np.testing.assert_array_equal(d.x.numpy()[:, 0], coef[1].ravel())
    np.testing.assert_array_equal(d.y.numpy()[:, 0], sol[1].ravel())


# ---------------------------------------------------------------------------------------------
# normalisation
# ---------------------------------------------------------------------------------------------


def test_normalisation_streaming_stats_cache(tmp_path):
    p = tmp_path / "cfd.hdf5"
    data = write_cfd(p, n=3)
    ds = PDEDataset(p, normalize=True, samples=slice(0, 2))
    for k in ("density", "Vy"):
        ref = data[k][:2].astype(np.float64)
        assert ds.stats["mean"][k] == pytest.approx([ref.mean()], rel=1e-12)
        assert ds.stats["std"][k] == pytest.approx([ref.std()], rel=1e-12)
    cache = Path(ds.stats_path)
    assert cache.parent == tmp_path and cache.suffix == ".yaml"
    item = ds[1]
    with PDEDataset(p, samples=slice(0, 2)) as raw_ds:
        raw = raw_ds[1]
    mean = torch.tensor([ds.stats["mean"][k][0] for k in ds.input_fields]).view(4, 1, 1)
    std = torch.tensor([ds.stats["std"][k][0] for k in ds.input_fields]).view(4, 1, 1)
    torch.testing.assert_close(item["x"], (raw["x"] - mean) / std)
    torch.testing.assert_close(ds.denormalize_target(item["y"]), raw["y"])
    batch = torch.stack([item["y"], item["y"]])
    torch.testing.assert_close(ds.denormalize_target(batch)[1], raw["y"])
    ds.close()

    # the cache is reused: values planted in the yaml are what a new dataset reads
    doc = yaml.safe_load(cache.read_text())
    doc["mean"]["density"] = [123.0]
    cache.write_text(yaml.safe_dump(doc))
    assert PDEDataset(p, normalize=True, samples=slice(0, 2)).stats["mean"]["density"] == [123.0]
    # a changed file is summarised again
    time.sleep(0.01)
    data = write_cfd(p, n=3)
    with h5py.File(p, "a") as f:
        f["density"][0] += 1.0
    again = PDEDataset(p, normalize=True, samples=slice(0, 2))
    ref = data["density"][:2].astype(np.float64)
    ref[0] += 1.0
    assert again.stats["mean"]["density"] == pytest.approx([ref.mean()], rel=1e-12)
    assert again.stats_path != str(cache)


def test_normalisation_vector_fields_and_well_stats_yaml(tmp_path):
    root, datas = _well_tree(tmp_path)
    ds = PDEDataset(root, split="valid", input_fields=["velocity"], normalize=True)
    # computed over the train split, per component
    vel = np.concatenate([d["velocity"] for d in datas]).astype(np.float64)
    assert ds.stats["mean"]["velocity"] == pytest.approx(vel.mean(axis=(0, 1, 2, 3)), rel=1e-12)
    assert ds.stats["std"]["velocity"] == pytest.approx(vel.std(axis=(0, 1, 2, 3)), rel=1e-12)
    stats = {
        "mean": {"velocity": [1.0, 2.0], "stress": 0.5},
        "std": {"velocity": [2.0, 4.0], "stress": [1.0, 2.0, 3.0, 4.0]},
    }
    (root / "stats.yaml").write_text(yaml.safe_dump(stats))
    ds = PDEDataset(
        root,
        split="train",
        input_fields=["velocity", "stress"],
        target_fields=["stress"],
        normalize=True,
    )
    assert ds.stats_path == str(root / "stats.yaml")
    assert ds.stats["mean"]["stress"] == [0.5] * 4
    raw = PDEDataset(
        root, split="train", input_fields=["velocity", "stress"], target_fields=["stress"]
    )
    m = torch.tensor([1.0, 2.0, 0.5, 0.5, 0.5, 0.5]).view(6, 1, 1)
    s = torch.tensor([2.0, 4.0, 1.0, 2.0, 3.0, 4.0]).view(6, 1, 1)
    torch.testing.assert_close(ds[3]["x"], (raw[3]["x"] - m) / s)
    torch.testing.assert_close(ds.denormalize_target(ds[3]["y"]), raw[3]["y"])
    with pytest.raises(ValueError, match="no entry for field 'tracer'"):
        PDEDataset(root, split="train", input_fields=["tracer"], normalize=True)


# ---------------------------------------------------------------------------------------------
# laziness, workers
# ---------------------------------------------------------------------------------------------


def test_no_open_handles_and_dataloader_workers(tmp_path):
    p = tmp_path / "ns.hdf5"
    write_ns(p, n=3, t=6)
    before = open_file_count()
    ds = PDEDataset(p, n_steps_input=2)
    assert open_file_count() == before
    ds[0]  # opens a cached handle in this process
    assert open_file_count() == before + 1
    ref = list(DataLoader(ds, batch_size=4, num_workers=0))
    got = list(DataLoader(ds, batch_size=4, num_workers=2))
    assert len(ref) == len(got) == 3
    for a, b in zip(ref, got):
        assert a["x"].shape == (4, 4, 4, 4) and a["lead_time"].shape == (4,)
        for k in ("x", "y", "lead_time", "index"):
            torch.testing.assert_close(a[k], b[k])
    ds.close()
    assert open_file_count() == before
    assert "layout='pdebench'" in repr(ds)


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.hdf5"):
        PDEDataset(tmp_path / "missing.hdf5")
    txt = tmp_path / "notes.hdf5"
    txt.write_text("not hdf5")
    with pytest.raises(PDEFormatError, match="notes.hdf5: not an HDF5 file"):
        PDEDataset(txt)

    p = tmp_path / "trunc.hdf5"
    write_pdebench_1d(p)
    size = p.stat().st_size
    with open(p, "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(PDEFormatError, match="trunc.hdf5"):
        PDEDataset(p)

    p = tmp_path / "renamed.hdf5"
    write_pdebench_1d(p)
    with h5py.File(p, "a") as f:
        f.move("tensor", "tensr")
    with pytest.raises(PDEFormatError, match=r"renamed.hdf5: unrecognised layout.*tensr"):
        PDEDataset(p)

    p = tmp_path / "well_renamed.hdf5"
    write_well(p)
    with h5py.File(p, "a") as f:
        f.move("t1_fields/velocity", "t1_fields/vel")
    with pytest.raises(PDEFormatError, match="well_renamed.hdf5: t1_fields/velocity is listed"):
        PDEDataset(p)

    p = tmp_path / "mismatch.hdf5"
    write_cfd(p)
    with h5py.File(p, "a") as f:
        del f["Vy"]
        f["Vy"] = np.zeros((2, 5, 4, 7), np.float32)
    with pytest.raises(PDEFormatError, match=r"mismatch.hdf5: 'Vy' has shape \(2, 5, 4, 7\)"):
        PDEDataset(p)

    d = tmp_path / "two"
    d.mkdir()
    write_cfd(d / "a.hdf5")
    write_cfd(d / "b.hdf5", y=8)
    with pytest.raises(PDEFormatError, match=r"b.hdf5: spatial shape \(4, 8\) differs"):
        PDEDataset(d)

    p = tmp_path / "short.hdf5"
    write_pdebench_1d(p)
    with pytest.raises(ValueError, match=r"short.hdf5: trajectories have 6 steps"):
        PDEDataset(p, n_steps_input=3, n_steps_output=2, time_stride=2)
    with pytest.raises(ValueError, match=r"short.hdf5: unknown input_fields \['rho'\].*tensor"):
        PDEDataset(p, input_fields=["rho"])
    with pytest.raises(ValueError, match="subsample"):
        PDEDataset(p, subsample=(2, 2))
    with pytest.raises(TypeError, match="n_steps_input"):
        PDEDataset(p, n_steps_input=1.5)

    p = tmp_path / "nan.hdf5"
    write_cfd(p)
    with h5py.File(p, "a") as f:
        f["pressure"][1, 3, 2, 2] = np.nan
    ds = PDEDataset(p)
    ds[0]
    with pytest.raises(
        ValueError, match=r"nan.hdf5: non-finite values in field 'pressure' of sample 1"
    ):
        ds[4 + 2]  # sample 1, window 2 -> 3
    ds.close()


def test_corrupt_chunk_read_error(tmp_path):
    p = tmp_path / "corrupt.hdf5"
    arr = grid_values(2, 4, 64)
    with h5py.File(p, "w") as f:
        f.create_dataset("tensor", data=arr, chunks=(1, 4, 64), compression="gzip")
        info = f["tensor"].id.get_chunk_info_by_coord((1, 0, 0))
    with open(p, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    ds = PDEDataset(p)
    np.testing.assert_array_equal(ds[0]["x"].numpy(), arr[0, 0][None])
    with pytest.raises(PDEFormatError, match=r"corrupt.hdf5: read failed for sample 1"):
        ds[3]
    ds.close()
    assert os.path.exists(p)
