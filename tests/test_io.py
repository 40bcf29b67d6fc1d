"""Tests of :mod:`gtlib.io` (atomic file writing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gtlib.io import atomic_torch_save, atomic_write, atomic_write_text


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
