"""Which pretrained body and which baseline generalise to new images, per target: folds against cross-set.

For each body (EfficientNet-Lite0, -Lite1, -Lite2) and each baseline the network's prior can start from
("layer": the stage whose RDM scores best on the training images; "nnls": a non-negative weighted sum of all
stage RDMs), two numbers in percent of the noise ceiling computed from the scored subjects:

- folds: image folds within each training set (fit on pairs among the other folds' images, score pairs among
  the held-out fold's images), averaged over 4 folds and both sets: the protocol that chooses designs;
- cross-set: fit on one set, score the other (92->118, 118->92, and their mean): held out from any choice.

No training: stage RDMs are computed once per body and image set (about a minute per body on 2 CPU cores).
The table shows why IT is the hard target (issue #9): on folds the two baselines are alike, but a weighting
of stages fitted on the 118 set's IT RDMs loses most of what the single best stage explains on 92.

    python benchmarks/prior_bodies.py [--data ../shared/algonauts2019]
"""

from __future__ import annotations

import argparse
import os

import numpy as np

from siamrdm.io.datasets import TARGET_NAMES, load_algonauts_set
from siamrdm.model import baselines, prior
from siamrdm.model.backbones import BACKBONES
from siamrdm.rdm.records import score_with_ceiling
from siamrdm.rdm.splits import fold_indices

BODIES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
KINDS = ("layer", "nnls")


def percent(model_rdm: np.ndarray, subjects: np.ndarray) -> float:
    """Percent of the ceiling computed from these subjects (a plain target name is not an official key, so
    `score_with_ceiling` computes it, and keeps it for the other bodies and baselines scored on them)."""
    return score_with_ceiling(model_rdm, subjects).pct_nc


def baseline_rdm(kind: str, train_rdms: dict, train_subjects: np.ndarray, test_rdms: dict) -> np.ndarray:
    """The baseline fitted on the training images, applied to the test images' stage RDMs."""
    if kind == "layer":
        return test_rdms[baselines.select_best_layer(train_rdms, train_subjects)]
    return baselines.apply_nnls(baselines.fit_nnls(train_rdms, train_subjects), test_rdms)


def cut(stage_rdms: dict[str, np.ndarray], index: np.ndarray) -> dict[str, np.ndarray]:
    return {stage: rdm[np.ix_(index, index)] for stage, rdm in stage_rdms.items()}


def fold_score(kind: str, stage_rdms: dict, subjects: np.ndarray, folds: int = 4) -> float:
    n = subjects.shape[-1]
    scores = []
    for held in fold_indices(n, folds, seed=0):
        kept = np.setdiff1d(np.arange(n), held)
        model = baseline_rdm(kind, cut(stage_rdms, kept), subjects[..., kept[:, None], kept],
                             cut(stage_rdms, held))
        scores.append(percent(model, subjects[..., held[:, None], held]))
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("SIAMRDM_DATA", "../shared/algonauts2019"))
    args = parser.parse_args()
    sets = {name: load_algonauts_set(args.data, name) for name in ("92", "118")}
    rdms = {(body, name): prior.stage_rdms(s.images, body, None, BACKBONES[body].image_size)
            for body in BODIES for name, s in sets.items()}
    print("| target | body | baseline | folds | 92->118 | 118->92 | cross-set mean |")
    print("|---|---|---|---|---|---|---|")
    for target in TARGET_NAMES:
        for body in BODIES:
            for kind in KINDS:
                folds = np.mean([fold_score(kind, rdms[body, n], sets[n].targets[target]) for n in sets])
                cross = [percent(baseline_rdm(kind, rdms[body, a], sets[a].targets[target], rdms[body, b]),
                                 sets[b].targets[target]) for a, b in (("92", "118"), ("118", "92"))]
                print(f"| {target} | {body} | {kind} | {folds:.1f} | {cross[0]:.1f} | {cross[1]:.1f} | "
                      f"{np.mean(cross):.1f} |", flush=True)


if __name__ == "__main__":
    main()
