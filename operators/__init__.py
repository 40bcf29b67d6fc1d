"""gtlib.operators: neural operators (installed from the top-level operators/ folder)."""

from .fno import FNO
from .losses import H1Loss, LpLoss
from .spectral_conv import SpectralConv

__all__ = ["SpectralConv", "FNO", "LpLoss", "H1Loss"]
