"""FastAP: the average precision of each anchor's ranking, through soft histograms (Cakir et al., CVPR 2019).

    loss = fast_ap_loss(labels, embeddings, num_bins=10)
    model.compile(optimizer="adam", loss=FastAPLoss(num_bins=10))

It ranks each anchor's batch: references (a cross-batch memory) are refused, as PML's FastAPLoss refuses
`ref_emb`.
"""

import math

from keras import ops

from model.losses.base import EmbeddingLoss, register_loss
from model.losses.distances import pairwise_distances
from model.losses.inputs import check_inputs, nan_unless_finite
from model.losses.masks import anchor_negative_mask, anchor_positive_mask
from model.losses.reductions import check_reduction, reduce_terms
from model.ops import l2_normalize

_NO_REFERENCES = ("fast_ap_loss ranks each anchor's own batch and takes no references (ref_labels, ref_embeddings): "
                  "pytorch-metric-learning's FastAPLoss does not support ref_emb either. Drop the references (a "
                  "cross-batch memory does not apply to FastAP), or pass a [B, B] relation to choose the pairs")


def _check_num_bins(num_bins):
    """`num_bins` as an int if it is an integer >= 1, else ValueError naming it."""
    if isinstance(num_bins, bool) or not isinstance(num_bins, (int, float)) or not math.isfinite(num_bins) \
            or num_bins != int(num_bins) or num_bins < 1:
        raise ValueError(f"num_bins must be an integer >= 1 (the histogram's bins), got {num_bins!r}")
    return int(num_bins)


def fast_ap_loss(labels, embeddings, num_bins=10, *, reduction="all", ref_labels=None, ref_embeddings=None,
                 remove_diagonal=True, relation=None):
    """FastAP: 1 - the average precision of each anchor's ranking of the batch, from soft histograms.

    With the embeddings L2-normalised, d_aj = ||x_a - x_j||² ∈ [0, 4] (squared euclidean distances; PML's
    default `LpDistance(power=2)`), Δ = 4 / num_bins and the bin centres c_k = k·Δ, k = 0..num_bins, each
    pair falls into its two nearest bins by the triangular pulse δ_k(d) = relu(1 - |d - c_k| / Δ). For
    anchor a with positives P(a) and negatives N(a) (model/losses/masks.py; the anchor itself is neither),
    the histograms h⁺_ak = Σ_{p ∈ P(a)} δ_k(d_ap) and h⁻_ak = Σ_{n ∈ N(a)} δ_k(d_an), their cumulative sums
    H⁺_ak = Σ_{k' <= k} h⁺_ak' and H⁻_ak, and H = H⁺ + H⁻:
        FastAP_a = (1/|P(a)|) Σ_k h⁺_ak · H⁺_ak / H_ak        (terms with h⁺·H⁺ = 0 or H = 0 left out)
    and loss_a = 1 - FastAP_a, computed as (1/|P(a)|) Σ_k h⁺_ak · H⁻_ak / H_ak: the same value, since the
    pulses of a distance sum to 1, without the cancellation of 1 - FastAP_a in float32 when it is small.
    The loss is the mean of loss_a over the anchors with a positive (reduction "all", the default: PML's
    MeanReducer) or over those with loss_a > 0 ("nonzero"); 0 when no anchor has a positive. Memory is
    O(B²) per bin (the bins are taken one at a time).
    References are refused (ValueError), as PML's FastAPLoss refuses `ref_emb`. A `relation` ([B, B]: 1
    positive, -1 negative, 0 neither; e.g. from a pair miner) chooses the positives and negatives of each
    anchor's ranking instead of the labels (PML instead weights each anchor's term by how often a miner's
    pairs name it).
    Equals pytorch-metric-learning 2.x's `FastAPLoss(num_bins)` with its defaults (LpDistance(power=2) on
    normalised embeddings, MeanReducer).
    Reference: Cakir, He, Xia, Kulis and Sclaroff, "Deep Metric Learning to Rank", CVPR 2019.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings (computed in float32; normalised here).
        num_bins: int >= 1, the histogram's bins (num_bins + 1 centres).
        reduction: "all" or "nonzero" (model.losses.reductions.REDUCTIONS), the anchors the mean is over.
        ref_labels, ref_embeddings: must be None (see above).
        remove_diagonal: if True (the default), an anchor is not its own positive.
        relation: [B, B] int, 1 positive, -1 negative, 0 neither, instead of the labels' equality, or None.

    Returns:
        loss: scalar float32 (NaN when an embedding is not finite).
    """
    num_bins = _check_num_bins(num_bins)
    if ref_labels is not None or ref_embeddings is not None:
        raise ValueError(_NO_REFERENCES)
    check_reduction(reduction)
    labels, embeddings, _, _ = check_inputs(labels, embeddings)
    squared = pairwise_distances(l2_normalize(embeddings), squared=True)  # [B, B], in [0, 4]
    positive = ops.cast(anchor_positive_mask(labels, None, remove_diagonal, relation), "float32")  # [B, B]
    negative = ops.cast(anchor_negative_mask(labels, None, relation), "float32")  # [B, B]
    width = 4.0 / num_bins
    positive_histogram, negative_histogram = [], []
    for k in range(num_bins + 1):  # one [B, B] pulse at a time
        pulse = ops.relu(1.0 - ops.abs(squared - k * width) / width)  # [B, B]
        positive_histogram.append(ops.sum(pulse * positive, axis=1))
        negative_histogram.append(ops.sum(pulse * negative, axis=1))
    positive_histogram = ops.stack(positive_histogram, axis=1)  # [B, K]: h⁺
    cumulative_positive = ops.cumsum(positive_histogram, axis=1)  # [B, K]: H⁺
    cumulative_negative = ops.cumsum(ops.stack(negative_histogram, axis=1), axis=1)  # [B, K]: H⁻
    cumulative = cumulative_positive + cumulative_negative  # [B, K]: H
    counted = ops.logical_and(positive_histogram * cumulative_positive > 0, cumulative > 0)  # [B, K]
    # 1 - FastAP_a as (1/|P(a)|) Σ_k h⁺_ak·H⁻_ak / H_ak: the pulses of a distance sum to 1 (Σ_k h⁺_ak = |P(a)|),
    # so this is the same value, without the cancellation of 1 - Σ... in float32 when the loss is small.
    miss = ops.where(counted, positive_histogram * cumulative_negative / ops.where(counted, cumulative, 1.0), 0.0)
    num_positives = ops.sum(positive, axis=1)  # [B]
    has_positive = num_positives > 0
    anchor_losses = ops.sum(miss, axis=1) / ops.maximum(num_positives, 1.0)  # [B]: 1 - FastAP_a
    loss = reduce_terms(ops.where(has_positive, anchor_losses, 0.0), has_positive, reduction)
    return nan_unless_finite(ops.where(ops.any(counted), loss, 0.0), embeddings)


def _no_memory(values, chosen):
    if values["memory"] is not None:
        return ('loss "fast_ap" ranks each batch and takes no references (PML\'s FastAPLoss neither): drop '
                '"memory" or choose another pair loss')
    return None


@register_loss("fast_ap", rules=(_no_memory,))
class FastAPLoss(EmbeddingLoss):
    """FastAP loss (see `fast_ap_loss`); it normalises embeddings itself and refuses references (a memory).
    params.json: `"loss": "fast_ap", "loss_options": {"num_bins": 10}`."""

    default_reduction = "all"

    def __init__(self, num_bins=10, **kwargs):
        super().__init__(**kwargs)
        self.num_bins = _check_num_bins(num_bins)

    def _loss(self, labels, embeddings, **references):
        return fast_ap_loss(labels, embeddings, self.num_bins, reduction=self.term_reduction, **references), {}

    def get_config(self):
        return {**super().get_config(), "num_bins": self.num_bins}


__all__ = ["FastAPLoss", "fast_ap_loss"]
