"""The synthetic place-recognition generator: scan physics against closed forms, the HDF5 file
read back by h5py and by the reader, atomic writes, checksums and errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from gtlib.datasets.generate import cli, place_recognition, read_place_recognition
from gtlib.datasets.generate.place_recognition import scan_aerial, scan_ground


def test_ground_scan_density_falls_as_inverse_square_range():
    rng = np.random.default_rng(0)
    # a flat ground 1.8 m below the sensor, 400 samples per square metre, no occlusion
    # (bins fine enough that no two points share one)
    n = 400 * int(np.pi * 20**2)
    r = 20 * np.sqrt(rng.random(n))
    phi = rng.uniform(0, 2 * np.pi, n)
    surface = np.stack([r * np.cos(phi), r * np.sin(phi), np.full(n, -1.8)], 1)
    scan = scan_ground(surface, np.zeros(3), rng, max_range=20.0, r0=5.0, bins=(200_000, 20_000))
    rho = np.hypot(scan[:, 0], scan[:, 1])
    dist = np.linalg.norm(scan, axis=1)
    assert dist.max() < 20.0
    for low, high in ((6.0, 7.0), (10.0, 11.0), (15.0, 16.0)):
        kept = ((rho >= low) & (rho < high)).sum()
        area_samples = 400 * np.pi * (high**2 - low**2)
        mid = np.sqrt(((low + high) / 2) ** 2 + 1.8**2)
        expected = area_samples * (5.0 / mid) ** 2
        assert abs(kept / expected - 1) < 0.08, (low, kept, expected)


def test_ground_scan_occlusion_hides_what_is_behind_a_wall():
    rng = np.random.default_rng(1)
    y, z = np.meshgrid(np.linspace(-2, 2, 200), np.linspace(-1, 1, 100))
    wall = np.stack([np.full(y.size, 4.0), y.ravel(), z.ravel()], 1)
    behind = np.stack([np.full(y.size, 8.0), 2 * y.ravel(), 2 * z.ravel()], 1)
    scan = scan_ground(np.concatenate([wall, behind]), np.zeros(3), rng, r0=100.0)
    assert np.all(np.abs(scan[:, 0] - 4.0) < 1e-12)  # only the wall is seen
    # without the wall the points behind it are seen
    alone = scan_ground(behind, np.zeros(3), rng, r0=100.0)
    assert np.all(np.abs(alone[:, 0] - 8.0) < 1e-12) and len(alone) > 100


def test_aerial_scan_sees_the_canopy_not_the_ground_below():
    rng = np.random.default_rng(2)
    g = np.stack(np.meshgrid(np.linspace(-10, 10, 201), np.linspace(-10, 10, 201)), -1)
    ground = np.concatenate([g.reshape(-1, 2), np.zeros((g[..., 0].size, 1))], 1)
    canopy = ground[(ground[:, 0] < 0)] + np.array([0.0, 0.0, 8.0])
    scan = scan_aerial(np.concatenate([ground, canopy]), np.zeros(3), rng, max_range=30.0, gap=0.1)
    under = (scan[:, 0] < -0.5) & (scan[:, 2] < 1.0)
    open_ground = (scan[:, 0] > 0.5) & (scan[:, 2] < 1.0)
    n_under = (ground[:, 0] < -0.5).sum()
    assert abs(under.sum() / n_under - 0.1) < 0.02  # only the gaps
    assert open_ground.sum() == (ground[:, 0] > 0.5).sum()  # all of the open ground
    assert (scan[:, 2] > 7.0).sum() == len(canopy)


def test_file_round_trip_with_h5py_and_reader(tmp_path):
    path = place_recognition(5, tmp_path, points=64, seed=3, splits=(0.6, 0.2, 0.2),
                             progress=False)  # fmt: skip
    assert path == tmp_path / "place_recognition.h5"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["place_recognition.h5"]  # no temps
    data = read_place_recognition(path)
    with h5py.File(path, "r") as f:
        for name in ("ground", "aerial", "ground_yaw", "aerial_yaw", "kind", "split"):
            assert f[name].fletcher32
            np.testing.assert_array_equal(f[name][()], data[name].numpy())
    assert data["ground"].shape == (5, 2, 64, 3) and data["aerial"].shape == (5, 64, 3)
    assert data["split"].tolist() == [0, 0, 0, 1, 2]
    assert data["points"] == 64 and data["seed"] == 3
    assert set(data["kind"].tolist()) <= {0, 1}
    # sensor frame: ground scans within range of the sensor at the origin, aerial within the
    # horizontal coverage radius (plus noise)
    assert float(data["ground"].norm(dim=-1).max()) < 20.0 + 0.3
    assert float(data["aerial"][..., :2].norm(dim=-1).max()) < 20.0 + 0.3
    # the scans are rotated about z by the stored yaw: z is untouched, so the aerial scan's
    # ground level is near 0 and the ground scans' ground near -1.8 (below the sensor)
    assert torch.all(data["ground_yaw"].abs() <= np.pi)
    assert abs(float(data["ground"][..., 2].median()) + 1.8) < 1.5
    # deterministic in the seed
    again = place_recognition(
        5, tmp_path / "b.h5", points=64, seed=3, splits=(0.6, 0.2, 0.2), progress=False
    )
    again = read_place_recognition(again)
    assert torch.equal(again["ground"], data["ground"])
    other = read_place_recognition(place_recognition(5, tmp_path / "c.h5", points=64, seed=4,
                                                     progress=False))  # fmt: skip
    assert not torch.equal(other["aerial"], data["aerial"])


def test_cli_subcommand(tmp_path):
    status = cli.main(["generate", "place_recognition", "--n", "2", "--out", str(tmp_path),
                       "--points", "32", "--no-progress"])  # fmt: skip
    assert status == 0
    data = read_place_recognition(tmp_path / "place_recognition.h5")
    assert data["ground"].shape == (2, 2, 32, 3)
    assert cli.main(["generate", "place_recognition", "--n", "2", "--out", str(tmp_path),
                     "--layout", "pdebench", "--no-progress"]) == 2  # fmt: skip


def test_reader_errors_name_the_file_and_data_set(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        read_place_recognition(tmp_path / "missing.h5")
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(ValueError, match="text.h5"):
        read_place_recognition(text)
    path = place_recognition(2, tmp_path / "p.h5", points=32, progress=False)
    broken = tmp_path / "broken.h5"
    broken.write_bytes(path.read_bytes())
    with h5py.File(broken, "a") as f:
        del f["aerial"]
    with pytest.raises(ValueError, match="broken.h5.*aerial"):
        read_place_recognition(broken)
    # flip bytes inside a chunk of 'ground': the Fletcher-32 checksum catches it
    corrupt = tmp_path / "corrupt.h5"
    raw = bytearray(path.read_bytes())
    with h5py.File(path, "r") as f:
        offset = f["ground"].id.get_chunk_info(0).byte_offset
    raw[offset + 10 : offset + 14] = bytes(b ^ 0xFF for b in raw[offset + 10 : offset + 14])
    corrupt.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="corrupt.h5.*ground"):
        read_place_recognition(corrupt)


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(n=0), ValueError, "n"),
        (dict(points=2.0), TypeError, "points"),
        (dict(points=4), ValueError, "points"),
        (dict(noise=-1.0), ValueError, "noise"),
        (dict(max_range="far"), TypeError, "max_range"),
        (dict(splits=(0.5, 0.5, 0.5)), ValueError, "splits"),
        (dict(layout="pdebench"), ValueError, "layout"),
        (dict(resolution=8), ValueError, "resolution"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, name):
    args = dict(n=2, out=tmp_path, points=32, progress=False)
    args.update(kwargs)
    with pytest.raises(error, match=name):
        place_recognition(**args)
    assert not any(tmp_path.iterdir())
