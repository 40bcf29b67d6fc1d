"""The benchmark harness's memory measures (``benchmarks/_harness.py``)."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from _harness import live_peak_bytes, machine_summary, time_steps  # noqa: E402


def test_live_peak_is_the_most_bytes_held_at_once():
    """Blocks of known sizes allocated and freed in a known order: the peak is the largest sum
    held at one time (12 MB here), whatever order the sizes come in."""
    kept = []

    def step():
        a = torch.empty(1_000_000)  # 4 MB
        b = torch.empty(2_000_000)  # 8 MB: 12 MB held
        del a
        c = torch.empty(500_000)  # 2 MB: 10 MB held
        del b, c
        kept.append(torch.empty(250_000))  # 1 MB, held past the step

    assert live_peak_bytes(step) == 12_000_000
    kept.clear()


def test_live_peak_of_a_backward():
    """``y = exp(2 x)``, ``y.sum().backward()`` on ``x [n]``: the forward holds ``2 x`` and ``y``;
    the product is freed once ``exp`` has run (``exp`` keeps its output). The backward holds
    ``y`` and its gradient ``g``, frees ``y`` after ``exp``'s backward, then holds ``g`` and
    ``x.grad``: 2 n floats at the peak, plus a few scalars (the loss and its gradient)."""
    n = 1_000_000
    x = torch.randn(n, requires_grad=True)

    def step():
        x.grad = None
        (x * 2).exp().sum().backward()

    step()
    assert 2 * 4 * n <= live_peak_bytes(step) <= 2 * 4 * n + 64
    record = time_steps(step, 2, live=True)
    assert 2 * 4 * n <= record["live_step_peak_bytes"] <= 2 * 4 * n + 64
    assert len(record["times_s"]) == 2


def test_machine_summary_names_the_allocator_setting(monkeypatch):
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    monkeypatch.delenv("GTLIB_OUTPUT_POOL", raising=False)
    assert machine_summary(False)["allocator"] == "default glibc"
    assert machine_summary(True)["allocator"] == "MALLOC_MMAP_MAX_=0"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "1")
    assert machine_summary(False)["allocator"] == "default glibc + THP_MEM_ALLOC_ENABLE=1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    assert machine_summary(False)["allocator"] == "default glibc"
    assert machine_summary(False, pool=True)["allocator"] == "default glibc + GTLIB_OUTPUT_POOL=1"
    monkeypatch.setenv("GTLIB_OUTPUT_POOL", "4G")
    assert machine_summary(True)["allocator"] == "MALLOC_MMAP_MAX_=0 + GTLIB_OUTPUT_POOL=4G"
    monkeypatch.setenv("GTLIB_OUTPUT_POOL", "0")
    assert machine_summary(False)["allocator"] == "default glibc"
