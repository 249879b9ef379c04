"""Tests of model/evaluation/metrics.py (and of knn and embed, in model/retrieval/) against brute-force
references written here: full distance matrices in float64, one sorted ranking per query in a plain
Python loop, the pessimistic tie rule spelled out with np.lexsort. Euclidean cases use small-integer
embeddings, whose distances are exact in float32 and float64 alike, so ties are frequent and compared
exactly."""
import re
import tracemalloc
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.data.gps import within_radius
from model.evaluation import ranking
from model.evaluation.metrics import recall_at_n, reid_metrics, reid_metrics_from_distances, retrieval_metrics
from model.retrieval.embed import embed
from model.retrieval.index import knn

NAMES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "market1501"
MARKET_NAME = re.compile(r"^(-?\d+)_c(\d)s\d_\d+_\d+\.jpg(\.jpg)?$")


# ----------------------------------------------------------------------------------------------
# Brute-force references
# ----------------------------------------------------------------------------------------------

def brute_distances(query, reference, metric="euclidean"):
    """[Q, N] float64 distances, one pair at a time in spirit (broadcast, no tricks)."""
    query, reference = np.asarray(query, np.float64), np.asarray(reference, np.float64)
    if metric == "cosine":
        query = query / np.linalg.norm(query, axis=1, keepdims=True)
        reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        return 1.0 - query @ reference.T
    return np.sqrt(((query[:, None, :] - reference[None, :, :]) ** 2).sum(-1))


def brute_query_stats(distances, relevant):
    """Statistics of one query from its full ranking; on equal distance negatives come first."""
    order = np.lexsort((relevant, distances))  # by distance, then False (negative) before True
    hits = relevant[order]
    num_relevant = int(hits.sum())
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return {
        "first_rank": int(np.argmax(hits)) + 1,
        "r_precision": hits[:num_relevant].sum() / num_relevant,
        "map_at_r": (precision[:num_relevant] * hits[:num_relevant]).sum() / num_relevant,
        "average_precision": (precision * hits).sum() / num_relevant,
    }


def brute_retrieval(query, query_labels, reference=None, ref_labels=None, ks=(1, 2, 4, 8),
                    metric="euclidean"):
    leave_one_out = reference is None
    if leave_one_out:
        reference, ref_labels = query, query_labels
    distances = brute_distances(query, reference, metric)
    stats, without = [], 0
    for i in range(len(query)):
        keep = np.ones(len(reference), bool)
        if leave_one_out:
            keep[i] = False
        relevant = ref_labels[keep] == query_labels[i]
        if not relevant.any():
            without += 1
            continue
        stats.append(brute_query_stats(distances[i, keep], relevant))
    first = np.array([s["first_rank"] for s in stats])
    return {
        "precision_at_1": np.mean(first == 1),
        "recall_at_k": {k: np.mean(first <= k) for k in ks},
        "r_precision": np.mean([s["r_precision"] for s in stats]),
        "map_at_r": np.mean([s["map_at_r"] for s in stats]),
        "mean_average_precision": np.mean([s["average_precision"] for s in stats]),
        "num_queries": len(query),
        "num_evaluated": len(stats),
        "num_queries_without_match": without,
        "num_reference": len(reference),
    }


def brute_reid(query, qpids, qcams, gallery, gpids, gcams, max_rank):
    return brute_reid_from_distances(brute_distances(query, gallery), qpids, qcams, gpids, gcams, max_rank)


def brute_reid_from_distances(distances, qpids, qcams, gpids, gcams, max_rank):
    aps, firsts, without = [], [], 0
    for i in range(len(distances)):
        keep = (gpids != -1) & ~((gpids == qpids[i]) & (gcams == qcams[i]))
        relevant = gpids[keep] == qpids[i]
        if not relevant.any():
            without += 1
            continue
        stats = brute_query_stats(distances[i, keep], relevant)
        aps.append(stats["average_precision"])
        firsts.append(stats["first_rank"])
    firsts = np.array(firsts)
    return {
        "mAP": np.mean(aps),
        "cmc": np.array([np.mean(firsts <= rank) for rank in range(1, max_rank + 1)]),
        "num_queries": len(distances),
        "num_evaluated": len(aps),
        "num_queries_without_match": without,
        "num_gallery": len(gpids),
    }


def brute_recall(query, database, query_utm, db_utm, radius, ns):
    distances = brute_distances(query, database)
    found = {n: 0 for n in ns}
    without = 0
    for i in range(len(query)):
        positive = np.array([np.hypot(*(db_utm[j] - query_utm[i])) <= radius for j in range(len(database))])
        if not positive.any():
            without += 1
            continue
        first = brute_query_stats(distances[i], positive)["first_rank"]
        for n in ns:
            found[n] += first <= n
    return {
        "recall_at_n": {n: found[n] / len(query) for n in ns},
        "num_queries": len(query),
        "num_queries_without_positive": without,
        "num_database": len(database),
    }


def assert_same_metrics(got, expected, skip=("nmi",)):
    assert set(got) == set(expected) | set(skip) & set(got)
    for key, value in expected.items():
        if isinstance(value, dict):
            assert got[key].keys() == value.keys()
            np.testing.assert_allclose(list(got[key].values()), list(value.values()), rtol=1e-9, err_msg=key)
        else:
            np.testing.assert_allclose(got[key], value, rtol=1e-9, err_msg=key)


def integer_embeddings(rng, num, dim=4, high=3):
    """Small-integer embeddings: exact distances, many ties."""
    return rng.integers(-high, high + 1, size=(num, dim)).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# knn
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("exclude_self", [False, True])
def test_knn_matches_brute_force(metric, exclude_self):
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(120, 6)).astype(np.float32)
    query = reference if exclude_self else rng.normal(size=(40, 6)).astype(np.float32)
    distances, indices = knn(query, reference, 7, metric=metric, exclude_self=exclude_self)
    full = brute_distances(query, reference, metric)
    if exclude_self:
        np.fill_diagonal(full, np.inf)
    expected = np.argsort(full, axis=1, kind="stable")[:, :7]
    assert distances.shape == indices.shape == (len(query), 7)
    assert distances.dtype == np.float32 and indices.dtype == np.int64
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_allclose(distances, np.take_along_axis(full, expected, 1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_queries", [1, 30])  # faiss searches one query directly, many with BLAS
@pytest.mark.parametrize("k", [1, 5, 150])  # faiss keeps a heap below k = 100 and a reservoir above
def test_knn_ties_go_to_the_lower_index(num_queries, k):
    rng = np.random.default_rng(2)
    reference = integer_embeddings(rng, 400, dim=3, high=1)  # 27 distinct points: ties everywhere
    query = integer_embeddings(rng, num_queries, dim=3, high=1)
    distances, indices = knn(query, reference, k)
    full = brute_distances(query, reference)
    expected = np.argsort(full, axis=1, kind="stable")[:, :k]  # stable: lower index first on ties
    np.testing.assert_array_equal(indices, expected)
    np.testing.assert_array_equal(distances, np.take_along_axis(full, expected, 1).astype(np.float32))


def test_knn_exclude_self_among_exact_duplicates():
    # Five copies of one point: each copy's neighbours are the other copies, in index order.
    reference = np.repeat(np.array([[1.0, 2.0]], np.float32), 5, axis=0)
    reference = np.concatenate([reference, [[5.0, 5.0]]]).astype(np.float32)
    distances, indices = knn(reference, reference, 2, exclude_self=True)
    for i in range(5):
        assert i not in indices[i]
        np.testing.assert_array_equal(indices[i], [j for j in range(5) if j != i][:2])
    np.testing.assert_array_equal(distances[:5], 0.0)
    np.testing.assert_array_equal(indices[5], [0, 1])


def test_knn_k_larger_than_the_reference_is_clipped():
    reference = np.arange(12, dtype=np.float32).reshape(6, 2)
    _, indices = knn(reference[:2], reference, 50)
    assert indices.shape == (2, 6)
    distances, indices = knn(reference, reference, 50, exclude_self=True)
    assert indices.shape == (6, 5)
    np.testing.assert_allclose(distances[0], np.sqrt(8.0) * np.arange(1, 6), rtol=1e-6)


def test_knn_cosine_distance_is_one_minus_cosine():
    query = np.array([[1.0, 0.0]], np.float32)
    reference = np.array([[3.0, 0.0], [0.0, 2.0], [-1.0, 1.0]], np.float32)
    distances, indices = knn(query, reference, 3, metric="cosine")
    np.testing.assert_array_equal(indices, [[0, 1, 2]])
    np.testing.assert_allclose(distances, [[0.0, 1.0, 1.0 + np.sqrt(0.5)]], atol=1e-6)


@pytest.mark.parametrize("kwargs, message", [
    ({"query": [[np.nan, 0.0]]}, "NaN or inf"),
    ({"query": [[0.0, 0.0]], "metric": "cosine"}, "zero vectors"),
    ({"query": [[1.0, 2.0, 3.0]]}, "dimension"),
    ({"query": [1.0, 2.0]}, r"\[N, D\]"),
    ({"k": 0}, "positive integer"),
    ({"metric": "manhattan"}, "expected one of"),
    ({"exclude_self": True}, "the query to be the reference"),
])
def test_knn_rejects_bad_input(kwargs, message):
    arguments = {"query": [[1.0, 2.0]], "reference": [[0.0, 1.0], [2.0, 2.0]], "k": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        knn(**arguments)


# ----------------------------------------------------------------------------------------------
# retrieval_metrics
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("leave_one_out", [True, False])
def test_retrieval_metrics_match_brute_force_with_ties(seed, leave_one_out):
    rng = np.random.default_rng(seed)
    query, query_labels = integer_embeddings(rng, 60), rng.integers(0, 6, 60)
    reference, ref_labels = (None, None) if leave_one_out else (integer_embeddings(rng, 150), rng.integers(0, 6, 150))
    got = retrieval_metrics(query, query_labels, reference, ref_labels, ks=(1, 3, 10))
    expected = brute_retrieval(query, query_labels, reference, ref_labels, ks=(1, 3, 10))
    assert_same_metrics(got, expected)
    assert 0.0 <= got["nmi"] <= 1.0


@pytest.mark.parametrize("leave_one_out", [True, False])
def test_retrieval_metrics_cosine_match_brute_force(leave_one_out):
    rng = np.random.default_rng(5)
    query, query_labels = rng.normal(size=(50, 8)).astype(np.float32), rng.integers(0, 4, 50)
    reference, ref_labels = (None, None) if leave_one_out else (rng.normal(size=(120, 8)), rng.integers(0, 4, 120))
    got = retrieval_metrics(query, query_labels, reference, ref_labels, metric="cosine")
    assert_same_metrics(got, brute_retrieval(query, query_labels, reference, ref_labels, metric="cosine"))


def test_retrieval_metrics_chunks_give_the_same_result():
    rng = np.random.default_rng(3)
    embeddings, labels = integer_embeddings(rng, 60), rng.integers(0, 6, 60)
    whole = retrieval_metrics(embeddings, labels)
    assert retrieval_metrics(embeddings, labels, memory_budget=1) == whole  # one query per chunk
    assert retrieval_metrics(embeddings, labels, memory_budget=10_000) == whole  # a few rows per chunk


@pytest.mark.parametrize("cores", [1, 3, 7])
def test_rows_ranked_in_parallel_blocks_give_the_brute_force_result(monkeypatch, cores):
    # Each chunk's rows are split into one block per core, ranked in threads: uneven blocks, blocks
    # of a single row and more cores than rows must all give the brute-force numbers.
    monkeypatch.setattr(ranking, "_num_cores", lambda: cores)
    rng = np.random.default_rng(4)
    query, query_labels = integer_embeddings(rng, 20), rng.integers(0, 5, 20)
    reference, ref_labels = integer_embeddings(rng, 90), rng.integers(0, 5, 90)
    expected = brute_retrieval(query, query_labels, reference, ref_labels, ks=(1, 5))
    for budget in (1, 40_000, 1 << 30):  # one query per chunk, about 7 (uneven blocks), all
        got = retrieval_metrics(query, query_labels, reference, ref_labels, ks=(1, 5), memory_budget=budget)
        assert_same_metrics(got, expected)


def test_retrieval_ties_are_pessimistic():
    # Query at 0; a negative and a positive both at distance 1, then a positive at distance 2.
    query, query_labels = np.zeros((1, 2), np.float32), np.array([1])
    reference = np.array([[0.0, 1.0], [1.0, 0.0], [2.0, 0.0]], np.float32)
    ref_labels = np.array([0, 1, 1])
    got = retrieval_metrics(query, query_labels, reference, ref_labels, ks=(1, 2))
    # ranking: negative (1), positive (2), positive (3)
    assert got["precision_at_1"] == 0.0 and got["recall_at_k"] == {1: 0.0, 2: 1.0}
    assert got["r_precision"] == 0.5
    assert got["map_at_r"] == pytest.approx((1 / 2) / 2)
    assert got["mean_average_precision"] == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_retrieval_collapsed_embedding_scores_worst():
    # Two classes of two identical points (leave-one-out): the single positive ranks after both negatives.
    got = retrieval_metrics(np.ones((4, 3), np.float32), np.array([0, 0, 1, 1]), ks=(1, 2, 3))
    assert got["precision_at_1"] == 0.0
    assert got["recall_at_k"] == {1: 0.0, 2: 0.0, 3: 1.0}
    assert got["r_precision"] == 0.0 and got["map_at_r"] == 0.0
    assert got["mean_average_precision"] == pytest.approx(1 / 3)


def test_retrieval_queries_without_match_are_excluded_and_counted():
    rng = np.random.default_rng(4)
    reference, ref_labels = integer_embeddings(rng, 80), rng.integers(0, 4, 80)
    query, query_labels = integer_embeddings(rng, 30), rng.integers(0, 6, 30)  # labels 4 and 5: no match
    got = retrieval_metrics(query, query_labels, reference, ref_labels)
    absent = query_labels >= 4
    assert got["num_queries_without_match"] == absent.sum() > 0
    assert got["num_evaluated"] == (~absent).sum()
    matched = retrieval_metrics(query[~absent], query_labels[~absent], reference, ref_labels)
    for key in ("precision_at_1", "recall_at_k", "r_precision", "map_at_r", "mean_average_precision"):
        assert got[key] == matched[key]
    assert_same_metrics(got, brute_retrieval(query, query_labels, reference, ref_labels))


def test_retrieval_leave_one_out_singleton_classes_are_counted():
    embeddings = np.array([[0, 0], [0, 1], [10, 0], [10, 1], [20, 0]], np.float32)
    got = retrieval_metrics(embeddings, np.array([0, 0, 1, 1, 2]))  # class 2 has one item
    assert got["num_queries_without_match"] == 1 and got["num_evaluated"] == 4
    assert got["precision_at_1"] == 1.0


def test_retrieval_k_larger_than_the_reference():
    rng = np.random.default_rng(6)
    embeddings, labels = integer_embeddings(rng, 20), rng.integers(0, 3, 20)
    got = retrieval_metrics(embeddings, labels, ks=(1, 19, 1000))
    assert got["recall_at_k"][19] == got["recall_at_k"][1000] == 1.0  # every item is among 19 others
    assert_same_metrics(got, brute_retrieval(embeddings, labels, ks=(1, 19, 1000)))


def test_retrieval_single_class_is_perfect():
    embeddings = np.random.default_rng(7).normal(size=(30, 5)).astype(np.float32)
    got = retrieval_metrics(embeddings, np.full(30, 3))
    for key in ("precision_at_1", "r_precision", "map_at_r", "mean_average_precision", "nmi"):
        assert got[key] == 1.0, key
    assert set(got["recall_at_k"].values()) == {1.0}


def test_nmi_separated_clusters_and_random_labels():
    rng = np.random.default_rng(8)
    labels = np.repeat(np.arange(5), 40)
    centres = rng.normal(size=(5, 8)) * 100
    embeddings = (centres[labels] + rng.normal(size=(200, 8))).astype(np.float32)
    assert retrieval_metrics(embeddings, labels)["nmi"] == pytest.approx(1.0)
    assert retrieval_metrics(embeddings, rng.permutation(labels))["nmi"] < 0.1


@pytest.mark.parametrize("kwargs, message", [
    ({"query_labels": np.arange(6)}, "none of the 6 queries"),
    ({"ref_emb": np.ones((3, 2))}, "both ref_emb and ref_labels"),
    ({"query_labels": np.zeros(5)}, r"expected shape \(6,\)"),
    ({"ks": (1, 0)}, "positive integer"),
    ({"memory_budget": 0}, "positive integer"),
])
def test_retrieval_rejects_bad_input(kwargs, message):
    arguments = {"query_emb": np.arange(12, dtype=np.float32).reshape(6, 2), "query_labels": np.zeros(6), **kwargs}
    with pytest.raises(ValueError, match=message):
        retrieval_metrics(**arguments)


# ----------------------------------------------------------------------------------------------
# reid_metrics
# ----------------------------------------------------------------------------------------------

def test_reid_hand_computed_market_rules():
    # Query: person 5 seen by camera 1, at the origin.
    query, qpids, qcams = np.zeros((1, 2), np.float32), np.array([5]), np.array([1])
    gallery = np.array([[0.1, 0.0],   # person 5, camera 1: same camera, removed although nearest
                        [0.2, 0.0],   # junk (-1): removed
                        [1.0, 0.0],   # person 7: negative, rank 1
                        [2.0, 0.0],   # distractor (0): negative, rank 2
                        [3.0, 0.0],   # person 5, camera 2: the match, rank 3
                        [4.0, 0.0]],  # person 5, camera 3: match, rank 4
                       np.float32)
    gpids, gcams = np.array([5, -1, 7, 0, 5, 5]), np.array([1, 1, 2, 2, 2, 3])
    got = reid_metrics(query, qpids, qcams, gallery, gpids, gcams, max_rank=5)
    assert got["mAP"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    np.testing.assert_array_equal(got["cmc"], [0, 0, 1, 1, 1])
    assert (got["num_queries"], got["num_evaluated"], got["num_queries_without_match"], got["num_gallery"]) == \
        (1, 1, 0, 6)


def _market_names(split):
    path = NAMES_DIR / f"{split}.names"
    if not path.is_file():
        pytest.skip(f"the Market-1501 name lists are not in {NAMES_DIR}")
    matches = [MARKET_NAME.match(name) for name in path.read_text().split()]
    assert all(matches), "a Market-1501 name does not follow PPPP_cCsS_FFFFFF_BB.jpg"
    return np.array([int(m[1]) for m in matches]), np.array([int(m[2]) for m in matches])


def market_case():
    """~50 real queries and ~500 real gallery names with pid-clustered random embeddings.

    Same-camera images of the query's person and some junk images are placed right next to the
    queries, so results change if either is not removed; the first query keeps only same-camera
    images of its person, so it has no valid match.
    """
    rng = np.random.default_rng(0)
    query_pids, query_cams = _market_names("query")
    gallery_pids, gallery_cams = _market_names("test")
    chosen = rng.choice(len(query_pids), 50, replace=False)
    qpids, qcams = query_pids[chosen], query_cams[chosen]
    own = np.flatnonzero(np.isin(gallery_pids, qpids))
    own = own[~((gallery_pids[own] == qpids[0]) & (gallery_cams[own] != qcams[0]))]
    picked = np.concatenate([rng.choice(own, min(len(own), 300), replace=False),
                             rng.choice(np.flatnonzero(gallery_pids == -1), 100, replace=False),
                             rng.choice(np.flatnonzero(gallery_pids == 0), 100, replace=False)])
    gpids, gcams = gallery_pids[picked], gallery_cams[picked]
    centres = rng.normal(size=(gallery_pids.max() + 1, 16))
    query = centres[qpids] + rng.normal(size=(50, 16))
    gallery = centres[np.maximum(gpids, 0)] + 1.5 * rng.normal(size=(len(picked), 16))
    for i in range(50):
        near = np.flatnonzero(((gpids == qpids[i]) & (gcams == qcams[i])) | (gpids == -1))
        near = near[rng.random(len(near)) < 0.3]
        gallery[near] = query[i] + 0.01 * rng.normal(size=(len(near), 16))
    return query.astype(np.float32), qpids, qcams, gallery.astype(np.float32), gpids, gcams


def test_reid_market_rules_on_real_names():
    query, qpids, qcams, gallery, gpids, gcams = market_case()
    # The case exercises every rule: junk, distractors, same-camera images, a query without match.
    assert (gpids == -1).any() and (gpids == 0).any()
    assert ((gpids == qpids[0]) & (gcams == qcams[0])).any()
    assert not ((gpids == qpids[0]) & (gcams != qcams[0])).any()
    expected = brute_reid(query, qpids, qcams, gallery, gpids, gcams, max_rank=20)
    assert expected["num_queries_without_match"] >= 1
    for budget in (1, 10_000, 1 << 30):  # one query per chunk, a few, all
        got = reid_metrics(query, qpids, qcams, gallery, gpids, gcams, max_rank=20, memory_budget=budget)
        assert_same_metrics(got, expected)


def reid_case(seed=0, num_query=12, num_gallery=80):
    """Synthetic re-ID data with every rule at work: junk (-1), distractors (0), same-camera images."""
    rng = np.random.default_rng(seed)
    qpids, qcams = rng.integers(1, 6, num_query), rng.integers(1, 4, num_query)
    gpids, gcams = rng.integers(-1, 6, num_gallery), rng.integers(1, 4, num_gallery)
    centres = rng.normal(size=(7, 8)) * 1.5
    query = centres[qpids] + rng.normal(size=(num_query, 8))
    gallery = centres[gpids + 1] + rng.normal(size=(num_gallery, 8))
    return query.astype(np.float32), qpids, qcams, gallery.astype(np.float32), gpids, gcams


@pytest.mark.parametrize("seed", [0, 1])
def test_reid_metrics_from_distances_match_brute_force(seed):
    query, qpids, qcams, gallery, gpids, gcams = reid_case(seed)
    distances = brute_distances(query, gallery)
    expected = brute_reid_from_distances(distances, qpids, qcams, gpids, gcams, max_rank=10)
    for budget in (1, 1 << 30):
        got = reid_metrics_from_distances(distances, qpids, qcams, gpids, gcams, max_rank=10, memory_budget=budget)
        assert_same_metrics(got, expected)
    # The distances, not their embeddings, decide: reversing them reverses the ranking.
    reversed_expected = brute_reid_from_distances(-distances, qpids, qcams, gpids, gcams, max_rank=10)
    assert_same_metrics(reid_metrics_from_distances(-distances, qpids, qcams, gpids, gcams, max_rank=10),
                        reversed_expected)


@pytest.mark.parametrize("call, message", [
    (lambda d, ids: reid_metrics_from_distances(d[0], *ids), r"distances: expected a non-empty finite \[Q, N\]"),
    (lambda d, ids: reid_metrics_from_distances(d * np.nan, *ids), r"distances: expected a non-empty finite"),
    (lambda d, ids: reid_metrics_from_distances(d[:, 1:], *ids), r"gallery_pids: expected shape \(79,\)"),
    (lambda d, ids: reid_metrics_from_distances(d, *ids, max_rank=0), r"max_rank=0: expected a positive integer"),
])
def test_reid_metrics_from_distances_rejects_bad_input(call, message):
    query, qpids, qcams, gallery, gpids, gcams = reid_case()
    with pytest.raises(ValueError, match=message):
        call(brute_distances(query, gallery), (qpids, qcams, gpids, gcams))


@pytest.mark.parametrize("rerank", [{"k3": 1}, True, {"k1": 0}])
def test_reid_metrics_rejects_bad_rerank_options(rerank):
    query, qpids, qcams, gallery, gpids, gcams = reid_case()
    with pytest.raises(ValueError, match="rerank=|k1=0"):
        reid_metrics(query, qpids, qcams, gallery, gpids, gcams, rerank=rerank)


def test_reid_without_any_valid_match_is_an_error():
    gallery = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match="valid match"):
        reid_metrics(np.ones((1, 2)), [3], [1], gallery, [3, -1], [1, 2])


# ----------------------------------------------------------------------------------------------
# recall_at_n
# ----------------------------------------------------------------------------------------------

def test_recall_at_n_matches_brute_force():
    rng = np.random.default_rng(9)
    database, db_utm = integer_embeddings(rng, 200), rng.uniform(0, 300, size=(200, 2))
    query, query_utm = integer_embeddings(rng, 40), rng.uniform(0, 300, size=(40, 2))
    query_utm[:5] += 10_000  # far from everything: no positive, a miss at every N
    expected = brute_recall(query, database, query_utm, db_utm, 25.0, (1, 5, 10, 20))
    assert expected["num_queries_without_positive"] >= 5
    for budget in (1, 1 << 30):
        got = recall_at_n(query, database, query_utm, db_utm, memory_budget=budget)
        assert_same_metrics(got, expected, skip=())


def test_recall_at_n_counts_queries_without_positive_as_misses():
    query, database = np.zeros((2, 2), np.float32), np.array([[1.0, 0.0], [2.0, 0.0]], np.float32)
    # At UTM scale the 24.9 m item is a positive and the 25.1 m one is not (float32, with its 0.5 m
    # steps at 5e6 m, would round 25.1 m north to 25 m).
    base = np.array([500_000.0, 5_000_000.0])
    query_utm = np.array([base, base + [0.0, 1000.0]])
    db_utm = np.array([base + [0.0, 25.1], base + [24.9, 0.0]])
    got = recall_at_n(query, database, query_utm, db_utm, radius=25.0, ns=(1, 2))
    assert got["recall_at_n"] == {1: 0.0, 2: 0.5}
    assert got["num_queries_without_positive"] == 1


# ----------------------------------------------------------------------------------------------
# Memory
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("protocol", ["retrieval", "reid", "recall"])
def test_working_memory_stays_within_the_budget(protocol):
    rng = np.random.default_rng(10)
    num_queries, num_reference, budget = 100, 12_000, 1 << 20
    query = rng.normal(size=(num_queries, 8)).astype(np.float32)
    reference = rng.normal(size=(num_reference, 8)).astype(np.float32)
    ids, ref_ids = rng.integers(0, 50, num_queries), rng.integers(-1, 50, num_reference)
    cams, ref_cams = rng.integers(1, 7, num_queries), rng.integers(1, 7, num_reference)
    utm, ref_utm = rng.uniform(0, 500, (num_queries, 2)), rng.uniform(0, 500, (num_reference, 2))
    run = {"retrieval": lambda: retrieval_metrics(query, ids, reference, ref_ids, memory_budget=budget),
           "reid": lambda: reid_metrics(query, ids, cams, reference, ref_ids, ref_cams, memory_budget=budget),
           "recall": lambda: recall_at_n(query, reference, utm, ref_utm, memory_budget=budget)}[protocol]
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        run()
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    assert num_queries * num_reference * 4 > 4 * budget  # the float32 distances alone would not fit
    assert peak <= budget


# ----------------------------------------------------------------------------------------------
# embed
# ----------------------------------------------------------------------------------------------

def _model():
    return keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])


def test_embed_matches_the_model_and_keeps_labels():
    model = _model()
    images = np.random.default_rng(11).normal(size=(10, 4)).astype(np.float32)
    paths = np.array([f"img_{i}.jpg".encode() for i in range(10)])
    dataset = tf.data.Dataset.from_tensor_slices((images, paths)).batch(4)  # last batch of 2
    embeddings, labels = embed(model, dataset)
    assert embeddings.dtype == np.float32 and embeddings.shape == (10, 3)
    np.testing.assert_allclose(embeddings, keras.ops.convert_to_numpy(model(images)), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(labels, paths)
    unknown = dataset.unbatch().filter(lambda x, y: True).batch(3)  # cardinality unknown
    np.testing.assert_allclose(embed(model, unknown)[0], embeddings, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("transform, message", [
    (lambda d: d.repeat(), "repeats forever"),
    (lambda d: d.take(0), "empty"),
    (lambda d: d.map(lambda x, y: x), r"\(images, labels\) pairs"),
])
def test_embed_rejects_bad_datasets(transform, message):
    dataset = tf.data.Dataset.from_tensor_slices((np.zeros((4, 4), np.float32), np.arange(4))).batch(2)
    with pytest.raises(ValueError, match=message):
        embed(_model(), transform(dataset))


def test_knn_leaves_out_the_queries_own_rows():
    points = np.random.default_rng(1).normal(size=(30, 4)).astype(np.float32)
    points[5] = points[6]  # a duplicate: its twin at distance 0 must stay, itself must go
    rows = np.array([0, 5, 6, 29])
    distances, indices = knn(points[rows], points, 3, query_rows=rows)
    for query, (row, found) in enumerate(zip(rows, indices, strict=True)):
        brute = np.linalg.norm(points - points[row], axis=1)
        brute[row] = np.inf
        np.testing.assert_allclose(distances[query], np.sort(brute)[:3], atol=1e-5)
        assert row not in found
    assert indices[1, 0] == 6 and indices[2, 0] == 5
    with pytest.raises(ValueError, match="query_rows must hold one row"):
        knn(points[rows], points, 3, query_rows=rows[:2])


def test_within_radius_is_the_euclidean_rule_in_float64():
    rng = np.random.default_rng(3)
    a = 5e5 + rng.uniform(0, 60, size=(7, 2))  # UTM-sized coordinates
    b = 5e5 + rng.uniform(0, 60, size=(11, 2))
    got = within_radius(a[:, None], b[None], 25.0)
    brute = np.array([[np.hypot(*(p - q)) <= 25.0 for q in b] for p in a])
    np.testing.assert_array_equal(got, brute)
    assert within_radius(np.array([1e6, 0.0]), np.array([1e6 + 25.0, 0.0]), 25.0)  # the boundary is in
