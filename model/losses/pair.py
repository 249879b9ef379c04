"""Pair losses: contrastive and lifted structured, in a batch or against references.

    loss = contrastive_loss(labels, embeddings, margin=1.0)
    loss = lifted_struct_loss(labels, embeddings, margin=1.0)

Each takes `ref_labels, ref_embeddings, remove_diagonal, relation` as the triplet losses do
(model/losses/masks.py), and has a thin Keras class registered by name.
"""

from keras import ops

from model.losses.base import MARGIN, LossWithMargin, register_loss
from model.losses.distances import pairwise_distances
from model.losses.inputs import check_inputs, nan_unless_finite
from model.losses.masks import anchor_negative_mask, anchor_positive_mask
from model.losses.reductions import check_reduction, masked_logsumexp, reduce_terms

HINGES = ("distance", "squared_distance")  # what contrastive_loss's hinge is on


def _upper_triangle(batch_size):
    """[B, B] bool, True for i < j: each unordered pair once."""
    rows = ops.expand_dims(ops.arange(batch_size), 1)
    cols = ops.expand_dims(ops.arange(batch_size), 0)
    return rows < cols


def contrastive_loss(labels, embeddings, margin=1.0, *, hinge="distance", reduction="all", ref_labels=None,
                     ref_embeddings=None, remove_diagonal=True, relation=None):
    """Contrastive loss over all (anchor, reference) pairs; by default, over the pairs of the batch.

    Per pair (a, r), y_ar = [label_a == label_r] and d euclidean:
        hinge="distance" (the default):   y_ar·d_ar² + (1 - y_ar)·relu(margin - d_ar)²   (Hadsell et al.)
        hinge="squared_distance":         y_ar·d_ar² + (1 - y_ar)·relu(margin - d_ar²)
    the second being the "online contrastive loss" of the PyTorch online-metric-learning project's README
    (the hinge on the squared distance, not squared; its margin is on d², e.g. 0.1 for L2-normalised
    embeddings). loss = the mean of the pair terms over all pairs (reduction "all", the default) or over
    the pairs whose term is > 0 ("nonzero", that project's mean); 0 when there is none.
    The pairs are every anchor (row of `embeddings`) against every reference (row of `ref_embeddings`)
    except, with `remove_diagonal`, anchor i against reference i, itself. Without references they are
    the unordered pairs i < j of the batch (the same mean as over the ordered pairs i != j). With a
    `relation`, y_ar = [relation_ar == 1] and the pairs are the ordered pairs whose relation is 1 or -1
    (those it calls neither are left out).
    Reference: Hadsell, Chopra and LeCun, "Dimensionality Reduction by Learning an Invariant
    Mapping", CVPR 2006.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings, the anchors (computed in float32).
        margin: float, distance (or squared distance) beyond which negative pairs cost nothing.
        hinge: "distance" or "squared_distance" (HINGES), see above.
        reduction: "all" or "nonzero" (model.losses.reductions.REDUCTIONS), the pairs the mean is over.
        ref_labels: [R] or [R, 1] integer labels of the references, or None (the batch).
        ref_embeddings: [R, D] float references, or None (the batch); given with `ref_labels`.
        remove_diagonal: if True, reference i is anchor i itself and not a pair (see model/losses/masks.py).
        relation: [B, R] int, 1 positive, -1 negative, 0 neither, instead of the labels' equality, or None.

    Returns:
        loss: scalar float32.
    """
    if hinge not in HINGES:
        raise ValueError(f"hinge must be one of {', '.join(map(repr, HINGES))}, got {hinge!r}")
    check_reduction(reduction)
    labels, embeddings, ref_labels, ref_embeddings = check_inputs(labels, embeddings, ref_labels, ref_embeddings)
    positive = anchor_positive_mask(labels, ref_labels, remove_diagonal, relation)  # [B, R]
    if ref_embeddings is None and remove_diagonal and relation is None:
        pairs = _upper_triangle(ops.shape(positive)[0])  # [B, B]: each unordered pair once
    else:  # [B, R]: every pair with a relation (with labels, all but the self pairs)
        pairs = ops.logical_or(positive, anchor_negative_mask(labels, ref_labels, relation))
    if hinge == "distance":
        distances = pairwise_distances(embeddings, ref_embeddings=ref_embeddings)  # [B, R]
        pair_losses = ops.where(positive, ops.square(distances), ops.square(ops.relu(margin - distances)))
    else:  # squared distances straight from the expansion: no square root, no kink at d = 0
        squared = pairwise_distances(embeddings, squared=True, ref_embeddings=ref_embeddings)  # [B, R]
        pair_losses = ops.where(positive, squared, ops.relu(margin - squared))
    return nan_unless_finite(reduce_terms(pair_losses, pairs, reduction), embeddings, ref_embeddings)


def lifted_struct_loss(labels, embeddings, margin=1.0, *, reduction="all", ref_labels=None, ref_embeddings=None,
                       remove_diagonal=True, relation=None):
    """Lifted structured loss over the positive (anchor, reference) pairs (euclidean distance).

    For each positive pair (a, r), a an anchor (row of `embeddings`) and r a reference (row of
    `ref_embeddings`, by default the batch):
        J_ar = log( Σ_{k neg of a} exp(margin - D_ak) + Σ_{l neg of r} exp(margin - D_lr) ) + D_ar
    where k ranges over the references and l over the anchors, so that every distance is one of
    the [B, R] matrix; loss = Σ relu(J_ar)² / (2·|P|), |P| the number of positive pairs (reduction
    "all", the default) or of those with J_ar > 0 ("nonzero"); 0 when none. Without references the
    pairs are the unordered positive pairs i < j of the batch, and both sums range over the batch, as
    in the paper; with a `relation` (which need not be symmetric) the pairs are the ordered (anchor,
    reference) pairs it calls positive. Each log-sum-exp is computed with its
    maximum subtracted, so large distances do not underflow; a pair without any negative has no J
    (it contributes 0).
    Reference: Oh Song, Xiang, Jegelka and Savarese, "Deep Metric Learning via Lifted Structured
    Feature Embedding", CVPR 2016.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings, the anchors (computed in float32).
        margin: float.
        reduction: "all" or "nonzero" (model.losses.reductions.REDUCTIONS), the positive pairs the mean is over.
        ref_labels, ref_embeddings, remove_diagonal, relation: as in `contrastive_loss`.

    Returns:
        loss: scalar float32.
    """
    check_reduction(reduction)
    labels, embeddings, ref_labels, ref_embeddings = check_inputs(labels, embeddings, ref_labels, ref_embeddings)
    in_batch = ref_embeddings is None and remove_diagonal and relation is None
    distances = pairwise_distances(embeddings, ref_embeddings=ref_embeddings)  # [B, R]
    negative_mask = anchor_negative_mask(labels, ref_labels, relation)  # [B, R]
    logits = margin - distances  # [B, R]
    log_anchor = masked_logsumexp(logits, negative_mask, axis=1)  # [B]: log Σ_{k neg of a} exp(margin - D_ak)
    # [R]: log Σ_{l neg of r} exp(margin - D_lr); in a batch, the matrix is symmetric and this is log_anchor.
    log_reference = log_anchor if in_batch else masked_logsumexp(logits, negative_mask, axis=0)
    pair_log = ops.logaddexp(ops.expand_dims(log_anchor, 1), ops.expand_dims(log_reference, 0))  # [B, R], stable
    objective = ops.relu(pair_log + distances)  # [B, R]
    pairs = anchor_positive_mask(labels, ref_labels, remove_diagonal, relation)
    if in_batch:
        pairs = ops.logical_and(pairs, _upper_triangle(ops.shape(distances)[0]))
    # Halving the mean is exact in floating point: Σ/(2·|P|) as before, written once with the reduction.
    loss = reduce_terms(ops.square(objective), pairs, reduction) / 2.0
    return nan_unless_finite(loss, embeddings, ref_embeddings)


@register_loss("contrastive", options=(MARGIN,))
class ContrastiveLoss(LossWithMargin):
    """Contrastive loss over all pairs (see `contrastive_loss`): `hinge` "distance" (Hadsell et al.) or
    "squared_distance" (the PyTorch online-metric-learning project), `reduction` "all" or "nonzero"."""

    string_options = {"hinge": HINGES}
    default_reduction = "all"

    def __init__(self, margin=1.0, hinge="distance", **kwargs):
        super().__init__(margin, **kwargs)
        if hinge not in HINGES:
            raise ValueError(f"hinge must be one of {', '.join(map(repr, HINGES))}, got {hinge!r}")
        self.hinge = hinge

    def _loss(self, labels, embeddings, **references):
        loss = contrastive_loss(
            labels, embeddings, self.margin, hinge=self.hinge, reduction=self.term_reduction, **references
        )
        return loss, {}

    def get_config(self):
        return {**super().get_config(), "hinge": self.hinge}


@register_loss("lifted", options=(MARGIN,))
class LiftedStructLoss(LossWithMargin):
    """Lifted structured loss (see `lifted_struct_loss`)."""

    default_reduction = "all"

    def __init__(self, margin=1.0, **kwargs):
        super().__init__(margin, **kwargs)

    def _loss(self, labels, embeddings, **references):
        return lifted_struct_loss(labels, embeddings, self.margin, reduction=self.term_reduction, **references), {}

__all__ = ["HINGES", "ContrastiveLoss", "LiftedStructLoss", "contrastive_loss", "lifted_struct_loss"]
