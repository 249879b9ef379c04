"""ArcFace (model/losses/arcface.py) against a numpy reference of the paper's formula, PML 2.x, and in training."""

import math

import keras
import pytest

from model.losses import ArcFaceLoss, ArcFaceWeights, arcface_loss
from tests import class_loss_checks as checks

C, D = checks.NUM_CLASSES, checks.DIM


def reference(labels, embeddings, weights, margin=28.6, scale=64.0):
    """mean_i -log softmax(s·cos θ_i with the true class's cos(θ + m), or cos θ - m sin m past π - m)[y_i]."""
    m = math.radians(margin)

    def logits(cosine, label):
        theta = math.acos(min(max(cosine[label], -1.0), 1.0))
        logits = scale * cosine
        logits[label] = scale * (math.cos(theta + m) if theta <= math.pi - m else cosine[label] - m * math.sin(m))
        return logits

    return checks.softmax_reference(labels, embeddings, weights, logits)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_value_and_gradients_match_the_reference(kind):
    checks.check_kind(kind, arcface_loss, reference, (D, C))


def test_options_and_the_fallback_past_pi_minus_m():
    # A margin of 100 degrees puts many true classes past π - m (the decreasing fallback).
    settings = [{"margin": margin, "scale": scale} for margin, scale in ((10.0, 8.0), (100.0, 30.0), (0.0, 1.0))]
    labels, embeddings, weights = checks.check_options(arcface_loss, reference, (D, C), settings)
    checks.check_value_and_gradients(lambda y, e, w: arcface_loss(y, e, w, margin=100.0, scale=30.0),
                                     lambda y, e, w: reference(y, e, w, 100.0, 30.0), labels, embeddings, weights)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_equals_pml(kind):
    checks.check_equals_pml(arcface_loss, kind, "ArcFaceLoss", "W", (D, C))


def test_no_nan_at_cos_plus_or_minus_one_and_at_zero():
    weights = checks.random_weights((D, C), seed=4)
    # At cos θ = 1, one float32 rounding of cos θ moves sqrt(1 - cos² θ) by ~3e-4: s·sin m·3e-4 ~ 0.01.
    checks.check_no_nan_at_cos_plus_or_minus_one_and_at_zero(arcface_loss, reference, weights, weights.T, atol=0.05)


def test_low_precision_inputs():
    checks.check_low_precision(arcface_loss, (D, C))


def test_errors_name_the_argument():
    labels, embeddings, weights = checks.check_shared_errors(arcface_loss, ArcFaceLoss, (D, C))
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


def test_class_weights_serialization_and_registry():
    checks.check_registry_and_serialization("arcface", ArcFaceLoss, ArcFaceWeights, "kernel", (D, C), reference,
                                            {"margin": 20.0, "scale": 30.0})
    # PML's normal_ initialisation, seeded by Keras's global seed.
    checks.check_seeded_initializer(lambda: ArcFaceWeights(64, 64), "kernel", mean=0.0, std=1.0)


def test_doc_snippets_run():
    checks.run_doc_snippets("arcface")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs through tf.data and the "
                    "TensorFlow runner (the other backends are checked on the loss itself)")
def test_digits_experiment_trains_and_resumes_with_its_weights(tmp_path, monkeypatch):
    checks.check_experiment("digits_arcface", tmp_path, monkeypatch, "kernel", shape=(32, 10))
