"""siamrdm: predict brain RDMs from images with end-to-end trained Siamese networks.

Modules, in the order a reader meets them: data (images and RDM files), rdm (upper triangles, ranks),
scoring (the Algonauts 2019 metric and noise ceilings), backbones (pretrained bodies), model (the Siamese
network), train (fitting), predict (RDMs and submissions), baselines, plots, report, bench, cli.

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
    "load_image_set": "data", "load_rdms": "data", "load_rdm_dict": "data", "load_dataset": "data",
    "read_image_order": "data", "save_rdms": "data", "ImageSet": "data", "BrainDataset": "data",
    "DataError": "data",
    # training and prediction
    "TrainConfig": "train", "config_from_preset": "train", "fit_predictor": "predict", "RDMPredictor": "predict",
    # scoring
    "score_rdm": "scoring", "score_with_ceiling": "scoring", "noise_ceiling": "scoring", "compare_rdms": "scoring",
    "COMPARISON_METHODS": "scoring", "score_condensed": "scoring", "noise_ceiling_condensed": "scoring",
    "score_submission": "scoring", "submission_frame": "scoring", "noise_ceilings": "scoring",
    "paired_test": "scoring", "paired_rows": "scoring", "to_rsatoolbox": "data",
    # baselines and evaluation
    "layer_rdms": "baselines", "evaluate_folds": "evaluate", "run_fold_evaluation": "evaluate",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'siamrdm' has no attribute '{name}'")
    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
