"""The `siamrdm` command: parses (cli_options, cli_settings), calls the library, prints (cli_output).

Exit codes: 0 success, 2 bad input or usage (one line on stderr, no traceback), 130 interrupted (Ctrl-C),
1 anything else.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from functools import partial
from pathlib import Path

from .cli_options import (
    Handler,
    check_range,
    check_seed,
    flag_of,
    list_option,
    max_parallel,
    schedule_defaults,
    targets_option,
)
from .cli_options import build_parser as build_parser_for
from .cli_output import (
    CheckedStdout,
    error_line,
    print_ceilings,
    print_evaluation,
    print_json,
    print_notes,
    silence_stdout,
    stdout_failure,
)
from .cli_settings import (
    analysis_targets,
    baseline_options,
    check_fit_options,
    check_folds,
    check_large_fit_options,
    check_own_data_info,
    check_score_options,
    config_from_args,
    default_per_image,
    input_size,
    out_dir,
    own_dataset,
    seeds_option,
    training_datasets,
    training_inputs,
)
from .errors import ConfigError, DataError, UsageError, printable
from .io.datasets import TARGET_NAMES, TRAINING_SETS, load_algonauts_set
from .io.images import load_image_set, pattern_names, shown_names
from .io.rdmfiles import check_rdm_keys, save_rdms
from .io.tables import fmt
from .pipelines.fitsummary import seed_records, selected_epochs, validation_scores
from .pipelines.methods import method_names
from .pipelines.scorefiles import file_ceilings, score_files, score_table
from .rdm import reliability
from .rdm.noise_ceiling import NO_CEILING_NOTE
from .rdm.reliability import describe_root, print_reliability, reliability_line, report_reliability

# --------------------------------------------------------------------------- foundation commands


def cmd_score(args) -> int:
    method = check_score_options(args)
    result, notes = score_files(args.submission, args.target, args.key, args.target_key, args.permutations,
                                args.seed, method)
    missing = ", ".join(result.get("missing", []))
    if missing:  # a valid partial result (exit 0), but never mistaken for a complete one
        print(f"siamrdm: warning: {printable(args.submission)} lacks {printable(missing)} of "
              f"{printable(args.target)}; the overall score is withheld", file=sys.stderr)
    if args.json:
        print_json(result)
    else:
        print(score_table(result, method))
    print_notes(notes)
    return 0


def cmd_noise_ceiling(args) -> int:
    result, notes = file_ceilings(args.target, args.method)
    if args.json:
        print_json(result)
    else:
        print_ceilings(result)
    print_notes(notes)
    return 0


def _own_data_info(args) -> int:
    """data-info --images DIR --rdms FILE: your own data checked as fit reads it, before any run."""
    check_own_data_info(args)
    info = reliability.describe_own_data(args.images, args.rdms, args.key, args.order)
    if args.json:
        print_json(info)
        return 0
    images, rdms = info["images"], info["rdms"]
    order = "natural order" if images["order"] == "natural" else f"order from {printable(images['order'])}"
    print(f"images: {images['count']} in {printable(images['source'])} ({shown_names(images['names'])}; {order})")
    names = rdms["names"]
    print(f"rdms: {printable(rdms['file'])}: " + (
        f"pattern descriptor '{printable(names['descriptor'])}' names the {names['count']} images, in the same "
        "order" if names else "names no images (its rows are taken in the images' order)"))
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
    info, unread = describe_root(args.data)
    if args.json:
        print_json(info)
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
    error_line(f"{problems[0]}{more}")
    return 2


# --------------------------------------------------------------------------- model commands


def cmd_fit(args) -> int:
    from dataclasses import asdict

    from .pipelines.external import bind_held_out, check_held_out, load_externals, score_held_out
    from .train.largeset import is_large_set_input
    from .train.predict import fit_predictor

    if args.batch_images is not None or args.loader_workers is not None or is_large_set_input(args.images,
                                                                                               args.rdms):
        return _cmd_fit_large(args)
    seeds = check_fit_options(args)
    default_per_image(args, own_data=bool(args.images))
    train, val, targets, order = training_datasets(args)
    config = config_from_args(args, targets)
    externals = load_externals(args.external, targets)
    if externals and not val:
        raise UsageError("--external scores predictions of held-out images: give --val-fraction or --val-set")
    externals = bind_held_out(externals, [*train, *val], order)
    check_held_out(externals, val)
    out = out_dir(args.out, args.overwrite, args.resume)
    print_notes(*train, *val, *externals)
    reliability = report_reliability(train, targets, verbose=not args.quiet)
    chosen = None
    if args.select_epochs:
        from .train.selection import select_epochs, with_epochs

        chosen, _ = select_epochs(config, train, seeds, progress=not args.quiet)
        if chosen is None:
            raise UsageError("--select-epochs: a training set has too few images for 2 folds of 3 images")
        config = with_epochs(config, chosen)
    settings = {"command": "fit", "world_size": 1, "config": asdict(config), "seeds": list(seeds),
                "inputs": training_inputs(args)}
    predictor = fit_predictor(config, train, val, seeds, out, resume=args.resume, progress=not args.quiet,
                              overwrite=args.overwrite, image_order=order, settings=settings)
    summary = {"model": str(out / "model.pt"), "targets": list(targets), "seeds": seed_records(predictor.metrics),
               "reliability": reliability}
    if chosen is not None:
        summary["selected_epochs"] = selected_epochs(chosen, len(train), config.prior)
    if val:
        summary["validation"] = validation_scores(predictor, val, targets)
    if externals:
        summary["external"], notes = score_held_out(predictor, val, externals, args.external_fallback == "prior")
        print_notes(notes)
    print_json(summary)
    return 0


def _cmd_fit_large(args) -> int:
    """fit in mini-batches (--batch-images): a large image set (a folder or an HDF5 file of uint8 images) with
    condensed target RDMs, on one process or on every rank torchrun starts."""
    from dataclasses import replace

    from .train.distributed import fit_large, init_from_env, rank_session
    from .train.largeset import open_large_set, sample_reliability

    batch = check_large_fit_options(args)
    # The presets' prior and ranks are the full-batch path's; a --prior or --group-target given is checked (a
    # prior refused, ranks too: they need every pair sorted) by the library, before any full-batch check.
    args.prior = args.prior or "none"
    args.group_target = args.group_target or "mean"
    seeds = seeds_option(args)
    config = config_from_args(args, (args.key,), minibatch=True)
    ranks, device = init_from_env(config.device)
    with rank_session(ranks):  # a rank's bad input: its one line, exit 2 (torchrun: see distributed.rank_session)
        if device is not None:  # torchrun on GPUs: one per local rank
            config = replace(config, device=device)
        images, targets = open_large_set(args.images, args.rdms, args.key, args.order)
        if ranks.main:
            sampled, reliability = sample_reliability(targets[args.key], len(images))
        out = out_dir(args.out, args.overwrite, args.resume)
        if ranks.main:  # printed once nothing more can be refused before training: a refusal stays one line
            print_reliability(f"{args.key} ({sampled} of {len(images)} images)", reliability,
                              verbose=not args.quiet)
        settings = {"command": "fit", "seeds": list(seeds),
                    "inputs": {"images": str(args.images), "rdms": str(args.rdms), "key": args.key}}
        predictor = fit_large(config, batch, images, targets, seeds, out, resume=args.resume,
                              progress=not args.quiet and ranks.main, overwrite=args.overwrite, settings=settings,
                              ranks=ranks)
    if ranks.main:
        print_json({"model": str(out / "model.pt"), "targets": [args.key], "seeds": seed_records(predictor.metrics),
                    "world_size": ranks.world, "batch": {"batch_images": batch.batch_images,
                                                         "val_fraction": batch.val_fraction}})
    print_notes(*targets.values())
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
    print(printable(f"wrote {path}: {', '.join(keyed)} ({len(images)} x {len(images)}); the model's "
                    f"{purpose_text(predictor.config.per_image)}"))  # keys from the model file, shown escaped
    return 0


def cmd_lr_find(args) -> int:
    from .io.files import run_folder, run_mode, write_json
    from .model.backbones import create_body
    from .pipelines.plots import plot_lr_range
    from .train.lrfind import lr_range_test

    default_per_image(args, own_data=bool(args.images))  # the targets fit would train on
    train, _, targets, _ = training_datasets(args)
    # --train-stages says what the test trains with the head (0 unless given), not what a fit's unfrozen epochs do
    stages = 0 if args.train_stages is None else args.train_stages
    # lr-find offers no schedule option (its rates, steps and images are its own): a fit's defaults build the config
    config = config_from_args(argparse.Namespace(**{**schedule_defaults(), **vars(args), "train_stages": None}),
                              targets)
    create_body(config.backbone, config.weights, config.stage).trained_stages(stages)  # a count the body has
    out = out_dir(args.out, args.overwrite)
    with run_folder(out, "lr-find", run_mode(args.overwrite)):
        result = lr_range_test(config, train, progress=not args.quiet, train_stages=stages)
        write_json(out / "lr_find.json", result, indent=2)
        plot = plot_lr_range(result, out / "lr_find.png")
    print(f"suggested learning rate: {result['suggested_lr']:.3g} (curve: {printable(plot)})")  # --out's path
    print_notes(*train)
    return 0


def cmd_challenge(args) -> int:
    from .pipelines.challenge import run_challenge
    from .pipelines.external import load_externals

    targets = targets_option(args, TARGET_NAMES)
    check_range("--jobs", args.jobs, 1, max_parallel())
    seeds = seeds_option(args)
    default_per_image(args, own_data=False)
    config = config_from_args(args, targets)
    externals = load_externals(args.external, targets)
    out = out_dir(args.out, args.overwrite)
    result = run_challenge(config, args.data, out, targets, seeds, validate=not args.no_validate,
                           progress=not args.quiet, overwrite=args.overwrite, jobs=args.jobs, externals=externals,
                           keep_prior=args.external_fallback == "prior")
    for row in result["validation"]:
        pct = "-" if row["pct_nc"] is None else f"{row['pct_nc']:.1f}%"
        print(f"validation {row['method']:<10} {row['target']:<10} {row['direction']:<8} r2={row['r2']:.4f}  {pct} "
              "of noise ceiling")
    written = [*result["settings"]["submission_files"], *(() if args.no_validate else ("validation.md",)), "report.md"]
    print(f"wrote {', '.join(written)} and report.html in {printable(out)}")
    print_notes(*externals)
    return 0


def _cmd_baseline(args, method: str) -> int:
    import time

    from .io.files import run_folder, run_mode
    from .pipelines.evaluate import check_bodies, compare_bodies, evaluate_sets, write_evaluation
    from .train.fullbatch import config_from_preset

    start = time.perf_counter()
    targets, bodies, backbone = baseline_options(args)
    config = config_from_preset("quick", backbone=backbone, weights=args.weights, image_size=args.image_size)
    # every body, with its weights, before any set is read or folder made
    check_bodies(bodies or (backbone,), args.weights, "backbones" if bodies else "backbone")
    sets = [load_algonauts_set(args.data, name, targets) for name in TRAINING_SETS]
    out = out_dir(args.out, args.overwrite) if args.out is not None else None
    with run_folder(out, "baseline", run_mode(args.overwrite)) if out else contextlib.nullcontext():
        if bodies:
            evaluation = compare_bodies(sets, bodies, method, targets, config, args.batch_size,
                                        progress=not args.quiet)
        else:
            evaluation = evaluate_sets(sets, (method,), targets, config, batch_size=args.batch_size,
                                       progress=not args.quiet)
        paths = write_evaluation(evaluation, sets, out) if out else None
    print_evaluation(evaluation, getattr(args, "json", False), paths, time.perf_counter() - start)
    print_notes(*sets)
    return 0


cmd_baseline_layers: Handler = partial(_cmd_baseline, method="layers")
cmd_baseline_regression: Handler = partial(_cmd_baseline, method="regression")


def cmd_evaluate(args) -> int:
    import time

    from .io.files import run_folder, run_mode
    from .io.progress import Progress
    from .pipelines.evaluate import run_evaluation, run_fold_evaluation
    from .pipelines.external import bind_to_sets, load_externals
    from .pipelines.report import write_report

    progress = Progress.of(not args.quiet, "evaluate")
    methods = list_option(args.methods, "--methods", method_names(), method_names(), what="methods")
    check_seed("--fold-seed", args.fold_seed)
    seeds = seeds_option(args)
    loading = time.perf_counter()
    own = own_dataset(args, input_size(args))
    if own is None and args.folds is not None:
        raise UsageError("--folds cross-validates your own data: use it with --images, --rdms and --key (the "
                         "Algonauts sets are evaluated across sets)")
    if own is not None and args.targets:
        raise UsageError("--targets names Algonauts targets; with your own data the target is --key")
    targets = tuple(own.targets) if own is not None else analysis_targets(args)
    if args.batch_size < 1:
        raise UsageError("--batch-size must be at least 1")
    default_per_image(args, own is not None)
    config = config_from_args(args, targets)
    externals = load_externals(args.external, targets)
    folds = 5 if args.folds is None else args.folds
    if own is not None:
        check_folds(own, folds, args.fold_seed)
        externals = tuple(e.bind(own.images.names) for e in externals)
    else:  # the sets are read (and refused) before the run folder exists
        sets = [load_algonauts_set(args.data, name, targets, config.image_size) for name in TRAINING_SETS]
        externals = tuple(bind_to_sets(externals, {d.name: d.images.names for d in sets}))
    out = out_dir(args.out, args.overwrite)
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
            md, page = write_report(out, title="siamrdm evaluate: cross-set scores", figures=not args.no_plots)
        else:
            inputs = {"image_folder": str(args.images), "rdms": str(args.rdms), "key": args.key, "order": args.order}
            evaluation, paths = run_fold_evaluation(own, out, folds, methods, config, seeds, args.fold_seed,
                                                    progress=progress, make_plots=not args.no_plots,
                                                    inputs=inputs, externals=externals,
                                                    keep_prior=args.external_fallback == "prior")
            md, page = write_report(out, title=f"siamrdm evaluate: {folds}-fold cross-validation over the "
                                    f"{len(own)} images of {Path(args.images).name} ({args.key})",
                                    figures=not args.no_plots)
    paths["report"], paths["report_html"] = md, page
    progress.done(f"wrote evaluation.md, evaluation.csv, report.md and {page}")
    print_evaluation(evaluation, getattr(args, "json", False), paths, time.perf_counter() - start)
    print_notes(*loaded, *externals)
    return 0


def cmd_report(args) -> int:
    from .pipelines.report import write_report

    md, page = write_report(args.run_dir, title=args.title)
    print(printable(f"wrote {md} and {page}"))
    return 0


# A search that matches at most this many library models shows their stages (each is built once, with random
# weights: a large transformer takes seconds).
def cmd_bodies(args) -> int:
    """The registered bodies, or with --search the library models whose names match, with their stages where cheap."""
    from .model.backbones import BODY_STAGES_UP_TO, describe_bodies

    rows, described = describe_bodies(args.search)
    if args.json:
        print_json({"bodies": rows})
        return 0
    if not rows:
        print(f"no timm or torchvision model matches '{printable(args.search)}'")
    for row in rows:
        if "stages" in row:
            print(f"{row['name']}: {row['description']}; {row['image_size']} px; default stage "
                  f"{row['default_stage']}; stages {', '.join(row['stages'])}")
        else:
            print(f"{row['name']}" + (f": {printable(row['problem'])}" if "problem" in row else ""))  # a library's
    if args.search and not described:
        print(f"({len(rows)} models; stages are shown for searches that match at most {BODY_STAGES_UP_TO})")
    return 0


COMMANDS: dict[str, Handler] = {
    "score": cmd_score, "noise-ceiling": cmd_noise_ceiling, "data-info": cmd_data_info, "fit": cmd_fit,
    "predict": cmd_predict, "lr-find": cmd_lr_find, "challenge": cmd_challenge, "evaluate": cmd_evaluate,
    "report": cmd_report, "bodies": cmd_bodies, "baseline-layers": cmd_baseline_layers,
    "baseline-regression": cmd_baseline_regression,
}


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (cli_options), each command's function as its `args.func`."""
    return build_parser_for(COMMANDS)


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


def run_command(args: argparse.Namespace) -> int:
    """`args.func(args)` as a siamrdm command runs (benchmarks/bench_training.py runs its own so): stdout
    checked, and its failures as exit codes (see the module's docstring). Each command prints the notes on how
    its input files were read (cli_output.print_notes) itself."""
    stdout, sys.stdout = sys.stdout, CheckedStdout(sys.stdout)
    try:
        return _run(args)
    finally:
        sys.stdout = stdout


def _run(args) -> int:
    """The command, its failures as exit codes (see the module's docstring)."""
    try:
        code = args.func(args)
        sys.stdout.flush()  # output that cannot be written fails here, as this command's error, not at exit
        return code
    except ConfigError as exc:  # a setting: named by its command-line flag
        error_line(f"{flag_of(exc.option)}: {exc.problem}")
        return 2
    except DataError as exc:
        error_line(str(exc))
        return 2
    except KeyboardInterrupt:  # Ctrl-C: 128 + SIGINT, as shells report it (1 is for defects)
        print("siamrdm: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of stdout left (`| head`): as any Unix tool, stop quietly
        silence_stdout()
        return 141  # 128 + SIGPIPE, what the shell reports for a tool the pipe ended
    except Exception as exc:  # a one-line message; SIAMRDM_DEBUG=1 shows the traceback
        reason = stdout_failure(exc)
        if reason is not None:  # `> /dev/full`, a full disk: bad output, not a defect
            print(f"siamrdm: error: standard output: cannot be written ({reason})", file=sys.stderr)
            return 2
        if os.environ.get("SIAMRDM_DEBUG"):
            raise
        print(f"siamrdm: {type(exc).__name__}: {printable(' '.join(str(exc).split()))}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())


