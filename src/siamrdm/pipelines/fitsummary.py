"""What `siamrdm fit` reports about the model it kept: each seed's record, the scores of the held-out images, and
the rule that chose the epochs (other studies' scores: external.score_held_out)."""

from __future__ import annotations

from ..io.datasets import target_key
from ..rdm.compare import spearman_rhos
from ..rdm.noise_ceiling import NO_CEILING_NOTE
from ..rdm.records import score_row

BEST_VAL_SCORE_IS = "rho_mean"  # what the epoch kept was chosen on (train.selection_score), not pct_nc or r2


def seed_records(metrics: dict) -> dict:
    """Each seed's record (predictor.metrics) as fit's JSON shows it: its best_val_score named for what it is,
    the signed mean rho over subjects (rho_mean), so it is not read as the % of the ceiling beside it."""
    return {seed: {**record, "best_val_score_is": BEST_VAL_SCORE_IS} if "best_val_score" in record else record
            for seed, record in metrics.items()}


def validation_scores(predictor, val: list, targets: tuple[str, ...]) -> dict:
    """Per validation set and target ('set/target', as in log.csv): the kept model (each seed's chosen epoch,
    averaged over seeds) scored on the validation images as every score table scores (score_row, with
    this RDM's own chance level and p_perm), saying which of its fields each seed's `best_val_score` is."""
    out = {}
    for dataset in val:
        predicted = predictor.predict(dataset.images)
        for target in targets:
            subjects, rdm = dataset.targets[target], predicted[target]
            row = score_row(spearman_rhos(rdm, subjects), target_key(target, dataset.official),
                                    subjects, model_rdm=rdm, permutations=None)
            info = {"images": len(dataset), "best_val_score_is": BEST_VAL_SCORE_IS, **row}
            if row["ceiling_source"] is None:
                info["note"] = NO_CEILING_NOTE
            out[f"{dataset.name}/{target}"] = info
    return out


def selected_epochs(chosen: int, train_sets: int, prior: str) -> dict:
    """fit --select-epochs: the epochs chosen as challenge and evaluate choose them, and by which rule."""
    rule = ("cross-set curves of the training sets, best validated epoch (as challenge's final fit)"
            if train_sets > 1 else "folds: new images of new people (subject halves), best validated epoch "
            "(as challenge, evaluate)")
    return {"epochs": chosen, "rule": rule, "prior_alone": chosen == 0 and prior != "none"}
