"""The ranking engine of the retrieval metrics: every query's positives ranked in the full reference, exactly.

Every metric of a query depends only on the ranks of its positives (relevant items) in the reference
sorted by distance. Queries go in chunks of C rows: faiss computes the exact squared distances `[C, N]`
to the whole reference, each row's negatives are sorted once, and one binary search per positive counts
the negatives ranked before it. C comes from a memory budget (`memory_budget` bytes of working memory,
1 GiB by default), so memory stays bounded whatever the reference size, and nothing is approximated or
truncated: mAP covers the full ranking.

Tie rule (pessimistic): a negative at exactly the same distance as a positive ranks before it. Results
never depend on the order of the data, and a collapsed embedding (all points equal) scores as badly as
possible instead of by luck of index order; Sun et al. 2020, "A Re-evaluation of Knowledge Graph
Completion Methods", show how ties ranked optimistically inflate scores.
"""
import os
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import faiss
import numpy as np

from model.checks import positive_int
from model.progress import progress_bar

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of working memory per query chunk, on top of the inputs

# Upper bounds of the working memory of `rank_statistics`, checked with tracemalloc in the tests:
# per (query, reference) pair the float32 distance and the masks of relevance (the geographic one
# needs two float64 arrays); per positive its row, column, distance, rank and sort order.
_BYTES_PER_PAIR = 24
_BYTES_PER_POSITIVE = 128


def rank_statistics(query, reference, relevance, max_positives, memory_budget, verbose):
    """Per-query ranking statistics over the full reference, computed chunk by chunk.

    faiss computes each chunk's distances on every core; the ranking that follows (masks, sorts,
    binary searches) runs in numpy, one core per call, so the chunk's rows are split into one block
    per core, ranked in threads (numpy releases the GIL in these loops).

    Args:
        query: `[Q, D]`, reference: `[N, D]` prepared embeddings (`model.checks.prepare_embeddings`); or `query`
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
    memory_budget = positive_int(memory_budget, "memory_budget")
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
            squared = (squared_distances(query[start:stop], reference) if reference is not None
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


def squared_distances(query, reference):
    """Exact squared euclidean distances `[C, N]` (float32, >= 0) with faiss."""
    squared = faiss.pairwise_distances(query, reference)  # [C, N]
    if not np.isfinite(squared).all():
        raise ValueError("the squared distances overflow float32: the embeddings are too large (train with "
                         '"l2_normalize": true in params.json, or pass metric="cosine" to the library functions)')
    # |a|^2 + |b|^2 - 2ab can round to tiny negatives for (near) equal vectors: they tie at 0.
    return np.maximum(squared, 0.0, out=squared)

