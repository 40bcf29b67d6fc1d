"""``GTLIB_OUTPUT_POOL``: the compiled kernels' large outputs reuse blocks freed by earlier ones.

The pool changes where an output's memory comes from, never a value, so the tests check the
switch and its parsing, that blocks are really reused (the same addresses come back), that results
are bitwise those without the pool even when a reused block held garbage (rows no window covers,
receivers without senders), that the limit bounds the idle memory, that ``release`` and turning
the pool off unmap it, and that pooled tensors behave as tensors (gradient accumulation, shared
memory). Outputs under the pool's threshold (32 MB) never use it, so the problems here are just
above it.
"""

from __future__ import annotations

import os
import select

import pytest
import torch

from gtlib.attention import Pattern
from gtlib.attention.backends import _memory, cpu, windows

# [N, H, C] float32 rows of 512 bytes: 70,000 rows are 35.8 MB, above the 32 MB threshold
ROWS, HEADS, CHANNELS = 70_000, 4, 32
BLOCK = 36 << 20  # such an output's block: whole 2 MB units


def _compiled(state) -> bool:
    return cpu.setting() != "0" and state.available()


needs_window_kernel = pytest.mark.skipif(
    not _compiled(windows._STATE), reason="needs the compiled window kernel"
)
needs_fused_kernel = pytest.mark.skipif(
    not _compiled(cpu._STATE), reason="needs the compiled fused kernel"
)


@pytest.fixture
def pool(monkeypatch):
    """Turns the pool on (the given limit) and off again after the test, its blocks unmapped."""

    def set_limit(value: str) -> None:
        monkeypatch.setenv(_memory.POOL_ENV_VAR, value)

    yield set_limit
    monkeypatch.setenv(_memory.POOL_ENV_VAR, "0")
    for state in (cpu._STATE, windows._STATE):
        if state.module is not None:
            _memory.configure_pool(state.module)
    _memory.release_output_pool()


def _tables(seed: int, rows: int = ROWS, grad: bool = True):
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randn(rows, HEADS, CHANNELS, generator=gen).requires_grad_(grad) for _ in range(3)
    ]


def _window_layout(rows: int, covered: int, seed: int = 0):
    """Windows of 1..32 rows over a random subset of ``covered`` of the ``rows`` rows."""
    gen = torch.Generator().manual_seed(seed)
    index = torch.randperm(rows, generator=gen)[:covered]
    sizes = torch.randint(1, 33, (covered,), generator=gen)
    ends = sizes.cumsum(0)
    ends = ends[ends < covered]
    ptr = torch.cat([torch.zeros(1, dtype=torch.long), ends, torch.tensor([covered])])
    return ptr, index


def _window_step(q, k, v, ptr, index):
    out = windows.window_attention(q, k, v, ptr, index, compiled=True)
    grads = torch.autograd.grad(out, (q, k, v), torch.ones_like(out))
    return out.detach(), grads


def _assert_equal(got, want) -> None:
    """Bitwise equality of two ``(out, grads)`` results (no reference to them kept)."""
    assert torch.equal(got[0], want[0])
    assert all(torch.equal(a, b) for a, b in zip(got[1], want[1]))


def _poison(out, grads) -> None:
    """NaN over a result's tensors (so that a block reused from them holds garbage)."""
    for tensor in (out, *grads):
        tensor.fill_(float("nan"))


def test_off_by_default(monkeypatch):
    monkeypatch.delenv(_memory.POOL_ENV_VAR, raising=False)
    assert _memory.output_pool_limit() == 0


@pytest.mark.parametrize(
    "value, expected",
    [("0", 0), ("off", 0), ("4G", 4 << 30), ("512m", 512 << 20), ("1.5G", 3 << 29),
     (str(64 << 20), 64 << 20)],
)  # fmt: skip
def test_limit_parsing(monkeypatch, value, expected):
    monkeypatch.setenv(_memory.POOL_ENV_VAR, value)
    assert _memory.output_pool_limit() == expected


def test_on_means_a_quarter_of_the_memory(monkeypatch):
    monkeypatch.setenv(_memory.POOL_ENV_VAR, "1")
    quarter = max(_memory._physical_memory() // 4, _memory.POOL_MIN_BYTES)
    assert _memory.output_pool_limit() == quarter > 0


# not numbers, negative, under the pool's smallest block (keeps nothing), not finite, over int64
@pytest.mark.parametrize("value", ["yes", "-1", "4X", "G", "1e", "2", "1K", "inf", "1e400", "1e30"])
def test_bad_setting_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(_memory.POOL_ENV_VAR, value)
    with pytest.raises(ValueError, match="GTLIB_OUTPUT_POOL"):
        _memory.output_pool_limit()


@needs_window_kernel
def test_window_outputs_reuse_blocks_bitwise(pool):
    q, k, v = _tables(0)
    ptr, index = _window_layout(ROWS, ROWS)
    pool("0")
    reference = _window_step(q, k, v, ptr, index)
    pool("1G")
    before = _memory.output_pool_stats()
    addresses = set()
    for _ in range(3):
        out, grads = _window_step(q, k, v, ptr, index)
        _assert_equal((out, grads), reference)
        step = {t.data_ptr() for t in (out, *grads)}
        if addresses:  # every later step's outputs sit in blocks an earlier step freed
            assert step == addresses
        addresses = step
        del out, grads
    after = _memory.output_pool_stats()
    assert after["misses"] - before["misses"] == 4  # out, dq, dk, dv of the first step
    assert after["hits"] - before["hits"] == 8


@needs_window_kernel
@pytest.mark.parametrize("indexed", [True, False])
def test_stale_blocks_do_not_reach_rows_in_no_window(pool, indexed):
    """A reused block full of NaN: rows in no window must still be exact zeros (with an index:
    the rows it leaves out; without one: the rows after the windows)."""
    q, k, v = _tables(1)
    pool("1G")
    ptr, index = _window_layout(ROWS, ROWS, seed=1)
    out, grads = _window_step(q, k, v, ptr, index if indexed else None)
    _poison(out, grads)
    del out, grads
    ptr, index = _window_layout(ROWS, ROWS // 2, seed=2)  # half the rows in no window
    covered = index if indexed else slice(0, ROWS // 2)
    index = index if indexed else None
    hits = _memory.output_pool_stats()["hits"]
    out, grads = _window_step(q, k, v, ptr, index)
    assert _memory.output_pool_stats()["hits"] - hits == 4
    pool("0")
    _assert_equal((out, grads), _window_step(q, k, v, ptr, index))
    uncovered = torch.ones(ROWS, dtype=torch.bool)
    uncovered[covered] = False
    assert all(t[uncovered].abs().sum() == 0 for t in (out, *grads))


@needs_fused_kernel
@pytest.mark.parametrize("score", ["dot", "additive"])
def test_fused_outputs_reuse_blocks_bitwise(pool, monkeypatch, score):
    """Every output pooled (the threshold lowered): out, lse, weights, the score gradients and
    the gradients of the edge terms, bias and att, all from blocks that held NaN. Receivers
    without senders (a third of the nodes) still get zeros."""
    monkeypatch.setattr(_memory, "POOL_MIN_BYTES", 1)
    gen = torch.Generator().manual_seed(3)
    rows, edges = 3000, 9000
    receivers = torch.randint(0, 2 * rows // 3, (edges,), generator=gen).sort().values
    senders = torch.randint(0, rows, (edges,), generator=gen)
    pattern = Pattern.from_edge_index(torch.stack([senders, receivers]), rows)
    q, k, v = _tables(4, rows=rows)
    key_edge, value_edge = (
        torch.randn(edges, HEADS, CHANNELS, generator=gen).requires_grad_() for _ in range(2)
    )
    bias = torch.randn(edges, HEADS, generator=gen).requires_grad_()
    att = None
    if score == "additive":
        att = torch.randn(HEADS, CHANNELS, generator=gen).requires_grad_()
    inputs = (q, k, v, key_edge, value_edge, bias) + ((att,) if att is not None else ())

    def run():
        out = cpu.fused_attention(q, k, v, pattern, score=score, att=att, scale=0.5,
                                  key_edge=key_edge, value_edge=value_edge, bias=bias)  # fmt: skip
        grads = torch.autograd.grad(out, inputs, torch.ones_like(out))
        weights = cpu.fused_attention_weights(q, k, v, pattern, score=score, att=att, scale=0.5,
                                              key_edge=key_edge, bias=bias)  # fmt: skip
        return out.detach(), grads + (weights,)

    pool("0")
    reference = run()
    pool("1G")
    out, grads = run()
    _poison(out, grads)
    del out, grads
    hits = _memory.output_pool_stats()["hits"]
    out, grads = run()
    assert _memory.output_pool_stats()["hits"] - hits >= len(inputs) + 2
    _assert_equal((out, grads), reference)


@needs_window_kernel
def test_limit_bounds_idle_blocks_and_release_unmaps(pool):
    q, k, v = _tables(5)
    ptr, index = _window_layout(ROWS, ROWS)
    pool(str(BLOCK + BLOCK // 2))  # room for one idle block
    out, grads = _window_step(q, k, v, ptr, index)
    del out, grads  # four blocks freed: one kept, three unmapped
    stats = _memory.output_pool_stats()
    assert stats["idle_blocks"] == 1 and stats["idle_bytes"] == BLOCK
    _memory.release_output_pool()
    assert _memory.output_pool_stats()["idle_bytes"] == 0
    out, grads = _window_step(q, k, v, ptr, index)
    del out, grads
    assert _memory.output_pool_stats()["idle_blocks"] == 1
    pool("0")  # off: the next call unmaps the idle blocks
    _window_step(q[:10], k[:10], v[:10], torch.tensor([0, 10]), None)
    assert _memory.output_pool_stats()["idle_bytes"] == 0


@needs_window_kernel
def test_small_outputs_never_use_the_pool(pool):
    q, k, v = _tables(6, rows=ROWS // 2)
    ptr, index = _window_layout(ROWS // 2, ROWS // 2)
    pool("1G")
    before = _memory.output_pool_stats()
    _window_step(q, k, v, ptr, index)
    after = _memory.output_pool_stats()
    assert (after["hits"], after["misses"]) == (before["hits"], before["misses"])


@needs_window_kernel
def test_pooled_tensors_accumulate_and_move_to_shared_memory(pool):
    q, k, v = _tables(7)
    ptr, index = _window_layout(ROWS, ROWS)
    pool("0")
    _, (dq, _, _) = _window_step(q, k, v, ptr, index)
    pool("1G")
    for _ in range(2):  # the first backward's dq becomes q.grad, the second adds to it
        out = windows.window_attention(q, k, v, ptr, index, compiled=True)
        out.backward(torch.ones_like(out))
    assert not q.grad.untyped_storage().resizable()  # the pooled tensor itself, not a copy
    assert torch.allclose(q.grad, 2 * dq, rtol=0, atol=1e-6)
    out = windows.window_attention(q, k, v, ptr, index, compiled=True).detach()
    expected = out.clone()
    out.share_memory_()
    assert out.is_shared() and torch.equal(out, expected)
    with pytest.raises(RuntimeError, match="not resizable"):  # as documented
        q.grad.resize_(ROWS + 1, HEADS, CHANNELS)


def test_public_names_are_the_pool_functions():
    from gtlib.attention import backends

    assert backends.output_pool_stats is _memory.output_pool_stats
    assert backends.release_output_pool is _memory.release_output_pool


@needs_window_kernel
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_drops_the_idle_blocks(pool):
    """A child (e.g. a DataLoader worker) unmaps its copies of the idle blocks at once; the
    parent keeps its own."""
    q, k, v = _tables(9)
    ptr, index = _window_layout(ROWS, ROWS)
    pool("1G")
    out, grads = _window_step(q, k, v, ptr, index)
    del out, grads
    assert _memory.output_pool_stats()["idle_blocks"] == 4
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report and leave at once (no test machinery)
        os.close(read)
        stats = _memory.output_pool_stats()
        os.write(write, f"{stats['idle_blocks']} {stats['idle_bytes']}".encode())
        os._exit(0)
    os.close(write)
    ready, _, _ = select.select([read], [], [], 60)
    report = os.read(read, 100).decode() if ready else "timeout"
    os.close(read)
    os.waitpid(pid, 0)
    assert report == "0 0"
    assert _memory.output_pool_stats()["idle_blocks"] == 4


def test_limit_keeps_the_newest_blocks():
    """Blocks given back beyond the limit push out the oldest idle ones (pure bookkeeping,
    checked on the pool through the window extension)."""
    if not _compiled(windows._STATE):
        pytest.skip("needs the compiled window kernel")
    module = windows._STATE.module
    limit = 2 * BLOCK
    module.pool_configure(limit, 4 << 20)  # out blocks pooled, not the lse [L, H] (1.1 MB)
    try:
        q, k, v = _tables(10)
        ptr, index = _window_layout(ROWS, ROWS)
        no_index = torch.empty(0, dtype=torch.long)
        q, k, v = q.detach(), k.detach(), v.detach()
        half = ROWS // 2
        out, _ = module.forward(q, k, v, ptr, index, 0.25)
        small = module.forward(q[:half], k[:half], v[:half], torch.tensor([0, 5]), no_index, 0.25)[
            0
        ]
        del out  # idle: one large block
        del small  # idle: the large block and a small one
        _, _, idle_bytes, idle_blocks, _, _ = module.pool_stats()
        assert (idle_bytes, idle_blocks) == (BLOCK + BLOCK // 2, 2)
        big = module.forward(q, k, v, ptr, index, 0.25)[0]
        assert module.pool_stats()[2] == BLOCK // 2  # the large block reused, the small one idle
        other = module.forward(q, k, v, ptr, index, 0.25)[0]
        del big, other  # two large blocks back: the oldest idle (the small one) unmapped first
        _, _, idle_bytes, idle_blocks, _, _ = module.pool_stats()
        assert (idle_bytes, idle_blocks) == (2 * BLOCK, 2)
    finally:
        module.pool_configure(0, _memory.POOL_MIN_BYTES)
        _memory._pool_settings.pop(id(module), None)


def test_kernels_refuse_offsets_that_would_leave_outputs_unwritten():
    """The entry points check what "every element written" rests on (a pooled block holds old
    data), even when called directly, past the Python checks."""
    q, k, v = (t.detach() for t in _tables(11, rows=8))
    no_index = torch.empty(0, dtype=torch.long)
    if _compiled(windows._STATE):
        module = windows._STATE.module
        for ptr, index, message in [
            (torch.tensor([1, 4]), no_index, "start at 0"),
            (torch.tensor([0, 5, 3]), no_index, "non-decreasing"),
            (torch.tensor([0, 9]), no_index, "ptr\\[-1\\]"),
            (torch.tensor([0, 3]), torch.arange(4), "ptr\\[-1\\]"),
        ]:
            with pytest.raises(RuntimeError, match=message):
                module.forward(q, k, v, ptr, index, 0.5)
    if _compiled(cpu._STATE):
        module = cpu._STATE.module
        col = torch.arange(8)
        for ptr, message in [
            (torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 8]), "run from 0"),
            (torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 7]), "run from 0"),
            (torch.tensor([0, 2, 1, 3, 4, 5, 6, 7, 8]), "non-decreasing"),
        ]:
            with pytest.raises(RuntimeError, match=message):
                module.forward(q, k, v, None, None, None, None, ptr, col, False, 0.2, 0.5, True)
