"""Readers for the Open Graph Benchmark (OGB) on-disk layout, and an OGB-compatible evaluator.

The layout (ogb 1.3.6) under ``root/<name with '-' replaced by '_'>/``::

    RELEASE_v1.txt
    raw/edge.csv.gz              "src,dst" rows (per-graph local indices for graph datasets)
    raw/num-node-list.csv.gz     one row per graph
    raw/num-edge-list.csv.gz     one row per graph
    raw/node-feat.csv.gz         optional; integer cells -> int64, otherwise float32
    raw/edge-feat.csv.gz         optional; same dtype rule
    raw/node-label.csv.gz        node-level datasets
    raw/graph-label.csv.gz       graph-level datasets (NaN / empty cells allowed)
    raw/node_*.csv.gz, raw/edge_*.csv.gz   additional per-node / per-edge files
    split/<split_type>/{train,valid,test}.csv.gz
    mapping/

All CSVs are gzip compressed, without a header. With ``add_inverse_edge`` the edges are stored
once and the loader interleaves the reverse edges ``[e0, e0^r, e1, e1^r, ...]``, repeating edge
features likewise, exactly as ``ogb.io.read_graph_raw.read_csv_graph_raw`` does.

Every malformed input raises :class:`OGBFormatError` (a ``ValueError``) or
:class:`OGBMissingFileError` (also a ``FileNotFoundError``) whose message starts with the path of
the offending file and names the problem.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import warnings
import zlib
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch_geometric.data import Data, InMemoryDataset

from gtlib.io import atomic_write
from gtlib.validation import check_bool, check_choice, check_int, describe

__all__ = [
    "META_FILE_NAME",
    "Evaluator",
    "EvaluatorInputError",
    "OGBFormatError",
    "OGBMeta",
    "OGBMissingFileError",
    "OGBGraphDataset",
    "OGBNodeDataset",
    "dataset_dir_name",
    "read_csv_gz",
    "read_ogb_raw",
    "resolve_meta",
]

META_FILE_NAME = "gtlib_meta.json"
"""Name of the small JSON file (written by ``generate.ogb_like``) that describes a dataset."""

_PROCESSED_FORMAT_VERSION = 1


class OGBFormatError(ValueError):
    """A file of an OGB dataset is corrupt or inconsistent; the message names the file."""


class OGBMissingFileError(OGBFormatError, FileNotFoundError):
    """A mandatory file of an OGB dataset is missing; the message names the file."""


class EvaluatorInputError(RuntimeError, ValueError):
    """Invalid evaluator input (OGB raises ``RuntimeError``; this is also a ``ValueError``)."""


# --------------------------------------------------------------------------------------------
# Meta information
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class OGBMeta:
    """What the loader needs to know about a dataset beyond its files.

    Attributes:
        name: dataset name, e.g. ``"ogbn-arxiv"``.
        level: ``"node"`` or ``"graph"``.
        add_inverse_edge: whether reverse edges are interleaved on load.
        split: default split type (a folder under ``split/``); ``""`` means auto-detect.
        num_tasks: number of label columns.
        num_classes: number of classes (``-1`` for regression).
        task_type: ``"multiclass classification"``, ``"binary classification"`` or
            ``"regression"``.
        eval_metric: ``"acc"``, ``"rocauc"``, ``"ap"``, ``"rmse"`` or ``"mae"``.
        additional_node_files: names of extra per-node files (``node_*``).
        additional_edge_files: names of extra per-edge files (``edge_*``).
    """

    name: str
    level: str
    add_inverse_edge: bool
    split: str = ""
    num_tasks: int = 1
    num_classes: int = -1
    task_type: str = ""
    eval_metric: str = ""
    additional_node_files: tuple[str, ...] = field(default_factory=tuple)
    additional_edge_files: tuple[str, ...] = field(default_factory=tuple)

    def to_json_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict (the content of ``gtlib_meta.json``)."""
        out = asdict(self)
        out["additional_node_files"] = list(self.additional_node_files)
        out["additional_edge_files"] = list(self.additional_edge_files)
        return out

    @classmethod
    def from_json_dict(cls, values: Mapping[str, Any], path: str | os.PathLike = "") -> OGBMeta:
        """Build from a dict as written by :meth:`to_json_dict`; ``path`` names it in errors."""
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(values) - known
        if unknown:
            raise OGBFormatError(f"{path}: unknown meta keys {sorted(unknown)}")
        try:
            kwargs = dict(values)
            kwargs["additional_node_files"] = tuple(kwargs.get("additional_node_files", ()))
            kwargs["additional_edge_files"] = tuple(kwargs.get("additional_edge_files", ()))
            meta = cls(**kwargs)
        except TypeError as exc:
            raise OGBFormatError(f"{path}: invalid meta ({exc})") from exc
        if meta.level not in ("node", "graph"):
            raise OGBFormatError(f"{path}: level must be 'node' or 'graph', got {meta.level!r}")
        return meta


def _known(
    name, level, inv, split, tasks, classes, task_type, metric, node_files=(), edge_files=()
):
    return OGBMeta(
        name, level, inv, split, tasks, classes, task_type, metric, node_files, edge_files
    )


_MC, _BC, _RG = "multiclass classification", "binary classification", "regression"
KNOWN_META: dict[str, OGBMeta] = {
    m.name: m
    for m in [
        _known("ogbn-arxiv", "node", False, "time", 1, 40, _MC, "acc", ("node_year",)),
        _known("ogbn-products", "node", True, "sales_ranking", 1, 47, _MC, "acc"),
        _known("ogbn-proteins", "node", True, "species", 112, 2, _BC, "rocauc", ("node_species",)),
        _known("ogbg-molhiv", "graph", True, "scaffold", 1, 2, _BC, "rocauc"),
        _known("ogbg-molpcba", "graph", True, "scaffold", 128, 2, _BC, "ap"),
        _known("ogbg-molmuv", "graph", True, "scaffold", 17, 2, _BC, "ap"),
        _known("ogbg-molbace", "graph", True, "scaffold", 1, 2, _BC, "rocauc"),
        _known("ogbg-molbbbp", "graph", True, "scaffold", 1, 2, _BC, "rocauc"),
        _known("ogbg-molclintox", "graph", True, "scaffold", 2, 2, _BC, "rocauc"),
        _known("ogbg-molsider", "graph", True, "scaffold", 27, 2, _BC, "rocauc"),
        _known("ogbg-moltox21", "graph", True, "scaffold", 12, 2, _BC, "rocauc"),
        _known("ogbg-moltoxcast", "graph", True, "scaffold", 617, 2, _BC, "rocauc"),
        _known("ogbg-molchembl", "graph", True, "scaffold", 1310, 2, _BC, "rocauc"),
        _known("ogbg-molesol", "graph", True, "scaffold", 1, -1, _RG, "rmse"),
        _known("ogbg-molfreesolv", "graph", True, "scaffold", 1, -1, _RG, "rmse"),
        _known("ogbg-mollipo", "graph", True, "scaffold", 1, -1, _RG, "rmse"),
        _known("ogbg-ppa", "graph", True, "species", 1, 37, _MC, "acc"),
    ]
}
"""Meta information of the real OGB datasets these loaders support (from ogb 1.3.6)."""


def dataset_dir_name(name: str) -> str:
    """Return the folder name OGB uses for ``name`` (``'-'`` replaced by ``'_'``)."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {describe(name)}")
    return name.replace("-", "_")


def resolve_meta(
    name: str, dataset_dir: str | os.PathLike, level: str | None = None
) -> OGBMeta | None:
    """Return the meta of a dataset: ``gtlib_meta.json`` in ``dataset_dir`` if present, else the
    known meta of a real OGB dataset, else ``None``.

    Raises:
        OGBFormatError: the meta file is unreadable, or its level differs from ``level``.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {describe(name)}")
    if not isinstance(dataset_dir, (str, os.PathLike)):
        raise TypeError(f"dataset_dir must be a str or os.PathLike, got {describe(dataset_dir)}")
    if level is not None:
        check_choice(level, "level", ("node", "graph"))
    meta_path = Path(dataset_dir) / META_FILE_NAME
    meta: OGBMeta | None = None
    if meta_path.is_file():
        try:
            values = json.loads(meta_path.read_text())
        except (OSError, ValueError) as exc:
            raise OGBFormatError(f"{meta_path}: not a valid JSON meta file ({exc})") from exc
        if not isinstance(values, dict):
            raise OGBFormatError(f"{meta_path}: expected a JSON object")
        meta = OGBMeta.from_json_dict(values, meta_path)
    elif name in KNOWN_META:
        meta = KNOWN_META[name]
    if meta is not None and level is not None and meta.level != level:
        raise OGBFormatError(
            f"{meta_path if meta_path.is_file() else name}: dataset {name!r} is {meta.level}-level,"
            f" not {level}-level"
        )
    return meta


# --------------------------------------------------------------------------------------------
# CSV reading
# --------------------------------------------------------------------------------------------

_FLOAT_CHARS = re.compile(r"[.eEnNiI]")
_EMPTY_CELL = re.compile(r"(^|,)(?=,|$)", flags=re.MULTILINE)


def _read_gzip_text(path: Path) -> str:
    if not path.is_file():
        raise OGBMissingFileError(f"{path}: file is missing")
    try:
        with gzip.open(path, "rb") as handle:
            payload = handle.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise OGBFormatError(f"{path}: corrupt gzip file ({exc})") from exc
    try:
        return payload.decode("ascii")
    except UnicodeDecodeError as exc:
        raise OGBFormatError(f"{path}: not a text CSV (non-ASCII byte at {exc.start})") from exc


def _diagnose(path: Path, text: str, integer: bool) -> OGBFormatError:
    """Find the first offending line of a CSV that numpy refused, for a precise message."""
    expected = None
    for line_number, line in enumerate(text.splitlines(), start=1):
        cells = line.strip().split(",")
        if expected is None:
            expected = len(cells)
        if len(cells) != expected:
            return OGBFormatError(
                f"{path}: wrong column count at line {line_number}: expected {expected} "
                f"(as in line 1), found {len(cells)}"
            )
        for column, cell in enumerate(cells, start=1):
            try:
                float(cell or "nan")  # an empty cell means NaN
            except ValueError:
                return OGBFormatError(
                    f"{path}: non-numeric cell {cell!r} at line {line_number}, column {column}"
                )
            if integer:
                try:
                    int(cell)
                except ValueError:
                    return OGBFormatError(
                        f"{path}: non-integer cell {cell!r} at line {line_number}, "
                        f"column {column} (integers required)"
                    )
    return OGBFormatError(f"{path}: could not parse the CSV")


def read_csv_gz(
    path: str | os.PathLike, *, integer: bool = False, num_columns: int | None = None
) -> np.ndarray:
    """Read a header-less gzip CSV of numbers into a 2-D array, as OGB's pandas-based reader.

    Integer-only files give ``int64``; files with any non-integer cell (decimal point, exponent,
    ``nan`` or an empty cell, which means NaN) give ``float64`` (callers cast to float32 as OGB).

    Args:
        path: the ``.csv.gz`` file.
        integer: require integer cells (indices, counts).
        num_columns: required number of columns, if known.

    Raises:
        OGBMissingFileError: the file does not exist.
        OGBFormatError: corrupt gzip, wrong column counts, non-numeric (or non-integer) cells.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {describe(path)}")
    integer = check_bool(integer, "integer")
    if num_columns is not None:
        num_columns = check_int(num_columns, "num_columns", minimum=1)
    path = Path(path)
    text = _read_gzip_text(path)
    if not text.strip():
        return np.empty((0, num_columns or 0), dtype=np.int64)
    if text.endswith("\n"):
        text = text[:-1]  # so that the last line is not followed by an empty one
    is_float = bool(_FLOAT_CHARS.search(text)) or bool(_EMPTY_CELL.search(text))
    if integer and is_float:
        raise _diagnose(path, text, integer=True)
    if is_float:
        text = _EMPTY_CELL.sub(r"\1nan", text)  # empty cells (and empty lines) mean NaN
    dtype = np.float64 if is_float else np.int64
    try:
        values = np.loadtxt(io.StringIO(text), delimiter=",", dtype=dtype, ndmin=2, comments=None)
    except ValueError:
        raise _diagnose(path, text, integer=integer) from None
    if num_columns is not None and values.shape[1] != num_columns:
        raise OGBFormatError(
            f"{path}: wrong column count: expected {num_columns}, found {values.shape[1]}"
        )
    return values


def _as_ogb_dtype(values: np.ndarray) -> np.ndarray:
    """int64 for integer files, float32 otherwise (OGB's rule)."""
    return values.astype(np.int64 if values.dtype.kind in "iu" else np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# Raw reading with validation
# --------------------------------------------------------------------------------------------


def _check_rows(path: Path, values: np.ndarray, expected: int, what: str) -> None:
    if values.shape[0] != expected:
        raise OGBFormatError(f"{path}: has {values.shape[0]} rows, expected {expected} ({what})")


def _discover_extra(raw_dir: Path, prefix: str, listed: tuple[str, ...]) -> list[str]:
    names = list(listed)
    for entry in sorted(raw_dir.glob(prefix + "*.csv.gz")):
        stem = entry.name[: -len(".csv.gz")]
        if stem not in names:
            names.append(stem)
    return names


def _read_counts(raw_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``num-node-list`` and ``num-edge-list``: one non-negative count per graph in both."""
    node_list_path = raw_dir / "num-node-list.csv.gz"
    edge_list_path = raw_dir / "num-edge-list.csv.gz"
    num_node_list = read_csv_gz(node_list_path, integer=True, num_columns=1)[:, 0]
    num_edge_list = read_csv_gz(edge_list_path, integer=True, num_columns=1)[:, 0]
    for path, counts in ((node_list_path, num_node_list), (edge_list_path, num_edge_list)):
        if counts.size == 0:
            raise OGBFormatError(f"{path}: empty (needs one row per graph)")
        if (counts < 0).any():
            raise OGBFormatError(f"{path}: negative count at line {int(np.argmax(counts < 0)) + 1}")
    if num_edge_list.size != num_node_list.size:
        raise OGBFormatError(
            f"{edge_list_path}: has {num_edge_list.size} rows but {node_list_path} has "
            f"{num_node_list.size} (one row per graph in both)"
        )
    return num_node_list, num_edge_list


def _read_edges(raw_dir: Path, num_node_list: np.ndarray, num_edge_list: np.ndarray) -> np.ndarray:
    """``edge.csv.gz`` checked against the counts: per-graph local indices in range."""
    edge_path = raw_dir / "edge.csv.gz"
    edge = read_csv_gz(edge_path, integer=True, num_columns=2)
    total_edges = int(num_edge_list.sum())
    if edge.shape[0] != total_edges:
        raise OGBFormatError(
            f"{edge_path}: has {edge.shape[0]} edges but {raw_dir / 'num-edge-list.csv.gz'} "
            f"sums to {total_edges}"
        )
    if total_edges:
        nodes_of_edge_graph = np.repeat(num_node_list, num_edge_list)
        bad = (edge < 0) | (edge >= nodes_of_edge_graph[:, None])
        if bad.any():
            row = int(np.argmax(bad.any(axis=1)))
            graph = int(np.searchsorted(np.cumsum(num_edge_list), row, side="right"))
            raise OGBFormatError(
                f"{edge_path}: node index out of range at line {row + 1}: {edge[row].tolist()} "
                f"(graph {graph} has {int(num_node_list[graph])} nodes, indices are local)"
            )
    return edge


def _read_rows(path: Path, rows: int, what: str, optional: bool = False) -> np.ndarray | None:
    """A CSV with ``rows`` rows (``None`` when ``optional`` and absent)."""
    if optional and not path.exists():
        return None
    values = read_csv_gz(path)
    _check_rows(path, values, rows, what)
    return values


def _read_extra(
    raw_dir: Path, kind: str, listed: tuple[str, ...], rows: int, what: str
) -> dict[str, np.ndarray]:
    """The additional ``node_*`` / ``edge_*`` files (``kind``: ``"node"`` or ``"edge"``)."""
    out: dict[str, np.ndarray] = {}
    for extra in _discover_extra(raw_dir, f"{kind}_", listed):
        if not extra.startswith(f"{kind}_"):
            raise OGBFormatError(f"{raw_dir / extra}: additional {kind} files must start '{kind}_'")
        path = raw_dir / f"{extra}.csv.gz"
        if extra == "node_species" and not path.exists() and (raw_dir / "species.csv.gz").exists():
            path = raw_dir / "species.csv.gz"  # ogbn-proteins ships it under this name
        out[extra] = _read_rows(path, rows, what)
    return out


def _check_file_names(value: Any, name: str) -> tuple[str, ...]:
    """A tuple of file stems (a list or tuple of str)."""
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        raise TypeError(f"{name} must be a tuple of str, got {describe(value)}")
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{name} must hold str, got {describe(item)}")
    return tuple(value)


def read_ogb_raw(
    raw_dir: str | os.PathLike,
    *,
    level: str,
    additional_node_files: tuple[str, ...] = (),
    additional_edge_files: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Read and validate the raw files of an OGB homogeneous dataset (no inverse edges yet).

    Extra ``node_*``/``edge_*`` files present in ``raw_dir`` are read even when not listed.

    Returns:
        dict with ``edge`` [E, 2] int64, ``num_node_list`` [G], ``num_edge_list`` [G],
        ``node_feat``/``edge_feat`` (or ``None``), ``label`` (``node-label`` for node-level,
        ``graph-label`` for graph-level; float64 or int64) and ``extra_node``/``extra_edge`` dicts.

    Raises:
        OGBMissingFileError, OGBFormatError: see the module docstring.
        TypeError, ValueError: a wrong argument (named in the message).
    """
    if not isinstance(raw_dir, (str, os.PathLike)):
        raise TypeError(f"raw_dir must be a str or os.PathLike, got {describe(raw_dir)}")
    check_choice(level, "level", ("node", "graph"))
    node_files = _check_file_names(additional_node_files, "additional_node_files")
    edge_files = _check_file_names(additional_edge_files, "additional_edge_files")
    raw_dir = Path(raw_dir)
    num_node_list, num_edge_list = _read_counts(raw_dir)
    if level == "node" and num_node_list.size != 1:
        raise OGBFormatError(
            f"{raw_dir / 'num-node-list.csv.gz'}: a node-level dataset has one graph, found "
            f"{num_node_list.size} rows"
        )
    edge = _read_edges(raw_dir, num_node_list, num_edge_list)
    total_nodes, total_edges = int(num_node_list.sum()), int(num_edge_list.sum())
    nodes, edges = "sum of num-node-list", "sum of num-edge-list"
    if level == "node":
        label = _read_rows(raw_dir / "node-label.csv.gz", total_nodes, "one row per node")
    else:
        label = _read_rows(raw_dir / "graph-label.csv.gz", num_node_list.size, "one row per graph")
    return {
        "edge": edge,
        "num_node_list": num_node_list,
        "num_edge_list": num_edge_list,
        "node_feat": _read_rows(raw_dir / "node-feat.csv.gz", total_nodes, nodes, optional=True),
        "edge_feat": _read_rows(raw_dir / "edge-feat.csv.gz", total_edges, edges, optional=True),
        "label": label,
        "extra_node": _read_extra(raw_dir, "node", node_files, total_nodes, nodes),
        "extra_edge": _read_extra(raw_dir, "edge", edge_files, total_edges, edges),
    }


def _interleave_inverse(edge: np.ndarray) -> np.ndarray:
    """[E, 2] stored edges -> [2, 2E] edge_index ``[e0, e0^r, e1, e1^r, ...]`` (as OGB)."""
    out = np.empty((2, 2 * edge.shape[0]), dtype=np.int64)
    out[0, 0::2] = edge[:, 0]
    out[1, 0::2] = edge[:, 1]
    out[0, 1::2] = edge[:, 1]
    out[1, 1::2] = edge[:, 0]
    return out


def _label_tensor(label: np.ndarray, task_type: str) -> torch.Tensor:
    """OGB's PyG rule: classification labels are int64 unless they contain NaN; else float32."""
    if "classification" in task_type and label.dtype.kind in "iu":
        return torch.from_numpy(label.astype(np.int64))
    if "classification" in task_type and not np.isnan(label).any():
        if np.all(label == np.round(label)):
            return torch.from_numpy(label.astype(np.int64))
    return torch.from_numpy(label.astype(np.float32))


def _infer_task_type(label: np.ndarray) -> str:
    finite = label[~np.isnan(label)] if label.dtype.kind == "f" else label
    if finite.size and np.all(finite == np.round(finite)):
        if label.shape[1] == 1 and finite.max(initial=0) > 1:
            return _MC
        return _BC
    return _RG


# --------------------------------------------------------------------------------------------
# Datasets
# --------------------------------------------------------------------------------------------


def _check_folder_name(value: Any, name: str) -> str:
    """A single folder name: a non-empty str without path separators."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {describe(value)}")
    if not value or value in (".", "..") or "/" in value or os.sep in value:
        raise ValueError(f"{name} must be a folder name (no path separators), got {value!r}")
    return value


def _check_dataset_args(
    root: Any,
    name: Any,
    add_inverse_edge: Any,
    split: Any,
    transform: Any,
    pre_transform: Any,
) -> None:
    """The arguments of the OGB dataset classes, checked before any file is touched."""
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a str or os.PathLike, got {describe(root)}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {describe(name)}")
    if not name.strip():
        raise ValueError("name must be a non-empty dataset name, got ''")
    if add_inverse_edge is not None:
        check_bool(add_inverse_edge, "add_inverse_edge")
    if split is not None:
        _check_folder_name(split, "split")
    for arg, value in (("transform", transform), ("pre_transform", pre_transform)):
        if value is not None and not callable(value):
            raise TypeError(f"{arg} must be callable or None, got {describe(value)}")


def _fingerprint(paths: list[Path], extra: str) -> str:
    digest = hashlib.sha1(extra.encode())
    for path in paths:
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


class _OGBBase(InMemoryDataset):
    """Shared logic: meta resolution, cache fingerprint, atomic processed file, splits."""

    _level = ""

    def __init__(
        self,
        root: str | os.PathLike,
        name: str,
        add_inverse_edge: bool | None = None,
        split: str | None = None,
        transform: Callable | None = None,
        pre_transform: Callable | None = None,
        force_reload: bool = False,
        log: bool = False,
    ) -> None:
        _check_dataset_args(root, name, add_inverse_edge, split, transform, pre_transform)
        force_reload = check_bool(force_reload, "force_reload")
        log = check_bool(log, "log")
        self.name = name
        self.dataset_dir = Path(root) / dataset_dir_name(name)
        if not self.dataset_dir.is_dir():
            raise OGBMissingFileError(f"{self.dataset_dir}: dataset folder is missing")
        if not list(self.dataset_dir.glob("RELEASE_v*.txt")):
            raise OGBMissingFileError(
                f"{self.dataset_dir / 'RELEASE_v1.txt'}: file is missing (OGB release marker)"
            )
        raw_dir = self.dataset_dir / "raw"
        for mandatory in ("edge.csv.gz", "num-node-list.csv.gz", "num-edge-list.csv.gz"):
            if not (raw_dir / mandatory).is_file():
                raise OGBMissingFileError(f"{raw_dir / mandatory}: mandatory file is missing")
        meta = resolve_meta(name, self.dataset_dir, self._level)
        if meta is None:
            if add_inverse_edge is None:
                raise ValueError(
                    f"add_inverse_edge: unknown dataset {name!r} without {META_FILE_NAME} in "
                    f"{self.dataset_dir}; pass add_inverse_edge=True/False"
                )
            meta = OGBMeta(name=name, level=self._level, add_inverse_edge=add_inverse_edge)
        if add_inverse_edge is not None:
            meta = replace(meta, add_inverse_edge=bool(add_inverse_edge))
        if split is not None:
            meta = replace(meta, split=split)
        self.meta = meta
        raw_files = sorted(p for p in raw_dir.iterdir() if p.name.endswith(".csv.gz"))
        self._key = _fingerprint(
            raw_files,
            f"v{_PROCESSED_FORMAT_VERSION}|{self._level}|{meta}|{pre_transform!r}",
        )
        with warnings.catch_warnings():
            # the cache key includes repr(pre_transform), so PyG's "differs" warning is moot
            warnings.filterwarnings("ignore", message="The `pre_transform` argument differs")
            super().__init__(
                str(self.dataset_dir), transform, pre_transform, force_reload=force_reload, log=log
            )
        try:
            self.load(self.processed_paths[0])
        except Exception as exc:  # noqa: BLE001 - torch.load raises many types for a bad file
            reason = (str(exc).splitlines() or [""])[0][:200]
            raise OGBFormatError(
                f"{self.processed_paths[0]}: unreadable processed cache ({type(exc).__name__}: "
                f"{reason}); delete it or pass force_reload=True to rebuild it from the raw files"
            ) from exc

    @property
    def raw_file_names(self) -> list[str]:
        return ["edge.csv.gz", "num-node-list.csv.gz", "num-edge-list.csv.gz"]

    @property
    def processed_file_names(self) -> str:
        return f"gtlib_{self._level}_{self._key}.pt"

    def download(self) -> None:
        raise OGBMissingFileError(f"{self.raw_dir}: raw files are missing (no download offline)")

    @property
    def num_tasks(self) -> int:
        """Number of label columns."""
        return int(self._data.y.shape[1])

    @property
    def task_type(self) -> str:
        """Task type, from the meta or inferred from the labels."""
        if self.meta.task_type:
            return self.meta.task_type
        y = self._data.y
        return _infer_task_type(y.numpy() if y.dtype == torch.int64 else y.double().numpy())

    @property
    def eval_metric(self) -> str:
        """The OGB metric for this dataset (from the meta; inferred if unknown)."""
        if self.meta.eval_metric:
            return self.meta.eval_metric
        return {_MC: "acc", _BC: "rocauc"}.get(self.task_type, "rmse")

    @property
    def num_classes(self) -> int:
        """Number of classes (from the meta when known, else from the labels)."""
        if self.meta.num_classes and self.meta.num_classes > 0:
            return self.meta.num_classes
        return super().num_classes

    def _read(self) -> dict[str, Any]:
        raw = read_ogb_raw(
            self.raw_dir,
            level=self._level,
            additional_node_files=self.meta.additional_node_files,
            additional_edge_files=self.meta.additional_edge_files,
        )
        self._raw_task_type = self.meta.task_type or _infer_task_type(raw["label"])
        return raw

    def _save_atomic(self, data_list: list[Data]) -> None:
        target = atomic_write(
            self.processed_paths[0], lambda temporary: self.save(data_list, str(temporary))
        )
        for stale in target.parent.glob(f"gtlib_{self._level}_*.pt"):
            if stale != target:
                stale.unlink(missing_ok=True)

    def _num_split_items(self) -> int:
        raise NotImplementedError

    def get_idx_split(self, split_type: str | None = None) -> dict[str, torch.Tensor]:
        """Return ``{'train', 'valid', 'test'}`` int64 index tensors of ``split/<split_type>``.

        ``split_type`` defaults to the dataset's split; when unknown, the only folder under
        ``split/``.

        Raises:
            OGBMissingFileError: a split file is missing.
            OGBFormatError: a split file is malformed or holds an index out of range.
        """
        if split_type is not None:
            split_type = _check_folder_name(split_type, "split_type")
        split_root = self.dataset_dir / "split"
        split_type = split_type or self.meta.split
        if not split_type:
            choices = (
                sorted(p.name for p in split_root.iterdir() if p.is_dir())
                if (split_root.is_dir())
                else []
            )
            if len(choices) != 1:
                raise ValueError(
                    f"split_type: cannot choose among {choices} in {split_root}; pass split_type"
                )
            split_type = choices[0]
        limit = self._num_split_items()
        out = {}
        for part in ("train", "valid", "test"):
            path = split_root / split_type / f"{part}.csv.gz"
            index = read_csv_gz(path, integer=True, num_columns=1)[:, 0]
            bad = (index < 0) | (index >= limit)
            if bad.any():
                line = int(np.argmax(bad))
                raise OGBFormatError(
                    f"{path}: index {int(index[line])} out of range at line {line + 1} "
                    f"(valid range 0..{limit - 1})"
                )
            out[part] = torch.from_numpy(index.astype(np.int64))
        return out


class OGBNodeDataset(_OGBBase):
    """A node-property-prediction dataset in OGB's on-disk layout, as one PyG :class:`Data`.

    ``dataset[0]`` has ``x`` (int64 for integer features, else float32), ``edge_index``,
    ``edge_attr`` (when ``edge-feat.csv.gz`` exists), ``y`` ``[N, num_tasks]`` (int64 for
    classification without NaN, else float32), ``num_nodes`` and every extra file as an attribute
    of the same name (e.g. ``node_year`` ``[N, 1]``).

    Args:
        root: folder holding ``<name with '-' replaced by '_'>/``.
        name: dataset name, e.g. ``"ogbn-arxiv"``.
        add_inverse_edge: interleave reverse edges; default from the known OGB meta or
            ``gtlib_meta.json`` (required for unknown datasets without that file).
        split: default split type for :meth:`get_idx_split`.
        transform, pre_transform: PyG transforms.
        force_reload: reprocess even when a valid cache exists.
        log: print PyG's processing messages.

    The processed result is cached in ``<dir>/processed`` (written atomically) under a key hashing
    the raw files' names, sizes and modification times, so a changed raw file is re-read.
    """

    _level = "node"

    def _num_split_items(self) -> int:
        return int(self._data.num_nodes)

    def process(self) -> None:
        """Read the raw files and write the processed cache."""
        raw = self._read()
        data = _build_graph(raw, 0, self.meta.add_inverse_edge)
        data.y = _label_tensor(raw["label"], self._raw_task_type)
        if self.pre_transform is not None:
            data = self.pre_transform(data)
        self._save_atomic([data])


class OGBGraphDataset(_OGBBase):
    """A graph-property-prediction dataset in OGB's on-disk layout, as a PyG InMemoryDataset.

    Each graph has local node indices, ``x``, ``edge_index``, ``edge_attr`` (when present), extra
    ``node_*``/``edge_*`` attributes and ``y`` ``[1, num_tasks]`` (int64 for classification
    without NaN anywhere, else float32 with NaN for missing labels). Arguments as
    :class:`OGBNodeDataset`.
    """

    _level = "graph"

    def _num_split_items(self) -> int:
        return len(self)

    def process(self) -> None:
        """Read the raw files and write the processed cache."""
        raw = self._read()
        labels = _label_tensor(raw["label"], self._raw_task_type)
        data_list = []
        for graph in range(raw["num_node_list"].size):
            data = _build_graph(raw, graph, self.meta.add_inverse_edge)
            data.y = labels[graph].view(1, -1)
            if self.pre_transform is not None:
                data = self.pre_transform(data)
            data_list.append(data)
        self._save_atomic(data_list)


def _build_graph(raw: dict[str, Any], graph: int, add_inverse_edge: bool) -> Data:
    """Slice graph ``graph`` out of the raw arrays and convert to a PyG Data (as OGB does)."""
    if "_offsets" not in raw:
        raw["_offsets"] = (
            np.concatenate([[0], np.cumsum(raw["num_node_list"])]),
            np.concatenate([[0], np.cumsum(raw["num_edge_list"])]),
        )
        if add_inverse_edge:
            raw["_edge_index"] = _interleave_inverse(raw["edge"])
        else:
            raw["_edge_index"] = np.ascontiguousarray(raw["edge"].T)
    node_offsets, edge_offsets = raw["_offsets"]
    n0, n1 = int(node_offsets[graph]), int(node_offsets[graph + 1])
    e0, e1 = int(edge_offsets[graph]), int(edge_offsets[graph + 1])
    factor = 2 if add_inverse_edge else 1

    def edge_values(values: np.ndarray) -> torch.Tensor:
        part = values[e0:e1]
        if add_inverse_edge:
            part = np.repeat(part, 2, axis=0)
        return torch.from_numpy(np.ascontiguousarray(_as_ogb_dtype(part)))

    data = Data(
        edge_index=torch.from_numpy(
            np.ascontiguousarray(raw["_edge_index"][:, factor * e0 : factor * e1])
        ),
        num_nodes=n1 - n0,
    )
    if raw["node_feat"] is not None:
        data.x = torch.from_numpy(np.ascontiguousarray(_as_ogb_dtype(raw["node_feat"][n0:n1])))
    if raw["edge_feat"] is not None:
        data.edge_attr = edge_values(raw["edge_feat"])
    for key, values in raw["extra_node"].items():
        data[key] = torch.from_numpy(np.ascontiguousarray(_as_ogb_dtype(values[n0:n1])))
    for key, values in raw["extra_edge"].items():
        data[key] = edge_values(values)
    return data


# --------------------------------------------------------------------------------------------
# Evaluator
# --------------------------------------------------------------------------------------------

_METRICS = ("acc", "rocauc", "ap", "rmse", "mae")


class Evaluator:
    """OGB's evaluator: ``eval({'y_true', 'y_pred'})`` -> ``{metric: float}``.

    Uses ``ogb``'s own ``Evaluator`` when the package is installed and supports the metric; the
    fallback reproduces its numbers (sklearn's ROC-AUC and average precision re-implemented
    step for step; means over tasks as OGB computes them).

    Args:
        name: an OGB dataset name (gives ``num_tasks`` and ``eval_metric``) or any name when both
            are given explicitly.
        num_tasks: number of label columns (overrides the name's).
        eval_metric: one of ``acc``, ``rocauc`` (mean over tasks having both classes, NaN labels
            masked), ``ap`` (same masking), ``rmse``, ``mae``.
        backend: ``"auto"`` (ogb when installed), ``"ogb"`` (require it) or ``"gtlib"``.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        num_tasks: int | None = None,
        eval_metric: str | None = None,
        backend: str = "auto",
    ) -> None:
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, got {describe(name)}")
        if num_tasks is not None:
            num_tasks = check_int(num_tasks, "num_tasks", minimum=1)
        if eval_metric is not None:
            check_choice(eval_metric, "eval_metric", _METRICS)
        check_choice(backend, "backend", ("auto", "ogb", "gtlib"))
        known = KNOWN_META.get(name or "")
        self.name = name or "custom"
        self.num_tasks = num_tasks if num_tasks is not None else (known.num_tasks if known else 0)
        self.eval_metric = eval_metric or (known.eval_metric if known else "")
        if self.num_tasks <= 0:
            raise ValueError(
                f"num_tasks: must be given for dataset {self.name!r} (got {num_tasks})"
            )
        if self.eval_metric not in _METRICS:
            raise ValueError(f"eval_metric: must be one of {_METRICS}, got {self.eval_metric!r}")
        self._ogb = None
        if backend != "gtlib" and self.eval_metric != "mae":
            self._ogb = _make_ogb_evaluator(self.name, self.num_tasks, self.eval_metric)
        if backend == "ogb" and self._ogb is None:
            raise ImportError("backend='ogb' needs the `ogb` package (and a metric it supports)")
        self.backend = "ogb" if self._ogb is not None else "gtlib"

    def eval(self, input_dict: Mapping[str, Any]) -> dict[str, float]:
        """Evaluate ``{'y_true': [n, num_tasks], 'y_pred': [n, num_tasks]}`` (numpy or torch)."""
        if not isinstance(input_dict, Mapping):
            raise TypeError(
                f"input_dict must be a dict with 'y_true' and 'y_pred', got {describe(input_dict)}"
            )
        if self._ogb is not None:
            return self._ogb.eval(input_dict)
        y_true, y_pred = self._parse_and_check_input(input_dict)
        return {self.eval_metric: _FALLBACK[self.eval_metric](y_true, y_pred)}

    def _parse_and_check_input(
        self, input_dict: Mapping[str, Any]
    ) -> tuple[np.ndarray, np.ndarray]:
        for key in ("y_true", "y_pred"):
            if key not in input_dict:
                raise EvaluatorInputError(f"Missing key of {key}")
        y_true, y_pred = input_dict["y_true"], input_dict["y_pred"]
        if isinstance(y_true, torch.Tensor):
            y_true = y_true.detach().cpu().numpy()
        if isinstance(y_pred, torch.Tensor):
            y_pred = y_pred.detach().cpu().numpy()
        if not (isinstance(y_true, np.ndarray) and isinstance(y_pred, np.ndarray)):
            raise EvaluatorInputError(
                "Arguments to Evaluator need to be either numpy ndarray or torch tensor"
            )
        if y_true.shape != y_pred.shape:
            raise EvaluatorInputError(
                f"Shape of y_true {y_true.shape} and y_pred {y_pred.shape} must be the same"
            )
        if y_true.ndim != 2:
            raise EvaluatorInputError(
                f"y_true and y_pred must be 2-dim arrays, {y_true.ndim}-dim array given"
            )
        if y_true.shape[1] != self.num_tasks:
            raise EvaluatorInputError(
                f"Number of tasks for {self.name} should be {self.num_tasks} but "
                f"{y_true.shape[1]} given"
            )
        return y_true, y_pred


def _make_ogb_evaluator(name: str, num_tasks: int, eval_metric: str) -> Any | None:
    """An ``ogb`` evaluator with the given settings, or ``None`` without ``ogb``."""
    try:
        if name.startswith("ogbn") and eval_metric in ("acc", "rocauc"):
            from ogb.nodeproppred import Evaluator as OgbEvaluator
        else:
            from ogb.graphproppred import Evaluator as OgbEvaluator
    except ImportError:
        return None
    evaluator = OgbEvaluator.__new__(OgbEvaluator)  # skip the name lookup in ogb's master.csv
    evaluator.name = name
    evaluator.num_tasks = num_tasks
    evaluator.eval_metric = eval_metric
    return evaluator


def _binary_counts(y_true: np.ndarray, y_score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """True/false positive counts at each distinct threshold (sklearn's _binary_clf_curve)."""
    if not np.all(np.isfinite(y_score)):
        raise ValueError("Input y_pred contains NaN or infinity.")
    classes = np.unique(y_true)
    if not np.all(np.isin(classes, (0, 1))):
        raise ValueError(f"y_true must hold binary 0/1 labels, found {classes.tolist()}")
    order = np.argsort(-y_score, kind="stable")
    y_score = y_score[order]
    positives = (y_true[order] == 1).astype(np.float64)
    distinct = np.nonzero(np.diff(y_score))[0]
    thresholds = np.concatenate([distinct, [positives.size - 1]])
    tps = np.cumsum(positives, dtype=np.float64)[thresholds]
    fps = 1 + thresholds.astype(np.float64) - tps
    return tps, fps


def _roc_auc_score(y_true: np.ndarray, y_score: np.ndarray) -> float:
    from scipy.integrate import trapezoid

    tps, fps = _binary_counts(y_true, y_score)
    if fps.shape[0] > 2:
        keep = np.concatenate([[True], np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), [True]])
        keep = np.where(keep)[0]
        fps, tps = fps[keep], tps[keep]
    tps = np.concatenate([[0.0], tps])
    fps = np.concatenate([[0.0], fps])
    return float(trapezoid(tps / tps[-1], fps / fps[-1]))


def _average_precision_score(y_true: np.ndarray, y_score: np.ndarray) -> float:
    tps, fps = _binary_counts(y_true, y_score)
    ps = tps + fps
    precision = np.where(ps != 0, np.divide(tps, ps, where=ps != 0, out=np.zeros_like(tps)), 0.0)
    recall = tps / tps[-1]
    precision = np.concatenate([precision[::-1], [1.0]])
    recall = np.concatenate([recall[::-1], [0.0]])
    return float(max(0.0, -np.sum(np.diff(recall) * precision[:-1])))


def _eval_binary(score_fn: Callable, y_true: np.ndarray, y_pred: np.ndarray, what: str) -> float:
    values = []
    for task in range(y_true.shape[1]):
        if np.sum(y_true[:, task] == 1) > 0 and np.sum(y_true[:, task] == 0) > 0:
            labeled = y_true[:, task] == y_true[:, task]
            values.append(score_fn(y_true[labeled, task], y_pred[labeled, task]))
    if not values:
        raise EvaluatorInputError(f"No positively labeled data available. Cannot compute {what}.")
    return sum(values) / len(values)


def _eval_acc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    values = []
    for task in range(y_true.shape[1]):
        labeled = y_true[:, task] == y_true[:, task]
        correct = y_true[labeled, task] == y_pred[labeled, task]
        values.append(float(np.sum(correct)) / len(correct))
    return sum(values) / len(values)


def _eval_rmse(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    values = []
    for task in range(y_true.shape[1]):
        labeled = y_true[:, task] == y_true[:, task]
        values.append(np.sqrt(((y_true[labeled, task] - y_pred[labeled, task]) ** 2).mean()))
    return sum(values) / len(values)


def _eval_mae(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    values = []
    for task in range(y_true.shape[1]):
        labeled = y_true[:, task] == y_true[:, task]
        values.append(np.abs(y_true[labeled, task] - y_pred[labeled, task]).mean())
    return float(sum(values) / len(values))


_FALLBACK: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "acc": _eval_acc,
    "rocauc": lambda t, p: _eval_binary(_roc_auc_score, t, p, "ROC-AUC"),
    "ap": lambda t, p: _eval_binary(_average_precision_score, t, p, "Average Precision"),
    "rmse": _eval_rmse,
    "mae": _eval_mae,
}
