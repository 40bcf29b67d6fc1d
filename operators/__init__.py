"""gtlib.operators: neural operators (installed from the top-level operators/ folder)."""

from .fno import FNO
from .losses import H1Loss, LpLoss
from .mgno import MgNO
from .scot import ScOT
from .spectral_conv import SpectralConv

__all__ = ["SpectralConv", "FNO", "MgNO", "ScOT", "LpLoss", "H1Loss"]
