"""The classic import path of the online triplet losses (omoindrot/tensorflow-triplet-loss):

    from model.triplet_loss import batch_all_triplet_loss, batch_hard_triplet_loss
    loss, fraction = batch_all_triplet_loss(labels, embeddings, margin, squared=False)

The functions live in `model.losses.triplet` (with their Keras classes); this module keeps the path
that code written for the TensorFlow triplet-loss recipe imports.
"""

from model.losses.triplet import (
    batch_all_triplet_loss,
    batch_hard_distances,
    batch_hard_triplet_loss,
    batch_semihard_triplet_loss,
)

__all__ = ["batch_all_triplet_loss", "batch_hard_distances", "batch_hard_triplet_loss", "batch_semihard_triplet_loss"]
