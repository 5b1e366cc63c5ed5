"""`siamrdm.scoring`, `data` and `reliability` load without torch: `score`, `noise-ceiling` and the
reliability summary need no network (a subprocess whose import of torch fails)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

BLOCK_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, NoTorch())
import numpy as np
from siamrdm import reliability, scoring
rdms = np.random.default_rng(0).random((4, 6, 6))
rdms = (rdms + rdms.transpose(0, 2, 1)) / 2
for r in rdms:
    np.fill_diagonal(r, 0)
print(scoring.noise_ceiling(rdms)[0] > 0, reliability.target_reliability(rdms)["subjects"], "torch" in sys.modules)
"""


def test_scoring_loads_and_scores_without_torch() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    ran = subprocess.run([sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, env=env, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.split() == ["True", "4", "False"]
