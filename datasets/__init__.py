"""gtlib.datasets: dataset loaders and generators (from the top-level datasets/ folder)."""

from gtlib.datasets.ogb import (
    Evaluator,
    EvaluatorInputError,
    OGBFormatError,
    OGBGraphDataset,
    OGBMissingFileError,
    OGBNodeDataset,
)

__all__ = [
    "Evaluator",
    "EvaluatorInputError",
    "OGBFormatError",
    "OGBGraphDataset",
    "OGBMissingFileError",
    "OGBNodeDataset",
]
