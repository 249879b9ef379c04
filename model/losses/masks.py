"""Which (anchor, reference) pairs are positives and negatives: boolean `[B, R]` masks.

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

Triplets. A triplet miner (model/losses/miners.py) selects triplets `(anchors, positives, negatives)`,
three int32 [T] vectors of anchor rows and reference rows; a loss on pairs takes them as the relation
of their pairs (`triplets_relation`).
"""

from keras import ops

from model.losses.inputs import concrete_values, flat_labels, static_shape


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
    shape = static_shape(relation)
    expected = [static_shape(x) for x in (labels, labels if ref_labels is None else ref_labels)]
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



def check_triplets(triplets, rows=None, columns=None):
    """`triplets` = (anchors, positives, negatives) as three int32 [T] tensors, checked.

    A triplet (a, p, n) names row a of the anchors and rows p and n of the references (`rows` = B anchors
    and `columns` = R references, ints or None when unknown). Raises ValueError naming `triplets` when they
    are not three vectors of one length, or, where the values are known (eager mode) and so are B and R,
    when an index lies outside [0, B) or [0, R).
    """
    if not isinstance(triplets, (tuple, list)) or len(triplets) != 3:
        got = type(triplets).__name__ + (f" of length {len(triplets)}" if isinstance(triplets, (tuple, list)) else "")
        raise ValueError(f"triplets must be (anchors, positives, negatives): three [T] integer vectors, got {got}")
    shapes = [static_shape(x) for x in triplets]
    if any(shape is not None and len(shape) != 1 for shape in shapes):
        raise ValueError(f"triplets must be three [T] vectors (anchors, positives, negatives), got shapes {shapes}")
    lengths = {shape[0] for shape in shapes if shape is not None and shape[0] is not None}
    if len(lengths) > 1:
        raise ValueError(f"triplets' anchors, positives and negatives must have one length T, got shapes {shapes}")
    triplets = tuple(ops.cast(x, "int32") for x in triplets)
    for name, values, size in zip(("anchors", "positives", "negatives"), triplets, (rows, columns, columns),
                                  strict=True):
        known = concrete_values(values) if isinstance(size, int) else None
        if known is not None and known.size and (known.min() < 0 or known.max() >= size):
            raise ValueError(f"triplets: {name} must lie in [0, {size}), got values from {known.min()} to "
                             f"{known.max()}")
    return triplets


def triplets_relation(triplets, rows, columns):
    """The pairs of `triplets` as a relation: int32 [B, R], 1 for each triplet's (a, p), -1 for its (a, n), else 0.

    pytorch-metric-learning's `convert_to_pairs` for a loss on pairs, without the duplicates its lists keep:
    a pair in several triplets is one pair here. A pair given both as a positive and as a negative (triplets
    that no labels could give) is a positive. `rows` = B and `columns` = R may be tensors (traced sizes).
    """
    anchors, positives, negatives = check_triplets(triplets, rows, columns)
    shape = (rows, columns)
    ones = ops.ones_like(anchors)
    positive = ops.scatter(ops.stack([anchors, positives], axis=1), ones, shape) > 0
    negative = ops.scatter(ops.stack([anchors, negatives], axis=1), ones, shape) > 0
    return ops.cast(ops.where(positive, 1, ops.where(negative, -1, 0)), "int32")
