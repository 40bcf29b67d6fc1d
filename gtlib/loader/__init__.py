"""Mini-batching for large graphs."""

from gtlib.loader.large_gt_loader import LargeGTLoader

__all__ = ["LargeGTLoader"]
