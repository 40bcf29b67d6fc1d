"""gtlib.operators: neural operators (installed from the top-level operators/ folder)."""

from .fno import FNO
from .gino import GINO
from .gno import GNO
from .losses import H1Loss, LpLoss
from .mgno import MgNO
from .scot import ScOT
from .spectral_conv import SpectralConv

__all__ = ["SpectralConv", "FNO", "MgNO", "ScOT", "GNO", "GINO", "LpLoss", "H1Loss"]
