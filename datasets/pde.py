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

Modules
-------
The reader is split by job, as The Well splits datasets, normalisation and augmentation:
``_pde_formats`` parses the three layouts (shapes and attributes only), ``_pde_windows`` selects
fields, trajectories and time windows, ``_pde_normalization`` computes, caches and applies the
statistics, and this module holds :class:`PDEDataset`, which reads the items.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data

from gtlib.io import HDF5_ERRORS, read_hdf5
from gtlib.validation import check_bool, check_choice, check_int, check_tensor, describe

from ._pde_formats import (  # noqa: F401 - re-exported: gtlib.datasets.pde keeps these names
    _CFD_NAMES,
    _COORD_NAMES,
    _NS_NAMES,
    _PDEBENCH_NAMES,
    PDEFormatError,
    _as_str_list,
    _check_optional_names,
    _dataset,
    _err,
    _Field,
    _FileInfo,
    _finite,
    _parse_file,
    _parse_pdebench,
    _parse_seeds,
    _parse_well,
    _read_coord,
    _read_time,
    _resolve_files,
    _well_steady_times,
)
from ._pde_normalization import (  # noqa: F401 - re-exported as above
    _CHUNK_ELEMENTS,
    _STATS_VERSION,
    _accumulate,
    _atomic_yaml,
    _cache_dir_for,
    _file_stamp,
    _Welford,
    cached_stats,
    load_stats,
    norm_arrays,
    standardize,
    stats_sources,
    well_stats_yaml,
)
from ._pde_windows import (
    check_compatible,
    parse_subsample,
    select_fields,
    select_trajectories,
    window_pairs,
    windows_per_trajectory,
)

__all__ = ["PDEDataset", "PDEFormatError"]


def _check_path(value: Any, name: str) -> str:
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or os.PathLike, got {describe(value)}")
    return os.fspath(value)


def _check_stats_arg(value: Any) -> Any:
    if value is None or isinstance(value, (str, os.PathLike, Mapping)):
        return value
    raise TypeError(f"stats must be a dict or a yaml path, got {type(value).__name__}")


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
        self._set_options(
            n_steps_input, n_steps_output, time_stride, all2all, max_lead_steps, normalize, output
        )
        self.path = _check_path(path, "path")
        if split is not None:
            check_choice(split, "split", ("train", "valid", "test"))
        self.split = split
        stats = _check_stats_arg(stats)
        files, self._well_root = _resolve_files(path, split)
        self._infos = [_parse_file(p) for p in files]
        check_compatible(self._infos)
        first = self._infos[0]
        self.layout = first.layout
        self.fields = {k: v.channels for k, v in first.fields.items()}
        sel = select_fields(first, input_fields, target_fields, self.all2all)
        self.steady = sel.steady
        self.input_fields, self.constant_fields = sel.inputs, sel.constants
        self.target_fields = sel.targets
        self._set_grid(first, subsample)
        self._build_index(samples)
        self._set_channels()
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

    def _set_options(
        self,
        n_steps_input: int,
        n_steps_output: int,
        time_stride: int,
        all2all: bool,
        max_lead_steps: int | None,
        normalize: bool,
        output: str,
    ) -> None:
        self.n_steps_input = check_int(n_steps_input, "n_steps_input", minimum=1)
        self.n_steps_output = check_int(n_steps_output, "n_steps_output", minimum=1)
        self.time_stride = check_int(time_stride, "time_stride", minimum=1)
        self.all2all = check_bool(all2all, "all2all")
        self.normalize = check_bool(normalize, "normalize")
        self.output = check_choice(output, "output", ("grid", "data"))
        if self.all2all and (self.n_steps_input != 1 or self.n_steps_output != 1):
            raise ValueError(
                "all2all=True pairs single snapshots: n_steps_input and n_steps_output must be 1, "
                f"got {n_steps_input} and {n_steps_output}"
            )
        if max_lead_steps is not None:
            max_lead_steps = check_int(max_lead_steps, "max_lead_steps", minimum=0)
            if not self.all2all:
                raise ValueError("max_lead_steps is only meaningful with all2all=True")
        self.max_lead_steps = max_lead_steps

    def _set_grid(self, first: _FileInfo, subsample: int | Sequence[int]) -> None:
        nd = len(first.spatial_shape)
        self._sub = parse_subsample(subsample, nd)
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

    def _set_channels(self) -> None:
        c_in = sum(self.fields[f] for f in self.input_fields)
        c_const = sum(self.fields[f] for f in self.constant_fields)
        c_out = sum(self.fields[f] for f in self.target_fields)
        one_step = self.steady or self.all2all
        n_in = 1 if one_step else self.n_steps_input
        n_out = 1 if one_step else self.n_steps_output
        self.in_channels = n_in * c_in + c_const
        self.out_channels = n_out * c_out

    def _items_per_traj(self, info: _FileInfo) -> int:
        if self.steady:
            return 1
        if self.all2all:
            return len(self._pairs(info.n_times))
        return windows_per_trajectory(
            info, self.n_steps_input, self.n_steps_output, self.time_stride
        )

    def _pairs(self, n_times: int) -> np.ndarray:
        if n_times not in self._pair_cache:
            self._pair_cache[n_times] = window_pairs(n_times, self.time_stride, self.max_lead_steps)
        return self._pair_cache[n_times]

    def _build_index(self, samples: slice | Sequence[int] | None) -> None:
        self._pair_cache: dict[int, np.ndarray] = {}
        trajs = select_trajectories(self._infos, samples, self.path)
        self._trajs = np.asarray(trajs, dtype=np.int64).reshape(-1, 2)
        per_file = [self._items_per_traj(info) for info in self._infos]
        counts = np.asarray([per_file[fi] for fi, _ in trajs], dtype=np.int64)
        self._offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    # -------------------------------------------------------------------------------------
    # statistics (computed, cached and applied in _pde_normalization)
    # -------------------------------------------------------------------------------------

    @property
    def _stat_fields(self) -> list[str]:
        names = self.input_fields + self.constant_fields + self.target_fields
        return list(dict.fromkeys(names))

    def _load_or_compute_stats(
        self, stats: str | os.PathLike | Mapping[str, Any] | None
    ) -> dict[str, dict[str, list[float]]]:
        if stats is None and self.layout == "well":
            stats = well_stats_yaml(self._well_root, self._infos[0].path)
        if stats is None:
            sources = stats_sources(self.layout, self._infos, self._trajs)
            out, self.stats_path = cached_stats(
                sources, self._infos, self.fields, self._stat_fields
            )
            return out
        out, path = load_stats(stats, self.fields, self._stat_fields)
        if path is not None:
            self.stats_path = path
        return out

    def _norm_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        assert self.stats is not None
        return norm_arrays(self.stats, self._stat_fields)

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
        check_tensor(values, "values", floating=True)
        if isinstance(fields, str):
            fields = [fields]
        unknown = [f for f in fields if f not in self.stats["mean"]]
        if unknown:
            raise ValueError(
                f"fields {unknown} have no statistics; known: {sorted(self.stats['mean'])}"
            )
        if not fields:
            raise ValueError("fields must name at least one field")
        inverse = check_bool(inverse, "inverse")
        if channel_dim is None:
            channel_dim = -1 if self.output == "data" else -(self.n_spatial_dims + 1)
        channel_dim = check_int(
            channel_dim, "channel_dim", minimum=-values.dim(), maximum=values.dim() - 1
        )
        norm = self._norm or self._norm_arrays()
        mean = np.concatenate([norm[f][0] for f in fields])
        std = np.concatenate([norm[f][1] for f in fields])
        return standardize(values, mean, std, channel_dim, inverse=inverse, fields=fields)

    def denormalize_target(self, y: torch.Tensor, channel_dim: int | None = None) -> torch.Tensor:
        """Bring normalised targets (or predictions) back to physical units.

        Shapes:
            - ``y``: ``[..., C_out, *spatial]`` (grid) or ``[..., P, C_out]`` (data)
            - returns: same shape
        """
        check_tensor(y, "y", floating=True)
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
