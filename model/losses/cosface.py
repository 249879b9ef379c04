"""CosFace: softmax over the cosines to learned class weights, with an additive cosine margin on the true class.

    loss = cosface_loss(labels, embeddings, weights, margin=0.35, scale=64.0)   # weights: [D, C]
    loss = CosFaceLoss(num_classes=10, embedding_size=64)                      # its weights in `loss.weights_layer`
"""

import keras
from keras import ops

from model.losses.base import NUM_LABELS, ClassKernel, LossWithClassWeights, register_loss
from model.losses.class_inputs import class_loss_inputs, cosine_to_columns, cross_entropy, nan_unless
from model.losses.inputs import check_number, nan_unless_finite
from model.registry import KERAS_PACKAGE


def check_cosface_options(margin, scale):
    """(margin, scale) as floats: margin a finite number, scale > 0; ValueError naming the argument."""
    return check_number("margin", margin), check_number("scale", scale, positive=True)


def cosface_loss(labels, embeddings, weights, margin=0.35, scale=64.0):
    """CosFace (large margin cosine) loss against learned class weights.

    With cos θ_ic the cosine between embedding x_i and column c of `weights`,
        logits_ic = s·(cos θ_ic - m·[c = y_i]),   loss = mean_i -log softmax(logits_i)[y_i]
    (PML's default MeanReducer: the mean over the batch's B samples). A batch without any positive pair or with
    one sample of a class is no special case: every sample has its class's weight. NaN when an embedding or
    weight is not finite, or (inside a traced function) when a label is outside [0, C).
    Reference: Wang et al., "CosFace: Large Margin Cosine Loss for Deep Face Recognition", CVPR 2018.
    Equals pytorch-metric-learning 2.x's `CosFaceLoss(num_classes, embedding_size)` with its defaults (its `W`
    is this `weights`, same layout); PML's `ref_emb` does not apply (it refuses references), nor here.

    Args:
        labels: [B] or [B, 1] integer labels in [0, C).
        embeddings: [B, D] float embeddings (any float dtype; computed in float32).
        weights: [D, C] float class weights, column c the weight of class c (PML's layout).
        margin: the cosine margin m (a finite number).
        scale: the scale s > 0 of the logits.

    Returns:
        loss: scalar float32.

    Raises:
        ValueError: naming the argument: labels outside [0, C) (when their values are known: eager execution),
            weights not [D, C] with the embeddings' D, scale <= 0.
    """
    margin, scale = check_cosface_options(margin, scale)
    embeddings, num_classes, targets, in_range = class_loss_inputs(labels, embeddings, weights, "weights", "[D, C]")
    one_hot = ops.one_hot(targets, num_classes, dtype="float32")  # [B, C]
    logits = scale * (cosine_to_columns(embeddings, weights) - margin * one_hot)
    loss = cross_entropy(logits, one_hot)
    return nan_unless(in_range, nan_unless_finite(loss, embeddings, weights))


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class CosFaceWeights(ClassKernel):
    """CosFace's class weights: `kernel` [embedding_size, num_classes], N(0, 1) at first (PML's `normal_`)."""


@register_loss("cosface", options=(NUM_LABELS,))
class CosFaceLoss(LossWithClassWeights):
    """CosFace loss with learned class weights (see `cosface_loss`): params.json `"loss": "cosface"`, its margin
    and scale in `"loss_options"` ({"margin": 0.35, "scale": 64.0}, PML's defaults).

    The weights are `self.weights_layer`, a `CosFaceWeights` (see `LossWithClassWeights`).
    """

    loss_function = staticmethod(cosface_loss)

    def __init__(self, num_classes, embedding_size, margin=0.35, scale=64.0, **kwargs):
        super().__init__(**kwargs)
        self.margin, self.scale = check_cosface_options(margin, scale)
        self.weights_layer = CosFaceWeights(num_classes, embedding_size, name=f"{self.name}_weights")

    def options(self):
        return {"margin": self.margin, "scale": self.scale}


__all__ = ["CosFaceLoss", "CosFaceWeights", "cosface_loss"]
