"""Tests of model/retrieval/calibration.py against a brute-force loop over thresholds and scikit-learn."""
import logging

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve as sklearn_precision_recall_curve

from model.retrieval.calibration import calibrate, pair_distances, precision_recall_curve, verify


def brute_curve(distances, same):
    """Precision, recall, F1 at each distinct distance t, one threshold at a time."""
    rows = []
    for threshold in np.unique(distances):
        accepted = distances <= threshold
        true_positives = np.sum(accepted & same)
        precision = true_positives / accepted.sum()
        recall = true_positives / same.sum()
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        rows.append((threshold, precision, recall, f1))
    return np.array(rows)  # [T, 4]


def brute_pairs(embeddings, labels):
    """All pairs i < j in row order: float64 euclidean distances and same-label flags."""
    first, second = np.triu_indices(len(embeddings), k=1)
    distances = np.linalg.norm(embeddings[first].astype(np.float64) - embeddings[second], axis=1)
    return distances, labels[first] == labels[second]


def clustered(num=60, num_classes=4, dim=5, seed=0, integer=False):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num)
    embeddings = rng.normal(size=(num_classes, dim))[labels] * 2 + rng.normal(size=(num, dim))
    if integer:
        embeddings = np.round(embeddings)
    return embeddings.astype(np.float32), labels


@pytest.mark.parametrize("integer", [False, True])
def test_curve_matches_brute_force_and_sklearn(integer):
    embeddings, labels = clustered(integer=integer)
    distances, same = brute_pairs(embeddings, labels)
    curve = precision_recall_curve(distances, same)
    expected = brute_curve(distances, same)
    got = np.stack([curve["thresholds"], curve["precision"], curve["recall"], curve["f1"]], axis=1)
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    if integer:
        assert len(curve["thresholds"]) < len(distances) / 10  # many ties, grouped
    # scikit-learn scores "same" by a higher score: the negated distance; it lists thresholds the other way round
    # and ends with the (precision 1, recall 0) point.
    precision, recall, thresholds = sklearn_precision_recall_curve(same, -distances)
    np.testing.assert_allclose(curve["thresholds"], -thresholds[::-1], rtol=1e-12)
    np.testing.assert_allclose(curve["precision"], precision[:-1][::-1], rtol=1e-12)
    np.testing.assert_allclose(curve["recall"], recall[:-1][::-1], rtol=1e-12)


def test_weighted_curve_equals_repeated_pairs():
    rng = np.random.default_rng(1)
    distances, same = rng.integers(0, 8, 50).astype(float), rng.random(50) < 0.4
    repeats = rng.integers(1, 4, 50)
    weighted = precision_recall_curve(distances, same, weights=repeats)
    repeated = precision_recall_curve(np.repeat(distances, repeats), np.repeat(same, repeats))
    for key in ("thresholds", "precision", "recall", "f1"):
        np.testing.assert_allclose(weighted[key], repeated[key], rtol=1e-12)


def test_calibrate_all_pairs_matches_brute_force():
    embeddings, labels = clustered(num=80, seed=2)
    distances, same = brute_pairs(embeddings, labels)
    expected = brute_curve(distances, same)  # [T, 4]: threshold, precision, recall, f1
    for target in (0.99, 0.9, 0.6):
        result = calibrate(embeddings, labels, target_precision=target)
        reaching = expected[expected[:, 1] >= target]
        best = reaching[reaching[:, 2] == reaching[:, 2].max()][0]  # highest recall, smallest threshold
        at_target = result["at_target"]
        np.testing.assert_allclose([at_target[k] for k in ("threshold", "precision", "recall", "f1")], best,
                                   rtol=1e-5)
        assert at_target["precision"] >= target
    best_f1 = expected[np.argmax(expected[:, 3])]
    np.testing.assert_allclose([result["best_f1"][k] for k in ("threshold", "precision", "recall", "f1")], best_f1,
                               rtol=1e-5)
    assert result["num_pairs"] == result["num_pairs_used"] == 80 * 79 // 2 and not result["sampled"]
    assert result["num_positive_pairs"] == same.sum() and result["num_negative_pairs"] == (~same).sum()


def test_calibrate_cosine_uses_one_minus_cosine():
    embeddings, labels = clustered(num=40, seed=3)
    unit = embeddings / np.linalg.norm(embeddings.astype(np.float64), axis=1, keepdims=True)
    first, second = np.triu_indices(40, k=1)
    distances = 1 - np.sum(unit[first] * unit[second], axis=1)
    expected = brute_curve(distances, labels[first] == labels[second])
    result = calibrate(embeddings, labels, target_precision=0.95, metric="cosine")
    assert result["best_f1"]["f1"] == pytest.approx(expected[:, 3].max(), rel=1e-6)
    assert result["best_f1"]["threshold"] == pytest.approx(expected[np.argmax(expected[:, 3]), 0], abs=1e-6)


def test_unreachable_target_says_so(caplog):
    rng = np.random.default_rng(4)
    embeddings, labels = rng.normal(size=(50, 4)).astype(np.float32), rng.integers(0, 2, 50)  # no structure
    embeddings[1], labels[:2] = embeddings[0], [0, 1]  # the nearest pair is of two labels: precision < 1 everywhere
    distances, same = brute_pairs(embeddings, labels)
    best_precision = brute_curve(distances, same)[:, 1].max()
    with caplog.at_level(logging.WARNING, logger="model.retrieval.calibration"):
        result = calibrate(embeddings, labels, target_precision=1.0)
    assert best_precision < 1.0
    assert result["at_target"]["threshold"] is None
    assert result["at_target"]["best_precision"] == pytest.approx(best_precision)
    assert "no threshold reaches precision 1.0" in result["at_target"]["reason"]
    assert any(record.name == "model.retrieval.calibration" and record.levelno == logging.WARNING
               and "no threshold reaches precision" in record.getMessage() for record in caplog.records)


def test_sampled_pairs_estimate_the_full_curve():
    """Beyond max_pairs a weighted stratified sample: its counts estimate those of all pairs."""
    embeddings, labels = clustered(num=600, num_classes=20, seed=5)
    exact = calibrate(embeddings, labels, target_precision=0.9)
    sampled = calibrate(embeddings, labels, target_precision=0.9, max_pairs=40_000, seed=1)
    assert sampled["sampled"] and sampled["num_pairs_used"] == 40_000 and sampled["num_pairs"] == 600 * 599 // 2
    assert (sampled["num_positive_pairs"], sampled["num_negative_pairs"]) == \
        (exact["num_positive_pairs"], exact["num_negative_pairs"])
    for key in ("threshold", "precision", "recall", "f1"):
        assert sampled["best_f1"][key] == pytest.approx(exact["best_f1"][key], rel=0.05), key
    assert sampled["at_target"]["recall"] == pytest.approx(exact["at_target"]["recall"], abs=0.05)
    again = calibrate(embeddings, labels, target_precision=0.9, max_pairs=40_000, seed=1)
    assert again == sampled  # seeded


def test_verify_and_pair_distances():
    a = np.array([[0, 0], [3, 4], [1, 1]], np.float32)
    b = np.array([[0, 1], [0, 0], [1, 1]], np.float32)
    distances = pair_distances(a, b)
    np.testing.assert_allclose(distances, [1, 5, 0])
    np.testing.assert_array_equal(verify(distances, 1.0), [True, False, True])
    assert verify(0.5, 0.4) is False and verify(0.4, 0.4) is True
    np.testing.assert_allclose(pair_distances([[1, 0]], [[0, 2]], metric="cosine"), [1.0], atol=1e-7)


@pytest.mark.parametrize("call, message", [
    (lambda e, y: calibrate(e, y[:-1]), r"labels: expected shape \(60,\)"),
    (lambda e, y: calibrate(e, np.arange(60)), "0 same-label pairs"),
    (lambda e, y: calibrate(e, np.zeros(60)), "0 other pairs"),
    (lambda e, y: calibrate(e, y, target_precision=0), r"target_precision=0: expected a number in \(0, 1\]"),
    (lambda e, y: calibrate(e, y, target_precision=1.5), r"target_precision=1.5"),
    (lambda e, y: calibrate(e, y, max_pairs=1), r"max_pairs=1: expected an integer >= 2"),
    (lambda e, y: calibrate(e[:, :0], y), r"embeddings: expected non-empty embeddings"),
    (lambda e, y: verify(1.0, None), r"threshold=None: expected a finite non-negative number"),
    (lambda e, y: verify(-1.0, 0.5), r"distance: expected finite non-negative"),
    (lambda e, y: pair_distances(e, e[:3]), r"expected the same shape"),
    (lambda e, y: precision_recall_curve([1.0, 2.0], [True]), r"expected two non-empty \[P\] arrays"),
])
def test_bad_input(call, message):
    embeddings, labels = clustered()
    with pytest.raises(ValueError, match=message):
        call(embeddings, labels)
