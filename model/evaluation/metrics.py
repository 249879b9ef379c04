"""Retrieval metrics of embeddings, exact over the full ranking (`model.evaluation.ranking`), on arrays.

- `retrieval_metrics`: labelled retrieval as in deep metric learning papers (MNIST, CUB, Cars, SOP):
  precision@1, recall@k, R-precision, MAP@R, mean average precision and NMI.
- `reid_metrics`: the Market-1501 person re-identification protocol (mAP and CMC), optionally also
  after k-reciprocal re-ranking (`model.evaluation.rerank`); `reid_metrics_from_distances` ranks by
  given distances.
- `recall_at_n`: the NetVLAD place recognition protocol (a query is found when a database image
  taken within `radius` metres of it is among its N nearest).

Ties rank pessimistically (a negative at the same distance as a positive ranks before it). Distances:
"euclidean" (default) or "cosine" (1 - cosine similarity). Cosine works on L2-normalised embeddings,
where the ranking by euclidean distance is the ranking by cosine (|a - b|^2 = 2 - 2 cos), so both
metrics use the same exact faiss L2 search.
"""
import faiss
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from model.checks import check_labels, check_utm, positive_int, positive_ints, prepare_embeddings, same_dimension
from model.data.gps import within_radius
from model.evaluation.ranking import DEFAULT_MEMORY_BUDGET, rank_statistics
from model.evaluation.rerank import k_reciprocal_rerank_embeddings

RERANK_OPTIONS = ("k1", "k2", "lambda_value")  # of reid_metrics(rerank=...): see model/evaluation/rerank.py


def retrieval_metrics(query_emb, query_labels, ref_emb=None, ref_labels=None, ks=(1, 2, 4, 8), *,
                      metric="euclidean", memory_budget=DEFAULT_MEMORY_BUDGET, verbose=False):
    """Retrieval metrics of deep metric learning, exact over the full ranking.

    For a query with R positives (reference items of its label) at ranks r_1 < ... < r_R, and
    P(i) = (positives among the first i) / i:
        precision@1 = [r_1 = 1]
        recall@k    = [r_1 <= k]           (Oh Song et al. 2016, "Deep Metric Learning via Lifted
                                            Structured Feature Embedding"; not the recall of IR)
        R-precision = #{j : r_j <= R} / R
        MAP@R       = (1/R) sum_{j : r_j <= R} P(r_j)    (Musgrave et al. 2020, "A Metric Learning
                                                          Reality Check")
        AP          = (1/R) sum_j P(r_j) = (1/R) sum_j j / r_j,  mean_average_precision = mean AP
    each averaged over the evaluated queries. NMI compares the labels of the queries with a k-means
    clustering of their embeddings into as many clusters as labels (k-means++ seeds, faiss k-means):
    NMI = 2 I(labels; clusters) / (H(labels) + H(clusters)).

    Without a reference the queries are the reference and each query's own item is left out
    (leave-one-out). Queries with no positive (label absent from the reference, or alone in its
    class in leave-one-out) are excluded from every metric but NMI, and counted. Ranks follow the
    pessimistic tie rule of the module docstring. Memory: the queries go in chunks that fit
    `memory_budget` bytes (about `N * 24 + (largest class) * 128` bytes per query).

    Args:
        query_emb: `[Q, D]` embeddings; query_labels: `[Q]` labels (any comparable dtype).
        ref_emb: `[N, D]` embeddings or None; ref_labels: `[N]` labels or None (both or neither).
        ks: the k of recall@k, positive ints (k larger than the reference is allowed).
        metric: "euclidean" or "cosine".
        memory_budget: bytes of working memory per chunk of queries.
        verbose: show a progress bar over the queries.

    Returns:
        dict: precision_at_1, recall_at_k ({k: value}), r_precision, map_at_r,
        mean_average_precision, nmi (floats), and the counts num_queries, num_evaluated,
        num_queries_without_match, num_reference.
    """
    if (ref_emb is None) != (ref_labels is None):
        raise ValueError("retrieval_metrics: pass both ref_emb and ref_labels, or neither (leave-one-out)")
    ks = positive_ints(ks, "ks")
    query = prepare_embeddings(query_emb, "query_emb", metric)
    query_labels = check_labels(query_labels, len(query), "query_labels")
    leave_one_out = ref_emb is None
    if leave_one_out:
        reference, ref_labels = query, query_labels
    else:
        reference = prepare_embeddings(ref_emb, "ref_emb", metric)
        ref_labels = check_labels(ref_labels, len(reference), "ref_labels")
        same_dimension(query, reference, "query_emb", "ref_emb")

    def relevance(start, stop):
        positive = query_labels[start:stop, None] == ref_labels[None, :]  # [C, N]
        removed = np.arange(start, stop)[:, None] == np.arange(len(reference)) if leave_one_out else None
        return positive, removed

    largest_class = np.unique(ref_labels, return_counts=True)[1].max()
    stats = rank_statistics(query, reference, relevance, largest_class, memory_budget, verbose)
    found = stats["num_positives"] > 0
    if not found.any():
        raise ValueError(f"retrieval_metrics: none of the {len(query)} queries has a same-label item in the "
                         f"reference{' (leave-one-out: every class has a single item)' if leave_one_out else ''}")
    first_rank = stats["first_rank"][found]
    return {
        "precision_at_1": float(np.mean(first_rank == 1)),
        "recall_at_k": {k: float(np.mean(first_rank <= k)) for k in ks},
        "r_precision": float(np.mean(stats["r_precision"][found])),
        "map_at_r": float(np.mean(stats["map_at_r"][found])),
        "mean_average_precision": float(np.mean(stats["average_precision"][found])),
        "nmi": _nmi(query, query_labels, metric),
        "num_queries": len(query),
        "num_evaluated": int(found.sum()),
        "num_queries_without_match": int((~found).sum()),
        "num_reference": len(reference),
    }


def reid_metrics(query_emb, query_pids, query_camids, gallery_emb, gallery_pids, gallery_camids, max_rank=50,
                 *, metric="euclidean", memory_budget=DEFAULT_MEMORY_BUDGET, verbose=False, rerank=None):
    """Market-1501 re-identification metrics: mAP and the CMC curve (Zheng et al. 2015, "Scalable
    Person Re-identification: A Benchmark").

    For each query, gallery items with pid -1 (junk) and items of the query's pid seen by the query's
    camera are removed from its ranking; distractors (pid 0) stay as negatives. The positives are the
    remaining items of the query's pid, at ranks r_1 < ... < r_R among the kept items:
        AP     = (1/R) sum_j j / r_j          (non-interpolated: precision at each correct match)
        cmc[i] = fraction of queries with r_1 <= i + 1,  i = 0 .. max_rank - 1
    mAP and cmc average over the queries with at least one positive; the others are skipped and
    counted. Ties: pessimistic (module docstring). The queries go in chunks that fit `memory_budget`.

    Args:
        query_emb: `[Q, D]`; query_pids, query_camids: `[Q]` ints.
        gallery_emb: `[N, D]`; gallery_pids, gallery_camids: `[N]` ints.
        max_rank: length of the CMC curve (it stays flat past the number of gallery items).
        metric: "euclidean" or "cosine".
        memory_budget: bytes of working memory per chunk of queries.
        verbose: show a progress bar over the queries.
        rerank: None, or a dict of options of `model.evaluation.rerank.k_reciprocal_rerank` (k1, k2, lambda_value;
            `{}` for the paper's 20, 6, 0.3): the same metrics are also computed on the k-reciprocal
            re-ranked distances (Zhong et al. 2017; every gallery item, junk included, takes part in the
            neighbourhoods, as in the authors' evaluation) and returned under "reranked".

    Returns:
        dict: mAP (float), cmc (`[max_rank]` float64 array), num_queries, num_evaluated,
        num_queries_without_match, num_gallery; with `rerank`, also "reranked": a dict of the same keys.
    """
    max_rank = positive_int(max_rank, "max_rank")
    if rerank is not None and not (isinstance(rerank, dict) and set(rerank) <= set(RERANK_OPTIONS)):
        raise ValueError(f"rerank={rerank!r}: expected None or a dict with keys among {RERANK_OPTIONS}")
    query = prepare_embeddings(query_emb, "query_emb", metric)
    gallery = prepare_embeddings(gallery_emb, "gallery_emb", metric)
    same_dimension(query, gallery, "query_emb", "gallery_emb")
    labels = _check_reid_labels(query_pids, query_camids, gallery_pids, gallery_camids, len(query), len(gallery))
    metrics = _reid_metrics(query, gallery, *labels, max_rank, memory_budget, verbose)
    if rerank is not None:
        distances = k_reciprocal_rerank_embeddings(query, gallery, metric=metric, memory_budget=memory_budget,
                                                   **rerank)  # [Q, N]
        metrics["reranked"] = _reid_metrics(distances, None, *labels, max_rank, memory_budget, verbose)
    return metrics


def reid_metrics_from_distances(distances, query_pids, query_camids, gallery_pids, gallery_camids, max_rank=50,
                                *, memory_budget=DEFAULT_MEMORY_BUDGET, verbose=False):
    """`reid_metrics` ranked by given query-gallery distances, e.g. of `model.evaluation.rerank.k_reciprocal_rerank`.

    Args:
        distances: `[Q, N]` finite distances (smaller = more similar).
        query_pids, query_camids: `[Q]`; gallery_pids, gallery_camids: `[N]` ints.
        max_rank, memory_budget, verbose: as in `reid_metrics`.

    Returns:
        dict: as `reid_metrics` (without "reranked").
    """
    max_rank = positive_int(max_rank, "max_rank")
    distances = np.asarray(distances)
    if distances.ndim != 2 or 0 in distances.shape or not np.isfinite(distances).all():
        raise ValueError(f"distances: expected a non-empty finite [Q, N] array, got shape {distances.shape}")
    labels = _check_reid_labels(query_pids, query_camids, gallery_pids, gallery_camids, *distances.shape)
    return _reid_metrics(distances, None, *labels, max_rank, memory_budget, verbose)


def _check_reid_labels(query_pids, query_camids, gallery_pids, gallery_camids, num_query, num_gallery):
    return (check_labels(query_pids, num_query, "query_pids"), check_labels(query_camids, num_query, "query_camids"),
            check_labels(gallery_pids, num_gallery, "gallery_pids"),
            check_labels(gallery_camids, num_gallery, "gallery_camids"))


def _reid_metrics(query, gallery, query_pids, query_camids, gallery_pids, gallery_camids, max_rank, memory_budget,
                  verbose):
    """`reid_metrics` of prepared embeddings, or of distances `[Q, N]` as `query` with `gallery` None."""
    junk = gallery_pids == -1  # [N]

    def relevance(start, stop):
        same_pid = query_pids[start:stop, None] == gallery_pids[None, :]  # [C, N]
        same_camera = query_camids[start:stop, None] == gallery_camids[None, :]  # [C, N]
        return same_pid & ~same_camera, junk[None, :] | (same_pid & same_camera)

    largest_identity = np.unique(gallery_pids, return_counts=True)[1].max()
    stats = rank_statistics(query, gallery, relevance, largest_identity, memory_budget, verbose)
    found = stats["num_positives"] > 0
    if not found.any():
        raise ValueError(f"reid_metrics: none of the {len(query)} queries has a valid match in the gallery "
                         "(same pid, other camera)")
    first_rank = stats["first_rank"][found]
    return {
        "mAP": float(np.mean(stats["average_precision"][found])),
        "cmc": np.mean(first_rank[:, None] <= np.arange(1, max_rank + 1), axis=0),
        "num_queries": len(query),
        "num_evaluated": int(found.sum()),
        "num_queries_without_match": int((~found).sum()),
        "num_gallery": len(gallery_pids),
    }


def recall_at_n(query_emb, db_emb, query_utm, db_utm, radius=25.0, ns=(1, 5, 10, 20), *,
                metric="euclidean", memory_budget=DEFAULT_MEMORY_BUDGET, verbose=False):
    """Place recognition Recall@N (Arandjelovic et al. 2016, "NetVLAD: CNN architecture for weakly
    supervised place recognition"; Torii et al. 2013, "Visual Place Recognition with Repetitive
    Structures").

    The positives of a query are the database images within `radius` metres of it,
    |utm_q - utm_db| <= radius. With r_1 the rank of its nearest positive (pessimistic ties):
        recall@N = fraction of ALL queries with r_1 <= N.
    A query with no positive in the database counts as a miss at every N (it is not excluded);
    their number is returned. The queries go in chunks that fit `memory_budget`.

    Args:
        query_emb: `[Q, D]`; db_emb: `[N, D]` embeddings.
        query_utm: `[Q, 2]`; db_utm: `[N, 2]` (easting, northing) in metres.
        radius: positive distance in metres.
        ns: the N of recall@N, positive ints.
        metric: "euclidean" or "cosine" (of the embeddings; geography is always euclidean).
        memory_budget: bytes of working memory per chunk of queries.
        verbose: show a progress bar over the queries.

    Returns:
        dict: recall_at_n ({N: value}), num_queries, num_queries_without_positive, num_database.
    """
    ns = positive_ints(ns, "ns")
    if not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"recall_at_n: radius={radius!r}: expected a positive number of metres")
    query = prepare_embeddings(query_emb, "query_emb", metric)
    database = prepare_embeddings(db_emb, "db_emb", metric)
    same_dimension(query, database, "query_emb", "db_emb")
    query_utm = check_utm(query_utm, len(query), "query_utm")
    db_utm = check_utm(db_utm, len(database), "db_utm")

    def relevance(start, stop):
        return within_radius(query_utm[start:stop, None], db_utm[None], radius), None  # [C, N]

    stats = rank_statistics(query, database, relevance, len(database), memory_budget, verbose)
    first_rank = stats["first_rank"]  # inf for a query without positive: a miss at every N
    return {
        "recall_at_n": {n: float(np.mean(first_rank <= n)) for n in ns},
        "num_queries": len(query),
        "num_queries_without_positive": int(np.sum(stats["num_positives"] == 0)),
        "num_database": len(database),
    }


def _nmi(embeddings, labels, metric):
    """NMI between `labels: [N]` and a k-means clustering of `embeddings: [N, D]` into as many clusters
    as labels: k-means++ seeding, then 20 Lloyd iterations with faiss (spherical for cosine)."""
    _, label_ids = np.unique(labels, return_inverse=True)
    num_clusters = int(label_ids.max()) + 1
    kmeans = faiss.Kmeans(embeddings.shape[1], num_clusters, niter=20, spherical=metric == "cosine",
                          min_points_per_centroid=1)
    kmeans.train(embeddings, init_centroids=_kmeans_plus_plus(embeddings, num_clusters))
    _, clusters = kmeans.index.search(embeddings, 1)  # [N, 1]
    return float(normalized_mutual_info_score(label_ids.ravel(), clusters[:, 0]))


def _kmeans_plus_plus(points, num_clusters, seed=0):
    """k-means++ seeds `[K, D]` (Arthur and Vassilvitskii 2007, "k-means++: The Advantages of Careful
    Seeding"): each new seed is a point drawn with probability proportional to its squared distance
    to the nearest seed so far. faiss seeds with random points, which often puts two seeds in one
    cluster and none in another, so that even perfectly separated classes get an NMI well below 1."""
    rng = np.random.default_rng(seed)
    squared_norms = np.einsum("nd,nd->n", points, points, dtype=np.float64)  # [N]
    seeds = np.empty((num_clusters, points.shape[1]), dtype=np.float32)
    nearest = np.full(len(points), np.inf)  # [N] squared distance to the nearest seed
    chosen = rng.integers(len(points))
    for i in range(num_clusters):
        seeds[i] = points[chosen]
        squared = squared_norms - 2.0 * (points @ seeds[i]) + squared_norms[chosen]  # [N]
        np.minimum(nearest, np.maximum(squared, 0.0), out=nearest)
        cumulative = np.cumsum(nearest)  # draw by inverting the cumulative distribution
        # Fewer distinct points than clusters: any point will do (faiss splits the duplicates).
        chosen = (np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right")
                  if cumulative[-1] > 0 else rng.integers(len(points)))
    return seeds

