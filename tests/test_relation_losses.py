"""Relations instead of labels: every pair and triplet loss against float64 loops, values and gradients.

A relation [B, R] says what reference j is to anchor i: 1 a positive, -1 a negative, 0 neither (places:
within 10 m, beyond 25 m, in between). The loops of tests/reference_losses.py take the same relation;
the library must match them in value and in gradient, in a batch (R = B) and against references, with
anchors that have no positive, pairs that are neither, an asymmetric relation, and must give exactly
the labels' result when the relation is the labels' own.
"""

import numpy as np
import pytest
from keras import ops

from model.losses import contrastive_loss, get_loss, lifted_struct_loss, multi_similarity_loss
from model.losses.statistics import embedding_statistics
from model.triplet_loss import (
    batch_all_triplet_loss,
    batch_hard_distances,
    batch_hard_triplet_loss,
    batch_semihard_triplet_loss,
)
from tests import reference_losses as ref
from tests.backend_helpers import value_and_gradient

MARGIN = 0.5
DIM = 3

# name: (library, reference), each (labels, embeddings, ref_labels, ref_embeddings, relation) -> loss or (loss, stat).
LOSSES = {
    "batch_all": (
        lambda y, e, ry, re, rel: batch_all_triplet_loss(y, e, MARGIN, ref_labels=ry, ref_embeddings=re, relation=rel),
        lambda y, e, ry, re, rel: ref.batch_all_refs(y, e, ry, re, MARGIN, relation=rel),
    ),
    "batch_all_squared": (
        lambda y, e, ry, re, rel: batch_all_triplet_loss(
            y, e, MARGIN, squared=True, ref_labels=ry, ref_embeddings=re, relation=rel
        ),
        lambda y, e, ry, re, rel: ref.batch_all_refs(y, e, ry, re, MARGIN, squared=True, relation=rel),
    ),
    "batch_hard": (
        lambda y, e, ry, re, rel: batch_hard_triplet_loss(y, e, MARGIN, ref_labels=ry, ref_embeddings=re, relation=rel),
        lambda y, e, ry, re, rel: ref.batch_hard_refs(y, e, ry, re, MARGIN, relation=rel),
    ),
    "batch_hard_soft": (
        lambda y, e, ry, re, rel: batch_hard_triplet_loss(y, e, "soft", ref_labels=ry, ref_embeddings=re, relation=rel),
        lambda y, e, ry, re, rel: ref.batch_hard_refs(y, e, ry, re, "soft", relation=rel),
    ),
    "batch_semihard": (
        lambda y, e, ry, re, rel: batch_semihard_triplet_loss(
            y, e, MARGIN, ref_labels=ry, ref_embeddings=re, relation=rel
        ),
        lambda y, e, ry, re, rel: ref.batch_semihard_refs(y, e, ry, re, MARGIN, relation=rel),
    ),
    "contrastive": (
        lambda y, e, ry, re, rel: contrastive_loss(y, e, 1.5, ref_labels=ry, ref_embeddings=re, relation=rel),
        lambda y, e, ry, re, rel: ref.contrastive_refs(y, e, ry, re, 1.5, relation=rel),
    ),
    "lifted": (
        lambda y, e, ry, re, rel: lifted_struct_loss(y, e, 1.0, ref_labels=ry, ref_embeddings=re, relation=rel),
        lambda y, e, ry, re, rel: ref.lifted_refs(y, e, ry, re, 1.0, relation=rel),
    ),
    "multi_similarity": (
        lambda y, e, ry, re, rel: multi_similarity_loss(y, e, ref_labels=ry, ref_embeddings=re, relation=rel),
        lambda y, e, ry, re, rel: ref.multi_similarity_refs(y, e, ry, re, relation=rel),
    ),
}


def _first(outputs):
    return float(outputs[0] if isinstance(outputs, (tuple, list)) else outputs)


def _as_list(outputs):
    return [float(x) for x in (outputs if isinstance(outputs, (tuple, list)) else [outputs])]


def _gps_case(seed, batch_size=8, num_refs=None):
    """Positions on a line (metres) -> labels (unused by the masks), embeddings and the GPS relation:
    1 within 10 m, -1 beyond 25 m, 0 in between. Anchor 0 is alone: no reference within 10 m."""
    rng = np.random.default_rng(seed)
    positions = np.concatenate([[1000.0], rng.uniform(0.0, 60.0, size=batch_size - 1)])
    embeddings = rng.normal(size=(batch_size, DIM)).astype(np.float32)
    if num_refs is None:
        ref_positions, ref_embeddings = positions, None
    else:
        ref_positions = rng.uniform(0.0, 60.0, size=num_refs)
        ref_embeddings = (rng.normal(size=(num_refs, DIM)) + 0.3).astype(np.float32)
    offsets = np.abs(positions[:, None] - ref_positions[None, :])
    relation = np.where(offsets <= 10.0, 1, np.where(offsets > 25.0, -1, 0)).astype(np.int32)
    labels = np.arange(batch_size)
    ref_labels = None if num_refs is None else np.arange(num_refs) + batch_size
    return labels, embeddings, ref_labels, ref_embeddings, relation


def _references(embeddings, ref_embeddings):
    return embeddings if ref_embeddings is None else ref_embeddings


def _reference_labels(labels, ref_labels):
    return labels if ref_labels is None else ref_labels


def _finite_differences(fn, x, eps=1e-6):
    x = x.astype(np.float64)
    gradient = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        gradient[index] = (fn(x + step) - fn(x - step)) / (2 * eps)
    return gradient


@pytest.mark.parametrize("num_refs", [None, 11])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("name", LOSSES)
def test_gps_relation_matches_loops(name, seed, num_refs):
    labels, embeddings, ref_labels, ref_embeddings, relation = _gps_case(seed, num_refs=num_refs)
    assert (relation == 0).any() and (relation == 1).sum() > len(labels)  # pairs that are neither, and positives
    others = relation[0, 1:] if num_refs is None else relation[0]
    assert (others == -1).all()  # anchor 0: no positive among the references
    library, reference = LOSSES[name]
    got = _as_list(library(labels, embeddings, ref_labels, ref_embeddings, relation))
    expected = reference(
        labels, embeddings, _reference_labels(labels, ref_labels), _references(embeddings, ref_embeddings), relation
    )
    expected = list(expected) if isinstance(expected, tuple) else [expected]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5, err_msg=name)
    assert expected[0] > 0.0


@pytest.mark.parametrize("name", LOSSES)
def test_asymmetric_relation_in_a_batch_matches_loops(name):
    rng = np.random.default_rng(5)
    labels, embeddings = np.arange(7), rng.normal(size=(7, DIM)).astype(np.float32)
    relation = rng.integers(-1, 2, size=(7, 7)).astype(np.int32)
    relation[2] = np.where(relation[2] == 1, 0, relation[2])  # anchor 2: no positive
    library, reference = LOSSES[name]
    got = _as_list(library(labels, embeddings, None, None, relation))
    expected = reference(labels, embeddings, labels, embeddings, relation)
    np.testing.assert_allclose(got, list(expected) if isinstance(expected, tuple) else [expected], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_refs", [None, 9])
@pytest.mark.parametrize("name", LOSSES)
def test_gradient_with_a_relation_matches_finite_differences(name, num_refs):
    labels, embeddings, ref_labels, ref_embeddings, relation = _gps_case(3, batch_size=6, num_refs=num_refs)
    library, reference = LOSSES[name]
    refs_of = (lambda e: e) if ref_embeddings is None else (lambda e: ref_embeddings)
    _, gradient = value_and_gradient(
        lambda e: library(labels, e, ref_labels, None if ref_embeddings is None else ref_embeddings, relation),
        embeddings,
    )
    expected = _finite_differences(
        lambda e: _first(reference(labels, e, _reference_labels(labels, ref_labels), refs_of(e), relation)), embeddings
    )
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(gradient, expected, rtol=2e-3, atol=2e-4, err_msg=name)


@pytest.mark.parametrize("name", LOSSES)
def test_the_labels_own_relation_gives_the_labels_result(name):
    # relation = +1 same label, -1 other label: the masks of the labels, so the pairs of the labels
    # (contrastive and lifted count ordered pairs with a relation: the same mean for a symmetric one).
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, size=9)
    embeddings = rng.normal(size=(9, DIM)).astype(np.float32)
    relation = np.where(labels[:, None] == labels[None, :], 1, -1).astype(np.int32)
    library, _ = LOSSES[name]
    with_relation = _as_list(library(labels, embeddings, None, None, relation))
    with_labels = _as_list(library(labels, embeddings, None, None, None))
    np.testing.assert_allclose(with_relation, with_labels, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", LOSSES)
def test_no_positive_anywhere_gives_zero_or_the_negatives_only(name):
    labels, embeddings = np.arange(5), np.random.default_rng(8).normal(size=(5, DIM)).astype(np.float32)
    relation = -np.ones((5, 5), np.int32)
    library, reference = LOSSES[name]
    value, gradient = value_and_gradient(lambda e: library(labels, e, None, None, relation), embeddings)
    assert np.isfinite(value) and np.all(np.isfinite(gradient))
    np.testing.assert_allclose(value, _first(reference(labels, embeddings, labels, embeddings, relation)), atol=1e-5)


def test_relation_of_the_wrong_shape_is_refused_by_name():
    labels, embeddings = np.arange(4), np.zeros((4, DIM), np.float32)
    with pytest.raises(ValueError, match=r"relation must be a \[B, R\] = \[4, 4\]"):
        batch_all_triplet_loss(labels, embeddings, MARGIN, relation=np.ones((4, 3), np.int32))
    with pytest.raises(ValueError, match="relation must be"):
        contrastive_loss(labels, embeddings, relation=np.ones(4, np.int32))


def test_statistics_and_hardest_distances_follow_the_relation():
    labels, embeddings, _, _, relation = _gps_case(4)
    hardest_positive, hardest_negative, valid = batch_hard_distances(labels, embeddings, relation=relation)
    d = ref.distance_matrix(embeddings)
    for a in range(len(labels)):
        positives = [d[a, j] for j in range(len(labels)) if j != a and relation[a, j] == 1]
        negatives = [d[a, j] for j in range(len(labels)) if relation[a, j] == -1]
        assert bool(valid[a]) == bool(positives and negatives)
        if positives and negatives:
            np.testing.assert_allclose(
                [float(hardest_positive[a]), float(hardest_negative[a])], [max(positives), min(negatives)], rtol=1e-5
            )
    pairs = [d[a, j] for a in range(len(labels)) for j in range(len(labels)) if a != j and relation[a, j] != 0]
    stats = embedding_statistics(labels, embeddings, relation=relation)
    np.testing.assert_allclose(float(stats["mean_distance"]), np.mean(pairs), rtol=1e-5)


def test_loss_classes_pass_the_relation_and_proxies_refuse_it():
    labels, embeddings, _, _, relation = _gps_case(2)
    loss, stats = get_loss("batch_all", margin=MARGIN).compute(labels, embeddings, relation=relation)
    expected = ref.batch_all_refs(labels, embeddings, labels, embeddings, MARGIN, relation=relation)
    np.testing.assert_allclose([float(loss), float(stats["fraction_positive_triplets"])], expected, rtol=1e-4)
    proxies = get_loss("proxy_nca", num_classes=8, embedding_size=DIM)
    with pytest.raises(ValueError, match="relation"):
        proxies.compute(labels, ops.convert_to_tensor(embeddings), relation=relation)
