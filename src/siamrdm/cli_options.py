"""The command line's options: the parser of every command, the types of its option values, and the checks of
comma-separated lists and number ranges that the commands share (cli.py runs the commands).

Every choice comes from a torch-free registry (`choices`, `pipelines.methods`, `rdm.transform`, `rdm.inference`),
so building the whole parser, for `siamrdm --help` or `score`, imports no torch.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping, Sequence
from typing import NoReturn

from .choices import (
    BODIES,
    BODY_FAMILIES,
    GROUP_TARGETS,
    HEADS,
    LOSSES,
    OFF,
    PER_IMAGE,
    PRECISIONS,
    PRESETS,
    PRIORS,
    RESCALINGS,
    SET_WEIGHTS,
)
from .errors import UsageError, printable
from .io.datasets import DATA_ENV_VAR, IMAGE_SETS, TARGET_NAMES, TRAINING_SETS
from .pipelines.methods import method_names
from .rdm.inference import DEFAULT_PERMUTATIONS, PERMUTE_UP_TO_IMAGES, SEED_LIMIT
from .rdm.transform import COMPARISON_METHODS, OFFICIAL_METHOD

Handler = Callable[[argparse.Namespace], int]  # a command's function: parsed options in, exit code out


# --------------------------------------------------------------------------- option checks the commands share


def check_seed(flag: str, seed: int) -> int:
    """A seed option in the range numpy's and torch's generators take (0 <= seed < 2**32)."""
    if not 0 <= seed < SEED_LIMIT:
        raise UsageError(f"{flag}: a seed must be 0 <= seed < 2**32 ({SEED_LIMIT}), got {seed}")
    return seed


def check_range(flag: str, value: float | None, low: float, high: float | None = None) -> None:
    """A number option within [low, high] (high None: no upper bound), the bounds in the message."""
    if value is None:
        return
    if not (value >= low and (high is None or value <= high)):  # NaN fails both
        bound = f"at least {low}" if high is None else f"between {low} and {high}"
        raise UsageError(f"{flag}: must be {bound}, got {value}")


def max_parallel() -> int:
    """The most threads or worker processes an option may ask for: 4 per core of this machine."""
    return 4 * (os.cpu_count() or 1)


def list_option(value: str | None, flag: str, allowed: Sequence[str] | None = None, default: tuple = (),
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


def check_sets(flag: str, names: tuple[str, ...]) -> tuple[str, ...]:
    """Algonauts sets to train or validate on: the training sets; the 78 test images have no RDMs."""
    for name in names:
        if name not in TRAINING_SETS:
            test = " is the test set, which has no RDMs" if name in IMAGE_SETS else ": no such training set"
            raise UsageError(f"{flag}: {name}{test} (training sets: {', '.join(TRAINING_SETS)})")
    return names


def targets_option(args, default: tuple[str, ...]) -> tuple[str, ...]:
    """--targets: Algonauts targets, each once."""
    return list_option(args.targets, "--targets", TARGET_NAMES, default, what="targets")


def backbone_argument(p: argparse.ArgumentParser, flag: str = "--backbone", default: str = "efficientnet_lite0",
                       help: str = "Siamese body") -> None:
    """A body option: a registered body's name, or a library model as timm:NAME or torchvision:NAME (`siamrdm
    bodies` lists them); whether the library has NAME is checked when the body is built."""
    def body(text: str) -> str:
        prefix, colon, model = text.partition(":")
        if text in BODIES or (colon and model and prefix in BODY_FAMILIES):
            return text
        raise argparse.ArgumentTypeError(f"unknown body '{text}' (choose from {', '.join(BODIES)}, or a library "
                                         f"model as {' or '.join(f'{f}:NAME' for f in BODY_FAMILIES)}; "
                                         "'siamrdm bodies' lists them)")

    names = [*sorted(BODIES), *(f"{family}:NAME" for family in BODY_FAMILIES)]
    p.add_argument(flag, default=default, type=body, metavar="{" + ",".join(names) + "}",
                   help=help if default is None else f"{help} (default: {default})")


def _training_options(p: argparse.ArgumentParser) -> None:
    """Options shared by every command that trains the Siamese network: the network and its loss, then the
    schedule of a fit."""
    _network_options(p)
    _schedule_options(p)


def _network_options(p: argparse.ArgumentParser) -> None:
    """What the network is, what it learns and where it runs: all lr-find takes (its steps and rates are its own)."""
    p.add_argument("--preset", default="quick", choices=sorted(PRESETS),
                   help="training preset: the settings no option gives (default: quick)")
    backbone_argument(p)
    p.add_argument("--stage", help="backbone stage that feeds the head (default: the backbone's)")
    p.add_argument("--head", choices=sorted(HEADS), help="head variant: paper (the paper's text, default) or "
                   "pairwise (the authors' released code)")
    p.add_argument("--weights", help="body weights: a state_dict file, or 'random' (default: pretrained, from the "
                   "library's cache or downloaded)")
    p.add_argument("--prior", choices=PRIORS, help="pretrained-layer RDM prior the head corrects: layer (the presets': "
                   "the best stage), nnls (a weighted sum of all stages), or none")
    p.add_argument("--train-stages", type=train_stages, metavar="K|all", help="what the unfrozen epochs train "
                   "with the head: the body's top K stages up to the head's stage, the lower ones frozen and their "
                   "output cached per image and view (0: the head alone), or all (the preset's); lr-find: what its "
                   "test trains with the head (default 0)")
    p.add_argument("--rescale", choices=RESCALINGS, help="target rescaling (default: minmax)")
    p.add_argument("--loss", choices=LOSSES, help="mse (the paper's, default) or correlation (1 - Pearson r of "
                   "the predicted and target dissimilarities: ignores their scale, as the metric does)")
    p.add_argument("--group-target", choices=GROUP_TARGETS, help="what is learnt from the subjects: mean (their "
                   "mean RDM: the paper's, and the paper preset's) or ranks (the mean of each subject's ranks: what "
                   "the score averages, every subject weighed the same; the quick preset's, the default)")
    p.add_argument("--per-image", choices=PER_IMAGE, help="what the model is for: keep (the per-image part a_i + a_j "
                   "learnt: new images of the same study; the default on the Algonauts sets) or remove (the pair "
                   "structure learnt, the per-image part from the prior: other studies; the default on your own "
                   "data)")
    p.add_argument("--shrinkage", type=float, help="with a prior: the head learns this much less of the residual "
                   "(0 to below 1; a ridge toward the prior)")
    p.add_argument("--image-size", type=int, help="input size in pixels (default: 224)")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda[:N]")
    p.add_argument("--precision", choices=PRECISIONS, help="the body's precision: fp32 (default) or bf16 autocast")
    p.add_argument("--channels-last", action="store_true", help="the body in channels-last memory layout")


def _schedule_options(p: argparse.ArgumentParser) -> None:
    """How a fit trains, validates and predicts: epochs, rate, augmentation, seeds. Not lr-find's: its test runs
    its own rising rates on the plain images, one set a step, with one seed and no validation."""
    p.add_argument("--tta", action="store_true", help="average predictions over each image and its mirror image")
    p.add_argument("--frozen-epochs", "--epochs", dest="epochs", type=int,
                   help="epochs with the body frozen (overrides the preset; --epochs is the old name)")
    p.add_argument("--unfrozen-epochs", type=int, help="epochs with the body trained (overrides the preset)")
    p.add_argument("--early-stopping", type=patience, metavar="N|off",
                   help="stop after N epochs without a better validation score, or 'off' (overrides the preset)")
    p.add_argument("--lr", type=float, help="head learning rate (overrides the preset)")
    p.add_argument("--head-average", type=decay, metavar="DECAY|off", help="keep a moving average of the head's "
                   "weights with this decay (e.g. 0.9; averages over about 1/(1 - decay) epochs), or 'off'")
    p.add_argument("--set-weights", choices=SET_WEIGHTS, help="each training set's share of the loss: pairs "
                   "(default) or reliability (pairs x its targets' split-half reliability)")
    p.add_argument("--no-augment", action="store_true", help="no random crops or flips")
    p.add_argument("--seeds", default="0", help="comma-separated seeds; predictions average over them")
    p.add_argument("--validate-every", type=int, metavar="K",
                   help="validate every K-th epoch and the last (default: 1, every epoch)")


def schedule_defaults() -> dict:
    """The schedule options' defaults, as a fit without them takes them: what a command that does not offer them
    (lr-find) hands the config they build."""
    p = argparse.ArgumentParser(add_help=False)
    _schedule_options(p)
    return vars(p.parse_args([]))


FLAG_OF_OPTION = {"out_dir": "--out"}


def count_or(text: str, word: str, minimum: int, what: str) -> int | str:
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


def patience(text: str):
    """--early-stopping: a positive number of epochs, or 'off' to switch a preset's early stopping off."""
    return count_or(text, OFF, 1, "epochs")


def train_stages(text: str) -> int | str:
    """--train-stages: a number of top stages, or 'all' (whether the body has that many is checked with the config)."""
    return count_or(text, "all", 0, "stages")


def decay(text: str):
    """--head-average: a decay, or 'off' to switch a preset's averaging off (the range is checked with the config)."""
    if text.strip().lower() == OFF:
        return OFF
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a decay such as 0.9, or 'off', got '{text}'") from None


def flag_of(option: str) -> str:
    return FLAG_OF_OPTION.get(option, "--" + option.replace("_", "-"))


def _add_method_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default=OFFICIAL_METHOD, choices=COMPARISON_METHODS,
                   help="RDM comparison, named as rsatoolbox names them (default: spearman, the official metric)")


def _add_foundation_commands(sub, handlers: Mapping[str, Handler]) -> None:
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
    p.set_defaults(func=handlers["score"])

    p = sub.add_parser("noise-ceiling", help="upper and lower noise ceilings of subject RDMs (in r2 and in rho)")
    p.add_argument("target", help="file of subject RDMs, (S, N, N) or (S, K, N, N) per key, or a .npy of their "
                   "upper triangles, (S, N(N-1)/2)")
    _add_method_option(p)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=handlers["noise-ceiling"])

    p = sub.add_parser("data-info", help="the image sets, image counts and RDM keys under a data root, or your own "
                       "images and RDM file checked against each other (--images, --rdms)")
    p.add_argument("--data", help=f"data root (default: ${DATA_ENV_VAR})")
    p.add_argument("--images", help="your own data: a folder of images (with --rdms), checked as fit reads it")
    p.add_argument("--rdms", help="your own data: the RDM file to check against --images")
    p.add_argument("--key", help="your own data: the key in --rdms (default: every key)")
    p.add_argument("--order", help="your own data: a text file of image names in the RDM's row order")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=handlers["data-info"])


def _add_dataset_options(p: argparse.ArgumentParser, held_out: str = "") -> None:
    """The images and RDMs a command trains on; `held_out` adds what it does with the held-out images."""
    p.add_argument("--data", help=f"Algonauts 2019 data root (default: ${DATA_ENV_VAR})")
    p.add_argument("--targets", help="comma-separated: EVC, IT, MEG_early, MEG_late (default: EVC)")
    p.add_argument("--sets", help="training image sets (default: 92,118)")
    p.add_argument("--val-set", help=f"an Algonauts set held out for validation (e.g. 118){held_out}")
    p.add_argument("--val-fraction", type=float, default=0.0,
                   help=f"fraction of each set's images held out{held_out}")
    _add_own_data_options(p)
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_own_data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--images", help="your own data: a folder of images, sorted naturally (img2 before img10), "
                   "with --rdms and --key")
    p.add_argument("--rdms", help="your own data: .mat/.npz/.npy of RDMs, (N, N), (S, N, N) or (S, K, N, N), or an "
                   "rsatoolbox RDMs .hdf5 file")
    p.add_argument("--key", help="your own data: the array's key in --rdms (its name becomes the target)")
    p.add_argument("--order", help="your own data: a text file of image names, one per line, in the RDM's row order")


def _add_model_commands(sub, handlers: Mapping[str, Handler]) -> None:
    p = sub.add_parser("fit", help="train the Siamese network on brain RDMs")
    _add_dataset_options(p)
    _add_external_options(p)
    _training_options(p)
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
    p.set_defaults(func=handlers["fit"])

    p = sub.add_parser("predict", help="predict the RDM of a folder of images with a trained model")
    p.add_argument("model", help="model.pt written by 'siamrdm fit'")
    p.add_argument("--images", required=True, help="folder of images (sorted naturally) or stimulus .mat")
    p.add_argument("--order", help="a text file of image names, one per line: the predicted RDM's row order")
    p.add_argument("--out", required=True, help="output .mat, .npz, .npy (one target), or .hdf5/.h5 (rsatoolbox "
                   "RDMs with the image names)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=handlers["predict"])

    p = sub.add_parser("lr-find", help="LR range test (Smith 2015): loss against learning rate")
    _add_dataset_options(p, held_out=": lr-find tests on the other images only, those a fit given the same "
                         "option trains on (it validates nothing)")
    _network_options(p)
    p.add_argument("--out", default="runs/lr-find", help="folder for lr_find.json and lr_find.png")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier lr-find run in --out")
    p.set_defaults(func=handlers["lr-find"])

    p = sub.add_parser("challenge", help="train on 92 + 118, predict the 78 test images, write submissions")
    p.add_argument("--data", help=f"Algonauts 2019 data root (default: ${DATA_ENV_VAR})")
    p.add_argument("--targets", help="comma-separated (default: all four)")
    _add_external_options(p)
    _training_options(p)
    p.add_argument("--out", default="runs/challenge", help="folder for the submission files and report")
    p.add_argument("--no-validate", action="store_true", help="skip the cross-set validation fits")
    p.add_argument("--jobs", type=int, default=1,
                   help="run the independent fits (targets x directions, final fits) in N processes (default: 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--quiet", action="store_true", help="no phase lines or bars on stderr (bars: terminal only)")
    p.set_defaults(func=handlers["challenge"])


def _add_external_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--external", action="append", metavar="FILE[:KEY]",
                   help="another study's RDMs of the same images (repeatable): held-out predictions are also scored "
                   "against them, as '<target> @ <study>'")
    p.add_argument("--external-fallback", choices=("prior", "none"), default="prior",
                   help="where the trained model predicts another study worse than its prior (paired over that "
                   "study's subjects): prior (default) scores the prior in its place, none keeps the trained one")


def _baseline_options(q: argparse.ArgumentParser, func: Callable) -> None:
    """A baseline kind's options."""
    q.add_argument("--data", help=f"Algonauts 2019 data root (default: ${DATA_ENV_VAR})")
    q.add_argument("--targets", help="comma-separated (default: EVC,IT,MEG_early,MEG_late)")
    backbone_argument(q, default=None, help="network (default: efficientnet_lite0)")
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


def _add_analysis_commands(sub, handlers: Mapping[str, Handler]) -> None:
    """baseline, evaluate, report."""
    p = sub.add_parser("baseline", help="pretrained-network baselines, scored across sets (fit 92 -> 118 and back)")
    kinds = p.add_subparsers(dest="baseline", required=True, metavar="KIND")
    for kind, text in (
        ("layers", "RDM of every backbone stage; the best stage on the training set is scored"),
        ("regression", "target as a non-negative weighted sum of the stage RDMs"),
    ):
        _baseline_options(kinds.add_parser(kind, help=text), handlers[f"baseline-{kind}"])

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
    _training_options(p)
    p.add_argument("--batch-size", type=int, default=16, help="images per forward pass for layer RDMs")
    p.add_argument("--no-plots", action="store_true", help="tables only: no figure drawn, none in the report")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier run in --out")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--quiet", action="store_true", help="no phase lines or bars on stderr (bars: terminal only)")
    p.set_defaults(func=handlers["evaluate"])

    p = sub.add_parser("report", help="gather a run folder's settings, tables and plots into report.md/.html")
    p.add_argument("run_dir", help="folder written by evaluate, challenge, fit or lr-find")
    p.add_argument("--title", help="page title (default: from the folder name)")
    p.set_defaults(func=handlers["report"])


def _add_body_commands(sub, handlers: Mapping[str, Handler]) -> None:
    p = sub.add_parser("bodies", help="the bodies --backbone takes: the registered ones, or library models by name")
    p.add_argument("--search", metavar="PATTERN", help="list timm and torchvision models whose names match (e.g. "
                   "'resnet*' or 'convnext'), as --backbone takes them")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=handlers["bodies"])


class Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr and exit 2, like bad input; `--help` still shows the usage."""

    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("siamrdm").strip()  # 'fit', 'baseline layers', or '' at the top
        where = f"{command}: " if command else ""
        help_hint = f"siamrdm {command} --help" if command else "siamrdm --help"
        self.exit(2, f"siamrdm: error: {printable(where + ' '.join(message.split()))} (see '{help_hint}')\n")

    def parse_known_args(self, args=None, namespace=None):
        """A command's parser refuses what it does not know itself, so the error names the command and its help
        (argparse leaves that to the top-level parser, which would point at 'siamrdm --help')."""
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self.prog != "siamrdm":
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser(handlers: Mapping[str, Handler]) -> argparse.ArgumentParser:
    """The whole command line; `handlers` maps each command ('fit', 'baseline-layers', ...) to its function,
    which parsing sets as `args.func`."""
    parser = Parser(
        prog="siamrdm",
        description="Predict brain RDMs from images with Siamese networks; score them as Algonauts 2019 did.",
    )
    # Every subparser (and theirs, e.g. 'baseline layers') is a Parser too.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    _add_foundation_commands(sub, handlers)
    _add_model_commands(sub, handlers)
    _add_analysis_commands(sub, handlers)
    _add_body_commands(sub, handlers)
    return parser
