"""Proxy-NCA: each embedding against one learned proxy per class.

    loss = proxy_nca_loss(labels, embeddings, proxies, scale=3.0)     # proxies: [C, D]
    loss = ProxyNCALoss(num_classes=100, embedding_size=64)            # its proxies in `loss.proxy_layer`
"""

import keras
from keras import ops

from model.losses.base import NUM_LABELS, ClassWeights, EmbeddingLoss, register_loss
from model.losses.inputs import as_float32, flat_labels
from model.ops import l2_normalize
from model.registry import KERAS_PACKAGE


def proxy_nca_loss(labels, embeddings, proxies, scale=3.0):
    """Proxy-NCA loss: each embedding against one learned proxy per class.

    With x and the proxies L2-normalised,
        loss = mean_i -log softmax_c(-scale·||x_i - p_c||²)[y_i],
    the softmax over all proxies, the true class's included (as in most implementations; the
    paper's NCA leaves it out of the denominator). Labels must lie in [0, num_classes).
    Reference: Movshovitz-Attias et al., "No Fuss Distance Metric Learning using Proxies", ICCV 2017.

    Args:
        labels: [B] or [B, 1] integer labels in [0, C).
        embeddings: [B, D] float embeddings (computed in float32).
        proxies: [C, D] float proxies, one per class.
        scale: float, the inverse temperature of the softmax.

    Returns:
        loss: scalar float32.
    """
    x = l2_normalize(as_float32(embeddings))  # [B, D]
    p = l2_normalize(as_float32(proxies))  # [C, D]
    squared = (
        ops.sum(ops.square(x), axis=1, keepdims=True)
        - 2.0 * ops.matmul(x, ops.transpose(p))
        + ops.expand_dims(ops.sum(ops.square(p), axis=1), 0)
    )  # [B, C]
    logits = -scale * ops.maximum(squared, 0.0)
    targets = ops.cast(flat_labels(labels), "int32")
    return ops.mean(keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True))


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class Proxies(ClassWeights):
    """The trainable proxies of Proxy-NCA: a [num_classes, embedding_size] weight, nothing else."""

    def __init__(self, num_classes, embedding_size, **kwargs):
        super().__init__(num_classes, embedding_size, **kwargs)
        self.proxies = self.add_weight(name="proxies", shape=(self.num_classes, self.embedding_size),
                                       initializer=keras.initializers.RandomNormal(stddev=1.0), trainable=True)

    def call(self, inputs):
        return self.proxies


@register_loss("proxy_nca", options=(NUM_LABELS,))
class ProxyNCALoss(EmbeddingLoss):
    """Proxy-NCA loss with learned proxies (see `proxy_nca_loss`).

    The proxies live in `self.proxy_layer`, a `Proxies` layer. Keras trains only the variables of
    layers that the model tracks, so the layer must belong to the model. `EmbeddingModel` (the
    training model) attaches it by itself. With a model of your own, wrap it in a subclassed model,
    which tracks the layers set as its attributes (Sequential and functional models do not):

        class WithProxies(keras.Model):
            def __init__(self, network, proxy_layer):
                super().__init__()
                self.network, self.proxy_layer = network, proxy_layer

            def call(self, images):
                return self.network(images)

        loss = ProxyNCALoss(num_classes=100, embedding_size=64)
        model = WithProxies(network, loss.proxy_layer)
        model.compile(optimizer="adam", loss=loss)

    (In the code this was ported from, the proxies were created outside the trained variables and
    so stayed at their random initial values: a test checks that they move here.)
    """

    mines_in_batch = False

    def __init__(self, num_classes, embedding_size, scale=3.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.proxy_layer = Proxies(num_classes, embedding_size, name="proxy_nca_proxies")

    @property
    def trained_layers(self):
        return {"proxy_layer": self.proxy_layer}

    def _loss(self, labels, embeddings):
        return proxy_nca_loss(labels, embeddings, self.proxy_layer.proxies, self.scale), {}

    def get_config(self):
        config = {**super().get_config(), "scale": self.scale}
        return {
            **config,
            "num_classes": self.proxy_layer.num_classes,
            "embedding_size": self.proxy_layer.embedding_size,
        }

__all__ = ["Proxies", "ProxyNCALoss", "proxy_nca_loss"]
