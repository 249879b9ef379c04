"""Backend-neutral helpers for the loss tests: one value and its gradient under TensorFlow, JAX or PyTorch.

The loss and distance tests run under every Keras backend (`KERAS_BACKEND=jax` or `torch`, see the
Makefile's `test-backends`); only this module knows how each backend differentiates.
"""

import keras
import numpy as np


def _first(outputs):
    """The scalar to differentiate: the output itself, or the first entry of a tuple or list of outputs."""
    return outputs[0] if isinstance(outputs, (tuple, list)) else outputs


def value_and_gradient(fn, x):
    """The value of `fn(x)` (or of its first output) and its gradient with respect to `x`.

    Args:
        fn: function of a float32 tensor of the shape of `x` -> scalar tensor, or a tuple or list
            whose first entry is one.
        x: numpy array, e.g. `embeddings: [B, D]`.

    Returns:
        (value as a float, gradient as a float32 numpy array of the shape of `x`; zeros where
        the value does not depend on `x`).
    """
    x = np.asarray(x, dtype=np.float32)
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        variable = tf.Variable(x)
        with tf.GradientTape() as tape:
            value = _first(fn(variable))
        gradient = tape.gradient(value, variable)
        return float(value), np.zeros_like(x) if gradient is None else gradient.numpy()
    if backend == "jax":
        import jax

        value, gradient = jax.value_and_grad(lambda v: _first(fn(v)))(jax.numpy.asarray(x))
        return float(value), np.asarray(gradient)
    if backend == "torch":
        import torch

        variable = torch.tensor(x, requires_grad=True)
        value = _first(fn(variable))
        if not value.requires_grad:  # a constant: nothing to differentiate
            return float(value), np.zeros_like(x)
        (gradient,) = torch.autograd.grad(value, variable, allow_unused=True)
        return float(value.detach()), np.zeros_like(x) if gradient is None else gradient.detach().numpy()
    raise NotImplementedError(f"no gradient helper for the Keras backend {backend!r}")


def dtype_name(tensor):
    """The dtype of a tensor of any backend, as Keras names it ("float32", "bfloat16", ...)."""
    return keras.backend.standardize_dtype(tensor.dtype)


def compiled_value_and_gradient(fn, x):
    """`value_and_gradient(fn, x)`, but under JAX as one compiled program of the value and the gradient.

    JAX otherwise runs `fn` operation by operation and compiles each anew for every shape and dtype, which takes
    longer than compiling the whole; the other backends run it as `value_and_gradient` does.
    """
    if keras.backend.backend() != "jax":
        return value_and_gradient(fn, x)
    import jax

    x = np.asarray(x, dtype=np.float32)
    value, gradient = jax.jit(jax.value_and_grad(lambda v: _first(fn(v))))(jax.numpy.asarray(x))
    return float(value), np.asarray(gradient)
