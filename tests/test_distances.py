"""Distances, masks and masked reductions against numpy loops (any Keras backend)."""

import keras
import numpy as np
import pytest
from keras import ops

from model.losses import distances, masks, reductions
from tests import reference_losses as ref
from tests.backend_helpers import value_and_gradient


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_pairwise_distances_match_loops(squared, seed):
    embeddings = np.random.default_rng(seed).normal(size=(9, 5)).astype(np.float32)
    got = np.asarray(distances.pairwise_distances(embeddings, squared=squared))
    np.testing.assert_allclose(got, ref.distance_matrix(embeddings, squared), rtol=1e-5, atol=1e-5)
    assert np.all(np.diag(got) == 0.0)


def test_pairwise_distances_gradient_finite_for_duplicates():
    embeddings = np.array([[1.0, 2.0], [1.0, 2.0], [0.0, 0.0]], np.float32)
    _, grad = value_and_gradient(lambda e: ops.sum(distances.pairwise_distances(e)), embeddings)
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
    positive = np.asarray(masks.anchor_positive_mask(labels))
    negative = np.asarray(masks.anchor_negative_mask(labels))
    for i in range(5):
        for j in range(5):
            assert positive[i, j] == (i != j and flat[i] == flat[j])
            assert negative[i, j] == (flat[i] != flat[j])


def test_masked_reductions_and_empty_rows():
    values = np.array([[1.0, 5.0, 3.0], [2.0, 0.5, 4.0]], np.float32)
    mask = np.array([[True, False, True], [False, False, False]])
    assert np.asarray(reductions.masked_maximum(values, mask))[0] == 3.0
    assert np.asarray(reductions.masked_minimum(values, mask))[0] == 1.0
    lse = np.asarray(reductions.masked_log1p_sum_exp(values * 100, mask))
    np.testing.assert_allclose(lse[0], np.logaddexp(np.logaddexp(0.0, 100.0), 300.0), rtol=1e-6)
    assert lse[1] == 0.0  # nothing kept: log(1 + 0)


@pytest.mark.parametrize("remove_diagonal", [True, False])
@pytest.mark.parametrize("squared", [False, True])
def test_anchor_reference_distances_and_masks_match_loops(squared, remove_diagonal):
    rng = np.random.default_rng(4)
    embeddings, references = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(8, 3)).astype(np.float32)
    labels, ref_labels = rng.integers(0, 3, size=5), rng.integers(0, 4, size=(8, 1))
    got = distances.pairwise_distances(embeddings, squared=squared, ref_embeddings=references)
    expected = ref.cross_distance_matrix(embeddings, references, squared)
    np.testing.assert_allclose(ops.convert_to_numpy(got), expected, rtol=1e-5, atol=1e-5)
    cosine = ops.convert_to_numpy(distances.pairwise_cosine_similarity(embeddings, references))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    np.testing.assert_allclose(
        cosine, unit(embeddings.astype(np.float64)) @ unit(references.astype(np.float64)).T, atol=1e-6
    )
    positive = ops.convert_to_numpy(masks.anchor_positive_mask(labels, ref_labels, remove_diagonal))
    negative = ops.convert_to_numpy(masks.anchor_negative_mask(labels, ref_labels))
    assert positive.shape == negative.shape == (5, 8)
    for i in range(5):
        for j in range(8):
            assert positive[i, j] == (labels[i] == ref_labels[j, 0] and not (remove_diagonal and i == j))
            assert negative[i, j] == (labels[i] != ref_labels[j, 0])


def test_masked_reductions_over_an_empty_reference_set():
    values, mask = np.zeros((3, 0), np.float32), np.zeros((3, 0), bool)
    big = np.full(3, 1e12, np.float32)
    np.testing.assert_array_equal(ops.convert_to_numpy(reductions.masked_maximum(values, mask)), -big)
    np.testing.assert_array_equal(ops.convert_to_numpy(reductions.masked_minimum(values, mask)), big)
    assert ops.convert_to_numpy(reductions.masked_maximum(values, mask, axis=0)).shape == (0,)
    np.testing.assert_array_equal(ops.convert_to_numpy(reductions.masked_logsumexp(values, mask)), -big)
    np.testing.assert_array_equal(ops.convert_to_numpy(reductions.masked_log1p_sum_exp(values, mask)), [0.0] * 3)


def test_masked_reductions_in_a_graph_of_unknown_sizes():
    # Where only the running graph knows that a row is empty, the fill value still comes out (not ±inf).
    if keras.backend.backend() != "tensorflow":
        pytest.skip("graphs with unknown sizes are a TensorFlow matter")
    import tensorflow as tf

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32), tf.TensorSpec([None, None], tf.bool)])
    def extremes(values, mask):
        return reductions.masked_maximum(values, mask), reductions.masked_minimum(values, mask)

    maximum, minimum = extremes(tf.zeros((3, 0)), tf.zeros((3, 0), tf.bool))
    np.testing.assert_array_equal(maximum.numpy(), -np.full(3, 1e12, np.float32))
    np.testing.assert_array_equal(minimum.numpy(), np.full(3, 1e12, np.float32))
