"""Trajectory files of :mod:`gtlib.datasets.particles`: the HDF5 writer of :func:`simulate`
(atomic, Fletcher-32 checksums, SHA-256 of the root attributes) and the checked readers
(:func:`load_trajectory`, and the helpers :class:`ParticleDataset` uses)."""

from __future__ import annotations

import hashlib
import json
import math
import numbers
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np
import torch
from torch import Tensor

from gtlib.io import HDF5_ERRORS, HDF5_LIBVER, atomic_write, hdf5_member, read_hdf5

if TYPE_CHECKING:
    from gtlib.datasets._particle_systems import _SoftDiscs

__all__ = ["load_trajectory", "trajectory_attrs"]


def _write_attrs(handle: h5py.File, system: _SoftDiscs, run: dict[str, Any]) -> None:
    params = system.parameters()
    handle.attrs["system"] = type(system).__name__
    handle.attrs["parameters"] = json.dumps(params, sort_keys=True)
    for name, value in params.items():
        if value is not None:
            handle.attrs[name] = value
    handle.attrs["box_length"] = math.nan if system.box_length is None else system.box_length
    handle.attrs["dim"] = system.dim
    handle.attrs["num_particles"] = system.num_particles
    for name, value in run.items():
        handle.attrs[name] = value
    handle.attrs[_ATTRS_DIGEST] = _attrs_digest({key: handle.attrs[key] for key in handle.attrs})


# Root attribute holding the SHA-256 of the other root attributes (HDF5 checksums data only).
_ATTRS_DIGEST = "attrs_sha256"


def _attr_text(value: Any) -> str:
    """A canonical text of an attribute value as h5py reads it back (exact for floats)."""
    if isinstance(value, bool | np.bool_):
        return f"b:{bool(value)}"
    if isinstance(value, numbers.Integral):
        return f"i:{int(value)}"
    if isinstance(value, numbers.Real):
        return f"f:{float(value).hex()}"
    if isinstance(value, bytes):
        return f"s:{value.decode('utf-8', 'backslashreplace')}"
    if isinstance(value, str):
        return f"s:{value}"
    if isinstance(value, np.ndarray):
        return f"a{value.shape}:" + ",".join(_attr_text(v) for v in value.ravel().tolist())
    return f"r:{value!r}"


def _attrs_digest(attrs: dict[str, Any]) -> str:
    """SHA-256 of the root attributes (all but the digest itself), by sorted name."""
    text = "\n".join(f"{k}={_attr_text(attrs[k])}" for k in sorted(attrs) if k != _ATTRS_DIGEST)
    return hashlib.sha256(text.encode()).hexdigest()


# Checkpoint format of an unfinished run (the sidecar written by simulate()).


def _write_trajectory(
    path: str, system: _SoftDiscs, run: dict[str, Any], pos: Tensor, g: Tensor, time: Tensor
) -> None:
    """Write a complete run to ``path`` atomically, with Fletcher-32 checksums on every data set
    (chunks of one snapshot, so a reader checks only what it reads)."""
    chunks = (1, *pos.shape[1:])

    def write(tmp: Any) -> None:
        with h5py.File(tmp, "w", libver=HDF5_LIBVER) as handle:
            _write_attrs(handle, system, run)
            checked = {"fletcher32": True, "fillvalue": np.nan}  # a lost chunk reads as NaN
            handle.create_dataset("pos", data=pos.numpy(), chunks=chunks, **checked)
            handle.create_dataset("g", data=g.numpy(), chunks=chunks, **checked)
            handle.create_dataset("time", data=time.numpy(), **checked)

    atomic_write(path, write)


# ------------------------------------------------------------------------------------------------
# Reading
def _check_path(path: Any, name: str = "path") -> str:
    """``path`` as a ``str`` (a ``str`` or an ``os.PathLike`` to one)."""
    if not isinstance(path, str | os.PathLike):
        raise TypeError(f"`{name}` must be a str or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"`{name}` must name a file by a str path, got {type(path).__name__}")
    if not path:
        raise ValueError(f"`{name}` is empty")
    return path


def _h5(path: str, what: str, read: Callable[[], Any]) -> Any:
    """``read()``, with every h5py/HDF5 error turned into a ValueError naming the file."""
    try:
        return read()
    except HDF5_ERRORS as error:
        raise ValueError(
            f"{path}: cannot read {what} ({type(error).__name__}: {error}); the file is "
            "corrupt or not written by simulate()"
        ) from error


def _finite_float(path: str, name: str, values: np.ndarray, where: str = "") -> np.ndarray:
    if not np.isfinite(values).all():
        raise ValueError(f"{path}: dataset '{name}'{where} holds NaN or infinite values")
    return values


def _check_layout(path: str, handle: h5py.File) -> dict[str, Any]:
    nodes = {}
    for name in ("pos", "g", "time"):
        node = _h5(path, f"dataset '{name}'", lambda name=name: hdf5_member(handle, name))
        if node is None:
            raise ValueError(f"{path}: missing dataset '{name}'")
        if not isinstance(node, h5py.Dataset):
            raise ValueError(f"{path}: '{name}' is a {type(node).__name__}, not a dataset")
        dtype = _h5(path, f"the dtype of dataset '{name}'", lambda node=node: node.dtype)
        if dtype.kind != "f":
            raise ValueError(
                f"{path}: dataset '{name}' has dtype {dtype}, expected real floating point"
            )
        nodes[name] = node
    shapes = {
        name: _h5(path, f"dataset '{name}'", lambda n=node: n.shape) for name, node in nodes.items()
    }
    shape = shapes["pos"]
    if len(shape) != 4 or shapes["g"] != shape or shapes["time"] != shape[:1]:
        raise ValueError(
            f"{path}: expected pos and g of shape [S, B, N, d] and time [S], got {shapes}"
        )
    attrs = _h5(path, "the attributes", lambda: {key: handle.attrs[key] for key in handle.attrs})
    if _ATTRS_DIGEST in attrs and attrs[_ATTRS_DIGEST] != _attrs_digest(attrs):
        raise ValueError(f"{path}: the root attributes fail their checksum ('{_ATTRS_DIGEST}')")
    if not bool(attrs.get("complete", True)):
        raise ValueError(f"{path}: the run is incomplete")
    box_length = attrs.get("box_length", math.nan)
    if not isinstance(box_length, numbers.Real) or not (
        math.isnan(box_length) or (math.isfinite(box_length) and box_length > 0)
    ):
        raise ValueError(f"{path}: attribute 'box_length' = {box_length!r} is not positive or NaN")
    _finite_float(path, "time", _h5(path, "dataset 'time'", lambda: read_hdf5(nodes["time"])))
    return attrs


def _open_checked(path: str) -> tuple[h5py.File, dict[str, Any]]:
    """Open a file written by :func:`simulate` and check its layout, dtypes and attributes.

    Raises:
        FileNotFoundError: no such path.
        ValueError: anything else (a folder, not HDF5, corrupt, missing or mistyped data sets,
            non-finite times, an incomplete run), naming the file and the data set.
    """
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a directory, not an HDF5 file written by simulate()")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        handle = h5py.File(path, "r")
    except HDF5_ERRORS as error:
        raise ValueError(f"{path}: not a readable HDF5 file ({error})") from error
    try:
        attrs = _check_layout(path, handle)
    except BaseException:
        handle.close()
        raise
    return handle, attrs


def _read_array(path: str, handle: h5py.File, name: str, index: Any = ()) -> np.ndarray:
    """``handle[name][index]``, checksum-verified (Fletcher-32 where written) and finite."""
    where = "" if index == () else f" at {index}"
    values = _h5(path, f"dataset '{name}'{where}", lambda: read_hdf5(handle[name], index))
    return _finite_float(path, name, np.asarray(values), where)


def load_trajectory(path: str | os.PathLike) -> dict[str, Any]:
    """Reads a file written by :func:`simulate` into memory.

    Returns:
        ``{"pos": [S, B, N, d], "g": [S, B, N, d], "time": [S], "attrs": dict}``.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is a folder, not HDF5 or corrupt (a data set failing its checksum
            included), lacks ``pos``/``g``/``time``, has non-float or non-finite values or
            inconsistent shapes, or holds an incomplete run; the message names the file and the
            data set.
    """
    path = _check_path(path)
    handle, attrs = _open_checked(path)
    with handle:
        return {
            "pos": torch.from_numpy(_read_array(path, handle, "pos")),
            "g": torch.from_numpy(_read_array(path, handle, "g")),
            "time": torch.from_numpy(_read_array(path, handle, "time")),
            "attrs": attrs,
        }


def trajectory_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The root attributes of a file written by :func:`simulate` (its system's parameters,
    ``box_length``, ``dt``, ...), without reading the particle data: the file's layout, dtypes,
    attribute checksum and times are checked as by :func:`load_trajectory`.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: as :func:`load_trajectory`, for everything but the checksums and values of
            ``pos`` and ``g`` (not read).
    """
    path = _check_path(path)
    handle, attrs = _open_checked(path)
    handle.close()
    return attrs
