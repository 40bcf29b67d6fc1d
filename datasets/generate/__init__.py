"""Generators of synthetic datasets in the on-disk layouts gtlib's loaders read.

PDE solvers (Darcy, 2-D Navier–Stokes, 1-D Burgers) write The Well's or PDEBench's layout; the
``gtlib-data`` console script runs them from the shell.
"""

from gtlib.datasets.generate.ogb_like import ogb_like
from gtlib.datasets.generate.pde import (
    burgers_1d,
    darcy,
    gaussian_random_field_1d,
    gaussian_random_field_2d,
    navier_stokes_2d,
    solve_burgers_1d,
    solve_darcy,
    solve_navier_stokes_2d,
)

__all__ = [
    "burgers_1d",
    "darcy",
    "gaussian_random_field_1d",
    "gaussian_random_field_2d",
    "navier_stokes_2d",
    "ogb_like",
    "solve_burgers_1d",
    "solve_darcy",
    "solve_navier_stokes_2d",
]
from gtlib.datasets.generate.place_recognition import (  # noqa: E402
    place_recognition,
    read_place_recognition,
)

__all__ += ["place_recognition", "read_place_recognition"]
