"""Corrupt files: every reader raises a clear error naming the file, never a silent wrong answer.

Readers: :func:`load_trajectory` and :class:`ParticleDataset` (files of :func:`simulate`),
:class:`PDEDataset` on its three layouts (PDEBench arrays, PDEBench per-seed groups, The Well),
the checkpoint of an unfinished :func:`simulate` run, and the OGB CSV reader. The files are written
here with h5py (the independent writer, with Fletcher-32 checksums on the data as gtlib's writers
store them), then damaged: truncated, bytes flipped in the metadata and in the data, data sets
missing, renamed or retyped (strings, groups, integers, complex numbers), NaN/inf values, an
empty file, a directory and a missing path.

A clear error is a ``ValueError`` (corrupt or unexpected content) or ``FileNotFoundError`` (no
such path) whose message names the file and, where one is at fault, the data set. A metadata
byte flip may also land in bytes HDF5 does not use; then the reader must return exactly the
undamaged result. Anything else (another exception type, a message without the file, a different
result) fails.
"""

from __future__ import annotations

import gzip
import os
import random
import signal
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pytest
import torch

from gtlib.datasets.generate._pde_writers import WellField, write_well_dataset
from gtlib.datasets.generate._pde_writers import write_pdebench as gtlib_write_pdebench
from gtlib.datasets.ogb import read_csv_gz
from gtlib.datasets.particles import (
    ActiveOUParticles,
    ParticleDataset,
    load_trajectory,
    simulate,
)
from gtlib.datasets.pde import PDEDataset

CLEAR = (ValueError, FileNotFoundError)
# As gtlib's writers: the HDF5 1.10 file format, whose metadata carry checksums (in the older
# format a flipped bit in a chunk index key reads that chunk as the fill value without an error),
# Fletcher-32 checksums on the data, NaN as the fill value of float data.
LIBVER = ("v110", "v110")


# ------------------------------------------------------------------------------------------------
# Valid files, written with h5py
def _values(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape)


def _put(group: h5py.Group, name: str, data: np.ndarray, chunks: Any = True) -> h5py.Dataset:
    """A data set with a Fletcher-32 checksum and NaN as its fill value."""
    return group.create_dataset(name, data=data, chunks=chunks, fletcher32=True, fillvalue=np.nan)


def _axis(size: int) -> np.ndarray:
    return np.linspace(0, 1, size, dtype=np.float32)


def h5_particles(path: Path) -> None:
    """A file in simulate()'s layout (3 snapshots, 2 trajectories, 5 particles in 2-d)."""
    with h5py.File(path, "w", libver=LIBVER) as f:
        _put(f, "pos", _values(3, 2, 5, 2), (1, 2, 5, 2))
        _put(f, "g", _values(3, 2, 5, 2, seed=1), (1, 2, 5, 2))
        _put(f, "time", np.arange(3) * 0.1)
        f.attrs["box_length"] = 4.0
        f.attrs["dt"] = 0.01
        f.attrs["complete"] = True


def h5_pdebench(path: Path) -> None:
    """PDEBench single-array layout: tensor [N, T, X] with coordinates."""
    with h5py.File(path, "w", libver=LIBVER) as f:
        _put(f, "tensor", _values(3, 6, 8).astype(np.float32), (1, 6, 8))
        _put(f, "x-coordinate", _axis(8))
        _put(f, "t-coordinate", _axis(7))


def h5_seeds(path: Path) -> None:
    """PDEBench per-seed layout: <seed>/data [T, X, C] and <seed>/grid/{x, t}."""
    with h5py.File(path, "w", libver=LIBVER) as f:
        for seed in range(2):
            group = f.create_group(f"{seed:04d}")
            _put(group, "data", _values(5, 8, 2, seed=seed).astype(np.float32), (1, 8, 2))
            grid = group.create_group("grid")
            _put(grid, "x", _axis(8))
            _put(grid, "t", _axis(5))


def h5_well(path: Path) -> None:
    """The Well layout: one scalar field, 2 trajectories, 5 steps on a 4 x 6 grid."""
    with h5py.File(path, "w", libver=LIBVER) as f:
        f.attrs["n_spatial_dims"] = 2
        f.attrs["n_trajectories"] = 2
        dims = f.create_group("dimensions")
        dims.attrs["spatial_dims"] = ["x", "y"]
        for name, size in (("time", 5), ("x", 4), ("y", 6)):
            _put(dims, name, _axis(size))
        for order in range(3):
            f.create_group(f"t{order}_fields").attrs["field_names"] = []
        group = f["t0_fields"]
        group.attrs["field_names"] = ["density"]
        ds = _put(group, "density", _values(2, 5, 4, 6).astype(np.float32), (1, 1, 4, 6))
        ds.attrs["dim_varying"] = [True, True]
        ds.attrs["sample_varying"] = True
        ds.attrs["time_varying"] = True


# ------------------------------------------------------------------------------------------------
# Readers: each returns every number it can give, as numpy arrays, for comparison
def read_load_trajectory(path: Path) -> dict[str, np.ndarray]:
    run = load_trajectory(path)
    return {k: run[k].numpy() for k in ("pos", "g", "time")}


def read_particle_dataset(path: Path) -> dict[str, np.ndarray]:
    dataset = ParticleDataset(path)
    items = [dataset[i] for i in range(len(dataset))]
    out = {
        "pos": np.stack([d.pos.numpy() for d in items]),
        "g": np.stack([d.g.numpy() for d in items]),
        "time": np.array([float(d.time) for d in items]),
    }
    if "box" in items[0]:
        out["box"] = items[0].box.numpy()
    return out


def read_pde(path: Path) -> dict[str, np.ndarray]:
    with PDEDataset(path) as dataset:
        items = [dataset[i] for i in range(len(dataset))]
        return {
            "x": np.stack([item["x"].numpy() for item in items]),
            "y": np.stack([item["y"].numpy() for item in items]),
            "lead_time": np.array([float(item["lead_time"]) for item in items]),
            "coords": np.concatenate([np.asarray(c, dtype=np.float64) for c in dataset.coords]),
        }


READERS: dict[str, tuple[Callable[[Path], None], Callable[[Path], Any]]] = {
    "load_trajectory": (h5_particles, read_load_trajectory),
    "ParticleDataset": (h5_particles, read_particle_dataset),
    "pdebench": (h5_pdebench, read_pde),
    "pdebench-seeds": (h5_seeds, read_pde),
    "well": (h5_well, read_pde),
}
# The data sets each layout needs, and the data sets holding field values (float expected).
REQUIRED = {
    "load_trajectory": ["pos", "g", "time"],
    "ParticleDataset": ["pos", "g", "time"],
    "pdebench": ["tensor"],
    "pdebench-seeds": ["0000/data", "0001/data"],
    "well": ["t0_fields/density", "dimensions/x", "dimensions/y"],
}
FIELDS = {
    "load_trajectory": ["pos", "g", "time"],
    "ParticleDataset": ["pos", "g", "time"],
    "pdebench": ["tensor"],
    "pdebench-seeds": ["0000/data"],
    "well": ["t0_fields/density"],
}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].shape == b[k].shape and np.array_equal(a[k], b[k], equal_nan=True) for k in a
    )


def assert_clear_error(read: Callable[[Path], Any], path: Path, *names: str) -> BaseException:
    """``read(path)`` raises a ValueError/FileNotFoundError naming the file (and ``names``)."""
    try:
        read(path)
    except CLEAR as error:
        message = str(error)
        assert os.fspath(path) in message or path.name in message, message
        for name in names:
            assert name in message, (name, message)
        return error
    except Exception as error:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{path.name}: unclear error {type(error).__name__}: {error}")
    pytest.fail(f"{path.name}: no error")


def assert_error_or_same(read: Callable[[Path], Any], path: Path, pristine: Any) -> str:
    """``read(path)`` raises a clear error naming the file, or returns exactly ``pristine``."""
    try:
        result = read(path)
    except CLEAR as error:
        assert os.fspath(path) in str(error) or path.name in str(error), str(error)
        return "error"
    except Exception as error:  # noqa: BLE001 - the point of the test
        pytest.fail(f"{path.name}: unclear error {type(error).__name__}: {error}")
    assert _same(result, pristine), f"{path.name}: a silent wrong answer"
    return "same"


def _data_ranges(path: Path) -> dict[str, list[tuple[int, int]]]:
    """Byte ranges ``[start, stop)`` of the stored data of every data set, by name."""
    ranges: dict[str, list[tuple[int, int]]] = {}

    def visit(name: str, node: Any) -> None:
        if not isinstance(node, h5py.Dataset) or node.size == 0:
            return
        if node.chunks is None:
            offset = node.id.get_offset()
            if offset is not None:
                ranges[name] = [(offset, offset + node.id.get_storage_size())]
            return
        spans = []
        for i in range(node.id.get_num_chunks()):
            info = node.id.get_chunk_info(i)
            spans.append((info.byte_offset, info.byte_offset + info.size))
        ranges[name] = spans

    with h5py.File(path, "r") as f:
        f.visititems(visit)
    return ranges


def _flip(path: Path, offset: int, mask: int = 0xFF) -> None:
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ mask]))


# ------------------------------------------------------------------------------------------------
# The suite, for every reader
@pytest.mark.parametrize("reader", list(READERS))
def test_valid_file_reads(tmp_path: Path, reader: str) -> None:
    write, read = READERS[reader]
    path = tmp_path / "good.h5"
    write(path)
    result = read(path)
    with h5py.File(path, "r") as f:  # the numbers are those written
        first = f[FIELDS[reader][0]][()]
    key = {"load_trajectory": "pos", "ParticleDataset": "pos"}.get(reader, "x")
    assert np.isfinite(result[key]).all() and result[key].size > 0
    if reader == "load_trajectory":
        assert np.array_equal(result["pos"], first)


@pytest.mark.parametrize("reader", list(READERS))
def test_missing_empty_directory(tmp_path: Path, reader: str) -> None:
    _, read = READERS[reader]
    error = assert_clear_error(read, tmp_path / "missing.h5")
    assert isinstance(error, FileNotFoundError)
    empty = tmp_path / "empty.h5"
    empty.write_bytes(b"")
    assert isinstance(assert_clear_error(read, empty), ValueError)
    text = tmp_path / "text.h5"
    text.write_text("pos,g,time\n1,2,3\n")
    assert isinstance(assert_clear_error(read, text), ValueError)
    folder = tmp_path / "folder.h5"
    folder.mkdir()
    if reader.startswith("pdebench") or reader == "well":
        # PDEDataset reads a folder of files: an empty one is an error naming it.
        assert isinstance(assert_clear_error(read, folder), FileNotFoundError)
        (folder / "empty.h5").write_bytes(b"")
        assert isinstance(assert_clear_error(read, folder), ValueError)
    else:
        assert isinstance(assert_clear_error(read, folder), ValueError)


@pytest.mark.parametrize("reader", list(READERS))
def test_truncated(tmp_path: Path, reader: str) -> None:
    write, read = READERS[reader]
    good = tmp_path / "good.h5"
    write(good)
    data = good.read_bytes()
    for cut in sorted({1, 8, 64, 512, len(data) // 4, len(data) // 2, 3 * len(data) // 4,
                       len(data) - 1}):  # fmt: skip
        path = tmp_path / f"truncated_{cut}.h5"
        path.write_bytes(data[:cut])
        assert isinstance(assert_clear_error(read, path), ValueError)


@pytest.mark.parametrize("reader", list(READERS))
def test_flipped_data_bits_fail_the_checksum(tmp_path: Path, reader: str) -> None:
    write, read = READERS[reader]
    good = tmp_path / "good.h5"
    write(good)
    ranges = _data_ranges(good)
    rng = random.Random(0)
    for name in FIELDS[reader] + [n for n in REQUIRED[reader] if n not in FIELDS[reader]]:
        for chunk, (start, stop) in enumerate(ranges[name]):
            for bit in (0, 7):
                path = tmp_path / f"flip_{name.replace('/', '_')}_{chunk}_{bit}.h5"
                path.write_bytes(good.read_bytes())
                _flip(path, rng.randrange(start, stop - 4), 1 << bit)  # not the checksum itself
                assert_clear_error(read, path, name.split("/")[-1])


def _metadata_offsets(path: Path) -> list[int]:
    size = path.stat().st_size
    data = [span for spans in _data_ranges(path).values() for span in spans]
    return [o for o in range(size) if not any(a <= o < b for a, b in data)]


@pytest.mark.parametrize("reader", list(READERS))
def test_flipped_metadata_bytes(tmp_path: Path, reader: str) -> None:
    _flipped_metadata(tmp_path, reader, sample=120)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
@pytest.mark.parametrize("reader", list(READERS))
def test_flipped_metadata_bytes_every_byte(tmp_path: Path, reader: str) -> None:
    """Every metadata byte flipped in turn, each read in a forked child with a time limit.

    No flip may give a silent wrong answer or an unclear error. libhdf5 itself can hang (or
    crash) on some corrupt structures no Python code can guard (seen: a flipped byte in the global
    heap holding a variable-length string attribute makes HDF5 2.0 loop while reading it); such
    offsets are reported as a warning, not failed.
    """
    write, read = READERS[reader]
    good = tmp_path / "good.h5"
    write(good)
    pristine = read(good)
    codes = {0: "error", 1: "same", 2: "silent", 3: "unclear"}
    outcomes: dict[str, list[int]] = {name: [] for name in (*codes.values(), "hang", "crash")}
    path = tmp_path / "flipped.h5"
    for offset in _metadata_offsets(good):
        path.write_bytes(good.read_bytes())
        _flip(path, offset)
        pid = os.fork()
        if pid == 0:  # the child reports through its exit status only
            code = 3
            try:
                code = 1 if _same(read(path), pristine) else 2
            except CLEAR as error:
                code = 0 if (os.fspath(path) in str(error) or path.name in str(error)) else 3
            except BaseException:  # noqa: BLE001, S110 - anything else is unclear
                pass
            os._exit(code)
        deadline = time.monotonic() + 20.0
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                status = None
                break
            time.sleep(0.002)
        if status is None:
            outcomes["hang"].append(offset)
        elif os.WIFSIGNALED(status):
            outcomes["crash"].append(offset)
        else:
            outcomes[codes[os.WEXITSTATUS(status)]].append(offset)
    assert outcomes["silent"] == [] and outcomes["unclear"] == [], outcomes
    assert outcomes["error"], outcomes
    if outcomes["hang"] or outcomes["crash"]:
        warnings.warn(
            f"{reader}: libhdf5 hung at offsets {outcomes['hang']} and crashed at "
            f"{outcomes['crash']} of {good.stat().st_size} bytes",
            stacklevel=1,
        )


def _flipped_metadata(tmp_path: Path, reader: str, sample: int) -> None:
    write, read = READERS[reader]
    good = tmp_path / "good.h5"
    write(good)
    pristine = read(good)
    offsets = sorted(random.Random(1).sample(_metadata_offsets(good), sample))
    outcomes = {"error": 0, "same": 0}
    path = tmp_path / "flipped.h5"
    for offset in offsets:
        path.write_bytes(good.read_bytes())
        _flip(path, offset)
        outcomes[assert_error_or_same(read, path, pristine)] += 1
    # Most of a small file's metadata bytes are reserved space HDF5 never reads; the others break
    # the file, and each of those must give a clear error.
    assert outcomes["error"] > 0, outcomes


def _rewrite(path: Path, name: str, make: Callable[[h5py.Group, str, h5py.Dataset], Any]) -> None:
    """Replace data set ``name`` by ``make(parent, leaf, old)`` (after deleting the old one)."""
    with h5py.File(path, "a") as f:
        old = f[name]
        values, attrs = old[()], dict(old.attrs)
        parent, leaf = old.parent, name.split("/")[-1]
        del parent[leaf]
        new = make(parent, leaf, values)
        if isinstance(new, h5py.Dataset | h5py.Group):
            for key, value in attrs.items():
                new.attrs[key] = value


RETYPES: dict[str, Callable[[h5py.Group, str, np.ndarray], Any]] = {
    "missing": lambda parent, leaf, values: None,
    "renamed": lambda parent, leaf, values: parent.create_dataset(leaf + "_old", data=values),
    "string": lambda parent, leaf, values: parent.create_dataset(
        leaf, data=np.full(values.shape, "1.5", dtype=object), dtype=h5py.string_dtype()
    ),
    "group": lambda parent, leaf, values: parent.create_group(leaf),
    "integer": lambda parent, leaf, values: parent.create_dataset(
        leaf, data=np.round(values).astype(np.int64)
    ),
    "complex": lambda parent, leaf, values: parent.create_dataset(
        leaf, data=values.astype(np.complex128)
    ),
}


@pytest.mark.parametrize("retype", list(RETYPES))
@pytest.mark.parametrize("reader", list(READERS))
def test_missing_renamed_retyped_datasets(tmp_path: Path, reader: str, retype: str) -> None:
    write, read = READERS[reader]
    for name in REQUIRED[reader]:
        if retype == "integer" and name not in FIELDS[reader]:
            continue  # coordinates may be integers
        path = tmp_path / f"{retype}_{name.replace('/', '_')}.h5"
        write(path)
        _rewrite(path, name, RETYPES[retype])
        leaf = name.split("/")[-1]
        if reader == "well" and retype in ("missing", "renamed") and name.startswith("t0"):
            assert_clear_error(read, path, "density")  # listed in field_names but missing
        elif reader == "pdebench" and retype in ("missing", "renamed"):
            assert_clear_error(read, path, "unrecognised layout")  # nothing left to read
        else:
            assert_clear_error(read, path, leaf)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("reader", list(READERS))
def test_non_finite_values(tmp_path: Path, reader: str, value: float) -> None:
    write, read = READERS[reader]
    for name in FIELDS[reader] + [n for n in REQUIRED[reader] if n not in FIELDS[reader]]:
        path = tmp_path / f"bad_{name.replace('/', '_')}.h5"
        write(path)
        with h5py.File(path, "a") as f:
            values = f[name][()]
            values.reshape(-1)[values.size // 2] = value
            f[name][...] = values
        assert_clear_error(read, path, name.split("/")[-1])


# ------------------------------------------------------------------------------------------------
# gtlib's own writers store checksums, so flipped data bits in their files are caught
def _checked_everywhere(path: Path) -> list[str]:
    with h5py.File(path, "r") as f:
        names: list[str] = []
        f.visititems(
            lambda name, node: (
                names.append(name)
                if isinstance(node, h5py.Dataset) and node.ndim > 0 and not node.fletcher32
                else None
            )
        )
    return names


def test_gtlib_writers_store_checksums(tmp_path: Path) -> None:
    system = ActiveOUParticles(8, packing_fraction=0.3, v0=1.0)
    simulate(system, 3, 1e-2, n_trajectories=2, out=tmp_path / "run.h5", progress=False)
    gtlib_write_pdebench(tmp_path / "pdebench.h5", {"tensor": _values(2, 4, 8)}, {"nu": 0.1})
    time = np.linspace(0, 1, 4)
    written = write_well_dataset(
        tmp_path / "well",
        "demo",
        fields=[WellField("density", _values(4, 4, 5, 6), 0, True, True)],
        time=time,
        coords={"x": np.linspace(0, 1, 5), "y": np.linspace(0, 1, 6)},
        boundaries=[],
        parameters={"nu": 0.1},
        n=4,
        splits=(0.5, 0.25, 0.25),
    )
    files = [tmp_path / "run.h5", tmp_path / "pdebench.h5", written["train"]]
    for path, read in zip(files, (read_particle_dataset, read_pde, read_pde)):
        assert _checked_everywhere(path) == [], path
        pristine = read(path)
        ranges = _data_ranges(path)
        name = {0: "pos", 1: "tensor", 2: "t0_fields/density"}[files.index(path)]
        start, stop = ranges[name][-1]
        broken = path.with_name("broken_" + path.name)
        broken.write_bytes(path.read_bytes())
        _flip(broken, (start + stop) // 2, 0x04)
        assert_clear_error(read, broken, name.split("/")[-1])
        assert _same(read(path), pristine)
    # simulate() also checksums its root attributes, which HDF5 leaves unchecked.
    broken = tmp_path / "attrs.h5"
    broken.write_bytes((tmp_path / "run.h5").read_bytes())
    with h5py.File(broken, "a") as f:
        f.attrs["box_length"] = f.attrs["box_length"] * 2
    assert_clear_error(read_particle_dataset, broken, "attrs_sha256")


# ------------------------------------------------------------------------------------------------
# The checkpoint of an unfinished simulate() run
def test_corrupt_simulate_checkpoint(tmp_path: Path) -> None:
    system = ActiveOUParticles(8, packing_fraction=0.3, v0=1.0)
    kwargs = dict(n_trajectories=2, seed=3, checkpoint_every=2, progress=False)

    class Stop(RuntimeError):
        pass

    def stop(s: int, state: Any) -> None:
        if s == 5:
            raise Stop

    out = tmp_path / "run.h5"
    with pytest.raises(Stop):
        simulate(system, 8, 1e-2, out=out, callback=stop, **kwargs)
    sidecar, snapshots = Path(str(out) + ".partial.state"), Path(str(out) + ".partial")
    good = sidecar.read_bytes()
    cases = {"empty": b"", "truncated": good[: len(good) // 2], "text": b"not a checkpoint"}
    # A flipped bit in each stored record (the pickle, pos, g, the generator state): torch.load
    # checks no CRC, the checkpoint's own SHA-256 must catch it.
    with zipfile.ZipFile(sidecar) as archive:
        for info in archive.infolist():
            if info.filename.endswith(("data.pkl", "/data/0", "/data/1", "/data/2")):
                start = info.header_offset + 30 + len(info.filename) + len(info.extra)
                flipped = bytearray(good)
                flipped[start + info.compress_size // 2] ^= 0x08
                cases[info.filename] = bytes(flipped)
    assert len(cases) == 7
    for content in cases.values():
        sidecar.write_bytes(content)
        with pytest.raises(ValueError, match=f"{sidecar}"):
            simulate(system, 8, 1e-2, out=out, **kwargs)
    sidecar.unlink()
    sidecar.mkdir()
    with pytest.raises(ValueError, match=f"{sidecar}"):
        simulate(system, 8, 1e-2, out=out, **kwargs)
    sidecar.rmdir()
    torch.save({"format": "something else"}, sidecar)
    with pytest.raises(ValueError, match=f"{sidecar}.*not a checkpoint written by simulate"):
        simulate(system, 8, 1e-2, out=out, **kwargs)
    sidecar.write_bytes(good)
    snapshots.unlink()
    with pytest.raises(ValueError, match=f"{sidecar}.*snapshot file"):
        simulate(system, 8, 1e-2, out=out, **kwargs)


# ------------------------------------------------------------------------------------------------
# The OGB CSV reader (gzip checks its data with a CRC-32)
def test_corrupt_ogb_csv(tmp_path: Path) -> None:
    good = tmp_path / "edge.csv.gz"
    with gzip.open(good, "wt") as handle:
        handle.write("".join(f"{i},{(i * 7) % 50}\n" for i in range(200)))
    expected = np.array([[i, (i * 7) % 50] for i in range(200)])
    assert np.array_equal(read_csv_gz(good, integer=True, num_columns=2), expected)
    data = good.read_bytes()

    def read(path: Path) -> dict[str, np.ndarray]:
        return {"v": read_csv_gz(path, integer=True, num_columns=2)}

    for cut in (0, 5, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{cut}.csv.gz"
        path.write_bytes(data[:cut])
        if cut == 0:
            # an empty file is an empty table in OGB's reader; with the column count: an error
            assert read_csv_gz(path, num_columns=2).shape == (0, 2)
            continue
        assert_clear_error(read, path)
    for offset in range(10, len(data) - 8, max(1, len(data) // 40)):  # the deflate stream
        path = tmp_path / f"flip{offset}.csv.gz"
        path.write_bytes(data)
        _flip(path, offset, 0x01)
        assert_error_or_same(read, path, {"v": expected})
    assert isinstance(assert_clear_error(read, tmp_path / "missing.csv.gz"), FileNotFoundError)
    folder = tmp_path / "folder.csv.gz"
    folder.mkdir()
    assert_clear_error(read, folder)
