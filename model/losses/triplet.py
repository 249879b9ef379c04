"""Online triplet losses: batch-all, batch-hard and semi-hard mining, in a batch or against references.

Same functions and signatures as the classic TensorFlow triplet-loss code
(omoindrot/tensorflow-triplet-loss), written with `keras.ops` for Keras 3 (any backend):

    loss, fraction = batch_all_triplet_loss(labels, embeddings, margin, squared=False)
    loss = batch_hard_triplet_loss(labels, embeddings, margin, squared=False)
    loss = batch_semihard_triplet_loss(labels, embeddings, margin, squared=False)

A triplet (a, p, n) is valid when a != p, label(a) == label(p) and label(n) != label(a); its loss
is relu(d(a, p) - d(a, n) + margin).

References. Every function also takes `ref_labels=None, ref_embeddings=None, remove_diagonal=True`
(the convention of `keras.losses.circle`, see model/losses/masks.py): the anchors a are the rows of
`embeddings: [B, D]`, the positives p and negatives n are rows of `ref_embeddings: [R, D]`, e.g. the
batch followed by a cross-batch memory. Without references they are the batch itself (R = B) and
the result is the in-batch loss.

Memory. Written directly, batch-all and semi-hard build a [B, R, R] tensor of all triplets
(275 GB at B = R = 4096). Here both stay in O(B·R): every anchor's negative distances are sorted
once, with their prefix sums, and a binary search gives, for each positive pair, the number c of
negatives below its threshold and their sum. Then, for batch-all,

    Σ_n relu(d_ap - d_an + m) = c·(d_ap + m) - Σ_{n: d_an < d_ap + m} d_an,   c = #{n: d_an < d_ap + m},

and for semi-hard the chosen negative is the sorted negative at index #{n: d_an <= d_ap}.
Ties between a threshold and a negative decide what counts ("<" versus "<="): the binary search's
side ("left" or "right") settles them exactly, whatever the order of equal keys in the sort.

Mined triplets. Every function also takes `triplets=(anchors, positives, negatives)`, the triplets a
miner chose (model/losses/miners.py): the loss is then pytorch-metric-learning's TripletMarginLoss over
exactly those triplets (`triplet_margin_loss`); batch-hard and semi-hard leave the mining to the miner,
as PML does.

Every loss is NaN when an embedding or reference is NaN or infinite (a diverged run must not look
finite), and 0, never NaN, when there is no valid triplet (e.g. R = 0).
"""

import keras
from keras import ops

from model.losses.base import MARGIN, SQUARED, LossWithMargin, register_loss
from model.losses.distances import pairwise_distances
from model.losses.inputs import check_inputs, nan_unless_finite, static_shape
from model.losses.masks import anchor_negative_mask, anchor_positive_mask, check_triplets
from model.losses.reductions import (
    check_reduction,
    masked_maximum,
    masked_minimum,
    reduce_terms,
    reduce_total,
)

# Which positives batch-hard mining pairs with each anchor's hardest negative (see batch_hard_triplet_loss).
POSITIVES = ("hardest", "all")


def anchor_reference_distances(labels, embeddings, ref_labels, ref_embeddings, remove_diagonal, squared, relation):
    """Checked inputs -> distances [B, R], positive mask [B, R], negative mask [B, R], (embeddings, refs) float32."""
    labels, embeddings, ref_labels, ref_embeddings = check_inputs(labels, embeddings, ref_labels, ref_embeddings)
    distances = pairwise_distances(embeddings, squared=squared, ref_embeddings=ref_embeddings)  # [B, R]
    positive_mask = anchor_positive_mask(labels, ref_labels, remove_diagonal, relation)  # [B, R]
    negative_mask = anchor_negative_mask(labels, ref_labels, relation)  # [B, R]
    return distances, positive_mask, negative_mask, (embeddings, ref_embeddings)


def hardest_distances(distances, positive_mask, negative_mask):
    """Distances [B, R] and masks [B, R] -> hardest positive [B], hardest negative [B], valid anchors [B] bool."""
    hardest_positive = masked_maximum(distances, positive_mask)  # [B]
    hardest_negative = masked_minimum(distances, negative_mask)  # [B]
    valid = ops.logical_and(ops.any(positive_mask, axis=1), ops.any(negative_mask, axis=1))
    return hardest_positive, hardest_negative, valid


def _sorted_negatives(distances, negative_mask):
    """Each anchor's negative distances in increasing order, and their prefix sums.

    Returns:
        sorted_keys: [B, R] float32, the negatives' distances ascending, then +inf for non-negatives.
        sorted_distances: [B, R] float32, the same order with non-negatives at 0 (carries the gradient).
        prefix: [B, R + 1] float32, prefix[a, i] = sum of the i smallest negative distances of a.
    """
    keys = ops.where(negative_mask, distances, float("inf"))
    order = ops.argsort(keys, axis=1)  # [B, R]
    sorted_keys = ops.take_along_axis(keys, order, axis=1)
    sorted_distances = ops.take_along_axis(ops.where(negative_mask, distances, 0.0), order, axis=1)
    zeros = ops.zeros((ops.shape(sorted_distances)[0], 1), dtype="float32")  # [B, 1], also when R = 0
    prefix = ops.concatenate([zeros, ops.cumsum(sorted_distances, axis=1)], axis=1)
    return sorted_keys, sorted_distances, prefix


def _count_below(sorted_keys, values, side):
    """Per row, the number of sorted keys < value (side="left") or <= value (side="right").

    sorted_keys: [B, R] ascending rows, values: [B, Q] -> int32 [B, Q]. keras.ops.searchsorted takes
    1-D sequences, so it is mapped over the rows; under TensorFlow, `tf.searchsorted` takes the rows
    as a batch itself, whereas `tf.vectorized_map` would trace a new function at every eager call
    (a custom training loop without tf.function). JAX and PyTorch map without tracing per call.
    """
    sorted_keys, values = ops.stop_gradient(sorted_keys), ops.stop_gradient(values)
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf  # only under this backend: the others need not have TensorFlow installed

        return tf.searchsorted(sorted_keys, values, side=side, out_type=tf.int32)
    counts = ops.vectorized_map(lambda row: ops.searchsorted(row[0], row[1], side=side), (sorted_keys, values))
    return ops.cast(counts, "int32")


def triplet_margin_loss(labels, embeddings, triplets, margin, squared=False, *, reduction="nonzero",
                        ref_labels=None, ref_embeddings=None):
    """The triplet loss over given triplets: pytorch-metric-learning's TripletMarginLoss with a miner.

    loss = Σ_t h(d(a_t, p_t) - d(a_t, n_t)) / N over the triplets t = (a_t, p_t, n_t), h(x) = relu(x + margin),
    or softplus(x) when margin == "soft", with
        N = #{triplets with positive loss}   reduction="nonzero" (the default, PML's AvgNonZeroReducer), or
        N = #{triplets}                      reduction="all";
    fraction_positive_triplets = #{triplets with positive loss} / #{triplets}; both 0 without triplets.
    a_t is a row of `embeddings`, p_t and n_t rows of `ref_embeddings` (default: the batch); the labels are
    only checked for their shape: the triplets are taken as given (a triplet listed twice counts twice, as in
    PML). Memory: the [B, R] distances and O(T).
    Equals pytorch-metric-learning 2.x's TripletMarginLoss(margin, distance=LpDistance(normalize_embeddings=
    False), reducer=AvgNonZeroReducer()) on the same indices_tuple (with this loss's L2 normalisation, its
    default LpDistance()).

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings, the anchors (any float dtype; computed in float32).
        triplets: (anchors, positives, negatives), three int [T] vectors (a miner's `Mined.triplets`).
        margin: float, or "soft".
        squared: if True use squared euclidean distances.
        reduction: "nonzero" or "all", the triplets the mean is over.
        ref_labels: [R] or [R, 1] integer labels of the references, or None (the batch).
        ref_embeddings: [R, D] float references, or None (the batch); given with `ref_labels`.

    Returns:
        loss: scalar float32.
        fraction_positive_triplets: scalar float32.
    """
    check_reduction(reduction)
    labels, embeddings, ref_labels, ref_embeddings = check_inputs(labels, embeddings, ref_labels, ref_embeddings)
    distances = pairwise_distances(embeddings, squared=squared, ref_embeddings=ref_embeddings)  # [B, R]
    rows, columns = (static_shape(distances)[axis] for axis in (0, 1))
    anchors, positives, negatives = check_triplets(triplets, rows, columns)  # [T] each
    flat = ops.reshape(distances, (-1,))
    width = ops.cast(ops.shape(distances)[1], "int32")
    difference = ops.take(flat, anchors * width + positives) - ops.take(flat, anchors * width + negatives)  # [T]
    terms = ops.softplus(difference) if isinstance(margin, str) else ops.relu(difference + margin)
    count = ops.cast(ops.shape(terms)[0], "float32")
    num_positive = ops.sum(ops.cast(terms > 0, "float32"))
    loss = reduce_total(ops.sum(terms), num_positive, count, reduction)
    fraction = num_positive / ops.maximum(count, 1.0)
    return nan_unless_finite(loss, embeddings, ref_embeddings), nan_unless_finite(fraction, embeddings, ref_embeddings)


def _mined_distances(labels, embeddings, squared, reduction, ref_labels, ref_embeddings, remove_diagonal, relation):
    """What the three triplet losses mine in the batch: `anchor_reference_distances`, once `reduction` is known
    to be one of REDUCTIONS (checked before any work)."""
    check_reduction(reduction)
    return anchor_reference_distances(labels, embeddings, ref_labels, ref_embeddings, remove_diagonal, squared,
                                      relation)


def _over_triplets(labels, embeddings, triplets, margin, squared, reduction, ref_labels, ref_embeddings, relation):
    """`triplet_margin_loss` for a triplet loss given `triplets`; a relation as well is refused."""
    if relation is not None:
        raise ValueError("give relation or triplets, not both: a miner's triplets already lie within the relation")
    return triplet_margin_loss(labels, embeddings, triplets, margin, squared, reduction=reduction,
                               ref_labels=ref_labels, ref_embeddings=ref_embeddings)


def batch_all_triplet_loss(labels, embeddings, margin, squared=False, *, reduction="nonzero", ref_labels=None,
                           ref_embeddings=None, remove_diagonal=True, relation=None, triplets=None):
    """Batch-all triplet loss: the mean over the valid triplets whose loss is positive (or over all of them).

    loss = Σ_{valid (a,p,n)} relu(d(a,p) - d(a,n) + margin) / N, with
        N = #{valid triplets with positive loss}   reduction="nonzero" (the default), or
        N = #{valid triplets}                      reduction="all";
    fraction_positive_triplets = #{valid triplets with positive loss} / #{valid triplets}
    with a an anchor (a row of `embeddings`) and p, n references (rows of `ref_embeddings`, by
    default the batch). No valid or no positive triplet gives 0 for both (never NaN). Computed in
    O(B·R) memory and O(B·R log R) time with a sort and prefix sums (see the module docstring).
    Reference: Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for Person
    Re-Identification", 2017 (batch-all, "nonzero"); Schroff et al., "FaceNet", 2015 (the triplet loss).
    reduction="all" with squared=True is the "triplet loss, no mining" of the PyTorch online-metric-learning
    project's README, 1/N Σ [D²_ap + α - D²_an]_+ over all N valid triplets.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings, the anchors (any float dtype; computed in float32).
        margin: float, the margin m.
        squared: if True use squared euclidean distances.
        reduction: "nonzero" or "all", the triplets the mean is over (model.losses.reductions.REDUCTIONS).
        ref_labels: [R] or [R, 1] integer labels of the references, or None (the batch).
        ref_embeddings: [R, D] float references, or None (the batch); given with `ref_labels`.
        remove_diagonal: if True, reference i is anchor i itself and never its own positive.
        relation: [B, R] int, 1 positive, -1 negative, 0 neither, instead of the labels' equality, or None
            (see model/losses/masks.py).
        triplets: (anchors, positives, negatives) int [T] each, a miner's triplets, or None: the loss is then
            `triplet_margin_loss` over them (the triplets replace the labels' or the relation's).

    Returns:
        loss: scalar float32.
        fraction_positive_triplets: scalar float32.
    """
    if triplets is not None:
        return _over_triplets(labels, embeddings, triplets, margin, squared, reduction, ref_labels, ref_embeddings,
                              relation)
    distances, positive_mask, negative_mask, inputs = _mined_distances(
        labels, embeddings, squared, reduction, ref_labels, ref_embeddings, remove_diagonal, relation)
    queries = distances + margin  # [B, R]: d(a,p) + m; negatives count when d(a,n) < this
    sorted_keys, _, prefix = _sorted_negatives(distances, negative_mask)
    below = _count_below(sorted_keys, queries, side="left")  # [B, R]: #{n: d_an < d_ap + m}
    below_sum = ops.take_along_axis(prefix, below, axis=1)  # [B, R]: the sum of those d_an
    positive = ops.cast(positive_mask, "float32")
    count = ops.cast(below, "float32")
    # Σ_n relu(d_ap + m - d_an) for each positive pair.
    pair_losses = positive * (count * queries - below_sum)
    num_positive_triplets = ops.sum(positive * count)
    num_valid_triplets = ops.sum(
        ops.sum(ops.cast(positive_mask, "float32"), axis=1) * ops.sum(ops.cast(negative_mask, "float32"), axis=1)
    )
    loss = reduce_total(ops.sum(pair_losses), num_positive_triplets, num_valid_triplets, reduction)
    fraction_positive_triplets = num_positive_triplets / ops.maximum(num_valid_triplets, 1.0)
    return nan_unless_finite(loss, *inputs), nan_unless_finite(fraction_positive_triplets, *inputs)


def batch_hard_distances(
    labels, embeddings, squared=False, *, ref_labels=None, ref_embeddings=None, remove_diagonal=True, relation=None
):
    """Per anchor, the hardest positive and the hardest negative distance among the references.

    hardest_positive[a] = max_{p != a, y_p = y_a} d(a, p),  hardest_negative[a] = min_{y_n != y_a} d(a, n),
    p and n ranging over the references (by default the batch; see `batch_all_triplet_loss`).

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings, the anchors.
        squared: if True use squared euclidean distances.
        ref_labels, ref_embeddings, remove_diagonal, relation: as in `batch_all_triplet_loss`.

    Returns:
        hardest_positive: [B] float32.
        hardest_negative: [B] float32.
        valid: [B] bool, True for anchors that have at least one positive and one negative;
            the distances of other anchors are meaningless.
    """
    distances, positive_mask, negative_mask, _ = anchor_reference_distances(
        labels, embeddings, ref_labels, ref_embeddings, remove_diagonal, squared, relation
    )
    return hardest_distances(distances, positive_mask, negative_mask)


def batch_hard_triplet_loss(labels, embeddings, margin, squared=False, *, positives="hardest", reduction="all",
                            ref_labels=None, ref_embeddings=None, remove_diagonal=True, relation=None, triplets=None):
    """Batch-hard triplet loss: each anchor's hardest negative, against its hardest positive or every positive.

    With hn_a = min_{y_n != y_a} d(a, n) the anchor's hardest negative among the references (by
    default the batch; see `batch_hard_distances`) and h(x) = relu(x + margin), or softplus(x) when
    margin == "soft":
    - positives="hardest" (the default, Hermans et al.): one term per anchor, h(hp_a - hn_a), hp_a
      the anchor's hardest positive; the terms are those of the anchors that have at least one
      positive and one negative;
    - positives="all": one term per positive pair (a, p), h(d(a, p) - hn_a), over the positive pairs
      whose anchor has a negative. With squared=True and reduction="all" this is the "triplet loss,
      hardest mining" of the PyTorch online-metric-learning project's README, [D²_ap + α - min_n D²_an]_+
      averaged over the positive pairs, with one difference: that code also counts a = p (distance 0)
      as a positive pair, this one does not (p != a, as in every other loss here; with references,
      `remove_diagonal` decides).
    This is the home of both because they mine the negative alike (each anchor's hardest one) and differ
    only in the positives; semi-hard chooses its negative per pair, differently.
    loss = the mean of the terms (reduction "all", the default) or of the terms > 0 ("nonzero"); 0 when
    there is none. With a miner's `triplets` there is no batch-hard mining: the loss is h(d(a, p) - d(a, n))
    over exactly those triplets, with this reduction (`triplet_margin_loss`): the mining is the miner's,
    as in pytorch-metric-learning, and `positives` does not apply. Reference: Hermans, Beyer and Leibe,
    "In Defense of the Triplet Loss for Person Re-Identification", 2017 (batch-hard and the soft margin).

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings, the anchors (any float dtype; computed in float32).
        margin: float, or the string "soft" for the soft margin.
        squared: if True use squared euclidean distances.
        positives: "hardest" or "all" (POSITIVES), see above.
        reduction: "all" or "nonzero" (model.losses.reductions.REDUCTIONS), the terms the mean is over.
        ref_labels, ref_embeddings, remove_diagonal, relation, triplets: as in `batch_all_triplet_loss`.

    Returns:
        loss: scalar float32.
    """
    if isinstance(margin, str) and margin != "soft":
        raise ValueError(f'margin must be a number or "soft", got {margin!r}')
    if positives not in POSITIVES:
        raise ValueError(f"positives must be one of {', '.join(map(repr, POSITIVES))}, got {positives!r}")
    if triplets is not None:
        return _over_triplets(labels, embeddings, triplets, margin, squared, reduction, ref_labels, ref_embeddings,
                              relation)[0]
    distances, positive_mask, negative_mask, inputs = _mined_distances(
        labels, embeddings, squared, reduction, ref_labels, ref_embeddings, remove_diagonal, relation)
    hardest_positive, hardest_negative, valid = hardest_distances(distances, positive_mask, negative_mask)  # [B] each
    if positives == "hardest":
        difference = hardest_positive - hardest_negative  # [B]
    else:
        difference = distances - ops.expand_dims(hardest_negative, 1)  # [B, R]: every pair against hn_a
        valid = ops.logical_and(positive_mask, ops.any(negative_mask, axis=1, keepdims=True))  # [B, R]
    terms = ops.softplus(difference) if isinstance(margin, str) else ops.relu(difference + margin)
    return nan_unless_finite(reduce_terms(terms, valid, reduction), *inputs)


def semihard_negative_distances(distances, negative_mask):
    """For every (anchor a, reference p), the distance of a's semi-hard negative (FaceNet's selection).

    n* = argmin {d(a,n) : d(a,n) > d(a,p)} over the negatives n of a, or, when no negative is farther
    than p, the farthest negative argmax d(a,n) (ties: "farther" is strict). The selection of
    `batch_semihard_triplet_loss`, for any distance matrix (only the values and their order are read):
    one sort per anchor, O(B·R) memory (see the module docstring).

    Args:
        distances: [B, R] float32, d(a, r) of anchor a and reference r.
        negative_mask: [B, R] bool, the negatives of each anchor.

    Returns:
        chosen: [B, R] float32, d(a, n*) for each (a, p), differentiable; 0 in the rows of anchors without
            a negative.
        has_negative: [B, 1] bool, whether anchor a has any negative.
    """
    sorted_keys, sorted_negatives, _ = _sorted_negatives(distances, negative_mask)  # [B, R]
    num_negatives = ops.sum(ops.cast(negative_mask, "int32"), axis=1, keepdims=True)  # [B, 1]
    # #{n: d_an <= d_ap} is the index of the first negative farther than p; past the last
    # negative it is clipped to the last one, the farthest, as the definition asks.
    at_or_below = _count_below(sorted_keys, distances, side="right")  # [B, R]
    chosen_index = ops.minimum(at_or_below, ops.maximum(num_negatives - 1, 0))
    chosen = ops.take_along_axis(sorted_negatives, chosen_index, axis=1)  # [B, R]
    return chosen, num_negatives > 0


def batch_semihard_triplet_loss(labels, embeddings, margin, squared=False, *, reduction="all", ref_labels=None,
                                ref_embeddings=None, remove_diagonal=True, relation=None, triplets=None):
    """Semi-hard triplet loss (FaceNet): for every positive pair, its closest semi-hard negative.

    For a positive pair (a, p) the negative is n* = argmin {d(a,n) : d(a,n) > d(a,p)}, or, when no
    negative is farther than p, the farthest negative argmax d(a,n); p and n range over the
    references (by default the batch; see `batch_all_triplet_loss`).
    loss = Σ_{positive pairs} relu(d(a,p) - d(a,n*) + margin) / N, N = #{positive pairs} (reduction
    "all", the default) or #{positive pairs with positive loss} ("nonzero"); 0 when N = 0; pairs whose
    anchor has no negative contribute 0. With a miner's `triplets` there is no semi-hard selection: the loss
    is relu(d(a, p) - d(a, n) + margin) over exactly those triplets, with this reduction
    (`triplet_margin_loss`): the mining is the miner's, as in pytorch-metric-learning.
    Computed in O(B·R) memory with one sort per anchor (see the module docstring).
    Reference: Schroff, Kalenichenko and Philbin, "FaceNet: A Unified Embedding for Face
    Recognition and Clustering", CVPR 2015.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings, the anchors (any float dtype; computed in float32).
        margin: float, the margin m.
        squared: if True use squared euclidean distances.
        reduction: "all" or "nonzero" (model.losses.reductions.REDUCTIONS), the positive pairs the mean is over.
        ref_labels, ref_embeddings, remove_diagonal, relation, triplets: as in `batch_all_triplet_loss`.

    Returns:
        loss: scalar float32.
    """
    if triplets is not None:
        return _over_triplets(labels, embeddings, triplets, margin, squared, reduction, ref_labels, ref_embeddings,
                              relation)[0]
    distances, positive_mask, negative_mask, inputs = _mined_distances(
        labels, embeddings, squared, reduction, ref_labels, ref_embeddings, remove_diagonal, relation)
    chosen_negative, has_negative = semihard_negative_distances(distances, negative_mask)  # [B, R], [B, 1]
    has_negative = ops.cast(has_negative, "float32")  # [B, 1]
    pair_losses = has_negative * ops.relu(distances - chosen_negative + margin)  # [B, R]
    return nan_unless_finite(reduce_terms(pair_losses, positive_mask, reduction), *inputs)


class _TripletLoss(LossWithMargin):
    """A triplet loss: a margin and euclidean or squared euclidean distances; a miner's triplets give
    pytorch-metric-learning's TripletMarginLoss over them (`takes_triplets`, see `triplet_margin_loss`).

    Collapse shows as the mean pairwise distance falling below the margin: in a healthy run a negative
    must lie a margin farther than a positive, so pairs are on average farther apart than the margin,
    while collapsing embeddings shrink together until nearly every triplet violates it and each costs
    about the margin. Calibrated on Fashion-MNIST (tests/data/collapse_runs.json): healthy batch-all and
    batch-hard runs never fell below 2.7 margins; batch-hard at learning rate 0.01, which collapsed
    (validation precision@1 from 0.83 to 0.63), fell to 0.65 of the margin.
    """

    def collapse_reason(self, logs):
        distance = logs.get("mean_distance")
        if self.margin == "soft" or not self.margin or distance is None:
            return None
        if self.squared:  # the margin is on squared distances
            distance = distance**2
        if distance < self.margin:
            return f"mean pairwise distance {distance:.3g} below the margin {self.margin:g}: nearly every triplet " \
                   "violates it"
        return None

    takes_triplets = True

    def __init__(self, margin=0.5, squared=False, **kwargs):
        super().__init__(margin, **kwargs)
        self.squared = bool(squared)

    def get_config(self):
        return {**super().get_config(), "squared": self.squared}


@register_loss("batch_all", options=(MARGIN, SQUARED))
class BatchAllTripletLoss(_TripletLoss):
    """Batch-all triplet loss (see `batch_all_triplet_loss`); logs `fraction_positive_triplets`."""

    statistics = ("fraction_positive_triplets",)
    default_reduction = "nonzero"

    def _loss(self, labels, embeddings, **references):
        loss, fraction = batch_all_triplet_loss(
            labels, embeddings, self.margin, self.squared, reduction=self.term_reduction, **references
        )
        return loss, {"fraction_positive_triplets": fraction}


@register_loss("batch_hard", options=(MARGIN, SQUARED))
class BatchHardTripletLoss(_TripletLoss):
    """Batch-hard triplet loss (see `batch_hard_triplet_loss`); margin may be "soft"; `positives` "hardest"
    (one term per anchor) or "all" (one per positive pair, each against the anchor's hardest negative)."""

    soft_margin_allowed = True
    string_options = {"positives": POSITIVES}
    default_reduction = "all"

    def __init__(self, margin=0.5, squared=False, positives="hardest", **kwargs):
        super().__init__(margin, squared, **kwargs)
        if positives not in POSITIVES:
            raise ValueError(f"positives must be one of {', '.join(map(repr, POSITIVES))}, got {positives!r}")
        self.positives = positives

    def _loss(self, labels, embeddings, **references):
        options = {"positives": self.positives, "reduction": self.term_reduction}
        return batch_hard_triplet_loss(labels, embeddings, self.margin, self.squared, **options, **references), {}

    def get_config(self):
        return {**super().get_config(), "positives": self.positives}


@register_loss("batch_semihard", options=(MARGIN, SQUARED))
class BatchSemiHardTripletLoss(_TripletLoss):
    """Semi-hard triplet loss (see `batch_semihard_triplet_loss`)."""

    default_reduction = "all"

    def _loss(self, labels, embeddings, **references):
        loss = batch_semihard_triplet_loss(
            labels, embeddings, self.margin, self.squared, reduction=self.term_reduction, **references
        )
        return loss, {}

__all__ = ["POSITIVES", "BatchAllTripletLoss", "BatchHardTripletLoss", "BatchSemiHardTripletLoss",
           "batch_all_triplet_loss", "batch_hard_distances", "batch_hard_triplet_loss",
           "batch_semihard_triplet_loss", "triplet_margin_loss"]
