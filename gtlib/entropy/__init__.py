"""Entropy production and probability currents from stationary samples, with closed-form references.

Convention: k_B = 1, every variable even under time reversal (Seifert), entropy production rates per
unit time in nats. Closed forms for linear systems live in :mod:`gtlib.entropy.reference`.
"""

from gtlib.entropy import reference
from gtlib.entropy.estimators import (
    EntropyProductionEstimate,
    entropy_production,
    probability_current,
    probability_current_divergence,
    score_free_entropy_production,
)
from gtlib.entropy.reference import (
    LinearSystem,
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

__all__ = [
    "EntropyProductionEstimate",
    "LinearSystem",
    "aoup_harmonic_trap",
    "bead_chain",
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
