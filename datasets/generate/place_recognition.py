"""Synthetic lidar place recognition across ground and aerial views (in the spirit of
CS-Wild-Places).

Every place is its own scene of a few tens of metres: rolling ground, and either forest (tree
trunks with canopies, rocks) or built-up land (boxes of buildings, some trees and rocks). Each
place gets two ground-level scans (a spinning lidar at 1.8 m above the ground, at two nearby
positions) and one aerial scan:

- **ground**: the scene's surfaces seen from the sensor within ``max_range``: a point survives
  with probability :math:`\\min(1, (r_0 / r)^2)` (range-dependent density of a spinning lidar)
  and only the nearest surface in every (azimuth, elevation) bin is seen (occlusion);
- **aerial**: top-down coverage within ``max_range`` of the place: per ``0.5 m`` column only the
  top surface layer (canopies hide the ground and trunks below, building roofs their walls),
  plus a few returns through gaps;
- both: Gaussian noise, a random rotation about :math:`z`, subsampled to ``points`` points,
  positions in the sensor frame (ground: sensor at the origin; aerial: the place centre at
  ``z = 0``, shifted by up to ``offset`` metres).

The file (HDF5, written atomically, Fletcher-32 checksums on every data set)::

    ground        float32 [P, 2, M, 3]   two ground scans per place
    aerial        float32 [P, M, 3]      one aerial scan per place
    ground_yaw    float32 [P, 2]         rotation applied to each ground scan (radians)
    aerial_yaw    float32 [P]
    kind          int8    [P]            0 forest, 1 built-up
    split         int8    [P]            0 train, 1 valid, 2 test
    attrs: format, version, points, max_range, noise, seed

:func:`read_place_recognition` reads it back with errors that name the file and data set.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from tqdm.auto import tqdm

from gtlib.io import atomic_write

__all__ = ["FORMAT", "place_recognition", "read_place_recognition", "scene", "scan_ground",
           "scan_aerial"]  # fmt: skip

FORMAT = "gtlib-place-recognition"
VERSION = 1
SPLIT_NAMES = ("train", "valid", "test")
_DATASETS = {
    "ground": (np.float32, 4),
    "aerial": (np.float32, 3),
    "ground_yaw": (np.float32, 2),
    "aerial_yaw": (np.float32, 1),
    "kind": (np.int8, 1),
    "split": (np.int8, 1),
}


# ---------------------------------------------------------------------- scenes
def _ground_height(rng: np.random.Generator):
    """A smooth random height field ``h(x, y)`` (a few sinusoids, metres)."""
    k = rng.normal(0.0, 0.12, (4, 2))
    phase = rng.uniform(0, 2 * np.pi, 4)
    amp = rng.uniform(0.1, 0.6, 4)

    def height(x, y):
        return sum(a * np.sin(kx * x + ky * y + p) for (kx, ky), p, a in zip(k, phase, amp))

    return height


def scene(rng: np.random.Generator, size: float = 48.0, density: float = 20.0):
    """Surface points ``[S, 3]`` of a random scene on ``[-size/2, size/2]^2`` and its kind.

    ``density`` is the number of surface samples per square metre of ground (objects get
    samples in proportion to their surface areas).
    """
    kind = int(rng.integers(0, 2))
    height = _ground_height(rng)
    half = size / 2
    parts = []
    n_ground = int(density * size * size)
    gx, gy = rng.uniform(-half, half, (2, n_ground))
    parts.append(np.stack([gx, gy, height(gx, gy)], 1))

    def sample_count(area):
        return max(int(density * area), 8)

    num_trees = int(rng.integers(25, 60)) if kind == 0 else int(rng.integers(3, 12))
    for _ in range(num_trees):
        cx, cy = rng.uniform(-half, half, 2)
        base = height(cx, cy)
        radius, tall = rng.uniform(0.15, 0.5), rng.uniform(4.0, 14.0)
        n = sample_count(2 * np.pi * radius * tall)
        phi, z = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, tall, n)
        parts.append(np.stack([cx + radius * np.cos(phi), cy + radius * np.sin(phi), base + z], 1))
        crown = np.array([rng.uniform(1.5, 4.0), rng.uniform(1.5, 4.0), rng.uniform(1.0, 3.0)])
        n = sample_count(4 * np.pi * crown.mean() ** 2)
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        centre = np.array([cx, cy, base + tall])
        parts.append(centre + direction * crown * rng.uniform(0.8, 1.0, (n, 1)))
    for _ in range(int(rng.integers(5, 20))):  # rocks: half-buried ellipsoids
        cx, cy = rng.uniform(-half, half, 2)
        axes = rng.uniform(0.3, 1.5, 3)
        n = sample_count(4 * np.pi * axes.mean() ** 2)
        direction = rng.normal(size=(n, 3))
        direction /= np.linalg.norm(direction, axis=1, keepdims=True)
        points = np.array([cx, cy, height(cx, cy)]) + direction * axes
        parts.append(points[points[:, 2] >= height(points[:, 0], points[:, 1])])
    if kind == 1:  # buildings: boxes (walls and roof)
        for _ in range(int(rng.integers(3, 9))):
            cx, cy = rng.uniform(-half, half, 2)
            wx, wy, wz = rng.uniform(4, 12), rng.uniform(4, 12), rng.uniform(3, 9)
            base = height(cx, cy) - 0.5
            n = sample_count(wx * wy)
            u, v = rng.uniform(-0.5, 0.5, (2, n))
            parts.append(np.stack([cx + u * wx, cy + v * wy, np.full(n, base + wz)], 1))
            for axis, (w_along, w_across) in enumerate(((wx, wy), (wy, wx))):
                n = sample_count(2 * w_along * wz)
                u, z = rng.uniform(-0.5, 0.5, n), rng.uniform(0, wz, n)
                side = rng.choice([-0.5, 0.5], n) * w_across
                x, y = (u * w_along, side) if axis == 0 else (side, u * w_along)
                parts.append(np.stack([cx + x, cy + y, base + z], 1))
    return np.concatenate(parts), kind, height


def scan_ground(
    surface: np.ndarray,
    sensor: np.ndarray,
    rng: np.random.Generator,
    max_range: float = 20.0,
    r0: float = 5.0,
    bins: tuple[int, int] = (720, 64),
) -> np.ndarray:
    """A ground lidar's view of ``surface`` from ``sensor`` (sensor frame): range-dependent
    density and occlusion (only the nearest point per (azimuth, elevation) bin)."""
    rel = surface - sensor
    r = np.linalg.norm(rel, axis=1)
    keep = (r < max_range) & (r > 0.5)
    keep &= rng.random(r.size) < np.minimum(1.0, (r0 / np.maximum(r, 1e-9)) ** 2)
    rel, r = rel[keep], r[keep]
    azimuth = np.arctan2(rel[:, 1], rel[:, 0])
    elevation = np.arcsin(np.clip(rel[:, 2] / r, -1.0, 1.0))
    a = np.clip(((azimuth + np.pi) / (2 * np.pi) * bins[0]).astype(np.int64), 0, bins[0] - 1)
    e = np.clip(((elevation + np.pi / 2) / np.pi * bins[1]).astype(np.int64), 0, bins[1] - 1)
    cell = a * bins[1] + e
    order = np.lexsort((r, cell))  # by bin, nearest first
    first = np.ones(order.size, dtype=bool)
    first[1:] = cell[order][1:] != cell[order][:-1]
    return rel[order[first]]


def scan_aerial(
    surface: np.ndarray,
    centre: np.ndarray,
    rng: np.random.Generator,
    max_range: float = 20.0,
    column: float = 0.5,
    layer: float = 0.6,
    gap: float = 0.08,
) -> np.ndarray:
    """Top-down coverage of ``surface`` within ``max_range`` of ``centre`` (horizontally): the
    top ``layer`` metres of every ``column``-wide column, and a fraction ``gap`` of the rest."""
    rel = surface - centre
    keep = np.hypot(rel[:, 0], rel[:, 1]) < max_range
    rel = rel[keep]
    ij = np.floor(rel[:, :2] / column).astype(np.int64)
    cell = (ij[:, 0] + 10_000) * 20_001 + (ij[:, 1] + 10_000)
    unique, inverse = np.unique(cell, return_inverse=True)
    top = np.full(unique.size, -np.inf)
    np.maximum.at(top, inverse, rel[:, 2])
    visible = (rel[:, 2] >= top[inverse] - layer) | (rng.random(rel.shape[0]) < gap)
    return rel[visible]


def _finish(points: np.ndarray, count: int, noise: float, rng: np.random.Generator):
    """Noise, a random rotation about z and exactly ``count`` points (repeats if too few)."""
    replace = points.shape[0] < count
    points = points[rng.choice(points.shape[0], count, replace=replace)]
    points = points + rng.normal(0.0, noise, points.shape)
    yaw = rng.uniform(-np.pi, np.pi)
    c, s = np.cos(yaw), np.sin(yaw)
    rotation = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return points @ rotation.T, yaw


def _place(rng, points, max_range, noise, offset):
    surface, kind, height = scene(rng, size=2 * max_range + 8.0)
    grounds, yaws = [], []
    for _ in range(2):
        xy = rng.uniform(-offset, offset, 2)
        sensor = np.array([xy[0], xy[1], height(xy[0], xy[1]) + 1.8])
        scan, yaw = _finish(scan_ground(surface, sensor, rng, max_range), points, noise, rng)
        grounds.append(scan)
        yaws.append(yaw)
    xy = rng.uniform(-offset, offset, 2)
    centre = np.array([xy[0], xy[1], height(xy[0], xy[1])])
    aerial, aerial_yaw = _finish(scan_aerial(surface, centre, rng, max_range), points, noise, rng)
    return np.stack(grounds), aerial, np.array(yaws), aerial_yaw, kind


# ---------------------------------------------------------------------- writer
def place_recognition(
    n: int,
    out: str | os.PathLike[str],
    *,
    points: int = 2048,
    max_range: float = 20.0,
    noise: float = 0.03,
    offset: float = 2.0,
    seed: int = 0,
    splits: Sequence[float] = (0.7, 0.1, 0.2),
    progress: bool = True,
    layout: str = "well",
    resolution: int | None = None,
) -> Path:
    """Generates ``n`` places and writes them to one HDF5 file, atomically.

    Args:
        n: number of places.
        out: the file (``.h5``/``.hdf5``) or a directory (then ``place_recognition.h5`` in it).
        points: points per scan.
        max_range: sensor range and aerial coverage radius (metres).
        noise: standard deviation of the Gaussian position noise (metres).
        offset: largest horizontal offset of each sensor from the place centre (metres).
        seed: seed of the generator (the file is a function of the arguments).
        splits: fractions of train, valid and test places (places are assigned in order).
        progress: show a tqdm progress bar.
        layout: ``"well"`` (accepted for the ``gtlib-data`` command line; the layout is fixed).
        resolution: not used (refused when given).

    Returns:
        The path written.

    Raises:
        TypeError / ValueError: bad argument types or values, named.
    """
    n = _int_at_least(n, "n", 1)
    points = _int_at_least(points, "points", 16)
    for name, value in (("max_range", max_range), ("noise", noise), ("offset", offset)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value) or value < 0 or (name == "max_range" and value <= 1.0):
            raise ValueError(f"{name} must be finite and {'> 1' if name == 'max_range' else '>= 0'}"
                             f", got {value}")  # fmt: skip
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if layout != "well":
        raise ValueError(f"layout must be 'well' (one fixed HDF5 layout), got {layout!r}")
    if resolution is not None:
        raise ValueError("resolution does not apply to place_recognition; use points")
    splits = tuple(float(s) for s in splits)
    if len(splits) != 3 or any(s < 0 for s in splits) or not math.isclose(sum(splits), 1.0):
        raise ValueError(f"splits must be three non-negative fractions summing to 1, got {splits}")
    path = Path(out)
    if path.suffix not in (".h5", ".hdf5"):
        path = path / "place_recognition.h5"

    rng = np.random.default_rng(seed)
    ground = np.empty((n, 2, points, 3), np.float32)
    aerial = np.empty((n, points, 3), np.float32)
    ground_yaw = np.empty((n, 2), np.float32)
    aerial_yaw = np.empty(n, np.float32)
    kind = np.empty(n, np.int8)
    for p in tqdm(range(n), desc="places", disable=not progress):
        ground[p], aerial[p], ground_yaw[p], aerial_yaw[p], kind[p] = _place(
            rng, points, float(max_range), float(noise), float(offset)
        )
    counts = np.floor(np.array(splits[:2]) * n).astype(int)
    split = np.full(n, 2, np.int8)
    split[: counts[0]] = 0
    split[counts[0] : counts[0] + counts[1]] = 1
    data = dict(ground=ground, aerial=aerial, ground_yaw=ground_yaw, aerial_yaw=aerial_yaw,
                kind=kind, split=split)  # fmt: skip

    def write(tmp: Path) -> None:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(format=FORMAT, version=VERSION, points=points,
                           max_range=float(max_range), noise=float(noise), seed=seed)  # fmt: skip
            for name, array in data.items():
                chunks = (1,) + array.shape[1:] if array.ndim > 1 else None
                f.create_dataset(name, data=array, chunks=chunks or True, fletcher32=True)

    return atomic_write(path, write)


def read_place_recognition(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Reads a file of :func:`place_recognition` into tensors (``ground [P, 2, M, 3]``,
    ``aerial [P, M, 3]``, ``ground_yaw``, ``aerial_yaw``, ``kind``, ``split``) and its
    attributes (``points``, ``max_range``, ``noise``, ``seed``).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not an HDF5 file of this format, a missing or misshapen data set, or a data
            set failing its checksum; the message names the file and the data set.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"place-recognition file {path} does not exist")
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path} is not a readable HDF5 file: {error}") from error
    with f:
        if f.attrs.get("format") != FORMAT:
            raise ValueError(f"{path} is not a {FORMAT} file (attribute format = "
                             f"{f.attrs.get('format')!r})")  # fmt: skip
        out: dict = {}
        for name, (dtype, ndim) in _DATASETS.items():
            if name not in f:
                raise ValueError(f"{path} has no data set {name!r}")
            dataset = f[name]
            if dataset.ndim != ndim or dataset.dtype != dtype:
                raise ValueError(
                    f"{path}: data set {name!r} must be {np.dtype(dtype).name} with {ndim} "
                    f"dimensions, got {dataset.dtype} {dataset.shape}"
                )
            try:
                out[name] = torch.from_numpy(dataset[()])
            except OSError as error:
                raise ValueError(
                    f"{path}: data set {name!r} cannot be read (checksum or I/O error): {error}"
                ) from error
        places = out["ground"].shape[0]
        expected = {"ground": (places, 2), "aerial": (places,), "ground_yaw": (places, 2),
                    "aerial_yaw": (places,), "kind": (places,), "split": (places,)}  # fmt: skip
        for name, lead in expected.items():
            if tuple(out[name].shape[: len(lead)]) != lead:
                raise ValueError(f"{path}: data set {name!r} has shape {tuple(out[name].shape)}, "
                                 f"expected leading sizes {lead}")  # fmt: skip
        if out["ground"].shape[-1] != 3 or out["aerial"].shape[-1] != 3:
            raise ValueError(f"{path}: scans must hold 3-D points")
        for key in ("points", "max_range", "noise", "seed"):
            if key not in f.attrs:
                raise ValueError(f"{path} has no attribute {key!r}")
            out[key] = f.attrs[key].item()
    return out


def _int_at_least(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)
