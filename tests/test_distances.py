"""Distances, masks and masked reductions against numpy loops."""

import numpy as np
import pytest
import tensorflow as tf

from model import distances
from tests import reference_losses as ref


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_pairwise_distances_match_loops(squared, seed):
    embeddings = np.random.default_rng(seed).normal(size=(9, 5)).astype(np.float32)
    got = np.asarray(distances.pairwise_distances(embeddings, squared=squared))
    np.testing.assert_allclose(got, ref.distance_matrix(embeddings, squared), rtol=1e-5, atol=1e-5)
    assert np.all(np.diag(got) == 0.0)


def test_pairwise_distances_gradient_finite_for_duplicates():
    embeddings = tf.Variable(np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], np.float32))
    with tf.GradientTape() as tape:
        total = tf.reduce_sum(distances.pairwise_distances(embeddings))
    grad = tape.gradient(total, embeddings).numpy()
    assert np.all(np.isfinite(grad))
    # d(e0, e1) = 0 contributes nothing; only the distances to e2 pull e0 and e1.
    np.testing.assert_allclose(grad[0], 2 * np.array([1.0, 2.0]) / np.sqrt(5.0), rtol=1e-5)


def test_cosine_similarity_matches_numpy():
    embeddings = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    got = np.asarray(distances.pairwise_cosine_similarity(embeddings))
    np.testing.assert_allclose(got, ref.cosine_matrix(embeddings), atol=1e-6)


def test_masks_match_loops():
    labels = np.array([[3], [1], [3], [2], [1]], dtype=np.int64)
    flat = labels.ravel()
    positive = np.asarray(distances.anchor_positive_mask(labels))
    negative = np.asarray(distances.anchor_negative_mask(labels))
    for i in range(5):
        for j in range(5):
            assert positive[i, j] == (i != j and flat[i] == flat[j])
            assert negative[i, j] == (flat[i] != flat[j])


def test_masked_reductions_and_empty_rows():
    values = np.array([[1.0, 5.0, 3.0], [2.0, 0.5, 4.0]], np.float32)
    mask = np.array([[True, False, True], [False, False, False]])
    assert np.asarray(distances.masked_maximum(values, mask))[0] == 3.0
    assert np.asarray(distances.masked_minimum(values, mask))[0] == 1.0
    lse = np.asarray(distances.masked_log1p_sum_exp(values * 100, mask))
    np.testing.assert_allclose(lse[0], np.logaddexp(np.logaddexp(0.0, 100.0), 300.0), rtol=1e-6)
    assert lse[1] == 0.0  # nothing kept: log(1 + 0)
