"""One vocabulary for the particle systems: the ABP takes the AOUP's names and order, and the
former names keep working with a deprecation warning (and give the same numbers)."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch

from gtlib.datasets.particles import ActiveBrownianParticles, ActiveOUParticles, simulate

DEPRECATED = (DeprecationWarning, FutureWarning)


def test_abp_shares_the_aoup_names_and_order():
    aoup = list(inspect.signature(ActiveOUParticles.__init__).parameters)[1:]
    abp = list(inspect.signature(ActiveBrownianParticles.__init__).parameters)[1:]
    # gamma (AOUP) and rotational_diffusion (ABP) are different physics in the same place;
    # the ABP is two-dimensional and has no `dim`.
    assert [name for name in aoup if name != "dim"] == [
        "gamma" if name == "rotational_diffusion" else name for name in abp
    ]
    assert abp[:3] == ["num_particles", "packing_fraction", "box_length"]
    shared = ["num_particles", "box_length", "v0", "k", "beta", "r0", "trap", "eps", "cutoff"]
    aoup_keys = list(ActiveOUParticles(4, k=0.0).parameters())
    abp_keys = list(ActiveBrownianParticles(4, k=0.0).parameters())
    assert [key for key in aoup_keys if key in shared] == shared
    assert [key for key in abp_keys if key in shared] == shared


def test_abp_former_keyword_names_warn_and_mean_the_same():
    new = ActiveBrownianParticles(
        16, 0.2, v0=1.7, rotational_diffusion=0.6, k=1.5, trap=0.0, eps=0.3
    )
    with (
        pytest.warns(DEPRECATED, match="speed is deprecated, use v0"),
        pytest.warns(DEPRECATED, match="trans_diffusion is deprecated, use eps"),
    ):
        old = ActiveBrownianParticles(
            16, 0.2, speed=1.7, rotational_diffusion=0.6, k=1.5, trans_diffusion=0.3
        )
    assert old.parameters() == new.parameters()
    assert (old.v0, old.eps) == (1.7, 0.3)
    a = simulate(new, 3, 1e-3, spacing=5e-3, seed=4, progress=False)
    b = simulate(old, 3, 1e-3, spacing=5e-3, seed=4, progress=False)
    assert torch.equal(a["pos"], b["pos"]) and torch.equal(a["g"], b["g"])
    with pytest.warns(DEPRECATED, match="trans_diffusion is deprecated, use eps"):
        ActiveBrownianParticles(4, trans_diffusion=0.1, k=0.0)
    with pytest.raises(TypeError, match="v0"):
        ActiveBrownianParticles(4, speed=1.0, v0=1.0)
    with pytest.raises(TypeError, match="eps"):
        ActiveBrownianParticles(4, trans_diffusion=1.0, eps=1.0)


def test_abp_former_attribute_names_warn():
    system = ActiveBrownianParticles(4, v0=2.5, eps=0.4, k=0.0)
    with pytest.warns(FutureWarning, match=r"ActiveBrownianParticles\.speed is deprecated"):
        assert system.speed == 2.5
    with pytest.warns(FutureWarning, match="use ActiveBrownianParticles.eps"):
        assert system.trans_diffusion == 0.4


def test_abp_former_positional_order_fails_clearly():
    # Before: (num_particles, packing_fraction, speed, rotational_diffusion, ...). The third
    # place is now box_length and the rest is keyword-only, so no old call changes meaning.
    with pytest.raises(ValueError, match="at most one of `packing_fraction` and `box_length`"):
        ActiveBrownianParticles(64, 0.45, 3.0)
    with pytest.raises(TypeError):
        ActiveBrownianParticles(64, 0.45, None, 3.0)


def test_abp_parameters_rebuild_the_system_without_warnings():
    system = ActiveBrownianParticles(9, box_length=40.0, v0=0.8, rotational_diffusion=2.0, eps=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clone = ActiveBrownianParticles(**system.parameters())
    assert clone.parameters() == system.parameters()
    assert repr(clone) == repr(system)
    assert "v0=0.8" in repr(system) and "eps=0.2" in repr(system)
