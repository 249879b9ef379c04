"""Index benchmark: recall@10, queries per second and memory of the approximate kinds of model/retrieval/index.py.

Data: clustered embeddings with the low intrinsic dimension of trained ones: a latent point
z = 0.85 * (its class centre) + noise in 32 dimensions (classes of 10 items, centres and noise
standard normal), mapped to D = 128 by a fixed random linear map, plus a little isotropic noise
(0.05 per coordinate). Every query, drawn the same way from a random class, has a few true near
neighbours among many others. (Isotropic Gaussian data in all 128 dimensions is a much harder,
unrealistic case for any approximate index: there HNSW needs efSearch of several hundred.)

For every index (the exact "flat", then "ivf" and "hnsw" with their defaults and a sweep of their
search parameter, nprobe or efSearch) the script prints:
  * build time (training and adding), and memory: the growth of the resident set from before the
    build to after it (the index itself), and the build's peak above the start (Linux VmHWM reset
    through /proc/self/clear_refs, as benchmarks/bench_evaluation.py does);
  * queries per second, all queries in one batch on every core (faiss's threads), best of 3;
  * recall@10 against the exact search: |approximate top 10 ∩ exact top 10| / 10, averaged.
Then the parameters recommended as defaults: for each kind the cheapest search setting whose
recall@10 is at least 0.95, with its figures.

Usage:
    python benchmarks/bench_index.py            # 1,000,000 references, 2,000 queries (several minutes)
    python benchmarks/bench_index.py --quick    # 100,000 references, 1,000 queries
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Run as a script (`python benchmarks/bench_index.py`): the repository root must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.bench_evaluation import _memory_status, _reset_peak_memory  # noqa: E402
from benchmarks.machine import describe  # noqa: E402
from model.retrieval.index import DEFAULT_PARAMS, ReferenceIndex  # noqa: E402

GIB, MIB = 2**30, 2**20
DIM = 128
K = 10
ITEMS_PER_CLASS = 10
RECALL_TARGET = 0.95
SWEEPS = {"ivf": ("nprobe", (4, 16, 64, 128, 256)), "hnsw": ("efSearch", (16, 32, 64, 128, 256))}


def clustered_data(num_reference, num_queries, dim, latent_dim=32, seed=0):
    """references `[N, dim]` and queries `[Q, dim]` float32 (see the module docstring); built in chunks."""
    rng = np.random.default_rng(seed)
    num_classes = num_reference // ITEMS_PER_CLASS
    centres = rng.standard_normal((num_classes, latent_dim), dtype=np.float32)
    mapping = rng.standard_normal((latent_dim, dim), dtype=np.float32) / np.sqrt(latent_dim)

    def embeddings(classes):
        latent = 0.85 * centres[classes] + rng.standard_normal((len(classes), latent_dim), dtype=np.float32)
        return latent @ mapping + 0.05 * rng.standard_normal((len(classes), dim), dtype=np.float32)

    reference = np.empty((num_reference, dim), dtype=np.float32)
    classes = np.arange(num_reference) // ITEMS_PER_CLASS
    for start in range(0, num_reference, 65536):  # no full-size temporaries
        reference[start:start + 65536] = embeddings(classes[start:start + 65536])
    return reference, embeddings(rng.integers(0, num_classes, size=num_queries))


def measure(reference, queries, exact_indices, kind, params):
    """Build one index, sweep its search parameter; returns (build figures, [search rows])."""
    _reset_peak_memory()
    before = _memory_status("VmRSS")
    start = time.perf_counter()
    index = ReferenceIndex.build(reference, np.zeros(len(reference), dtype=np.int64), kind=kind, **params)
    build_seconds = time.perf_counter() - start
    build = {"seconds": build_seconds, "resident": _memory_status("VmRSS") - before,
             "peak": _memory_status("VmHWM") - before, "params": dict(index.params)}
    name, values = SWEEPS.get(kind, (None, (None,)))
    rows = []
    for value in values:
        if name is not None:
            index.params[name] = value
            index._apply_search_params()
        seconds = np.inf
        for _ in range(3):
            start = time.perf_counter()
            result = index.search(queries, K)
            seconds = min(seconds, time.perf_counter() - start)
        recall = np.mean([len(np.intersect1d(found, true)) / K
                          for found, true in zip(result.indices, exact_indices, strict=True)])
        rows.append({"setting": f"{name}={value}" if name else "exact", "value": value, "qps": len(queries) / seconds,
                     "recall": recall})
    del index
    return build, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100,000 references and 1,000 queries")
    args = parser.parse_args(argv)
    print(describe(), flush=True)
    num_reference, num_queries = (100_000, 1_000) if args.quick else (1_000_000, 2_000)
    reference, queries = clustered_data(num_reference, num_queries, DIM)
    print(f"Index benchmark: {num_reference:,} references x {num_queries:,} queries, D = {DIM}, clustered data "
          f"(classes of {ITEMS_PER_CLASS}, latent dimension 32), recall@{K} vs exact, {os.cpu_count()} cores")
    print(f"data: {reference.nbytes / MIB:.0f} MiB of references")
    exact = ReferenceIndex.build(reference, np.zeros(num_reference, dtype=np.int64))
    exact_indices = exact.search(queries, K).indices
    del exact

    print(f"\n{'index':<44}{'build s':>9}{'index MiB':>11}{'build peak MiB':>16}{'queries/s':>11}{'recall@10':>11}")
    recommended = {}
    for kind in ("flat", "ivf", "hnsw"):
        build, rows = measure(reference, queries, exact_indices, kind, {})
        params = ", ".join(f"{key}={value}" for key, value in build["params"].items() if key not in SWEEPS[kind][:1]) \
            if kind in SWEEPS else "exact"
        for i, row in enumerate(rows):
            label = f"{kind} ({params}) {row['setting']}" if kind in SWEEPS else "flat (exact)"
            figures = (f"{build['seconds']:>9.1f}{build['resident'] / MIB:>11.0f}{build['peak'] / MIB:>16.0f}" if i == 0
                       else " " * 36)
            print(f"{label:<44}{figures}{row['qps']:>11.0f}{row['recall']:>11.4f}")
        reaching = [row for row in rows if row["recall"] >= RECALL_TARGET]
        if kind in SWEEPS:
            recommended[kind] = (max(reaching, key=lambda row: row["qps"]) if reaching else None, build)
    print(f"\nRecommended search settings (the fastest with recall@{K} >= {RECALL_TARGET}; "
          f"defaults now {', '.join(f'{k}: {v}' for k, v in DEFAULT_PARAMS.items() if v)}):")
    for kind, (row, build) in recommended.items():
        if row is None:
            print(f"  {kind}: none of {SWEEPS[kind][1]} reaches recall@{K} >= {RECALL_TARGET}")
        else:
            print(f"  {kind}: {row['setting']}: {row['qps']:.0f} queries/s, recall@{K} {row['recall']:.4f}, "
                  f"build {build['seconds']:.0f} s, index {build['resident'] / MIB:.0f} MiB")


if __name__ == "__main__":
    main()
