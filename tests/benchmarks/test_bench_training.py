"""benchmarks/bench_training.py: its naive step trains the same objective as the factorised one, it reports what
it should, and its options are checked before any work, each refusal one line (exit 2) as a siamrdm command's.
No timing assertions."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from helpers import assert_one_line_error, run_main

from siamrdm.train import TrainConfig, Trainer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_training as bench  # noqa: E402  (a script of benchmarks/, found through the path above)


def run_bench(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """`python benchmarks/bench_training.py ARGS` in-process: (exit code, stdout, stderr)."""
    return run_main(bench.main, capsys, *args)


# --------------------------------------------------------------------------- naive against factorised steps


@pytest.fixture(scope="module")
def small_sets(data_root: Path):
    """12 real images: the first 5 of the 92 set and the first 7 of the 118 set."""
    return bench.bench_sets(str(data_root), 12)


def small_config(**changes) -> TrainConfig:
    """EfficientNet-Lite0 to blocks3 at 64 px (80 x 4 x 4 features): a real body, small enough to be fast."""
    config = TrainConfig(backbone="efficientnet_lite0", stage="blocks3", weights="random", image_size=64,
                         frozen_epochs=0, unfrozen_epochs=10, augment=False, lr=0.0, weight_decay=0.0, body_chunk=3,
                         device="cpu")
    return replace(config, **changes)


def grads(trainer: Trainer) -> list[torch.Tensor]:
    return [p.grad.clone() for p in trainer.model.parameters() if p.grad is not None]


def test_bench_sets_split_in_proportion(small_sets) -> None:
    assert [len(s) for s in small_sets] == [5, 7]
    assert [s.targets["EVC"].shape[-1] for s in small_sets] == [5, 7]


def test_naive_and_factorised_steps_same_loss_and_gradient(small_sets) -> None:
    """Same weights (learning rate 0), same pairs: the per-pair form and the factorised step agree."""
    for one_set in small_sets:
        trainer = Trainer(small_config(), [one_set], progress=False)
        trainer.model.freeze_body(False)
        factorised = trainer.step(frozen=False)
        factorised_grads = grads(trainer)
        naive = bench.naive_step(trainer, 0, pair_batch=100)  # one batch holds every pair
        naive_grads = grads(trainer)
        assert naive == pytest.approx(factorised, rel=1e-5)
        assert len(naive_grads) == len(factorised_grads) == len(list(trainer.model.parameters()))
        scale = max(float(g.abs().max()) for g in factorised_grads)  # some gradients are 0 up to rounding
        for got, want in zip(naive_grads, factorised_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)


def test_naive_step_in_batches_averages_over_pairs(small_sets) -> None:
    trainer = Trainer(small_config(), small_sets[1:], progress=False)
    trainer.model.freeze_body(False)
    factorised = trainer.step(frozen=False)  # the 118 subset: 21 pairs, 6 batches of 4 (the last of 1)
    assert bench.naive_step(trainer, 0, pair_batch=4) == pytest.approx(factorised, rel=1e-5)


# --------------------------------------------------------------------------- the benchmark


def test_head_epoch_reports_rate_and_memory() -> None:
    row = bench.head_epoch(20, (32, 6, 6), device="cpu")
    assert row["pairs"] == 190 and row["ordered_pairs"] == 380
    assert row["seconds"] > 0 and row["pairs_per_s"] > 0 and row["peak_rss_mb"] >= row["rss_before_features_mb"] > 0


def test_bench_cli_json(capsys: pytest.CaptureFixture, data_root: Path) -> None:
    code = bench.main(["--json", "--quiet", "--data", str(data_root), "--images", "12",
                     "--backbone", "efficientnet_lite0", "--stage", "blocks3", "--weights", "random",
                     "--image-size", "64", "--device", "cpu", "--rounds", "1", "--naive-batches", "1",
                     "--pair-batch", "8", "--head-sizes", "30"])
    out = capsys.readouterr().out
    assert code == 0
    result = json.loads(out)
    for key in ("naive_s_per_epoch", "factorised_s_per_epoch", "speedup", "pairs", "device", "peak_rss_mb"):
        assert key in result, key
    assert result["pairs"] == 5 * 4 // 2 + 7 * 6 // 2
    assert result["device"] == "cpu" and result["weights"] == "random"
    assert result["naive_scaled"] is True and "scaled" in result["naive_note"]
    assert result["speedup"] == pytest.approx(result["naive_s_per_epoch"] / result["factorised_s_per_epoch"])
    assert [row["images"] for row in result["head_scaling"]] == [30]
    assert result["head_scaling"][0]["feature_shape"] == [256, 6, 6]


def test_bench_cli_rejects_bad_image_count(capsys: pytest.CaptureFixture, data_root: Path) -> None:
    code = bench.main(["--data", str(data_root), "--images", "500", "--head-sizes", "none"])
    assert code == 2
    assert "--images" in capsys.readouterr().err


HEAD_ONLY = ("--no-training", "--head-sizes", "2", "--device", "cpu")  # no --quiet: work shows on stderr


def test_bench_out_is_checked_before_any_work(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    """An existing file (or a link to one) is refused unless --overwrite, as predict --out refuses it; a folder,
    an empty name or a folder nothing can be made in is one line too; all before the benchmark runs."""
    notes = tmp_path / "notes.json"
    notes.write_text("my notes")
    link = tmp_path / "link.json"
    link.symlink_to(notes)
    folder = tmp_path / "folder"
    folder.mkdir()
    for out, expected in ((notes, "exists; pass --overwrite"), (link, "exists; pass --overwrite"),
                          (folder, "is a folder"), ("", "--out: empty"), ("/proc/bench.json", "cannot be written")):
        code, stdout, err = run_bench(capsys, *HEAD_ONLY, "--out", out)
        assert (code, stdout) == (2, ""), err
        assert_one_line_error(err, str(out) or "--out", expected)  # one line: no "bench: ..." progress before it
    assert notes.read_text() == "my notes" and link.is_symlink() and list(folder.iterdir()) == []
    code, stdout, err = run_bench(capsys, *HEAD_ONLY, "--quiet", "--out", notes, "--overwrite")
    assert code == 0, err
    assert [row["images"] for row in json.loads(notes.read_text())["head_scaling"]] == [2]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder", "link.json", "notes.json"]  # no temporary file


def test_bench_out_never_replaces_a_file_that_appeared_meanwhile(capsys: pytest.CaptureFixture, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """--out was free when bench started; a file written there while it ran (another bench, the user) stays."""
    out = tmp_path / "bench.json"
    measure = bench.bench_head_scaling

    def meanwhile(*args, **kwargs):
        out.write_text("written while bench ran")  # the user, or a second bench that finished first
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench, "bench_head_scaling", meanwhile)
    code, stdout, err = run_bench(capsys, *HEAD_ONLY, "--quiet", "--out", out)
    assert (code, stdout) == (2, "")
    assert_one_line_error(err, str(out), "appeared while siamrdm was working")
    assert out.read_text() == "written while bench ran"
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no temporary file left


def test_body_options_take_the_registered_bodies() -> None:
    """--backbone and --head-backbone take what siamrdm's --backbone takes."""
    args = bench.parser().parse_args(["--head-backbone", "alexnet", "--backbone", "timm:resnet18"])
    assert (args.head_backbone, args.backbone, args.func) == ("alexnet", "timm:resnet18", bench.bench)


NO_DATA = ("--data", "/no/such/algonauts")
BAD_OPTIONS = [  # upper and lower bounds, the bound in the message; empty and repeated list entries
    (["--threads", "-1", "--no-training", "--head-sizes", "none"], ["--threads", "between 1"]),
    (["--threads", "100000", "--no-training", "--head-sizes", "none"], ["--threads", "between 1"]),
    (["--image-size", "0", "--weights", "random", "--head-sizes", "none"], ["--image-size", "16"]),
    (["--image-size", "8", "--weights", "random", "--head-sizes", "none"], ["--image-size", "16"]),
    (["--paper", "--paper-time-limit", "-5", "--no-training", "--head-sizes", "none"], ["--paper-time-limit"]),
    (["--head-sizes", "10000000", "--no-training"], ["--head-sizes", "20000"]),
    (["--naive-batches", "-1", "--weights", "random", "--head-sizes", "none"], ["--naive-batches"]),
    (["--head-sizes", "100,100", "--no-training"], ["--head-sizes", "more than once"]),
    (["--head-sizes", "100,", "--no-training"], ["--head-sizes", "empty entry"]),
]


@pytest.mark.parametrize(("args", "parts"), BAD_OPTIONS, ids=[" ".join(a[:2]) for a, _ in BAD_OPTIONS])
def test_bad_option_is_refused_before_any_work(args: list[str], parts: list[str], capsys) -> None:
    code, stdout, err = run_bench(capsys, *NO_DATA, *args)
    assert code == 2 and stdout == "", err
    assert_one_line_error(err, *parts)
