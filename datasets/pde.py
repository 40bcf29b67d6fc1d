"""Lazy reader for PDE trajectories stored in HDF5: PDEBench files and The Well.

Supported layouts (detected from the file contents, never from the name):

``"pdebench"`` -- one array per quantity, samples first::

    tensor [N, T, *S]                    1D/2D advection, Burgers, diffusion-sorption, ...
    nu [N, *S] + tensor [N, 1, *S]       Darcy flow: steady, input ``nu`` -> target ``tensor``
    density, pressure, Vx(, Vy, Vz) [N, T, *S]          compressible CFD
    velocity [N, T, *S, 2], force [N, *S, 2], particles [N, T, *S, C], t [N, T]
                                         incompressible Navier-Stokes
    x-coordinate, y-coordinate, z-coordinate, t-coordinate (optional coordinates)

``"pdebench-seeds"`` -- one group per trajectory: ``0000/data [T, *S, C]`` and
``0000/grid/{x, y, z, t}``; the single field is called ``"data"``.

``"well"`` -- The Well: root attrs ``n_spatial_dims``; ``dimensions/`` (attr ``spatial_dims``,
datasets ``time`` and one per spatial dim); ``t0_fields/``, ``t1_fields/``, ``t2_fields/`` with attr
``field_names`` and one dataset per field with attrs ``dim_varying``, ``sample_varying`` and
``time_varying``; an axis whose flag is False is absent from the stored shape. Vectors carry ``D``
trailing components, rank-2 tensors ``D x D`` (flattened row-major into ``D*D`` channels).
Fields that do not vary along a spatial dim are broadcast along it.

Items
-----
Time-dependent data gives windows of ``n_steps_input`` input steps followed by ``n_steps_output``
target steps, consecutive steps ``time_stride`` indices apart (as The Well's ``n_steps_input``,
``n_steps_output`` and ``dt_stride``): ``T - (n_steps_input + n_steps_output - 1) * time_stride``
windows per trajectory. With ``all2all=True`` every pair of snapshots ``(t_i, t_j)``, ``i <= j``, is
an item (Poseidon's all2all training). Steady data (Darcy, or only time-invariant fields selected)
gives one item per sample.

Normalisation
-------------
``normalize=True`` standardises every field per channel (the same mean/std for all time steps):
``(v - mean) / std``, with ``std == 0`` replaced by 1. The statistics come from ``stats`` (a dict
``{"mean": {field: value or list}, "std": {...}}``, or the path of such a yaml file), else from
The Well's ``<name>/stats.yaml`` found next to ``data/``, else they are computed in one streaming
pass (float64, chunked reads) over the training trajectories and cached as a yaml file next to the
data (or under ``$GTLIB_CACHE_DIR`` / ``~/.cache/gtlib`` when that folder is not writable). The
cache is keyed by the files' sizes and modification times, the fields and the trajectories used, so
a changed file is summarised again. "Training trajectories" are: for a Well split ``valid``/``test``
with a sibling ``train`` folder, the files in ``train``; otherwise the trajectories this dataset
selects (for a PDEBench file split with ``samples=``, build the training set first and pass
``stats=train_set.stats`` to the others). Use :meth:`PDEDataset.denormalize_target` to bring
predictions back to physical units.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import yaml
from torch.utils.data import Dataset
from torch_geometric.data import Data

from gtlib.io import HDF5_ERRORS, atomic_write_text, hdf5_member, read_hdf5

__all__ = ["PDEDataset", "PDEFormatError"]

_STATS_VERSION = 1
_CHUNK_ELEMENTS = 1 << 22  # elements per read in the statistics pass
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


def _parse_well(path: str, f: h5py.File) -> _FileInfo:
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
    spatial_shape = tuple(spatial)
    n_samples = int(f.attrs.get("n_trajectories", -1))
    time_node = hdf5_member(dims, "time")
    if time_node is not None:
        time_node = _dataset(path, time_node, "dimensions/time", "iuf")
        n_times = int(time_node.shape[-1])
    else:
        n_times = _well_steady_times(f)
    fields: dict[str, _Field] = {}
    for order in range(3):
        gname = f"t{order}_fields"
        if gname not in f:
            continue
        group = f[gname]
        for name in _as_str_list(group.attrs.get("field_names", [])):
            if name not in group:
                raise _err(
                    path,
                    f"{gname}/{name} is listed in field_names but missing; "
                    f"stored: {sorted(group.keys())}",
                )
            ds = _dataset(path, group[name], f"{gname}/{name}")
            try:
                dv = tuple(bool(v) for v in np.asarray(ds.attrs["dim_varying"]).ravel())
                sv = bool(ds.attrs["sample_varying"])
                tv = bool(ds.attrs["time_varying"])
            except KeyError as exc:
                raise _err(path, f"{gname}/{name} lacks attribute {exc}") from None
            if len(dv) != n_dims:
                raise _err(path, f"{gname}/{name}: dim_varying has {len(dv)} flags, not {n_dims}")
            comp = (n_dims,) * order
            expected = (
                ((n_samples,) if sv else ())
                + ((n_times,) if tv else ())
                + tuple(s for s, v in zip(spatial_shape, dv) if v)
                + comp
            )
            shape = tuple(ds.shape)
            if sv and n_samples < 0:
                n_samples = shape[0]
                expected = (n_samples,) + expected[1:]
            if shape != expected:
                raise _err(
                    path, f"{gname}/{name} has shape {shape}, expected {expected} from its flags"
                )
            if name in fields:
                raise _err(path, f"field {name!r} appears twice")
            fields[name] = _Field(name, f"{gname}/{name}", sv, tv, dv, comp)
    if not fields:
        raise _err(path, "The Well file has no fields in t0_fields/t1_fields/t2_fields")
    if n_samples < 0:
        raise _err(path, "cannot tell the number of trajectories (no n_trajectories attr)")
    coords = [_read_coord(path, dims[d], s, f"dimensions/{d}") for d, s in zip(names, spatial)]
    time = _read_time(path, time_node, n_times)
    info = _FileInfo(path, "well", fields, n_samples, n_times, spatial_shape, coords=coords)
    info.time = time
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


def _parse_pdebench(path: str, f: h5py.File) -> _FileInfo:
    def ds(name: str) -> h5py.Dataset | None:
        node = hdf5_member(f, name)
        if node is None:
            return None
        coordinate = name in _COORD_NAMES or name in ("t-coordinate", "t")
        return _dataset(path, node, name, "iuf" if coordinate else "f")

    fields: dict[str, _Field] = {}
    steady_in: tuple[str, ...] | None = None
    steady_out: tuple[str, ...] | None = None
    tensor, nu = ds("tensor"), ds("nu")
    if tensor is not None:
        if tensor.ndim < 3:
            raise _err(path, f"'tensor' has shape {tensor.shape}; expected [N, T, *spatial]")
        nd = tensor.ndim - 2
        fields["tensor"] = _Field("tensor", "tensor", True, True, (True,) * nd, ())
        n, n_times, spatial = tensor.shape[0], tensor.shape[1], tuple(tensor.shape[2:])
        if nu is not None:
            if tuple(nu.shape) != (n, *spatial):
                raise _err(
                    path,
                    f"'nu' has shape {nu.shape}, 'tensor' {tensor.shape}: expected nu "
                    f"[{n}, {', '.join(map(str, spatial))}]",
                )
            fields["nu"] = _Field("nu", "nu", True, False, (True,) * nd, ())
            steady_in, steady_out = ("nu",), ("tensor",)
    elif any(ds(k) is not None for k in _CFD_NAMES):
        names = [k for k in _CFD_NAMES if ds(k) is not None]
        ref = ds(names[0]).shape
        if len(ref) < 3:
            raise _err(path, f"{names[0]!r} has shape {ref}; expected [N, T, *spatial]")
        for k in names:
            if ds(k).shape != ref:
                raise _err(path, f"{k!r} has shape {ds(k).shape} but {names[0]!r} has {ref}")
            fields[k] = _Field(k, k, True, True, (True,) * (len(ref) - 2), ())
        n, n_times, spatial = ref[0], ref[1], tuple(ref[2:])
    elif ds("velocity") is not None:
        vel = ds("velocity")
        if vel.ndim < 4:
            raise _err(path, f"'velocity' has shape {vel.shape}; expected [N, T, *spatial, D]")
        n, n_times, spatial = vel.shape[0], vel.shape[1], tuple(vel.shape[2:-1])
        nd = len(spatial)
        fields["velocity"] = _Field(
            "velocity", "velocity", True, True, (True,) * nd, (vel.shape[-1],)
        )
        part, force = ds("particles"), ds("force")
        if part is not None:
            if tuple(part.shape[:-1]) != (n, n_times, *spatial) or part.ndim != vel.ndim:
                raise _err(path, f"'particles' has shape {part.shape}, 'velocity' {vel.shape}")
            fields["particles"] = _Field(
                "particles", "particles", True, True, (True,) * nd, (part.shape[-1],)
            )
        if force is not None:
            if tuple(force.shape[:-1]) != (n, *spatial) or force.ndim != vel.ndim - 1:
                raise _err(path, f"'force' has shape {force.shape}, 'velocity' {vel.shape}")
            fields["force"] = _Field(
                "force", "force", True, False, (True,) * nd, (force.shape[-1],)
            )
    else:
        raise _err(
            path,
            "unrecognised layout: no The Well groups (t0_fields) and none of the PDEBench "
            f"datasets tensor/nu/density/Vx/velocity; top-level keys: {sorted(f.keys())}",
        )
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


def _file_stamp(path: str) -> list[Any]:
    st = os.stat(path)
    return [os.path.abspath(path), st.st_size, st.st_mtime_ns]


def _cache_dir_for(data_dir: str) -> str:
    if os.access(data_dir, os.W_OK):
        return data_dir
    base = os.environ.get("GTLIB_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "gtlib"
    )
    out = os.path.join(base, "pde_stats")
    os.makedirs(out, exist_ok=True)
    return out


def _atomic_yaml(path: str, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


class _Welford:
    """Per-channel mean/variance merged chunk by chunk (Chan et al.), in float64."""

    def __init__(self, channels: int) -> None:
        self.n = 0
        self.mean = np.zeros(channels)
        self.m2 = np.zeros(channels)

    def update(self, values: np.ndarray) -> None:
        v = values.reshape(-1, self.mean.shape[0]).astype(np.float64)
        nb = v.shape[0]
        if nb == 0:
            return
        mb = v.mean(axis=0)
        m2b = ((v - mb) ** 2).sum(axis=0)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.n = n


class PDEDataset(Dataset):
    """PDE trajectories from PDEBench or The Well HDF5 files, read lazily.

    Args:
        path: a PDEBench file (``.hdf5`` single arrays or ``.h5`` per-seed groups), a The Well
            ``.hdf5`` file, a folder of such files (a Well split folder), or a Well dataset
            folder ``<base>/<name>`` together with ``split``.
        split: ``"train"``, ``"valid"`` or ``"test"`` to read ``<path>/data/<split>``.
        input_fields: fields fed to the model. Default: every time-varying field (The Well,
            PDEBench); for steady data (no field with more than one time step) the root attrs
            ``input_fields`` / ``target_fields`` when present, else the time-invariant fields
            (``nu`` for PDEBench Darcy) with the length-1 time-axis fields as targets.
            Time-invariant fields named here are appended to ``x`` once, as constant channels.
        target_fields: fields to predict; defaults as ``input_fields`` (``["tensor"]`` for Darcy).
            For steady data giving only one of the two lists makes the other "all other fields".
        n_steps_input, n_steps_output: steps per window (time-dependent data).
        time_stride: index distance between consecutive steps of a window (and between the
            snapshots used by ``all2all``).
        all2all: items are all snapshot pairs ``(t_i, t_j)``, ``i <= j``; needs one input and one
            output step.
        max_lead_steps: with ``all2all``, keep pairs with ``j - i <= max_lead_steps`` snapshots.
        normalize: standardise every field per channel (see the module docstring).
        stats: statistics to use: a dict ``{"mean": {field: ...}, "std": {field: ...}}`` or the
            path of a yaml file holding one. Implies nothing unless ``normalize=True``.
        subsample: keep every ``s``-th grid point per spatial dim (int, or one per dim).
        output: ``"grid"`` (dicts of channel-first tensors) or ``"data"`` (PyG ``Data``).
        samples: trajectories to use (a slice or indices over all trajectories of all files, in
            file order).

    Items (``output="grid"``): ``{"x": [C_in, *S], "y": [C_out, *S], "lead_time": [],
    "index": int}``, float32. Channels are step-major: channel ``s * C_f + c`` is field channel
    ``c`` at window step ``s``, where the field channels are the selected fields in order (a
    vector field contributes ``D`` channels, a rank-2 tensor ``D*D``). Constant input fields
    follow the stepped channels. ``lead_time`` is the physical time from the last input step to
    the first target step (index distance when the file has no time coordinate); 0 for steady
    data. ``output="data"``: ``Data(pos=[P, d], x=[P, C_in], y=[P, C_out], lead_time=[1],
    index=[1])`` with ``P = prod(S)`` points in row-major (``ij``) order.

    Shapes:
        - ``x``: ``[n_steps_input * C_f_in + C_const, *spatial_shape]``
        - ``y``: ``[n_steps_output * C_f_out, *spatial_shape]``
        - batched by ``DataLoader``: ``[B, C, *spatial_shape]`` and ``lead_time [B]``

    Attributes:
        layout: ``"pdebench"``, ``"pdebench-seeds"`` or ``"well"``.
        fields: every field in the files with its channel count.
        input_fields, target_fields, constant_fields: the selected field names.
        spatial_shape: grid shape after subsampling; n_spatial_dims: its length.
        coords: one coordinate array per spatial dim (after subsampling).
        time: time coordinate of the first trajectory (step indices when absent).
        in_channels, out_channels: channel counts of ``x`` and ``y``.
        stats: ``{"mean": {...}, "std": {...}}`` per field (lists of per-channel values) or None.

    File handles are opened on first access in each process (keyed by ``os.getpid()``) and
    dropped on pickling, so the dataset works with ``DataLoader(num_workers>0)``. Call
    :meth:`close` (or use the dataset as a context manager) to release this process's handles,
    e.g. before rewriting a file.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        split: str | None = None,
        input_fields: Sequence[str] | None = None,
        target_fields: Sequence[str] | None = None,
        n_steps_input: int = 1,
        n_steps_output: int = 1,
        time_stride: int = 1,
        all2all: bool = False,
        max_lead_steps: int | None = None,
        normalize: bool = False,
        stats: str | os.PathLike | Mapping[str, Any] | None = None,
        subsample: int | Sequence[int] = 1,
        output: str = "grid",
        samples: slice | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        for name, val in (
            ("n_steps_input", n_steps_input),
            ("n_steps_output", n_steps_output),
            ("time_stride", time_stride),
        ):
            if isinstance(val, bool) or not isinstance(val, (int, np.integer)):
                raise TypeError(f"{name} must be an int, got {type(val).__name__}")
            if val < 1:
                raise ValueError(f"{name} must be >= 1, got {val}")
        if output not in ("grid", "data"):
            raise ValueError(f"output must be 'grid' or 'data', got {output!r}")
        if all2all and (n_steps_input != 1 or n_steps_output != 1):
            raise ValueError(
                "all2all=True pairs single snapshots: n_steps_input and n_steps_output must be 1, "
                f"got {n_steps_input} and {n_steps_output}"
            )
        if max_lead_steps is not None:
            if not all2all:
                raise ValueError("max_lead_steps is only meaningful with all2all=True")
            if int(max_lead_steps) < 0:
                raise ValueError(f"max_lead_steps must be >= 0, got {max_lead_steps}")
        self.n_steps_input = int(n_steps_input)
        self.n_steps_output = int(n_steps_output)
        self.time_stride = int(time_stride)
        self.all2all = bool(all2all)
        self.max_lead_steps = None if max_lead_steps is None else int(max_lead_steps)
        self.output = output
        self.normalize = bool(normalize)

        files, self._well_root = _resolve_files(path, split)
        self.path = os.fspath(path)
        self.split = split
        self._infos = [_parse_file(p) for p in files]
        first = self._infos[0]
        self.layout = first.layout
        for info in self._infos[1:]:
            if info.layout != first.layout:
                raise _err(info.path, f"layout {info.layout!r} differs from {first.path}")
            if info.spatial_shape != first.spatial_shape:
                raise _err(
                    info.path,
                    f"spatial shape {info.spatial_shape} differs from {first.spatial_shape} "
                    f"in {first.path}",
                )
            mine = {k: (v.channels, v.time_axis) for k, v in info.fields.items()}
            theirs = {k: (v.channels, v.time_axis) for k, v in first.fields.items()}
            if mine != theirs:
                raise _err(info.path, f"fields {mine} differ from {theirs} in {first.path}")
        self.fields = {k: v.channels for k, v in first.fields.items()}
        self._select_fields(first, input_fields, target_fields)

        nd = len(first.spatial_shape)
        self._sub = self._parse_subsample(subsample, nd)
        self.n_spatial_dims = nd
        self.spatial_shape = tuple(-(-s // k) for s, k in zip(first.spatial_shape, self._sub))
        self.coords = [
            (c if c is not None else np.linspace(0.0, 1.0, s))[::k]
            for c, s, k in zip(first.coords, first.spatial_shape, self._sub)
        ]
        if first.time is not None:
            self.time = np.asarray(first.time[0] if first.time.ndim == 2 else first.time)
        else:
            self.time = np.arange(first.n_times, dtype=np.float64)

        self._build_index(samples)
        c_in = sum(self.fields[f] for f in self.input_fields)
        c_const = sum(self.fields[f] for f in self.constant_fields)
        c_out = sum(self.fields[f] for f in self.target_fields)
        n_in, n_out = (
            (1, 1)
            if (self.steady or self.all2all)
            else (
                self.n_steps_input,
                self.n_steps_output,
            )
        )
        self.in_channels = n_in * c_in + c_const
        self.out_channels = n_out * c_out

        self.stats: dict[str, dict[str, list[float]]] | None = None
        self.stats_path: str | None = None
        if stats is not None or self.normalize:
            self.stats = self._load_or_compute_stats(stats)
        self._norm = self._norm_arrays() if (self.normalize and self.stats) else {}
        self._handles: dict[int, h5py.File] = {}
        self._pid: int | None = None

    # -------------------------------------------------------------------------------------
    # construction helpers
    # -------------------------------------------------------------------------------------

    def _select_fields(
        self,
        info: _FileInfo,
        input_fields: Sequence[str] | None,
        target_fields: Sequence[str] | None,
    ) -> None:
        avail = list(info.fields)

        def check(names: Sequence[str] | None, arg: str) -> list[str] | None:
            if names is None:
                return None
            if isinstance(names, str):
                names = [names]
            names = list(names)
            bad = [n for n in names if n not in info.fields]
            if bad:
                raise ValueError(f"{info.path}: unknown {arg} {bad}; available fields: {avail}")
            if not names:
                raise ValueError(f"{arg} must name at least one field")
            return names

        ins, outs = check(input_fields, "input_fields"), check(target_fields, "target_fields")
        varying = [n for n, fl in info.fields.items() if fl.time_axis]
        dynamic = info.n_times > 1 and bool(varying)
        if ins is None and outs is None:
            if info.steady_fields is not None and info.default_targets is not None:
                ins, outs = list(info.steady_fields), list(info.default_targets)
            elif dynamic:
                ins, outs = list(varying), list(varying)
            elif varying and len(varying) < len(avail):
                # steady, as PDEBench Darcy: time-invariant fields in, (length-1) time-axis out
                ins, outs = [n for n in avail if n not in varying], list(varying)
            else:
                raise ValueError(
                    f"{info.path}: steady data with fields {avail}: pass input_fields and/or "
                    "target_fields (or store root attrs input_fields/target_fields)"
                )
        elif ins is None or outs is None:
            given = ins if ins is not None else outs
            assert given is not None
            if dynamic and any(info.fields[n].time_axis for n in given):
                # time-dependent: predict the time-varying inputs, or feed the targets back
                if ins is None:
                    ins = list(given)
                else:
                    outs = [n for n in given if info.fields[n].time_axis]
            else:
                rest = [n for n in avail if n not in given]
                if not rest:
                    raise ValueError(f"{info.path}: no fields left to pair with {given}")
                if ins is None:
                    ins = rest
                else:
                    outs = rest
        assert ins is not None and outs is not None
        self.steady = not (dynamic and any(info.fields[n].time_axis for n in ins + outs))
        if self.steady:
            if self.all2all:
                raise ValueError(f"{info.path}: all2all=True needs time-dependent fields")
            self.input_fields, self.constant_fields = ins, []
        else:
            const_out = [n for n in outs if not info.fields[n].time_axis]
            if const_out:
                raise ValueError(
                    f"{info.path}: target_fields {const_out} are time-invariant; "
                    "targets of time-dependent data must vary in time"
                )
            self.input_fields = [n for n in ins if info.fields[n].time_axis]
            self.constant_fields = [n for n in ins if not info.fields[n].time_axis]
        self.target_fields = outs

    @staticmethod
    def _parse_subsample(subsample: int | Sequence[int], nd: int) -> tuple[int, ...]:
        if isinstance(subsample, (int, np.integer)) and not isinstance(subsample, bool):
            sub = (int(subsample),) * nd
        elif isinstance(subsample, Sequence) and not isinstance(subsample, str):
            sub = tuple(int(s) for s in subsample)
            if len(sub) != nd:
                raise ValueError(f"subsample has {len(sub)} entries for {nd} spatial dims")
        else:
            raise TypeError(f"subsample must be an int or a sequence of ints, got {subsample!r}")
        if any(s < 1 for s in sub):
            raise ValueError(f"subsample entries must be >= 1, got {sub}")
        return sub

    def _items_per_traj(self, info: _FileInfo) -> int:
        if self.steady:
            return 1
        if self.all2all:
            k = len(self._pairs(info.n_times))
            return k
        span = (self.n_steps_input + self.n_steps_output - 1) * self.time_stride
        n = info.n_times - span
        if n <= 0:
            raise ValueError(
                f"{info.path}: trajectories have {info.n_times} steps, fewer than a window of "
                f"n_steps_input={self.n_steps_input} + n_steps_output={self.n_steps_output} "
                f"steps with time_stride={self.time_stride} ({span + 1} steps)"
            )
        return n

    def _pairs(self, n_times: int) -> np.ndarray:
        if n_times not in self._pair_cache:
            snaps = np.arange(0, n_times, self.time_stride)
            k = len(snaps)
            pairs = [
                (snaps[i], snaps[j])
                for i in range(k)
                for j in range(i, k)
                if self.max_lead_steps is None or j - i <= self.max_lead_steps
            ]
            self._pair_cache[n_times] = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        return self._pair_cache[n_times]

    def _build_index(self, samples: slice | Sequence[int] | None) -> None:
        self._pair_cache: dict[int, np.ndarray] = {}
        trajs = [(fi, s) for fi, info in enumerate(self._infos) for s in range(info.n_samples)]
        if samples is not None:
            if isinstance(samples, slice):
                trajs = trajs[samples]
            elif isinstance(samples, Sequence) or isinstance(samples, np.ndarray):
                sel = []
                for i in samples:
                    if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
                        raise TypeError(f"samples must hold ints, got {i!r}")
                    if not -len(trajs) <= i < len(trajs):
                        raise ValueError(
                            f"samples index {i} out of range for {len(trajs)} trajectories "
                            f"in {self.path}"
                        )
                    sel.append(trajs[i])
                trajs = sel
            else:
                raise TypeError(
                    f"samples must be a slice or a sequence of ints, got {type(samples).__name__}"
                )
        self._trajs = np.asarray(trajs, dtype=np.int64).reshape(-1, 2)
        per_file = [self._items_per_traj(info) for info in self._infos]
        counts = np.asarray([per_file[fi] for fi, _ in trajs], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    # -------------------------------------------------------------------------------------
    # statistics
    # -------------------------------------------------------------------------------------

    @property
    def _stat_fields(self) -> list[str]:
        names = self.input_fields + self.constant_fields + self.target_fields
        return list(dict.fromkeys(names))

    def _load_or_compute_stats(
        self, stats: str | os.PathLike | Mapping[str, Any] | None
    ) -> dict[str, dict[str, list[float]]]:
        if stats is None and self.layout == "well":
            cand = self._well_stats_yaml()
            if cand is not None:
                stats = cand
        if stats is None:
            return self._cached_stats()
        source = "stats"
        if isinstance(stats, (str, os.PathLike)):
            source = os.fspath(stats)
            if not os.path.isfile(source):
                raise FileNotFoundError(f"{source}: stats file not found")
            with open(source) as fh:
                stats = yaml.safe_load(fh)
            self.stats_path = source
        if not isinstance(stats, Mapping):
            raise TypeError(f"stats must be a dict or a yaml path, got {type(stats).__name__}")
        out: dict[str, dict[str, list[float]]] = {"mean": {}, "std": {}}
        for key in ("mean", "std"):
            if not isinstance(stats.get(key), Mapping):
                raise ValueError(f"{source}: stats need a {key!r} mapping of field -> value")
            for name in self._stat_fields:
                if name not in stats[key]:
                    raise ValueError(
                        f"{source}: stats[{key!r}] has no entry for field {name!r} "
                        f"(has {sorted(stats[key])})"
                    )
                vals = np.asarray(stats[key][name], dtype=np.float64).ravel()
                c = self.fields[name]
                if vals.size == 1:
                    vals = np.full(c, vals[0])
                if vals.size != c:
                    raise ValueError(
                        f"{source}: stats[{key!r}][{name!r}] has {vals.size} values, "
                        f"field has {c} channels"
                    )
                out[key][name] = [float(v) for v in vals]
        return out

    def _well_stats_yaml(self) -> str | None:
        roots = []
        if self._well_root is not None:
            roots.append(self._well_root)
        p = Path(self._infos[0].path).resolve()
        if p.parent.parent.name == "data":  # <base>/<name>/data/<split>/<file>
            roots.append(p.parent.parent.parent)
        for r in roots:
            cand = r / "stats.yaml"
            if cand.is_file():
                return str(cand)
        return None

    def _stats_sources(self) -> list[tuple[str, list[int] | None]]:
        """(file, sample indices or None for all) pairs holding the training trajectories."""
        if self.layout == "well":
            d = Path(self._infos[0].path).parent
            train = d.parent / "train"
            if d.name in ("valid", "test") and d.parent.name == "data" and train.is_dir():
                files = sorted(str(q) for q in train.iterdir() if q.suffix in (".h5", ".hdf5"))
                if files:
                    return [(f, None) for f in files]
        out: dict[int, list[int]] = {}
        for fi, s in self._trajs.tolist():
            out.setdefault(fi, []).append(s)
        return [(self._infos[fi].path, sorted(set(v))) for fi, v in sorted(out.items())]

    def _cached_stats(self) -> dict[str, dict[str, list[float]]]:
        sources = self._stats_sources()
        key = {
            "version": _STATS_VERSION,
            "files": [_file_stamp(p) + [s] for p, s in sources],
            "fields": self._stat_fields,
        }
        digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        first = sources[0][0]
        stem = Path(first).stem if len(sources) == 1 else Path(first).parent.name
        cache = os.path.join(
            _cache_dir_for(os.path.dirname(os.path.abspath(first))),
            f".gtlib_stats_{stem}_{digest}.yaml",
        )
        if os.path.isfile(cache):
            with open(cache) as fh:
                cached = yaml.safe_load(fh)
            if isinstance(cached, dict) and cached.get("key") == json.loads(json.dumps(key)):
                self.stats_path = cache
                return {"mean": cached["mean"], "std": cached["std"]}
        stats = self._compute_stats(sources)
        _atomic_yaml(cache, {"key": key, **stats})
        self.stats_path = cache
        return stats

    def _compute_stats(
        self, sources: list[tuple[str, list[int] | None]]
    ) -> dict[str, dict[str, list[float]]]:
        acc = {n: _Welford(self.fields[n]) for n in self._stat_fields}
        for path, sel in sources:
            info = next((i for i in self._infos if i.path == path), None) or _parse_file(path)
            try:
                with h5py.File(path, "r") as f:
                    for name in self._stat_fields:
                        fl = info.fields.get(name)
                        if fl is None:
                            raise _err(path, f"field {name!r} missing (stats pass)")
                        if info.sample_keys is not None:
                            picks = range(info.n_samples) if sel is None else sel
                            for s in picks:
                                self._accumulate(f[f"{info.sample_keys[s]}/{fl.key}"], acc[name])
                        elif fl.sample_axis:
                            idx = list(range(info.n_samples)) if sel is None else sel
                            self._accumulate(f[fl.key], acc[name], idx)
                        else:
                            self._accumulate(f[fl.key], acc[name])
            except PDEFormatError:
                raise
            except HDF5_ERRORS as exc:
                raise _err(
                    path,
                    f"read failed while computing statistics: {type(exc).__name__}: {exc}",
                ) from exc
        mean = {n: [float(v) for v in a.mean] for n, a in acc.items()}
        std = {
            n: [float(math.sqrt(max(v, 0.0) / max(a.n, 1))) for v in a.m2] for n, a in acc.items()
        }
        return {"mean": mean, "std": std}

    @staticmethod
    def _accumulate(ds: h5py.Dataset, acc: _Welford, rows: list[int] | None = None) -> None:
        """Feed ``ds`` (restricted to ``rows`` of axis 0) to ``acc`` in chunks along axis 0."""
        n0 = ds.shape[0]
        row = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)))
        step = max(1, _CHUNK_ELEMENTS // row)
        rows = list(range(n0)) if rows is None else rows
        # contiguous runs of rows, each read in chunks of `step` rows
        start = 0
        while start < len(rows):
            end = start
            while end + 1 < len(rows) and rows[end + 1] == rows[end] + 1 and end + 1 - start < step:
                end += 1
            block = np.asarray(read_hdf5(ds, slice(rows[start], rows[end] + 1)))
            acc.update(_finite(ds.file.filename, block, ds.name))
            start = end + 1

    def _norm_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        assert self.stats is not None
        out = {}
        for n in self._stat_fields:
            mean = np.asarray(self.stats["mean"][n], dtype=np.float64)
            std = np.asarray(self.stats["std"][n], dtype=np.float64)
            std = np.where(std > 0, std, 1.0)
            out[n] = (mean, std)
        return out

    def normalize_fields(
        self,
        values: torch.Tensor,
        fields: Sequence[str],
        *,
        inverse: bool = False,
        channel_dim: int | None = None,
    ) -> torch.Tensor:
        """Standardise (or, with ``inverse=True``, restore) values of ``fields``.

        ``values`` holds step-major channels of ``fields`` along ``channel_dim`` (any number of
        steps). Default ``channel_dim``: ``-(n_spatial_dims + 1)`` for grid output, ``-1`` for
        ``output="data"``.

        Shapes:
            - ``values``: ``[..., n_steps * C_fields, *spatial]`` (grid) or ``[..., P, C]`` (data)
            - returns: same shape
        """
        if self.stats is None:
            raise ValueError(f"{self.path}: no statistics (build the dataset with normalize=True)")
        norm = self._norm or self._norm_arrays()
        mean = np.concatenate([norm[f][0] for f in fields])
        std = np.concatenate([norm[f][1] for f in fields])
        if channel_dim is None:
            channel_dim = -1 if self.output == "data" else -(self.n_spatial_dims + 1)
        c = values.shape[channel_dim]
        if c % mean.size:
            raise ValueError(
                f"values have {c} channels along dim {channel_dim}, not a multiple of the "
                f"{mean.size} channels of fields {list(fields)}"
            )
        reps = c // mean.size
        shape = [1] * values.dim()
        shape[channel_dim] = c
        m = torch.as_tensor(np.tile(mean, reps), dtype=values.dtype, device=values.device)
        s = torch.as_tensor(np.tile(std, reps), dtype=values.dtype, device=values.device)
        m, s = m.reshape(shape), s.reshape(shape)
        return values * s + m if inverse else (values - m) / s

    def denormalize_target(self, y: torch.Tensor, channel_dim: int | None = None) -> torch.Tensor:
        """Bring normalised targets (or predictions) back to physical units.

        Shapes:
            - ``y``: ``[..., C_out, *spatial]`` (grid) or ``[..., P, C_out]`` (data)
            - returns: same shape
        """
        if not self.normalize:
            return y
        return self.normalize_fields(y, self.target_fields, inverse=True, channel_dim=channel_dim)

    # -------------------------------------------------------------------------------------
    # reading
    # -------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handles"] = {}
        state["_pid"] = None
        return state

    def close(self) -> None:
        """Close the file handles this process holds."""
        if self._pid == os.getpid():
            for h in self._handles.values():
                try:
                    h.close()
                except Exception:  # noqa: BLE001 - closing is best effort
                    pass
        self._handles = {}
        self._pid = None

    def __enter__(self) -> PDEDataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _file(self, fi: int) -> h5py.File:
        if self._pid != os.getpid():  # new process (fork): never reuse the parent's handles
            self._handles = {}
            self._pid = os.getpid()
        h = self._handles.get(fi)
        if h is None:
            path = self._infos[fi].path
            try:
                h = h5py.File(path, "r")
            except HDF5_ERRORS as exc:
                raise _err(path, f"cannot open the HDF5 file: {exc}") from exc
            self._handles[fi] = h
        return h

    def _read(
        self, f: h5py.File, info: _FileInfo, name: str, sample: int, tsel: slice | int | None
    ) -> np.ndarray:
        """One field as ``[n_t, C, *S]`` (``[C, *S]`` when it has no time axis)."""
        fl = info.fields[name]
        key = fl.key if info.sample_keys is None else f"{info.sample_keys[sample]}/{fl.key}"
        sel: list[Any] = []
        if fl.sample_axis:
            sel.append(sample)
        if fl.time_axis:
            sel.append(tsel)
        sel += [slice(None, None, k) for k, v in zip(self._sub, fl.dim_varying) if v]
        try:
            ds = _dataset(info.path, f[key], key)
            arr = np.asarray(read_hdf5(ds, tuple(sel)))
        except PDEFormatError:
            raise
        except HDF5_ERRORS as exc:
            raise _err(
                info.path,
                f"read failed for sample {sample}, dataset {key!r} (checksum mismatch or "
                f"corrupt file?): {type(exc).__name__}: {exc}",
            ) from exc
        lead = 1 if (fl.time_axis and isinstance(tsel, slice)) else 0
        if lead == 0:
            arr = arr[None]
        # insert broadcast axes for spatial dims the field does not vary along
        pos = 1
        for v in fl.dim_varying:
            if not v:
                arr = np.expand_dims(arr, pos)
            pos += 1
        arr = arr.reshape(arr.shape[: 1 + self.n_spatial_dims] + (fl.channels,))
        arr = np.broadcast_to(arr, (arr.shape[0], *self.spatial_shape, fl.channels))
        arr = np.moveaxis(arr, -1, 1).astype(np.float32)
        if not np.isfinite(arr).all():
            raise _err(
                info.path,
                f"non-finite values in field {name!r} of sample {sample} (dataset {key!r}, "
                f"time selection {tsel})",
            )
        if name in self._norm:
            mean, std = self._norm[name]
            shp = (1, -1) + (1,) * self.n_spatial_dims
            arr = ((arr - mean.reshape(shp)) / std.reshape(shp)).astype(np.float32)
        return arr if lead else arr[0]

    def __getitem__(self, index: int) -> dict[str, Any] | Data:
        n = len(self)
        if isinstance(index, torch.Tensor):
            index = int(index)
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"index must be an int, got {type(index).__name__}")
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items of {self.path}")
        index = int(index) % n
        t = int(np.searchsorted(self._offsets, index, side="right") - 1)
        local = index - int(self._offsets[t])
        fi, sample = (int(v) for v in self._trajs[t])
        info = self._infos[fi]
        f = self._file(fi)
        try:
            x, y, lead = self._assemble(f, info, sample, local)
        except PDEFormatError:
            raise
        except HDF5_ERRORS as exc:
            raise _err(
                info.path,
                f"read failed for sample {sample} (item {index}): {type(exc).__name__}: {exc}",
            ) from exc
        lead_t = torch.tensor(lead, dtype=torch.float32)
        if self.output == "grid":
            return {
                "x": torch.from_numpy(x),
                "y": torch.from_numpy(y),
                "lead_time": lead_t,
                "index": index,
            }
        return Data(
            pos=self.pos,
            x=torch.from_numpy(x.reshape(x.shape[0], -1).T.copy()),
            y=torch.from_numpy(y.reshape(y.shape[0], -1).T.copy()),
            lead_time=lead_t.reshape(1),
            index=torch.tensor([index]),
        )

    @property
    def pos(self) -> torch.Tensor:
        """Grid point coordinates ``[P, n_spatial_dims]`` (row-major, after subsampling)."""
        if getattr(self, "_pos", None) is None:
            mesh = np.meshgrid(*self.coords, indexing="ij")
            pos = np.stack([m.ravel() for m in mesh], -1).astype(np.float32)
            self._pos = torch.from_numpy(pos)
        return self._pos

    def _time_at(self, info: _FileInfo, sample: int, i: int) -> float:
        if info.time is None:
            return float(i)
        row = info.time[sample] if info.time.ndim == 2 else info.time
        return float(row[i])

    def _assemble(
        self, f: h5py.File, info: _FileInfo, sample: int, local: int
    ) -> tuple[np.ndarray, np.ndarray, float]:
        if self.steady:

            def read(name: str) -> np.ndarray:
                return self._read(f, info, name, sample, 0 if info.fields[name].time_axis else None)

            x = np.concatenate([read(n) for n in self.input_fields])
            y = np.concatenate([read(n) for n in self.target_fields])
            return x, y, 0.0
        if self.all2all:
            i, j = (int(v) for v in self._pairs(info.n_times)[local])
            tsel = slice(i, j + 1, max(j - i, 1))
            n_in, last_in, first_out = 1, i, j
        else:
            n_in = self.n_steps_input
            count = n_in + self.n_steps_output
            tsel = slice(local, local + (count - 1) * self.time_stride + 1, self.time_stride)
            last_in = local + (n_in - 1) * self.time_stride
            first_out = last_in + self.time_stride
        names = list(dict.fromkeys(self.input_fields + self.target_fields))
        vals = {n: self._read(f, info, n, sample, tsel) for n in names}
        xs = np.concatenate([vals[n] for n in self.input_fields], axis=1)
        ys = np.concatenate([vals[n] for n in self.target_fields], axis=1)
        if self.all2all:
            xs, ys = xs[:1], ys[-1:]
        else:
            xs, ys = xs[:n_in], ys[n_in:]
        x = xs.reshape(-1, *self.spatial_shape)
        y = ys.reshape(-1, *self.spatial_shape)
        if self.constant_fields:
            consts = [self._read(f, info, n, sample, None) for n in self.constant_fields]
            x = np.concatenate([x, *consts])
        lead = self._time_at(info, sample, first_out) - self._time_at(info, sample, last_in)
        return np.ascontiguousarray(x), np.ascontiguousarray(y), lead

    def __repr__(self) -> str:
        mode = (
            "steady"
            if self.steady
            else (
                "all2all"
                if self.all2all
                else (
                    f"windows {self.n_steps_input}->{self.n_steps_output}, "
                    f"stride {self.time_stride}"
                )
            )
        )
        return (
            f"{type(self).__name__}({self.path!r}, layout={self.layout!r}, items={len(self)}, "
            f"trajectories={len(self._trajs)}, {mode}, inputs={self.input_fields}"
            f"{' + ' + str(self.constant_fields) if self.constant_fields else ''}, "
            f"targets={self.target_fields}, spatial_shape={self.spatial_shape}, "
            f"in_channels={self.in_channels}, out_channels={self.out_channels}, "
            f"normalize={self.normalize})"
        )
