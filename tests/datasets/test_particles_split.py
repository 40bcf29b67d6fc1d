"""datasets/particles.py split by job: every name stays importable from gtlib.datasets.particles,
and the neighbour search of the new neighbour module equals a brute-force minimum-image search."""

from __future__ import annotations

import importlib
import itertools
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import gtlib.datasets
import gtlib.datasets.particles as particles
from gtlib.datasets._particle_neighbours import radius_pairs

MODULES = {
    "_particle_systems": [
        "ActiveBrownianParticles",
        "ActiveOUParticles",
        "from_state",
        "softplus_force_cutoff",
        "to_state",
    ],
    "_particle_simulate": ["blob_state", "simulate"],
    "_particle_io": ["load_trajectory", "trajectory_attrs"],
    "_particle_dataset": ["ParticleDataset"],
}
# Private names that code written before the split imports from particles (tests, scripts).
PRIVATE = ["_append_snapshots", "_state_digest", "_SoftDiscs", "_NeighbourCache", "_run_files"]


def test_every_name_is_importable_from_particles_and_the_flat_package():
    for module, names in MODULES.items():
        owner = importlib.import_module(f"gtlib.datasets.{module}")
        for name in names:
            assert getattr(particles, name) is getattr(owner, name), name
            assert name in particles.__all__
            if name != "softplus_force_cutoff":  # not among the flat names of gtlib.datasets
                assert getattr(gtlib.datasets, name) is getattr(owner, name), name
    for name in PRIVATE:
        assert callable(getattr(particles, name)), name
    assert particles.LinearSDE is gtlib.datasets.LinearSDE
    assert sorted(particles.__all__) == sorted(
        [name for names in MODULES.values() for name in names] + ["LinearSDE"]
    )


def test_import_from_another_working_directory(tmp_path):
    code = "import gtlib.datasets.particles as p; print(p.simulate.__module__)"
    env = {**os.environ, "PYTHONPATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "gtlib.datasets._particle_simulate"


def _brute_pairs(pos: np.ndarray, radius: float, box: float | None, batch: np.ndarray):
    pairs = set()
    for j, i in itertools.combinations(range(len(pos)), 2):
        if batch[i] != batch[j]:
            continue
        delta = pos[i] - pos[j]
        if box is not None:
            delta = delta - box * np.rint(delta / box)
        if np.linalg.norm(delta) <= radius:
            pairs.add((j, i))
    return pairs


@pytest.mark.parametrize("box", [None, 12.0])
@pytest.mark.parametrize("copies", [1, 3])
def test_radius_pairs_match_brute_force(box, copies):
    rng = np.random.default_rng(7)
    n, radius = 40, 2.5
    pos = rng.uniform(-6.0, 6.0, size=(copies * n, 2))
    batch = np.repeat(np.arange(copies), n)
    edges = radius_pairs(
        torch.tensor(pos),
        radius,
        box,
        None if copies == 1 else torch.tensor(batch),
    )
    found = [tuple(edge) for edge in edges.T.tolist()]
    assert len(found) == len(set(found))  # each unordered pair once
    assert set(found) == _brute_pairs(pos, radius, box, batch)
    assert all(j < i for j, i in found)
    order = [(i, j) for j, i in found]
    assert order == sorted(order)  # sorted by receiver, then sender
