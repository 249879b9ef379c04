"""Losses against a reference set: forward + backward time and peak memory, next to the same loss in the batch.

For each (B, R) (default B = 128 with R = 8,192 and B = 1,024 with R = 65,536; D = 128), one table
shows every pair and triplet loss side by side:
  * "batch": the loss over the batch alone (the registry's Keras loss with its default options,
    measured by benchmarks/bench_losses.py's own child process);
  * "references": the loss function with the anchors = the batch and the references = the batch
    followed by a memory of R - B earlier embeddings (`ref_embeddings = concat(batch, memory)`,
    `remove_diagonal=True`), as a cross-batch memory calls it; the memory carries no gradient.
The batch has 4 items per class (classes 0 .. B/4 - 1); the memory draws its labels uniformly from
R/16 classes, which include the batch's, so every anchor has positives in the memory. Embeddings
are random and L2-normalised.

Time and memory are measured as in bench_losses.py (its helpers): a `tf.function` step computes the
loss and its gradient with respect to the batch's embeddings, runs once to warm up and then
`--repeats` times (median wall time); each entry runs in a fresh child process, and the peak is its
resident set size beyond a baseline child that allocates the same inputs (memory included) and
runs a trivial step (on a GPU, the peak of the device's memory).

Usage:
    python benchmarks/bench_reference_losses.py            # the full run (B=128/R=8,192, B=1,024/R=65,536)
    python benchmarks/bench_reference_losses.py --quick    # B=128/R=8,192 and B=1,024/R=16,384, 2 repeats
    python benchmarks/bench_reference_losses.py --pairs 256:4096 --repeats 3
"""

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Run as a script (`python benchmarks/bench_reference_losses.py`): the repository root must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from benchmarks.bench_losses import (  # noqa: E402
    BASELINE,
    DIM,
    ITEMS_PER_CLASS,
    MIB,
    make_inputs,
    measure,
    run_in_child,
    subtract_baseline,
    time_step,
)
from benchmarks.machine import describe  # noqa: E402
from model.losses import contrastive_loss, lifted_struct_loss, multi_similarity_loss  # noqa: E402
from model.triplet_loss import (  # noqa: E402
    batch_all_triplet_loss,
    batch_hard_triplet_loss,
    batch_semihard_triplet_loss,
)

# name in the registry: the loss function with the defaults of its Keras class, given the references.
FUNCTIONS = {
    "batch_all": lambda y, e, **refs: batch_all_triplet_loss(y, e, 0.5, **refs)[0],
    "batch_hard": lambda y, e, **refs: batch_hard_triplet_loss(y, e, 0.5, **refs),
    "batch_semihard": lambda y, e, **refs: batch_semihard_triplet_loss(y, e, 0.5, **refs),
    "contrastive": lambda y, e, **refs: contrastive_loss(y, e, 1.0, **refs),
    "lifted": lambda y, e, **refs: lifted_struct_loss(y, e, 1.0, **refs),
    "multi_similarity": lambda y, e, **refs: multi_similarity_loss(y, e, **refs),
}
MEMORY_ITEMS_PER_CLASS = 16
FULL_PAIRS, QUICK_PAIRS = [(128, 8192), (1024, 65536)], [(128, 8192), (1024, 16384)]


def make_memory(batch_size, num_references, dim):
    """Memory labels [R - B] int32 (R/16 classes, the batch's included) and L2-normalised embeddings [R - B, dim]."""
    rng = np.random.default_rng(1)
    size = num_references - batch_size
    labels = rng.integers(0, max(num_references // MEMORY_ITEMS_PER_CLASS, 1), size=size)
    embeddings = rng.normal(size=(size, dim)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return tf.constant(labels, tf.int32), tf.constant(embeddings)


def run_child(entry, batch_size, num_references, dim, repeats):
    """Measure one entry with references in this (fresh) process (see bench_losses.time_step)."""
    labels, embeddings = make_inputs(batch_size, dim)
    memory_labels, memory = make_memory(batch_size, num_references, dim)
    if entry == BASELINE:  # the same inputs, memory included, and a trivial step
        return time_step(lambda y, e: ops.sum(e) + ops.sum(memory), labels, embeddings, [], repeats)

    def loss_fn(y, e):
        ref_labels, ref_embeddings = ops.concatenate([y, memory_labels]), ops.concatenate([e, memory])
        return FUNCTIONS[entry](y, e, ref_labels=ref_labels, ref_embeddings=ref_embeddings)

    return time_step(loss_fn, labels, embeddings, [], repeats)


def measure_pair(batch_size, num_references, dim, repeats):
    """{loss name: {"batch": result, "references": result}} at one (B, R), peaks relative to their baselines."""
    batch_baseline = measure(BASELINE, batch_size, dim, repeats)
    child_args = ["--pairs", f"{batch_size}:{num_references}", "--dim", str(dim), "--repeats", str(repeats)]
    where = f"B={batch_size}, R={num_references}"
    reference_baseline = run_in_child(__file__, [BASELINE, *child_args], f"{where}: {BASELINE}")
    results = {}
    for name in FUNCTIONS:
        in_batch = measure(name, batch_size, dim, repeats)
        subtract_baseline(in_batch, batch_baseline, f"B={batch_size}")
        with_references = run_in_child(__file__, [name, *child_args], f"{where}: {name}")
        subtract_baseline(with_references, reference_baseline, where)
        results[name] = {"batch": in_batch, "references": with_references}
    return results


def format_table(batch_size, num_references, dim, results):
    """The printed table of one (B, R), with its notes."""

    def cells(result):
        time_ms = f"{result['time_s'] * 1000:.1f}" if "time_s" in result else "-"
        peak = f"{result['peak_bytes'] / MIB:.0f}" if "peak_bytes" in result else "-"
        return time_ms, peak

    lines = [
        f"B = {batch_size} anchors, R = {num_references:,} references (batch + memory), D = {dim}: loss + gradient",
        f"{'loss':<18}{'batch ms':>10}{'peak MiB':>10}{'refs ms':>12}{'peak MiB':>10}{'time x':>8}{'memory x':>10}",
    ]
    notes = []
    for name, pair in results.items():
        (batch_ms, batch_peak), (refs_ms, refs_peak) = cells(pair["batch"]), cells(pair["references"])
        both = "time_s" in pair["batch"] and "time_s" in pair["references"]
        ratio = f"{pair['references']['time_s'] / pair['batch']['time_s']:.1f}" if both else "-"
        peaks = [pair[side].get("peak_bytes") for side in ("batch", "references")]
        memory_ratio = f"{peaks[1] / peaks[0]:.1f}" if None not in peaks and peaks[0] > 0 else "-"
        row = f"{name:<18}{batch_ms:>10}{batch_peak:>10}{refs_ms:>12}{refs_peak:>10}{ratio:>8}{memory_ratio:>10}"
        lines.append(row)
        notes += [f"  {name} ({side}): {pair[side]['note']}" for side in pair if "note" in pair[side]]
    return "\n".join(lines + (["notes:", *notes] if notes else []))


def parse_pair(text):
    """Parse "B:R" into (B, R), with 1 <= B <= R."""
    batch_size, num_references = (int(x) for x in text.split(":"))
    if not 1 <= batch_size <= num_references:
        raise argparse.ArgumentTypeError(f"expected B:R with 1 <= B <= R, got {text!r}")
    return batch_size, num_references


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=parse_pair, nargs="+", default=FULL_PAIRS, help="B:R pairs, e.g. 128:8192")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per entry, after one warm-up run")
    parser.add_argument("--quick", action="store_true", help="B:R = 128:8192 and 1024:16384, 2 repeats")
    parser.add_argument("--dim", type=int, default=DIM, help="embedding dimension D")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure one entry, print JSON
    args = parser.parse_args(argv)
    print(describe(), flush=True)
    if args.quick:
        args.pairs, args.repeats = QUICK_PAIRS, 2
    if args.repeats < 1 or args.dim < 1:
        parser.error(f"expected --repeats >= 1 and --dim >= 1, got {args.repeats} and {args.dim}")
    if args.child:
        print(json.dumps(run_child(args.child, *args.pairs[0], args.dim, args.repeats)))
        return

    print(f"Losses with references: median of {args.repeats} runs after a warm-up; peak memory beyond a baseline")
    print(f"process; the batch has {ITEMS_PER_CLASS} items per class, the memory {MEMORY_ITEMS_PER_CLASS} per class.")
    for batch_size, num_references in args.pairs:
        results = measure_pair(batch_size, num_references, args.dim, args.repeats)
        print("\n" + format_table(batch_size, num_references, args.dim, results), flush=True)


if __name__ == "__main__":
    main()
