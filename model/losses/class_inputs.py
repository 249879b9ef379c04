"""The inputs of the losses with learned class weights (proxies, classifier kernels, centres), checked once.

    labels, embeddings = check_inputs(labels, embeddings)                        # model.losses.inputs
    num_classes = class_count("weights", weights, "[D, C]", class_axis=1, dim=8)  # ValueError naming "weights"
    targets, in_range = class_targets(labels, num_classes)                       # ValueError if eager and outside
    cosine = cosine_to_columns(embeddings, weights)                              # [B, N], rows and columns normalised
    loss = cross_entropy(logits, ops.one_hot(targets, num_classes))              # mean over the batch

The class count comes from the weights' static shape, in the layout each loss documents; the labels must lie in
[0, num_classes). Concrete labels (eager execution, every backend) are checked at once and a label outside is a
ValueError naming `labels`; inside a traced function (`tf.function`, `jax.jit`: a Keras `fit`) the values are not
known when the function is built, so the loss becomes NaN instead (`in_range`), never a silent all-zero one-hot:
Keras's `TerminateOnNaN` and the toolkit's runner stop on it.
"""


import numpy as np
from keras import ops

from model.losses.inputs import check_inputs, concrete_values, static_shape


def check_count(name, value):
    """`value` as an int if it is an integer >= 1 (sub-centres, centres per class), else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer, float)) or value != int(value) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def class_count(name, weights, layout, class_axis, dim, per_class=1):
    """The number of classes C of `weights`, a matrix in the `layout` the loss documents.

    Args:
        name: the argument's name in messages ("proxies", "weights", "centers").
        weights: the [C, D] or [D, C·K] matrix.
        layout: its layout in words, e.g. "[D, C]" or "[D, C·K]".
        class_axis: the axis of the classes (0 for [C, D], 1 for [D, C]).
        dim: D, the embeddings' dimension (None when unknown).
        per_class: K, the columns of each class (sub-centres, centres); class c's are c·K ... c·K + K - 1.

    Raises:
        ValueError: naming `name`: not a matrix, not the embeddings' dimension along D (a transposed matrix
            is recognised and said), a class axis unknown or not a multiple of K.
    """
    shape = static_shape(weights)
    if shape is None or len(shape) != 2:
        raise ValueError(f"{name} must be a {layout} matrix, got shape {shape}")
    found_dim, columns = shape[1 - class_axis], shape[class_axis]
    if dim is not None and found_dim is not None and found_dim != dim:
        hint = " (transposed?)" if columns == dim else ""
        raise ValueError(
            f"{name} must be a {layout} matrix with D = {dim}, the embeddings' dimension, got shape {shape}{hint}"
        )
    if columns is None:
        raise ValueError(f"{name} must have a known number of classes along its {layout} layout, got shape {shape}")
    if columns == 0 or columns % per_class:
        raise ValueError(
            f"{name} must be a {layout} matrix with K = {per_class} columns per class (C·K columns, C >= 1), "
            f"got shape {shape}"
        )
    return columns // per_class


def class_targets(labels, num_classes):
    """(int32 labels [B] clipped to [0, C), scalar bool: every label was in [0, C)).

    Raises:
        ValueError: naming `labels`, when their values are known now and one is outside [0, num_classes) or not
            an integer. Inside a traced function the loss uses `in_range` to become NaN instead.
    """
    values = concrete_values(labels)
    if values is not None and values.size:
        outside = values[(values < 0) | (values >= num_classes) | (values != np.round(values))]
        if outside.size:
            raise ValueError(
                f"labels must be integers in [0, {num_classes}) (num_classes = {num_classes}, the classes of the "
                f"loss's weights), got {outside[0].item():g}; set num_classes to the number of classes of the data"
            )
    labels = ops.cast(labels, "int32")
    in_range = ops.all(ops.logical_and(labels >= 0, labels < num_classes))
    return ops.clip(labels, 0, num_classes - 1), in_range


def class_loss_inputs(labels, embeddings, weights, name, layout, class_axis=1, per_class=1):
    """The checked inputs of a loss with class weights `weights` (its argument `name`, in `layout`; see
    `class_count`): (embeddings [B, D] float32, C, targets int32 [B] in [0, C), scalar bool: every label in
    [0, C)); the labels and embeddings as `model.losses.inputs.check_inputs` checks them."""
    labels, embeddings, _, _ = check_inputs(labels, embeddings)
    num_classes = class_count(name, weights, layout, class_axis, dim=static_shape(embeddings)[1], per_class=per_class)
    targets, in_range = class_targets(labels, num_classes)
    return embeddings, num_classes, targets, in_range


def _normalize(x, axis):
    """x / ||x|| along `axis`, the norm floored at 1e-6 (a zero vector gives 0 and a finite gradient).

    A division by the norm, as PyTorch's `F.normalize` (PML's), not `model.ops.l2_normalize`'s multiplication by
    `rsqrt`, which rounds differently: ArcFace's cos(θ + m) amplifies an ulp of a cosine near ±1 by 1/sin θ, and
    with D = 2 the rsqrt form was 1e-5 from PML's gradient where the division is 1e-6.
    """
    return x / ops.sqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), 1e-12))


def cosine_to_columns(embeddings, weights):
    """cos(e_i, w_j) of embeddings [B, D] and the columns of weights [D, N] -> [B, N] float32 (zero vectors give 0)."""
    return ops.matmul(_normalize(ops.cast(embeddings, "float32"), axis=1),
                      _normalize(ops.cast(weights, "float32"), axis=0))


def cross_entropy(logits, one_hot):
    """mean_i -log softmax(logits_i)[y_i] (max-subtracted), logits [B, C] float32, one_hot [B, C] of the labels:
    PML's MeanReducer over the batch of torch's cross-entropy.

    Computed as torch computes it, logsumexp(l_i) - l_iy, whose gradient softmax - one_hot has torch's rounding.
    (log(1 + Σ_{c ≠ y} exp(l_c - l_y)) would be more accurate where the true class's probability rounds to 1 in
    float32, a loss near 1e-7, but would then differ from PML's float32 gradient by its cancellation.)
    """
    return ops.mean(ops.logsumexp(logits, axis=1) - ops.sum(logits * one_hot, axis=1))


def nan_unless(valid, value):
    """`value` where the scalar bool `valid` holds, else NaN (labels outside the classes in a traced function)."""
    return ops.where(valid, value, float("nan"))


__all__ = []  # the machinery of the losses with class weights; imported from this module
