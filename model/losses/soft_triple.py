"""SoftTriple: softmax over a soft nearest centre of each class, K learned centres per class.

    loss = soft_triple_loss(labels, embeddings, centers, centers_per_class=10)   # centers: [D, C·K]
    loss = SoftTripleLoss(num_classes=10, embedding_size=64)                    # centres in `loss.weights_layer`
"""

import keras
from keras import ops

from model.losses.base import NUM_LABELS, ClassWeights, LossWithClassWeights, register_loss
from model.losses.class_inputs import check_count, class_loss_inputs, cosine_to_columns, cross_entropy, nan_unless
from model.losses.inputs import check_number, nan_unless_finite
from model.registry import KERAS_PACKAGE


def check_soft_triple_options(la, gamma, margin):
    """(la, gamma, margin) as floats: la > 0, gamma > 0, margin a finite number; ValueError naming the argument."""
    return (check_number("la", la, positive=True), check_number("gamma", gamma, positive=True),
            check_number("margin", margin))


def soft_triple_loss(labels, embeddings, centers, centers_per_class=10, la=20.0, gamma=0.1, margin=0.01):
    """SoftTriple loss against learned centres, K per class.

    Column c·K + k of `centers` is centre k of class c. With s_ick the cosine of embedding x_i to centre k of
    class c, the similarity of x_i to class c is the softmax-weighted mean of its cosines to the class's centres,
        S_ic = Σ_k softmax_k(s_ick / γ)·s_ick,
    and the loss is a softmax over the classes with a margin δ on the true class:
        loss = mean_i -log softmax(λ·(S_i - δ·onehot(y_i)))[y_i]
    (PML's default MeanReducer: the mean over the batch's B samples). A batch without any positive pair or with
    one sample of a class is no special case. The paper's regulariser that merges similar centres (τ) is not
    part of PML's loss (PML's optional `weight_regularizer` is its place), nor of this one. NaN when an embedding
    or centre is not finite, or (inside a traced function) when a label is outside [0, C).
    Reference: Qian et al., "SoftTriple Loss: Deep Metric Learning Without Triplet Sampling", ICCV 2019.
    Equals pytorch-metric-learning 2.x's `SoftTripleLoss(num_classes, embedding_size)` with its defaults: its `fc`
    is this `centers` as it is, [D, C·K], and its `view(-1, C, K)` reads column c·K + k as centre k of class c,
    the layout above. PML's `ref_emb` does not apply (it refuses references), nor here.

    Args:
        labels: [B] or [B, 1] integer labels in [0, C).
        embeddings: [B, D] float embeddings (any float dtype; computed in float32).
        centers: [D, C·K] float centres, column c·K + k centre k of class c.
        centers_per_class: K >= 1.
        la: λ > 0, the scale of the class similarities.
        gamma: γ > 0, the temperature of the softmax over a class's centres.
        margin: δ, the margin on the true class.

    Returns:
        loss: scalar float32.

    Raises:
        ValueError: naming the argument: labels outside [0, C) (when their values are known: eager execution),
            centers not [D, C·K] with the embeddings' D, centers_per_class < 1, la or gamma <= 0.
    """
    la, gamma, margin = check_soft_triple_options(la, gamma, margin)
    per_class = check_count("centers_per_class", centers_per_class)
    embeddings, num_classes, targets, in_range = class_loss_inputs(labels, embeddings, centers, "centers", "[D, C·K]",
                                                                   per_class=per_class)
    to_centers = ops.reshape(cosine_to_columns(embeddings, centers), (-1, num_classes, per_class))  # [B, C, K]
    weights = ops.softmax(to_centers * (1.0 / gamma), axis=2)
    similarity = ops.sum(weights * to_centers, axis=2)  # [B, C]
    one_hot = ops.one_hot(targets, num_classes, dtype="float32")
    loss = cross_entropy(la * (similarity - margin * one_hot), one_hot)
    return nan_unless(in_range, nan_unless_finite(loss, embeddings, centers))


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class SoftTripleCenters(ClassWeights):
    """SoftTriple's centres: `centers` [embedding_size, num_classes·centers_per_class], column c·K + k centre k of
    class c, at first uniform in ±1/sqrt(C·K) (PML's `kaiming_uniform_(a=sqrt(5))`, whose fan-in is C·K)."""

    def __init__(self, num_classes, embedding_size, centers_per_class=10, **kwargs):
        super().__init__(num_classes, embedding_size, **kwargs)
        self.centers_per_class = check_count("centers_per_class", centers_per_class)
        initializer = keras.initializers.VarianceScaling(scale=1.0 / 3.0, mode="fan_out", distribution="uniform")
        self.centers = self.add_weight(
            name="centers", shape=(self.embedding_size, self.num_classes * self.centers_per_class),
            initializer=initializer)

    def call(self, inputs=None):
        return self.centers

    def get_config(self):
        return {**super().get_config(), "centers_per_class": self.centers_per_class}


@register_loss("soft_triple", options=(NUM_LABELS,))
class SoftTripleLoss(LossWithClassWeights):
    """SoftTriple loss with learned centres (see `soft_triple_loss`): params.json `"loss": "soft_triple"`, its
    options in `"loss_options"` ({"centers_per_class": 10, "la": 20.0, "gamma": 0.1, "margin": 0.01}, PML's
    defaults).

    The centres are `self.weights_layer`, a `SoftTripleCenters` (see `LossWithClassWeights`).
    """

    loss_function = staticmethod(soft_triple_loss)

    def __init__(self, num_classes, embedding_size, centers_per_class=10, la=20.0, gamma=0.1, margin=0.01,
                 **kwargs):
        super().__init__(**kwargs)
        self.la, self.gamma, self.margin = check_soft_triple_options(la, gamma, margin)
        self.weights_layer = SoftTripleCenters(num_classes, embedding_size, centers_per_class,
                                               name=f"{self.name}_centers")

    def options(self):
        return {"centers_per_class": self.weights_layer.centers_per_class, "la": self.la, "gamma": self.gamma,
                "margin": self.margin}


__all__ = ["SoftTripleCenters", "SoftTripleLoss", "soft_triple_loss"]
