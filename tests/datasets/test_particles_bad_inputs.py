"""Bad input at the public boundary of the particle modules: TypeError for a wrong type,
ValueError for a wrong value, each message naming the argument (gtlib.validation's convention)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gtlib.datasets.particles import (
    ActiveBrownianParticles,
    ActiveOUParticles,
    ParticleDataset,
    from_state,
    load_trajectory,
    simulate,
    softplus_force_cutoff,
    to_state,
)

AOUP = ActiveOUParticles(9, packing_fraction=0.2)
ABP = ActiveBrownianParticles(9, packing_fraction=0.2)
POS = torch.zeros(9, 2, dtype=torch.float64)


def _simulate(**kwargs):
    args = {"system": AOUP, "n_snapshots": 2, "dt": 0.01, "progress": False}
    args.update(kwargs)
    return lambda: simulate(**args)


CASES = [
    # (call, exception, the argument the message must name)
    (lambda: ActiveOUParticles("9"), TypeError, "num_particles"),
    (lambda: ActiveOUParticles(0), ValueError, "num_particles"),
    (lambda: ActiveOUParticles(True), TypeError, "num_particles"),
    (lambda: ActiveOUParticles(9, packing_fraction=1.5), ValueError, "packing_fraction"),
    (lambda: ActiveOUParticles(9, packing_fraction="0.2"), TypeError, "packing_fraction"),
    (lambda: ActiveOUParticles(9, box_length=-1.0), ValueError, "box_length"),
    (lambda: ActiveOUParticles(9, box_length=math.inf), ValueError, "box_length"),
    (lambda: ActiveOUParticles(9, v0=math.nan), ValueError, "v0"),
    (lambda: ActiveOUParticles(9, gamma=0.0), ValueError, "gamma"),
    (lambda: ActiveOUParticles(9, k=-1.0), ValueError, "k"),
    (lambda: ActiveOUParticles(9, beta=0.0), ValueError, "beta"),
    (lambda: ActiveOUParticles(9, r0=None), TypeError, "r0"),
    (lambda: ActiveOUParticles(9, trap=-0.5), ValueError, "trap"),
    (lambda: ActiveOUParticles(9, eps=-0.1), ValueError, "eps"),
    (lambda: ActiveOUParticles(9, dim=0), ValueError, "dim"),
    (lambda: ActiveOUParticles(9, dim=2.0), TypeError, "dim"),
    (lambda: ActiveOUParticles(9, box_length=5.0), ValueError, "cutoff"),
    (lambda: ActiveBrownianParticles(9, v0="1"), TypeError, "v0"),
    (lambda: ActiveBrownianParticles(9, rotational_diffusion=0.0), ValueError, "rotational"),
    (lambda: ActiveBrownianParticles(9, eps=-1.0), ValueError, "eps"),
    (lambda: ActiveBrownianParticles(9, k=0.0).trap_entropy_production(), ValueError, "trap"),
    (lambda: AOUP.drift(np.zeros((9, 2)), POS), TypeError, "pos"),
    (lambda: AOUP.drift(POS, torch.zeros(9, 2, dtype=torch.long)), TypeError, "g"),
    (lambda: AOUP.drift(POS, torch.full((9, 2), math.inf)), ValueError, "g"),
    (lambda: AOUP.force_jacobian(torch.zeros(8, 2)), ValueError, "pos"),
    (lambda: AOUP.step(POS, POS, -0.1), ValueError, "dt"),
    (lambda: ABP.angle_drift(torch.zeros(9, 2)), ValueError, "state"),
    (lambda: ABP.angle_drift(torch.zeros(9, 3, dtype=torch.long)), TypeError, "state"),
    (lambda: to_state(POS, "g"), TypeError, "g"),
    (lambda: to_state(POS, torch.zeros(9, 3)), ValueError, "same shape"),
    (lambda: from_state([1.0, 2.0]), TypeError, "state"),
    (lambda: from_state(torch.zeros(9, 3)), ValueError, "state"),
    (lambda: softplus_force_cutoff(-1.0, 1.0), ValueError, "beta"),
    (lambda: softplus_force_cutoff(7.5, 1.0, tolerance=0.0), ValueError, "tolerance"),
    (_simulate(system="AOUP"), TypeError, "system"),
    (_simulate(n_snapshots=0), ValueError, "n_snapshots"),
    (_simulate(n_snapshots=2.0), TypeError, "n_snapshots"),
    (_simulate(dt=math.nan), ValueError, "dt"),
    (_simulate(burn_in=-1.0), ValueError, "burn_in"),
    (_simulate(spacing=0.001), ValueError, "spacing"),
    (_simulate(n_trajectories=0), ValueError, "n_trajectories"),
    (_simulate(seed=-1), ValueError, "seed"),
    (_simulate(seed="0"), TypeError, "seed"),
    (_simulate(checkpoint_every=0), ValueError, "checkpoint_every"),
    (_simulate(dtype=torch.float16), TypeError, "dtype"),
    (_simulate(skin=-0.1), ValueError, "skin"),
    (_simulate(callback=3), TypeError, "callback"),
    (_simulate(out=3), TypeError, "out"),
    (_simulate(out=""), ValueError, "out"),
    (_simulate(initial=POS), TypeError, "initial"),
    (_simulate(initial=(POS, torch.zeros(9, 3))), ValueError, "g"),
    (
        _simulate(initial=(POS[None].expand(3, 9, 2), POS[None].expand(3, 9, 2))),
        ValueError,
        "initial",
    ),
    (lambda: load_trajectory(5), TypeError, "path"),
    (lambda: load_trajectory(b"file.h5"), TypeError, "path"),
    (lambda: ParticleDataset(None), TypeError, "path"),
]


@pytest.mark.parametrize("index", range(len(CASES)))
def test_bad_input_raises_a_clear_error(index):
    call, error, name = CASES[index]
    with pytest.raises(error) as info:
        call()
    assert name in str(info.value), str(info.value)


def test_missing_and_folder_paths_name_the_file(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="missing.h5"):
        load_trajectory(tmp_path / "missing.h5")
    with pytest.raises(ValueError, match="directory"):
        ParticleDataset(tmp_path)


def test_valid_edge_cases_still_work(tmp_path: Path):
    # One particle in free space, one snapshot, float32, numpy integer counts and a Path.
    system = ActiveOUParticles(np.int64(1), eps=0.5, trap=1.0)
    run = simulate(
        system, np.int32(1), 0.01, dtype=torch.float32, progress=False, out=tmp_path / "a.h5"
    )
    assert run["pos"].shape == (1, 1, 1, 2) and run["pos"].dtype == torch.float32
    assert torch.equal(load_trajectory(tmp_path / "a.h5")["pos"], run["pos"])
    # A non-contiguous position batch gives the forces of its contiguous copy.
    pos = (3 * torch.randn(9, 4, dtype=torch.float64))[:, ::2]
    assert not pos.is_contiguous()
    torch.testing.assert_close(AOUP.interaction_forces(pos), AOUP.interaction_forces(pos.clone()))
