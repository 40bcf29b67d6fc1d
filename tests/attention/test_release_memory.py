"""``GTLIB_RELEASE_MEMORY``: the fused kernel gives free heap pages back before its backward.

What it changes is only when the system gets freed pages back, so the tests check the switch,
that the call happens where documented, that results are bitwise the same with it on, and (where
glibc is the C library) that resident memory really drops after freeing a fragmented heap.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gtlib.attention import Pattern
from gtlib.attention.backends import _memory, cpu

GLIBC = _memory._malloc_trim() is not None


def test_off_by_default(monkeypatch):
    monkeypatch.delenv(_memory.ENV_VAR, raising=False)
    assert not _memory.enabled()
    assert not _memory.release(1 << 40)


@pytest.mark.parametrize("value", ["2", "yes", "auto"])
def test_bad_setting_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(_memory.ENV_VAR, value)
    with pytest.raises(ValueError, match="GTLIB_RELEASE_MEMORY"):
        _memory.enabled()


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
def test_release_only_for_large_calls(monkeypatch):
    monkeypatch.setenv(_memory.ENV_VAR, "1")
    assert _memory.enabled()
    assert not _memory.release(_memory.MIN_BYTES - 1)
    assert _memory.release(_memory.MIN_BYTES)


def _problem(seed=0, num_nodes=40, num_edges=300, heads=2, channels=8):
    gen = torch.Generator().manual_seed(seed)
    edge_index = torch.randint(0, num_nodes, (2, num_edges), generator=gen)
    pattern = Pattern.from_edge_index(edge_index, num_nodes)
    q, k, v = (
        torch.randn(num_nodes, heads, channels, generator=gen, requires_grad=True) for _ in range(3)
    )
    return pattern, q, k, v


@pytest.mark.skipif(not GLIBC, reason="malloc_trim is glibc's")
@pytest.mark.parametrize("score", ["dot", "additive"])
def test_kernel_releases_before_backward_and_results_are_bitwise_equal(monkeypatch, score):
    if cpu.setting() == "0" or not cpu.available():
        pytest.skip("needs the compiled kernel")
    pattern, q, k, v = _problem()
    att = torch.randn(2, 8) if score == "additive" else None

    def run():
        out = cpu.fused_attention(q, k, v, pattern, score=score, att=att, scale=0.5)
        grads = torch.autograd.grad(out.square().sum(), (q, k, v))
        return out.detach(), grads

    monkeypatch.setenv(_memory.ENV_VAR, "0")
    out_off, grads_off = run()
    calls = []
    trim = _memory._malloc_trim()
    monkeypatch.setattr(_memory, "_malloc_trim", lambda: lambda pad: calls.append(pad) or trim(pad))
    monkeypatch.setattr(_memory, "MIN_BYTES", 0)  # a small problem counts as large
    monkeypatch.setenv(_memory.ENV_VAR, "1")
    out_on, grads_on = run()
    assert calls == [0]  # once per backward, none in the forward
    assert torch.equal(out_on, out_off)
    for on, off in zip(grads_on, grads_off):
        assert torch.equal(on, off)


@pytest.mark.skipif(not GLIBC or not sys.platform.startswith("linux"), reason="glibc on Linux")
def test_release_returns_fragmented_heap_pages():
    """A heap fragmented as in a training step (blocks freed between live ones) keeps its freed
    pages resident until released; release() hands them back (RSS from /proc)."""
    script = r"""
import os, torch
os.environ["GTLIB_RELEASE_MEMORY"] = "1"
from gtlib.attention.backends import _memory
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) * 1024
keep, drop = [], []
for i in range(24):  # 24 blocks of 4 MB, every other one freed; the dynamic threshold rises
    block = torch.ones(1 << 20)
    (keep if i % 2 else drop).append(block)
    if i == 0:
        del drop[0]
drop.clear()
before = rss()
assert _memory.release(_memory.MIN_BYTES)
print(before - rss())
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    released = int(result.stdout.strip().splitlines()[-1])
    assert released >= 20 << 20  # most of the 11 freed 4 MB blocks (44 MB)
