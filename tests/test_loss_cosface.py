"""CosFace (model/losses/cosface.py) against a numpy reference of the paper's formula and PML 2.x."""

import keras
import numpy as np
import pytest

from model.losses import LOSSES, CosFaceLoss, CosFaceWeights, cosface_loss, get_loss
from tests import class_loss_checks as checks
from tests.backend_helpers import value_and_gradient

C, D = checks.NUM_CLASSES, checks.DIM


def reference(labels, embeddings, weights, margin=0.35, scale=64.0):
    """mean_i -log softmax(s·(cos θ_i - m·onehot(y_i)))[y_i]."""
    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)  # a zero row stays 0
    w = weights / np.linalg.norm(weights, axis=0, keepdims=True)
    total = 0.0
    for i, label in enumerate(labels):
        logits = scale * (x[i] @ w)
        logits[label] -= scale * margin
        top = logits.max()
        total += top + np.log(np.exp(logits - top).sum()) - logits[label]
    return total / len(labels)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_value_and_gradients_match_the_reference(kind):
    labels, embeddings = checks.batch(kind, seed=1)
    checks.check_value_and_gradients(cosface_loss, reference, labels, embeddings, checks.random_weights((D, C)))


def test_options():
    labels, embeddings = checks.batch("random", seed=2)
    weights = checks.random_weights((D, C), seed=2)
    for margin, scale in ((0.1, 8.0), (0.0, 1.0), (-0.2, 30.0)):
        got = float(cosface_loss(labels, embeddings, weights, margin=margin, scale=scale))
        np.testing.assert_allclose(got, reference(labels, embeddings, weights, margin, scale), rtol=1e-5)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_equals_pml(kind):
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    labels, embeddings = checks.batch(kind, seed=3)

    def make():
        module = losses.CosFaceLoss(num_classes=C, embedding_size=D)
        return module, module.W

    checks.check_against_pml(cosface_loss, make, labels, embeddings, checks.random_weights((D, C), seed=3))


def test_no_nan_at_cos_plus_or_minus_one_and_at_zero():
    weights = checks.random_weights((D, C), seed=4)
    labels = np.arange(C, dtype=np.int32)
    for embeddings in (3.0 * weights.T, -3.0 * weights.T, np.zeros((C, D), np.float32)):
        value, gradient = value_and_gradient(lambda x: cosface_loss(labels, x, weights), embeddings)
        _, weight_gradient = value_and_gradient(lambda w, e=embeddings: cosface_loss(labels, e, w), weights)
        assert np.isfinite(value) and np.all(np.isfinite(gradient)) and np.all(np.isfinite(weight_gradient))
        np.testing.assert_allclose(value, reference(labels, embeddings, weights), rtol=1e-5)


def test_low_precision_inputs():
    labels, embeddings = checks.batch("random", seed=5)
    checks.check_low_precision(cosface_loss, labels, embeddings, checks.random_weights((D, C), seed=5))


def test_errors_name_the_argument():
    labels, embeddings = checks.batch("random", seed=6)
    weights = checks.random_weights((D, C))
    checks.check_labels_outside(cosface_loss, embeddings, weights, C)
    with pytest.raises(ValueError, match=r"weights must be a \[D, C\] matrix with D = 8.*transposed"):
        cosface_loss(labels, embeddings, weights.T)
    with pytest.raises(ValueError, match=r"weights must be a \[D, C\] matrix"):
        cosface_loss(labels, embeddings, weights[None])
    with pytest.raises(ValueError, match="scale must be > 0"):
        cosface_loss(labels, embeddings, weights, scale=0.0)
    with pytest.raises(ValueError, match="margin must be a finite number"):
        CosFaceLoss(C, D, margin=float("nan"))
    with pytest.raises(ValueError, match="scale must be > 0"):
        CosFaceLoss(C, D, scale=-1.0)
    with pytest.raises(ValueError, match="not with references"):  # PML's ref_emb does not apply either
        CosFaceLoss(C, D).compute(labels, embeddings, ref_labels=labels, ref_embeddings=embeddings)


def test_class_weights_serialization_and_registry():
    assert LOSSES["cosface"].component is CosFaceLoss
    assert [option.key for option in LOSSES["cosface"].options] == ["num_labels"]
    loss = get_loss("cosface", num_classes=C, embedding_size=D, margin=0.2, scale=30.0)
    checks.check_serialization(loss, {"num_classes": C, "embedding_size": D, "margin": 0.2, "scale": 30.0})
    assert tuple(loss.weights_layer.kernel.shape) == (D, C)
    labels, embeddings = checks.batch("random", seed=7)
    got, _ = loss.compute(labels, embeddings)
    kernel = keras.ops.convert_to_numpy(loss.weights_layer.kernel)
    expected = reference(labels, embeddings, kernel, 0.2, 30.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, rtol=1e-5)
    layer = keras.layers.deserialize(keras.layers.serialize(loss.weights_layer))
    assert isinstance(layer, CosFaceWeights) and layer.get_config() == loss.weights_layer.get_config()
    checks.check_seeded_initializer(lambda: CosFaceWeights(64, 64), "kernel", mean=0.0, std=1.0)  # PML's normal_


def test_doc_snippets_run():
    checks.run_doc_snippets("cosface")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs through tf.data and the "
                    "TensorFlow runner (the other backends are checked on the loss itself)")
def test_digits_trains_from_params(tmp_path):
    checks.check_convergence("cosface", tmp_path)
