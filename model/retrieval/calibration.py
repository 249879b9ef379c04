"""Verification thresholds: "are these two items of the same class?" answered by a distance threshold.

Two items are declared the same when their distance is at most a threshold t. On labelled
validation embeddings, over pairs (i, j), i < j, with P same-class pairs:
    TP(t) = #{same-class pairs with d <= t},   FP(t) = #{other pairs with d <= t}
    precision(t) = TP / (TP + FP),   recall(t) = TP / P,   F1(t) = 2 precision recall / (precision + recall)
at every distinct pair distance t (the only places where they change): the pairs are sorted once by
distance and TP, FP are cumulative counts at the last pair of each group of equal distances, so the
curve is exact, ties included.

Two thresholds are chosen from the curve (Schroff et al. 2015, "FaceNet", evaluate verification the
same way, by the pairs accepted at a distance threshold):
    at a target precision (0.99 by default): among the thresholds with precision >= target, the one
        with the highest recall (the smallest such threshold when several have it); unreachable when
        no threshold reaches the target, which the result says plainly;
    best F1: the threshold of the highest F1 (the smallest on a tie).

Pairs: all N (N - 1) / 2 pairs when they are at most `max_pairs`. Beyond that a bounded sample,
stratified: up to max_pairs / 2 same-class pairs and as many other pairs, each drawn uniformly with
replacement from its kind, and weighted by (pairs of its kind) / (drawn pairs of its kind), so that
the weighted counts estimate the counts over all pairs without bias, and rare same-class pairs (1 in
~C for C balanced classes) are still measured well. Distances are euclidean or cosine (1 - cos).
"""
import logging

import faiss
import numpy as np

from model.checks import check_labels, prepare_embeddings

logger = logging.getLogger(__name__)

DEFAULT_MAX_PAIRS = 1 << 24  # all pairs up to ~5,800 embeddings; 16.8M pairs ~ 0.5 GiB of working arrays
DEFAULT_TARGET_PRECISION = 0.99


def pair_distances(embeddings_a, embeddings_b, metric="euclidean"):
    """Distances between matching rows: `d(a_i, b_i)`, `[N, D]` and `[N, D]` -> `[N]` float32.

    Euclidean `|a - b|` or cosine `1 - cos(a, b)`, the distances of `model.retrieval.index.knn`.
    """
    a = prepare_embeddings(embeddings_a, "embeddings_a", metric)
    b = prepare_embeddings(embeddings_b, "embeddings_b", metric)
    if a.shape != b.shape:
        raise ValueError(f"embeddings_a {a.shape} and embeddings_b {b.shape}: expected the same shape [N, D]")
    squared = np.einsum("nd,nd->n", a - b, a - b)  # [N]
    return np.sqrt(squared) if metric == "euclidean" else squared / 2  # unit vectors: 1 - cos = |a - b|^2 / 2


def verify(distance, threshold):
    """Same class or not: `distance <= threshold`, elementwise (a bool, or a bool array of its shape).

    Args:
        distance: a distance or an array of distances (finite, >= 0).
        threshold: the threshold of `calibrate` (its "threshold" under "at_target" or "best_f1").
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.number)) \
            or not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold={threshold!r}: expected a finite non-negative number (a calibrated threshold; "
                         "None means the target precision was unreachable)")
    distance = np.asarray(distance, dtype=np.float64)
    if not np.isfinite(distance).all() or (distance < 0).any():
        raise ValueError("distance: expected finite non-negative distances")
    same = distance <= threshold
    return bool(same) if same.ndim == 0 else same


def precision_recall_curve(distances, same, weights=None):
    """Precision, recall and F1 of "same when distance <= t" at every distinct distance t, exact.

    Args:
        distances: `[P]` pair distances.
        same: `[P]` bool, True for same-class pairs.
        weights: `[P]` non-negative pair weights (a sample's), or None for 1 each.

    Returns:
        dict of `[T]` arrays, t ascending: thresholds (the distinct distances), precision, recall, f1,
        true_positives, false_positives (weighted counts of pairs at distance <= t); and the totals
        num_positive, num_negative (weighted).
    """
    distances = np.asarray(distances, dtype=np.float64)
    same = np.asarray(same, dtype=bool)
    if distances.ndim != 1 or same.shape != distances.shape or len(distances) == 0:
        raise ValueError(f"distances {distances.shape} and same {same.shape}: expected two non-empty [P] arrays")
    if not np.isfinite(distances).all():
        raise ValueError("distances: expected finite values")
    weights = np.ones(len(distances)) if weights is None else np.asarray(weights, dtype=np.float64)
    if weights.shape != distances.shape or (weights < 0).any():
        raise ValueError(f"weights: expected [P] = {distances.shape} non-negative weights, got {weights.shape}")
    order = np.argsort(distances, kind="stable")
    distances, same, weights = distances[order], same[order], weights[order]
    last = np.flatnonzero(np.append(distances[1:] != distances[:-1], True))  # the last pair of each distance
    true_positives = np.cumsum(np.where(same, weights, 0.0))[last]  # [T]
    false_positives = np.cumsum(np.where(same, 0.0, weights))[last]  # [T]
    num_positive, num_negative = float(true_positives[-1]), float(false_positives[-1])
    accepted = true_positives + false_positives
    precision = np.divide(true_positives, accepted, out=np.zeros_like(accepted), where=accepted > 0)
    recall = true_positives / num_positive if num_positive > 0 else np.zeros_like(true_positives)
    total = precision + recall
    f1 = np.divide(2 * precision * recall, total, out=np.zeros_like(total), where=total > 0)
    return {"thresholds": distances[last], "precision": precision, "recall": recall, "f1": f1,
            "true_positives": true_positives, "false_positives": false_positives,
            "num_positive": num_positive, "num_negative": num_negative}


def calibrate(embeddings, labels, target_precision=DEFAULT_TARGET_PRECISION, *, metric="euclidean",
              max_pairs=DEFAULT_MAX_PAIRS, seed=0):
    """Verification thresholds from labelled embeddings (the validation split): see the module docstring.

    Args:
        embeddings: `[N, D]`; labels: `[N]` (at least one same-class pair and one other pair).
        target_precision: in (0, 1].
        metric: "euclidean" or "cosine".
        max_pairs: all pairs up to this many, else a weighted stratified sample of this many.
        seed: of the sample.

    Returns:
        JSON-ready dict: metric, target_precision, at_target and best_f1 (each {"threshold",
        "precision", "recall", "f1"}; at_target's threshold is None, with "reason" and the
        "best_precision" reached, when the target is unreachable), num_embeddings, num_pairs
        (of all pairs), num_pairs_used, num_positive_pairs, num_negative_pairs (of all pairs),
        sampled (bool).
    """
    if isinstance(target_precision, bool) or not isinstance(target_precision, (int, float, np.number)) \
            or not 0 < target_precision <= 1:
        raise ValueError(f"target_precision={target_precision!r}: expected a number in (0, 1]")
    if isinstance(max_pairs, bool) or not isinstance(max_pairs, (int, np.integer)) or max_pairs < 2:
        raise ValueError(f"max_pairs={max_pairs!r}: expected an integer >= 2")
    embeddings = prepare_embeddings(embeddings, "embeddings", metric)
    labels = check_labels(labels, len(embeddings), "labels")
    _, label_ids, counts = np.unique(labels, return_inverse=True, return_counts=True)
    label_ids = label_ids.ravel()
    num = len(embeddings)
    num_pairs = num * (num - 1) // 2
    num_positive = int(np.sum(counts * (counts - 1) // 2))
    num_negative = num_pairs - num_positive
    if num_positive == 0 or num_negative == 0:
        raise ValueError(f"calibrate: {num} embeddings of {len(counts)} labels give {num_positive} same-label pairs "
                         f"and {num_negative} other pairs; both kinds are needed")
    sampled = num_pairs > max_pairs
    if sampled:
        first, second, weights = _sample_pairs(label_ids, counts, max_pairs, num_positive, num_negative, seed)
        logger.info("calibrate: %d of %d pairs sampled (%d same-label, %d other), weighted", len(first), num_pairs,
                    int(np.sum(label_ids[first] == label_ids[second])),
                    int(np.sum(label_ids[first] != label_ids[second])))
        distances = pair_distances(embeddings[first], embeddings[second], metric)
        same = label_ids[first] == label_ids[second]
    else:
        distances, same = _all_pair_distances(embeddings, label_ids, metric)
        weights = None
    curve = precision_recall_curve(distances, same, weights)
    return {
        "metric": metric,
        "target_precision": float(target_precision),
        "at_target": _at_target(curve, target_precision),
        "best_f1": _point(curve, int(np.argmax(curve["f1"]))),
        "num_embeddings": num,
        "num_pairs": num_pairs,
        "num_pairs_used": len(distances),
        "num_positive_pairs": num_positive,
        "num_negative_pairs": num_negative,
        "sampled": sampled,
    }


def _point(curve, i):
    return {name: float(curve[key][i]) for name, key in (("threshold", "thresholds"), ("precision", "precision"),
                                                          ("recall", "recall"), ("f1", "f1"))}


def _at_target(curve, target_precision):
    """The threshold of highest recall among those with precision >= target (the smallest on a tie)."""
    reaching = np.flatnonzero(curve["precision"] >= target_precision)
    if len(reaching) == 0:
        best = int(np.argmax(curve["precision"]))
        reason = (f"no threshold reaches precision {target_precision}: the best is {curve['precision'][best]:.4f} "
                  f"at threshold {curve['thresholds'][best]:.6g}")
        logger.warning("calibrate: %s", reason)
        return {"threshold": None, "precision": None, "recall": None, "f1": None, "reason": reason,
                "best_precision": float(curve["precision"][best])}
    recall = curve["recall"][reaching]
    return _point(curve, int(reaching[np.flatnonzero(recall == recall.max())[0]]))


def _all_pair_distances(embeddings, label_ids, metric):
    """Distances and same-label flags of all pairs i < j: `[N (N - 1) / 2]` each, in row order."""
    num = len(embeddings)
    distances, same = [], []
    step = max(1, (1 << 24) // num)  # [C, N] float32 rows of at most 64 MiB
    for start in range(0, num - 1, step):
        stop = min(start + step, num - 1)
        squared = np.maximum(faiss.pairwise_distances(embeddings[start:stop], embeddings[start:]), 0)  # [C, N - s]
        upper = np.arange(start, stop)[:, None] < np.arange(start, num)[None, :]  # j > i
        squared = squared[upper]
        distances.append(np.sqrt(squared) if metric == "euclidean" else squared / 2)
        same.append((label_ids[start:stop, None] == label_ids[None, start:])[upper])
    return np.concatenate(distances), np.concatenate(same)


def _sample_pairs(label_ids, counts, max_pairs, num_positive, num_negative, seed):
    """A stratified sample of pairs (first, second, weights): same-label pairs uniformly (a label with
    probability proportional to its pairs, then two distinct members), other pairs uniformly (two
    distinct items, drawn again while they share a label), each weighted by its kind's pairs / draws."""
    rng = np.random.default_rng(seed)
    num_same = min(max_pairs // 2, num_positive)
    num_other = min(max_pairs - num_same, num_negative)
    members = np.argsort(label_ids, kind="stable")  # items grouped by label
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    pair_counts = counts * (counts - 1) / 2
    label = rng.choice(len(counts), size=num_same, p=pair_counts / pair_counts.sum())
    first_rank = rng.integers(0, counts[label])
    second_rank = (first_rank + rng.integers(1, counts[label])) % counts[label]  # a different member
    same_first, same_second = members[starts[label] + first_rank], members[starts[label] + second_rank]
    other_first, other_second = np.empty(0, np.int64), np.empty(0, np.int64)
    for _ in range(1000):  # rejection of same-label draws; a label holding 99.9% of the pairs would need more
        missing = num_other - len(other_first)
        if missing == 0:
            break
        first = rng.integers(0, len(label_ids), size=2 * missing)
        second = (first + rng.integers(1, len(label_ids), size=2 * missing)) % len(label_ids)  # uniform over j != i
        keep = label_ids[first] != label_ids[second]
        other_first = np.concatenate([other_first, first[keep][:missing]])
        other_second = np.concatenate([other_second, second[keep][:missing]])
    if len(other_first) < num_other:
        raise RuntimeError("calibrate: could not draw enough pairs of different labels (one label dominates)")
    weights = np.concatenate([np.full(num_same, num_positive / num_same), np.full(num_other, num_negative / num_other)])
    return np.concatenate([same_first, other_first]), np.concatenate([same_second, other_second]), weights
