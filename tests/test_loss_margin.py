"""The margin-based loss (model/losses/margin.py) against a float64 numpy loop over the triplets written from
the paper's formula and PML's DivisorReducer: values and gradients (embeddings and β), in a batch and against
references, one β or one per class, edge batches, low precision, errors, serialization, a learned β that
trains and is checkpointed and restored, the docs' snippets, PML itself where installed, and a short training
run (TensorFlow). The checks it shares with the other pair losses are tests/pair_loss_checks.py's."""

import json
import math
import os
from functools import partial

import keras
import numpy as np
import pytest
from keras import ops

from model.losses import LearnedBeta, MarginLoss, get_loss, margin_loss
from tests import pair_loss_checks as checks
from tests.backend_helpers import compiled_value_and_gradient
from tests.class_loss_checks import ROOT, numeric_gradient, run_doc_snippets, state_weights, traced


def reference(labels, embeddings, margin=0.2, beta=1.2, nu=0.0, ref_labels=None, ref_embeddings=None,
              remove_diagonal=True, relation=None):
    """Every triplet (a, p, n): pos = relu(d_ap - β_a + margin), neg = relu(β_a - d_an + margin), d euclidean between
    normalised embeddings; Σ (pos + neg) / (#{pos > 0} + #{neg > 0}) (PML's DivisorReducer: 0 when the count is 0);
    0 without triplets. β_a = beta (a number or [1]) or beta[label_a] ([C]); with nu, PML's ν·β regularisation:
    ν·β for one β, Σ_triplets ν·β_a / count for one per class."""
    labels, x, r, positive, negative = checks.reference_pairs(labels, embeddings, ref_labels, ref_embeddings,
                                                              remove_diagonal, relation)
    beta = np.asarray(beta, np.float64).reshape(-1)
    per_class = len(beta) > 1
    total, count, regularisation, triplets = 0.0, 0, 0.0, 0
    for a in range(len(labels)):
        beta_a = beta[labels[a]] if per_class else beta[0]
        for p in range(len(r)):
            for n in range(len(r)):
                if positive[a, p] and negative[a, n]:
                    pos = max(0.0, np.linalg.norm(x[a] - r[p]) - beta_a + margin)
                    neg = max(0.0, beta_a - np.linalg.norm(x[a] - r[n]) + margin)
                    total, count, triplets = total + pos + neg, count + (pos > 0) + (neg > 0), triplets + 1
                    regularisation += nu * beta_a
    if triplets == 0:
        return 0.0
    loss = total / count if count else 0.0
    if nu and not per_class:
        loss += nu * beta[0]
    elif nu and count:
        loss += regularisation / count
    return float(loss)


@pytest.mark.parametrize("seed,size,num_classes", [(0, 2, 2), (1, 9, 3), (2, 16, 5), (3, 30, 8)])
def test_matches_the_reference_on_random_batches(seed, size, num_classes):
    per_class = np.random.default_rng(seed).uniform(0.6, 1.6, size=num_classes).astype(np.float32)
    settings = [{"margin": margin, "beta": beta, "nu": nu} for margin, beta, nu in (
        (0.2, 1.2, 0.0), (0.1, 0.8, 0.0), (0.3, per_class, 0.0), (0.2, np.float32([1.1]), 0.5), (0.2, per_class, 0.5))]
    checks.check_random_batch(margin_loss, reference, seed, size, num_classes, settings)


@pytest.mark.parametrize("name", checks.EDGE_LABELS)
def test_edge_batches_match_and_give_zero_not_nan(name):
    checks.check_edge_batch(margin_loss, reference, name)


# Spread out so that no hinge sits at its kink: finite differences need a smooth neighbourhood.
GRADIENT_LABELS = np.array([0, 0, 1, 2, 2, 3, 1, 0])
GRADIENT_BETAS = np.float32([0.9, 1.2, 1.0, 1.3])


@pytest.mark.parametrize("case", checks.GRADIENT_CASES)
def test_gradients_match_finite_differences(case):
    checks.check_gradients(case, partial(margin_loss, margin=0.3, beta=GRADIENT_BETAS),
                           partial(reference, margin=0.3, beta=GRADIENT_BETAS), labels=GRADIENT_LABELS)


@pytest.mark.parametrize("nu", [0.0, 0.4])
@pytest.mark.parametrize("betas", [np.float32([1.1]), GRADIENT_BETAS], ids=["one", "per_class"])
def test_gradient_of_beta_matches_finite_differences(betas, nu):
    labels, embeddings = GRADIENT_LABELS, np.random.default_rng(6).normal(size=(8, 3)).astype(np.float32)
    value, grad = compiled_value_and_gradient(lambda b: margin_loss(labels, embeddings, 0.3, b, nu=nu), betas)
    expected = numeric_gradient(lambda b: reference(labels, embeddings, 0.3, b, nu), betas)
    np.testing.assert_allclose(value, reference(labels, embeddings, 0.3, betas, nu), rtol=1e-5)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("remove_diagonal", [True, False])
def test_references_and_relations_match_the_reference(remove_diagonal):
    checks.check_references_and_relations(margin_loss, reference, remove_diagonal)


def test_duplicates_zero_vectors_low_precision_and_nan():
    checks.check_duplicates_zero_vectors_low_precision_and_nan(
        margin_loss, low_precision_options=lambda dtype: {"beta": ops.cast(np.float32([1.0, 1.2, 1.4]), dtype)})


def test_bad_arguments_name_the_argument():
    for name, values in (("margin", (-0.1, math.nan)), ("beta", (math.inf, "1.2")), ("nu", (-1.0, True))):
        checks.check_bad_option(margin_loss, MarginLoss, name, values, f"{name} must be a finite number")
    labels, embeddings = checks.batch(0, 6, 2)
    with pytest.raises(ValueError, match=r"beta must be a number, a \[1\] tensor .* got shape \(2, 2\)"):
        margin_loss(labels, embeddings, beta=np.ones((2, 2), np.float32))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\) .* got label 3"):
        margin_loss(np.array([0, 1, 3, 1, 0, 0]), embeddings, beta=np.float32([1.0, 1.2]))
    with pytest.raises(ValueError, match="labels must lie in"):
        margin_loss(np.array([0, 1, -1, 1, 0, 0]), embeddings, beta=np.float32([1.0, 1.2]))
    for num_classes in (-1, 2.5, "10", True):
        with pytest.raises(ValueError, match="num_classes must be an integer >= 0"):
            MarginLoss(learn_beta=True, num_classes=num_classes)
    with pytest.raises(ValueError, match="learn_beta must be true or false"):
        MarginLoss(learn_beta=1)
    checks.check_shared_errors(margin_loss, reduction=False)


def test_labels_outside_the_classes_give_nan_inside_a_traced_function():
    """Where the labels' values are not known (a traced function), a label without a β makes the loss NaN."""
    labels, embeddings = np.array([0, 1, 3, 1, 0, 0]), checks.batch(0, 6, 2)[1]
    betas = np.float32([1.0, 1.2])
    loss = traced(lambda y, e: margin_loss(y, e, beta=betas))
    if loss is None:
        pytest.skip(f"the {keras.backend.backend()} backend runs eagerly here: the labels are checked (see the "
                    "errors' test)")
    assert np.isnan(float(loss(labels, embeddings)))
    assert np.isnan(float(loss(np.full(6, 5), embeddings)))  # every anchor without a β: NaN, not a count of 0
    np.testing.assert_allclose(float(loss(np.array([0, 1, 1, 1, 0, 0]), embeddings)),
                               reference(np.array([0, 1, 1, 1, 0, 0]), embeddings, beta=betas), rtol=1e-5)


def test_class_serializes_and_passes_its_options():
    loss = get_loss("margin", margin=0.1, beta=1.0, nu=0.2, learn_beta=True, num_classes=4, l2_normalize=True)
    assert isinstance(loss, MarginLoss) and isinstance(loss.trained_layers["weights_layer"], LearnedBeta)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is MarginLoss and restored.get_config() == loss.get_config()
    config = restored.get_config()
    assert (config["margin"], config["beta"], config["nu"], config["learn_beta"], config["num_classes"]) == (
        0.1, 1.0, 0.2, True, 4)
    assert restored.weights_layer.beta.shape == (4,)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored.weights_layer.beta), [1.0] * 4)
    layer = keras.layers.deserialize(keras.layers.serialize(restored.weights_layer))
    assert type(layer) is LearnedBeta and (layer.num_classes, layer.initial) == (4, 1.0)
    # Without learn_beta: no weights, and PML leaves out ν·β; one β for all when num_classes is 0 or None.
    fixed = MarginLoss(nu=0.5, num_classes=4)
    assert fixed.trained_layers == {}
    labels, embeddings = checks.batch(3, 12, 4)
    learned_value, fixed_value = checks.compiled(lambda e: (restored(labels, e), fixed(labels, e)))(embeddings)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(learned_value),
                               reference(labels, embeddings, 0.1, np.float32([1.0] * 4), 0.2), rtol=1e-5)
    np.testing.assert_allclose(float(fixed_value), reference(labels, embeddings), rtol=1e-5)
    for num_classes in (None, 0):
        assert MarginLoss(learn_beta=True, num_classes=num_classes).weights_layer.beta.shape == (1,)
    default = MarginLoss()
    assert (default.margin, default.beta, default.nu, default.learn_beta) == (0.2, 1.2, 0.0, False)


def test_params_pass_num_labels_as_num_classes():
    from model.app import adapter
    from model.params import Params

    params = Params.from_dict({"loss": "margin", "num_labels": 7, "loss_options": {"learn_beta": True, "beta": 1.0}})
    loss = adapter.loss(params, 16)
    assert loss.num_classes == 7 and loss.weights_layer.beta.shape == (7,)
    one = adapter.loss(params.replace(loss_options={"learn_beta": True, "num_classes": 0}), 16)
    assert one.weights_layer.beta.shape == (1,)
    with pytest.raises(ValueError, match="margin"):
        adapter.loss(Params.from_dict({"loss": "margin", "loss_options": {"margin": -1}}), 16)


class WithBeta(keras.Model):
    """A model of one's own that tracks the loss's β (see MarginLoss's docstring)."""

    def __init__(self, network, weights_layer):
        super().__init__()
        self.network, self.weights_layer = network, weights_layer

    def call(self, inputs):
        return self.network(inputs)


def test_a_learned_beta_trains_in_fit():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 10)) * 2
    labels = np.repeat(np.arange(4), 16)
    inputs = (centers[labels] + rng.normal(size=(64, 10))).astype(np.float32)
    loss = MarginLoss(learn_beta=True, num_classes=4)
    model = WithBeta(keras.Sequential([keras.Input((10,)), keras.layers.Dense(8)]), loss.weights_layer)
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss)
    model.fit(inputs, labels, batch_size=64, epochs=3, verbose=0)
    beta = keras.ops.convert_to_numpy(loss.weights_layer.beta)
    assert np.abs(beta - 1.2).min() > 1e-3


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the snippets run as users run them, under the default backend (fit is slow to compile "
                           "under JAX); the loss itself is tested under every backend")
def test_the_docs_snippets_run():
    run_doc_snippets("margin")


@pytest.mark.parametrize("case", ["batch", "references"])
def test_equals_pytorch_metric_learning(case):
    """Values and gradients (embeddings) equal PML 2.x's MarginLoss (float64) to 1e-5."""
    value = checks.check_equals_pml(margin_loss, "MarginLoss", {}, 10, 4, seed=len(case),
                                    with_references=case == "references")
    assert value > 0  # PML's value has a gradient to compare with


def test_equals_pytorch_metric_learning_with_a_learned_beta_per_class():
    """Values and gradients (embeddings and β) equal PML 2.x's MarginLoss(learn_beta=True, num_classes=4) in float64,
    ν·β included, to 1e-5."""
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    seed = len("learned_per_class")
    rng = np.random.default_rng(seed)
    labels, embeddings = checks.batch(seed, 10, 4)
    rng.integers(0, 5, size=7), rng.normal(size=(7, 5))  # the references of the other cases: β as it always was
    tensor = torch.tensor(embeddings, dtype=torch.float64, requires_grad=True)
    peer = pml.MarginLoss(nu=0.3, learn_beta=True, num_classes=4)
    betas = rng.uniform(0.8, 1.4, size=4)
    peer.beta.data = torch.tensor(betas, dtype=torch.float64)
    expected = peer(tensor, torch.tensor(labels))
    expected_grad, expected_beta_grad = (g.numpy() for g in torch.autograd.grad(expected, [tensor, peer.beta]))
    betas = betas.astype(np.float32)
    _, beta_grad = compiled_value_and_gradient(lambda b: margin_loss(labels, embeddings, beta=b, nu=0.3), betas)
    np.testing.assert_allclose(beta_grad, expected_beta_grad, rtol=1e-5, atol=1e-6)
    value, grad = compiled_value_and_gradient(lambda v: margin_loss(labels, v, beta=betas, nu=0.3), embeddings)
    np.testing.assert_allclose(value, float(expected.detach()), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs on the TensorFlow backend")
def test_trains_the_digits_experiment_with_a_learned_beta_that_is_checkpointed_and_restored(tmp_path):
    from model.app.training import train
    from model.params import Params

    with open(os.path.join(ROOT, "experiments", "digits", "params.json")) as handle:
        params = {**json.load(handle), "loss": "margin", "loss_options": {"learn_beta": True}, "num_epochs": 2}
    run = str(tmp_path / "run")

    def saved_beta():
        saved = state_weights(run)
        assert len(saved) == 1, saved  # β is in the training state
        return next(iter(saved.values()))

    rows = train(Params.from_dict(params), run).rows
    assert float(rows[-1]["val_precision_at_1"]) > 0.9
    trained = saved_beta()
    assert trained.shape == (10,) and np.abs(trained - 1.2).min() > 1e-3  # one β per class (num_labels), trained
    # Resumed with a learning rate too small to move it: β is the checkpoint's, not a fresh 1.2.
    rows = train(Params.from_dict({**params, "num_epochs": 3, "learning_rate": 1e-9}), run).rows
    assert len(rows) == 3
    np.testing.assert_allclose(saved_beta(), trained, atol=1e-6)
