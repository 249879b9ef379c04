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
    MeanReducer) or over those with loss_a > 0 ("nonzero"); 0 when no anchor has a positive. Each distance
    has two nonzero pulses, added into the histograms by one segment sum: memory O(B²), whatever num_bins.
    (At a distance exactly on a bin centre the derivative is the one from above, where PML's abs and relu
    give 0; d = 0, the only such distance that is not a coincidence, has a zero gradient of d² anyway.)
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
    # A distance's triangular pulses are nonzero at its two nearest centres only: the one at or below it takes
    # 1 - share and the next one share, share = d/Δ - floor(d/Δ). One segment sum adds every pair's two shares
    # into its anchor's bins: O(B²) memory and a few operations, whatever the number of bins. A distance a hair
    # above 4 (rounding) stays in the last bin; its share of the bin after it (slot K + 1) is dropped.
    scaled = squared / (4.0 / num_bins)  # [B, B], in [0, K]
    held = ops.stop_gradient(scaled)
    # [B, B]: the centre at or below; bin 0 for a NaN distance (a diverged embedding: the loss is NaN below), whose
    # slot would otherwise be no index at all.
    below = ops.where(ops.isfinite(held), ops.clip(ops.floor(held), 0.0, float(num_bins)), 0.0)
    share = scaled - below  # [B, B]
    size, slots = ops.shape(squared)[0], num_bins + 2
    first_slot = ops.expand_dims(ops.arange(size, dtype="int32") * slots, 1)  # [B, 1]: anchor a's bins from a·slots
    slot = ops.cast(below, "int32") + first_slot  # [B, B]
    pairs = ops.stack([positive, negative], axis=-1)  # [B, B, 2]
    shares = ops.concatenate([pairs * ops.expand_dims(1.0 - share, -1), pairs * ops.expand_dims(share, -1)], axis=0)
    histograms = ops.segment_sum(ops.reshape(shares, (-1, 2)), ops.reshape(ops.concatenate([slot, slot + 1], 0), (-1,)),
                                 num_segments=size * slots)  # [B·slots, 2]
    histograms = ops.reshape(histograms, (size, slots, 2))[:, : num_bins + 1]  # [B, K + 1, 2]
    positive_histogram, negative_histogram = histograms[..., 0], histograms[..., 1]  # [B, K + 1]: h⁺, h⁻
    cumulative_positive = ops.cumsum(positive_histogram, axis=1)  # [B, K + 1]: H⁺
    cumulative_negative = ops.cumsum(negative_histogram, axis=1)  # [B, K + 1]: H⁻
    cumulative = cumulative_positive + cumulative_negative  # [B, K + 1]: H
    counted = ops.logical_and(positive_histogram * cumulative_positive > 0, cumulative > 0)  # [B, K + 1]
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
