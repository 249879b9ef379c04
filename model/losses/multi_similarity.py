"""Multi-similarity loss with its pair mining, on cosine similarities (Wang et al., CVPR 2019).

    loss = multi_similarity_loss(labels, embeddings, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1)
"""

from keras import ops

from model.losses.base import EmbeddingLoss, register_loss
from model.losses.distances import pairwise_cosine_similarity
from model.losses.inputs import check_inputs, nan_unless_finite
from model.losses.masks import anchor_negative_mask, anchor_positive_mask
from model.losses.reductions import (
    check_reduction,
    masked_log1p_sum_exp,
    masked_maximum,
    masked_minimum,
    reduce_terms,
)


def multi_similarity_loss(labels, embeddings, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1, *, reduction="all",
                          ref_labels=None, ref_embeddings=None, remove_diagonal=True, relation=None):
    """Multi-similarity loss with its pair mining, on cosine similarities.

    S = cosine similarities of the anchors (rows of `embeddings`) against the references (rows of
    `ref_embeddings`, by default the batch). For anchor a, a positive pair is kept if
    S_ap - ε < max_n S_an, a negative pair if S_an + ε > min_p S_ap. Then
        loss_a = (1/α)·log(1 + Σ_{kept p} exp(-α(S_ap - base))) + (1/β)·log(1 + Σ_{kept n} exp(β(S_an - base)))
    loss = mean of loss_a over all anchors (reduction "all", the default; an anchor with nothing kept, e.g.
    without any positive among the references, gives 0) or over the anchors with loss_a > 0 ("nonzero").
    NaN when an embedding or reference is not finite.
    Reference: Wang et al., "Multi-Similarity Loss with General Pair Weighting for Deep Metric
    Learning", CVPR 2019.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings, the anchors (computed in float32; normalised here).
        alpha, beta: float, the positive and negative scales.
        base: float, the similarity offset λ.
        epsilon: float, the mining margin.
        reduction: "all" or "nonzero" (model.losses.reductions.REDUCTIONS), the anchors the mean is over.
        ref_labels, ref_embeddings, remove_diagonal, relation: as in `contrastive_loss`.

    Returns:
        loss: scalar float32.
    """
    check_reduction(reduction)
    labels, embeddings, ref_labels, ref_embeddings = check_inputs(labels, embeddings, ref_labels, ref_embeddings)
    similarity = pairwise_cosine_similarity(embeddings, ref_embeddings)  # [B, R]
    positive_mask = anchor_positive_mask(labels, ref_labels, remove_diagonal, relation)
    negative_mask = anchor_negative_mask(labels, ref_labels, relation)
    hardest_negative = ops.expand_dims(masked_maximum(similarity, negative_mask), 1)  # [B, 1]
    hardest_positive = ops.expand_dims(masked_minimum(similarity, positive_mask), 1)  # [B, 1]
    kept_positive = ops.logical_and(positive_mask, similarity - epsilon < hardest_negative)
    kept_negative = ops.logical_and(negative_mask, similarity + epsilon > hardest_positive)
    positive_term = masked_log1p_sum_exp(-alpha * (similarity - base), kept_positive) / alpha
    negative_term = masked_log1p_sum_exp(beta * (similarity - base), kept_negative) / beta
    anchor_losses = positive_term + negative_term  # [B]
    loss = reduce_terms(anchor_losses, ops.ones_like(anchor_losses), reduction)
    # A NaN similarity fails every mining comparison and would drop out, leaving a finite loss.
    return nan_unless_finite(loss, embeddings, ref_embeddings)



@register_loss("multi_similarity")
class MultiSimilarityLoss(EmbeddingLoss):
    """Multi-similarity loss (see `multi_similarity_loss`); it normalises embeddings itself."""

    default_reduction = "all"

    def __init__(self, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1, **kwargs):
        super().__init__(**kwargs)
        self.alpha, self.beta = float(alpha), float(beta)
        self.base, self.epsilon = float(base), float(epsilon)

    def _loss(self, labels, embeddings, **references):
        loss = multi_similarity_loss(
            labels, embeddings, self.alpha, self.beta, self.base, self.epsilon, reduction=self.term_reduction,
            **references,
        )
        return loss, {}

    def get_config(self):
        config = {**super().get_config(), "alpha": self.alpha, "beta": self.beta}
        return {**config, "base": self.base, "epsilon": self.epsilon}

__all__ = ["MultiSimilarityLoss", "multi_similarity_loss"]
