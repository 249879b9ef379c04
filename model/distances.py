"""Pairwise distances, label masks and masked reductions shared by every loss.

Every mined loss starts from the same three ingredients, written once here:
  * a [B, B] matrix of distances (or similarities) between the embeddings of a batch,
  * boolean [B, B] masks saying which pairs are positives (same label, i != j) and negatives,
  * reductions over the masked entries of each row (hardest positive, hardest negative, ...).

All functions take `embeddings: [B, D]` of any float dtype and compute in float32, so that the
losses stay accurate under mixed precision; `labels` may be `[B]` or `[B, 1]` of any integer dtype.
"""

from keras import ops

# Large finite value used in masked reductions instead of inf, so that gradients stay finite.
_BIG = 1e12


def as_float32(embeddings):
    """Cast embeddings [B, D] of any float dtype to float32 (losses always compute in float32)."""
    return ops.cast(embeddings, "float32")


def flat_labels(labels):
    """Labels [B] or [B, 1] of any dtype -> [B]."""
    return ops.reshape(labels, (-1,))


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


def pairwise_distances(embeddings, squared=False):
    """Euclidean distance matrix between all embeddings of a batch.

    D[i, j] = ||e_i - e_j||, computed as ||e_i||² - 2 e_i·e_j + ||e_j||², clipped at 0 against rounding.
    The square root of an exact zero has an infinite derivative, so zero entries (the diagonal and
    duplicated embeddings) go through sqrt(0 + eps) and are then set back to exactly 0: the gradient
    there is 0 instead of NaN.

    Args:
        embeddings: [B, D] float tensor.
        squared: if True return squared euclidean distances ||e_i - e_j||².

    Returns:
        distances: [B, B] float32, symmetric, zero diagonal.
    """
    embeddings = as_float32(embeddings)
    dot = ops.matmul(embeddings, ops.transpose(embeddings))  # [B, B]
    square_norm = ops.diagonal(dot)  # [B]
    distances = ops.expand_dims(square_norm, 0) - 2.0 * dot + ops.expand_dims(square_norm, 1)
    distances = ops.maximum(distances, 0.0)  # [B, B]
    # Exact zeros on the diagonal: the expansion above leaves rounding residue there.
    distances = distances * (1.0 - ops.eye(ops.shape(distances)[0], dtype="float32"))
    if squared:
        return distances
    zero = ops.cast(ops.equal(distances, 0.0), "float32")  # [B, B]
    distances = ops.sqrt(distances + zero * 1e-16)
    return distances * (1.0 - zero)


def pairwise_cosine_similarity(embeddings):
    """S[i, j] = cos(e_i, e_j) for embeddings [B, D] -> [B, B] float32 (zero rows give 0)."""
    normalized = l2_normalize(as_float32(embeddings))
    return ops.matmul(normalized, ops.transpose(normalized))


def same_label_mask(labels):
    """[B, B] bool: labels[i] == labels[j] (the diagonal included)."""
    labels = flat_labels(labels)
    return ops.equal(ops.expand_dims(labels, 0), ops.expand_dims(labels, 1))


def anchor_positive_mask(labels):
    """[B, B] bool: True where i != j and labels[i] == labels[j] (a valid anchor-positive pair)."""
    same = same_label_mask(labels)
    not_self = ops.logical_not(ops.cast(ops.eye(ops.shape(same)[0]), "bool"))
    return ops.logical_and(same, not_self)


def anchor_negative_mask(labels):
    """[B, B] bool: True where labels[i] != labels[j] (a valid anchor-negative pair)."""
    return ops.logical_not(same_label_mask(labels))


def masked_maximum(values, mask, axis=1):
    """Max of `values` over the entries where `mask` is True, along `axis`.

    Rows without any True entry give -1e12 (a finite "minus infinity"); combine with `ops.any(mask)`
    to know which rows were valid. values: [B, B] float, mask: [B, B] bool -> [B].
    """
    return ops.max(ops.where(mask, values, -_BIG), axis=axis)


def masked_minimum(values, mask, axis=1):
    """Min of `values` over the entries where `mask` is True (rows without any give +1e12). -> [B]."""
    return ops.min(ops.where(mask, values, _BIG), axis=axis)


def masked_log1p_sum_exp(logits, mask, axis=1):
    """log(1 + Σ_{mask} exp(logits)) along `axis`, stable for large logits.

    Written as a log-sum-exp over the masked logits and an extra 0 term, with the row maximum
    (at least 0) subtracted before exponentiating. A row without any True entry gives exactly 0.
    logits: [B, B] float, mask: [B, B] bool -> [B].
    """
    row_max = ops.maximum(masked_maximum(logits, mask, axis=axis), 0.0)  # [B]
    row_max = ops.stop_gradient(row_max)
    shifted = ops.where(mask, logits - ops.expand_dims(row_max, axis), -_BIG)
    total = ops.exp(-row_max) + ops.sum(ops.exp(shifted), axis=axis)
    return row_max + ops.log(total)
