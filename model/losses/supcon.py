"""Supervised contrastive loss (SupCon) on cosine similarities (Khosla et al., NeurIPS 2020).

    loss = supcon_loss(labels, embeddings, temperature=0.1)
    model.compile(optimizer="adam", loss=SupConLoss(temperature=0.1))
"""

import math

from keras import ops

from model.losses.base import EmbeddingLoss, register_loss
from model.losses.distances import pairwise_cosine_similarity
from model.losses.inputs import check_inputs, nan_unless_finite
from model.losses.masks import anchor_negative_mask, anchor_positive_mask
from model.losses.reductions import check_reduction, masked_logsumexp, reduce_terms


def check_temperature(temperature):
    """`temperature` as a float if it is a finite number > 0, else ValueError naming it."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature) \
            or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return float(temperature)


def temperature_logits(labels, embeddings, temperature, reduction, ref_labels, ref_embeddings, remove_diagonal,
                       relation):
    """The checked inputs of SupCon and NT-Xent: (logits = cosine similarities / τ [B, R], positive and negative
    pair masks [B, R], embeddings, ref_embeddings), the arguments as in `supcon_loss`."""
    temperature = check_temperature(temperature)
    check_reduction(reduction)
    labels, embeddings, ref_labels, ref_embeddings = check_inputs(labels, embeddings, ref_labels, ref_embeddings)
    logits = pairwise_cosine_similarity(embeddings, ref_embeddings) / temperature  # [B, R]
    positive = anchor_positive_mask(labels, ref_labels, remove_diagonal, relation)  # [B, R]
    negative = anchor_negative_mask(labels, ref_labels, relation)  # [B, R]
    return logits, positive, negative, embeddings, ref_embeddings


def supcon_loss(labels, embeddings, temperature=0.1, *, reduction="nonzero", ref_labels=None, ref_embeddings=None,
                remove_diagonal=True, relation=None):
    """Supervised contrastive loss: each anchor's positives against all its pairs, on cosine similarities.

    S = cosine similarities of the anchors (rows of `embeddings`) against the references (rows of
    `ref_embeddings`, by default the batch), P(a) and N(a) the positives and negatives of anchor a
    (model/losses/masks.py; the anchor itself is neither), and
        loss_a = -(1/|P(a)|) Σ_{p ∈ P(a)} log( exp(S_ap/τ) / Σ_{k ∈ P(a) ∪ N(a)} exp(S_ak/τ) )
    (0 for an anchor without positives), each log-sum-exp with its maximum subtracted. The loss is the
    mean of loss_a over the anchors with loss_a > 0 (reduction "nonzero", the default: PML's
    AvgNonZeroReducer) or over all anchors ("all": PML's MeanReducer). As in PML, the loss is 0 when the
    batch has no positive pair or no negative pair at all, or at most one of each (PML's GenericPairLoss
    gives 0 when every list of pairs holds at most one).
    With references (e.g. a cross-batch memory: the batch first, then the memory), `remove_diagonal=True`
    leaves out anchor i against reference i (itself); `remove_diagonal=False` is PML's `ref_emb`, where
    every reference with the anchor's label is a positive. A `relation` names the positive (1) and
    negative (-1) pairs instead of the labels (PML: a pair miner's `indices_tuple`).
    Equals pytorch-metric-learning 2.x's `SupConLoss(temperature)` with its defaults (CosineSimilarity,
    AvgNonZeroReducer).
    Reference: Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings, the anchors (computed in float32; normalised here).
        temperature: float > 0, τ.
        reduction: "nonzero" or "all" (model.losses.reductions.REDUCTIONS), the anchors the mean is over.
        ref_labels, ref_embeddings, remove_diagonal, relation: as in `model.losses.contrastive_loss` (see above).

    Returns:
        loss: scalar float32 (NaN when an embedding or reference is not finite).
    """
    logits, positive, negative, embeddings, ref_embeddings = temperature_logits(
        labels, embeddings, temperature, reduction, ref_labels, ref_embeddings, remove_diagonal, relation)
    log_denominator = masked_logsumexp(logits, ops.logical_or(positive, negative))  # [B]
    log_probability = logits - ops.expand_dims(log_denominator, 1)  # [B, R]; only read at positives
    positive_float = ops.cast(positive, "float32")
    num_positives = ops.sum(positive_float, axis=1)  # [B]
    anchor_losses = -ops.sum(ops.where(positive, log_probability, 0.0), axis=1) / ops.maximum(num_positives, 1.0)
    loss = reduce_terms(anchor_losses, ops.ones_like(anchor_losses), reduction)
    loss = ops.where(has_pml_pairs(positive, negative), loss, 0.0)
    return nan_unless_finite(loss, embeddings, ref_embeddings)


def has_pml_pairs(positive, negative):
    """Whether PML's SupCon and NT-Xent compute anything: the batch (`positive`, `negative`: [B, R] bool) has a
    positive pair and a negative pair, and more than one of either (PML's GenericPairLoss gives 0 when every
    list of pairs holds at most one) -> scalar bool."""
    num_positive = ops.sum(ops.cast(positive, "float32"))
    num_negative = ops.sum(ops.cast(negative, "float32"))
    some_of_each = ops.logical_and(num_positive > 0, num_negative > 0)
    return ops.logical_and(some_of_each, ops.logical_or(num_positive > 1, num_negative > 1))


class LossWithTemperature(EmbeddingLoss):
    """A pair loss with a `temperature` (SupCon, NT-Xent): its `loss_function(labels, embeddings, temperature,
    reduction=..., **references)`."""

    loss_function = None  # staticmethod

    def __init__(self, temperature, **kwargs):
        super().__init__(**kwargs)
        self.temperature = check_temperature(temperature)

    def _loss(self, labels, embeddings, **references):
        loss = self.loss_function(labels, embeddings, self.temperature, reduction=self.term_reduction, **references)
        return loss, {}

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}


@register_loss("supcon")
class SupConLoss(LossWithTemperature):
    """Supervised contrastive loss (see `supcon_loss`); it normalises embeddings itself.
    params.json: `"loss": "supcon", "loss_options": {"temperature": 0.1}`."""

    default_reduction = "nonzero"
    loss_function = staticmethod(supcon_loss)

    def __init__(self, temperature=0.1, **kwargs):
        super().__init__(temperature, **kwargs)


__all__ = ["LossWithTemperature", "SupConLoss", "supcon_loss"]
