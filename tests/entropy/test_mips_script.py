"""Argument checks of ``examples/entropy/mips.py`` that stop a bad run before it trains."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from gtlib.datasets import ActiveBrownianParticles, ActiveOUParticles, simulate

SCRIPT = Path(__file__).resolve().parents[2] / "examples" / "entropy" / "mips.py"


@pytest.fixture(scope="module")
def mips():
    spec = importlib.util.spec_from_file_location("mips_script_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("given,expected", [("auto", "auto"), ("2.5", 2.5), ("1e-3", 1e-3)])
def test_output_scale_accepts_auto_and_positive_numbers(mips, given, expected):
    assert mips.parse_args(["--output-scale", given]).output_scale == expected
    assert mips.parse_args([]).output_scale == 1.0


@pytest.mark.parametrize("given", ["0", "-1", "nan", "inf", "-inf", "abc", ""])
def test_output_scale_refuses_the_rest(mips, given, capsys):
    with pytest.raises(SystemExit) as info:
        mips.parse_args(["--output-scale", given])
    assert info.value.code == 2
    assert "--output-scale" in capsys.readouterr().err


def test_local_radius_is_checked_against_each_files_box(mips):
    """Half the box is the largest radius (minimum image); a larger one stops the run with the
    file's name and half its box, where it used to be shortened silently."""
    system = ActiveOUParticles(16, packing_fraction=0.3, dim=2)
    half = float(system.box_length) / 2
    mips._check_local_radius(half, system, "train.h5")  # allowed: no exception
    with pytest.raises(SystemExit) as info:
        mips._check_local_radius(half * 1.01, system, "transfer.h5")
    message = str(info.value.code)
    assert "--local-radius" in message and "transfer.h5" in message
    assert f"{half:.4g}" in message


def test_transfer_files_are_checked_before_training(mips, tmp_path):
    """Every ``--eval-data`` file's system and box are checked from its attributes before
    training: a box too small for ``--local-radius``, a missing file and a file of another
    system each stop the run with a message naming the file."""
    big = ActiveOUParticles(16, packing_fraction=0.3, dim=2)
    small = ActiveOUParticles(16, packing_fraction=0.6, dim=2)
    train, transfer = tmp_path / "train.h5", tmp_path / "small.h5"
    for system, path in ((big, train), (small, transfer)):
        simulate(system, 2, 1e-2, n_trajectories=1, out=path, progress=False)
    radius = (float(small.box_length) / 2 + float(big.box_length) / 2) / 2
    args = mips.parse_args(["--local-radius", str(radius), "--eval-data", str(train)])
    mips._check_files(args, big, train)  # the training file's box allows the radius
    args.eval_data = [str(train), str(transfer)]
    with pytest.raises(SystemExit) as info:
        mips._check_files(args, big, train)
    assert "--local-radius" in str(info.value.code) and "small.h5" in str(info.value.code)

    args.eval_data = [str(tmp_path / "missing.h5")]
    with pytest.raises(SystemExit) as info:
        mips._check_files(args, big, train)
    assert "--eval-data" in str(info.value.code) and "missing.h5" in str(info.value.code)

    abp = tmp_path / "abp.h5"
    simulate(ActiveBrownianParticles(9, packing_fraction=0.2), 2, 1e-2, n_trajectories=1,
             out=abp, progress=False)  # fmt: skip
    args.eval_data = [str(abp)]
    with pytest.raises(SystemExit) as info:
        mips._check_files(args, big, train)
    assert "abp.h5" in str(info.value.code) and "ActiveOUParticles" in str(info.value.code)
