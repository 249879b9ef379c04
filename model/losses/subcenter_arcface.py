"""Sub-center ArcFace: ArcFace with K learned sub-centres per class, each sample against its class's closest one.

    loss = subcenter_arcface_loss(labels, embeddings, weights, sub_centers=3)   # weights: [D, C·K]
    loss = SubCenterArcFaceLoss(num_classes=10, embedding_size=64)             # weights in `loss.weights_layer`
"""

import keras
from keras import ops

from model.losses.arcface import angular_margin_cross_entropy, check_arcface_options
from model.losses.base import NUM_LABELS, ClassKernel, LossWithClassWeights, register_loss
from model.losses.class_inputs import check_count, class_loss_inputs, cosine_to_columns, nan_unless
from model.losses.inputs import nan_unless_finite
from model.registry import KERAS_PACKAGE


def subcenter_arcface_loss(labels, embeddings, weights, margin=28.6, scale=64.0, sub_centers=3):
    """Sub-center ArcFace loss against learned sub-centres, K per class.

    Column c·K + k of `weights` is sub-centre k of class c (k in [0, K)). The cosine of embedding x_i to class c
    is its largest cosine to the class's sub-centres, cos θ_ic = max_k cos(x_i, w_{c·K+k}); then ArcFace
    (`arcface_loss`) on these cosines:
        logits_ic = s·cos θ_ic for c ≠ y_i,   logits_iy = s·cos(θ_iy + m) if θ_iy <= π - m, else
                    s·(cos θ_iy - m·sin m),
        loss = mean_i -log softmax(logits_i)[y_i]
    (PML's default MeanReducer: the mean over the batch's B samples). A batch without any positive pair or with
    one sample of a class is no special case. The gradient reaches only the sub-centre that attains each maximum.
    NaN when an embedding or weight is not finite, or (inside a traced function) when a label is outside [0, C).
    Reference: Deng et al., "Sub-center ArcFace: Boosting Face Recognition by Large-scale Noisy Web Faces",
    ECCV 2020.
    Equals pytorch-metric-learning 2.x's `SubCenterArcFaceLoss(num_classes=C, embedding_size=D)` with its defaults:
    its `W` is this `weights` as it is, [D, C·K], and its `cosine.view(-1, C, K)` reads column c·K + k as
    sub-centre k of class c, the layout above (no mapping needed). PML's `ref_emb` does not apply (it refuses
    references), nor here. (PML's `get_outliers`, which finds the samples far from their class's dominant
    sub-centre for cleaning a data set, is not part of the loss and is not ported.)

    Args:
        labels: [B] or [B, 1] integer labels in [0, C).
        embeddings: [B, D] float embeddings (any float dtype; computed in float32).
        weights: [D, C·K] float sub-centres, column c·K + k sub-centre k of class c.
        margin: the angular margin m in degrees, in [0, 180).
        scale: the scale s > 0 of the logits.
        sub_centers: K >= 1, the sub-centres of each class (K = 1 is ArcFace).

    Returns:
        loss: scalar float32.

    Raises:
        ValueError: naming the argument: labels outside [0, C) (when their values are known: eager execution),
            weights not [D, C·K] with the embeddings' D, sub_centers < 1, margin outside [0, 180), scale <= 0.
    """
    margin, scale = check_arcface_options(margin, scale)
    sub_centers = check_count("sub_centers", sub_centers)
    embeddings, num_classes, targets, in_range = class_loss_inputs(labels, embeddings, weights, "weights", "[D, C·K]",
                                                                   per_class=sub_centers)
    to_centers = cosine_to_columns(embeddings, weights)  # [B, C·K]
    cosine = ops.max(ops.reshape(to_centers, (-1, num_classes, sub_centers)), axis=2)  # [B, C]
    loss = angular_margin_cross_entropy(cosine, targets, margin, scale)
    return nan_unless(in_range, nan_unless_finite(loss, embeddings, weights))


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class SubCenterArcFaceWeights(ClassKernel):
    """Sub-center ArcFace's sub-centres: `kernel` [embedding_size, num_classes·sub_centers], column c·K + k
    sub-centre k of class c, N(0, 1) at first (PML's `normal_`)."""

    def __init__(self, num_classes, embedding_size, sub_centers=3, **kwargs):
        sub_centers = check_count("sub_centers", sub_centers)
        super().__init__(num_classes, embedding_size, columns_per_class=sub_centers, **kwargs)
        self.sub_centers = sub_centers

    def get_config(self):
        return {**super().get_config(), "sub_centers": self.sub_centers}


@register_loss("subcenter_arcface", options=(NUM_LABELS,))
class SubCenterArcFaceLoss(LossWithClassWeights):
    """Sub-center ArcFace loss with learned sub-centres (see `subcenter_arcface_loss`): params.json
    `"loss": "subcenter_arcface"`, its options in `"loss_options"` ({"margin": 28.6, "scale": 64.0,
    "sub_centers": 3}, PML's defaults).

    The sub-centres are `self.weights_layer`, a `SubCenterArcFaceWeights` (see `LossWithClassWeights`).
    """

    loss_function = staticmethod(subcenter_arcface_loss)

    def __init__(self, num_classes, embedding_size, margin=28.6, scale=64.0, sub_centers=3, **kwargs):
        super().__init__(**kwargs)
        self.margin, self.scale = check_arcface_options(margin, scale)
        self.weights_layer = SubCenterArcFaceWeights(num_classes, embedding_size, sub_centers,
                                                     name=f"{self.name}_weights")

    def options(self):
        return {"margin": self.margin, "scale": self.scale, "sub_centers": self.weights_layer.sub_centers}


__all__ = ["SubCenterArcFaceLoss", "SubCenterArcFaceWeights", "subcenter_arcface_loss"]
