"""Tests of model/evaluation/rerank.py against a brute-force transcription of the re-ranking steps written here.

`brute_rerank` follows Zhong et al. 2017 and the authors' reference code step by step on dense
float64 matrices: the assembled (Q + G)² matrix, its argsort, the k-reciprocal sets with the
1/2-k1 expansion, V, the query expansion and the Jaccard distance as explicit loops. Its argsort is
stable, the library's tie rule. Integer-valued distances give exact ties, compared exactly.
"""
import tracemalloc

import numpy as np
import pytest

from benchmarks.direct_rerank import direct_rerank
from model.evaluation.metrics import reid_metrics
from model.evaluation.rerank import k_reciprocal_rerank, k_reciprocal_rerank_embeddings
from tests.test_metrics import assert_same_metrics, brute_reid_from_distances, reid_case


def brute_rerank(query_gallery, query_query, gallery_gallery, k1=20, k2=6, lambda_value=0.3):
    """The reference's steps on dense float64 arrays, one item at a time."""
    num_query = len(query_query)
    assembled = np.block([[query_query, query_gallery], [query_gallery.T, gallery_gallery]]).astype(np.float64)
    original = assembled**2
    column_max = original.max(axis=0)
    original = (original / np.where(column_max > 0, column_max, 1)).T  # 0, not the reference's 0 / 0, for all-zero
    num_items = len(original)
    ranking = np.argsort(original, axis=1, kind="stable")

    def reciprocal(i, k):
        return [j for j in ranking[i, :k + 1] if i in ranking[j, :k + 1]]

    encoding = np.zeros((num_items, num_items))
    half = int(np.around(k1 / 2))
    for i in range(num_items):
        neighbours = reciprocal(i, k1)
        expanded = set(neighbours)
        for candidate in neighbours:
            candidate_set = reciprocal(candidate, half)
            if len(set(candidate_set) & set(neighbours)) > 2 / 3 * len(candidate_set):
                expanded |= set(candidate_set)
        members = sorted(expanded)
        weights = np.exp(-original[i, members])
        encoding[i, members] = weights / weights.sum()
    if k2 != 1:
        encoding = np.stack([encoding[ranking[i, :k2]].mean(axis=0) for i in range(num_items)])
    jaccard = np.zeros((num_query, num_items))
    for i in range(num_query):
        for j in range(num_items):
            shared = np.minimum(encoding[i], encoding[j]).sum()
            jaccard[i, j] = 1 - shared / (2 - shared)
    final = jaccard * (1 - lambda_value) + original[:num_query] * lambda_value
    return final[:, num_query:]


def euclidean(a, b):
    return np.sqrt(((a[:, None, :].astype(np.float64) - b[None, :, :]) ** 2).sum(-1))


def embedding_matrices(num_query, num_gallery, dim=6, seed=0, integer=False):
    """(query, gallery) embeddings of a few clusters, and their (qg, qq, gg) euclidean distances float32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, dim)) * 3
    points = centres[rng.integers(0, 4, num_query + num_gallery)] + rng.normal(size=(num_query + num_gallery, dim))
    if integer:
        points = np.round(points)
    points = points.astype(np.float32)
    query, gallery = points[:num_query], points[num_query:]
    matrices = [euclidean(a, b).astype(np.float32) for a, b in ((query, gallery), (query, query), (gallery, gallery))]
    return query, gallery, matrices


@pytest.mark.parametrize("num_query, num_gallery, k1, k2, lambda_value", [
    (5, 30, 20, 6, 0.3),   # the paper's parameters; k1 + 1 > N - 1 for some items' halves
    (12, 40, 5, 3, 0.3),   # odd k1: round(2.5) = 2
    (8, 50, 7, 1, 0.5),    # k2 = 1: no query expansion
    (1, 25, 4, 2, 0.0),    # a single query, pure Jaccard distance
    (6, 20, 30, 40, 1.0),  # k1 and k2 larger than the set; original distance only
])
def test_matches_brute_force(num_query, num_gallery, k1, k2, lambda_value):
    _, _, matrices = embedding_matrices(num_query, num_gallery, seed=num_query)
    expected = brute_rerank(*matrices, k1=k1, k2=k2, lambda_value=lambda_value)
    result = k_reciprocal_rerank(*matrices, k1=k1, k2=k2, lambda_value=lambda_value)
    assert result.shape == (num_query, num_gallery) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, atol=2e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ties_and_duplicates_exact(seed):
    """Small integer distances: many exact ties, and duplicated items (distance 0 between them)."""
    rng = np.random.default_rng(seed)
    num_query, num_gallery = 7, 33
    levels = rng.integers(0, 4, size=(num_query + num_gallery,) * 2)
    assembled = np.minimum(levels, levels.T).astype(np.float32)  # symmetric, ties everywhere
    np.fill_diagonal(assembled, 0)
    assembled[:, 12] = assembled[:, 3]  # item 12 duplicates item 3 (a query)
    assembled[12, :] = assembled[3, :]
    assembled[3, 12] = assembled[12, 3] = 0
    matrices = assembled[:num_query, num_query:], assembled[:num_query, :num_query], assembled[num_query:, num_query:]
    for k1, k2 in ((6, 3), (3, 4)):
        expected = brute_rerank(*matrices, k1=k1, k2=k2)
        np.testing.assert_allclose(k_reciprocal_rerank(*matrices, k1=k1, k2=k2), expected, atol=1e-6)


def test_non_symmetric_inputs_follow_the_reference_columns():
    """The reference normalises the columns of the assembled matrix and transposes: kept as is."""
    rng = np.random.default_rng(3)
    matrices = [rng.uniform(0.1, 5, size=shape).astype(np.float32) for shape in ((6, 25), (6, 6), (25, 25))]
    np.testing.assert_allclose(k_reciprocal_rerank(*matrices, k1=5, k2=3), brute_rerank(*matrices, k1=5, k2=3),
                               atol=2e-6)


def test_small_memory_budget_gives_the_same_result():
    """Tiny chunks (one row of distances, a few Jaccard contributions) change nothing."""
    _, _, matrices = embedding_matrices(9, 45, seed=5)
    expected = k_reciprocal_rerank(*matrices, k1=6, k2=3)
    np.testing.assert_array_equal(k_reciprocal_rerank(*matrices, k1=6, k2=3, memory_budget=1), expected)


def test_all_zero_distances_give_zero_original_distance():
    """Every item equal: the reference divides 0 by 0 (NaN everywhere); here the original distance stays 0
    and the Jaccard distance follows the neighbourhoods ordered by index."""
    matrices = [np.zeros(shape, np.float32) for shape in ((3, 8), (3, 3), (8, 8))]
    result = k_reciprocal_rerank(*matrices, k1=4, k2=2)
    assert np.isfinite(result).all()
    np.testing.assert_allclose(result, brute_rerank(*matrices, k1=4, k2=2), atol=1e-6)


def test_float64_and_integer_inputs():
    _, _, matrices = embedding_matrices(4, 20, seed=7, integer=True)
    expected = k_reciprocal_rerank(*matrices, k1=5, k2=2)
    np.testing.assert_allclose(k_reciprocal_rerank(*[m.astype(np.float64) for m in matrices], k1=5, k2=2), expected,
                               atol=1e-7)
    squared_integers = [np.round(m**2).astype(np.int64) for m in matrices]  # integer-valued distances
    np.testing.assert_allclose(k_reciprocal_rerank(*squared_integers, k1=5, k2=2),
                               brute_rerank(*squared_integers, k1=5, k2=2), atol=1e-6)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_embeddings_version_equals_the_matrix_version(metric):
    query, gallery, matrices = embedding_matrices(10, 60, seed=11)
    if metric == "cosine":
        unit = [x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True) for x in (query, gallery)]
        matrices = [(1 - a @ b.T).astype(np.float32) for a, b in ((unit[0], unit[1]), (unit[0], unit[0]),
                                                                  (unit[1], unit[1]))]
        for matrix in matrices[1:]:
            np.fill_diagonal(matrix, 0)
        matrices = [np.maximum(matrix, 0) for matrix in matrices]
    expected = brute_rerank(*matrices, k1=8, k2=4)
    result = k_reciprocal_rerank_embeddings(query, gallery, k1=8, k2=4, metric=metric)
    np.testing.assert_allclose(result, expected, atol=2e-5)
    np.testing.assert_allclose(k_reciprocal_rerank_embeddings(query, gallery, k1=8, k2=4, metric=metric,
                                                              memory_budget=1), result, atol=1e-7)


def test_working_memory_follows_the_budget():
    """No (Q + G)^2 array: with a 4 MiB budget, 4,000 items (64 MiB per dense float32 N x N array) need less than
    the result plus a quarter of one such array."""
    rng = np.random.default_rng(0)
    query, gallery = rng.normal(size=(400, 8)).astype(np.float32), rng.normal(size=(3600, 8)).astype(np.float32)
    tracemalloc.start()
    try:
        result = k_reciprocal_rerank_embeddings(query, gallery, memory_budget=4 << 20)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    dense = 4000 * 4000 * 4
    assert peak < result.nbytes + dense / 4, f"peak {peak / 2**20:.1f} MiB"


def test_direct_formulation_of_the_benchmark_matches_brute_force():
    """benchmarks/direct_rerank.py (float32, the reference's dense arrays) is what the benchmark times."""
    _, _, matrices = embedding_matrices(8, 40, seed=13)
    np.testing.assert_allclose(direct_rerank(*matrices, k1=6, k2=3), brute_rerank(*matrices, k1=6, k2=3), atol=2e-6)


def test_reranking_brings_same_cluster_items_forward():
    """A sanity check beyond equality: on clustered data the re-ranked nearest item of each query is from its
    cluster at least as often as the original nearest one."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 400)
    points = (rng.normal(size=(10, 16)) * 1.2)[labels] + rng.normal(size=(400, 16))
    query, gallery = points[:50].astype(np.float32), points[50:].astype(np.float32)
    original = euclidean(query, gallery)
    reranked = k_reciprocal_rerank_embeddings(query, gallery)
    hits = [np.mean(labels[50:][np.argmin(d, axis=1)] == labels[:50]) for d in (original, reranked)]
    assert hits[1] >= hits[0] and hits[1] > 0.5


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_reid_metrics_with_rerank_match_brute_force(metric):
    """One call gives the metrics with and without re-ranking; the re-ranked ones are those of the brute-force
    re-ranked distances (every gallery item, junk included, in the neighbourhoods)."""
    query, qpids, qcams, gallery, gpids, gcams = reid_case(seed=2)
    got = reid_metrics(query, qpids, qcams, gallery, gpids, gcams, max_rank=10, metric=metric,
                       rerank={"k1": 8, "k2": 3, "lambda_value": 0.3})
    plain = reid_metrics(query, qpids, qcams, gallery, gpids, gcams, max_rank=10, metric=metric)
    assert_same_metrics({key: value for key, value in got.items() if key != "reranked"}, plain)
    if metric == "cosine":
        query, gallery = [x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True) for x in (query, gallery)]
        matrices = [np.maximum(1 - a @ b.T, 0) for a, b in ((query, gallery), (query, query), (gallery, gallery))]
    else:
        matrices = [euclidean(a, b) for a, b in ((query, gallery), (query, query), (gallery, gallery))]
    reranked = brute_rerank(*matrices, k1=8, k2=3, lambda_value=0.3)
    assert_same_metrics(got["reranked"], brute_reid_from_distances(reranked, qpids, qcams, gpids, gcams, 10))


@pytest.mark.parametrize("change, message", [
    (lambda m: (m[0][:, :-1], m[1], m[2]), r"gallery_gallery: expected a square matrix of shape \(19, 19\)"),
    (lambda m: (m[0], m[1][:, :-1], m[2]), r"query_query: expected a square matrix of shape \(4, 4\)"),
    (lambda m: (m[0], m[2], m[1]), r"query_query: expected a square matrix of shape \(4, 4\)"),
    (lambda m: (m[0][0], m[1], m[2]), r"query_gallery: expected a non-empty 2-D array"),
    (lambda m: (m[0][:0], m[1][:0, :0], m[2]), r"query_gallery: expected a non-empty 2-D array"),
    (lambda m: (m[0].astype(str), m[1], m[2]), r"query_gallery: expected a non-empty 2-D array of real distances"),
    (lambda m: (m[0], m[1], np.where(np.eye(20) > 0, np.nan, m[2])), r"gallery_gallery: expected finite"),
    (lambda m: (-m[0], m[1], m[2]), r"query_gallery: expected finite non-negative"),
])
def test_bad_matrices(change, message):
    _, _, matrices = embedding_matrices(4, 20)
    with pytest.raises(ValueError, match=message):
        k_reciprocal_rerank(*change(matrices))


@pytest.mark.parametrize("options, message", [
    ({"k1": 0}, r"k1=0: expected a positive integer"),
    ({"k1": 2.5}, r"k1=2.5: expected a positive integer"),
    ({"k2": True}, r"k2=True: expected a positive integer"),
    ({"k2": -1}, r"k2=-1: expected a positive integer"),
    ({"lambda_value": 1.5}, r"lambda_value=1.5: expected a number in \[0, 1\]"),
    ({"lambda_value": "0.3"}, r"lambda_value='0.3': expected a number in \[0, 1\]"),
    ({"memory_budget": 0}, r"memory_budget=0: expected a positive integer"),
])
def test_bad_options(options, message):
    _, _, matrices = embedding_matrices(4, 20)
    with pytest.raises(ValueError, match=message):
        k_reciprocal_rerank(*matrices, **options)


def test_bad_embeddings():
    query, gallery, _ = embedding_matrices(4, 20)
    with pytest.raises(ValueError, match="query_emb has dimension 6 but gallery_emb has 5"):
        k_reciprocal_rerank_embeddings(query, gallery[:, :5])
    with pytest.raises(ValueError, match=r"gallery_emb: expected non-empty embeddings \[N, D\]"):
        k_reciprocal_rerank_embeddings(query, gallery[:0])
    with pytest.raises(ValueError, match=r"query_emb: 4 rows contain NaN or inf \(first: row 0\); did the training "
                                         r"diverge\?"):
        k_reciprocal_rerank_embeddings(np.full_like(query, np.inf), gallery)
    with pytest.raises(ValueError, match="metric='manhattan'"):
        k_reciprocal_rerank_embeddings(query, gallery, metric="manhattan")
    with pytest.raises(ValueError, match="zero vectors"):
        k_reciprocal_rerank_embeddings(np.zeros_like(query), gallery, metric="cosine")
