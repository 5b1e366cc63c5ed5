"""Build a large image set offline, with a known answer: crops and flips of the shared Algonauts training images.

    PYTHONPATH=src python benchmarks/make_large_set.py --images 10000 --size 64 --out runs/large/10000

writes OUT/images.h5 ((N, S, S, 3) uint8, dataset 'images'), OUT/rdms.npy ((subjects, N(N-1)/2) float32, condensed
upper triangles) and OUT/answer.json. The subjects' RDMs are the correlation distance of EfficientNet-Lite0's
`--stage` features plus Gaussian noise (`--noise` times the RDM's SD), so a benchmark knows what a model that found
the stage would score (answer.json: truth_score_on_sampled_pairs). See siamrdm.train.largeset.make_large_set.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from siamrdm.train.largeset import make_large_set


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=10_000, help="images to make (default: 10000)")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    p.add_argument("--subjects", type=int, default=2, help="subject RDMs (default: 2)")
    p.add_argument("--noise", type=float, default=1.0, help="noise SD over the RDM's SD (default: 1.0)")
    p.add_argument("--stage", default="blocks3", help="EfficientNet-Lite0 stage of the true RDM (default: blocks3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", help="folder of source images (default: $SIAMRDM_DATA's 92 + 118 training images)")
    p.add_argument("--out", required=True, help="output folder")
    args = p.parse_args()
    if args.source is None:
        root = Path(os.environ.get("SIAMRDM_DATA", "../shared/algonauts2019"))
        source = root / "Training_Data"
        folders = [source / "92_Image_Set" / "92images", source / "118_Image_Set" / "118images"]
    else:
        folders = [Path(args.source)]
    start = time.perf_counter()
    answer = make_large_set(folders, args.out, args.images, args.size, args.subjects, args.noise, args.stage,
                            args.seed)
    answer["seconds"] = time.perf_counter() - start
    print(json.dumps(answer, indent=2))


if __name__ == "__main__":
    main()
