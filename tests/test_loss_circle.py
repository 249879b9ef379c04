"""Circle loss (model/losses/circle.py) against a float64 numpy loop written from the paper's formula and PML's
reduction: values and gradients, in a batch and against references, edge batches, low precision, errors,
serialization, the docs' snippets, PML itself where installed, and a short training run (TensorFlow). The checks
themselves are tests/pair_loss_checks.py's."""

import math

import keras
import numpy as np
import pytest

from model.losses import CircleLoss, circle_loss
from tests import pair_loss_checks as checks
from tests.class_loss_checks import check_convergence, run_doc_snippets


def reference(labels, embeddings, margin=0.4, gamma=80.0, reduction="nonzero", ref_labels=None, ref_embeddings=None,
              remove_diagonal=True, relation=None, weights_at=None):
    """loss_a = softplus(log Σ_p exp(-γ α_p (S_ap - (1 - m))) + log Σ_n exp(γ α_n (S_an - m))),
    α_p = relu(1 + m - S_ap), α_n = relu(S_an + m); 0 for an anchor without a positive or a negative; PML's
    AvgNonZeroReducer ("nonzero") or MeanReducer ("all") over the anchors; 0 when the batch holds at most one
    positive and one negative pair. The weights α are constants of the gradient: `weights_at` = (embeddings,
    ref_embeddings) where they are taken (default: the point itself), so that finite differences give the
    gradient the paper and PML use."""
    labels = np.reshape(labels, -1)

    def similarities(anchors, references):
        x = checks.unit(anchors)
        r = x if references is None else checks.unit(references)
        return np.array([[float(x[a] @ r[j]) for j in range(len(r))] for a in range(len(x))]).reshape(len(x), len(r))

    similar = similarities(embeddings, ref_embeddings)
    held = similar if weights_at is None else similarities(*weights_at)
    positive, negative = checks.pairs(labels, None if ref_labels is None else np.reshape(ref_labels, -1),
                                      remove_diagonal, relation)
    if positive.sum() <= 1 and negative.sum() <= 1:
        return 0.0
    anchor_losses = []
    for a in range(len(labels)):
        if not positive[a].any() or not negative[a].any():
            anchor_losses.append(0.0)
            continue
        log_positive = np.logaddexp.reduce([-gamma * max(0.0, 1 + margin - held[a, p]) * (similar[a, p] - (1 - margin))
                                            for p in range(similar.shape[1]) if positive[a, p]])
        log_negative = np.logaddexp.reduce([gamma * max(0.0, held[a, n] + margin) * (similar[a, n] - margin)
                                            for n in range(similar.shape[1]) if negative[a, n]])
        anchor_losses.append(np.logaddexp(0.0, log_positive + log_negative))
    return checks.reduced(anchor_losses, reduction)


@pytest.mark.parametrize("reduction", ["nonzero", "all"])
@pytest.mark.parametrize("seed,size,num_classes", checks.RANDOM_BATCHES)
def test_matches_the_reference_on_random_batches(seed, size, num_classes, reduction):
    settings = ((0.4, 80.0), (0.25, 256.0), (0.1, 1.0)) if reduction == "nonzero" else ((0.4, 80.0),)
    settings = [{"margin": margin, "gamma": gamma, "reduction": reduction} for margin, gamma in settings]
    checks.check_random_batch(circle_loss, reference, seed, size, num_classes, settings)


@pytest.mark.parametrize("name", checks.EDGE_LABELS)
def test_edge_batches_match_and_give_zero_not_nan(name):
    checks.check_edge_batch(circle_loss, reference, name)


@pytest.mark.parametrize("case", checks.GRADIENT_CASES)
def test_gradients_match_finite_differences(case):
    checks.check_gradients(case, circle_loss, reference, atol=1e-4, held_weights=True)


@pytest.mark.parametrize("remove_diagonal", [True, False])
def test_references_and_relations_match_the_reference(remove_diagonal):
    checks.check_references_and_relations(circle_loss, reference, remove_diagonal)


def test_duplicates_zero_vectors_low_precision_and_nan():
    checks.check_duplicates_zero_vectors_low_precision_and_nan(circle_loss)


def test_bad_arguments_name_the_argument():
    checks.check_bad_option(circle_loss, CircleLoss, "gamma", (0, -1.0, math.inf, math.nan, "80", True),
                            "gamma must be a finite number")
    checks.check_bad_option(circle_loss, None, "margin", (math.inf, math.nan, "0.4", None),
                            "margin must be a finite number")
    checks.check_shared_errors(circle_loss)
    labels, embeddings = checks.batch(0, 6, 2)
    with pytest.raises(ValueError, match="relation must be a"):
        circle_loss(labels, embeddings, relation=np.ones((6, 5), int))


def test_class_serializes_and_passes_its_options():
    checks.check_serialization("circle", CircleLoss, reference, {"margin": 0.25, "gamma": 128, "reduction": "all"},
                               {"margin": 0.4, "gamma": 80.0, "term_reduction": "nonzero"})


def test_params_build_it_from_loss_options():
    from model.app import adapter
    from model.params import Params

    checks.check_params("circle", CircleLoss, {"margin": 0.25, "gamma": 256}, {"gamma": 0}, margin=0.9)
    # The shared "margin" key (the triplet losses') does not reach it: its own default stays.
    assert adapter.loss(Params.from_dict({"loss": "circle", "margin": 0.9}), 16).margin == 0.4


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the snippets run as users run them, under the default backend (fit is slow to compile "
                           "under JAX); the loss itself is tested under every backend")
def test_the_docs_snippets_run():
    run_doc_snippets("circle")


@pytest.mark.parametrize("size,num_classes,with_references", [(12, 4, False), (9, 3, True), (6, 6, False)])
def test_equals_pytorch_metric_learning(size, num_classes, with_references):
    """Values and gradients equal PML 2.x's CircleLoss (float64) to 1e-5, in a batch and with ref_emb."""
    checks.check_equals_pml(circle_loss, "CircleLoss", {"m": 0.4, "gamma": 80}, size, num_classes,
                            with_references=with_references, grad_atol=1e-5, grad_atol_scaled=True)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs on the TensorFlow backend")
def test_trains_the_digits_experiment(tmp_path):
    check_convergence("circle", tmp_path)
