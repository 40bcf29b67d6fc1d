"""The PyG dataset of :mod:`gtlib.datasets.particles`: one :class:`~torch_geometric.data.Data`
per snapshot and trajectory of a :func:`simulate` file, read lazily."""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from typing import Any

import h5py
import torch
from torch_geometric.data import Data, Dataset

from gtlib.datasets._particle_io import _check_path, _h5, _open_checked, _read_array

__all__ = ["ParticleDataset"]


class ParticleDataset(Dataset):
    """Snapshots of a :func:`simulate` HDF5 file, one :class:`~torch_geometric.data.Data` each.

    Item ``i`` is snapshot ``i // B`` of trajectory ``i % B``::

        Data(pos=[N, d], g=[N, d], box=[d] (periodic only), time=0-d, trajectory=0-d,
             num_nodes=N)

    The file is read lazily; each process opens its own handle (none is inherited across
    ``fork`` or pickled), so the dataset works with multi-worker data loaders.

    Args:
        path: the HDF5 file.
        transform: applied to each :class:`Data` on access.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is a folder, not HDF5 or corrupt, lacks ``pos``/``g``/``time``, has
            non-float data sets, non-finite times or inconsistent shapes, or holds an incomplete
            run (each message names the file and the data set). An item whose data fail their
            checksum or are not finite raises the same error when it is read.
    """

    def __init__(
        self, path: str | os.PathLike, *, transform: Callable[[Data], Data] | None = None
    ) -> None:
        self.path = _check_path(path)
        handle, self.attrs = _open_checked(self.path)
        with handle:
            self.n_snapshots, self.n_trajectories, self.num_particles, self.dim = handle[
                "pos"
            ].shape
        box_length = float(self.attrs.get("box_length", math.nan))
        self.box_length = None if math.isnan(box_length) else box_length
        self._handle: h5py.File | None = None
        self._pid: int | None = None
        super().__init__(None, transform=transform, log=False)

    def len(self) -> int:
        return self.n_snapshots * self.n_trajectories

    def _file(self) -> h5py.File:
        if self._handle is None or self._pid != os.getpid():
            self._handle = _h5(self.path, "the file", lambda: h5py.File(self.path, "r"))
            self._pid = os.getpid()
        return self._handle

    def get(self, idx: int) -> Data:
        snapshot, trajectory = divmod(int(idx), self.n_trajectories)
        handle = self._file()
        index = (snapshot, trajectory)
        data = Data(
            pos=torch.from_numpy(_read_array(self.path, handle, "pos", index)),
            g=torch.from_numpy(_read_array(self.path, handle, "g", index)),
            time=torch.tensor(
                float(_read_array(self.path, handle, "time", snapshot)), dtype=torch.float64
            ),
            trajectory=torch.tensor(trajectory),
            num_nodes=self.num_particles,
        )
        if self.box_length is not None:
            data.box = torch.full((self.dim,), self.box_length, dtype=torch.float64)
        return data

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_pid"] = None
        return state

    def __repr__(self) -> str:
        return (
            f"ParticleDataset({self.path!r}, snapshots={self.n_snapshots}, "
            f"trajectories={self.n_trajectories}, num_particles={self.num_particles}, "
            f"dim={self.dim})"
        )
