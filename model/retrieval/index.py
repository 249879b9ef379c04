"""Nearest-neighbour search: exact k-NN, and a persistent index of reference embeddings with their labels
and file paths (faiss).

    distances, indices = knn(query, reference, k=5)                        # exact: a flat index
    index = ReferenceIndex.build(embeddings, labels, paths, kind="hnsw")   # [N, D], [N], N paths or None
    result = index.search(queries, k=10)     # distances, indices, labels, paths: [Q, k] each
    index.save("bundle/index")               # atomic: built in a temporary folder, renamed into place
    index = ReferenceIndex.load("bundle/index")

Kinds (Jégou et al. 2011, "Product Quantization for Nearest Neighbor Search", for the inverted file;
Malkov and Yashunin 2018, "Efficient and robust approximate nearest neighbor search using
Hierarchical Navigable Small World graphs", for HNSW), with faiss's names for their parameters:
    "flat": exact search (IndexFlatL2), the default.
    "ivf":  IndexIVFFlat: k-means into `nlist` cells (default 4 sqrt(N), at most N / 39: faiss wants
            39 points a cell), trained on a seeded sample of `train_size` references (default
            64 nlist, faiss's advice is 30 to 256 per cell); a query visits its `nprobe` nearest
            cells. Approximate.
    "hnsw": IndexHNSWFlat: a graph of `M` links per node, built with a beam of `efConstruction`,
            searched with a beam of `efSearch` (raised to k when smaller). Approximate.
The defaults of the approximate kinds come from benchmarks/bench_index.py at 1,000,000 x 128 (see
benchmarks/README.md): efSearch = 256 is the cheapest beam with recall@10 >= 0.95 there (0.986, at 3.3 times the exact
search's speed; 128 gave 0.942); nprobe = 256 of the default 4 sqrt(N) cells gave 0.945 at 2.3 times the
exact speed: prefer "hnsw".

Distances returned: euclidean, |q - r| (not squared), or with metric="cosine" 1 - cos(q, r)
(the embeddings are L2-normalised before they are added and searched). Rows are sorted by distance,
ties by lower index (`search`, the one search of both). Where an approximate search finds fewer than
k references, the missing entries have index -1, distance inf, label -1 (or "" for string labels) and
path "".

A saved index is a folder: index.faiss (faiss.write_index), labels.npy, paths.txt (one path a line,
UTF-8; empty when the references have no files) and index.json (kind, params, metric, dimension,
count, faiss version, and the fingerprint of the model that embedded the references, where one is given).
"""
import json
import math
import os
import shutil
from collections import namedtuple

import faiss
import numpy as np

from model.atomic import replace_folder, staging_folder
from model.checks import METRICS, load_array, positive_int, prepare_embeddings, same_dimension

KINDS = ("flat", "ivf", "hnsw")
FORMAT = "reference-index"
FORMAT_VERSION = 1
# Parameters of each kind and their defaults (None: computed from the number of references).
DEFAULT_PARAMS = {
    "flat": {},
    "ivf": {"nlist": None, "nprobe": 256, "train_size": None},
    "hnsw": {"M": 32, "efConstruction": 80, "efSearch": 256},
}
FILES = ("index.faiss", "labels.npy", "paths.txt", "index.json")

SearchResult = namedtuple("SearchResult", "distances indices labels paths")
SearchResult.__doc__ = """Result of `ReferenceIndex.search`: `distances: [Q, k]` float32, `indices: [Q, k]` int64
rows of the references, `labels: [Q, k]` their labels, `paths: [Q, k]` their paths (numpy str array)."""


def search(faiss_index, queries, k, metric, query_rows=None):
    """The k nearest references of each prepared query in a faiss L2 index: (distances `[Q, k]` float32,
    indices `[Q, k]` int64), nearest first, ties by lower index.

    With `query_rows` (`[Q]`: the queries are references, at these rows), each query's own row is left out.
    Distances are euclidean or, with metric "cosine" (on unit vectors), 1 - cos = |q - r|² / 2. An approximate
    index that finds fewer than k references leaves index -1 and distance inf in the missing places.
    Distances that are not finite (queries far too large for float32) are a ValueError.
    """
    leave_out = int(query_rows is not None)
    squared, indices = faiss_index.search(queries, k + leave_out)  # [Q, k (+1)]
    if query_rows is not None:
        squared, indices = _drop_self(squared, indices, query_rows)
    missing = indices < 0
    # Squared distances in float32 overflow for embeddings of norm above ~1e19: faiss then finds no neighbour
    # (index -1, distance inf) or infinite ones, which are no answer; an exact index always finds k neighbours.
    overflow = ~np.isfinite(squared) & ~missing
    if isinstance(faiss_index, faiss.IndexFlat):
        overflow |= missing
    if overflow.any():
        row = int(np.flatnonzero(overflow.any(axis=1))[0])
        norm = float(np.linalg.norm(queries[row].astype(np.float64)))
        raise ValueError(f"queries: the distances of row {row} (norm {norm:.3g}) overflow float32 and are not finite; "
                         "expected embeddings of the scale of the references (of this model)")
    squared[missing] = np.inf
    # Sorting each row by (distance, index) fixes the order of ties, whatever faiss's result handler does.
    order = np.lexsort((np.where(missing, faiss_index.ntotal, indices), squared), axis=1)
    squared = np.maximum(np.take_along_axis(squared, order, axis=1), 0.0)
    indices = np.take_along_axis(indices, order, axis=1)
    distances = np.sqrt(squared) if metric == "euclidean" else squared / 2
    return distances.astype(np.float32), indices


def _drop_self(squared, indices, query_rows):
    """Remove each query's own row `query_rows: [Q]` from its k + 1 neighbours: `[Q, k + 1]` -> `[Q, k]`."""
    is_self = indices == query_rows[:, None]
    # With more than k exact duplicates a query may be missing from its own list: drop the last one.
    is_self[~is_self.any(axis=1), -1] = True
    keep = ~is_self
    return squared[keep].reshape(len(squared), -1), indices[keep].reshape(len(indices), -1)


def knn(query, reference, k, metric="euclidean", exclude_self=False, query_rows=None):
    """The k nearest reference items of each query, exact: a flat index of the reference, `search`ed.

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
    same_dimension(query, reference, "query", "reference")
    k = positive_int(k, "k")
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
    available = len(reference) - int(query_rows is not None)
    if available == 0:
        raise ValueError("knn: leaving each query's own item out of a single item leaves no neighbour")
    index = faiss.IndexFlatL2(reference.shape[1])
    index.add(reference)
    return search(index, query, min(k, available), metric, query_rows)



class ReferenceIndex:
    """Reference embeddings in a faiss index, with their labels and paths; see the module docstring."""

    def __init__(self, faiss_index, labels, paths, kind, kind_params, metric, fingerprint=None):
        """Use `build` or `load`; this constructor takes the parts as they are (`kind_params`: the kind's
        parameters, `DEFAULT_PARAMS`). `fingerprint`: a string that ties the index to what embedded its
        references (a bundle's model), saved in index.json; None for none."""
        self.faiss_index, self.labels, self.paths = faiss_index, labels, paths
        self.kind, self.params, self.metric = kind, kind_params, metric
        self.fingerprint = fingerprint

    def __len__(self):
        return int(self.faiss_index.ntotal)

    @property
    def dimension(self):
        return int(self.faiss_index.d)

    @classmethod
    def build(cls, embeddings, labels, paths=None, kind="flat", metric="euclidean", **params):
        """Index `embeddings: [N, D]` with `labels: [N]` (numbers or strings) and `paths` (N strings, or None).

        Args:
            kind: "flat" (exact), "ivf" or "hnsw".
            metric: "euclidean" or "cosine".
            **params: the kind's parameters (DEFAULT_PARAMS): nlist, nprobe for ivf; M,
                efConstruction, efSearch for hnsw.
        """
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}: expected one of {KINDS}")
        if metric not in METRICS:
            raise ValueError(f"metric={metric!r}: expected one of {METRICS}")
        unknown = set(params) - set(DEFAULT_PARAMS[kind])
        if unknown:
            raise ValueError(f"unknown parameter(s) {sorted(unknown)} for kind {kind!r}: expected some of "
                             f"{sorted(DEFAULT_PARAMS[kind]) or 'none'}")
        embeddings = prepare_embeddings(embeddings, "embeddings", metric)
        num, dimension = embeddings.shape
        labels = _labels(labels, num)
        paths = _paths(paths, num)
        params = {**DEFAULT_PARAMS[kind], **params}
        if kind == "ivf" and params["nlist"] is None:
            params["nlist"] = max(1, min(num // 39, round(4 * math.sqrt(num))))  # faiss wants >= 39 points a cell
        if kind == "ivf" and params["train_size"] is None:
            params["train_size"] = min(num, 64 * positive_int(params["nlist"], "nlist"))
        for name, value in params.items():
            positive_int(value, name)
        if kind == "flat":
            index = faiss.IndexFlatL2(dimension)
        elif kind == "ivf":
            if params["nlist"] > num:
                raise ValueError(f"nlist={params['nlist']} cells for {num} references: expected at most {num}")
            index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dimension), dimension, params["nlist"], faiss.METRIC_L2)
            sample = np.sort(np.random.default_rng(0).choice(num, min(num, params["train_size"]), replace=False))
            index.train(embeddings[sample])
        else:
            index = faiss.IndexHNSWFlat(dimension, params["M"])
            index.hnsw.efConstruction = params["efConstruction"]
        index.add(embeddings)
        built = cls(index, labels, paths, kind, params, metric)
        built._apply_search_params()
        return built

    def _apply_search_params(self):
        if self.kind == "ivf":
            self.faiss_index.nprobe = self.params["nprobe"]
        elif self.kind == "hnsw":
            self.faiss_index.hnsw.efSearch = self.params["efSearch"]

    def search(self, queries, k):
        """The k nearest references of each query.

        Args:
            queries: `[Q, D]` embeddings (D = `self.dimension`).
            k: positive int; clipped to the number of references.

        Returns:
            SearchResult of `[Q, k]` arrays, nearest first (see the module docstring for the distances).
        """
        k = min(positive_int(k, "k"), len(self))
        queries = prepare_embeddings(queries, "queries", self.metric)
        if queries.shape[1] != self.dimension:
            raise ValueError(f"queries have dimension {queries.shape[1]} but the index holds {self.dimension}-"
                             "dimensional embeddings")
        if self.kind == "hnsw":  # a beam narrower than k cannot return k results
            self.faiss_index.hnsw.efSearch = max(self.params["efSearch"], k)
        distances, indices = search(self.faiss_index, queries, k, self.metric)  # [Q, k] each
        missing = indices < 0
        rows = np.where(missing, 0, indices)
        labels = self.labels[rows]
        labels[missing] = "" if labels.dtype.kind == "U" else -1
        paths = self.paths[rows] if len(self.paths) else np.full(indices.shape, "", dtype=str)
        if len(self.paths):
            paths[missing] = ""
        return SearchResult(distances, indices, labels, paths)

    def save(self, directory):
        """Write the index folder `directory`: built in a temporary folder beside it, then renamed into place.

        An existing index folder there is replaced; any other non-empty folder is refused.
        """
        directory = os.path.abspath(directory)
        if os.path.exists(directory) and (not os.path.isdir(directory) or (
                os.listdir(directory) and not os.path.isfile(os.path.join(directory, "index.json")))):
            raise ValueError(f"{directory} exists and is not an index folder (no index.json): it would be replaced "
                             "completely, so give a new or empty folder")
        staging = staging_folder(directory)
        try:
            faiss.write_index(self.faiss_index, os.path.join(staging, "index.faiss"))
            np.save(os.path.join(staging, "labels.npy"), self.labels, allow_pickle=False)
            with open(os.path.join(staging, "paths.txt"), "w", encoding="utf-8") as handle:
                handle.write("".join(f"{path}\n" for path in self.paths))
            description = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": self.kind,
                           "params": self.params, "metric": self.metric, "dimension": self.dimension,
                           "count": len(self), "has_paths": bool(len(self.paths)), "faiss_version": faiss.__version__,
                           "distance": "euclidean (not squared)" if self.metric == "euclidean" else "1 - cosine"}
            if self.fingerprint is not None:
                description["fingerprint"] = self.fingerprint
            with open(os.path.join(staging, "index.json"), "w", encoding="utf-8") as handle:
                json.dump(description, handle, indent=2)
                handle.write("\n")
            replace_folder(staging, directory)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    @classmethod
    def load(cls, directory):
        """Read an index folder written by `save`; a folder that is not one is a clear ValueError."""
        description_path = os.path.join(directory, "index.json")
        if not os.path.isdir(directory):
            raise ValueError(f"{directory}: no such index folder")
        if not os.path.isfile(description_path):
            raise ValueError(f"{directory} is not an index folder: it has no index.json")
        try:
            with open(description_path, encoding="utf-8") as handle:
                description = json.load(handle)
        except (OSError, ValueError) as error:
            raise ValueError(f"{description_path}: unreadable ({error})") from error
        if not isinstance(description, dict) or description.get("format") != FORMAT:
            raise ValueError(f"{description_path}: not the description of an index (expected \"format\": "
                             f"\"{FORMAT}\")")
        for key in ("kind", "params", "metric", "dimension", "count"):
            if key not in description:
                raise ValueError(f"{description_path}: missing key {key!r}")
        missing = [name for name in FILES if not os.path.isfile(os.path.join(directory, name))]
        if missing:
            raise ValueError(f"{directory}: index folder without {', '.join(missing)}")
        try:
            index = faiss.read_index(os.path.join(directory, "index.faiss"))
        except RuntimeError as error:
            raise ValueError(f"{os.path.join(directory, 'index.faiss')}: not a faiss index ({error})") from error
        labels = load_array(os.path.join(directory, "labels.npy"), "the labels of the references [N]")
        with open(os.path.join(directory, "paths.txt"), encoding="utf-8") as handle:
            paths = np.array(handle.read().splitlines(), dtype=str)
        count, dimension = description["count"], description["dimension"]
        if (index.ntotal, index.d, len(labels)) != (count, dimension, count) or len(paths) not in (0, count):
            raise ValueError(f"{directory}: inconsistent index folder: index.json says {count} references of "
                             f"dimension {dimension}; index.faiss holds {index.ntotal} of dimension {index.d}, "
                             f"labels.npy {len(labels)} labels, paths.txt {len(paths)} paths")
        loaded = cls(index, labels, paths, description["kind"], description["params"], description["metric"],
                     description.get("fingerprint"))
        loaded._apply_search_params()
        return loaded


def _labels(labels, num):
    labels = np.asarray(labels)
    if labels.shape != (num,) or labels.dtype.kind not in "iuU":
        raise ValueError(f"labels: expected {num} integers or strings (shape ({num},)), got shape {labels.shape} "
                         f"and dtype {labels.dtype}")
    return labels.astype(np.int64) if labels.dtype.kind == "u" else labels  # signed: -1 marks a missing result


def _paths(paths, num):
    if paths is None:
        return np.array([], dtype=str)
    paths = [os.fspath(path) for path in paths]
    if len(paths) != num:
        raise ValueError(f"paths: expected one path per embedding ({num}), got {len(paths)}")
    bad = [path for path in paths if "\n" in path or "\r" in path or not path]
    if bad:
        raise ValueError(f"paths: empty paths and line breaks cannot be stored (first: {bad[0]!r})")
    return np.array(paths, dtype=str)
