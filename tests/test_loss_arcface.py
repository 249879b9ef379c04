"""ArcFace (model/losses/arcface.py) against a numpy reference of the paper's formula, PML 2.x, and in training."""

import math

import keras
import numpy as np
import pytest

from model.losses import LOSSES, ArcFaceLoss, ArcFaceWeights, arcface_loss, get_loss
from tests import class_loss_checks as checks
from tests.backend_helpers import value_and_gradient

C, D = checks.NUM_CLASSES, checks.DIM


def reference(labels, embeddings, weights, margin=28.6, scale=64.0):
    """mean_i -log softmax(s·cos θ_i with the true class's cos(θ + m), or cos θ - m sin m past π - m)[y_i]."""
    m = math.radians(margin)
    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)  # a zero row stays 0
    w = weights / np.linalg.norm(weights, axis=0, keepdims=True)
    total = 0.0
    for i, label in enumerate(labels):
        cosine = x[i] @ w
        theta = math.acos(min(max(cosine[label], -1.0), 1.0))
        logits = scale * cosine
        logits[label] = scale * (math.cos(theta + m) if theta <= math.pi - m else cosine[label] - m * math.sin(m))
        top = logits.max()
        total += top + math.log(np.exp(logits - top).sum()) - logits[label]
    return total / len(labels)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_value_and_gradients_match_the_reference(kind):
    labels, embeddings = checks.batch(kind, seed=1)
    checks.check_value_and_gradients(arcface_loss, reference, labels, embeddings, checks.random_weights((D, C)))


def test_options_and_the_fallback_past_pi_minus_m():
    labels, embeddings = checks.batch("random", seed=2)
    weights = checks.random_weights((D, C), seed=2)
    # A margin of 100 degrees puts many true classes past π - m (the decreasing fallback).
    for margin, scale in ((10.0, 8.0), (100.0, 30.0), (0.0, 1.0)):
        got = float(arcface_loss(labels, embeddings, weights, margin=margin, scale=scale))
        np.testing.assert_allclose(got, reference(labels, embeddings, weights, margin, scale), rtol=1e-5)
    checks.check_value_and_gradients(lambda y, e, w: arcface_loss(y, e, w, margin=100.0, scale=30.0),
                                     lambda y, e, w: reference(y, e, w, 100.0, 30.0), labels, embeddings, weights)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_equals_pml(kind):
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    labels, embeddings = checks.batch(kind, seed=3)

    def make():
        module = losses.ArcFaceLoss(num_classes=C, embedding_size=D)
        return module, module.W

    checks.check_against_pml(arcface_loss, make, labels, embeddings, checks.random_weights((D, C), seed=3))


def test_no_nan_at_cos_plus_or_minus_one_and_at_zero():
    weights = checks.random_weights((D, C), seed=4)
    labels = np.arange(C, dtype=np.int32)
    for embeddings in (3.0 * weights.T, -3.0 * weights.T, np.zeros((C, D), np.float32)):
        value, gradient = value_and_gradient(lambda x: arcface_loss(labels, x, weights), embeddings)
        _, weight_gradient = value_and_gradient(lambda w, e=embeddings: arcface_loss(labels, e, w), weights)
        assert np.isfinite(value) and np.all(np.isfinite(gradient)) and np.all(np.isfinite(weight_gradient))
        # At cos θ = 1, one float32 rounding of cos θ moves sqrt(1 - cos² θ) by ~3e-4: s·sin m·3e-4 ~ 0.01.
        np.testing.assert_allclose(value, reference(labels, embeddings, weights), atol=0.05)


def test_low_precision_inputs():
    labels, embeddings = checks.batch("random", seed=5)
    checks.check_low_precision(arcface_loss, labels, embeddings, checks.random_weights((D, C), seed=5))


def test_errors_name_the_argument():
    labels, embeddings = checks.batch("random", seed=6)
    weights = checks.random_weights((D, C))
    checks.check_labels_outside(arcface_loss, embeddings, weights, C)
    with pytest.raises(ValueError, match=r"weights must be a \[D, C\] matrix with D = 8.*transposed"):
        arcface_loss(labels, embeddings, weights.T)
    with pytest.raises(ValueError, match=r"weights must be a \[D, C\] matrix"):
        arcface_loss(labels, embeddings, weights[0])
    with pytest.raises(ValueError, match="scale must be > 0"):
        arcface_loss(labels, embeddings, weights, scale=0.0)
    with pytest.raises(ValueError, match="margin must be < 180"):
        arcface_loss(labels, embeddings, weights, margin=180.0)
    with pytest.raises(ValueError, match="margin must be >= 0"):
        ArcFaceLoss(C, D, margin=-1.0)
    with pytest.raises(ValueError, match="scale must be > 0"):
        ArcFaceLoss(C, D, scale=-64.0)
    loss = ArcFaceLoss(C, D)
    with pytest.raises(ValueError, match="not with references"):  # PML's ref_emb does not apply either
        loss.compute(labels, embeddings, ref_labels=labels, ref_embeddings=embeddings)


def test_class_weights_serialization_and_registry():
    assert LOSSES["arcface"].component is ArcFaceLoss
    assert [option.key for option in LOSSES["arcface"].options] == ["num_labels"]
    loss = get_loss("arcface", num_classes=C, embedding_size=D, margin=20.0, scale=30.0)
    checks.check_serialization(loss, {"num_classes": C, "embedding_size": D, "margin": 20.0, "scale": 30.0})
    assert loss.trained_layers["weights_layer"] is loss.weights_layer
    assert tuple(loss.weights_layer.kernel.shape) == (D, C)
    labels, embeddings = checks.batch("random", seed=7)
    got, _ = loss.compute(labels, embeddings)
    kernel = keras.ops.convert_to_numpy(loss.weights_layer.kernel)
    expected = reference(labels, embeddings, kernel, 20.0, 30.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, rtol=1e-5)
    layer = keras.layers.deserialize(keras.layers.serialize(loss.weights_layer))
    assert isinstance(layer, ArcFaceWeights) and layer.get_config() == loss.weights_layer.get_config()
    # PML's normal_ initialisation, seeded by Keras's global seed.
    checks.check_seeded_initializer(lambda: ArcFaceWeights(64, 64), "kernel", mean=0.0, std=1.0)


def test_doc_snippets_run():
    checks.run_doc_snippets("arcface")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs through tf.data and the "
                    "TensorFlow runner (the other backends are checked on the loss itself)")
def test_digits_experiment_trains_and_resumes_with_its_weights(tmp_path, monkeypatch):
    checks.check_experiment("digits_arcface", tmp_path, monkeypatch, "kernel", shape=(32, 10))
