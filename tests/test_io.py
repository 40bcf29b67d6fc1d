"""Tests of :mod:`gtlib.io` (atomic file writing)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

import gtlib.io as gtlib_io
from gtlib.io import atomic_torch_save, atomic_write, atomic_write_text, read_hdf5


class _Boom(RuntimeError):
    pass


def _fail_after_writing(tmp: Path) -> None:
    tmp.write_text("partial")
    raise _Boom("write failed")


def test_atomic_write_success(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.txt"  # parent created on demand
    seen: list[Path] = []

    def write(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_text("hello")

    result = atomic_write(target, write)
    assert result == target
    assert target.read_text() == "hello"
    (tmp,) = seen
    assert tmp.parent == target.parent
    assert tmp.name.startswith(".out.txt.") and tmp.name.endswith(".tmp")
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


def test_atomic_write_accepts_str_path(tmp_path: Path) -> None:
    target = tmp_path / "a.bin"
    assert atomic_write(str(target), lambda tmp: tmp.write_bytes(b"\x00\x01")) == target
    assert target.read_bytes() == b"\x00\x01"


def test_atomic_write_failure_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    with pytest.raises(_Boom):
        atomic_write(target, _fail_after_writing)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_failure_before_creating_temp(tmp_path: Path) -> None:
    def write(tmp: Path) -> None:
        raise _Boom("nothing written")

    with pytest.raises(_Boom):
        atomic_write(tmp_path / "out.txt", write)
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_failure_keeps_existing_target(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(_Boom):
        atomic_write(target, _fail_after_writing)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_keyboard_interrupt_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")

    def write(tmp: Path) -> None:
        tmp.write_text("partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, write)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_write_replaces_existing_target(tmp_path: Path) -> None:
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write_text(target, "new ✓")
    assert target.read_text(encoding="utf-8") == "new ✓"
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_atomic_torch_save_roundtrip(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    state = {"step": 3, "w": torch.arange(4.0)}
    assert atomic_torch_save(state, target) == target
    loaded = torch.load(target)
    assert loaded["step"] == 3
    assert torch.equal(loaded["w"], state["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def test_atomic_torch_save_failure_keeps_existing_target(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    torch.save({"step": 1}, target)
    with pytest.raises(Exception):  # noqa: B017 - a lambda cannot be pickled
        atomic_torch_save({"step": 2, "bad": lambda: None}, target)
    assert torch.load(target) == {"step": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_stale_temporaries_are_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "ck.pt"
    target.write_text("old")
    host = gtlib_io._host_tag()
    dead = tmp_path / f".ck.pt.{host}.{_dead_pid()}.{'a' * 32}.tmp"  # a killed writer
    legacy = tmp_path / f".ck.pt.{'b' * 32}.tmp"  # the older name, without a writer
    live = tmp_path / f".ck.pt.{host}.{os.getpid()}.{'c' * 32}.tmp"  # a concurrent writer
    elsewhere = tmp_path / f".ck.pt.{'0' * 8}.1.{'d' * 32}.tmp"  # another host's writer
    other_target = tmp_path / f".other.pt.{host}.{_dead_pid()}.{'e' * 32}.tmp"
    unrelated = tmp_path / ".ck.pt.notes.tmp"
    for file in (dead, legacy, live, elsewhere, other_target, unrelated):
        file.write_text("partial")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    remaining = {p.name for p in tmp_path.iterdir()}
    assert remaining == {"ck.pt", live.name, elsewhere.name, other_target.name, unrelated.name}
    # The function on its own: removes the other target's stale file, reports what it removed.
    assert gtlib_io.remove_stale_temporaries(tmp_path / "other.pt") == [other_target]
    assert gtlib_io.remove_stale_temporaries(tmp_path / "missing" / "x") == []


def test_killed_writer_leaves_a_temporary_that_the_next_write_removes(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    code = (
        "import os, signal, sys\n"
        "from gtlib.io import atomic_write\n"
        "def write(tmp):\n"
        "    tmp.write_bytes(b'half')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "atomic_write(sys.argv[1], write)\n"
    )
    if os.name == "nt":
        pytest.skip("SIGKILL is POSIX")
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", code, str(target)], cwd=root, check=False)
    assert result.returncode == -signal.SIGKILL
    (orphan,) = tmp_path.iterdir()
    assert orphan.name.startswith(".out.bin.") and orphan.read_bytes() == b"half"
    atomic_torch_save({"step": 1}, target)
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]
    assert torch.load(target) == {"step": 1}


def test_read_hdf5_refuses_chunks_missing_from_the_index(tmp_path: Path) -> None:
    path = tmp_path / "sparse.h5"
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("x", shape=(4, 3), chunks=(1, 3), dtype="f8")
        ds[0] = [1.0, 2.0, 3.0]
        ds[2] = [4.0, 5.0, 6.0]  # rows 1 and 3: never written, so not in the chunk index
    with h5py.File(path, "r") as f:
        ds = f["x"]
        assert np.array_equal(ds[1], np.zeros(3))  # what HDF5 itself returns: the fill value
        assert np.array_equal(read_hdf5(ds, 0), [1.0, 2.0, 3.0])
        assert np.array_equal(read_hdf5(ds, (slice(0, 4, 2), slice(None))), [[1, 2, 3], [4, 5, 6]])
        assert np.array_equal(read_hdf5(ds, np.int64(2)), [4.0, 5.0, 6.0])
        for selection in ((), 1, slice(0, 2), (Ellipsis, 0), -1):
            with pytest.raises(OSError, match=r"'/x'.*chunk at \((1|3), 0\) is missing"):
                read_hdf5(ds, selection)


def test_read_hdf5_refuses_non_standard_number_types(tmp_path: Path) -> None:
    path = tmp_path / "types.h5"
    odd = h5py.h5t.IEEE_F32LE.copy()
    odd.set_ebias(126)  # what a flipped bit in the datatype message can make: values doubled
    with h5py.File(path, "w") as f:
        f.create_dataset("good", data=np.arange(3.0, dtype=np.float32))
        f.create_dataset("int", data=np.arange(3, dtype=">i2"))
        f.create_dataset("flag", data=np.array([True, False]))
        space = h5py.h5s.create_simple((3,))
        h5py.h5d.create(f.id, b"odd", odd, space).write(
            h5py.h5s.ALL, h5py.h5s.ALL, np.arange(3.0, dtype=np.float32), mtype=odd
        )  # the bytes of IEEE binary32, read under the odd type
    with h5py.File(path, "r") as f:
        assert np.array_equal(read_hdf5(f["good"]), [0.0, 1.0, 2.0])
        assert np.array_equal(read_hdf5(f["int"]), [0, 1, 2])
        assert np.array_equal(read_hdf5(f["flag"]), [True, False])
        assert not np.array_equal(f["odd"][()], [0.0, 1.0, 2.0])  # h5py converts silently
        with pytest.raises(OSError, match="'/odd'.*non-standard"):
            read_hdf5(f["odd"])
