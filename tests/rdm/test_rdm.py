"""RDM arithmetic: upper triangles, ranks, correlation-distance RDMs, rescaling."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata, spearmanr

from siamrdm.rdm import core as rdm  # the module itself: a test patches its rankdata


def test_upper_tri_order_and_shape() -> None:
    square = np.array([[0, 1, 2, 3], [1, 0, 4, 5], [2, 4, 0, 6], [3, 5, 6, 0]], dtype=float)
    np.testing.assert_array_equal(rdm.upper_tri(square), [1, 2, 3, 4, 5, 6])  # row-major, no diagonal
    stack = np.stack([square, 10 * square])
    assert rdm.upper_tri(stack).shape == (2, 6)
    np.testing.assert_array_equal(rdm.upper_tri(stack)[1], [10, 20, 30, 40, 50, 60])
    assert rdm.upper_tri(np.zeros((3, 2, 5, 5))).shape == (3, 2, 10)
    rows, cols = rdm.upper_tri_indices(4)
    assert np.all(rows < cols) and len(rows) == 6


def test_square_rdm_round_trip(make_rdms) -> None:
    vector = np.arange(1.0, 11.0)
    square = rdm.square_rdm(vector, 5)
    np.testing.assert_array_equal(square, square.T)
    np.testing.assert_array_equal(np.diag(square), np.zeros(5))
    np.testing.assert_array_equal(rdm.upper_tri(square), vector)
    assert square[0, 1] == 1 and square[1, 0] == 1 and square[3, 4] == 10
    full = make_rdms(9, seed=11)
    np.testing.assert_array_equal(rdm.square_rdm(rdm.upper_tri(full), 9), full)


def test_square_rdm_rejects_wrong_length() -> None:
    with pytest.raises(ValueError, match="does not fit a 5 x 5"):
        rdm.square_rdm(np.arange(9.0), 5)
    with pytest.raises(ValueError):
        rdm.square_rdm(np.zeros((2, 5)), 5)


def test_rank_transform_ties() -> None:
    np.testing.assert_array_equal(rdm.rank_transform(np.array([0.3, 0.1, 0.3, 0.2])), [3.5, 1, 3.5, 2])
    np.testing.assert_array_equal(rdm.rank_transform(np.array([5.0, 5.0, 5.0])), [2, 2, 2])
    np.testing.assert_array_equal(rdm.rank_transform(np.array([2.0, -1.0, 7.0])), [2, 1, 3])
    # Along the last axis, row by row.
    ranks = rdm.rank_transform(np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0]]))
    np.testing.assert_array_equal(ranks, [[2.5, 2.5, 1], [1, 3, 2]])


def test_rdm_from_features_is_one_minus_corrcoef() -> None:
    rng = np.random.default_rng(12)
    features = rng.normal(size=(10, 25))
    result = rdm.rdm_from_features(features)
    np.testing.assert_allclose(result, 1 - np.corrcoef(features), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(result, result.T)
    np.testing.assert_array_equal(np.diag(result), np.zeros(10))
    # Feature maps of any shape are flattened per image.
    maps = rng.normal(size=(6, 3, 4, 4))
    np.testing.assert_allclose(
        rdm.rdm_from_features(maps), 1 - np.corrcoef(maps.reshape(6, -1)), rtol=0, atol=1e-12
    )
    # Correlation distance ignores each pattern's offset and scale.
    np.testing.assert_allclose(rdm.rdm_from_features(3 * features + 7), result, rtol=0, atol=1e-12)


@pytest.fixture
def dissimilarities() -> np.ndarray:
    return np.array([0.5, 0.2, 0.9, 0.2, 0.7, 0.4])


def test_rescale_minmax(dissimilarities: np.ndarray) -> None:
    values, params = rdm.rescale(dissimilarities, "minmax")
    np.testing.assert_allclose(values, [3 / 7, 0, 1, 0, 5 / 7, 2 / 7])
    assert params == {"low": 0.2, "high": 0.9}
    assert rdm.rescale(dissimilarities)[0].tolist() == values.tolist()  # the default
    flat, _ = rdm.rescale(np.full(4, 0.3), "minmax")  # constant input does not divide by zero
    np.testing.assert_array_equal(flat, np.zeros(4))


def test_rescale_rank(dissimilarities: np.ndarray) -> None:
    values, params = rdm.rescale(dissimilarities, "rank")
    # ranks 4, 1.5, 6, 1.5, 5, 3 -> (rank - 1) / 5
    np.testing.assert_allclose(values, [0.6, 0.1, 1.0, 0.1, 0.8, 0.4])
    assert params == {}
    distinct, _ = rdm.rescale(np.array([3.0, 1.0, 2.0, 4.0, 0.0]), "rank")
    np.testing.assert_allclose(distinct, [0.75, 0.25, 0.5, 1.0, 0.0])


def test_rescale_zscore(dissimilarities: np.ndarray) -> None:
    values, params = rdm.rescale(dissimilarities, "zscore")
    assert values.mean() == pytest.approx(0, abs=1e-12)
    assert values.std() == pytest.approx(1)
    assert params["mean"] == pytest.approx(dissimilarities.mean())
    assert params["sd"] == pytest.approx(dissimilarities.std())
    np.testing.assert_allclose(values * params["sd"] + params["mean"], dissimilarities)


def test_rescale_none_copies(dissimilarities: np.ndarray) -> None:
    values, params = rdm.rescale(dissimilarities, "none")
    np.testing.assert_array_equal(values, dissimilarities)
    assert params == {}
    values[0] = 99
    assert dissimilarities[0] == 0.5


def test_rescale_keeps_spearman_order(dissimilarities: np.ndarray) -> None:
    for method in rdm.RESCALE_METHODS:
        values, _ = rdm.rescale(dissimilarities, method)
        assert spearmanr(values, dissimilarities).statistic == pytest.approx(1.0)


def test_rescale_unknown_method(dissimilarities: np.ndarray) -> None:
    with pytest.raises(ValueError, match="unknown rescale method 'log'"):
        rdm.rescale(dissimilarities, "log")


def _tricky_vectors(rng: np.random.Generator, n: int) -> list[np.ndarray]:
    """Vectors that test a ranker: ties, -0.0 beside 0.0, negatives, values that differ only in their lowest
    bits (they share the high bits of the sort key), float32."""
    return [
        rng.random(n),
        np.round(rng.normal(size=n), 1),  # many ties
        np.where(rng.random(n) < 0.05, 0.5, rng.random(n)),  # few ties: one run
        np.round(rng.random(n) * 8 * n),  # few ties: short runs here and there
        rng.integers(-2, 3, n) * np.where(rng.random(n) < 0.5, -1.0, 1.0) * 0.0 + rng.integers(-1, 2, n),  # -0.0, 0.0
        1 + rng.integers(0, 40, n) * 2.0**-45,  # equal high bits, distinct low bits, and ties
        -(1 + rng.integers(0, 40, n) * 2.0**-45),
        rng.normal(size=n).astype(np.float32),
        np.round(rng.normal(size=n), 1).astype(np.float32),
        np.concatenate([np.full(n // 2, 5e-310), rng.random(n - n // 2)]),  # subnormals
        # A cluster of values closer than the coarse key resolves (range / 2^51): ordered by their exact values.
        rng.permutation(np.concatenate([rng.random(n - n // 16) * 1e6, rng.integers(0, 5, n // 16) * 1e-10])),
    ]


@pytest.mark.parametrize("n", [2, 3, 10, 1000, 4097])
def test_ranker_equals_rankdata(n: int) -> None:
    rng = np.random.default_rng(n)
    ranker = rdm.Ranker(n)
    out = np.empty(n)
    for x in _tricky_vectors(rng, n):
        expected = rankdata(x)
        assert ranker(x, out) is out  # reused across vectors: its working arrays are kept
        np.testing.assert_array_equal(out, expected)
        np.testing.assert_array_equal(rdm.rank_transform(x), expected)
        np.testing.assert_array_equal(ranker(x[::-1].copy()), expected[::-1])
    with pytest.raises(ValueError, match="length"):
        ranker(np.zeros(n + 1))


def test_ranker_falls_back_to_rankdata_where_its_keys_cannot_help(monkeypatch) -> None:
    calls = []
    monkeypatch.setattr(rdm, "rankdata", lambda x, **kw: calls.append(len(x)) or rankdata(x, **kw))
    rng = np.random.default_rng(3)
    cases = [
        np.append(rng.random(5000), 1e300),  # one outlier: the other values share one coarse key
        np.append(rng.random(50), [-1e308, 1e308]),  # max - min overflows
        np.array([3, 1, 3, 2, 2, 9]),  # integers
        np.array([0.3, np.nan, 0.1], dtype=np.float32),  # NaN: rankdata's answer, all NaN
    ]
    for x in cases:
        np.testing.assert_array_equal(rdm.Ranker(len(x))(x), rankdata(x))  # NaN equals NaN here
    assert calls == [len(x) for x in cases]
