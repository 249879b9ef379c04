"""The direct formulation of k-reciprocal re-ranking: the reference for benchmarks and tests only.

Zhong et al. 2017, "Re-ranking Person Re-identification with k-reciprocal Encoding", as the authors'
reference code computes it (and torchreid and fast-reid after it): dense float32 arrays over all
N = Q + G items, the assembled distance matrix, its full argsort, V and V after query expansion,
each N x N (2 GiB of float32 each at Market-1501 size, 23,100 items), then the Jaccard distances of
the queries through an inverted index built by scanning every column of V. Per-item Python loops
as in the reference. The one deliberate difference: the argsort is stable (ties by lower index,
the library's rule), where the reference's np.argsort leaves the order of ties unspecified.

model/evaluation/rerank.py computes the same in bounded memory; tests/test_rerank.py checks both against a
float64 brute force and benchmarks/bench_evaluation.py times one against the other.
"""
import numpy as np


def direct_rerank(query_gallery, query_query, gallery_gallery, k1=20, k2=6, lambda_value=0.3):
    """Re-ranked `[Q, G]` float32 distances from the three distance matrices, with dense N x N arrays."""
    num_query = len(query_query)
    original = np.concatenate([np.concatenate([query_query, query_gallery], axis=1),
                               np.concatenate([query_gallery.T, gallery_gallery], axis=1)]).astype(np.float32)
    original = np.square(original)
    original = np.transpose(original / np.max(original, axis=0))  # [N, N]
    num_items = len(original)
    encoding = np.zeros_like(original)  # V, [N, N]
    ranking = np.argsort(original, axis=1, kind="stable").astype(np.int32)  # [N, N]
    half = int(np.around(k1 / 2.0))

    for i in range(num_items):
        neighbours = _reciprocal(ranking, i, k1)
        expanded = neighbours
        for candidate in neighbours:
            candidate_set = _reciprocal(ranking, candidate, half)
            if len(np.intersect1d(candidate_set, neighbours)) > 2.0 / 3 * len(candidate_set):
                expanded = np.append(expanded, candidate_set)
        expanded = np.unique(expanded)
        weights = np.exp(-original[i, expanded])
        encoding[i, expanded] = weights / np.sum(weights)
    original = original[:num_query]
    if k2 != 1:
        expanded_encoding = np.zeros_like(encoding)
        for i in range(num_items):
            expanded_encoding[i] = np.mean(encoding[ranking[i, :k2]], axis=0)
        encoding = expanded_encoding
        del expanded_encoding
    del ranking
    inverted = [np.where(encoding[:, c] != 0)[0] for c in range(num_items)]  # column c -> items with V[., c] > 0
    jaccard = np.zeros_like(original)  # [Q, N]
    for i in range(num_query):
        shared = np.zeros(num_items, dtype=np.float32)
        for c in np.where(encoding[i] != 0)[0]:
            items = inverted[c]
            shared[items] += np.minimum(encoding[i, c], encoding[items, c])
        jaccard[i] = 1 - shared / (2 - shared)
    return (jaccard * (1 - lambda_value) + original * lambda_value)[:, num_query:]


def _reciprocal(ranking, i, k):
    """The k-reciprocal neighbours of item i: j among its k + 1 nearest with i among the k + 1 nearest of j."""
    forward = ranking[i, :k + 1]
    backward = ranking[forward, :k + 1]
    return forward[np.where(backward == i)[0]]
