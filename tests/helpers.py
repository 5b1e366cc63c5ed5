"""Assertions and settings shared by the test modules (pyproject puts tests/ on pytest's sys.path)."""

from __future__ import annotations


def assert_one_line_error(stderr: str, *parts: str) -> None:
    """Bad input: exactly one line on stderr, no traceback, naming each of `parts`."""
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("siamrdm: error: "), stderr
    for part in parts:
        assert part in lines[0], f"{part!r} not in {lines[0]!r}"


def mark_run(folder, command: str = "challenge"):
    """An empty run folder as a siamrdm command leaves it (its marker), for tests that lay out its files by
    hand: `siamrdm report` reads only such folders."""
    from siamrdm.io import files

    with files.run_folder(folder, command):
        pass
    return folder


def run_main(main, capsys, *args: str) -> tuple[int, str, str]:
    """A command's `main(argv)` in-process: (exit code, stdout, stderr); usage errors exit through SystemExit."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as exc:
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """`siamrdm ARGS` in-process: (exit code, stdout, stderr)."""
    from siamrdm import cli

    return run_main(cli.main, capsys, *args)


def fast_config(**overrides):
    """A small, fast training configuration: the paper's AlexNet body with random weights, at the smallest size
    conv5 allows, 2 frozen epochs on the CPU."""
    from siamrdm.train.config import TrainConfig

    values = dict(backbone="alexnet", weights="random", image_size=128, augment=False, body_chunk=5, lr=1e-3,
                  frozen_epochs=2, unfrozen_epochs=0, device="cpu")
    values.update(overrides)
    return TrainConfig(**values)


def run_process_limited(*args, file_size: int | None = None, stdout=None):
    """`python -m siamrdm ARGS` in a subprocess as on a full disk: with `file_size`, no file it writes may pass
    that many bytes (RLIMIT_FSIZE, SIGXFSZ ignored, so a write fails with EFBIG as on a full disk); `stdout` a
    file to write to (e.g. /dev/full) instead of a pipe. Returns the CompletedProcess (text)."""
    import os
    import resource
    import signal
    import subprocess
    import sys

    def limit() -> None:
        if file_size is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))

    env = {k: v for k, v in os.environ.items() if k != "SIAMRDM_DEBUG"}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return subprocess.run([sys.executable, "-m", "siamrdm", *map(str, args)], preexec_fn=limit, text=True,
                          stdout=stdout if stdout is not None else subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                          timeout=300)


def spaced_training_sets(data_root, count: int, targets: tuple[str, ...] = ("EVC", "MEG_late")) -> list:
    """`count` evenly spaced images of each Algonauts training set, with those targets' RDMs: small sets on which
    every method runs across sets in seconds."""
    import numpy as np

    from siamrdm.io.datasets import load_algonauts_set
    from siamrdm.rdm.splits import subset

    sets = []
    for name in ("92", "118"):
        full = load_algonauts_set(data_root, name, targets)
        sets.append(subset(full, np.linspace(0, len(full) - 1, count).round().astype(int), name))
    return sets


def scipy_rho(a, b) -> float:
    """Spearman's rho of two square RDMs' upper triangles by scipy: the reference the metric's tests compare with."""
    from scipy import stats

    from siamrdm.rdm import upper_tri

    return float(stats.spearmanr(upper_tri(a), upper_tri(b)).statistic)


def reference_loss(head, features, targets):
    """The unchunked factorised loss, through autograd of the gathered head: F.mse_loss over both orders of every
    pair (what model.all_pairs_loss computes in tiles)."""
    import torch
    import torch.nn.functional as F

    from siamrdm.model import all_pairs

    i, j = all_pairs(len(features))
    as_a, as_b = head.image_terms(features)
    both = torch.stack((head.pair_outputs(as_a, as_b, i, j), head.pair_outputs(as_a, as_b, j, i)))
    return F.mse_loss(both, targets.expand_as(both))


def assert_tiled_loss_is_reference(head, features, targets, tile: int, workers: int,
                                   nonzero_gradients: bool | None = None) -> float:
    """model.all_pairs_loss in tiles of `tile` on `workers` threads gives `reference_loss` and its gradients (with
    respect to the features and every head parameter): to float64 rounding, or in float32 (what training uses) to
    1e-5 of the largest gradient. `nonzero_gradients` True: every gradient has a value other than 0; False: every
    one is 0 (no output gets through the head's ReLU). Returns the loss."""
    import pytest
    import torch

    from siamrdm.model import all_pairs_loss

    params = [features, *head.parameters()]
    expected = reference_loss(head, features, targets)
    expected_grads = torch.autograd.grad(expected, params)
    loss = all_pairs_loss(head, features, targets, tile=tile, workers=workers)
    grads = torch.autograd.grad(loss, params)
    double = features.dtype == torch.float64
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12 if double else 1e-5)
    for got, want in zip(grads, expected_grads, strict=True):
        if nonzero_gradients is not None:
            assert (float(want.abs().max()) > 0) == nonzero_gradients
        if double:
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
        else:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * max(float(want.abs().max()), 1e-6))
    return loss.item()
