"""k-reciprocal re-ranking of re-identification distances, in bounded memory.

Zhong, Zheng, Cao and Li 2017, "Re-ranking Person Re-identification with k-reciprocal Encoding" (CVPR).
The steps of the authors' reference code (`re_ranking(q_g_dist, q_q_dist, g_g_dist, k1, k2,
lambda_value)`, the function torchreid and fast-reid copy), over the N = Q + G items, queries first:

1. original distances: the assembled matrix A = [[q_q, q_g], [q_g^T, g_g]] (N x N) squared, each
   column divided by its maximum, transposed: d(i, j) = A[j, i]^2 / max_k A[k, i]^2 (float32).
   On symmetric inputs this is row i of A^2 divided by its maximum.
2. initial ranking of each row of d, nearest first (ties: lower index first; the reference's
   np.argsort leaves the order of ties unspecified).
3. k-reciprocal neighbours R(i, k) = {j among the k + 1 nearest of i : i among the k + 1 nearest of j}.
4. expansion: R*(i) = R(i, k1) united with every R(c, round(k1 / 2)), c in R(i, k1), that shares
   more than 2/3 of its items with R(i, k1) (round as np.around: half to even).
5. encoding: V[i, j] = exp(-d(i, j)) / sum_{j' in R*(i)} exp(-d(i, j')) for j in R*(i), else 0.
6. local query expansion (k2 != 1): V[i] <- mean of V[j] over the k2 nearest j of i (i usually included).
7. Jaccard distance: J(i, j) = 1 - m / (2 - m), m = sum_c min(V[i, c], V[j, c]).
8. final distance: J(i, j) (1 - lambda) + d(i, j) lambda, for the queries i against the gallery j.

The reference holds several dense N x N arrays (d, its argsort, V, V after query expansion): about
6 GiB at Market-1501 size (3,368 + 19,732 items). Here nothing N x N is ever held: step 1 and 2 go
over the columns of A in chunks, keeping only each row's maximum and its nearest max(k1 + 1, k2)
items; R, R* and V are sparse (a few dozen items per row); the query expansion is a sparse matrix
product; the Jaccard distances are accumulated for a chunk of queries at a time from an inverted
index of V's gallery rows (for each column c, the gallery items j with V[j, c] > 0), so only the
pairs that share a column are visited. The only [Q, G] array is the result. Every chunk is sized
from `memory_budget`.

Numerics: d is float32 as in the reference (squares taken in float64 and rounded, which equals the
reference's float32 square for float32 inputs); V and the Jaccard sums are float64. A column of A
that is all zeros (an item at distance 0 from every item) divides 0 by 0 in the reference (NaN);
here its distances stay 0.

Two entry points: `k_reciprocal_rerank` takes the three distance matrices like the reference, and
`k_reciprocal_rerank_embeddings` computes what it needs from query and gallery embeddings, a chunk
at a time, without the G x G matrix (1.45 GiB of float32 at Market-1501 size).
"""
import faiss
import numpy as np
import scipy.sparse as sp

from model.checks import positive_int, prepare_embeddings, same_dimension

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of working memory per chunk, on top of the inputs and the result

# Working bytes per element of a chunk of distance rows (the float32 rows, the float64 squares, the copy
# np.partition makes, the tie candidates), and per (query, gallery) contribution of the Jaccard sums.
_BYTES_PER_DISTANCE = 48
_BYTES_PER_CONTRIBUTION = 64


def k_reciprocal_rerank(query_gallery, query_query, gallery_gallery, k1=20, k2=6, lambda_value=0.3, *,
                        memory_budget=DEFAULT_MEMORY_BUDGET):
    """Re-ranked query-gallery distances (Zhong et al. 2017), the reference's inputs and output.

    See the module docstring for the formula. The inputs are any non-negative distances (euclidean
    in the paper; the reference squares them); they need not be symmetric (the reference's column
    convention is kept).

    Args:
        query_gallery: `[Q, G]` distances of the queries to the gallery.
        query_query: `[Q, Q]` distances among the queries.
        gallery_gallery: `[G, G]` distances among the gallery items.
        k1: size of the k-reciprocal neighbourhoods (20 in the paper for Market-1501).
        k2: size of the local query expansion (6); 1 leaves it out.
        lambda_value: weight of the original distance in the final one, in [0, 1] (0.3).
        memory_budget: bytes of working memory per chunk.

    Returns:
        `[Q, G]` float32 re-ranked distances (smaller = more similar).

    Raises:
        ValueError: shapes that do not agree, non-square `query_query`/`gallery_gallery`, NaN, inf or
            negative distances, or k1, k2, lambda_value out of range.
    """
    query_gallery = _matrix(query_gallery, "query_gallery")
    num_query, num_gallery = query_gallery.shape
    query_query = _matrix(query_query, "query_query", (num_query, num_query))
    gallery_gallery = _matrix(gallery_gallery, "gallery_gallery", (num_gallery, num_gallery))

    def squared_columns(start, stop):
        """Columns start:stop of A, squared, as rows: `[C, N]` float32 (step 1 before the division)."""
        rows = np.empty((stop - start, num_query + num_gallery), dtype=np.float32)
        queries = slice(min(start, num_query), min(stop, num_query))  # the query columns of the chunk
        gallery = slice(max(start, num_query) - num_query, max(stop, num_query) - num_query)
        if queries.start < queries.stop:
            part = rows[:queries.stop - queries.start]
            _square_into(part[:, :num_query], query_query[:, queries].T, "query_query")
            _square_into(part[:, num_query:], query_gallery[queries], "query_gallery")
        if gallery.start < gallery.stop:
            part = rows[queries.stop - queries.start:]
            _square_into(part[:, :num_query], query_gallery[:, gallery].T, "query_gallery")
            _square_into(part[:, num_query:], gallery_gallery[:, gallery].T, "gallery_gallery")
        return rows

    def squared_pairs(rows, cols):
        """A[cols, rows]^2 for `rows, cols: [P]` item indices: `[P]` float32 (step 1 before the division)."""
        first, second = cols, rows  # A[first, second]
        first_query, second_query = first < num_query, second < num_query
        values = np.empty(len(first), dtype=np.float64)
        for where, block, i, j in ((first_query & second_query, query_query, first, second),
                                   (first_query & ~second_query, query_gallery, first, second - num_query),
                                   (~first_query & second_query, query_gallery, second, first - num_query),
                                   (~first_query & ~second_query, gallery_gallery, first - num_query,
                                    second - num_query)):
            values[where] = block[i[where], j[where]]
        return np.square(values).astype(np.float32)

    return _rerank(num_query, num_gallery, squared_columns, squared_pairs, k1, k2, lambda_value, memory_budget)


def k_reciprocal_rerank_embeddings(query_emb, gallery_emb, k1=20, k2=6, lambda_value=0.3, *, metric="euclidean",
                                   memory_budget=DEFAULT_MEMORY_BUDGET):
    """`k_reciprocal_rerank` of the distances between embeddings, without any N x N or G x G matrix.

    Equal to `k_reciprocal_rerank(d(query, gallery), d(query, query), d(gallery, gallery), ...)` with d
    the euclidean distance (so the squared euclidean distance in step 1, as the authors' feature-based
    code computes it) or, with metric="cosine", 1 - cosine similarity. The distances are computed
    with faiss a chunk of items at a time.

    Args:
        query_emb: `[Q, D]`, gallery_emb: `[G, D]` embeddings (finite).
        k1, k2, lambda_value, memory_budget: as in `k_reciprocal_rerank`.
        metric: "euclidean" or "cosine".

    Returns:
        `[Q, G]` float32 re-ranked distances.
    """
    query = prepare_embeddings(query_emb, "query_emb", metric)  # L2-normalised for the cosine metric
    gallery = prepare_embeddings(gallery_emb, "gallery_emb", metric)
    same_dimension(query, gallery, "query_emb", "gallery_emb")
    items = np.concatenate([query, gallery])  # [N, D]

    def to_metric(squared):
        """Squared euclidean distances -> the squared distances of the metric (in place)."""
        np.maximum(squared, 0.0, out=squared)  # |a|^2 + |b|^2 - 2ab can round below 0
        if metric == "cosine":  # on unit vectors 1 - cos = |a - b|^2 / 2
            squared *= squared / 4
        return squared

    def squared_columns(start, stop):
        return to_metric(faiss.pairwise_distances(items[start:stop], items))  # [C, N]

    squared_norms = np.einsum("nd,nd->n", items, items)  # [N]

    def squared_pairs(rows, cols):
        # |a|^2 + |b|^2 - 2ab as faiss computes the columns, over small chunks of pairs (cache-sized gathers).
        values = np.empty(len(rows), dtype=np.float32)
        step = max(1, min(4096, memory_budget // (8 * items.shape[1])))  # two gathered [step, D] float32 arrays
        for start in range(0, len(rows), step):
            first, second = rows[start:start + step], cols[start:start + step]
            values[start:start + step] = squared_norms[first] + squared_norms[second] - 2 * np.einsum(
                "pd,pd->p", items[first], items[second])
        return to_metric(values)

    return _rerank(len(query), len(gallery), squared_columns, squared_pairs, k1, k2, lambda_value, memory_budget)


def _rerank(num_query, num_gallery, squared_columns, squared_pairs, k1, k2, lambda_value, memory_budget):
    """Steps 1-8 of the module docstring, given the squared columns of A.

    Args:
        squared_columns: function (start, stop) -> `[C, N]` float32, row i - start = column i of A squared.
        squared_pairs: function (rows, cols) -> `[P]` float32, A[cols, rows]^2.

    Returns:
        `[Q, G]` float32 re-ranked distances.
    """
    k1 = positive_int(k1, "k1")
    k2 = positive_int(k2, "k2")
    if isinstance(lambda_value, bool) or not isinstance(lambda_value, (int, float, np.number)) \
            or not 0 <= lambda_value <= 1:
        raise ValueError(f"lambda_value={lambda_value!r}: expected a number in [0, 1]")
    memory_budget = positive_int(memory_budget, "memory_budget")
    num_items = num_query + num_gallery
    final = np.empty((num_query, num_gallery), dtype=np.float32)

    # Steps 1-2: the maximum of each column of A^2 and the nearest items of each row of d; the queries'
    # distances to the gallery go straight into the result, weighted by lambda.
    width = min(max(k1 + 1, k2), num_items)
    nearest = np.empty((num_items, width), dtype=np.int64)  # [N, width]: the first columns of the argsort
    column_max = np.empty(num_items, dtype=np.float32)  # [N]
    step = max(1, memory_budget // (_BYTES_PER_DISTANCE * num_items))
    for start in range(0, num_items, step):
        stop = min(start + step, num_items)
        rows = squared_columns(start, stop)  # [C, N]
        column_max[start:stop] = rows.max(axis=1)
        rows /= np.where(column_max[start:stop] > 0, column_max[start:stop], 1)[:, None]  # d, float32
        nearest[start:stop] = _nearest(rows, width)
        if start < num_query:
            final[start:min(stop, num_query)] = rows[:num_query - start, num_query:] * np.float32(lambda_value)
        del rows

    def distances(rows, cols):
        """d(rows, cols) for index arrays `[P]`: float32 like the reference's."""
        scale = column_max[rows]
        return squared_pairs(rows, cols) / np.where(scale > 0, scale, 1)

    # Steps 3-5: the expanded k-reciprocal sets as a sparse [N, N] matrix of weights.
    rows, cols = _expanded_sets(nearest, k1, memory_budget)
    weights = np.exp(-distances(rows, cols).astype(np.float64))  # [P]
    weights /= np.bincount(rows, weights=weights, minlength=num_items)[rows]
    encoding = sp.csr_matrix((weights, (rows, cols)), shape=(num_items, num_items))  # V
    del rows, cols, weights

    # Step 6: V <- M V with M[i, j] = 1 / k2 for the k2 nearest j of i (np.mean of the reference).
    if k2 != 1:
        neighbours = nearest[:, :min(k2, num_items)]  # [N, k2']
        expansion = sp.csr_matrix((np.full(neighbours.size, 1.0 / neighbours.shape[1]), neighbours.ravel(),
                                   np.arange(0, neighbours.size + 1, neighbours.shape[1])),
                                  shape=(num_items, num_items))
        encoding = (expansion @ encoding).tocsr()
    del nearest

    # Steps 7-8, a chunk of queries at a time.
    _add_jaccard(encoding, num_query, final, np.float32(1 - lambda_value), memory_budget)
    return final


def _nearest(rows, width):
    """Column indices of the `width` smallest entries of each row, ascending, ties by lower index.

    Args:
        rows: `[C, N]` float32.

    Returns:
        `[C, width]` int64, equal to `np.argsort(rows, axis=1, kind="stable")[:, :width]`.
    """
    if width == rows.shape[1]:
        return np.argsort(rows, axis=1, kind="stable")
    # The width-th smallest value of each row; every entry up to it is a candidate (ties at it included).
    threshold = np.partition(rows, width - 1, axis=1)[:, width - 1]  # [C]
    row, col = np.nonzero(rows <= threshold[:, None])  # [P] each, by row then column
    order = np.lexsort((col, rows[row, col], row))  # by row, then distance, then column
    row, col = row[order], col[order]
    position = np.arange(len(row)) - np.searchsorted(row, row)  # rank within the row
    return col[position < width].reshape(len(rows), width)


def _expanded_sets(nearest, k1, memory_budget):
    """Steps 3-4: the expanded k-reciprocal set R*(i) of every item, as sparse coordinates.

    Args:
        nearest: `[N, width]` the nearest items of each item (width >= min(k1 + 1, N)).

    Returns:
        (rows, cols): `[P]` int64 each, sorted by row then column: j in R*(i) for (i, j) = (rows, cols).
    """
    num_items = len(nearest)
    half = int(np.around(k1 / 2.0))
    forward = nearest[:, :min(k1 + 1, num_items)]  # [N, w]
    half_forward = nearest[:, :min(half + 1, num_items)]  # [N, h]
    reciprocal = _reciprocal(forward, memory_budget)  # [N, w] bool: forward[i, p] is in R(i, k1)
    half_reciprocal = _reciprocal(half_forward, memory_budget)  # [N, h] bool: half_forward[c, p] is in R(c, k1 / 2)
    w, h = forward.shape[1], half_forward.shape[1]
    members = np.where(reciprocal, forward, -1)  # [N, w]: R(i, k1) padded with -1
    keys = []
    step = max(1, memory_budget // (w * h * (w + 24)))  # the [C, w, h, w] comparison dominates
    for start in range(0, num_items, step):
        stop = min(start + step, num_items)
        candidate_sets = half_forward[forward[start:stop]]  # [C, w, h]: the half lists of each candidate
        candidate_masks = half_reciprocal[forward[start:stop]]  # [C, w, h]
        in_own = (candidate_sets[..., None] == members[start:stop, None, None, :]).any(axis=3)  # [C, w, h]
        overlap = np.sum(in_own & candidate_masks, axis=2)  # [C, w]
        size = np.sum(candidate_masks, axis=2)  # [C, w]
        accepted = reciprocal[start:stop] & (overlap > 2.0 / 3 * size)  # [C, w]
        item = np.arange(start, stop)[:, None]  # [C, 1]
        keys.append((item * num_items + forward[start:stop])[reciprocal[start:stop]])
        taken = accepted[..., None] & candidate_masks  # [C, w, h]
        keys.append((item[..., None] * num_items + candidate_sets)[taken])
    keys = np.unique(np.concatenate(keys))  # sorted: by row, then column, without duplicates
    return keys // num_items, keys % num_items


def _reciprocal(lists, memory_budget):
    """`[N, w]` bool: item j = lists[i, p] is reciprocal, i.e. i is in lists[j] too."""
    mask = np.empty(lists.shape, dtype=bool)
    step = max(1, memory_budget // (9 * lists.shape[1] ** 2))  # a [C, w, w] int64 gather and its bool comparison
    for start in range(0, len(lists), step):
        backward = lists[lists[start:start + step]]  # [C, w, w]
        mask[start:start + step] = (backward == np.arange(start, start + len(backward))[:, None, None]).any(axis=2)
    return mask


def _add_jaccard(encoding, num_query, final, weight, memory_budget):
    """Step 7-8: final[i, g] += weight * (1 - m / (2 - m)), m = sum_c min(V[i, c], V[Q + g, c]).

    Only the (query, gallery item, column) triples where both V entries are non-zero contribute to m:
    for each non-zero V[i, c] of a query, the inverted index gives the gallery items of column c.

    Args:
        encoding: `[N, N]` CSR matrix V, queries in its first num_query rows.
        final: `[Q, G]` float32, updated in place.
    """
    num_gallery = final.shape[1]
    inverted = encoding[num_query:].tocsc()  # column c -> gallery items j with V[j, c] > 0
    column_counts = np.diff(inverted.indptr)  # [N]
    queries = encoding[:num_query]
    # Contributions per query, to cut the queries into chunks of bounded work and memory.
    owners = np.repeat(np.arange(num_query), np.diff(queries.indptr))  # [nnz]: the query of each V entry
    per_query = np.bincount(owners, weights=column_counts[queries.indices], minlength=num_query).astype(np.int64)
    budget = max(1, memory_budget // _BYTES_PER_CONTRIBUTION)
    start = 0
    while start < num_query:
        # As many queries as the budget allows (at least one): contributions and the dense [C, G] sums.
        cumulative = np.cumsum(per_query[start:] + num_gallery // 2)  # the [C, G] float64 sums and temporaries
        stop = start + max(1, int(np.searchsorted(cumulative, budget, side="right")))
        entries = slice(queries.indptr[start], queries.indptr[stop])
        columns, values = queries.indices[entries], queries.data[entries]  # V[i, c] > 0 of these queries
        counts = column_counts[columns]
        firsts = np.repeat(inverted.indptr[columns] - np.cumsum(counts) + counts, counts)
        sources = firsts + np.arange(counts.sum())  # positions in the inverted index
        minimum = np.minimum(np.repeat(values, counts), inverted.data[sources])
        flat = np.repeat(owners[entries] - start, counts) * num_gallery + inverted.indices[sources]
        shared = np.bincount(flat, weights=minimum, minlength=(stop - start) * num_gallery)  # m
        shared = shared.reshape(stop - start, num_gallery)
        final[start:stop] += weight * (1 - shared / (2 - shared)).astype(np.float32)
        start = stop


def _square_into(out, block, name):
    """out[...] = block^2 (float64 square, rounded to float32), after checking the distances."""
    block = np.asarray(block)
    if not np.isfinite(block).all() or (block < 0).any():
        raise ValueError(f"{name}: expected finite non-negative distances, found NaN, inf or negative values")
    np.square(block, out=out, dtype=np.float64, casting="same_kind")


def _matrix(values, name, shape=None):
    """A 2-D numeric array (not copied when it is one), of `shape` when given, non-empty."""
    values = np.asarray(values)
    if values.ndim != 2 or 0 in values.shape or not np.issubdtype(values.dtype, np.number) \
            or np.iscomplexobj(values):
        raise ValueError(f"{name}: expected a non-empty 2-D array of real distances, got shape {values.shape} "
                         f"and dtype {values.dtype}")
    if shape is not None and values.shape != shape:
        what = "square" if shape[0] == shape[1] else ""
        raise ValueError(f"{name}: expected a {what} matrix of shape {shape} to match query_gallery, "
                         f"got {values.shape}")
    return values
