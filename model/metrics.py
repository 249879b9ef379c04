"""Retrieval evaluation of embeddings: exact k-NN search with faiss and the metrics of metric learning.

Everything here takes arrays (embeddings `[N, D]`, labels `[N]`) except `embed`, the one helper that
runs a Keras model. Three protocols share one ranking engine:

- `retrieval_metrics`: labelled retrieval as in deep metric learning papers (MNIST, CUB, Cars, SOP):
  precision@1, recall@k, R-precision, MAP@R, mean average precision and NMI.
- `reid_metrics`: the Market-1501 person re-identification protocol (mAP and CMC), optionally also
  after k-reciprocal re-ranking (model/rerank.py); `reid_metrics_from_distances` ranks by given distances.
- `recall_at_n`: the NetVLAD place recognition protocol (a query is found when a database image
  taken within `radius` metres of it is among its N nearest).

How the ranking works: every metric of a query depends only on the ranks of its positives
(same-label items) in the reference sorted by distance. Queries go in chunks of C rows: faiss
computes the exact squared distances `[C, N]` to the whole reference, each row's negatives are
sorted once, and one binary search per positive counts the negatives ranked before it. C comes from
a memory budget (`memory_budget` bytes of working memory, 1 GiB by default), so memory stays bounded
whatever the reference size, and nothing is approximated or truncated: mAP covers the full ranking.

Tie rule of the metrics (pessimistic): a negative at exactly the same distance as a positive ranks
before it. Results never depend on the order of the data, and a collapsed embedding (all points
equal) scores as badly as possible instead of by luck of index order; Sun et al. 2020, "A
Re-evaluation of Knowledge Graph Completion Methods", show how ties ranked optimistically inflate
scores. The tie rule of `knn` is different, as it knows no labels: lower reference index first.

Distances: "euclidean" (default) or "cosine" (1 - cosine similarity). Cosine works on L2-normalised
embeddings, where the ranking by euclidean distance is the ranking by cosine (|a - b|^2 = 2 - 2 cos),
so both metrics use the same exact faiss L2 search.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import faiss
import numpy as np
from sklearn.metrics import normalized_mutual_info_score

from model.progress import progress_bar
from model.rerank import k_reciprocal_rerank_embeddings

METRICS = ("euclidean", "cosine")
DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of working memory per query chunk, on top of the inputs
RERANK_OPTIONS = ("k1", "k2", "lambda_value")  # of reid_metrics(rerank=...): see model/rerank.py

# Upper bounds of the working memory of `_rank_statistics`, checked with tracemalloc in the tests:
# per (query, reference) pair the float32 distance and the masks of relevance (the geographic one
# needs two float64 arrays); per positive its row, column, distance, rank and sort order.
_BYTES_PER_PAIR = 24
_BYTES_PER_POSITIVE = 128


def embed(model, dataset, verbose=True):
    """Embed a finite dataset with a Keras model, showing a progress bar over the batches.

    Args:
        model: a Keras model mapping a batch of images to embeddings `[B, E]`.
        dataset: a finite tf.data.Dataset of `(images, labels)` batches; `labels` is any per-item
            tensor `[B]` (class ids, person ids, file paths...) and is returned untouched.
        verbose: show a progress bar over the batches.

    Returns:
        (embeddings, labels): `embeddings: [N, E]` float32, `labels: [N]` numpy array.

    Raises:
        ValueError: for an infinite or empty dataset, elements that are not `(images, labels)`
            pairs, or a model output that is not `[B, E]`.
    """
    cardinality = int(dataset.cardinality())
    if cardinality == -1:  # tf.data.INFINITE_CARDINALITY
        raise ValueError("embed: the dataset repeats forever; pass a finite dataset (without .repeat())")
    progress = progress_bar(cardinality if cardinality >= 0 else None, "batch", verbose)
    embeddings, labels = [], []
    for element in dataset:
        if not (isinstance(element, tuple) and len(element) == 2):
            raise ValueError(f"embed: dataset elements must be (images, labels) pairs, got {type(element)} "
                             f"of length {len(element) if isinstance(element, tuple) else 1}")
        images, batch_labels = element
        # A plain call, not predict_on_batch: under tf.distribute the latter returns every replica's copy.
        batch = np.asarray(model(images, training=False), dtype=np.float32)  # [B, E]
        if batch.ndim != 2 or len(batch) != len(batch_labels):
            raise ValueError(f"embed: the model must return embeddings [B, E] for a batch of "
                             f"{len(batch_labels)} items, got shape {batch.shape}")
        embeddings.append(batch)
        labels.append(np.asarray(batch_labels))
        progress.update(len(embeddings), finalize=False)  # finalized once below, target known or not
    if not embeddings:
        raise ValueError("embed: the dataset is empty")
    progress.update(len(embeddings), finalize=True)
    return np.concatenate(embeddings), np.concatenate(labels)


def knn(query, reference, k, metric="euclidean", exclude_self=False, query_rows=None):
    """The k nearest reference items of each query, exact (faiss IndexFlatL2).

    Distances are euclidean, `sqrt(sum_d (q_d - r_d)^2)`, or cosine, `1 - q.r / (|q| |r|)`.
    Rows are sorted by distance; ties go to the lower reference index first.

    Args:
        query: `[Q, D]` embeddings.
        reference: `[N, D]` embeddings.
        k: number of neighbours; clipped to the number of reference items available (N, or N - 1
            with `exclude_self`), so the result may have fewer than k columns.
        metric: "euclidean" or "cosine".
        exclude_self: query and reference are the same set; leave each query's own item out.
        query_rows: `[Q]` the queries' own rows in the reference (the queries are some of its items);
            each query's own row is left out. `exclude_self` is `query_rows = arange(Q)`.

    Returns:
        (distances, indices): `distances: [Q, k]` float32, `indices: [Q, k]` int64 reference rows.
    """
    query = prepare_embeddings(query, "query", metric)
    reference = prepare_embeddings(reference, "reference", metric)
    _check_same_dimension(query, reference, "query", "reference")
    k = _positive_int(k, "k")
    if exclude_self:
        if len(query) != len(reference):
            raise ValueError(f"knn: exclude_self needs the query to be the reference, got {len(query)} queries "
                             f"and {len(reference)} reference items")
        query_rows = np.arange(len(query))
    if query_rows is not None:
        query_rows = np.asarray(query_rows, dtype=np.int64).reshape(-1)
        if len(query_rows) != len(query) or ((query_rows < 0) | (query_rows >= len(reference))).any():
            raise ValueError(f"knn: query_rows must hold one row of the reference (0..{len(reference) - 1}) per "
                             f"query ({len(query)}), got {len(query_rows)} rows")
    leave_out = int(query_rows is not None)
    available = len(reference) - leave_out
    if available == 0:
        raise ValueError("knn: leaving each query's own item out of a single item leaves no neighbour")
    k = min(k, available)
    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(reference)
    squared, indices = index.search(query, k + leave_out)  # [Q, k (+1)]
    if query_rows is not None:
        squared, indices = _drop_self(squared, indices, query_rows)
    # faiss returns the lower indices on a tie at the k-th place; sorting each row by (distance, index)
    # fixes the order inside the row too, whatever faiss's result handler does there.
    order = np.lexsort((indices, squared), axis=1)
    squared = np.maximum(np.take_along_axis(squared, order, axis=1), 0.0)
    indices = np.take_along_axis(indices, order, axis=1)
    # On unit vectors |q - r|^2 = 2 - 2 cos, so the cosine distance 1 - cos is half the squared distance.
    distances = np.sqrt(squared) if metric == "euclidean" else squared / 2
    return distances, indices


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
    ks = _positive_ints(ks, "ks")
    query = prepare_embeddings(query_emb, "query_emb", metric)
    query_labels = check_labels(query_labels, len(query), "query_labels")
    leave_one_out = ref_emb is None
    if leave_one_out:
        reference, ref_labels = query, query_labels
    else:
        reference = prepare_embeddings(ref_emb, "ref_emb", metric)
        ref_labels = check_labels(ref_labels, len(reference), "ref_labels")
        _check_same_dimension(query, reference, "query_emb", "ref_emb")

    def relevance(start, stop):
        positive = query_labels[start:stop, None] == ref_labels[None, :]  # [C, N]
        removed = np.arange(start, stop)[:, None] == np.arange(len(reference)) if leave_one_out else None
        return positive, removed

    largest_class = np.unique(ref_labels, return_counts=True)[1].max()
    stats = _rank_statistics(query, reference, relevance, largest_class, memory_budget, verbose)
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
        rerank: None, or a dict of options of `model.rerank.k_reciprocal_rerank` (k1, k2, lambda_value;
            `{}` for the paper's 20, 6, 0.3): the same metrics are also computed on the k-reciprocal
            re-ranked distances (Zhong et al. 2017; every gallery item, junk included, takes part in the
            neighbourhoods, as in the authors' evaluation) and returned under "reranked".

    Returns:
        dict: mAP (float), cmc (`[max_rank]` float64 array), num_queries, num_evaluated,
        num_queries_without_match, num_gallery; with `rerank`, also "reranked": a dict of the same keys.
    """
    max_rank = _positive_int(max_rank, "max_rank")
    if rerank is not None and not (isinstance(rerank, dict) and set(rerank) <= set(RERANK_OPTIONS)):
        raise ValueError(f"rerank={rerank!r}: expected None or a dict with keys among {RERANK_OPTIONS}")
    query = prepare_embeddings(query_emb, "query_emb", metric)
    gallery = prepare_embeddings(gallery_emb, "gallery_emb", metric)
    _check_same_dimension(query, gallery, "query_emb", "gallery_emb")
    labels = _check_reid_labels(query_pids, query_camids, gallery_pids, gallery_camids, len(query), len(gallery))
    metrics = _reid_metrics(query, gallery, *labels, max_rank, memory_budget, verbose)
    if rerank is not None:
        distances = k_reciprocal_rerank_embeddings(query, gallery, metric=metric, memory_budget=memory_budget,
                                                   **rerank)  # [Q, N]
        metrics["reranked"] = _reid_metrics(distances, None, *labels, max_rank, memory_budget, verbose)
    return metrics


def reid_metrics_from_distances(distances, query_pids, query_camids, gallery_pids, gallery_camids, max_rank=50,
                                *, memory_budget=DEFAULT_MEMORY_BUDGET, verbose=False):
    """`reid_metrics` ranked by given query-gallery distances, e.g. those of `model.rerank.k_reciprocal_rerank`.

    Args:
        distances: `[Q, N]` finite distances (smaller = more similar).
        query_pids, query_camids: `[Q]`; gallery_pids, gallery_camids: `[N]` ints.
        max_rank, memory_budget, verbose: as in `reid_metrics`.

    Returns:
        dict: as `reid_metrics` (without "reranked").
    """
    max_rank = _positive_int(max_rank, "max_rank")
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
    stats = _rank_statistics(query, gallery, relevance, largest_identity, memory_budget, verbose)
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
    ns = _positive_ints(ns, "ns")
    if not np.isfinite(radius) or radius <= 0:
        raise ValueError(f"recall_at_n: radius={radius!r}: expected a positive number of metres")
    query = prepare_embeddings(query_emb, "query_emb", metric)
    database = prepare_embeddings(db_emb, "db_emb", metric)
    _check_same_dimension(query, database, "query_emb", "db_emb")
    query_utm = _check_utm(query_utm, len(query), "query_utm")
    db_utm = _check_utm(db_utm, len(database), "db_utm")

    def relevance(start, stop):
        return within_radius(query_utm[start:stop, None], db_utm[None], radius), None  # [C, N]

    stats = _rank_statistics(query, database, relevance, len(database), memory_budget, verbose)
    first_rank = stats["first_rank"]  # inf for a query without positive: a miss at every N
    return {
        "recall_at_n": {n: float(np.mean(first_rank <= n)) for n in ns},
        "num_queries": len(query),
        "num_queries_without_positive": int(np.sum(stats["num_positives"] == 0)),
        "num_database": len(database),
    }


def within_radius(utm_a, utm_b, radius):
    """The ground truth of place recognition: bool `|utm_a - utm_b| <= radius`, elementwise.

    `utm_a: [..., 2]` and `utm_b: [..., 2]` (easting, northing in metres) broadcast against each
    other over their leading axes: `[C, 1, 2]` against `[1, N, 2]` gives `[C, N]` without a
    `[C, N, 2]` array. Differences are taken in float64: UTM coordinates are ~1e6 m, too large for
    float32 or for |a|² + |b|² - 2ab. Every radius test of the project (evaluation, pictures, GPS
    positives) is this function.
    """
    squared = np.subtract(utm_a[..., 0], utm_b[..., 0], dtype=np.float64)  # east
    squared *= squared
    north = np.subtract(utm_a[..., 1], utm_b[..., 1], dtype=np.float64)
    north *= north
    squared += north
    return squared <= radius * radius


def _rank_statistics(query, reference, relevance, max_positives, memory_budget, verbose):
    """Per-query ranking statistics over the full reference, computed chunk by chunk.

    faiss computes each chunk's distances on every core; the ranking that follows (masks, sorts,
    binary searches) runs in numpy, one core per call, so the chunk's rows are split into one block
    per core, ranked in threads (numpy releases the GIL in these loops).

    Args:
        query: `[Q, D]`, reference: `[N, D]` prepared embeddings (`_prepare_embeddings`); or `query`
            a `[Q, N]` array of distances to rank by and `reference` None.
        relevance: function (start, stop) -> (positive, removed) for the queries start:stop,
            `positive: [C, N]` bool, `removed: [C, N]` bool (items left out of the ranking) or None.
        max_positives: an upper bound of the positives of one query, for the chunk size.
        memory_budget: bytes of working memory per chunk.
        verbose: show a progress bar over the queries.

    Returns:
        dict of `[Q]` arrays: num_positives (R), first_rank (r_1, inf without positive), and
        r_precision, map_at_r, average_precision (NaN without positive); see `retrieval_metrics`.
    """
    memory_budget = _positive_int(memory_budget, "memory_budget")
    num_queries, num_reference = (len(query), len(reference)) if reference is not None else query.shape
    bytes_per_query = num_reference * _BYTES_PER_PAIR + int(max_positives) * _BYTES_PER_POSITIVE
    chunk = max(1, memory_budget // bytes_per_query)
    stats = {"num_positives": np.zeros(num_queries, dtype=np.int64),
             "first_rank": np.full(num_queries, np.inf)}
    for name in ("r_precision", "map_at_r", "average_precision"):
        stats[name] = np.full(num_queries, np.nan)
    progress = progress_bar(num_queries, "query") if verbose else None
    num_threads = _num_cores()
    with ThreadPoolExecutor(max_workers=num_threads) as pool:
        for start in range(0, num_queries, chunk):
            stop = min(start + chunk, num_queries)
            squared = (_squared_distances(query[start:stop], reference) if reference is not None
                       else np.array(query[start:stop], dtype=np.float32))  # [C, N], overwritten below
            bounds = np.linspace(start, stop, min(num_threads, stop - start) + 1).astype(int)
            blocks = [pool.submit(_block_statistics, squared[first - start:last - start], relevance, first, last,
                                  stats) for first, last in pairwise(bounds)]
            for block in blocks:
                block.result()  # raises the block's error, if any
            if progress is not None:
                progress.update(stop)
    return stats


def _num_cores():
    """The number of cores this process may run on: its CPU affinity where the OS has one (Linux)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _block_statistics(squared, relevance, start, stop, stats):
    """Fill `stats[name][start:stop]` (see `_rank_statistics`) for the queries start:stop.

    Args:
        squared: `[C, N]` squared distances of these queries; overwritten.
        relevance, stats: as in `_rank_statistics`; only rows start:stop of `stats` are written.
    """
    positive, removed = relevance(start, stop)  # [C, N] each
    if removed is not None:
        np.copyto(squared, np.inf, where=removed)  # behind every kept item: never ranked before a positive
        positive &= ~removed
    rows, position, ranks = _positive_ranks(squared, positive)  # [P] each
    num_positives = np.bincount(rows, minlength=stop - start)  # R per query, [C]
    precision = position / ranks  # P(r_j)
    in_first_r = ranks <= num_positives[rows]
    first = position == 1
    stats["num_positives"][start:stop] = num_positives
    stats["first_rank"][start + rows[first]] = ranks[first]
    found = num_positives > 0
    for name, weights in (("r_precision", in_first_r), ("map_at_r", precision * in_first_r),
                          ("average_precision", precision)):
        sums = np.bincount(rows, weights=weights, minlength=stop - start)
        stats[name][start:stop][found] = sums[found] / num_positives[found]


def _positive_ranks(squared, positive):
    """Rank of every positive in its query's ranking, pessimistic on ties.

    The j-th nearest positive of a query ranks r_j = j + #{negatives at distance <= its distance}.

    Args:
        squared: `[C, N]` float32 squared distances, inf for removed items; overwritten.
        positive: `[C, N]` bool, never True where `squared` is inf.

    Returns:
        (rows, position, ranks): `[P]` int arrays over the positives, ordered by query row and then
        distance: the query row, j (1-based), and r_j (1-based, among the kept items).
    """
    flat = np.flatnonzero(positive)  # [P] ascending; several times faster than a 2-D np.nonzero
    rows = flat // squared.shape[1]  # [P], ascending
    distances = squared.ravel()[flat]  # [P]
    order = np.lexsort((distances, rows))  # by row, then distance
    rows, distances = rows[order], distances[order]
    bounds = np.searchsorted(rows, np.arange(len(squared) + 1))  # row i's positives: bounds[i]:bounds[i + 1]
    position = np.arange(len(rows)) - bounds[rows] + 1  # j within each row
    np.copyto(squared, np.inf, where=positive)  # only the negatives stay finite
    squared.sort(axis=1)  # [C, N], each row ascending
    negatives_before = np.empty(len(rows), dtype=np.int64)  # [P]
    # np.searchsorted has no batched form: one call per query row, O(R log N) work each; the O(N)
    # work per query (distances, masks, sort) is vectorised over the chunk above.
    for row in range(len(squared)):
        span = slice(bounds[row], bounds[row + 1])
        negatives_before[span] = np.searchsorted(squared[row], distances[span], side="right")
    return rows, position, position + negatives_before


def _squared_distances(query, reference):
    """Exact squared euclidean distances `[C, N]` (float32, >= 0) with faiss."""
    squared = faiss.pairwise_distances(query, reference)  # [C, N]
    if not np.isfinite(squared).all():
        raise ValueError("the squared distances overflow float32: the embeddings are too large (train with "
                         '"l2_normalize": true in params.json, or pass metric="cosine" to the library functions)')
    # |a|^2 + |b|^2 - 2ab can round to tiny negatives for (near) equal vectors: they tie at 0.
    return np.maximum(squared, 0.0, out=squared)


def _drop_self(squared, indices, query_rows):
    """Remove each query's own row `query_rows: [Q]` from its k + 1 neighbours: `[Q, k + 1]` -> `[Q, k]`."""
    is_self = indices == query_rows[:, None]
    # With more than k exact duplicates a query may be missing from its own list: drop the last one.
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    return squared[keep].reshape(len(squared), -1), indices[keep].reshape(len(indices), -1)


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


def prepare_embeddings(embeddings, name, metric):
    """`[N, D]` float32 C-contiguous finite embeddings, L2-normalised for the cosine metric."""
    if metric not in METRICS:
        raise ValueError(f"metric={metric!r}: expected one of {METRICS}")
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or 0 in embeddings.shape:
        raise ValueError(f"{name}: expected non-empty embeddings [N, D], got shape {embeddings.shape}")
    bad = np.flatnonzero(~np.isfinite(embeddings).all(axis=1))
    if len(bad):
        raise ValueError(f"{name}: {len(bad)} rows contain NaN or inf (first: row {bad[0]}); "
                         "did the training diverge?")
    if metric == "cosine":
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)  # [N, 1]
        zero = np.flatnonzero(norms[:, 0] == 0)
        if len(zero):
            raise ValueError(f"{name}: the cosine distance is undefined for the zero vectors at rows "
                             f"{zero[:10].tolist()}{'...' if len(zero) > 10 else ''}")
        embeddings = embeddings / norms
    return np.ascontiguousarray(embeddings)


def _check_same_dimension(a, b, name_a, name_b):
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} has dimension {a.shape[1]} but {name_b} has {b.shape[1]}")


def check_labels(labels, num, name):
    """Labels as a `[num]` numpy array, matching the embeddings."""
    labels = np.asarray(labels)
    if labels.shape != (num,):
        raise ValueError(f"{name}: expected shape ({num},) to match the embeddings, got {labels.shape}")
    return labels


def _check_utm(utm, num, name):
    """UTM coordinates as a finite `[num, 2]` float64 array."""
    utm = np.asarray(utm, dtype=np.float64)
    if utm.shape != (num, 2) or not np.isfinite(utm).all():
        raise ValueError(f"{name}: expected finite (easting, northing) coordinates of shape ({num}, 2), "
                         f"got shape {utm.shape}")
    return utm


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}={value!r}: expected a positive integer")
    return int(value)


def _positive_ints(values, name):
    values = tuple(values) if np.iterable(values) else (values,)
    if not values:
        raise ValueError(f"{name}: expected at least one positive integer")
    return tuple(_positive_int(value, name) for value in values)
