"""Checks shared by the tests of the losses over the pairs of a batch (tests/test_loss_<name>.py: ntxent, supcon,
circle, margin, fast_ap).

Each test file holds its loss's float64 numpy reference (a loop over the pairs, written from the paper's formula and
PML's reduction; `reference_pairs`, `too_few_pairs` and `reduced` here are the parts they share) and calls these
checks with the loss's function, class, name, options and that reference: the value on random batches, edge batches
that give 0 and not NaN, the gradients against the reference's finite differences (in a batch, against references,
with a cross-batch memory, with a relation), references and relations, duplicates, zero vectors, float16 and
bfloat16 and NaN, the errors every pair loss shares, serialization, params.json, and pytorch-metric-learning itself
where installed.

Under JAX the loss runs as one compiled program (`compiled`), its gradient too (`compiled_value_and_gradient`):
JAX otherwise compiles each of its operations anew for every shape and dtype, which was the bulk of these files'
time there. The other backends run it eagerly, as before.
"""

import keras
import numpy as np
import pytest
from keras import ops

from model.losses import get_loss
from tests.backend_helpers import compiled_value_and_gradient, dtype_name
from tests.class_loss_checks import numeric_gradient

# The batches of `check_random_batch` (seed, size, number of classes), from two samples to 40.
RANDOM_BATCHES = [(0, 2, 2), (1, 9, 3), (2, 16, 5), (3, 40, 8)]
EDGE_LABELS = {
    "one_sample_classes": np.array([0, 0, 1, 2, 2, 3]),  # classes 1 and 3 have a single sample
    "no_positive_pair": np.arange(6),
    "one_class": np.zeros(5, int),
    "one_sample": np.array([4]),
    "two_distinct": np.array([0, 1]),
}
GRADIENT_CASES = ["batch", "references", "memory", "relation"]


def compiled(fn):
    """`fn` as one compiled program under JAX; as it is (eager) under the other backends."""
    if keras.backend.backend() != "jax":
        return fn
    import jax

    return jax.jit(fn)


def pairs(labels, ref_labels=None, remove_diagonal=True, relation=None):
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


def unit(x):
    """The rows of x scaled to norm 1 in float64 (a zero row stays 0)."""
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def reference_pairs(labels, embeddings, ref_labels=None, ref_embeddings=None, remove_diagonal=True, relation=None):
    """What a reference starts from: (labels [B], x [B, D] and r [R, D] the unit embeddings and references in
    float64, r = x when ref_embeddings is None, and `pairs`' positive [B, R] and negative [B, R])."""
    labels = np.reshape(labels, -1)
    x = unit(embeddings)
    r = x if ref_embeddings is None else unit(ref_embeddings)
    positive, negative = pairs(labels, None if ref_labels is None else np.reshape(ref_labels, -1), remove_diagonal,
                               relation)
    return labels, x, r, positive, negative


def too_few_pairs(positive, negative):
    """True where PML's GenericPairLoss gives 0: without a positive or without a negative pair, or with at most one
    of each."""
    num_positive, num_negative = positive.sum(), negative.sum()
    return num_positive == 0 or num_negative == 0 or (num_positive <= 1 and num_negative <= 1)


def reduced(losses, reduction):
    """PML's MeanReducer ("all": the mean of `losses`) or AvgNonZeroReducer ("nonzero": the mean of the positive
    ones); 0 without any."""
    losses = np.array(losses)
    if reduction == "nonzero":
        losses = losses[losses > 0]
    return float(losses.mean()) if len(losses) else 0.0


def batch(seed, size, num_classes, dim=5):
    """(labels [size] int, embeddings [size, dim] float32), random."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_classes, size=size), rng.normal(size=(size, dim)).astype(np.float32)


def check_random_batch(function, reference, seed, size, num_classes, settings):
    """On the random batch (seed, size, num_classes), `function(labels, embeddings, **options)` equals
    `reference(labels, embeddings, **options)` for each options of `settings`."""
    labels, embeddings = batch(seed, size, num_classes)
    # One program for every setting: under JAX each compiled program costs more than the loss itself.
    values = compiled(lambda e: [function(labels, e, **options) for options in settings])(embeddings)
    for options, got in zip(settings, values, strict=True):
        expected = reference(labels, embeddings, **options)
        np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-6, err_msg=str(options))


def check_edge_batch(function, reference, name, edge_labels=EDGE_LABELS):
    """The edge batch `name` of `edge_labels` gives the reference's finite value and finite gradients; every edge
    batch but the one of classes of one sample has no term that counts (no positive pair, no negative, no triplet):
    PML's 0, with a zero gradient."""
    labels = edge_labels[name]
    embeddings = np.random.default_rng(1).normal(size=(len(labels), 3)).astype(np.float32)
    value, grad = compiled_value_and_gradient(lambda e: function(labels, e), embeddings)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, reference(labels, embeddings), rtol=1e-5, atol=1e-6)
    if name != "one_sample_classes":
        assert value == 0.0 and not grad.any()


def check_gradients(case, function, reference, labels=EDGE_LABELS["one_sample_classes"], atol=1e-5,
                    held_weights=False):
    """The gradient of `function(labels, embeddings [N, 3], ...)` equals the reference's finite differences (rtol
    1e-3, `atol`), for a positive value, in one of GRADIENT_CASES: "batch"; "references", four others; "memory",
    the batch followed by three older embeddings (the gradient reaches the anchors and the references); "relation",
    a random [N, N] relation. `held_weights`: the reference takes `weights_at=(anchors, references)`, the point
    where it holds its weights, constants of the gradient (Circle's α)."""
    rng = np.random.default_rng(5)
    size = len(labels)
    embeddings = rng.normal(size=(size, 3))
    if case in ("batch", "relation"):
        relation = rng.choice([-1, 0, 1], size=(size, size)) if case == "relation" else None
        held = {"weights_at": (embeddings, None)} if held_weights else {}
        value, grad = compiled_value_and_gradient(lambda e: function(labels, e, relation=relation), embeddings)
        expected = numeric_gradient(lambda e: reference(labels, e, relation=relation, **held), embeddings)
    else:
        if case == "references":
            ref_labels, references, remove_diagonal = np.array([0, 1, 3, 5]), rng.normal(size=(4, 3)), False
        else:
            ref_labels = np.concatenate([labels, [0, 3, 5]])
            references, remove_diagonal = np.concatenate([embeddings, rng.normal(size=(3, 3))]), True
        both = np.concatenate([embeddings, references])
        held = {"weights_at": (both[:size], both[size:])} if held_weights else {}

        def library(x):
            return function(labels, x[:size], ref_labels=ref_labels, ref_embeddings=x[size:],
                            remove_diagonal=remove_diagonal)

        value, grad = compiled_value_and_gradient(library, both)
        expected = numeric_gradient(
            lambda x: reference(labels, x[:size], ref_labels=ref_labels, ref_embeddings=x[size:],
                                remove_diagonal=remove_diagonal, **held), both)
    assert value > 0
    np.testing.assert_allclose(grad, expected, rtol=1e-3, atol=atol)


def check_references_and_relations(function, reference, remove_diagonal):
    """Against 13 references (with classes the batch lacks), without and with a relation, the function equals the
    reference; the batch as its own references, self pairs removed, is exactly the in-batch loss; no references at
    all (R = 0) is no pair: 0."""
    rng = np.random.default_rng(7)
    labels, embeddings = batch(8, 10, 4)
    ref_labels = rng.integers(0, 6, size=13)
    references = rng.normal(size=(13, 5)).astype(np.float32)
    relation = rng.choice([-1, 0, 1], size=(10, 13))

    def losses(e):
        against = [function(labels, e, ref_labels=ref_labels, ref_embeddings=references,
                            remove_diagonal=remove_diagonal, relation=rel) for rel in (None, relation)]
        itself = function(labels, e, ref_labels=labels, ref_embeddings=e)
        empty = function(labels, e, ref_labels=np.zeros(0, int), ref_embeddings=np.zeros((0, 5), np.float32))
        return against, itself, function(labels, e), empty

    against, itself, in_batch, empty = compiled(losses)(embeddings)
    for rel, got in zip((None, relation), against, strict=True):
        expected = reference(labels, embeddings, ref_labels=ref_labels, ref_embeddings=references,
                             remove_diagonal=remove_diagonal, relation=rel)
        np.testing.assert_allclose(float(got), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(float(itself), float(in_batch), rtol=1e-6)
    assert float(empty) == 0.0


def check_duplicates_zero_vectors_low_precision_and_nan(function, size=10, low_precision_options=None):
    """A batch with two equal embeddings (zero distance) and a zero embedding, labels [B, 1] int64: a finite value
    and gradient; float16 and bfloat16 embeddings (and the options `low_precision_options(dtype)`, if given): a
    float32 loss equal to that of the same rounded inputs in float32; a NaN in an embedding: a NaN loss."""
    labels, embeddings = batch(4, size, 3)
    embeddings[1] = embeddings[0]
    embeddings[2] = 0.0
    value, grad = compiled_value_and_gradient(lambda e: function(labels.reshape(-1, 1).astype(np.int64), e),
                                              embeddings)
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    dtypes = ("float16", "bfloat16")
    options = [low_precision_options(dtype) if low_precision_options else {} for dtype in dtypes]
    with_nan = embeddings.copy()
    with_nan[3, 0] = np.nan

    def losses(lows, with_nan):
        rounded = [(function(labels, low, **o), function(labels, ops.cast(low, "float32"), **o))
                   for low, o in zip(lows, options, strict=True)]
        return rounded, function(labels, with_nan)

    # One program for all: under JAX each compiled program costs more than the loss itself.
    rounded, nan = compiled(losses)([ops.cast(embeddings, dtype) for dtype in dtypes], with_nan)
    for result, in_float32 in rounded:
        assert dtype_name(result) == "float32"
        np.testing.assert_allclose(float(result), float(in_float32), rtol=1e-6)
    assert np.isnan(float(nan))


def check_bad_option(function, loss_class, name, values, message):
    """Each of `values` as the option `name`: a ValueError matching `message` from the function, and one naming the
    option from the class (when `loss_class` is given)."""
    labels, embeddings = batch(0, 6, 2)
    for value in values:
        with pytest.raises(ValueError, match=message):
            function(labels, embeddings, **{name: value})
        if loss_class is not None:
            with pytest.raises(ValueError, match=name):
                loss_class(**{name: value})


def check_shared_errors(function, reduction=True):
    """Labels and embeddings of different lengths are refused, naming both; so is an unknown reduction (where the
    loss takes one)."""
    labels, embeddings = batch(0, 6, 2)
    if reduction:
        with pytest.raises(ValueError, match="reduction must be one of"):
            function(labels, embeddings, reduction="mean")
    with pytest.raises(ValueError, match="labels has 5 labels but embeddings has 6 rows"):
        function(labels[:5], embeddings)


def check_serialization(name, loss_class, reference, options, defaults, size=12):
    """get_loss(name, **options) is a `loss_class` that survives a Keras serialize/deserialize round trip with every
    option and computes the reference on a batch of `size`; the class's defaults are `defaults` (its attributes,
    and its config's entries of the same names)."""
    loss = get_loss(name, **options, l2_normalize=True)
    assert isinstance(loss, loss_class)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is loss_class and restored.get_config() == loss.get_config()
    config = restored.get_config()
    assert {key: config[key] for key in options} == options
    labels, embeddings = batch(3, size, 4)
    np.testing.assert_allclose(float(compiled(lambda e: restored(labels, e))(embeddings)),
                               reference(labels, embeddings, **options), rtol=1e-5)
    default = loss_class()
    for key, value in defaults.items():
        assert getattr(default, key) == value, key
        assert default.get_config().get(key, value) == value, key


def check_params(name, loss_class, options, bad_options, **params):
    """params.json's "loss": name with "loss_options": options (and `params`' other keys) builds a `loss_class` with
    those options; `bad_options` are refused, naming the option."""
    from model.app import adapter
    from model.params import Params

    loss = adapter.loss(Params.from_dict({"loss": name, **params, "loss_options": options}), 16)
    assert isinstance(loss, loss_class)
    assert {key: getattr(loss, key) for key in options} == options
    with pytest.raises(ValueError, match="|".join(bad_options)):
        adapter.loss(Params.from_dict({"loss": name, "loss_options": bad_options}), 16)


def check_equals_pml(function, pml_name, pml_options, size, num_classes, seed=None, with_references=False,
                     grad_atol=1e-6, grad_atol_scaled=False):
    """Value (rtol 1e-5, atol 1e-7) and gradient (rtol 1e-5, `grad_atol`, times the largest entry of PML's gradient
    if `grad_atol_scaled`) equal pytorch-metric-learning 2.x's `pml_name(**pml_options)` in float64, on the random
    batch (seed, default `size`; size, num_classes), with 7 references as ref_emb (`remove_diagonal=False`, as PML
    pairs ref_emb) if `with_references`; returns the value."""
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning.losses")
    seed = size if seed is None else seed
    rng = np.random.default_rng(seed)
    labels, embeddings = batch(seed, size, num_classes)
    ref_labels, references = rng.integers(0, num_classes + 1, size=7), rng.normal(size=(7, 5)).astype(np.float32)
    x = np.concatenate([embeddings, references]) if with_references else embeddings
    tensor = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    extra = (None, tensor[size:], torch.tensor(ref_labels)) if with_references else ()
    expected = getattr(pml, pml_name)(**pml_options)(tensor[:size], torch.tensor(labels), *extra)
    expected_grad = torch.autograd.grad(expected, tensor)[0].numpy() if expected.requires_grad else 0 * x

    def library(v):
        if not with_references:
            return function(labels, v)
        return function(labels, v[:size], ref_labels=ref_labels, ref_embeddings=v[size:], remove_diagonal=False)

    value, grad = compiled_value_and_gradient(library, x)
    np.testing.assert_allclose(value, float(expected.detach()), rtol=1e-5, atol=1e-7)
    atol = grad_atol * np.abs(expected_grad).max() if grad_atol_scaled else grad_atol
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-5, atol=atol)
    return value
