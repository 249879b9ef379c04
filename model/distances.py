"""Pairwise distances, label masks, input checks and masked reductions shared by every loss.

Every mined loss starts from the same ingredients, written once here:
  * a [B, R] matrix of distances (or similarities) between anchors and references,
  * boolean [B, R] masks saying which (anchor, reference) pairs are positives and negatives,
  * reductions over the masked entries of each row (hardest positive, hardest negative, ...),
  * one check of the inputs' shapes, with messages that name the argument.

Anchors and references. The anchors are the rows of `embeddings: [B, D]` (labels `[B]`); the
positives and negatives of each anchor are rows of a reference set `ref_embeddings: [R, D]`
(labels `ref_labels: [R]`), following the convention of Keras's `keras.losses.circle`:
  * without references (`ref_labels = ref_embeddings = None`) the references are the batch
    itself (R = B), and every loss gives exactly the in-batch result;
  * with `remove_diagonal=True` (the default), reference row i is anchor i itself (callers put the
    batch first, e.g. the batch followed by a cross-batch memory): the pair (i, i) is neither a
    positive nor a negative. Any other row with anchor i's label is a positive, even a copy of it;
  * with `remove_diagonal=False` every reference with the anchor's label is a positive.
References may hold classes that no anchor has, and R may be 0. Every matrix is [B, R]: memory
O(B·R), never more.

Relations instead of labels. Every loss also takes `relation=None`: an integer [B, R] matrix saying
what reference j is to anchor i, 1 a positive, -1 a negative, 0 neither (e.g. places: within 10 m,
beyond 25 m, in between). It replaces the equality of labels in `anchor_positive_mask` and
`anchor_negative_mask` (labels are then only checked for their shape); `remove_diagonal` still
removes the pair (i, i) from the positives. With a relation, the pairs of the pair losses are the
ordered (anchor, reference) pairs, also without references: the relation need not be symmetric.

All functions take embeddings of any float dtype and compute in float32, so that the losses stay
accurate under mixed precision; labels may be `[B]` or `[B, 1]` of any integer dtype.
"""

import numpy as np
from keras import ops

# Large finite value used in masked reductions instead of inf, so that gradients stay finite.
_BIG = 1e12


def as_float32(embeddings):
    """Cast embeddings [B, D] of any float dtype to float32 (losses always compute in float32)."""
    return ops.cast(embeddings, "float32")


def flat_labels(labels):
    """Labels [B] or [B, 1] of any dtype -> [B]."""
    return ops.reshape(labels, (-1,))


def _static_shape(x):
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
    shape = _static_shape(x)
    if shape is not None and len(shape) != 2:
        raise ValueError(f"{name} must be a [N, D] matrix (one row per example), got shape {shape}")
    return shape


def _check_labels(name, labels, rows, rows_name):
    """ValueError naming `name` unless `labels` is [N] or [N, 1] with N = `rows` (where both are known)."""
    shape = _static_shape(labels)
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


def pairwise_distances(embeddings, squared=False, ref_embeddings=None):
    """Euclidean distance matrix between anchors and references (the batch itself by default).

    D[i, j] = ||e_i - r_j||, computed as ||e_i||² - 2 e_i·r_j + ||r_j||², clipped at 0 against rounding.
    Without references the diagonal (each embedding against itself) is set to exactly 0; with
    references it is not touched, whatever `remove_diagonal` says (the masks leave those pairs out).
    The square root of an exact zero has an infinite derivative, so zero entries go through
    sqrt(0 + eps) and are then set back to exactly 0: the gradient there is 0 instead of NaN.

    Args:
        embeddings: [B, D] float tensor.
        squared: if True return squared euclidean distances ||e_i - r_j||².
        ref_embeddings: [R, D] float tensor, or None for the batch itself (R = B).

    Returns:
        distances: [B, R] float32 (without references: symmetric, zero diagonal).
    """
    embeddings = as_float32(embeddings)
    if ref_embeddings is None:
        dot = ops.matmul(embeddings, ops.transpose(embeddings))  # [B, B]
        square_norm = ops.diagonal(dot)  # [B]
        ref_square_norm = square_norm
    else:
        ref_embeddings = as_float32(ref_embeddings)
        dot = ops.matmul(embeddings, ops.transpose(ref_embeddings))  # [B, R]
        square_norm = ops.sum(ops.square(embeddings), axis=1)  # [B]
        ref_square_norm = ops.sum(ops.square(ref_embeddings), axis=1)  # [R]
    distances = ops.expand_dims(ref_square_norm, 0) - 2.0 * dot + ops.expand_dims(square_norm, 1)
    distances = ops.maximum(distances, 0.0)  # [B, R]
    if ref_embeddings is None:
        # Exact zeros on the diagonal: the expansion above leaves rounding residue there.
        distances = distances * (1.0 - ops.eye(ops.shape(distances)[0], dtype="float32"))
    if squared:
        return distances
    zero = ops.cast(ops.equal(distances, 0.0), "float32")  # [B, R]
    distances = ops.sqrt(distances + zero * 1e-16)
    return distances * (1.0 - zero)


def pairwise_cosine_similarity(embeddings, ref_embeddings=None):
    """S[i, j] = cos(e_i, r_j) for embeddings [B, D] and references [R, D] (default: the batch) -> [B, R] float32.

    Zero rows give 0.
    """
    normalized = l2_normalize(as_float32(embeddings))
    ref_normalized = normalized if ref_embeddings is None else l2_normalize(as_float32(ref_embeddings))
    return ops.matmul(normalized, ops.transpose(ref_normalized))


def same_label_mask(labels, ref_labels=None):
    """[B, R] bool: labels[i] == ref_labels[j] (the diagonal included); ref_labels default to labels."""
    labels = flat_labels(labels)
    ref_labels = labels if ref_labels is None else flat_labels(ref_labels)
    return ops.equal(ops.expand_dims(ref_labels, 0), ops.expand_dims(labels, 1))


def _differ(size, other):
    """Whether two sizes, each an int or None (unknown), are known and differ."""
    return size is not None and other is not None and size != other


def check_relation(relation, labels, ref_labels=None):
    """`relation` as an int32 [B, R] tensor (B anchors, R references: `ref_labels`, default `labels`).

    Raises ValueError naming `relation` when it is not a matrix or, where the sizes are known, not [B, R].
    """
    shape = _static_shape(relation)
    expected = [_static_shape(x) for x in (labels, labels if ref_labels is None else ref_labels)]
    rows, columns = (None if size is None else size[0] for size in expected)
    if shape is not None and (len(shape) != 2 or _differ(shape[0], rows) or _differ(shape[1], columns)):
        raise ValueError(
            f"relation must be a [B, R] = [{rows}, {columns}] matrix (anchors × references: 1 positive, -1 negative, "
            f"0 neither), got shape {shape}"
        )
    return ops.cast(relation, "int32")


def anchor_positive_mask(labels, ref_labels=None, remove_diagonal=True, relation=None):
    """[B, R] bool: True where labels[i] == ref_labels[j] (or relation[i, j] == 1), and i != j when `remove_diagonal`.

    A valid anchor-positive pair; ref_labels default to labels (see the module docstring).
    """
    if relation is None:
        same = same_label_mask(labels, ref_labels)
    else:
        same = ops.greater(check_relation(relation, labels, ref_labels), 0)
    if not remove_diagonal:
        return same
    shape = ops.shape(same)
    not_self = ops.logical_not(ops.cast(ops.eye(shape[0], shape[1]), "bool"))
    return ops.logical_and(same, not_self)


def anchor_negative_mask(labels, ref_labels=None, relation=None):
    """[B, R] bool: True where labels[i] != ref_labels[j], or relation[i, j] == -1 (a valid anchor-negative pair)."""
    if relation is not None:
        return ops.less(check_relation(relation, labels, ref_labels), 0)
    return ops.logical_not(same_label_mask(labels, ref_labels))


def _masked_reduction(reduce, values, mask, axis, fill):
    """`reduce` (ops.max or ops.min) of `values` over the entries where `mask` is True; `fill` where there is none.

    An empty axis (R = 0) gives `fill` too: keras.ops refuses to reduce an empty tensor (and its
    PyTorch backend then drops the other axes), so a tensor known to be empty is not reduced at
    all, and `initial` covers one whose size only the running graph knows.
    """
    masked = ops.where(mask, values, fill)
    if 0 in _static_shape(masked):
        shape = ops.shape(masked)
        return ops.full([size for i, size in enumerate(shape) if i != axis % len(shape)], fill, dtype=masked.dtype)
    return reduce(masked, axis=axis, initial=fill)


def masked_maximum(values, mask, axis=1):
    """Max of `values` over the entries where `mask` is True, along `axis`.

    Rows without any True entry give -1e12 (a finite "minus infinity"); combine with `ops.any(mask)`
    to know which rows were valid. values: [B, R] float, mask: [B, R] bool -> [B] (axis 1) or [R] (axis 0).
    """
    return _masked_reduction(ops.max, values, mask, axis, -_BIG)


def masked_minimum(values, mask, axis=1):
    """Min of `values` over the entries where `mask` is True (rows without any give +1e12). -> [B]."""
    return _masked_reduction(ops.min, values, mask, axis, _BIG)


def masked_logsumexp(logits, mask, axis=1):
    """log Σ_{mask} exp(logits) along `axis`, with the maximum subtracted; -1e12 where the mask is empty.

    logits: [B, R] float, mask: [B, R] bool -> [B] (axis 1) or [R] (axis 0).
    """
    top = ops.stop_gradient(masked_maximum(logits, mask, axis=axis))
    # Masked before exp: an overflow in the unselected branch of `where` would still poison its gradient.
    shifted = ops.where(mask, ops.subtract(logits, ops.expand_dims(top, axis)), -_BIG)
    total = ops.sum(ops.exp(shifted), axis=axis)
    has_any = ops.any(mask, axis=axis)
    return ops.where(has_any, top + ops.log(ops.where(has_any, total, 1.0)), -_BIG)


def masked_log1p_sum_exp(logits, mask, axis=1):
    """log(1 + Σ_{mask} exp(logits)) along `axis`, stable for large logits.

    Written as a log-sum-exp over the masked logits and an extra 0 term, with the row maximum
    (at least 0) subtracted before exponentiating. A row without any True entry gives exactly 0.
    logits: [B, R] float, mask: [B, R] bool -> [B].
    """
    row_max = ops.maximum(masked_maximum(logits, mask, axis=axis), 0.0)  # [B]
    row_max = ops.stop_gradient(row_max)
    shifted = ops.where(mask, ops.subtract(logits, ops.expand_dims(row_max, axis)), -_BIG)
    total = ops.exp(-row_max) + ops.sum(ops.exp(shifted), axis=axis)
    return row_max + ops.log(total)


# How a loss averages its terms (pair or triplet losses), in the spirit of pytorch-metric-learning's reducers:
#   "all":     the mean over every valid term (pair, triplet, anchor, as the loss defines them);
#   "nonzero": the mean over the valid terms that are > 0 (PML's AvgNonZeroReducer; batch-all's own mean).
# Each loss keeps its own default; a reduction with no term to average gives 0, never NaN.
REDUCTIONS = ("nonzero", "all")


def check_reduction(reduction):
    """`reduction` if it is one of REDUCTIONS, else ValueError naming the value and the choices."""
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(map(repr, REDUCTIONS))}, got {reduction!r}")
    return reduction


def reduce_total(total, num_nonzero, num_all, reduction):
    """`total / max(count, 1)`, the count of the terms `reduction` averages over (see REDUCTIONS).

    For losses that sum their terms without building them one by one (batch-all's prefix sums).

    Args:
        total: scalar float32, the sum of the valid terms.
        num_nonzero: scalar float32, how many of them are > 0 (only read when reduction is "nonzero").
        num_all: scalar float32, how many valid terms there are (only read when reduction is "all").
        reduction: "nonzero" or "all".
    """
    count = num_nonzero if check_reduction(reduction) == "nonzero" else num_all
    return total / ops.maximum(count, 1.0)


def reduce_terms(terms, valid, reduction):
    """The mean of `terms` over the `valid` entries ("all") or over the valid entries that are > 0 ("nonzero").

    terms: [...] float32, valid: [...] bool or 0/1 float of the same shape -> scalar float32; 0 when
    nothing is averaged.
    """
    valid = ops.cast(valid, "float32")
    total = ops.sum(terms * valid)
    if check_reduction(reduction) == "all":
        return reduce_total(total, None, ops.sum(valid), reduction)
    return reduce_total(total, ops.sum(valid * ops.cast(terms > 0, "float32")), None, reduction)
