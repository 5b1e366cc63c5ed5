"""`siamrdm.rdm`'s scoring modules, `io`'s readers and `rdm.reliability` load without torch: `score`,
`noise-ceiling` and the reliability summary need no network (a subprocess whose import of torch fails)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
from siamrdm.rdm import compare, inference, noise_ceiling, paired, records, reliability, submission
rdms = np.random.default_rng(0).random((4, 6, 6))
rdms = (rdms + rdms.transpose(0, 2, 1)) / 2
for r in rdms:
    np.fill_diagonal(r, 0)
upper = noise_ceiling.noise_ceilings(rdms).upper
print(upper > 0, reliability.target_reliability(rdms)["subjects"], "torch" in sys.modules)
"""


def test_scoring_loads_and_scores_without_torch() -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    ran = subprocess.run([sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, env=env, timeout=120)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert ran.stdout.split() == ["True", "4", "False"]


# `python -m siamrdm ARGS` with every import of torch refused and recorded: prints the exit code, then the heavy
# packages tried or loaded (torch tried even where an ImportError was caught; torchvision, timm, matplotlib, and
# scipy.stats, whose import alone takes longer than a whole `siamrdm score`).
RUN_CLI_WITHOUT_TORCH = """
import runpy, sys

HEAVY = ("torch", "torchvision", "timm", "matplotlib", "scipy.stats")
tried = []

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "torch":
            tried.append(name)
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, NoTorch())
sys.argv = ["siamrdm", *sys.argv[1:]]
try:
    runpy.run_module("siamrdm", run_name="__main__", alter_sys=True)
    code = 0
except SystemExit as exc:
    code = exc.code
loaded = [h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in sys.modules)]
print(f"exit={code} tried={','.join(tried) or '-'} loaded={','.join(loaded) or '-'}", file=sys.stderr)
"""


def run_without_torch(*args: str) -> tuple[str, str]:
    """stdout and the closing report line of `siamrdm ARGS` run in a subprocess that blocks torch."""
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLBACKEND": "Agg"}
    ran = subprocess.run([sys.executable, "-c", RUN_CLI_WITHOUT_TORCH, *args], capture_output=True, text=True,
                         env=env, timeout=600)
    report = ran.stderr.strip().splitlines()[-1] if ran.stderr.strip() else ""
    assert report.startswith("exit="), ran.stderr[-2000:]
    return ran.stdout, report


@pytest.mark.parametrize("command", [(), ("score",), ("noise-ceiling",), ("data-info",)])
def test_help_starts_without_torch(command: tuple[str, ...]) -> None:
    """`siamrdm --help` and the torch-free commands' help never import torch (nor torchvision, timm, matplotlib,
    scipy.stats):
    the training commands' options come from torch-using modules and are added only when those are parsed."""
    out, report = run_without_torch(*command, "--help")
    assert report == "exit=0 tried=- loaded=-"
    assert out.startswith(f"usage: siamrdm {' '.join(command)}".rstrip())
    if not command:  # every command is listed, the training ones too
        for name in ("score", "noise-ceiling", "data-info", "fit", "predict", "challenge", "baseline"):
            assert name in out


def test_training_help_has_its_options_in_place() -> None:
    """The training options (their choices from the torch-free `choices`) are in their place: --preset and
    --backbone before --out in fit's help, and the baseline kinds' --backbone choices."""
    from siamrdm import cli

    fit = cli.build_parser()._subparsers._group_actions[0].choices["fit"].format_help()
    assert fit.index("--preset {") < fit.index("--backbone {") < fit.index("--out OUT")
    assert fit.index("--val-fraction") < fit.index("--preset {")
    args = cli.build_parser().parse_args(["baseline", "layers", "--backbone", "alexnet"])
    assert args.backbone == "alexnet" and args.func is cli.cmd_baseline_layers


def test_score_noise_ceiling_and_data_info_run_without_torch(tmp_path: Path, data_root: Path) -> None:
    """Real `score`, `noise-ceiling` and `data-info` on the Algonauts data, with torch blocked: each succeeds,
    prints its figures, and torch is never even tried."""
    from siamrdm.io.rdmfiles import load_rdm_dict, save_rdms

    target = data_root / "Training_Data" / "92_Image_Set" / "target_fmri.mat"
    subjects = load_rdm_dict(target)
    submission = save_rdms(tmp_path / "mean.mat", {k: v.mean(axis=0) for k, v in subjects.items()})

    out, report = run_without_torch("score", str(submission), "--target", str(target), "--permutations", "20",
                                    "--json")
    assert report == "exit=0 tried=- loaded=-"
    result = json.loads(out)
    scores = {key: result[key] for key in ("EVC_RDMs", "IT_RDMs")}
    assert abs(result["score"]["pct_nc"] - 100) < 1  # the subjects' mean RDM is what the upper ceiling scores
    for entry in scores.values():
        assert abs(entry["pct_nc"] - 100) < 1 and entry["permutations"] == 20 and entry["beats_chance"]

    out, report = run_without_torch("noise-ceiling", str(target), "--json")
    assert report == "exit=0 tried=- loaded=-"
    ceilings = json.loads(out)
    for key, entry in scores.items():
        assert 0 < ceilings[key]["lower"] < ceilings[key]["upper"]
        assert abs(ceilings[key]["upper"] - entry["r2"]) < 1e-9  # the upper ceiling: the mean's own score

    out, report = run_without_torch("data-info", "--data", str(data_root))
    assert report == "exit=0 tried=- loaded=-"
    assert "92-image set: 92 images" in out and "118/IT: reliability" in out
