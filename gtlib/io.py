"""Atomic file writing: a file appears under its final name complete, or not at all.

Every helper here writes to a temporary file in the target's own directory (named
``.<name>.<random hex>.tmp``, so it is hidden and cannot clash with a concurrent writer) and then
moves it over the target with :func:`os.replace`, which is atomic on POSIX and Windows when both
paths are on the same filesystem. If writing fails for any reason (including
``KeyboardInterrupt``), the temporary file is removed, the error propagates, and a file already at
the target is left exactly as it was. A reader therefore never sees a half-written file, and a
crash mid-checkpoint keeps the previous checkpoint.

The temporary file is *not* created before ``write`` is called, so ``write`` may open it in any
mode (including exclusive-create modes); files get the usual permissions from the umask.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["atomic_torch_save", "atomic_write", "atomic_write_text"]


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path``, then rename it to ``path``.

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding=encoding))


def atomic_torch_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """:func:`torch.save` ``obj`` to ``path`` atomically (see :func:`atomic_write`).

    The argument order follows :func:`torch.save`.
    """
    return atomic_write(path, lambda tmp: torch.save(obj, tmp))
