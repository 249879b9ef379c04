"""The inputs of every loss: one check of their shapes, float32 inside, NaN that is never hidden, values read
when they are known (eager) and the check of a numeric option.

All losses take embeddings of any float dtype and compute in float32, so that they stay accurate under
mixed precision; labels may be `[B]` or `[B, 1]` of any integer dtype.
"""

import math

import keras
import numpy as np
from keras import ops


def as_float32(embeddings):
    """Cast embeddings [B, D] of any float dtype to float32 (losses always compute in float32)."""
    return ops.cast(embeddings, "float32")


def flat_labels(labels):
    """Labels [B] or [B, 1] of any dtype -> [B]."""
    return ops.reshape(labels, (-1,))


def concrete_values(x):
    """The values of `x` as a numpy array when they are known now (numpy, eager tensors of any backend), or
    None inside a traced function (a symbolic TensorFlow tensor, a JAX tracer, a KerasTensor)."""
    if isinstance(x, (np.ndarray, np.generic, list, tuple, int, float)):
        return np.asarray(x)
    if isinstance(x, keras.KerasTensor):
        return None
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.is_symbolic_tensor(x):
            return None
    elif backend == "jax":
        import jax

        if isinstance(x, jax.core.Tracer):
            return None
    return np.asarray(ops.convert_to_numpy(x))


def check_number(name, value, positive=False, minimum=None, below=None):
    """`value` as a float if it is a finite number (> 0 where `positive`, >= `minimum`, < `below`), else
    ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(
        value
    ):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if below is not None and value >= below:
        raise ValueError(f"{name} must be < {below}, got {value!r}")
    return float(value)


def static_shape(x):
    """The shape of `x` as a tuple of ints and None (unknown sizes), or None when even the rank is unknown."""
    shape = getattr(x, "shape", None)
    if shape is None:
        shape = np.shape(x)
    try:
        return tuple(None if size is None else int(size) for size in shape)
    except (TypeError, ValueError):  # a TensorShape of unknown rank cannot be iterated
        return None


def _check_matrix(name, x):
    """Shape of `x` if it is a [N, D] matrix (or of unknown rank), else ValueError naming `name`."""
    shape = static_shape(x)
    if shape is not None and len(shape) != 2:
        raise ValueError(f"{name} must be a [N, D] matrix (one row per example), got shape {shape}")
    return shape


def _check_labels(name, labels, rows, rows_name):
    """ValueError naming `name` unless `labels` is [N] or [N, 1] with N = `rows` (where both are known)."""
    shape = static_shape(labels)
    if shape is None:
        return
    if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
        raise ValueError(f"{name} must be [N] or [N, 1] (one integer label per example), got shape {shape}")
    if shape[0] is not None and rows is not None and shape[0] != rows:
        raise ValueError(
            f"{name} has {shape[0]} labels but {rows_name} has {rows} rows: one label per embedding is expected"
        )


def check_inputs(labels, embeddings, ref_labels=None, ref_embeddings=None):
    """Check the shapes of a loss's inputs once, with errors that name the argument.

    Sizes known statically are checked (all of them in eager mode; inside a traced function, those
    the trace knows). An empty batch (B = 0) is refused; an empty reference set (R = 0) is allowed.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings, B >= 1.
        ref_labels: [R] or [R, 1] integer labels, or None (then `ref_embeddings` must be None too).
        ref_embeddings: [R, D] float embeddings, or None.

    Returns:
        labels [B], embeddings [B, D] float32, ref_labels [R] or None, ref_embeddings [R, D] float32 or None.

    Raises:
        ValueError: naming the argument whose shape is wrong, and what was expected.
    """
    shape = _check_matrix("embeddings", embeddings)
    rows, dim = shape if shape is not None else (None, None)
    if rows == 0:
        raise ValueError(f"embeddings is an empty batch (shape {shape}): a loss needs at least one example")
    _check_labels("labels", labels, rows, "embeddings")
    if (ref_labels is None) != (ref_embeddings is None):
        given, missing = (
            ("ref_labels", "ref_embeddings") if ref_embeddings is None else ("ref_embeddings", "ref_labels")
        )
        raise ValueError(f"{given} was given without {missing}: pass both (a reference set) or neither")
    if ref_embeddings is None:
        return flat_labels(labels), as_float32(embeddings), None, None
    ref_shape = _check_matrix("ref_embeddings", ref_embeddings)
    ref_rows, ref_dim = ref_shape if ref_shape is not None else (None, None)
    if dim is not None and ref_dim is not None and dim != ref_dim:
        raise ValueError(f"ref_embeddings must have the dimension D = {dim} of embeddings, got shape {ref_shape}")
    _check_labels("ref_labels", ref_labels, ref_rows, "ref_embeddings")
    return flat_labels(labels), as_float32(embeddings), flat_labels(ref_labels), as_float32(ref_embeddings)


def nan_unless_finite(value, *embeddings):
    """`value`, or NaN when any of `embeddings` (tensors or None) holds a NaN or an infinity.

    Mining selects pairs by comparisons, and every comparison with NaN is False: a diverged
    embedding would silently drop out of the mined pairs and leave a finite loss, hiding the
    divergence from NaN checks such as Keras's `TerminateOnNaN`. The value and its gradient are
    unchanged when everything is finite.
    """
    finite = True
    for x in embeddings:
        if x is not None:
            finite = ops.logical_and(finite, ops.all(ops.isfinite(x)))
    return ops.where(finite, value, float("nan"))

