"""The ``gtlib-data`` command line: ``gtlib-data generate <name> --n N --out DIR [options]``.

Generators are looked up in :data:`GENERATORS`, a registry ``name -> (callable, add_arguments)``.
Every generator callable accepts the keyword arguments ``n``, ``out``, ``layout``, ``seed``,
``splits``, ``progress`` (and ``resolution`` if its ``add_arguments`` does not remove it) plus
whatever its ``add_arguments(parser)`` adds; options left at ``None`` are not passed, so the
generator's own defaults apply. Register more with :func:`register_generator`.

Examples::

    gtlib-data generate darcy --n 1200 --resolution 64 --out data/
    gtlib-data generate navier_stokes_2d --n 100 --nu 1e-3 --t-final 20 --n-snapshots 21 --out data/
    gtlib-data generate burgers_1d --n 1000 --layout pdebench --out data/burgers.hdf5
    python -m gtlib.datasets.generate.cli generate darcy --n 10 --out /tmp/d --no-progress
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable
from typing import Any

from gtlib.datasets.generate import pde
from gtlib.datasets.generate.place_recognition import place_recognition

__all__ = ["GENERATORS", "main", "register_generator"]

ArgumentAdder = Callable[[argparse.ArgumentParser], None]

GENERATORS: dict[str, tuple[Callable[..., Any], ArgumentAdder]] = {}


def register_generator(name: str, func: Callable[..., Any], add_arguments: ArgumentAdder) -> None:
    """Add (or replace) the subcommand ``gtlib-data generate <name>``."""
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if not name or any(c.isspace() for c in name):
        raise ValueError(f"name must be a non-empty word (a subcommand), got {name!r}")
    for arg, value in (("func", func), ("add_arguments", add_arguments)):
        if not callable(value):
            raise TypeError(f"{arg} must be callable, got {type(value).__name__}")
    GENERATORS[name] = (func, add_arguments)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be finite and > 0, got {value}")
    return value


def _darcy_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--solve-resolution", type=_positive_int, default=None)
    parser.add_argument("--alpha", type=_positive_float, default=None, help="GRF smoothness")
    parser.add_argument("--tau", type=_positive_float, default=None, help="GRF inverse length")


def _time_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--nu", type=_positive_float, default=None, help="viscosity")
    parser.add_argument("--t-final", type=_positive_float, default=None)
    parser.add_argument(
        "--n-snapshots", type=_positive_int, default=None, help="stored frames, t = 0 included"
    )
    parser.add_argument("--dt", type=_positive_float, default=None, help="max step (else CFL)")
    parser.add_argument("--cfl", type=_positive_float, default=None)
    parser.add_argument("--solve-resolution", type=_positive_int, default=None)
    parser.add_argument("--ic-scale", type=_positive_float, default=None)


register_generator("darcy", pde.darcy, _darcy_args)
register_generator("navier_stokes_2d", pde.navier_stokes_2d, _time_args)
register_generator("burgers_1d", pde.burgers_1d, _time_args)


def _place_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--points", type=_positive_int, default=None, help="points per scan")
    parser.add_argument("--max-range", type=_positive_float, default=None, help="metres")
    parser.add_argument("--noise", type=float, default=None, help="position noise (metres)")
    parser.add_argument("--offset", type=float, default=None, help="sensor offsets (metres)")


register_generator("place_recognition", place_recognition, _place_args)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gtlib-data", description="gtlib dataset tools")
    commands = parser.add_subparsers(dest="command", required=True)
    generate = commands.add_parser("generate", help="generate a synthetic dataset")
    names = generate.add_subparsers(dest="generator", required=True, metavar="GENERATOR")
    for name, (_, add_arguments) in GENERATORS.items():
        sub = names.add_parser(name, help=f"generate the {name} dataset")
        sub.add_argument("--n", type=_positive_int, required=True, help="number of samples")
        sub.add_argument("--resolution", type=_positive_int, default=None)
        sub.add_argument(
            "--out", required=True, help="base directory (well) or file path (pdebench)"
        )
        sub.add_argument("--layout", choices=("well", "pdebench"), default="well")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument(
            "--splits",
            type=float,
            nargs=3,
            default=None,
            metavar=("TRAIN", "VALID", "TEST"),
            help="split fractions for the well layout (default 0.8 0.1 0.1)",
        )
        sub.add_argument("--no-progress", dest="progress", action="store_false")
        add_arguments(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``gtlib-data``; returns the exit status (argument errors exit with status 2)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    func, _ = GENERATORS[args.generator]
    kwargs = {
        key: value
        for key, value in vars(args).items()
        if key not in ("command", "generator") and value is not None
    }
    if "splits" in kwargs:
        kwargs["splits"] = tuple(kwargs["splits"])
    try:
        func(**kwargs)
    except (ValueError, TypeError) as error:
        print(f"gtlib-data generate {args.generator}: error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {args.generator} ({args.n} samples) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
