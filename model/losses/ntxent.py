"""NT-Xent, the normalized temperature-scaled cross-entropy of SimCLR, with labels: one term per positive pair.

    loss = ntxent_loss(labels, embeddings, temperature=0.07)
    model.compile(optimizer="adam", loss=NTXentLoss(temperature=0.07))
"""

from keras import ops

from model.losses.base import register_loss
from model.losses.inputs import nan_unless_finite
from model.losses.reductions import masked_logsumexp, reduce_terms
from model.losses.supcon import LossWithTemperature, has_pml_pairs, temperature_logits


def ntxent_loss(labels, embeddings, temperature=0.07, *, reduction="all", ref_labels=None, ref_embeddings=None,
                remove_diagonal=True, relation=None):
    """NT-Xent (InfoNCE) over the positive pairs: each positive against its anchor's negatives.

    S = cosine similarities of the anchors (rows of `embeddings`) against the references (rows of
    `ref_embeddings`, by default the batch), N(a) the negatives of anchor a. For each positive pair (a, p):
        loss_ap = -log( exp(S_ap/τ) / (exp(S_ap/τ) + Σ_{n ∈ N(a)} exp(S_an/τ)) )
                = softplus( log Σ_{n ∈ N(a)} exp(S_an/τ) - S_ap/τ )
    (the log-sum-exp with its maximum subtracted; 0 for an anchor without negatives). The loss is the
    mean of loss_ap over all positive pairs (reduction "all", the default: PML's MeanReducer) or over
    those with loss_ap > 0 ("nonzero"). As in PML, the loss is 0 when the batch has no positive pair or
    no negative pair, or at most one of each. Without references the pairs are the ordered pairs (a, p),
    a ≠ p, of the batch: with two views per class this is SimCLR's loss over its 2N anchors.
    References, `remove_diagonal` and `relation` as in `supcon_loss` (`remove_diagonal=False` is PML's
    `ref_emb`).
    Equals pytorch-metric-learning 2.x's `NTXentLoss(temperature)` with its defaults (CosineSimilarity,
    MeanReducer over the positive pairs).
    References: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations"
    (SimCLR), ICML 2020; Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss Objective",
    NeurIPS 2016.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings, the anchors (computed in float32; normalised here).
        temperature: float > 0, τ.
        reduction: "all" or "nonzero" (model.losses.reductions.REDUCTIONS), the positive pairs the mean is over.
        ref_labels, ref_embeddings, remove_diagonal, relation: as in `supcon_loss`.

    Returns:
        loss: scalar float32 (NaN when an embedding or reference is not finite).
    """
    logits, positive, negative, embeddings, ref_embeddings = temperature_logits(
        labels, embeddings, temperature, reduction, ref_labels, ref_embeddings, remove_diagonal, relation)
    log_negatives = masked_logsumexp(logits, negative)  # [B]; -1e12 without negatives: the pair term is then 0
    pair_losses = ops.softplus(ops.expand_dims(log_negatives, 1) - logits)  # [B, R]; only read at positives
    loss = reduce_terms(ops.where(positive, pair_losses, 0.0), positive, reduction)
    loss = ops.where(has_pml_pairs(positive, negative), loss, 0.0)
    return nan_unless_finite(loss, embeddings, ref_embeddings)


@register_loss("ntxent")
class NTXentLoss(LossWithTemperature):
    """NT-Xent loss (see `ntxent_loss`); it normalises embeddings itself.
    params.json: `"loss": "ntxent", "loss_options": {"temperature": 0.07}`."""

    default_reduction = "all"
    loss_function = staticmethod(ntxent_loss)

    def __init__(self, temperature=0.07, **kwargs):
        super().__init__(temperature, **kwargs)


__all__ = ["NTXentLoss", "ntxent_loss"]
