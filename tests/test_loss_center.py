"""The center loss (model/losses/center.py) against numpy loops written from Wen et al. 2016: its value, its
gradients (finite differences of the reference), the paper's update of the centres, and the errors. Runs under
every Keras backend (the Makefile's test-backends)."""

import keras
import numpy as np
import pytest

from model.losses import CenterLoss, center_loss, center_update
from model.params import Params
from tests.backend_helpers import dtype_name, value_and_gradient


def reference_loss(labels, embeddings, centers):
    """(1/B) sum_i ||x_i - c_{y_i}||², a loop in float64."""
    total = 0.0
    for label, x in zip(labels, np.asarray(embeddings, np.float64), strict=True):
        total += np.sum((x - centers[label]) ** 2)
    return total / len(labels)


def reference_update(labels, embeddings, centers, rate):
    """Wen et al.'s Algorithm 1: c_j -= rate · sum_{y_i = j} (c_j - x_i) / (1 + n_j), one class at a time."""
    new = np.array(centers, np.float64)
    for j in range(len(centers)):
        members = [x for label, x in zip(labels, embeddings, strict=True) if label == j]
        if members:
            delta = sum(centers[j] - x for x in members) / (1 + len(members))
            new[j] = centers[j] - rate * delta
    return new


def finite_differences(fn, x, step=1e-6):
    x = np.array(x, np.float64)
    gradient = np.zeros_like(x)
    for index in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[index] += step
        down[index] -= step
        gradient[index] = (fn(up) - fn(down)) / (2 * step)
    return gradient


def batch(seed=0, size=10, classes=4, dim=3):
    rng = np.random.default_rng(seed)
    labels = np.concatenate([[0, 0, 0, 1], rng.integers(0, classes - 1, size=size - 4)])  # class 3 absent
    labels[-1] = 2 if (labels == 2).sum() != 1 else labels[-1]
    return labels, rng.normal(size=(size, dim)).astype(np.float32), rng.normal(size=(classes, dim)).astype(np.float32)


def test_value_and_gradients_equal_the_numpy_reference():
    labels, embeddings, centers = batch()
    value, gradient = value_and_gradient(lambda x: center_loss(labels, x, centers), embeddings)
    assert value == pytest.approx(reference_loss(labels, embeddings, centers), rel=1e-5)
    expected = finite_differences(lambda x: reference_loss(labels, x, centers), embeddings)
    np.testing.assert_allclose(gradient, expected, rtol=1e-4, atol=1e-5)
    _, to_centers = value_and_gradient(lambda c: center_loss(labels, embeddings, c), centers)
    expected = finite_differences(lambda c: reference_loss(labels, embeddings, c), centers)
    np.testing.assert_allclose(to_centers, expected, rtol=1e-4, atol=1e-5)
    assert np.all(to_centers[3] == 0)  # a class absent from the batch


def test_the_update_is_the_papers_rule():
    labels, embeddings, centers = batch(1)
    for rate in (0.5, 1.0, 0.1):
        updated = keras.ops.convert_to_numpy(center_update(labels, embeddings, centers, rate))
        np.testing.assert_allclose(updated, reference_update(labels, embeddings, centers, rate), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(updated[3], centers[3])  # absent: unchanged
    # Fed the same batch again and again, each centre goes to the mean of its class in the batch.
    moving = centers
    for _ in range(200):
        moving = keras.ops.convert_to_numpy(center_update(labels, embeddings, moving, 0.5))
    for j in np.unique(labels):
        np.testing.assert_allclose(moving[j], embeddings[labels == j].mean(axis=0), atol=1e-4)


def test_the_keras_class_computes_updates_and_round_trips():
    labels, embeddings, _ = batch(2)
    keras.utils.set_random_seed(3)
    loss = CenterLoss(num_classes=4, embedding_size=3, rate=0.5)
    layer = loss.centers_layer
    assert not layer.trainable_weights and [tuple(w.shape) for w in layer.non_trainable_weights] == [(4, 3)]
    centers = keras.ops.convert_to_numpy(layer.centers)
    value, stats = loss.compute(labels, embeddings)
    assert float(value) == pytest.approx(reference_loss(labels, embeddings, centers), rel=1e-5) and stats == {}
    assert float(loss(labels, embeddings)) == pytest.approx(float(value), rel=1e-6)
    loss.update(labels, embeddings)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer.centers),
                               reference_update(labels, embeddings, centers, 0.5), rtol=1e-5, atol=1e-6)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert (again.rate, again.centers_layer.num_classes, again.centers_layer.embedding_size) == (0.5, 4, 3)
    assert loss.trained_layers == {"centers_layer": layer}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_embeddings_are_computed_in_float32(dtype):
    labels, embeddings, centers = batch(4)
    value = center_loss(labels, keras.ops.cast(embeddings, dtype), centers)
    assert dtype_name(value) == "float32"
    rounded = keras.ops.convert_to_numpy(keras.ops.cast(keras.ops.cast(embeddings, dtype), "float32"))
    assert float(value) == pytest.approx(reference_loss(labels, rounded, centers), rel=1e-4)


def test_a_diverged_embedding_gives_nan():
    labels, embeddings, centers = batch(5)
    embeddings[2, 1] = np.inf
    assert np.isnan(float(center_loss(labels, embeddings, centers)))


def test_bad_inputs_are_clear_errors():
    labels, embeddings, centers = batch(6)
    with pytest.raises(ValueError, match=r"centers must be \[num_classes, D\] with the embeddings' D = 3, got shape "
                                         r"\(4, 5\)"):
        center_loss(labels, embeddings, np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes = 4\) \(one centre per class\), got 7"):
        center_loss(np.where(labels == 1, 7, labels), embeddings, centers)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, num_classes = 4\)"):
        center_update(np.full_like(labels, -1), embeddings, centers)
    with pytest.raises(ValueError, match=r'key "rate" has value 0; expected a number in \(0, 1\]'):
        CenterLoss(4, 3, rate=0)


@pytest.mark.parametrize("values, message", [
    ({"center_loss": {"weight": 0}}, r'key "center_loss\.weight" has value 0; expected a number > 0'),
    ({"center_loss": {"rate": 0.5}}, r'key "center_loss" has value .*; expected an object \{"weight": λ, "rate": α\}'),
    ({"center_loss": {"weight": 5e-4, "alpha": 0.5}}, r'key "center_loss" has value'),
    ({"center_loss": {"weight": 5e-4, "rate": 1.5}}, r'key "center_loss\.rate" has value 1\.5; expected a number in'),
    ({"center_loss": {"weight": 5e-4}, "dataset": "places"},
     r'key "center_loss" keeps one centre per class, but dataset "places" has no class labels'),
])
def test_bad_center_loss_params_name_the_key(values, message):
    with pytest.raises(ValueError, match="params: " + message):
        Params.from_dict(values)
