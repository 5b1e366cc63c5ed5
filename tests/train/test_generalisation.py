"""Training that never un-learns, and knowing a target's reliability before training on it (issue 23).

Real data: the 92 set's IT RDMs (reliable) and the same RDMs with each subject's images relabelled at random
(made unreliable on purpose: every subject alone is a valid RDM, but the subjects no longer agree).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from siamrdm import train
from siamrdm.io.datasets import TARGET_NAMES, BrainDataset, load_algonauts_set
from siamrdm.rdm.reliability import UNRELIABLE_BELOW, reliability_line, target_reliability
from siamrdm.train import selection


def scrambled(rdms: np.ndarray, seed: int = 0) -> np.ndarray:
    """Each subject's RDM with its own random relabelling of the images: no agreement left across subjects."""
    rng = np.random.default_rng(seed)
    out = np.empty_like(rdms)
    for k, rdm in enumerate(rdms):
        order = rng.permutation(rdm.shape[-1])
        out[k] = rdm[np.ix_(order, order)]
    return out


def test_reliability_of_a_reliable_and_a_scrambled_target(fmri92: dict[str, np.ndarray]) -> None:
    reliable = target_reliability(fmri92["IT_RDMs"])
    assert reliable["reliable"] and reliable["reliability"] > 0.7 and reliable["subjects"] == 15
    assert reliable["lower_ceiling_rho"] > 0.3 and 0 < reliable["lower_ceiling_rho_se"] < 0.1
    assert 0 < reliable["per_image_share"] < 1
    noise = target_reliability(scrambled(fmri92["IT_RDMs"]))
    assert not noise["reliable"] and noise["reliability"] < UNRELIABLE_BELOW
    assert abs(noise["lower_ceiling_rho"]) < 3 * noise["lower_ceiling_rho_se"] + 0.02
    assert "too unreliable" in reliability_line("92/IT", noise)
    assert "too unreliable" not in reliability_line("92/IT", reliable)


def test_the_118_sets_it_is_flagged_and_its_evc_is_not(fmri118: dict[str, np.ndarray]) -> None:
    assert not target_reliability(fmri118["IT_RDMs"])["reliable"]
    assert target_reliability(fmri118["EVC_RDMs"])["reliable"]


def test_reliability_with_one_subject_and_with_sessions(fmri92: dict[str, np.ndarray]) -> None:
    one = target_reliability(fmri92["IT_RDMs"][0])
    assert one["reliability"] is None and one["reliable"] is None and one["per_image_share"] is not None
    assert "unknown" in reliability_line("x", one)
    sessions = np.stack([fmri92["IT_RDMs"][:5], fmri92["IT_RDMs"][5:10]], axis=1)  # (5 subjects, 2 sessions)
    assert target_reliability(sessions)["subjects"] == 5


def curve(values, ses):
    return [{"epoch": e, "rho_mean": v, "rho_se": s} for e, (v, s) in enumerate(zip(values, ses, strict=True))]


def test_epoch_choice_keeps_the_prior_without_a_validated_gain() -> None:
    """The fold rule: trained epochs that rise but stay within two standard errors of zero (the 118 set's IT:
    from -0.047 to -0.018) keep the prior; a gain clear of zero is taken."""
    assert selection.one_se_epoch(curve([-0.047, -0.03, -0.018], [0.01, 0.01, 0.01])) == 0
    assert selection.one_se_epoch(curve([0.01, 0.015, 0.019], [0.01, 0.01, 0.01])) == 0  # within 2 SE of 0 ...
    assert selection.one_se_epoch(curve([0.01, 0.015, 0.021], [0.01, 0.01, 0.01])) == 2  # ... only just
    assert selection.one_se_epoch(curve([0.10, 0.20, 0.21], [0.01, 0.01, 0.01])) == 1
    no_prior = [{"epoch": 1, "rho_mean": -0.01, "rho_se": 0.01}, {"epoch": 2, "rho_mean": 0.0, "rho_se": 0.01}]
    assert selection.one_se_epoch(no_prior) == 1  # nothing to keep: the rule picks among trained epochs


@pytest.fixture(scope="module")
def noisy_split(data_root: Path) -> tuple[BrainDataset, BrainDataset]:
    """16 training and 10 held-out images of the 92 set whose IT subjects were scrambled independently."""
    set92 = load_algonauts_set(data_root, "92", ("IT",))
    noisy = BrainDataset("92-noise", set92.images, {"IT": scrambled(set92.targets["IT"], seed=1)}, False)
    index = np.random.default_rng(0).permutation(len(set92))
    return (train.subset(noisy, np.sort(index[:16]), "noise-train"), train.subset(noisy, np.sort(index[16:26]),
                                                                                  "noise-val"))


def test_fit_on_an_unreliable_target_keeps_the_prior(noisy_split) -> None:
    """On targets that hold nothing to learn, training lowers the loss, yet no epoch shows a validated gain on
    the held-out images: the fit returns the prior alone (epoch 0), not a model that learnt the noise."""
    train_set, val_set = noisy_split
    config = train.TrainConfig(backbone="alexnet", weights="random", image_size=128, augment=False,
                               frozen_epochs=6, unfrozen_epochs=0, device="cpu", targets=("IT",), prior="layer",
                               lr=1e-2)
    result = train.fit(config, [train_set], [val_set], progress=False)
    losses = [row["loss"] for row in result.history[1:]]
    assert losses[-1] < losses[0]  # it did train
    assert result.best_epoch == 0
    assert not any(train.validated_gain(row["val_rho"], row["val_rho_se"]) for row in result.history[1:])
    assert all(float((p == 0).all()) for p in (result.model.head.linear.weight, result.model.head.linear.bias))


def test_a_stage_that_runs_against_the_brain_is_not_the_prior(make_rdms) -> None:
    """The official r^2 cannot tell a stage that ranks pairs like the subjects from one that ranks them in
    reverse; the prior's stage must agree in sign, and its scale stays positive."""
    from siamrdm.model import baselines
    from siamrdm.model.prior import fit_prior

    subjects = make_rdms(12, subjects=6, seed=3)
    group = subjects.mean(axis=0)
    reverse = group.max() - group
    np.fill_diagonal(reverse, 0)
    noise = make_rdms(12, subjects=1, seed=4)[0]
    stages = {"reverse": reverse, "weak": 0.9 * noise + 0.1 * group}
    assert baselines.select_best_layer(stages, subjects) == "weak"
    fit = fit_prior("layer", [stages], [subjects], [-(group[np.triu_indices(12, 1)])])  # targets fall as d rises
    assert fit.weights == {"weak": 1.0} and fit.scale > 0


def test_data_info_shows_each_training_keys_reliability(capsys, data_root: Path) -> None:
    import json

    from helpers import run_cli

    code, out, _ = run_cli(capsys, "data-info", "--data", data_root, "--json")
    assert code == 0
    reliability = json.loads(out)["reliability"]
    assert set(reliability) == {f"{s}/{t}" for s in ("92", "118") for t in TARGET_NAMES}
    assert reliability["118/IT"]["reliable"] is False and reliability["92/IT"]["reliable"] is True
    code, out, _ = run_cli(capsys, "data-info", "--data", data_root)
    assert "118/IT: reliability 0.17" in out and "too unreliable" in out


def test_fit_prints_and_records_the_reliability(capsys, tmp_path: Path, data_root: Path) -> None:
    """fit warns in one line about the 118 set's IT before training, and its JSON records every target's."""
    import json

    from helpers import run_cli

    code, out, err = run_cli(capsys, "fit", "--data", data_root, "--targets", "IT", "--sets", "118", "--epochs", "1",
                             "--image-size", "64", "--weights", "random", "--no-augment", "--quiet", "--device",
                             "cpu", "--prior", "none", "--out", tmp_path / "run")
    assert code == 0, err
    warnings = [line for line in err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("siamrdm: warning: 118/IT: reliability 0.17")
    assert json.loads(out)["reliability"]["118/IT"]["reliable"] is False


def test_the_ranks_target_is_what_the_mean_spearman_rewards(fmri92: dict[str, np.ndarray]) -> None:
    """'ranks' averages each subject's ranks, so a subject whose dissimilarities span 100x the others' range does
    not outweigh them (it does in the mean RDM), and it scores a higher mean Spearman rho over the subjects than
    the mean RDM does; K RDMs of a subject count as that subject's share."""
    from siamrdm.rdm import upper_tri
    from siamrdm.rdm.compare import score_rdm
    from siamrdm.rdm.core import rank_unit
    from siamrdm.train.fullbatch import group_target

    rdms = fmri92["EVC_RDMs"].copy()
    rdms[0] *= 100
    ranks, mean = group_target(rdms, "ranks"), group_target(rdms, "mean")
    expected = np.mean([rank_unit(v) for v in upper_tri(rdms)], axis=0)
    np.testing.assert_allclose(ranks, expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(mean, upper_tri(rdms.mean(axis=0)), rtol=0, atol=1e-12)
    from scipy.spatial.distance import squareform

    rho = {kind: score_rdm(squareform(vector), rdms).rho for kind, vector in (("ranks", ranks),
                                                                                       ("mean", mean))}
    assert rho["ranks"].mean() > rho["mean"].mean() + 0.01
    assert rho["mean"][0] > np.delete(rho["mean"], 0).max()  # the mean RDM is the loud subject's
    sessions = np.stack([rdms, rdms * 2], axis=1)  # (S, 2, N, N): two equal-ranked RDMs per subject
    np.testing.assert_allclose(group_target(sessions, "ranks"), ranks, rtol=0, atol=1e-12)


def test_training_pairs_follow_the_group_target(dataset92: BrainDataset) -> None:
    from siamrdm.rdm.core import rescale
    from siamrdm.train.fullbatch import group_target, prepare_set

    for kind in ("mean", "ranks"):
        config = train.TrainConfig(targets=("EVC",), group_target=kind, image_size=32)
        pairs = prepare_set(dataset92, ("EVC",), config).targets[:, 0].numpy()
        expected = rescale(group_target(dataset92.targets["EVC"], kind), "minmax")[0]
        np.testing.assert_allclose(pairs, expected, rtol=0, atol=1e-6)


def test_fit_learns_the_ranks_target_and_refuses_an_unknown_one(capsys, tmp_path: Path, data_root: Path) -> None:
    from helpers import assert_one_line_error, run_cli

    base = ["fit", "--data", str(data_root), "--sets", "92", "--targets", "EVC", "--epochs", "2", "--image-size",
            "128", "--backbone", "alexnet", "--weights", "random", "--no-augment", "--device", "cpu", "--quiet"]
    code, _, err = run_cli(capsys, *base, "--group-target", "ranks", "--out", str(tmp_path / "ranks"))
    assert code == 0, err
    settings = (tmp_path / "ranks" / "settings.json").read_text()
    assert '"group_target": "ranks"' in settings
    code, _, err = run_cli(capsys, *base, "--group-target", "median", "--out", str(tmp_path / "bad"))
    assert code == 2 and not (tmp_path / "bad").exists()
    assert_one_line_error(err, "--group-target", "median")
