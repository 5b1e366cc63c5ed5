"""The Algonauts 2019 pipeline: validate across sets, train on 92 + 118, predict the 78 test images, submit.

For each target: fit on 92 scoring 118 after every epoch, and fit on 118 scoring 92 (cross-set validation,
since the test RDMs are held back). The models overfit a set within tens of epochs, so the number of epochs
is chosen on these curves: each direction is reported at the epoch that the *other* direction's curve
picked (so no reported score saw its own test set), and the final fit on both sets runs for the epoch count
that is best on the mean of the two curves. Writes the submission files, the validation table, the
curves, the settings and a report.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from . import plots
from .data import TARGETS, TRAINING_SETS, BrainDataset, load_algonauts_set, resolve_data_root, save_rdms, validate_rdms
from .files import atomic_path, check_run_folder, clear_run_folder, run_folder_lock, write_text
from .predict import fit_predictor
from .report import write_report
from .train import TrainConfig, Trainer, check_config, pick_device

SUBMISSION_FILES = {"submit_fmri.mat": ("EVC", "IT"), "submit_meg.mat": ("MEG_early", "MEG_late")}
VALIDATION_COLUMNS = ["method", "target", "direction", "r2", "pct_nc", "p", "noise_ceiling", "epochs"]


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
    """rows as CSV and as a markdown table (r2 to 4 decimals, percent to 1, p in scientific notation)."""
    with atomic_path(out_dir / f"{stem}.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=VALIDATION_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| method | target | direction | epochs | r2 | % of noise ceiling | p |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        pct = "-" if r["pct_nc"] is None else f"{r['pct_nc']:.1f}"
        lines.append(f"| {r['method']} | {r['target']} | {r['direction']} | {r.get('epochs', '-')} | {r['r2']:.4f} "
                     f"| {pct} | {r['p']:.2g} |")
    write_text(out_dir / f"{stem}.md", "\n".join(lines) + "\n")


def validation_curves(config: TrainConfig, sets: dict[str, BrainDataset], seeds: tuple[int, ...],
                      progress: bool = True) -> dict[str, list[dict]]:
    """Per direction ('92->118', '118->92'), per epoch: the validation score of the one target, seed-averaged.

    With a prior the curve starts at epoch 0 (the prior alone, before any step), so the chosen epoch count can
    be 0 when training does not improve on the baseline.
    """
    (target,) = config.targets
    curves = {}
    for train_name, test_name in (("92", "118"), ("118", "92")):
        per_seed = []
        for seed in seeds:
            trainer = Trainer(replace(config, seed=seed), [sets[train_name]], [sets[test_name]], progress=False)
            key, rows = f"{test_name}/{target}", []
            if trainer.priors:
                rows.append({"epoch": 0, "loss": trainer.validate_start()["loss"], **trainer.last_scores[key]})
            for _ in range(config.epochs):
                row = trainer.run_epoch()
                rows.append({"epoch": row["epoch"], "loss": row["loss"], **trainer.last_scores[key]})
            per_seed.append(rows)
        curves[f"{train_name}->{test_name}"] = [_mean_row([run[e] for run in per_seed])
                                                for e in range(len(per_seed[0]))]
    return curves


def _mean_row(rows: list[dict]) -> dict:
    """One epoch of a curve averaged over seeds: r2, percent of the ceiling, p and the training loss."""
    mean = {"epoch": rows[0]["epoch"], "noise_ceiling": rows[0]["noise_ceiling"]}
    for key in ("r2", "pct_nc", "p", "loss"):
        values = [r[key] for r in rows]
        mean[key] = None if any(v is None for v in values) else float(np.mean(values))
    return mean


def choose_epochs(curves: dict[str, list[dict]]) -> tuple[int, dict[str, int]]:
    """Best epoch count on the mean curve, and, per direction, the epoch the other direction picked."""
    pct = {d: np.array([row["pct_nc"] for row in c]) for d, c in curves.items()}
    epochs = [row["epoch"] for row in next(iter(curves.values()))]
    final = epochs[int(np.argmax(np.mean(list(pct.values()), axis=0)))]
    directions = list(pct)
    crossed = {d: epochs[int(np.argmax(pct[other]))] for d, other in zip(directions, directions[::-1], strict=True)}
    return final, crossed


def plot_validation_curves(target: str, curves: dict[str, list[dict]], path: Path) -> Path:
    """Training loss and cross-set % of the noise ceiling per epoch, both directions and their mean."""
    directions = list(curves)
    rows = []
    for e in range(len(curves[directions[0]])):
        losses = [curves[d][e]["loss"] for d in directions]
        row = {"epoch": curves[directions[0]][e]["epoch"],
               "loss": None if None in losses else float(np.mean(losses))}
        row.update({f"val/{d}": curves[d][e]["pct_nc"] for d in directions})
        row["val_pct_nc"] = float(np.mean([curves[d][e]["pct_nc"] for d in directions]))
        rows.append(row)
    return plots.plot_training_curves(rows, path, title=f"{target}: cross-set validation")


def with_epochs(config: TrainConfig, epochs: int) -> TrainConfig:
    """The config stopped after `epochs`, its schedule unchanged: epoch e of the final fit takes the same step,
    at the same learning rate, as epoch e of the validation curves it was chosen on."""
    return replace(config, stop_epoch=epochs)


def run_challenge(config: TrainConfig, root: str | os.PathLike | None, out_dir: str | os.PathLike,
                  targets: tuple[str, ...] = tuple(TARGETS), seeds: tuple[int, ...] = (0,),
                  validate: bool = True, progress: bool = True, overwrite: bool = False) -> dict:
    """Validate, train and predict for every target; returns the settings and validation rows written.

    Without `validate`, the final fits run the config's epochs in full. Everything is checked before the
    first file is written; an earlier run in `out_dir` is refused unless `overwrite` (then cleared first);
    the submission files are written last, so a killed run never leaves a submission beside other tables.
    """
    root = resolve_data_root(root)
    sets = {name: load_algonauts_set(root, name, targets) for name in TRAINING_SETS}
    test = load_algonauts_set(root, "78", ())
    check_config(config)
    out_dir = check_run_folder(out_dir, allow_existing=overwrite)
    with run_folder_lock(out_dir):
        if overwrite:
            clear_run_folder(out_dir)
        return _run_challenge(config, root, sets, test, out_dir, targets, seeds, validate, progress)


def _run_challenge(config: TrainConfig, root: Path, sets: dict[str, BrainDataset], test: BrainDataset,
                   out_dir: Path, targets: tuple[str, ...], seeds: tuple[int, ...], validate: bool,
                   progress: bool) -> dict:
    started = time.perf_counter()
    rows, predictions, fit_info, all_curves = [], {}, {}, {}
    for target in targets:
        target_config = replace(config, targets=(target,))
        epochs = target_config.epochs
        if validate:
            curves = all_curves[target] = validation_curves(target_config, sets, seeds, progress)
            epochs, crossed = choose_epochs(curves)
            for direction, epoch in crossed.items():
                row = next(r for r in curves[direction] if r["epoch"] == epoch)
                rows.append({"method": "siamese", "target": target, "direction": direction, **row,
                             "epochs": epoch})
            write_table(rows, out_dir, "validation")
            plot_validation_curves(target, curves, out_dir / f"{target}_validation_curves.png")
            write_text(out_dir / "validation_curves.json", json.dumps(all_curves, indent=1))
        predictor = fit_predictor(with_epochs(target_config, epochs), [sets[n] for n in TRAINING_SETS], seeds=seeds,
                                  out_dir=out_dir / target, progress=progress)
        predictions[target] = predictor.predict(test.images)[target]
        plots.plot_mds(predictions[target], test.images, out_dir / f"{target}_mds_78.png",
                       title=f"{target}: predicted RDM of the 78 test images (MDS)")
        fit_info[target] = {"epochs": epochs, **predictor.metrics}
    submission_files = [name for name, members in SUBMISSION_FILES.items() if any(t in targets for t in members)]
    settings = {
        "config": asdict(config), "targets": list(targets), "seeds": list(seeds), "data": str(root),
        "device": str(pick_device(config.device)), "torch": torch.__version__, "machine": platform.machine(),
        "threads": torch.get_num_threads(), "wall_s": round(time.perf_counter() - started, 1),
        "submission_files": submission_files, "fits": fit_info,
    }
    write_text(out_dir / "settings.json", json.dumps(settings, indent=2, default=str))
    write_report(out_dir)
    write_submissions(out_dir, predictions)
    return {"settings": settings, "validation": rows}
