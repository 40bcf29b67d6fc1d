"""``trajectory_attrs``: a simulate() file's attributes without its data, checked like
``load_trajectory`` (the corruption cases that do not need the data read)."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import pytest

from gtlib.datasets import ActiveOUParticles, load_trajectory, simulate, trajectory_attrs
from tests.datasets.test_corrupt_files import (
    RETYPES,
    _rewrite,
    assert_clear_error,
    h5_particles,
)


def test_same_attributes_as_the_full_read(tmp_path: Path) -> None:
    system = ActiveOUParticles(8, packing_fraction=0.3, v0=1.0)
    path = tmp_path / "run.h5"
    simulate(system, 3, 1e-2, n_trajectories=2, out=path, progress=False)
    attrs = trajectory_attrs(path)
    full = load_trajectory(path)["attrs"]
    assert attrs.keys() == full.keys()
    assert all(str(attrs[k]) == str(full[k]) for k in attrs)
    assert json.loads(attrs["parameters"]) == json.loads(full["parameters"])
    assert float(attrs["box_length"]) == float(system.box_length)
    with h5py.File(path, "r") as f:  # what is on disk, read by h5py itself
        assert attrs["num_particles"] == f.attrs["num_particles"] == 8


def test_bad_files_get_the_same_clear_errors(tmp_path: Path) -> None:
    assert isinstance(assert_clear_error(trajectory_attrs, tmp_path / "no.h5"), FileNotFoundError)
    folder = tmp_path / "folder.h5"
    folder.mkdir()
    assert isinstance(assert_clear_error(trajectory_attrs, folder), ValueError)
    good = tmp_path / "good.h5"
    h5_particles(good)
    assert trajectory_attrs(good)["box_length"] == 4.0
    data = good.read_bytes()
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(data[: len(data) // 2])
    assert isinstance(assert_clear_error(trajectory_attrs, truncated), ValueError)
    for name in ("pos", "g", "time"):
        for retype in ("missing", "string"):
            path = tmp_path / f"{retype}_{name}.h5"
            h5_particles(path)
            _rewrite(path, name, RETYPES[retype])
            assert_clear_error(trajectory_attrs, path, name)
    incomplete = tmp_path / "incomplete.h5"
    h5_particles(incomplete)
    with h5py.File(incomplete, "a") as f:
        f.attrs["complete"] = False
    assert_clear_error(trajectory_attrs, incomplete, "incomplete")
    with pytest.raises(TypeError):
        trajectory_attrs(3)
