"""SoftTriple (model/losses/soft_triple.py) against a numpy reference of the paper's formula and PML 2.x."""

import math

import keras
import numpy as np
import pytest

from model.losses import SoftTripleCenters, SoftTripleLoss, soft_triple_loss
from tests import class_loss_checks as checks

C, D, K = checks.NUM_CLASSES, checks.DIM, 10


def reference(labels, embeddings, centers, centers_per_class=K, la=20.0, gamma=0.1, margin=0.01):
    """S_ic = Σ_k softmax_k(s_ick / γ)·s_ick (column c·K + k: centre k of class c);
    mean_i -log softmax(λ·(S_i - δ·onehot(y_i)))[y_i]."""
    num_classes = centers.shape[1] // centers_per_class

    def logits(cosines, label):
        similarity = cosines.reshape(num_classes, centers_per_class)  # row c: class c's centres
        weights = np.exp((similarity - similarity.max(axis=1, keepdims=True)) / gamma)
        weights /= weights.sum(axis=1, keepdims=True)
        logits = la * (weights * similarity).sum(axis=1)
        logits[label] -= la * margin
        return logits

    return checks.softmax_reference(labels, embeddings, centers, logits)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_value_and_gradients_match_the_reference(kind):
    checks.check_kind(kind, soft_triple_loss, reference, (D, C * K))


def test_options():
    settings = [{"centers_per_class": K, "la": la, "gamma": gamma, "margin": margin}
                for la, gamma, margin in ((5.0, 0.5, 0.2), (50.0, 0.01, 0.0), (1.0, 2.0, -0.1))]
    settings.append({"centers_per_class": 4})  # as 30 classes of 4 centres (the same matrix read with another K)
    labels, embeddings, centers = checks.check_options(soft_triple_loss, reference, (D, C * K), settings)
    checks.check_value_and_gradients(lambda y, e, w: soft_triple_loss(y, e, w, gamma=0.5),
                                     lambda y, e, w: reference(y, e, w, gamma=0.5), labels, embeddings, centers)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_equals_pml(kind):
    # PML's fc is [D, C·K], read as view(-1, C, K): column c·K + k is centre k of class c, as here.
    checks.check_equals_pml(soft_triple_loss, kind, "SoftTripleLoss", "fc", (D, C * K))


def test_no_nan_at_cos_plus_or_minus_one_and_at_zero():
    centers = checks.random_weights((D, C * K), seed=4)
    checks.check_no_nan_at_cos_plus_or_minus_one_and_at_zero(soft_triple_loss, reference, centers, centers[:, ::K].T,
                                                              rtol=1e-5)


def test_low_precision_inputs():
    checks.check_low_precision(soft_triple_loss, (D, C * K))


def test_errors_name_the_argument():
    labels, embeddings, centers = checks.check_shared_errors(soft_triple_loss, SoftTripleLoss, (D, C * K))
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


def test_class_weights_serialization_and_registry():
    checks.check_registry_and_serialization("soft_triple", SoftTripleLoss, SoftTripleCenters, "centers", (D, C * 4),
                                            reference, {"centers_per_class": 4, "la": 10.0, "gamma": 0.2,
                                                        "margin": 0.05})
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
