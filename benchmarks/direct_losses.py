"""The direct [B, B, B] formulations of batch-all and semi-hard: the reference, kept only for benchmarks and tests.

The library (model/losses/triplet.py) computes both losses in O(B²) memory with a sort and prefix
sums. The classic way to write them builds a tensor over all triplets (a, p, n) of the batch:

    batch-all (omoindrot/tensorflow-triplet-loss): a triplet mask [B, B, B] and the loss of every
        triplet d(a,p) - d(a,n) + margin, masked, clipped at 0, summed and divided by the count of
        triplets with positive loss;
    semi-hard (FaceNet, as in tensorflow-addons' triplet_semihard_loss): for every positive pair
        (a, p), a [B, B, B] mask of the negatives farther than p, searched for its minimum.

Both are short, obviously right, and cost O(B³) time and memory (4 GiB per float32 [B, B, B]
tensor at B = 1024, 256 GiB at B = 4096). They are kept here, outside the library, as the
reference that tests/test_direct_formulation.py compares the library against (values and
gradients) and that benchmarks/bench_losses.py times the library against. Do not train with them.
"""
from keras import ops

from model.losses.distances import pairwise_distances
from model.losses.masks import anchor_negative_mask, anchor_positive_mask, same_label_mask
from model.losses.reductions import masked_maximum, masked_minimum


def triplet_mask(labels):
    """[B, B, B] bool: True at (a, p, n) when a != p, label(a) == label(p) and label(n) != label(a).

    Args:
        labels: [B] or [B, 1] integer labels.
    """
    positive = anchor_positive_mask(labels)  # [B, B]: a != p, same label
    negative = anchor_negative_mask(labels)  # [B, B]: different label (so n != a, n != p)
    return ops.logical_and(ops.expand_dims(positive, 2), ops.expand_dims(negative, 1))  # [B, B, B]


def direct_batch_all_triplet_loss(labels, embeddings, margin, squared=False):
    """Batch-all triplet loss through the full [B, B, B] tensor of triplet losses.

    loss = Σ_{valid (a,p,n)} relu(d(a,p) - d(a,n) + margin) / #{valid triplets with loss > 0}
    fraction_positive_triplets = #{valid triplets with loss > 0} / #{valid triplets}
    (0 for both when there is no such triplet). Reference: Hermans, Beyer and Leibe, "In Defense
    of the Triplet Loss for Person Re-Identification", 2017.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings.
        margin: float.
        squared: if True use squared euclidean distances.

    Returns:
        loss: scalar float32.
        fraction_positive_triplets: scalar float32.
    """
    distances = pairwise_distances(embeddings, squared=squared)  # [B, B]
    anchor_positive = ops.expand_dims(distances, 2)  # [B, B, 1]
    anchor_negative = ops.expand_dims(distances, 1)  # [B, 1, B]
    triplet_losses = anchor_positive - anchor_negative + margin  # [B, B, B]
    mask = ops.cast(triplet_mask(labels), "float32")  # [B, B, B]
    triplet_losses = ops.maximum(mask * triplet_losses, 0.0)  # [B, B, B]
    num_positive_triplets = ops.sum(ops.cast(triplet_losses > 0.0, "float32"))
    num_valid_triplets = ops.sum(mask)
    loss = ops.sum(triplet_losses) / ops.maximum(num_positive_triplets, 1.0)
    return loss, num_positive_triplets / ops.maximum(num_valid_triplets, 1.0)


def direct_batch_semihard_triplet_loss(labels, embeddings, margin, squared=False):
    """Semi-hard triplet loss through a [B, B, B] mask of the negatives farther than each positive.

    For a positive pair (a, p): n* = argmin {d(a,n) : label(n) != label(a), d(a,n) > d(a,p)}, or
    the farthest negative of a when none is farther than p.
    loss = Σ_{positive pairs} relu(d(a,p) - d(a,n*) + margin) / #{positive pairs}
    (0 without positive pairs; pairs whose anchor has no negative contribute 0, as in the library).
    Reference: Schroff, Kalenichenko and Philbin, "FaceNet", CVPR 2015.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings.
        margin: float.
        squared: if True use squared euclidean distances.

    Returns:
        loss: scalar float32.
    """
    distances = pairwise_distances(embeddings, squared=squared)  # [B, B]
    negative_mask = ops.logical_not(same_label_mask(labels))  # [B, B]
    anchor_negative = ops.expand_dims(distances, 1)  # [B, 1, B]: d(a, n), the same for every p
    # farther[a, p, n]: n is a negative of a, farther from a than p is.
    farther = ops.logical_and(
        ops.expand_dims(negative_mask, 1), anchor_negative > ops.expand_dims(distances, 2)
    )  # [B, B, B]
    semihard = masked_minimum(anchor_negative, farther, axis=2)  # [B, B]: min over n, broadcast over p
    farthest = ops.expand_dims(masked_maximum(distances, negative_mask), 1)  # [B, 1]
    chosen_negative = ops.where(ops.any(farther, axis=2), semihard, farthest)  # [B, B]
    positive_mask = ops.cast(anchor_positive_mask(labels), "float32")  # [B, B]
    has_negative = ops.cast(ops.any(negative_mask, axis=1, keepdims=True), "float32")  # [B, 1]
    pair_losses = positive_mask * has_negative * ops.relu(distances - chosen_negative + margin)
    return ops.sum(pair_losses) / ops.maximum(ops.sum(positive_mask), 1.0)
