"""RDMs and their comparison: RDM arithmetic (core), the Algonauts metric and noise ceilings (scoring,
scoring_torch), split-half reliability, splits of images, folds and subjects.

Only core's names are re-exported here, so `from siamrdm.rdm import upper_tri` stays torch-free and light.
"""

from .core import (
    RESCALE_METHODS,
    Ranker,
    correlation_rdm,
    rank_transform,
    rank_unit,
    rankdata,
    rdm_from_features,
    rescale,
    square_rdm,
    upper_tri,
    upper_tri_indices,
)

__all__ = [
    "rankdata",
    "RESCALE_METHODS",
    "upper_tri_indices",
    "upper_tri",
    "square_rdm",
    "Ranker",
    "rank_transform",
    "rank_unit",
    "correlation_rdm",
    "rdm_from_features",
    "rescale",
]
