"""Checks shared by the tests of the losses with learned class weights (tests/test_loss_<name>.py).

Each test file holds its loss's numpy reference (float64, a loop over the batch, from the paper's formula and
PML's reduction; the softmax losses' references are their logits in `softmax_reference`) and calls these checks with
it: the value on random batches (one with a class of one sample, one without any positive pair), the gradients
against the reference's finite differences, PML itself where installed, no NaN at cos θ = ±1 and at zero, float16
and bfloat16 inputs, labels outside the classes (eager and traced) and references refused, the registry and
serialization, the doc page's snippets, and, under TensorFlow, its digits experiment trained (and resumed). The pair
losses' tests (tests/pair_loss_checks.py) take the finite differences, the doc snippets and the digits training from
here too.

The batches have one shape ([12, 8], 12 classes): under JAX every new shape compiles every operation again.
"""

import json
import math
import os
import re

import keras
import numpy as np
import pytest

from model.losses import LOSSES, get_loss
from tests.backend_helpers import dtype_name, value_and_gradient

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES, DIM, BATCH = 12, 8, 12
KINDS = ("random", "singleton", "no_positive")


def batch(kind, seed=0, num_classes=NUM_CLASSES, dim=DIM):
    """(labels [B] int32, embeddings [B, D] float32) of a kind of batch of B = 12 samples:
    "random": random labels (some classes absent, some with several samples); "singleton": class C-1 has
    exactly one sample, the others are random among the other classes; "no_positive": every label different
    (no positive pair; B <= C)."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        labels = rng.integers(0, num_classes, size=BATCH)
    elif kind == "singleton":
        labels = np.concatenate([[num_classes - 1], rng.integers(0, num_classes - 2, size=BATCH - 1)])
        labels = labels[rng.permutation(BATCH)]
    elif kind == "no_positive":
        labels = rng.permutation(num_classes)[:BATCH]
    else:
        raise ValueError(kind)
    embeddings = rng.normal(size=(len(labels), dim))
    return labels.astype(np.int32), embeddings.astype(np.float32)


def random_weights(shape, seed=0):
    return np.random.default_rng(seed + 100).normal(size=shape).astype(np.float32)


def cross_entropy(logits, label):
    """-log softmax(logits)[label], from the largest logit (no overflow)."""
    top = logits.max()
    return top + math.log(np.exp(logits - top).sum()) - logits[label]


def softmax_reference(labels, embeddings, weights, logits):
    """mean_i cross_entropy(logits(cosines_i, y_i), y_i), cosines_i = the cosines of sample i's embedding to the
    columns of `weights` (all 0 for a zero embedding): the reference of the softmax losses, `logits` their formula."""
    x = embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)  # a zero row stays 0
    w = weights / np.linalg.norm(weights, axis=0, keepdims=True)
    total = 0.0
    for i, label in enumerate(labels):
        total += cross_entropy(logits(x[i] @ w, label), label)
    return total / len(labels)


def numeric_gradient(reference, x, eps=1e-6):
    """Central finite differences of the float64 function `reference` at x."""
    x = np.asarray(x, dtype=np.float64)
    gradient = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        gradient[index] = (reference(x + step) - reference(x - step)) / (2 * eps)
    return gradient


def assert_close_gradient(got, expected, rtol=1e-3):
    """Element-wise, with an absolute floor relative to the gradient's largest entry (float32 against float64)."""
    scale = max(np.abs(expected).max(), 1e-12)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * scale)


def check_value_and_gradients(function, reference, labels, embeddings, weights, rtol=1e-5):
    """`function(labels, embeddings, weights)` against the float64 `reference`: the value to `rtol`, the gradients
    with respect to the embeddings and the weights against the reference's finite differences."""
    value, embedding_gradient = value_and_gradient(lambda x: function(labels, x, weights), embeddings)
    _, weight_gradient = value_and_gradient(lambda w: function(labels, embeddings, w), weights)
    expected = reference(labels, embeddings.astype(np.float64), weights.astype(np.float64))
    np.testing.assert_allclose(value, expected, rtol=rtol)
    assert_close_gradient(embedding_gradient, numeric_gradient(lambda x: reference(labels, x, weights), embeddings))
    assert_close_gradient(weight_gradient, numeric_gradient(lambda w: reference(labels, embeddings, w), weights))


def check_kind(kind, function, reference, shape):
    """check_value_and_gradients on the batch `kind` (seed 1) with random weights of `shape`."""
    labels, embeddings = batch(kind, seed=1)
    check_value_and_gradients(function, reference, labels, embeddings, random_weights(shape))


def check_options(function, reference, shape, settings):
    """On the batch "random" (seed 2) and random weights of `shape` (seed 2), `function(labels, embeddings, weights,
    **options)` equals the reference for each options of `settings`; returns (labels, embeddings, weights) for the
    loss's own checks of its options."""
    labels, embeddings = batch("random", seed=2)
    weights = random_weights(shape, seed=2)
    for options in settings:
        got = float(function(labels, embeddings, weights, **options))
        np.testing.assert_allclose(got, reference(labels, embeddings, weights, **options), rtol=1e-5,
                                   err_msg=str(options))
    return labels, embeddings, weights


def check_equals_pml(function, kind, pml_name, parameter, shape, rtol=1e-5, **pml_options):
    """On the batch `kind` (seed 3) and random weights of `shape`: value and gradients (embeddings, weights) equal
    to those of PML's `pml_name(num_classes=C, embedding_size=D, **pml_options)` with its weight parameter
    `parameter` set to the weights, max |difference| / max |PML's| <= rtol."""
    torch = pytest.importorskip("torch")
    losses = pytest.importorskip("pytorch_metric_learning.losses")
    labels, embeddings = batch(kind, seed=3)
    weights = random_weights(shape, seed=3)
    module = getattr(losses, pml_name)(num_classes=NUM_CLASSES, embedding_size=DIM, **pml_options)
    parameter = getattr(module, parameter)
    with torch.no_grad():
        parameter.copy_(torch.tensor(weights))
    tensor = torch.tensor(embeddings, requires_grad=True)
    expected = module(tensor, torch.tensor(labels, dtype=torch.long))
    expected.backward()
    value, embedding_gradient = value_and_gradient(lambda x: function(labels, x, weights), embeddings)
    _, weight_gradient = value_and_gradient(lambda w: function(labels, embeddings, w), weights)
    differences = []
    for got, want in ((value, expected.item()), (embedding_gradient, tensor.grad.numpy()),
                      (weight_gradient, parameter.grad.numpy())):
        differences.append(np.max(np.abs(np.asarray(got) - want)) / max(np.max(np.abs(want)), 1e-30))
    assert max(differences) <= rtol, differences


def check_no_nan_at_cos_plus_or_minus_one_and_at_zero(function, reference, weights, directions, **tolerance):
    """Sample c along row c of `directions` ([C, D], where class c's cosine is 1), against it (-1), and zero: a
    finite value and finite gradients (embeddings, weights), the reference's value to `tolerance`."""
    labels = np.arange(NUM_CLASSES, dtype=np.int32)
    for embeddings in (3.0 * directions, -3.0 * directions, np.zeros((NUM_CLASSES, DIM), np.float32)):
        value, gradient = value_and_gradient(lambda x: function(labels, x, weights), embeddings)
        _, weight_gradient = value_and_gradient(lambda w, e=embeddings: function(labels, e, w), weights)
        assert np.isfinite(value) and np.all(np.isfinite(gradient)) and np.all(np.isfinite(weight_gradient))
        np.testing.assert_allclose(value, reference(labels, embeddings, weights), **tolerance)


def check_low_precision(function, shape):
    """float16 and bfloat16 embeddings and weights (the batch "random", seed 5, weights of `shape`): a finite
    float32 loss close to the float32 one of the same (rounded) inputs, finite gradients."""
    labels, embeddings = batch("random", seed=5)
    weights = random_weights(shape, seed=5)
    for dtype in ("float16", "bfloat16"):
        low_e, low_w = keras.ops.cast(embeddings, dtype), keras.ops.cast(weights, dtype)
        value = function(labels, low_e, low_w)
        assert dtype_name(value) == "float32"
        rounded = function(labels, keras.ops.cast(low_e, "float32"), keras.ops.cast(low_w, "float32"))
        np.testing.assert_allclose(float(value), float(rounded), rtol=1e-6)
        _, gradient = value_and_gradient(
            lambda x, dtype=dtype, low_w=low_w: function(labels, keras.ops.cast(x, dtype), low_w), embeddings)
        assert np.all(np.isfinite(gradient))


def traced(function):
    """`function` traced by the backend (tf.function, jax.jit), or None under PyTorch (eager only)."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(function)
    if backend == "jax":
        import jax

        return jax.jit(function)
    return None


def check_labels_outside(function, embeddings, weights, num_classes):
    """Labels outside [0, C): a ValueError naming `labels` when eager; NaN inside a traced function."""
    for bad in (num_classes, -1):
        labels = np.zeros(len(embeddings), dtype=np.int32)
        labels[1] = bad
        with pytest.raises(ValueError, match=rf"labels must be integers in \[0, {num_classes}\).*got {bad}"):
            function(labels, embeddings, weights)
        with pytest.raises(ValueError, match="labels must be integers"):  # a tensor, eager
            function(keras.ops.convert_to_tensor(labels), embeddings, weights)
        compiled = traced(lambda y, e: function(y, e, weights))
        if compiled is not None:
            assert np.isnan(float(compiled(keras.ops.convert_to_tensor(labels), embeddings)))
            good = np.zeros(len(embeddings), dtype=np.int32)
            assert np.isfinite(float(compiled(keras.ops.convert_to_tensor(good), embeddings)))


def check_shared_errors(function, loss_class, shape):
    """Labels outside the classes (check_labels_outside, the batch "random", seed 6, weights of `shape`) and
    references (PML's ref_emb does not apply either) are refused; returns (labels, embeddings, weights) for the
    loss's own errors."""
    labels, embeddings = batch("random", seed=6)
    weights = random_weights(shape)
    check_labels_outside(function, embeddings, weights, NUM_CLASSES)
    with pytest.raises(ValueError, match="not with references"):
        loss_class(NUM_CLASSES, DIM).compute(labels, embeddings, ref_labels=labels, ref_embeddings=embeddings)
    return labels, embeddings, weights


def check_seeded_initializer(make_layer, variable, mean, std, uniform_bound=None):
    """The layer's weights are seeded by Keras's global seed and drawn as PML draws them (mean, std, bound)."""
    keras.utils.set_random_seed(7)
    first = keras.ops.convert_to_numpy(getattr(make_layer(), variable))
    keras.utils.set_random_seed(7)
    again = keras.ops.convert_to_numpy(getattr(make_layer(), variable))
    np.testing.assert_array_equal(first, again)
    assert abs(first.mean() - mean) < 0.1 * std
    assert abs(first.std() - std) < 0.1 * std
    if uniform_bound is not None:
        assert np.abs(first).max() <= uniform_bound and np.abs(first).max() > 0.9 * uniform_bound
    return first


def check_registry_and_serialization(name, loss_class, layer_class, variable, shape, reference, options):
    """LOSSES[name] is `loss_class`, with params' num_labels as its one option; get_loss(name, num_classes=C,
    embedding_size=D, **options) keeps every argument through a Keras serialize/deserialize round trip, trains its
    weights layer (a `layer_class`, round-tripped too, its `variable` of `shape`) and computes
    `reference(labels, embeddings, weights, **options)` with them."""
    assert LOSSES[name].component is loss_class
    assert [option.key for option in LOSSES[name].options] == ["num_labels"]
    loss = get_loss(name, num_classes=NUM_CLASSES, embedding_size=DIM, **options)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    for key, value in {"num_classes": NUM_CLASSES, "embedding_size": DIM, **options}.items():
        assert restored.get_config()[key] == value
    assert set(restored.trained_layers) == {"weights_layer"}
    assert loss.trained_layers["weights_layer"] is loss.weights_layer
    assert tuple(getattr(loss.weights_layer, variable).shape) == shape
    labels, embeddings = batch("random", seed=7)
    got, _ = loss.compute(labels, embeddings)
    weights = keras.ops.convert_to_numpy(getattr(loss.weights_layer, variable))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), reference(labels, embeddings, weights, **options),
                               rtol=1e-5)
    layer = keras.layers.deserialize(keras.layers.serialize(loss.weights_layer))
    assert isinstance(layer, layer_class) and layer.get_config() == loss.weights_layer.get_config()


def doc_blocks(name):
    """(language, code) of the fenced blocks of docs/losses/<name>.md that are not marked illustrative."""
    with open(os.path.join(ROOT, "docs", "losses", f"{name}.md")) as handle:
        text = handle.read()
    blocks = []
    for match in re.finditer(r"(<!-- illustrative -->\s*\n)?```(\w*)\n(.*?)```", text, re.S):
        if not match.group(1):
            blocks.append((match.group(2), match.group(3)))
    return blocks


def run_doc_snippets(name):
    """Run the doc page's python blocks (from the repository root) and load its JSON blocks as params.json."""
    from model.params import Params

    blocks = doc_blocks(name)
    assert any(language == "python" for language, _ in blocks)
    here = os.getcwd()
    os.chdir(ROOT)
    try:
        for language, code in blocks:
            if language == "python":
                exec(compile(code, f"docs/losses/{name}.md", "exec"), {"__name__": "__doc__"})
            elif language == "json":
                Params.from_dict(json.loads(code))
            else:
                raise AssertionError(f"docs/losses/{name}.md: a {language!r} block must be marked illustrative")
    finally:
        os.chdir(here)


def state_weights(run):
    """{checkpoint key: array} of the loss's weights ("weights_layer") in the run's training state."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(os.path.join(run, "checkpoints", "state"))
    return {key: reader.get_tensor(key) for key in reader.get_variable_to_shape_map()
            if "weights_layer" in key and "OPTIMIZER" not in key}


def train_and_resume(experiment, tmp_path, monkeypatch, variable, epochs=2):
    """Train experiments/<experiment>/params.json for `epochs` epochs, then one more by resuming; returns
    (rows of the first run, rows after resuming, the weights saved in the state after the first run, the weights
    the resumed run had when its epoch began, the weights in the state at the end)."""
    from model.app.training import train
    from model.params import Params
    from model.run.state import TrainingState

    params = Params.load(os.path.join(ROOT, "experiments", experiment, "params.json")).replace(num_epochs=epochs)
    run = str(tmp_path / "run")
    first = train(params, run).rows
    saved = state_weights(run)
    assert len(saved) == 1, saved  # the loss's weights are in the training state, under "weights_layer"
    restored = {}
    original = TrainingState.restore

    def restore(self):
        epoch = original(self)
        restored[epoch] = keras.ops.convert_to_numpy(getattr(self.model.weights_layer, variable)).copy()
        return epoch

    monkeypatch.setattr(TrainingState, "restore", restore)
    resumed = train(params.replace(num_epochs=epochs + 1), run).rows
    assert list(restored) == [epochs]
    return first, resumed, next(iter(saved.values())), restored[epochs], next(iter(state_weights(run).values()))


def check_experiment(experiment, tmp_path, monkeypatch, variable, shape):
    """The digits experiment trains above 0.9 validation precision@1, and a resumed run starts from the saved
    weights of the loss (not fresh ones), then trains them on."""
    first, resumed, saved, at_resume, final = train_and_resume(experiment, tmp_path, monkeypatch, variable)
    assert float(first[-1]["val_precision_at_1"]) > 0.9, first
    assert [int(row["epoch"]) for row in resumed] == [1, 2, 3]
    assert saved.shape == shape
    np.testing.assert_array_equal(at_resume, saved)
    assert not np.allclose(final, saved)


def check_convergence(loss, tmp_path, epochs=2, **loss_options):
    """experiments/digits/params.json with `"loss": loss` (and `loss_options`; its triplet margin dropped) trains
    `epochs` epochs to a validation precision@1 above 0.9; returns the history rows."""
    from model.app.training import train
    from model.params import Params

    with open(os.path.join(ROOT, "experiments", "digits", "params.json")) as handle:
        values = {key: value for key, value in json.load(handle).items() if key != "margin"}
    params = Params.from_dict({**values, "loss": loss, "loss_options": loss_options, "num_epochs": epochs})
    rows = train(params, str(tmp_path / "run")).rows
    assert float(rows[-1]["val_precision_at_1"]) > 0.9, rows
    return rows
