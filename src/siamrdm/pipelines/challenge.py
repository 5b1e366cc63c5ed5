"""The Algonauts 2019 pipeline: choose on folds, report across sets, train on 92 + 118, predict the 78.

For each target, how long the model fitted on one set trains is chosen within that set, never on the pairs
reported: the set is split into image folds and its subjects into halves; the model is fitted on pairs among
the other folds' images (the first half's mean RDM) and scored, after every epoch, on pairs among the held-out
fold's images against the other half's subjects: new images in new people. The choice is the epoch of the
highest mean signed rho over subjects (`rho_mean`, chance level 0) on the folds' mean curve, among the prior
alone (epoch 0) and the trained epochs whose rho beats zero by 2 standard errors (`selection.best_epoch`).

Reported: cross-set validation, fit on 92 and score 118 after every epoch, and the other way round, each
direction at the epoch count its training set's folds chose. The final model, fitted on both sets, takes the
count those cross-set curves choose together by the same rule (`selection.final_epochs`: whole-set fits
scored on another study are the nearest to it). It predicts the 78
test images. Writes the submission files, the validation table, the curves, the settings and a report.
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError
from ..io import tables
from ..io.datasets import TARGETS, TRAINING_SETS, BrainDataset, load_algonauts_set, resolve_data_root
from ..io.files import check_run_folder, run_folder, run_mode, write_json, write_settings, write_text
from ..io.progress import Progress
from ..io.rdmfiles import save_rdms, validate_rdms
from ..rdm.core import square_rdm
from ..rdm.paired import paired_rows
from ..rdm.records import with_chance
from ..rdm.reliability import report_reliability
from ..rdm.splits import cross_set_splits
from ..train.config import TrainConfig, check_config, pick_device, purpose_text
from ..train.predict import fit_predictor
from ..train.selection import (
    choose_epochs,
    curves_by_set,
    final_epochs,
    naming_the_fit,
    selection_splits,
    validation_curves,
    with_epochs,
)
from . import plots
from .external import ExternalRDMs, bind_default, bind_to_sets, describe, external_row
from .methods import baseline_names
from .report import write_report

SUBMISSION_FILES = {"submit_fmri.mat": ("EVC", "IT"), "submit_meg.mat": ("MEG_early", "MEG_late")}
VALIDATION_COLUMNS = tables.SCORE_COLUMNS


def write_submissions(out_dir: str | os.PathLike, rdms: dict[str, np.ndarray]) -> list[Path]:
    """submit_fmri.mat (EVC_RDMs, IT_RDMs) and submit_meg.mat (MEG_RDMs_early, MEG_RDMs_late) for the targets
    present: float64, symmetric, zero diagonal, MATLAB v5 (what the challenge accepted)."""
    written = []
    for name, targets in SUBMISSION_FILES.items():
        present = {TARGETS[t][1]: rdms[t] for t in targets if t in rdms}
        if present:
            for key, rdm in present.items():
                validate_rdms(rdm, f"{name}:{key}")
            written.append(save_rdms(Path(out_dir) / name, present))
    return written


def write_table(rows: list[dict], out_dir: Path, stem: str) -> None:
    """rows as CSV (tables.SCORE_COLUMNS) and as a markdown table (tables.score_table: the score beside its
    chance level, p_perm and the signed mean rho), with the paired tests of each method against the baselines
    where there are some (paired.paired_rows, over each direction's subjects)."""
    tables.write_csv(rows, out_dir / f"{stem}.csv", VALIDATION_COLUMNS)
    text = tables.markdown(*tables.score_table(rows)) + "\n"
    paired = paired_rows(rows, baseline_names())
    if paired:
        text += f"\n## Paired tests against the baselines\n\n{tables.PAIRED_NOTE}\n\n"
        text += tables.markdown(*tables.paired_table(paired)) + "\n"
    write_text(out_dir / f"{stem}.md", text)


def chosen_row(curve: list[dict], epoch: int, test: BrainDataset, target: str) -> dict:
    """The reported epoch's row of a curve kept with its predictions, with its chance fields (this predicted
    RDM's image labels permuted, records.with_chance); the predictions are dropped from every row of the curve."""
    predictions = {row["epoch"]: row.pop("predicted") for row in curve}
    row = next(r for r in curve if r["epoch"] == epoch)
    model = square_rdm(predictions[epoch], len(test))
    return with_chance(row, model, test.targets[target])


def plot_validation_curves(target: str, curves: dict[str, list[dict]], path: Path, prior: bool,
                           used: dict[str, int] | None = None) -> Path:
    """Training loss and cross-set % of the noise ceiling per epoch, both directions and their mean, with the
    epochs `used` marked (label -> epoch: each direction's, chosen on its training set's folds, and the final
    fit's), not the curve's own best: the curves are held out from every choice. `prior`: whether the fits
    started from one (their epoch 0 is then the prior alone, else the untrained head)."""
    directions = list(curves)
    rows = []
    for e in range(len(curves[directions[0]])):
        losses = [curves[d][e]["loss"] for d in directions]
        row = {"epoch": curves[directions[0]][e]["epoch"],
               "loss": None if None in losses else float(np.mean(losses))}
        row.update({f"val/{d}": curves[d][e]["pct_nc"] for d in directions})
        row["val_pct_nc"] = float(np.mean([curves[d][e]["pct_nc"] for d in directions]))
        rows.append(row)
    return plots.plot_training_curves(rows, path, title=f"{target}: cross-set validation", marked=used,
                                      prior=prior)


def in_phase(progress: Progress, k: int, n: int, text: str, fn: Callable, *args):
    """`fn(*args)`, its phase line printed as it starts (in the worker process that runs it, with `jobs`)."""
    progress.phase(k, n, text)
    return fn(*args)


def run_jobs(fn: Callable, tasks: list[tuple], jobs: int = 1) -> list:
    """`fn(*task)` for every task, results in task order: in this process with one job, else in `jobs` spawned
    worker processes (each with its share of this process's torch threads). The fits of a challenge are
    independent and seeded, so both ways give the same results; `fn` must be a module-level function."""
    if jobs < 1:
        raise ConfigError("jobs", f"must be at least 1, got {jobs}")
    if jobs == 1 or len(tasks) < 2:
        return [fn(*task) for task in tasks]
    workers = min(jobs, len(tasks))
    threads = max(1, torch.get_num_threads() // workers)
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        return list(pool.map(fn, *zip(*tasks, strict=True)))


def final_fit(config: TrainConfig, train: list[BrainDataset], seeds: tuple[int, ...], out_dir: Path,
              test: BrainDataset, progress: bool) -> tuple[np.ndarray, dict]:
    """One target's final fit (model.pt in out_dir) and its predicted RDM of the test images, with the metrics."""
    with naming_the_fit(f"{config.targets[0]} final fit"):
        predictor = fit_predictor(config, train, seeds=seeds, out_dir=out_dir, progress=progress)
    return predictor.predict(test.images)[config.targets[0]], predictor.metrics


def run_challenge(config: TrainConfig, root: str | os.PathLike | None, out_dir: str | os.PathLike,
                  targets: tuple[str, ...] = tuple(TARGETS), seeds: tuple[int, ...] = (0,),
                  validate: bool = True, progress: bool | Progress = True, overwrite: bool = False,
                  jobs: int = 1, externals: tuple[ExternalRDMs, ...] = (), keep_prior: bool = True) -> dict:
    """Validate, train and predict for every target; returns the settings and validation rows written.

    Without `validate`, the final fits run the config's epochs (to its `stop_epoch`, where it sets one).
    Everything is checked before the first file is written; an earlier run in `out_dir` is refused unless
    `overwrite` (then cleared first by files.run_folder); the submission files are written last, so a killed
    run never leaves a submission beside other tables.
    With `jobs` > 1 the independent fits (every target and direction of the curves, then every target's final
    fit) run in that many worker processes, with the same results.
    `externals`: other studies' RDMs of a training set's images (external.load_external); each direction that
    predicts that set is also scored against them, baselines included. Without any, Kriegeskorte et al. (2008)
    scores the 92 set's IT when it lies beside the data root (`external.bind_default`). `keep_prior`: see
    `external.score_external`.
    With `progress` (progress.Progress.of), a line on stderr once the data are loaded and checked, one as each
    fit (k of n) starts, tqdm bars on a terminal, and a closing line naming the files written.
    """
    if jobs < 1:
        raise ConfigError("jobs", f"must be at least 1, got {jobs}")
    progress = Progress.of(progress, "challenge")
    root = resolve_data_root(root)
    loading = time.perf_counter()
    sets = {name: load_algonauts_set(root, name, targets) for name in TRAINING_SETS}
    test = load_algonauts_set(root, "78", ())
    externals = tuple(bind_to_sets(bind_default(externals, root, targets) if validate else externals,
                                   {d.name: d.images.names for d in sets.values()}))
    check_config(config)
    out_dir = check_run_folder(out_dir, run_mode(overwrite))
    # after every check: bad input stays one line on stderr
    progress.line(f"loaded {', '.join(f'{d.name} ({len(d)} images)' for d in (*sets.values(), test))} from {root} "
                  f"in {time.perf_counter() - loading:.1f} s; targets {', '.join(targets)}")
    reliability = report_reliability(list(sets.values()), targets, verbose=progress.lines)
    with run_folder(out_dir, "challenge", run_mode(overwrite)):
        result = _run_challenge(config, root, sets, test, out_dir, targets, seeds, validate, progress, jobs,
                                reliability, externals, keep_prior)
    files = [*result["settings"]["submission_files"], *(["validation.md"] if validate else []), "report.md"]
    progress.done(f"wrote {', '.join(files)} and {out_dir / 'report.html'}")
    return result


def _external_rows(externals: tuple[ExternalRDMs, ...], target: str, direction: str, test: BrainDataset,
                   predicted: dict[int, np.ndarray], epoch: int, keep_prior: bool, progress: Progress,
                   purpose: str = "") -> list[dict]:
    """A direction's reported epoch scored against each other study of its test images (external.external_row),
    the prior (the curve's epoch 0) in its place where the trained model is below it there."""
    studies = [e for e in externals if e.target == target]
    if not studies:
        return []
    model = square_rdm(predicted[epoch], len(test))
    prior = square_rdm(predicted[0], len(test)) if keep_prior and 0 in predicted else None
    rows = [external_row(e, "siamese", direction, test.images.names, model, prior, keep_prior, purpose, epoch,
                         progress)[0] for e in studies]
    return [row for row in rows if row is not None]


def _epochs_text(epochs: int, chosen: bool) -> str:
    if epochs == 0:
        return "0 epochs (the prior alone)"
    return f"{epochs} epoch{'s' if epochs != 1 else ''}" + (" (chosen on the cross-set curves)" if chosen else "")


def _seeds_text(seeds: tuple[int, ...]) -> str:
    return f"seed{'s' if len(seeds) > 1 else ''} {','.join(map(str, seeds))}"


def _run_challenge(config: TrainConfig, root: Path, sets: dict[str, BrainDataset], test: BrainDataset,
                   out_dir: Path, targets: tuple[str, ...], seeds: tuple[int, ...], validate: bool,
                   progress: Progress, jobs: int, reliability: dict, externals: tuple[ExternalRDMs, ...] = (),
                   keep_prior: bool = True) -> dict:
    started = time.perf_counter()
    bars = progress.bars and jobs == 1  # bars of several processes at once would garble each other
    rows, predictions, fit_info, all_curves = [], {}, {}, {}
    configs = {target: replace(config, targets=(target,)) for target in targets}
    epochs = {target: c.last_epoch for target, c in configs.items()}  # without validation: as the config ends
    if validate:
        splits = cross_set_splits(sets)
        directions = list(splits)  # the reported ones; the folds below only choose
        splits.update(selection_splits([sets[name] for name in TRAINING_SETS]))
        cells = [(target, label) for target in targets for label in splits]
    else:
        directions, cells = [], []
    total = len(cells) + len(targets) + bool(validate)  # the curves, the final fits, the baselines
    if validate:
        curves = run_jobs(in_phase, [(progress, k, total, f"curve {t} {label} ({_seeds_text(seeds)})",
                                      validation_curves, configs[t], {label: splits[label]}, seeds, bars,
                                      label in directions) for k, (t, label) in enumerate(cells, 1)], jobs)
        for (target, _), curve in zip(cells, curves, strict=True):
            all_curves.setdefault(target, {}).update(curve)
        for target in targets:
            per_set = choose_epochs(curves_by_set(all_curves[target], list(TRAINING_SETS)))
            epochs[target] = final_epochs([all_curves[target][d] for d in directions])
            for direction in directions:
                epoch, test_set = per_set[direction.split("->")[0]], splits[direction][1]
                predicted = {r["epoch"]: r["predicted"] for r in all_curves[target][direction]}
                row = chosen_row(all_curves[target][direction], epoch, test_set, target)
                rows.append({"method": "siamese", "target": target, "direction": direction, **row, "epochs": epoch,
                             "detail": purpose_text(config.per_image)})
                rows += _external_rows(externals, target, direction, test_set, predicted, epoch,
                                       keep_prior and config.prior != "none", progress, purpose_text(config.per_image))
            used = {**{d: per_set[d.split("->")[0]] for d in directions}, "final fit": epochs[target]}
            plot_validation_curves(target, {d: all_curves[target][d] for d in directions},
                                   out_dir / f"{target}_validation_curves.png", config.prior != "none", used)
        write_table(rows, out_dir, "validation")
        write_json(out_dir / "validation_curves.json", all_curves, indent=1)
    train = [sets[n] for n in TRAINING_SETS]
    fits = run_jobs(in_phase, [(progress, len(cells) + k, total, f"final fit {t} on {'+'.join(TRAINING_SETS)}, "
                                f"{_epochs_text(epochs[t], validate)} ({_seeds_text(seeds)})", final_fit,
                                with_epochs(configs[t], epochs[t]), train, seeds, out_dir / t, test, bars)
                               for k, t in enumerate(targets, 1)], jobs)
    for target, (prediction, metrics) in zip(targets, fits, strict=True):
        predictions[target] = prediction
        plots.plot_mds(prediction, test.images, out_dir / f"{target}_mds_78.png",
                       title=f"{target}: predicted RDM of the 78 test images (MDS)")
        fit_info[target] = {"epochs": epochs[target], **metrics}
    if validate:  # the paper's point: the pretrained network's own RDMs, fitted on the same sets, beside it
        from .evaluate import evaluate_sets

        progress.phase(total, total, f"baselines {', '.join(baseline_names())} on {', '.join(directions)}")
        rows += evaluate_sets(list(sets.values()), baseline_names(), targets, config, seeds,
                              progress=replace(progress.quiet_lines(), bars=bars), externals=externals).rows
        write_table(rows, out_dir, "validation")
    submission_files = [name for name, members in SUBMISSION_FILES.items() if any(t in targets for t in members)]
    settings = {
        "config": asdict(config), "targets": list(targets), "seeds": list(seeds), "data": str(root),
        "device": str(pick_device(config.device)), "torch": torch.__version__, "machine": platform.machine(),
        "threads": torch.get_num_threads(), "jobs": jobs, "wall_s": round(time.perf_counter() - started, 1),
        "submission_files": submission_files, "fits": fit_info, "reliability": reliability,
        "external": describe(externals), "keep_prior": keep_prior,
    }
    write_settings(out_dir, settings)
    write_report(out_dir)
    write_submissions(out_dir, predictions)
    return {"settings": settings, "validation": rows}
