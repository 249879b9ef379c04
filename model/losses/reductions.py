"""Reductions of masked `[B, R]` matrices: row maxima and minima, log-sum-exps, and the mean a loss takes.

Every loss reduces its terms over the entries a mask selects; a row or a loss with nothing selected
gives a fixed value, never NaN.
"""

from keras import ops

from model.losses.inputs import static_shape

# Large finite value used in masked reductions instead of inf, so that gradients stay finite.
_BIG = 1e12


def _masked_reduction(reduce, values, mask, axis, fill):
    """`reduce` (ops.max or ops.min) of `values` over the entries where `mask` is True; `fill` where there is none.

    An empty axis (R = 0) gives `fill` too: keras.ops refuses to reduce an empty tensor (and its
    PyTorch backend then drops the other axes), so a tensor known to be empty is not reduced at
    all, and `initial` covers one whose size only the running graph knows.
    """
    masked = ops.where(mask, values, fill)
    if 0 in static_shape(masked):
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

