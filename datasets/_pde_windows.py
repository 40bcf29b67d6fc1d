"""Which fields go in and out, and which time windows of which trajectories are items.

Pure functions of the parsed file metadata (:class:`~gtlib.datasets._pde_formats._FileInfo`)
and the dataset options; no file is read here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from gtlib.validation import check_int, describe

from ._pde_formats import _err, _FileInfo


@dataclass(frozen=True)
class FieldSelection:
    """The fields of a dataset's items: ``inputs`` (stepped), ``constants`` (time-invariant
    inputs appended once) and ``targets``; ``steady``: one item per sample, no windows."""

    steady: bool
    inputs: list[str]
    constants: list[str]
    targets: list[str]


def _field_names(names: Sequence[str] | str | None, arg: str, info: _FileInfo) -> list[str] | None:
    """``names`` (a str or a sequence of str) checked against the fields of ``info``."""
    if names is None:
        return None
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, Sequence):
        raise TypeError(f"{arg} must be a str or a sequence of str, got {describe(names)}")
    names = list(names)
    wrong = [n for n in names if not isinstance(n, str)]
    if wrong:
        raise TypeError(f"{arg} must hold field names (str), got {wrong[0]!r}")
    bad = [n for n in names if n not in info.fields]
    if bad:
        raise ValueError(f"{info.path}: unknown {arg} {bad}; available fields: {list(info.fields)}")
    if not names:
        raise ValueError(f"{arg} must name at least one field")
    return names


def _default_fields(info: _FileInfo, varying: list[str], dynamic: bool) -> tuple[list, list]:
    """Inputs and targets when neither is given."""
    avail = list(info.fields)
    if info.steady_fields is not None and info.default_targets is not None:
        return list(info.steady_fields), list(info.default_targets)
    if dynamic:
        return list(varying), list(varying)
    if varying and len(varying) < len(avail):
        # steady, as PDEBench Darcy: time-invariant fields in, (length-1) time-axis out
        return [n for n in avail if n not in varying], list(varying)
    raise ValueError(
        f"{info.path}: steady data with fields {avail}: pass input_fields and/or "
        "target_fields (or store root attrs input_fields/target_fields)"
    )


def _complete_fields(
    info: _FileInfo, ins: list[str] | None, outs: list[str] | None, dynamic: bool
) -> tuple[list, list]:
    """Inputs and targets when only one of the two is given."""
    given = ins if ins is not None else outs
    assert given is not None
    if dynamic and any(info.fields[n].time_axis for n in given):
        # time-dependent: predict the time-varying inputs, or feed the targets back
        if ins is None:
            return list(given), list(given)
        return list(given), [n for n in given if info.fields[n].time_axis]
    rest = [n for n in info.fields if n not in given]
    if not rest:
        raise ValueError(f"{info.path}: no fields left to pair with {given}")
    return (rest, list(given)) if ins is None else (list(given), rest)


def select_fields(
    info: _FileInfo,
    input_fields: Sequence[str] | str | None,
    target_fields: Sequence[str] | str | None,
    all2all: bool,
) -> FieldSelection:
    """The input, constant and target fields of a dataset over files like ``info`` (see
    :class:`~gtlib.datasets.pde.PDEDataset` for the defaults)."""
    ins = _field_names(input_fields, "input_fields", info)
    outs = _field_names(target_fields, "target_fields", info)
    varying = [n for n, fl in info.fields.items() if fl.time_axis]
    dynamic = info.n_times > 1 and bool(varying)
    if ins is None and outs is None:
        ins, outs = _default_fields(info, varying, dynamic)
    elif ins is None or outs is None:
        ins, outs = _complete_fields(info, ins, outs, dynamic)
    steady = not (dynamic and any(info.fields[n].time_axis for n in ins + outs))
    if steady:
        if all2all:
            raise ValueError(f"{info.path}: all2all=True needs time-dependent fields")
        return FieldSelection(True, ins, [], outs)
    const_out = [n for n in outs if not info.fields[n].time_axis]
    if const_out:
        raise ValueError(
            f"{info.path}: target_fields {const_out} are time-invariant; "
            "targets of time-dependent data must vary in time"
        )
    stepped = [n for n in ins if info.fields[n].time_axis]
    constants = [n for n in ins if not info.fields[n].time_axis]
    return FieldSelection(False, stepped, constants, outs)


def parse_subsample(subsample: int | Sequence[int], nd: int) -> tuple[int, ...]:
    """``subsample`` as one stride (>= 1) per spatial dimension."""
    if isinstance(subsample, Sequence) and not isinstance(subsample, str):
        sub = tuple(check_int(s, f"subsample[{i}]", minimum=1) for i, s in enumerate(subsample))
        if len(sub) != nd:
            raise ValueError(f"subsample has {len(sub)} entries for {nd} spatial dims")
        return sub
    if isinstance(subsample, np.ndarray):
        return parse_subsample(subsample.tolist(), nd)
    try:
        return (check_int(subsample, "subsample", minimum=1),) * nd
    except TypeError:
        raise TypeError(
            f"subsample must be an int or a sequence of ints, got {describe(subsample)}"
        ) from None


def window_pairs(n_times: int, time_stride: int, max_lead_steps: int | None) -> np.ndarray:
    """``[K, 2]`` snapshot pairs ``(i, j)``, ``i <= j``, ``time_stride`` apart, with ``j - i``
    at most ``max_lead_steps`` snapshots (all2all items)."""
    snaps = np.arange(0, n_times, time_stride)
    k = len(snaps)
    pairs = [
        (snaps[i], snaps[j])
        for i in range(k)
        for j in range(i, k)
        if max_lead_steps is None or j - i <= max_lead_steps
    ]
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def windows_per_trajectory(
    info: _FileInfo, n_steps_input: int, n_steps_output: int, time_stride: int
) -> int:
    """Number of windows of ``n_steps_input + n_steps_output`` steps in one trajectory."""
    span = (n_steps_input + n_steps_output - 1) * time_stride
    n = info.n_times - span
    if n <= 0:
        raise ValueError(
            f"{info.path}: trajectories have {info.n_times} steps, fewer than a window of "
            f"n_steps_input={n_steps_input} + n_steps_output={n_steps_output} "
            f"steps with time_stride={time_stride} ({span + 1} steps)"
        )
    return n


def select_trajectories(
    infos: Sequence[_FileInfo], samples: slice | Sequence[int] | None, where: str
) -> list[tuple[int, int]]:
    """``(file, sample)`` pairs of the trajectories ``samples`` picks over all files in order
    (``where`` names the dataset in messages)."""
    trajs = [(fi, s) for fi, info in enumerate(infos) for s in range(info.n_samples)]
    if samples is None:
        return trajs
    if isinstance(samples, slice):
        return trajs[samples]
    if isinstance(samples, np.ndarray):
        samples = samples.tolist()
    if not isinstance(samples, Sequence) or isinstance(samples, str):
        raise TypeError(
            f"samples must be a slice or a sequence of ints, got {type(samples).__name__}"
        )
    sel = []
    for i in samples:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f"samples must hold ints, got {i!r}")
        if not -len(trajs) <= i < len(trajs):
            raise ValueError(
                f"samples index {i} out of range for {len(trajs)} trajectories in {where}"
            )
        sel.append(trajs[i])
    return sel


def check_compatible(infos: Sequence[_FileInfo]) -> None:
    """Every file has the first's layout, grid and fields."""
    first = infos[0]
    theirs = {k: (v.channels, v.time_axis) for k, v in first.fields.items()}
    for info in infos[1:]:
        if info.layout != first.layout:
            raise _err(info.path, f"layout {info.layout!r} differs from {first.path}")
        if info.spatial_shape != first.spatial_shape:
            raise _err(
                info.path,
                f"spatial shape {info.spatial_shape} differs from {first.spatial_shape} "
                f"in {first.path}",
            )
        mine = {k: (v.channels, v.time_axis) for k, v in info.fields.items()}
        if mine != theirs:
            raise _err(info.path, f"fields {mine} differ from {theirs} in {first.path}")
