"""Proxy-Anchor (model/losses/proxy_anchor.py) against a numpy reference of the paper's formula, PML 2.x, and in
training (experiments/digits_proxy_anchor, resumed)."""

import math

import keras
import numpy as np
import pytest

from model.losses import AnchorProxies, ProxyAnchorLoss, proxy_anchor_loss
from tests import class_loss_checks as checks

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
    checks.check_kind(kind, proxy_anchor_loss, reference, (C, D))


def test_options_and_a_batch_of_one_class():
    settings = [{"margin": margin, "alpha": alpha} for margin, alpha in ((0.0, 1.0), (0.5, 8.0), (-0.1, 64.0))]
    labels, embeddings, proxies = checks.check_options(proxy_anchor_loss, reference, (C, D), settings)
    # Every sample of class 3: one proxy with positives (|P+| = 1) and no negatives for it.
    same = np.full_like(labels, 3)
    checks.check_value_and_gradients(proxy_anchor_loss, reference, same, embeddings, proxies)


@pytest.mark.parametrize("kind", checks.KINDS)
def test_equals_pml(kind):
    checks.check_equals_pml(proxy_anchor_loss, kind, "ProxyAnchorLoss", "proxies", (C, D))  # [C, D] as here


def test_no_nan_at_cos_plus_or_minus_one_and_at_zero():
    proxies = checks.random_weights((C, D), seed=4)
    checks.check_no_nan_at_cos_plus_or_minus_one_and_at_zero(proxy_anchor_loss, reference, proxies, proxies,
                                                              rtol=1e-5)


def test_low_precision_inputs():
    checks.check_low_precision(proxy_anchor_loss, (C, D))


def test_errors_name_the_argument():
    labels, embeddings, proxies = checks.check_shared_errors(proxy_anchor_loss, ProxyAnchorLoss, (C, D))
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


def test_class_weights_serialization_and_registry():
    checks.check_registry_and_serialization("proxy_anchor", ProxyAnchorLoss, AnchorProxies, "proxies", (C, D),
                                            reference, {"margin": 0.2, "alpha": 16.0})
    # PML's kaiming_normal_(mode="fan_out") of its [C, D] proxies: N(0, 2 / C).
    checks.check_seeded_initializer(lambda: AnchorProxies(64, 64), "proxies", mean=0.0, std=math.sqrt(2.0 / 64))


def test_doc_snippets_run():
    checks.run_doc_snippets("proxy_anchor")


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs through tf.data and the "
                    "TensorFlow runner (the other backends are checked on the loss itself)")
def test_digits_experiment_trains_and_resumes_with_its_proxies(tmp_path, monkeypatch):
    checks.check_experiment("digits_proxy_anchor", tmp_path, monkeypatch, "proxies", shape=(10, 32))
