"""Pattern construction against brute force, and its input validation."""

from __future__ import annotations

import copy
import gc
import io
import itertools
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch_geometric import EdgeIndex

from gtlib.attention import Pattern, sparse_attention


def edge_set(edge_index) -> list[tuple[int, int]]:
    return sorted(map(tuple, edge_index.t().tolist()))


def test_from_edge_index_csr_and_caller_order():
    edge_index = torch.tensor([[3, 0, 2, 2, 1, 0], [1, 1, 0, 2, 0, 1]])
    pattern = Pattern.from_edge_index(edge_index, 4)
    assert (pattern.num_src, pattern.num_dst, pattern.num_edges) == (4, 4, 6)
    assert pattern.ptr.tolist() == [0, 2, 5, 6, 6]
    assert torch.equal(pattern.edge_index, edge_index)  # caller order preserved
    for i in range(4):
        senders = pattern.col[pattern.ptr[i] : pattern.ptr[i + 1]].tolist()
        assert sorted(senders) == sorted(edge_index[0, edge_index[1] == i].tolist())
    values = torch.arange(6.0)
    assert torch.equal(pattern.to_caller(pattern.to_sorted(values)), values)
    assert not pattern.unique_edges  # (0, 1) appears twice


def test_bipartite_sizes_and_int32():
    edge_index = torch.tensor([[0, 4, 2], [1, 0, 1]], dtype=torch.int32)
    pattern = Pattern.from_edge_index(edge_index, (5, 2))
    assert (pattern.num_src, pattern.num_dst) == (5, 2)
    assert pattern.degree().tolist() == [1, 2]
    assert Pattern.from_edge_index(edge_index).num_dst == 5  # max index + 1 on both sides


def test_edge_index_reuses_cached_csc():
    edge_index = EdgeIndex(
        torch.tensor([[2, 0, 1, 2], [0, 1, 1, 2]]), sparse_size=(3, 3), sort_order="col"
    )
    pattern = Pattern.from_edge_index(edge_index)
    assert pattern.perm is None
    assert torch.equal(pattern.edge_index, edge_index.as_tensor())
    unsorted = EdgeIndex(torch.tensor([[2, 0, 1], [2, 0, 1]]), sparse_size=(3, 4))
    pattern = Pattern.from_edge_index(unsorted)
    assert (pattern.num_src, pattern.num_dst) == (3, 4)
    assert edge_set(pattern.edge_index) == edge_set(unsorted.as_tensor())


@pytest.mark.parametrize(
    "edge_index, num_nodes, error, message",
    [
        ([[0, 1], [1, 0]], None, TypeError, "torch.Tensor"),
        (torch.tensor([[0.0, 1.0], [1.0, 0.0]]), None, TypeError, "integer dtype"),
        (torch.tensor([0, 1, 2]), None, ValueError, r"\[2, E\]"),
        (torch.tensor([[0, 1], [1, 0], [0, 0]]), None, ValueError, r"\[2, E\]"),
        (torch.tensor([[0, 3], [1, 0]]), 3, ValueError, "senders must lie in"),
        (torch.tensor([[0, 1], [1, 2]]), (3, 2), ValueError, "receivers must lie in"),
        (torch.tensor([[-1, 1], [1, 0]]), 3, ValueError, "senders"),
        (torch.tensor([[0, 1], [1, 0]]), -1, ValueError, "non-negative"),
        (torch.tensor([[0, 1], [1, 0]]), "3", TypeError, "num_nodes"),
        (torch.tensor([[0, 1], [1, 0]]), (2.0, 2), TypeError, "num_nodes"),
    ],
)
def test_from_edge_index_rejects_bad_input(edge_index, num_nodes, error, message):
    with pytest.raises(error, match=message):
        Pattern.from_edge_index(edge_index, num_nodes)


def test_full_batch_is_all_to_all_without_padding():
    batch = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3, 3])
    pattern = Pattern.full(batch)
    expected = [(j, i) for i, j in itertools.product(range(10), range(10)) if batch[i] == batch[j]]
    assert edge_set(pattern.edge_index) == sorted(expected)
    assert pattern.num_edges == 9 + 4 + 25  # no padding to the largest graph
    assert sorted(b.shape[1] for b in pattern.blocks) == [2, 3, 5]
    single = Pattern.full(num_nodes=4)
    assert single.num_edges == 16
    with pytest.raises(ValueError, match="sorted"):
        Pattern.full(torch.tensor([1, 0]))
    with pytest.raises(TypeError, match="batch"):
        Pattern.full(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match="num_nodes"):
        Pattern.full()


def swin_reference(grid_shape, window, shift, periodic):
    """Swin Transformer's recipe: cyclic shift, window partition, and (when not periodic)
    the region mask that keeps tokens from different sides of the boundary apart."""
    dims = len(grid_shape)
    coords = np.stack(np.meshgrid(*[np.arange(g) for g in grid_shape], indexing="ij"), -1)
    coords = coords.reshape(-1, dims)
    window_id, region_id = [], []
    for d in range(dims):
        size, w, s = grid_shape[d], window[d], shift[d]
        rolled = (coords[:, d] - s) % size  # position after torch.roll(x, -s)
        window_id.append(rolled // w)
        region = np.zeros(size, dtype=int)  # Swin's slices(0, -w), (-w, -s), (-s, None)
        if s > 0:
            region[size - w : size - s] = 1
            region[size - s :] = 2
        region_id.append(region[rolled] if not periodic else np.zeros_like(rolled))
    window_id = np.stack(window_id, -1)
    region_id = np.stack(region_id, -1)
    pairs = []
    n = coords.shape[0]
    for i in range(n):
        for j in range(n):
            if (window_id[i] == window_id[j]).all() and (region_id[i] == region_id[j]).all():
                pairs.append((j, i))
    return sorted(pairs)


@pytest.mark.parametrize(
    "grid_shape, window, shift, periodic",
    [
        ((8, 8), (4, 4), (0, 0), False),
        ((8, 8), (4, 4), (2, 2), False),
        ((8, 8), (4, 4), (2, 2), True),
        ((6, 9), (3, 3), (1, 2), False),
        ((6, 9), (3, 3), (1, 2), True),
        ((12,), (4,), (2,), False),
        ((4, 4, 4), (2, 2, 2), (1, 1, 1), False),
    ],
)
def test_windows_match_swin_shift_and_mask(grid_shape, window, shift, periodic):
    pattern = Pattern.windows(grid_shape, window, shift=shift, periodic=periodic)
    assert edge_set(pattern.edge_index) == swin_reference(grid_shape, window, shift, periodic)
    covered = torch.cat([b.flatten() for b in pattern.blocks]).sort().values
    assert torch.equal(covered, torch.arange(int(np.prod(grid_shape))))


def test_windows_reject_bad_arguments():
    with pytest.raises(ValueError, match="multiple"):
        Pattern.windows((6, 6), 4, periodic=True)
    with pytest.raises(ValueError, match="window"):
        Pattern.windows((6, 6), 7)
    with pytest.raises(ValueError, match="grid_shape"):
        Pattern.windows((0, 6), 2)
    with pytest.raises(ValueError, match="window must have 2"):
        Pattern.windows((6, 6), (2, 2, 2))
    non_divisible = Pattern.windows((7,), 3, periodic=False)  # cut at the boundary
    assert sorted(b.shape[1] for b in non_divisible.blocks) == [1, 3]


def test_transpose_csr_and_sparse_matrix():
    edge_index = torch.tensor([[3, 0, 2, 2, 1, 0], [1, 1, 0, 2, 0, 1]])
    pattern = Pattern.from_edge_index(edge_index, (4, 3))
    values = torch.arange(1.0, 7.0)
    dense = torch.zeros(3, 4).index_put_((pattern.row, pattern.col), values, accumulate=True)
    torch.testing.assert_close(pattern.sparse_matrix(values).to_dense(), dense)
    _, _, order = pattern.transpose_csr()
    transposed = pattern.sparse_matrix(values[order], "transpose").to_dense()
    torch.testing.assert_close(transposed, dense.t())
    ptr, senders, inverse = pattern.deduplicated()
    distinct = torch.zeros(senders.numel()).index_add_(0, inverse, values)
    torch.testing.assert_close(pattern.sparse_matrix(distinct, "unique").to_dense(), dense)
    assert senders.numel() == 5  # (0, 1) appears twice


@pytest.mark.parametrize("box", [None, 1.0])
def test_radius_and_knn_patterns_keep_displacements_in_edge_order(box):
    gen = torch.Generator().manual_seed(0)
    pos = torch.rand(200, 3, generator=gen, dtype=torch.float64)
    for pattern in (Pattern.radius(pos, 0.2, box=box), Pattern.knn(pos, 6, box=box)):
        assert isinstance(pattern, Pattern)
        displacement = pattern.displacement
        senders, receivers = pattern.edge_index
        expected = pos[senders] - pos[receivers]
        if box is not None:
            expected = expected - torch.round(expected / box) * box
        torch.testing.assert_close(displacement, expected)
        distance = displacement.norm(dim=-1)
        brute = torch.cdist(pos, pos) if box is None else None
        if brute is not None and pattern.num_edges == 200 * 6:  # knn: the 6 nearest others
            brute.fill_diagonal_(float("inf"))
            kth = brute.topk(6, largest=False).values[:, -1]
            assert bool((distance <= kth[receivers] + 1e-12).all())
        if pattern.num_edges != 200 * 6:  # radius
            assert bool((distance <= 0.2 + 1e-12).all())
            q = torch.randn(200, 2, 4, generator=gen, dtype=torch.float64)
            key_edge = displacement.new_zeros(pattern.num_edges, 2, 4)
            key_edge[:, :, :3] = displacement.unsqueeze(1)  # edge features in caller order
            out = sparse_attention(q, q, q, pattern, key_edge=key_edge, mode="sparse")
            ref = sparse_attention(q, q, q, pattern, key_edge=key_edge, mode="scatter")
            torch.testing.assert_close(out, ref)


@pytest.mark.parametrize("box", [None, 1.0])
def test_bipartite_radius_and_knn_patterns(box):
    gen = torch.Generator().manual_seed(1)
    pos = torch.rand(120, 2, generator=gen, dtype=torch.float64)
    query = torch.rand(50, 2, generator=gen, dtype=torch.float64) - 0.5  # outside [0, 1) too
    delta = pos[None, :, :] - query[:, None, :]  # [receiver, sender]
    if box is not None:
        delta = delta - box * torch.round(delta / box)
    distance = delta.norm(dim=-1)

    pattern = Pattern.radius(pos, 0.15, box=box, pos_dst=query)
    assert (pattern.num_src, pattern.num_dst) == (120, 50)
    senders, receivers = pattern.edge_index
    assert edge_set(pattern.edge_index) == sorted(
        (j, i) for i, j in (distance <= 0.15).nonzero().tolist()
    )
    torch.testing.assert_close(pattern.displacement, delta[receivers, senders])

    pattern = Pattern.knn(pos, 4, box=box, pos_dst=query)
    assert pattern.degree().tolist() == [4] * 50
    senders, receivers = pattern.edge_index
    nearest = distance.sort(dim=1).values[:, :4].reshape(-1)
    torch.testing.assert_close(pattern.displacement.norm(dim=-1), nearest)
    assert torch.equal(senders.view(50, 4), distance.topk(4, largest=False).indices)


def test_displacement_is_differentiable_and_travels_with_the_pattern():
    gen = torch.Generator().manual_seed(2)
    pos = torch.rand(60, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    query = torch.rand(20, 2, generator=gen, dtype=torch.float64, requires_grad=True)
    pattern = Pattern.radius(pos, 0.3, box=1.0, pos_dst=query)
    assert pattern.displacement.requires_grad
    pattern.displacement.sum().backward()
    senders, receivers = pattern.edge_index
    sender_count = torch.bincount(senders, minlength=60).double()
    receiver_count = torch.bincount(receivers, minlength=20).double()
    torch.testing.assert_close(pos.grad, sender_count[:, None].expand(-1, 2))
    torch.testing.assert_close(query.grad, -receiver_count[:, None].expand(-1, 2))
    moved = pattern.to("meta")
    assert moved.displacement.device.type == "meta"
    assert moved.displacement.shape == pattern.displacement.shape
    clone = pickle.loads(pickle.dumps(pattern))
    torch.testing.assert_close(clone.displacement, pattern.displacement.detach())
    assert Pattern.from_edge_index(pattern.edge_index).displacement is None
    assert Pattern.full(num_nodes=3).displacement is None


def test_from_torch_sparse_matrices_follow_adj_t():
    edge_index = torch.tensor([[3, 0, 2, 2, 1, 0], [1, 1, 0, 2, 0, 2]])  # (sender, receiver)
    values = torch.ones(6)
    adj_t = torch.sparse_coo_tensor(edge_index.flip(0), values, (3, 4))  # [num_dst, num_src]
    pattern = Pattern.from_edge_index(adj_t)  # entry order as given (uncoalesced)
    assert (pattern.num_src, pattern.num_dst) == (4, 3)
    assert torch.equal(pattern.edge_index, edge_index)
    coalesced = Pattern.from_edge_index(adj_t.coalesce())
    assert coalesced.perm is None and edge_set(coalesced.edge_index) == edge_set(edge_index)

    csr = adj_t.to_sparse_csr()
    pattern = Pattern.from_edge_index(csr, (4, 3))
    assert pattern.perm is None  # the CSR is the pattern's CSR
    assert torch.equal(pattern.ptr, csr.crow_indices())
    assert torch.equal(pattern.col, csr.col_indices())
    assert edge_set(pattern.edge_index) == edge_set(edge_index)

    csc = adj_t.coalesce().to_sparse_csc()
    pattern = Pattern.from_edge_index(csc)
    assert edge_set(pattern.edge_index) == edge_set(edge_index)
    senders, receivers = pattern.edge_index
    assert senders.tolist() == sorted(senders.tolist())  # CSC order: by sender

    hybrid = torch.sparse_coo_tensor(edge_index.flip(0), torch.ones(6, 2), (3, 4, 2))
    assert Pattern.from_edge_index(hybrid).num_edges == 6  # values' dense dims are ignored
    empty = torch.sparse_coo_tensor(torch.zeros(2, 0, dtype=torch.long), torch.ones(0), (2, 5))
    pattern = Pattern.from_edge_index(empty)
    assert (pattern.num_src, pattern.num_dst, pattern.num_edges) == (5, 2, 0)


def test_from_sparse_tensor_of_torch_sparse():
    torch_sparse = pytest.importorskip("torch_sparse")
    edge_index = torch.tensor([[3, 0, 2, 2, 1, 0], [1, 1, 0, 2, 0, 2]])
    adj_t = torch_sparse.SparseTensor(row=edge_index[1], col=edge_index[0], sparse_sizes=(3, 4))
    pattern = Pattern.from_edge_index(adj_t)
    assert (pattern.num_src, pattern.num_dst) == (4, 3)
    assert pattern.perm is None
    assert torch.equal(pattern.ptr, adj_t.storage.rowptr())
    assert torch.equal(pattern.col, adj_t.storage.col())
    assert edge_set(pattern.edge_index) == edge_set(edge_index)
    with pytest.raises(ValueError, match="num_nodes"):
        Pattern.from_edge_index(adj_t, 4)


@pytest.mark.parametrize(
    "make, num_nodes, error, message",
    [
        (lambda: torch.zeros(2, 3, 4).to_sparse(), None, ValueError, "2-D"),
        (lambda: torch.zeros(2, 3, 4).to_sparse_csr(), None, ValueError, "2-D"),
        (lambda: torch.eye(3).to_sparse_bsr((1, 1)), None, TypeError, "layout"),
        (lambda: torch.eye(3).to_sparse(), (3, 4), ValueError, "num_nodes"),
        (lambda: torch.eye(3).to_sparse(), 2.7, TypeError, "num_nodes"),
        (lambda: torch.eye(3).to_sparse_csr(), -1, ValueError, "num_nodes"),
        (
            lambda: torch.sparse_csr_tensor(
                torch.tensor([0, 1, 2]), torch.tensor([0, 5]), torch.ones(2), (2, 3)
            ),
            None,
            ValueError,
            "senders",
        ),
        (
            lambda: torch.sparse_csr_tensor(
                torch.tensor([0, 2, 1]), torch.tensor([0, 1]), torch.ones(2), (2, 3)
            ),
            None,
            ValueError,
            "offsets",
        ),
        (lambda: torch.tensor([[0, 1], [1, 0]]), 2.7, TypeError, "num_nodes"),
        (lambda: torch.tensor([[0, 1], [1, 0]]), (2, -1), ValueError, "num_nodes"),
        (lambda: torch.tensor([[0, 1], [1, 0]]), True, TypeError, "num_nodes"),
        (lambda: torch.tensor([[True, False], [True, True]]), None, TypeError, "integer"),
        (lambda: "edges", None, TypeError, "edge_index"),
    ],
)
def test_from_edge_index_rejects_bad_sparse_input(make, num_nodes, error, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        edge_index = make()
    with pytest.raises(error, match=message):
        Pattern.from_edge_index(edge_index, num_nodes)


def test_from_edge_index_does_not_alias_the_input():
    edge_index = torch.tensor([[1, 0, 2], [0, 1, 1]])  # sorted: no copy would be needed
    pattern = Pattern.from_edge_index(edge_index, 3)
    assert pattern.perm is None
    edge_index[0, 0] = 2
    assert pattern.col.tolist() == [1, 0, 2]


def test_bigbird_matches_gps_and_is_deterministic():
    from gtlib.nn import GPSConv

    batch = torch.tensor([0] * 5 + [1] * 9 + [3] * 2)
    pattern = Pattern.bigbird(batch, 3, 2, 1, generator=torch.Generator().manual_seed(4))
    same = GPSConv.bigbird_pattern(batch, 3, 2, 1, generator=torch.Generator().manual_seed(4))
    assert torch.equal(pattern.edge_index, same.edge_index)
    assert pattern.perm is None and pattern.unique_edges
    senders, receivers = pattern.edge_index
    assert bool((batch[senders] == batch[receivers]).all())
    single = Pattern.bigbird(None, window=3, num_random=0, num_global=0, num_nodes=4)
    assert edge_set(single.edge_index) == sorted(
        (j, i) for i in range(4) for j in range(4) if abs(i - j) <= 1
    )
    assert Pattern.bigbird(None, num_nodes=0).num_edges == 0
    with pytest.raises(ValueError, match="num_nodes"):
        Pattern.bigbird()
    with pytest.raises(TypeError, match="window"):
        Pattern.bigbird(batch, window=1.5)
    with pytest.raises(ValueError, match="num_random"):
        Pattern.bigbird(batch, num_random=-1)
    with pytest.raises(TypeError, match="generator"):
        Pattern.bigbird(batch, generator=0)


def test_block_patterns_expand_lazily_like_their_edge_lists():
    batch = torch.tensor([0, 0, 0, 2, 2, 3, 3, 3, 3, 3])
    for pattern in (
        Pattern.full(batch),
        Pattern.windows((6, 4), (3, 2), shift=(1, 1), periodic=False),
        Pattern.windows((4, 4), 2, shift=1, periodic=True),
    ):
        assert not pattern.expanded and pattern.blocks is not None
        reference = Pattern.from_edge_index(pattern.edge_index, pattern.num_src)
        assert pattern.expanded and pattern.perm is None
        assert torch.equal(pattern.ptr, reference.ptr)
        assert torch.equal(pattern.col, reference.col)  # sorted by (receiver, sender)
        assert pattern.num_edges == reference.num_edges
    empty = Pattern.full(torch.zeros(0, dtype=torch.long))
    assert (empty.num_edges, empty.ptr.tolist(), empty.blocks) == (0, [0], [])


def test_block_patterns_move_without_expanding():
    batch = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 2])
    pattern = Pattern.full(batch)
    moved = pattern.to("meta")
    assert moved.device == torch.device("meta")
    assert not moved.expanded and not pattern.expanded
    assert moved.num_edges == 9 + 4 + 25
    assert [tuple(b.shape) for b in moved.blocks] == [tuple(b.shape) for b in pattern.blocks]
    assert all(b.device.type == "meta" for b in moved.blocks)
    windows = Pattern.windows((8, 8), 4, shift=2).to("meta")
    assert not windows.expanded and windows.num_edges == 4 * 16 * 16
    assert pattern.to("cpu") is pattern
    pattern.ptr  # noqa: B018 - expand, then moving moves the edges too
    moved = pattern.to("meta")
    assert moved.expanded and moved.col.device.type == "meta" and moved.blocks is not None


def test_windows_and_full_are_built_on_the_requested_device():
    pattern = Pattern.windows((4, 4), 2, device="meta")
    assert pattern.device.type == "meta" and pattern.blocks[0].device.type == "meta"
    assert Pattern.full(None, num_nodes=3, device="meta").blocks[0].device.type == "meta"


def assert_same_pattern(a: Pattern, b: Pattern) -> None:
    for name in ("num_src", "num_dst", "num_edges", "device"):
        assert getattr(a, name) == getattr(b, name)
    assert a.expanded == b.expanded
    if a.expanded:
        assert torch.equal(a.ptr, b.ptr) and torch.equal(a.col, b.col)
        assert torch.equal(a.edge_index, b.edge_index)
    assert (a.blocks is None) == (b.blocks is None)
    if a.blocks is not None:
        assert len(a.blocks) == len(b.blocks)
        assert all(torch.equal(x, y) for x, y in zip(a.blocks, b.blocks))
    assert (a.displacement is None) == (b.displacement is None)
    if a.displacement is not None:
        assert torch.equal(a.displacement, b.displacement)


def test_patterns_pickle_and_save():
    gen = torch.Generator().manual_seed(3)
    pos = torch.rand(40, 2, generator=gen)
    expanded = Pattern.full(torch.tensor([0, 0, 1, 1, 1]))
    expanded.col  # noqa: B018
    patterns = [
        Pattern.from_edge_index(torch.tensor([[3, 0, 2, 2, 1, 0], [1, 1, 0, 2, 0, 1]]), (4, 3)),
        Pattern.full(torch.tensor([0, 0, 1, 1, 1])),
        expanded,
        Pattern.windows((4, 6), 2, shift=1),
        Pattern.radius(pos, 0.3, box=1.0),
        Pattern.knn(pos, 3),
        Pattern.bigbird(None, num_nodes=7, generator=gen),
    ]
    for pattern in patterns:
        pattern.transpose_csr()  # derived caches are dropped, not pickled
        clone = pickle.loads(pickle.dumps(pattern))
        assert_same_pattern(clone, pattern)
        buffer = io.BytesIO()
        torch.save(pattern, buffer)
        buffer.seek(0)
        assert_same_pattern(torch.load(buffer, weights_only=False), pattern)
        copy.deepcopy(pattern)
    unexpanded = pickle.loads(pickle.dumps(Pattern.full(torch.tensor([0, 0, 1]))))
    assert not unexpanded.expanded and unexpanded.num_edges == 5


def test_cached_pattern_follows_the_tensor_object_and_its_version():
    edge_index = torch.tensor([[0, 1, 2], [1, 2, 0]])
    first = Pattern.cached(edge_index, 3)
    assert Pattern.cached(edge_index, 3) is first
    assert Pattern.cached(edge_index.clone(), 3) is not first  # another tensor object
    assert Pattern.cached(edge_index, (3, 4)).num_dst == 4  # other sizes
    edge_index[1, 0] = 2  # in-place change: a new pattern
    changed = Pattern.cached(edge_index, 3)
    assert changed is not first
    assert edge_set(changed.edge_index) == [(0, 2), (1, 2), (2, 0)]


def test_cached_pattern_dies_with_its_tensor():
    from gtlib.attention.cache import pattern_cache

    pattern_cache.clear()
    edge_index = torch.tensor([[1, 0, 2], [0, 1, 1]])  # already sorted
    Pattern.cached(edge_index, 3)
    assert len(pattern_cache) == 1
    del edge_index
    gc.collect()
    assert len(pattern_cache) == 0  # the pattern does not keep its source alive


def test_huge_bipartite_sizes_sort_without_key_overflow():
    """(receiver, sender) keys ``dst * num_src + src`` would overflow int64 here."""
    num_src, num_dst = 2**61, 8
    src = torch.tensor([2**61 - 1, 5, 2**60, 5, 0, 2**61 - 1])
    dst = torch.tensor([7, 7, 3, 7, 7, 0])
    pattern = Pattern.from_edge_index(torch.stack([src, dst]), (num_src, num_dst))
    expected = sorted(zip(dst.tolist(), src.tolist(), strict=True))
    got = list(zip(pattern.row.tolist(), pattern.col.tolist(), strict=True))
    assert got == expected
    assert pattern.unique_edges is False  # (5, 7) appears twice
    ptr, senders, inverse = pattern.deduplicated()
    assert ptr.tolist() == [0, 1, 1, 1, 2, 2, 2, 2, 5]
    assert senders.tolist() == [2**61 - 1, 2**60, 0, 5, 2**61 - 1]
    assert senders[inverse].tolist() == pattern.col.tolist()
    edge_index = pattern.edge_index  # the caller's order survives
    assert torch.equal(edge_index, torch.stack([src, dst]))


def test_bad_indices_are_named():
    with pytest.raises(ValueError, match="inferring num_nodes"):
        Pattern.from_edge_index(torch.tensor([[0], [2**40]]))
    with pytest.raises(ValueError, match="meta device"):
        Pattern.from_edge_index(torch.zeros(2, 3, dtype=torch.long, device="meta"), 3)
    with pytest.raises(TypeError, match="integer dtype"):
        Pattern.from_edge_index(torch.zeros(2, 3, dtype=torch.complex64), 3)


def test_derived_values_are_built_once_kept_and_not_pickled():
    import pickle

    pattern = Pattern.from_edge_index(torch.tensor([[0, 1, 2], [1, 2, 0]]), num_nodes=3)
    calls = []

    def build():
        calls.append(1)
        return torch.arange(3)

    first = pattern.derived("test.key", build)
    assert pattern.derived("test.key", build) is first and calls == [1]
    restored = pickle.loads(pickle.dumps(pattern))
    assert restored.derived("test.key", build) is not first and calls == [1, 1]
