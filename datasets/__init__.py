"""gtlib.datasets: dataset loaders and generators (from the top-level datasets/ folder)."""

from gtlib.datasets.ogb import (
    Evaluator,
    EvaluatorInputError,
    OGBFormatError,
    OGBGraphDataset,
    OGBMissingFileError,
    OGBNodeDataset,
)
from gtlib.datasets.particles import (
    ActiveBrownianParticles,
    ActiveOUParticles,
    LinearSDE,
    ParticleDataset,
    blob_state,
    from_state,
    load_trajectory,
    simulate,
    to_state,
    trajectory_attrs,
)
from gtlib.datasets.pde import PDEDataset, PDEFormatError

__all__ = [
    "ActiveBrownianParticles",
    "ActiveOUParticles",
    "Evaluator",
    "EvaluatorInputError",
    "LinearSDE",
    "OGBFormatError",
    "OGBGraphDataset",
    "OGBMissingFileError",
    "OGBNodeDataset",
    "PDEDataset",
    "PDEFormatError",
    "ParticleDataset",
    "blob_state",
    "from_state",
    "load_trajectory",
    "simulate",
    "to_state",
    "trajectory_attrs",
]
