"""The `siamrdm` command: a thin layer over the library.

Exit codes: 0 success, 2 bad input or usage (one line on stderr, no traceback), 130 interrupted (Ctrl-C),
1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

import numpy as np

from .errors import ConfigError, DataError, printable
from .io.arrayfiles import read_npy
from .io.datasets import (
    DATA_ENV_VAR,
    IMAGE_SETS,
    TARGET_NAMES,
    TARGETS,
    TRAINING_SETS,
    BrainDataset,
    describe_data_root,
    load_algonauts_set,
    load_dataset,
    resolve_data_root,
    target_file,
    target_key,
)
from .io.files import json_safe
from .io.images import load_image_set, natural_key, pattern_names, shown_names
from .io.limits import check_read_size, check_real_dtype
from .io.rdmfiles import check_rdm_keys, load_rdm_dict, load_rdms, save_rdms, validate_rdms
from .io.rsafiles import check_rdm_names, read_rdm_names, take_notes
from .io.tables import fmt
from .pipelines.methods import method_names
from .rdm import reliability
from .rdm.compare import TargetError, spearman_rhos
from .rdm.core import upper_tri
from .rdm.inference import CHANCE_ALPHA, DEFAULT_PERMUTATIONS, PERMUTE_UP_TO_IMAGES
from .rdm.noise_ceiling import NO_CEILING_NOTE, noise_ceilings
from .rdm.records import score_row
from .rdm.reliability import (
    SAMPLE_IMAGES,
    print_reliability,
    reliability_line,
    report_reliability,
    target_reliability,
)
from .rdm.submission import score_condensed_submission, score_submission, shown_keys
from .rdm.transform import COMPARISON_METHODS, DOT_METHODS, OFFICIAL_METHOD


class UsageError(DataError):
    """A usage problem found after parsing (conflicting options); exits 2 like bad input."""


def _print_json(obj) -> None:
    """Strict JSON on stdout: NaN/inf become null, and allow_nan=False makes sure none slips through."""
    print(json.dumps(json_safe(obj), indent=2, allow_nan=False))


# --------------------------------------------------------------------------- foundation commands


# Permutations held at once by the test: 10**13 would ask for 72.8 TiB; 100,000 resolve p down to 1e-5.
MAX_PERMUTATIONS = 100_000


def _check_seed(flag: str, seed: int) -> int:
    """A seed option in the range numpy's and torch's generators take (0 <= seed < 2**32)."""
    from .rdm.inference import SEED_LIMIT

    if not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"{flag}: a seed must be 0 <= seed < 2**32 ({SEED_LIMIT}), got {seed}")
    return seed


def _check_range(flag: str, value: float | None, low: float, high: float | None = None) -> None:
    """A number option within [low, high] (high None: no upper bound), the bounds in the message."""
    if value is None:
        return
    if not (value >= low and (high is None or value <= high)):  # NaN fails both
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise UsageError(f"{flag}: must be {bound}, got {value}")


def _max_parallel() -> int:
    """The most threads or worker processes an option may ask for: 4 per core of this machine."""
    return 4 * (os.cpu_count() or 1)


def _check_method(args) -> str:
    """--method, checked before any work: permutation p-values need a dot-product method (--permutations left
    out: on by default where cheap, inference.default_permutations)."""
    if args.permutations is not None and not 0 <= args.permutations <= MAX_PERMUTATIONS:
        raise UsageError(f"--permutations must be between 0 (no permutation test) and {MAX_PERMUTATIONS}, got "
                         f"{args.permutations}")
    _check_seed("--seed", args.seed)
    if args.permutations and args.method not in DOT_METHODS:
        raise UsageError(f"--permutations works with --method {', '.join(DOT_METHODS)}, not {args.method}")
    if args.seed < 0:  # numpy's generators take no negative seed
        raise UsageError(f"--seed must be 0 or more, got {args.seed}")
    return args.method


def _mapped_npy(path: str) -> np.ndarray | None:
    """A .npy file, memory-mapped and never unpickled; None for a path that is not an existing .npy file."""
    if Path(path).suffix.lower() != ".npy" or not Path(path).is_file():
        return None
    try:
        return read_npy(path, mmap=True)
    except (ValueError, OSError, OverflowError) as exc:  # OverflowError: a header with a negative dimension
        raise DataError(f"{path}: unreadable .npy file ({' '.join(str(exc).split())[:160]})") from None


def _condensed_subjects(path: str) -> np.ndarray | None:
    """Subjects' upper triangles in a .npy file, (S, P) with P = N(N-1)/2 (not square), memory-mapped: the form
    of sets too large for square RDMs (10,000 images: 50 million pairs). None for any other file."""
    array = _mapped_npy(path)
    if array is None or array.ndim != 2 or array.shape[0] == array.shape[1]:
        return None
    n = (1 + math.isqrt(1 + 8 * array.shape[1])) // 2
    if n * (n - 1) // 2 != array.shape[1] or n < 3:
        raise DataError(f"{path}: {array.shape} {array.dtype} is neither square RDMs nor upper triangles "
                        "(subjects, N(N-1)/2)")
    check_real_dtype(array.dtype, path)  # integers and booleans are read as float64 a subject at a time
    return array


def _condensed_model(path: str, pairs: int) -> np.ndarray:
    """A model RDM for condensed subjects: its upper triangle (P,) or its square (N, N), in a .npy file."""
    if not Path(path).is_file():
        raise DataError(f"{path}: no such file")
    model = _mapped_npy(path)
    if model is None:
        raise DataError(f"{path}: the subjects are upper triangles in a .npy file, so the model must be a .npy "
                        "file too (its upper triangle, or its square RDM)")
    check_real_dtype(model.dtype, path)
    check_read_size(path, {"": model.shape})
    if model.ndim == 2 and model.shape[0] == model.shape[1]:  # checked as any square RDM file is
        model = upper_tri(validate_rdms(model, path, n_images=(1 + math.isqrt(1 + 8 * pairs)) // 2))
    if model.shape != (pairs,):
        raise DataError(f"{path}: model RDM has shape {model.shape} {model.dtype}; the subjects have {pairs} "
                        "pairs (give its upper triangle, or its square RDM)")
    model = np.asarray(model, dtype=np.float64)
    if np.isfinite(model).all() and np.ptp(model) == 0:  # refused, as a square one is
        raise DataError(f"{path}: the model RDM's upper triangle is constant (all dissimilarities "
                        f"{model[0]:.3g}), so its Spearman correlation is undefined")
    return model


@contextlib.contextmanager
def _blamed(submission: str, target: str):
    """A scoring error as a DataError naming the file it comes from: the target's (compare.TargetError: a subject
    or the subjects' mean) or else the submission's. Settings (ConfigError) keep their own name."""
    try:
        yield
    except ConfigError:
        raise
    except TargetError as exc:
        raise DataError(f"{target}: {exc}") from None
    except ValueError as exc:
        raise DataError(f"{submission}: {exc}") from None


def _chosen_key(keys: Sequence[str], key: str | None, flag: str, path: str) -> str | None:
    """The key `flag` names in a file: a key it holds, or, in a file of one array without a key (a .npy, an
    rsatoolbox file without a 'target'/'roi' descriptor), that array, which the option then names."""
    if key is None or key in keys or list(keys) == [""]:
        return None if key is None else key if key in keys else ""
    raise UsageError(f"{flag} {key}: {path} has no key '{key}' (keys: {shown_keys(keys)})")


def _paired_keys(args, submission: Sequence[str], targets: Sequence[str]) -> dict[str, tuple[str, str]]:
    """What `score` compares: name -> (submission key, target key). --key and --target-key choose one pair;
    without them, the keys the files share, or the one array of each when one file has no key. A pair is named
    by its target key, else by the key an option gave, else by the target file's stem: never by an empty key."""
    key = _chosen_key(submission, args.key, "--key", args.submission)
    target_key = _chosen_key(targets, args.target_key, "--target-key", args.target)
    if key is None and target_key is None:
        common = [k for k in submission if k in targets]
        if common:
            pairs = [(k, k) for k in common]
        elif len(submission) == len(targets) == 1 and "" in (*submission, *targets):
            pairs = [(next(iter(submission)), next(iter(targets)))]
        else:
            raise UsageError(f"no key in common between {args.submission} ({shown_keys(submission)}) and "
                             f"{args.target} ({shown_keys(targets)}): name the pair with --key and "
                             "--target-key")
    else:
        if key is None:
            key = target_key if target_key in submission else _only_key(submission, "--key", args.submission)
        if target_key is None:
            target_key = key if key in targets else _only_key(targets, "--target-key", args.target)
        pairs = [(key, target_key)]
    named = {}
    for sub_key, tgt_key in pairs:
        name = tgt_key or args.target_key or sub_key or args.key or Path(args.target).stem
        named[name] = (sub_key, tgt_key)
    return named


def _only_key(keys: Sequence[str], flag: str, path: str) -> str:
    if len(keys) != 1:
        raise UsageError(f"{flag}: {path} holds {shown_keys(keys)}; name the one to score")
    return next(iter(keys))


def _score_result(args, method: str) -> dict:
    subjects = _condensed_subjects(args.target)
    if subjects is not None:
        if args.permutations:
            raise UsageError("--permutations: not available for upper-triangle (.npy) subjects")
        model = _condensed_model(args.submission, subjects.shape[1])
        with _blamed(args.submission, args.target):
            return score_condensed_submission(
                model, subjects, args.target_key or args.key or Path(args.target).stem, method)
    targets = load_rdm_dict(args.target)
    n_images = next(iter(targets.values())).shape[-1]
    submission = load_rdm_dict(args.submission, n_images=n_images)
    named = read_rdm_names(args.target)
    if named is not None:  # both files name their images (rsatoolbox files): the same images, in the same order
        check_rdm_names(args.submission, named[1], among=str(args.target), order_settable=False)
    pairs = _paired_keys(args, list(submission), list(targets))
    chosen = {name: targets[t] for name, (_, t) in pairs.items()}
    if args.key is None and args.target_key is None:  # every target key is scored: one the submission lacks counts
        paired = {t for _, t in pairs.values()}
        chosen.update({key: rdms for key, rdms in targets.items() if key not in paired})
    with _blamed(args.submission, args.target):
        return score_submission({name: submission[s] for name, (s, _) in pairs.items()}, chosen,
                                        args.permutations, args.seed, method)


def cmd_score(args) -> int:
    method = _check_method(args)
    result = _score_result(args, method)
    missing = ", ".join(result.get("missing", []))
    if missing:  # a valid partial result (exit 0), but never mistaken for a complete one
        print(f"siamrdm: warning: {printable(args.submission)} lacks {printable(missing)} of "
              f"{printable(args.target)}; the overall score is withheld", file=sys.stderr)
    if args.json:
        _print_json(result)
        return 0
    rows = {key: row for key, row in result.items() if key not in ("score", "missing")}
    unit = "%" if all(row["noise_ceiling"] is not None for row in rows.values()) else "r2"
    print(f"{'key':<18} {'r2':>8} {'p':>10} {'p_signed':>10} {'p_perm':>10} {'ceiling':>8} {'% NC':>7} "
          f"{'chance' + unit:>9} {'chance95':>9} {'rho_mean+-se':>15} {'pair_rho+-se':>15} {'lower_rho':>9} "
          f"{'lower':>8}  source")
    for key, row in rows.items():
        scale = ("pct", ".2f") if unit == "%" else ("r2", ".4f")
        rho = f"{fmt(row['rho_mean'], '.3f')}+-{fmt(row['rho_se'], '.3f')}"
        pair = f"{fmt(row.get('pair_rho_mean'), '.3f')}+-{fmt(row.get('pair_rho_se'), '.3f')}"
        print(
            f"{printable(key):<18} {row['r2']:>8.4f} {fmt(row['p'], '.2e'):>10} {fmt(row['p_signed'], '.2e'):>10} "
            f"{fmt(row['p_perm'], '.2e'):>10} {fmt(row['noise_ceiling']):>8} {fmt(row['pct_nc'], '.2f'):>7} "
            f"{fmt(row[f'chance_{scale[0]}_mean'], scale[1]):>9} {fmt(row[f'chance_{scale[0]}_95'], scale[1]):>9} "
            f"{rho:>15} {pair:>15} {fmt(row['rho_lower_ceiling'], '.3f'):>9} {fmt(row['noise_ceiling_lower']):>8}  "
            f"{row['ceiling_source'] or 'none'}"
        )
    total = result["score"]
    if total is None:
        print(f"{'score':<18} withheld: the submission lacks {printable(missing)}")
    else:
        print(f"{'score':<18} {total['r2']:>8.4f} {'':>41} {fmt(total['pct_nc'], '.2f'):>7}")
    permuted = [row for row in rows.values() if row["permutations"]]
    if permuted:
        print(f"note: chance{unit} and chance95 are this model's score with its image labels permuted "
              f"({permuted[0]['permutations']} times): mean and 95th percentile; p_perm below {CHANCE_ALPHA} "
              "beats chance. rho_mean's chance level is 0; lower_rho is the lower noise ceiling in its unit; "
              "pair_rho is rho_mean of the pair structure alone (each RDM less its per-image part a_i + a_j)")
    if any(row["ceiling_source"] is None for row in rows.values()):
        print(f"note: {NO_CEILING_NOTE}")
    if method != OFFICIAL_METHOD:
        print(f"note: compared with '{method}' (rsatoolbox's name); r2 is the mean over subjects of its square, "
              "and the ceilings are computed with it")
    return 0


def cmd_noise_ceiling(args) -> int:
    subjects = _condensed_subjects(args.target)
    targets = {Path(args.target).stem: subjects} if subjects is not None else load_rdm_dict(args.target)
    result = {}
    for key, rdms in targets.items():
        try:  # r2 (the challenge's unit) and rho as (lower, upper), rsatoolbox's
            ceiling = noise_ceilings(rdms, args.method, condensed=subjects is not None)
        except ValueError as exc:  # fewer than 2 subjects, or a constant mean RDM
            raise DataError(f"{args.target}:{key}: {exc}") from None
        result[key or Path(args.target).stem] = {  # a key-less file: its stem
            "upper": ceiling.upper, "lower": ceiling.lower, "rho_lower": ceiling.rho_lower,
            "rho_upper": ceiling.rho_upper}
    if args.json:
        _print_json(result)
    else:
        print(f"{'key':<18} {'upper':>8} {'lower':>8} {'rho_lower':>9} {'rho_upper':>9}")
        for key, row in result.items():
            print(f"{printable(key):<18} {row['upper']:>8.4f} {row['lower']:>8.4f} {row['rho_lower']:>9.4f} "
                  f"{row['rho_upper']:>9.4f}")
        print("note: upper and lower in r2 (the challenge's unit); rho_lower, rho_upper: the same in rho, "
              "rsatoolbox's (lower, upper)")
    return 0


def _own_data_info(args) -> int:
    """data-info --images DIR --rdms FILE: your own data checked as fit reads it, before any run."""
    if not (args.images and args.rdms):
        raise UsageError("data-info checks your own data with both --images DIR and --rdms FILE")
    if args.data:
        raise UsageError("--data describes the Algonauts layout; --images and --rdms check your own data: give one")
    info = reliability.describe_own_data(args.images, args.rdms, args.key, args.order)
    if args.json:
        _print_json(info)
        return 0
    images, rdms = info["images"], info["rdms"]
    order = "natural order" if images["order"] == "natural" else f"order from {printable(images['order'])}"
    print(f"images: {images['count']} in {printable(images['source'])} ({shown_names(images['names'])}; {order})")
    names = rdms["names"]
    print(f"rdms: {printable(rdms['file'])}: " + (
        f"pattern descriptor '{names['descriptor']}' names the {names['count']} images, in the same order" if names
        else "names no images (its rows are taken in the images' order)"))
    for key, entry in rdms["keys"].items():
        if entry["grouping"]:
            print(f"  {printable(entry['grouping'])}")
        ceiling = (f"noise ceiling {fmt(entry['noise_ceiling'])} upper, {fmt(entry['noise_ceiling_lower'])} lower "
                   f"({entry['ceiling_source']})" if entry["ceiling_source"] else f"no noise ceiling: "
                   f"{NO_CEILING_NOTE}")
        print(f"  {printable(key)}: {tuple(entry['shape'])}, finite, symmetric, zero diagonal; {ceiling}")
        print(f"  {printable(reliability_line(key, entry['reliability']))}")
    print(printable(f"ok: fit reads these with --images {args.images} --rdms {args.rdms} --key "
                    f"{next(iter(rdms['keys']))}" + (f" --order {args.order}" if args.order else "")))
    return 0


def cmd_data_info(args) -> int:
    if args.images or args.rdms or args.key or args.order:
        return _own_data_info(args)
    info = describe_data_root(args.data)
    info["reliability"] = {}
    root = resolve_data_root(args.data)
    unread = []  # files that are there, with the key, of a size to read, that fit could not use: wrong values
    for name in TRAINING_SETS:  # what can be read within the memory limit; the rest says why not
        if name in info["sets"]:
            for target in TARGET_NAMES:
                key = TARGETS[target][1]
                try:  # a missing file or key (a root of some targets only), or too large to read here: noted only
                    path = target_file(root / IMAGE_SETS[name][0], target)
                    shape = info["sets"][name]["rdm_files"].get(path.name, {}).get(key)
                    if shape is None:
                        raise DataError(f"{path}: no key {key} (needed for target {target})")
                    check_read_size(path, {key: tuple(shape)})
                except DataError as exc:
                    info["reliability"][f"{name}/{target}"] = {"not_measured": str(exc)}
                    continue
                try:
                    rdms = load_rdms(path, key)
                except DataError as exc:
                    info["reliability"][f"{name}/{target}"] = {"not_measured": str(exc)}
                    unread.append(str(exc))
                    continue
                info["reliability"][f"{name}/{target}"] = target_reliability(rdms)
    if args.json:
        _print_json(info)
        return _unreadable_targets(unread)
    print(f"data root: {printable(info['root'])}")
    for name, entry in info["sets"].items():
        print(f"  {name}-image set: {entry['images']} images in {printable(entry['folder'])}")
        if entry.get("not_images"):
            print(f"    not images (PIL cannot read them): {printable(', '.join(entry['not_images']))}")
        for file, keys in entry["rdm_files"].items():
            shapes = ", ".join(f"{k} {tuple(v)}" for k, v in keys.items())
            print(f"    {printable(file)}: {printable(shapes)}")
    for name, summary in info["reliability"].items():
        if "not_measured" in summary:
            print(f"  {name}: reliability not measured ({printable(summary['not_measured'])})")
        else:
            print(f"  {reliability_line(name, summary)}")
    return _unreadable_targets(unread)


def _unreadable_targets(problems: list[str]) -> int:
    """data-info shows the whole root, then fails (exit 2) as `fit` would on a target file whose values it cannot
    use (a missing file or key, or one too large to read on this machine, is only noted: a root may hold some
    targets)."""
    if not problems:
        return 0
    more = f" (and {len(problems) - 1} more target files above)" if len(problems) > 1 else ""
    _error_line(f"{problems[0]}{more}")
    return 2


# --------------------------------------------------------------------------- model commands


def _list_option(value: str | None, flag: str, allowed: Sequence[str] | None = None, default: tuple = (),
                 convert: Callable | None = None, what: str = "values") -> tuple:
    """Every comma-separated option: `default` when not given; an empty entry, an entry given twice (after
    `convert`, so '0,00' are one seed twice) or one not in `allowed` is refused, naming the option."""
    if value is None:
        return default
    items = tuple(v.strip() for v in value.split(","))
    if not all(items):
        raise UsageError(f"{flag}: empty entry in '{value}' (give comma-separated {what})")
    if allowed is not None:
        unknown = [v for v in items if v not in allowed]
        if unknown:
            raise UsageError(f"{flag}: unknown {', '.join(unknown)} (choose from {', '.join(allowed)})")
    if convert is not None:
        try:
            items = tuple(convert(v) for v in items)
        except ValueError:
            raise UsageError(f"{flag}: expected comma-separated {what}, got '{value}'") from None
    repeated = list(dict.fromkeys(v for v in items if items.count(v) > 1))
    if repeated:
        raise UsageError(f"{flag}: {', '.join(map(str, repeated))} given more than once")
    return items


def _check_sets(flag: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """Algonauts sets to train or validate on: the training sets; the 78 test images have no RDMs."""
    for name in names:
        if name not in TRAINING_SETS:
            test = " is the test set, which has no RDMs" if name in IMAGE_SETS else ": no such training set"
            raise UsageError(f"{flag}: {name}{test} (training sets: {', '.join(TRAINING_SETS)})")
    return names


def _targets(args, default: tuple[str, ...]) -> tuple[str, ...]:
    """--targets: Algonauts targets, each once."""
    return _list_option(args.targets, "--targets", TARGET_NAMES, default, what="targets")


def _add_training_options(p: _Parser) -> None:
    """Options shared by every command that trains the Siamese network, added when that command is parsed:
    their choices come from torch-using modules, which `siamrdm --help` and `score` never import."""
    p.defer(lambda: _training_options(p))


def _backbone_argument(p: argparse.ArgumentParser, flag: str = "--backbone", default: str = "efficientnet_lite0",
                       help: str = "Siamese body") -> None:
    """A body option: a registered body's name, or a library model as timm:NAME or torchvision:NAME (`siamrdm
    bodies` lists them); whether the library has NAME is checked when the body is built."""
    from .model.backbones import BACKBONE_FAMILIES, BACKBONES

    def body(text: str) -> str:
        prefix, colon, model = text.partition(":")
        if text in BACKBONES or (colon and model and prefix in BACKBONE_FAMILIES):
            return text
        raise argparse.ArgumentTypeError(f"unknown body '{text}' (choose from {', '.join(BACKBONES)}, or a library "
                                         f"model as {' or '.join(f'{f}:NAME' for f in BACKBONE_FAMILIES)}; "
                                         "'siamrdm bodies' lists them)")

    names = [*sorted(BACKBONES), *(f"{family}:NAME" for family in BACKBONE_FAMILIES)]
    p.add_argument(flag, default=default, type=body, metavar="{" + ",".join(names) + "}",
                   help=help if default is None else f"{help} (default: {default})")


def _training_options(p: argparse.ArgumentParser) -> None:
    from .model.network import HEADS
    from .model.prior import PRIORS
    from .train.config import GROUP_TARGETS, LOSSES, PER_IMAGE, PRECISIONS, SET_WEIGHTS
    from .train.fullbatch import PRESETS

    p.add_argument("--preset", default="quick", choices=sorted(PRESETS), help="training schedule (default: quick)")
    _backbone_argument(p)
    p.add_argument("--stage", help="backbone stage that feeds the head (default: the backbone's)")
    p.add_argument("--head", choices=sorted(HEADS), help="head variant: paper (the paper's text, default) or "
                   "pairwise (the authors' released code)")
    p.add_argument("--weights", help="body weights: a state_dict file, or 'random' (default: pretrained, from the "
                   "library's cache or downloaded)")
    p.add_argument("--prior", choices=PRIORS, help="pretrained-layer RDM prior the head corrects: layer (the presets': "
                   "the best stage), nnls (a weighted sum of all stages), or none")
    p.add_argument("--tta", action="store_true", help="average predictions over each image and its mirror image")
    p.add_argument("--frozen-epochs", "--epochs", dest="epochs", type=int,
                   help="epochs with the body frozen (overrides the preset; --epochs is the old name)")
    p.add_argument("--unfrozen-epochs", type=int, help="epochs with the body trained (overrides the preset)")
    p.add_argument("--train-stages", type=_train_stages, metavar="K|all", help="what the unfrozen epochs train "
                   "with the head: the body's top K stages up to the head's stage, the lower ones frozen and their "
                   "output cached per image and view (0: the head alone), or all (the preset's); lr-find: what its "
                   "test trains with the head (default 0)")
    p.add_argument("--early-stopping", type=_patience, metavar="N|off",
                   help="stop after N epochs without a better validation score, or 'off' (overrides the preset)")
    p.add_argument("--lr", type=float, help="head learning rate (overrides the preset)")
    p.add_argument("--rescale", choices=["minmax", "rank", "zscore"], help="target rescaling (default: minmax)")
    p.add_argument("--loss", choices=LOSSES, help="mse (the paper's, default) or correlation (1 - Pearson r of "
                   "the predicted and target dissimilarities: ignores their scale, as the metric does)")
    p.add_argument("--group-target", choices=GROUP_TARGETS, help="what is learnt from the subjects: mean (their "
                   "mean RDM, the paper's; default) or ranks (the mean of each subject's ranks: what the score "
                   "averages, every subject weighed the same)")
    p.add_argument("--per-image", choices=PER_IMAGE, help="what the model is for: keep (the per-image part a_i + a_j "
                   "learnt: new images of the same study; the default on the Algonauts sets) or remove (the pair "
                   "structure learnt, the per-image part from the prior: other studies; the default on your own "
                   "data)")
    p.add_argument("--shrinkage", type=float, help="with a prior: the head learns this much less of the residual "
                   "(0 to below 1; a ridge toward the prior)")
    p.add_argument("--head-average", type=_decay, metavar="DECAY|off", help="keep a moving average of the head's "
                   "weights with this decay (e.g. 0.9; averages over about 1/(1 - decay) epochs), or 'off'")
    p.add_argument("--set-weights", choices=SET_WEIGHTS, help="each training set's share of the loss: pairs "
                   "(default) or reliability (pairs x its targets' split-half reliability)")
    p.add_argument("--image-size", type=int, help="input size in pixels (default: 224)")
    p.add_argument("--no-augment", action="store_true", help="no random crops or flips")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; predictions average over them")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    p.add_argument("--precision", choices=PRECISIONS, help="the body's precision: fp32 (default) or bf16 autocast")
    p.add_argument("--channels-last", action="store_true", help="the body in channels-last memory layout")
    p.add_argument("--validate-every", type=int, metavar="K",
                   help="validate every K-th epoch and the last (default: 1, every epoch)")


# TrainConfig fields whose flag is not simply --field-name.
_FLAG_OF_OPTION = {"out_dir": "--out"}


def _count_or(text: str, word: str, minimum: int, what: str) -> int | str:
    """An option that takes a whole number of `what` (at least `minimum`) or one `word` ('off', 'all')."""
    if text.strip().lower() == word:
        return word
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of {what} or '{word}', got '{text}'") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be at least {minimum} (or '{word}'), got {value}")
    return value


def _patience(text: str):
    """--early-stopping: a positive number of epochs, or 'off' to switch a preset's early stopping off."""
    from .train.config import OFF

    return _count_or(text, OFF, 1, "epochs")


def _train_stages(text: str) -> int | str:
    """--train-stages: a number of top stages, or 'all' (whether the body has that many is checked with the config)."""
    return _count_or(text, "all", 0, "stages")


def _decay(text: str):
    """--head-average: a decay, or 'off' to switch a preset's averaging off (the range is checked with the config)."""
    from .train.config import OFF

    if text.strip().lower() == OFF:
        return OFF
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a decay such as 0.9, or 'off', got '{text}'") from None


def _flag(option: str) -> str:
    return _FLAG_OF_OPTION.get(option, "--" + option.replace("_", "-"))


def _config_from_args(args, targets: tuple[str, ...]):
    """The run's TrainConfig from the preset and flags, checked (values, device, stage size) before any work."""
    from .train.config import check_config, config_from_preset

    config = config_from_preset(
        args.preset, backbone=args.backbone, stage=args.stage, weights=args.weights,
        targets=targets, head=args.head, prior=args.prior, tta=True if args.tta else None,
        frozen_epochs=args.epochs, unfrozen_epochs=args.unfrozen_epochs, early_stopping=args.early_stopping,
        lr=args.lr, rescale=args.rescale, loss=args.loss, image_size=args.image_size, device=args.device,
        augment=False if args.no_augment else None, precision=args.precision,
        channels_last=True if args.channels_last else None, validate_every=args.validate_every,
        per_image=args.per_image, shrinkage=args.shrinkage, head_average=args.head_average,
        set_weights=args.set_weights, group_target=args.group_target, train_stages=args.train_stages,
    )
    return check_config(config)


def _seeds(args) -> tuple[int, ...]:
    seeds = _list_option(args.seeds, "--seeds", convert=int, what="integers")
    if not seeds:
        raise UsageError("--seeds: give at least one seed")
    return tuple(_check_seed("--seeds", seed) for seed in seeds)


def _input_size(args) -> int | None:
    """The side the network resizes images to (--image-size, else the preset's): images are reduced towards it as
    they are read. None (kept as they are) when it is out of range: the config check then says so."""
    from .train.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, config_from_preset

    size = config_from_preset(args.preset, image_size=args.image_size).image_size
    return size if MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE else None


def _own_dataset(args, size: int | None = None) -> BrainDataset | None:
    """Your own data from --images, --rdms, --key (and --order), or None when none of them is given; images
    reduced as read for a network of input `size`."""
    if not (args.images or args.rdms):
        if getattr(args, "order", None):
            raise UsageError("--order orders your own images: use it with --images, --rdms and --key")
        return None
    if not (args.images and args.rdms and args.key):
        raise UsageError("your own data needs all of --images DIR, --rdms FILE and --key KEY")
    return load_dataset(args.images, args.rdms, args.key, order=args.order, size=size)


def _training_datasets(args) -> tuple[list, list, tuple[str, ...], list[str] | None]:
    """(train sets, validation sets, targets, image order) from --data/--sets or from --images/--rdms/--key;
    the image order (the RDM's rows) only for your own data. Images are reduced as read (`_input_size`)."""
    from .train.fullbatch import split_holdout

    if getattr(args, "key", None) and not (args.images or args.rdms):
        raise UsageError("--key names an array of your own --rdms file: use it with --images and --rdms (the "
                         "Algonauts sets take --targets)")
    if (args.images or args.rdms) and (args.sets or args.targets):  # before your data are read
        raise UsageError("--sets and --targets choose Algonauts sets and targets; with your own data the "
                         "target is --key")
    size = _input_size(args)
    own = _own_dataset(args, size)
    if own is not None:
        train = [own]
        targets: tuple[str, ...] = (args.key,)
    else:
        targets = _targets(args, ("EVC",))
        names = _check_sets("--sets", _list_option(args.sets, "--sets", default=TRAINING_SETS, what="sets"))
        if args.val_set:  # checked before any set is read
            _check_sets("--val-set", (args.val_set,))
        train = [load_algonauts_set(args.data, name, targets, size) for name in names]
    val = []
    if args.val_set:
        if args.images:
            raise UsageError("--val-set works with the Algonauts sets; use --val-fraction with your own data")
        val = [load_algonauts_set(args.data, args.val_set, targets, size)]
        train = [d for d in train if d.name != args.val_set]
    elif args.val_fraction:
        split = [split_holdout(d, args.val_fraction, 0) for d in train]
        train, val = [t for t, _ in split], [v for _, v in split]
    if not train:
        raise UsageError("no training images left after taking out the validation set")
    return train, val, targets, None if own is None else own.images.names


def _out_dir(path: str | None, overwrite: bool = False, resume: bool = False) -> Path:
    """--out checked before any work (files.check_run_folder): new or empty, or with --overwrite or --resume a
    folder siamrdm marked as its run."""
    from .io.files import check_run_folder, run_mode

    if path is not None and not path.strip():
        raise UsageError("--out: empty folder name; give a folder (e.g. runs/NAME)")
    return check_run_folder(path, run_mode(overwrite, resume))


BEST_VAL_SCORE_IS = "rho_mean"  # what the epoch kept was chosen on (train.selection_score), not pct_nc or r2


def _seed_records(metrics: dict) -> dict:
    """Each seed's record (predictor.metrics) as fit's JSON shows it: its best_val_score named for what it is,
    the signed mean rho over subjects (rho_mean), so it is not read as the % of the ceiling beside it."""
    return {seed: {**record, "best_val_score_is": BEST_VAL_SCORE_IS} if "best_val_score" in record else record
            for seed, record in metrics.items()}


def _validation_scores(predictor, val: list, targets: tuple[str, ...]) -> dict:
    """Per validation set and target ('set/target', as in log.csv): the kept model (each seed's chosen epoch,
    averaged over seeds) scored on the validation images as every score table scores (records.score_row, with
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


def cmd_fit(args) -> int:
    from dataclasses import asdict

    from .train.largeset import is_large_set_input
    from .train.predict import fit_predictor

    if args.batch_images is not None or args.loader_workers is not None or is_large_set_input(args.images,
                                                                                               args.rdms):
        return _cmd_fit_large(args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("several processes (torchrun) train in mini-batches: give --batch-images N")
    seeds = _seeds(args)
    if args.select_epochs and (args.val_fraction or args.val_set):
        raise UsageError("--select-epochs chooses the epochs on folds or cross-set curves of the training sets; "
                         "--val-fraction and --val-set choose them on held-out images: pass one way")
    _default_per_image(args, own_data=bool(args.images))
    train, val, targets, order = _training_datasets(args)
    config = _config_from_args(args, targets)
    externals = _fit_externals(args, train, val, targets, order)
    out = _out_dir(args.out, args.overwrite, args.resume)
    _print_notes()
    reliability = report_reliability(train, targets, verbose=not args.quiet)
    chosen = None
    if args.select_epochs:
        from .train.selection import select_epochs, with_epochs

        chosen, _ = select_epochs(config, train, seeds, progress=not args.quiet)
        if chosen is None:
            raise UsageError("--select-epochs: a training set has too few images for 2 folds of 3 images")
        config = with_epochs(config, chosen)
    settings = {"command": "fit", "world_size": 1, "config": asdict(config), "seeds": list(seeds)}
    predictor = fit_predictor(config, train, val, seeds, out, resume=args.resume, progress=not args.quiet,
                              overwrite=args.overwrite, image_order=order, settings=settings)
    summary = {"model": str(out / "model.pt"), "targets": list(targets), "seeds": _seed_records(predictor.metrics),
               "reliability": reliability}
    if chosen is not None:  # the epochs chosen as challenge and evaluate choose them
        rule = ("cross-set curves of the training sets, best validated epoch (as challenge's final fit)"
                if len(train) > 1 else "folds: new images of new people (subject halves), best validated epoch "
                "(as challenge, evaluate)")
        summary["selected_epochs"] = {"epochs": chosen, "rule": rule,
                                      "prior_alone": chosen == 0 and config.prior != "none"}
    if val:
        summary["validation"] = _validation_scores(predictor, val, targets)
    if externals:
        summary["external"] = _external_scores(predictor, val, externals, args.external_fallback == "prior")
    _print_json(summary)
    return 0


def _fit_externals(args, train: list, val: list, targets: tuple[str, ...], order: list[str] | None) -> list:
    """fit --external: other studies' RDMs of a set's images, bound to that set (your own data: its image order;
    an Algonauts set: its images, split or not, in their natural order); they score the held-out images only."""
    from .pipelines.external import bind_to_sets, load_externals

    externals = load_externals(args.external, targets)
    if not externals:
        return []
    if not val:
        raise UsageError("--external scores predictions of held-out images: give --val-fraction or --val-set")
    if order is not None:
        return [e.bind(order) for e in externals]
    names: dict[str, set[str]] = {}
    for dataset in [*train, *val]:  # '92-train' and '92-val' are the 92 set
        names.setdefault(dataset.name.split("-")[0], set()).update(dataset.images.names)
    return bind_to_sets(externals, {name: sorted(found, key=natural_key) for name, found in names.items()})


def _external_scores(predictor, val: list, externals: list, keep_prior: bool) -> dict:
    """Per validation set and other study ('set/<target> @ <study>'): the kept model's prediction of the held-out
    images scored against that study (external.score_external; the prior in its place where it is below it)."""
    from .pipelines.external import score_external

    out = {}
    for dataset in val:
        predicted, prior = predictor.predict(dataset.images), predictor.predict_prior(dataset.images)
        for external in externals:
            row, note = score_external(external, dataset.images.names, predicted[external.target],
                                       None if prior is None else prior[external.target], keep_prior)
            if row is None:
                continue
            if note:
                print(f"siamrdm: {dataset.name}/{external.target}: {note}", file=sys.stderr, flush=True)
            out[f"{dataset.name}/{external.column}"] = {"images": len(dataset), **row}
    return out


def _cmd_fit_large(args) -> int:
    """fit in mini-batches (--batch-images): a large image set (a folder or an HDF5 file of uint8 images) with
    condensed target RDMs, on one process or on every rank torchrun starts."""
    from dataclasses import replace

    from .train.distributed import (
        BatchSettings,
        check_batch_settings,
        check_minibatch_config,
        fit_large,
        init_from_env,
        rank_session,
    )
    from .train.largeset import CondensedRDMs, FolderImages, is_large_set_input, open_image_store

    if args.batch_images is None:
        given = args.images if is_large_set_input(args.images, None) else args.rdms if args.rdms else None
        raise UsageError(f"{given or '--loader-workers'}: large image sets train in mini-batches: give "
                         "--batch-images N (images per step, e.g. 256)")
    if not (args.images and args.rdms and args.key):
        raise UsageError("--batch-images trains on your own data: give --images (a folder or an HDF5 file of "
                         "uint8 images), --rdms (condensed or square RDMs: .npy, HDF5, rsatoolbox, .mat) and --key")
    if args.val_set or args.sets or args.targets:
        raise UsageError("--val-set, --sets and --targets choose Algonauts sets; with --batch-images hold out "
                         "images with --val-fraction")
    if args.select_epochs:
        raise UsageError("--select-epochs trains a model per image fold: with --batch-images hold out images with "
                         "--val-fraction")
    if args.resume and args.overwrite:
        raise UsageError("--resume continues the run in --out and --overwrite replaces it: pass one of them")
    if args.prior not in (None, "none"):
        raise UsageError("--prior: the mini-batch path (--batch-images) trains without a prior; use --prior none")
    if args.loader_workers is not None and args.loader_workers > _max_parallel():  # below 0: check_batch_settings
        raise UsageError(f"--loader-workers: at most {_max_parallel()} (4 per core), got {args.loader_workers}")
    batch = check_batch_settings(BatchSettings(args.batch_images, args.val_fraction,
                                               2 if args.loader_workers is None else args.loader_workers))
    args.prior = "none"
    args.group_target = args.group_target or "mean"  # the quick preset's ranks need every pair sorted: refused below
    seeds = _seeds(args)
    config = check_minibatch_config(_config_from_args(args, (args.key,)))
    ranks, device = init_from_env(config.device)
    with rank_session(ranks):  # a rank's bad input: its one line, exit 2 (torchrun: see distributed.rank_session)
        if device is not None:  # torchrun on GPUs: one per local rank
            config = replace(config, device=device)
        images = open_image_store(args.images, args.order)
        keyed = Path(args.rdms).suffix.lower() != ".npy"  # a .npy holds one array: --key names it
        targets = {args.key: CondensedRDMs(args.rdms, len(images), args.key if keyed else None)}
        if isinstance(images, FolderImages):  # an rsatoolbox file that names its images must name these
            check_rdm_names(args.rdms, images.names, among=str(args.images))
        if ranks.main:  # measured on a sample of the images: ranking every pair of a large set would cost more
            sample = np.random.default_rng(0).permutation(len(images))[:SAMPLE_IMAGES]
            reliability = target_reliability(targets[args.key].sample(sample))
        out = _out_dir(args.out, args.overwrite, args.resume)
        if ranks.main:  # printed once nothing more can be refused before training: a refusal stays one line
            print_reliability(f"{args.key} ({len(sample)} of {len(images)} images)", reliability,
                              verbose=not args.quiet)
        settings = {"command": "fit", "seeds": list(seeds),
                    "inputs": {"images": str(args.images), "rdms": str(args.rdms), "key": args.key}}
        predictor = fit_large(config, batch, images, targets, seeds, out, resume=args.resume,
                              progress=not args.quiet and ranks.main, overwrite=args.overwrite, settings=settings,
                              ranks=ranks)
    if ranks.main:
        _print_json({"model": str(out / "model.pt"), "targets": [args.key], "seeds": _seed_records(predictor.metrics),
                     "world_size": ranks.world, "batch": {"batch_images": batch.batch_images,
                                                          "val_fraction": batch.val_fraction}})
    return 0


PREDICTION_SUFFIXES = (".mat", ".npz", ".npy", ".hdf5", ".h5")


def cmd_predict(args) -> int:
    from .io.files import check_new_output_file
    from .train.config import purpose_text
    from .train.predict import RDMPredictor

    check_new_output_file(args.out, args.overwrite)
    suffix = Path(args.out).suffix.lower()
    if suffix not in PREDICTION_SUFFIXES:
        raise UsageError(f"{args.out}: unsupported output type '{suffix}' (use {', '.join(PREDICTION_SUFFIXES)})")
    predictor = RDMPredictor.load(args.model, args.device)
    if suffix == ".npy" and len(predictor.targets) != 1:
        raise UsageError(f"{args.out}: .npy holds one RDM but the model predicts {len(predictor.targets)}; use .mat")
    if suffix != ".npy":  # before the images are read and predicted: every key must be one the file can hold
        check_rdm_keys(args.out, [predictor.output_keys.get(t, t) for t in predictor.targets])
    images = load_image_set(args.images, args.order, size=predictor.config.image_size)  # reduced as read
    try:
        rdms = predictor.predict(images)
    except DataError as exc:
        raise DataError(f"{args.model}: {exc}") from None
    keyed = {predictor.output_keys.get(t, t): rdm for t, rdm in rdms.items()}
    path = save_rdms(args.out, keyed, names=pattern_names(images.names),  # obj1.png as 'obj1'
                     replace_existing=args.overwrite)  # a file that appeared meanwhile is not lost
    print(f"wrote {path}: {', '.join(keyed)} ({len(images)} x {len(images)}); the model's "
          f"{purpose_text(predictor.config.per_image)}")
    return 0


def cmd_lr_find(args) -> int:
    from .io.files import run_folder, run_mode, write_text
    from .model.backbones import create_body
    from .pipelines.plots import plot_lr_range
    from .train.fullbatch import lr_range_test

    _default_per_image(args, own_data=bool(args.images))  # the targets fit would train on
    train, _, targets, _ = _training_datasets(args)
    # --train-stages says what the test trains with the head (0 unless given), not what a fit's unfrozen epochs do
    stages = 0 if args.train_stages is None else args.train_stages
    config = _config_from_args(argparse.Namespace(**{**vars(args), "train_stages": None}), targets)
    create_body(config.backbone, config.weights, config.stage).trained_stages(stages)  # a count the body has
    out = _out_dir(args.out, args.overwrite)
    with run_folder(out, "lr-find", run_mode(args.overwrite)):
        result = lr_range_test(config, train, progress=not args.quiet, train_stages=stages)
        write_text(out / "lr_find.json", json.dumps(json_safe(result), indent=2, allow_nan=False))
        plot = plot_lr_range(result, out / "lr_find.png")
    print(f"suggested learning rate: {result['suggested_lr']:.3g} (curve: {plot})")
    return 0


def cmd_challenge(args) -> int:
    from .pipelines.challenge import run_challenge
    from .pipelines.external import load_externals

    targets = _targets(args, TARGET_NAMES)
    _check_range("--jobs", args.jobs, 1, _max_parallel())
    seeds = _seeds(args)
    _default_per_image(args, own_data=False)
    config = _config_from_args(args, targets)
    externals = load_externals(args.external, targets)
    out = _out_dir(args.out, args.overwrite)
    result = run_challenge(config, args.data, out, targets, seeds, validate=not args.no_validate,
                           progress=not args.quiet, overwrite=args.overwrite, jobs=args.jobs, externals=externals,
                           keep_prior=args.external_fallback == "prior")
    for row in result["validation"]:
        pct = "-" if row["pct_nc"] is None else f"{row['pct_nc']:.1f}%"
        print(f"validation {row['method']:<10} {row['target']:<10} {row['direction']:<8} r2={row['r2']:.4f}  {pct} "
              "of noise ceiling")
    written = [*result["settings"]["submission_files"], *(() if args.no_validate else ("validation.md",)), "report.md"]
    print(f"wrote {', '.join(written)} and report.html in {out}")
    return 0


# --------------------------------------------------------------------------- parser
# Each group of commands registers itself in its own function, next to its handlers' module.


def _add_method_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default=OFFICIAL_METHOD, choices=COMPARISON_METHODS,
                   help="RDM comparison, named as rsatoolbox names them (default: spearman, the official metric)")


def _add_foundation_commands(sub) -> None:
    p = sub.add_parser("score", help="score a submission's RDMs against target subject RDMs")
    p.add_argument("submission", help=".mat/.npz/.npy/.hdf5 file of model RDMs (keys such as EVC_RDMs)")
    p.add_argument("--target", required=True, help="file of subject RDMs with the same keys, or a .npy of their "
                   "upper triangles, (subjects, N(N-1)/2), for large sets (the submission then a .npy too)")
    p.add_argument("--permutations", type=int, default=None,
                   help="image-label permutations behind the chance level and p_perm (default: "
                   f"{DEFAULT_PERMUTATIONS} up to {PERMUTE_UP_TO_IMAGES} images, where they take under "
                   "a second, else 0; 0: off)")
    p.add_argument("--seed", type=int, default=0, help="seed of the permutations (default: 0)")
    p.add_argument("--key", help="score only this key of the submission (a file of one unkeyed array: its name)")
    p.add_argument("--target-key", help="the target key to score it against (default: --key, or the target's "
                   "only key)")
    _add_method_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("noise-ceiling", help="upper and lower noise ceilings of subject RDMs (in r2 and in rho)")
    p.add_argument("target", help="file of subject RDMs, (S, N, N) or (S, K, N, N) per key, or a .npy of their "
                   "upper triangles, (S, N(N-1)/2)")
    _add_method_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_noise_ceiling)

    p = sub.add_parser("data-info", help="the image sets, image counts and RDM keys under a data root, or your own "
                       "images and RDM file checked against each other (--images, --rdms)")
    p.add_argument("--data", help=f"data root (default: ${DATA_ENV_VAR})")
    p.add_argument("--images", help="your own data: a folder of images (with --rdms), checked as fit reads it")
    p.add_argument("--rdms", help="your own data: the RDM file to check against --images")
    p.add_argument("--key", help="your own data: the key in --rdms (default: every key)")
    p.add_argument("--order", help="your own data: a text file of image names in the RDM's row order")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_data_info)


def _add_dataset_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help=f"Algonauts 2019 data root (default: ${DATA_ENV_VAR})")
    p.add_argument("--targets", help="comma-separated: EVC, IT, MEG_early, MEG_late (default: EVC)")
    p.add_argument("--sets", help="training image sets (default: 92,118)")
    p.add_argument("--val-set", help="an Algonauts set held out for validation (e.g. 118)")
    p.add_argument("--val-fraction", type=float, default=0.0, help="fraction of each set's images held out")
    _add_own_data_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_own_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", help="your own data: a folder of images, sorted naturally (img2 before img10), "
                   "with --rdms and --key")
    p.add_argument("--rdms", help="your own data: .mat/.npz/.npy of RDMs, (N, N), (S, N, N) or (S, K, N, N), or an "
                   "rsatoolbox RDMs .hdf5 file")
    p.add_argument("--key", help="your own data: the array's key in --rdms (its name becomes the target)")
    p.add_argument("--order", help="your own data: a text file of image names, one per line, in the RDM's row order")


def _add_model_commands(sub) -> None:
    p = sub.add_parser("fit", help="train the Siamese network on brain RDMs")
    _add_dataset_options(p)
    _add_external_options(p)
    _add_training_options(p)
    p.add_argument("--out", required=True, help="run folder: model.pt, checkpoints, log.csv")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--select-epochs", action="store_true",
                   help="choose the epoch count as challenge does (one set: on its folds, new images of new people; "
                   "several: on their cross-set curves; the best validated epoch, 0 keeping the prior alone), then "
                   "fit on them")
    p.add_argument("--batch-images", type=int, metavar="N",
                   help="train in mini-batches of N images (all pairs among them per step; over all ranks under "
                   "torchrun): large image sets, --images a folder or an HDF5 file of uint8 images, --rdms condensed "
                   "RDMs (.npy or HDF5)")
    p.add_argument("--loader-workers", type=int, metavar="N",
                   help="with --batch-images: DataLoader worker processes per rank (default: 2)")
    p.set_defaults(func=cmd_fit)

    p = sub.add_parser("predict", help="predict the RDM of a folder of images with a trained model")
    p.add_argument("model", help="model.pt written by 'siamrdm fit'")
    p.add_argument("--images", required=True, help="folder of images (sorted naturally) or stimulus .mat")
    p.add_argument("--order", help="a text file of image names, one per line: the predicted RDM's row order")
    p.add_argument("--out", required=True, help="output .mat, .npz, .npy (one target), or .hdf5/.h5 (rsatoolbox "
                   "RDMs with the image names)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("lr-find", help="LR range test (Smith 2015): loss against learning rate")
    _add_dataset_options(p)
    _add_training_options(p)
    p.add_argument("--out", default="runs/lr-find", help="folder for lr_find.json and lr_find.png")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier lr-find run in --out")
    p.set_defaults(func=cmd_lr_find)

    p = sub.add_parser("challenge", help="train on 92 + 118, predict the 78 test images, write submissions")
    p.add_argument("--data", help=f"Algonauts 2019 data root (default: ${DATA_ENV_VAR})")
    p.add_argument("--targets", help="comma-separated (default: all four)")
    _add_external_options(p)
    _add_training_options(p)
    p.add_argument("--out", default="runs/challenge", help="folder for the submission files and report")
    p.add_argument("--no-validate", action="store_true", help="skip the cross-set validation fits")
    p.add_argument("--jobs", type=int, default=1,
                   help="run the independent fits (targets x directions, final fits) in N processes (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--quiet", action="store_true", help="no phase lines or bars on stderr (bars: terminal only)")
    p.set_defaults(func=cmd_challenge)


def _analysis_targets(args) -> tuple[str, ...]:
    return _targets(args, TARGET_NAMES)


def _print_evaluation(evaluation, args, paths: dict | None, seconds: float) -> None:
    from .pipelines.evaluate import markdown_table, summary

    if getattr(args, "json", False):
        folds = {"folds": {k: d.images.names for k, d in evaluation.held_out.items()}} if evaluation.held_out else {}
        _print_json(json_safe({"rows": evaluation.rows, "layers": evaluation.layers,
                               "regression": evaluation.regression, "seconds": evaluation.seconds,
                               **folds, "wall_s": seconds}))
        return
    print(summary(evaluation))
    print()
    print(markdown_table(evaluation.rows))
    if paths:
        print(f"\nwrote {', '.join(sorted(p.name for p in paths.values()))} in {paths['md'].parent}")
    print(f"wall time {seconds:.0f} s" + (f"; the report: {paths['report_html']}" if paths and "report_html" in paths
                                          else ""))


def _cmd_baseline(args, method: str) -> int:
    import time

    from .io.files import run_folder, run_mode
    from .model.backbones import backbone_stages, create_body
    from .pipelines.evaluate import compare_bodies, evaluate_sets, write_evaluation
    from .train.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE
    from .train.fullbatch import config_from_preset

    _check_range("--image-size", args.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    targets = _analysis_targets(args)
    start = time.perf_counter()
    bodies = _list_option(args.backbones, "--backbones", what="bodies")
    if bodies and args.backbone is not None:
        raise UsageError("--backbone scores one body and --backbones compares several: pass one of them")
    if len(bodies) > 1 and args.weights not in (None, "random"):
        raise UsageError(f"--weights {args.weights}: one weights file cannot be the weights of {len(bodies)} bodies; "
                         "compare pretrained ones (or 'random')")
    backbone = args.backbone or (bodies[0] if bodies else "efficientnet_lite0")
    config = config_from_preset("quick", backbone=backbone, weights=args.weights, image_size=args.image_size)
    for body in bodies:  # every body, with its weights, before any set is read or folder made
        try:
            create_body(body, args.weights, stage=backbone_stages(body)[-1])
        except ConfigError as exc:
            if exc.option != "backbone":
                raise
            raise UsageError(f"--backbones: {exc.problem}") from None
    sets = [load_algonauts_set(args.data, name, targets) for name in TRAINING_SETS]
    out = _out_dir(args.out, args.overwrite) if args.out is not None else None
    with run_folder(out, "baseline", run_mode(args.overwrite)) if out else contextlib.nullcontext():
        if bodies:
            evaluation = compare_bodies(sets, bodies, method, targets, config, args.batch_size,
                                        progress=not args.quiet)
        else:
            evaluation = evaluate_sets(sets, (method,), targets, config, batch_size=args.batch_size,
                                       progress=not args.quiet)
        paths = write_evaluation(evaluation, sets, out) if out else None
    _print_evaluation(evaluation, args, paths, time.perf_counter() - start)
    return 0


def cmd_baseline_layers(args) -> int:
    return _cmd_baseline(args, "layers")


def cmd_baseline_regression(args) -> int:
    return _cmd_baseline(args, "regression")


def _check_folds(dataset: BrainDataset, folds: int, seed: int) -> None:
    """--folds checked before any work or file: each fold needs at least 3 images."""
    from .rdm.splits import fold_indices

    fold_indices(len(dataset), folds, seed)  # a ConfigError names --folds


def _default_per_image(args, own_data: bool) -> None:
    """--per-image's default: the pair structure (remove) for your own data, whose models are for other people
    and studies; the per-image part (keep) on the Algonauts sets, judged on new images of the same study (README,
    "What a model is for"; RESULTS.md, "Other studies")."""
    if args.per_image is None:
        args.per_image = "remove" if own_data else "keep"


def _add_external_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--external", action="append", metavar="FILE[:KEY]",
                   help="another study's RDMs of the same images (repeatable): held-out predictions are also scored "
                   "against them, as '<target> @ <study>'")
    p.add_argument("--external-fallback", choices=("prior", "none"), default="prior",
                   help="where the trained model predicts another study worse than its prior (paired over that "
                   "study's subjects): prior (default) scores the prior in its place, none keeps the trained one")


def cmd_evaluate(args) -> int:
    import time

    from .io.files import run_folder, run_mode
    from .io.progress import Progress
    from .pipelines.evaluate import run_evaluation, run_fold_evaluation
    from .pipelines.external import bind_to_sets, load_externals
    from .pipelines.report import write_report

    progress = Progress.of(not args.quiet, "evaluate")
    methods = _list_option(args.methods, "--methods", method_names(), method_names(), what="methods")
    _check_seed("--fold-seed", args.fold_seed)
    seeds = _seeds(args)
    loading = time.perf_counter()
    own = _own_dataset(args, _input_size(args))
    if own is None and args.folds is not None:
        raise UsageError("--folds cross-validates your own data: use it with --images, --rdms and --key (the "
                         "Algonauts sets are evaluated across sets)")
    if own is not None and args.targets:
        raise UsageError("--targets names Algonauts targets; with your own data the target is --key")
    targets = tuple(own.targets) if own is not None else _analysis_targets(args)
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    _default_per_image(args, own is not None)
    config = _config_from_args(args, targets)
    externals = load_externals(args.external, targets)
    folds = 5 if args.folds is None else args.folds
    if own is not None:
        _check_folds(own, folds, args.fold_seed)
        externals = tuple(e.bind(own.images.names) for e in externals)
    else:  # the sets are read (and refused) before the run folder exists
        sets = [load_algonauts_set(args.data, name, targets, config.image_size) for name in TRAINING_SETS]
        externals = tuple(bind_to_sets(externals, {d.name: d.images.names for d in sets}))
    out = _out_dir(args.out, args.overwrite)
    loaded = [own] if own is not None else sets  # the line after every check: bad input stays one line on stderr
    progress.line(f"loaded {', '.join(f'{d.name} ({len(d)} images)' for d in loaded)} in "
                  f"{time.perf_counter() - loading:.1f} s; targets {', '.join(targets)}")
    report_reliability([own] if own is not None else sets, targets, verbose=not args.quiet)
    start = time.perf_counter()
    with run_folder(out, "evaluate", run_mode(args.overwrite)):
        if own is None:
            evaluation, paths = run_evaluation(args.data, out, methods, targets, config, seeds, args.batch_size,
                                               progress=progress, make_plots=not args.no_plots, sets=sets,
                                               externals=externals, keep_prior=args.external_fallback == "prior")
            md, page = write_report(out, title="siamrdm evaluate: cross-set scores")
        else:
            inputs = {"image_folder": str(args.images), "rdms": str(args.rdms), "key": args.key, "order": args.order}
            evaluation, paths = run_fold_evaluation(own, out, folds, methods, config, seeds, args.fold_seed,
                                                    progress=progress, make_plots=not args.no_plots,
                                                    inputs=inputs, externals=externals,
                                                    keep_prior=args.external_fallback == "prior")
            md, page = write_report(out, title=f"siamrdm evaluate: {folds}-fold cross-validation over the "
                                    f"{len(own)} images of {Path(args.images).name} ({args.key})")
    paths["report"], paths["report_html"] = md, page
    progress.done(f"wrote evaluation.md, evaluation.csv, report.md and {page}")
    _print_evaluation(evaluation, args, paths, time.perf_counter() - start)
    return 0


def cmd_report(args) -> int:
    from .pipelines.report import write_report

    md, page = write_report(args.run_dir, title=args.title)
    print(f"wrote {md} and {page}")
    return 0


def _baseline_options(q: argparse.ArgumentParser, func: Callable) -> None:
    """A baseline kind's options (added when it is parsed: --backbone's choices come from a torch-using module)."""
    q.add_argument("--data", help=f"Algonauts 2019 data root (default: ${DATA_ENV_VAR})")
    q.add_argument("--targets", help="comma-separated (default: EVC,IT,MEG_early,MEG_late)")
    _backbone_argument(q, default=None, help="network (default: efficientnet_lite0)")
    q.add_argument("--backbones", metavar="A,B,...", help="compare several bodies (registered, timm:NAME, "
                   "torchvision:NAME) in one table, each with its pretrained weights")
    q.add_argument("--weights", help="backbone weights: a state_dict file, or 'random' (default: pretrained)")
    q.add_argument("--image-size", type=int, help="input size in pixels (default: 224)")
    q.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    q.add_argument("--out", help="also write the table, predictions and plots into this folder")
    q.add_argument("--overwrite", action="store_true", help="replace an earlier baseline run in --out")
    q.add_argument("--json", action="store_true", help="print one JSON object")
    q.add_argument("--quiet", action="store_true", help="no progress bars")
    q.set_defaults(func=func)


def _add_analysis_commands(sub) -> None:
    """baseline, evaluate, report."""
    p = sub.add_parser("baseline", help="pretrained-network baselines, scored across sets (fit 92 -> 118 and back)")
    kinds = p.add_subparsers(dest="baseline", required=True, metavar="KIND")
    for kind, func, text in (
        ("layers", cmd_baseline_layers, "RDM of every backbone stage; the best stage on the training set is scored"),
        ("regression", cmd_baseline_regression, "target as a non-negative weighted sum of the stage RDMs"),
    ):
        q = kinds.add_parser(kind, help=text)
        q.defer(lambda q=q, func=func: _baseline_options(q, func))

    p = sub.add_parser("evaluate", help="cross-set validation of every method and target (or image folds of your "
                       "own data): table and plots")
    p.add_argument("--data", help=f"Algonauts 2019 data root (default: ${DATA_ENV_VAR})")
    _add_own_data_options(p)
    p.add_argument("--folds", type=int, help="your own data: image folds to cross-validate over (default: 5)")
    p.add_argument("--fold-seed", type=int, default=0, help="seed of the split into folds (default: 0)")
    p.add_argument("--out", default="runs/evaluate", help="folder for the table, plots and report")
    p.add_argument("--methods", help=f"comma-separated: {', '.join(method_names())} (default: all)")
    p.add_argument("--targets", help="comma-separated (default: EVC,IT,MEG_early,MEG_late)")
    _add_external_options(p)
    _add_training_options(p)
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass for layer RDMs")
    p.add_argument("--no-plots", action="store_true", help="tables only")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no phase lines or bars on stderr (bars: terminal only)")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("report", help="gather a run folder's settings, tables and plots into report.md/.html")
    p.add_argument("run_dir", help="folder written by evaluate, challenge, fit or lr-find")
    p.add_argument("--title", help="page title (default: from the folder name)")
    p.set_defaults(func=cmd_report)


# A search that matches at most this many library models shows their stages (each is built once, with random
# weights: a large transformer takes seconds).
BODY_STAGES_UP_TO = 8


def cmd_bodies(args) -> int:
    """The registered bodies, or with --search the library models whose names match, with their stages where cheap."""
    from .model import backbones

    names = backbones.search_bodies(args.search) if args.search else list(backbones.BACKBONES)
    described = not args.search or len(names) <= BODY_STAGES_UP_TO
    rows = []
    for name in names:
        row: dict = {"name": name}
        if described:
            try:
                spec = backbones.backbone_spec(name)
            except DataError as exc:  # a model the library cannot cut into stages
                row["problem"] = str(exc)
            else:
                row.update(default_stage=spec.default_stage, image_size=spec.image_size,
                           stages=spec.stage_names(), description=spec.description)
        rows.append(row)
    if args.json:
        _print_json({"bodies": rows})
        return 0
    if not rows:
        print(f"no timm or torchvision model matches '{args.search}'")
    for row in rows:
        if "stages" in row:
            print(f"{row['name']}: {row['description']}; {row['image_size']} px; default stage "
                  f"{row['default_stage']}; stages {', '.join(row['stages'])}")
        else:
            print(f"{row['name']}" + (f": {row['problem']}" if "problem" in row else ""))
    if args.search and not described:
        print(f"({len(rows)} models; stages are shown for searches that match at most {BODY_STAGES_UP_TO})")
    return 0


def _add_body_commands(sub) -> None:
    p = sub.add_parser("bodies", help="the bodies --backbone takes: the registered ones, or library models by name")
    p.add_argument("--search", metavar="PATTERN", help="list timm and torchvision models whose names match (e.g. "
                   "'resnet*' or 'convnext'), as --backbone takes them")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_bodies)


def cmd_bench(args) -> int:
    """Naive against factorised training epochs on real images, then the head's epoch at 100 to 10,000 images."""
    import torch

    from .io.files import check_new_output_file, write_text
    from .pipelines import bench

    if args.out is not None:  # checked before any work, by predict --out's rule
        if not args.out.strip():
            raise UsageError("--out: empty file name; give a file (e.g. bench.json)")
        check_new_output_file(args.out, args.overwrite)
    sizes = ()
    if args.head_sizes.strip().lower() not in ("0", "none"):
        sizes = _list_option(args.head_sizes, "--head-sizes", convert=int, what="integers")
        for n in sizes:
            _check_range("--head-sizes", n, 2, bench.MAX_HEAD_IMAGES)
    _check_range("--threads", args.threads, 1, _max_parallel())
    if args.rounds < 1 or args.pair_batch < 1 or (args.body_chunk is not None and args.body_chunk < 1):
        raise UsageError("--rounds, --pair-batch and --body-chunk must be at least 1")
    _check_range("--naive-batches", args.naive_batches, 0)
    if args.paper_time_limit is not None and not (math.isfinite(args.paper_time_limit) and args.paper_time_limit > 0):
        raise UsageError(f"--paper-time-limit: must be a positive number of seconds, got {args.paper_time_limit}")
    device = str(bench.pick_device(args.device))
    if not args.no_training:  # the image size against the stage's minimum, before any image is read
        bench.check_images(args.images)
        bench.training_config(args.backbone, args.weights, args.stage, device, args.pair_batch, args.body_chunk,
                              args.image_size)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(message: str) -> None:
        if not args.quiet:
            print(f"bench: {message}", file=sys.stderr, flush=True)

    result: dict = {}
    if not args.no_training:
        sets = bench.bench_sets(args.data, args.images)
        result.update(bench.bench_training(
            sets, args.backbone, args.weights, args.stage, device, args.rounds, args.naive_batches or None,
            args.pair_batch, args.body_chunk, args.image_size, log))
    if sizes:
        shape = bench.feature_shape(args.head_backbone)
        result["head_scaling"] = bench.bench_head_scaling(sizes, shape, device, args.threads, log)
    if args.paper:
        result["paper_schedule"] = bench.bench_paper_schedule(args.data, args.backbone, args.weights, device,
                                                              args.paper_time_limit, log=log)
    result.setdefault("device", device)
    result.setdefault("peak_rss_mb", bench.peak_rss_mb())
    result.setdefault("machine", bench.machine(torch.device(device)))
    if args.out is not None:
        write_text(args.out, json.dumps(json_safe(result), indent=2, allow_nan=False), replace_existing=args.overwrite)
    if args.json:
        _print_json(result)
    else:
        print(bench.format_report(result))
    return 0


def _add_bench_commands(sub) -> None:
    """bench (its options added when it is parsed: --backbone's choices come from a torch-using module)."""
    p = sub.add_parser("bench", help="time naive against pair-factorised training, and the head at scale")
    p.defer(lambda: _bench_options(p))


def _bench_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help=f"Algonauts 2019 data root (default: ${DATA_ENV_VAR})")
    p.add_argument("--images", type=int, help="use this many of the 92 + 118 training images (default: all 210)")
    _backbone_argument(p)
    p.add_argument("--stage", help="backbone stage that feeds the head (default: the backbone's)")
    p.add_argument("--weights", help="body weights: a state_dict file, or 'random' (timing does not depend on them)")
    p.add_argument("--image-size", type=int, default=224, help="input size in pixels (default: 224)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    p.add_argument("--rounds", type=int, default=3, help="timed rounds of each, alternating (default: 3)")
    p.add_argument("--naive-batches", type=int, default=4,
                   help="pair batches per set timed for a naive epoch, then scaled; 0 times all (default: 4)")
    p.add_argument("--pair-batch", type=int, default=32, help="pairs per naive batch (default: 32)")
    p.add_argument("--body-chunk", type=int, help="images per body pass, factorised (default: the trainer's)")
    p.add_argument("--head-sizes", default="100,1000,3000,10000",
                   help="image counts for the head-scaling epochs, or 'none' (default: 100,1000,3000,10000)")
    _backbone_argument(p, "--head-backbone", "alexnet", "whose features (default stage, 224 px) the head-scaling "
                       "epochs use")
    p.add_argument("--no-training", action="store_true", help="skip naive against factorised (head scaling only)")
    p.add_argument("--paper", action="store_true", help="also time the 'paper' preset's schedule end to end")
    p.add_argument("--paper-time-limit", type=float, help="stop the paper schedule after this many seconds and "
                   "extrapolate (default: no limit)")
    p.add_argument("--out", help="also write the JSON result to this file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=cmd_bench)


class _Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit 2, like bad input; `--help` still shows the usage.

    Options whose choices live in torch-using modules are deferred (`defer`): added when this parser is first
    parsed or its help shown, each in the place it was deferred at, so `siamrdm --help` and `score` start
    without torch and every command's help reads as if they were added at once."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._deferred: list[tuple[Callable[[], None], int, list[int]]] = []

    def defer(self, build: Callable[[], None]) -> None:
        """Run build (it adds options to this parser) on first use, its options where they would be now."""
        self._deferred.append((build, len(self._actions), [len(g._group_actions) for g in self._action_groups]))

    def _complete(self) -> None:
        """Run the deferred builds, last first (so each earlier place stays valid), and move what each added
        from the end of the option lists back to its place."""
        while self._deferred:
            build, place, group_places = self._deferred.pop()
            groups = list(zip(self._action_groups, group_places, strict=False))
            ends = [len(self._actions)] + [len(g._group_actions) for g, _ in groups]
            build()
            for items, end, at in zip([self._actions] + [g._group_actions for g, _ in groups], ends,
                                      [place] + [at for _, at in groups], strict=True):
                items[at:at] = [items.pop(end) for _ in range(len(items) - end)]

    def parse_known_args(self, args=None, namespace=None):
        self._complete()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()

    def format_help(self) -> str:
        self._complete()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("siamrdm").strip()  # 'fit', 'baseline layers', or '' at the top
        where = f"{command}: " if command else ""
        help_hint = f"siamrdm {command} --help" if command else "siamrdm --help"
        self.exit(2, f"siamrdm: error: {printable(where + ' '.join(message.split()))} (see '{help_hint}')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="siamrdm",
        description="Predict brain RDMs from images with Siamese networks; score them as Algonauts 2019 did.",
    )
    # Every subparser (and theirs, e.g. 'baseline layers') is a _Parser too.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    _add_foundation_commands(sub)
    _add_model_commands(sub)
    _add_analysis_commands(sub)
    _add_body_commands(sub)
    _add_bench_commands(sub)
    return parser


def _print_notes() -> None:
    """How the input files were read (rsafiles.take_notes), on stderr: once the input is read and checked."""
    for note in take_notes():
        print(f"siamrdm: {printable(note)}", file=sys.stderr, flush=True)


def _error_line(message: str) -> None:
    """Bad input's one line on stderr. Names from files and paths may hold line breaks or terminal escapes:
    they are shown escaped (errors.printable), so the line stays one line and the terminal is left alone."""
    print(f"siamrdm: error: {printable(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    take_notes(reset=True)  # notes of an earlier command in this process are not this one's
    stdout, sys.stdout = sys.stdout, _CheckedStdout(sys.stdout)
    try:
        return _run(args)
    finally:
        sys.stdout = stdout


def _run(args) -> int:
    """The command, its failures as exit codes (see the module's docstring)."""
    try:
        code = args.func(args)
        _print_notes()
        sys.stdout.flush()  # output that cannot be written fails here, as this command's error, not at exit
        return code
    except ConfigError as exc:  # a setting: named by its command-line flag
        _error_line(f"{_flag(exc.option)}: {exc.problem}")
        return 2
    except DataError as exc:
        _error_line(str(exc))
        return 2
    except KeyboardInterrupt:  # Ctrl-C: 128 + SIGINT, as shells report it (1 is for defects)
        print("siamrdm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout left (`| head`): as any Unix tool, stop quietly
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what the shell reports for a tool the pipe ended
    except Exception as exc:  # a one-line message; SIAMRDM_DEBUG=1 shows the traceback
        reason = _stdout_failure(exc)
        if reason is not None:  # `> /dev/full`, a full disk: bad output, not a defect
            print(f"siamrdm: error: standard output: cannot be written ({reason})", file=sys.stderr)
            return 2
        if os.environ.get("SIAMRDM_DEBUG"):
            raise
        print(f"siamrdm: {type(exc).__name__}: {printable(' '.join(str(exc).split()))}", file=sys.stderr)
        return 1


def _silence_stdout() -> None:
    """Point stdout's file at /dev/null, so that the flush at exit raises no second error."""
    with contextlib.suppress(OSError, AttributeError, ValueError):  # stdout may not be a file
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _stdout_failure(exc: Exception) -> str | None:
    """Why stdout could not take the output, when `exc` is that failure (_CheckedStdout marked it); else None."""
    if not getattr(exc, "siamrdm_stdout", False):
        return None
    _silence_stdout()  # what it still holds would fail again at exit
    return os.strerror(exc.errno) if exc.errno else " ".join(str(exc).split())


class _CheckedStdout:
    """sys.stdout while a command runs: an OSError writing to it (`> /dev/full`, a full disk; a closed pipe
    excepted) is marked as stdout's, so that main reports the output, not a defect. All else is the stream's."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def _checked(self, call: Callable, *args):
        try:
            return call(*args)
        except BrokenPipeError:
            raise
        except OSError as exc:
            exc.siamrdm_stdout = True
            raise

    def write(self, text: str) -> int:
        return self._checked(self._stream.write, text)

    def flush(self) -> None:
        self._checked(self._stream.flush)

    def __getattr__(self, name: str):
        return getattr(self._stream, name)

if __name__ == "__main__":
    sys.exit(main())



