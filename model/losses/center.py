"""The center loss: each embedding pulled towards a centre of its class, the centres following their classes.

    loss = center_loss(labels, embeddings, centers)                  # centers: [C, D]
    centers = center_update(labels, embeddings, centers, rate=0.5)   # the paper's update, not a gradient step
    loss = CenterLoss(num_classes=751, embedding_size=2048)         # its centres in `loss.centers_layer`

Wen, Zhang, Li and Qiao, "A Discriminative Feature Learning Approach for Deep Face Recognition", ECCV 2016;
beside a softmax and a triplet loss, the last trick of the re-ID strong baseline (Luo et al., CVPRW 2019:
weight 5e-4, rate 0.5). Training adds `weight` times it to the objective on what the metric loss sees and
updates the centres after each training step with the paper's rule (`model.training.model.EmbeddingModel`'s
`center`), as the cross-batch memory is updated: the centres are not trained by the optimizer, they are
non-trainable weights of the training model, in the run's state (a resumed run restores them), not in the
saved network.
"""

import keras
from keras import ops

from model.losses.base import ClassWeights, EmbeddingLoss
from model.losses.inputs import as_float32, check_inputs, concrete_values, flat_labels, nan_unless_finite
from model.registry import DICT, KERAS_PACKAGE, NONE, Option, OptionError, is_number


def _check_centers(centers, embeddings):
    """ValueError naming `centers` unless it is [C, D] with the embeddings' D (where the shapes are known)."""
    shape, dim = tuple(centers.shape), embeddings.shape[-1]
    if len(shape) != 2 or (dim is not None and shape[1] is not None and shape[1] != dim):
        raise ValueError(f"centers must be [num_classes, D] with the embeddings' D = {dim}, got shape {shape}")
    return shape[0]


def _in_range(labels, num_classes):
    """(valid [B] bool, labels clipped to [0, C)). Labels known now (eager) must all be valid: ValueError naming
    the first that is not; inside a traced function they cannot be read, and an invalid one makes the loss NaN."""
    valid = ops.logical_and(labels >= 0, labels < num_classes)
    concrete = concrete_values(labels)  # None inside a traced function: checked by the NaN instead
    if concrete is not None:
        bad = [int(label) for label in concrete.reshape(-1) if not 0 <= label < num_classes]
        if bad:
            raise ValueError(f"labels must lie in [0, num_classes = {num_classes}) (one centre per class), got "
                             f"{bad[0]}")
    return valid, ops.clip(labels, 0, num_classes - 1)


def center_loss(labels, embeddings, centers):
    """The center loss: the mean squared distance of each embedding to the centre of its class,

        loss = (1 / B) sum_i ||x_i - c_{y_i}||²,

    the mean over the batch as in the re-ID strong baseline's code (its weight 5e-4 is for this mean); the
    paper writes (1/2) sum_i, the same up to the factor B/2 that the weight absorbs. NaN when an embedding is
    not finite, or (inside a traced function) when a label is not a class.

    Args:
        labels: [B] or [B, 1] integer labels in [0, C).
        embeddings: [B, D] float embeddings (computed in float32).
        centers: [C, D] float, one centre per class.

    Returns:
        loss: scalar float32.
    """
    labels, embeddings, _, _ = check_inputs(labels, embeddings)
    num_classes = _check_centers(centers, embeddings)
    valid, safe = _in_range(ops.cast(labels, "int32"), num_classes)
    # c_{y_i} by a one-hot product, not a gather: the gradient to the centres stays a dense [C, D] tensor.
    own = ops.matmul(ops.one_hot(safe, num_classes, dtype="float32"), as_float32(centers))  # [B, D]
    loss = ops.mean(ops.sum(ops.square(embeddings - own), axis=1))
    return nan_unless_finite(ops.where(ops.all(valid), loss, float("nan")), embeddings)


def center_update(labels, embeddings, centers, rate=0.5):
    """The centres after one step of the paper's update rule (Wen et al. 2016, eq. 4 and Algorithm 1):

        Δc_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j),   c_j <- c_j - rate · Δc_j,

    n_j the number of embeddings of class j in the batch (a class absent from the batch keeps its centre).
    No gradient flows through it.

    Args:
        labels: [B] or [B, 1] integer labels in [0, C).
        embeddings: [B, D] float embeddings.
        centers: [C, D] float.
        rate: α in (0, 1], the centres' own learning rate.

    Returns:
        [C, D] float32: the updated centres.
    """
    labels, embeddings, _, _ = check_inputs(labels, embeddings)
    num_classes = _check_centers(centers, embeddings)
    valid, safe = _in_range(ops.cast(labels, "int32"), num_classes)
    weight = ops.cast(valid, "float32")  # rows of labels out of range (traced only) move no centre
    embeddings = ops.stop_gradient(embeddings) * weight[:, None]
    centers = ops.stop_gradient(as_float32(centers))
    counts = ops.segment_sum(weight, safe, num_segments=num_classes)  # [C]
    sums = ops.segment_sum(embeddings, safe, num_segments=num_classes)  # [C, D]
    delta = (counts[:, None] * centers - sums) / (1.0 + counts[:, None])
    return centers - rate * delta


def _check_rate(rate, key="rate"):
    if not is_number(rate) or not 0 < rate <= 1:
        raise OptionError(key, rate, "a number in (0, 1] (the centres' own learning rate α; the paper: 0.5)")
    return float(rate)


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class ClassCenters(ClassWeights):
    """The centres of the center loss: a non-trainable [num_classes, embedding_size] float32 weight, drawn from
    a standard normal (as the strong baseline's code draws them), the same on every replica."""

    def __init__(self, num_classes, embedding_size, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(num_classes, embedding_size, trainable=False, **kwargs)
        self.centers = self.add_weight(name="centers", shape=(self.num_classes, self.embedding_size),
                                       initializer=keras.initializers.RandomNormal(stddev=1.0), trainable=False,
                                       aggregation="only_first_replica")

    def call(self, inputs):
        return self.centers


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class CenterLoss(EmbeddingLoss):
    """The center loss (see `center_loss`) with its centres in `self.centers_layer`, updated by `update`.

    Not a loss to train with alone (every embedding would fall onto its centre): training adds it beside the
    metric and ID losses (params.json's `"center_loss": {"weight": 5e-4, "rate": 0.5}`), on the features the
    metric loss sees, and calls `update(labels, embeddings)` after computing it in each training step. The
    training model tracks `centers_layer` (`trained_layers`), so that the run's checkpoints hold the centres;
    they are not trainable, so the optimizer leaves them alone.

    Args:
        num_classes: C; embedding_size: D.
        rate: α in (0, 1] of `center_update`.
    """

    mines_in_batch = False

    def __init__(self, num_classes, embedding_size, rate=0.5, name="center_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.rate = _check_rate(rate)
        self.centers_layer = ClassCenters(num_classes, embedding_size, name=f"{self.name}_centers")

    @property
    def trained_layers(self):
        return {"centers_layer": self.centers_layer}

    def _loss(self, labels, embeddings):
        return center_loss(labels, embeddings, self.centers_layer.centers), {}

    def update(self, labels, embeddings):
        """Move the centres one step of the paper's rule towards the batch (`center_update`)."""
        centers = self.centers_layer.centers
        centers.assign(center_update(flat_labels(labels), self._prepare(embeddings), centers, self.rate))

    def get_config(self):
        layer = self.centers_layer
        return {**super().get_config(), "num_classes": layer.num_classes, "embedding_size": layer.embedding_size,
                "rate": self.rate}


def _check_center_loss(value):
    if "weight" not in value or not set(value) <= {"weight", "rate"}:
        raise OptionError("center_loss", value, 'an object {"weight": λ, "rate": α} ("rate" optional, 0.5)')
    if not is_number(value["weight"]) or value["weight"] <= 0:
        raise OptionError("center_loss.weight", value["weight"], "a number > 0, e.g. 0.0005")
    _check_rate(value.get("rate", 0.5), "center_loss.rate")


def _centres_need_classes(values, chosen):
    if values["center_loss"] is not None and chosen["dataset"].pairing is not None:
        return (f'key "center_loss" keeps one centre per class, but dataset "{values["dataset"]}" has no class '
                "labels to train them with (its training pairs are formed otherwise, e.g. by GPS); drop "
                '"center_loss"')
    return None


# The center loss beside the chosen loss (`EmbeddingModel(center=CenterLoss(...))`).
CENTER_LOSS = Option("center_loss", (DICT, NONE), None,
                     'center loss (Wen et al. 2016) beside the loss, on what the metric loss sees: {"weight": λ '
                     '(the strong baseline: 0.0005), "rate": α (the centres\' own rate, 0.5)}; null = none',
                     check=_check_center_loss)
RULES = (_centres_need_classes,)

__all__ = ["CenterLoss", "ClassCenters", "center_loss", "center_update"]
