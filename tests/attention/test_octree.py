"""Octree windows, relay tokens and cross-attention patterns against brute force."""

import math

import numpy as np
import pytest
import torch

from gtlib.attention import Pattern, attend


def _clouds(sizes, seed=0, spread=None):
    gen = torch.Generator().manual_seed(seed)
    parts, batch = [], []
    for b, n in enumerate(sizes):
        scale = torch.tensor(spread or [1.0 + b, 2.0, 0.5 + 0.5 * b], dtype=torch.float64)
        parts.append(torch.rand(n, 3, generator=gen, dtype=torch.float64) * scale - b)
        batch.append(torch.full((n,), b, dtype=torch.long))
    return torch.cat(parts), torch.cat(batch)


def _unit(pos, batch, cylindrical=False, origin=None):
    """Per-cloud normalised coordinates in numpy, written independently of the library."""
    pos, batch = pos.numpy().astype(np.float64), batch.numpy()
    out = np.zeros_like(pos)
    for b in np.unique(batch):
        p = pos[batch == b]
        if cylindrical:
            o = (
                np.zeros(3)
                if origin is None
                else np.asarray(origin[b] if origin.ndim == 2 else origin)
            )
            rel = p - o
            r = np.sqrt(rel[:, 0] ** 2 + rel[:, 1] ** 2)
            theta = np.arctan2(rel[:, 1], rel[:, 0])
            z = rel[:, 2]
            u = np.stack([r / r.max(), (theta + np.pi) / (2 * np.pi), (z - z.min()) / np.ptp(z)], 1)
        else:
            low = p.min(0)
            u = (p - low) / (p.max(0) - low).max()
        out[batch == b] = u
    return out


def _brute_cells(unit, depth, shift):
    """Integer cell coordinates of every point at ``depth`` (half-cell shift when asked)."""
    v = unit * 2.0**depth + (0.5 if shift else 0.0)
    cells = np.floor(v).astype(np.int64)
    if not shift:
        cells = np.minimum(cells, 2**depth - 1)  # the far faces belong to the last cell
    return cells


def _windows(level):
    """Windows as lists of caller point indices, from the block pattern alone."""
    out = []
    for block in level.pattern.blocks:
        out.extend(level.perm[block].tolist())
    return out


@pytest.mark.parametrize("cylindrical", [False, True])
@pytest.mark.parametrize("shift", [False, True])
def test_octree_windows_against_brute_force(cylindrical, shift):
    pos, batch = _clouds([300, 170, 45], seed=1)
    w = 16
    tree = Pattern.octree(pos, w, levels=3, batch=batch, shift=shift, cylindrical=cylindrical)
    assert len(tree) == 3 and tree.num_clouds == 3
    unit = _unit(pos, batch, cylindrical)
    n = pos.size(0)
    for level in tree:
        # serialisation is a permutation and windows are contiguous runs of it
        assert sorted(level.perm.tolist()) == list(range(n))
        assert torch.equal(level.inverse[level.perm], torch.arange(n))
        for block in level.pattern.blocks:
            assert torch.equal(block, block[:, :1] + torch.arange(block.size(1)))
        windows = _windows(level)
        # every point in exactly one window; window sizes bounded
        flat = sorted(i for win in windows for i in win)
        assert flat == list(range(n))
        assert all(1 <= len(win) <= w for win in windows)
        # windows lie in one cloud and one cell of the level's depth (brute-force cells)
        cells = _brute_cells(unit, level.depth, shift)
        keys = {}
        for win in windows:
            key = {(int(batch[i]),) + tuple(cells[i]) for i in win}
            assert len(key) == 1, "a window spans two cells"
            keys.setdefault(key.pop(), []).append(len(win))
        # a cell of m points is cut into ceil(m / w) windows of balanced sizes
        count = {}
        for i in range(n):
            k = (int(batch[i]),) + tuple(cells[i])
            count[k] = count.get(k, 0) + 1
        assert set(keys) == set(count)
        for k, sizes in keys.items():
            assert len(sizes) == math.ceil(count[k] / w)
            assert max(sizes) - min(sizes) <= 1
        # the per-point bookkeeping agrees with the blocks
        for index, win in enumerate(sorted(windows, key=lambda ws: int(level.inverse[ws[0]]))):
            assert set(level.window[win].tolist()) == {index}
            assert int(level.window_batch[index]) == int(batch[win[0]])
    # levels coarsen by one depth
    assert [lv.depth for lv in tree] == [tree[0].depth - i for i in range(3)]


def test_octree_cylindrical_origin_per_cloud():
    pos, batch = _clouds([200, 150], seed=2)
    origin = torch.tensor([[0.5, 0.5, 0.0], [-1.0, 0.2, 0.3]], dtype=torch.float64)
    tree = Pattern.octree(pos, 8, batch=batch, cylindrical=True, origin=origin, depth=2)
    unit = _unit(pos, batch, True, origin.numpy())
    cells = _brute_cells(unit, 2, False)
    for win in _windows(tree[0]):
        assert len({(int(batch[i]),) + tuple(cells[i]) for i in win}) == 1


def test_octree_batch_is_per_cloud():
    pos, batch = _clouds([120, 90, 60], seed=3)
    tree = Pattern.octree(pos, 10, levels=2, batch=batch, depth=3)
    for b in range(3):
        mask = batch == b
        index = torch.nonzero(mask).view(-1)
        alone = Pattern.octree(pos[mask], 10, levels=2, depth=3)
        for level, single in zip(tree, alone):
            together = {tuple(sorted(win)) for win in _windows(level) if mask[win[0]]}
            own = {tuple(sorted(index[win].tolist())) for win in _windows(single)}
            assert together == own
            assert bool((level.window_batch[level.window[index]] == b).all())


def test_octree_permutation_invariant_windows():
    pos, batch = _clouds([150, 100], seed=4)
    tree = Pattern.octree(pos, 12, levels=2, batch=batch)
    shuffle = torch.cat([torch.randperm(150), 150 + torch.randperm(100)])
    other = Pattern.octree(pos[shuffle], 12, levels=2, batch=batch)
    for a, b in zip(tree, other):
        assert {frozenset(w) for w in _windows(a)} == {
            frozenset(shuffle[w].tolist()) for w in _windows(b)
        }


def test_default_depth_fills_windows():
    pos, _ = _clouds([4000], seed=5, spread=[1.0, 1.0, 1.0])
    level = Pattern.octree(pos, 32)[0]
    sizes = level.window_sizes.float()
    assert sizes.mean() >= 16 and int(sizes.max()) <= 32
    # one depth finer would hold fewer than w / 2 points per occupied cell
    finer = Pattern.octree(pos, 32, depth=level.depth + 1)[0]
    assert finer.window_sizes.float().mean() < 16


def _edge_set(pattern):
    return set(map(tuple, pattern.edge_index.t().tolist()))


def test_relay_patterns_exact():
    pos, batch = _clouds([40, 25, 9], seed=6)
    level = Pattern.octree(pos, 6, batch=batch, depth=1)[0]
    n, num_windows = pos.size(0), level.num_windows
    window_s = level.window[level.perm]  # window of every serialised point
    wb = level.window_batch
    gather = {(t, int(window_s[t])) for t in range(n)}
    assert _edge_set(level.relay_gather()) == gather
    assert (level.relay_gather().num_src, level.relay_gather().num_dst) == (n, num_windows)
    scatter = {(int(window_s[t]), t) for t in range(n)}
    assert _edge_set(level.relay_scatter()) == scatter
    assert (level.relay_scatter().num_src, level.relay_scatter().num_dst) == (num_windows, n)
    relay = {(u, v) for u in range(num_windows) for v in range(num_windows) if wb[u] == wb[v]}
    assert _edge_set(level.relay_global()) == relay
    joint = set()
    for s in range(n):
        for t in range(n):
            if window_s[s] == window_s[t]:
                joint.add((s, t))
        joint.add((s, n + int(window_s[s])))
        joint.add((n + int(window_s[s]), s))
    joint |= {(n + u, n + u) for u in range(num_windows)}
    pattern = level.with_relays()
    assert pattern.blocks is not None and pattern.num_dst == n + num_windows
    assert _edge_set(pattern) == joint and pattern.num_edges == len(joint)


def test_cross_pattern_exact():
    gen = torch.Generator().manual_seed(7)
    batch_src = torch.randint(0, 4, (23,), generator=gen)
    batch_dst = torch.tensor([2, 0, 3, 3, 1, 5])
    pattern = Pattern.cross(batch_src, batch_dst)
    brute = {
        (j, i)
        for i in range(batch_dst.numel())
        for j in range(batch_src.numel())
        if batch_src[j] == batch_dst[i]
    }
    assert _edge_set(pattern) == brute and pattern.num_edges == len(brute)
    assert (pattern.num_src, pattern.num_dst) == (23, 6)
    assert pattern.degree()[5] == 0  # a graph without senders


def _dense_reference(q, k, v, mask):
    scores = torch.einsum("ihc,jhc->hij", q, k) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return torch.einsum("hij,jhc->ihc", weights, v)


def test_octree_attention_through_engine_matches_dense_mask():
    pos, batch = _clouds([60, 35], seed=8)
    level = Pattern.octree(pos, 8, batch=batch, shift=True)[0]
    pattern = level.with_relays()
    m = pattern.num_dst
    gen = torch.Generator().manual_seed(9)
    q, k, v = (torch.randn(m, 2, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = torch.zeros(m, m, dtype=torch.bool)
    src, dst = pattern.edge_index
    mask[dst, src] = True
    out = attend(pattern, v, query=q, key=k)
    assert torch.allclose(out, _dense_reference(q, k, v, mask), atol=1e-12)
    cross = Pattern.cross(batch, torch.arange(2))
    qc = torch.randn(2, 2, 4, generator=gen, dtype=torch.float64)
    kc, vc = (torch.randn(pos.size(0), 2, 4, generator=gen, dtype=torch.float64) for _ in "kv")
    cmask = batch[None, :] == torch.arange(2)[:, None]
    assert torch.allclose(attend(cross, vc, query=qc, key=kc), _dense_reference(qc, kc, vc, cmask))


def test_empty_and_single_point():
    empty = Pattern.octree(torch.zeros(0, 3), 4)
    assert empty[0].num_windows == 0 and empty[0].pattern.num_edges == 0
    one = Pattern.octree(torch.ones(1, 3), 4, levels=2)
    assert [lv.num_windows for lv in one] == [1, 1]


@pytest.mark.parametrize(
    "kwargs, error, name",
    [
        (dict(pos=torch.zeros(5, 3, dtype=torch.long)), TypeError, "pos"),
        (dict(pos=torch.zeros(5, 2)), ValueError, "pos"),
        (dict(pos=torch.full((5, 3), float("nan"))), ValueError, "pos"),
        (dict(window_size=0), ValueError, "window_size"),
        (dict(window_size=2.5), TypeError, "window_size"),
        (dict(levels=0), ValueError, "levels"),
        (dict(depth=30), ValueError, "depth"),
        (dict(depth=-1), ValueError, "depth"),
        (dict(depth=1.0), TypeError, "depth"),
        (dict(levels=4, depth=2), ValueError, "depth"),
        (dict(batch=torch.tensor([1, 0, 0, 0, 0])), ValueError, "batch"),
        (dict(batch=torch.zeros(4, dtype=torch.long)), ValueError, "batch"),
        (dict(batch=torch.zeros(5)), TypeError, "batch"),
        (dict(shift="yes"), TypeError, "shift"),
        (dict(shift=[True]), ValueError, "shift"),
        (dict(origin=torch.zeros(3)), ValueError, "origin"),
        (dict(cylindrical=True, origin=torch.zeros(2)), ValueError, "origin"),
        (dict(cylindrical=True, origin=[0.0, 0.0, 0.0]), TypeError, "origin"),
        (dict(cylindrical=1), TypeError, "cylindrical"),
    ],
)
def test_octree_bad_inputs(kwargs, error, name):
    args = dict(pos=torch.rand(5, 3), window_size=4, levels=2)
    args.update(kwargs)
    with pytest.raises(error, match=name):
        Pattern.octree(**args)


def test_cross_bad_inputs():
    with pytest.raises(TypeError, match="batch_src"):
        Pattern.cross(torch.zeros(3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_dst"):
        Pattern.cross(torch.zeros(3, dtype=torch.long), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="batch_src"):
        Pattern.cross(torch.tensor([-1, 0]), torch.zeros(2, dtype=torch.long))


def test_depth_zero_gives_serialised_patches():
    pos, batch = _clouds([100, 37], seed=10)
    level = Pattern.octree(pos, 16, batch=batch, depth=0)[0]
    # one cell per cloud: ceil(n / w) balanced windows per cloud, in z-order
    assert level.num_windows == math.ceil(100 / 16) + math.ceil(37 / 16)
    sizes = level.window_sizes
    assert int(sizes.max()) <= 16 and int(sizes.max() - sizes[:7].min()) <= 1
    # the serialisation is the z-order of the quantised normalised coordinates
    unit = torch.from_numpy(_unit(pos, batch))
    q = (unit * 2**19).long().clamp(0, 2**19 - 1)
    code = torch.zeros(pos.size(0), dtype=torch.long)
    for bit in range(19):
        for axis in range(3):
            code |= ((q[:, axis] >> bit) & 1) << (3 * bit + 2 - axis)
    key = batch * 2**60 + code
    assert bool((key[level.perm][1:] >= key[level.perm][:-1]).all())


@pytest.mark.parametrize("relays", [False, True])
def test_block_groups_match_the_block_pattern(relays):
    pos, batch = _clouds([80, 50], seed=11)
    level = Pattern.octree(pos, 9, batch=batch)[0]
    pattern = level.with_relays() if relays else level.pattern
    assert len(pattern.blocks) > 2  # several block sizes
    m = pattern.num_dst
    gen = torch.Generator().manual_seed(12)
    q, k, v = (
        torch.randn(m, 2, 3, generator=gen, dtype=torch.float64).requires_grad_() for _ in range(3)
    )
    mask = torch.zeros(m, m, dtype=torch.bool)
    src, dst = pattern.edge_index
    mask[dst, src] = True
    out = level.window_groups(relays=relays).attend(v, q, k)
    ref = _dense_reference(q, k, v, mask)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    weight = torch.randn(m, 2, 3, generator=gen, dtype=torch.float64)
    grads = torch.autograd.grad((out * weight).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * weight).sum(), (q, k, v))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    if not relays:  # caller order: the serialisation folded into the gather
        n = pos.size(0)
        caller = level.window_groups(caller_order=True).attend(
            level.deserialise(v), level.deserialise(q), level.deserialise(k)
        )
        torch.testing.assert_close(caller, level.deserialise(ref), rtol=1e-12, atol=1e-12)
        assert caller.shape[0] == n
