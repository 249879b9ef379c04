"""Anchors against a reference set: every pair and triplet loss against float64 loops, on any backend.

The anchors are the rows of `embeddings`, the positives and negatives rows of `ref_embeddings`
(the convention of `keras.losses.circle`). The references of tests/reference_losses.py loop over
(anchor, reference) pairs and triplets; here the library must match them in value and in gradient
with respect to the anchors, with the batch first in the references or not (`remove_diagonal`),
classes only the references hold, anchors without any positive, copies of anchors, R = 0 and
R >> B. Also here: the checks of the inputs' shapes, NaN propagation, and eager calls without
retracing. Runs under every Keras backend (see tests/backend_helpers.py).
"""

import logging

import keras
import numpy as np
import pytest
from keras import ops

from model.losses import contrastive_loss, lifted_struct_loss, multi_similarity_loss
from model.losses.statistics import embedding_statistics
from model.triplet_loss import (
    batch_all_triplet_loss,
    batch_hard_distances,
    batch_hard_triplet_loss,
    batch_semihard_triplet_loss,
)
from tests import reference_losses as ref
from tests.backend_helpers import value_and_gradient

MARGIN = 0.5
DIM = 4


def _as_list(outputs):
    return list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]


# Squared distances of DIM = 4 normal embeddings are around 8: a margin of 6 on D² leaves some negatives inside it.
CONTRASTIVE_OPTIONS = {
    "contrastive_nonzero": {"margin": 1.5, "hinge": "distance", "reduction": "nonzero"},
    "contrastive_squared_hinge": {"margin": 6.0, "hinge": "squared_distance", "reduction": "all"},
    "contrastive_squared_hinge_nonzero": {"margin": 6.0, "hinge": "squared_distance", "reduction": "nonzero"},
}
ALL_POSITIVES_OPTIONS = {
    "batch_hard_all_positives_squared": {"margin": 2.0, "squared": True, "reduction": "all"},
    "batch_hard_all_positives_nonzero": {"margin": MARGIN, "squared": False, "reduction": "nonzero"},
    "batch_hard_all_positives_soft": {"margin": "soft", "squared": False, "reduction": "all"},
}

# name: (library, reference), each (labels, embeddings, ref_labels, ref_embeddings, remove_diagonal) -> [loss, *stats].
LOSSES = {
    "batch_all": (
        lambda y, e, ry, re, rd: batch_all_triplet_loss(
            y, e, MARGIN, ref_labels=ry, ref_embeddings=re, remove_diagonal=rd
        ),
        lambda y, e, ry, re, rd: ref.batch_all_refs(y, e, ry, re, MARGIN, remove_diagonal=rd),
    ),
    "batch_all_squared": (
        lambda y, e, ry, re, rd: batch_all_triplet_loss(
            y, e, MARGIN, squared=True, ref_labels=ry, ref_embeddings=re, remove_diagonal=rd
        ),
        lambda y, e, ry, re, rd: ref.batch_all_refs(y, e, ry, re, MARGIN, squared=True, remove_diagonal=rd),
    ),
    "batch_hard": (
        lambda y, e, ry, re, rd: batch_hard_triplet_loss(
            y, e, MARGIN, ref_labels=ry, ref_embeddings=re, remove_diagonal=rd
        ),
        lambda y, e, ry, re, rd: ref.batch_hard_refs(y, e, ry, re, MARGIN, remove_diagonal=rd),
    ),
    "batch_hard_soft": (
        lambda y, e, ry, re, rd: batch_hard_triplet_loss(
            y, e, "soft", ref_labels=ry, ref_embeddings=re, remove_diagonal=rd
        ),
        lambda y, e, ry, re, rd: ref.batch_hard_refs(y, e, ry, re, "soft", remove_diagonal=rd),
    ),
    "batch_semihard": (
        lambda y, e, ry, re, rd: batch_semihard_triplet_loss(
            y, e, MARGIN, ref_labels=ry, ref_embeddings=re, remove_diagonal=rd
        ),
        lambda y, e, ry, re, rd: ref.batch_semihard_refs(y, e, ry, re, MARGIN, remove_diagonal=rd),
    ),
    "contrastive": (
        lambda y, e, ry, re, rd: contrastive_loss(y, e, 1.5, ref_labels=ry, ref_embeddings=re, remove_diagonal=rd),
        lambda y, e, ry, re, rd: ref.contrastive_refs(y, e, ry, re, 1.5, remove_diagonal=rd),
    ),
    "lifted": (
        lambda y, e, ry, re, rd: lifted_struct_loss(y, e, 1.0, ref_labels=ry, ref_embeddings=re, remove_diagonal=rd),
        lambda y, e, ry, re, rd: ref.lifted_refs(y, e, ry, re, 1.0, remove_diagonal=rd),
    ),
    "multi_similarity": (
        lambda y, e, ry, re, rd: multi_similarity_loss(y, e, ref_labels=ry, ref_embeddings=re, remove_diagonal=rd),
        lambda y, e, ry, re, rd: ref.multi_similarity_refs(y, e, ry, re, remove_diagonal=rd),
    ),
    # The options of the PyTorch online-metric-learning project (tests/reference_losses.py writes them out).
    **{
        name: (
            lambda y, e, ry, re, rd, options=options: contrastive_loss(
                y, e, options["margin"], hinge=options["hinge"], reduction=options["reduction"], ref_labels=ry,
                ref_embeddings=re, remove_diagonal=rd,
            ),
            lambda y, e, ry, re, rd, options=options: ref.contrastive_options_refs(y, e, ry, re, **options,
                                                                                   remove_diagonal=rd),
        )
        for name, options in CONTRASTIVE_OPTIONS.items()
    },
    **{
        name: (
            lambda y, e, ry, re, rd, options=options: batch_hard_triplet_loss(
                y, e, options["margin"], options["squared"], positives="all", reduction=options["reduction"],
                ref_labels=ry, ref_embeddings=re, remove_diagonal=rd,
            ),
            lambda y, e, ry, re, rd, options=options: ref.batch_hard_all_positives_refs(y, e, ry, re, **options,
                                                                                        remove_diagonal=rd),
        )
        for name, options in ALL_POSITIVES_OPTIONS.items()
    },
    "batch_all_reduction_all_squared": (
        lambda y, e, ry, re, rd: batch_all_triplet_loss(
            y, e, MARGIN, squared=True, reduction="all", ref_labels=ry, ref_embeddings=re, remove_diagonal=rd
        ),
        lambda y, e, ry, re, rd: ref.batch_all_options_refs(y, e, ry, re, MARGIN, True, "all", remove_diagonal=rd),
    ),
    "batch_hard_nonzero": (
        lambda y, e, ry, re, rd: batch_hard_triplet_loss(
            y, e, MARGIN, reduction="nonzero", ref_labels=ry, ref_embeddings=re, remove_diagonal=rd
        ),
        lambda y, e, ry, re, rd: ref.batch_hard_options_refs(y, e, ry, re, MARGIN, False, "nonzero",
                                                             remove_diagonal=rd),
    ),
    "lifted_nonzero": (
        lambda y, e, ry, re, rd: lifted_struct_loss(
            y, e, 1.0, reduction="nonzero", ref_labels=ry, ref_embeddings=re, remove_diagonal=rd
        ),
        lambda y, e, ry, re, rd: ref.lifted_refs(y, e, ry, re, 1.0, remove_diagonal=rd, reduction="nonzero"),
    ),
    "multi_similarity_nonzero": (
        lambda y, e, ry, re, rd: multi_similarity_loss(
            y, e, reduction="nonzero", ref_labels=ry, ref_embeddings=re, remove_diagonal=rd
        ),
        lambda y, e, ry, re, rd: ref.multi_similarity_refs(y, e, ry, re, remove_diagonal=rd, reduction="nonzero"),
    ),
    "batch_semihard_nonzero": (
        lambda y, e, ry, re, rd: batch_semihard_triplet_loss(
            y, e, MARGIN, reduction="nonzero", ref_labels=ry, ref_embeddings=re, remove_diagonal=rd
        ),
        lambda y, e, ry, re, rd: ref.batch_semihard_options_refs(y, e, ry, re, MARGIN, False, "nonzero",
                                                                 remove_diagonal=rd),
    ),
}
# Without references, these options' loops are their reference loops with the batch as references.
OPTION_NAMES = [*CONTRASTIVE_OPTIONS, *ALL_POSITIVES_OPTIONS, "batch_all_reduction_all_squared", "batch_hard_nonzero",
                "batch_semihard_nonzero", "lifted_nonzero", "multi_similarity_nonzero"]

# The in-batch references of the same losses, for the case "references = the batch".
IN_BATCH = {
    "batch_all": lambda y, e: ref.batch_all(y, e, MARGIN),
    "batch_all_squared": lambda y, e: ref.batch_all(y, e, MARGIN, squared=True),
    "batch_hard": lambda y, e: ref.batch_hard(y, e, MARGIN),
    "batch_hard_soft": lambda y, e: ref.batch_hard(y, e, "soft"),
    "batch_semihard": lambda y, e: ref.batch_semihard(y, e, MARGIN),
    "contrastive": lambda y, e: ref.contrastive(y, e, 1.5),
    "lifted": lambda y, e: ref.lifted(y, e, 1.0),
    "multi_similarity": lambda y, e: ref.multi_similarity(y, e),
    **{name: lambda y, e, name=name: _as_list(LOSSES[name][1](y, e, y, e, True)) for name in OPTION_NAMES},
}


def _memory_case(seed, batch_size=6, memory_size=20, batch_classes=3, memory_classes=6):
    """A batch and a memory: labels [B], embeddings [B, D], memory labels [M], memory [M, D].

    The memory holds classes the batch lacks (>= batch_classes), and an exact copy of anchor 0
    (with its label) at row 3: a real positive of anchor 0 at distance 0.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, batch_classes, size=batch_size)
    embeddings = rng.normal(size=(batch_size, DIM)).astype(np.float32)
    memory_labels = rng.integers(0, memory_classes, size=memory_size)
    memory = rng.normal(size=(memory_size, DIM)).astype(np.float32)
    memory_labels[3], memory[3] = labels[0], embeddings[0]
    return labels, embeddings, memory_labels, memory


def _check_values(name, labels, embeddings, ref_labels, ref_embeddings, remove_diagonal, atol=1e-5):
    library, reference = LOSSES[name]
    got = [float(x) for x in _as_list(library(labels, embeddings, ref_labels, ref_embeddings, remove_diagonal))]
    expected = _as_list(reference(labels, embeddings, ref_labels, ref_embeddings, remove_diagonal))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=atol, err_msg=name)
    return expected


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("name", LOSSES)
def test_batch_then_memory_matches_loops(name, seed):
    # The usual cross-batch memory call: the batch first, then the memory; remove_diagonal=True.
    labels, embeddings, memory_labels, memory = _memory_case(seed)
    ref_labels = np.concatenate([labels, memory_labels])
    ref_embeddings = np.concatenate([embeddings, memory])
    # A copy's distance comes from the expansion ||a||² - 2a·r + ||r||² in float32: a residue of
    # ~1e-7 of ||a||², ~1e-3 after the square root, where the loops compute exactly 0.
    expected = _check_values(name, labels, embeddings, ref_labels, ref_embeddings, True, atol=2e-3)
    assert expected[0] > 0.0  # the case has pairs and triplets that matter


@pytest.mark.parametrize("remove_diagonal", [True, False])
@pytest.mark.parametrize("name", LOSSES)
def test_memory_alone_matches_loops(name, remove_diagonal):
    # References that do not start with the batch; remove_diagonal=True then drops the pairs (i, i) all the same.
    labels, embeddings, memory_labels, memory = _memory_case(3)
    memory[3] += 0.5  # no copy of an anchor here: distances away from 0
    _check_values(name, labels, embeddings, memory_labels, memory, remove_diagonal)


@pytest.mark.parametrize("name", LOSSES)
def test_many_more_references_than_anchors(name):
    labels, embeddings, memory_labels, memory = _memory_case(4, batch_size=3, memory_size=120, memory_classes=10)
    memory[3] += 0.5
    ref_labels, ref_embeddings = np.concatenate([labels, memory_labels]), np.concatenate([embeddings, memory])
    _check_values(name, labels, embeddings, ref_labels, ref_embeddings, True)


@pytest.mark.parametrize("name", LOSSES)
def test_references_equal_to_the_batch_give_the_in_batch_loss(name):
    rng = np.random.default_rng(5)
    labels, embeddings = rng.integers(0, 3, size=9), rng.normal(size=(9, DIM)).astype(np.float32)
    library, _ = LOSSES[name]
    in_batch = [float(x) for x in _as_list(library(labels, embeddings, None, None, True))]
    with_refs = [float(x) for x in _as_list(library(labels, embeddings, labels, embeddings, True))]
    expected = _as_list(IN_BATCH[name](labels, embeddings))
    np.testing.assert_allclose(in_batch, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(with_refs, expected, rtol=1e-4, atol=1e-5)
    # remove_diagonal=False: every anchor is its own positive, at distance 0. Not for the "nonzero" reductions:
    # float32 leaves a residue of ~1e-7 on those distances, so their zero terms count as non-zero there.
    if "nonzero" not in name:
        _check_values(name, labels, embeddings, labels, embeddings, False, atol=2e-3)


@pytest.mark.parametrize("name", LOSSES)
def test_anchors_without_positive_are_left_out(name):
    # Anchors 0 and 1 have classes that no reference has (but themselves): they add nothing, and no NaN.
    labels, embeddings, memory_labels, memory = _memory_case(6)
    labels[:2] = [7, 8]
    memory[3] += 0.5
    ref_labels, ref_embeddings = np.concatenate([labels, memory_labels]), np.concatenate([embeddings, memory])
    library, _ = LOSSES[name]
    value = float(_as_list(library(labels, embeddings, ref_labels, ref_embeddings, True))[0])
    assert np.isfinite(value)
    _check_values(name, labels, embeddings, ref_labels, ref_embeddings, True)


@pytest.mark.parametrize("remove_diagonal", [True, False])
@pytest.mark.parametrize("name", LOSSES)
def test_empty_reference_set_gives_zero(name, remove_diagonal):
    labels, embeddings, _, _ = _memory_case(7)
    library, _ = LOSSES[name]
    empty_labels, empty = np.zeros(0, np.int64), np.zeros((0, DIM), np.float32)
    value, gradient = value_and_gradient(lambda e: library(labels, e, empty_labels, empty, remove_diagonal), embeddings)
    assert value == 0.0
    assert np.all(gradient == 0.0)
    outputs = [float(x) for x in _as_list(library(labels, embeddings, empty_labels, empty, remove_diagonal))]
    assert outputs == [0.0] * len(outputs)


def test_traced_function_with_unknown_sizes_matches_eager_and_handles_empty_references():
    # Inside a graph that knows neither B nor R, the shapes are checked at run time by the ops
    # alone, and an empty reference set must still give 0 (not -inf from an empty maximum).
    if keras.backend.backend() != "tensorflow":
        pytest.skip("graphs with unknown sizes are a TensorFlow matter")
    import tensorflow as tf

    spec = [tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, DIM], tf.float32)] * 2

    @tf.function(input_signature=spec)
    def all_losses(labels, embeddings, ref_labels, ref_embeddings):
        return [
            _as_list(library(labels, embeddings, ref_labels, ref_embeddings, True)) for library, _ in LOSSES.values()
        ]

    labels, embeddings, memory_labels, memory = _memory_case(14)
    for ref_labels, ref_embeddings in ((memory_labels, memory), (memory_labels[:0], memory[:0])):
        traced = all_losses(labels, embeddings, ref_labels, ref_embeddings)
        for (name, (library, _)), outputs in zip(LOSSES.items(), traced, strict=True):
            eager = _as_list(library(labels, embeddings, ref_labels, ref_embeddings, True))
            np.testing.assert_allclose([float(x) for x in outputs], [float(x) for x in eager], rtol=1e-6, err_msg=name)
            if len(ref_labels) == 0:
                assert [float(x) for x in outputs] == [0.0] * len(outputs), name


def _finite_differences(fn, x, eps=1e-6):
    x = x.astype(np.float64)
    gradient = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        gradient[index] = (fn(x + step) - fn(x - step)) / (2 * eps)
    return gradient


@pytest.mark.parametrize("name", LOSSES)
def test_gradient_through_batch_and_memory_matches_finite_differences(name):
    # References = [anchors; memory] built from the anchors: the gradient flows through both places.
    labels, embeddings, memory_labels, memory = _memory_case(8, batch_size=5, memory_size=10, memory_classes=4)
    embeddings, memory = embeddings[:, :3], memory[:, :3] + 0.5  # D = 3 and no copy: away from kinks and zeros
    ref_labels = np.concatenate([labels, memory_labels])
    library, reference = LOSSES[name]
    _, gradient = value_and_gradient(
        lambda e: library(labels, e, ref_labels, ops.concatenate([e, ops.convert_to_tensor(memory)]), True), embeddings
    )
    expected = _finite_differences(
        lambda e: _as_list(reference(labels, e, ref_labels, np.concatenate([e, memory]), True))[0], embeddings
    )
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(gradient, expected, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("name", LOSSES)
def test_gradient_against_a_fixed_memory_matches_finite_differences(name):
    labels, embeddings, memory_labels, memory = _memory_case(9, batch_size=5, memory_size=14, memory_classes=4)
    embeddings, memory = embeddings[:, :3], memory[:, :3] + 0.5
    library, reference = LOSSES[name]
    _, gradient = value_and_gradient(lambda e: library(labels, e, memory_labels, memory, False), embeddings)
    expected = _finite_differences(
        lambda e: _as_list(reference(labels, e, memory_labels, memory, False))[0], embeddings
    )
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(gradient, expected, rtol=2e-3, atol=2e-4)


@pytest.mark.parametrize("name", LOSSES)
def test_copies_of_anchors_give_finite_gradients(name):
    labels, embeddings, memory_labels, memory = _memory_case(10)
    memory[5], memory_labels[5] = embeddings[1], labels[1] + 1  # a negative at distance 0
    ref_labels = np.concatenate([labels, memory_labels])
    library, _ = LOSSES[name]
    value, gradient = value_and_gradient(
        lambda e: library(labels, e, ref_labels, ops.concatenate([e, ops.convert_to_tensor(memory)]), True), embeddings
    )
    assert np.isfinite(value) and np.all(np.isfinite(gradient))


def test_batch_hard_distances_and_statistics_with_references():
    labels, embeddings, memory_labels, memory = _memory_case(11)
    ref_labels, ref_embeddings = np.concatenate([labels, memory_labels]), np.concatenate([embeddings, memory])
    hardest_positive, hardest_negative, valid = batch_hard_distances(
        labels, embeddings, ref_labels=ref_labels, ref_embeddings=ref_embeddings
    )
    stats = embedding_statistics(labels, embeddings, ref_labels=ref_labels, ref_embeddings=ref_embeddings)
    d = ref.cross_distance_matrix(embeddings, ref_embeddings)
    positives, negatives, pairs = [], [], []
    for a in range(len(labels)):
        pos = [d[a, j] for j in range(len(ref_labels)) if j != a and ref_labels[j] == labels[a]]
        neg = [d[a, j] for j in range(len(ref_labels)) if ref_labels[j] != labels[a]]
        pairs += [d[a, j] for j in range(len(ref_labels)) if j != a]
        assert bool(ops.convert_to_numpy(valid)[a]) == bool(pos and neg)
        if pos and neg:
            positives.append(max(pos))
            negatives.append(min(neg))
            assert float(hardest_positive[a]) == pytest.approx(max(pos), abs=2e-3)  # a copy: see above
            assert float(hardest_negative[a]) == pytest.approx(min(neg), rel=1e-5)
    assert float(stats["hardest_positive_distance"]) == pytest.approx(np.mean(positives), rel=1e-5)
    assert float(stats["hardest_negative_distance"]) == pytest.approx(np.mean(negatives), rel=1e-5)
    assert float(stats["mean_distance"]) == pytest.approx(np.mean(pairs), rel=1e-4)
    assert float(stats["embedding_norm"]) == pytest.approx(np.linalg.norm(embeddings, axis=1).mean(), rel=1e-5)


# Bad inputs: each must name the argument at fault.
BAD_INPUTS = [
    ({"labels": np.zeros((4, 2), int)}, r"labels must be \[N\] or \[N, 1\].*\(4, 2\)"),
    ({"labels": np.zeros(3, int)}, "labels has 3 labels but embeddings has 4 rows"),
    ({"labels": np.zeros(0, int), "embeddings": np.zeros((0, DIM), np.float32)}, "empty batch"),
    ({"embeddings": np.zeros(4, np.float32)}, r"embeddings must be a \[N, D\] matrix.*\(4,\)"),
    ({"ref_labels": np.zeros(5, int)}, "ref_labels was given without ref_embeddings"),
    ({"ref_embeddings": np.zeros((5, DIM), np.float32)}, "ref_embeddings was given without ref_labels"),
    (
        {"ref_labels": np.zeros(5, int), "ref_embeddings": np.zeros((6, DIM), np.float32)},
        "ref_labels has 5 labels but ref_embeddings has 6 rows",
    ),
    (
        {"ref_labels": np.zeros(5, int), "ref_embeddings": np.zeros((5, DIM + 1), np.float32)},
        f"ref_embeddings must have the dimension D = {DIM} of embeddings",
    ),
    (
        {"ref_labels": np.zeros((5, 2), int), "ref_embeddings": np.zeros((5, DIM), np.float32)},
        r"ref_labels must be \[N\] or \[N, 1\]",
    ),
    ({"ref_labels": np.zeros(5, int), "ref_embeddings": np.zeros(5, np.float32)}, r"ref_embeddings must be a \[N, D\]"),
]


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("bad,message", BAD_INPUTS)
def test_bad_shapes_are_rejected_naming_the_argument(name, bad, message):
    inputs = {"labels": np.array([0, 0, 1, 1]), "embeddings": np.ones((4, DIM), np.float32)}
    inputs.update({"ref_labels": None, "ref_embeddings": None}, **bad)
    library, _ = LOSSES[name]
    with pytest.raises(ValueError, match=message):
        library(inputs["labels"], inputs["embeddings"], inputs["ref_labels"], inputs["ref_embeddings"], True)


@pytest.mark.parametrize("value", [np.nan, np.inf])
@pytest.mark.parametrize("where", ["anchor", "reference"])
@pytest.mark.parametrize("name", LOSSES)
def test_non_finite_embeddings_give_nan(name, where, value):
    # A diverged run must not look finite: mining drops NaN pairs (every comparison with NaN is False).
    labels, embeddings, memory_labels, memory = _memory_case(12)
    (embeddings if where == "anchor" else memory)[2] = value
    library, _ = LOSSES[name]
    outputs = _as_list(library(labels, embeddings, memory_labels, memory, False))
    assert all(np.isnan(float(x)) for x in outputs)
    if where == "anchor":
        in_batch = _as_list(library(labels, embeddings, None, None, True))
        assert all(np.isnan(float(x)) for x in in_batch)


def test_eager_calls_do_not_retrace():
    # A custom training loop without tf.function: TensorFlow warns when a function is traced anew
    # at every call ("triggered tf.function retracing"), as tf.vectorized_map did inside the losses.
    if keras.backend.backend() != "tensorflow":
        pytest.skip("tf.function retracing is a TensorFlow matter")

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    handler = Records()
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        labels, embeddings, memory_labels, memory = _memory_case(13)
        for call in range(10):
            batch = embeddings + np.float32(call)  # new values at every step, as in training
            batch_all_triplet_loss(labels, batch, MARGIN)
            batch_semihard_triplet_loss(labels, batch, MARGIN, ref_labels=memory_labels, ref_embeddings=memory)
    finally:
        logger.removeHandler(handler)
    assert not [message for message in handler.messages if "retracing" in message]


def test_jax_training_step_with_a_memory_learns():
    # The README's example: a functional JAX training step, a memory of earlier embeddings as references.
    if keras.backend.backend() != "jax":
        pytest.skip("the JAX training step runs under KERAS_BACKEND=jax")
    import jax

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(4, 10)) * 2
    labels = np.repeat(np.arange(4), 8)
    images = (centers[labels] + rng.normal(size=(32, 10))).astype(np.float32)
    memory_labels = np.repeat(np.arange(4), 16)
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(8)])
    memory = model(centers[memory_labels] + rng.normal(size=(64, 10)))  # embeddings of earlier batches
    optimizer = keras.optimizers.Adam(0.01)
    optimizer.build(model.trainable_variables)

    def loss_fn(trainable, non_trainable, images, labels, memory, memory_labels):
        embeddings, non_trainable = model.stateless_call(trainable, non_trainable, images, training=True)
        loss = batch_hard_triplet_loss(
            labels,
            embeddings,
            0.5,
            ref_labels=ops.concatenate([labels, memory_labels]),
            ref_embeddings=ops.concatenate([embeddings, memory]),
        )
        return loss, non_trainable

    @jax.jit
    def train_step(state, images, labels, memory, memory_labels):
        trainable, non_trainable, optimizer_variables = state
        (loss, non_trainable), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trainable, non_trainable, images, labels, memory, memory_labels
        )
        trainable, optimizer_variables = optimizer.stateless_apply(optimizer_variables, grads, trainable)
        return loss, (trainable, non_trainable, optimizer_variables)

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in optimizer.variables],
    )
    losses = []
    for _ in range(30):
        loss, state = train_step(state, images, labels, memory, memory_labels)
        losses.append(float(loss))
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]
