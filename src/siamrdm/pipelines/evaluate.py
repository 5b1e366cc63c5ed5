"""Cross-set evaluation: fit on one training set, score on the other, for every method and target.

The paper's claim is that end-to-end training beats a pretrained network's stage RDMs and regressions on them.
`evaluate_sets` checks it: for each ordered pair of image sets (92 -> 118 and 118 -> 92) and each target,

every registered method (`methods.REGISTRY`: siamese, layers, regression, frrsa; see there) is fitted on the
first set only and predicts the second set's RDM.

The stage RDMs are computed once per image set and shared by the methods that read them. Every score is the official
metric against the held-out set's subjects. `write_evaluation` writes the table (markdown, CSV, JSON), the
predictions and the plots.

Your own data is usually one image set, so `evaluate_folds` cross-validates over images instead: the images
are split into k folds (`splits.fold_splits`), every method is fitted on the pairs among the other folds'
images and scored on the pairs among the held-out fold's images, against the held-out images' subjects, over
the ceiling that belongs to them (computed from those subjects; none for a single group RDM, then r2 alone).
"""

from __future__ import annotations

import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..io import tables
from ..io.datasets import TARGET_NAMES, TRAINING_SETS, BrainDataset, load_algonauts_set, target_key
from ..io.files import atomic_path, write_json, write_settings, write_text
from ..io.images import IMAGE_ORDER_FILE
from ..io.jsonfiles import json_safe
from ..io.progress import Phases, Progress
from ..io.rdmfiles import save_rdms
from ..io.tables import fmt, number
from ..model import baselines, frrsa
from ..model.backbones import backbone_stages, create_body
from ..rdm.core import group_average, rescale
from ..rdm.inference import mean_summary
from ..rdm.noise_ceiling import NO_CEILING_NOTE
from ..rdm.paired import paired_rows
from ..rdm.records import prediction_record
from ..rdm.splits import direction_label, fold_splits
from ..train.config import purpose_text
from ..train.fullbatch import TrainConfig, config_from_preset, group_target
from . import plots
from .external import ExternalRDMs, bind_to_sets, describe, external_row
from .methods import METHODS, MethodContext, Prediction, baseline_names, check_methods, get_method, uses

COLUMNS = tables.SCORE_COLUMNS


@dataclass
class Evaluation(tables.Record):
    """Rows of the table, the held-out predictions behind them, and what the baselines chose. A record as every
    result is: `to_dict()` what evaluation.json holds, `to_frame()` the table."""

    rows: list[dict]
    predictions: dict[tuple[str, str, str], np.ndarray]  # (method, target, direction) -> RDM of the test images
    # method -> direction -> target -> what it chose on the training set (layers: the stage and every stage's
    # scores; regression: weights, intercept, residual; frrsa: stages, penalty, inner-fold scores)
    chosen: dict[str, dict] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)  # per method, and "layer_rdms"
    held_out: dict[str, BrainDataset] = field(default_factory=dict)  # image folds: direction -> held-out images

    @property
    def layers(self) -> dict:
        """What `layers` chose: direction -> target -> the stage and every stage's scores."""
        return self.chosen.setdefault("layers", {})

    @property
    def regression(self) -> dict:
        """What `regression` fitted: direction -> target -> weights, intercept, residual."""
        return self.chosen.setdefault("regression", {})

    def to_dict(self) -> dict:
        """What evaluation.json holds but the run's settings, as strict JSON values (NaN and inf as None, arrays as
        lists): the rows, the paired tests, what each method chose, the seconds and, for image folds, each fold's
        held-out images. Not the predictions: they are arrays of N x N (predictions.npz)."""
        values = {"rows": self.rows, "paired": self.paired(), "layers": self.layers, "regression": self.regression,
                  **self.chosen, "seconds": self.seconds}
        if self.held_out:
            values["folds"] = {label: d.images.names for label, d in self.held_out.items()}
        return json_safe(values)

    def to_frame(self):
        """The rows as a pandas DataFrame with the columns of `tables.SCORE_COLUMNS`."""
        return tables.to_frame(self.rows, COLUMNS)

    def paired(self) -> list[dict]:
        """Each method against each baseline (paired.paired_rows: over subjects; for image folds also over
        the folds), the rows of `tables.PAIRED_COLUMNS`."""
        return paired_rows(self.rows, baseline_names())

    def paired_frame(self):
        """`paired` as a pandas DataFrame with the columns of `tables.PAIRED_COLUMNS`."""
        return tables.to_frame(self.paired(), tables.PAIRED_COLUMNS)


def check_bodies(bodies: tuple[str, ...], weights: str | None, option: str = "backbones") -> None:
    """Every body a baseline will build, with its weights, built once before any set is read or folder made:
    one it cannot have is refused as the `option` that named it (`backbones`, or `backbone` for one body). So are
    pretrained weights one of several bodies cannot get, when no weights were given: `--weights`, one file for
    one model, is not the remedy there."""
    for body in bodies:
        try:
            create_body(body, weights, stage=backbone_stages(body)[-1])
        except ConfigError as exc:
            if exc.option == "backbone" or (exc.option == "weights" and weights is None and option == "backbones"):
                raise ConfigError(option, exc.problem) from None
            raise


def _slug(text: str) -> str:
    return text.replace("->", "to").replace("/", "_").replace(" ", "_")


def _row(method: str, target: str, direction: str, predicted: np.ndarray, subjects: np.ndarray, detail: str = "",
         key: str | None = None) -> dict:
    """The score record of one prediction (records.prediction_record, its chance fields on by default where cheap;
    a diverged one scores NaN); `key` names the target for its ceiling (datasets.target_key), `target` as the
    tables show it."""
    return {"method": method, "target": target, "direction": direction,
            **prediction_record(predicted, subjects, key or target).to_dict(),
            "detail": detail}


# --------------------------------------------------------------------------- the registered methods' code
# (methods.REGISTRY names these functions; each is fitted on `train` alone and predicts `test`'s RDM)


def predict_siamese(train: BrainDataset, test: BrainDataset, target: str, context: MethodContext) -> Prediction:
    """Trained on `train` alone, its epoch count chosen on folds of `train` (selection.select_epochs), as the
    challenge chooses it: nested inside evaluate's own folds, so the held-out images choose nothing."""
    from ..train.predict import fit_predictor  # the training code; imported late to keep this module light
    from ..train.selection import select_epochs, with_epochs

    config = replace(context.config, targets=(target,))
    epochs, _ = select_epochs(config, [train], context.seeds)
    fitted = config if epochs is None else with_epochs(config, epochs)
    bars = context.progress.bars if context.progress is not None else False
    predictor = fit_predictor(fitted, [train], (), context.seeds, progress=bars)
    predicted = predictor.predict(test.images)[target]
    prior = predictor.predict_prior(test.images)
    chosen = (f"epochs chosen on {train.name}'s folds" if epochs is not None
              else f"all {config.last_epoch} epochs ({train.name} has too few images to choose on folds)")
    detail = f"seeds={','.join(map(str, context.seeds))}; {chosen}; {purpose_text(config.per_image)}"
    return Prediction(predicted, detail,
                      epochs=config.last_epoch if epochs is None else epochs,
                      prior=None if prior is None else prior[target])


def predict_layers(train: BrainDataset, test: BrainDataset, target: str, context: MethodContext) -> Prediction:
    stages = context.stages
    train_scores = baselines.layer_scores(stages[train.name], train.targets[target])
    stage = baselines.select_best_layer(stages[train.name], train.targets[target])
    test_scores = baselines.layer_scores(stages[test.name], test.targets[target])
    chosen = {"chosen": stage, "train_r2": {s: v.r2 for s, v in train_scores.items()},
              "test_r2": {s: v.r2 for s, v in test_scores.items()}}
    return Prediction(stages[test.name][stage], f"stage={stage}", chosen)


def predict_regression(train: BrainDataset, test: BrainDataset, target: str, context: MethodContext) -> Prediction:
    fit = baselines.fit_nnls(context.stages[train.name], train.targets[target])
    detail = " ".join(f"{s}:{w:.3g}" for s, w in fit.weights.items() if w > 0)
    return Prediction(baselines.apply_nnls(fit, context.stages[test.name]), detail, asdict(fit))


def _features(dataset: BrainDataset, context: MethodContext) -> dict[str, np.ndarray]:
    """The stage features (channels averaged over space) of a set's images, cached per image set (model.prior)."""
    from ..model.prior import stage_features

    c = context.config
    bars = bool(context.progress is not None and context.progress.bars)
    return stage_features(dataset.images, c.backbone, c.weights, c.image_size, bars, context.batch_size)


def training_target(train: BrainDataset, target: str, config: TrainConfig) -> np.ndarray:
    """The training pairs' values the Siamese network learns (fullbatch.group_target, then `config.rescale`)."""
    return rescale(group_target(train.targets[target], config.group_target), config.rescale)[0]


def predict_frrsa(train: BrainDataset, test: BrainDataset, target: str, context: MethodContext) -> Prediction:
    """Fitted to the training target the Siamese network learns, on the training images' features (z-scored on
    them), the stages and penalty chosen on inner folds of the training images."""
    fit = frrsa.fit_frrsa(_features(train, context), training_target(train, target, context.config),
                          seed=context.seeds[0] if context.seeds else 0)
    detail = "; ".join([f"stages={fit.label}", f"penalty={fit.penalty:g}", fit.predictor,
                        f"{np.count_nonzero(fit.weights)}/{len(fit.weights)} weights > 0", *fit.notes])
    return Prediction(frrsa.apply_frrsa(fit, _features(test, context)), detail, fit.summary())


def _predict(result: Evaluation, method: str, target: str, direction: str, train: BrainDataset,
             test: BrainDataset, context: MethodContext, externals: tuple[ExternalRDMs, ...] = (),
             keep_prior: bool = True) -> None:
    """One registered method fitted on `train` only (methods.REGISTRY), its RDM of `test`'s images scored against
    `test`'s subjects: a row, the prediction, and what it chose (`Evaluation.chosen`). The same prediction is
    scored against each other study (`externals`) that covers the test images (external.external_row)."""
    prediction = get_method(method).predict(train, test, target, context)
    predicted, detail, epochs = prediction.rdm, prediction.detail, prediction.epochs
    if prediction.chosen is not None:
        result.chosen.setdefault(method, {}).setdefault(direction, {})[target] = prediction.chosen
    result.predictions[(method, target, direction)] = predicted
    key = target_key(target, test.official)
    row = _row(method, target, direction, predicted, test.targets[target], detail, key)
    result.rows.append({**row, "epochs": epochs})
    for external in externals:
        if external.target == target:
            row, used = external_row(external, method, direction, test.images.names, predicted, prediction.prior,
                                     keep_prior, detail, epochs, context.progress)
            if row is not None:
                result.predictions[(method, external.column, direction)] = used
                result.rows.append(row)


def evaluate_sets(sets: list[BrainDataset], methods: tuple[str, ...] = METHODS,
                  targets: tuple[str, ...] = TARGET_NAMES, config: TrainConfig | None = None,
                  seeds: tuple[int, ...] = (0,), batch_size: int = 16,
                  progress: bool | Progress = True, externals: tuple[ExternalRDMs, ...] = (),
                  keep_prior: bool = True) -> Evaluation:
    """Every method fitted on each set and scored on each other set, for every target.

    `externals` (external.load_external) are other studies' RDMs of one set's images: each direction that
    predicts that set is also scored against them (external.external_row, and `keep_prior` there).

    `config` gives the Siamese training settings and, for the baselines too, the backbone, its weights and the
    image size, so all methods see the same body. Rows are ordered by method, target, direction. With
    `progress` (progress.Progress.of), a line on stderr as each phase (k of n) starts, and bars on a terminal.
    """
    progress = Progress.of(progress, "evaluate")
    config = config or config_from_preset("quick")
    check_methods(methods)
    if len(sets) < 2:
        raise DataError("cross-set evaluation needs at least two image sets")
    for dataset in sets:
        dataset.check_targets(targets)
    pairs = [(a, b) for a in sets for b in sets if a is not b]
    externals = tuple(bind_to_sets(externals, {d.name: d.images.names for d in sets}))
    result = Evaluation([], {})
    baselines_too = uses(methods, "stage_rdms")
    phases = Phases(progress, baselines_too + len(methods) * len(targets) * len(pairs))
    context = MethodContext(config, seeds, progress, batch_size)
    if baselines_too:
        from ..model.prior import stage_rdms as cached_stage_rdms  # the prior's per-process cache of stage RDMs

        phases.start(f"stage RDMs of {config.backbone} for {', '.join(d.name for d in sets)}")
        start = time.perf_counter()
        for dataset in sets:
            context.stages[dataset.name] = cached_stage_rdms(dataset.images, config.backbone, config.weights,
                                                             config.image_size, progress.bars, batch_size)
        result.seconds["layer_rdms"] = time.perf_counter() - start

    for method in methods:
        start = time.perf_counter()
        for target in targets:
            for train, test in pairs:
                direction = direction_label(train.name, test.name)
                phases.start(f"{target} {direction}: {method}")
                _predict(result, method, target, direction, train, test, context, externals, keep_prior)
        result.seconds[method] = time.perf_counter() - start
    return result


def compare_bodies(sets: list[BrainDataset], backbones: tuple[str, ...], method: str = "layers",
                   targets: tuple[str, ...] = TARGET_NAMES, config: TrainConfig | None = None, batch_size: int = 16,
                   progress: bool | Progress = True) -> Evaluation:
    """A baseline (`methods.baseline_names`) of several bodies in one table: `evaluate_sets` once per body, each
    row's method named `METHOD: BODY`, so the tables, rankings and plots show the bodies side by side. What each
    baseline chose (`layers`, `regression`) is kept per body, by that name."""
    if method not in baseline_names():
        raise DataError(f"bodies are compared on a baseline ({', '.join(baseline_names())}), not {method}")
    config = config or config_from_preset("quick")
    merged = Evaluation([], {})
    for backbone in backbones:
        label = f"{method}: {backbone}"
        result = evaluate_sets(sets, (method,), targets, replace(config, backbone=backbone), batch_size=batch_size,
                               progress=progress)
        merged.rows += [{**row, "method": label} for row in result.rows]
        merged.predictions.update({(label, t, d): rdm for (_, t, d), rdm in result.predictions.items()})
        for name, chosen in result.chosen.items():
            if chosen:
                merged.chosen.setdefault(name, {})[label] = chosen
        merged.seconds.update({f"{key}: {backbone}": value for key, value in result.seconds.items()})
    return merged


def evaluate_folds(dataset: BrainDataset, folds: int = 5, methods: tuple[str, ...] = METHODS,
                   config: TrainConfig | None = None, seeds: tuple[int, ...] = (0,), fold_seed: int = 0,
                   progress: bool | Progress = True, externals: tuple[ExternalRDMs, ...] = (),
                   keep_prior: bool = True) -> Evaluation:
    """Cross-validation over the images of one set (your own data), for every method and target.

    The images are split into `folds` folds (`splits.fold_splits`, seeded by `fold_seed`); for each fold,
    every method is fitted on the pairs among the other folds' images and scored on the pairs among the held-out
    images: the Siamese network trained with `config` (its prior fitted on the training images too), the
    stage whose RDM scores best on the training images, and NNLS weights of the stage RDMs fitted on them.
    Rows are ordered by method, target, fold ('fold 1', ...); `held_out` maps each fold to its images. With
    `progress`, phase lines on stderr ('evaluate [2/5] fold 2: siamese V4') and bars on a terminal.
    `externals`: other studies' RDMs of these images, in their order; each fold's held-out predictions are also
    scored against their held-out images' part (external.external_row).
    """
    from ..model.prior import stage_rdms

    progress = Progress.of(progress, "evaluate")
    config = config or config_from_preset("quick")
    check_methods(methods)
    if len(set(dataset.images.names)) != len(dataset):
        raise DataError(f"{dataset.images.source}: image names repeat; folds need one name per image")
    externals = tuple(e.bind(dataset.images.names) for e in externals)
    splits = {f"fold {k + 1}": pair for k, pair in enumerate(fold_splits(dataset, folds, fold_seed).values())}
    result = Evaluation([], {}, held_out={label: test for label, (_, test) in splits.items()})
    context = MethodContext(config, seeds, progress)
    rdms_too, features_too = uses(methods, "stage_rdms"), uses(methods, "stage_features")
    phases = Phases(progress, (rdms_too or features_too) + len(methods) * len(dataset.targets) * len(splits))
    if rdms_too or features_too:
        what = " and ".join(w for w, on in (("stage RDMs", rdms_too), ("stage features", features_too)) if on)
        phases.start(f"{what} of {config.backbone} for the {len(dataset)} images")
        start = time.perf_counter()
        args = (config.backbone, config.weights, config.image_size)
        if features_too:  # once for all images: the folds' are cut from them
            _features(dataset, context)
        if rdms_too:
            stage_rdms(dataset.images, *args, progress=progress.bars)  # once for all images, as the features
            for train, test in splits.values():
                context.stages[train.name] = stage_rdms(train.images, *args)
                context.stages[test.name] = stage_rdms(test.images, *args)
        result.seconds["layer_rdms"] = time.perf_counter() - start
    for method in methods:
        start = time.perf_counter()
        for target in dataset.targets:
            for label, (train, test) in splits.items():
                phases.start(f"{label}: {method} {target}")
                _predict(result, method, target, label, train, test, context, externals, keep_prior)
        result.seconds[method] = time.perf_counter() - start
    return result


# --------------------------------------------------------------------------- output


def markdown_table(rows: list[dict]) -> str:
    """The full table: one line per method, target and direction, each score beside this prediction's chance
    level, p_perm and signed mean rho (tables.score_table)."""
    return tables.markdown(*tables.score_table(rows))


def summary_table(rows: list[dict]) -> str:
    """Percent of the noise ceiling, methods down, target and direction across: the claim at a glance."""
    return tables.markdown(*tables.summary(rows))


def _ceiling_used(rows: list[dict]) -> str:
    """How the rows' scores were scaled: the ceiling's source, its mean upper (and lower) value, or none."""
    sources = sorted({str(r.get("ceiling_source")) for r in rows})
    if sources == ["None"]:
        return "none: " + NO_CEILING_NOTE
    uppers = [r["noise_ceiling"] for r in rows if r.get("noise_ceiling") is not None]
    lowers = [r["noise_ceiling_lower"] for r in rows if r.get("noise_ceiling_lower") is not None]
    text = f"{'/'.join(sources)} upper {fmt(float(np.mean(uppers)), '.4f')}"
    return text + (f", lower {fmt(float(np.mean(lowers)), '.4f')}" if lowers else "") + " (mean over folds)"


def fold_table(rows: list[dict]) -> str:
    """Per method and target: the mean over folds with its standard error and 95% bootstrap interval over the
    folds (inference.mean_summary), and every fold's score, as percent of the noise ceiling when every fold has one
    (else r2), and the ceiling used."""
    folds = list(dict.fromkeys(r["direction"] for r in rows))
    header = ["method", "target", "score", "mean +- se", "95% CI (folds)", *folds, "rho mean +- se (folds)",
              "rho per fold", "ceiling used"]
    body = []
    for method, target in dict.fromkeys((r["method"], r["target"]) for r in rows):
        group = [r for r in rows if r["method"] == method and r["target"] == target]
        measure = "pct_nc" if all(r["pct_nc"] is not None for r in group) else "r2"
        by_fold = {r["direction"]: r[measure] for r in group}
        values = [by_fold.get(f) for f in folds]
        finite = [v for v in values if v is not None and math.isfinite(v)]
        spec = ".1f" if measure == "pct_nc" else ".4f"
        stats = mean_summary(finite)
        interval = "-" if stats["ci_low"] is None else f"[{fmt(stats['ci_low'], spec)}, {fmt(stats['ci_high'], spec)}]"
        rhos = [number(r.get("rho_mean")) for r in group]
        signed = mean_summary([v for v in rhos if v is not None])
        body.append([method, target, "% of noise ceiling" if measure == "pct_nc" else "r2",
                     f"{fmt(stats['mean'], spec)} +- {fmt(stats['se'], spec)}", interval,
                     *(fmt(v, spec) for v in values), f"{fmt(signed['mean'], '+.3f')} +- {fmt(signed['se'], '.3f')}",
                     " ".join(fmt(v, "+.3f") for v in rhos), _ceiling_used(group)])
    return tables.markdown(header, body)


def summary(evaluation: Evaluation) -> str:
    """The claim at a glance: the fold table for image folds, the percent-of-ceiling table across sets."""
    return fold_table(evaluation.rows) if evaluation.held_out else summary_table(evaluation.rows)


def write_rows_csv(rows: list[dict], path: str | os.PathLike) -> Path:
    return tables.write_csv(rows, path, COLUMNS)


def _display_method(rows: list[dict], target: str, direction: str) -> str | None:
    """Which prediction the heatmap and MDS show: the Siamese one if there is one, else the best scoring."""
    candidates = [r for r in rows if r["target"] == target and r["direction"] == direction]
    if not candidates:
        return None
    if any(r["method"] == "siamese" for r in candidates):
        return "siamese"
    scored = [r for r in candidates if r["pct_nc"] is not None]
    return max(scored or candidates, key=lambda r: r["pct_nc"] or r["r2"])["method"]


def write_evaluation(evaluation: Evaluation, sets: list[BrainDataset], out_dir: str | os.PathLike,
                     settings: dict | None = None, make_plots: bool = True) -> dict[str, Path]:
    """evaluation.md, evaluation.csv, evaluation.json, predictions.npz and the plots into out_dir; for image
    folds, also each fold's predictions as an rsatoolbox RDMs file with the held-out images' names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = evaluation.rows
    paths: dict[str, Path] = {}
    paths["csv"] = write_rows_csv(rows, out / "evaluation.csv")
    if evaluation.held_out:
        md = ["# Image-fold cross-validation", "",
              "Each method is fitted on the pairs among the other folds' images and scored on the pairs among the "
              "held-out fold's images, against their subjects (mean over subjects of Spearman rho^2; percent of "
              "the noise ceiling computed from the held-out images' subjects, or r2 where there is none).", "",
              "## Per method: mean and per-fold score", "", fold_table(rows), ""]
    else:
        md = ["# Cross-set evaluation", "",
              "Fit on one image set, score on the other (official metric: mean over subjects of Spearman rho^2; "
              "percent of the noise ceiling).", "", "## Percent of the noise ceiling", "", summary_table(rows), ""]
    paired = evaluation.paired()
    if paired:
        md += ["## Paired tests against the baselines", "", tables.PAIRED_NOTE, "",
               tables.markdown(*tables.paired_table(paired)), ""]
    md += ["## Methods ranked by what beats chance", "",
           "Chance: each prediction scored with its image labels permuted (mean and 95th percentile); a row beats "
           "it when p_perm < 0.05. Ranked by the rows that beat chance, then by the mean signed rho.", "",
           tables.markdown(*tables.ranking_table(rows)), "", "## All scores", "", markdown_table(rows), ""]
    paths["md"] = out / "evaluation.md"
    write_text(paths["md"], "\n".join(md))
    payload = evaluation.to_dict()
    folds = payload.pop("folds", None)  # after the settings, as evaluation.json has always had it
    payload["settings"] = settings or {}
    if folds is not None:
        payload["folds"] = folds
    paths["json"] = out / "evaluation.json"
    write_json(paths["json"], payload, indent=2, default=str)
    if settings is not None:
        write_settings(out, settings)
    paths["predictions"] = out / "predictions.npz"
    with atomic_path(paths["predictions"]) as tmp:
        np.savez(tmp, **{f"{m}/{t}/{d}": rdm for (m, t, d), rdm in evaluation.predictions.items()})
    for label, test in evaluation.held_out.items():
        fold_rdms = {f"{m}/{t}": rdm for (m, t, d), rdm in evaluation.predictions.items() if d == label}
        if fold_rdms:
            paths[f"predictions_{_slug(label)}"] = save_rdms(out / f"predictions_{_slug(label)}.hdf5", fold_rdms,
                                                             names=test.images.names)
    if not make_plots or not rows:
        return paths
    with_ceiling = [r for r in rows if r["pct_nc"] is not None]
    title = "Image folds: held-out scores" if evaluation.held_out else None
    paths["scores_png"] = plots.plot_scores(with_ceiling or rows, out / "scores.png", title=title,
                                            measure="pct_nc" if with_ceiling else "r2")
    by_name = {d.name: d for d in sets}
    for target in dict.fromkeys(r["target"] for r in rows if " @ " not in r["target"]):  # other studies: tables only
        for direction in dict.fromkeys(r["direction"] for r in rows):
            method = _display_method(rows, target, direction)
            if method is None:
                continue
            test = evaluation.held_out.get(direction) or by_name[direction.split("->")[-1]]
            predicted = evaluation.predictions[(method, target, direction)]
            row = next(r for r in rows if (r["method"], r["target"], r["direction"]) == (method, target, direction))
            score = f"{fmt(row['pct_nc'], '.1f')}% NC" if row["pct_nc"] is not None else f"r2 {row['r2']:.3f}"
            label = f"{target}, {method} {direction} ({score})"
            stem = f"{target}_{_slug(direction)}"
            fitted = "held out, fitted on the other folds" if evaluation.held_out else f"fitted on {direction}"
            images = f"{direction} images" if evaluation.held_out else f"{test.name} images"
            paths[f"rdm_{stem}"] = plots.plot_rdm_comparison(
                group_average(test.targets[target]), predicted, out / f"rdm_{stem}.png", label,
                labels=(f"{target}, {images} (group mean)", f"{method}, {fitted}"))
            paths[f"mds_{stem}"] = plots.plot_mds(predicted, test.images, out / f"mds_{stem}.png",
                                                  title=f"MDS of the {label} RDM")
    return paths


def run_evaluation(root: str | os.PathLike | None, out_dir: str | os.PathLike,
                   methods: tuple[str, ...] = METHODS, targets: tuple[str, ...] = TARGET_NAMES,
                   config: TrainConfig | None = None, seeds: tuple[int, ...] = (0,), batch_size: int = 16,
                   progress: bool | Progress = True, make_plots: bool = True,
                   sets: list[BrainDataset] | None = None, externals: tuple[ExternalRDMs, ...] = (),
                   keep_prior: bool = True) -> tuple[Evaluation, dict[str, Path]]:
    """`siamrdm evaluate`: load the training sets (or use `sets`), evaluate, write everything to out_dir."""
    config = config or config_from_preset("quick")
    started = time.perf_counter()
    if sets is None:
        sets = [load_algonauts_set(root, name, targets) for name in TRAINING_SETS]
    evaluation = evaluate_sets(sets, methods, targets, config, seeds, batch_size, progress, externals, keep_prior)
    settings = {
        "command": "evaluate", "methods": list(methods), "targets": list(targets), "seeds": list(seeds),
        "external": describe(externals), "keep_prior": keep_prior,
        "sets": {d.name: len(d) for d in sets}, "data": None if root is None else str(root),
        "config": asdict(config), "batch_size": batch_size, "torch": torch.__version__,
        "threads": torch.get_num_threads(), "machine": platform.machine(),
        "seconds": {k: round(v, 1) for k, v in evaluation.seconds.items()},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    paths = write_evaluation(evaluation, sets, out_dir, settings, make_plots)
    return evaluation, paths


def run_fold_evaluation(dataset: BrainDataset, out_dir: str | os.PathLike, folds: int = 5,
                        methods: tuple[str, ...] = METHODS, config: TrainConfig | None = None,
                        seeds: tuple[int, ...] = (0,), fold_seed: int = 0, progress: bool | Progress = True,
                        make_plots: bool = True, inputs: dict | None = None, externals: tuple[ExternalRDMs, ...] = (),
                        keep_prior: bool = True) -> tuple[Evaluation, dict[str, Path]]:
    """`siamrdm evaluate --images ... --folds K`: cross-validate over the images, write everything to out_dir
    (with images.txt, the image order used). `inputs` (the image folder, RDM file, key, order file) go into
    settings.json."""
    config = config or config_from_preset("quick")
    started = time.perf_counter()
    evaluation = evaluate_folds(dataset, folds, methods, config, seeds, fold_seed, progress, externals, keep_prior)
    settings = {
        "command": "evaluate", "design": "image folds", "folds": folds, "fold_seed": fold_seed,
        "external": describe(externals), "keep_prior": keep_prior,
        "methods": list(methods), "targets": list(dataset.targets), "seeds": list(seeds),
        "images": len(dataset), **(inputs or {}), "config": asdict(config), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "machine": platform.machine(),
        "seconds": {k: round(v, 1) for k, v in evaluation.seconds.items()},
        "wall_s": round(time.perf_counter() - started, 1),
    }
    paths = write_evaluation(evaluation, [], out_dir, settings, make_plots)
    paths["images"] = write_text(Path(out_dir) / IMAGE_ORDER_FILE, "\n".join(dataset.images.names) + "\n")
    return evaluation, paths
