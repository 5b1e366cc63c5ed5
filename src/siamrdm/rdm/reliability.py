"""How reliable a target's subject RDMs are, measured before anything is trained on them.

A network trained on a group-mean RDM learns whatever that mean holds, reliable or not. When the subjects
disagree (the 118 set's IT: a split-half reliability near 0.1), what is learnt is mostly one study's noise and
per-image quirks, and training then un-learns what the pretrained network predicted. Three numbers say so
from the subjects alone, with no model:

- `split_half`: Spearman rho between the mean RDMs of two random halves of the subjects (mean over splits),
  and `reliability`, its Spearman-Brown projection to all subjects: how reproducible the training target is;
- `lower_ceiling_rho`: each subject against the mean of the others (Spearman), mean and standard error over
  subjects: the same unit as a model's signed mean rho, so a model can be read against it;
- `per_image_share`: the share of the group-mean RDM's variance that per-image effects d(i, j) ~ a_i + a_j
  explain, and `per_image_split_half`, how reproducible those effects are across subject halves. A large
  share that is not reproducible is structure a model can fit and that transfers nowhere;
- `pair_split_half`: the same for the pair structure (each half's mean RDM less its per-image part, `parts`):
  how reproducible what is left to learn for other studies is.

`UNRELIABLE_BELOW` is the rule for the warning: a target whose group-mean reliability is below it is too
noisy to learn from. It was set with the Algonauts sets' figures in view (RESULTS.md lists them): 0.17 for
the 118 set's IT, 0.38 or more for every other target of both sets.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DataError, printable
from ..io.datasets import (
    IMAGE_SETS,
    TARGET_NAMES,
    TARGETS,
    TRAINING_SETS,
    describe_data_root,
    resolve_data_root,
    target_file,
)
from ..io.images import load_image_set
from ..io.limits import check_read_size
from ..io.rdmfiles import list_rdm_keys, load_rdms
from ..io.rsafiles import check_rdm_names, rdm_grouping, read_rdm_names
from .core import subject_rdms, upper_tri
from .noise_ceiling import ceilings_for
from .parts import per_image_fit, per_image_share
from .transform import dot_vectors

UNRELIABLE_BELOW = 0.25  # Spearman-Brown split-half reliability of the group-mean RDM
SAMPLE_IMAGES = 300  # a large set's reliability is measured on this many of its images (a random sample)
SPLITS = 20


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(dot_vectors(a, "spearman") @ dot_vectors(b, "spearman"))


def target_reliability(target_rdms: np.ndarray, splits: int = SPLITS, seed: int = 0) -> dict:
    """The reliability summary of one target's subject RDMs ((S, N, N) or (S, K, N, N); K RDMs of a subject are
    averaged first). With one subject only the per-image share can be computed; the rest is None."""
    subjects = subject_rdms(np.asarray(target_rdms, dtype=np.float64))
    if subjects.ndim == 4:
        subjects = subjects.mean(axis=1)
    n = subjects.shape[-1]
    vectors = upper_tri(subjects)
    group = vectors.mean(axis=0)
    summary = {"subjects": len(vectors), "images": n, "split_half": None, "reliability": None,
               "per_image_share": per_image_share(group, n), "per_image_split_half": None,
               "pair_split_half": None, "lower_ceiling_rho": None, "lower_ceiling_rho_se": None, "reliable": None}
    if len(vectors) < 2:
        return summary
    lower = np.array([_spearman(vectors[k], np.delete(vectors, k, axis=0).mean(axis=0)) for k in range(len(vectors))])
    summary["lower_ceiling_rho"] = float(lower.mean())
    summary["lower_ceiling_rho_se"] = float(lower.std(ddof=1) / math.sqrt(len(lower))) if len(lower) > 1 else None
    rng = np.random.default_rng(seed)
    halves, image_halves, pair_halves = [], [], []
    for _ in range(splits):
        order = rng.permutation(len(vectors))
        a, b = vectors[order[: len(order) // 2]].mean(axis=0), vectors[order[len(order) // 2 :]].mean(axis=0)
        halves.append(_spearman(a, b))
        (effects_a, fitted_a), (effects_b, fitted_b) = per_image_fit(a, n), per_image_fit(b, n)
        image_halves.append(_spearman(effects_a, effects_b))
        pair_halves.append(_spearman(a - fitted_a, b - fitted_b))
    split_half = float(np.mean(halves))
    reliability = 2 * split_half / (1 + split_half) if split_half > -1 else -1.0
    summary.update(split_half=split_half, reliability=reliability, per_image_split_half=float(np.mean(image_halves)),
                   pair_split_half=float(np.mean(pair_halves)), reliable=reliability >= UNRELIABLE_BELOW)
    return summary


def reliability_line(name: str, summary: dict) -> str:
    """One line for a log: the figures, and a warning when the target is too unreliable to learn from."""
    if summary["reliability"] is None:
        return f"{name}: one subject, reliability unknown (per-image share {summary['per_image_share']:.2f})"
    text = (f"{name}: reliability {summary['reliability']:.2f} (split-half {summary['split_half']:.2f}, "
            f"{summary['subjects']} subjects), lower ceiling rho {summary['lower_ceiling_rho']:.3f} "
            f"+- {summary['lower_ceiling_rho_se'] or 0:.3f}, per-image share {summary['per_image_share']:.2f} "
            f"(split-half {summary['per_image_split_half']:.2f}), pair structure split-half "
            f"{summary['pair_split_half']:.2f}")
    if not summary["reliable"]:
        text += (f"; too unreliable to learn from (reliability below {UNRELIABLE_BELOW}): training on it is "
                 "unlikely to transfer, and the prior is kept unless validation shows a gain")
    return text


def report_reliability(datasets: Sequence, targets: Sequence[str], verbose: bool = True) -> dict[str, dict]:
    """The reliability of every training set's targets ('set/target' -> summary), measured before a run trains
    on them. Each is printed as one line to stderr when `verbose`; a target too unreliable to learn from is
    always printed, as a warning."""
    summaries = {}
    for dataset in datasets:
        for target in targets:
            if target not in dataset.targets:
                continue
            name = f"{dataset.name}/{target}"
            summaries[name] = summary = target_reliability(dataset.targets[target])
            print_reliability(name, summary, verbose)
    return summaries


def print_reliability(name: str, summary: dict, verbose: bool = True) -> None:
    """The summary's line on stderr when `verbose`; as a warning, always, when the target is too unreliable."""
    line = printable(reliability_line(name, summary))  # the name: a set's folder and a file's key
    if summary["reliable"] is False:
        print(f"siamrdm: warning: {line}", file=sys.stderr, flush=True)
    elif verbose:
        print(f"siamrdm: {line}", file=sys.stderr, flush=True)


def describe_root(data: str | os.PathLike | None = None) -> tuple[dict, list[str]]:
    """What `siamrdm data-info [--data ROOT]` prints: the Algonauts layout under the root (io.datasets), with
    "reliability" per 'set/target' measured on what can be read within the memory limit (the rest says why not),
    and the problems of the target files that are there, with the key and of a size to read, but whose values
    `fit` would refuse (a missing file or key, or one too large to read here, is only noted: a root may hold some
    targets)."""
    info = describe_data_root(data)
    info["reliability"] = {}
    root = resolve_data_root(data)
    unread = []
    for name in TRAINING_SETS:
        if name in info["sets"]:
            for target in TARGET_NAMES:
                key = TARGETS[target][1]
                try:
                    path = target_file(root / IMAGE_SETS[name][0], target)
                    shape = info["sets"][name]["rdm_files"].get(path.name, {}).get(key)
                    if shape is None:
                        raise DataError(f"{path}: no key {key} (needed for target {target})")
                    check_read_size(path, {key: tuple(shape)})
                except DataError as exc:
                    info["reliability"][f"{name}/{target}"] = {"not_measured": str(exc)}
                    continue
                entry = info["sets"][name]  # fit reads every image file of the folder: their count, RDMs of it
                try:
                    rdms = load_rdms(path, key, n_images=entry["images"] + len(entry.get("not_images", ())))
                except DataError as exc:
                    info["reliability"][f"{name}/{target}"] = {"not_measured": str(exc)}
                    unread.append(str(exc))
                    continue
                info["reliability"][f"{name}/{target}"] = target_reliability(rdms)
    return info, unread


def describe_own_data(images: str | os.PathLike, rdms: str | os.PathLike, key: str | None = None,
                      order: str | os.PathLike | Sequence[str] | None = None) -> dict:
    """What `siamrdm data-info --images DIR --rdms FILE` prints: your own images and RDMs checked against each
    other as `fit` will read them (the image count and names against the file's, the RDMs' shape, values and
    grouping), with each key's noise ceilings and reliability. Any mismatch raises the DataError `fit` would
    raise, before a run. Every key of the file is checked unless `key` names one."""
    image_set = load_image_set(images, order, size=1)  # decoded to check them, kept at a few pixels a side
    path = Path(rdms)
    keys = list(list_rdm_keys(path))
    chosen = keys if key is None else [key]  # load_rdms: a file of one unkeyed array takes any key as its name
    found = read_rdm_names(path)
    info: dict = {"images": {"source": str(image_set.source), "count": len(image_set), "names": image_set.names,
                             "order": "natural" if order is None else str(order) if isinstance(order, str | os.PathLike)
                             else "given"},
                  "rdms": {"file": str(path), "names": None, "keys": {}}}
    grouping = rdm_grouping(path)  # said in the description itself: load_rdms drops the reading notes
    for k in chosen:
        array = load_rdms(path, k, n_images=len(image_set))
        name = key if key is not None else k or path.stem
        ceilings = ceilings_for(name, array)
        file_key = k if k in keys else ""
        info["rdms"]["keys"][name] = {
            "shape": list(array.shape), "grouping": grouping.get(file_key),
            "ceiling_source": ceilings.source, "noise_ceiling": ceilings.upper, "noise_ceiling_lower": ceilings.lower,
            "reliability": target_reliability(array)}
    check_rdm_names(path, image_set.names, among=str(images))
    if found is not None:
        info["rdms"]["names"] = {"descriptor": found[0], "count": len(found[1]), "same_order": True}
    return info
