"""Neighbour search (cell lists; k-NN also from k-d tree candidates) against brute force (numpy,
float64) and scipy's cKDTree."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from gtlib.attention import neighbors
from gtlib.attention.neighbors import knn_edges, minimum_image, radius_edges


@pytest.fixture(autouse=True, params=["kdtree", "cells"])
def knn_search(request, monkeypatch):
    """Every test twice: k-NN candidates from the k-d tree (the CPU default for graphs of 1024
    points and more; here for every size) and cell lists only."""
    if request.param == "cells":
        monkeypatch.setattr(neighbors, "_use_kdtree", lambda space: False)
    else:
        monkeypatch.setattr(neighbors, "_KDTREE_MIN_GRAPH", 1)
    return request.param


@pytest.fixture(autouse=True)
def single_thread():
    """Many small tensor ops: one thread avoids stalls when other processes share the cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def rounding_error(pos: torch.Tensor, box=None) -> float:
    """Generous bound on the error of a computed distance (wrapping included) in ``pos.dtype``."""
    scale = max(1.0, float(pos.abs().max()) if pos.numel() else 0.0)
    if box is not None:
        scale = max(scale, float(np.max(box)))
    return 8 * torch.finfo(pos.dtype).eps * scale


# ----------------------------------------------------------------------------- references


def brute_displacements(pos: np.ndarray, box: np.ndarray | None) -> np.ndarray:
    """``[N, N, d]`` float64 displacement ``pos[j] - pos[i]`` at ``[i, j]`` (minimum image)."""
    displacement = pos[None, :, :] - pos[:, None, :]
    if box is not None:
        displacement = displacement - box * np.round(displacement / box)
    return displacement


def brute_distances(pos, box=None, batch=None, loop=False) -> np.ndarray:
    """``[N, N]`` float64 distances at ``[receiver, sender]``; ``inf`` for excluded pairs."""
    pos = np.asarray(pos, dtype=np.float64)
    distance = np.linalg.norm(brute_displacements(pos, box), axis=-1)
    if batch is not None:
        distance[batch[:, None] != batch[None, :]] = np.inf
    if not loop:
        np.fill_diagonal(distance, np.inf)
    return distance


def pair_codes(senders, receivers, num_points: int) -> np.ndarray:
    """Sorted ``sender * N + receiver`` codes, one integer per pair."""
    return np.sort(np.asarray(senders, dtype=np.int64) * num_points + np.asarray(receivers))


def brute_radius_pairs(distance: np.ndarray, r: float, max_num_neighbors=None) -> np.ndarray:
    """Pair codes within ``r``, keeping the nearest ``max_num_neighbors`` of each receiver."""
    receivers, senders = np.nonzero(distance <= r)
    if max_num_neighbors is not None:
        order = np.lexsort((senders, distance[receivers, senders], receivers))
        receivers, senders = receivers[order], senders[order]
        first = np.searchsorted(receivers, receivers, side="left")
        nearest = np.arange(len(receivers)) - first < max_num_neighbors
        receivers, senders = receivers[nearest], senders[nearest]
    return pair_codes(senders, receivers, len(distance))


def edge_codes(edge_index: torch.Tensor, num_points: int) -> np.ndarray:
    return pair_codes(edge_index[0].numpy(), edge_index[1].numpy(), num_points)


def as_box(box, dim: int) -> np.ndarray | None:
    return None if box is None else np.broadcast_to(np.asarray(box, dtype=np.float64), (dim,))


def uniform(rng, n: int, dim: int, scale=1.0, dtype=torch.float64) -> torch.Tensor:
    return torch.tensor(rng.random((n, dim)) * scale, dtype=dtype)


def clustered(rng, n: int, dim: int, scale=1.0, dtype=torch.float64) -> torch.Tensor:
    """Half the points uniform, half in a blob a thousandth of the size."""
    points = rng.random((n, dim)) * scale
    blob = n // 2
    points[:blob] = rng.random(dim) * scale * 0.9 + rng.random((blob, dim)) * scale * 1e-3
    return torch.tensor(points, dtype=dtype)


# ----------------------------------------------------------------------------- checks


def check_layout(edge_index, displacement, pos):
    """dtypes, shapes and the order: receiver, then distance, then sender."""
    assert edge_index.dtype == torch.long and edge_index.shape[0] == 2
    assert displacement.dtype == pos.dtype
    assert displacement.shape == (edge_index.shape[1], pos.shape[1])
    senders, receivers = edge_index.numpy()
    distance = torch.linalg.vector_norm(displacement, dim=1).double().numpy()
    assert np.array_equal(np.lexsort((senders, distance, receivers)), np.arange(len(senders)))


def check_displacement(edge_index, displacement, pos, box):
    """``displacement`` is the minimum-image ``pos[j] - pos[i]``."""
    dim = pos.shape[1]
    pos64 = pos.double().numpy()
    senders, receivers = edge_index.numpy()
    expected = pos64[senders] - pos64[receivers]
    box = as_box(box, dim)
    if box is not None:
        expected = expected - box * np.round(expected / box)
    atol = rounding_error(pos, box)
    np.testing.assert_allclose(displacement.double().numpy(), expected, atol=atol, rtol=0)


def check_radius(pos, r, box=None, batch=None, loop=False, max_num_neighbors=None):
    edge_index, displacement = radius_edges(
        pos, r, box=box, batch=batch, loop=loop, max_num_neighbors=max_num_neighbors
    )
    check_layout(edge_index, displacement, pos)
    check_displacement(edge_index, displacement, pos, box)
    batch_np = None if batch is None else batch.numpy()
    distance = brute_distances(pos.numpy(), as_box(box, pos.shape[1]), batch_np, loop)
    got = edge_codes(edge_index, len(pos))
    assert len(np.unique(got)) == len(got)
    # Pairs this close to the cutoff may go either way in float32.
    slack = max(1e-5 * r, rounding_error(pos, as_box(box, pos.shape[1])))
    if pos.dtype == torch.float64:
        assert np.array_equal(got, brute_radius_pairs(distance, r, max_num_neighbors))
    else:
        assert max_num_neighbors is None, "near-ties make the float32 cut ambiguous"
        certain = brute_radius_pairs(distance, r - slack)
        possible = brute_radius_pairs(distance, r + slack)
        assert np.isin(certain, got).all() and np.isin(got, possible).all()
    norms = torch.linalg.vector_norm(displacement.double(), dim=1)
    assert bool((norms <= r + slack).all())
    return edge_index, displacement


def check_knn(pos, k, box=None, batch=None, loop=False):
    """Per receiver: count ``min(k, candidates)``, distances equal brute force's k smallest."""
    edge_index, displacement = knn_edges(pos, k, box=box, batch=batch, loop=loop)
    check_layout(edge_index, displacement, pos)
    check_displacement(edge_index, displacement, pos, box)
    batch_np = None if batch is None else batch.numpy()
    distance = brute_distances(pos.numpy(), as_box(box, pos.shape[1]), batch_np, loop)
    senders, receivers = edge_index.numpy()
    assert len(np.unique(edge_codes(edge_index, len(pos)))) == len(senders)
    assert np.isfinite(distance[receivers, senders]).all()  # same graph, self only if loop
    wanted = np.minimum(np.isfinite(distance).sum(1), k)
    assert np.array_equal(np.bincount(receivers, minlength=len(pos)), wanted)
    nearest = np.sort(distance, axis=1)[:, :k]
    expected = nearest[np.arange(nearest.shape[1]) < wanted[:, None]]
    got_distance = torch.linalg.vector_norm(displacement.double(), dim=1).numpy()
    atol = rounding_error(pos, as_box(box, pos.shape[1]))
    np.testing.assert_allclose(got_distance, expected, atol=atol, rtol=0)
    return edge_index, displacement


# ----------------------------------------------------------------------------- radius


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("periodic", [False, True])
def test_radius_matches_brute_force(dim, loop, periodic):
    rng = np.random.default_rng(dim * 10 + loop * 2 + periodic)
    n = {1: 80, 2: 200, 3: 300}[dim]
    box = 4.0 if periodic else None
    # Some points outside the box: they must be wrapped.
    pos = uniform(rng, n, dim, scale=4.0) - (1.0 if periodic else 0.0)
    for r in (0.3, 0.9, 2.0):
        check_radius(pos, r, box=box, loop=loop)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_radius_float32_matches_kdtree(dim):
    rng = np.random.default_rng(7 + dim)
    box = np.array([3.0, 5.0, 4.0][:dim])
    pos = torch.tensor(rng.random((400, dim)) * box, dtype=torch.float32)
    r = 0.7
    for boxsize in (box, None):
        edge_index, _ = check_radius(pos, r, box=None if boxsize is None else torch.tensor(box))
        pairs = cKDTree(pos.double().numpy(), boxsize=boxsize).query_pairs(r, output_type="ndarray")
        both_ways = np.concatenate([pairs, pairs[:, ::-1]])
        expected = pair_codes(both_ways[:, 0], both_ways[:, 1], len(pos))
        assert np.array_equal(edge_codes(edge_index, len(pos)), expected)


@pytest.mark.parametrize(
    "box, r",
    [
        ([1.0, 1.2, 5.0], 0.5),  # one cell, two cells and many cells along the axes
        ([1.0, 1.0], 0.5),  # r = L / 2 exactly: one cell per axis
        ([1.1, 3.0], 0.5),  # two cells along the first axis
        (2.0, 0.3),
    ],
)
def test_radius_small_periodic_boxes_count_pairs_once(box, r):
    rng = np.random.default_rng(3)
    dim = len(box) if isinstance(box, list) else 3
    lengths = as_box(box, dim)
    pos = torch.tensor(rng.random((150, dim)) * lengths)
    for loop in (False, True):
        check_radius(pos, r, box=box, loop=loop)


def test_radius_batch_and_max_num_neighbors():
    rng = np.random.default_rng(11)
    sizes = [1, 40, 0, 90, 3]  # graph 2 is empty
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    pos = uniform(rng, len(batch), 3, scale=2.0)
    for loop in (False, True):
        for max_num_neighbors in (None, 1, 5):
            check_radius(pos, 0.8, batch=batch, loop=loop, max_num_neighbors=max_num_neighbors)
            check_radius(
                pos, 0.8, box=2.0, batch=batch, loop=loop, max_num_neighbors=max_num_neighbors
            )
    # Only the grouping matters, not the id values.
    sparse_ids = batch * 10**12 + 7
    for function, argument in ((radius_edges, 0.8), (knn_edges, 4)):
        expected = function(pos, argument, batch=batch)
        got = function(pos, argument, batch=sparse_ids)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_radius_clustered_points():
    rng = np.random.default_rng(5)
    for dim in (1, 2, 3):
        pos = clustered(rng, 400, dim, scale=10.0)
        check_radius(pos, 1.0)
        check_radius(pos, 1.0, box=10.0, max_num_neighbors=7)
        check_radius(pos, 1e-4, loop=True)


def test_radius_lattice_ties_sorted_by_sender():
    axis = torch.arange(5, dtype=torch.float64)
    pos = torch.cartesian_prod(axis, axis, axis)
    pos = pos[torch.randperm(len(pos), generator=torch.Generator().manual_seed(0))]
    for dtype in (torch.float64, torch.float32):
        check_radius(pos.to(dtype), 1.5)
        check_radius(pos.to(dtype), 1.0, box=5.0)
    check_radius(pos, 1.5, box=5.0, max_num_neighbors=9, loop=True)
    duplicates = torch.cat([pos[:10], pos[:10], pos[:10]])  # distance-zero ties
    check_radius(duplicates, 1.0, loop=True, max_num_neighbors=4)


def test_many_small_chunks(monkeypatch):
    monkeypatch.setattr(neighbors, "MAX_CANDIDATES_PER_CHUNK", 1000)
    rng = np.random.default_rng(2)
    pos = uniform(rng, 500, 3, scale=3.0)
    check_radius(pos, 0.6, box=3.0, max_num_neighbors=6)
    check_knn(pos, 5, box=3.0)


def test_radius_float32_large_coordinates():
    rng = np.random.default_rng(8)
    pos = torch.tensor(1000.0 + rng.random((300, 3)) * 5, dtype=torch.float32)
    check_radius(pos, 0.9)
    wide = torch.tensor(rng.random((400, 1)) * 1000 - 500, dtype=torch.float32)
    check_radius(wide, 2.0, box=1000.0)
    check_knn(wide, 3, box=1000.0)


def test_radius_empty_and_single_point():
    for dim in (1, 3):
        for pos in (torch.zeros(0, dim), torch.zeros(0, dim, dtype=torch.float64)):
            for box in (None, 1.0):
                edge_index, displacement = radius_edges(pos, 0.3, box=box, loop=True)
                assert edge_index.shape == (2, 0) and edge_index.dtype == torch.long
                assert displacement.shape == (0, dim) and displacement.dtype == pos.dtype
                edge_index, displacement = knn_edges(pos, 3, box=box, loop=True)
                assert edge_index.shape == (2, 0) and displacement.shape == (0, dim)
            no_graphs = torch.zeros(0, dtype=torch.long)
            assert radius_edges(pos, 0.3, batch=no_graphs)[0].shape == (2, 0)
            assert knn_edges(pos, 3, batch=no_graphs)[0].shape == (2, 0)
        one = torch.full((1, dim), 0.25)
        for box in (None, 1.0):
            assert radius_edges(one, 0.3, box=box)[0].shape == (2, 0)
            assert knn_edges(one, 3, box=box)[0].shape == (2, 0)
            edge_index, displacement = radius_edges(one, 0.3, box=box, loop=True)
            assert edge_index.tolist() == [[0], [0]] and displacement.abs().sum() == 0
            edge_index, displacement = knn_edges(one, 3, box=box, loop=True)
            assert edge_index.tolist() == [[0], [0]] and displacement.abs().sum() == 0


def test_displacement_is_differentiable():
    rng = np.random.default_rng(4)
    pos = uniform(rng, 60, 3, scale=2.0).requires_grad_()
    for function, argument in ((radius_edges, 0.7), (knn_edges, 4)):
        edge_index, displacement = function(pos, argument, box=2.0)
        check_displacement(edge_index, displacement.detach(), pos.detach(), 2.0)
        (grad,) = torch.autograd.grad(displacement[:, 0].sum(), pos)
        senders, receivers = edge_index
        expected = torch.bincount(senders, minlength=60) - torch.bincount(receivers, minlength=60)
        assert torch.equal(grad[:, 0], expected.double())
        assert bool((grad[:, 1:] == 0).all())


# ----------------------------------------------------------------------------- knn


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("loop", [False, True])
@pytest.mark.parametrize("periodic", [False, True])
def test_knn_matches_brute_force(dim, loop, periodic):
    rng = np.random.default_rng(100 + dim * 10 + loop * 2 + periodic)
    box = 3.0 if periodic else None
    pos = uniform(rng, 250, dim, scale=3.0) + (2.0 if periodic else 0.0)
    for k in (1, 6, 20):
        edge_index, _ = check_knn(pos, k, box=box, loop=loop)
        # Continuous random points have no ties: the exact senders must agree too.
        distance = brute_distances(pos.numpy(), as_box(box, dim), loop=loop)
        nearest = np.argsort(distance, axis=1, kind="stable")[:, :k]
        receivers = np.repeat(np.arange(len(pos)), nearest.shape[1])
        assert np.array_equal(
            edge_codes(edge_index, len(pos)), pair_codes(nearest.ravel(), receivers, len(pos))
        )


def test_knn_float32_matches_kdtree():
    rng = np.random.default_rng(21)
    box = np.array([2.0, 3.0, 2.5])
    pos = torch.tensor(rng.random((500, 3)) * box, dtype=torch.float32)
    k = 8
    for boxsize in (None, box):
        edge_index, displacement = check_knn(pos, k, box=boxsize)
        tree = cKDTree(pos.double().numpy(), boxsize=boxsize)
        tree_distance, _ = tree.query(pos.double().numpy(), k=k + 1)
        got = torch.linalg.vector_norm(displacement.double(), dim=1).reshape(-1, k).numpy()
        np.testing.assert_allclose(got, tree_distance[:, 1:], atol=1e-5)


def test_knn_batch_with_small_graphs():
    rng = np.random.default_rng(12)
    sizes = [1, 3, 0, 60, 2, 45]
    batch = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    pos = uniform(rng, len(batch), 2, scale=1.5)
    for loop in (False, True):
        for box in (None, 1.5):
            edge_index, _ = check_knn(pos, 5, box=box, batch=batch, loop=loop)
            counts = torch.bincount(edge_index[1], minlength=len(batch))
            candidates = torch.tensor(sizes)[batch] - (0 if loop else 1)
            assert torch.equal(counts, candidates.clamp(max=5))


def test_knn_clustered_points_exercise_shrinking_and_growing(monkeypatch, knn_search):
    if knn_search == "kdtree":
        pytest.skip("exercises the cell lists' radii (run with the k-d tree off)")
    sides = []
    build = neighbors._build_cell_lists

    def recording_build(space, graph, num_graphs, min_cell_side):
        sides.append(min_cell_side)
        return build(space, graph, num_graphs, min_cell_side)

    monkeypatch.setattr(neighbors, "_build_cell_lists", recording_build)
    rng = np.random.default_rng(9)
    for dim in (1, 2, 3):
        pos = clustered(rng, 800, dim, scale=10.0)
        for box in (None, 10.0):
            sides.clear()
            check_knn(pos, 4, box=box)
            assert min(sides) < sides[0] < max(sides)


def test_knn_sparse_points_fall_back_to_whole_periodic_graph():
    """Far points whose k-th neighbour is beyond half the box use all points of the graph."""
    rng = np.random.default_rng(13)
    blob = rng.random((40, 3)) * 0.1
    far = np.array([[5.0, 5.0, 5.0], [4.0, 6.0, 5.5], [6.0, 4.5, 4.0]])
    pos = torch.tensor(np.concatenate([blob, far]))
    for loop in (False, True):
        check_knn(pos, 8, box=10.0, loop=loop)
        check_knn(pos, 8, loop=loop)
        check_knn(pos, 50, box=10.0, loop=loop)  # more than the graph holds


def test_knn_degenerate_positions():
    same = torch.ones(20, 2)
    edge_index, displacement = check_knn(same, 3)
    assert bool((displacement == 0).all())
    line = torch.zeros(50, 3, dtype=torch.float64)
    line[:, 1] = torch.linspace(0, 1, 50, dtype=torch.float64) ** 2
    check_knn(line, 4)
    check_knn(line, 4, box=[1.0, 2.0, 1.0])


# ----------------------------------------------------------------------------- properties


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 120),
    dim=st.integers(1, 3),
    periodic=st.booleans(),
    cluster=st.booleans(),
    loop=st.booleans(),
    num_graphs=st.integers(1, 3),
    relative_r=st.floats(0.02, 0.5),
    max_num_neighbors=st.one_of(st.none(), st.integers(1, 6)),
    k=st.integers(1, 10),
)
def test_random_inputs_match_brute_force(
    seed, n, dim, periodic, cluster, loop, num_graphs, relative_r, max_num_neighbors, k
):
    rng = np.random.default_rng(seed)
    lengths = rng.uniform(1.0, 3.0, size=dim)
    make = clustered if cluster else uniform
    pos = make(rng, n, dim) * torch.tensor(lengths)
    batch = torch.sort(torch.tensor(rng.integers(0, num_graphs, size=n))).values
    box = torch.tensor(lengths) if periodic else None
    r = relative_r * float(lengths.min())
    check_radius(pos, r, box=box, batch=batch, loop=loop, max_num_neighbors=max_num_neighbors)
    check_knn(pos, k, box=box, batch=batch, loop=loop)


# ----------------------------------------------------------------------------- minimum image


def test_minimum_image_convention():
    delta = torch.tensor([[0.2, -0.7], [1.6, 2.5], [-2.4, 0.5], [-0.5, 3.0]], dtype=torch.float64)
    wrapped = minimum_image(delta, 2.0)
    expected = delta - 2.0 * torch.round(delta / 2.0)
    torch.testing.assert_close(wrapped, expected)
    assert bool((wrapped.abs() <= 1.0).all())
    for box in ([2.0, 2.0], (2, 2), torch.tensor([2.0, 2.0]), torch.tensor(2.0), 2):
        torch.testing.assert_close(minimum_image(delta, box), expected)
    lengths = torch.tensor([2.0, 4.0], dtype=torch.float64)
    expected = delta - lengths * torch.round(delta / lengths)
    torch.testing.assert_close(minimum_image(delta, [2.0, 4.0]), expected)
    assert minimum_image(delta, None) is delta
    leaf = delta.clone().requires_grad_()
    (grad,) = torch.autograd.grad(minimum_image(leaf, 2.0).sum(), leaf)
    assert torch.equal(grad, torch.ones_like(delta))
    with pytest.raises(TypeError, match="delta"):
        minimum_image(torch.arange(3), 2.0)
    with pytest.raises(TypeError, match="box"):
        minimum_image(delta, "2")
    with pytest.raises(TypeError, match="box"):
        minimum_image(delta, True)


@pytest.mark.parametrize("placement", ["[0, L)", "[-L/2, L/2)"])
def test_periodic_search_wraps_both_box_conventions(placement):
    rng = np.random.default_rng(21)
    lengths = np.array([2.0, 3.0])
    pos = uniform(rng, 150, 2) * torch.tensor(lengths)
    if placement != "[0, L)":
        pos = pos - torch.tensor(lengths) / 2
    box = torch.tensor(lengths)
    check_radius(pos, 0.4, box=box)
    check_radius(pos, 0.4, box=box, max_num_neighbors=3, loop=True)
    check_knn(pos, 5, box=box)
    centred = pos - torch.tensor(lengths) * torch.floor(pos / torch.tensor(lengths) + 0.5)
    for function, argument in ((radius_edges, 0.4), (knn_edges, 5)):
        edges = function(pos, argument, box=box)[0]
        assert torch.equal(edges, function(centred, argument, box=box)[0])


# ----------------------------------------------------------------------------- bipartite


def bipartite_distances(pos, pos_dst, box=None, batch=None, batch_dst=None):
    """``[M, N]`` float64 distances at ``[receiver, sender]`` and displacements ``[M, N, d]``;
    ``inf`` across graphs."""
    pos = np.asarray(pos, dtype=np.float64)
    pos_dst = np.asarray(pos_dst, dtype=np.float64)
    displacement = pos[None, :, :] - pos_dst[:, None, :]
    if box is not None:
        displacement = displacement - box * np.round(displacement / box)
    distance = np.linalg.norm(displacement, axis=-1)
    if batch is not None:
        distance[np.asarray(batch_dst)[:, None] != np.asarray(batch)[None, :]] = np.inf
    return distance, displacement


def check_bipartite(pos, pos_dst, r, k, box=None, batch=None, batch_dst=None, max_nn=None):
    dim = pos.shape[1]
    box_np = as_box(box, dim)
    distance, expected = bipartite_distances(pos, pos_dst, box_np, batch, batch_dst)
    num_src, num_dst = len(pos), len(pos_dst)
    atol = rounding_error(torch.cat([pos, pos_dst]), box_np)

    options = {"box": box, "batch": batch, "pos_dst": pos_dst, "batch_dst": batch_dst}
    edge_index, displacement = radius_edges(pos, r, max_num_neighbors=max_nn, **options)
    check_layout(edge_index, displacement, pos)
    senders, receivers = edge_index.numpy()
    assert senders.max(initial=-1) < num_src and receivers.max(initial=-1) < num_dst
    np.testing.assert_allclose(
        displacement.double().numpy(), expected[receivers, senders], atol=atol, rtol=0
    )
    # brute_radius_pairs codes pairs as sender * rows + receiver: rows = receivers here.
    want = brute_radius_pairs(distance, r, max_nn)
    assert np.array_equal(pair_codes(senders, receivers, num_dst), want)

    edge_index, displacement = knn_edges(pos, k, **options)
    check_layout(edge_index, displacement, pos)
    senders, receivers = edge_index.numpy()
    np.testing.assert_allclose(
        displacement.double().numpy(), expected[receivers, senders], atol=atol, rtol=0
    )
    wanted = np.minimum(np.isfinite(distance).sum(1), k)
    assert np.array_equal(np.bincount(receivers, minlength=num_dst), wanted)
    assert len(np.unique(pair_codes(senders, receivers, num_dst))) == len(senders)
    nearest = np.sort(distance, axis=1)[:, :k]
    expected_distance = nearest[np.arange(nearest.shape[1]) < wanted[:, None]]
    got = torch.linalg.vector_norm(displacement.double(), dim=1).numpy()
    np.testing.assert_allclose(got, expected_distance, atol=atol, rtol=0)


@pytest.mark.parametrize("dim", [1, 2, 3])
@pytest.mark.parametrize("box", [None, "[0, L)", "[-L/2, L/2)"])
def test_bipartite_matches_brute_force(dim, box):
    rng = np.random.default_rng(31 + dim)
    lengths = np.array([2.0, 3.0, 2.5][:dim])
    pos = uniform(rng, 120, dim) * torch.tensor(lengths)
    # Receivers partly outside the senders' region (and outside the box).
    pos_dst = (uniform(rng, 70, dim) * 1.6 - 0.3) * torch.tensor(lengths)
    if box == "[-L/2, L/2)":
        pos = pos - torch.tensor(lengths) / 2
    lengths_or_none = None if box is None else torch.tensor(lengths)
    for r in (0.3, 0.8):
        check_bipartite(pos, pos_dst, r, 4, box=lengths_or_none)
    check_bipartite(pos, pos_dst, 0.8, 7, box=lengths_or_none, max_nn=3)


@pytest.mark.parametrize("periodic", [False, True])
def test_bipartite_batch_max_num_neighbors_and_clusters(periodic):
    rng = np.random.default_rng(41)
    sizes, dst_sizes = [30, 0, 50, 5], [10, 4, 0, 20]  # graph 1 has no senders
    batch = torch.repeat_interleave(torch.arange(4), torch.tensor(sizes)) * 3 + 1
    batch_dst = torch.repeat_interleave(torch.arange(4), torch.tensor(dst_sizes)) * 3 + 1
    pos = clustered(rng, len(batch), 2, scale=2.0)
    pos_dst = uniform(rng, len(batch_dst), 2, scale=2.0)
    box = 2.0 if periodic else None
    for max_nn in (None, 2):
        options = {"box": box, "batch": batch, "batch_dst": batch_dst, "max_nn": max_nn}
        check_bipartite(pos, pos_dst, 0.5, 6, **options)
    # Receivers whose graph id does not occur among the senders get no edges.
    lonely = torch.full((3,), 99)
    edge_index, _ = radius_edges(pos, 0.5, batch=batch, pos_dst=pos_dst[:3], batch_dst=lonely)
    assert edge_index.shape == (2, 0)
    assert knn_edges(pos, 3, batch=batch, pos_dst=pos_dst[:3], batch_dst=lonely)[0].numel() == 0


def test_bipartite_exact_radius_coincident_points_and_empty_sets():
    pos = torch.tensor([[0.0, 0.0], [0.5, 0.0], [2.0, 2.0]], dtype=torch.float64)
    query = torch.tensor([[0.0, 0.0], [0.25, 0.0]], dtype=torch.float64)
    edge_index, displacement = radius_edges(pos, 0.5, pos_dst=query, loop=False)
    # Coincident (distance 0) and exactly-r pairs are neighbours; `loop` does not apply.
    assert edge_index.tolist() == [[0, 1, 0, 1], [0, 0, 1, 1]]
    assert displacement[:, 0].tolist() == [0.0, 0.5, -0.25, 0.25]
    empty = torch.zeros(0, 2, dtype=torch.float64)
    for function, argument in ((radius_edges, 0.5), (knn_edges, 2)):
        for senders, receivers in ((empty, query), (pos, empty)):
            edge_index, displacement = function(senders, argument, pos_dst=receivers)
            assert edge_index.shape == (2, 0) and displacement.shape == (0, 2)
    edge_index, _ = knn_edges(pos, 10, pos_dst=query)  # fewer senders than k: all of them
    assert np.bincount(edge_index[1].numpy()).tolist() == [3, 3]
    coincident = torch.zeros(4, 2, dtype=torch.float64)
    edge_index, _ = knn_edges(coincident, 2, pos_dst=query)
    assert edge_index.tolist() == [[0, 1, 0, 1], [0, 0, 1, 1]]  # ties by sender


def test_bipartite_displacement_is_differentiable():
    rng = np.random.default_rng(6)
    pos = uniform(rng, 40, 2, scale=2.0).requires_grad_()
    query = uniform(rng, 25, 2, scale=2.0).requires_grad_()
    for function, argument in ((radius_edges, 0.6), (knn_edges, 3)):
        edge_index, displacement = function(pos, argument, box=2.0, pos_dst=query)
        grad_pos, grad_query = torch.autograd.grad(displacement[:, 0].sum(), (pos, query))
        senders, receivers = edge_index
        assert torch.equal(grad_pos[:, 0], torch.bincount(senders, minlength=40).double())
        assert torch.equal(grad_query[:, 0], -torch.bincount(receivers, minlength=25).double())


def test_bipartite_bad_inputs_name_the_argument():
    pos, query = torch.rand(10, 2), torch.rand(5, 2)
    batch = torch.zeros(10, dtype=torch.long)
    batch_dst = torch.zeros(5, dtype=torch.long)
    wrong_size = {"batch": batch, "batch_dst": batch}
    negative = {"batch": batch, "batch_dst": batch_dst - 1}
    for error, name, call in [
        (ValueError, "batch_dst", lambda: radius_edges(pos, 0.1, batch_dst=batch_dst)),
        (ValueError, "batch_dst", lambda: knn_edges(pos, 1, batch=batch, pos_dst=query)),
        (ValueError, "batch_dst", lambda: knn_edges(pos, 1, pos_dst=query, batch_dst=batch_dst)),
        (ValueError, "batch_dst", lambda: radius_edges(pos, 0.1, pos_dst=query, **wrong_size)),
        (ValueError, "batch_dst", lambda: radius_edges(pos, 0.1, pos_dst=query, **negative)),
        (TypeError, "pos_dst", lambda: radius_edges(pos, 0.1, pos_dst=query.double())),
        (TypeError, "pos_dst", lambda: radius_edges(pos, 0.1, pos_dst=[[0.0, 0.0]])),
        (TypeError, "pos_dst", lambda: knn_edges(pos, 1, pos_dst=query.long())),
        (ValueError, "pos_dst", lambda: knn_edges(pos, 1, pos_dst=torch.rand(5, 3))),
        (ValueError, "pos_dst", lambda: knn_edges(pos, 1, pos_dst=torch.full((2, 2), math.nan))),
    ]:
        with pytest.raises(error, match=name):
            call()


# ----------------------------------------------------------------------------- validation


def test_bad_inputs_raise():
    pos = torch.rand(10, 3)
    cases = [
        (TypeError, lambda: radius_edges([[0.0, 0.0]], 1.0)),
        (TypeError, lambda: radius_edges(torch.zeros(4, 2, dtype=torch.long), 1.0)),
        (TypeError, lambda: knn_edges(torch.zeros(4, 2, dtype=torch.long), 1)),
        (ValueError, lambda: radius_edges(torch.rand(5), 1.0)),
        (ValueError, lambda: radius_edges(torch.rand(2, 5, 3), 1.0)),
        (ValueError, lambda: knn_edges(torch.rand(5, 0), 1)),
        (ValueError, lambda: radius_edges(torch.tensor([[0.0, math.nan]]), 1.0)),
        (ValueError, lambda: knn_edges(torch.tensor([[0.0, math.inf]]), 1)),
        (ValueError, lambda: radius_edges(pos, 0.0)),
        (ValueError, lambda: radius_edges(pos, -1.0)),
        (ValueError, lambda: radius_edges(pos, math.inf)),
        (ValueError, lambda: radius_edges(pos, math.nan)),
        (TypeError, lambda: radius_edges(pos, "1")),
        (TypeError, lambda: radius_edges(pos, None)),
        (ValueError, lambda: knn_edges(pos, 0)),
        (ValueError, lambda: knn_edges(pos, -3)),
        (TypeError, lambda: knn_edges(pos, 2.5)),
        (TypeError, lambda: knn_edges(pos, True)),
        (ValueError, lambda: radius_edges(pos, 0.1, box=[1.0, 1.0])),
        (ValueError, lambda: radius_edges(pos, 0.1, box=torch.ones(2, 3))),
        (ValueError, lambda: knn_edges(pos, 2, box=[1.0, 0.0, 1.0])),
        (ValueError, lambda: knn_edges(pos, 2, box=-1.0)),
        (ValueError, lambda: radius_edges(pos, 0.1, box=math.inf)),
        (TypeError, lambda: radius_edges(pos, 0.1, box="abc")),
        (ValueError, lambda: radius_edges(pos, 0.51, box=1.0)),
        (ValueError, lambda: radius_edges(pos, 0.6, box=[2.0, 1.0, 2.0])),
        (TypeError, lambda: radius_edges(pos, 0.1, batch=torch.zeros(10))),
        (TypeError, lambda: radius_edges(pos, 0.1, batch=[0] * 10)),
        (ValueError, lambda: radius_edges(pos, 0.1, batch=torch.zeros(9, dtype=torch.long))),
        (ValueError, lambda: knn_edges(pos, 1, batch=torch.zeros(10, 1, dtype=torch.long))),
        (ValueError, lambda: knn_edges(pos, 1, batch=torch.tensor([1] * 5 + [0] * 5))),
        (ValueError, lambda: radius_edges(pos, 0.1, batch=torch.full((10,), -1))),
        (ValueError, lambda: radius_edges(pos, 0.1, max_num_neighbors=0)),
        (TypeError, lambda: radius_edges(pos, 0.1, max_num_neighbors=2.0)),
    ]
    for error, call in cases:
        with pytest.raises(error):
            call()


def test_error_messages_name_the_argument():
    pos = torch.rand(10, 3)
    with pytest.raises(ValueError, match="r="):
        radius_edges(pos, 0.6, box=1.0)
    with pytest.raises(ValueError, match="sorted"):
        radius_edges(pos, 0.1, batch=torch.tensor([0, 1] * 5))
    for name, call in [
        ("pos", lambda: radius_edges(torch.ones(3), 0.1)),
        ("r", lambda: radius_edges(pos, -0.1)),
        ("k", lambda: knn_edges(pos, 0)),
        ("box", lambda: knn_edges(pos, 1, box=[1.0])),
        ("batch", lambda: knn_edges(pos, 1, batch=torch.zeros(3, dtype=torch.long))),
        ("max_num_neighbors", lambda: radius_edges(pos, 0.1, max_num_neighbors=0)),
    ]:
        with pytest.raises(ValueError, match=name):
            call()


def test_accepted_argument_forms():
    rng = np.random.default_rng(17)
    pos = uniform(rng, 50, 2, scale=2.0)
    reference = radius_edges(pos, 0.5, box=2.0)
    for box in ([2.0, 2.0], (2, 2), torch.tensor([2.0, 2.0]), torch.tensor(2.0), 2):
        for r in (0.5, torch.tensor(0.5)):
            edge_index, displacement = radius_edges(pos, r, box=box)
            assert torch.equal(edge_index, reference[0])
            assert torch.equal(displacement, reference[1])
    batch = torch.zeros(50, dtype=torch.int32)
    assert torch.equal(knn_edges(pos, torch.tensor(3), batch=batch)[0], knn_edges(pos, 3)[0])


@pytest.mark.parametrize("scale", [1e20, 1e25, 1e-30])
def test_huge_and_tiny_coordinates_against_float64_brute_force(scale):
    """float32 squared distances overflow near 1e19 and underflow near 1e-19; the search runs at
    unit scale (a power of two, exact) and returns displacements at the caller's scale."""
    g = torch.Generator().manual_seed(3)
    pos = torch.randn(80, 3, generator=g) * scale
    exact = torch.cdist(pos.double() / scale, pos.double() / scale)
    exact.fill_diagonal_(float("inf"))
    from gtlib.attention import Pattern

    knn = Pattern.knn(pos, 5)
    src, dst = knn.edge_index
    got = torch.stack([src[dst == i].sort().values for i in range(80)])
    assert torch.equal(got, exact.topk(5, largest=False).indices.sort(1).values)
    torch.testing.assert_close(knn.displacement, pos[src] - pos[dst], rtol=1e-6, atol=0)
    radius = Pattern.radius(pos, 0.7 * scale)
    src, dst = radius.edge_index
    want = {(j, i) for i, j in (exact <= 0.7).nonzero().tolist()}  # exact is symmetric
    assert set(zip(src.tolist(), dst.tolist(), strict=True)) == want
    box_pos = torch.rand(60, 2, generator=g) * scale
    periodic = Pattern.radius(box_pos, 0.2 * scale, box=scale)
    delta = (box_pos[:, None].double() - box_pos[None].double()) / scale
    delta = delta - torch.round(delta)  # minimum image in a unit box
    distance = delta.norm(dim=-1)
    distance.fill_diagonal_(float("inf"))
    assert periodic.num_edges == int((distance <= 0.2).sum())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(
    "case", ["lattice", "random", "offset", "duplicates", "batch", "bipartite"]
)
def test_knn_kdtree_and_cell_lists_agree_exactly(monkeypatch, knn_search, dtype, case):
    """The k-d tree path returns the same edges, in the same order (ties by sender), as the
    cell lists alone: ties among the tree's candidates are ordered like the cell lists order
    them, and receivers with ties beyond the candidates go to the cell lists."""
    if knn_search == "cells":
        pytest.skip("compares the two paths itself")
    rng = np.random.default_rng(11)
    kwargs = {}
    if case == "lattice":  # every receiver has ties at its k-th neighbour
        grid = np.stack(np.meshgrid(*[np.arange(7)] * 3, indexing="ij"), -1).reshape(-1, 3)
        pos = torch.tensor(grid * 0.5, dtype=dtype)
    elif case == "duplicates":
        base = rng.random((60, 3)) * 5
        pos = torch.tensor(np.concatenate([base, base[:30]]), dtype=dtype)
    elif case == "offset":  # coordinates far from the origin: rounding matters in float32
        pos = torch.tensor(rng.random((700, 3)) * 2 + 3000.0, dtype=dtype)
    else:
        pos = torch.tensor(rng.random((700, 3)) * 10 - 3, dtype=dtype)
    if case == "batch":
        kwargs["batch"] = torch.tensor(np.sort(rng.integers(0, 5, len(pos))))
    if case == "bipartite":
        kwargs["pos_dst"] = torch.tensor(rng.random((90, 3)) * 10 - 3, dtype=dtype)
    unresolved = []
    nearest = neighbors._kdtree_nearest

    def recording(*args):
        found, pending = nearest(*args)
        unresolved.append(pending.numel())
        return found, pending

    monkeypatch.setattr(neighbors, "_kdtree_nearest", recording)
    for box in (None, 4.0):
        for loop in (False, True):
            if case == "bipartite" and loop:
                continue
            got = knn_edges(pos, 6, box=box, loop=loop, **kwargs)
            with monkeypatch.context() as m:
                m.setattr(neighbors, "_use_kdtree", lambda space: False)
                expected = knn_edges(pos, 6, box=box, loop=loop, **kwargs)
            assert torch.equal(got[0], expected[0])
            torch.testing.assert_close(got[1], expected[1], rtol=0, atol=0)
    assert unresolved  # the tree served every search
    if case == "lattice":  # ties beyond the tree's candidates went to the cell lists
        assert max(unresolved) > 0


def test_knn_kdtree_and_cell_lists_agree_on_near_ties(monkeypatch, knn_search):
    """Small clouds of integer coordinates (exact ties) and of integer coordinates jittered by
    1e-7 (distances a rounding apart: a sum of squares and vector_norm can differ by an ulp
    there), float32 and float64, 1-3 dimensions, with and without a periodic box: both paths
    give the same edges."""
    if knn_search == "cells":
        pytest.skip("compares the two paths itself")
    rng = np.random.default_rng(0)
    for trial in range(160):
        dim, n, k = int(rng.integers(1, 4)), int(rng.integers(2, 25)), int(rng.integers(1, 8))
        dtype = (torch.float32, torch.float64)[trial % 2]
        pos = rng.integers(0, 4, (n, dim)).astype(float)
        if trial % 4 >= 2:
            pos = pos + rng.random((n, dim)) * 1e-7
        box = 4.0 if trial % 8 >= 4 else None
        pos = torch.tensor(pos, dtype=dtype)
        loop = bool(trial % 3)
        got = knn_edges(pos, k, box=box, loop=loop)
        with monkeypatch.context() as m:
            m.setattr(neighbors, "_use_kdtree", lambda space: False)
            expected = knn_edges(pos, k, box=box, loop=loop)
        assert torch.equal(got[0], expected[0]), trial
        assert torch.equal(got[1], expected[1]), trial


def test_knn_kdtree_serves_large_graphs_only(monkeypatch, knn_search):
    """One tree per graph: batches of small graphs stay on the cell lists (default gate)."""
    if knn_search == "cells":
        pytest.skip("checks the default gate of the k-d tree")
    monkeypatch.setattr(neighbors, "_KDTREE_MIN_GRAPH", 1024)
    calls = []
    nearest = neighbors._kdtree_nearest
    monkeypatch.setattr(neighbors, "_kdtree_nearest", lambda *a: calls.append(1) or nearest(*a))
    gen = torch.Generator().manual_seed(3)
    small = torch.rand(40 * 50, 3, generator=gen)
    knn_edges(small, 5, batch=torch.arange(40).repeat_interleave(50))
    assert not calls
    check_knn(torch.rand(2100, 3, generator=gen, dtype=torch.float64), 5)
    assert calls
