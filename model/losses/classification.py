"""Classification on the embeddings: a linear softmax head, as the loss or beside a metric loss.

    loss, accuracy = softmax_cross_entropy(labels, embeddings, kernel, bias)   # kernel [D, C], bias [C] or None
    loss = SoftmaxLoss(num_classes=10, embedding_size=64)                      # its head in `loss.head_layer`
    loss = SoftmaxLoss(751, 2048, label_smoothing=0.1, use_bias=False)         # the re-ID strong baseline's ID loss
"""

import keras
from keras import ops

from model.losses.base import NUM_LABELS, ClassWeights, EmbeddingLoss, register_loss
from model.losses.inputs import as_float32, flat_labels
from model.registry import DICT, KERAS_PACKAGE, NONE, Option, OptionError, check_object, is_number


def softmax_cross_entropy(labels, embeddings, kernel, bias=None, label_smoothing=0.0):
    """Softmax cross-entropy of a linear classifier on the embeddings, and its accuracy.

    logits = embeddings · kernel (+ bias): [B, C];
        loss = mean_i -log softmax(logits_i)[y_i]  (Keras's sparse categorical cross-entropy from logits),
        accuracy = mean_i [argmax_c logits_ic == y_i].
    With label smoothing ε (Szegedy et al. 2016, "Rethinking the Inception Architecture"; the ID loss of the
    re-ID strong baseline, ε = 0.1) the target is q = (1 - ε)·onehot(y_i) + ε/C:
        loss = mean_i -sum_c q_c log softmax(logits_i)_c   (torch's CrossEntropyLoss(label_smoothing=ε)).
    The classification task of the classic TensorFlow triplet-loss code's to-do list, and the usual remedy
    for a collapse of triplet training (pre-train with it, or train it beside the metric loss).
    Labels must lie in [0, C).

    Args:
        labels: [B] or [B, 1] integer labels in [0, C).
        embeddings: [B, D] float embeddings (computed in float32).
        kernel: [D, C] float weights; bias: [C] float, or None (a bias-free classifier).
        label_smoothing: ε in [0, 1).

    Returns:
        (loss, accuracy): scalar float32 each.
    """
    logits = ops.matmul(as_float32(embeddings), as_float32(kernel))  # [B, C]
    if bias is not None:
        logits = logits + as_float32(bias)
    targets = ops.cast(flat_labels(labels), "int32")
    if label_smoothing:
        smoothed = (1.0 - label_smoothing) * ops.one_hot(targets, ops.shape(logits)[1]) + label_smoothing / ops.cast(
            ops.shape(logits)[1], "float32")
        loss = -ops.mean(ops.sum(smoothed * ops.log_softmax(logits, axis=1), axis=1))
    else:
        loss = ops.mean(keras.losses.sparse_categorical_crossentropy(targets, logits, from_logits=True))
    accuracy = ops.mean(ops.cast(ops.equal(ops.cast(ops.argmax(logits, axis=1), "int32"), targets), "float32"))
    return loss, accuracy


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class ClassifierHead(ClassWeights):
    """A linear classifier on the embeddings: kernel [embedding_size, num_classes] and, with `use_bias`, bias
    [num_classes] (without: `bias` is None, the BNNeck's bias-free classifier)."""

    def __init__(self, num_classes, embedding_size, use_bias=True, **kwargs):
        super().__init__(num_classes, embedding_size, **kwargs)
        self.use_bias = bool(use_bias)
        self.kernel = self.add_weight(name="kernel", shape=(self.embedding_size, self.num_classes),
                                      initializer="glorot_uniform")
        self.bias = self.add_weight(name="bias", shape=(self.num_classes,), initializer="zeros") if use_bias else None

    def call(self, embeddings):
        logits = ops.matmul(embeddings, self.kernel)
        return logits + self.bias if self.bias is not None else logits

    def get_config(self):
        return {**super().get_config(), "use_bias": self.use_bias}


def check_label_smoothing(value, key="label_smoothing"):
    """ε as a float: a number in [0, 1); OptionError naming `key` otherwise."""
    if not is_number(value) or not 0 <= value < 1:
        raise OptionError(key, value, "a number in [0, 1), e.g. 0.1 (0: no smoothing)")
    return float(value)


CLASSIFICATION_KEYS = ("weight", "label_smoothing", "bias")


def _check_classification(value):
    check_object("classification", value, ("weight",),
                 'an object {"weight": w} (the weight of the cross-entropy added to the loss), with optional '
                 '"label_smoothing": ε and "bias": false', optional=CLASSIFICATION_KEYS[1:])
    if not is_number(value["weight"]) or value["weight"] <= 0:
        raise OptionError("classification.weight", value["weight"], "a number > 0")
    check_label_smoothing(value.get("label_smoothing", 0.0), "classification.label_smoothing")
    if not isinstance(value.get("bias", True), bool):
        raise OptionError("classification.bias", value["bias"], "true or false (false: a bias-free classifier)")


def _head_beside_itself(values, chosen):
    if values["classification"] is not None:
        return ('"classification" adds a softmax head beside a metric loss, and loss "softmax" is that head alone; '
                'drop "classification" or choose a metric loss')
    return None


# A softmax head beside the chosen loss (`EmbeddingModel(classification=SoftmaxLoss(...))`).
CLASSIFICATION = Option("classification", (DICT, NONE), None,
                        'softmax head beside the loss: {"weight": w} adds w·cross-entropy, optionally with '
                        '"label_smoothing": ε (default 0) and "bias": false (a bias-free classifier; default true); '
                        'null = none', check=_check_classification)


@register_loss("softmax", options=(NUM_LABELS,), rules=(_head_beside_itself,))
class SoftmaxLoss(EmbeddingLoss):
    """Softmax cross-entropy of a classification head on the embeddings (see `softmax_cross_entropy`); logs
    `train_accuracy`.

    As params.json's loss ("loss": "softmax") it trains the network as a classifier, alone; as
    `"classification": {"weight": w}` beside a metric loss, training adds w times it
    (`model.training.model.EmbeddingModel`). Its head (`self.head_layer`, a `ClassifierHead`) is trained like
    Proxy-NCA's proxies: the training model tracks it, the run's state holds it, the saved embedding network
    does not. `label_smoothing` ε smooths its targets; `use_bias=False` makes the classifier bias-free (the
    re-ID strong baseline's ID loss: ε = 0.1, no bias).
    """

    mines_in_batch = False
    statistics = ("train_accuracy",)

    def __init__(self, num_classes, embedding_size, label_smoothing=0.0, use_bias=True, **kwargs):
        super().__init__(**kwargs)
        self.label_smoothing = check_label_smoothing(label_smoothing)
        self.head_layer = ClassifierHead(num_classes, embedding_size, use_bias=use_bias, name=f"{self.name}_head")

    @property
    def trained_layers(self):
        return {"head_layer": self.head_layer}

    def _loss(self, labels, embeddings):
        head = self.head_layer
        loss, accuracy = softmax_cross_entropy(labels, embeddings, head.kernel, head.bias, self.label_smoothing)
        return loss, {"train_accuracy": accuracy}

    def get_config(self):
        head = self.head_layer
        return {**super().get_config(), "num_classes": head.num_classes, "embedding_size": head.embedding_size,
                "label_smoothing": self.label_smoothing, "use_bias": head.use_bias}

__all__ = ["ClassifierHead", "SoftmaxLoss", "softmax_cross_entropy"]
