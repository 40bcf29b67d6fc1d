"""Structure diagnostics (local packing fraction, clusters, structure factor) against brute force
and closed forms."""

import math

import numpy as np
import pytest
import torch

from gtlib.entropy.structure import (
    BULK,
    CLASS_NAMES,
    GAS,
    INTERFACE,
    class_means,
    cluster_labels,
    cluster_sizes,
    density_classes,
    local_packing_fraction,
    structure_factor,
)


def _dense_distances(pos: np.ndarray, L: float) -> np.ndarray:
    delta = pos[:, None, :] - pos[None, :, :]
    delta -= L * np.rint(delta / L)
    return np.sqrt((delta**2).sum(-1))


def _random(n, L, seed, d=2):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g, dtype=torch.float64) - 0.5) * L


def test_local_packing_fraction_brute_force():
    L, R = 20.0, 3.0
    pos = _random(300, L, 0)
    phi = local_packing_fraction(pos, L, radius=R, r0=0.5)
    dist = _dense_distances(pos.numpy(), L)
    counts = (dist <= R).sum(1)  # includes the particle itself
    np.testing.assert_allclose(phi.numpy(), counts * (0.5 / R) ** 2)
    # batched input gives the per-snapshot values
    batch = torch.stack([pos, _random(300, L, 1)])
    out = local_packing_fraction(batch, L, radius=R, r0=0.5)
    assert out.shape == (2, 300)
    np.testing.assert_allclose(out[0].numpy(), phi.numpy())


def test_local_packing_fraction_square_lattice_gauss_circle():
    # m x m square lattice of spacing a: every particle sees the integer points of the disc of
    # radius R/a (Gauss circle count), the same for every particle.
    m, a, R = 16, 1.5, 4.0
    L = m * a
    axis = torch.arange(m, dtype=torch.float64) * a - L / 2
    pos = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2)
    pos = pos + 1e-9  # keep points off the cell boundaries
    rr = R / a
    k = int(rr)
    gauss = sum(1 for i in range(-k, k + 1) for j in range(-k, k + 1) if i * i + j * j <= rr * rr)
    phi = local_packing_fraction(pos, L, radius=R, r0=1.0)
    np.testing.assert_allclose(phi.numpy(), gauss / R**2)


def _union_find_sizes(pos: np.ndarray, L: float, contact: float) -> list[int]:
    n = pos.shape[0]
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    dist = _dense_distances(pos, L)
    for i in range(n):
        for j in range(i + 1, n):
            if dist[i, j] <= contact:
                parent[find(i)] = find(j)
    roots = [find(i) for i in range(n)]
    return sorted(np.bincount(np.unique(roots, return_inverse=True)[1]).tolist(), reverse=True)


def test_cluster_sizes_union_find():
    L = 30.0
    pos = _random(250, L, 3)
    sizes = cluster_sizes(pos, L, contact=2.0)
    assert sizes.tolist() == _union_find_sizes(pos.numpy(), L, 2.0)
    labels = cluster_labels(pos, L, contact=2.0)
    # Labels number clusters by decreasing size and two particles in contact share a label.
    assert torch.bincount(labels).tolist() == sizes.tolist()
    dist = _dense_distances(pos.numpy(), L)
    i, j = np.nonzero(dist <= 2.0)
    assert bool((labels[i] == labels[j]).all())


def test_cluster_across_periodic_boundary():
    # A chain crossing x = +-L/2 is one cluster only through the minimum image.
    L = 20.0
    xs = torch.tensor([8.0, 9.5, -9.5, -8.0, 0.0], dtype=torch.float64)
    pos = torch.stack([xs, torch.zeros_like(xs)], -1)
    assert cluster_sizes(pos, L, contact=2.0).tolist() == [4, 1]
    assert cluster_labels(pos, L, contact=2.0).tolist() == [0, 0, 0, 0, 1]


def test_structure_factor_brute_force_double_sum():
    L = 12.0
    pos = _random(40, L, 5)
    q, S, count = structure_factor(pos, L, n_max=4)
    dq = 2 * math.pi / L
    x = pos.numpy()
    shells: dict[int, list[float]] = {}
    for i in range(-4, 5):
        for j in range(-4, 5):
            norm = math.hypot(i, j)
            m = math.floor(norm + 0.5)
            if norm == 0 or m > 4:
                continue
            qv = dq * np.array([i, j])
            diff = x[:, None, :] - x[None, :, :]
            value = np.cos(diff @ qv).sum() / x.shape[0]
            shells.setdefault(m, []).append(value)
    expected = [np.mean(shells[m]) for m in sorted(shells)]
    np.testing.assert_allclose(q.numpy(), dq * np.array(sorted(shells)))
    np.testing.assert_allclose(S.numpy(), expected, rtol=1e-10)
    assert count.tolist() == [len(shells[m]) for m in sorted(shells)]


def test_structure_factor_square_lattice_bragg_peaks():
    # m x m lattice (spacing a = L/m): S = N at q = 2 pi m/L (1, 0) and its images, 0 at every
    # other box wave vector, so the shell at |q| = 2 pi m / L averages N * 4 / count.
    m, L = 6, 12.0
    axis = torch.arange(m, dtype=torch.float64) * (L / m)
    pos = torch.stack(torch.meshgrid(axis, axis, indexing="ij"), -1).reshape(-1, 2) + 0.3
    q, S, count = structure_factor(pos, L, n_max=m)
    np.testing.assert_allclose(S[:-1].numpy(), 0.0, atol=1e-9)
    # shell m holds (+-m, 0), (0, +-m) (Bragg peaks) and the non-Bragg vectors of that radius
    assert S[-1].item() == pytest.approx(m * m * 4 / count[-1].item(), rel=1e-9)


def test_density_classes_and_errors():
    phi = torch.tensor([0.1, 0.3, 0.5, 0.8])
    assert density_classes(phi, 0.3, 0.6).tolist() == [GAS, INTERFACE, INTERFACE, BULK]
    with pytest.raises(ValueError, match="bulk_above"):
        density_classes(phi, 0.6, 0.3)
    with pytest.raises(TypeError, match="local_phi"):
        density_classes([0.1], 0.3, 0.6)
    pos = _random(10, 10.0, 0)
    with pytest.raises(ValueError, match="radius"):
        local_packing_fraction(pos, 10.0, radius=6.0)
    with pytest.raises(TypeError, match="pos"):
        local_packing_fraction(pos.numpy(), 10.0)
    with pytest.raises(ValueError, match="box_length"):
        cluster_labels(pos, -1.0)
    with pytest.raises(ValueError, match="one snapshot"):
        cluster_labels(pos[None], 10.0)
    with pytest.raises(ValueError, match="q_max"):
        structure_factor(pos, 10.0, q_max=0.1)
    with pytest.raises(ValueError, match="NaN"):
        structure_factor(pos * float("nan"), 10.0)


def test_class_means_against_a_hand_computation():
    values = torch.tensor([[1.0, 2.0, 3.0, 10.0], [4.0, 6.0, 8.0, 20.0], [5.0, 7.0, 9.0, 11.0]])
    classes = torch.tensor([[GAS, GAS, INTERFACE, BULK], [GAS, BULK, BULK, BULK],
                            [INTERFACE, INTERFACE, INTERFACE, INTERFACE]])  # fmt: skip
    result = class_means(values, classes)
    assert list(result) == list(CLASS_NAMES) == ["gas", "interface", "bulk"]
    # gas: snapshot means 1.5 and 4 (absent from the third)
    gas = result["gas"]
    assert gas["num_snapshots"] == 2 and gas["fraction_of_particles"] == pytest.approx(3 / 12)
    assert gas["mean_per_particle"] == pytest.approx(2.75)
    assert gas["stderr"] == pytest.approx(np.std([1.5, 4.0], ddof=1) / np.sqrt(2))
    # interface: 3 and 8 (mean of 5, 7, 9, 11)
    assert result["interface"]["mean_per_particle"] == pytest.approx(5.5)
    assert result["interface"]["fraction_of_particles"] == pytest.approx(5 / 12)
    # bulk: 10 and (6 + 8 + 20) / 3
    bulk = result["bulk"]
    assert bulk["mean_per_particle"] == pytest.approx((10 + 34 / 3) / 2)
    assert bulk["num_snapshots"] == 2
    # a class present in one snapshot has no error; one absent everywhere is NaN
    single = class_means(values[:1], classes[:1])
    assert single["bulk"]["mean_per_particle"] == 10.0 and np.isnan(single["bulk"]["stderr"])
    none = class_means(values[2:], classes[2:])
    assert np.isnan(none["gas"]["mean_per_particle"]) and none["gas"]["num_snapshots"] == 0


def test_class_means_rejects_bad_input():
    values = torch.ones(2, 3)
    with pytest.raises(ValueError, match="values and classes"):
        class_means(values, torch.zeros(3, dtype=torch.long))
    with pytest.raises(TypeError, match="classes"):
        class_means(values, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="classes must lie"):
        class_means(values, torch.full((2, 3), 3))
    with pytest.raises(ValueError, match="values"):
        class_means(values * float("nan"), torch.zeros(2, 3, dtype=torch.long))
