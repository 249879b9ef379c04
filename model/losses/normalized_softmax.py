"""Normalized softmax: softmax over the cosines to learned class weights, divided by a temperature.

    loss = normalized_softmax_loss(labels, embeddings, weights, temperature=0.05)   # weights: [D, C]
    loss = NormalizedSoftmaxLoss(num_classes=10, embedding_size=64)                # weights in `loss.weights_layer`
"""

import keras
from keras import ops

from model.losses.base import NUM_LABELS, ClassKernel, LossWithClassWeights, register_loss
from model.losses.class_inputs import class_loss_inputs, cosine_to_columns, cross_entropy, nan_unless
from model.losses.inputs import check_number, nan_unless_finite
from model.registry import KERAS_PACKAGE


def normalized_softmax_loss(labels, embeddings, weights, temperature=0.05):
    """Normalized softmax loss against learned class weights.

    With cos θ_ic the cosine between embedding x_i and column c of `weights` (both L2-normalised),
        logits_ic = cos θ_ic / T,   loss = mean_i -log softmax(logits_i)[y_i]
    (PML's default MeanReducer: the mean over the batch's B samples). A batch without any positive pair or with
    one sample of a class is no special case. NaN when an embedding or weight is not finite, or (inside a traced
    function) when a label is outside [0, C).
    Reference: Zhai & Wu, "Classification is a Strong Baseline for Deep Metric Learning", BMVC 2019 (and Wang et
    al., "NormFace", 2017).
    Equals pytorch-metric-learning 2.x's `NormalizedSoftmaxLoss(num_classes, embedding_size)` with its defaults
    (DotProductSimilarity with normalised embeddings and columns of `W`, which is this `weights`, same layout);
    PML's `ref_emb` does not apply (it refuses references), nor here.

    Args:
        labels: [B] or [B, 1] integer labels in [0, C).
        embeddings: [B, D] float embeddings (any float dtype; computed in float32).
        weights: [D, C] float class weights, column c the weight of class c (PML's layout).
        temperature: T > 0.

    Returns:
        loss: scalar float32.

    Raises:
        ValueError: naming the argument: labels outside [0, C) (when their values are known: eager execution),
            weights not [D, C] with the embeddings' D, temperature <= 0.
    """
    temperature = check_number("temperature", temperature, positive=True)
    embeddings, num_classes, targets, in_range = class_loss_inputs(labels, embeddings, weights, "weights", "[D, C]")
    logits = cosine_to_columns(embeddings, weights) / temperature
    loss = cross_entropy(logits, ops.one_hot(targets, num_classes, dtype="float32"))
    return nan_unless(in_range, nan_unless_finite(loss, embeddings, weights))


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class NormalizedSoftmaxWeights(ClassKernel):
    """The class weights of the normalized softmax: `kernel` [embedding_size, num_classes], N(0, 1) at first
    (PML's `normal_`)."""


@register_loss("normalized_softmax", options=(NUM_LABELS,))
class NormalizedSoftmaxLoss(LossWithClassWeights):
    """Normalized softmax loss with learned class weights (see `normalized_softmax_loss`): params.json
    `"loss": "normalized_softmax"`, its temperature in `"loss_options"` ({"temperature": 0.05}, PML's default).

    The weights are `self.weights_layer`, a `NormalizedSoftmaxWeights` (see `LossWithClassWeights`).
    """

    loss_function = staticmethod(normalized_softmax_loss)

    def __init__(self, num_classes, embedding_size, temperature=0.05, **kwargs):
        super().__init__(**kwargs)
        self.temperature = check_number("temperature", temperature, positive=True)
        self.weights_layer = NormalizedSoftmaxWeights(num_classes, embedding_size, name=f"{self.name}_weights")

    def options(self):
        return {"temperature": self.temperature}


__all__ = ["NormalizedSoftmaxLoss", "NormalizedSoftmaxWeights", "normalized_softmax_loss"]
