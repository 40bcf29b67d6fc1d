"""Entropy production and probability currents from stationary samples, with closed-form references.

Convention: k_B = 1, every variable even under time reversal (Seifert), entropy production rates per
unit time in nats. Closed forms for linear systems live in :mod:`gtlib.entropy.reference`.
"""

from gtlib.entropy import reference
from gtlib.entropy.estimators import (
    EntropyProductionEstimate,
    entropy_production,
    group_sum,
    local_entropy_production,
    particle_groups,
    probability_current,
    probability_current_divergence,
    score_free_entropy_production,
    score_free_entropy_production_hypoelliptic,
    spatial_decomposition,
)
from gtlib.entropy.particle_score import (
    ParticleEntropyProduction,
    ParticleScore,
    particle_entropy_production,
)
from gtlib.entropy.reference import (
    LinearSDE,
    aoup_harmonic_trap,
    bead_chain,
    brownian_gyrator,
    linear_entropy_production,
    linear_score,
    linear_stationary_covariance,
    linear_velocity_matrix,
    rotating_particle,
    stationary_sample_linear,
)
from gtlib.entropy.score_matching import (
    denoising_score_matching,
    implicit_score_matching,
    sliced_score_matching,
)
from gtlib.entropy.structure import (
    CLASS_NAMES,
    class_means,
    cluster_labels,
    cluster_sizes,
    density_classes,
    local_packing_fraction,
    structure_factor,
)
from gtlib.entropy.training import TrainResult, train_score

__all__ = [
    "EntropyProductionEstimate",
    "LinearSDE",
    "ParticleEntropyProduction",
    "ParticleScore",
    "TrainResult",
    "denoising_score_matching",
    "group_sum",
    "implicit_score_matching",
    "local_entropy_production",
    "particle_entropy_production",
    "particle_groups",
    "score_free_entropy_production_hypoelliptic",
    "sliced_score_matching",
    "spatial_decomposition",
    "train_score",
    "aoup_harmonic_trap",
    "bead_chain",
    "CLASS_NAMES",
    "class_means",
    "cluster_labels",
    "cluster_sizes",
    "density_classes",
    "local_packing_fraction",
    "structure_factor",
    "brownian_gyrator",
    "entropy_production",
    "linear_entropy_production",
    "linear_score",
    "linear_stationary_covariance",
    "linear_velocity_matrix",
    "probability_current",
    "probability_current_divergence",
    "reference",
    "rotating_particle",
    "score_free_entropy_production",
    "stationary_sample_linear",
]


def __getattr__(name: str):
    if name == "LinearSystem":  # deprecated alias of LinearSDE (warns)
        return getattr(reference, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
