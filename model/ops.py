"""keras.ops helpers shared by the layers and the losses (any Keras backend)."""

from keras import ops


def l2_normalize(x, axis=-1, epsilon=1e-12):
    """Divide `x` by its L2 norm along `axis`: `x / sqrt(max(Σ x², ε))`.

    The floor sits before the square root, so an all-zero vector gives a zero output and a finite
    gradient by construction, whatever the backend's `rsqrt` gradient at 0.

    Args:
        x: tensor of any shape, e.g. `embeddings: [B, D]` or `descriptors: [B, N, D]`.
        axis: the axis to normalise.
        epsilon: floor on the squared norm.

    Returns:
        Tensor of the shape of `x`, unit L2 norm along `axis` (zero where `x` is zero).
    """
    squared_norm = ops.sum(ops.square(x), axis=axis, keepdims=True)
    return x * ops.rsqrt(ops.maximum(squared_norm, epsilon))

