"""The miners (model/losses/miners.py): each selection against a brute-force numpy reference written from
pytorch-metric-learning's definitions (always) and against PML itself (when it is installed), on random
batches and on batches of exactly tied distances; the triplet losses over mined triplets against numpy;
the distance-weighted miner's distribution and reproducibility; training from params.json with a miner; and
the errors.
"""

import functools
import json
import re
from pathlib import Path

import keras
import numpy as np
import pytest
from keras import ops

from model.losses import (
    BatchAllTripletLoss,
    BatchHardTripletLoss,
    BatchSemiHardTripletLoss,
    ContrastiveLoss,
    get_loss,
    triplet_margin_loss,
)
from model.losses.masks import triplets_relation
from model.losses.miners import (
    MINERS,
    BatchEasyHardMiner,
    DistanceWeightedMiner,
    MultiSimilarityMiner,
    PairMarginMiner,
    TripletMarginMiner,
    get_miner,
)
from model.params import Params
from tests.backend_helpers import value_and_gradient
from tests.fixtures import DIGITS

ROOT = Path(__file__).resolve().parent.parent
TENSORFLOW_ONLY = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="training runs on TensorFlow")

# ---------------------------------------------------------------------------------------------------------------
# Batches: random ones, and ones whose distances tie exactly (rows drawn from one-hot and adjacent two-hot
# vectors: euclidean distances 0, 0.765, 1 and √2 only, and cosine similarities 1, 0.707, 0.5 and 0), where
# "<" against "<=" and the first of equal minima decide.

PATTERNS = np.concatenate([np.eye(6), np.eye(6) + np.roll(np.eye(6), 1, axis=1)]).astype("float32")


def _batch(seed, tied, size=20, references=12):
    """One size for all (JAX compiles each operation for each new shape)."""
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 7))
    draw = (lambda n: PATTERNS[rng.integers(0, len(PATTERNS), n)]) if tied else (
        lambda n: rng.normal(size=(n, 6)).astype("float32"))
    labels = rng.integers(0, classes, size)
    labels[0] = classes  # a class of one: an anchor without positive
    return labels, draw(size), rng.integers(0, classes + 1, references), draw(references)


BATCHES = [_batch(seed, tied) for seed in range(2) for tied in (False, True)]


def _cases():
    """(name, anchors' labels, embeddings, reference labels or None, references or None, remove_diagonal)."""
    for index, (labels, embeddings, ref_labels, references) in enumerate(BATCHES):
        yield f"batch{index}", labels, embeddings, None, None, True
        yield f"batch{index}-refs", labels, embeddings, ref_labels, references, False  # PML's ref_emb
        yield f"batch{index}-refs-diagonal", labels, embeddings, labels, embeddings, True  # a memory's layout


CASES = list(_cases())
JAX = keras.backend.backend() == "jax"
if JAX:  # each new selection size compiles: one random batch, and a tied one against references
    CASES = [CASES[0], CASES[4]]
NOT_UNDER_JAX = pytest.mark.skipif(JAX, reason="under JAX, the numpy reference alone checks the miners (each new "
                                                "selection size compiles)")

# ---------------------------------------------------------------------------------------------------------------
# The numpy reference, float64, from PML 2.x's definitions.


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _pairs(labels, embeddings, ref_labels, references, remove_diagonal):
    """positive, negative [B, R] bool; euclidean distances of unit vectors and cosine similarities [B, R]."""
    ref_labels, references = (labels, embeddings) if ref_labels is None else (ref_labels, references)
    same = np.asarray(labels)[:, None] == np.asarray(ref_labels)[None, :]
    positive = same.copy()
    if remove_diagonal:
        np.fill_diagonal(positive, False)
    u, v = _unit(embeddings), _unit(references)
    # Rounded to 1e-9, so that distances equal in exact arithmetic (√2 = |e1 - e2| = |e1 - (e3 + e4)/√2|) are
    # equal here too, as they are in float32; any other difference is far larger.
    distances = np.round(np.linalg.norm(u[:, None, :] - v[None, :, :], axis=2), 9)
    return positive, ~same, distances, np.round(u @ v.T, 9)


def reference_multi_similarity(positive, negative, distances, similarity, epsilon):
    relation = np.zeros(positive.shape, int)
    for a in range(len(positive)):
        negatives, positives = similarity[a][negative[a]], similarity[a][positive[a]]
        for j in range(positive.shape[1]):
            if positive[a, j] and len(negatives) and similarity[a, j] - epsilon < negatives.max():
                relation[a, j] = 1
            if negative[a, j] and len(positives) and similarity[a, j] + epsilon > positives.min():
                relation[a, j] = -1
    return relation


def reference_pair_margin(positive, negative, distances, similarity, pos_margin, neg_margin):
    return np.where(positive & (distances > pos_margin), 1, np.where(negative & (distances < neg_margin), -1, 0))


def reference_triplet_margin(positive, negative, distances, similarity, margin, type_of_triplets):
    """Every valid (a, p, n), by its margin d_an - d_ap ([B, R, R] at once: fine for a test)."""
    valid = positive[:, :, None] & negative[:, None, :]
    triplet_margin = distances[:, None, :] - distances[:, :, None]
    chosen = {"all": triplet_margin <= margin, "hard": (triplet_margin <= margin) & (triplet_margin <= 0),
              "semihard": (triplet_margin <= margin) & (triplet_margin > 0), "easy": triplet_margin > margin}
    return sorted(zip(*(index.tolist() for index in np.nonzero(valid & chosen[type_of_triplets])), strict=True))


def _choose(row, candidates, largest, allowed, threshold):
    """The column of the largest (smallest) row value among candidates within allowed and strictly below
    (above) threshold; the first on a tie; None when there is none."""
    best = None
    for j in np.nonzero(candidates)[0]:
        value = row[j]
        if allowed is not None and not allowed[0] <= value <= allowed[1]:
            continue
        if threshold is not None and not (value < threshold if largest else value > threshold):
            continue
        if best is None or (value > row[best] if largest else value < row[best]):
            best = j
    return best


def _easy_hard_anchor(row, positive, negative, pos_strategy, neg_strategy, allowed_pos_range, allowed_neg_range):
    """One anchor's (positive column or None, negative column or None); "all" gives None."""
    def pick_positive(threshold=None):  # hard and semi-hard: the farthest; easy: the closest
        return _choose(row, positive, pos_strategy != "easy", allowed_pos_range, threshold)

    def pick_negative(threshold=None):  # hard and semi-hard: the closest; easy: the farthest
        return _choose(row, negative, neg_strategy == "easy", allowed_neg_range, threshold)

    if pos_strategy == "semihard":  # the negative first, then a positive closer than it
        n = pick_negative()
        return (None if n is None else pick_positive(row[n])), n
    if neg_strategy == "semihard":  # the positive first, then a negative farther than it
        p = pick_positive()
        return p, (None if p is None else pick_negative(row[p]))
    return (None if pos_strategy == "all" else pick_positive()), (None if neg_strategy == "all" else pick_negative())


def reference_batch_easy_hard(positive, negative, distances, similarity, pos_strategy, neg_strategy,
                              allowed_pos_range, allowed_neg_range):
    relation = np.zeros(positive.shape, int)
    for a, row in enumerate(distances):
        p, n = _easy_hard_anchor(row, positive[a], negative[a], pos_strategy, neg_strategy, allowed_pos_range,
                                 allowed_neg_range)
        if "all" not in (pos_strategy, neg_strategy) and (p is None or n is None):
            continue  # one positive and one negative, or nothing
        if pos_strategy == "all":
            relation[a, positive[a]] = 1
        if neg_strategy == "all":
            relation[a, negative[a]] = -1
        if p is not None:
            relation[a, p] = 1
        if n is not None:
            relation[a, n] = -1
    return relation


def reference_distance_weights(negative, distances, dimension, cutoff, nonzero_loss_cutoff):
    """Sampling probabilities [B, R] of the negatives (rows of zeros where nothing can be drawn)."""
    d = np.maximum(distances, cutoff)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_weights = (2.0 - dimension) * np.log(d) - ((dimension - 3) / 2) * np.log(1.0 - 0.25 * d**2)
    usable = negative & np.isfinite(log_weights) & (d < nonzero_loss_cutoff)
    weights = np.zeros_like(d)
    for a in range(len(d)):
        if usable[a].any():
            weights[a, usable[a]] = np.exp(log_weights[a, usable[a]] - log_weights[a, usable[a]].max())
            weights[a] /= weights[a].sum()
    return weights


# (miner, reference, its arguments): every option value of PML's miners.
def _configurations():
    yield MultiSimilarityMiner, reference_multi_similarity, dict(epsilon=0.1)
    yield MultiSimilarityMiner, reference_multi_similarity, dict(epsilon=0.3)
    yield PairMarginMiner, reference_pair_margin, dict(pos_margin=0.2, neg_margin=0.8)
    yield PairMarginMiner, reference_pair_margin, dict(pos_margin=0.5, neg_margin=1.1)
    for positive in ("easy", "semihard", "hard", "all"):
        for negative in ("easy", "semihard", "hard", "all"):
            if {positive, negative} in ({"semihard"}, {"semihard", "all"}):
                continue  # refused
            yield BatchEasyHardMiner, reference_batch_easy_hard, dict(
                pos_strategy=positive, neg_strategy=negative, allowed_pos_range=None, allowed_neg_range=None)
    for positive, negative in (("easy", "semihard"), ("semihard", "hard"), ("hard", "easy"), ("all", "hard"),
                               ("easy", "all")):
        yield BatchEasyHardMiner, reference_batch_easy_hard, dict(
            pos_strategy=positive, neg_strategy=negative, allowed_pos_range=(0.3, 1.2), allowed_neg_range=(0.5, 1.5))
    for kind in ("all", "hard", "semihard", "easy"):
        for margin in (0.2, 0.5):
            yield TripletMarginMiner, reference_triplet_margin, dict(margin=margin, type_of_triplets=kind)


CONFIGURATIONS = list(_configurations())
if JAX:
    # JAX compiles each operation for each new shape, and a selection's size changes with every batch: seconds
    # per call. Under JAX, one configuration of each miner (TensorFlow and PyTorch check them all).
    CONFIGURATIONS = [c for c in CONFIGURATIONS if c[2] in (
        dict(epsilon=0.1), dict(pos_margin=0.2, neg_margin=0.8), dict(margin=0.2, type_of_triplets="semihard"),
        dict(pos_strategy="all", neg_strategy="hard", allowed_pos_range=(0.3, 1.2), allowed_neg_range=(0.5, 1.5)),
        dict(pos_strategy="easy", neg_strategy="semihard", allowed_pos_range=None, allowed_neg_range=None))]


def _config_id(configuration):
    miner, _, arguments = configuration
    return f"{miner.name_in_registry}-" + "-".join(str(value) for value in arguments.values())


def _selection(mined):
    """A miner's selection as numpy: the relation [B, R], or the sorted list of triplets."""
    if mined.triplets is None:
        return np.asarray(ops.convert_to_numpy(mined.relation))
    columns = [np.asarray(ops.convert_to_numpy(x)).tolist() for x in mined.triplets]
    return sorted(zip(*columns, strict=True))


def _mine(miner, labels, embeddings, ref_labels, references, remove_diagonal):
    if ref_labels is None:
        return miner(labels, embeddings)
    return miner(labels, embeddings, ref_labels, references, remove_diagonal=remove_diagonal)


@functools.cache
def _selected(configuration, case):
    """Configuration number `configuration`'s selection on case number `case`, computed once for both tests."""
    miner_class, _, arguments = CONFIGURATIONS[configuration]
    return _selection(_mine(miner_class(**arguments), *CASES[case][1:]))


CONFIGURATION_NUMBERS = pytest.mark.parametrize(
    "number", range(len(CONFIGURATIONS)), ids=[_config_id(c) for c in CONFIGURATIONS])


@CONFIGURATION_NUMBERS
def test_each_miner_selects_what_the_numpy_reference_selects(number):
    _, reference, arguments = CONFIGURATIONS[number]
    for case, (name, labels, embeddings, ref_labels, references, remove_diagonal) in enumerate(CASES):
        got = _selected(number, case)
        expected = reference(*_pairs(labels, embeddings, ref_labels, references, remove_diagonal), **arguments)
        if isinstance(got, list):
            assert got == expected, name
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)


def _pml_selection(output, rows, columns):
    """PML's (a1, p, a2, n) as a relation [B, R] (its lists hold each pair once), or its (a, p, n) sorted."""
    output = [x.numpy() for x in output]
    if len(output) == 3:
        return sorted(zip(*(x.tolist() for x in output), strict=True))
    relation = np.zeros((rows, columns), int)
    relation[output[0], output[1]] = 1
    relation[output[2], output[3]] = -1
    assert len(set(zip(output[0], output[1], strict=True))) == len(output[0])  # no duplicates to lose
    return relation


@NOT_UNDER_JAX
@CONFIGURATION_NUMBERS
def test_each_miner_selects_what_pytorch_metric_learning_selects(number):
    torch = pytest.importorskip("torch")
    pml_miners = pytest.importorskip("pytorch_metric_learning.miners")
    miner_class, _, arguments = CONFIGURATIONS[number]
    theirs = getattr(pml_miners, miner_class.__name__)(**arguments)
    for case, (name, labels, embeddings, ref_labels, references, remove_diagonal) in enumerate(CASES):
        if ref_labels is not None and remove_diagonal:
            continue  # PML's ref_emb keeps the pair (i, i): remove_diagonal=False
        inputs = [torch.tensor(embeddings), torch.tensor(labels)]
        if ref_labels is not None:
            inputs += [torch.tensor(references), torch.tensor(ref_labels)]
        columns = len(labels) if ref_labels is None else len(ref_labels)
        expected = _pml_selection(theirs(*inputs), len(labels), columns)
        got = _selected(number, case)
        if isinstance(got, list):
            assert got == expected, name
        else:
            np.testing.assert_array_equal(got, expected, err_msg=name)


# ---------------------------------------------------------------------------------------------------------------
# The distance-weighted miner: PML's distribution, reproducible draws.


def _weights_case():
    """Three classes of 4 and a class of one (no triplet for it), in dimension 5."""
    rng = np.random.default_rng(7)
    return np.append(np.repeat(np.arange(3), 4), 9), rng.normal(size=(13, 5)).astype("float32")


def test_distance_weighted_probabilities_equal_the_numpy_reference():
    for name, labels, embeddings, ref_labels, references, remove_diagonal in CASES[:6]:
        for cutoff, nonzero_loss_cutoff in ((0.5, 1.4), (0.2, 1.9)):
            miner = DistanceWeightedMiner(cutoff, nonzero_loss_cutoff, seed=0)
            got = miner.weights(labels, embeddings, ref_labels, references)
            positive, negative, distances, _ = _pairs(labels, embeddings, ref_labels, references, remove_diagonal)
            expected = reference_distance_weights(negative, distances, embeddings.shape[1], cutoff,
                                                  nonzero_loss_cutoff)
            np.testing.assert_allclose(ops.convert_to_numpy(got), expected, rtol=1e-4, atol=1e-6, err_msg=name)


def test_distance_weighted_triplets_are_k_per_anchor_with_valid_positives_and_weighted_negatives():
    labels, embeddings = _weights_case()
    miner = DistanceWeightedMiner(seed=3)
    anchors, positives, negatives = (np.asarray(ops.convert_to_numpy(x)) for x in miner(labels, embeddings).triplets)
    probabilities = np.asarray(ops.convert_to_numpy(miner.weights(labels, embeddings)))
    eligible = [a for a in range(len(labels)) if (labels == labels[a]).sum() > 1 and probabilities[a].sum() > 0]
    # PML's count: as many triplets per anchor as references of its class, itself included.
    assert np.bincount(anchors, minlength=len(labels)).tolist() == [
        (labels == labels[a]).sum() if a in eligible else 0 for a in range(len(labels))]
    assert (labels[positives] == labels[anchors]).all() and (positives != anchors).all()
    assert (probabilities[anchors, negatives] > 0).all()


def test_distance_weighted_draws_follow_the_probabilities():
    labels, embeddings = _weights_case()
    miner = DistanceWeightedMiner(seed=0)
    probabilities = np.asarray(ops.convert_to_numpy(miner.weights(labels, embeddings)))
    counts, positive_counts = np.zeros_like(probabilities), np.zeros_like(probabilities)
    for _ in range(100):
        anchors, positives, negatives = (np.asarray(ops.convert_to_numpy(x))
                                         for x in miner(labels, embeddings).triplets)
        np.add.at(counts, (anchors, negatives), 1)
        np.add.at(positive_counts, (anchors, positives), 1)
    for a in np.nonzero(counts.sum(axis=1))[0]:  # 400 draws per anchor: a total variation below 0.1
        assert 0.5 * np.abs(counts[a] / counts[a].sum() - probabilities[a]).sum() < 0.1, a
        uniform = (labels == labels[a]) & (np.arange(len(labels)) != a)
        frequencies = positive_counts[a] / positive_counts[a].sum()
        assert 0.5 * np.abs(frequencies - uniform / uniform.sum()).sum() < 0.1, a


def test_distance_weighted_miner_is_reproducible_with_a_seed():
    labels, embeddings = _weights_case()

    def draws(seed, calls=2):
        miner = DistanceWeightedMiner(seed=seed)
        return [_selection(miner(labels, embeddings)) for _ in range(calls)]

    first = draws(5)
    assert first == draws(5)  # the same seed: the same triplets, call after call
    assert first[0] != first[1]  # a new draw at each call
    assert first != draws(6)


@NOT_UNDER_JAX
def test_distance_weighted_matches_pytorch_metric_learning_in_distribution(monkeypatch):
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning.miners.distance_weighted_miner")
    captured = {}
    original = pml.lmu.get_random_triplet_indices

    def capture(labels, ref_labels=None, t_per_anchor=None, weights=None):
        captured["weights"] = weights.numpy()
        return original(labels, ref_labels=ref_labels, t_per_anchor=t_per_anchor, weights=weights)

    monkeypatch.setattr(pml.lmu, "get_random_triplet_indices", capture)
    for name, labels, embeddings, ref_labels, references, remove_diagonal in [*CASES[:6], ("case", *_weights_case(),
                                                                                          None, None, True)]:
        if ref_labels is not None and remove_diagonal:
            continue
        inputs = [torch.tensor(embeddings), torch.tensor(labels)]
        if ref_labels is not None:
            inputs += [torch.tensor(references), torch.tensor(ref_labels)]
        theirs = pml.DistanceWeightedMiner()(*inputs)
        ours = DistanceWeightedMiner(seed=0)
        expected = np.nan_to_num(captured["weights"])  # PML's rows without any weight are NaN, and skipped
        got = ops.convert_to_numpy(ours.weights(labels, embeddings, ref_labels, references))
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6, err_msg=name)
        mined = ours(labels, embeddings, ref_labels, references, remove_diagonal=remove_diagonal).triplets
        np.testing.assert_array_equal(  # the same number of triplets for each anchor
            np.bincount(np.asarray(ops.convert_to_numpy(mined[0])), minlength=len(labels)),
            np.bincount(theirs[0].numpy(), minlength=len(labels)), err_msg=name)


# ---------------------------------------------------------------------------------------------------------------
# The losses over a miner's selection.


def _reference_triplet_loss(embeddings, references, triplets, margin, squared, reduction):
    """Σ h(d_ap - d_an) / N over the listed triplets (float64)."""
    a, p, n = (np.asarray(x) for x in triplets)
    e, r = np.asarray(embeddings, np.float64), np.asarray(references, np.float64)
    power = 2 if squared else 1
    difference = (np.linalg.norm(e[a] - r[p], axis=1) ** power) - (np.linalg.norm(e[a] - r[n], axis=1) ** power)
    terms = np.log1p(np.exp(difference)) if margin == "soft" else np.maximum(difference + margin, 0.0)
    count = (terms > 0).sum() if reduction == "nonzero" else len(terms)
    return terms.sum() / max(count, 1)


def _random_triplets(rng, rows, columns, count):
    triplets = [rng.integers(0, size, count) for size in (rows, columns, columns)]
    return tuple(np.concatenate([x, x[:3]]).astype("int32") for x in triplets)  # three listed twice


@pytest.mark.parametrize("margin, squared, reduction", [(0.3, False, "nonzero"), (0.3, True, "all"),
                                                        (2.0, False, "all"), ("soft", False, "all")])
def test_triplet_margin_loss_over_given_triplets_equals_numpy_with_its_gradient(margin, squared, reduction):
    rng = np.random.default_rng(1)
    embeddings, references = rng.normal(size=(6, 3)), rng.normal(size=(9, 3))
    triplets = _random_triplets(rng, 6, 9, 20)
    labels, ref_labels = np.zeros(6, int), np.zeros(9, int)

    def loss(x):
        return triplet_margin_loss(labels, x, triplets, margin, squared, reduction=reduction, ref_labels=ref_labels,
                                   ref_embeddings=references.astype("float32"))

    value, gradient = value_and_gradient(loss, embeddings)
    assert value == pytest.approx(_reference_triplet_loss(embeddings, references, triplets, margin, squared,
                                                          reduction), rel=1e-5)
    step, numeric = 1e-6, np.zeros_like(embeddings)
    for index in np.ndindex(*embeddings.shape):
        shift = np.zeros_like(embeddings)
        shift[index] = step
        numeric[index] = (_reference_triplet_loss(embeddings + shift, references, triplets, margin, squared, reduction)
                          - _reference_triplet_loss(embeddings - shift, references, triplets, margin, squared,
                                                    reduction)) / (2 * step)
    np.testing.assert_allclose(gradient, numeric, rtol=1e-3, atol=1e-4)


def test_the_triplet_losses_over_mined_triplets_are_the_triplet_margin_loss():
    """batch_all, batch_hard and batch_semihard leave the mining to the miner, each with its reduction."""
    labels, embeddings, _, _ = BATCHES[0]
    triplets = TripletMarginMiner(margin=0.5)(labels, embeddings).triplets
    assert len(triplets[0]) > 0
    for loss, reduction in ((BatchAllTripletLoss(margin=0.2), "nonzero"), (BatchHardTripletLoss(margin=0.2), "all"),
                            (BatchSemiHardTripletLoss(margin=0.2, squared=True), "all"),
                            (BatchHardTripletLoss(margin="soft"), "all")):
        value, stats = loss.compute(labels, embeddings, triplets=triplets)
        expected = _reference_triplet_loss(embeddings, embeddings, [ops.convert_to_numpy(x) for x in triplets],
                                           loss.margin, loss.squared, reduction)
        assert float(value) == pytest.approx(expected, rel=1e-5), type(loss).__name__
    _, stats = BatchAllTripletLoss(margin=0.2).compute(labels, embeddings, triplets=triplets)
    assert 0 < float(stats["fraction_positive_triplets"]) <= 1
    empty = tuple(np.zeros(0, "int32") for _ in range(3))
    assert float(BatchAllTripletLoss().compute(labels, embeddings, triplets=empty)[0]) == 0.0


@NOT_UNDER_JAX
@pytest.mark.parametrize("miner_name", ["triplet_margin", "distance_weighted", "multi_similarity", "pair_margin",
                                        "batch_easy_hard"])
def test_batch_all_with_a_miner_is_pmls_triplet_margin_loss_with_it(miner_name):
    """PML's TripletMarginLoss(margin) over a miner's selection (its triplets, or the triplets of its pairs) is
    BatchAllTripletLoss(margin, l2_normalize=True) over the same selection."""
    torch = pytest.importorskip("torch")
    pml = pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning import losses as pml_losses

    labels, embeddings, _, _ = BATCHES[0]
    ours = get_miner(miner_name, **({"seed": 1} if miner_name == "distance_weighted" else {}))
    mined = ours(labels, embeddings)
    if mined.triplets is not None:
        indices = tuple(torch.tensor(np.asarray(ops.convert_to_numpy(x)), dtype=torch.long) for x in mined.triplets)
    else:
        relation = np.asarray(ops.convert_to_numpy(mined.relation))
        indices = tuple(torch.tensor(x) for x in (*np.nonzero(relation == 1), *np.nonzero(relation == -1)))
    assert len(indices[0]) > 0, pml.__version__
    expected = pml_losses.TripletMarginLoss(margin=0.1)(torch.tensor(embeddings), torch.tensor(labels), indices)
    got = BatchAllTripletLoss(margin=0.1, l2_normalize=True).compute(labels, embeddings, **mined.arguments())[0]
    assert float(got) == pytest.approx(float(expected), rel=1e-5, abs=1e-7)


def test_a_pair_loss_takes_the_triplets_pairs_each_once():
    rng = np.random.default_rng(2)
    labels, embeddings = rng.integers(0, 3, 8), rng.normal(size=(8, 4)).astype("float32")
    triplets = _random_triplets(rng, 8, 8, 12)
    relation = np.asarray(ops.convert_to_numpy(triplets_relation(triplets, 8, 8)))
    expected = np.zeros((8, 8), int)  # PML's convert_to_pairs, (a, p) and (a, n) of each triplet, each pair once
    anchors, positives, negatives = triplets
    expected[anchors, negatives] = -1
    expected[anchors, positives] = 1  # a pair listed as both (random triplets may) is a positive
    np.testing.assert_array_equal(relation, expected)
    loss = ContrastiveLoss(margin=1.0)
    by_triplets = loss.compute(labels, embeddings, triplets=triplets)[0]
    assert float(by_triplets) == pytest.approx(float(loss.compute(labels, embeddings, relation=relation)[0]))


def test_batch_all_over_a_pair_miners_relation_is_pmls_pair_to_triplet_conversion():
    """Every (a, p, n) with (a, p) and (a, n) mined: PML's convert_to_triplets of a pair miner's pairs."""
    labels, embeddings, _, _ = BATCHES[1]
    relation = np.asarray(ops.convert_to_numpy(MultiSimilarityMiner(epsilon=0.3)(labels, embeddings).relation))
    a, p, n = np.nonzero((relation[:, :, None] == 1) & (relation[:, None, :] == -1))
    assert len(a) > 0
    value = BatchAllTripletLoss(margin=0.2).compute(labels, embeddings, relation=relation)[0]
    assert float(value) == pytest.approx(_reference_triplet_loss(embeddings, embeddings, (a, p, n), 0.2, False,
                                                                 "nonzero"), rel=1e-5)


def test_relation_and_triplets_together_and_bad_triplets_are_refused():
    labels, embeddings = np.array([0, 0, 1]), np.zeros((3, 2), "float32")
    triplets = (np.array([0]), np.array([1]), np.array([2]))
    with pytest.raises(ValueError, match="relation or triplets, not both"):
        BatchAllTripletLoss().compute(labels, embeddings, relation=np.ones((3, 3)), triplets=triplets)
    with pytest.raises(ValueError, match="relation or triplets, not both"):
        ContrastiveLoss().compute(labels, embeddings, relation=np.ones((3, 3)), triplets=triplets)
    with pytest.raises(ValueError, match="triplets must be"):
        BatchAllTripletLoss().compute(labels, embeddings, triplets=triplets[:2])
    with pytest.raises(ValueError, match=r"negatives must lie in \[0, 3\)"):
        BatchAllTripletLoss().compute(labels, embeddings, triplets=(np.array([0]), np.array([1]), np.array([3])))
    with pytest.raises(ValueError, match="learned proxies"):
        get_loss("proxy_nca", num_classes=2, embedding_size=2).compute(labels, embeddings, triplets=triplets)


# ---------------------------------------------------------------------------------------------------------------
# Names, options and errors.


def test_a_miner_not_in_the_list_is_a_clear_error():
    assert MINERS.names() == ("multi_similarity", "pair_margin", "triplet_margin", "batch_easy_hard",
                              "distance_weighted")
    with pytest.raises(ValueError, match=r"Unknown miner 'triplet_margn'. Valid miners: multi_similarity, .*"
                                         r'Did you mean "triplet_margin"\?'):
        get_miner("triplet_margn")
    with pytest.raises(ValueError, match="type_of_triplets must be one of 'all', 'hard', 'semihard', 'easy', "
                                         "got 'hardest'"):
        TripletMarginMiner(type_of_triplets="hardest")
    with pytest.raises(ValueError, match='cannot both be "semihard"'):
        BatchEasyHardMiner("semihard", "semihard")
    with pytest.raises(ValueError, match='"semihard" cannot be used in combination with "all"'):
        BatchEasyHardMiner("all", "semihard")
    with pytest.raises(ValueError, match="allowed_pos_range must be None or"):
        BatchEasyHardMiner(allowed_pos_range=0.5)
    with pytest.raises(ValueError, match="seed must be None or an integer"):
        DistanceWeightedMiner(seed=1.5)
    assert repr(get_miner("triplet_margin", margin=0.1)) == \
        "TripletMarginMiner(margin=0.1, type_of_triplets='all', normalize_embeddings=True)"


@pytest.mark.parametrize("changes, message", [
    ({"miner": "triplet_margn"}, r'key "miner" has value \'triplet_margn\'; expected one of multi_similarity, '
                                 r'.* \(did you mean "triplet_margin"\?\)'),
    ({"miner": "triplet_margin", "loss": "proxy_nca"},
     'miner "triplet_margin" picks pairs or triplets of the batch, but loss "proxy_nca" compares embeddings with '
     "learned weights"),
    ({"miner_options": {"margin": 0.1}}, '"miner_options" is given without "miner"'),
    ({"miner": "pair_margin", "miner_options": {"margin": 0.1}},
     r'"miner_options" \{\'margin\': 0.1\} do not fit miner "pair_margin": .*margin'),
    ({"miner": "triplet_margin", "miner_options": {"type_of_triplets": "hardest"}},
     'key "miner_options.type_of_triplets" has value \'hardest\''),
    ({"miner": "batch_easy_hard", "miner_options": {"pos_strategy": "semihard", "neg_strategy": "semihard"}},
     'do not fit miner "batch_easy_hard": pos_strategy and neg_strategy cannot both be "semihard"'),
    ({"miner": "batch_easy_hard", "miner_options": {"allowed_pos_range": [1.0]}},
     r'key "miner_options.allowed_pos_range" has value \[1.0\]; expected \[low, high\]'),
])
def test_params_refuse_a_bad_miner_naming_it(changes, message):
    with pytest.raises(ValueError, match=message):
        Params.from_dict({**DIGITS, **changes})


def test_params_accept_every_miner_with_its_options():
    for name, options in (("multi_similarity", {"epsilon": 0.2}), ("pair_margin", {"neg_margin": 1.0}),
                          ("triplet_margin", {"type_of_triplets": "easy"}),
                          ("batch_easy_hard", {"pos_strategy": "hard", "allowed_neg_range": [0.1, 1.0]}),
                          ("distance_weighted", {"cutoff": 0.3, "seed": 4})):
        params = Params.from_dict({**DIGITS, "miner": name, "miner_options": options})
        assert (params.miner, params.miner_options) == (name, options)


@TENSORFLOW_ONLY
def test_training_from_params_json_with_a_miner(tmp_path):
    """digits with the semi-hard triplet-margin miner under batch-all: it learns, and logs what it mined."""
    from model.app.training import train

    params = json.loads((ROOT / "experiments" / "digits" / "params.json").read_text())
    params.update(miner="triplet_margin", miner_options={"type_of_triplets": "semihard"}, num_epochs=1,
                  steps_per_epoch=10)
    path = tmp_path / "params.json"
    path.write_text(json.dumps(params))
    row = train(Params.load(str(path)), str(tmp_path / "run")).rows[-1]
    assert float(row["mined_triplets"]) > 0
    assert float(row["val_precision_at_1"]) > 0.9


@TENSORFLOW_ONLY
def test_the_training_model_trains_on_the_selection_and_keeps_the_miners_random_state(tmp_path):
    import tensorflow as tf

    from model.training import EmbeddingModel

    labels, embeddings, _, _ = BATCHES[0]
    network = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    loss = BatchAllTripletLoss(margin=0.2)
    model = EmbeddingModel(network, loss, miner=TripletMarginMiner(type_of_triplets="semihard"))
    value = model.compute_loss(y=labels, y_pred=embeddings)
    triplets = TripletMarginMiner(type_of_triplets="semihard")(labels, embeddings).triplets
    assert float(value) == pytest.approx(float(loss.compute(labels, embeddings, triplets=triplets)[0]))
    logged = {tracker.name: float(tracker.result()) for tracker in model.statistics}
    assert logged["mined_triplets"] == len(triplets[0])
    with pytest.warns(UserWarning, match="jit_compile"):  # XLA cannot size the triplet-margin miner's output
        model.compile(optimizer="adam", jit_compile=True)
    assert not model.jit_compile

    miner = DistanceWeightedMiner(seed=2)
    model = EmbeddingModel(network, loss, miner=miner)
    checkpoint = tf.train.Checkpoint(model=model)
    saved = checkpoint.write(str(tmp_path / "state"))
    first = _selection(miner(labels, embeddings))
    checkpoint.restore(saved)
    assert _selection(miner(labels, embeddings)) == first  # a resumed run draws the same triplets again
    with pytest.raises(ValueError, match="compares embeddings with learned weights"):
        EmbeddingModel(network, get_loss("proxy_nca", num_classes=3, embedding_size=4), miner=miner)


@TENSORFLOW_ONLY
@pytest.mark.parametrize("miner", [BatchEasyHardMiner(), TripletMarginMiner(type_of_triplets="all"),
                                   DistanceWeightedMiner(seed=0)], ids=lambda miner: miner.name_in_registry)
def test_no_miner_holds_more_than_b_times_r_values_besides_its_triplets(miner):
    """The traced graph of each miner on B = R = 48: no tensor of known size above B·R (a [B, R, R] tensor
    would hold 48 times more); the only tensors of unknown size are the T triplets and the runs behind them."""
    import tensorflow as tf

    size = 48
    graph = tf.function(lambda labels, embeddings: miner(labels, embeddings).arguments()).get_concrete_function(
        tf.TensorSpec([size], tf.int32), tf.TensorSpec([size, 8], tf.float32)).graph
    largest = max(int(np.prod(output.shape.as_list())) for op in graph.get_operations() for output in op.outputs
                  if output.shape.rank is not None and output.shape.is_fully_defined())
    assert largest <= size * size


# ---------------------------------------------------------------------------------------------------------------
# The documentation's snippets run.


@TENSORFLOW_ONLY
def test_the_miners_page_snippets_run(monkeypatch):
    page = (ROOT / "docs" / "losses" / "miners.md").read_text()
    blocks = re.findall(r"(<!-- illustrative -->\n)?```python\n(.*?)```", page, flags=re.S)
    runnable = [code for illustrative, code in blocks if not illustrative]
    assert runnable
    monkeypatch.chdir(ROOT)
    for code in runnable:
        exec(compile(code, "docs/losses/miners.md", "exec"), {"__name__": "snippet"})
