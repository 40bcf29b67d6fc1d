"""Atomic file writing: a file appears under its final name complete, or not at all.

Every helper here writes to a temporary file in the target's own directory and then moves it over
the target with :func:`os.replace`, which is atomic on POSIX and Windows when both paths are on
the same filesystem. The temporary file is named ``.<name>.<host>.<pid>.<random hex>.tmp``: hidden,
unique (so it cannot clash with a concurrent writer), and marked with the writing process. If
writing fails for any reason (including ``KeyboardInterrupt``), the temporary file is removed, the
error propagates, and a file already at the target is left exactly as it was. A reader therefore
never sees a half-written file, and a crash mid-checkpoint keeps the previous checkpoint.

A process killed outright (``SIGKILL``, power loss) cannot clean up after itself; its temporary
file is removed by the next write of the same target (:func:`remove_stale_temporaries`), which
deletes the temporaries whose writer is no longer running on this host. The temporary file's data
are flushed to disk (``fsync``) before the rename, so after a crash the target holds the old or the
new content, never a truncated file.

The temporary file is *not* created before ``write`` is called, so ``write`` may open it in any
mode (including exclusive-create modes); files get the usual permissions from the umask.
"""

from __future__ import annotations

import hashlib
import itertools
import numbers
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "HDF5_ERRORS",
    "HDF5_LIBVER",
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_text",
    "hdf5_member",
    "read_hdf5",
    "remove_stale_temporaries",
    "temporary_path",
]

# Every exception h5py raises for a corrupt or unexpected file: byte flips in the metadata give
# RuntimeError or KeyError, a failed checksum or truncation OSError, odd types TypeError or
# ValueError. Readers catch these and name the file and data set.
HDF5_ERRORS = (OSError, RuntimeError, KeyError, ValueError, TypeError)
# File format of gtlib's HDF5 writers (``h5py.File(..., libver=HDF5_LIBVER)``): HDF5 1.10's, read
# by HDF5 >= 1.10, whose metadata (object headers, chunk indexes) carry checksums. In the older
# default format a flipped bit in a chunk index key makes HDF5 read that chunk as the fill value,
# silently; Fletcher-32 on the data cannot see it.
HDF5_LIBVER = ("v110", "v110")


def _as_path(path: Any, name: str = "path") -> Path:
    """``path`` (a string or an ``os.PathLike``) as a :class:`~pathlib.Path`."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{name} must be a str or an os.PathLike, got {type(path).__name__}")
    return Path(path)


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temporary_path(path: str | os.PathLike[str]) -> Path:
    """A fresh temporary name beside ``path`` marked with this host and process (nothing is
    created): ``.<name>.<host>.<pid>.<hex>.tmp``, which :func:`remove_stale_temporaries` removes
    once this process is gone. For writers that stage a folder and rename it into place."""
    path = _as_path(path)
    return path.with_name(f".{path.name}.{_host_tag()}.{os.getpid()}.{uuid.uuid4().hex}.tmp")


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows: keep the file
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (owned by someone else) or cannot tell: keep the file
    return True


def remove_stale_temporaries(path: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files that interrupted writes of ``path`` left behind.

    A temporary of ``path`` (``.<name>.<host>.<pid>.<hex>.tmp`` beside it, a file or a staged
    folder, see :func:`temporary_path`) is stale when its
    writer, a process of this host, is no longer running; temporaries of live processes (a
    concurrent writer) and of other hosts sharing the folder are kept. Temporaries in the older
    ``.<name>.<hex>.tmp`` form, which carry no writer, are always removed. :func:`atomic_write`
    calls this before every write, so a killed writer's temporary disappears at the next save.

    Returns:
        The removed files.
    """
    path = _as_path(path)
    folder = path.parent
    if not folder.is_dir():
        return []
    pattern = re.compile(
        rf"\.{re.escape(path.name)}\.(?:([0-9a-f]{{8}})\.([0-9]+)\.)?[0-9a-f]{{32}}\.tmp"
    )
    host = _host_tag()
    removed = []
    for candidate in folder.iterdir():
        match = pattern.fullmatch(candidate.name)
        if match is None:
            continue
        tag, pid = match.group(1), match.group(2)
        if tag is not None and (tag != host or _process_alive(int(pid))):
            continue
        try:
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate)
            else:
                candidate.unlink()
        except FileNotFoundError:  # removed concurrently
            continue
        removed.append(candidate)
    return removed


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or on POSIX a folder) to disk; best effort for folders."""
    if path.is_dir():
        if os.name == "nt":
            return
        flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
        try:
            fd = os.open(path, flags)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
        return
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.

    Stale temporaries of ``path`` left by killed writers are removed first
    (:func:`remove_stale_temporaries`); the new content is flushed to disk before the rename.

    Args:
        path: the final file. Missing parent directories are created.
        write: writes the complete content to the path it is given (a not-yet-existing file in
            the same directory as ``path``); its return value is ignored.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        Whatever ``write`` or :func:`os.replace` raises. Before re-raising, the temporary file is
        removed; nothing new is left under ``path`` and a pre-existing file there is untouched.
    """
    path = _as_path(path)
    if not callable(write):
        raise TypeError(f"write must be callable, got {type(write).__name__}")
    if path.is_dir():
        raise ValueError(f"path {str(path)!r} is a folder; atomic_write writes a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """:func:`torch.save` ``obj`` to ``path`` atomically (see :func:`atomic_write`).

    The argument order follows :func:`torch.save`.
    """
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))


def _chunk_starts(selection: Any, shape: tuple[int, ...], chunks: tuple[int, ...]) -> list[Any]:
    """Per axis, the starts of the chunks a selection touches (every chunk when unsure)."""
    if not isinstance(selection, tuple):
        selection = (selection,)
    if any(item is Ellipsis for item in selection) or len(selection) > len(shape):
        selection = ()
    return [
        _axis_chunk_starts(selection[axis] if axis < len(selection) else slice(None), n, c)
        for axis, (n, c) in enumerate(zip(shape, chunks))
    ]


_STANDARD_TYPES: dict[int, list[Any]] = {}
_TYPE_VERDICTS: dict[bytes, bool] = {}  # encoded type -> standard (or not a number type)


def _standard_types(h5t: Any) -> dict[int, list[Any]]:
    if not _STANDARD_TYPES:
        orders = ("LE", "BE")
        _STANDARD_TYPES[h5t.FLOAT] = [
            getattr(h5t, f"IEEE_F{b}{o}") for b in (16, 32, 64) for o in orders
        ]
        _STANDARD_TYPES[h5t.INTEGER] = [
            getattr(h5t, f"STD_{s}{b}{o}") for s in "IU" for b in (8, 16, 32, 64) for o in orders
        ]
    return _STANDARD_TYPES


def _check_standard_type(dataset: Any) -> None:
    """Refuse a float or integer type that is not IEEE / two's complement of a usual size.

    Such a type is what a flipped bit in a datatype message makes (a changed exponent bias halves
    every value); h5py would convert it silently.
    """
    import h5py

    kind = dataset.id.get_type()
    key = kind.encode()
    known = _TYPE_VERDICTS.get(key)
    if known is None:
        standard = _standard_types(h5py.h5t).get(kind.get_class())
        known = standard is None or any(kind.equal(other) for other in standard)
        if len(_TYPE_VERDICTS) < 1024:
            _TYPE_VERDICTS[key] = known
    if not known:
        raise OSError(
            f"data set {dataset.name!r}: non-standard stored number type (corrupt datatype "
            "message?)"
        )


def _axis_chunk_starts(item: Any, n: int, c: int) -> Any:
    if isinstance(item, slice):
        indices = range(*item.indices(n))
        if not indices:
            return []
        if abs(indices.step) <= c:  # every chunk between the first and the last index
            low, high = sorted((indices[0], indices[-1]))
            return range(low // c * c, high // c * c + 1, c)
        return sorted({i // c * c for i in indices})
    if isinstance(item, numbers.Integral) and -n <= int(item) < n:
        return [int(item) % n // c * c]
    return range(0, n, c)  # index arrays and the like: every chunk of the axis


def hdf5_member(group: Any, name: str) -> Any:
    """``group[name]``, or ``None`` when ``group`` has no link ``name``.

    Unlike :meth:`h5py.Group.get`, which returns ``None`` for a member that exists but cannot be
    opened (a corrupt object header raises ``KeyError`` inside it), such a member raises here,
    so corruption is never mistaken for an absent optional data set.
    """
    import h5py

    if not isinstance(group, h5py.Group):
        raise TypeError(f"group must be an h5py.Group or h5py.File, got {type(group).__name__}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if name not in group:
        return None
    return group[name]


def read_hdf5(dataset: Any, selection: Any = ()) -> Any:
    """``dataset[selection]`` of an :class:`h5py.Dataset`, refusing chunks missing from the index.

    HDF5 reads a chunk absent from a chunked data set's index as the fill value (zeros by
    default), without an error; a corrupt index entry (a flipped bit in the metadata, which the
    data checksums do not cover) therefore turns data into zeros silently. This reader looks every
    chunk the selection touches up in the index first and raises ``OSError`` naming the data set
    and the chunk when one is missing. Contiguous and compact data sets are read as they are.
    Float and integer data must be stored in a standard type (IEEE binary16/32/64, 8- to 64-bit
    integers); anything else is what a flipped bit in the datatype message makes.

    Raises:
        OSError: a chunk of the selection is not allocated (or whatever h5py raises; see
            :data:`HDF5_ERRORS`).
    """
    import h5py

    if not isinstance(dataset, h5py.Dataset):
        raise TypeError(f"dataset must be an h5py.Dataset, got {type(dataset).__name__}")
    _check_standard_type(dataset)
    chunks = dataset.chunks
    if chunks is not None and dataset.size > 0:
        get = dataset.id.get_chunk_info_by_coord
        for coord in itertools.product(*_chunk_starts(selection, dataset.shape, chunks)):
            if get(tuple(int(c) for c in coord)).byte_offset is None:
                raise OSError(
                    f"data set {dataset.name!r}: the chunk at {tuple(coord)} is missing from the "
                    "chunk index (corrupt metadata)"
                )
    return dataset[selection]
