"""OGB layout readers, the ogb_like generator and the evaluator.

References: the raw files parsed independently with the standard library (csv + gzip), the `ogb`
package's own readers and evaluators when installed, and closed-form metric computations.
"""

from __future__ import annotations

import csv
import gzip
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gtlib.datasets.generate import ogb_like
from gtlib.datasets.ogb import (
    Evaluator,
    EvaluatorInputError,
    OGBFormatError,
    OGBGraphDataset,
    OGBMissingFileError,
    OGBNodeDataset,
    read_csv_gz,
)

# ------------------------------------------------------------------------------------------------
# helpers: an independent reader (stdlib csv) and file corruption
# ------------------------------------------------------------------------------------------------


def stdlib_read(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt", newline="") as handle:
        return [row for row in csv.reader(handle)]


def stdlib_numbers(path: Path) -> np.ndarray:
    rows = stdlib_read(path)
    cells = [cell for row in rows for cell in row]
    if all(cell.lstrip("-").isdigit() for cell in cells):
        return np.array([[int(c) for c in row] for row in rows], dtype=np.int64)
    return np.array([[float(c) if c else math.nan for c in row] for row in rows])


def write_gz_text(path: Path, text: str) -> None:
    with gzip.open(path, "wt", newline="") as handle:
        handle.write(text)


def replace_line(path: Path, line_index: int, new_line: str) -> None:
    lines = gzip.open(path, "rt").read().splitlines()
    lines[line_index] = new_line
    write_gz_text(path, "\n".join(lines) + "\n")


@pytest.fixture
def node_root(tmp_path: Path) -> Path:
    ogb_like(tmp_path, "ogbn-arxiv", num_nodes=300, num_classes=5, seed=1)
    return tmp_path


@pytest.fixture
def graph_root(tmp_path: Path) -> Path:
    ogb_like(
        tmp_path, "ogbg-molhiv", num_graphs=40, num_edge_features=3, label_missing_rate=0.1, seed=2
    )
    return tmp_path


# ------------------------------------------------------------------------------------------------
# node level
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("add_inverse_edge", [False, True])
def test_node_dataset_matches_stdlib_parse(tmp_path: Path, add_inverse_edge: bool) -> None:
    folder = ogb_like(
        tmp_path,
        "synthetic-node",
        num_nodes=200,
        num_edges=700,
        num_edge_features=2,
        add_inverse_edge=add_inverse_edge,
        additional_node_files=("node_year",),
        additional_edge_files=("edge_weight",),
        seed=3,
    )
    data = OGBNodeDataset(tmp_path, "synthetic-node")[0]
    raw = folder / "raw"
    edge = stdlib_numbers(raw / "edge.csv.gz")
    edge_feat = stdlib_numbers(raw / "edge-feat.csv.gz").astype(np.float32)
    edge_weight = stdlib_numbers(raw / "edge_weight.csv.gz")
    assert edge.shape == (700, 2)
    if add_inverse_edge:  # [e0, e0^r, e1, e1^r, ...]
        expected = np.stack([edge, edge[:, ::-1]], axis=1).reshape(-1, 2).T
        edge_feat, edge_weight = np.repeat(edge_feat, 2, 0), np.repeat(edge_weight, 2, 0)
    else:
        expected = edge.T
    assert torch.equal(data.edge_index, torch.from_numpy(np.ascontiguousarray(expected)))
    assert data.edge_attr.dtype == torch.float32
    assert torch.equal(data.edge_attr, torch.from_numpy(edge_feat))
    assert torch.equal(data.edge_weight, torch.from_numpy(edge_weight))
    assert data.x.dtype == torch.float32
    x = stdlib_numbers(raw / "node-feat.csv.gz").astype(np.float32)
    assert torch.equal(data.x, torch.from_numpy(x))
    assert data.y.dtype == torch.int64 and data.y.shape == (200, 1)
    assert torch.equal(data.y, torch.from_numpy(stdlib_numbers(raw / "node-label.csv.gz")))
    assert torch.equal(data.node_year, torch.from_numpy(stdlib_numbers(raw / "node_year.csv.gz")))
    assert data.num_nodes == 200


def test_node_split_and_meta(node_root: Path) -> None:
    dataset = OGBNodeDataset(node_root, "ogbn-arxiv")
    split = dataset.get_idx_split()
    folder = node_root / "ogbn_arxiv" / "split" / "time"
    for part in ("train", "valid", "test"):
        expected = stdlib_numbers(folder / f"{part}.csv.gz")[:, 0]
        assert split[part].dtype == torch.int64
        assert torch.equal(split[part], torch.from_numpy(expected))
    together = torch.cat(list(split.values()))
    assert torch.equal(together.sort().values, torch.arange(300))  # a partition of the nodes
    assert (dataset.num_tasks, dataset.num_classes, dataset.eval_metric) == (1, 5, "acc")
    assert not dataset.meta.add_inverse_edge  # arxiv's known meta


def test_int_features_are_int64(tmp_path: Path) -> None:
    ogb_like(tmp_path, "int-node", num_nodes=100, feature_dtype="int", add_inverse_edge=True)
    data = OGBNodeDataset(tmp_path, "int-node")[0]
    assert data.x.dtype == torch.int64
    raw = tmp_path / "int_node" / "raw" / "node-feat.csv.gz"
    assert torch.equal(data.x, torch.from_numpy(stdlib_numbers(raw)))


def test_node_labels_are_learnable(tmp_path: Path) -> None:
    ogb_like(tmp_path, "learn-node", num_nodes=600, num_classes=4, seed=5)
    dataset = OGBNodeDataset(tmp_path, "learn-node")
    data, split = dataset[0], dataset.get_idx_split()
    y = data.y[:, 0]
    # nearest class centroid on features, fitted on train only
    centroids = torch.stack(
        [data.x[split["train"]][y[split["train"]] == c].mean(0) for c in range(4)]
    )
    predicted = torch.cdist(data.x[split["test"]], centroids).argmin(1)
    accuracy = (predicted == y[split["test"]]).float().mean().item()
    assert accuracy > 0.75  # chance is 0.25; label noise 10%
    # edges are homophilous (planted partition): most edges join equal labels
    same = (y[data.edge_index[0]] == y[data.edge_index[1]]).float().mean().item()
    assert same > 0.6


def test_multitask_node_labels(tmp_path: Path) -> None:
    ogb_like(tmp_path, "ogbn-proteins", num_nodes=200, num_tasks=8, num_features=4, seed=6)
    dataset = OGBNodeDataset(tmp_path, "ogbn-proteins")
    data = dataset[0]
    assert data.y.shape == (200, 8) and set(data.y.unique().tolist()) <= {0, 1}
    assert dataset.meta.add_inverse_edge and dataset.eval_metric == "rocauc"
    assert data.node_species.shape == (200, 1)
    assert dataset.get_idx_split()["train"].numel() == 120


def test_node_dataset_against_ogb_package(tmp_path: Path) -> None:
    pytest.importorskip("ogb")
    from ogb.io.read_graph_raw import read_csv_graph_raw
    from ogb.nodeproppred import NodePropPredDataset

    for name in ("ogbn-arxiv", "ogbn-products"):
        ogb_like(tmp_path, name, num_nodes=250, num_classes=6, seed=7)
        ours = OGBNodeDataset(tmp_path, name)
        data = ours[0]
        reference = NodePropPredDataset(name, root=str(tmp_path))
        graph, labels = reference[0]
        assert data.x.dtype == torch.from_numpy(graph["node_feat"]).dtype
        np.testing.assert_array_equal(data.x.numpy(), graph["node_feat"])
        np.testing.assert_array_equal(data.edge_index.numpy(), graph["edge_index"])
        np.testing.assert_array_equal(data.y.numpy(), labels)
        assert graph["num_nodes"] == data.num_nodes
        if name == "ogbn-arxiv":
            np.testing.assert_array_equal(data.node_year.numpy(), graph["node_year"])
        ref_split, our_split = reference.get_idx_split(), ours.get_idx_split()
        for part in ("train", "valid", "test"):
            np.testing.assert_array_equal(our_split[part].numpy(), ref_split[part])
    # custom name with edge features and extra edge files, through ogb's raw reader
    folder = ogb_like(
        tmp_path, "custom", num_nodes=80, num_edge_features=2, add_inverse_edge=True,
        additional_edge_files=("edge_kind",), seed=8,
    )  # fmt: skip
    data = OGBNodeDataset(tmp_path, "custom")[0]
    graph = read_csv_graph_raw(
        str(folder / "raw"), add_inverse_edge=True, additional_edge_files=["edge_kind"]
    )[0]
    np.testing.assert_array_equal(data.edge_index.numpy(), graph["edge_index"])
    np.testing.assert_array_equal(data.edge_attr.numpy(), graph["edge_feat"])
    assert data.edge_attr.dtype == torch.float32 and graph["edge_feat"].dtype == np.float32
    np.testing.assert_array_equal(data.edge_kind.numpy(), graph["edge_kind"])


# ------------------------------------------------------------------------------------------------
# graph level
# ------------------------------------------------------------------------------------------------


def test_graph_dataset_matches_stdlib_parse(graph_root: Path) -> None:
    dataset = OGBGraphDataset(graph_root, "ogbg-molhiv")
    raw = graph_root / "ogbg_molhiv" / "raw"
    num_nodes = stdlib_numbers(raw / "num-node-list.csv.gz")[:, 0]
    num_edges = stdlib_numbers(raw / "num-edge-list.csv.gz")[:, 0]
    edge = stdlib_numbers(raw / "edge.csv.gz")
    x = stdlib_numbers(raw / "node-feat.csv.gz")
    edge_feat = stdlib_numbers(raw / "edge-feat.csv.gz")
    labels = stdlib_numbers(raw / "graph-label.csv.gz")
    assert len(dataset) == 40 and np.isnan(labels).any()
    node_start, edge_start = 0, 0
    for g in range(40):
        data = dataset[g]
        n, m = int(num_nodes[g]), int(num_edges[g])
        local = edge[edge_start : edge_start + m]
        assert local.min() >= 0 and local.max() < n  # local indices
        interleaved = np.stack([local, local[:, ::-1]], axis=1).reshape(-1, 2).T
        assert torch.equal(data.edge_index, torch.from_numpy(np.ascontiguousarray(interleaved)))
        assert torch.equal(data.x, torch.from_numpy(x[node_start : node_start + n]))
        expected_attr = np.repeat(edge_feat[edge_start : edge_start + m], 2, axis=0)
        assert torch.equal(data.edge_attr, torch.from_numpy(expected_attr))
        assert data.y.shape == (1, 1) and data.y.dtype == torch.float32  # NaN present
        np.testing.assert_array_equal(data.y.numpy()[0], labels[g].astype(np.float32))
        node_start, edge_start = node_start + n, edge_start + m
    split = dataset.get_idx_split()
    assert sorted(torch.cat(list(split.values())).tolist()) == list(range(40))


def test_graph_labels_int_without_nan(tmp_path: Path) -> None:
    ogb_like(tmp_path, "ogbg-molpcba", num_graphs=30, num_tasks=3, seed=9)
    dataset = OGBGraphDataset(tmp_path, "ogbg-molpcba")
    assert dataset[0].y.dtype == torch.int64 and dataset[0].y.shape == (1, 3)
    assert dataset.eval_metric == "ap" and dataset.y.shape == (30, 3)


def test_graph_labels_are_learnable(tmp_path: Path) -> None:
    ogb_like(tmp_path, "learn-graph", "graph", num_graphs=300, num_nodes=16, seed=10)
    dataset = OGBGraphDataset(tmp_path, "learn-graph")
    # histogram of (type_u, type_v) over edges: a linear model on it can count the motif
    features = torch.zeros(len(dataset), 36)
    for g, data in enumerate(dataset):
        types = data.x[:, 0]
        pair = types[data.edge_index[0]] * 6 + types[data.edge_index[1]]
        features[g] = torch.bincount(pair, minlength=36).float()
    y = dataset.y[:, 0].float()
    split = dataset.get_idx_split()
    torch.manual_seed(0)
    model = torch.nn.Linear(36, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    scale = features.std(0) + 1.0
    for _ in range(300):
        optimizer.zero_grad()
        logits = model(features[split["train"]] / scale)[:, 0]
        torch.nn.functional.binary_cross_entropy_with_logits(logits, y[split["train"]]).backward()
        optimizer.step()
    with torch.no_grad():
        logits = model(features[split["test"]] / scale)[:, 0]
    auc = Evaluator(num_tasks=1, eval_metric="rocauc", backend="gtlib").eval(
        {"y_true": y[split["test"]][:, None], "y_pred": logits[:, None]}
    )["rocauc"]
    assert auc > 0.85


def test_graph_dataset_against_ogb_package(graph_root: Path) -> None:
    pytest.importorskip("ogb")
    from ogb.graphproppred import GraphPropPredDataset

    ours = OGBGraphDataset(graph_root, "ogbg-molhiv")
    reference = GraphPropPredDataset("ogbg-molhiv", root=str(graph_root))
    assert len(reference) == len(ours)
    for g in range(len(ours)):
        graph, label = reference[g]
        data = ours[g]
        np.testing.assert_array_equal(data.edge_index.numpy(), graph["edge_index"])
        np.testing.assert_array_equal(data.x.numpy(), graph["node_feat"])
        assert data.x.dtype == torch.from_numpy(graph["node_feat"]).dtype
        np.testing.assert_array_equal(data.edge_attr.numpy(), graph["edge_feat"])
        np.testing.assert_array_equal(data.y.numpy()[0], label.astype(np.float32))
        assert data.num_nodes == graph["num_nodes"]
    ref_split, our_split = reference.get_idx_split(), ours.get_idx_split()
    for part in ("train", "valid", "test"):
        np.testing.assert_array_equal(our_split[part].numpy(), ref_split[part])


# ------------------------------------------------------------------------------------------------
# cache
# ------------------------------------------------------------------------------------------------


def test_processed_cache_reused_and_invalidated(node_root: Path) -> None:
    first = OGBNodeDataset(node_root, "ogbn-arxiv")
    processed = Path(first.processed_paths[0])
    stamp = processed.stat().st_mtime_ns
    second = OGBNodeDataset(node_root, "ogbn-arxiv")
    assert second.processed_paths[0] == str(processed)
    assert processed.stat().st_mtime_ns == stamp  # reused, not rewritten
    assert not [p for p in processed.parent.iterdir() if p.name.endswith(".tmp")]
    # rewrite the labels: the cache must be invalidated
    label_path = node_root / "ogbn_arxiv" / "raw" / "node-label.csv.gz"
    new_labels = (stdlib_numbers(label_path) + 1) % 5
    write_gz_text(label_path, "\n".join(str(v) for v in new_labels[:, 0]) + "\n")
    third = OGBNodeDataset(node_root, "ogbn-arxiv")
    assert third.processed_paths[0] != str(processed)
    assert torch.equal(third[0].y, torch.from_numpy(new_labels))
    assert not processed.exists()  # the stale cache was removed
    # an explicit add_inverse_edge is a different processed result
    inverse = OGBNodeDataset(node_root, "ogbn-arxiv", add_inverse_edge=True)
    assert inverse[0].edge_index.shape[1] == 2 * third[0].edge_index.shape[1]


def test_corrupt_processed_cache_names_the_file(node_root: Path) -> None:
    processed = Path(OGBNodeDataset(node_root, "ogbn-arxiv").processed_paths[0])
    good = processed.read_bytes()
    for content in (b"", good[: len(good) // 2], b"not a torch file"):
        processed.write_bytes(content)
        with pytest.raises(OGBFormatError, match=f"{processed}.*force_reload=True"):
            OGBNodeDataset(node_root, "ogbn-arxiv")
    rebuilt = OGBNodeDataset(node_root, "ogbn-arxiv", force_reload=True)
    processed.write_bytes(good)
    assert torch.equal(OGBNodeDataset(node_root, "ogbn-arxiv")[0].x, rebuilt[0].x)


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------


def _raw(root: Path, file_name: str, name: str = "ogbn_arxiv") -> Path:
    return root / name / "raw" / file_name


@pytest.mark.parametrize(
    ("file_name", "corrupt", "message"),
    [
        ("edge.csv.gz", lambda p: p.write_bytes(b"this is not gzip"), "corrupt gzip"),
        ("edge.csv.gz", lambda p: p.write_bytes(p.read_bytes()[:40]), "corrupt gzip"),
        ("edge.csv.gz", lambda p: replace_line(p, 3, "1,2,3"), "wrong column count at line 4"),
        ("edge.csv.gz", lambda p: replace_line(p, 5, "1,abc"), "non-numeric cell 'abc' at line 6"),
        ("edge.csv.gz", lambda p: replace_line(p, 2, "1.5,2"), "non-integer cell '1.5' at line 3"),
        ("edge.csv.gz", lambda p: replace_line(p, 7, "0,300"), "node index out of range at line 8"),
        ("edge.csv.gz", lambda p: replace_line(p, 0, "-1,3"), "node index out of range at line 1"),
        ("num-edge-list.csv.gz", lambda p: write_gz_text(p, "5\n"), "sums to 5"),
        (
            "num-node-list.csv.gz",
            lambda p: write_gz_text(p, "300\n2\n"),
            "list.csv.gz has 2 (one row",
        ),
        ("node-feat.csv.gz", lambda p: replace_line(p, 4, "1,2"), "wrong column count at line 5"),
        ("node-label.csv.gz", lambda p: write_gz_text(p, "1\n2\n"), "has 2 rows, expected 300"),
        ("node_year.csv.gz", lambda p: write_gz_text(p, "2001\n"), "has 1 rows, expected 300"),
        ("edge.csv.gz", lambda p: p.unlink(), "mandatory file is missing"),
        ("num-node-list.csv.gz", lambda p: p.unlink(), "mandatory file is missing"),
        ("node-label.csv.gz", lambda p: p.unlink(), "file is missing"),
    ],
)
def test_corrupt_node_files_raise(node_root: Path, file_name, corrupt, message) -> None:
    path = _raw(node_root, file_name)
    corrupt(path)
    with pytest.raises(OGBFormatError) as info:
        OGBNodeDataset(node_root, "ogbn-arxiv")
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)


def test_missing_files_are_file_not_found(node_root: Path) -> None:
    _raw(node_root, "num-edge-list.csv.gz").unlink()
    with pytest.raises(FileNotFoundError, match="num-edge-list.csv.gz"):
        OGBNodeDataset(node_root, "ogbn-arxiv")
    (node_root / "ogbn_arxiv" / "RELEASE_v1.txt").unlink()
    with pytest.raises(OGBMissingFileError, match="RELEASE_v1.txt"):
        OGBNodeDataset(node_root, "ogbn-arxiv")
    with pytest.raises(OGBMissingFileError, match="ogbn_products"):
        OGBNodeDataset(node_root, "ogbn-products")


def test_graph_local_index_and_count_errors(graph_root: Path) -> None:
    raw = graph_root / "ogbg_molhiv" / "raw"
    num_nodes = stdlib_numbers(raw / "num-node-list.csv.gz")[:, 0]
    # an index valid globally but not for the first graph (indices are per graph)
    replace_line(raw / "edge.csv.gz", 0, f"0,{int(num_nodes[0])}")
    with pytest.raises(OGBFormatError, match="out of range at line 1.*graph 0"):
        OGBGraphDataset(graph_root, "ogbg-molhiv")
    replace_line(raw / "edge.csv.gz", 0, "0,1")
    write_gz_text(raw / "graph-label.csv.gz", "1\n0\n")
    with pytest.raises(OGBFormatError, match=r"graph-label.csv.gz: has 2 rows, expected 40"):
        OGBGraphDataset(graph_root, "ogbg-molhiv")


def test_split_errors(node_root: Path) -> None:
    dataset = OGBNodeDataset(node_root, "ogbn-arxiv")
    path = node_root / "ogbn_arxiv" / "split" / "time" / "valid.csv.gz"
    write_gz_text(path, "0\n5\n300\n")
    with pytest.raises(OGBFormatError, match="index 300 out of range at line 3"):
        dataset.get_idx_split()
    path.unlink()
    with pytest.raises(OGBMissingFileError, match="valid.csv.gz"):
        dataset.get_idx_split()
    with pytest.raises(OGBMissingFileError, match="random"):
        dataset.get_idx_split("random")


def test_unknown_dataset_needs_add_inverse_edge(node_root: Path) -> None:
    (node_root / "ogbn_arxiv").rename(node_root / "mystery")
    (node_root / "mystery" / "gtlib_meta.json").unlink()
    with pytest.raises(ValueError, match="add_inverse_edge"):
        OGBNodeDataset(node_root, "mystery")
    dataset = OGBNodeDataset(node_root, "mystery", add_inverse_edge=False)
    assert dataset.get_idx_split()["train"].numel() == 180  # the only split folder
    assert dataset.task_type == "multiclass classification"
    cached = OGBNodeDataset(node_root, "mystery", add_inverse_edge=False)  # from the cache
    assert cached.task_type == "multiclass classification" and cached.eval_metric == "acc"
    assert torch.equal(cached[0].y, dataset[0].y)


def test_read_csv_gz_empty_cells_are_nan(tmp_path: Path) -> None:
    path = tmp_path / "labels.csv.gz"
    write_gz_text(path, "1,,0\n,1,\n0,1,1\n")
    values = read_csv_gz(path)
    expected = np.array([[1, np.nan, 0], [np.nan, 1, np.nan], [0, 1, 1]])
    np.testing.assert_array_equal(values, expected)


# ------------------------------------------------------------------------------------------------
# generator
# ------------------------------------------------------------------------------------------------


def test_generator_is_deterministic_and_atomic(tmp_path: Path) -> None:
    first = ogb_like(tmp_path / "a", "ogbg-x", num_graphs=20, seed=11)
    second = ogb_like(tmp_path / "b", "ogbg-x", num_graphs=20, seed=11)
    for path in sorted(first.rglob("*.csv.gz")):
        twin = second / path.relative_to(first)
        assert gzip.open(path).read() == gzip.open(twin).read(), path
    with pytest.raises(FileExistsError):
        ogb_like(tmp_path / "a", "ogbg-x", num_graphs=20, seed=12)
    ogb_like(tmp_path / "a", "ogbg-x", num_graphs=25, seed=12, overwrite=True)
    assert sorted(os.listdir(tmp_path / "a")) == ["ogbg_x"]  # no temporary folders left
    assert len(OGBGraphDataset(tmp_path / "a", "ogbg-x")) == 25
    with pytest.raises(ValueError, match="kind"):
        ogb_like(tmp_path, "ogbn-arxiv", kind="graph")


def test_generator_removes_what_a_killed_run_left(tmp_path: Path) -> None:
    import subprocess
    import sys

    from gtlib import io as gtlib_io

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its pid is that of a finished process: a writer killed mid-run
    host, hexes = gtlib_io._host_tag(), "ab" * 16
    staged = tmp_path / f".ogbg_x.{host}.{child.pid}.{hexes}.tmp"
    replaced = tmp_path / f".ogbg_x.old.{host}.{child.pid}.{hexes}.tmp"
    live = tmp_path / f".ogbg_x.{host}.{os.getpid()}.{hexes}.tmp"  # a concurrent writer's
    for folder in (staged, replaced / "old", live):
        folder.mkdir(parents=True)
        (folder / "edge.csv.gz").write_bytes(b"partial")
    ogb_like(tmp_path, "ogbg-x", num_graphs=10, seed=1)
    assert sorted(os.listdir(tmp_path)) == sorted(["ogbg_x", live.name])


def test_generator_chunking_keeps_the_layout(tmp_path: Path) -> None:
    folder = ogb_like(tmp_path, "chunked", num_nodes=257, num_edges=1000, chunk_size=64, seed=4)
    data = OGBNodeDataset(tmp_path, "chunked")[0]
    assert data.num_nodes == 257 and data.edge_index.shape == (2, 1000)
    assert (data.edge_index[0] != data.edge_index[1]).all()
    mapping = stdlib_read(folder / "mapping" / "nodeidx2nodeid.csv.gz")
    assert mapping[0] == ["node idx", "node id"] and len(mapping) == 258


@pytest.mark.slow
def test_generator_scales_to_a_million_nodes(tmp_path: Path) -> None:
    folder = ogb_like(
        tmp_path, "big", num_nodes=1_000_000, num_edges=10_000_000, num_features=8, seed=0
    )
    assert stdlib_read(folder / "raw" / "num-edge-list.csv.gz") == [["10000000"]]


# ------------------------------------------------------------------------------------------------
# evaluator
# ------------------------------------------------------------------------------------------------


def mann_whitney_auc(y: np.ndarray, s: np.ndarray) -> float:
    """P(score_pos > score_neg) + 0.5 P(tie), by counting all pairs."""
    positive, negative = s[y == 1], s[y == 0]
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return (greater + 0.5 * ties) / (positive.size * negative.size)


def brute_force_ap(y: np.ndarray, s: np.ndarray) -> float:
    """Sum over distinct thresholds t of (recall(t) - recall(previous)) * precision(t)."""
    total, previous_recall = 0.0, 0.0
    for threshold in np.unique(s)[::-1]:
        chosen = s >= threshold
        recall = (y[chosen] == 1).sum() / (y == 1).sum()
        precision = (y[chosen] == 1).sum() / chosen.sum()
        total += (recall - previous_recall) * precision
        previous_recall = recall
    return total


def random_binary_input(rng: np.random.Generator, rows: int, tasks: int):
    y_true = rng.integers(0, 2, size=(rows, tasks)).astype(np.float64)
    y_true[rng.random(y_true.shape) < 0.2] = np.nan
    y_pred = np.round(rng.normal(size=(rows, tasks)), 1)  # rounding makes many ties
    return y_true, y_pred


def test_fallback_metrics_match_closed_forms() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        y_true, y_pred = random_binary_input(rng, 40, 3)
        aucs, aps = [], []
        for t in range(3):
            labeled = ~np.isnan(y_true[:, t])
            aucs.append(mann_whitney_auc(y_true[labeled, t], y_pred[labeled, t]))
            aps.append(brute_force_ap(y_true[labeled, t], y_pred[labeled, t]))
        inputs = {"y_true": y_true, "y_pred": y_pred}
        auc = Evaluator(num_tasks=3, eval_metric="rocauc", backend="gtlib").eval(inputs)["rocauc"]
        ap = Evaluator(num_tasks=3, eval_metric="ap", backend="gtlib").eval(inputs)["ap"]
        assert auc == pytest.approx(np.mean(aucs), abs=1e-12)
        assert ap == pytest.approx(np.mean(aps), abs=1e-12)
    y_true = np.array([[0, 1], [1, 1], [2, 1], [1, 0]])
    y_pred = np.array([[0, 1], [1, 0], [1, 1], [1, 0]])
    acc = Evaluator(num_tasks=2, eval_metric="acc", backend="gtlib").eval(
        {"y_true": torch.from_numpy(y_true), "y_pred": torch.from_numpy(y_pred)}
    )
    assert acc == {"acc": (3 / 4 + 3 / 4) / 2}
    regression = {
        "y_true": np.array([[1.0], [np.nan], [3.0]]),
        "y_pred": np.array([[2.0], [0], [1]]),
    }
    assert Evaluator(num_tasks=1, eval_metric="rmse", backend="gtlib").eval(regression)[
        "rmse"
    ] == pytest.approx(math.sqrt((1 + 4) / 2))
    assert Evaluator(num_tasks=1, eval_metric="mae", backend="gtlib").eval(regression)[
        "mae"
    ] == pytest.approx(1.5)


def test_rocauc_masks_tasks_without_both_classes() -> None:
    y_true = np.array([[1, 0], [1, 1], [1, 0], [np.nan, 1]])
    y_pred = np.array([[0.1, 0.2], [0.5, 0.9], [0.3, 0.1], [0.7, 0.8]])
    result = Evaluator(num_tasks=2, eval_metric="rocauc", backend="gtlib").eval(
        {"y_true": y_true, "y_pred": y_pred}
    )
    assert result == {"rocauc": 1.0}  # task 0 has no negatives and is skipped
    with pytest.raises(RuntimeError, match="No positively labeled data"):
        Evaluator(num_tasks=1, eval_metric="ap", backend="gtlib").eval(
            {"y_true": np.ones((3, 1)), "y_pred": np.zeros((3, 1))}
        )


@pytest.mark.parametrize("backend", ["gtlib", "auto"])
def test_evaluator_input_validation(backend: str) -> None:
    evaluator = Evaluator("ogbg-molhiv", backend=backend)
    good = np.zeros((4, 1))
    for bad in (
        {"y_true": good},
        {"y_true": good, "y_pred": np.zeros((4, 2))},
        {"y_true": np.zeros(4), "y_pred": np.zeros(4)},
        {"y_true": np.zeros((4, 2)), "y_pred": np.zeros((4, 2))},
        {"y_true": [[0.0]], "y_pred": [[0.0]]},
    ):
        with pytest.raises(RuntimeError):
            evaluator.eval(bad)
    with pytest.raises(EvaluatorInputError, match="Missing key of y_pred"):  # also a ValueError
        Evaluator("ogbg-molhiv", backend="gtlib").eval({"y_true": good})
    with pytest.raises(ValueError, match="eval_metric"):
        Evaluator(num_tasks=1, eval_metric="f1")
    with pytest.raises(ValueError, match="num_tasks"):
        Evaluator("my-data", eval_metric="acc")


def test_fallback_equals_ogb_evaluator() -> None:
    pytest.importorskip("ogb")
    from ogb.graphproppred import Evaluator as GraphEvaluator
    from ogb.nodeproppred import Evaluator as NodeEvaluator

    rng = np.random.default_rng(1)
    for trial in range(30):
        y_true, y_pred = random_binary_input(rng, 60, 4)
        if trial % 3 == 0:
            y_pred = y_pred.astype(np.float32)
        inputs = {"y_true": y_true, "y_pred": y_pred}
        for metric in ("rocauc", "ap"):
            ours = Evaluator(num_tasks=4, eval_metric=metric, backend="gtlib").eval(inputs)
            reference = GraphEvaluator.__new__(GraphEvaluator)
            reference.name, reference.num_tasks, reference.eval_metric = "x", 4, metric
            assert ours == reference.eval(inputs), (metric, trial)  # bit-identical
        rmse = Evaluator(num_tasks=4, eval_metric="rmse", backend="gtlib").eval(inputs)
        reference = GraphEvaluator.__new__(GraphEvaluator)
        reference.name, reference.num_tasks, reference.eval_metric = "x", 4, "rmse"
        assert rmse == reference.eval({"y_true": y_true, "y_pred": y_pred})
    y_true = torch.randint(0, 5, (50, 1), generator=torch.Generator().manual_seed(0))
    y_pred = torch.randint(0, 5, (50, 1), generator=torch.Generator().manual_seed(1))
    inputs = {"y_true": y_true, "y_pred": y_pred}
    ours = Evaluator("ogbn-arxiv", backend="gtlib").eval(inputs)
    assert ours == NodeEvaluator("ogbn-arxiv").eval(inputs)
    assert Evaluator("ogbn-arxiv").backend == "ogb"
    assert Evaluator("ogbn-arxiv").eval(inputs) == ours
    proteins_true = torch.randint(0, 2, (30, 112), generator=torch.Generator().manual_seed(2))
    proteins_pred = torch.randn(30, 112, generator=torch.Generator().manual_seed(3))
    inputs = {"y_true": proteins_true, "y_pred": proteins_pred}
    assert Evaluator("ogbn-proteins", backend="gtlib").eval(inputs) == NodeEvaluator(
        "ogbn-proteins"
    ).eval(inputs)
    with pytest.raises(RuntimeError, match="No positively labeled data"):
        Evaluator("ogbg-molhiv", backend="ogb").eval(
            {"y_true": np.ones((3, 1)), "y_pred": np.zeros((3, 1))}
        )


class _AddDegree:
    """A deterministic pre-transform (its repr is part of the cache key)."""

    def __call__(self, data):
        data.degree = torch.bincount(data.edge_index[1], minlength=data.num_nodes)
        return data

    def __repr__(self) -> str:
        return "AddDegree()"


def test_pre_transform_is_applied_and_keyed(graph_root: Path) -> None:
    plain = OGBGraphDataset(graph_root, "ogbg-molhiv")
    transformed = OGBGraphDataset(graph_root, "ogbg-molhiv", pre_transform=_AddDegree())
    assert plain.processed_paths[0] != transformed.processed_paths[0]
    graph = transformed[3]
    expected = torch.bincount(graph.edge_index[1], minlength=graph.num_nodes)
    assert torch.equal(graph.degree, expected)
    assert torch.equal(graph.edge_index, plain[3].edge_index)
