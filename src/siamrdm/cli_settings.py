"""What the options name, read and checked before any work, for the commands in cli.py: the scoring options,
the training config, the seeds, the image sets (the Algonauts sets or your own), the run folder, and the options
a mini-batch fit refuses. Each refusal names its option (UsageError; a setting's ConfigError is named by cli)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .cli_options import check_range, check_seed, check_sets, list_option, max_parallel, targets_option
from .errors import UsageError
from .io.datasets import TARGET_NAMES, TRAINING_SETS, BrainDataset, load_algonauts_set, load_dataset
from .rdm.transform import DOT_METHODS

if TYPE_CHECKING:
    from .train.config import TrainConfig
    from .train.distributed import BatchSettings


# Permutations held at once by the test: 10**13 would ask for 72.8 TiB; 100,000 resolve p down to 1e-5.
MAX_PERMUTATIONS = 100_000


def check_score_options(args) -> str:
    """--method, checked before any work: permutation p-values need a dot-product method (--permutations left
    out: on by default where cheap, default_permutations)."""
    if args.permutations is not None and not 0 <= args.permutations <= MAX_PERMUTATIONS:
        raise UsageError(f"--permutations must be between 0 (no permutation test) and {MAX_PERMUTATIONS}, got "
                         f"{args.permutations}")
    check_seed("--seed", args.seed)
    if args.permutations and args.method not in DOT_METHODS:
        raise UsageError(f"--permutations works with --method {', '.join(DOT_METHODS)}, not {args.method}")
    return args.method


def config_from_args(args: argparse.Namespace, targets: tuple[str, ...], minibatch: bool = False) -> TrainConfig:
    """The run's TrainConfig from the preset and flags, checked (values, device, stage size) before any work; with
    `minibatch` as the mini-batch path checks it (distributed.check_minibatch_config: what that path refuses, a
    prior among them, refused first)."""
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
    if minibatch:
        from .train.distributed import check_minibatch_config

        return check_minibatch_config(config)
    return check_config(config)


def seeds_option(args) -> tuple[int, ...]:
    seeds = list_option(args.seeds, "--seeds", convert=int, what="integers")
    if not seeds:
        raise UsageError("--seeds: give at least one seed")
    return tuple(check_seed("--seeds", seed) for seed in seeds)


def input_size(args) -> int | None:
    """The side the network resizes images to (--image-size, else the preset's): images are reduced towards it as
    they are read. None (kept as they are) when it is out of range: the config check then says so."""
    from .train.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE, config_from_preset

    size = config_from_preset(args.preset, image_size=args.image_size).image_size
    return size if MIN_IMAGE_SIZE <= size <= MAX_IMAGE_SIZE else None


def own_dataset(args, size: int | None = None) -> BrainDataset | None:
    """Your own data from --images, --rdms, --key (and --order), or None when none of them is given; images
    reduced as read for a network of input `size`."""
    if not (args.images or args.rdms):
        if getattr(args, "order", None):
            raise UsageError("--order orders your own images: use it with --images, --rdms and --key")
        return None
    if not (args.images and args.rdms and args.key):
        raise UsageError("your own data needs all of --images DIR, --rdms FILE and --key KEY")
    return load_dataset(args.images, args.rdms, args.key, order=args.order, size=size)


def training_datasets(args) -> tuple[list, list, tuple[str, ...], list[str] | None]:
    """(train sets, validation sets, targets, image order) from --data/--sets or from --images/--rdms/--key;
    the image order (the RDM's rows) only for your own data. Images are reduced as read (`input_size`)."""
    from .train.fullbatch import split_holdout

    if getattr(args, "key", None) and not (args.images or args.rdms):
        raise UsageError("--key names an array of your own --rdms file: use it with --images and --rdms (the "
                         "Algonauts sets take --targets)")
    if (args.images or args.rdms) and (args.sets or args.targets):  # before your data are read
        raise UsageError("--sets and --targets choose Algonauts sets and targets; with your own data the "
                         "target is --key")
    size = input_size(args)
    own = own_dataset(args, size)
    if own is not None:
        train = [own]
        targets: tuple[str, ...] = (args.key,)
    else:
        targets = targets_option(args, ("EVC",))
        names = check_sets("--sets", list_option(args.sets, "--sets", default=TRAINING_SETS, what="sets"))
        if args.val_set:  # checked before any set is read
            check_sets("--val-set", (args.val_set,))
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


def training_inputs(args) -> dict:
    """What a full-batch fit trains and validates on, as its settings.json records it, so that `--resume`
    continues a run only on the same images, RDMs and held-out images (the targets are in its config)."""
    if args.images or args.rdms:
        inputs = {"images": str(args.images), "rdms": str(args.rdms), "key": args.key, "order": args.order}
    else:
        inputs = {"sets": list(list_option(args.sets, "--sets", default=TRAINING_SETS, what="sets")),
                  "val_set": args.val_set}
    return {**inputs, "val_fraction": args.val_fraction}


def out_dir(path: str | None, overwrite: bool = False, resume: bool = False) -> Path:
    """--out checked before any work (files.check_run_folder): new or empty, or with --overwrite or --resume a
    folder siamrdm marked as its run."""
    from .io.files import check_run_folder, run_mode

    if path is not None and not path.strip():
        raise UsageError("--out: empty folder name; give a folder (e.g. runs/NAME)")
    return check_run_folder(path, run_mode(overwrite, resume))


def analysis_targets(args) -> tuple[str, ...]:
    return targets_option(args, TARGET_NAMES)


def baseline_options(args: argparse.Namespace) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """baseline's options checked, in order: (its targets; the bodies --backbones compares, or none; the body
    the config names)."""
    from .train.config import MAX_IMAGE_SIZE, MIN_IMAGE_SIZE

    check_range("--image-size", args.image_size, MIN_IMAGE_SIZE, MAX_IMAGE_SIZE)
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    targets = analysis_targets(args)
    bodies = list_option(args.backbones, "--backbones", what="bodies")
    if bodies and args.backbone is not None:
        raise UsageError("--backbone scores one body and --backbones compares several: pass one of them")
    if len(bodies) > 1 and args.weights not in (None, "random"):
        raise UsageError(f"--weights {args.weights}: one weights file cannot be the weights of {len(bodies)} bodies; "
                         "compare pretrained ones (or 'random')")
    return targets, bodies, args.backbone or (bodies[0] if bodies else "efficientnet_lite0")


def check_folds(dataset: BrainDataset, folds: int, seed: int) -> None:
    """--folds checked before any work or file: each fold needs at least 3 images."""
    from .rdm.splits import fold_indices

    fold_indices(len(dataset), folds, seed)  # a ConfigError names --folds


def default_per_image(args, own_data: bool) -> None:
    """--per-image's default: the pair structure (remove) for your own data, whose models are for other people
    and studies; the per-image part (keep) on the Algonauts sets, judged on new images of the same study (README,
    "What a model is for"; RESULTS.md, "Other studies")."""
    if args.per_image is None:
        args.per_image = "remove" if own_data else "keep"


def check_own_data_info(args: argparse.Namespace) -> None:
    """data-info --images DIR --rdms FILE: both given, and no Algonauts root beside them."""
    if not (args.images and args.rdms):
        raise UsageError("data-info checks your own data with both --images DIR and --rdms FILE")
    if args.data:
        raise UsageError("--data describes the Algonauts layout; --images and --rdms check your own data: give one")


def check_fit_options(args: argparse.Namespace) -> tuple[int, ...]:
    """fit's options a full-batch fit refuses, before any work; its seeds."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("several processes (torchrun) train in mini-batches: give --batch-images N")
    seeds = seeds_option(args)
    if args.select_epochs and (args.val_fraction or args.val_set):
        raise UsageError("--select-epochs chooses the epochs on folds or cross-set curves of the training sets; "
                         "--val-fraction and --val-set choose them on held-out images: pass one way")
    return seeds


def check_large_fit_options(args: argparse.Namespace) -> BatchSettings:
    """fit --batch-images: the options a mini-batch fit cannot take refused, before any work; its batch settings."""
    from .train.distributed import BatchSettings, check_batch_settings
    from .train.largeset import is_large_set_input

    if args.batch_images is None:
        large = args.images if is_large_set_input(args.images, None) else args.rdms if is_large_set_input(
            None, args.rdms) else None
        if large is None:  # here for --loader-workers alone: the inputs are not what the mini-batch path alone reads
            raise UsageError("--loader-workers: sets the worker processes of a mini-batch fit; give --batch-images "
                             "N too")
        raise UsageError(f"{large}: large image sets train in mini-batches: give --batch-images N (images per "
                         "step, e.g. 256)")
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
    if args.loader_workers is not None and args.loader_workers > max_parallel():  # below 0: check_batch_settings
        raise UsageError(f"--loader-workers: at most {max_parallel()} (4 per core), got {args.loader_workers}")
    return check_batch_settings(BatchSettings(args.batch_images, args.val_fraction,
                                              2 if args.loader_workers is None else args.loader_workers))
