"""Classification on the embeddings: a linear softmax head, as the loss or beside a metric loss.

    loss, accuracy = softmax_cross_entropy(labels, embeddings, kernel, bias)   # kernel [D, C], bias [C]
    loss = SoftmaxLoss(num_classes=10, embedding_size=64)                      # its head in `loss.head_layer`
"""

import keras
from keras import ops

from model.losses.base import NUM_LABELS, ClassWeights, EmbeddingLoss, register_loss
from model.losses.inputs import as_float32, flat_labels
from model.registry import DICT, KERAS_PACKAGE, NONE, Option, OptionError, check_object, is_number


def softmax_cross_entropy(labels, embeddings, kernel, bias):
    """Softmax cross-entropy of a linear classifier on the embeddings, and its accuracy.

    logits = embeddings · kernel + bias: [B, C];
        loss = mean_i -log softmax(logits_i)[y_i]  (Keras's sparse categorical cross-entropy from logits),
        accuracy = mean_i [argmax_c logits_ic == y_i].
    The classification task of the classic TensorFlow triplet-loss code's to-do list, and the usual remedy
    for a collapse of triplet training (pre-train with it, or train it beside the metric loss).
    Labels must lie in [0, C).

    Args:
        labels: [B] or [B, 1] integer labels in [0, C).
        embeddings: [B, D] float embeddings (computed in float32).
        kernel: [D, C] float weights; bias: [C] float.

    Returns:
        (loss, accuracy): scalar float32 each.
    """
    logits = ops.matmul(as_float32(embeddings), as_float32(kernel)) + as_float32(bias)  # [B, C]
    targets = ops.cast(flat_labels(labels), "int32")
    loss = ops.mean(keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True))
    accuracy = ops.mean(ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=1), "int32"), targets), "float32"))
    return loss, accuracy


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class ClassifierHead(ClassWeights):
    """A linear classifier on the embeddings: kernel [embedding_size, num_classes] and bias [num_classes]."""

    def __init__(self, num_classes, embedding_size, **kwargs):
        super().__init__(num_classes, embedding_size, **kwargs)
        self.kernel = self.add_weight(name="kernel", shape=(self.embedding_size, self.num_classes),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.num_classes,), initializer="zeros")

    def call(self, embeddings):
        return ops.matmul(embeddings, self.kernel) + self.bias


def _check_classification(value):
    check_object("classification", value, ("weight",),
                 'an object {"weight": w} (the weight of the cross-entropy added to the loss)')
    if not is_number(value["weight"]) or value["weight"] <= 0:
        raise OptionError("classification.weight", value["weight"], "a number > 0")


def _head_beside_itself(values, chosen):
    if values["classification"] is not None:
        return ('"classification" adds a softmax head beside a metric loss, and loss "softmax" is that head alone; '
                'drop "classification" or choose a metric loss')
    return None


# A softmax head beside the chosen loss (`EmbeddingModel(classification=SoftmaxLoss(...))`).
CLASSIFICATION = Option("classification", (DICT, NONE), None,
                        'softmax head beside the loss: {"weight": w} adds w·cross-entropy; null = none',
                        check=_check_classification)


@register_loss("softmax", options=(NUM_LABELS,), rules=(_head_beside_itself,))
class SoftmaxLoss(EmbeddingLoss):
    """Softmax cross-entropy of a classification head on the embeddings (see `softmax_cross_entropy`); logs
    `train_accuracy`.

    As params.json's loss ("loss": "softmax") it trains the network as a classifier, alone; as
    `"classification": {"weight": w}` beside a metric loss, training adds w times it
    (`model.training.model.EmbeddingModel`). Its head (`self.head_layer`, a `ClassifierHead`) is trained like
    Proxy-NCA's proxies: the training model tracks it, the run's state holds it, the saved embedding network
    does not.
    """

    mines_in_batch = False
    statistics = ("train_accuracy",)

    def __init__(self, num_classes, embedding_size, **kwargs):
        super().__init__(**kwargs)
        self.head_layer = ClassifierHead(num_classes, embedding_size, name=f"{self.name}_head")

    @property
    def trained_layers(self):
        return {"head_layer": self.head_layer}

    def _loss(self, labels, embeddings):
        head = self.head_layer
        loss, accuracy = softmax_cross_entropy(labels, embeddings, head.kernel, head.bias)
        return loss, {"train_accuracy": accuracy}

    def get_config(self):
        head = self.head_layer
        return {**super().get_config(), "num_classes": head.num_classes, "embedding_size": head.embedding_size}

__all__ = ["ClassifierHead", "SoftmaxLoss", "softmax_cross_entropy"]
