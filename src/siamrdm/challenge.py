"""The Algonauts 2019 pipeline: validate across sets, train on 92 + 118, predict the 78 test images, submit.

For each target: fit on 92 and score on 118, fit on 118 and score on 92 (the validation the challenge's
held-back test RDMs do not allow), then fit on both sets and predict the 78 test images. Writes the
challenge's submission files, the validation table, the settings and a report.
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

from .data import TARGETS, TRAINING_SETS, load_algonauts_set, resolve_data_root, save_rdms, validate_rdms
from .predict import fit_predict, fit_predictor
from .scoring import percent_of_ceiling, reference_ceiling, score_rdm
from .train import TrainConfig, pick_device

SUBMISSION_FILES = {"submit_fmri.mat": ("EVC", "IT"), "submit_meg.mat": ("MEG_early", "MEG_late")}
VALIDATION_COLUMNS = ["method", "target", "direction", "r2", "pct_nc", "p", "noise_ceiling"]


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


def score_row(method: str, target: str, direction: str, predicted: np.ndarray, subjects: np.ndarray) -> dict:
    score = score_rdm(predicted, subjects)
    ceiling = reference_ceiling(target, subjects)
    return {"method": method, "target": target, "direction": direction, "r2": score.r2,
            "pct_nc": percent_of_ceiling(score.r2, ceiling), "p": score.p, "noise_ceiling": ceiling}


def write_table(rows: list[dict], out_dir: Path, stem: str) -> None:
    """rows as CSV and as a markdown table (r2 to 4 decimals, percent to 1, p in scientific notation)."""
    with open(out_dir / f"{stem}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=VALIDATION_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| method | target | direction | r2 | % of noise ceiling | p |", "|---|---|---|---|---|---|"]
    for r in rows:
        pct = "-" if r["pct_nc"] is None else f"{r['pct_nc']:.1f}"
        lines.append(f"| {r['method']} | {r['target']} | {r['direction']} | {r['r2']:.4f} | {pct} | {r['p']:.2g} |")
    (out_dir / f"{stem}.md").write_text("\n".join(lines) + "\n")


def run_challenge(config: TrainConfig, root: str | os.PathLike | None, out_dir: str | os.PathLike,
                  targets: tuple[str, ...] = tuple(TARGETS), seeds: tuple[int, ...] = (0,),
                  validate: bool = True, progress: bool = True) -> dict:
    """Validate, train and predict for every target; returns the settings and validation rows written."""
    root = resolve_data_root(root)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    sets = {name: load_algonauts_set(root, name, targets) for name in TRAINING_SETS}
    test = load_algonauts_set(root, "78", ())
    started = time.perf_counter()
    rows, predictions, fit_info = [], {}, {}
    for target in targets:
        target_config = replace(config, targets=(target,))
        if validate:
            for train_name, test_name in (("92", "118"), ("118", "92")):
                predicted = fit_predict(target_config, [sets[train_name]], sets[test_name].images, seeds,
                                        progress=progress)[target]
                rows.append(score_row("siamese", target, f"{train_name}->{test_name}", predicted,
                                      sets[test_name].targets[target]))
            write_table(rows, out_dir, "validation")
        predictor = fit_predictor(target_config, [sets[n] for n in TRAINING_SETS], seeds=seeds,
                                  out_dir=out_dir / target, progress=progress)
        predictions[target] = predictor.predict(test.images)[target]
        fit_info[target] = predictor.metrics
    files = write_submissions(out_dir, predictions)
    settings = {
        "config": asdict(config), "targets": list(targets), "seeds": list(seeds), "data": str(root),
        "device": str(pick_device(config.device)), "torch": torch.__version__, "machine": platform.machine(),
        "threads": torch.get_num_threads(), "wall_s": round(time.perf_counter() - started, 1),
        "submission_files": [p.name for p in files], "fits": fit_info,
    }
    (out_dir / "settings.json").write_text(json.dumps(settings, indent=2, default=str))
    return {"settings": settings, "validation": rows}
