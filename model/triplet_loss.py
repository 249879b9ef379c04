"""Online triplet losses: batch-all, batch-hard and semi-hard mining inside a batch.

Same functions and signatures as the classic TensorFlow triplet-loss code
(omoindrot/tensorflow-triplet-loss), written with `keras.ops` for Keras 3:

    loss, fraction = batch_all_triplet_loss(labels, embeddings, margin, squared=False)
    loss = batch_hard_triplet_loss(labels, embeddings, margin, squared=False)
    loss = batch_semihard_triplet_loss(labels, embeddings, margin, squared=False)

A triplet (a, p, n) is valid when a != p, label(a) == label(p) and label(n) != label(a); its loss
is relu(d(a, p) - d(a, n) + margin).

Memory. Written directly, batch-all and semi-hard build a [B, B, B] tensor of all triplets
(275 GB at B = 4096). Here both stay in O(B²): for every anchor, the distances to its negatives
and the "query" values of its positive pairs are sorted together in one row of length 2B, and
prefix sums over that row give, for each positive pair, the number of negatives below the query
and their sum. Then, for batch-all,

    Σ_n relu(d_ap - d_an + m) = c·(d_ap + m) - Σ_{n: d_an < d_ap + m} d_an,   c = #{n: d_an < d_ap + m},

and for semi-hard the chosen negative is the sorted negative at index #{n: d_an <= d_ap}.
Ties between a query and a negative decide what counts ("<" versus "<="), and the sort is not
stable, so the query keys are moved, in float64, by less than one float32 step towards the side
that they must sort on: no float32 distance can fall in between, so the result is exact.
"""

from keras import ops

from model.distances import (
    anchor_negative_mask,
    anchor_positive_mask,
    as_float32,
    masked_maximum,
    masked_minimum,
    pairwise_distances,
)


def _nudge(values, direction):
    """Move float32 values [..] in float64 by less than one float32 step: +1 above, -1 below.

    A float32 x > 0 has its neighbours at least x·2⁻²⁴ away and 0 has its first neighbour at
    1.4e-45, so x·(1 ± 2⁻³⁰) ± 1e-300 lies strictly between x and any other float32 value.
    """
    values = ops.cast(values, "float64")
    return values + direction * (ops.abs(values) * 2.0**-30 + 1e-300)


def _sort_negatives_with_queries(distances, negative_mask, query_keys, query_mask):
    """Sort, per anchor row, the negatives' distances together with the positive pairs' query keys.

    Args:
        distances: [B, B] float32 anchor-to-item distances.
        negative_mask: [B, B] bool, valid anchor-negative pairs.
        query_keys: [B, B] float64 sort keys of the anchor-positive pairs (already nudged).
        query_mask: [B, B] bool, valid anchor-positive pairs.

    Returns:
        order: [B, 2B] int permutation of each row of concat([negatives, queries]) into sorted order.
        negatives_before: [B, 2B] float32, at each sorted position the number of negatives sorted
            at or before it; at a query's position this is the number of negatives below its key.
    """
    inf = ops.cast(float("inf"), "float64")
    negative_keys = ops.where(negative_mask, ops.cast(distances, "float64"), inf)
    keys = ops.concatenate([negative_keys, ops.where(query_mask, query_keys, inf)], axis=1)  # [B, 2B]
    order = ops.argsort(keys, axis=1)  # [B, 2B]
    is_negative = ops.concatenate([ops.cast(negative_mask, "float32"), ops.zeros_like(distances)], axis=1)  # [B, 2B]
    negatives_before = ops.cumsum(ops.take_along_axis(is_negative, order, axis=1), axis=1)
    return order, negatives_before


def _in_sorted_order(negative_part, query_part, order):
    """Gather concat([negative_part, query_part]) ([B, B] each) into the sorted order [B, 2B]."""
    return ops.take_along_axis(ops.concatenate([negative_part, query_part], axis=1), order, axis=1)


def batch_all_triplet_loss(labels, embeddings, margin, squared=False):
    """Batch-all triplet loss: the mean over the triplets of the batch whose loss is positive.

    loss = Σ_{valid (a,p,n)} relu(d(a,p) - d(a,n) + margin) / #{valid triplets with positive loss}
    fraction_positive_triplets = #{valid triplets with positive loss} / #{valid triplets}

    A batch with no valid or no positive triplet gives 0 for both (never NaN). Computed in O(B²)
    memory and O(B² log B) time with a sort and prefix sums (see the module docstring).
    Reference: Hermans, Beyer and Leibe, "In Defense of the Triplet Loss for Person
    Re-Identification", 2017 (batch-all); Schroff et al., "FaceNet", 2015 (the triplet loss).

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings (any float dtype; computed in float32).
        margin: float, the margin m.
        squared: if True use squared euclidean distances.

    Returns:
        loss: scalar float32.
        fraction_positive_triplets: scalar float32.
    """
    distances = pairwise_distances(embeddings, squared=squared)  # [B, B]
    positive_mask = anchor_positive_mask(labels)  # [B, B]
    negative_mask = anchor_negative_mask(labels)  # [B, B]
    queries = distances + margin  # [B, B]: d(a,p) + m; negatives count when d(a,n) < this
    order, negatives_below = _sort_negatives_with_queries(
        distances, negative_mask, _nudge(queries, -1.0), positive_mask
    )
    zeros = ops.zeros_like(distances)
    negative_distances_sum = ops.cumsum(
        _in_sorted_order(ops.where(negative_mask, distances, 0.0), zeros, order), axis=1
    )  # [B, 2B]: Σ of the negative distances sorted at or before each position
    is_query = _in_sorted_order(zeros, ops.cast(positive_mask, "float32"), order)  # [B, 2B]
    sorted_queries = _in_sorted_order(zeros, queries, order)  # [B, 2B]

    # Σ_n relu(d_ap + m - d_an) for each positive pair, at that pair's sorted position.
    pair_losses = is_query * (negatives_below * sorted_queries - negative_distances_sum)
    num_positive_triplets = ops.sum(is_query * negatives_below)
    num_valid_triplets = ops.sum(
        ops.sum(ops.cast(positive_mask, "float32"), axis=1) * ops.sum(ops.cast(negative_mask, "float32"), axis=1)
    )
    loss = ops.sum(pair_losses) / ops.maximum(num_positive_triplets, 1.0)
    fraction_positive_triplets = num_positive_triplets / ops.maximum(num_valid_triplets, 1.0)
    return loss, fraction_positive_triplets


def batch_hard_distances(labels, embeddings, squared=False):
    """Per anchor, the hardest positive and the hardest negative distance.

    hardest_positive[a] = max_{p != a, y_p = y_a} d(a, p),  hardest_negative[a] = min_{y_n != y_a} d(a, n).

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings.
        squared: if True use squared euclidean distances.

    Returns:
        hardest_positive: [B] float32.
        hardest_negative: [B] float32.
        valid: [B] bool, True for anchors that have at least one positive and one negative;
            the distances of other anchors are meaningless.
    """
    distances = pairwise_distances(embeddings, squared=squared)  # [B, B]
    positive_mask = anchor_positive_mask(labels)
    negative_mask = anchor_negative_mask(labels)
    hardest_positive = masked_maximum(distances, positive_mask)  # [B]
    hardest_negative = masked_minimum(distances, negative_mask)  # [B]
    valid = ops.logical_and(ops.any(positive_mask, axis=1), ops.any(negative_mask, axis=1))
    return hardest_positive, hardest_negative, valid


def batch_hard_triplet_loss(labels, embeddings, margin, squared=False):
    """Batch-hard triplet loss: per anchor, its hardest positive against its hardest negative.

    loss_a = relu(hp_a - hn_a + margin), or softplus(hp_a - hn_a) when margin == "soft";
    loss = mean of loss_a over the anchors that have at least one positive and one negative
    (0 when there is none). Reference: Hermans, Beyer and Leibe, "In Defense of the Triplet Loss
    for Person Re-Identification", 2017 (batch-hard and the soft margin).

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings (any float dtype; computed in float32).
        margin: float, or the string "soft" for the soft margin.
        squared: if True use squared euclidean distances.

    Returns:
        loss: scalar float32.
    """
    hardest_positive, hardest_negative, valid = batch_hard_distances(labels, embeddings, squared)
    difference = hardest_positive - hardest_negative  # [B]
    if isinstance(margin, str):
        if margin != "soft":
            raise ValueError(f'margin must be a number or "soft", got {margin!r}')
        anchor_losses = ops.softplus(difference)
    else:
        anchor_losses = ops.relu(difference + margin)
    valid = ops.cast(valid, "float32")
    return ops.sum(anchor_losses * valid) / ops.maximum(ops.sum(valid), 1.0)


def batch_semihard_triplet_loss(labels, embeddings, margin, squared=False):
    """Semi-hard triplet loss (FaceNet): for every positive pair, its closest semi-hard negative.

    For a positive pair (a, p) the negative is n* = argmin {d(a,n) : d(a,n) > d(a,p)}, or, when no
    negative is farther than p, the farthest negative argmax d(a,n).
    loss = Σ_{positive pairs} relu(d(a,p) - d(a,n*) + margin) / #{positive pairs}
    (0 when there is no positive pair; pairs whose anchor has no negative contribute 0).
    Computed in O(B²) memory with one sort per anchor (see the module docstring).
    Reference: Schroff, Kalenichenko and Philbin, "FaceNet: A Unified Embedding for Face
    Recognition and Clustering", CVPR 2015.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings (any float dtype; computed in float32).
        margin: float, the margin m.
        squared: if True use squared euclidean distances.

    Returns:
        loss: scalar float32.
    """
    distances = pairwise_distances(embeddings, squared=squared)  # [B, B]
    positive_mask = anchor_positive_mask(labels)
    negative_mask = anchor_negative_mask(labels)

    # Each anchor's negatives in increasing distance; non-negatives sort last.
    negative_order = ops.argsort(ops.where(negative_mask, distances, float("inf")), axis=1)
    sorted_negatives = ops.take_along_axis(distances, negative_order, axis=1)  # [B, B]
    num_negatives = ops.sum(ops.cast(negative_mask, "int32"), axis=1, keepdims=True)  # [B, 1]

    # #{n: d_an <= d_ap} is the index of the first negative farther than p; past the last
    # negative it is clipped to the last one, the farthest, as the definition asks.
    order, negatives_at_or_below = _sort_negatives_with_queries(
        distances, negative_mask, _nudge(distances, +1.0), positive_mask
    )
    chosen_index = ops.minimum(ops.cast(negatives_at_or_below, "int32"), ops.maximum(num_negatives - 1, 0))
    chosen_negative = ops.take_along_axis(sorted_negatives, chosen_index, axis=1)  # [B, 2B]

    zeros = ops.zeros_like(distances)
    is_query = _in_sorted_order(zeros, ops.cast(positive_mask, "float32"), order)  # [B, 2B]
    sorted_positives = _in_sorted_order(zeros, distances, order)  # [B, 2B]
    has_negative = ops.cast(num_negatives > 0, "float32")  # [B, 1]
    pair_losses = is_query * has_negative * ops.relu(sorted_positives - chosen_negative + margin)
    num_positive_pairs = ops.sum(ops.cast(positive_mask, "float32"))
    return ops.sum(pair_losses) / ops.maximum(num_positive_pairs, 1.0)


def embedding_statistics(labels, embeddings, squared=False):
    """Mining statistics of a batch, for logging: what the triplet losses see.

    Returns a dict of scalar float32: `hardest_positive_distance` and `hardest_negative_distance`
    (means of the batch-hard distances over valid anchors), `mean_distance` (mean over pairs
    i != j, a collapse detector: it goes to 0 when all embeddings collapse to one point) and
    `embedding_norm` (mean L2 norm).
    """
    embeddings = as_float32(embeddings)
    hardest_positive, hardest_negative, valid = batch_hard_distances(labels, embeddings, squared)
    valid = ops.cast(valid, "float32")
    num_valid = ops.maximum(ops.sum(valid), 1.0)
    distances = pairwise_distances(embeddings, squared=squared)
    batch = ops.cast(ops.shape(distances)[0], "float32")
    return {
        "hardest_positive_distance": ops.sum(hardest_positive * valid) / num_valid,
        "hardest_negative_distance": ops.sum(hardest_negative * valid) / num_valid,
        "mean_distance": ops.sum(distances) / ops.maximum(batch * (batch - 1.0), 1.0),
        "embedding_norm": ops.mean(ops.norm(embeddings, axis=1)),
    }
