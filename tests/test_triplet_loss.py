"""Triplet losses against explicit numpy loops over pairs and triplets (tests/reference_losses.py)."""

import numpy as np
import pytest
from keras import ops

from model.losses.statistics import embedding_statistics
from model.triplet_loss import (
    batch_all_triplet_loss,
    batch_hard_distances,
    batch_hard_triplet_loss,
    batch_semihard_triplet_loss,
)
from tests import reference_losses as ref
from tests.backend_helpers import dtype_name, value_and_gradient

MARGIN = 0.5


def _batch(seed, size, num_classes, dim=6):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=size)
    return labels, rng.normal(size=(size, dim)).astype(np.float32)


# Batches of 2, odd and >= 64 sizes; few classes (many positives), many classes (singletons).
CASES = [(seed, size, classes) for seed in (0, 1, 2) for size, classes in ((2, 2), (7, 3), (13, 9))]
CASES += [(3, 64, 5), (4, 65, 40)]


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("seed,size,num_classes", CASES)
def test_batch_all_matches_reference(seed, size, num_classes, squared):
    labels, embeddings = _batch(seed, size, num_classes)
    loss, fraction = batch_all_triplet_loss(labels, embeddings, MARGIN, squared=squared)
    expected_loss, expected_fraction = ref.batch_all(labels, embeddings, MARGIN, squared)
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(float(fraction), expected_fraction, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("margin", [MARGIN, "soft"])
@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("seed,size,num_classes", CASES)
def test_batch_hard_matches_reference(seed, size, num_classes, squared, margin):
    labels, embeddings = _batch(seed, size, num_classes)
    loss = batch_hard_triplet_loss(labels, embeddings, margin, squared=squared)
    np.testing.assert_allclose(float(loss), ref.batch_hard(labels, embeddings, margin, squared), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("seed,size,num_classes", CASES)
def test_semihard_matches_reference(seed, size, num_classes, squared):
    labels, embeddings = _batch(seed, size, num_classes)
    loss = batch_semihard_triplet_loss(labels, embeddings, MARGIN, squared=squared)
    np.testing.assert_allclose(
        float(loss), ref.batch_semihard(labels, embeddings, MARGIN, squared), rtol=1e-4, atol=1e-5
    )


ALL_LOSSES = {
    "batch_all": lambda y, e: batch_all_triplet_loss(y, e, MARGIN)[0],
    "batch_hard": lambda y, e: batch_hard_triplet_loss(y, e, MARGIN),
    "batch_hard_soft": lambda y, e: batch_hard_triplet_loss(y, e, "soft"),
    "batch_semihard": lambda y, e: batch_semihard_triplet_loss(y, e, MARGIN),
}


@pytest.mark.parametrize("name", ALL_LOSSES)
@pytest.mark.parametrize(
    "labels",
    [np.zeros(6, int), np.arange(6), np.array([4])],
    ids=["one_class", "all_distinct", "batch_of_one"],
)
def test_no_valid_triplet_gives_zero_not_nan(name, labels):
    embeddings = np.random.default_rng(0).normal(size=(len(labels), 4)).astype(np.float32)
    assert float(ALL_LOSSES[name](labels, embeddings)) == 0.0


def test_batch_all_fraction_is_zero_without_valid_triplets():
    _, fraction = batch_all_triplet_loss(np.arange(5), np.ones((5, 3), np.float32), MARGIN)
    assert float(fraction) == 0.0


def test_batch_all_without_positive_triplet_is_zero():
    # Two tight, far-apart clusters: every triplet satisfies the margin.
    embeddings = np.array([[0, 0], [0, 0.01], [10, 10], [10, 10.01]], np.float32)
    loss, fraction = batch_all_triplet_loss(np.array([0, 0, 1, 1]), embeddings, MARGIN)
    assert float(loss) == 0.0 and float(fraction) == 0.0


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_duplicated_embeddings_give_finite_gradients_and_match(name):
    labels = np.array([0, 0, 1, 1, 2, 0])
    embeddings = np.random.default_rng(5).normal(size=(6, 4)).astype(np.float32)
    embeddings[1] = embeddings[0]  # a positive at distance 0
    embeddings[3] = embeddings[0]  # a negative at distance 0
    loss, grad = value_and_gradient(lambda e: ALL_LOSSES[name](labels, e), embeddings)
    assert np.isfinite(loss) and np.all(np.isfinite(grad))


def test_semihard_ties_are_not_semihard():
    # d(a,p) == d(a,n) exactly: that negative is not farther than p, so the next one is chosen.
    embeddings = np.array([[0, 0], [1, 0], [0, 1], [0, 3]], np.float32)
    labels = np.array([0, 0, 1, 2])
    loss = batch_semihard_triplet_loss(labels, embeddings, MARGIN)
    np.testing.assert_allclose(float(loss), ref.batch_semihard(labels, embeddings, MARGIN), rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", ALL_LOSSES)
def test_low_precision_inputs_compute_in_float32(name, dtype):
    labels, embeddings = _batch(7, 12, 3)
    low = ops.cast(embeddings, dtype)
    loss = ALL_LOSSES[name](labels, low)
    assert dtype_name(loss) == "float32"
    # The reference sees the same rounded inputs, so the result matches to float32 precision.
    reference = ALL_LOSSES[name](labels, ops.cast(low, "float32"))
    np.testing.assert_allclose(float(loss), float(reference), rtol=1e-6)


@pytest.mark.parametrize("name", ALL_LOSSES)
def test_label_shapes_and_dtypes(name):
    labels, embeddings = _batch(8, 10, 3)
    expected = float(ALL_LOSSES[name](labels.astype(np.int32), embeddings))
    for variant in (labels.astype(np.int64), labels.reshape(-1, 1), labels.reshape(-1, 1).astype(np.int64)):
        assert float(ALL_LOSSES[name](variant, embeddings)) == pytest.approx(expected, rel=1e-6)


def _numeric_gradient(fn, embeddings, eps=1e-6):
    x = embeddings.astype(np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        grad[index] = (fn(x + step) - fn(x - step)) / (2 * eps)
    return grad


@pytest.mark.parametrize(
    "name,reference",
    [
        ("batch_all", lambda y, e: ref.batch_all(y, e, MARGIN)[0]),
        ("batch_hard", lambda y, e: ref.batch_hard(y, e, MARGIN)),
        ("batch_hard_soft", lambda y, e: ref.batch_hard(y, e, "soft")),
        ("batch_semihard", lambda y, e: ref.batch_semihard(y, e, MARGIN)),
    ],
)
def test_gradients_match_finite_differences_of_reference(name, reference):
    labels, embeddings = _batch(11, 8, 3, dim=3)
    _, grad = value_and_gradient(lambda e: ALL_LOSSES[name](labels, e), embeddings)
    expected = _numeric_gradient(lambda e: reference(labels, e), embeddings)
    np.testing.assert_allclose(grad, expected, rtol=2e-3, atol=2e-4)


def test_batch_hard_distances_and_statistics():
    labels, embeddings = _batch(12, 9, 3)
    hp, hn, valid = batch_hard_distances(labels, embeddings)
    d = ref.distance_matrix(embeddings)
    for a in range(9):
        pos = [d[a, p] for p in range(9) if p != a and labels[p] == labels[a]]
        neg = [d[a, n] for n in range(9) if labels[n] != labels[a]]
        assert bool(valid[a]) == bool(pos and neg)
        if pos and neg:
            assert float(hp[a]) == pytest.approx(max(pos), rel=1e-5)
            assert float(hn[a]) == pytest.approx(min(neg), rel=1e-5)
    stats = embedding_statistics(labels, embeddings)
    assert float(stats["mean_distance"]) == pytest.approx(d.sum() / (9 * 8), rel=1e-5)
    assert float(stats["embedding_norm"]) == pytest.approx(np.linalg.norm(embeddings, axis=1).mean(), rel=1e-5)


def test_batch_all_ties_at_zero_are_not_positive_triplets():
    # margin 0 and coincident points: every triplet's loss is exactly 0, so none is "positive".
    embeddings = np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 1.0], [3.0, 0.0]], np.float32)
    labels = np.array([0, 0, 1, 1])
    loss, fraction = batch_all_triplet_loss(labels, embeddings, 0.0)
    expected_loss, expected_fraction = ref.batch_all(labels, embeddings, 0.0)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-6)
    assert float(fraction) == pytest.approx(expected_fraction, rel=1e-6)
