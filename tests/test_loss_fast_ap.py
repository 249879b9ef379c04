"""FastAP (model/losses/fast_ap.py) against a float64 numpy loop written from the paper's histogram formula and
PML's reduction: values and gradients, in a batch and with a relation, edge batches, references refused (as PML
refuses ref_emb), low precision, errors, serialization, the docs' snippets, PML itself where installed, and a
short training run (TensorFlow). The checks it shares with the other pair losses are tests/pair_loss_checks.py's."""

import math
from functools import partial

import keras
import numpy as np
import pytest

from model.losses import FastAPLoss, fast_ap_loss
from tests import pair_loss_checks as checks
from tests.backend_helpers import compiled_value_and_gradient
from tests.class_loss_checks import check_convergence, numeric_gradient, run_doc_snippets


def reference(labels, embeddings, num_bins=10, reduction="all", remove_diagonal=True, relation=None):
    """The paper's FastAP from histograms: d = squared euclidean distance of normalised embeddings in [0, 4],
    triangular pulses of width Δ = 4/num_bins at c_k = kΔ; for each anchor with a positive,
    FastAP_a = (1/|P(a)|) Σ_k h⁺_k H⁺_k / H_k (terms with h⁺H⁺ = 0 or H = 0 left out), loss_a = 1 - FastAP_a;
    PML's MeanReducer ("all") or AvgNonZeroReducer ("nonzero") over those anchors; 0 when no term counts."""
    labels, x, _, positive, negative = checks.reference_pairs(labels, embeddings, remove_diagonal=remove_diagonal,
                                                              relation=relation)
    width = 4.0 / num_bins
    anchor_losses, counted = [], False
    for a in range(len(labels)):
        if not positive[a].any():
            continue
        positive_histogram, negative_histogram = np.zeros(num_bins + 1), np.zeros(num_bins + 1)
        for j in range(len(labels)):
            distance = float(np.sum((x[a] - x[j]) ** 2))
            for k in range(num_bins + 1):
                pulse = max(0.0, 1.0 - abs(distance - k * width) / width)
                positive_histogram[k] += pulse * positive[a, j]
                negative_histogram[k] += pulse * negative[a, j]
        cumulative_positive = np.cumsum(positive_histogram)
        cumulative = np.cumsum(positive_histogram + negative_histogram)
        precision = 0.0
        for k in range(num_bins + 1):
            if positive_histogram[k] * cumulative_positive[k] > 0 and cumulative[k] > 0:
                precision += positive_histogram[k] * cumulative_positive[k] / cumulative[k]
                counted = True
        anchor_losses.append(1.0 - precision / positive[a].sum())
    return checks.reduced(anchor_losses, reduction) if counted else 0.0


# The pair losses' edge batches, but six samples of one class (FastAP's own case).
EDGE_LABELS = {**checks.EDGE_LABELS, "one_class": np.zeros(6, int)}


@pytest.mark.parametrize("reduction", ["all", "nonzero"])
@pytest.mark.parametrize("seed,size,num_classes", [(0, 2, 2), (1, 9, 3), (2, 16, 5)])
def test_matches_the_reference_on_random_batches(seed, size, num_classes, reduction):
    settings = [{"num_bins": num_bins, "reduction": reduction} for num_bins in (10, 1, 37)]
    checks.check_random_batch(fast_ap_loss, reference, seed, size, num_classes, settings)


def test_a_nearly_perfect_ranking_keeps_its_small_loss_accurate():
    """1 - FastAP is computed without the float32 cancellation of 1 - Σ...: small losses keep their digits."""
    labels = np.repeat(np.arange(3), 3)
    rng = np.random.default_rng(2)
    embeddings = (np.eye(5)[labels] + 0.3 * rng.normal(size=(9, 5))).astype(np.float32)
    expected = reference(labels, embeddings)
    assert 0 < expected < 0.05
    got = checks.compiled(lambda e: fast_ap_loss(labels, e))(embeddings)
    np.testing.assert_allclose(float(got), expected, rtol=1e-4)


@pytest.mark.parametrize("name", EDGE_LABELS)
def test_edge_batches_match_and_give_zero_not_nan(name):
    # The edge batches but the first have no positive pair or no negative (a perfect ranking): 0.
    checks.check_edge_batch(fast_ap_loss, reference, name, EDGE_LABELS)


@pytest.mark.parametrize("case", ["batch", "relation", "few_bins"])
def test_gradients_match_finite_differences(case):
    rng = np.random.default_rng(5)
    labels, embeddings = np.array([0, 0, 1, 2, 2, 3, 1, 0, 3]), rng.normal(size=(9, 5))
    relation = rng.choice([-1, 0, 1], size=(9, 9)) if case == "relation" else None
    num_bins = 3 if case == "few_bins" else 10
    value, grad = compiled_value_and_gradient(lambda e: fast_ap_loss(labels, e, num_bins, relation=relation),
                                              embeddings)
    expected = numeric_gradient(lambda e: reference(labels, e, num_bins, relation=relation), embeddings)
    assert value > 0 and np.abs(expected).max() > 0
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5)


def test_references_are_refused_and_a_relation_chooses_the_pairs():
    labels, embeddings = checks.batch(8, 9, 4)
    for references in ({"ref_labels": labels, "ref_embeddings": embeddings}, {"ref_labels": labels},
                       {"ref_embeddings": embeddings}):
        with pytest.raises(ValueError, match="takes no references .* FastAPLoss does not support ref_emb either"):
            fast_ap_loss(labels, embeddings, **references)
    with pytest.raises(ValueError, match="takes no references"):
        FastAPLoss().compute(labels, embeddings, ref_labels=labels, ref_embeddings=embeddings)
    relation = np.random.default_rng(3).choice([-1, 0, 1], size=(9, 9))
    # The labels' own relation gives the labels' loss.
    own = np.where(labels[:, None] == labels[None], 1, -1)

    def losses(e):
        chosen = [fast_ap_loss(labels, e, relation=relation, remove_diagonal=flag) for flag in (True, False)]
        own_relation = (fast_ap_loss(labels, e, relation=own), FastAPLoss().compute(labels, e, relation=own)[0])
        return chosen, own_relation, fast_ap_loss(labels, e)

    chosen, (with_own, computed_with_own), plain = checks.compiled(losses)(embeddings)
    for remove_diagonal, got in zip((True, False), chosen, strict=True):
        expected = reference(labels, embeddings, relation=relation, remove_diagonal=remove_diagonal)
        np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(with_own), float(plain), rtol=1e-6)
    np.testing.assert_allclose(float(computed_with_own), float(plain), rtol=1e-6)
    with pytest.raises(ValueError, match="relation must be a"):
        fast_ap_loss(labels, embeddings, relation=np.ones((9, 12), int))


def test_duplicates_zero_vectors_low_precision_and_nan():
    checks.check_duplicates_zero_vectors_low_precision_and_nan(fast_ap_loss, size=9)


def test_bad_arguments_name_the_argument():
    checks.check_bad_option(fast_ap_loss, FastAPLoss, "num_bins", (0, -1, 2.5, math.nan, math.inf, "10", True, None),
                            "num_bins must be an integer >= 1")
    assert FastAPLoss(num_bins=4.0).num_bins == 4  # an integral number, as JSON may give it
    checks.check_shared_errors(fast_ap_loss)


def test_class_serializes_and_passes_its_options():
    checks.check_serialization("fast_ap", FastAPLoss, reference, {"num_bins": 20, "reduction": "nonzero"},
                               {"num_bins": 10, "term_reduction": "all"}, size=9)


def test_params_build_it_and_refuse_a_memory():
    from model.params import Params

    checks.check_params("fast_ap", FastAPLoss, {"num_bins": 16}, {"num_bins": 0})
    with pytest.raises(ValueError, match='loss "fast_ap" ranks each batch and takes no references .* drop "memory"'):
        Params.from_dict({"loss": "fast_ap", "memory": {"size": 64, "warmup_steps": 0}})


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the snippets run as users run them, under the default backend (fit is slow to compile "
                           "under JAX); the loss itself is tested under every backend")
def test_the_docs_snippets_run():
    run_doc_snippets("fast_ap")


@pytest.mark.parametrize("size,num_classes,num_bins", [(9, 3, 10), (16, 4, 5), (16, 2, 10)])
def test_equals_pytorch_metric_learning(size, num_classes, num_bins):
    """Values and gradients equal PML 2.x's FastAPLoss (float64) to 1e-5; PML refuses ref_emb, as this loss does."""
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    value = checks.check_equals_pml(partial(fast_ap_loss, num_bins=num_bins), "FastAPLoss", {"num_bins": num_bins},
                                    size, num_classes, grad_atol=1e-5, grad_atol_scaled=True)
    assert value > 0  # PML's value has a gradient to compare with
    labels, embeddings = checks.batch(size, size, num_classes)
    tensor = torch.tensor(embeddings, dtype=torch.float64)
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        pml.FastAPLoss()(tensor, torch.tensor(labels), None, tensor[:3], torch.tensor(labels[:3]))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs on the TensorFlow backend")
def test_trains_the_digits_experiment(tmp_path):
    check_convergence("fast_ap", tmp_path)
