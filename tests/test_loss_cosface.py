"""CosFace (model/losses/cosface.py) against a numpy reference of the paper's formula and PML 2.x."""

import keras
import pytest

from model.losses import CosFaceLoss, CosFaceWeights, cosface_loss
from tests import class_loss_checks as checks

C, D = checks.NUM_CLASSES, checks.DIM


def reference(labels, embeddings, weights, margin=0.35, scale=64.0):
    """mean_i -log softmax(s·(cos θ_i - m·onehot(y_i)))[y_i]."""

    def logits(cosine, label):
        logits = scale * cosine
        logits[label] -= scale * margin
        return logits

    return checks.softmax_reference(labels, embeddings, weights, logits)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_value_and_gradients_match_the_reference(kind):
    checks.check_kind(kind, cosface_loss, reference, (D, C))


def test_options():
    settings = [{"margin": margin, "scale": scale} for margin, scale in ((0.1, 8.0), (0.0, 1.0), (-0.2, 30.0))]
    checks.check_options(cosface_loss, reference, (D, C), settings)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_equals_pml(kind):
    checks.check_equals_pml(cosface_loss, kind, "CosFaceLoss", "W", (D, C))


def test_no_nan_at_cos_plus_or_minus_one_and_at_zero():
    weights = checks.random_weights((D, C), seed=4)
    checks.check_no_nan_at_cos_plus_or_minus_one_and_at_zero(cosface_loss, reference, weights, weights.T, rtol=1e-5)


def test_low_precision_inputs():
    checks.check_low_precision(cosface_loss, (D, C))


def test_errors_name_the_argument():
    labels, embeddings, weights = checks.check_shared_errors(cosface_loss, CosFaceLoss, (D, C))
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


def test_class_weights_serialization_and_registry():
    checks.check_registry_and_serialization("cosface", CosFaceLoss, CosFaceWeights, "kernel", (D, C), reference,
                                            {"margin": 0.2, "scale": 30.0})
    checks.check_seeded_initializer(lambda: CosFaceWeights(64, 64), "kernel", mean=0.0, std=1.0)  # PML's normal_


def test_doc_snippets_run():
    checks.run_doc_snippets("cosface")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs through tf.data and the "
                    "TensorFlow runner (the other backends are checked on the loss itself)")
def test_digits_trains_from_params(tmp_path):
    checks.check_convergence("cosface", tmp_path)
