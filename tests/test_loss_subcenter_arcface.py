"""Sub-center ArcFace (model/losses/subcenter_arcface.py) against a numpy reference and PML 2.x."""

import math

import keras
import numpy as np
import pytest

from model.losses import SubCenterArcFaceLoss, SubCenterArcFaceWeights, arcface_loss, subcenter_arcface_loss
from tests import class_loss_checks as checks

C, D, K = checks.NUM_CLASSES, checks.DIM, 3


def reference(labels, embeddings, weights, margin=28.6, scale=64.0, sub_centers=K):
    """ArcFace on cos θ_ic = max_k cos(x_i, w_{c·K+k}) (column c·K + k: sub-centre k of class c)."""
    m = math.radians(margin)
    num_classes = weights.shape[1] // sub_centers

    def logits(cosines, label):
        cosine = cosines.reshape(num_classes, sub_centers).max(axis=1)  # row c: class c's sub-centres
        theta = math.acos(min(max(cosine[label], -1.0), 1.0))
        logits = scale * cosine
        logits[label] = scale * (math.cos(theta + m) if theta <= math.pi - m else cosine[label] - m * math.sin(m))
        return logits

    return checks.softmax_reference(labels, embeddings, weights, logits)


def loss_k(labels, embeddings, weights):
    return subcenter_arcface_loss(labels, embeddings, weights, sub_centers=K)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_value_and_gradients_match_the_reference(kind):
    checks.check_kind(kind, loss_k, reference, (D, C * K))


def test_layout_options_and_one_sub_center_is_arcface():
    settings = [{"margin": margin, "scale": scale, "sub_centers": 2} for margin, scale in ((10.0, 8.0), (100.0, 30.0))]
    labels, embeddings, _ = checks.check_options(subcenter_arcface_loss, reference, (D, C * 2), settings)
    # K = 1 is ArcFace on the same weights.
    weights = checks.random_weights((D, C), seed=2)
    np.testing.assert_allclose(float(subcenter_arcface_loss(labels, embeddings, weights, sub_centers=1)),
                               float(arcface_loss(labels, embeddings, weights)), rtol=1e-6)
    # Sub-centre k of class c is column c·K + k: with every column orthogonal to the embedding but column
    # 1·K + 2 (sub-centre 2 of class 1) along it, class 1's cosine is 1 and every other class's 0.
    weights = checks.random_weights((D, C * K), seed=3)
    weights[0] = 0.0
    weights[:, 1 * K + 2] = np.eye(D)[0]
    embedding = 2.0 * np.eye(D, dtype=np.float32)[:1]
    target = 64.0 * math.cos(math.radians(28.6))
    expected = math.log(math.exp(target) + C - 1) - target
    got = float(subcenter_arcface_loss(np.array([1]), embedding, weights, sub_centers=K))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_equals_pml(kind):
    # PML's W is [D, C·K], read as view(-1, C, K): column c·K + k is sub-centre k of class c, as here.
    checks.check_equals_pml(loss_k, kind, "SubCenterArcFaceLoss", "W", (D, C * K), sub_centers=K)


def test_no_nan_at_cos_plus_or_minus_one_and_at_zero():
    weights = checks.random_weights((D, C * K), seed=4)
    # At cos θ = 1, one float32 rounding of cos θ moves sqrt(1 - cos² θ) by ~3e-4: s·sin m·3e-4 ~ 0.01.
    checks.check_no_nan_at_cos_plus_or_minus_one_and_at_zero(loss_k, reference, weights, weights[:, ::K].T, atol=0.05)


def test_low_precision_inputs():
    checks.check_low_precision(loss_k, (D, C * K))


def test_errors_name_the_argument():
    labels, embeddings, weights = checks.check_shared_errors(loss_k, SubCenterArcFaceLoss, (D, C * K))
    with pytest.raises(ValueError, match=r"weights must be a \[D, C·K\] matrix with K = 3 columns per class"):
        loss_k(labels, embeddings, weights[:, :-1])
    with pytest.raises(ValueError, match=r"weights must be a \[D, C·K\] matrix with D = 8"):
        loss_k(labels, embeddings, weights.T)
    for bad in (0, -2, 1.5):
        with pytest.raises(ValueError, match="sub_centers must be an integer >= 1"):
            subcenter_arcface_loss(labels, embeddings, weights, sub_centers=bad)
        with pytest.raises(ValueError, match="sub_centers must be an integer >= 1"):
            SubCenterArcFaceLoss(C, D, sub_centers=bad)
    with pytest.raises(ValueError, match="scale must be > 0"):
        SubCenterArcFaceLoss(C, D, scale=0)
    with pytest.raises(ValueError, match="margin must be < 180"):
        subcenter_arcface_loss(labels, embeddings, weights, margin=200.0, sub_centers=K)


def test_class_weights_serialization_and_registry():
    checks.check_registry_and_serialization("subcenter_arcface", SubCenterArcFaceLoss, SubCenterArcFaceWeights,
                                            "kernel", (D, C * 2), reference,
                                            {"margin": 20.0, "scale": 30.0, "sub_centers": 2})
    checks.check_seeded_initializer(lambda: SubCenterArcFaceWeights(16, 64, 4), "kernel", mean=0.0, std=1.0)


def test_doc_snippets_run():
    checks.run_doc_snippets("subcenter_arcface")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs through tf.data and the "
                    "TensorFlow runner (the other backends are checked on the loss itself)")
def test_digits_trains_from_params(tmp_path):
    checks.check_convergence("subcenter_arcface", tmp_path)
