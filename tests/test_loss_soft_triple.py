"""SoftTriple (model/losses/soft_triple.py) against a numpy reference of the paper's formula and PML 2.x."""

import math

import keras
import numpy as np
import pytest

from model.losses import LOSSES, SoftTripleCenters, SoftTripleLoss, get_loss, soft_triple_loss
from tests import class_loss_checks as checks
from tests.backend_helpers import value_and_gradient

C, D, K = checks.NUM_CLASSES, checks.DIM, 10


def reference(labels, embeddings, centers, centers_per_class=K, la=20.0, gamma=0.1, margin=0.01):
    """S_ic = Σ_k softmax_k(s_ick / γ)·s_ick (column c·K + k: centre k of class c);
    mean_i -log softmax(λ·(S_i - δ·onehot(y_i)))[y_i]."""
    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)  # a zero row stays 0
    w = centers / np.linalg.norm(centers, axis=0, keepdims=True)
    num_classes = centers.shape[1] // centers_per_class
    total = 0.0
    for i, label in enumerate(labels):
        similarity = (x[i] @ w).reshape(num_classes, centers_per_class)  # row c: class c's centres
        weights = np.exp((similarity - similarity.max(axis=1, keepdims=True)) / gamma)
        weights /= weights.sum(axis=1, keepdims=True)
        logits = la * (weights * similarity).sum(axis=1)
        logits[label] -= la * margin
        top = logits.max()
        total += top + math.log(np.exp(logits - top).sum()) - logits[label]
    return total / len(labels)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_value_and_gradients_match_the_reference(kind):
    labels, embeddings = checks.batch(kind, seed=1)
    checks.check_value_and_gradients(soft_triple_loss, reference, labels, embeddings,
                                     checks.random_weights((D, C * K)))


def test_options():
    labels, embeddings = checks.batch("random", seed=2)
    centers = checks.random_weights((D, C * K), seed=2)
    for la, gamma, margin in ((5.0, 0.5, 0.2), (50.0, 0.01, 0.0), (1.0, 2.0, -0.1)):
        got = float(soft_triple_loss(labels, embeddings, centers, K, la, gamma, margin))
        np.testing.assert_allclose(got, reference(labels, embeddings, centers, K, la, gamma, margin), rtol=1e-5)
    # As 30 classes of 4 centres (the same matrix read with another K).
    got = float(soft_triple_loss(labels, embeddings, centers, centers_per_class=4))
    np.testing.assert_allclose(got, reference(labels, embeddings, centers, 4), rtol=1e-5)
    checks.check_value_and_gradients(lambda y, e, w: soft_triple_loss(y, e, w, gamma=0.5),
                                     lambda y, e, w: reference(y, e, w, gamma=0.5), labels, embeddings, centers)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_equals_pml(kind):
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    labels, embeddings = checks.batch(kind, seed=3)

    def make():
        module = losses.SoftTripleLoss(num_classes=C, embedding_size=D)
        return module, module.fc  # [D, C·K], PML's view(-1, C, K): column c·K + k is centre k of class c

    checks.check_against_pml(soft_triple_loss, make, labels, embeddings, checks.random_weights((D, C * K), seed=3))


def test_no_nan_at_cos_plus_or_minus_one_and_at_zero():
    centers = checks.random_weights((D, C * K), seed=4)
    labels = np.arange(C, dtype=np.int32)
    for embeddings in (3.0 * centers[:, ::K].T, -3.0 * centers[:, ::K].T, np.zeros((C, D), np.float32)):
        value, gradient = value_and_gradient(lambda x: soft_triple_loss(labels, x, centers), embeddings)
        _, center_gradient = value_and_gradient(lambda w, e=embeddings: soft_triple_loss(labels, e, w), centers)
        assert np.isfinite(value) and np.all(np.isfinite(gradient)) and np.all(np.isfinite(center_gradient))
        np.testing.assert_allclose(value, reference(labels, embeddings, centers), rtol=1e-5)


def test_low_precision_inputs():
    labels, embeddings = checks.batch("random", seed=5)
    checks.check_low_precision(soft_triple_loss, labels, embeddings, checks.random_weights((D, C * K), seed=5))


def test_errors_name_the_argument():
    labels, embeddings = checks.batch("random", seed=6)
    centers = checks.random_weights((D, C * K))
    checks.check_labels_outside(soft_triple_loss, embeddings, centers, C)
    with pytest.raises(ValueError, match=r"centers must be a \[D, C·K\] matrix with K = 10 columns per class"):
        soft_triple_loss(labels, embeddings, centers[:, :-3])
    with pytest.raises(ValueError, match=r"centers must be a \[D, C·K\] matrix with D = 8"):
        soft_triple_loss(labels, embeddings, centers.T)
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="centers_per_class must be an integer >= 1"):
            soft_triple_loss(labels, embeddings, centers, centers_per_class=bad)
        with pytest.raises(ValueError, match="centers_per_class must be an integer >= 1"):
            SoftTripleLoss(C, D, centers_per_class=bad)
    for name in ("la", "gamma"):
        for bad in (0.0, -1.0):
            with pytest.raises(ValueError, match=f"{name} must be > 0"):
                soft_triple_loss(labels, embeddings, centers, **{name: bad})
            with pytest.raises(ValueError, match=f"{name} must be > 0"):
                SoftTripleLoss(C, D, **{name: bad})
    with pytest.raises(ValueError, match="margin must be a finite number"):
        SoftTripleLoss(C, D, margin=float("inf"))
    with pytest.raises(ValueError, match="not with references"):  # PML's ref_emb does not apply either
        SoftTripleLoss(C, D).compute(labels, embeddings, ref_labels=labels, ref_embeddings=embeddings)


def test_class_weights_serialization_and_registry():
    assert LOSSES["soft_triple"].component is SoftTripleLoss
    assert [option.key for option in LOSSES["soft_triple"].options] == ["num_labels"]
    options = {"centers_per_class": 4, "la": 10.0, "gamma": 0.2, "margin": 0.05}
    loss = get_loss("soft_triple", num_classes=C, embedding_size=D, **options)
    checks.check_serialization(loss, {"num_classes": C, "embedding_size": D, **options})
    assert tuple(loss.weights_layer.centers.shape) == (D, C * 4)
    labels, embeddings = checks.batch("random", seed=7)
    got, _ = loss.compute(labels, embeddings)
    expected = reference(labels, embeddings, keras.ops.convert_to_numpy(loss.weights_layer.centers), 4, 10.0, 0.2,
                         0.05)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, rtol=1e-5)
    layer = keras.layers.deserialize(keras.layers.serialize(loss.weights_layer))
    assert isinstance(layer, SoftTripleCenters) and layer.get_config() == loss.weights_layer.get_config()
    # PML's kaiming_uniform_(a=sqrt(5)) of its [D, C·K] fc: uniform in ±1/sqrt(C·K).
    bound = 1.0 / math.sqrt(16 * 4)
    checks.check_seeded_initializer(lambda: SoftTripleCenters(16, 64, 4), "centers", mean=0.0,
                                    std=bound / math.sqrt(3.0), uniform_bound=bound)


def test_doc_snippets_run():
    checks.run_doc_snippets("soft_triple")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs through tf.data and the "
                    "TensorFlow runner (the other backends are checked on the loss itself)")
def test_digits_trains_from_params(tmp_path):
    checks.check_convergence("soft_triple", tmp_path)
