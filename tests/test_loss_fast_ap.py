"""FastAP (model/losses/fast_ap.py) against a float64 numpy loop written from the paper's histogram formula and
PML's reduction: values and gradients, in a batch and with a relation, edge batches, references refused (as PML
refuses ref_emb), low precision, errors, serialization, the docs' snippets, PML itself where installed, and a
short training run (TensorFlow)."""

import math
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from model.losses import FastAPLoss, fast_ap_loss, get_loss
from tests.backend_helpers import dtype_name, value_and_gradient

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "losses" / "fast_ap.md"


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


def reference(labels, embeddings, num_bins=10, reduction="all", remove_diagonal=True, relation=None):
    """The paper's FastAP from histograms: d = squared euclidean distance of normalised embeddings in [0, 4],
    triangular pulses of width Δ = 4/num_bins at c_k = kΔ; for each anchor with a positive,
    FastAP_a = (1/|P(a)|) Σ_k h⁺_k H⁺_k / H_k (terms with h⁺H⁺ = 0 or H = 0 left out), loss_a = 1 - FastAP_a;
    PML's MeanReducer ("all") or AvgNonZeroReducer ("nonzero") over those anchors; 0 when no term counts."""
    labels = np.reshape(labels, -1)
    x = _unit(embeddings)
    positive, negative = _pairs(labels, None, remove_diagonal, relation)
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
    anchor_losses = np.array(anchor_losses)
    if not counted:
        return 0.0
    if reduction == "nonzero":
        anchor_losses = anchor_losses[anchor_losses > 0]
    return float(anchor_losses.mean()) if len(anchor_losses) else 0.0


def _batch(seed, size, num_classes, dim=5):
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_classes, size=size), rng.normal(size=(size, dim)).astype(np.float32)


EDGE_LABELS = {
    "one_sample_classes": np.array([0, 0, 1, 2, 2, 3]),  # classes 1 and 3 have a single sample
    "no_positive_pair": np.arange(6),
    "one_class": np.zeros(6, int),
    "one_sample": np.array([4]),
    "two_distinct": np.array([0, 1]),
}


@pytest.mark.parametrize("reduction", ["all", "nonzero"])
@pytest.mark.parametrize("seed,size,num_classes", [(0, 2, 2), (1, 9, 3), (2, 16, 5)])
def test_matches_the_reference_on_random_batches(seed, size, num_classes, reduction):
    labels, embeddings = _batch(seed, size, num_classes)
    for num_bins in (10, 1, 37):
        got = float(_compiled(lambda e, bins=num_bins: fast_ap_loss(labels, e, bins, reduction=reduction))(embeddings))
        np.testing.assert_allclose(got, reference(labels, embeddings, num_bins, reduction), rtol=1e-5, atol=1e-6)


def test_a_nearly_perfect_ranking_keeps_its_small_loss_accurate():
    """1 - FastAP is computed without the float32 cancellation of 1 - Σ...: small losses keep their digits."""
    labels = np.repeat(np.arange(3), 3)
    rng = np.random.default_rng(2)
    embeddings = (np.eye(5)[labels] + 0.3 * rng.normal(size=(9, 5))).astype(np.float32)
    expected = reference(labels, embeddings)
    assert 0 < expected < 0.05
    np.testing.assert_allclose(float(fast_ap_loss(labels, embeddings)), expected, rtol=1e-4)


@pytest.mark.parametrize("name", EDGE_LABELS)
def test_edge_batches_match_and_give_zero_not_nan(name):
    labels = EDGE_LABELS[name]
    embeddings = np.random.default_rng(1).normal(size=(len(labels), 3)).astype(np.float32)
    value, grad = _value_and_gradient(lambda e: fast_ap_loss(labels, e), embeddings)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, reference(labels, embeddings), rtol=1e-5, atol=1e-6)
    if name != "one_sample_classes":  # no positive pair, or no negative (a perfect ranking): 0
        assert value == 0.0 and not grad.any()


def _finite_differences(fn, x, eps=1e-6):
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        grad[index] = (fn(x + step) - fn(x - step)) / (2 * eps)
    return grad


@pytest.mark.parametrize("case", ["batch", "relation", "few_bins"])
def test_gradients_match_finite_differences(case):
    rng = np.random.default_rng(5)
    labels, embeddings = np.array([0, 0, 1, 2, 2, 3, 1, 0, 3]), rng.normal(size=(9, 5))
    relation = rng.choice([-1, 0, 1], size=(9, 9)) if case == "relation" else None
    num_bins = 3 if case == "few_bins" else 10
    value, grad = _value_and_gradient(lambda e: fast_ap_loss(labels, e, num_bins, relation=relation), embeddings)
    expected = _finite_differences(lambda e: reference(labels, e, num_bins, relation=relation), embeddings)
    assert value > 0 and np.abs(expected).max() > 0
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5)


def test_references_are_refused_and_a_relation_chooses_the_pairs():
    labels, embeddings = _batch(8, 9, 4)
    for references in ({"ref_labels": labels, "ref_embeddings": embeddings}, {"ref_labels": labels},
                       {"ref_embeddings": embeddings}):
        with pytest.raises(ValueError, match="takes no references .* FastAPLoss does not support ref_emb either"):
            fast_ap_loss(labels, embeddings, **references)
    with pytest.raises(ValueError, match="takes no references"):
        FastAPLoss().compute(labels, embeddings, ref_labels=labels, ref_embeddings=embeddings)
    relation = np.random.default_rng(3).choice([-1, 0, 1], size=(9, 9))
    for remove_diagonal in (True, False):
        got = float(_compiled(lambda e, flag=remove_diagonal: fast_ap_loss(labels, e, relation=relation,
                                                                           remove_diagonal=flag))(embeddings))
        expected = reference(labels, embeddings, relation=relation, remove_diagonal=remove_diagonal)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The labels' own relation gives the labels' loss.
    own = np.where(labels[:, None] == labels[None], 1, -1)
    np.testing.assert_allclose(float(fast_ap_loss(labels, embeddings, relation=own)),
                               float(fast_ap_loss(labels, embeddings)), rtol=1e-6)
    np.testing.assert_allclose(float(FastAPLoss().compute(labels, embeddings, relation=own)[0]),
                               float(fast_ap_loss(labels, embeddings)), rtol=1e-6)
    with pytest.raises(ValueError, match="relation must be a"):
        fast_ap_loss(labels, embeddings, relation=np.ones((9, 12), int))


def test_duplicates_zero_vectors_low_precision_and_nan():
    labels, embeddings = _batch(4, 9, 3)
    embeddings[1] = embeddings[0]  # zero distance, on a bin centre
    embeddings[2] = 0.0  # a zero embedding
    value, grad = _value_and_gradient(lambda e: fast_ap_loss(labels.reshape(-1, 1).astype(np.int64), e), embeddings)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    for dtype in ("float16", "bfloat16"):
        low = ops.cast(embeddings, dtype)
        result = fast_ap_loss(labels, low)
        assert dtype_name(result) == "float32"
        np.testing.assert_allclose(float(result), float(fast_ap_loss(labels, ops.cast(low, "float32"))), rtol=1e-6)
    embeddings[3, 0] = np.nan
    assert np.isnan(float(fast_ap_loss(labels, embeddings)))


def test_bad_arguments_name_the_argument():
    labels, embeddings = _batch(0, 6, 2)
    for num_bins in (0, -1, 2.5, math.nan, math.inf, "10", True, None):
        with pytest.raises(ValueError, match="num_bins must be an integer >= 1"):
            fast_ap_loss(labels, embeddings, num_bins)
        with pytest.raises(ValueError, match="num_bins"):
            FastAPLoss(num_bins=num_bins)
    assert FastAPLoss(num_bins=4.0).num_bins == 4  # an integral number, as JSON may give it
    with pytest.raises(ValueError, match="reduction must be one of"):
        fast_ap_loss(labels, embeddings, reduction="mean")
    with pytest.raises(ValueError, match="labels has 5 labels but embeddings has 6 rows"):
        fast_ap_loss(labels[:5], embeddings)


def test_class_serializes_and_passes_its_options():
    loss = get_loss("fast_ap", num_bins=20, reduction="nonzero", l2_normalize=True)
    assert isinstance(loss, FastAPLoss)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is FastAPLoss and restored.get_config() == loss.get_config()
    assert restored.get_config()["num_bins"] == 20 and restored.get_config()["reduction"] == "nonzero"
    labels, embeddings = _batch(3, 9, 4)
    np.testing.assert_allclose(float(restored(labels, embeddings)), reference(labels, embeddings, 20, "nonzero"),
                               rtol=1e-5)
    assert FastAPLoss().num_bins == 10 and FastAPLoss().term_reduction == "all"


def test_params_build_it_and_refuse_a_memory():
    from model.app import adapter
    from model.params import Params

    loss = adapter.loss(Params.from_dict({"loss": "fast_ap", "loss_options": {"num_bins": 16}}), 16)
    assert isinstance(loss, FastAPLoss) and loss.num_bins == 16
    with pytest.raises(ValueError, match='loss "fast_ap" ranks each batch and takes no references .* drop "memory"'):
        Params.from_dict({"loss": "fast_ap", "memory": {"size": 64, "warmup_steps": 0}})
    with pytest.raises(ValueError, match="num_bins"):
        adapter.loss(Params.from_dict({"loss": "fast_ap", "loss_options": {"num_bins": 0}}), 16)


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


@pytest.mark.parametrize("size,num_classes,num_bins", [(9, 3, 10), (16, 4, 5), (16, 2, 10)])
def test_equals_pytorch_metric_learning(size, num_classes, num_bins):
    """Values and gradients equal PML 2.x's FastAPLoss (float64) to 1e-5; PML refuses ref_emb, as this loss does."""
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    labels, embeddings = _batch(size, size, num_classes)
    tensor = torch.tensor(embeddings, dtype=torch.float64, requires_grad=True)
    expected = pml.FastAPLoss(num_bins=num_bins)(tensor, torch.tensor(labels))
    expected_grad = torch.autograd.grad(expected, tensor)[0].numpy()
    value, grad = _value_and_gradient(lambda v: fast_ap_loss(labels, v, num_bins), embeddings)
    np.testing.assert_allclose(value, float(expected.detach()), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-5 * np.abs(expected_grad).max())
    with pytest.raises(ValueError, match="ref_emb is not supported"):
        pml.FastAPLoss()(tensor, torch.tensor(labels), None, tensor[:3], torch.tensor(labels[:3]))


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs on the TensorFlow backend")
def test_trains_the_digits_experiment(tmp_path):
    from model.app.training import train
    from model.params import Params

    params = {**__import__("json").loads((ROOT / "experiments" / "digits" / "params.json").read_text()),
              "loss": "fast_ap", "num_epochs": 2}
    rows = train(Params.from_dict(params), str(tmp_path / "run")).rows
    assert float(rows[-1]["val_precision_at_1"]) > 0.9
