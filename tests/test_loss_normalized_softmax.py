"""Normalized softmax (model/losses/normalized_softmax.py) against a numpy reference and PML 2.x."""

import keras
import pytest

from model.losses import NormalizedSoftmaxLoss, NormalizedSoftmaxWeights, normalized_softmax_loss
from tests import class_loss_checks as checks

C, D = checks.NUM_CLASSES, checks.DIM


def reference(labels, embeddings, weights, temperature=0.05):
    """mean_i -log softmax(cos θ_i / T)[y_i]."""
    return checks.softmax_reference(labels, embeddings, weights, lambda cosine, label: cosine / temperature)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_value_and_gradients_match_the_reference(kind):
    checks.check_kind(kind, normalized_softmax_loss, reference, (D, C))


def test_temperature():
    settings = [{"temperature": temperature} for temperature in (0.01, 0.5, 3.0)]
    checks.check_options(normalized_softmax_loss, reference, (D, C), settings)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_equals_pml(kind):
    checks.check_equals_pml(normalized_softmax_loss, kind, "NormalizedSoftmaxLoss", "W", (D, C))


def test_no_nan_at_cos_plus_or_minus_one_and_at_zero():
    weights = checks.random_weights((D, C), seed=4)
    checks.check_no_nan_at_cos_plus_or_minus_one_and_at_zero(normalized_softmax_loss, reference, weights, weights.T,
                                                              rtol=1e-5)


def test_low_precision_inputs():
    checks.check_low_precision(normalized_softmax_loss, (D, C))


def test_errors_name_the_argument():
    labels, embeddings, weights = checks.check_shared_errors(normalized_softmax_loss, NormalizedSoftmaxLoss, (D, C))
    with pytest.raises(ValueError, match=r"weights must be a \[D, C\] matrix with D = 8.*transposed"):
        normalized_softmax_loss(labels, embeddings, weights.T)
    with pytest.raises(ValueError, match=r"weights must be a \[D, C\] matrix with D = 8"):
        normalized_softmax_loss(labels, embeddings, weights[:4])
    for temperature in (0.0, -0.05):
        with pytest.raises(ValueError, match="temperature must be > 0"):
            normalized_softmax_loss(labels, embeddings, weights, temperature=temperature)
        with pytest.raises(ValueError, match="temperature must be > 0"):
            NormalizedSoftmaxLoss(C, D, temperature=temperature)


def test_class_weights_serialization_and_registry():
    checks.check_registry_and_serialization("normalized_softmax", NormalizedSoftmaxLoss, NormalizedSoftmaxWeights,
                                            "kernel", (D, C), reference, {"temperature": 0.1})
    checks.check_seeded_initializer(lambda: NormalizedSoftmaxWeights(64, 64), "kernel", mean=0.0, std=1.0)


def test_doc_snippets_run():
    checks.run_doc_snippets("normalized_softmax")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs through tf.data and the "
                    "TensorFlow runner (the other backends are checked on the loss itself)")
def test_digits_trains_from_params(tmp_path):
    checks.check_convergence("normalized_softmax", tmp_path)
