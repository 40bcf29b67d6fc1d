"""Bad inputs at the public boundary of the PDE and OGB data modules and their generators.

Each case asserts the exception type (``TypeError`` for a wrong type, ``ValueError`` for a wrong
value; ``FileNotFoundError`` for a missing file) and that the message names the argument (or the
file). The valid edge cases at the end (NumPy scalars, empty parts, zero edges, negative sample
indices) are checked against values read independently (the arrays written here, ``gzip``/``csv``
of the standard library).
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from gtlib.datasets.generate import cli
from gtlib.datasets.generate import pde as gen
from gtlib.datasets.generate.ogb_like import ogb_like
from gtlib.datasets.ogb import (
    Evaluator,
    OGBGraphDataset,
    OGBNodeDataset,
    dataset_dir_name,
    read_csv_gz,
    read_ogb_raw,
    resolve_meta,
)
from gtlib.datasets.pde import PDEDataset

N, T, X = 3, 6, 8


def _values(n: int = N, t: int = T, x: int = X) -> np.ndarray:
    """value = 100 * sample + 10 * step + point: every entry tells where it came from."""
    idx = np.indices((n, t, x)).astype(np.float64)
    return (100 * idx[0] + 10 * idx[1] + idx[2]).astype(np.float32)


@pytest.fixture(scope="module")
def pde_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pde") / "burgers.hdf5"
    with h5py.File(path, "w") as f:
        f["tensor"] = _values()
        f["x-coordinate"] = np.linspace(0.0, 1.0, X, endpoint=False).astype(np.float32)
        f["t-coordinate"] = (0.5 * np.arange(T + 1)).astype(np.float32)
    return path


@pytest.fixture(scope="module")
def node_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ogb")
    ogb_like(root, "bad-node", num_nodes=30, num_features=3, seed=1)
    return root


def _raises(error: type[Exception], name: str):
    """``pytest.raises`` for ``error`` with ``name`` as a word of the message."""
    return pytest.raises(error, match=rf"(?<![\w]){re.escape(name)}(?![\w])")


# ---------------------------------------------------------------------------------------------
# PDEDataset
# ---------------------------------------------------------------------------------------------

PDE_CASES = [
    ({"path": 123}, TypeError, "path"),
    ({"path": None}, TypeError, "path"),
    ({"split": 1}, TypeError, "split"),
    ({"split": "training"}, ValueError, "split"),
    ({"n_steps_input": "2"}, TypeError, "n_steps_input"),
    ({"n_steps_input": 0}, ValueError, "n_steps_input"),
    ({"n_steps_output": 1.5}, TypeError, "n_steps_output"),
    ({"n_steps_output": -1}, ValueError, "n_steps_output"),
    ({"time_stride": True}, TypeError, "time_stride"),
    ({"time_stride": 0}, ValueError, "time_stride"),
    ({"time_stride": 6}, ValueError, "time_stride"),  # no window fits in 6 steps
    ({"all2all": "yes"}, TypeError, "all2all"),
    ({"all2all": True, "n_steps_input": 2}, ValueError, "n_steps_input"),
    ({"normalize": 1}, TypeError, "normalize"),
    ({"all2all": True, "max_lead_steps": -1}, ValueError, "max_lead_steps"),
    ({"all2all": True, "max_lead_steps": "3"}, TypeError, "max_lead_steps"),
    ({"max_lead_steps": 2}, ValueError, "max_lead_steps"),  # without all2all
    ({"output": "graph"}, ValueError, "output"),
    ({"output": 1}, TypeError, "output"),
    ({"input_fields": [1]}, TypeError, "input_fields"),
    ({"input_fields": ["rho"]}, ValueError, "input_fields"),
    ({"input_fields": []}, ValueError, "input_fields"),
    ({"target_fields": 5}, TypeError, "target_fields"),
    ({"subsample": 0}, ValueError, "subsample"),
    ({"subsample": 2.0}, TypeError, "subsample"),
    ({"subsample": (0,)}, ValueError, "subsample"),
    ({"subsample": (1, 1)}, ValueError, "subsample"),
    ({"subsample": ("2",)}, TypeError, "subsample"),
    ({"samples": [0.5]}, TypeError, "samples"),
    ({"samples": [N]}, ValueError, "samples"),
    ({"samples": "0"}, TypeError, "samples"),
    ({"stats": 3}, TypeError, "stats"),
    ({"stats": {"mean": {"tensor": math.nan}, "std": {"tensor": 1.0}}}, ValueError, "stats"),
    ({"stats": {"mean": {"tensor": [0.0, 1.0]}, "std": {"tensor": 1.0}}}, ValueError, "stats"),
    ({"stats": {"mean": {"tensor": "a"}, "std": {"tensor": 1.0}}}, ValueError, "stats"),
    ({"stats": {"mean": {"tensor": 0.0}}}, ValueError, "stats"),
]


@pytest.mark.parametrize("kwargs, error, name", PDE_CASES)
def test_pde_dataset_bad_argument(pde_file: Path, kwargs: dict, error: type, name: str) -> None:
    kwargs = {"path": pde_file, **kwargs}
    path = kwargs.pop("path")
    with _raises(error, name):
        PDEDataset(path, **kwargs)


def test_pde_dataset_bad_stats_files(pde_file: Path, tmp_path: Path) -> None:
    missing = tmp_path / "absent.yaml"
    with _raises(FileNotFoundError, str(missing)):
        PDEDataset(pde_file, stats=missing, normalize=True)
    listed = tmp_path / "listed.yaml"
    listed.write_text("- 1\n- 2\n")
    with _raises(ValueError, str(listed)):
        PDEDataset(pde_file, stats=listed, normalize=True)
    broken = tmp_path / "broken.yaml"
    broken.write_text("mean: [1, 2\n")
    with _raises(ValueError, str(broken)):
        PDEDataset(pde_file, stats=broken, normalize=True)


def test_pde_dataset_split_of_a_file_and_missing_split_folder(
    pde_file: Path, tmp_path: Path
) -> None:
    with _raises(ValueError, "split"):
        PDEDataset(pde_file, split="train")  # a file has no splits
    (tmp_path / "data").mkdir()
    with _raises(FileNotFoundError, "valid"):
        PDEDataset(tmp_path, split="valid")


NORMALIZE_CASES = [
    ({"values": np.zeros((1, 8))}, TypeError, "values"),
    ({"values": torch.zeros(1, 8, dtype=torch.int64)}, TypeError, "values"),
    ({"fields": ["rho"]}, ValueError, "fields"),
    ({"fields": []}, ValueError, "fields"),
    ({"channel_dim": 5}, ValueError, "channel_dim"),
    ({"channel_dim": 1.0}, TypeError, "channel_dim"),
    ({"inverse": "yes"}, TypeError, "inverse"),
    ({"values": torch.zeros(3, 8)}, ValueError, "channels"),  # 3 channels for a 1-channel field
]


@pytest.mark.parametrize("kwargs, error, name", NORMALIZE_CASES)
def test_normalize_fields_bad_argument(pde_file, kwargs, error, name) -> None:
    ds = PDEDataset(pde_file, stats={"mean": {"tensor": 1.0}, "std": {"tensor": 2.0}})
    kwargs = {"values": torch.zeros(1, 8), "fields": ["tensor"], **kwargs}
    values, fields = kwargs.pop("values"), kwargs.pop("fields")
    if name == "channels":
        kwargs["channel_dim"] = 0
        values = torch.zeros(3, 8)
        ds.fields["tensor"] = 2  # a field of 2 channels: 3 is not a multiple
        ds.stats = {"mean": {"tensor": [0.0, 0.0]}, "std": {"tensor": [1.0, 1.0]}}
    with _raises(error, name):
        ds.normalize_fields(values, fields, **kwargs)


def test_denormalize_and_getitem_bad_argument(pde_file: Path) -> None:
    ds = PDEDataset(pde_file, normalize=True, stats={"mean": {"tensor": 1}, "std": {"tensor": 2}})
    with _raises(TypeError, "y"):
        ds.denormalize_target([[1.0]])
    with _raises(TypeError, "index"):
        ds["0"]
    with pytest.raises(IndexError, match=str(len(ds))):
        ds[len(ds)]


# ---------------------------------------------------------------------------------------------
# OGB readers, datasets and evaluator
# ---------------------------------------------------------------------------------------------


def _raw(node_root: Path) -> Path:
    return node_root / dataset_dir_name("bad-node") / "raw"


OGB_READER_CASES = [
    (lambda raw: read_csv_gz(5), TypeError, "path"),
    (lambda raw: read_csv_gz(raw / "edge.csv.gz", num_columns=0), ValueError, "num_columns"),
    (lambda raw: read_csv_gz(raw / "edge.csv.gz", num_columns=2.0), TypeError, "num_columns"),
    (lambda raw: read_csv_gz(raw / "edge.csv.gz", integer="yes"), TypeError, "integer"),
    (lambda raw: read_ogb_raw(None, level="node"), TypeError, "raw_dir"),
    (lambda raw: read_ogb_raw(raw, level="edge"), ValueError, "level"),
    (lambda raw: read_ogb_raw(raw, level=1), TypeError, "level"),
    (
        lambda raw: read_ogb_raw(raw, level="node", additional_node_files="node_year"),
        TypeError,
        "additional_node_files",
    ),
    (
        lambda raw: read_ogb_raw(raw, level="node", additional_edge_files=(3,)),
        TypeError,
        "additional_edge_files",
    ),
    (lambda raw: resolve_meta("x", raw.parent, level="edge"), ValueError, "level"),
    (lambda raw: resolve_meta(3, raw.parent), TypeError, "name"),
    (lambda raw: resolve_meta("x", 3), TypeError, "dataset_dir"),
    (lambda raw: dataset_dir_name(3), TypeError, "name"),
]


@pytest.mark.parametrize("call, error, name", OGB_READER_CASES)
def test_ogb_reader_bad_argument(node_root: Path, call, error: type, name: str) -> None:
    with _raises(error, name):
        call(_raw(node_root))


OGB_DATASET_CASES = [
    ({"root": 1}, TypeError, "root"),
    ({"name": 3}, TypeError, "name"),
    ({"name": " "}, ValueError, "name"),
    ({"add_inverse_edge": "no"}, TypeError, "add_inverse_edge"),
    ({"split": "../x"}, ValueError, "split"),
    ({"split": 2}, TypeError, "split"),
    ({"transform": 3}, TypeError, "transform"),
    ({"pre_transform": "x"}, TypeError, "pre_transform"),
    ({"force_reload": "y"}, TypeError, "force_reload"),
    ({"log": 1}, TypeError, "log"),
]


@pytest.mark.parametrize("kwargs, error, name", OGB_DATASET_CASES)
def test_ogb_dataset_bad_argument(node_root: Path, kwargs: dict, error: type, name: str) -> None:
    kwargs = {"root": node_root, "name": "bad-node", **kwargs}
    with _raises(error, name):
        OGBNodeDataset(**kwargs)


def test_ogb_dataset_level_and_split_type(node_root: Path) -> None:
    with pytest.raises(ValueError, match="node-level"):
        OGBGraphDataset(node_root, "bad-node")  # the meta says node level
    ds = OGBNodeDataset(node_root, "bad-node")
    with _raises(TypeError, "split_type"):
        ds.get_idx_split(3)
    with _raises(ValueError, "split_type"):
        ds.get_idx_split("../../raw")


EVALUATOR_CASES = [
    ({"num_tasks": 0, "eval_metric": "acc"}, ValueError, "num_tasks"),
    ({"num_tasks": "1", "eval_metric": "acc"}, TypeError, "num_tasks"),
    ({"num_tasks": 1, "eval_metric": "f1"}, ValueError, "eval_metric"),
    ({"num_tasks": 1, "eval_metric": 1}, TypeError, "eval_metric"),
    ({"num_tasks": 1, "eval_metric": "acc", "backend": "x"}, ValueError, "backend"),
    ({"num_tasks": 1, "eval_metric": "acc", "backend": 1}, TypeError, "backend"),
    ({"name": 3, "num_tasks": 1, "eval_metric": "acc"}, TypeError, "name"),
    ({"name": "custom-x"}, ValueError, "num_tasks"),  # unknown name without num_tasks
]


@pytest.mark.parametrize("kwargs, error, name", EVALUATOR_CASES)
def test_evaluator_bad_argument(kwargs: dict, error: type, name: str) -> None:
    kwargs = dict(kwargs)
    with _raises(error, name):
        Evaluator(kwargs.pop("name", None), **kwargs)


def test_evaluator_eval_needs_a_mapping() -> None:
    ev = Evaluator(num_tasks=1, eval_metric="rmse", backend="gtlib")
    with _raises(TypeError, "input_dict"):
        ev.eval([np.zeros((2, 1)), np.zeros((2, 1))])


# ---------------------------------------------------------------------------------------------
# generators
# ---------------------------------------------------------------------------------------------

OGB_LIKE_CASES = [
    ({"name": 3}, TypeError, "name"),
    ({"name": "a/b"}, ValueError, "name"),
    ({"kind": "edge"}, ValueError, "kind"),
    ({"kind": 2}, TypeError, "kind"),
    ({"num_nodes": 1}, ValueError, "num_nodes"),
    ({"num_nodes": 2.5}, TypeError, "num_nodes"),
    ({"num_edges": -1}, ValueError, "num_edges"),
    ({"num_features": 0}, ValueError, "num_features"),
    ({"num_edge_features": -1}, ValueError, "num_edge_features"),
    ({"num_classes": 1}, ValueError, "num_classes"),
    ({"num_tasks": 0}, ValueError, "num_tasks"),
    ({"num_graphs": 0, "kind": "graph"}, ValueError, "num_graphs"),
    ({"avg_degree": math.nan}, ValueError, "avg_degree"),
    ({"avg_degree": "4"}, TypeError, "avg_degree"),
    ({"split_sizes": (1.0, 1.0)}, ValueError, "split_sizes"),
    ({"split_sizes": "abc"}, TypeError, "split_sizes"),
    ({"split_sizes": (1.0, -1.0, 1.0)}, ValueError, "split_sizes"),
    ({"split_type": "a/b"}, ValueError, "split_type"),
    ({"split_type": 3}, TypeError, "split_type"),
    ({"label_missing_rate": 1.0}, ValueError, "label_missing_rate"),
    ({"additional_node_files": ("edge_x",)}, ValueError, "additional_node_files"),
    ({"additional_node_files": "node_x"}, TypeError, "additional_node_files"),
    ({"feature_dtype": "double"}, ValueError, "feature_dtype"),
    ({"add_inverse_edge": "yes"}, TypeError, "add_inverse_edge"),
    ({"seed": -1}, ValueError, "seed"),
    ({"compresslevel": 10}, ValueError, "compresslevel"),
    ({"chunk_size": 0}, ValueError, "chunk_size"),
    ({"overwrite": "yes"}, TypeError, "overwrite"),
    ({"progress": "no"}, TypeError, "progress"),
    ({"root": 3}, TypeError, "root"),
]


@pytest.mark.parametrize("kwargs, error, name", OGB_LIKE_CASES)
def test_ogb_like_bad_argument(tmp_path: Path, kwargs: dict, error: type, name: str) -> None:
    kwargs = {"root": tmp_path / "out", "name": "synthetic", **kwargs}
    with _raises(error, name):
        ogb_like(kwargs.pop("root"), kwargs.pop("name"), **kwargs)
    assert not (tmp_path / "out").exists()  # checked before anything is written


PDE_GENERATOR_CASES = [
    (gen.navier_stokes_2d, {"n": "2"}, TypeError, "n"),
    (gen.navier_stokes_2d, {"n": 2, "resolution": 2}, ValueError, "resolution"),
    (gen.navier_stokes_2d, {"n": 2, "nu": math.nan}, ValueError, "nu"),
    (gen.navier_stokes_2d, {"n": 2, "seed": "a"}, TypeError, "seed"),
    (gen.navier_stokes_2d, {"n": 2, "seed": -3}, ValueError, "seed"),
    (gen.navier_stokes_2d, {"n": 2, "splits": "abc"}, TypeError, "splits"),
    (gen.navier_stokes_2d, {"n": 2, "splits": (0.5, 0.6, -0.1)}, ValueError, "splits"),
    (gen.navier_stokes_2d, {"n": 2, "layout": 3}, TypeError, "layout"),
    (gen.navier_stokes_2d, {"n": 2, "out": 3}, TypeError, "out"),
    (gen.darcy, {"n": 0}, ValueError, "n"),
    (gen.darcy, {"n": 2, "alpha": "2"}, TypeError, "alpha"),
    (gen.burgers_1d, {"n": 2, "t_final": math.inf}, ValueError, "t_final"),
    (gen.burgers_1d, {"n": 2, "n_snapshots": 2.0}, TypeError, "n_snapshots"),
]


@pytest.mark.parametrize("func, kwargs, error, name", PDE_GENERATOR_CASES)
def test_pde_generator_bad_argument(func, kwargs: dict, error: type, name: str) -> None:
    with _raises(error, name):
        func(progress=False, **kwargs)


def test_solvers_and_cli_bad_argument() -> None:
    w0 = np.zeros((1, 8, 8))
    with _raises(ValueError, "cfl"):
        gen.solve_navier_stokes_2d(w0, np.array([0.0, 0.1]), nu=1e-3, cfl=0.0)
    with _raises(ValueError, "dt"):
        gen.solve_navier_stokes_2d(w0, np.array([0.0, 0.1]), nu=1e-3, dt=-1.0)
    with _raises(TypeError, "name"):
        cli.register_generator(3, print, print)
    with _raises(ValueError, "name"):
        cli.register_generator("two words", print, print)
    with _raises(TypeError, "add_arguments"):
        cli.register_generator("x", print, 3)


# ---------------------------------------------------------------------------------------------
# valid edge cases still right
# ---------------------------------------------------------------------------------------------


def test_pde_numpy_scalars_and_negative_samples(pde_file: Path) -> None:
    values = _values()
    ds = PDEDataset(
        pde_file,
        n_steps_input=np.int64(2),
        n_steps_output=np.int32(1),
        time_stride=np.int64(2),
        normalize=np.bool_(False),
        subsample=[np.int64(2)],
        samples=np.array([-1, 0]),
    )
    # windows of 2 + 1 steps, 2 apart: 6 - 4 = 2 per trajectory; trajectories 2 then 0
    assert len(ds) == 4 and ds.spatial_shape == (4,)
    item = ds[1]  # trajectory 2, window 1: steps 1, 3 -> 5
    np.testing.assert_array_equal(item["x"].numpy(), values[2, [1, 3], ::2])
    np.testing.assert_array_equal(item["y"].numpy(), values[2, [5], ::2])
    assert item["lead_time"].item() == pytest.approx(1.0)  # t-coordinate 0.5 per step
    item = ds[-1]  # trajectory 0, window 1
    np.testing.assert_array_equal(item["x"].numpy(), values[0, [1, 3], ::2])


def test_pde_normalize_fields_roundtrip_any_channel_dim(pde_file: Path) -> None:
    ds = PDEDataset(pde_file, stats={"mean": {"tensor": 3.0}, "std": {"tensor": 0.0}})
    v = torch.arange(12.0).reshape(2, 6).T.contiguous()  # channels along dim 1, non-default
    out = ds.normalize_fields(v, ["tensor"], channel_dim=np.int64(1))
    torch.testing.assert_close(out, v - 3.0)  # std 0 replaced by 1
    back = ds.normalize_fields(out, "tensor", inverse=True, channel_dim=-1)
    torch.testing.assert_close(back, v)


def _stdlib_csv(path: Path) -> list[list[str]]:
    with gzip.open(path, "rt") as fh:
        return [row for row in csv.reader(io.StringIO(fh.read()))]


def test_ogb_zero_edges_and_empty_split_part(tmp_path: Path) -> None:
    folder = ogb_like(
        tmp_path,
        "empty-edges",
        num_nodes=np.int64(12),
        avg_degree=0,
        num_features=np.int32(2),
        split_sizes=(1, 0, 0),
        seed=np.int64(3),
    )
    ds = OGBNodeDataset(tmp_path, "empty-edges")
    data = ds[0]
    assert data.edge_index.shape == (2, 0) and data.num_nodes == 12
    rows = _stdlib_csv(folder / "raw" / "node-feat.csv.gz")
    expected = torch.tensor([[float(c) for c in r] for r in rows], dtype=torch.float32)
    torch.testing.assert_close(data.x, expected)
    split = ds.get_idx_split()
    assert split["train"].tolist() == list(range(12))
    assert split["valid"].numel() == 0 and split["test"].numel() == 0
    raw = read_ogb_raw(folder / "raw", level="node", additional_node_files=[])
    assert raw["edge"].shape == (0, 2)
    assert read_csv_gz(folder / "raw" / "edge.csv.gz", num_columns=np.int64(2)).shape == (0, 2)
    ev = Evaluator(num_tasks=np.int64(1), eval_metric="acc", backend="gtlib")
    y = np.array([[1], [0], [2]])
    assert ev.eval({"y_true": y, "y_pred": np.array([[1], [1], [2]])})["acc"] == pytest.approx(
        2 / 3
    )
