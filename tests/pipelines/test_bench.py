"""Training speed code: the tiled all-pairs loss is exactly the unchunked one, the naive step trains the same
objective as the factorised one, and `siamrdm bench` reports what it should. No timing assertions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_one_line_error
from helpers import run_cli as run_main

from siamrdm import cli
from siamrdm.errors import DataError
from siamrdm.model import HeadConfig, SiameseHead, all_pairs, all_pairs_loss, pooled_linear_weight
from siamrdm.pipelines import bench
from siamrdm.train import TrainConfig, Trainer

# --------------------------------------------------------------------------- the tiled loss


def reference_loss(head: SiameseHead, features: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The unchunked factorised loss the trainer used before tiling: both orders of every pair, gathered."""
    i, j = all_pairs(len(features))
    as_a, as_b = head.image_terms(features)
    both = torch.stack((head.pair_outputs(as_a, as_b, i, j), head.pair_outputs(as_a, as_b, j, i)))
    return F.mse_loss(both, targets.expand_as(both))


def random_head(channels: int, outputs: int, dtype: torch.dtype, seed: int) -> SiameseHead:
    torch.manual_seed(seed)
    head = SiameseHead(channels, outputs).to(dtype)
    with torch.no_grad():  # away from the distance initialisation, so every term of the gradient is exercised
        head.conv.bias.normal_()
        head.linear.bias.normal_()
    return head


@pytest.mark.parametrize(
    ("channels", "size", "outputs", "n", "tile", "workers"),
    [
        (32, 6, 1, 13, 4, 1),  # AlexNet-like 4x4 conv map, tiles that do not divide n
        (32, 7, 2, 11, 4, 2),  # 5x5 map: overlapping pooling cells; two outputs; two worker threads
        (64, 5, 1, 30, 8, 2),
        (32, 6, 3, 9, 64, 1),  # one tile holds everything
        (16, 3, 1, 2, 1, 1),  # a single pair, 1x1 conv map
    ],
)
def test_all_pairs_loss_equals_unchunked_loss_and_gradients(channels, size, outputs, n, tile, workers) -> None:
    head = random_head(channels, outputs, torch.float64, seed=n)
    features = torch.randn(n, channels, size, size, dtype=torch.float64, requires_grad=True)
    targets = torch.rand(n * (n - 1) // 2, outputs, dtype=torch.float64)
    params = [features, *head.parameters()]
    expected = reference_loss(head, features, targets)
    expected_grads = torch.autograd.grad(expected, params)
    loss = all_pairs_loss(head, features, targets, tile=tile, workers=workers)
    grads = torch.autograd.grad(loss, params)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_all_pairs_loss_float32_within_1e5() -> None:
    """In float32 (what training uses) the tiled sums differ from the gathered ones by rounding only."""
    head = random_head(256, 1, torch.float32, seed=1)
    features = torch.randn(70, 256, 6, 6, requires_grad=True)
    targets = torch.rand(70 * 69 // 2, 1)
    params = [features, *head.parameters()]
    expected = reference_loss(head, features, targets)
    expected_grads = torch.autograd.grad(expected, params)
    loss = all_pairs_loss(head, features, targets, tile=16, workers=2)
    grads = torch.autograd.grad(loss, params)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_all_pairs_loss_is_deterministic_with_workers() -> None:
    head = random_head(32, 1, torch.float32, seed=2)
    features = torch.randn(40, 32, 6, 6)
    targets = torch.rand(40 * 39 // 2, 1)
    first = all_pairs_loss(head, features, targets, tile=8, workers=2)
    second = all_pairs_loss(head, features, targets, tile=8, workers=2)
    assert torch.equal(first, second)


def test_pooled_linear_weight_equals_pool_then_linear() -> None:
    head = random_head(32, 2, torch.float64, seed=3)
    for size in (2, 3, 4, 5, 7):
        x = torch.randn(5, head.config.channels, size, size, dtype=torch.float64)
        weight = pooled_linear_weight(head, size, size)
        torch.testing.assert_close(x.flatten(1) @ weight.t(), head.linear(head.pool(x).flatten(1)) - head.linear.bias)


def test_all_pairs_loss_rejects_wrong_target_count() -> None:
    head = SiameseHead(32, 1, HeadConfig())
    with pytest.raises(ValueError, match="targets for 10 pairs"):
        all_pairs_loss(head, torch.randn(5, 32, 6, 6), torch.rand(9, 1))


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
        trainer = Trainer(small_config(pair_batch=100), [one_set], progress=False)
        trainer.model.freeze_body(False)
        factorised = trainer.step(frozen=False)
        factorised_grads = grads(trainer)
        naive = bench.naive_step(trainer, 0)  # one batch holds every pair
        naive_grads = grads(trainer)
        assert naive == pytest.approx(factorised, rel=1e-5)
        assert len(naive_grads) == len(factorised_grads) == len(list(trainer.model.parameters()))
        scale = max(float(g.abs().max()) for g in factorised_grads)  # some gradients are 0 up to rounding
        for got, want in zip(naive_grads, factorised_grads, strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)


def test_naive_step_in_batches_averages_over_pairs(small_sets) -> None:
    trainer = Trainer(small_config(pair_batch=4), small_sets[1:], progress=False)
    trainer.model.freeze_body(False)
    factorised = trainer.step(frozen=False)  # the 118 subset: 21 pairs, 6 batches of 4 (the last of 1)
    assert bench.naive_step(trainer, 0) == pytest.approx(factorised, rel=1e-5)


def test_training_refuses_pair_modes_other_than_factorised(small_sets) -> None:
    """The naive per-pair step is the benchmark's (bench.naive_step), never a way to train a model."""
    for mode in ("naive", "sideways"):
        with pytest.raises(DataError, match="pair_mode: training runs pair-factorised"):
            Trainer(small_config(pair_mode=mode), small_sets, progress=False)


# --------------------------------------------------------------------------- the benchmark


def test_head_epoch_reports_rate_and_memory() -> None:
    row = bench.head_epoch(20, (32, 6, 6), device="cpu")
    assert row["pairs"] == 190 and row["ordered_pairs"] == 380
    assert row["seconds"] > 0 and row["pairs_per_s"] > 0 and row["peak_rss_mb"] >= row["rss_before_features_mb"] > 0


def test_bench_cli_json(capsys: pytest.CaptureFixture, data_root: Path) -> None:
    code = cli.main(["bench", "--json", "--quiet", "--data", str(data_root), "--images", "12",
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
    code = cli.main(["bench", "--data", str(data_root), "--images", "500", "--head-sizes", "none"])
    assert code == 2
    assert "--images" in capsys.readouterr().err


HEAD_ONLY = ("bench", "--no-training", "--head-sizes", "2", "--device", "cpu")  # no --quiet: work shows on stderr


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
        code, stdout, err = run_main(capsys, *HEAD_ONLY, "--out", out)
        assert (code, stdout) == (2, ""), err
        assert_one_line_error(err, str(out) or "--out", expected)  # one line: no "bench: ..." progress before it
    assert notes.read_text() == "my notes" and link.is_symlink() and list(folder.iterdir()) == []
    code, stdout, err = run_main(capsys, *HEAD_ONLY, "--quiet", "--out", notes, "--overwrite")
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
    code, stdout, err = run_main(capsys, *HEAD_ONLY, "--quiet", "--out", out)
    assert (code, stdout) == (2, "")
    assert_one_line_error(err, str(out), "appeared while siamrdm was working")
    assert out.read_text() == "written while bench ran"
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]  # no temporary file left
