"""Pair and proxy losses, the Keras `Loss` classes of every loss, and the registry by name.

Plain functions of `(labels, embeddings, ...)` hold the formulas; each has a thin
`keras.losses.Loss` class (y_true = labels [B] or [B, 1], y_pred = embeddings [B, D]) that is
registered for serialization, round-trips through `get_config`, works in `model.compile(loss=...)`,
and is found by name with `get_loss("batch_hard", margin=0.3)` for params.json.

    name               class                       function
    batch_all          BatchAllTripletLoss         model.triplet_loss.batch_all_triplet_loss
    batch_hard         BatchHardTripletLoss        model.triplet_loss.batch_hard_triplet_loss
    batch_semihard     BatchSemiHardTripletLoss    model.triplet_loss.batch_semihard_triplet_loss
    contrastive        ContrastiveLoss             contrastive_loss
    lifted             LiftedStructLoss            lifted_struct_loss
    proxy_nca          ProxyNCALoss                proxy_nca_loss
    multi_similarity   MultiSimilarityLoss         multi_similarity_loss
    softmax            SoftmaxLoss                 softmax_cross_entropy (a classification head)
"""

import difflib
import math

import keras
from keras import ops

from model.distances import (
    REDUCTIONS,
    anchor_negative_mask,
    anchor_positive_mask,
    as_float32,
    check_inputs,
    check_reduction,
    flat_labels,
    l2_normalize,
    masked_log1p_sum_exp,
    masked_logsumexp,
    masked_maximum,
    masked_minimum,
    nan_unless_finite,
    pairwise_cosine_similarity,
    pairwise_distances,
    reduce_terms,
)
from model.triplet_loss import (
    POSITIVES,
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    batch_semihard_triplet_loss,
)

_PACKAGE = "metric_learning"
HINGES = ("distance", "squared_distance")  # what contrastive_loss's hinge is on
# The loss options whose values are strings, with their allowed values (params.json's loss_options checks them).
STRING_OPTIONS = {"hinge": HINGES, "reduction": REDUCTIONS, "positives": POSITIVES}


def _upper_triangle(batch_size):
    """[B, B] bool, True for i < j: each unordered pair once."""
    rows = ops.expand_dims(ops.arange(batch_size), 1)
    cols = ops.expand_dims(ops.arange(batch_size), 0)
    return rows < cols


def contrastive_loss(
    labels,
    embeddings,
    margin=1.0,
    *,
    hinge="distance",
    reduction="all",
    ref_labels=None,
    ref_embeddings=None,
    remove_diagonal=True,
    relation=None,
):
    """Contrastive loss over all (anchor, reference) pairs; by default, over the pairs of the batch.

    Per pair (a, r), y_ar = [label_a == label_r] and d euclidean:
        hinge="distance" (the default):   y_ar·d_ar² + (1 - y_ar)·relu(margin - d_ar)²   (Hadsell et al.)
        hinge="squared_distance":         y_ar·d_ar² + (1 - y_ar)·relu(margin - d_ar²)
    the second being the "online contrastive loss" of the PyTorch online-metric-learning project's README
    (the hinge on the squared distance, not squared; its margin is on d², e.g. 0.1 for L2-normalised
    embeddings). loss = the mean of the pair terms over all pairs (reduction "all", the default) or over
    the pairs whose term is > 0 ("nonzero", that project's mean); 0 when there is none.
    The pairs are every anchor (row of `embeddings`) against every reference (row of `ref_embeddings`)
    except, with `remove_diagonal`, anchor i against reference i, itself. Without references they are
    the unordered pairs i < j of the batch (the same mean as over the ordered pairs i != j). With a
    `relation`, y_ar = [relation_ar == 1] and the pairs are the ordered pairs whose relation is 1 or -1
    (those it calls neither are left out).
    Reference: Hadsell, Chopra and LeCun, "Dimensionality Reduction by Learning an Invariant
    Mapping", CVPR 2006.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings, the anchors (computed in float32).
        margin: float, distance (or squared distance) beyond which negative pairs cost nothing.
        hinge: "distance" or "squared_distance" (HINGES), see above.
        reduction: "all" or "nonzero" (model.distances.REDUCTIONS), the pairs the mean is over.
        ref_labels: [R] or [R, 1] integer labels of the references, or None (the batch).
        ref_embeddings: [R, D] float references, or None (the batch); given with `ref_labels`.
        remove_diagonal: if True, reference i is anchor i itself and not a pair (see model/distances.py).
        relation: [B, R] int, 1 positive, -1 negative, 0 neither, instead of the labels' equality, or None.

    Returns:
        loss: scalar float32.
    """
    if hinge not in HINGES:
        raise ValueError(f"hinge must be one of {', '.join(map(repr, HINGES))}, got {hinge!r}")
    check_reduction(reduction)
    labels, embeddings, ref_labels, ref_embeddings = check_inputs(labels, embeddings, ref_labels, ref_embeddings)
    positive = anchor_positive_mask(labels, ref_labels, remove_diagonal, relation)  # [B, R]
    if ref_embeddings is None and remove_diagonal and relation is None:
        pairs = _upper_triangle(ops.shape(positive)[0])  # [B, B]: each unordered pair once
    else:  # [B, R]: every pair with a relation (with labels, all but the self pairs)
        pairs = ops.logical_or(positive, anchor_negative_mask(labels, ref_labels, relation))
    if hinge == "distance":
        distances = pairwise_distances(embeddings, ref_embeddings=ref_embeddings)  # [B, R]
        pair_losses = ops.where(positive, ops.square(distances), ops.square(ops.relu(margin - distances)))
    else:  # squared distances straight from the expansion: no square root, no kink at d = 0
        squared = pairwise_distances(embeddings, squared=True, ref_embeddings=ref_embeddings)  # [B, R]
        pair_losses = ops.where(positive, squared, ops.relu(margin - squared))
    return nan_unless_finite(reduce_terms(pair_losses, pairs, reduction), embeddings, ref_embeddings)


def lifted_struct_loss(
    labels,
    embeddings,
    margin=1.0,
    *,
    reduction="all",
    ref_labels=None,
    ref_embeddings=None,
    remove_diagonal=True,
    relation=None,
):
    """Lifted structured loss over the positive (anchor, reference) pairs (euclidean distance).

    For each positive pair (a, r), a an anchor (row of `embeddings`) and r a reference (row of
    `ref_embeddings`, by default the batch):
        J_ar = log( Σ_{k neg of a} exp(margin - D_ak) + Σ_{l neg of r} exp(margin - D_lr) ) + D_ar
    where k ranges over the references and l over the anchors, so that every distance is one of
    the [B, R] matrix; loss = Σ relu(J_ar)² / (2·|P|), |P| the number of positive pairs (reduction
    "all", the default) or of those with J_ar > 0 ("nonzero"); 0 when none. Without references the
    pairs are the unordered positive pairs i < j of the batch, and both sums range over the batch, as
    in the paper; with a `relation` (which need not be symmetric) the pairs are the ordered (anchor,
    reference) pairs it calls positive. Each log-sum-exp is computed with its
    maximum subtracted, so large distances do not underflow; a pair without any negative has no J
    (it contributes 0).
    Reference: Oh Song, Xiang, Jegelka and Savarese, "Deep Metric Learning via Lifted Structured
    Feature Embedding", CVPR 2016.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings, the anchors (computed in float32).
        margin: float.
        reduction: "all" or "nonzero" (model.distances.REDUCTIONS), the positive pairs the mean is over.
        ref_labels, ref_embeddings, remove_diagonal, relation: as in `contrastive_loss`.

    Returns:
        loss: scalar float32.
    """
    check_reduction(reduction)
    labels, embeddings, ref_labels, ref_embeddings = check_inputs(labels, embeddings, ref_labels, ref_embeddings)
    in_batch = ref_embeddings is None and remove_diagonal and relation is None
    distances = pairwise_distances(embeddings, ref_embeddings=ref_embeddings)  # [B, R]
    negative_mask = anchor_negative_mask(labels, ref_labels, relation)  # [B, R]
    logits = margin - distances  # [B, R]
    log_anchor = masked_logsumexp(logits, negative_mask, axis=1)  # [B]: log Σ_{k neg of a} exp(margin - D_ak)
    # [R]: log Σ_{l neg of r} exp(margin - D_lr); in a batch, the matrix is symmetric and this is log_anchor.
    log_reference = log_anchor if in_batch else masked_logsumexp(logits, negative_mask, axis=0)
    pair_log = ops.logaddexp(ops.expand_dims(log_anchor, 1), ops.expand_dims(log_reference, 0))  # [B, R], stable
    objective = ops.relu(pair_log + distances)  # [B, R]
    pairs = anchor_positive_mask(labels, ref_labels, remove_diagonal, relation)
    if in_batch:
        pairs = ops.logical_and(pairs, _upper_triangle(ops.shape(distances)[0]))
    # Halving the mean is exact in floating point: Σ/(2·|P|) as before, written once with the reduction.
    loss = reduce_terms(ops.square(objective), pairs, reduction) / 2.0
    return nan_unless_finite(loss, embeddings, ref_embeddings)


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


def multi_similarity_loss(
    labels,
    embeddings,
    alpha=2.0,
    beta=50.0,
    base=0.5,
    epsilon=0.1,
    *,
    reduction="all",
    ref_labels=None,
    ref_embeddings=None,
    remove_diagonal=True,
    relation=None,
):
    """Multi-similarity loss with its pair mining, on cosine similarities.

    S = cosine similarities of the anchors (rows of `embeddings`) against the references (rows of
    `ref_embeddings`, by default the batch). For anchor a, a positive pair is kept if
    S_ap - ε < max_n S_an, a negative pair if S_an + ε > min_p S_ap. Then
        loss_a = (1/α)·log(1 + Σ_{kept p} exp(-α(S_ap - base))) + (1/β)·log(1 + Σ_{kept n} exp(β(S_an - base)))
    loss = mean of loss_a over all anchors (reduction "all", the default; an anchor with nothing kept, e.g.
    without any positive among the references, gives 0) or over the anchors with loss_a > 0 ("nonzero").
    NaN when an embedding or reference is not finite.
    Reference: Wang et al., "Multi-Similarity Loss with General Pair Weighting for Deep Metric
    Learning", CVPR 2019.

    Args:
        labels: [B] or [B, 1] integer labels.
        embeddings: [B, D] float embeddings, the anchors (computed in float32; normalised here).
        alpha, beta: float, the positive and negative scales.
        base: float, the similarity offset λ.
        epsilon: float, the mining margin.
        reduction: "all" or "nonzero" (model.distances.REDUCTIONS), the anchors the mean is over.
        ref_labels, ref_embeddings, remove_diagonal, relation: as in `contrastive_loss`.

    Returns:
        loss: scalar float32.
    """
    check_reduction(reduction)
    labels, embeddings, ref_labels, ref_embeddings = check_inputs(labels, embeddings, ref_labels, ref_embeddings)
    similarity = pairwise_cosine_similarity(embeddings, ref_embeddings)  # [B, R]
    positive_mask = anchor_positive_mask(labels, ref_labels, remove_diagonal, relation)
    negative_mask = anchor_negative_mask(labels, ref_labels, relation)
    hardest_negative = ops.expand_dims(masked_maximum(similarity, negative_mask), 1)  # [B, 1]
    hardest_positive = ops.expand_dims(masked_minimum(similarity, positive_mask), 1)  # [B, 1]
    kept_positive = ops.logical_and(positive_mask, similarity - epsilon < hardest_negative)
    kept_negative = ops.logical_and(negative_mask, similarity + epsilon > hardest_positive)
    positive_term = masked_log1p_sum_exp(-alpha * (similarity - base), kept_positive) / alpha
    negative_term = masked_log1p_sum_exp(beta * (similarity - base), kept_negative) / beta
    anchor_losses = positive_term + negative_term  # [B]
    loss = reduce_terms(anchor_losses, ops.ones_like(anchor_losses), reduction)
    # A NaN similarity fails every mining comparison and would drop out, leaving a finite loss.
    return nan_unless_finite(loss, embeddings, ref_embeddings)


def parse_margin(margin, soft_allowed=False):
    """The one reading of a margin: a finite number >= 0, or "soft" where `soft_allowed` (batch-hard's
    softplus); ValueError naming the value otherwise."""
    if margin == "soft" and soft_allowed:
        return margin
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        expected = 'a finite number >= 0 or "soft"' if soft_allowed else "a finite number >= 0"
        raise ValueError(f"margin must be {expected}, got {margin!r}")
    return float(margin)


class MinedLoss(keras.losses.Loss):
    """Base of the Keras losses on a batch: y_true = labels [B] or [B, 1], y_pred = embeddings [B, D].

    Each subclass owns its contract with training, so that training names no loss:
    - `name_in_registry`: its name in params.json;
    - `params_options`: its arguments taken from params.json keys (`from_params`), {argument: key},
      `loss_options` added;
    - `statistics`: the names of the scalars `compute(labels, embeddings, ref_labels, ref_embeddings,
      relation=...) -> (loss, stats)` returns in `stats`, which training logs (batch-all: `fraction_positive_triplets`);
    - `collapse_reason(logs)`: how a collapse of the embeddings shows in what it logs, if it does.
    The loss is a scalar for the whole batch: the batch is the unit of mining, so per-sample weights
    have no meaning here and are rejected, and so has Keras's own `reduction` (there is nothing left to
    reduce; it stays "sum_over_batch_size"). The pair and triplet losses use the argument `reduction`
    for what it means to them: the terms their mean is over, "nonzero" or "all"
    (`model.distances.REDUCTIONS`), kept in `term_reduction`; each has its own default
    (`default_reduction`), and a loss without the choice (None) refuses the argument.
    """

    name_in_registry = None
    mines_in_batch = True  # positives and negatives are other items of the batch (not proxies)
    params_options = {}
    statistics = ()
    soft_margin_allowed = False
    default_reduction = None

    def __init__(self, l2_normalize=False, reduction=None, name=None, dtype=None):
        super().__init__(name=name or self.name_in_registry, reduction="sum_over_batch_size", dtype=dtype)
        self.l2_normalize = bool(l2_normalize)
        if reduction is not None and self.default_reduction is None:
            raise TypeError(f"{type(self).__name__} has no reduction option (its mean is fixed; see its function)")
        self.term_reduction = (
            None if self.default_reduction is None else check_reduction(reduction or self.default_reduction)
        )

    @classmethod
    def from_params(cls, params):
        """The loss as params.json describes it: its `params_options` keys, then `loss_options`."""
        options = {argument: getattr(params, key) for argument, key in cls.params_options.items()}
        options.update(params.loss_options)
        try:
            return cls(**options)
        except TypeError as error:
            raise ValueError(f'loss_options {params.loss_options} do not fit loss "{cls.name_in_registry}": '
                             f"{error}") from None

    def compute(self, labels, embeddings, ref_labels=None, ref_embeddings=None, remove_diagonal=True, relation=None):
        """(loss, stats) of anchors `embeddings: [B, D]` against references `ref_embeddings: [R, D]`
        (default: the batch itself; see the loss functions), after this loss's L2 normalisation; a
        `relation: [B, R]` (1 positive, -1 negative, 0 neither) replaces the labels' equality."""
        references = {}
        if ref_labels is not None or ref_embeddings is not None or relation is not None:
            if not self.mines_in_batch:
                raise ValueError(f"{type(self).__name__} compares embeddings with learned proxies, not with "
                                 "references: a cross-batch memory, global references or a relation do not apply to it")
        if ref_labels is not None or ref_embeddings is not None:
            references = dict(ref_labels=ref_labels, ref_embeddings=self._prepare(ref_embeddings),
                              remove_diagonal=remove_diagonal)
        if relation is not None:
            references["relation"] = relation
        return self._loss(labels, self._prepare(embeddings), **references)

    def _loss(self, labels, embeddings, **references):
        """(loss, stats) on prepared embeddings; `references` are the loss function's keyword arguments."""
        raise NotImplementedError

    def collapse_reason(self, logs):
        """Why `logs` (running means of the loss and statistics of training) show collapsed embeddings, or None."""
        return None

    def _prepare(self, embeddings):
        embeddings = as_float32(embeddings)
        return l2_normalize(embeddings) if self.l2_normalize else embeddings

    def call(self, y_true, y_pred):
        loss, _ = self.compute(y_true, y_pred)
        return loss

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(f"{type(self).__name__} is computed over the whole batch; sample_weight is not supported")
        return super().__call__(y_true, y_pred)

    def get_config(self):
        config = {"name": self.name, "l2_normalize": self.l2_normalize}
        return config if self.term_reduction is None else {**config, "reduction": self.term_reduction}


class _MarginLoss(MinedLoss):
    """A loss with a `margin` (see `parse_margin`)."""

    params_options = {"margin": "margin"}

    def __init__(self, margin=0.5, **kwargs):
        super().__init__(**kwargs)
        self.margin = parse_margin(margin, self.soft_margin_allowed)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


class _TripletLoss(_MarginLoss):
    """A triplet loss: a margin and euclidean or squared euclidean distances.

    Collapse shows as the mean pairwise distance falling below the margin: in a healthy run a negative
    must lie a margin farther than a positive, so pairs are on average farther apart than the margin,
    while collapsing embeddings shrink together until nearly every triplet violates it and each costs
    about the margin. Calibrated on Fashion-MNIST (tests/data/collapse_runs.json): healthy batch-all and
    batch-hard runs never fell below 2.7 margins; batch-hard at learning rate 0.01, which collapsed
    (validation precision@1 from 0.83 to 0.63), fell to 0.65 of the margin.
    """

    def collapse_reason(self, logs):
        distance = logs.get("mean_distance")
        if self.margin == "soft" or not self.margin or distance is None:
            return None
        if self.squared:  # the margin is on squared distances
            distance = distance**2
        if distance < self.margin:
            return f"mean pairwise distance {distance:.3g} below the margin {self.margin:g}: nearly every triplet " \
                   "violates it"
        return None

    params_options = {"margin": "margin", "squared": "squared"}

    def __init__(self, margin=0.5, squared=False, **kwargs):
        super().__init__(margin, **kwargs)
        self.squared = bool(squared)

    def get_config(self):
        return {**super().get_config(), "squared": self.squared}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchAllTripletLoss(_TripletLoss):
    """Batch-all triplet loss (see `batch_all_triplet_loss`); logs `fraction_positive_triplets`."""

    name_in_registry = "batch_all"
    statistics = ("fraction_positive_triplets",)
    default_reduction = "nonzero"

    def _loss(self, labels, embeddings, **references):
        loss, fraction = batch_all_triplet_loss(
            labels, embeddings, self.margin, self.squared, reduction=self.term_reduction, **references
        )
        return loss, {"fraction_positive_triplets": fraction}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchHardTripletLoss(_TripletLoss):
    """Batch-hard triplet loss (see `batch_hard_triplet_loss`); margin may be "soft"; `positives` "hardest"
    (one term per anchor) or "all" (one per positive pair, each against the anchor's hardest negative).

    """

    name_in_registry = "batch_hard"
    soft_margin_allowed = True
    default_reduction = "all"

    def __init__(self, margin=0.5, squared=False, positives="hardest", **kwargs):
        super().__init__(margin, squared, **kwargs)
        if positives not in POSITIVES:
            raise ValueError(f"positives must be one of {', '.join(map(repr, POSITIVES))}, got {positives!r}")
        self.positives = positives

    def _loss(self, labels, embeddings, **references):
        options = {"positives": self.positives, "reduction": self.term_reduction}
        return batch_hard_triplet_loss(labels, embeddings, self.margin, self.squared, **options, **references), {}

    def get_config(self):
        return {**super().get_config(), "positives": self.positives}



@keras.saving.register_keras_serializable(package=_PACKAGE)
class BatchSemiHardTripletLoss(_TripletLoss):
    """Semi-hard triplet loss (see `batch_semihard_triplet_loss`)."""

    name_in_registry = "batch_semihard"
    default_reduction = "all"

    def _loss(self, labels, embeddings, **references):
        loss = batch_semihard_triplet_loss(
            labels, embeddings, self.margin, self.squared, reduction=self.term_reduction, **references
        )
        return loss, {}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ContrastiveLoss(_MarginLoss):
    """Contrastive loss over all pairs (see `contrastive_loss`): `hinge` "distance" (Hadsell et al.) or
    "squared_distance" (the PyTorch online-metric-learning project), `reduction` "all" or "nonzero"."""

    name_in_registry = "contrastive"
    default_reduction = "all"

    def __init__(self, margin=1.0, hinge="distance", **kwargs):
        super().__init__(margin, **kwargs)
        if hinge not in HINGES:
            raise ValueError(f"hinge must be one of {', '.join(map(repr, HINGES))}, got {hinge!r}")
        self.hinge = hinge

    def _loss(self, labels, embeddings, **references):
        loss = contrastive_loss(
            labels, embeddings, self.margin, hinge=self.hinge, reduction=self.term_reduction, **references
        )
        return loss, {}

    def get_config(self):
        return {**super().get_config(), "hinge": self.hinge}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LiftedStructLoss(_MarginLoss):
    """Lifted structured loss (see `lifted_struct_loss`)."""

    name_in_registry = "lifted"
    default_reduction = "all"

    def __init__(self, margin=1.0, **kwargs):
        super().__init__(margin, **kwargs)

    def _loss(self, labels, embeddings, **references):
        return lifted_struct_loss(labels, embeddings, self.margin, reduction=self.term_reduction, **references), {}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MultiSimilarityLoss(MinedLoss):
    """Multi-similarity loss (see `multi_similarity_loss`); it normalises embeddings itself."""

    name_in_registry = "multi_similarity"
    default_reduction = "all"

    def __init__(self, alpha=2.0, beta=50.0, base=0.5, epsilon=0.1, **kwargs):
        super().__init__(**kwargs)
        self.alpha, self.beta = float(alpha), float(beta)
        self.base, self.epsilon = float(base), float(epsilon)

    def _loss(self, labels, embeddings, **references):
        loss = multi_similarity_loss(
            labels, embeddings, self.alpha, self.beta, self.base, self.epsilon, reduction=self.term_reduction,
            **references,
        )
        return loss, {}

    def get_config(self):
        config = {**super().get_config(), "alpha": self.alpha, "beta": self.beta}
        return {**config, "base": self.base, "epsilon": self.epsilon}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Proxies(keras.layers.Layer):
    """The trainable proxies of Proxy-NCA: a [num_classes, embedding_size] weight, nothing else."""

    def __init__(self, num_classes, embedding_size, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.proxies = self.add_weight(
            name="proxies",
            shape=(self.num_classes, self.embedding_size),
            initializer=keras.initializers.RandomNormal(stddev=1.0),
            trainable=True,
        )
        self.built = True  # the weight's shape is known from the arguments alone

    def call(self, inputs):
        return self.proxies

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "embedding_size": self.embedding_size}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ProxyNCALoss(MinedLoss):
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

    name_in_registry = "proxy_nca"
    mines_in_batch = False
    params_options = {"num_classes": "num_labels", "embedding_size": "embedding_size"}

    def __init__(self, num_classes, embedding_size, scale=3.0, **kwargs):
        super().__init__(**kwargs)
        self.scale = float(scale)
        self.proxy_layer = Proxies(num_classes, embedding_size, name="proxy_nca_proxies")

    def _loss(self, labels, embeddings):
        return proxy_nca_loss(labels, embeddings, self.proxy_layer.proxies, self.scale), {}

    def get_config(self):
        config = {**super().get_config(), "scale": self.scale}
        return {
            **config,
            "num_classes": self.proxy_layer.num_classes,
            "embedding_size": self.proxy_layer.embedding_size,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ClassifierHead(keras.layers.Layer):
    """A linear classifier on the embeddings: kernel [embedding_size, num_classes] and bias [num_classes]."""

    def __init__(self, num_classes, embedding_size, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.kernel = self.add_weight(
            name="kernel", shape=(self.embedding_size, self.num_classes), initializer="glorot_uniform"
        )
        self.bias = self.add_weight(name="bias", shape=(self.num_classes,), initializer="zeros")
        self.built = True  # the weights' shapes are known from the arguments alone

    def call(self, embeddings):
        return ops.matmul(embeddings, self.kernel) + self.bias

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "embedding_size": self.embedding_size}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SoftmaxLoss(MinedLoss):
    """Softmax cross-entropy of a classification head on the embeddings (see `softmax_cross_entropy`); logs
    `train_accuracy`.

    As params.json's loss ("loss": "softmax") it trains the network as a classifier, alone; as
    `"classification": {"weight": w}` beside a metric loss, training adds w times it (model/training.py,
    EmbeddingModel). Its head (`self.head_layer`, a `ClassifierHead`) is trained like Proxy-NCA's proxies:
    the training model tracks it, the run's state holds it, the saved embedding network does not.
    """

    name_in_registry = "softmax"
    mines_in_batch = False
    params_options = {"num_classes": "num_labels", "embedding_size": "embedding_size"}
    statistics = ("train_accuracy",)

    def __init__(self, num_classes, embedding_size, **kwargs):
        super().__init__(**kwargs)
        self.head_layer = ClassifierHead(num_classes, embedding_size, name=f"{self.name}_head")

    def _loss(self, labels, embeddings):
        head = self.head_layer
        loss, accuracy = softmax_cross_entropy(labels, embeddings, head.kernel, head.bias)
        return loss, {"train_accuracy": accuracy}

    def get_config(self):
        head = self.head_layer
        return {**super().get_config(), "num_classes": head.num_classes, "embedding_size": head.embedding_size}


LOSSES = {
    cls.name_in_registry: cls
    for cls in (
        BatchAllTripletLoss,
        BatchHardTripletLoss,
        BatchSemiHardTripletLoss,
        ContrastiveLoss,
        LiftedStructLoss,
        ProxyNCALoss,
        MultiSimilarityLoss,
        SoftmaxLoss,
    )
}


def get_loss(name, **options):
    """The Keras loss registered under `name` (see the module docstring), built with `options`.

    An unknown name raises ValueError with the closest valid name.
    """
    return loss_class(name)(**options)


def loss_class(name):
    """The Keras loss class registered under `name`; an unknown name raises ValueError with the closest valid name."""
    if name not in LOSSES:
        close = difflib.get_close_matches(str(name), LOSSES, n=1)
        hint = f' Did you mean "{close[0]}"?' if close else ""
        raise ValueError(f"Unknown loss {name!r}. Valid losses: {', '.join(LOSSES)}.{hint}")
    return LOSSES[name]
