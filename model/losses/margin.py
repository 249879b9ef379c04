"""Margin-based loss with a boundary β, fixed or learned (Wu et al., ICCV 2017).

    loss = margin_loss(labels, embeddings, margin=0.2, beta=1.2)
    loss = margin_loss(labels, embeddings, beta=betas)                 # betas: [C], one boundary per class
    model.compile(optimizer="adam", loss=MarginLoss(margin=0.2, beta=1.2))
    loss = MarginLoss(learn_beta=True, num_classes=10)             # its β in `loss.weights_layer`

The class has pytorch-metric-learning's name, `MarginLoss`.
"""

import math

import keras
from keras import ops

from model.losses.base import NUM_LABELS, EmbeddingLoss, register_loss
from model.losses.distances import pairwise_distances
from model.losses.inputs import as_float32, check_inputs, concrete_values, nan_unless_finite, static_shape
from model.losses.masks import anchor_negative_mask, anchor_positive_mask
from model.ops import l2_normalize
from model.registry import KERAS_PACKAGE


def _finite(name, value, least=None):
    """`value` as a float if it is a finite number (>= `least` where given), else ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            least is not None and value < least):
        expected = "a finite number" + ("" if least is None else f" >= {least:g}")
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return float(value)


def _anchor_betas(beta, labels):
    """β of each anchor: [B] float32 from a number, a [] or [1] tensor (one β) or a [C] tensor (β of each class).

    Labels outside [0, C) are a ValueError where their values are known (eager); inside a traced function
    they give the anchor a NaN β, so the loss is NaN rather than silently wrong.
    """
    if not hasattr(beta, "shape"):  # a number
        return ops.full(ops.shape(labels), _finite("beta", beta), dtype="float32")
    shape = static_shape(beta)
    if shape is None or len(shape) > 1:
        raise ValueError(f"beta must be a number, a [1] tensor (one β) or a [C] tensor (one β per class), got "
                         f"shape {shape}")
    beta = as_float32(beta)
    if len(shape) == 0 or shape[0] == 1:
        return ops.full(ops.shape(labels), 1.0, dtype="float32") * ops.reshape(beta, ())
    num_classes = shape[0]
    known = concrete_values(labels)
    if known is not None and known.size and (known.min() < 0 or known.max() >= num_classes):
        bad = known[(known < 0) | (known >= num_classes)][0]
        raise ValueError(f"labels must lie in [0, {num_classes}) for a beta with one value per class (shape "
                         f"{shape}), got label {bad}; give num_classes at least the number of classes")
    indices = ops.cast(labels, "int32")
    inside = ops.logical_and(indices >= 0, indices < num_classes)
    gathered = ops.take(beta, ops.clip(indices, 0, num_classes - 1))
    return ops.where(inside, gathered, float("nan"))


def margin_loss(labels, embeddings, margin=0.2, beta=1.2, *, nu=0.0, ref_labels=None, ref_embeddings=None,
                remove_diagonal=True, relation=None):
    """Margin-based loss over all triplets, with the boundary β between positive and negative distances.

    D = euclidean distances of the L2-normalised anchors (rows of `embeddings`) and references (rows of
    `ref_embeddings`, by default the batch). For every triplet (a, p, n), p a positive and n a negative of
    anchor a (model/losses/masks.py), with β_a the anchor's β (one β, or its class's):
        pos_apn = relu(D_ap - β_a + margin),   neg_apn = relu(β_a - D_an + margin)
        loss = Σ_{triplets} (pos_apn + neg_apn) / (#{pos_apn > 0} + #{neg_apn > 0})
    over the triplets (PML's DivisorReducer; 0 when the count is 0, or when there is no triplet). Each pair
    term enters once per triplet it is part of: the sums are taken per anchor, as |N(a)|·Σ_p pos_ap +
    |P(a)|·Σ_n neg_an, so memory is O(B·R), never O(B·R²). With `nu` > 0 (a learned β, PML's `nu`), the
    regularisation ν·β is added: ν·β for one β (when there is a triplet), Σ_{triplets} ν·β_a divided by
    the count above for one β per class.
    References, `remove_diagonal` and `relation` as in the pair losses (model/losses/pair.py;
    `remove_diagonal=False` is PML's `ref_emb`); with a relation, the triplets are every (a, p, n) with
    relation_ap = 1 and relation_an = -1 (PML's triplets from a pair miner's pairs).
    Equals pytorch-metric-learning 2.x's `MarginLoss(margin, nu, beta, triplets_per_anchor="all",
    learn_beta, num_classes)` with its defaults (LpDistance on normalised embeddings, DivisorReducer);
    `beta` in PML's layout: one value, or [num_classes] indexed by the anchor's label.
    Reference: Wu, Manmatha, Smola and Krähenbühl, "Sampling Matters in Deep Embedding Learning", ICCV 2017.

    Args:
        labels: [B] or [B, 1] integer labels (in [0, C) when `beta` has one value per class).
        embeddings: [B, D] float embeddings, the anchors (computed in float32; normalised here).
        margin: float >= 0, the margin on either side of β.
        beta: float, a [] or [1] tensor (one β), or a [C] tensor (β of each class); a trained weight may be given.
        nu: float >= 0, the weight of the regularisation ν·β (PML adds it only for a learned β).
        ref_labels: [R] or [R, 1] integer labels of the references, or None (the batch).
        ref_embeddings: [R, D] float references, or None (the batch); given with `ref_labels`.
        remove_diagonal: if True, reference i is anchor i itself and not a pair (see model/losses/masks.py).
        relation: [B, R] int, 1 positive, -1 negative, 0 neither, instead of the labels' equality, or None.

    Returns:
        loss: scalar float32 (NaN when an embedding, a reference or an anchor's β is not finite).
    """
    margin = _finite("margin", margin, least=0)
    nu = _finite("nu", nu, least=0)
    labels, embeddings, ref_labels, ref_embeddings = check_inputs(labels, embeddings, ref_labels, ref_embeddings)
    betas = ops.expand_dims(_anchor_betas(beta, labels), 1)  # [B, 1]
    distances = pairwise_distances(
        l2_normalize(embeddings), ref_embeddings=None if ref_embeddings is None else l2_normalize(ref_embeddings)
    )  # [B, R]
    positive = ops.cast(anchor_positive_mask(labels, ref_labels, remove_diagonal, relation), "float32")  # [B, R]
    negative = ops.cast(anchor_negative_mask(labels, ref_labels, relation), "float32")  # [B, R]
    num_positives = ops.sum(positive, axis=1, keepdims=True)  # [B, 1]: |P(a)|
    num_negatives = ops.sum(negative, axis=1, keepdims=True)  # [B, 1]: |N(a)|
    positive_terms = ops.relu(distances - betas + margin) * positive  # [B, R]
    negative_terms = ops.relu(betas - distances + margin) * negative  # [B, R]
    total = ops.sum(num_negatives * positive_terms) + ops.sum(num_positives * negative_terms)
    count = (ops.sum(num_negatives * ops.cast(positive_terms > 0, "float32"))
             + ops.sum(num_positives * ops.cast(negative_terms > 0, "float32")))
    loss = ops.where(count > 0, total / ops.maximum(count, 1.0), 0.0)
    if nu > 0:
        triplets = num_positives * num_negatives  # [B, 1]: the triplets of each anchor
        if not hasattr(beta, "shape") or len(static_shape(beta)) == 0 or static_shape(beta)[0] == 1:
            regularisation = ops.where(ops.sum(triplets) > 0, nu * betas[0, 0], 0.0)
        else:
            regularisation = ops.where(count > 0, nu * ops.sum(triplets * betas) / ops.maximum(count, 1.0), 0.0)
        loss = loss + regularisation
    # A NaN β (a label without a β in a traced function, or a diverged learned β) fails the comparisons that
    # count the active terms and could leave a count of 0, hence a finite 0: NaN instead.
    return nan_unless_finite(loss, embeddings, ref_embeddings, betas)


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class LearnedBeta(keras.layers.Layer):
    """The learned β of `MarginLoss`: a weight of shape [num_classes] (one β per class) or [1] (one β)."""

    def __init__(self, num_classes=None, initial=1.2, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = None if not num_classes else int(num_classes)
        self.initial = float(initial)
        self.beta = self.add_weight(name="beta", shape=(self.num_classes or 1,),
                                    initializer=keras.initializers.Constant(self.initial), trainable=True)
        self.built = True

    def call(self, inputs=None):
        return self.beta

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "initial": self.initial}


@register_loss("margin", options=(NUM_LABELS,))
class MarginLoss(EmbeddingLoss):
    """Margin-based loss (see `margin_loss`): PML's `MarginLoss`, with a fixed β or a learned one.

    With `learn_beta=True`, β is a trained weight in `self.weights_layer` (a `LearnedBeta` layer), one per
    class when `num_classes` is given (labels must then lie in [0, num_classes)), one for all when it is
    None or 0, as in PML; `nu` > 0 adds PML's regularisation ν·β. The training model (`EmbeddingModel`)
    tracks the layer through `trained_layers`, so the optimizer trains β and the run's checkpoints hold it;
    with a model of your own, set the layer as an attribute of a subclassed model (see `ProxyNCALoss`).
    Without `learn_beta`, β is the constant `beta` and `num_classes` changes nothing (PML's per-class copies
    of one β give the same loss).

    params.json: `"loss": "margin", "loss_options": {"margin": 0.2, "beta": 1.2, "learn_beta": true}`; the
    application passes "num_labels" (the data's classes) as `num_classes`, so a learned β is per class
    there; `"num_classes": 0` in "loss_options" learns one β for all.
    """

    def __init__(self, margin=0.2, beta=1.2, nu=0.0, learn_beta=False, num_classes=None, **kwargs):
        super().__init__(**kwargs)
        self.margin = _finite("margin", margin, least=0)
        self.beta = _finite("beta", beta)
        self.nu = _finite("nu", nu, least=0)
        if not isinstance(learn_beta, bool):
            raise ValueError(f"learn_beta must be true or false, got {learn_beta!r}")
        self.learn_beta = learn_beta
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 0):
            raise ValueError(f"num_classes must be an integer >= 0 (0 or None: one β for all classes), got "
                             f"{num_classes!r}")
        self.num_classes = num_classes
        self.weights_layer = LearnedBeta(num_classes, self.beta, name="margin_beta") if learn_beta else None

    @property
    def trained_layers(self):
        return {"weights_layer": self.weights_layer} if self.learn_beta else {}

    def _loss(self, labels, embeddings, **references):
        if self.learn_beta:
            beta, nu = self.weights_layer.beta, self.nu
        else:  # PML adds ν·β only for a learned β
            beta, nu = self.beta, 0.0
        return margin_loss(labels, embeddings, self.margin, beta, nu=nu, **references), {}

    def get_config(self):
        config = {**super().get_config(), "margin": self.margin, "beta": self.beta, "nu": self.nu}
        return {**config, "learn_beta": self.learn_beta, "num_classes": self.num_classes}


__all__ = ["LearnedBeta", "MarginLoss", "margin_loss"]
