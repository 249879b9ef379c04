"""Mining statistics of a batch, logged by training whatever the loss: what the triplet losses see."""

from keras import ops

from model.losses.triplet import anchor_reference_distances, hardest_distances


def embedding_statistics(
    labels, embeddings, squared=False, *, ref_labels=None, ref_embeddings=None, remove_diagonal=True, relation=None
):
    """Mining statistics of a batch, for logging: what the triplet losses see.

    Returns a dict of scalar float32: `hardest_positive_distance` and `hardest_negative_distance`
    (means of the batch-hard distances over valid anchors), `mean_distance` (mean over the
    (anchor, reference) pairs, an anchor against itself left out: a collapse detector, it goes to 0
    when all embeddings collapse to one point) and `embedding_norm` (mean L2 norm of the anchors).
    The references are the batch unless given (see `batch_all_triplet_loss`).
    """
    distances, positive_mask, negative_mask, (embeddings, _) = anchor_reference_distances(
        labels, embeddings, ref_labels, ref_embeddings, remove_diagonal, squared, relation
    )
    hardest_positive, hardest_negative, valid = hardest_distances(distances, positive_mask, negative_mask)
    valid = ops.cast(valid, "float32")
    num_valid = ops.maximum(ops.sum(valid), 1.0)
    # Positives and negatives together are every pair but an anchor against itself.
    pairs = ops.cast(ops.logical_or(positive_mask, negative_mask), "float32")  # [B, R]
    return {
        "hardest_positive_distance": ops.sum(hardest_positive * valid) / num_valid,
        "hardest_negative_distance": ops.sum(hardest_negative * valid) / num_valid,
        "mean_distance": ops.sum(distances * pairs) / ops.maximum(ops.sum(pairs), 1.0),
        "embedding_norm": ops.mean(ops.norm(embeddings, axis=1)),
    }

__all__ = ["embedding_statistics"]
