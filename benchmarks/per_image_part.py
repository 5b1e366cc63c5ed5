"""How much of what the network learns across sets is per-image structure: the cross-set curve scored three ways.

Per target and direction, the `quick` preset (with `--prior`) is fitted on one set and, after every epoch, its
prediction on the other set is scored (percent of the ceiling) as is, with the per-image part of the head's
correction removed (the least-squares fit of c(i, j) ~ a_i + a_j + const over the scored set's pairs, which
needs only the prediction), and with only that per-image part kept. The prior is never altered.

    OMP_NUM_THREADS=1 python benchmarks/per_image_part.py --targets IT,MEG_early --prior layer   # 4 min a target
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
from chance import per_image_design  # benchmarks/, beside this script

from siamrdm.io.datasets import TARGET_NAMES, load_algonauts_set
from siamrdm.rdm import upper_tri
from siamrdm.train import Trainer, config_from_preset, prior_rdms


def per_image_projection(n: int) -> torch.Tensor:
    """(P, P) projection of a pair vector onto the pair vectors of the form a_i + a_j + const."""
    design = per_image_design(n)
    return torch.from_numpy(design @ np.linalg.pinv(design))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=os.environ.get("SIAMRDM_DATA", "../shared/algonauts2019"))
    parser.add_argument("--targets", default="IT,MEG_early")
    parser.add_argument("--prior", default="layer")
    parser.add_argument("--every", type=int, default=5, help="print every k-th epoch")
    args = parser.parse_args()
    sets = {name: load_algonauts_set(args.data, name, TARGET_NAMES) for name in ("92", "118")}
    for target in args.targets.split(","):
        config = config_from_preset("quick", targets=(target,), device="cpu", prior=args.prior)
        for train_name, val_name in (("92", "118"), ("118", "92")):
            val = sets[val_name]
            trainer = Trainer(config, [sets[train_name]], [val], progress=False)
            project = per_image_projection(len(val))
            prior = torch.from_numpy(upper_tri(prior_rdms(trainer.priors, val.images, config)).T.copy())
            cells = []
            for epoch in range(config.epochs + 1):
                if epoch:
                    trainer.run_epoch()
                else:
                    trainer.validate_start()
                correction = trainer.stepper.last_pairs[val.name].cpu().double() - prior
                per_image = project @ correction
                scores = [trainer.stepper.score_pairs({0: prior + c})[f"{val.name}/{target}"]["pct_nc"]
                          for c in (correction, correction - per_image, per_image)]
                if epoch % args.every == 0:
                    cells.append(f"{epoch}: " + " / ".join(f"{v:.1f}" for v in scores))
            print(f"{target} {train_name}->{val_name} (epoch: whole / without per-image part / per-image part only)"
                  f"  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
