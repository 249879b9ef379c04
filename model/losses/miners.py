"""Miners: which pairs or triplets of a batch a loss trains on, as pytorch-metric-learning's miners choose them.

    miner = TripletMarginMiner(margin=0.2, type_of_triplets="semihard")
    mined = miner(labels, embeddings)                        # -> Mined(relation=None, triplets=(a, p, n))
    loss, stats = BatchAllTripletLoss(margin=0.2).compute(labels, embeddings, triplets=mined.triplets)
    model = EmbeddingModel(network, loss, miner=miner)       # training: mined on every batch
    "miner": "triplet_margin", "miner_options": {"type_of_triplets": "semihard"}    # params.json

    name                 class                     gives       distance (PML's default)
    multi_similarity     MultiSimilarityMiner      relation    cosine similarity
    pair_margin          PairMarginMiner           relation    euclidean, L2-normalised embeddings
    batch_easy_hard      BatchEasyHardMiner        relation    euclidean, L2-normalised embeddings
    triplet_margin       TripletMarginMiner        triplets    euclidean, L2-normalised embeddings
    distance_weighted    DistanceWeightedMiner     triplets    euclidean, L2-normalised embeddings (required)

A miner is called as `miner(labels, embeddings, ref_labels=None, ref_embeddings=None, *, remove_diagonal=True,
relation=None) -> Mined`, with the anchors and references of the losses (model/losses/masks.py): the
anchors are the rows of `embeddings: [B, D]`, the candidates the rows of `ref_embeddings: [R, D]` (default:
the batch, R = B; pytorch-metric-learning's `ref_emb` is `remove_diagonal=False`), and a `relation` replaces
the labels' equality as it does for the losses. The selection is one of:
  * `Mined.relation`: int32 [B, R], 1 a mined positive pair, -1 a mined negative pair, 0 neither: the
    `relation` every loss takes. PML returns the same pairs as (a1, p, a2, n) index lists;
  * `Mined.triplets`: (anchors, positives, negatives), int32 [T] each, rows of the anchors and of the
    references, in no particular order (PML's (a, p, n) lists, as a set).
`EmbeddingLoss.compute(..., relation=..., triplets=...)` takes either. A triplet loss over triplets is PML's
TripletMarginLoss over them; a triplet loss given a relation forms its triplets among the mined pairs (for
batch_all: every (a, p, n) with p and n mined, which is PML's pair-to-triplet conversion); a loss on pairs
takes the triplets' pairs (PML's convert_to_pairs, each pair once: `model.losses.masks.triplets_relation`).

Each miner selects the pairs or triplets PML 2.x's miner of the same name and arguments selects on the same
batch, ties included: equal distances are settled as PML settles them ("<" or "<=", the first of equal
minima); only a value within float32 rounding of a threshold may fall on the other side. The
distance-weighted miner draws at random: its draws follow PML's distribution, reproducibly with a seed.

Memory: O(B·R) for the distances and masks, as the losses; the triplet-margin miner also holds its T output
triplets (up to B·R² for "all" on a hard batch, as PML's list), never a [B, R, R] tensor. The miners read
values only (no gradient flows through a selection) and run eagerly or inside a tf.function; their outputs
have data-dependent sizes, so not under jax.jit.
"""

import dataclasses
import inspect
import math

import keras
from keras import ops

from model.losses.distances import pairwise_distances
from model.losses.inputs import check_inputs, check_number, static_shape
from model.losses.masks import anchor_negative_mask, anchor_positive_mask, triplets_relation
from model.losses.reductions import masked_maximum, masked_minimum
from model.losses.triplet import _count_below
from model.registry import BOOL, DICT, FLOAT, NONE, STR, Option, OptionError, Registry, is_instance, is_number

MINERS = Registry("miner", key="miner", default=None, meaning="pair or triplet miner")


@dataclasses.dataclass(frozen=True)
class Mined:
    """A miner's selection: `relation` (int32 [B, R], 1 positive, -1 negative, 0 neither) or `triplets`
    ((anchors, positives, negatives), int32 [T] each); the other is None."""

    relation: object = None
    triplets: tuple | None = None

    def arguments(self):
        """The selection as `EmbeddingLoss.compute`'s keyword argument: {"relation": ...} or {"triplets": ...}."""
        return {"relation": self.relation} if self.triplets is None else {"triplets": self.triplets}

    def pairs(self, rows, columns):
        """The mined pairs as a relation [B, R] (`rows` = B, `columns` = R): the relation, or the triplets' pairs."""
        return self.relation if self.triplets is None else triplets_relation(self.triplets, rows, columns)

    def statistics(self):
        """How much was mined (float32 scalars): `mined_triplets`, or `mined_positive_pairs` and
        `mined_negative_pairs`."""
        if self.triplets is not None:
            return {"mined_triplets": ops.cast(ops.shape(self.triplets[0])[0], "float32")}
        relation = self.relation
        return {"mined_positive_pairs": ops.sum(ops.cast(relation > 0, "float32")),
                "mined_negative_pairs": ops.sum(ops.cast(relation < 0, "float32"))}


TRIPLET_STATISTICS = ("mined_triplets",)
PAIR_STATISTICS = ("mined_positive_pairs", "mined_negative_pairs")


def register_miner(name):
    """Class decorator: register a `Miner` subclass under `name` (params.json's "miner")."""
    def add(cls):
        cls.name_in_registry = name
        return MINERS.register(name)(cls)

    return add


def get_miner(name, **options):
    """The miner registered under `name`, built with `options`; an unknown name raises ValueError naming it and
    the valid names."""
    return MINERS[name].component(**options)


def _choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def _range(name, value):
    """None, or (low, high) with low <= high, as floats."""
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"{name} must be None or [low, high], got {value!r}")
    low, high = (check_number(name, bound) for bound in value)
    if low > high:
        raise ValueError(f"{name} must be [low, high] with low <= high, got {value!r}")
    return (low, high)


class Miner:
    """Base of the miners: `miner(labels, embeddings, ref_labels=None, ref_embeddings=None, *,
    remove_diagonal=True, relation=None) -> Mined` (see the module docstring).

    A subclass declares `gives` ("relation" or "triplets"), `supports_jit` (False where XLA cannot compile it),
    `statistics` (what its `Mined` reports),
    `string_options` (its string arguments and their values, for params.json's "miner_options"),
    `check_arguments(**arguments)` (the arguments, checked: ValueError naming the bad one; params.json is
    checked with it before anything is built) and `_mine(labels, embeddings, ref_labels, ref_embeddings,
    remove_diagonal, relation)` on checked float32 inputs without gradient (`ref_embeddings` None: the batch).
    """

    name_in_registry = None  # set by `register_miner`
    gives = "relation"  # or "triplets": what its `Mined` holds
    supports_jit = True  # whether XLA compiles it: its outputs' sizes have a bound known before it runs
    statistics = ()
    string_options = {}

    @classmethod
    def check_arguments(cls, **arguments):
        """The constructor's arguments, checked and normalised; ValueError naming a bad one."""
        return arguments

    @classmethod
    def check_options(cls, options):
        """The problem with params.json's "miner_options" `options` for this miner, or None."""
        try:
            inspect.signature(cls.__init__).bind(None, **options)
            cls.check_arguments(**{**cls.defaults(), **options})
        except (TypeError, ValueError) as error:
            return f'"miner_options" {options} do not fit miner "{cls.name_in_registry}": {error}'
        return None

    @classmethod
    def defaults(cls):
        """{argument: default} of the constructor."""
        parameters = inspect.signature(cls.__init__).parameters.values()
        return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}

    @property
    def tracked_variables(self):
        """{attribute name: variable} of the miner's state, which the training model holds (its checkpoints
        keep them, so a resumed run continues the same stream of random draws)."""
        return {}

    def __call__(self, labels, embeddings, ref_labels=None, ref_embeddings=None, *, remove_diagonal=True,
                 relation=None):
        """The pairs or triplets this miner selects for the anchors among the references.

        Args:
            labels: [B] or [B, 1] integer labels.
            embeddings: [B, D] float embeddings, the anchors (any float dtype; read in float32, no gradient).
            ref_labels, ref_embeddings: [R] and [R, D], the candidates, or None (the batch).
            remove_diagonal: if True, reference i is anchor i itself and never its positive (PML's `ref_emb`:
                False).
            relation: [B, R] int, 1 positive, -1 negative, 0 neither, instead of the labels' equality, or None.

        Returns:
            Mined: its `relation` [B, R] or its `triplets` (anchors, positives, negatives), int32.
        """
        labels, embeddings, ref_labels, ref_embeddings = check_inputs(labels, embeddings, ref_labels, ref_embeddings)
        embeddings = ops.stop_gradient(embeddings)
        ref_embeddings = None if ref_embeddings is None else ops.stop_gradient(ref_embeddings)
        if ref_embeddings is not None and static_shape(ref_embeddings)[0] == 0:  # no reference: nothing to mine
            if self.gives == "triplets":
                return Mined(triplets=tuple(ops.zeros((0,), dtype="int32") for _ in range(3)))
            return Mined(relation=ops.zeros((ops.shape(embeddings)[0], 0), dtype="int32"))
        return self._mine(labels, embeddings, ref_labels, ref_embeddings, remove_diagonal, relation)

    def _mine(self, labels, embeddings, ref_labels, ref_embeddings, remove_diagonal, relation):
        raise NotImplementedError

    def get_config(self):
        """The constructor's arguments."""
        return {name: getattr(self, name) for name in self.defaults()}

    def __repr__(self):
        arguments = ", ".join(f"{name}={value!r}" for name, value in self.get_config().items())
        return f"{type(self).__name__}({arguments})"


def _masks(labels, ref_labels, remove_diagonal, relation):
    """(positive, negative) [B, R] bool, as the losses see them."""
    return (anchor_positive_mask(labels, ref_labels, remove_diagonal, relation),
            anchor_negative_mask(labels, ref_labels, relation))


def _normalize(embeddings):
    """x / max(||x||, 1e-12), as torch.nn.functional.normalize: correctly rounded operations only, so that
    equal rows stay equal (a backend's fast `rsqrt` need not), and equal distances stay ties."""
    return embeddings / ops.maximum(ops.sqrt(ops.sum(ops.square(embeddings), axis=1, keepdims=True)), 1e-12)


def _euclidean(embeddings, ref_embeddings, normalize):
    """[B, R] euclidean distances, of L2-normalised embeddings when `normalize` (PML's LpDistance)."""
    if normalize:
        embeddings = _normalize(embeddings)
        ref_embeddings = None if ref_embeddings is None else _normalize(ref_embeddings)
    return pairwise_distances(embeddings, ref_embeddings=ref_embeddings)


def _relation(positive, negative):
    """int32 [B, R]: 1 where `positive`, -1 where `negative`, else 0."""
    return ops.cast(ops.where(positive, 1, ops.where(negative, -1, 0)), "int32")


@register_miner("multi_similarity")
class MultiSimilarityMiner(Miner):
    """The pair mining of the multi-similarity loss (Wang et al., CVPR 2019), on cosine similarities S.

    For anchor a, a positive p is kept when S_ap - epsilon < max_n S_an (it is less similar than the most
    similar negative, up to epsilon), a negative n when S_an + epsilon > min_p S_ap; an anchor without a
    negative keeps no positive and one without a positive keeps no negative. Gives a relation.
    Equals pytorch-metric-learning 2.x's MultiSimilarityMiner(epsilon) (CosineSimilarity).
    """

    statistics = PAIR_STATISTICS

    def __init__(self, epsilon=0.1):
        (self.epsilon,) = self.check_arguments(epsilon=epsilon).values()

    @classmethod
    def check_arguments(cls, epsilon):
        return {"epsilon": check_number("epsilon", epsilon)}

    def _mine(self, labels, embeddings, ref_labels, ref_embeddings, remove_diagonal, relation):
        positive, negative = _masks(labels, ref_labels, remove_diagonal, relation)
        normalized = _normalize(embeddings)
        ref_normalized = normalized if ref_embeddings is None else _normalize(ref_embeddings)
        similarity = ops.matmul(normalized, ops.transpose(ref_normalized))  # [B, R]: cosine similarities
        hardest_negative = masked_maximum(similarity, negative)[:, None]  # [B, 1]; -1e12 without a negative
        hardest_positive = masked_minimum(similarity, positive)[:, None]  # [B, 1]; 1e12 without a positive
        kept_positive = ops.logical_and(positive, similarity - self.epsilon < hardest_negative)
        kept_negative = ops.logical_and(negative, similarity + self.epsilon > hardest_positive)
        return Mined(relation=_relation(kept_positive, kept_negative))


@register_miner("pair_margin")
class PairMarginMiner(Miner):
    """The pairs that violate a margin: positives farther than `pos_margin`, negatives closer than `neg_margin`.

    d is the euclidean distance of the L2-normalised embeddings (`normalize_embeddings`, PML's LpDistance);
    a positive pair is kept when d > pos_margin, a negative pair when d < neg_margin. Gives a relation.
    Equals pytorch-metric-learning 2.x's PairMarginMiner(pos_margin, neg_margin) (LpDistance()).
    """

    statistics = PAIR_STATISTICS

    def __init__(self, pos_margin=0.2, neg_margin=0.8, normalize_embeddings=True):
        arguments = self.check_arguments(pos_margin=pos_margin, neg_margin=neg_margin,
                                         normalize_embeddings=normalize_embeddings)
        self.pos_margin, self.neg_margin, self.normalize_embeddings = arguments.values()

    @classmethod
    def check_arguments(cls, pos_margin, neg_margin, normalize_embeddings):
        return {"pos_margin": check_number("pos_margin", pos_margin),
                "neg_margin": check_number("neg_margin", neg_margin),
                "normalize_embeddings": bool(normalize_embeddings)}

    def _mine(self, labels, embeddings, ref_labels, ref_embeddings, remove_diagonal, relation):
        positive, negative = _masks(labels, ref_labels, remove_diagonal, relation)
        distances = _euclidean(embeddings, ref_embeddings, self.normalize_embeddings)
        return Mined(relation=_relation(ops.logical_and(positive, distances > self.pos_margin),
                                        ops.logical_and(negative, distances < self.neg_margin)))


TRIPLET_TYPES = ("all", "hard", "semihard", "easy")


@register_miner("triplet_margin")
class TripletMarginMiner(Miner):
    """The triplets (a, p, n) by their margin m_apn = d(a, n) - d(a, p) against `margin`.

    type_of_triplets:
        "all":      m_apn <= margin (the triplets that violate the margin)
        "hard":     m_apn <= margin and m_apn <= 0 (the negative no farther than the positive)
        "semihard": 0 < m_apn <= margin
        "easy":     m_apn > margin (those "all" leaves out)
    over every valid triplet (p a positive and n a negative of a), d the euclidean distance of L2-normalised
    embeddings (`normalize_embeddings`). Gives triplets. Equals pytorch-metric-learning 2.x's
    TripletMarginMiner(margin, type_of_triplets) (LpDistance()); the condition m_apn <= margin is evaluated
    as d(a, n) <= d(a, p) + margin, which can differ from PML's subtraction by one rounding at the boundary.

    Memory O(B·R + T): each anchor's negatives are sorted once, and the negatives of a positive pair (a, p)
    are then a run of consecutive sorted negatives (found by binary search), which is expanded to its
    triplets without any [B, R, R] tensor. XLA cannot compile that expansion (`supports_jit` is False: a
    training model with this miner trains without XLA).
    """

    gives = "triplets"
    # T has no bound below B·R² before the miner runs: XLA, which needs one, would allocate a [B, R, R] buffer.
    supports_jit = False
    statistics = TRIPLET_STATISTICS
    string_options = {"type_of_triplets": TRIPLET_TYPES}

    def __init__(self, margin=0.2, type_of_triplets="all", normalize_embeddings=True):
        arguments = self.check_arguments(margin=margin, type_of_triplets=type_of_triplets,
                                         normalize_embeddings=normalize_embeddings)
        self.margin, self.type_of_triplets, self.normalize_embeddings = arguments.values()

    @classmethod
    def check_arguments(cls, margin, type_of_triplets, normalize_embeddings):
        return {"margin": check_number("margin", margin),
                "type_of_triplets": _choice("type_of_triplets", type_of_triplets, TRIPLET_TYPES),
                "normalize_embeddings": bool(normalize_embeddings)}

    def _mine(self, labels, embeddings, ref_labels, ref_embeddings, remove_diagonal, relation):
        positive, negative = _masks(labels, ref_labels, remove_diagonal, relation)
        distances = _euclidean(embeddings, ref_embeddings, self.normalize_embeddings)  # [B, R]
        keys = ops.where(negative, distances, math.inf)  # non-negatives sort last and are never counted
        order = ops.cast(ops.argsort(keys, axis=1), "int32")  # [B, R]
        sorted_keys = ops.take_along_axis(keys, order, axis=1)

        def at_most(threshold):  # [B, R]: #{negatives n of a: d(a, n) <= threshold[a, p]}
            return _count_below(sorted_keys, threshold, side="right")

        margin = self.margin
        if self.type_of_triplets == "all":  # d_an <= d_ap + margin: a prefix of the sorted negatives
            first, end = ops.zeros_like(order), at_most(distances + margin)
        elif self.type_of_triplets == "hard":  # d_an <= d_ap + min(margin, 0)
            first, end = ops.zeros_like(order), at_most(distances + min(margin, 0.0))
        elif self.type_of_triplets == "semihard":  # d_ap < d_an <= d_ap + margin
            first, end = at_most(distances), at_most(distances + margin)
        else:  # easy: d_an > d_ap + margin, the suffix
            first = at_most(distances + margin)
            end = ops.broadcast_to(ops.sum(ops.cast(negative, "int32"), axis=1, keepdims=True), ops.shape(first))
        counts = ops.where(positive, ops.maximum(end - first, 0), 0)  # [B, R]: negatives of each pair (a, p)
        return Mined(triplets=_expand_runs(counts, first, order))


def _expand_runs(counts, first, order):
    """The triplets of runs of sorted negatives: (a, p, order[a, first[a, p] + i]) for i < counts[a, p].

    counts, first, order: int32 [B, R]. Memory O(B·R + T), T = Σ counts.
    """
    found = ops.nonzero(counts > 0)
    anchors, positives = ops.cast(found[0], "int32"), ops.cast(found[1], "int32")  # [K]: the pairs with triplets
    width = ops.cast(ops.shape(counts)[1], "int32")
    pair_index = anchors * width + positives  # [K]
    pair_counts = ops.take(ops.reshape(counts, (-1,)), pair_index)  # [K]
    pair_first = ops.take(ops.reshape(first, (-1,)), pair_index)  # [K]
    pair = ops.cast(ops.repeat(ops.arange(ops.shape(pair_counts)[0], dtype="int32"), pair_counts), "int32")  # [T]
    starts = ops.cumsum(pair_counts) - pair_counts  # [K]: each pair's first triplet
    rank = ops.take(pair_first, pair) + ops.arange(ops.shape(pair)[0], dtype="int32") - ops.take(starts, pair)
    triplet_anchors = ops.take(anchors, pair)
    negatives = ops.take(ops.reshape(order, (-1,)), triplet_anchors * width + rank)
    return triplet_anchors, ops.take(positives, pair), ops.cast(negatives, "int32")


STRATEGIES = ("easy", "semihard", "hard", "all")


@register_miner("batch_easy_hard")
class BatchEasyHardMiner(Miner):
    """One positive and one negative per anchor, each the easiest, the hardest or the semi-hard one, or all.

    d is the euclidean distance of L2-normalised embeddings (`normalize_embeddings`). For each anchor:
        positive: "easy" the closest positive, "hard" the farthest, "semihard" the farthest closer than the
                  chosen negative (d_ap < d_an), "all" every positive pair;
        negative: "easy" the farthest negative, "hard" the closest, "semihard" the closest farther than the
                  chosen positive (d_an > d_ap), "all" every negative pair;
    candidates outside `allowed_pos_range` / `allowed_neg_range` ([low, high], inclusive) are left out
    ("all" takes every pair, ranges aside). Without "all", an anchor keeps its pair only when it has both
    a positive and a negative; an equal distance picks the first reference. Gives a relation (one triplet
    per anchor for a triplet loss). "semihard" for both, or with "all", is refused.
    Equals pytorch-metric-learning 2.x's BatchEasyHardMiner(pos_strategy, neg_strategy, allowed_pos_range,
    allowed_neg_range) (LpDistance()).
    """

    statistics = PAIR_STATISTICS
    string_options = {"pos_strategy": STRATEGIES, "neg_strategy": STRATEGIES}

    def __init__(self, pos_strategy="easy", neg_strategy="semihard", allowed_pos_range=None, allowed_neg_range=None,
                 normalize_embeddings=True):
        arguments = self.check_arguments(pos_strategy=pos_strategy, neg_strategy=neg_strategy,
                                         allowed_pos_range=allowed_pos_range, allowed_neg_range=allowed_neg_range,
                                         normalize_embeddings=normalize_embeddings)
        (self.pos_strategy, self.neg_strategy, self.allowed_pos_range, self.allowed_neg_range,
         self.normalize_embeddings) = arguments.values()

    @classmethod
    def check_arguments(cls, pos_strategy, neg_strategy, allowed_pos_range, allowed_neg_range, normalize_embeddings):
        pos_strategy = _choice("pos_strategy", pos_strategy, STRATEGIES)
        neg_strategy = _choice("neg_strategy", neg_strategy, STRATEGIES)
        if pos_strategy == neg_strategy == "semihard":
            raise ValueError('pos_strategy and neg_strategy cannot both be "semihard"')
        if {pos_strategy, neg_strategy} == {"semihard", "all"}:
            raise ValueError('"semihard" cannot be used in combination with "all"')
        return {"pos_strategy": pos_strategy, "neg_strategy": neg_strategy,
                "allowed_pos_range": _range("allowed_pos_range", allowed_pos_range),
                "allowed_neg_range": _range("allowed_neg_range", allowed_neg_range),
                "normalize_embeddings": bool(normalize_embeddings)}

    def _mine(self, labels, embeddings, ref_labels, ref_embeddings, remove_diagonal, relation):
        positive, negative = _masks(labels, ref_labels, remove_diagonal, relation)
        distances = _euclidean(embeddings, ref_embeddings, self.normalize_embeddings)  # [B, R]
        pos, neg = self.pos_strategy, self.neg_strategy

        def pick_positive(threshold=None):  # the farthest ("hard", "semihard") or the closest ("easy")
            return _pick(distances, positive, pos != "easy", self.allowed_pos_range, threshold)

        def pick_negative(threshold=None):  # the closest ("hard", "semihard") or the farthest ("easy")
            return _pick(distances, negative, neg == "easy", self.allowed_neg_range, threshold)

        chosen_positive = chosen_negative = None
        if pos == "semihard":  # the negative first, then the farthest positive closer than it
            chosen_negative = pick_negative()
            chosen_positive = pick_positive(chosen_negative[0])
        elif neg == "semihard":  # the positive first, then the closest negative farther than it
            chosen_positive = pick_positive()
            chosen_negative = pick_negative(chosen_positive[0])
        else:
            chosen_positive = None if pos == "all" else pick_positive()
            chosen_negative = None if neg == "all" else pick_negative()
        if chosen_positive is not None and chosen_negative is not None:  # both or nothing, per anchor
            both = ops.logical_and(chosen_positive[2], chosen_negative[2])[:, None]  # [B, 1]
            kept_positive = ops.logical_and(chosen_positive[1], both)
            kept_negative = ops.logical_and(chosen_negative[1], both)
        else:
            kept_positive = positive if chosen_positive is None else chosen_positive[1]
            kept_negative = negative if chosen_negative is None else chosen_negative[1]
        return Mined(relation=_relation(kept_positive, kept_negative))


def _pick(distances, mask, largest, allowed, threshold):
    """Each anchor's largest (or smallest) distance among the `mask` pairs within `allowed` ([low, high] or None)
    and, with a `threshold` [B], strictly below (or above) it; the first such reference on a tie.

    Returns: (distance [B] (-inf or +inf where none), one-hot [B, R] bool of the chosen reference, found [B] bool).
    """
    if allowed is not None:
        mask = ops.logical_and(mask, ops.logical_and(distances >= allowed[0], distances <= allowed[1]))
    if threshold is not None:
        bound = threshold[:, None]
        mask = ops.logical_and(mask, distances < bound if largest else distances > bound)
    filled = ops.where(mask, distances, -math.inf if largest else math.inf)
    value = ops.max(filled, axis=1) if largest else ops.min(filled, axis=1)  # [B]
    # The first column holding it, by a minimum over distinct column numbers: argmin/argmax promise no
    # particular one of equal values (on a GPU).
    width = ops.shape(distances)[1]
    columns = ops.arange(width, dtype="int32")[None, :]  # [1, R]
    at_value = ops.logical_and(mask, ops.equal(filled, value[:, None]))
    first = ops.min(ops.where(at_value, columns, width), axis=1, keepdims=True)  # [B, 1]; R where none
    return value, ops.equal(columns, first), ops.any(mask, axis=1)


@register_miner("distance_weighted")
class DistanceWeightedMiner(Miner):
    """Distance-weighted sampling (Wu, Manmatha, Smola and Krähenbühl, "Sampling Matters in Deep Embedding
    Learning", ICCV 2017): negatives drawn with weights that undo the density of distances on the sphere.

    With d the euclidean distance of the L2-normalised embeddings in dimension D, clipped below at `cutoff`,
    a negative n of anchor a has the weight
        w_an = d^(2 - D) · (1 - d²/4)^((3 - D)/2)   where d < nonzero_loss_cutoff, else 0
    (0 too where it is not finite), i.e. the inverse of the density of distances between uniform points of
    the sphere. Each anchor with a positive and a weighted negative gets k triplets, k the number of
    references that share its label (itself included when it is one of them): each triplet a uniformly
    drawn positive (with replacement) and a negative drawn with probability w_an / Σ_n w_an. Gives triplets.

    Equals pytorch-metric-learning 2.x's DistanceWeightedMiner(cutoff, nonzero_loss_cutoff) in distribution
    (the same triplets per anchor, the same probabilities), not draw for draw: the random streams differ.
    One difference: the weights are scaled by each anchor's largest weight before they are exponentiated
    (PML scales by the largest of the whole batch), so an anchor whose weights all underflow in PML's float32
    (large D) still samples here instead of being left out.

    Reproducible: the draws come from a `keras.random.SeedGenerator(seed)`; the same seed gives the same
    triplets for the same calls. The training model keeps the generator's state in its checkpoints
    (`tracked_variables`), so a resumed run draws what the uninterrupted run would have drawn.
    """

    gives = "triplets"
    statistics = TRIPLET_STATISTICS

    def __init__(self, cutoff=0.5, nonzero_loss_cutoff=1.4, seed=None):
        arguments = self.check_arguments(cutoff=cutoff, nonzero_loss_cutoff=nonzero_loss_cutoff, seed=seed)
        self.cutoff, self.nonzero_loss_cutoff, self.seed = arguments.values()
        self.seed_generator = keras.random.SeedGenerator(self.seed, name="distance_weighted_miner_seed")

    @classmethod
    def check_arguments(cls, cutoff, nonzero_loss_cutoff, seed):
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or seed < 0):
            raise ValueError(f"seed must be None or an integer >= 0, got {seed!r}")
        return {"cutoff": check_number("cutoff", cutoff, positive=True),
                "nonzero_loss_cutoff": check_number("nonzero_loss_cutoff", nonzero_loss_cutoff, positive=True),
                "seed": seed}

    @property
    def tracked_variables(self):
        return {"miner_seed": self.seed_generator.state}

    def weights(self, labels, embeddings, ref_labels=None, ref_embeddings=None, *, relation=None):
        """The sampling probabilities of the negatives: float32 [B, R], each row summing to 1 (0 for an anchor
        without a weighted negative)."""
        labels, embeddings, ref_labels, ref_embeddings = check_inputs(labels, embeddings, ref_labels, ref_embeddings)
        negative = anchor_negative_mask(labels, ref_labels, relation)
        weights = self._weights(embeddings, ref_embeddings, negative)
        return weights / ops.maximum(ops.sum(weights, axis=1, keepdims=True), 1e-30)

    def _weights(self, embeddings, ref_embeddings, negative):
        """Unnormalised weights [B, R] of the negatives (see the class docstring), 0 elsewhere."""
        dimension = ops.cast(ops.shape(embeddings)[1], "float32")  # D, also where only the running graph knows it
        distances = ops.maximum(_euclidean(embeddings, ref_embeddings, True), self.cutoff)  # [B, R]
        log_weights = ((2.0 - dimension) * ops.log(distances)
                       - ((dimension - 3.0) / 2.0) * ops.log(1.0 - 0.25 * ops.square(distances)))
        usable = ops.logical_and(ops.logical_and(negative, ops.isfinite(log_weights)),
                                 distances < self.nonzero_loss_cutoff)
        top = ops.max(ops.where(usable, log_weights, -math.inf), axis=1, keepdims=True)  # [B, 1]
        top = ops.where(ops.isfinite(top), top, 0.0)
        return ops.where(usable, ops.exp(ops.where(usable, log_weights - top, 0.0)), 0.0)

    def _mine(self, labels, embeddings, ref_labels, ref_embeddings, remove_diagonal, relation):
        positive, negative = _masks(labels, ref_labels, remove_diagonal, relation)
        same = anchor_positive_mask(labels, ref_labels, False, relation)  # the anchor itself too, if a reference
        weights = self._weights(embeddings, ref_embeddings, negative)  # [B, R]
        shape = ops.shape(weights)
        width = shape[1]
        columns = ops.arange(width, dtype="int32")[None, :]  # [1, R]
        num_positive = ops.sum(ops.cast(positive, "int32"), axis=1, keepdims=True)  # [B, 1]
        draws = ops.sum(ops.cast(same, "int32"), axis=1, keepdims=True)  # [B, 1]: k, PML's triplets per anchor
        cumulative = ops.cumsum(weights, axis=1)  # [B, R]
        total = cumulative[:, -1:]  # [B, 1]
        eligible = ops.logical_and(num_positive > 0, total > 0)  # [B, 1]
        # Draw j of anchor a (j < k_a <= R): column j of two [B, R] grids of uniform numbers.
        uniform_positive = keras.random.uniform(shape, seed=self.seed_generator)
        uniform_negative = keras.random.uniform(shape, seed=self.seed_generator)
        # The positive: rank floor(u·P) among the anchor's positives, in the order of their columns.
        positive_order = ops.cast(ops.argsort(ops.where(positive, columns, columns + width), axis=1), "int32")
        rank = ops.minimum(ops.cast(uniform_positive * ops.cast(num_positive, "float32"), "int32"),
                           ops.maximum(num_positive - 1, 0))
        positives = ops.take_along_axis(positive_order, rank, axis=1)  # [B, R]
        # The negative: the first column whose cumulative weight exceeds u·Σw (an inverse CDF), which never
        # lands on a zero weight; clipped to the last weighted column against rounding.
        picked = _count_below(cumulative, uniform_negative * total, side="right")  # [B, R]
        last = ops.max(ops.where(weights > 0, columns, 0), axis=1, keepdims=True)  # [B, 1]
        negatives = ops.minimum(picked, last)
        keep = ops.logical_and(eligible, columns < draws)  # [B, R]
        found = ops.nonzero(keep)
        anchors, draw = ops.cast(found[0], "int32"), ops.cast(found[1], "int32")
        index = anchors * ops.cast(width, "int32") + draw
        return Mined(triplets=(anchors, ops.cast(ops.take(ops.reshape(positives, (-1,)), index), "int32"),
                               ops.cast(ops.take(ops.reshape(negatives, (-1,)), index), "int32")))


def _check_miner_options(value):
    """Numbers, true/false, a declared string option's values, [low, high] or null; the chosen miner checks
    the rest (`Miner.check_options`, in the rule)."""
    strings = {}
    for entry in MINERS.entries():
        for name, values in entry.component.string_options.items():
            strings.setdefault(name, set()).update(values)
    for name, option in value.items():
        if name in strings:
            if option not in strings[name]:
                raise OptionError(f"miner_options.{name}", option, f"one of {', '.join(sorted(strings[name]))}")
        elif isinstance(option, list):
            if len(option) != 2 or not all(is_number(bound) for bound in option):
                raise OptionError(f"miner_options.{name}", option, "[low, high], two numbers")
        elif not is_instance(option, (FLOAT, BOOL, NONE)):
            raise OptionError(f"miner_options.{name}", option,
                              "a number, true/false, null, [low, high] or one of the miner's string options")


def _miner_rule(values, chosen):
    """A miner needs a loss on pairs or triplets; its options must fit it."""
    name, options = values["miner"], values["miner_options"]
    if name is None:
        return '"miner_options" is given without "miner": name the miner, or drop "miner_options"' if options else None
    if not chosen["loss"].component.mines_in_batch:
        return (f'miner "{name}" picks pairs or triplets of the batch, but loss "{values["loss"]}" compares embeddings '
                'with learned weights (proxies or classes), not with each other: drop "miner" or choose a pair or '
                "triplet loss")
    return MINERS[name].component.check_options(options)


MINER = Option("miner", (STR, NONE), None,
               "pair or triplet miner whose selection the loss trains on (docs/losses/miners.md); null = none",
               choices=MINERS.names)
MINER_OPTIONS = Option("miner_options", (DICT,), {},
                       'the miner\'s arguments, e.g. {"type_of_triplets": "semihard"} for triplet_margin',
                       check=_check_miner_options)
RULES = (_miner_rule,)

__all__ = ["MINERS", "BatchEasyHardMiner", "DistanceWeightedMiner", "Mined", "Miner", "MultiSimilarityMiner",
           "PairMarginMiner", "TripletMarginMiner", "get_miner", "register_miner"]
