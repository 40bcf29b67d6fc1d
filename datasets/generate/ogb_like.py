"""Synthetic datasets written in the exact OGB on-disk layout, with labels a model can learn.

Node level: a planted partition (stochastic block model). Each node belongs to a community; most
edges stay inside communities, features are community centroids plus noise, and labels are the
community (multiclass) or a per-community binary table (multi-task), with a little label noise.

Graph level: molecule-like graphs (a random tree plus extra random edges) whose node type is the
first feature column; task ``t`` is positive when the number of edges joining two given node
types (a motif count) exceeds its median over the graphs. Some labels can be NaN.

Everything is written into a temporary folder beside the target and renamed at the end, and the
large CSVs are generated and written in chunks, so millions of nodes and edges fit in memory.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gtlib.datasets.ogb import (
    KNOWN_META,
    META_FILE_NAME,
    OGBMeta,
    dataset_dir_name,
)
from gtlib.io import remove_stale_temporaries, temporary_path
from gtlib.validation import check_bool, check_choice, check_int, check_real, describe

__all__ = ["ogb_like"]

_STRING = np.dtypes.StringDType()
_FLOAT_DECIMALS = 4


def _format_int_column(column: np.ndarray) -> np.ndarray:
    return column.astype(np.int64).astype(_STRING)


def _format_float_column(column: np.ndarray, nan_text: str = "") -> np.ndarray:
    """Fixed-point text with 4 decimals (vectorised; much faster than ``%f`` per row)."""
    finite = np.isfinite(column)
    scaled = np.rint(np.where(finite, column, 0.0) * 10**_FLOAT_DECIMALS).astype(np.int64)
    sign = np.where(scaled < 0, "-", "").astype(_STRING)
    magnitude = np.abs(scaled)
    integer_part = (magnitude // 10**_FLOAT_DECIMALS).astype(_STRING)
    fraction = np.strings.zfill((magnitude % 10**_FLOAT_DECIMALS).astype(_STRING), _FLOAT_DECIMALS)
    text = np.strings.add(np.strings.add(np.strings.add(sign, integer_part), "."), fraction)
    return np.where(finite, text, np.asarray(nan_text, dtype=_STRING)).astype(_STRING)


def _format_rows(values: np.ndarray) -> str:
    """Rows of a 2-D int or float array as CSV text.

    NaN becomes an empty cell, as pandas writes it, except in one-column files, where an empty
    line would be skipped by pandas' reader: there it is written ``nan``.
    """
    values = np.asarray(values)
    if values.ndim == 1:
        values = values[:, None]
    if values.dtype.kind == "f":
        nan_text = "" if values.shape[1] > 1 else "nan"

        def fmt(column: np.ndarray) -> np.ndarray:
            return _format_float_column(column, nan_text)
    else:
        fmt = _format_int_column
    line = fmt(values[:, 0])
    for column in range(1, values.shape[1]):
        line = np.strings.add(np.strings.add(line, ","), fmt(values[:, column]))
    return "\n".join(line.tolist()) + "\n" if values.shape[0] else ""


class _CsvWriter:
    """Append row chunks to a gzip CSV without a header."""

    def __init__(self, path: Path, compresslevel: int) -> None:
        self._handle = gzip.open(path, "wt", compresslevel=compresslevel, newline="")

    def write(self, values: np.ndarray) -> None:
        self._handle.write(_format_rows(values))

    def close(self) -> None:
        self._handle.close()


def _write_csv(
    path: Path, values: np.ndarray, compresslevel: int, chunk_size: int = 1_000_000
) -> None:
    """Write a whole array, formatting ``chunk_size`` rows at a time."""
    writer = _CsvWriter(path, compresslevel)
    for start, stop in _chunks(len(values), chunk_size):
        writer.write(values[start:stop])
    writer.close()


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(total, start + size)


def _split_indices(
    count: int, sizes: tuple[float, float, float], rng: np.random.Generator
) -> dict[str, np.ndarray]:
    if len(sizes) != 3 or min(sizes) < 0 or sum(sizes) <= 0:
        raise ValueError(f"split_sizes: need three non-negative fractions, got {sizes}")
    fractions = np.asarray(sizes, dtype=np.float64) / float(sum(sizes))
    bounds = np.floor(np.cumsum(fractions) * count).astype(np.int64)
    bounds[-1] = count
    order = rng.permutation(count)
    parts = np.split(order, bounds[:-1])
    return {name: np.sort(part) for name, part in zip(("train", "valid", "test"), parts)}


def ogb_like(
    root: str | os.PathLike,
    name: str,
    kind: str | None = None,
    *,
    num_nodes: int | None = None,
    num_edges: int | None = None,
    avg_degree: float = 4.0,
    num_graphs: int = 100,
    num_features: int = 16,
    num_edge_features: int = 0,
    num_classes: int | None = None,
    num_tasks: int | None = None,
    feature_dtype: str | None = None,
    add_inverse_edge: bool | None = None,
    split_type: str | None = None,
    split_sizes: tuple[float, float, float] | None = None,
    label_missing_rate: float = 0.0,
    additional_node_files: tuple[str, ...] | None = None,
    additional_edge_files: tuple[str, ...] | None = None,
    seed: int = 0,
    overwrite: bool = False,
    chunk_size: int = 1_000_000,
    compresslevel: int = 1,
    progress: bool = False,
) -> Path:
    """Write a synthetic dataset in the exact OGB layout to ``root/<name with '_'>/``.

    For a real OGB name (e.g. ``"ogbn-arxiv"``, ``"ogbg-molhiv"``) the defaults follow its meta
    (``add_inverse_edge``, split type, number of tasks/classes, additional files), so ``ogb``'s
    own loaders read the result. A ``gtlib_meta.json`` records the meta for gtlib's loaders.

    Args:
        root: parent folder.
        name: dataset name; ``kind`` defaults to ``"graph"`` for ``ogbg-*`` names, else ``"node"``.
        kind: ``"node"`` (one graph) or ``"graph"`` (``num_graphs`` graphs).
        num_nodes: nodes (node level, default 500) or average nodes per graph (graph level,
            default 20).
        num_edges: stored edge rows (node level; before inverse edges). Default
            ``round(num_nodes * avg_degree / 2)`` with inverse edges, else ``num_nodes*avg_degree``.
        avg_degree: average degree when ``num_edges`` is not given (graph level: per graph).
        num_graphs: number of graphs (graph level).
        num_features: node feature columns.
        num_edge_features: edge feature columns (0 writes no ``edge-feat.csv.gz``).
        num_classes: classes for single-task node classification (default 5).
        num_tasks: label columns (node level: >1 gives binary multi-task labels).
        feature_dtype: ``"float"`` (default for nodes) or ``"int"`` (default for graphs).
        add_inverse_edge: default from the known meta, else True for graphs, False for nodes.
        split_type: folder under ``split/`` (default from the known meta, else ``"random"``).
        split_sizes: train/valid/test fractions (default 0.6/0.2/0.2 nodes, 0.8/0.1/0.1 graphs).
        label_missing_rate: fraction of graph labels set to NaN (graph level).
        additional_node_files, additional_edge_files: extra ``node_*``/``edge_*`` files (random
            integers; ``node_year`` holds years); default from the known meta.
        seed: random seed; the output is a deterministic function of the arguments.
        overwrite: replace an existing dataset folder.
        chunk_size: rows generated and written per chunk.
        compresslevel: gzip level.
        progress: show a progress bar.

    Returns:
        the dataset folder.
    """
    spec = _resolve_spec(
        root, name, kind, num_nodes=num_nodes, num_edges=num_edges, avg_degree=avg_degree,
        num_graphs=num_graphs, num_features=num_features, num_edge_features=num_edge_features,
        num_classes=num_classes, num_tasks=num_tasks, feature_dtype=feature_dtype,
        add_inverse_edge=add_inverse_edge, split_type=split_type, split_sizes=split_sizes,
        label_missing_rate=label_missing_rate, additional_node_files=additional_node_files,
        additional_edge_files=additional_edge_files, seed=seed, chunk_size=chunk_size,
        compresslevel=compresslevel, progress=progress,
    )  # fmt: skip
    overwrite = check_bool(overwrite, "overwrite")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / dataset_dir_name(name)
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: exists; pass overwrite=True to replace it")
    trash_name = target.with_name(target.name + ".old")
    for stale in (target, trash_name):  # what killed runs left: staged and replaced folders
        remove_stale_temporaries(stale)
    staging = temporary_path(target)
    staging.mkdir()
    try:
        _write_dataset(staging, spec)
        _replace_folder(staging, target, trash_name)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


@dataclass
class _Spec:
    """Every option of :func:`ogb_like` after defaults and checks."""

    name: str
    kind: str
    num_nodes: int
    num_edges: int | None
    avg_degree: float
    num_graphs: int
    num_features: int
    num_edge_features: int
    num_classes: int | None
    num_tasks: int | None
    feature_dtype: str
    add_inverse_edge: bool
    split_type: str
    split_sizes: tuple[float, float, float] | None
    label_missing_rate: float
    additional_node_files: tuple[str, ...]
    additional_edge_files: tuple[str, ...]
    seed: int
    chunk_size: int
    compresslevel: int
    progress: bool
    known: OGBMeta | None


def _check_files(value: Any, name: str, prefix: str) -> tuple[str, ...]:
    """Extra file stems: a list or tuple of str starting with ``prefix``."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a tuple of str, got {describe(value)}")
    for extra in value:
        if not isinstance(extra, str):
            raise TypeError(f"{name} must hold str, got {describe(extra)}")
        if not extra.startswith(prefix):
            raise ValueError(f"{name}: {extra!r} must start with {prefix!r}")
    return tuple(value)


def _check_split(split_type: Any, split_sizes: Any) -> None:
    if not isinstance(split_type, str):
        raise TypeError(f"split_type must be a str, got {describe(split_type)}")
    if not split_type or split_type in (".", "..") or "/" in split_type or os.sep in split_type:
        raise ValueError(f"split_type must be a folder name, got {split_type!r}")
    if split_sizes is None:
        return
    if isinstance(split_sizes, str) or not isinstance(split_sizes, (list, tuple)):
        raise TypeError(
            f"split_sizes must be a tuple of three numbers, got {describe(split_sizes)}"
        )
    sizes = [check_real(v, "split_sizes", nonnegative=True) for v in split_sizes]
    if len(sizes) != 3 or sum(sizes) <= 0:
        raise ValueError(f"split_sizes: need three non-negative fractions, got {split_sizes}")


def _check_counts(spec: dict[str, Any]) -> None:
    """The numeric options of :func:`ogb_like` (``spec``: name -> value), in canonical form."""
    minima = {"num_graphs": 1, "num_features": 1, "num_edge_features": 0, "seed": 0}
    minima.update(chunk_size=1, num_nodes=2, num_edges=0, num_classes=2, num_tasks=1)
    for key, low in minima.items():
        if spec[key] is not None:
            spec[key] = check_int(spec[key], key, minimum=low)
    spec["compresslevel"] = check_int(spec["compresslevel"], "compresslevel", minimum=0, maximum=9)
    spec["avg_degree"] = check_real(spec["avg_degree"], "avg_degree", nonnegative=True)
    rate = check_real(spec["label_missing_rate"], "label_missing_rate", nonnegative=True)
    if not rate < 1.0:
        raise ValueError(f"label_missing_rate: must be in [0, 1), got {rate}")
    spec["label_missing_rate"] = rate


def _resolve_spec(root: Any, name: Any, kind: Any, **options: Any) -> _Spec:
    """The options of :func:`ogb_like` checked and completed from the known OGB meta."""
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a str or os.PathLike, got {describe(root)}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {describe(name)}")
    if not name.strip() or "/" in name or os.sep in name:
        raise ValueError(f"name must be a dataset name (no path separators), got {name!r}")
    known = KNOWN_META.get(name)
    kind = kind or (known.level if known else ("graph" if name.startswith("ogbg") else "node"))
    check_choice(kind, "kind", ("node", "graph"))
    if known is not None and known.level != kind:
        raise ValueError(f"kind: {name!r} is a {known.level}-level OGB dataset, not {kind}")
    if options["num_nodes"] is None:
        options["num_nodes"] = 500 if kind == "node" else 20
    _check_counts(options)
    options["progress"] = check_bool(options["progress"], "progress")
    inverse = options["add_inverse_edge"]
    if inverse is None:
        inverse = known.add_inverse_edge if known else kind == "graph"
    options["add_inverse_edge"] = check_bool(inverse, "add_inverse_edge")
    options["split_type"] = options["split_type"] or (known.split if known else "random")
    _check_split(options["split_type"], options["split_sizes"])
    for key, prefix in (("additional_node_files", "node_"), ("additional_edge_files", "edge_")):
        files = options[key]
        if files is None:
            files = getattr(known, key) if known else ()
        options[key] = _check_files(files, key, prefix)
    dtype = options["feature_dtype"] or ("int" if kind == "graph" else "float")
    options["feature_dtype"] = check_choice(dtype, "feature_dtype", ("int", "float"))
    return _Spec(name=name, kind=kind, known=known, **options)


def _write_dataset(staging: Path, spec: _Spec) -> None:
    """Every file of the dataset into the (empty) folder ``staging``."""
    rng = np.random.default_rng(spec.seed)
    known = spec.known
    for folder in ("raw", f"split/{spec.split_type}", "mapping", "processed"):
        (staging / folder).mkdir(parents=True, exist_ok=True)
    tasks = spec.num_tasks or (known.num_tasks if known else 1)
    if spec.kind == "node":
        classes = spec.num_classes or (2 if tasks > 1 else (known.num_classes if known else 5))
        task_type = "multiclass classification" if tasks == 1 else "binary classification"
        metric = "acc" if tasks == 1 else "rocauc"
        if tasks == 1 and classes < 2:
            raise ValueError(f"num_classes: need at least 2, got {classes}")
        count = _write_node_level(
            staging, rng, spec.num_nodes, spec.num_edges, spec.avg_degree, spec.num_features,
            spec.num_edge_features, tasks, classes, spec.feature_dtype, spec.add_inverse_edge,
            spec.additional_node_files, spec.additional_edge_files, spec.chunk_size,
            spec.compresslevel, spec.progress,
        )  # fmt: skip
        sizes = spec.split_sizes or (0.6, 0.2, 0.2)
    else:
        classes, task_type = 2, "binary classification"
        metric = known.eval_metric if known and known.eval_metric in ("ap", "rocauc") else "rocauc"
        count = _write_graph_level(
            staging, rng, spec.num_graphs, spec.num_nodes, spec.avg_degree, spec.num_features,
            spec.num_edge_features, tasks, spec.feature_dtype, spec.label_missing_rate,
            spec.additional_node_files, spec.additional_edge_files, spec.compresslevel,
        )  # fmt: skip
        sizes = spec.split_sizes or (0.8, 0.1, 0.1)
    split_dir = staging / "split" / spec.split_type
    for part, index in _split_indices(count, sizes, rng).items():
        _write_csv(split_dir / f"{part}.csv.gz", index, spec.compresslevel)
    meta = OGBMeta(
        name=spec.name,
        level=spec.kind,
        add_inverse_edge=spec.add_inverse_edge,
        split=spec.split_type,
        num_tasks=int(tasks),
        num_classes=int(classes),
        task_type=task_type,
        eval_metric=metric,
        additional_node_files=spec.additional_node_files,
        additional_edge_files=spec.additional_edge_files,
    )
    (staging / META_FILE_NAME).write_text(json.dumps(meta.to_json_dict(), indent=2) + "\n")
    (staging / "RELEASE_v1.txt").write_text(f"{spec.name}: synthetic dataset written by gtlib\n")
    (staging / "mapping" / "README.md").write_text(
        f"Synthetic {spec.kind}-level dataset {spec.name} (seed {spec.seed}); "
        f"{spec.kind} index i is synthetic id i.\n"
    )


def _replace_folder(staging: Path, target: Path, trash_name: Path) -> None:
    """Move ``staging`` to ``target``, the old ``target`` (if any) out of the way first."""
    if target.exists():
        trash = temporary_path(trash_name)
        trash.mkdir()
        os.replace(target, trash / "old")
        os.replace(staging, target)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, target)


def _write_node_level(
    folder: Path,
    rng: np.random.Generator,
    num_nodes: int,
    num_edges: int | None,
    avg_degree: float,
    num_features: int,
    num_edge_features: int,
    num_tasks: int,
    num_classes: int,
    feature_dtype: str,
    add_inverse_edge: bool,
    node_files: tuple[str, ...],
    edge_files: tuple[str, ...],
    chunk_size: int,
    compresslevel: int,
    progress: bool,
) -> int:
    """Planted-partition graph; returns the number of nodes."""
    raw = folder / "raw"
    num_communities = num_classes if num_tasks == 1 else max(4, num_classes)
    community = rng.integers(num_communities, size=num_nodes)
    if num_edges is None:
        per_node = avg_degree / 2 if add_inverse_edge else avg_degree
        num_edges = int(round(num_nodes * per_node))
    if num_edges < 0:
        raise ValueError(f"num_edges: must be non-negative, got {num_edges}")
    _write_csv(raw / "num-node-list.csv.gz", np.array([num_nodes]), compresslevel)
    _write_csv(raw / "num-edge-list.csv.gz", np.array([num_edges]), compresslevel)

    members = np.argsort(community, kind="stable")
    sizes = np.bincount(community, minlength=num_communities)
    starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    bar = tqdm(total=num_nodes + num_edges, disable=not progress, desc="ogb_like", unit="row")

    centroids = rng.normal(size=(num_communities, num_features)) * 1.5
    label_table = rng.integers(2, size=(num_communities, num_tasks))
    feat_writer = _CsvWriter(raw / "node-feat.csv.gz", compresslevel)
    label_writer = _CsvWriter(raw / "node-label.csv.gz", compresslevel)
    extra_writers = {f: _CsvWriter(raw / f"{f}.csv.gz", compresslevel) for f in node_files}
    mapping_writer = gzip.open(folder / "mapping" / "nodeidx2nodeid.csv.gz", "wt", compresslevel)
    mapping_writer.write("node idx,node id\n")
    for start, stop in _chunks(num_nodes, chunk_size):
        block = community[start:stop]
        if feature_dtype == "float":
            features = centroids[block] + rng.normal(size=(stop - start, num_features))
        else:
            features = rng.integers(0, 10, size=(stop - start, num_features))
            keep = rng.random(stop - start) < 0.8
            features[:, 0] = np.where(keep, block, rng.integers(num_communities, size=block.size))
        feat_writer.write(features)
        noisy = rng.random((stop - start, num_tasks)) < 0.1
        if num_tasks == 1:
            labels = np.where(noisy[:, 0], rng.integers(num_classes, size=block.size), block)
        else:
            labels = np.where(noisy, 1 - label_table[block], label_table[block])
        label_writer.write(labels)
        for extra, writer in extra_writers.items():
            if extra == "node_year":
                writer.write(2000 + (block % 10) + rng.integers(0, 11, size=block.size))
            else:
                writer.write(rng.integers(0, 8, size=block.size))
        ids = np.arange(start, stop)
        mapping_writer.write(_format_rows(np.stack([ids, ids], axis=1)))
        bar.update(stop - start)
    for writer in (feat_writer, label_writer, *extra_writers.values()):
        writer.close()
    mapping_writer.close()

    edge_writer = _CsvWriter(raw / "edge.csv.gz", compresslevel)
    edge_feat_writer = (
        _CsvWriter(raw / "edge-feat.csv.gz", compresslevel) if num_edge_features else None
    )
    extra_edge_writers = {f: _CsvWriter(raw / f"{f}.csv.gz", compresslevel) for f in edge_files}
    for start, stop in _chunks(num_edges, chunk_size):
        count = stop - start
        source = rng.integers(num_nodes, size=count)
        own = community[source]
        inside = members[starts[own] + (rng.random(count) * sizes[own]).astype(np.int64)]
        anywhere = rng.integers(num_nodes, size=count)
        target = np.where(rng.random(count) < 0.8, inside, anywhere)
        target = np.where(target == source, (target + 1) % num_nodes, target)
        edge_writer.write(np.stack([source, target], axis=1))
        if edge_feat_writer is not None:
            same = (community[source] == community[target]).astype(np.float64)[:, None]
            if feature_dtype == "float":
                edge_feat_writer.write(same + rng.normal(size=(count, num_edge_features)) * 0.5)
            else:
                values = rng.integers(0, 4, size=(count, num_edge_features))
                values[:, 0] = same[:, 0].astype(np.int64)
                edge_feat_writer.write(values)
        for writer in extra_edge_writers.values():
            writer.write(rng.integers(0, 8, size=count))
        bar.update(count)
    for writer in (edge_writer, edge_feat_writer, *extra_edge_writers.values()):
        if writer is not None:
            writer.close()
    bar.close()
    return num_nodes


def _write_graph_level(
    folder: Path,
    rng: np.random.Generator,
    num_graphs: int,
    avg_nodes: int,
    avg_degree: float,
    num_features: int,
    num_edge_features: int,
    num_tasks: int,
    feature_dtype: str,
    label_missing_rate: float,
    node_files: tuple[str, ...],
    edge_files: tuple[str, ...],
    compresslevel: int,
) -> int:
    """Tree-plus-extra-edges graphs labelled by a motif count; returns the number of graphs."""
    if num_graphs < 1:
        raise ValueError(f"num_graphs: need at least 1, got {num_graphs}")
    raw = folder / "raw"
    num_types = 6
    low, high = max(2, avg_nodes // 2), max(3, avg_nodes + avg_nodes // 2 + 1)
    num_node_list = rng.integers(low, high, size=num_graphs)
    extra_per_graph = np.maximum(0, np.rint(num_node_list * (avg_degree / 2 - 1))).astype(np.int64)
    num_edge_list = num_node_list - 1 + extra_per_graph
    total_nodes = int(num_node_list.sum())
    node_graph = np.repeat(np.arange(num_graphs), num_node_list)
    node_offsets = np.concatenate([[0], np.cumsum(num_node_list)[:-1]])
    local = np.arange(total_nodes) - node_offsets[node_graph]

    # tree edges: every local node i >= 1 attaches to a random earlier node of its graph
    child = local[local >= 1]
    tree_graph = node_graph[local >= 1]
    parent = (rng.random(child.size) * child).astype(np.int64)
    # extra edges: random pairs of distinct nodes of the same graph
    extra_graph = np.repeat(np.arange(num_graphs), extra_per_graph)
    n_extra = num_node_list[extra_graph]
    first = (rng.random(extra_graph.size) * n_extra).astype(np.int64)
    second = (first + 1 + (rng.random(extra_graph.size) * (n_extra - 1)).astype(np.int64)) % n_extra
    edge_graph = np.concatenate([tree_graph, extra_graph])
    sources = np.concatenate([child, first])
    targets = np.concatenate([parent, second])
    order = np.argsort(edge_graph, kind="stable")
    edge_graph, sources, targets = edge_graph[order], sources[order], targets[order]

    node_type = rng.integers(num_types, size=total_nodes)
    if feature_dtype == "int":
        features = rng.integers(0, 4, size=(total_nodes, num_features))
        features[:, 0] = node_type
        signal = node_type.astype(np.float64)
    else:
        features = rng.normal(size=(total_nodes, num_features))
        features[:, 0] = node_type + rng.normal(size=total_nodes) * 0.1
        signal = node_type.astype(np.float64)
    src_type = signal[node_offsets[edge_graph] + sources].astype(np.int64)
    dst_type = signal[node_offsets[edge_graph] + targets].astype(np.int64)
    motif = rng.integers(num_types, size=(num_tasks, 2))
    labels = np.empty((num_graphs, num_tasks), dtype=np.float64)
    for task, (type_a, type_b) in enumerate(motif):
        hit = ((src_type == type_a) & (dst_type == type_b)) | (
            (src_type == type_b) & (dst_type == type_a)
        )
        counts = np.bincount(edge_graph[hit], minlength=num_graphs)
        labels[:, task] = (counts > np.median(counts)).astype(np.float64)
    if label_missing_rate > 0:
        labels[rng.random(labels.shape) < label_missing_rate] = np.nan
    if not np.isnan(labels).any():
        labels = labels.astype(np.int64)

    _write_csv(raw / "num-node-list.csv.gz", num_node_list, compresslevel)
    _write_csv(raw / "num-edge-list.csv.gz", num_edge_list, compresslevel)
    _write_csv(raw / "edge.csv.gz", np.stack([sources, targets], axis=1), compresslevel)
    _write_csv(raw / "node-feat.csv.gz", features, compresslevel)
    if num_edge_features:
        bond = rng.integers(0, 4, size=(sources.size, num_edge_features))
        if feature_dtype == "float":
            bond = bond + rng.normal(size=bond.shape) * 0.1
        _write_csv(raw / "edge-feat.csv.gz", bond, compresslevel)
    _write_csv(raw / "graph-label.csv.gz", labels, compresslevel)
    for extra in node_files:
        _write_csv(raw / f"{extra}.csv.gz", rng.integers(0, 8, size=total_nodes), compresslevel)
    for extra in edge_files:
        _write_csv(raw / f"{extra}.csv.gz", rng.integers(0, 8, size=sources.size), compresslevel)
    return num_graphs
