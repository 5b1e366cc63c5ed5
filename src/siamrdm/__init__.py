"""siamrdm: predict brain RDMs from images with end-to-end trained Siamese networks.

Folders, in the order a reader meets them: io (images, RDM files, tables, run folders), rdm (upper triangles,
ranks, the Algonauts 2019 metric and noise ceilings, reliability, splits), model (pretrained bodies, the Siamese
network, baselines, the prior), train (settings, the training loop, fitting, predictors), pipelines (challenge,
evaluation, the other-study check, report, plots); then cli, the command line.

The functions a notebook needs are importable from here (see README, "Your own data"):

    from siamrdm import load_dataset, config_from_preset, fit_predictor, score_with_ceiling, evaluate_folds

They load on first use, so `import siamrdm` stays light (the command line's `score` needs no torch).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Public name -> the module that defines it.
_API = {
    # images and RDM files
    "load_image_set": "io.images", "load_rdms": "io.rdmfiles", "load_rdm_dict": "io.rdmfiles",
    "load_dataset": "io.datasets", "read_image_order": "io.images", "save_rdms": "io.rdmfiles", "ImageSet": "io.images",
    "BrainDataset": "io.datasets", "DataError": "errors",
    # training and prediction
    "TrainConfig": "train.fullbatch", "config_from_preset": "train.fullbatch",
    "fit_predictor": "train.predict", "RDMPredictor": "train.predict",
    # large image sets in mini-batches (one process or torchrun's ranks)
    "open_large_set": "train.largeset", "BatchSettings": "train.distributed", "fit_large": "train.distributed",
    # scoring: model, target, then options; each result a record with .to_dict() and .to_frame()
    "score_rdm": "rdm.compare", "compare_rdms": "rdm.compare", "score_condensed": "rdm.records",
    "COMPARISON_METHODS": "rdm.transform", "score_with_ceiling": "rdm.records", "ScoreRecord": "rdm.records",
    "noise_ceilings": "rdm.noise_ceiling", "NoiseCeiling": "rdm.noise_ceiling",
    "score_submission": "rdm.submission", "SubmissionScore": "rdm.submission",
    "paired_test": "rdm.inference", "paired_rows": "rdm.paired", "to_rsatoolbox": "io.rsafiles",
    # baselines and evaluation
    "layer_rdms": "model.baselines", "evaluate_folds": "pipelines.evaluate",
    "run_fold_evaluation": "pipelines.evaluate",
}
__all__ = ["__version__", *_API]
# Older names, still importable so that old notebooks run; each warns, when called, with what replaces it.
_DEPRECATED = {"noise_ceiling": "rdm.noise_ceiling", "noise_ceiling_condensed": "rdm.noise_ceiling",
               "submission_frame": "rdm.submission"}


def __getattr__(name: str):
    module = _API.get(name) or _DEPRECATED.get(name)
    if module is None:
        raise AttributeError(f"module 'siamrdm' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
