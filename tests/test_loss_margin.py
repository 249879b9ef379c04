"""The margin-based loss (model/losses/margin.py) against a float64 numpy loop over the triplets written from
the paper's formula and PML's DivisorReducer: values and gradients (embeddings and β), in a batch and against
references, one β or one per class, edge batches, low precision, errors, serialization, a learned β that
trains and is checkpointed and restored, the docs' snippets, PML itself where installed, and a short training
run (TensorFlow)."""

import math
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from model.losses import LearnedBeta, MarginLoss, get_loss, margin_loss
from tests.backend_helpers import dtype_name, value_and_gradient

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "losses" / "margin.md"


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


def reference(labels, embeddings, margin=0.2, beta=1.2, nu=0.0, ref_labels=None, ref_embeddings=None,
              remove_diagonal=True, relation=None):
    """Every triplet (a, p, n): pos = relu(d_ap - β_a + margin), neg = relu(β_a - d_an + margin), d euclidean between
    normalised embeddings; Σ (pos + neg) / (#{pos > 0} + #{neg > 0}) (PML's DivisorReducer: 0 when the count is 0);
    0 without triplets. β_a = beta (a number or [1]) or beta[label_a] ([C]); with nu, PML's ν·β regularisation:
    ν·β for one β, Σ_triplets ν·β_a / count for one per class."""
    labels = np.reshape(labels, -1)
    x = _unit(embeddings)
    r = x if ref_embeddings is None else _unit(ref_embeddings)
    positive, negative = _pairs(labels, None if ref_labels is None else np.reshape(ref_labels, -1), remove_diagonal,
                                relation)
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


EDGE_LABELS = {
    "one_sample_classes": np.array([0, 0, 1, 2, 2, 3]),  # classes 1 and 3 have a single sample
    "no_positive_pair": np.arange(6),
    "one_class": np.zeros(5, int),
    "one_sample": np.array([4]),
    "two_distinct": np.array([0, 1]),
}


@pytest.mark.parametrize("seed,size,num_classes", [(0, 2, 2), (1, 9, 3), (2, 16, 5), (3, 30, 8)])
def test_matches_the_reference_on_random_batches(seed, size, num_classes):
    labels, embeddings = _batch(seed, size, num_classes)
    per_class = np.random.default_rng(seed).uniform(0.6, 1.6, size=num_classes).astype(np.float32)
    for margin, beta, nu in ((0.2, 1.2, 0.0), (0.1, 0.8, 0.0), (0.3, per_class, 0.0), (0.2, np.float32([1.1]), 0.5),
                             (0.2, per_class, 0.5)):
        compiled = _compiled(lambda e, margin=margin, beta=beta, nu=nu: margin_loss(labels, e, margin, beta, nu=nu))
        got = float(compiled(embeddings))
        np.testing.assert_allclose(got, reference(labels, embeddings, margin, beta, nu), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", EDGE_LABELS)
def test_edge_batches_match_and_give_zero_not_nan(name):
    labels = EDGE_LABELS[name]
    embeddings = np.random.default_rng(1).normal(size=(len(labels), 3)).astype(np.float32)
    value, grad = _value_and_gradient(lambda e: margin_loss(labels, e), embeddings)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, reference(labels, embeddings), rtol=1e-5, atol=1e-6)
    if name != "one_sample_classes":  # no triplet: PML's 0
        assert value == 0.0 and not grad.any()


def _finite_differences(fn, x, eps=1e-6):
    x = np.asarray(x, np.float64)
    grad = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        grad[index] = (fn(x + step) - fn(x - step)) / (2 * eps)
    return grad


# Spread out so that no hinge sits at its kink: finite differences need a smooth neighbourhood.
GRADIENT_LABELS = np.array([0, 0, 1, 2, 2, 3, 1, 0])


@pytest.mark.parametrize("case", ["batch", "references", "memory", "relation"])
def test_gradients_match_finite_differences(case):
    rng = np.random.default_rng(5)
    labels, embeddings = GRADIENT_LABELS, rng.normal(size=(8, 3))
    betas = np.float32([0.9, 1.2, 1.0, 1.3])
    if case in ("batch", "relation"):
        relation = rng.choice([-1, 0, 1], size=(8, 8)) if case == "relation" else None
        value, grad = _value_and_gradient(lambda e: margin_loss(labels, e, 0.3, betas, relation=relation), embeddings)
        expected = _finite_differences(lambda e: reference(labels, e, 0.3, betas, relation=relation), embeddings)
    else:  # the gradient reaches the anchors and the references
        if case == "references":
            ref_labels, references, remove_diagonal = np.array([0, 1, 3, 5]), rng.normal(size=(4, 3)), False
        else:  # a cross-batch memory: the batch first, then older embeddings
            ref_labels = np.concatenate([labels, [0, 3, 5]])
            references, remove_diagonal = np.concatenate([embeddings, rng.normal(size=(3, 3))]), True
        both = np.concatenate([embeddings, references])

        def library(x):
            return margin_loss(labels, x[:8], 0.3, betas, ref_labels=ref_labels, ref_embeddings=x[8:],
                               remove_diagonal=remove_diagonal)

        value, grad = _value_and_gradient(library, both)
        expected = _finite_differences(
            lambda x: reference(labels, x[:8], 0.3, betas, ref_labels=ref_labels, ref_embeddings=x[8:],
                                remove_diagonal=remove_diagonal), both)
    assert value > 0
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("nu", [0.0, 0.4])
@pytest.mark.parametrize("betas", [np.float32([1.1]), np.float32([0.9, 1.2, 1.0, 1.3])], ids=["one", "per_class"])
def test_gradient_of_beta_matches_finite_differences(betas, nu):
    labels, embeddings = GRADIENT_LABELS, np.random.default_rng(6).normal(size=(8, 3)).astype(np.float32)
    value, grad = _value_and_gradient(lambda b: margin_loss(labels, embeddings, 0.3, b, nu=nu), betas)
    expected = _finite_differences(lambda b: reference(labels, embeddings, 0.3, b, nu), betas)
    np.testing.assert_allclose(value, reference(labels, embeddings, 0.3, betas, nu), rtol=1e-5)
    assert np.abs(expected).max() > 0
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("remove_diagonal", [True, False])
def test_references_and_relations_match_the_reference(remove_diagonal):
    rng = np.random.default_rng(7)
    labels, embeddings = _batch(8, 10, 4)
    ref_labels = rng.integers(0, 6, size=13)  # classes the batch lacks, too
    references = rng.normal(size=(13, 5)).astype(np.float32)
    relation = rng.choice([-1, 0, 1], size=(10, 13))
    for rel in (None, relation):
        compiled = _compiled(lambda e, rel=rel: margin_loss(labels, e, ref_labels=ref_labels, ref_embeddings=references,
                                                            remove_diagonal=remove_diagonal, relation=rel))
        got = float(compiled(embeddings))
        expected = reference(labels, embeddings, ref_labels=ref_labels, ref_embeddings=references,
                             remove_diagonal=remove_diagonal, relation=rel)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    # The batch as its own references, self pairs removed: exactly the in-batch loss.
    np.testing.assert_allclose(float(margin_loss(labels, embeddings, ref_labels=labels, ref_embeddings=embeddings)),
                               float(margin_loss(labels, embeddings)), rtol=1e-6)
    empty = margin_loss(labels, embeddings, ref_labels=np.zeros(0, int), ref_embeddings=np.zeros((0, 5), np.float32))
    assert float(empty) == 0.0


def test_duplicates_zero_vectors_low_precision_and_nan():
    labels, embeddings = _batch(4, 10, 3)
    embeddings[1] = embeddings[0]  # zero distance
    embeddings[2] = 0.0  # a zero embedding
    value, grad = _value_and_gradient(lambda e: margin_loss(labels.reshape(-1, 1).astype(np.int64), e), embeddings)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    for dtype in ("float16", "bfloat16"):
        low = ops.cast(embeddings, dtype)
        result = margin_loss(labels, low, beta=ops.cast(np.float32([1.0, 1.2, 1.4]), dtype))
        assert dtype_name(result) == "float32"
        same = margin_loss(labels, ops.cast(low, "float32"), beta=ops.cast(np.float32([1.0, 1.2, 1.4]), dtype))
        np.testing.assert_allclose(float(result), float(same), rtol=1e-6)
    embeddings[3, 0] = np.nan
    assert np.isnan(float(margin_loss(labels, embeddings)))


def test_bad_arguments_name_the_argument():
    labels, embeddings = _batch(0, 6, 2)
    for name, value in (("margin", -0.1), ("margin", math.nan), ("beta", math.inf), ("beta", "1.2"), ("nu", -1.0),
                        ("nu", True)):
        with pytest.raises(ValueError, match=f"{name} must be a finite number"):
            margin_loss(labels, embeddings, **{name: value})
        with pytest.raises(ValueError, match=name):
            MarginLoss(**{name: value})
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
    with pytest.raises(ValueError, match="labels has 5 labels but embeddings has 6 rows"):
        margin_loss(labels[:5], embeddings)


def test_labels_outside_the_classes_give_nan_inside_a_traced_function():
    """Where the labels' values are not known (a traced function), a label without a β makes the loss NaN."""
    labels, embeddings = np.array([0, 1, 3, 1, 0, 0]), _batch(0, 6, 2)[1]
    betas = np.float32([1.0, 1.2])
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        traced = tf.function(lambda y, e: margin_loss(y, e, beta=betas))
    elif backend == "jax":
        import jax

        traced = jax.jit(lambda y, e: margin_loss(y, e, beta=betas))
    else:
        pytest.skip(f"the {backend} backend runs eagerly here: the labels are checked (see the errors' test)")
    assert np.isnan(float(traced(labels, embeddings)))
    assert np.isnan(float(traced(np.full(6, 5), embeddings)))  # every anchor without a β: NaN, not a count of 0
    np.testing.assert_allclose(float(traced(np.array([0, 1, 1, 1, 0, 0]), embeddings)),
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
    labels, embeddings = _batch(3, 12, 4)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(restored(labels, embeddings)),
                               reference(labels, embeddings, 0.1, np.float32([1.0] * 4), 0.2), rtol=1e-5)
    layer = keras.layers.deserialize(keras.layers.serialize(restored.weights_layer))
    assert type(layer) is LearnedBeta and (layer.num_classes, layer.initial) == (4, 1.0)
    # Without learn_beta: no weights, and PML leaves out ν·β; one β for all when num_classes is 0 or None.
    fixed = MarginLoss(nu=0.5, num_classes=4)
    assert fixed.trained_layers == {}
    np.testing.assert_allclose(float(fixed(labels, embeddings)), reference(labels, embeddings), rtol=1e-5)
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


@pytest.mark.parametrize("case", ["batch", "references", "learned_per_class"])
def test_equals_pytorch_metric_learning(case):
    """Values and gradients (embeddings, β) equal PML 2.x's MarginLoss (float64) to 1e-5."""
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    rng = np.random.default_rng(len(case))
    size = 10
    labels, embeddings = _batch(len(case), size, 4)
    ref_labels, references = rng.integers(0, 5, size=7), rng.normal(size=(7, 5)).astype(np.float32)
    with_references = case == "references"
    x = np.concatenate([embeddings, references]) if with_references else embeddings
    tensor = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    extra = (None, tensor[size:], torch.tensor(ref_labels)) if with_references else ()
    if case == "learned_per_class":
        peer = pml.MarginLoss(nu=0.3, learn_beta=True, num_classes=4)
        betas = rng.uniform(0.8, 1.4, size=4)
        peer.beta.data = torch.tensor(betas, dtype=torch.float64)
        expected = peer(tensor, torch.tensor(labels))
        expected_grad, expected_beta_grad = (g.numpy() for g in torch.autograd.grad(expected, [tensor, peer.beta]))
        betas = betas.astype(np.float32)
        _, beta_grad = _value_and_gradient(lambda b: margin_loss(labels, embeddings, beta=b, nu=0.3), betas)
        np.testing.assert_allclose(beta_grad, expected_beta_grad, rtol=1e-5, atol=1e-6)
        value, grad = _value_and_gradient(lambda v: margin_loss(labels, v, beta=betas, nu=0.3), x)
    else:
        expected = pml.MarginLoss()(tensor[:size], torch.tensor(labels), *extra)
        expected_grad = torch.autograd.grad(expected, tensor)[0].numpy()

        def library(v):
            if not with_references:
                return margin_loss(labels, v)
            return margin_loss(labels, v[:size], ref_labels=ref_labels, ref_embeddings=v[size:], remove_diagonal=False)

        value, grad = _value_and_gradient(library, x)
    np.testing.assert_allclose(value, float(expected.detach()), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs on the TensorFlow backend")
def test_trains_the_digits_experiment_with_a_learned_beta_that_is_checkpointed_and_restored(tmp_path):
    import json

    import tensorflow as tf

    from model.app.training import train
    from model.params import Params

    params = {**json.loads((ROOT / "experiments" / "digits" / "params.json").read_text()),
              "loss": "margin", "loss_options": {"learn_beta": True}, "num_epochs": 2}
    run = str(tmp_path / "run")

    def saved_beta():
        reader = tf.train.load_checkpoint(str(tmp_path / "run" / "checkpoints" / "state"))
        names = [name for name in reader.get_variable_to_shape_map()
                 if "weights_layer" in name and "OPTIMIZER" not in name]
        assert len(names) == 1, names  # β is in the training state
        return reader.get_tensor(names[0])

    rows = train(Params.from_dict(params), run).rows
    assert float(rows[-1]["val_precision_at_1"]) > 0.9
    trained = saved_beta()
    assert trained.shape == (10,) and np.abs(trained - 1.2).min() > 1e-3  # one β per class (num_labels), trained
    # Resumed with a learning rate too small to move it: β is the checkpoint's, not a fresh 1.2.
    rows = train(Params.from_dict({**params, "num_epochs": 3, "learning_rate": 1e-9}), run).rows
    assert len(rows) == 3
    np.testing.assert_allclose(saved_beta(), trained, atol=1e-6)
