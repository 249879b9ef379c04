"""Proxy-Anchor (model/losses/proxy_anchor.py) against a numpy reference of the paper's formula, PML 2.x, and in
training (experiments/digits_proxy_anchor, resumed)."""

import math

import keras
import numpy as np
import pytest

from model.losses import LOSSES, AnchorProxies, ProxyAnchorLoss, get_loss, proxy_anchor_loss
from tests import class_loss_checks as checks
from tests.backend_helpers import value_and_gradient

C, D = checks.NUM_CLASSES, checks.DIM


def reference(labels, embeddings, proxies, margin=0.1, alpha=32.0):
    """1/|P+| Σ_{c present} log(1 + Σ_{y_i = c} exp(-α(s_ic - δ))) + 1/C Σ_c log(1 + Σ_{y_i ≠ c} exp(α(s_ic + δ)))."""
    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)  # a zero row stays 0
    p = proxies / np.linalg.norm(proxies, axis=1, keepdims=True)
    labels = np.asarray(labels)
    positive, negative, present = 0.0, 0.0, 0
    for c in range(len(proxies)):
        cosine = x @ p[c]
        members = labels == c
        if members.any():
            present += 1
            positive += np.logaddexp.reduce(np.concatenate([[0.0], -alpha * (cosine[members] - margin)]))
        if (~members).any():
            negative += np.logaddexp.reduce(np.concatenate([[0.0], alpha * (cosine[~members] + margin)]))
    return positive / present + negative / len(proxies)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_value_and_gradients_match_the_reference(kind):
    labels, embeddings = checks.batch(kind, seed=1)
    checks.check_value_and_gradients(proxy_anchor_loss, reference, labels, embeddings, checks.random_weights((C, D)))


def test_options_and_a_batch_of_one_class():
    labels, embeddings = checks.batch("random", seed=2)
    proxies = checks.random_weights((C, D), seed=2)
    for margin, alpha in ((0.0, 1.0), (0.5, 8.0), (-0.1, 64.0)):
        got = float(proxy_anchor_loss(labels, embeddings, proxies, margin=margin, alpha=alpha))
        np.testing.assert_allclose(got, reference(labels, embeddings, proxies, margin, alpha), rtol=1e-5)
    # Every sample of class 3: one proxy with positives (|P+| = 1) and no negatives for it.
    same = np.full_like(labels, 3)
    checks.check_value_and_gradients(proxy_anchor_loss, reference, same, embeddings, proxies)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_equals_pml(kind):
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    labels, embeddings = checks.batch(kind, seed=3)

    def make():
        module = losses.ProxyAnchorLoss(num_classes=C, embedding_size=D)
        return module, module.proxies  # [C, D], the same layout

    checks.check_against_pml(proxy_anchor_loss, make, labels, embeddings, checks.random_weights((C, D), seed=3))


def test_no_nan_at_cos_plus_or_minus_one_and_at_zero():
    proxies = checks.random_weights((C, D), seed=4)
    labels = np.arange(C, dtype=np.int32)
    for embeddings in (3.0 * proxies, -3.0 * proxies, np.zeros((C, D), np.float32)):
        value, gradient = value_and_gradient(lambda x: proxy_anchor_loss(labels, x, proxies), embeddings)
        _, proxy_gradient = value_and_gradient(lambda p, e=embeddings: proxy_anchor_loss(labels, e, p), proxies)
        assert np.isfinite(value) and np.all(np.isfinite(gradient)) and np.all(np.isfinite(proxy_gradient))
        np.testing.assert_allclose(value, reference(labels, embeddings, proxies), rtol=1e-5)


def test_low_precision_inputs():
    labels, embeddings = checks.batch("random", seed=5)
    checks.check_low_precision(proxy_anchor_loss, labels, embeddings, checks.random_weights((C, D), seed=5))


def test_errors_name_the_argument():
    labels, embeddings = checks.batch("random", seed=6)
    proxies = checks.random_weights((C, D))
    checks.check_labels_outside(proxy_anchor_loss, embeddings, proxies, C)
    with pytest.raises(ValueError, match=r"proxies must be a \[C, D\] matrix with D = 8.*transposed"):
        proxy_anchor_loss(labels, embeddings, proxies.T)
    with pytest.raises(ValueError, match=r"proxies must be a \[C, D\] matrix"):
        proxy_anchor_loss(labels, embeddings, proxies[..., None])
    for bad in (0.0, -32.0):
        with pytest.raises(ValueError, match="alpha must be > 0"):
            proxy_anchor_loss(labels, embeddings, proxies, alpha=bad)
        with pytest.raises(ValueError, match="alpha must be > 0"):
            ProxyAnchorLoss(C, D, alpha=bad)
    with pytest.raises(ValueError, match="margin must be a finite number"):
        ProxyAnchorLoss(C, D, margin="0.1")
    with pytest.raises(ValueError, match="not with references"):  # PML's ref_emb does not apply either
        ProxyAnchorLoss(C, D).compute(labels, embeddings, ref_labels=labels, ref_embeddings=embeddings)


def test_class_weights_serialization_and_registry():
    assert LOSSES["proxy_anchor"].component is ProxyAnchorLoss
    assert [option.key for option in LOSSES["proxy_anchor"].options] == ["num_labels"]
    loss = get_loss("proxy_anchor", num_classes=C, embedding_size=D, margin=0.2, alpha=16.0)
    checks.check_serialization(loss, {"num_classes": C, "embedding_size": D, "margin": 0.2, "alpha": 16.0})
    assert tuple(loss.weights_layer.proxies.shape) == (C, D)
    labels, embeddings = checks.batch("random", seed=7)
    got, _ = loss.compute(labels, embeddings)
    expected = reference(labels, embeddings, keras.ops.convert_to_numpy(loss.weights_layer.proxies), 0.2, 16.0)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), expected, rtol=1e-5)
    layer = keras.layers.deserialize(keras.layers.serialize(loss.weights_layer))
    assert isinstance(layer, AnchorProxies) and layer.get_config() == loss.weights_layer.get_config()
    # PML's kaiming_normal_(mode="fan_out") of its [C, D] proxies: N(0, 2 / C).
    checks.check_seeded_initializer(lambda: AnchorProxies(64, 64), "proxies", mean=0.0, std=math.sqrt(2.0 / 64))


def test_doc_snippets_run():
    checks.run_doc_snippets("proxy_anchor")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs through tf.data and the "
                    "TensorFlow runner (the other backends are checked on the loss itself)")
def test_digits_experiment_trains_and_resumes_with_its_proxies(tmp_path, monkeypatch):
    checks.check_experiment("digits_proxy_anchor", tmp_path, monkeypatch, "proxies", shape=(10, 32))
