"""Training: settings (config), augmentation, checkpoints, the one trainer (trainer: the step chosen by the
data), full-batch training (fullbatch), large sets, mini-batch and torchrun training (distributed), the LR range
test (lrfind), epoch selection, predictors and the one run driver (predict).

fullbatch's names (which include the run settings of config) are re-exported here.
"""

from .fullbatch import (
    PRESETS,
    TRAINING_MUST_BEAT_ZERO_BY_SE,
    ConfigError,
    FullBatchStep,
    PairTargets,
    TrainConfig,
    TrainingDiverged,
    body_features,
    body_pass,
    build_model,
    check_config,
    config_from_dict,
    config_from_preset,
    feature_views,
    frozen_views,
    load_checkpoint,
    pairs_to_rdms,
    pick_device,
    predict_pairs,
    predict_rdms,
    predict_upper,
    prepare_set,
    prior_rdms,
    selection_score,
    split_holdout,
    subset,
    validated_gain,
)
from .lrfind import lr_range_test
from .trainer import Trainer, fit

__all__ = [
    "load_checkpoint",
    "PRESETS",
    "ConfigError",
    "TrainConfig",
    "check_config",
    "config_from_dict",
    "config_from_preset",
    "pick_device",
    "TrainingDiverged",
    "TRAINING_MUST_BEAT_ZERO_BY_SE",
    "selection_score",
    "validated_gain",
    "split_holdout",
    "subset",
    "PairTargets",
    "prepare_set",
    "frozen_views",
    "body_pass",
    "body_features",
    "predict_pairs",
    "feature_views",
    "predict_upper",
    "predict_rdms",
    "prior_rdms",
    "pairs_to_rdms",
    "build_model",
    "FullBatchStep",
    "Trainer",
    "fit",
    "lr_range_test",
]
