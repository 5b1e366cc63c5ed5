"""Same seed, same outputs: a fingerprint of what a few small runs write, to compare code before and after a change.

    PYTHONPATH=src python benchmarks/same_seed.py --out runs/same-seed/before
    ... change the code ...
    PYTHONPATH=src python benchmarks/same_seed.py --out runs/same-seed/after --compare runs/same-seed/before

Runs, on the shared data at small sizes: a challenge (prior, augmented frozen epochs, then unfrozen ones), a fit
with held-out images, its prediction of the 78 test images, an LR range test, and a mini-batch fit of a small
made-up large set. It writes fingerprint.json: for every file the runs wrote, the SHA-256 of its content with what
legitimately changes from run to run left out (seconds, peak memory, dates in .mat headers, run ids). With
`--compare`, it lists every file whose fingerprint differs and exits 1 if any does.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import re
import sys
from pathlib import Path

import h5py
import numpy as np
from scipy.io import loadmat

from siamrdm.cli import main as siamrdm_main
from siamrdm.io.files import write_json
from siamrdm.train import largeset

SMALL = ["--image-size", "64", "--device", "cpu", "--quiet"]
# Columns and keys whose values are timings or run identities, not results.
VOLATILE = {"seconds", "val_seconds", "peak_rss_mb", "run_id", "created", "elapsed_s", "wall_s", "minutes"}
SKIP_SUFFIXES = {".png", ".html", ".pt", ".lock"}  # images, reports with embedded images, pickled checkpoints
SKIP_NAMES = {".siamrdm-run.json", ".siamrdm-manifest"}


def run(*args: str) -> None:
    code = siamrdm_main(list(args))
    if code:
        sys.exit(f"siamrdm {' '.join(args)} exited {code}")


def runs(data: Path, out: Path) -> None:
    """The runs whose outputs are fingerprinted: small, but every path of the training loop."""
    run("challenge", "--data", str(data), "--targets", "EVC,MEG_late", "--frozen-epochs", "3", "--unfrozen-epochs",
        "2", *SMALL, "--out", str(out / "challenge"))
    run("challenge", "--data", str(data), "--targets", "EVC", "--prior", "none", "--frozen-epochs", "3",
        "--unfrozen-epochs", "2", "--no-validate", *SMALL, "--out", str(out / "challenge-no-prior"))
    run("fit", "--data", str(data), "--targets", "EVC", "--sets", "92", "--val-fraction", "0.2", "--prior", "none",
        "--frozen-epochs", "3", "--unfrozen-epochs", "2", *SMALL, "--out", str(out / "fit"))
    run("predict", str(out / "fit" / "model.pt"), "--images", str(data / "Test_Data" / "78images"), "--out",
        str(out / "predict" / "evc78.npy"), "--device", "cpu")
    run("lr-find", "--data", str(data), "--targets", "EVC", "--sets", "92", *SMALL, "--out", str(out / "lr-find"))
    large = out / "large-set"
    largeset.make_large_set(data / "Training_Data" / "92_Image_Set" / "92images", large, 40, image_size=32,
                            subjects=2, noise=0.5)
    run("fit", "--images", str(large / "images.h5"), "--rdms", str(large / "rdms.npy"), "--key", "X",
        "--batch-images", "12", "--val-fraction", "0.2", "--frozen-epochs", "2", "--unfrozen-epochs", "2",
        "--loader-workers", "0", "--lr", "0.003", "--stage", "blocks2", "--head", "pairwise", "--image-size", "32",
        "--device", "cpu",
        "--quiet", "--out", str(out / "minibatch"))


def _strip(value):
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _volatile_text(text: str, root: Path) -> str:
    """Text with the run's own folder named '<out>' and the JSON fields of VOLATILE left out, wherever they stand
    (the settings block of report.md holds them too): two runs into different folders compare equal."""
    text = text.replace(str(root.resolve()), "<out>").replace(str(root), "<out>")
    return re.sub(r'"(' + "|".join(VOLATILE) + r')": [^,\n}]*,?', "", text)


def content(path: Path, root: Path) -> bytes | None:
    """What a file says, without the parts that change from run to run; None: not fingerprinted."""
    if path.suffix in SKIP_SUFFIXES or path.name in SKIP_NAMES:
        return None
    if path.suffix == ".mat":
        arrays = {k: v for k, v in loadmat(path).items() if not k.startswith("__")}
        return b"".join(k.encode() + np.ascontiguousarray(v).tobytes() for k, v in sorted(arrays.items()))
    if path.suffix in (".npy", ".npz"):
        loaded = np.load(path, allow_pickle=False)
        arrays = dict(loaded) if path.suffix == ".npz" else {"": loaded}
        return b"".join(k.encode() + np.ascontiguousarray(v).tobytes() for k, v in sorted(arrays.items()))
    if path.suffix in (".h5", ".hdf5"):
        parts = []
        with h5py.File(path, "r") as f:
            f.visititems(lambda name, obj: parts.append(name.encode() + obj[()].tobytes())
                         if isinstance(obj, h5py.Dataset) else None)
        return b"".join(parts)
    if path.suffix == ".json":
        text = path.read_text().replace(str(root.resolve()), "<out>").replace(str(root), "<out>")
        return json.dumps(_strip(json.loads(text)), sort_keys=True).encode()
    if path.suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(path.read_text())))
        return json.dumps([_strip(row) for row in rows], sort_keys=True).encode()
    if path.suffix in (".md", ".html", ".txt"):
        return _volatile_text(path.read_text(), root).encode()
    return path.read_bytes()


def fingerprint(out: Path) -> dict[str, str]:
    prints = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and (data := content(path, out)) is not None:
            prints[str(path.relative_to(out))] = hashlib.sha256(data).hexdigest()
    return prints


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="folder for the runs and fingerprint.json (must not exist)")
    p.add_argument("--compare", help="an earlier --out folder: list the files whose fingerprint differs")
    p.add_argument("--fingerprint-only", action="store_true", help="fingerprint an earlier --out folder again")
    p.add_argument("--data", default=os.environ.get("SIAMRDM_DATA", "../shared/algonauts2019"))
    args = p.parse_args()
    out = Path(args.out)
    if not args.fingerprint_only:
        out.mkdir(parents=True)
        runs(Path(args.data), out)
    prints = fingerprint(out)
    write_json(out / "fingerprint.json", prints, indent=1)
    print(f"{len(prints)} files fingerprinted in {out}")
    if args.compare:
        before = json.loads((Path(args.compare) / "fingerprint.json").read_text())
        differ = sorted(k for k in before.keys() | prints.keys() if before.get(k) != prints.get(k))
        for name in differ:
            print(f"differs: {name}")
        print("identical" if not differ else f"{len(differ)} file(s) differ")
        sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
