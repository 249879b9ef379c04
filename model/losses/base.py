"""The base of every Keras loss of the toolkit, the loss registry, and the options losses share.

    loss = get_loss("batch_hard", margin=0.3)                 # by name, with keyword arguments
    loss, stats = loss.compute(labels, embeddings)            # what training calls: loss and its statistics
    model.compile(optimizer="adam", loss=BatchHardTripletLoss(margin=0.3))

A loss module defines its formula as a plain function of `(labels, embeddings, ...)` and a thin
`EmbeddingLoss` subclass registered with `@register_loss(name, options=...)`: the registration makes it
serializable by Keras, findable by name (`get_loss`, params.json's "loss") and tells the application
edge which params.json keys feed its arguments (`model.registry.Option`).
"""

import math

import keras

from model.losses.inputs import as_float32
from model.losses.masks import triplets_relation
from model.losses.reductions import REDUCTIONS, check_reduction
from model.ops import l2_normalize
from model.registry import (
    BOOL,
    DICT,
    FLOAT,
    INT,
    KERAS_PACKAGE,
    NONE,
    STR,
    Option,
    OptionError,
    Registry,
    is_instance,
)

LOSSES = Registry("loss", key="loss", default="batch_all", meaning="loss name")


def register_loss(name, options=(), rules=()):
    """Class decorator: register an `EmbeddingLoss` subclass under `name` (params.json's "loss"), with the
    params.json `options` that feed its arguments and its `rules`; also Keras-serializable."""
    def add(cls):
        cls.name_in_registry = name
        keras.saving.register_keras_serializable(package=KERAS_PACKAGE)(cls)
        return LOSSES.register(name, options=options, rules=rules)(cls)

    return add


def get_loss(name, **options):
    """The Keras loss registered under `name`, built with `options`; an unknown name raises ValueError with the
    closest valid name."""
    return loss_class(name)(**options)


def loss_class(name):
    """The Keras loss class registered under `name`; an unknown name raises ValueError with the closest valid name."""
    return LOSSES[name].component


def parse_margin(margin, soft_allowed=False):
    """The one reading of a margin: a finite number >= 0, or "soft" where `soft_allowed` (batch-hard's
    softplus); ValueError naming the value otherwise."""
    if margin == "soft" and soft_allowed:
        return margin
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        expected = 'a finite number >= 0 or "soft"' if soft_allowed else "a finite number >= 0"
        raise ValueError(f"margin must be {expected}, got {margin!r}")
    return float(margin)


class ClassWeights(keras.layers.Layer):
    """The base of the learned weights of a loss with classes (proxies, a classifier): it keeps `num_classes`
    and `embedding_size`, which give the weights' shapes, and serializes them; a subclass adds its weights
    with `add_weight` in its constructor (their shapes are known from the arguments alone: no build)."""

    def __init__(self, num_classes, embedding_size, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = int(num_classes)
        self.embedding_size = int(embedding_size)
        self.built = True

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "embedding_size": self.embedding_size}


class ClassKernel(ClassWeights):
    """Class weights in PML's classifier layout: `kernel` [embedding_size, num_classes·K], column c·K + k the k-th
    of class c (K = `columns_per_class`: 1, or the sub-centres of Sub-center ArcFace), N(0, 1) at first (PML's
    `normal_`)."""

    def __init__(self, num_classes, embedding_size, columns_per_class=1, **kwargs):
        super().__init__(num_classes, embedding_size, **kwargs)
        self.kernel = self.add_weight(name="kernel", shape=(self.embedding_size, self.num_classes * columns_per_class),
                                      initializer=keras.initializers.RandomNormal(mean=0.0, stddev=1.0))

    def call(self, inputs=None):
        return self.kernel


class EmbeddingLoss(keras.losses.Loss):
    """Base of the Keras losses on a batch of embeddings: y_true = labels [B] or [B, 1], y_pred = embeddings [B, D].

    Each subclass owns its contract with training, so that training names no loss:
    - `mines_in_batch`: its positives and negatives are other embeddings (of the batch, or references such as
      a cross-batch memory), not learned proxies or class weights;
    - `statistics`: the names of the scalars `compute(labels, embeddings, ref_labels, ref_embeddings,
      relation=...) -> (loss, stats)` returns in `stats`, which training logs (batch-all: `fraction_positive_triplets`);
    - `string_options`: its arguments whose values are strings, with the values allowed, besides `reduction`
      (params.json's `loss_options` checks them);
    - `trained_layers`: {attribute name: layer} of its learned weights (Proxy-NCA's proxies, a softmax head),
      which the training model tracks under these names (they are the names in its checkpoints);
    - `collapse_reason(logs)`: how a collapse of the embeddings shows in what it logs, if it does;
    - `takes_triplets`: its loss function takes a miner's `triplets` itself (the triplet losses); the other
      losses take them as the relation of their pairs (`compute`).
    The loss is a scalar for the whole batch: the batch is the unit of mining, so per-sample weights
    have no meaning here and are rejected, and so has Keras's own `reduction` (there is nothing left to
    reduce; it stays "sum_over_batch_size"). The pair and triplet losses use the argument `reduction`
    for what it means to them: the terms their mean is over, "nonzero" or "all"
    (`model.losses.reductions.REDUCTIONS`), kept in `term_reduction`; each has its own default
    (`default_reduction`), and a loss without the choice (None) refuses the argument.
    """

    name_in_registry = None  # set by `register_loss`
    mines_in_batch = True
    statistics = ()
    string_options = {}
    soft_margin_allowed = False
    default_reduction = None
    takes_triplets = False

    def __init__(self, l2_normalize=False, reduction=None, name=None, dtype=None):
        super().__init__(name=name or self.name_in_registry, reduction="sum_over_batch_size", dtype=dtype)
        self.l2_normalize = bool(l2_normalize)
        if reduction is not None and self.default_reduction is None:
            raise TypeError(f"{type(self).__name__} has no reduction option (its mean is fixed; see its function)")
        self.term_reduction = (
            None if self.default_reduction is None else check_reduction(reduction or self.default_reduction)
        )

    @property
    def trained_layers(self):
        return {}

    def compute(self, labels, embeddings, ref_labels=None, ref_embeddings=None, remove_diagonal=True, relation=None,
                triplets=None):
        """(loss, stats) of anchors `embeddings: [B, D]` against references `ref_embeddings: [R, D]`
        (default: the batch itself; see the loss functions), after this loss's L2 normalisation; a
        `relation: [B, R]` (1 positive, -1 negative, 0 neither) replaces the labels' equality.

        A miner's selection (model/losses/miners.py) is one of these: its `relation` (a pair miner's) or its
        `triplets` = (anchors, positives, negatives), int [T] each. A loss that `takes_triplets` (the triplet
        losses) is computed over exactly those triplets; any other loss over their pairs, each triplet's
        (a, p) a positive and (a, n) a negative (`model.losses.masks.triplets_relation`: PML's
        convert_to_pairs, but a pair in several triplets counts once)."""
        references = {}
        if ref_labels is not None or ref_embeddings is not None or relation is not None or triplets is not None:
            if not self.mines_in_batch:
                raise ValueError(f"{type(self).__name__} compares embeddings with learned proxies, not with "
                                 "references: a cross-batch memory, global references, a relation or mined triplets "
                                 "do not apply to it")
        if relation is not None and triplets is not None:
            raise ValueError("give relation or triplets, not both: a miner's triplets already lie within the relation")
        if ref_labels is not None or ref_embeddings is not None:
            references = dict(ref_labels=ref_labels, ref_embeddings=self._prepare(ref_embeddings),
                              remove_diagonal=remove_diagonal)
        if relation is not None:
            references["relation"] = relation
        if triplets is not None and self.takes_triplets:
            references["triplets"] = triplets
        elif triplets is not None:
            rows = keras.ops.shape(embeddings)[0]
            references["relation"] = triplets_relation(
                triplets, rows, rows if ref_embeddings is None else keras.ops.shape(ref_embeddings)[0])
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


class LossWithClassWeights(EmbeddingLoss):
    """A loss whose learned weights (proxies, class weights, centres) are one `ClassWeights` layer, which the
    subclass builds into `self.weights_layer` after this constructor (its name comes from the loss's); the loss is
    its `loss_function` of the layer's weights and of the `options()`, which are also its config.

    `trained_layers` exposes the layer: the training model (`EmbeddingModel`) tracks it, so the optimizer trains
    the weights, the run's state holds them and a resumed run restores them; they are not part of the saved
    embedding network. With a model of your own, track the layer as an attribute of a subclassed model (see
    `model.losses.ProxyNCALoss`). The loss compares embeddings with the weights, not with other embeddings:
    references (a cross-batch memory) do not apply.
    """

    mines_in_batch = False
    loss_function = None  # staticmethod: f(labels, embeddings, weights, **self.options()) -> scalar loss

    @property
    def trained_layers(self):
        return {"weights_layer": self.weights_layer}

    def options(self):
        """{argument: value} of `loss_function` besides the weights: the loss's options and its layer's."""
        raise NotImplementedError

    def _loss(self, labels, embeddings):
        return self.loss_function(labels, embeddings, self.weights_layer.call(), **self.options()), {}

    def get_config(self):
        layer = self.weights_layer
        return {**super().get_config(), "num_classes": layer.num_classes, "embedding_size": layer.embedding_size,
                **self.options()}


class LossWithMargin(EmbeddingLoss):
    """A loss with a `margin` (see `parse_margin`)."""

    def __init__(self, margin=0.5, **kwargs):
        super().__init__(**kwargs)
        self.margin = parse_margin(margin, self.soft_margin_allowed)

    def get_config(self):
        return {**super().get_config(), "margin": self.margin}


def string_options():
    """{argument: allowed values} of every registered loss's string-valued arguments, by argument name."""
    found = {}
    for entry in LOSSES.entries():
        loss = entry.component
        found.update({"reduction": REDUCTIONS} if loss.default_reduction else {}, **loss.string_options)
    return {name: found[name] for name in sorted(found)}


def _check_margin(value):
    try:
        parse_margin(value, soft_allowed=True)  # which loss may have "soft" is the soft-margin rule's to say
    except ValueError:
        raise OptionError("margin", value, 'a number >= 0 or "soft"') from None


def _check_loss_options(value):
    """Numbers and true/false pass (the loss's keyword arguments); strings only for a loss's string options."""
    allowed = string_options()
    for name, option in value.items():
        if name in allowed:
            if option not in allowed[name]:
                raise OptionError(f"loss_options.{name}", option, f"one of {', '.join(allowed[name])}")
        elif not is_instance(option, (FLOAT, BOOL)):
            raise OptionError(f"loss_options.{name}", option,
                              f"a number or true/false (the loss's keyword argument; strings only for "
                              f"{', '.join(allowed)})")


def _soft_margin_rule(values, chosen):
    if values["margin"] == "soft" and not chosen["loss"].component.soft_margin_allowed:
        soft = " or ".join(f'"{entry.name}"' for entry in LOSSES.entries() if entry.component.soft_margin_allowed)
        return f'margin "soft" is only defined for loss {soft}, not {values["loss"]!r}'
    return None


MARGIN = Option("margin", (INT, FLOAT, STR), 0.5, 'triplet/contrastive margin; "soft" for batch_hard',
                check=_check_margin)
SQUARED = Option("squared", (BOOL,), False, "use squared euclidean distances in triplet losses")
# The options of the loss key itself, whichever loss it names (params.json's "loss_options" goes to every loss).
LOSS_OPTIONS = Option(
    "loss_options", (DICT,), {},
    "extra loss arguments (numbers, true/false, or one of the loss's string options), e.g. "
    '{"alpha": 2.0} for multi_similarity', check=_check_loss_options)
NUM_LABELS = Option("num_labels", (INT, NONE), None,
                    "number of classes of a loss with class weights (proxies, a classifier); null = counted from "
                    "the data",
                    positive=True, argument="num_classes")
RULES = (_soft_margin_rule,)

__all__ = ["LOSSES", "ClassKernel", "ClassWeights", "EmbeddingLoss", "LossWithClassWeights", "LossWithMargin",
           "get_loss", "loss_class", "parse_margin", "register_loss"]
