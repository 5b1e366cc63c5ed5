"""Scoring files as `siamrdm score` and `noise-ceiling` do: a submission file against a target file (which key
is compared with which), and a target file's noise ceilings. Torch-free, like the rdm scoring modules.

A target file holds subject RDMs per key, or, for large sets, a .npy of the subjects' upper triangles (then the
submission is a .npy too). Problems are one-line errors naming the file they come from; a key problem names the
option that chose it (--key, --target-key). Each returns, beside its result, the notes on how the files were
read (rdmfiles.read_rdm_dict), for the CLI to show.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError, DataError, UsageError, printable
from ..io.limits import key_name
from ..io.rdmfiles import read_condensed_model, read_condensed_subjects, read_rdm_dict
from ..io.rsafiles import check_rdm_names, read_rdm_names
from ..io.tables import fmt
from ..rdm.compare import TargetError
from ..rdm.inference import CHANCE_ALPHA
from ..rdm.noise_ceiling import NO_CEILING_NOTE, keyed_ceiling, noise_ceilings
from ..rdm.submission import score_condensed_submission, score_submission, shown_keys
from ..rdm.transform import OFFICIAL_METHOD


@contextlib.contextmanager
def _blamed(submission: str, target: str):
    """A scoring error as a DataError naming the file it comes from: the target's (TargetError: a subject
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


def paired_keys(submission_file: str, target_file: str, submission: Sequence[str], targets: Sequence[str],
                key: str | None = None, target_key: str | None = None) -> dict[str, tuple[str, str]]:
    """What `score` compares: name -> (submission key, target key). --key and --target-key choose one pair;
    without them, the keys the files share, or the one array of each when one file has no key. A pair is named
    by its target key, else by the key an option gave, else by the target file's stem: never by an empty key."""
    given_key, given_target_key = key, target_key
    key = _chosen_key(submission, key, "--key", submission_file)
    target_key = _chosen_key(targets, target_key, "--target-key", target_file)
    if key is None and target_key is None:
        common = [k for k in submission if k in targets]
        if common:
            pairs = [(k, k) for k in common]
        elif len(submission) == len(targets) == 1 and "" in (*submission, *targets):
            pairs = [(next(iter(submission)), next(iter(targets)))]
        else:
            raise UsageError(f"no key in common between {submission_file} ({shown_keys(submission)}) and "
                             f"{target_file} ({shown_keys(targets)}): name the pair with --key and "
                             "--target-key")
    else:
        if key is None:
            key = target_key if target_key in submission else _only_key(submission, "--key", submission_file)
        if target_key is None:
            target_key = key if key in targets else _only_key(targets, "--target-key", target_file)
        pairs = [(key, target_key)]
    named = {}
    for sub_key, tgt_key in pairs:
        name = tgt_key or given_target_key or sub_key or given_key or Path(target_file).stem
        named[name] = (sub_key, tgt_key)
    return named


def _only_key(keys: Sequence[str], flag: str, path: str) -> str:
    """The one key of a file, for the option that did not name one."""
    if len(keys) != 1:
        raise UsageError(f"{flag}: {path} holds {shown_keys(keys)}; name the one to score")
    return next(iter(keys))


def score_files(submission: str, target: str, key: str | None = None, target_key: str | None = None,
                permutations: int | None = None, seed: int = 0, method: str = OFFICIAL_METHOD
                ) -> tuple[dict, tuple[str, ...]]:
    """`siamrdm score`: score_submission's result as a dict (`SubmissionScore.to_dict()`, what --json prints) for
    the pairs of keys `paired_keys` chooses (every target key when none is named: one the submission lacks is listed
    as missing), or score_condensed_submission's for a target of upper triangles; and the notes on how the target,
    then the submission, were read."""
    subjects = read_condensed_subjects(target)
    if subjects is not None:
        if permutations:
            raise UsageError("--permutations: not available for upper-triangle (.npy) subjects")
        model = read_condensed_model(submission, subjects.shape[1])
        with _blamed(submission, target):
            return score_condensed_submission(model, subjects, target_key or key or Path(target).stem,
                                              method).to_dict(), ()
    targets, target_notes = read_rdm_dict(target)
    n_images = next(iter(targets.values())).shape[-1]
    submitted, submission_notes = read_rdm_dict(submission, n_images=n_images)
    named = read_rdm_names(target)
    if named is not None:  # both files name their images (rsatoolbox files): the same images, in the same order
        check_rdm_names(submission, named[1], among=str(target), order_settable=False)
    pairs = paired_keys(submission, target, list(submitted), list(targets), key, target_key)
    chosen = {name: targets[t] for name, (_, t) in pairs.items()}
    if key is None and target_key is None:  # every target key is scored: one the submission lacks counts
        paired = {t for _, t in pairs.values()}
        chosen.update({k: rdms for k, rdms in targets.items() if k not in paired})
    with _blamed(submission, target):
        return score_submission({name: submitted[s] for name, (s, _) in pairs.items()}, chosen,
                                permutations, seed, method).to_dict(), target_notes + submission_notes


def file_ceilings(target: str, method: str = OFFICIAL_METHOD) -> tuple[dict[str, dict[str, float]], tuple[str, ...]]:
    """`siamrdm noise-ceiling`: per key (a key-less file: its stem) the upper and lower ceilings in r2 (the
    challenge's unit) and in rho, as rsatoolbox's (lower, upper), computed from the subjects, with their `source`:
    'official' where they are the challenge's own data, whose published upper `score` uses (equal to 4
    decimals), else 'computed'; and the notes on how the file was read."""
    subjects = read_condensed_subjects(target)
    targets, notes = ({Path(target).stem: subjects}, ()) if subjects is not None else read_rdm_dict(target)
    result = {}
    for key, rdms in targets.items():
        try:
            ceiling = noise_ceilings(rdms, method, condensed=subjects is not None)
        except ValueError as exc:  # fewer than 2 subjects, or a constant mean RDM
            raise DataError(f"{key_name(Path(target), key)}: {exc}") from None
        # the values computed from the subjects; `source` says whether `score` puts the published upper in place
        source = "computed" if subjects is not None else keyed_ceiling(
            key or "", rdms.shape[-1], (ceiling.upper, ceiling.lower, ceiling.rho_lower, ceiling.rho_upper),
            method).source
        result[key or Path(target).stem] = {"upper": ceiling.upper, "lower": ceiling.lower,
                                            "rho_lower": ceiling.rho_lower, "rho_upper": ceiling.rho_upper,
                                            "source": source}
    return result, notes


def score_table(result: dict, method: str = OFFICIAL_METHOD) -> str:
    """`siamrdm score`'s table of a score_files result: a row per key, the overall score (or why it is withheld),
    and the notes that say how to read it."""
    lines, missing = [], ", ".join(result.get("missing", []))
    rows = {key: row for key, row in result.items() if key not in ("score", "missing")}
    unit = "%" if all(row["noise_ceiling"] is not None for row in rows.values()) else "r2"
    lines.append(f"{'key':<18} {'r2':>8} {'p':>10} {'p_signed':>10} {'p_perm':>10} {'ceiling':>8} {'% NC':>7} "
                 f"{'chance' + unit:>9} {'chance95':>9} {'rho_mean+-se':>15} {'pair_rho+-se':>15} {'lower_rho':>9} "
                 f"{'lower':>8}  source")
    for key, row in rows.items():
        scale = ("pct", ".2f") if unit == "%" else ("r2", ".4f")
        rho = f"{fmt(row['rho_mean'], '.3f')}+-{fmt(row['rho_se'], '.3f')}"
        pair = f"{fmt(row.get('pair_rho_mean'), '.3f')}+-{fmt(row.get('pair_rho_se'), '.3f')}"
        lines.append(
            f"{printable(key):<18} {row['r2']:>8.4f} {fmt(row['p'], '.2e'):>10} {fmt(row['p_signed'], '.2e'):>10} "
            f"{fmt(row['p_perm'], '.2e'):>10} {fmt(row['noise_ceiling']):>8} {fmt(row['pct_nc'], '.2f'):>7} "
            f"{fmt(row[f'chance_{scale[0]}_mean'], scale[1]):>9} {fmt(row[f'chance_{scale[0]}_95'], scale[1]):>9} "
            f"{rho:>15} {pair:>15} {fmt(row['rho_lower_ceiling'], '.3f'):>9} {fmt(row['noise_ceiling_lower']):>8}  "
            f"{row['ceiling_source'] or 'none'}"
        )
    total = result["score"]
    if total is None:
        lines.append(f"{'score':<18} withheld: the submission lacks {printable(missing)}")
    else:
        lines.append(f"{'score':<18} {total['r2']:>8.4f} {'':>41} {fmt(total['pct_nc'], '.2f'):>7}")
    permuted = [row for row in rows.values() if row["permutations"]]
    if permuted:
        lines.append(f"note: chance{unit} and chance95 are this model's score with its image labels permuted "
                     f"({permuted[0]['permutations']} times): mean and 95th percentile; p_perm below "
                     f"{CHANCE_ALPHA} beats chance. rho_mean's chance level is 0; lower_rho is the lower noise "
                     "ceiling in its unit; pair_rho is rho_mean of the pair structure alone (each RDM less its "
                     "per-image part a_i + a_j)")
    if any(row["ceiling_source"] is None for row in rows.values()):
        lines.append(f"note: {NO_CEILING_NOTE}")
    if method != OFFICIAL_METHOD:
        lines.append(f"note: compared with '{method}' (rsatoolbox's name); r2 is the mean over subjects of its "
                     "square, and the ceilings are computed with it")
    return "\n".join(lines)
