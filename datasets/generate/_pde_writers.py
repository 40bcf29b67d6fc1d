"""Writers for generated PDE data: The Well layout, PDEBench layout and The Well's ``stats.yaml``.

Every file is written to a temporary name in its final directory and moved into place with
``os.replace``, so a failure part-way leaves nothing under the final name. Every non-scalar data
set carries a Fletcher-32 checksum (chunks of at most 1 MiB, leading axes split first), so a
flipped bit fails the read instead of passing silently.

The Well layout (one HDF5 file per split)::

    <base>/<name>/data/{train,valid,test}/<name>.hdf5
    <base>/<name>/stats.yaml

Each file holds the root attributes ``dataset_name``, ``grid_type`` (``'cartesian'``),
``n_spatial_dims``, ``n_trajectories``, ``simulation_parameters`` and one attribute per parameter
(plus, when given, ``input_fields``/``target_fields``: string arrays naming the default model
inputs and targets of steady data, read by :class:`gtlib.datasets.PDEDataset`);
the groups ``dimensions/`` (``time``, one coordinate per spatial dimension),
``boundary_conditions/`` (one group per boundary, with ``mask`` and ``values``), ``scalars/``
(the simulation parameters as constant scalars) and ``t0_fields/``, ``t1_fields/``,
``t2_fields/``. A field stored with ``sample_varying``/``time_varying`` False has that leading
axis dropped from its shape.

``stats.yaml`` holds ``mean``, ``std``, ``rms`` for every field and ``mean_delta``, ``std_delta``,
``rms_delta`` (of the one-step differences ``x[t+1] - x[t]``) for the time-varying fields, computed
on the train split over samples, time and space; scalar fields get a float, vector fields a list
of one float per component, as the_well's normalisation classes expect. Without a train split
(e.g. a test-only set) no ``stats.yaml`` is written and a warning says so: statistics of test
data must not stand in for training statistics, so normalise with the training set's.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import yaml

from gtlib.io import HDF5_LIBVER, atomic_write

__all__ = [
    "WellBoundary",
    "WellField",
    "atomic_write",
    "create_checked_dataset",
    "split_counts",
    "well_stats",
    "write_pdebench",
    "write_well_dataset",
]

SPLIT_NAMES = ("train", "valid", "test")
# Target size of one HDF5 chunk: leading (sample, time) axes are split first, so a reader of one
# snapshot verifies and reads little more than that snapshot.
_CHUNK_BYTES = 1 << 20


def _chunks(shape: tuple[int, ...], itemsize: int) -> tuple[int, ...]:
    """Chunk shape: ``shape`` with leading axes set to 1 until a chunk is at most 1 MiB."""
    chunk = list(shape)
    for axis in range(len(shape) - 1):
        if math.prod(chunk) * itemsize <= _CHUNK_BYTES:
            break
        chunk[axis] = 1
    return tuple(chunk)


def create_checked_dataset(group: h5py.Group, name: str, data: np.ndarray) -> h5py.Dataset:
    """``group.create_dataset(name, data=data)`` with a Fletcher-32 checksum on every chunk.

    A flipped bit in the stored data then fails the read (h5py raises ``OSError``) instead of
    passing silently. Scalars and empty arrays cannot be chunked and are stored plainly.
    """
    data = np.asarray(data)
    if data.ndim == 0 or data.size == 0:
        return group.create_dataset(name, data=data)
    # A float data set's fill value is NaN: a chunk lost from the index reads as NaN, not as 0.
    fill = {"fillvalue": np.nan} if data.dtype.kind == "f" else {}
    return group.create_dataset(
        name, data=data, chunks=_chunks(data.shape, data.dtype.itemsize), fletcher32=True, **fill
    )


@dataclass
class WellField:
    """One field of a Well file.

    ``data`` layout: ``[N]`` if ``sample_varying``, then ``[T]`` if ``time_varying``, then the
    spatial axes, then ``order`` component axes of size ``n_spatial_dims``.
    """

    name: str
    data: np.ndarray
    order: int = 0
    sample_varying: bool = True
    time_varying: bool = True


@dataclass
class WellBoundary:
    """An axis-aligned boundary condition: ``mask`` is a bool array over the coordinate."""

    name: str
    dims: list[str]
    bc_type: str
    fields: list[str]
    mask: np.ndarray
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.float32))


def split_counts(n: int, splits: Sequence[float]) -> tuple[int, int, int]:
    """Sizes of the train/valid/test splits of ``n`` samples (cumulative fractions, half up)."""
    edges = np.floor(np.cumsum(splits) * n + 0.5).astype(int)
    edges[-1] = n
    n_train, n_valid = int(edges[0]), int(edges[1] - edges[0])
    return n_train, n_valid, n - n_train - n_valid


def _moments(x: np.ndarray, order: int) -> tuple[object, object, object]:
    """Mean, std, rms over all axes except the ``order`` trailing component axes."""
    x = x.astype(np.float64)
    axes = tuple(range(x.ndim - order))
    mean, std = x.mean(axis=axes), x.std(axis=axes)
    rms = np.sqrt((x * x).mean(axis=axes))
    return tuple(v.tolist() for v in (mean, std, rms))  # float for order 0, nested lists else


def well_stats(fields: Sequence[WellField]) -> dict[str, dict[str, object]]:
    """the_well-style normalisation statistics of ``fields`` (pass the train split)."""
    stats: dict[str, dict[str, object]] = {
        k: {} for k in ("mean", "std", "rms", "mean_delta", "std_delta", "rms_delta")
    }
    for f in fields:
        mean, std, rms = _moments(f.data, f.order)
        stats["mean"][f.name], stats["std"][f.name], stats["rms"][f.name] = mean, std, rms
        if f.time_varying:
            t_axis = 1 if f.sample_varying else 0
            if f.data.shape[t_axis] > 1:
                delta = np.diff(f.data.astype(np.float64), axis=t_axis)
                mean_d, std_d, rms_d = _moments(delta, f.order)
            else:
                # One time step: there are no differences; zeros keep the loader's keys present.
                zero = np.zeros(f.data.shape[f.data.ndim - f.order :]).tolist()
                mean_d = std_d = rms_d = zero
            stats["mean_delta"][f.name] = mean_d
            stats["std_delta"][f.name] = std_d
            stats["rms_delta"][f.name] = rms_d
    return stats


def _write_well_file(
    path: Path,
    *,
    name: str,
    fields: Sequence[WellField],
    time: np.ndarray,
    coords: dict[str, np.ndarray],
    boundaries: Sequence[WellBoundary],
    parameters: dict[str, float],
    n_trajectories: int,
    io_fields: dict[str, list[str]],
) -> None:
    with h5py.File(path, "w", libver=HDF5_LIBVER) as f:
        f.attrs["dataset_name"] = name
        f.attrs["grid_type"] = "cartesian"
        f.attrs["n_spatial_dims"] = len(coords)
        f.attrs["n_trajectories"] = n_trajectories
        f.attrs["simulation_parameters"] = list(parameters)
        for key, value in parameters.items():
            f.attrs[key] = value
        for key, names in io_fields.items():
            f.attrs[key] = np.array(names, dtype=h5py.string_dtype())

        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = list(coords)
        d = create_checked_dataset(dims, "time", np.asarray(time, dtype=np.float32))
        d.attrs["sample_varying"] = False
        d.attrs["time_varying"] = True
        for dim, values in coords.items():
            d = create_checked_dataset(dims, dim, np.asarray(values, dtype=np.float32))
            d.attrs["sample_varying"] = False
            d.attrs["time_varying"] = False

        bcs = f.create_group("boundary_conditions")
        for bc in boundaries:
            g = bcs.create_group(bc.name)
            g.attrs["associated_dims"] = list(bc.dims)
            g.attrs["associated_fields"] = list(bc.fields)
            g.attrs["bc_type"] = bc.bc_type
            g.attrs["sample_varying"] = False
            g.attrs["time_varying"] = False
            create_checked_dataset(g, "mask", np.asarray(bc.mask, dtype=bool))
            create_checked_dataset(g, "values", np.asarray(bc.values, dtype=np.float32))

        scalars = f.create_group("scalars")
        scalars.attrs["field_names"] = list(parameters)
        for key, value in parameters.items():
            d = create_checked_dataset(scalars, key, np.asarray(value, dtype=np.float32))
            d.attrs["sample_varying"] = False
            d.attrs["time_varying"] = False

        n_dims = len(coords)
        for order in range(3):
            group = f.create_group(f"t{order}_fields")
            names = [fl.name for fl in fields if fl.order == order]
            group.attrs["field_names"] = names
            for fl in fields:
                if fl.order != order:
                    continue
                d = create_checked_dataset(group, fl.name, np.asarray(fl.data, dtype=np.float32))
                d.attrs["dim_varying"] = [True] * n_dims
                d.attrs["sample_varying"] = fl.sample_varying
                d.attrs["time_varying"] = fl.time_varying
                d.attrs["symmetric"] = False
                d.attrs["antisymmetric"] = False


def write_well_dataset(
    base: str | Path,
    name: str,
    *,
    fields: Sequence[WellField],
    time: np.ndarray,
    coords: dict[str, np.ndarray],
    boundaries: Sequence[WellBoundary],
    parameters: dict[str, float],
    n: int,
    splits: Sequence[float],
    input_fields: Sequence[str] | None = None,
    target_fields: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write ``n`` trajectories in The Well layout under ``<base>/<name>/``.

    The first ``n_train`` samples go to ``train``, the next ``n_valid`` to ``valid``, the rest to
    ``test`` (see :func:`split_counts`); empty splits are skipped. ``stats.yaml`` is computed on the
    train split; with an empty train split it is not written (a ``UserWarning`` says so, and
    mentions an older ``stats.yaml`` left in place). ``input_fields``/``target_fields`` (both or
    neither) become root attributes of every file. Returns the written paths keyed by split name
    and ``"stats"`` (when written).
    """
    if (input_fields is None) != (target_fields is None):
        raise ValueError("pass both input_fields and target_fields, or neither")
    io_fields: dict[str, list[str]] = {}
    if input_fields is not None and target_fields is not None:
        known = {fl.name for fl in fields}
        for key, names in (("input_fields", input_fields), ("target_fields", target_fields)):
            names = [names] if isinstance(names, str) else list(names)
            unknown = [x for x in names if x not in known]
            if not names or unknown:
                raise ValueError(f"{key} must name fields of {sorted(known)}, got {names}")
            io_fields[key] = names
    root = Path(base) / name
    counts = split_counts(n, splits)
    starts = np.concatenate([[0], np.cumsum(counts)])
    written: dict[str, Path] = {}
    split_fields: dict[str, list[WellField]] = {}
    for split, lo, hi in zip(SPLIT_NAMES, starts[:-1], starts[1:]):
        if hi == lo:
            continue
        part = [
            WellField(
                fl.name,
                fl.data[lo:hi] if fl.sample_varying else fl.data,
                fl.order,
                fl.sample_varying,
                fl.time_varying,
            )
            for fl in fields
        ]
        split_fields[split] = part
        target = root / "data" / split / f"{name}.hdf5"

        def write(tmp: Path, part: list[WellField] = part, count: int = int(hi - lo)) -> None:
            _write_well_file(
                tmp,
                name=name,
                fields=part,
                time=time,
                coords=coords,
                boundaries=boundaries,
                parameters=parameters,
                n_trajectories=count,
                io_fields=io_fields,
            )

        written[split] = atomic_write(target, write)

    if "train" not in split_fields:
        stale = root / "stats.yaml"
        note = f"; the older {stale} is left as it was" if stale.exists() else ""
        warnings.warn(
            f"{root}: no train split, so no stats.yaml is written (statistics come from the "
            f"training data; normalise with the training set's){note}",
            UserWarning,
            stacklevel=2,
        )
        return written
    stats = well_stats(split_fields["train"])

    def write_stats(tmp: Path) -> None:
        tmp.write_text(yaml.safe_dump(stats, sort_keys=True))

    written["stats"] = atomic_write(root / "stats.yaml", write_stats)
    return written


def write_pdebench(
    path: str | Path,
    datasets: dict[str, np.ndarray],
    attrs: dict[str, float] | None = None,
) -> Path:
    """Write ``datasets`` (name -> array) and root ``attrs`` to one PDEBench-style file."""

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w", libver=HDF5_LIBVER) as f:
            for key, value in (attrs or {}).items():
                f.attrs[key] = value
            for key, value in datasets.items():
                create_checked_dataset(f, key, np.asarray(value, dtype=np.float32))

    return atomic_write(path, write)
