"""The command line the nested epoch benchmarks share (epoch_scaling.py, epoch_rules.py): one check per training
set and target, each record appended to OUT/<name>.jsonl as it finishes; `--summarize FILE` prints the table."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

from siamrdm.io.datasets import TARGET_NAMES, BrainDataset, load_algonauts_set
from siamrdm.io.jsonfiles import strict_json_text


def append_record(path: str | os.PathLike, record: dict) -> None:
    """`record` as one line of strict JSON appended to the log at `path` (a NaN as null, as every JSON siamrdm
    writes): the benchmarks' logs are read back line by line, by `--summarize` and by any JSON reader."""
    with open(path, "a") as f:
        f.write(strict_json_text(record) + "\n")


def run_cells(doc: str, name: str, run_check: Callable[..., dict], summarize: Callable[[str], str],
              describe: Callable[[dict], str]) -> None:
    """Parse the shared options, then `run_check(target, dataset, device, frozen_epochs=, image_size=)` per set and
    target; `describe(record)` is the line printed for each."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("SIAMRDM_DATA", "../shared/algonauts2019"))
    parser.add_argument("--targets", default=",".join(TARGET_NAMES))
    parser.add_argument("--sets", default="92,118")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, help="frozen epochs (default: the quick preset's); a smoke test's")
    parser.add_argument("--image-size", type=int, help="image size (default: the preset's); a smoke test's")
    parser.add_argument("--out", default=os.environ.get("OUT", f"runs/{name.replace('_', '-')}"))
    parser.add_argument("--summarize", help=f"print the markdown table of a {name}.jsonl and exit")
    args = parser.parse_args()
    if args.summarize:
        print(summarize(args.summarize))
        return
    os.makedirs(args.out, exist_ok=True)
    for set_name in args.sets.split(","):
        dataset: BrainDataset = load_algonauts_set(args.data, set_name, TARGET_NAMES)
        for target in args.targets.split(","):
            record = run_check(target, dataset, args.device, frozen_epochs=args.epochs, image_size=args.image_size)
            append_record(os.path.join(args.out, f"{name}.jsonl"), record)
            print(f"{target:<10} {set_name:>4}: {describe(record)} ({record['seconds']:.0f} s)", flush=True)
