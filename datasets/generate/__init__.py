"""Generators of synthetic datasets in the on-disk layouts gtlib's loaders read."""

from gtlib.datasets.generate.ogb_like import ogb_like

__all__ = ["ogb_like"]
