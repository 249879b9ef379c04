"""NT-Xent (model/losses/ntxent.py) against a float64 numpy loop written from the paper's formula and PML's
reduction: values and gradients, in a batch and against references, edge batches, low precision, errors,
serialization, the docs' snippets, PML itself where installed, and a short training run (TensorFlow). The checks
themselves are tests/pair_loss_checks.py's."""

import math
from functools import partial

import keras
import numpy as np
import pytest

from model.losses import NTXentLoss, ntxent_loss
from tests import pair_loss_checks as checks
from tests.class_loss_checks import check_convergence, run_doc_snippets


def reference(labels, embeddings, temperature=0.07, reduction="all", ref_labels=None, ref_embeddings=None,
              remove_diagonal=True, relation=None):
    """loss_ap = -log(exp(S_ap/τ) / (exp(S_ap/τ) + Σ_{n ∈ N(a)} exp(S_an/τ))) for each positive pair (a, p), PML's
    MeanReducer ("all") or AvgNonZeroReducer ("nonzero") over the positive pairs; 0 unless a positive and a
    negative pair exist and more than one of either (PML's GenericPairLoss)."""
    labels, x, r, positive, negative = checks.reference_pairs(labels, embeddings, ref_labels, ref_embeddings,
                                                              remove_diagonal, relation)
    if checks.too_few_pairs(positive, negative):
        return 0.0
    pair_losses = []
    for a in range(len(labels)):
        similar = [float(x[a] @ r[j]) / temperature for j in range(len(r))]
        negatives = [similar[n] for n in range(len(r)) if negative[a, n]]
        for p in range(len(r)):
            if positive[a, p]:
                pair_losses.append(np.logaddexp.reduce([similar[p], *negatives]) - similar[p])
    return checks.reduced(pair_losses, reduction)


@pytest.mark.parametrize("reduction", ["all", "nonzero"])
@pytest.mark.parametrize("seed,size,num_classes", checks.RANDOM_BATCHES)
def test_matches_the_reference_on_random_batches(seed, size, num_classes, reduction):
    settings = [{"temperature": temperature, "reduction": reduction} for temperature in (0.07, 0.5)]
    checks.check_random_batch(ntxent_loss, reference, seed, size, num_classes, settings)


@pytest.mark.parametrize("name", checks.EDGE_LABELS)
def test_edge_batches_match_and_give_zero_not_nan(name):
    checks.check_edge_batch(ntxent_loss, reference, name)


@pytest.mark.parametrize("case", checks.GRADIENT_CASES)
def test_gradients_match_finite_differences(case):
    checks.check_gradients(case, partial(ntxent_loss, temperature=0.5), partial(reference, temperature=0.5))


@pytest.mark.parametrize("remove_diagonal", [True, False])
def test_references_and_relations_match_the_reference(remove_diagonal):
    checks.check_references_and_relations(ntxent_loss, reference, remove_diagonal)


def test_duplicates_zero_vectors_low_precision_and_nan():
    checks.check_duplicates_zero_vectors_low_precision_and_nan(ntxent_loss)


def test_bad_arguments_name_the_argument():
    checks.check_bad_option(ntxent_loss, NTXentLoss, "temperature", (0, -0.1, math.inf, math.nan, "0.1", True),
                            "temperature must be a finite number > 0")
    checks.check_shared_errors(ntxent_loss)
    labels, embeddings = checks.batch(0, 6, 2)
    with pytest.raises(ValueError, match="ref_labels was given without ref_embeddings"):
        ntxent_loss(labels, embeddings, ref_labels=labels)


def test_class_serializes_and_passes_its_options():
    checks.check_serialization("ntxent", NTXentLoss, reference, {"temperature": 0.3, "reduction": "nonzero"},
                               {"temperature": 0.07, "term_reduction": "all"})


def test_params_build_it_from_loss_options():
    checks.check_params("ntxent", NTXentLoss, {"temperature": 0.2}, {"temperature": 0})


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the snippets run as users run them, under the default backend (fit is slow to compile "
                           "under JAX); the loss itself is tested under every backend")
def test_the_docs_snippets_run():
    run_doc_snippets("ntxent")


@pytest.mark.parametrize("size,num_classes,with_references", [(12, 4, False), (9, 3, True), (6, 6, False)])
def test_equals_pytorch_metric_learning(size, num_classes, with_references):
    """Values and gradients equal PML 2.x's NTXentLoss (float64) to 1e-5, in a batch and with ref_emb."""
    checks.check_equals_pml(ntxent_loss, "NTXentLoss", {"temperature": 0.07}, size, num_classes,
                            with_references=with_references)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs on the TensorFlow backend")
def test_trains_the_digits_experiment(tmp_path):
    check_convergence("ntxent", tmp_path)
