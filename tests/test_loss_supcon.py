"""SupCon (model/losses/supcon.py) against a float64 numpy loop written from the paper's formula and PML's
reduction: values and gradients, in a batch and against references, edge batches, low precision, errors,
serialization, the docs' snippets, PML itself where installed, and a short training run (TensorFlow). The checks
themselves are tests/pair_loss_checks.py's."""

import math
from functools import partial

import keras
import numpy as np
import pytest

from model.losses import SupConLoss, supcon_loss
from tests import pair_loss_checks as checks
from tests.class_loss_checks import check_convergence, run_doc_snippets


def reference(labels, embeddings, temperature=0.1, reduction="nonzero", ref_labels=None, ref_embeddings=None,
              remove_diagonal=True, relation=None):
    """loss_a = -(1/|P(a)|) Σ_p log(exp(S_ap/τ) / Σ_{k ∈ P(a) ∪ N(a)} exp(S_ak/τ)), PML's AvgNonZeroReducer
    ("nonzero") or MeanReducer ("all") over the anchors; 0 unless a positive and a negative pair exist and more
    than one of either (PML's GenericPairLoss)."""
    labels, x, r, positive, negative = checks.reference_pairs(labels, embeddings, ref_labels, ref_embeddings,
                                                              remove_diagonal, relation)
    if checks.too_few_pairs(positive, negative):
        return 0.0
    anchor_losses = []
    for a in range(len(labels)):
        similar = [float(x[a] @ r[j]) / temperature for j in range(len(r))]
        if not positive[a].any():
            anchor_losses.append(0.0)
            continue
        log_denominator = np.logaddexp.reduce([similar[k] for k in range(len(r)) if positive[a, k] or negative[a, k]])
        log_probabilities = [similar[p] - log_denominator for p in range(len(r)) if positive[a, p]]
        anchor_losses.append(-sum(log_probabilities) / len(log_probabilities))
    return checks.reduced(anchor_losses, reduction)


@pytest.mark.parametrize("reduction", ["nonzero", "all"])
@pytest.mark.parametrize("seed,size,num_classes", checks.RANDOM_BATCHES)
def test_matches_the_reference_on_random_batches(seed, size, num_classes, reduction):
    settings = [{"temperature": temperature, "reduction": reduction} for temperature in (0.1, 0.5)]
    checks.check_random_batch(supcon_loss, reference, seed, size, num_classes, settings)


@pytest.mark.parametrize("name", checks.EDGE_LABELS)
def test_edge_batches_match_and_give_zero_not_nan(name):
    checks.check_edge_batch(supcon_loss, reference, name)


@pytest.mark.parametrize("case", checks.GRADIENT_CASES)
def test_gradients_match_finite_differences(case):
    checks.check_gradients(case, partial(supcon_loss, temperature=0.5), partial(reference, temperature=0.5))


@pytest.mark.parametrize("remove_diagonal", [True, False])
def test_references_and_relations_match_the_reference(remove_diagonal):
    checks.check_references_and_relations(supcon_loss, reference, remove_diagonal)


def test_duplicates_zero_vectors_low_precision_and_nan():
    checks.check_duplicates_zero_vectors_low_precision_and_nan(supcon_loss)


def test_bad_arguments_name_the_argument():
    checks.check_bad_option(supcon_loss, SupConLoss, "temperature", (0, -0.1, math.inf, math.nan, "0.1", True),
                            "temperature must be a finite number > 0")
    checks.check_shared_errors(supcon_loss)
    labels, embeddings = checks.batch(0, 6, 2)
    with pytest.raises(ValueError, match="ref_labels was given without ref_embeddings"):
        supcon_loss(labels, embeddings, ref_labels=labels)


def test_class_serializes_and_passes_its_options():
    checks.check_serialization("supcon", SupConLoss, reference, {"temperature": 0.3, "reduction": "all"},
                               {"temperature": 0.1, "term_reduction": "nonzero"})


def test_params_build_it_from_loss_options():
    checks.check_params("supcon", SupConLoss, {"temperature": 0.2}, {"temperature": 0})


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the snippets run as users run them, under the default backend (fit is slow to compile "
                           "under JAX); the loss itself is tested under every backend")
def test_the_docs_snippets_run():
    run_doc_snippets("supcon")


@pytest.mark.parametrize("size,num_classes,with_references", [(12, 4, False), (9, 3, True), (6, 6, False)])
def test_equals_pytorch_metric_learning(size, num_classes, with_references):
    """Values and gradients equal PML 2.x's SupConLoss (float64) to 1e-5, in a batch and with ref_emb."""
    checks.check_equals_pml(supcon_loss, "SupConLoss", {"temperature": 0.1}, size, num_classes,
                            with_references=with_references)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs on the TensorFlow backend")
def test_trains_the_digits_experiment(tmp_path):
    check_convergence("supcon", tmp_path)
