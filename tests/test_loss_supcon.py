"""SupCon (model/losses/supcon.py) against a float64 numpy loop written from the paper's formula and PML's
reduction: values and gradients, in a batch and against references, edge batches, low precision, errors,
serialization, the docs' snippets, PML itself where installed, and a short training run (TensorFlow)."""

import math
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from model.losses import SupConLoss, get_loss, supcon_loss
from tests.backend_helpers import dtype_name, value_and_gradient

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "losses" / "supcon.md"


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


def reference(labels, embeddings, temperature=0.1, reduction="nonzero", ref_labels=None, ref_embeddings=None,
              remove_diagonal=True, relation=None):
    """loss_a = -(1/|P(a)|) Σ_p log(exp(S_ap/τ) / Σ_{k ∈ P(a) ∪ N(a)} exp(S_ak/τ)), PML's AvgNonZeroReducer
    ("nonzero") or MeanReducer ("all") over the anchors; 0 unless a positive and a negative pair exist and more
    than one of either (PML's GenericPairLoss)."""
    labels = np.reshape(labels, -1)
    x = _unit(embeddings)
    r = x if ref_embeddings is None else _unit(ref_embeddings)
    positive, negative = _pairs(labels, None if ref_labels is None else np.reshape(ref_labels, -1), remove_diagonal,
                                relation)
    num_positive, num_negative = positive.sum(), negative.sum()
    if num_positive == 0 or num_negative == 0 or (num_positive <= 1 and num_negative <= 1):
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
    for temperature in (0.1, 0.5):
        compiled = _compiled(lambda e, t=temperature: supcon_loss(labels, e, t, reduction=reduction))
        got = float(compiled(embeddings))
        np.testing.assert_allclose(got, reference(labels, embeddings, temperature, reduction), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", EDGE_LABELS)
def test_edge_batches_match_and_give_zero_not_nan(name):
    labels = EDGE_LABELS[name]
    embeddings = np.random.default_rng(1).normal(size=(len(labels), 3)).astype(np.float32)
    value, grad = _value_and_gradient(lambda e: supcon_loss(labels, e), embeddings)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, reference(labels, embeddings), rtol=1e-5, atol=1e-6)
    if name != "one_sample_classes":  # no positive pair, or no negative pair: PML's 0
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
        value, grad = _value_and_gradient(lambda e: supcon_loss(labels, e, 0.5, relation=relation), embeddings)
        expected = _finite_differences(lambda e: reference(labels, e, 0.5, relation=relation), embeddings)
    else:  # the gradient reaches the anchors and the references
        if case == "references":
            ref_labels, references, remove_diagonal = np.array([0, 1, 3, 5]), rng.normal(size=(4, 3)), False
        else:  # a cross-batch memory: the batch first, then older embeddings
            ref_labels = np.concatenate([labels, [0, 3, 5]])
            references, remove_diagonal = np.concatenate([embeddings, rng.normal(size=(3, 3))]), True
        both = np.concatenate([embeddings, references])

        def library(x):
            return supcon_loss(labels, x[:6], 0.5, ref_labels=ref_labels, ref_embeddings=x[6:],
                               remove_diagonal=remove_diagonal)

        value, grad = _value_and_gradient(library, both)
        expected = _finite_differences(
            lambda x: reference(labels, x[:6], 0.5, ref_labels=ref_labels, ref_embeddings=x[6:],
                                remove_diagonal=remove_diagonal), both)
    assert value > 0
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("remove_diagonal", [True, False])
def test_references_and_relations_match_the_reference(remove_diagonal):
    rng = np.random.default_rng(7)
    labels, embeddings = _batch(8, 10, 4)
    ref_labels = rng.integers(0, 6, size=13)  # classes the batch lacks, too
    references = rng.normal(size=(13, 5)).astype(np.float32)
    relation = rng.choice([-1, 0, 1], size=(10, 13))
    for rel in (None, relation):
        compiled = _compiled(lambda e, rel=rel: supcon_loss(labels, e, ref_labels=ref_labels, ref_embeddings=references,
                                                       remove_diagonal=remove_diagonal, relation=rel))
        got = float(compiled(embeddings))
        expected = reference(labels, embeddings, ref_labels=ref_labels, ref_embeddings=references,
                             remove_diagonal=remove_diagonal, relation=rel)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The batch as its own references, self pairs removed: exactly the in-batch loss.
    np.testing.assert_allclose(float(supcon_loss(labels, embeddings, ref_labels=labels, ref_embeddings=embeddings)),
                               float(supcon_loss(labels, embeddings)), rtol=1e-6)
    # No references at all (R = 0): no pair, 0.
    empty = supcon_loss(labels, embeddings, ref_labels=np.zeros(0, int), ref_embeddings=np.zeros((0, 5), np.float32))
    assert float(empty) == 0.0


def test_duplicates_zero_vectors_low_precision_and_nan():
    labels, embeddings = _batch(4, 10, 3)
    embeddings[1] = embeddings[0]  # zero distance
    embeddings[2] = 0.0  # a zero embedding
    value, grad = _value_and_gradient(lambda e: supcon_loss(labels.reshape(-1, 1).astype(np.int64), e), embeddings)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    for dtype in ("float16", "bfloat16"):
        low = ops.cast(embeddings, dtype)
        result = supcon_loss(labels, low)
        assert dtype_name(result) == "float32"
        np.testing.assert_allclose(float(result), float(supcon_loss(labels, ops.cast(low, "float32"))), rtol=1e-6)
    embeddings[3, 0] = np.nan
    assert np.isnan(float(supcon_loss(labels, embeddings)))


def test_bad_arguments_name_the_argument():
    labels, embeddings = _batch(0, 6, 2)
    for temperature in (0, -0.1, math.inf, math.nan, "0.1", True):
        with pytest.raises(ValueError, match="temperature must be a finite number > 0"):
            supcon_loss(labels, embeddings, temperature)
        with pytest.raises(ValueError, match="temperature"):
            SupConLoss(temperature=temperature)
    with pytest.raises(ValueError, match="reduction must be one of"):
        supcon_loss(labels, embeddings, reduction="mean")
    with pytest.raises(ValueError, match="labels has 5 labels but embeddings has 6 rows"):
        supcon_loss(labels[:5], embeddings)
    with pytest.raises(ValueError, match="ref_labels was given without ref_embeddings"):
        supcon_loss(labels, embeddings, ref_labels=labels)


def test_class_serializes_and_passes_its_options():
    loss = get_loss("supcon", temperature=0.3, reduction="all", l2_normalize=True)
    assert isinstance(loss, SupConLoss)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is SupConLoss and restored.get_config() == loss.get_config()
    assert restored.get_config()["temperature"] == 0.3 and restored.get_config()["reduction"] == "all"
    labels, embeddings = _batch(3, 12, 4)
    np.testing.assert_allclose(float(restored(labels, embeddings)),
                               reference(labels, embeddings, 0.3, "all"), rtol=1e-5)
    assert SupConLoss().get_config()["temperature"] == 0.1 and SupConLoss().term_reduction == "nonzero"


def test_params_build_it_from_loss_options():
    from model.app import adapter
    from model.params import Params

    loss = adapter.loss(Params.from_dict({"loss": "supcon", "loss_options": {"temperature": 0.2}}), 16)
    assert isinstance(loss, SupConLoss) and loss.temperature == 0.2
    with pytest.raises(ValueError, match="temperature"):
        adapter.loss(Params.from_dict({"loss": "supcon", "loss_options": {"temperature": 0}}), 16)


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
    """Values and gradients equal PML 2.x's SupConLoss (float64) to 1e-5, in a batch and with ref_emb."""
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    rng = np.random.default_rng(size)
    labels, embeddings = _batch(size, size, num_classes)
    ref_labels, references = rng.integers(0, num_classes + 1, size=7), rng.normal(size=(7, 5)).astype(np.float32)
    x = np.concatenate([embeddings, references]) if with_references else embeddings
    tensor = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    extra = (None, tensor[size:], torch.tensor(ref_labels)) if with_references else ()
    expected = pml.SupConLoss(temperature=0.1)(tensor[:size], torch.tensor(labels), *extra)
    expected_grad = torch.autograd.grad(expected, tensor)[0].numpy() if expected.requires_grad else 0 * x

    def library(v):
        if not with_references:
            return supcon_loss(labels, v)
        return supcon_loss(labels, v[:size], ref_labels=ref_labels, ref_embeddings=v[size:], remove_diagonal=False)

    value, grad = _value_and_gradient(library, x)
    np.testing.assert_allclose(value, float(expected.detach()), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs on the TensorFlow backend")
def test_trains_the_digits_experiment(tmp_path):
    from model.app.training import train
    from model.params import Params

    params = {**__import__("json").loads((ROOT / "experiments" / "digits" / "params.json").read_text()),
              "loss": "supcon", "num_epochs": 2}
    rows = train(Params.from_dict(params), str(tmp_path / "run")).rows
    assert float(rows[-1]["val_precision_at_1"]) > 0.9
