"""Loss benchmark: forward + backward time and peak memory of every loss, against two references.

For each batch size B (default 64, 256, 1024, 4096; D = 128; P×K batches with K = 4 items per
class; L2-normalised random embeddings), one table shows side by side:
  * `distance matrix`: the pairwise euclidean distance matrix alone, summed (the floor: every
    loss needs it); the `x distance` column is each entry's time over this one;
  * every loss of the registry (model/losses/), with its default options;
  * the direct [B, B, B] formulations of batch-all and semi-hard (benchmarks/direct_losses.py);
    the `speedup vs direct` column is the direct time over the library time.

Time. Each entry is one `tf.function`-compiled step that computes the loss and its gradient with
respect to the embeddings (and to the loss's own weights: the Proxy-NCA proxies). It runs once to
warm up (tracing), then `--repeats` times; the median wall time is reported.

Peak memory. Every (entry, B) runs in a fresh child process, so that nothing allocated by an
earlier measurement is counted. On CPU the figure is the child's peak resident set size
(`ru_maxrss`) minus that of a baseline child which does everything the same (imports TensorFlow,
allocates the inputs, runs a trivial step as many times) except the loss. On a GPU it is the
peak of `tf.config.experimental.get_memory_info` minus the memory in use before the first step.

The direct formulations are not run where they cannot fit: their peak is estimated as
DIRECT_FLOAT_TENSORS float32 [B, B, B] tensors (measured at B = 512 on CPU: 4.3 for batch-all and
1.6 for semi-hard, rounded up here) and compared with half the memory available when the run
starts (the machine may be shared). Where one does not fit at B = 1024, the size of the speedup
target, it is measured at the largest multiple of 64 that fits, B', and its time at B is
extrapolated as t(B')·(B/B')³ (marked "~"); the speedup target then uses that estimate.

Targets (printed PASS / FAIL at the end):
  * batch-all at B = 1024 at least 30x faster than the direct formulation;
  * every loss at B = 4096 within 2 GiB peak memory;
  * at B = 1024, batch-all and semi-hard within 8x the distance matrix time, every other loss within 3x.

Usage:
    python benchmarks/bench_losses.py                       # the full run (several minutes)
    python benchmarks/bench_losses.py --quick               # B = 64 and 256, 3 repeats
    python benchmarks/bench_losses.py --sizes 256 1024 --repeats 5
"""
import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# Run as a script (`python benchmarks/bench_losses.py`): the repository root must be importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from benchmarks.direct_losses import (  # noqa: E402
    direct_batch_all_triplet_loss,
    direct_batch_semihard_triplet_loss,
)
from benchmarks.machine import describe  # noqa: E402
from model.losses import LOSSES, get_loss  # noqa: E402
from model.losses.distances import pairwise_distances  # noqa: E402

DIM = 128
ITEMS_PER_CLASS = 4
MARGIN = 0.5  # for the direct formulations: the default margin of the library's triplet losses
GIB, MIB = 2**30, 2**20
FLOOR = "distance matrix"
BASELINE = "baseline"
# Peak of one direct step (forward + backward) in float32 [B, B, B] tensors (see the module docstring).
DIRECT_FLOAT_TENSORS = {"direct batch_all": 4.5, "direct batch_semihard": 2.0}
SPEEDUP_SIZE, SPEEDUP_TARGET = 1024, 30.0
MEMORY_SIZE, MEMORY_TARGET = 4096, 2 * GIB
RATIO_SIZE, RATIO_TARGETS, DEFAULT_RATIO_TARGET = 1024, {"batch_all": 8.0, "batch_semihard": 8.0}, 3.0


def loss_options(name, batch_size, dim):
    """Constructor options of a registry loss that has required arguments (Proxy-NCA: one proxy per class)."""
    if name == "proxy_nca":
        return {"num_classes": math.ceil(batch_size / ITEMS_PER_CLASS), "embedding_size": dim}
    return {}


def build_loss(entry, batch_size, dim):
    """(loss_fn(labels, embeddings) -> scalar, trainable variables of the loss) for one table entry."""
    if entry == BASELINE:
        return (lambda labels, embeddings: ops.sum(embeddings)), []
    if entry == FLOOR:
        return (lambda labels, embeddings: ops.sum(pairwise_distances(embeddings))), []
    if entry == "direct batch_all":
        return (lambda labels, embeddings: direct_batch_all_triplet_loss(labels, embeddings, MARGIN)[0]), []
    if entry == "direct batch_semihard":
        return (lambda labels, embeddings: direct_batch_semihard_triplet_loss(labels, embeddings, MARGIN)), []
    loss = get_loss(entry, **loss_options(entry, batch_size, dim))
    proxy_layer = getattr(loss, "proxy_layer", None)
    return loss, list(proxy_layer.trainable_variables) if proxy_layer is not None else []


def make_inputs(batch_size, dim):
    """labels [B] int32 (ITEMS_PER_CLASS items per class) and L2-normalised embeddings [B, dim] float32."""
    rng = np.random.default_rng(0)
    labels = np.arange(batch_size) // ITEMS_PER_CLASS
    embeddings = rng.normal(size=(batch_size, dim)).astype(np.float32)
    return tf.constant(labels, tf.int32), tf.constant(embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True))


def time_step(loss_fn, labels, embeddings, variables, repeats):
    """Time one compiled loss + gradient step in this process: {"time_s": median step time, "peak_bytes", "gpu"}.

    loss_fn(labels, embeddings) -> scalar; the gradient is taken with respect to the embeddings
    and to `variables` (the loss's own weights).
    """

    @tf.function
    def step(labels, embeddings):
        with tf.GradientTape() as tape:
            tape.watch(embeddings)
            loss = loss_fn(labels, embeddings)
        return loss, tape.gradient(loss, [embeddings, *variables])

    gpu = bool(tf.config.list_physical_devices("GPU"))
    if gpu:
        tf.config.experimental.reset_memory_stats("GPU:0")
        memory_before = tf.config.experimental.get_memory_info("GPU:0")["current"]
    times = []
    for _ in range(repeats + 1):  # the first run traces the function: a warm-up, not timed
        start = time.perf_counter()
        loss, gradients = step(labels, embeddings)
        float(loss)
        [gradient.numpy() for gradient in gradients]  # the step is over once its outputs are on the host
        times.append(time.perf_counter() - start)
    if gpu:
        peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] - memory_before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # ru_maxrss is in KiB on Linux
    return {"time_s": statistics.median(times[1:]), "peak_bytes": peak, "gpu": gpu}


def run_child(entry, batch_size, dim, repeats):
    """Measure one entry in this (fresh) process (see `time_step`)."""
    labels, embeddings = make_inputs(batch_size, dim)
    loss_fn, variables = build_loss(entry, batch_size, dim)
    return time_step(loss_fn, labels, embeddings, variables, repeats)


def run_in_child(script, child_args, description):
    """`script --child *child_args` in a fresh process: the JSON of its last output line, or {"note": why it failed}."""
    print(f"  {description} ...", file=sys.stderr, flush=True)
    result = subprocess.run([sys.executable, script, "--child", *child_args], capture_output=True, text=True)
    if result.returncode != 0:
        why = f"killed by signal {-result.returncode}" if result.returncode < 0 else f"exit status {result.returncode}"
        last_lines = " | ".join(result.stderr.strip().splitlines()[-3:])
        return {"note": f"failed ({why}) {last_lines}".strip()}
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure(entry, batch_size, dim, repeats):
    """`run_child` in a fresh process: its result, or {"note": why it failed}."""
    child_args = [entry, "--sizes", str(batch_size), "--dim", str(dim), "--repeats", str(repeats)]
    return run_in_child(__file__, child_args, f"B={batch_size}: {entry}")


def available_memory():
    """Bytes of memory available now: MemAvailable of /proc/meminfo, else the free physical pages."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def direct_estimate(entry, batch_size):
    """Estimated peak bytes of one direct step: DIRECT_FLOAT_TENSORS float32 [B, B, B] tensors."""
    return DIRECT_FLOAT_TENSORS[entry] * 4 * batch_size**3


def largest_fitting_size(entry, budget):
    """The largest multiple of 64 (at least 64) whose direct estimate fits in `budget` bytes."""
    return max(int((budget / direct_estimate(entry, 1)) ** (1 / 3)) // 64 * 64, 64)


def measure_direct(entry, batch_size, dim, repeats, budget):
    """A direct formulation at `batch_size`: measured if it fits in `budget` bytes, else a note.

    At SPEEDUP_SIZE, a direct formulation that does not fit is measured at the largest size B' that
    does and its time extrapolated as t(B')·(B/B')³: the [B, B, B] work dominates and grows as B³.
    """
    estimate = direct_estimate(entry, batch_size)
    if estimate <= budget:
        return measure(entry, batch_size, dim, repeats)
    why = (
        f"not run: estimated {estimate / GIB:.1f} GiB ({DIRECT_FLOAT_TENSORS[entry]:g} float32 [B,B,B] tensors of"
        f" {4 * batch_size**3 / GIB:.2f} GiB) > budget {budget / GIB:.1f} GiB (half the available memory)"
    )
    if batch_size != SPEEDUP_SIZE:
        return {"note": why}
    size = largest_fitting_size(entry, budget)
    result = measure(entry, size, dim, repeats)
    if "time_s" not in result:
        return {"note": f"{why}; at B={size}: {result['note']}"}
    return {
        "time_s": result["time_s"] * (batch_size / size) ** 3,
        "extrapolated": True,
        "note": f"{why}; ~ = t(B={size}) x ({batch_size}/{size})^3, measured at B={size}: "
        f"{result['time_s'] * 1000:.0f} ms, peak {result['peak_bytes'] / GIB:.1f} GiB (whole process)",
    }


def measure_size(batch_size, dim, repeats, budget, entries):
    """{entry: result} for every entry at one batch size; peaks are made relative to the baseline child."""
    baseline = measure(BASELINE, batch_size, dim, repeats)
    results = {}
    for entry in entries:
        if entry in DIRECT_FLOAT_TENSORS:
            results[entry] = measure_direct(entry, batch_size, dim, repeats, budget)
        else:
            results[entry] = measure(entry, batch_size, dim, repeats)
        if "extrapolated" not in results[entry]:  # else its peak belongs to another batch size
            subtract_baseline(results[entry], baseline, f"B={batch_size}")
    return results


def subtract_baseline(result, baseline, where):
    """Make a CPU peak of `result` relative to the baseline process's peak, in place (GPU peaks already are)."""
    if "peak_bytes" in result and not result["gpu"]:
        if "peak_bytes" not in baseline:
            raise RuntimeError(f"The baseline process at {where} failed: {baseline['note']}")
        result["peak_bytes"] = max(result["peak_bytes"] - baseline["peak_bytes"], 0)


def format_table(batch_size, dim, results):
    """The printed table of one batch size, with its notes."""
    floor = results[FLOOR].get("time_s")
    lines = [
        f"B = {batch_size}, D = {dim}, {ITEMS_PER_CLASS} items per class: loss + gradient",
        f"{'entry':<24}{'time ms':>12}{'peak MiB':>11}{'x distance':>12}{'speedup vs direct':>19}",
    ]
    notes = []
    for entry, result in results.items():
        mark = "~" if "extrapolated" in result else ""
        time_ms = f"{mark}{result['time_s'] * 1000:.1f}" if "time_s" in result else "-"
        peak = f"{result['peak_bytes'] / MIB:.0f}" if "peak_bytes" in result else "-"
        ratio = f"{result['time_s'] / floor:.1f}" if "time_s" in result and floor else "-"
        direct = results.get(f"direct {entry}", {})
        speedup = f"{direct['time_s'] / result['time_s']:.0f}x" if "time_s" in direct and "time_s" in result else ""
        lines.append(f"{entry:<24}{time_ms:>12}{peak:>11}{ratio:>12}{speedup:>19}")
        if "note" in result:
            notes.append(f"  {entry}: {result['note']}")
    return "\n".join(lines + (["notes:", *notes] if notes else []))


def check_targets(all_results, loss_names):
    """PASS / FAIL lines for the targets of the module docstring ("----" where a size was not measured)."""

    def verdict(ok):
        return "PASS" if ok else "FAIL"

    lines = []
    at = all_results.get(SPEEDUP_SIZE)
    if at and "time_s" in at["batch_all"] and "time_s" in at["direct batch_all"]:
        speedup = at["direct batch_all"]["time_s"] / at["batch_all"]["time_s"]
        how = " (direct time extrapolated, see the notes)" if "extrapolated" in at["direct batch_all"] else ""
        lines.append(
            f"[{verdict(speedup >= SPEEDUP_TARGET)}] batch_all at B={SPEEDUP_SIZE} >= {SPEEDUP_TARGET:.0f}x faster "
            f"than direct: {speedup:.0f}x{how}"
        )
    else:
        lines.append(f"[----] batch_all speedup over direct at B={SPEEDUP_SIZE}: not measured")

    at = all_results.get(MEMORY_SIZE)
    for name in loss_names if at else []:
        peak = at[name].get("peak_bytes")
        text = f"{peak / GIB:.2f} GiB" if peak is not None else at[name]["note"]
        ok = peak is not None and peak <= MEMORY_TARGET
        lines.append(f"[{verdict(ok)}] {name} at B={MEMORY_SIZE} peak <= {MEMORY_TARGET / GIB:.0f} GiB: {text}")
    if not at:
        lines.append(f"[----] peak memory at B={MEMORY_SIZE}: not measured")

    at = all_results.get(RATIO_SIZE)
    floor = at[FLOOR].get("time_s") if at else None
    for name in loss_names if floor else []:
        limit = RATIO_TARGETS.get(name, DEFAULT_RATIO_TARGET)
        ratio = at[name]["time_s"] / floor if "time_s" in at[name] else None
        text = f"{ratio:.1f}x" if ratio is not None else at[name]["note"]
        ok = ratio is not None and ratio <= limit
        lines.append(f"[{verdict(ok)}] {name} at B={RATIO_SIZE} <= {limit:g}x the distance matrix time: {text}")
    if not floor:
        lines.append(f"[----] time ratios at B={RATIO_SIZE}: not measured")
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256, 1024, 4096], help="batch sizes B")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per entry, after one warm-up run")
    parser.add_argument("--quick", action="store_true", help="a smoke run: B = 64 and 256, 3 repeats")
    parser.add_argument("--dim", type=int, default=DIM, help="embedding dimension D")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: measure one entry, print JSON
    args = parser.parse_args(argv)
    print(describe(), flush=True)
    if args.quick:
        args.sizes, args.repeats = [64, 256], 3
    if args.repeats < 1 or args.dim < 1 or min(args.sizes) < 2:
        parser.error(f"expected --repeats >= 1, --dim >= 1, --sizes >= 2; got {args.repeats}, {args.dim}, {args.sizes}")
    if args.child:
        print(json.dumps(run_child(args.child, args.sizes[0], args.dim, args.repeats)))
        return

    loss_names = list(LOSSES)
    entries = [FLOOR, *loss_names, *DIRECT_FLOAT_TENSORS]
    budget = available_memory() / 2
    print(f"Losses: median of {args.repeats} runs after a warm-up; peak memory beyond a baseline process.")
    print(f"Memory budget of the direct formulations: {budget / GIB:.1f} GiB (half the available memory).")
    all_results = {}
    for batch_size in args.sizes:
        all_results[batch_size] = measure_size(batch_size, args.dim, args.repeats, budget, entries)
        print("\n" + format_table(batch_size, args.dim, all_results[batch_size]), flush=True)
    print("\nTargets")
    print("\n".join(check_targets(all_results, loss_names)))


if __name__ == "__main__":
    main()
