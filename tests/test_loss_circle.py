"""Circle loss (model/losses/circle.py) against a float64 numpy loop written from the paper's formula and PML's
reduction: values and gradients, in a batch and against references, edge batches, low precision, errors,
serialization, the docs' snippets, PML itself where installed, and a short training run (TensorFlow)."""

import math
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from model.losses import CircleLoss, circle_loss, get_loss
from tests.backend_helpers import dtype_name, value_and_gradient

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "losses" / "circle.md"


def _compiled(fn):
    """`fn` as one compiled program under JAX, which otherwise compiles each operation anew for every shape (the
    bulk of this file's time there); as it is under the other backends."""
    if keras.backend.backend() != "jax":
        return fn
    import jax

    return jax.jit(fn)


def _value_and_gradient(fn, x):
    return value_and_gradient(_compiled(fn), x)


def _pairs(labels, ref_labels=None, remove_diagonal=True, relation=None):
    """Loops: positive[a][j], negative[a][j] of anchor a and reference j (the batch when ref_labels is None)."""
    ref_labels = labels if ref_labels is None else ref_labels
    positive = np.zeros((len(labels), len(ref_labels)), bool)
    negative = np.zeros_like(positive)
    for a in range(len(labels)):
        for j in range(len(ref_labels)):
            same = relation[a][j] == 1 if relation is not None else labels[a] == ref_labels[j]
            other = relation[a][j] == -1 if relation is not None else labels[a] != ref_labels[j]
            positive[a, j] = same and not (remove_diagonal and a == j)
            negative[a, j] = other
    return positive, negative


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


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
        x = _unit(anchors)
        r = x if references is None else _unit(references)
        return np.array([[float(x[a] @ r[j]) for j in range(len(r))] for a in range(len(x))]).reshape(len(x), len(r))

    similar = similarities(embeddings, ref_embeddings)
    held = similar if weights_at is None else similarities(*weights_at)
    positive, negative = _pairs(labels, None if ref_labels is None else np.reshape(ref_labels, -1), remove_diagonal,
                                relation)
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
    anchor_losses = np.array(anchor_losses)
    if reduction == "nonzero":
        anchor_losses = anchor_losses[anchor_losses > 0]
    return float(anchor_losses.mean()) if len(anchor_losses) else 0.0


def _batch(seed, size, num_classes, dim=5):
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_classes, size=size), rng.normal(size=(size, dim)).astype(np.float32)


EDGE_LABELS = {
    "one_sample_classes": np.array([0, 0, 1, 2, 2, 3]),  # classes 1 and 3 have a single sample
    "no_positive_pair": np.arange(6),
    "one_class": np.zeros(5, int),
    "one_sample": np.array([4]),
    "two_distinct": np.array([0, 1]),
}


@pytest.mark.parametrize("reduction", ["nonzero", "all"])
@pytest.mark.parametrize("seed,size,num_classes", [(0, 2, 2), (1, 9, 3), (2, 16, 5), (3, 40, 8)])
def test_matches_the_reference_on_random_batches(seed, size, num_classes, reduction):
    labels, embeddings = _batch(seed, size, num_classes)
    settings = ((0.4, 80.0), (0.25, 256.0), (0.1, 1.0)) if reduction == "nonzero" else ((0.4, 80.0),)
    for margin, gamma in settings:
        compiled = _compiled(lambda e, margin=margin, gamma=gamma: circle_loss(labels, e, margin, gamma,
                                                                           reduction=reduction))
        got = float(compiled(embeddings))
        expected = reference(labels, embeddings, margin, gamma, reduction)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", EDGE_LABELS)
def test_edge_batches_match_and_give_zero_not_nan(name):
    labels = EDGE_LABELS[name]
    embeddings = np.random.default_rng(1).normal(size=(len(labels), 3)).astype(np.float32)
    value, grad = _value_and_gradient(lambda e: circle_loss(labels, e), embeddings)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, reference(labels, embeddings), rtol=1e-5, atol=1e-6)
    if name != "one_sample_classes":  # no anchor with a positive and a negative: PML's 0
        assert value == 0.0 and not grad.any()


def _finite_differences(fn, x, eps=1e-6):
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        grad[index] = (fn(x + step) - fn(x - step)) / (2 * eps)
    return grad


@pytest.mark.parametrize("case", ["batch", "references", "memory", "relation"])
def test_gradients_match_finite_differences(case):
    rng = np.random.default_rng(5)
    labels = EDGE_LABELS["one_sample_classes"]
    embeddings = rng.normal(size=(6, 3))
    if case in ("batch", "relation"):
        relation = rng.choice([-1, 0, 1], size=(6, 6)) if case == "relation" else None
        value, grad = _value_and_gradient(lambda e: circle_loss(labels, e, relation=relation), embeddings)
        expected = _finite_differences(
            lambda e: reference(labels, e, relation=relation, weights_at=(embeddings, None)), embeddings)
    else:  # the gradient reaches the anchors and the references
        if case == "references":
            ref_labels, references, remove_diagonal = np.array([0, 1, 3, 5]), rng.normal(size=(4, 3)), False
        else:  # a cross-batch memory: the batch first, then older embeddings
            ref_labels = np.concatenate([labels, [0, 3, 5]])
            references, remove_diagonal = np.concatenate([embeddings, rng.normal(size=(3, 3))]), True
        both = np.concatenate([embeddings, references])

        def library(x):
            return circle_loss(labels, x[:6], ref_labels=ref_labels, ref_embeddings=x[6:],
                               remove_diagonal=remove_diagonal)

        value, grad = _value_and_gradient(library, both)
        expected = _finite_differences(
            lambda x: reference(labels, x[:6], ref_labels=ref_labels, ref_embeddings=x[6:],
                                remove_diagonal=remove_diagonal, weights_at=(both[:6], both[6:])), both)
    assert value > 0
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("remove_diagonal", [True, False])
def test_references_and_relations_match_the_reference(remove_diagonal):
    rng = np.random.default_rng(7)
    labels, embeddings = _batch(8, 10, 4)
    ref_labels = rng.integers(0, 6, size=13)  # classes the batch lacks, too
    references = rng.normal(size=(13, 5)).astype(np.float32)
    relation = rng.choice([-1, 0, 1], size=(10, 13))
    for rel in (None, relation):
        compiled = _compiled(lambda e, rel=rel: circle_loss(labels, e, ref_labels=ref_labels, ref_embeddings=references,
                                                       remove_diagonal=remove_diagonal, relation=rel))
        got = float(compiled(embeddings))
        expected = reference(labels, embeddings, ref_labels=ref_labels, ref_embeddings=references,
                             remove_diagonal=remove_diagonal, relation=rel)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The batch as its own references, self pairs removed: exactly the in-batch loss.
    np.testing.assert_allclose(float(circle_loss(labels, embeddings, ref_labels=labels, ref_embeddings=embeddings)),
                               float(circle_loss(labels, embeddings)), rtol=1e-6)
    # No references at all (R = 0): no pair, 0.
    empty = circle_loss(labels, embeddings, ref_labels=np.zeros(0, int), ref_embeddings=np.zeros((0, 5), np.float32))
    assert float(empty) == 0.0


def test_duplicates_zero_vectors_low_precision_and_nan():
    labels, embeddings = _batch(4, 10, 3)
    embeddings[1] = embeddings[0]  # zero distance
    embeddings[2] = 0.0  # a zero embedding
    value, grad = _value_and_gradient(lambda e: circle_loss(labels.reshape(-1, 1).astype(np.int64), e), embeddings)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    for dtype in ("float16", "bfloat16"):
        low = ops.cast(embeddings, dtype)
        result = circle_loss(labels, low)
        assert dtype_name(result) == "float32"
        np.testing.assert_allclose(float(result), float(circle_loss(labels, ops.cast(low, "float32"))), rtol=1e-6)
    embeddings[3, 0] = np.nan
    assert np.isnan(float(circle_loss(labels, embeddings)))


def test_bad_arguments_name_the_argument():
    labels, embeddings = _batch(0, 6, 2)
    for gamma in (0, -1.0, math.inf, math.nan, "80", True):
        with pytest.raises(ValueError, match="gamma must be a finite number"):
            circle_loss(labels, embeddings, gamma=gamma)
        with pytest.raises(ValueError, match="gamma"):
            CircleLoss(gamma=gamma)
    for margin in (math.inf, math.nan, "0.4", None):
        with pytest.raises(ValueError, match="margin must be a finite number"):
            circle_loss(labels, embeddings, margin=margin)
    with pytest.raises(ValueError, match="reduction must be one of"):
        circle_loss(labels, embeddings, reduction="mean")
    with pytest.raises(ValueError, match="labels has 5 labels but embeddings has 6 rows"):
        circle_loss(labels[:5], embeddings)
    with pytest.raises(ValueError, match="relation must be a"):
        circle_loss(labels, embeddings, relation=np.ones((6, 5), int))


def test_class_serializes_and_passes_its_options():
    loss = get_loss("circle", margin=0.25, gamma=128, reduction="all", l2_normalize=True)
    assert isinstance(loss, CircleLoss)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is CircleLoss and restored.get_config() == loss.get_config()
    config = restored.get_config()
    assert (config["margin"], config["gamma"], config["reduction"]) == (0.25, 128.0, "all")
    labels, embeddings = _batch(3, 12, 4)
    np.testing.assert_allclose(float(restored(labels, embeddings)),
                               reference(labels, embeddings, 0.25, 128.0, "all"), rtol=1e-5)
    default = CircleLoss()
    assert (default.margin, default.gamma, default.term_reduction) == (0.4, 80.0, "nonzero")


def test_params_build_it_from_loss_options():
    from model.app import adapter
    from model.params import Params

    params = Params.from_dict({"loss": "circle", "margin": 0.9, "loss_options": {"margin": 0.25, "gamma": 256}})
    loss = adapter.loss(params, 16)
    assert isinstance(loss, CircleLoss) and (loss.margin, loss.gamma) == (0.25, 256.0)
    # The shared "margin" key (the triplet losses') does not reach it: its own default stays.
    assert adapter.loss(Params.from_dict({"loss": "circle", "margin": 0.9}), 16).margin == 0.4
    with pytest.raises(ValueError, match="gamma"):
        adapter.loss(Params.from_dict({"loss": "circle", "loss_options": {"gamma": 0}}), 16)


def _python_blocks(path):
    """The ```python blocks of a markdown page, but those marked `<!-- illustrative -->` on the line before."""
    blocks = re.findall(r"(<!-- illustrative -->\n)?```python\n(.*?)```", path.read_text(), re.S)
    return [code for marker, code in blocks if not marker]


@pytest.mark.skipif(keras.backend.backend() != "tensorflow",
                    reason="the snippets run as users run them, under the default backend (fit is slow to compile "
                           "under JAX); the loss itself is tested under every backend")
def test_the_docs_snippets_run(monkeypatch):
    monkeypatch.chdir(ROOT)
    blocks = _python_blocks(DOC)
    assert blocks
    for code in blocks:
        exec(compile(code, str(DOC), "exec"), {"__name__": "__doc_snippet__"})


@pytest.mark.parametrize("size,num_classes,with_references", [(12, 4, False), (9, 3, True), (6, 6, False)])
def test_equals_pytorch_metric_learning(size, num_classes, with_references):
    """Values and gradients equal PML 2.x's CircleLoss (float64) to 1e-5, in a batch and with ref_emb."""
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    rng = np.random.default_rng(size)
    labels, embeddings = _batch(size, size, num_classes)
    ref_labels, references = rng.integers(0, num_classes + 1, size=7), rng.normal(size=(7, 5)).astype(np.float32)
    x = np.concatenate([embeddings, references]) if with_references else embeddings
    tensor = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    extra = (None, tensor[size:], torch.tensor(ref_labels)) if with_references else ()
    expected = pml.CircleLoss(m=0.4, gamma=80)(tensor[:size], torch.tensor(labels), *extra)
    expected_grad = torch.autograd.grad(expected, tensor)[0].numpy() if expected.requires_grad else 0 * x

    def library(v):
        if not with_references:
            return circle_loss(labels, v)
        return circle_loss(labels, v[:size], ref_labels=ref_labels, ref_embeddings=v[size:], remove_diagonal=False)

    value, grad = _value_and_gradient(library, x)
    np.testing.assert_allclose(value, float(expected.detach()), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-5 * np.abs(expected_grad).max())


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs on the TensorFlow backend")
def test_trains_the_digits_experiment(tmp_path):
    from model.app.training import train
    from model.params import Params

    params = {**__import__("json").loads((ROOT / "experiments" / "digits" / "params.json").read_text()),
              "loss": "circle", "num_epochs": 2}
    rows = train(Params.from_dict(params), str(tmp_path / "run")).rows
    assert float(rows[-1]["val_precision_at_1"]) > 0.9
