"""The O(B²) library losses against the direct [B, B, B] formulations (benchmarks/direct_losses.py).

Batch-all (loss and fraction of positive triplets) and semi-hard must give the same values and the
same gradients as the classic triplet-tensor code, at batch sizes up to 256, with few classes
(many positives per anchor) and many classes (singletons, anchors without positives), for both
euclidean and squared distances. The direct formulation is itself checked against the explicit
numpy loops of tests/reference_losses.py first, so that a wrong reference cannot hide a wrong library.
"""

import numpy as np
import pytest
from keras import ops

from benchmarks.direct_losses import (
    direct_batch_all_triplet_loss,
    direct_batch_semihard_triplet_loss,
    triplet_mask,
)
from model.triplet_loss import batch_all_triplet_loss, batch_semihard_triplet_loss
from tests import reference_losses as ref
from tests.backend_helpers import value_and_gradient

MARGIN = 0.5
DIM = 8

# name: (library, direct), each (labels, embeddings, squared) -> [loss, *statistics]; gradients are of the loss.
LOSS_PAIRS = {
    "batch_all": (
        lambda y, e, squared: batch_all_triplet_loss(y, e, MARGIN, squared),
        lambda y, e, squared: direct_batch_all_triplet_loss(y, e, MARGIN, squared),
    ),
    "batch_semihard": (
        lambda y, e, squared: [batch_semihard_triplet_loss(y, e, MARGIN, squared)],
        lambda y, e, squared: [direct_batch_semihard_triplet_loss(y, e, MARGIN, squared)],
    ),
}


def _batch(size, structure, seed=0):
    """labels [size], embeddings [size, DIM]: "few" = 3 classes, "many" = about 2 items per class."""
    rng = np.random.default_rng(seed)
    num_classes = 3 if structure == "few" else max(size // 2, 2)
    labels = rng.integers(0, num_classes, size=size)
    return labels, rng.normal(size=(size, DIM)).astype(np.float32)


def _values_and_gradient(loss_fn, labels, embeddings, squared):
    """[loss, *statistics] as floats, and the gradient [B, D] of the loss."""
    _, gradient = value_and_gradient(lambda e: loss_fn(labels, e, squared), embeddings)
    return np.array([float(x) for x in loss_fn(labels, embeddings, squared)]), gradient


def test_triplet_mask_matches_definition():
    labels = np.array([0, 1, 0, 2, 1, 0])
    mask = ops.convert_to_numpy(triplet_mask(labels))
    for a, p, n in np.ndindex(*mask.shape):
        expected = a != p and labels[a] == labels[p] and labels[n] != labels[a]
        assert mask[a, p, n] == expected, (a, p, n)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("size,structure", [(2, "few"), (9, "few"), (9, "many"), (16, "many")])
def test_direct_formulation_matches_numpy_loops(size, structure, squared):
    labels, embeddings = _batch(size, structure, seed=size)
    loss, fraction = direct_batch_all_triplet_loss(labels, embeddings, MARGIN, squared)
    expected_loss, expected_fraction = ref.batch_all(labels, embeddings, MARGIN, squared)
    np.testing.assert_allclose(float(loss), expected_loss, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(fraction), expected_fraction, rtol=1e-6)
    semihard = direct_batch_semihard_triplet_loss(labels, embeddings, MARGIN, squared)
    np.testing.assert_allclose(float(semihard), ref.batch_semihard(labels, embeddings, MARGIN, squared), rtol=1e-5)


@pytest.mark.parametrize("squared", [False, True])
@pytest.mark.parametrize("structure", ["few", "many"])
@pytest.mark.parametrize("size", [8, 64, 256])
@pytest.mark.parametrize("name", LOSS_PAIRS)
def test_library_matches_direct_values_and_gradients(name, size, structure, squared):
    labels, embeddings = _batch(size, structure, seed=size + len(structure))
    library, direct = LOSS_PAIRS[name]
    values, gradient = _values_and_gradient(library, labels, embeddings, squared)
    expected_values, expected_gradient = _values_and_gradient(direct, labels, embeddings, squared)
    # The batch has triplets that matter (and for batch-all, some that do not), so the comparison means something.
    assert expected_values[0] > 0.0 and np.all(expected_values[1:] < 1.0)
    np.testing.assert_allclose(values, expected_values, rtol=1e-5)
    # Float tolerance relative to the gradient's scale: for each anchor, Σ_j ∂L/∂d(a,j) = 0 (every
    # triplet adds +1 on d(a,p) and -1 on d(a,n)), so the gradient of the embeddings is a small
    # residual of large terms and float32 rounding shows at ~1e-4 of its largest entry at B = 256.
    # One triplet counted wrongly would move entries by ~1e-2 of it.
    scale = np.abs(expected_gradient).max()
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-4, atol=5e-4 * scale)
    assert np.linalg.norm(gradient - expected_gradient) <= 1e-4 * np.linalg.norm(expected_gradient)


@pytest.mark.parametrize("margin", [0.0, 1.0, 2.0])
def test_exact_ties_match_direct(margin):
    # Integer points and squared distances: distances are exact integers, so d(a,p) + m == d(a,n)
    # and d(a,p) == d(a,n) happen often; each side must count them the same way.
    rng = np.random.default_rng(7)
    embeddings = rng.integers(0, 3, size=(40, 2)).astype(np.float32)
    labels = rng.integers(0, 4, size=40)
    loss, fraction = batch_all_triplet_loss(labels, embeddings, margin, squared=True)
    expected_loss, expected_fraction = direct_batch_all_triplet_loss(labels, embeddings, margin, squared=True)
    assert float(loss) == pytest.approx(float(expected_loss), rel=1e-6)
    assert float(fraction) == pytest.approx(float(expected_fraction), rel=1e-6)
    semihard = batch_semihard_triplet_loss(labels, embeddings, margin, squared=True)
    expected = direct_batch_semihard_triplet_loss(labels, embeddings, margin, squared=True)
    assert float(semihard) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize("labels", [np.zeros(6, int), np.arange(6), np.array([0, 0, 0, 0, 1])])
def test_degenerate_batches_match_direct(labels):
    # One class (no negative), all distinct (no positive), and a lone negative.
    embeddings = np.random.default_rng(1).normal(size=(len(labels), DIM)).astype(np.float32)
    for name, (library, direct) in LOSS_PAIRS.items():
        values, gradient = _values_and_gradient(library, labels, embeddings, False)
        expected_values, expected_gradient = _values_and_gradient(direct, labels, embeddings, False)
        np.testing.assert_allclose(values, expected_values, rtol=1e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-5, atol=1e-7, err_msg=name)
