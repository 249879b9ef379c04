"""Evaluation benchmark: `reid_metrics` against a per-query loop, and `retrieval_metrics` at scale.

1. Re-identification at Market-1501 size: 3,368 queries and 19,732 gallery images, D = 2048, with
   synthetic identities laid out like Market-1501's test split: 750 identities over 6 cameras, one
   query per (identity, camera) for 3,368 such pairs, 13,120 gallery images of those identities,
   2,793 distractors (pid 0) and 3,819 junk images (pid -1). `reid_metrics` runs next to a
   straightforward loop written here, the classic way (as in the Market-1501 baseline code): per
   query, its distance row, a sort, the junk mask, AP and CMC. Both must give the same numbers,
   which the script asserts, and the speedup is printed (target: at least 20x).
   The embeddings are integer-valued (quantised Gaussian features): then every squared distance is
   an integer below 2^24, exact in float32 whatever the order of the sums, so faiss and numpy
   compute the very same distances, ties included, and the results can be compared exactly. The
   loop ranks a negative before a positive at the same distance, the library's (pessimistic) rule.
   Also printed: the distances alone, as one matrix product over the whole gallery (the floor of
   any exact method, which must compute every query-gallery distance; the best of three runs), its
   rate in GFLOP/s, and so about the largest speedup over the loop that this machine allows.

2. Retrieval at scale: `retrieval_metrics` with 10,000 queries against a 1,000,000 x 128
   reference (100,000 classes of 10 items). Printed: its time, and its peak memory beyond the
   arrays (target: under 4 GiB). Measured in a fresh child process that first builds the arrays
   (in chunks, so that building them leaves no peak above what they hold), then resets the peak
   resident set size (Linux: writing 5 to /proc/self/clear_refs) and reads it (VmHWM of
   /proc/self/status) after the call: the difference is the memory the call needed on top of its inputs.

3. k-reciprocal re-ranking (model/evaluation/rerank.py) at Market-1501 size (3,368 queries, 19,732 gallery, the
   synthetic identities of 1., D = 2048): the bounded version from the three distance matrices
   (`k_reciprocal_rerank`) and from the embeddings (`k_reciprocal_rerank_embeddings`, which never
   builds the gallery-gallery matrix), next to the direct formulation of the authors' code
   (benchmarks/direct_rerank.py, dense (Q + G)² arrays). Each runs in a fresh child process that
   first builds its inputs (the distance matrices, or the embeddings), then measures the time and the
   peak memory beyond the inputs as in 2. (target: under 2 GiB). The direct formulation needs about
   5 float32 (Q + G)² arrays (~10 GiB at full size) and minutes: it is measured at 1/4 and 1/2 of
   the sizes and extrapolated to the full size as t·(N/N')² and peak·(N/N')² from the larger one
   (N = Q + G; its per-item loops do O(N) work per item, its argsort O(N log N), so the time estimate
   is slightly low); both measured sizes are printed, so the growth can be checked. Also printed:
   mAP and rank-1 before and after re-ranking, and the largest difference between the direct and
   the bounded results at a measured size.

Usage:
    python benchmarks/bench_evaluation.py            # full sizes (several minutes)
    python benchmarks/bench_evaluation.py --quick    # 1/8 of the re-id sizes, a 100,000 x 128 reference
    python benchmarks/bench_evaluation.py --only rerank [--quick]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Run as a script (`python benchmarks/bench_evaluation.py`): the repository root must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.direct_rerank import direct_rerank  # noqa: E402
from benchmarks.machine import describe  # noqa: E402
from model.evaluation.metrics import reid_metrics, reid_metrics_from_distances, retrieval_metrics  # noqa: E402
from model.evaluation.rerank import k_reciprocal_rerank, k_reciprocal_rerank_embeddings  # noqa: E402

GIB = 2**30
REID_SIZES = {"queries": 3368, "identity_images": 13120, "distractors": 2793, "junk": 3819, "ids": 750}
NUM_CAMERAS = 6
REID_DIM = 2048
MAX_RANK = 50
REID_SPEEDUP_TARGET = 20.0
RETRIEVAL_SIZES = {"reference": 1_000_000, "queries": 10_000, "items_per_class": 10}
RETRIEVAL_DIM = 128
RETRIEVAL_MEMORY_TARGET = 4 * GIB
RERANK_DIM = REID_DIM
RERANK_MEMORY_TARGET = 2 * GIB
DIRECT_RERANK_FRACTIONS = (4, 2)  # the direct formulation is measured at 1/4 and 1/2 of the sizes


def market_like_data(sizes, dim, seed=0):
    """Synthetic re-id data with Market-1501's structure and integer-valued embeddings.

    Returns (query_emb, query_pids, query_camids, gallery_emb, gallery_pids, gallery_camids);
    embeddings float32 `[Q, dim]` and `[N, dim]`, pids and camids int64. An image of identity i seen
    by camera c is round(4·(0.35·identity_i + 0.25·camera_c + noise)), all three standard normal,
    so that matches are found often but not always (mAP well inside (0, 1)); distractors and junk
    images have identities of their own.
    """
    rng = np.random.default_rng(seed)
    num_ids = sizes["ids"]
    pairs = rng.choice(num_ids * NUM_CAMERAS, size=sizes["queries"], replace=False)  # (identity, camera)
    query_pids, query_camids = pairs // NUM_CAMERAS + 1, pairs % NUM_CAMERAS + 1  # pids 1..num_ids, cams 1..6
    gallery_pids = np.concatenate([
        rng.integers(1, num_ids + 1, size=sizes["identity_images"]),
        np.zeros(sizes["distractors"], dtype=np.int64),
        np.full(sizes["junk"], -1),
    ])
    gallery_camids = rng.integers(1, NUM_CAMERAS + 1, size=len(gallery_pids))
    identity = rng.standard_normal((num_ids + 1, dim), dtype=np.float32)
    camera = rng.standard_normal((NUM_CAMERAS + 1, dim), dtype=np.float32)

    def images(pids, camids):
        own = pids <= 0  # distractors and junk: an identity of their own, unrelated to the others
        centres = np.where(own[:, None], rng.standard_normal((len(pids), dim), dtype=np.float32), identity[pids])
        features = 0.35 * centres + 0.25 * camera[camids] + rng.standard_normal((len(pids), dim), dtype=np.float32)
        return np.round(4 * features).astype(np.float32)

    return (images(query_pids, query_camids), query_pids, query_camids,
            images(gallery_pids, gallery_camids), gallery_pids, gallery_camids)


def reid_metrics_loop(query_emb, query_pids, query_camids, gallery_emb, gallery_pids, gallery_camids, max_rank):
    """The straightforward Market-1501 evaluation, one query at a time: the reference of the benchmark.

    Per query: squared distances to the gallery, a sort (a negative before a positive at the same
    distance), the junk mask (pid -1, and the query's pid seen by its camera), then
    AP = (1/R) Σ_j j / r_j over the ranks r_j of its R positives and CMC from r_1.

    Returns:
        ({"mAP", "cmc", "num_evaluated"}, seconds spent on distance rows, seconds spent on the rest).
    """
    gallery_norms = np.sum(gallery_emb.astype(np.float64) ** 2, axis=1).astype(np.float32)  # [N]
    average_precisions, first_ranks = [], []
    distance_time = ranking_time = 0.0
    for q in range(len(query_emb)):
        start = time.perf_counter()
        distances = gallery_norms - 2 * (gallery_emb @ query_emb[q]) + np.dot(query_emb[q], query_emb[q])  # [N]
        middle = time.perf_counter()
        positive = gallery_pids == query_pids[q]  # [N]
        order = np.lexsort((positive, distances))  # by distance; on a tie, negatives (False) first
        pids, camids = gallery_pids[order], gallery_camids[order]
        junk = (pids == -1) | ((pids == query_pids[q]) & (camids == query_camids[q]))
        matches = pids[~junk] == query_pids[q]  # [kept items] in ranked order
        ranks = np.flatnonzero(matches) + 1
        if len(ranks):
            average_precisions.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
            first_ranks.append(ranks[0])
        ranking_time += time.perf_counter() - middle
        distance_time += middle - start
    first_ranks = np.array(first_ranks)
    cmc = np.mean(first_ranks[:, None] <= np.arange(1, max_rank + 1), axis=0)
    metrics = {"mAP": float(np.mean(average_precisions)), "cmc": cmc, "num_evaluated": len(first_ranks)}
    return metrics, distance_time, ranking_time


def bench_reid(sizes, dim):
    """Time `reid_metrics` and the loop on the same data, assert equal results, print the table."""
    data = market_like_data(sizes, dim)
    start = time.perf_counter()
    library = reid_metrics(*data, max_rank=MAX_RANK)
    library_time = time.perf_counter() - start
    start = time.perf_counter()
    loop, distance_time, ranking_time = reid_metrics_loop(*data, max_rank=MAX_RANK)
    loop_time = time.perf_counter() - start
    floor_time = np.inf
    for _ in range(3):  # the best of three: a floor
        start = time.perf_counter()
        faiss.pairwise_distances(data[0], data[3])  # [Q, N]: what every exact method must compute
        floor_time = min(floor_time, time.perf_counter() - start)
    gflops = 2 * data[0].size * len(data[3]) / floor_time / 1e9

    if library["num_evaluated"] != loop["num_evaluated"]:
        raise AssertionError(f"evaluated queries differ: library {library['num_evaluated']}, "
                             f"loop {loop['num_evaluated']}")
    np.testing.assert_allclose(library["mAP"], loop["mAP"], rtol=1e-12, err_msg="mAP differs from the loop")
    np.testing.assert_allclose(library["cmc"], loop["cmc"], rtol=1e-12, err_msg="CMC differs from the loop")

    speedup = loop_time / library_time
    print(f"reid_metrics: {len(data[0]):,} queries x {len(data[3]):,} gallery, D = {dim}")
    print(f"{'':<26}{'time s':>10}{'mAP':>10}{'rank-1':>10}{'rank-10':>10}")
    print(f"{'reid_metrics':<26}{library_time:>10.2f}{library['mAP']:>10.4f}{library['cmc'][0]:>10.4f}"
          f"{library['cmc'][9]:>10.4f}")
    print(f"{'per-query loop':<26}{loop_time:>10.2f}{loop['mAP']:>10.4f}{loop['cmc'][0]:>10.4f}{loop['cmc'][9]:>10.4f}")
    print(f"{'  of which distance rows':<26}{distance_time:>10.2f}")
    print(f"{'  of which sort, mask, AP':<26}{ranking_time:>10.2f}")
    print(f"{'distances alone (floor)':<26}{floor_time:>10.2f}   one matrix product, {gflops:.0f} GFLOP/s")
    print(f"same numbers: yes ({library['num_evaluated']:,} queries evaluated, "
          f"{library['num_queries_without_match']} without a match); speedup {speedup:.1f}x, "
          f"at most {loop_time / floor_time:.1f}x on this machine (loop / floor)")
    verdict = "PASS" if speedup >= REID_SPEEDUP_TARGET else "FAIL"
    return f"[{verdict}] reid_metrics >= {REID_SPEEDUP_TARGET:.0f}x faster than the per-query loop: {speedup:.1f}x"


def _reset_peak_memory():
    """Make VmHWM (peak resident set size) start again from the current size: Linux, /proc/self/clear_refs."""
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
    except OSError as error:
        raise RuntimeError(f"measuring the peak memory needs Linux's /proc/self/clear_refs: {error}") from error


def _memory_status(field):
    """A field of /proc/self/status in bytes (VmRSS: resident now, VmHWM: peak resident)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not found in /proc/self/status")


def retrieval_child(sizes, dim):
    """In a fresh process: build the retrieval arrays, run `retrieval_metrics` once, return the figures."""
    rng = np.random.default_rng(0)
    num_reference, num_queries, per_class = sizes["reference"], sizes["queries"], sizes["items_per_class"]
    num_classes = num_reference // per_class
    centres = rng.standard_normal((num_classes, dim), dtype=np.float32)
    reference_labels = np.arange(num_reference) // per_class
    query_labels = rng.integers(0, num_classes, size=num_queries)
    reference = rng.standard_normal((num_reference, dim), dtype=np.float32)  # the noise, then the centres
    for start in range(0, num_reference, 65536):  # in chunks: no full-size temporary array
        reference[start:start + 65536] += 0.85 * centres[reference_labels[start:start + 65536]]
    queries = rng.standard_normal((num_queries, dim), dtype=np.float32) + 0.85 * centres[query_labels]
    del centres
    array_bytes = sum(a.nbytes for a in (reference, reference_labels, queries, query_labels))

    _reset_peak_memory()
    before = _memory_status("VmRSS")
    start = time.perf_counter()
    metrics = retrieval_metrics(queries, query_labels, reference, reference_labels)
    seconds = time.perf_counter() - start
    return {
        "seconds": seconds,
        "beyond_arrays_bytes": _memory_status("VmHWM") - before,
        "array_bytes": array_bytes,
        "metrics": {name: metrics[name] for name in ("precision_at_1", "mean_average_precision", "nmi")},
    }


def bench_retrieval(sizes, dim):
    """Run `retrieval_child` in a fresh process and print its figures; returns the target line."""
    command = [sys.executable, __file__, "--retrieval-child", json.dumps(sizes), "--dim", str(dim)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the retrieval child process failed (exit status {result.returncode}):\n{result.stderr}")
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    beyond = figures["beyond_arrays_bytes"]
    print(f"\nretrieval_metrics: {sizes['queries']:,} queries x {sizes['reference']:,} reference, D = {dim}")
    print(f"  time {figures['seconds']:.1f} s ({figures['seconds'] / sizes['queries'] * 1000:.1f} ms per query)")
    print(f"  arrays {figures['array_bytes'] / GIB:.2f} GiB; peak memory beyond them {beyond / GIB:.2f} GiB")
    print("  " + ", ".join(f"{name} {value:.4f}" for name, value in figures["metrics"].items()))
    verdict = "PASS" if beyond < RETRIEVAL_MEMORY_TARGET else "FAIL"
    return f"[{verdict}] retrieval_metrics peak beyond the arrays < {RETRIEVAL_MEMORY_TARGET / GIB:.0f} GiB: " \
           f"{beyond / GIB:.2f} GiB"


def rerank_child(version, fraction):
    """In a fresh process: build the inputs of one re-ranking version at 1/fraction of the Market-1501
    sizes, run it once, return its time, peak memory beyond the inputs and, for the bounded
    versions, mAP and rank-1 before and after."""
    sizes = {name: value // fraction for name, value in REID_SIZES.items()}
    query, query_pids, query_camids, gallery, gallery_pids, gallery_camids = market_like_data(sizes, RERANK_DIM)
    if version == "embeddings":
        inputs = (query, gallery)
        run = k_reciprocal_rerank_embeddings
    else:
        inputs = tuple(np.sqrt(faiss.pairwise_distances(a, b)) for a, b in ((query, gallery), (query, query),
                                                                            (gallery, gallery)))
        run = k_reciprocal_rerank if version == "matrices" else direct_rerank
    input_bytes = sum(array.nbytes for array in inputs)

    _reset_peak_memory()
    before = _memory_status("VmRSS")
    start = time.perf_counter()
    reranked = run(*inputs)
    seconds = time.perf_counter() - start
    figures = {"seconds": seconds, "beyond_inputs_bytes": _memory_status("VmHWM") - before,
               "input_bytes": input_bytes, "items": len(query) + len(gallery)}
    labels = (query_pids, query_camids, gallery_pids, gallery_camids)
    if version == "direct":
        bounded = k_reciprocal_rerank(*inputs)
        figures["max_difference"] = float(np.max(np.abs(bounded - reranked)))
    else:
        original = np.sqrt(faiss.pairwise_distances(query, gallery))
        for name, distances in (("before", original), ("after", reranked)):
            metrics = reid_metrics_from_distances(distances, *labels)
            figures[name] = {"mAP": metrics["mAP"], "rank-1": float(metrics["cmc"][0])}
    return figures


def bench_rerank(fraction):
    """The bounded versions at 1/fraction of the Market-1501 sizes next to the direct formulation."""

    def child(version, fraction):
        command = [sys.executable, __file__, "--rerank-child", version, "--fraction", str(fraction)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"the re-ranking child ({version}, 1/{fraction}) failed (exit status "
                               f"{result.returncode}):\n{result.stderr[-2000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    bounded = {version: child(version, fraction) for version in ("matrices", "embeddings")}
    items = bounded["matrices"]["items"]
    direct_fractions = [fraction * f for f in DIRECT_RERANK_FRACTIONS] if fraction == 1 else [fraction]
    direct = {f: child("direct", f) for f in direct_fractions}
    print(f"\nk-reciprocal re-ranking (k1 = 20, k2 = 6, lambda = 0.3): {items:,} items "
          f"(queries + gallery, 1/{fraction} of Market-1501), D = {RERANK_DIM}")
    print(f"{'':<34}{'time s':>10}{'peak GiB':>10}{'inputs GiB':>12}")
    for version, label in (("matrices", "bounded, from distance matrices"), ("embeddings", "bounded, from embeddings")):
        figures = bounded[version]
        print(f"{label:<34}{figures['seconds']:>10.1f}{figures['beyond_inputs_bytes'] / GIB:>10.2f}"
              f"{figures['input_bytes'] / GIB:>12.2f}")
    for figures in direct.values():
        label = f"direct, measured at {figures['items']:,} items"
        print(f"{label:<34}{figures['seconds']:>10.1f}{figures['beyond_inputs_bytes'] / GIB:>10.2f}"
              f"{figures['input_bytes'] / GIB:>12.2f}")
    largest = direct[min(direct)]
    if largest["items"] != items:
        scale = (items / largest["items"]) ** 2
        label = f"direct, {items:,} items (estimated)"
        print(f"{label:<34}{'~' + format(largest['seconds'] * scale, '.0f'):>10}"
              f"{'~' + format(largest['beyond_inputs_bytes'] * scale / GIB, '.1f'):>10}"
              f"{bounded['matrices']['input_bytes'] / GIB:>12.2f}")
        print(f"  estimated: not run at full size (about 5 float32 (Q+G)^2 arrays and minutes); ~ = the figures at "
              f"{largest['items']:,} items x ({items:,}/{largest['items']:,})^2")
    differences = [f"{figures['max_difference']:.1e} (at {figures['items']:,} items)" for figures in direct.values()]
    print("  peak = memory beyond the inputs; direct and bounded results differ by at most " + ", ".join(differences))
    for version in ("matrices", "embeddings"):
        before, after = bounded[version]["before"], bounded[version]["after"]
        print(f"  {version}: mAP {before['mAP']:.4f} -> {after['mAP']:.4f}, rank-1 {before['rank-1']:.4f} -> "
              f"{after['rank-1']:.4f} (before -> after re-ranking)")
    lines = []
    for version in ("matrices", "embeddings"):
        peak = bounded[version]["beyond_inputs_bytes"]
        verdict = "PASS" if peak < RERANK_MEMORY_TARGET else "FAIL"
        lines.append(f"[{verdict}] re-ranking from {version} at {items:,} items, peak beyond the inputs < "
                     f"{RERANK_MEMORY_TARGET / GIB:.0f} GiB: {peak / GIB:.2f} GiB")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a smoke run: 1/8 of the Market-1501 sizes, 1,000 queries x 100,000 reference")
    parser.add_argument("--dim", type=int, default=RETRIEVAL_DIM, help=argparse.SUPPRESS)
    parser.add_argument("--only", choices=("reid", "retrieval", "rerank"), help="run one of the three parts")
    parser.add_argument("--retrieval-child", help=argparse.SUPPRESS)  # internal: sizes as JSON
    parser.add_argument("--rerank-child", help=argparse.SUPPRESS)  # internal: matrices | embeddings | direct
    parser.add_argument("--fraction", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    print(describe(), flush=True)
    if args.retrieval_child:
        print(json.dumps(retrieval_child(json.loads(args.retrieval_child), args.dim)))
        return
    if args.rerank_child:
        print(json.dumps(rerank_child(args.rerank_child, args.fraction)))
        return

    reid_sizes, retrieval_sizes = dict(REID_SIZES), dict(RETRIEVAL_SIZES)
    if args.quick:
        reid_sizes = {name: value // 8 for name, value in REID_SIZES.items()}
        retrieval_sizes.update(reference=100_000, queries=1_000)
    targets = []
    if args.only in (None, "reid"):
        targets.append(bench_reid(reid_sizes, REID_DIM))
    if args.only in (None, "retrieval"):
        targets.append(bench_retrieval(retrieval_sizes, RETRIEVAL_DIM))
    if args.only in (None, "rerank"):
        targets.extend(bench_rerank(8 if args.quick else 1))
    print("\nTargets")
    print("\n".join(targets))


if __name__ == "__main__":
    main()
