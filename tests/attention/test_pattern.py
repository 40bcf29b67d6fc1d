"""Pattern construction against brute force, and its input validation."""

from __future__ import annotations

import itertools

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
    for pattern, displacement in (
        Pattern.radius(pos, 0.2, box=box),
        Pattern.knn(pos, 6, box=box),
    ):
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
