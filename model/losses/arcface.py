"""ArcFace: softmax over the cosines to learned class weights, with an additive angular margin on the true class.

    loss = arcface_loss(labels, embeddings, weights, margin=28.6, scale=64.0)   # weights: [D, C], margin in degrees
    loss = ArcFaceLoss(num_classes=10, embedding_size=64)                      # its weights in `loss.weights_layer`
"""

import math

import keras
from keras import ops

from model.losses.base import NUM_LABELS, ClassKernel, LossWithClassWeights, register_loss
from model.losses.class_inputs import class_loss_inputs, cosine_to_columns, cross_entropy, nan_unless
from model.losses.inputs import check_number, nan_unless_finite, static_shape
from model.registry import KERAS_PACKAGE


def _safe_sqrt(x):
    """sqrt(x) for x >= 0, with a finite gradient (0) at x = 0."""
    positive = x > 0
    return ops.where(positive, ops.sqrt(ops.where(positive, x, 1.0)), 0.0)


def angular_margin_cross_entropy(cosine, targets, margin, scale):
    """ArcFace's loss on cosines to the classes: cosine [B, C] float32, targets [B] int32 in [0, C), margin in
    degrees, scale > 0 -> scalar float32 (mean over the batch). Shared with `subcenter_arcface_loss`.

    cos(θ + m) is written as x·cos m - sqrt(1 - x²)·sin m with x = cos θ clipped to [-1, 1] as PML clips it, so
    that the value is PML's and the gradient stays finite at x = ±1, where arccos's is infinite.
    """
    m = math.radians(margin)
    one_hot = ops.one_hot(targets, static_shape(cosine)[1], dtype="float32")  # [B, C]
    target = ops.sum(cosine * one_hot, axis=1)  # [B] cos θ of the true class
    x = ops.clip(target, -1.0, 1.0)
    # sin θ from (1 - x)(1 + x): exact near x = ±1, where 1 - x² would lose the digits that sin θ is made of.
    with_margin = x * math.cos(m) - _safe_sqrt((1.0 - x) * (1.0 + x)) * math.sin(m)  # cos(θ + m)
    # Past θ = π - m, cos(θ + m) would grow again with θ; PML (as InsightFace) keeps it decreasing there.
    modified = ops.where(x >= math.cos(math.pi - m), with_margin, x - m * math.sin(m))
    logits = cosine + one_hot * ops.expand_dims(modified - target, 1)
    return cross_entropy(scale * logits, one_hot)


def check_arcface_options(margin, scale):
    """(margin, scale) as floats: margin in degrees in [0, 180), scale > 0; ValueError naming the argument."""
    return check_number("margin", margin, minimum=0.0, below=180.0), check_number("scale", scale, positive=True)


def arcface_loss(labels, embeddings, weights, margin=28.6, scale=64.0):
    """ArcFace (additive angular margin) loss against learned class weights.

    With θ_ic the angle between embedding x_i and column c of `weights` (both L2-normalised) and m the margin
    in radians,
        logits_ic = s·cos θ_ic for c ≠ y_i,   logits_iy = s·cos(θ_iy + m) if θ_iy <= π - m, else
                    s·(cos θ_iy - m·sin m)   (PML's and InsightFace's fallback, which keeps it decreasing),
        loss = mean_i -log softmax(logits_i)[y_i]
    (PML's default MeanReducer: the mean over the batch's B samples). A batch without any positive pair (all
    labels different) or with one sample of a class is no special case: every sample has its class's weight.
    cos θ is clipped to [-1, 1] as PML clips it before arccos; the gradient stays finite there (see
    `angular_margin_cross_entropy`). NaN when an embedding or weight is not finite, or (inside a traced function)
    when a label is outside [0, C).
    Reference: Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019.
    Equals pytorch-metric-learning 2.x's `ArcFaceLoss(num_classes, embedding_size)` with its defaults (its `W` is
    this `weights`, same layout); PML's `ref_emb` does not apply (it refuses references), nor here.

    Args:
        labels: [B] or [B, 1] integer labels in [0, C).
        embeddings: [B, D] float embeddings (any float dtype; computed in float32).
        weights: [D, C] float class weights, column c the weight of class c (PML's layout).
        margin: the angular margin m in degrees, in [0, 180) (PML's default 28.6, about 0.5 radian).
        scale: the scale s > 0 of the logits.

    Returns:
        loss: scalar float32.

    Raises:
        ValueError: naming the argument: labels outside [0, C) (when their values are known: eager execution),
            weights not [D, C] with the embeddings' D, margin outside [0, 180), scale <= 0.
    """
    margin, scale = check_arcface_options(margin, scale)
    embeddings, _, targets, in_range = class_loss_inputs(labels, embeddings, weights, "weights", "[D, C]")
    loss = angular_margin_cross_entropy(cosine_to_columns(embeddings, weights), targets, margin, scale)
    return nan_unless(in_range, nan_unless_finite(loss, embeddings, weights))


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class ArcFaceWeights(ClassKernel):
    """ArcFace's class weights: `kernel` [embedding_size, num_classes], N(0, 1) at first (PML's `normal_`)."""


@register_loss("arcface", options=(NUM_LABELS,))
class ArcFaceLoss(LossWithClassWeights):
    """ArcFace loss with learned class weights (see `arcface_loss`): params.json `"loss": "arcface"`, its margin
    (degrees) and scale in `"loss_options"` ({"margin": 28.6, "scale": 64.0}, PML's defaults).

    The weights are `self.weights_layer`, an `ArcFaceWeights` (see `LossWithClassWeights`).
    """

    loss_function = staticmethod(arcface_loss)

    def __init__(self, num_classes, embedding_size, margin=28.6, scale=64.0, **kwargs):
        super().__init__(**kwargs)
        self.margin, self.scale = check_arcface_options(margin, scale)
        self.weights_layer = ArcFaceWeights(num_classes, embedding_size, name=f"{self.name}_weights")

    def options(self):
        return {"margin": self.margin, "scale": self.scale}


__all__ = ["ArcFaceLoss", "ArcFaceWeights", "arcface_loss"]
