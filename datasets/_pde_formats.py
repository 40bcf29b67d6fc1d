"""PDE file formats: PDEBench (single arrays and per-seed groups) and The Well.

Each parser opens a file once and reads shapes, attributes and coordinates only (never the field
values), returning a :class:`_FileInfo` that says where every field is stored. Every failure is a
:class:`PDEFormatError` (a ``ValueError``) whose message starts with the file's path and names the
data set. The layouts are described in :mod:`gtlib.datasets.pde`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from gtlib.io import HDF5_ERRORS, hdf5_member, read_hdf5

_CFD_NAMES = ("density", "pressure", "Vx", "Vy", "Vz")
_NS_NAMES = ("velocity", "particles", "force")
_COORD_NAMES = ("x-coordinate", "y-coordinate", "z-coordinate")


class PDEFormatError(ValueError):
    """An HDF5 file that is not a readable PDEBench / The Well file (message names the file)."""


@dataclass(frozen=True)
class _Field:
    """Where and how one physical field is stored.

    Stored shape: ``[N if sample_axis] [T if time_axis] [S_d for d where dim_varying[d]]
    [*comp_shape]``; ``channels = prod(comp_shape)``.
    """

    name: str
    key: str
    sample_axis: bool
    time_axis: bool
    dim_varying: tuple[bool, ...]
    comp_shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return int(np.prod(self.comp_shape, dtype=np.int64))


@dataclass
class _FileInfo:
    path: str
    layout: str
    fields: dict[str, _Field]
    n_samples: int
    n_times: int
    spatial_shape: tuple[int, ...]
    sample_keys: list[str] | None = None
    coords: list[np.ndarray | None] = field(default_factory=list)
    time: np.ndarray | None = None  # [T] or [N, T]
    steady_fields: tuple[str, ...] | None = None  # default (input, target) split of steady files
    default_targets: tuple[str, ...] | None = None


def _err(path: str | os.PathLike, msg: str) -> PDEFormatError:
    return PDEFormatError(f"{os.fspath(path)}: {msg}")


def _dataset(path: str, node: Any, what: str, kinds: str = "f") -> h5py.Dataset:
    """``node`` checked to be a data set with a real dtype (``kinds``: numpy dtype kinds)."""
    if not isinstance(node, h5py.Dataset):
        raise _err(path, f"{what!r} is a {type(node).__name__}, not a dataset")
    if node.dtype.kind not in kinds:
        expected = "real floating point" if kinds == "f" else "real numbers"
        raise _err(path, f"dataset {what!r} has dtype {node.dtype}, expected {expected}")
    return node


def _finite(path: str, values: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(values).all():
        raise _err(path, f"dataset {what!r} holds NaN or infinite values")
    return values


def _as_str_list(value: Any) -> list[str]:
    if isinstance(value, (str, bytes)):
        value = [value]
    return [v.decode() if isinstance(v, bytes) else str(v) for v in np.asarray(value).ravel()]


def _read_coord(path: str, node: Any, size: int, what: str) -> np.ndarray | None:
    if node is None:
        return None
    node = _dataset(path, node, what, "iuf")
    arr = _finite(path, np.asarray(read_hdf5(node), dtype=np.float64), what)
    if arr.ndim == 2:  # sample-varying coordinates: the first sample's
        arr = arr[0]
    arr = arr.ravel()
    if arr.shape[0] != size:
        raise _err(path, f"coordinate {what!r} has {arr.shape[0]} entries, the grid has {size}")
    return arr


def _read_time(path: str, node: Any, n_times: int) -> np.ndarray | None:
    """Time coordinate ``[T]`` or ``[N, T]``; PDEBench 1D stores ``T + 1`` entries (drop last)."""
    if node is None:
        return None
    what = node.name
    node = _dataset(path, node, what, "iuf")
    if node.ndim not in (1, 2) or node.shape[-1] < n_times:
        return None
    values = read_hdf5(node, (Ellipsis, slice(None, n_times)))
    return _finite(path, np.asarray(values, dtype=np.float64), what)


# ---------------------------------------------------------------------------------------------
# layout parsers: open once, read shapes and attrs only
# ---------------------------------------------------------------------------------------------


def _well_steady_times(f: h5py.File) -> int:
    """Steady files may omit dimensions/time: T of the first time-varying field, else 1."""
    for order in range(3):
        group = hdf5_member(f, f"t{order}_fields")
        for name in _as_str_list(group.attrs.get("field_names", [])) if group else []:
            node = hdf5_member(group, name)
            if isinstance(node, h5py.Dataset) and bool(node.attrs.get("time_varying", False)):
                return int(node.shape[1 if node.attrs.get("sample_varying") else 0])
    return 1


def _well_dims(path: str, f: h5py.File) -> tuple[h5py.Group, list[str], tuple[int, ...]]:
    """The ``dimensions`` group, the spatial dimension names and the grid shape."""
    try:
        n_dims = int(f.attrs["n_spatial_dims"])
        dims = f["dimensions"]
        names = _as_str_list(dims.attrs["spatial_dims"])
    except KeyError as exc:
        raise _err(path, f"The Well file lacks required metadata ({exc})") from None
    if len(names) != n_dims:
        raise _err(path, f"n_spatial_dims={n_dims} but spatial_dims={names}")
    if not isinstance(dims, h5py.Group):
        raise _err(path, f"'dimensions' is a {type(dims).__name__}, not a group")
    spatial = []
    for d in names:
        if d not in dims:
            raise _err(path, f"dimensions/{d} is missing")
        spatial.append(int(_dataset(path, dims[d], f"dimensions/{d}", "iuf").shape[-1]))
    return dims, names, tuple(spatial)


def _well_field(
    path: str,
    group: h5py.Group,
    name: str,
    order: int,
    grid: tuple[int, int, tuple[int, ...]],
) -> tuple[_Field, int]:
    """One field of ``t{order}_fields`` checked against its flags; ``grid`` is ``(n_samples,
    n_times, spatial_shape)`` with ``n_samples = -1`` when unknown (then read off this field)."""
    n_samples, n_times, spatial_shape = grid
    n_dims = len(spatial_shape)
    what = f"t{order}_fields/{name}"
    if name not in group:
        raise _err(
            path, f"{what} is listed in field_names but missing; stored: {sorted(group.keys())}"
        )
    ds = _dataset(path, group[name], what)
    try:
        dv = tuple(bool(v) for v in np.asarray(ds.attrs["dim_varying"]).ravel())
        sv = bool(ds.attrs["sample_varying"])
        tv = bool(ds.attrs["time_varying"])
    except KeyError as exc:
        raise _err(path, f"{what} lacks attribute {exc}") from None
    if len(dv) != n_dims:
        raise _err(path, f"{what}: dim_varying has {len(dv)} flags, not {n_dims}")
    shape = tuple(ds.shape)
    if sv and n_samples < 0:
        n_samples = shape[0]
    comp = (n_dims,) * order
    expected = (
        ((n_samples,) if sv else ())
        + ((n_times,) if tv else ())
        + tuple(s for s, v in zip(spatial_shape, dv) if v)
        + comp
    )
    if shape != expected:
        raise _err(path, f"{what} has shape {shape}, expected {expected} from its flags")
    return _Field(name, what, sv, tv, dv, comp), n_samples


def _well_fields(
    path: str, f: h5py.File, grid: tuple[int, int, tuple[int, ...]]
) -> tuple[dict[str, _Field], int]:
    """Every field of ``t0_fields``/``t1_fields``/``t2_fields`` and the number of trajectories."""
    n_samples, n_times, spatial_shape = grid
    fields: dict[str, _Field] = {}
    for order in range(3):
        group = hdf5_member(f, f"t{order}_fields")
        if group is None:
            continue
        for name in _as_str_list(group.attrs.get("field_names", [])):
            fl, n_samples = _well_field(
                path, group, name, order, (n_samples, n_times, spatial_shape)
            )
            if name in fields:
                raise _err(path, f"field {name!r} appears twice")
            fields[name] = fl
    if not fields:
        raise _err(path, "The Well file has no fields in t0_fields/t1_fields/t2_fields")
    if n_samples < 0:
        raise _err(path, "cannot tell the number of trajectories (no n_trajectories attr)")
    return fields, n_samples


def _parse_well(path: str, f: h5py.File) -> _FileInfo:
    dims, names, spatial_shape = _well_dims(path, f)
    time_node = hdf5_member(dims, "time")
    if time_node is not None:
        time_node = _dataset(path, time_node, "dimensions/time", "iuf")
        n_times = int(time_node.shape[-1])
    else:
        n_times = _well_steady_times(f)
    n_samples = int(f.attrs.get("n_trajectories", -1))
    fields, n_samples = _well_fields(path, f, (n_samples, n_times, spatial_shape))
    coords = [
        _read_coord(path, dims[d], s, f"dimensions/{d}") for d, s in zip(names, spatial_shape)
    ]
    info = _FileInfo(path, "well", fields, n_samples, n_times, spatial_shape, coords=coords)
    info.time = _read_time(path, time_node, n_times)
    if "input_fields" in f.attrs and "target_fields" in f.attrs:
        info.steady_fields = tuple(_as_str_list(f.attrs["input_fields"]))
        info.default_targets = tuple(_as_str_list(f.attrs["target_fields"]))
    return info


_PDEBENCH_NAMES = {
    "tensor", "nu", "velocity", "particles", "force", "t", "t-coordinate",
    *_CFD_NAMES, *_COORD_NAMES,
}  # fmt: skip


def _check_optional_names(path: str, f: h5py.File, spatial: tuple[int, ...]) -> None:
    """Refuse a PDEBench file whose coordinates are absent while unknown names are present.

    Coordinates and time are optional (absent: a unit grid and step indices), so a renamed one
    (or one whose name a corrupt byte changed) would otherwise pass silently as a default grid.
    """
    wanted = [*_COORD_NAMES[: len(spatial)], "t-coordinate"]
    missing = [name for name in wanted if name not in f]
    if "t" in f and "t-coordinate" in missing:
        missing.remove("t-coordinate")
    unknown = sorted(set(f.keys()) - _PDEBENCH_NAMES)
    if missing and unknown:
        raise _err(
            path,
            f"unrecognised data set(s) {unknown} while {missing} is missing (renamed or "
            "corrupt?); PDEBench files name their data sets "
            f"{sorted(_PDEBENCH_NAMES)}",
        )


class _PDEBenchReader:
    """The named data sets of one PDEBench file, each checked for a real dtype when opened."""

    def __init__(self, path: str, f: h5py.File) -> None:
        self.path, self.f = path, f

    def __call__(self, name: str) -> h5py.Dataset | None:
        node = hdf5_member(self.f, name)
        if node is None:
            return None
        coordinate = name in _COORD_NAMES or name in ("t-coordinate", "t")
        return _dataset(self.path, node, name, "iuf" if coordinate else "f")


# what a PDEBench layout parser finds: fields, N, T, spatial shape, steady (inputs, targets)
_PDEBenchLayout = tuple[
    dict[str, _Field], int, int, tuple[int, ...], tuple[str, ...] | None, tuple[str, ...] | None
]


def _pdebench_tensor(path: str, tensor: h5py.Dataset, nu: h5py.Dataset | None) -> _PDEBenchLayout:
    """``tensor [N, T, *S]``, with Darcy's ``nu [N, *S]`` when present."""
    if tensor.ndim < 3:
        raise _err(path, f"'tensor' has shape {tensor.shape}; expected [N, T, *spatial]")
    nd = tensor.ndim - 2
    fields = {"tensor": _Field("tensor", "tensor", True, True, (True,) * nd, ())}
    n, n_times, spatial = tensor.shape[0], tensor.shape[1], tuple(tensor.shape[2:])
    if nu is None:
        return fields, n, n_times, spatial, None, None
    if tuple(nu.shape) != (n, *spatial):
        raise _err(
            path,
            f"'nu' has shape {nu.shape}, 'tensor' {tensor.shape}: expected nu "
            f"[{n}, {', '.join(map(str, spatial))}]",
        )
    fields["nu"] = _Field("nu", "nu", True, False, (True,) * nd, ())
    return fields, n, n_times, spatial, ("nu",), ("tensor",)


def _pdebench_cfd(path: str, ds: _PDEBenchReader, names: list[str]) -> _PDEBenchLayout:
    """Compressible CFD: ``density, pressure, Vx(, Vy, Vz) [N, T, *S]``."""
    ref = ds(names[0]).shape
    if len(ref) < 3:
        raise _err(path, f"{names[0]!r} has shape {ref}; expected [N, T, *spatial]")
    fields = {}
    for k in names:
        if ds(k).shape != ref:
            raise _err(path, f"{k!r} has shape {ds(k).shape} but {names[0]!r} has {ref}")
        fields[k] = _Field(k, k, True, True, (True,) * (len(ref) - 2), ())
    return fields, ref[0], ref[1], tuple(ref[2:]), None, None


def _pdebench_ns(path: str, ds: _PDEBenchReader, vel: h5py.Dataset) -> _PDEBenchLayout:
    """Incompressible Navier-Stokes: ``velocity [N, T, *S, D]``, optional ``particles`` and
    ``force``."""
    if vel.ndim < 4:
        raise _err(path, f"'velocity' has shape {vel.shape}; expected [N, T, *spatial, D]")
    n, n_times, spatial = vel.shape[0], vel.shape[1], tuple(vel.shape[2:-1])
    flags = (True,) * len(spatial)
    fields = {"velocity": _Field("velocity", "velocity", True, True, flags, (vel.shape[-1],))}
    part, force = ds("particles"), ds("force")
    if part is not None:
        if tuple(part.shape[:-1]) != (n, n_times, *spatial) or part.ndim != vel.ndim:
            raise _err(path, f"'particles' has shape {part.shape}, 'velocity' {vel.shape}")
        fields["particles"] = _Field("particles", "particles", True, True, flags, (part.shape[-1],))
    if force is not None:
        if tuple(force.shape[:-1]) != (n, *spatial) or force.ndim != vel.ndim - 1:
            raise _err(path, f"'force' has shape {force.shape}, 'velocity' {vel.shape}")
        fields["force"] = _Field("force", "force", True, False, flags, (force.shape[-1],))
    return fields, n, n_times, spatial, None, None


def _pdebench_layout(path: str, f: h5py.File, ds: _PDEBenchReader) -> _PDEBenchLayout:
    tensor, nu = ds("tensor"), ds("nu")
    if tensor is not None:
        return _pdebench_tensor(path, tensor, nu)
    cfd = [k for k in _CFD_NAMES if ds(k) is not None]
    if cfd:
        return _pdebench_cfd(path, ds, cfd)
    vel = ds("velocity")
    if vel is not None:
        return _pdebench_ns(path, ds, vel)
    raise _err(
        path,
        "unrecognised layout: no The Well groups (t0_fields) and none of the PDEBench "
        f"datasets tensor/nu/density/Vx/velocity; top-level keys: {sorted(f.keys())}",
    )


def _parse_pdebench(path: str, f: h5py.File) -> _FileInfo:
    ds = _PDEBenchReader(path, f)
    fields, n, n_times, spatial, steady_in, steady_out = _pdebench_layout(path, f, ds)
    _check_optional_names(path, f, spatial)
    coords = [_read_coord(path, ds(c), s, c) for c, s in zip(_COORD_NAMES, spatial)]
    time = _read_time(path, ds("t-coordinate"), n_times)
    if time is None:
        time = _read_time(path, ds("t"), n_times)
    info = _FileInfo(path, "pdebench", fields, int(n), int(n_times), spatial, coords=coords)
    info.time = time
    info.steady_fields, info.default_targets = steady_in, steady_out
    return info


def _parse_seeds(path: str, f: h5py.File, groups: list[str]) -> _FileInfo:
    shape = None
    for g in groups:
        node = hdf5_member(f[g], "data")
        if node is None:
            raise _err(path, f"group {g!r} has no 'data' dataset; keys: {sorted(f[g].keys())}")
        node = _dataset(path, node, f"{g}/data")
        if shape is None:
            shape = tuple(node.shape)
            if len(shape) < 3:
                raise _err(path, f"{g}/data has shape {shape}; expected [T, *spatial, C]")
        elif tuple(node.shape) != shape:
            raise _err(path, f"{g}/data has shape {node.shape} but {groups[0]}/data has {shape}")
    assert shape is not None
    n_times, spatial = shape[0], shape[1:-1]
    nd = len(spatial)
    fields = {"data": _Field("data", "data", False, True, (True,) * nd, (shape[-1],))}
    grid = hdf5_member(f[groups[0]], "grid")
    coords: list[np.ndarray | None] = [None] * nd
    time = None
    if grid is not None and not isinstance(grid, h5py.Group):
        raise _err(path, f"'{groups[0]}/grid' is a {type(grid).__name__}, not a group")
    if isinstance(grid, h5py.Group):
        coords = [
            _read_coord(path, hdf5_member(grid, c), s, f"{groups[0]}/grid/{c}")
            for c, s in zip("xyz", spatial)
        ]
        time = _read_time(path, hdf5_member(grid, "t"), n_times)
    info = _FileInfo(
        path, "pdebench-seeds", fields, len(groups), n_times, tuple(spatial), sample_keys=groups
    )
    info.coords, info.time = coords, time
    return info


def _parse_file(path: str) -> _FileInfo:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    if os.path.isdir(path):
        raise _err(path, "is a directory, not an HDF5 file")
    try:
        is_hdf5 = h5py.is_hdf5(path)
    except HDF5_ERRORS as exc:
        raise _err(path, f"cannot read the file: {exc}") from exc
    if not is_hdf5:
        raise _err(path, "not an HDF5 file")
    try:
        with h5py.File(path, "r") as f:
            if "t0_fields" in f or "t1_fields" in f or "t2_fields" in f:
                return _parse_well(path, f)
            groups = sorted(k for k in f.keys() if isinstance(f[k], h5py.Group))
            if groups and any(isinstance(hdf5_member(f[g], "data"), h5py.Dataset) for g in groups):
                return _parse_seeds(path, f, groups)
            return _parse_pdebench(path, f)
    except PDEFormatError:
        raise
    except HDF5_ERRORS as exc:
        raise _err(
            path,
            f"cannot read the HDF5 file (truncated or corrupt?): {type(exc).__name__}: {exc}",
        ) from exc


def _resolve_files(path: str | os.PathLike, split: str | None) -> tuple[list[str], Path | None]:
    """Files to read and, for The Well, the dataset folder ``<base>/<name>`` (or None)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"{p}: no such file or directory")
    if p.is_file():
        if split is not None:
            raise ValueError(f"split={split!r} given but path {p} is a file, not a dataset folder")
        return [str(p)], None
    root = None
    if split is not None:
        if not isinstance(split, str):
            raise TypeError(f"split must be a str, got {type(split).__name__}")
        root, p = p, p / "data" / split
        if not p.is_dir():
            raise FileNotFoundError(f"{p}: no split folder {split!r} under {root}")
    elif (p / "data").is_dir():
        raise ValueError(
            f"{p} looks like a The Well dataset folder; pass split='train'|'valid'|'test'"
        )
    files = sorted(str(q) for q in p.iterdir() if q.suffix in (".h5", ".hdf5") and q.is_file())
    if not files:
        raise FileNotFoundError(f"{p}: no .h5/.hdf5 files in this folder")
    return files, root
