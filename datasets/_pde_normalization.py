"""Per-channel statistics of PDE fields and the standardisation that uses them.

The statistics come from a dict or yaml file given by the user, from The Well's ``stats.yaml``,
or from one streaming pass (float64, chunked reads, Chan et al.'s merge of per-chunk moments)
over the training trajectories, cached as a yaml file keyed by the files' sizes and modification
times. See :mod:`gtlib.datasets.pde` for where each is looked up.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import yaml

from gtlib.io import HDF5_ERRORS, atomic_write_text, read_hdf5

from ._pde_formats import PDEFormatError, _err, _FileInfo, _finite, _parse_file

_STATS_VERSION = 1
_CHUNK_ELEMENTS = 1 << 22  # elements per read in the statistics pass

Stats = dict[str, dict[str, list[float]]]


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


def _read_stats_mapping(
    stats: str | os.PathLike | Mapping[str, Any],
) -> tuple[Mapping[str, Any], str, str | None]:
    """``stats`` as a mapping, the name to use in messages, and the yaml path it came from."""
    if isinstance(stats, (str, os.PathLike)):
        source = os.fspath(stats)
        if not os.path.isfile(source):
            raise FileNotFoundError(f"{source}: stats file not found")
        try:
            with open(source) as fh:
                loaded = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ValueError(f"{source}: stats file is not valid yaml ({exc})") from None
        if not isinstance(loaded, Mapping):
            raise ValueError(f"{source}: stats file holds a {type(loaded).__name__}, not a mapping")
        return loaded, source, source
    if not isinstance(stats, Mapping):
        raise TypeError(f"stats must be a dict or a yaml path, got {type(stats).__name__}")
    return stats, "stats", None


def _stat_values(source: str, key: str, name: str, given: Any, channels: int) -> list[float]:
    """``stats[key][name]`` as ``channels`` finite floats (one value is broadcast)."""
    try:
        vals = np.asarray(given, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        raise ValueError(
            f"{source}: stats[{key!r}][{name!r}] must be a number or a list of numbers, "
            f"got {given!r}"
        ) from None
    if vals.size == 1:
        vals = np.full(channels, vals[0])
    if vals.size != channels:
        raise ValueError(
            f"{source}: stats[{key!r}][{name!r}] has {vals.size} values, "
            f"field has {channels} channels"
        )
    if not np.isfinite(vals).all():
        raise ValueError(f"{source}: stats[{key!r}][{name!r}] holds NaN or infinite values")
    return [float(v) for v in vals]


def load_stats(
    stats: str | os.PathLike | Mapping[str, Any],
    channels: Mapping[str, int],
    names: Sequence[str],
) -> tuple[Stats, str | None]:
    """Statistics of the fields ``names`` (``channels``: their channel counts) from a mapping
    ``{"mean": {field: ...}, "std": {field: ...}}`` or a yaml file holding one; also the yaml
    path (or None)."""
    mapping, source, path = _read_stats_mapping(stats)
    out: Stats = {"mean": {}, "std": {}}
    for key in ("mean", "std"):
        if not isinstance(mapping.get(key), Mapping):
            raise ValueError(f"{source}: stats need a {key!r} mapping of field -> value")
        for name in names:
            if name not in mapping[key]:
                raise ValueError(
                    f"{source}: stats[{key!r}] has no entry for field {name!r} "
                    f"(has {sorted(mapping[key])})"
                )
            out[key][name] = _stat_values(source, key, name, mapping[key][name], channels[name])
    return out, path


def well_stats_yaml(well_root: Path | None, first_file: str) -> str | None:
    """The Well's ``<name>/stats.yaml`` for a dataset folder or a file under ``data/<split>``."""
    roots = [] if well_root is None else [well_root]
    p = Path(first_file).resolve()
    if p.parent.parent.name == "data":  # <base>/<name>/data/<split>/<file>
        roots.append(p.parent.parent.parent)
    for r in roots:
        cand = r / "stats.yaml"
        if cand.is_file():
            return str(cand)
    return None


def stats_sources(
    layout: str, infos: Sequence[_FileInfo], trajs: np.ndarray
) -> list[tuple[str, list[int] | None]]:
    """(file, sample indices or None for all) pairs holding the training trajectories: a Well
    ``valid``/``test`` split's sibling ``train`` folder, else the selected trajectories."""
    if layout == "well":
        d = Path(infos[0].path).parent
        train = d.parent / "train"
        if d.name in ("valid", "test") and d.parent.name == "data" and train.is_dir():
            files = sorted(str(q) for q in train.iterdir() if q.suffix in (".h5", ".hdf5"))
            if files:
                return [(f, None) for f in files]
    out: dict[int, list[int]] = {}
    for fi, s in trajs.tolist():
        out.setdefault(fi, []).append(s)
    return [(infos[fi].path, sorted(set(v))) for fi, v in sorted(out.items())]


def cached_stats(
    sources: list[tuple[str, list[int] | None]],
    infos: Sequence[_FileInfo],
    channels: Mapping[str, int],
    names: list[str],
) -> tuple[Stats, str]:
    """Statistics of ``names`` over ``sources``, read from or written to the yaml cache; also
    the cache path."""
    key = {
        "version": _STATS_VERSION,
        "files": [_file_stamp(p) + [s] for p, s in sources],
        "fields": names,
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
            return {"mean": cached["mean"], "std": cached["std"]}, cache
    stats = compute_stats(sources, infos, channels, names)
    _atomic_yaml(cache, {"key": key, **stats})
    return stats, cache


def _accumulate_file(
    f: h5py.File, info: _FileInfo, name: str, sel: list[int] | None, acc: _Welford
) -> None:
    fl = info.fields.get(name)
    if fl is None:
        raise _err(info.path, f"field {name!r} missing (stats pass)")
    if info.sample_keys is not None:
        for s in range(info.n_samples) if sel is None else sel:
            _accumulate(f[f"{info.sample_keys[s]}/{fl.key}"], acc)
    elif fl.sample_axis:
        _accumulate(f[fl.key], acc, list(range(info.n_samples)) if sel is None else sel)
    else:
        _accumulate(f[fl.key], acc)


def compute_stats(
    sources: list[tuple[str, list[int] | None]],
    infos: Sequence[_FileInfo],
    channels: Mapping[str, int],
    names: list[str],
) -> Stats:
    """Per-channel mean and (population) std of ``names`` over ``sources`` in one pass."""
    acc = {n: _Welford(channels[n]) for n in names}
    for path, sel in sources:
        info = next((i for i in infos if i.path == path), None) or _parse_file(path)
        try:
            with h5py.File(path, "r") as f:
                for name in names:
                    _accumulate_file(f, info, name, sel, acc[name])
        except PDEFormatError:
            raise
        except HDF5_ERRORS as exc:
            raise _err(
                path,
                f"read failed while computing statistics: {type(exc).__name__}: {exc}",
            ) from exc
    mean = {n: [float(v) for v in a.mean] for n, a in acc.items()}
    std = {n: [float(math.sqrt(max(v, 0.0) / max(a.n, 1))) for v in a.m2] for n, a in acc.items()}
    return {"mean": mean, "std": std}


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


def norm_arrays(stats: Stats, names: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{field: (mean, std)}`` as float64 arrays, ``std == 0`` replaced by 1."""
    out = {}
    for n in names:
        mean = np.asarray(stats["mean"][n], dtype=np.float64)
        std = np.asarray(stats["std"][n], dtype=np.float64)
        out[n] = (mean, np.where(std > 0, std, 1.0))
    return out


def standardize(
    values: torch.Tensor,
    mean: np.ndarray,
    std: np.ndarray,
    channel_dim: int,
    *,
    inverse: bool = False,
    fields: Sequence[str] = (),
) -> torch.Tensor:
    """``(values - mean) / std`` (or ``values * std + mean``) with per-channel ``mean``/``std``
    tiled over any number of step-major repeats along ``channel_dim``."""
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
