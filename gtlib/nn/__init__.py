"""Layers built on the sparse-attention core."""

from gtlib.nn.gps_conv import GPSConv

__all__ = ["GPSConv"]
