"""Proxy-Anchor: each learned class proxy as an anchor against the batch's embeddings.

    loss = proxy_anchor_loss(labels, embeddings, proxies, margin=0.1, alpha=32.0)   # proxies: [C, D]
    loss = ProxyAnchorLoss(num_classes=10, embedding_size=64)                      # proxies in `loss.weights_layer`
"""

import keras
from keras import ops

from model.losses.base import NUM_LABELS, ClassWeights, LossWithClassWeights, register_loss
from model.losses.class_inputs import class_loss_inputs, cosine_to_columns, nan_unless
from model.losses.inputs import check_number, nan_unless_finite
from model.losses.reductions import masked_log1p_sum_exp
from model.registry import KERAS_PACKAGE


def check_proxy_anchor_options(margin, alpha):
    """(margin, alpha) as floats: margin a finite number, alpha > 0; ValueError naming the argument."""
    return check_number("margin", margin), check_number("alpha", alpha, positive=True)


def proxy_anchor_loss(labels, embeddings, proxies, margin=0.1, alpha=32.0):
    """Proxy-Anchor loss: each class proxy pulls the batch's samples of its class and pushes the others.

    With s_ic the cosine between embedding x_i and proxy p_c (row c of `proxies`), P+ the classes present in
    the batch and C the number of classes,
        loss = 1/|P+| Σ_c log(1 + Σ_{i: y_i = c} exp(-α(s_ic - δ)))
             + 1/C    Σ_c log(1 + Σ_{i: y_i ≠ c} exp(α(s_ic + δ)))
    (PML's default DivisorReducer with these divisors; a proxy without a sample of its class, or with every
    sample of the batch in its class, adds 0 to its sum). A batch without any positive pair (all labels
    different) or with one sample of a class is no special case: every sample has its class's proxy, so |P+| >= 1.
    NaN when an embedding or proxy is not finite, or (inside a traced function) when a label is outside [0, C).
    Reference: Kim et al., "Proxy Anchor Loss for Deep Metric Learning", CVPR 2020.
    Equals pytorch-metric-learning 2.x's `ProxyAnchorLoss(num_classes, embedding_size)` with its defaults (its
    `proxies` are these, same layout); PML's `ref_emb` does not apply (it refuses references), nor here.

    Args:
        labels: [B] or [B, 1] integer labels in [0, C).
        embeddings: [B, D] float embeddings (any float dtype; computed in float32).
        proxies: [C, D] float proxies, row c the proxy of class c (PML's layout).
        margin: δ, the margin (a finite number).
        alpha: α > 0, the scale.

    Returns:
        loss: scalar float32.

    Raises:
        ValueError: naming the argument: labels outside [0, C) (when their values are known: eager execution),
            proxies not [C, D] with the embeddings' D, alpha <= 0.
    """
    margin, alpha = check_proxy_anchor_options(margin, alpha)
    embeddings, num_classes, targets, in_range = class_loss_inputs(labels, embeddings, proxies, "proxies", "[C, D]",
                                                                   class_axis=0)
    cosine = cosine_to_columns(embeddings, ops.transpose(proxies))  # [B, C]
    positive = ops.one_hot(targets, num_classes, dtype="float32") > 0  # [B, C]
    positive_terms = masked_log1p_sum_exp(alpha * (margin - cosine), positive, axis=0)  # [C]
    negative_terms = masked_log1p_sum_exp(alpha * (cosine + margin), ops.logical_not(positive), axis=0)  # [C]
    present = ops.sum(ops.cast(ops.any(positive, axis=0), "float32"))  # |P+| >= 1 for B >= 1
    loss = ops.sum(positive_terms) / ops.maximum(present, 1.0) + ops.sum(negative_terms) / num_classes
    return nan_unless(in_range, nan_unless_finite(loss, embeddings, proxies))


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class AnchorProxies(ClassWeights):
    """Proxy-Anchor's proxies: `proxies` [num_classes, embedding_size], at first N(0, 2/num_classes) (PML's
    `kaiming_normal_(mode="fan_out")`, whose fan-out is num_classes)."""

    def __init__(self, num_classes, embedding_size, **kwargs):
        super().__init__(num_classes, embedding_size, **kwargs)
        initializer = keras.initializers.VarianceScaling(scale=2.0, mode="fan_in", distribution="untruncated_normal")
        self.proxies = self.add_weight(name="proxies", shape=(self.num_classes, self.embedding_size),
                                       initializer=initializer)

    def call(self, inputs=None):
        return self.proxies


@register_loss("proxy_anchor", options=(NUM_LABELS,))
class ProxyAnchorLoss(LossWithClassWeights):
    """Proxy-Anchor loss with learned proxies (see `proxy_anchor_loss`): params.json `"loss": "proxy_anchor"`,
    its margin and alpha in `"loss_options"` ({"margin": 0.1, "alpha": 32.0}, PML's defaults).

    The proxies are `self.weights_layer`, an `AnchorProxies` (see `LossWithClassWeights`).
    """

    loss_function = staticmethod(proxy_anchor_loss)

    def __init__(self, num_classes, embedding_size, margin=0.1, alpha=32.0, **kwargs):
        super().__init__(**kwargs)
        self.margin, self.alpha = check_proxy_anchor_options(margin, alpha)
        self.weights_layer = AnchorProxies(num_classes, embedding_size, name=f"{self.name}_proxies")

    def options(self):
        return {"margin": self.margin, "alpha": self.alpha}


__all__ = ["AnchorProxies", "ProxyAnchorLoss", "proxy_anchor_loss"]
