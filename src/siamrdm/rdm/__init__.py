"""RDMs and their comparison, by job, as rsatoolbox lays it out:

- core: RDM arithmetic (upper triangles, ranks, rescaling, subjects' stacks and means);
- transform, stream, compare (and compare_torch, on the device): the comparison methods, the subjects streamed one
  at a time, the Algonauts metric and its t-test p-values;
- noise_ceiling: the ceilings (one record, `NoiseCeiling`), the official ones recognised by the file's content;
- inference: chance by permuting the image labels, bootstrap intervals, paired tests; paired: those tests across a
  score table's rows;
- records: the score record every table holds; submission: the challenge's submission format;
- parts, reliability, splits: the per-image part and the pair structure, split-half reliability, held-out images.

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
