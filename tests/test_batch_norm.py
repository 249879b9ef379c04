"""FusedBatchNormalization equals Keras's BatchNormalization and a numpy reference, and really fuses."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.nets.batch_norm import FusedBatchNormalization


def _pair(shape, seed=0, **kwargs):
    """Our layer and Keras's, built for `shape`, with the same non-trivial weights and moving statistics."""
    rng = np.random.default_rng(seed)
    ours, theirs = FusedBatchNormalization(**kwargs), keras.layers.BatchNormalization(**kwargs)
    ours.build(shape)
    theirs.build(shape)
    weights = [rng.uniform(0.5, 2.0, w.shape).astype(np.float32) for w in theirs.get_weights()]
    ours.set_weights(weights)
    theirs.set_weights(weights)
    return ours, theirs


def _step(layer, x, training=True):
    """Output, gradients of a weighted sum of it (w.r.t. input and trainable weights), moving statistics after."""
    x = tf.Variable(x)
    weights = tf.constant(np.random.default_rng(9).normal(size=x.shape).astype(np.float32))
    with tf.GradientTape() as tape:
        y = layer(x, training=training)
        total = tf.reduce_sum(tf.cast(y, tf.float32) * weights)
    gradients = tape.gradient(total, [x] + layer.trainable_weights)
    moving = [layer.moving_mean.numpy(), layer.moving_variance.numpy()]
    return y.numpy(), [g.numpy() for g in gradients], moving


def _op_types(layer, x, training=True):
    graph = tf.function(lambda t: layer(t, training=training)).get_concrete_function(tf.constant(x)).graph
    return {op.type for op in graph.get_operations()}


def _images(shape, seed=1):
    return np.random.default_rng(seed).normal(3.0, 2.0, shape).astype(np.float32)


def test_training_step_equals_numpy_reference():
    x = _images((5, 4, 3, 6)).astype(np.float64)
    layer, _ = _pair(x.shape, momentum=0.7, epsilon=1e-3)
    gamma, beta, moving_mean, moving_variance = [w.astype(np.float64) for w in layer.get_weights()]
    output, _, (new_mean, new_variance) = _step(layer, x.astype(np.float32))
    flat = x.reshape(-1, 6)
    mean, variance = flat.mean(axis=0), flat.var(axis=0)  # biased, as Keras normalises and averages it
    np.testing.assert_allclose(output, gamma * (x - mean) / np.sqrt(variance + 1e-3) + beta, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(new_mean, 0.7 * moving_mean + 0.3 * mean, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(new_variance, 0.7 * moving_variance + 0.3 * variance, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(8, 5, 5, 3), (2, 7, 1, 4), (1, 1, 1, 2)])
@pytest.mark.parametrize("kwargs", [{}, {"momentum": 0.9, "epsilon": 1e-4}, {"center": False}, {"scale": False}])
def test_training_step_equals_keras(shape, kwargs):
    ours, theirs = _pair(shape, **kwargs)
    x = _images(shape)
    (y1, g1, m1), (y2, g2, m2) = _step(ours, x), _step(theirs, x)
    np.testing.assert_allclose(y1, y2, rtol=1e-5, atol=1e-5)
    for a, b in zip(g1, g2, strict=True):  # input, then gamma and beta where the layer has them
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    for a, b in zip(m1, m2, strict=True):  # a batch of one pixel: variance 0, not the kernel's n/(n-1) of it
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert "FusedBatchNormV3" in _op_types(ours, x)
    assert "FusedBatchNormV3" not in _op_types(theirs, x)  # so the line above tells the two apart


def test_mixed_precision_step_equals_keras():
    shape = (4, 6, 6, 3)
    ours, theirs = _pair(shape, dtype="mixed_float16")
    x = _images(shape).astype(np.float16)
    (y1, g1, m1), (y2, g2, m2) = _step(ours, x), _step(theirs, x)
    assert y1.dtype == y2.dtype == np.float16
    np.testing.assert_allclose(y1, y2, rtol=2e-3, atol=2e-3)
    for a, b in zip(g1 + m1, g2 + m2, strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize(
    "shape, kwargs, training",
    [
        ((6, 4, 4, 3), {}, False),  # inference: the moving statistics
        ((6, 5), {}, True),  # dense inputs
        ((6, 4, 4, 3), {"axis": 1}, True),  # channels-first
        ((6, 4, 4, 3), {"epsilon": 1e-5}, True),  # below the fused kernel's ε floor
        ((6, 4, 4, 3), {"renorm": True}, True),
    ],
)
def test_falls_back_to_keras_where_the_kernel_differs(shape, kwargs, training):
    ours, theirs = _pair(shape, **kwargs)
    x = _images(shape)
    assert "FusedBatchNormV3" not in _op_types(ours, x, training)
    (y1, g1, m1), (y2, g2, m2) = _step(ours, x, training), _step(theirs, x, training)
    for a, b in zip([y1, *g1, *m1], [y2, *g2, *m2], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_frozen_layer_uses_moving_statistics_in_training():
    shape = (6, 4, 4, 3)
    ours, theirs = _pair(shape)
    ours.trainable = theirs.trainable = False
    x = _images(shape)
    assert "FusedBatchNormV3" not in _op_types(ours, x)
    np.testing.assert_allclose(_step(ours, x)[0], _step(theirs, x)[0], rtol=1e-5, atol=1e-5)


def test_saved_model_file_reloads_as_the_same_layer(tmp_path):
    inputs = keras.Input((5, 5, 2))
    model = keras.Model(inputs, FusedBatchNormalization(momentum=0.8, name="bn")(inputs))
    model.get_layer("bn").set_weights([np.full(2, v, np.float32) for v in (1.5, 0.5, 0.2, 3.0)])
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded.get_layer("bn")) is FusedBatchNormalization
    assert loaded.get_layer("bn").momentum == 0.8
    x = _images((3, 5, 5, 2))
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), rtol=1e-6)
