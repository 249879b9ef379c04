"""Circle loss on cosine similarities, pair-wise labels (Sun et al., CVPR 2020).

    loss = circle_loss(labels, embeddings, margin=0.4, gamma=80.0)
    model.compile(optimizer="adam", loss=CircleLoss(margin=0.25, gamma=256.0))
"""

import math

from keras import ops

from model.losses.base import EmbeddingLoss, register_loss
from model.losses.distances import pairwise_cosine_similarity
from model.losses.inputs import check_inputs, nan_unless_finite
from model.losses.masks import anchor_negative_mask, anchor_positive_mask
from model.losses.reductions import check_reduction, masked_logsumexp, reduce_terms


def _check_arguments(margin, gamma):
    """(margin, gamma) as floats: margin a finite number, gamma a finite number > 0; ValueError naming the argument."""
    for name, value in (("margin", margin), ("gamma", gamma)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if gamma <= 0:
        raise ValueError(f"gamma must be a finite number > 0 (the scale of the similarities), got {gamma!r}")
    return float(margin), float(gamma)


def circle_loss(labels, embeddings, margin=0.4, gamma=80.0, *, reduction="nonzero", ref_labels=None,
                ref_embeddings=None, remove_diagonal=True, relation=None):
    """Circle loss: each anchor's positive and negative similarities, each weighted by how far it is from its optimum.

    S = cosine similarities of the anchors (rows of `embeddings`) against the references (rows of
    `ref_embeddings`, by default the batch), P(a) and N(a) the positives and negatives of anchor a, m the
    margin and γ the scale. With the weights α_p = relu(1 + m - S_ap) and α_n = relu(S_an + m), held
    constant in the gradient (as in the paper and PML), and the margins Δ_p = 1 - m, Δ_n = m:
        loss_a = softplus( log Σ_{p ∈ P(a)} exp(-γ α_p (S_ap - Δ_p)) + log Σ_{n ∈ N(a)} exp(γ α_n (S_an - Δ_n)) )
    each log-sum-exp with its maximum subtracted; loss_a = 0 for an anchor without a positive or without a
    negative. The loss is the mean of loss_a over the anchors with loss_a > 0 (reduction "nonzero", the
    default: PML's AvgNonZeroReducer) or over all anchors ("all"). As in PML, the loss is 0 when the batch
    holds at most one positive pair and at most one negative pair.
    References, `remove_diagonal` and `relation` as in `supcon_loss` (`remove_diagonal=False` is PML's
    `ref_emb`).
    Equals pytorch-metric-learning 2.x's `CircleLoss(m=margin, gamma=gamma)` with its defaults
    (CosineSimilarity, AvgNonZeroReducer). The paper suggests m = 0.25, γ = 256 for faces, m = 0.25,
    γ = 128 for person re-identification and m = 0.4, γ = 80 (the defaults) for fine-grained retrieval.
    Reference: Sun et al., "Circle Loss: A Unified Perspective of Pair Similarity Optimization", CVPR 2020.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings, the anchors (computed in float32; normalised here).
        margin: float, m, the relaxation (PML's `m`).
        gamma: float > 0, γ, the scale.
        reduction: "nonzero" or "all" (model.losses.reductions.REDUCTIONS), the anchors the mean is over.
        ref_labels, ref_embeddings, remove_diagonal, relation: as in `supcon_loss`.

    Returns:
        loss: scalar float32 (NaN when an embedding or reference is not finite).
    """
    margin, gamma = _check_arguments(margin, gamma)
    check_reduction(reduction)
    labels, embeddings, ref_labels, ref_embeddings = check_inputs(labels, embeddings, ref_labels, ref_embeddings)
    similarity = pairwise_cosine_similarity(embeddings, ref_embeddings)  # [B, R]
    positive = anchor_positive_mask(labels, ref_labels, remove_diagonal, relation)  # [B, R]
    negative = anchor_negative_mask(labels, ref_labels, relation)  # [B, R]
    held = ops.stop_gradient(similarity)
    positive_logits = -gamma * ops.relu(1.0 + margin - held) * (similarity - (1.0 - margin))  # [B, R]
    negative_logits = gamma * ops.relu(held + margin) * (similarity - margin)  # [B, R]
    both = masked_logsumexp(positive_logits, positive) + masked_logsumexp(negative_logits, negative)  # [B]
    has_both = ops.logical_and(ops.any(positive, axis=1), ops.any(negative, axis=1))  # [B]
    anchor_losses = ops.where(has_both, ops.softplus(ops.where(has_both, both, 0.0)), 0.0)
    loss = reduce_terms(anchor_losses, ops.ones_like(anchor_losses), reduction)
    num_positive = ops.sum(ops.cast(positive, "float32"))
    num_negative = ops.sum(ops.cast(negative, "float32"))
    loss = ops.where(ops.logical_or(num_positive > 1, num_negative > 1), loss, 0.0)
    return nan_unless_finite(loss, embeddings, ref_embeddings)


@register_loss("circle")
class CircleLoss(EmbeddingLoss):
    """Circle loss (see `circle_loss`); it normalises embeddings itself.
    params.json: `"loss": "circle", "loss_options": {"margin": 0.4, "gamma": 80}` (not the shared "margin" key,
    whose default is the triplet losses')."""

    default_reduction = "nonzero"

    def __init__(self, margin=0.4, gamma=80.0, **kwargs):
        super().__init__(**kwargs)
        self.margin, self.gamma = _check_arguments(margin, gamma)

    def _loss(self, labels, embeddings, **references):
        loss = circle_loss(labels, embeddings, self.margin, self.gamma, reduction=self.term_reduction, **references)
        return loss, {}

    def get_config(self):
        return {**super().get_config(), "margin": self.margin, "gamma": self.gamma}


__all__ = ["CircleLoss", "circle_loss"]
