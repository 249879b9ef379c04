"""Training throughput of an experiment, next to its input pipeline alone, measured in one run.

    python benchmarks/bench_training.py [--model_dir experiments/base_model] [--steps 60] [--mixed_precision]

Prints images per second of (1) the input pipeline alone (decode, augment, batch: what
`make_dataset` delivers), (2) the training step alone (forward, mined loss, backward, update) fed
from one batch cached in memory, and their ratio: the pipeline must deliver at least 5× what the
step consumes, or training waits for data. Each figure is the median of three timed windows after
a warm-up. `--mixed_precision` trains in mixed_float16 (meaningful on a GPU).

When the network has batch norm, it also times the same step with each of the toolkit's fused batch
norm layers (`model/nets/batch_norm.py`) replaced by Keras's own `BatchNormalization`, interleaved with the
first so both see the same machine, and prints the speed-up.
"""

import argparse
import functools
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from benchmarks.machine import describe  # noqa: E402
from model.app import adapter  # noqa: E402
from model.nets.batch_norm import FusedBatchNormalization, with_keras_batch_norm  # noqa: E402
from model.params import Params  # noqa: E402
from model.run import RunFolder  # noqa: E402
from model.training.model import EmbeddingModel  # noqa: E402

TARGET_RATIO = 5.0
STEP = "training step alone (cached batch)"
KERAS_BATCH_NORM_STEP = "same step, Keras's batch norm"


def _median_rates(run_windows, images_per_window, windows=3):
    """Images/s of each named window: the median of `windows` timed runs after a warm-up run.

    The windows take turns, so a machine that slows down or speeds up affects them alike.
    """
    for run_window in run_windows.values():
        run_window()  # warm-up: tracing, first allocations
    times = {name: [] for name in run_windows}
    for _ in range(windows):
        for name, run_window in run_windows.items():
            start = time.perf_counter()
            run_window()
            times[name].append(time.perf_counter() - start)
    return {name: images_per_window / statistics.median(t) for name, t in times.items()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_dir", default="experiments/base_model")
    parser.add_argument("--steps", type=int, default=60, help="batches per timed window")
    parser.add_argument("--mixed_precision", action="store_true")
    args = parser.parse_args(argv)
    print(describe(), flush=True)

    params = Params.load(os.path.join(args.model_dir, "params.json")).replace(mixed_precision=args.mixed_precision)
    # The run's own data, as training prepares it (validation hold-out, train_size, class mapping).
    source = adapter.data_source(params, class_names=RunFolder(args.model_dir).class_names())
    params = adapter.resolve(params, source)
    if params.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    batches = adapter.training_batches(params)
    data, batch = batches.dataset(source.splits["train"]), batches.size

    iterator = iter(data)

    def pipeline_window():
        for _ in range(args.steps):
            next(iterator)

    network = adapter.network(params)
    networks = {STEP: network}
    if any(isinstance(layer, FusedBatchNormalization) for layer in network._flatten_layers()):
        networks[KERAS_BATCH_NORM_STEP] = with_keras_batch_norm(network)
    cached = data.take(1).cache().repeat()
    windows = {}
    for name, net in networks.items():
        model = EmbeddingModel(net, adapter.loss(params, int(net.output_shape[-1])))
        model.compile(optimizer=adapter.optimizer(params))
        windows[name] = functools.partial(
            model.fit, cached, steps_per_epoch=args.steps, epochs=1, shuffle=False, verbose=0
        )

    pipeline = _median_rates({"pipeline": pipeline_window}, args.steps * batch)["pipeline"]
    steps = _median_rates(windows, args.steps * batch)
    step = steps[STEP]
    devices = [d.device_type for d in tf.config.list_logical_devices()]
    device = "GPU" if "GPU" in devices else f"CPU ({os.cpu_count()} cores)"
    precision = "mixed_float16" if params.mixed_precision else "float32"
    ratio = pipeline / step
    print(f"{args.model_dir}: {params.model} on {params.dataset}, batch {batch}, {device}, {precision}")
    print(f"{'what':<34}{'images/s':>12}")
    print(f"{'input pipeline alone':<34}{pipeline:>12,.0f}")
    for name, rate in steps.items():
        print(f"{name:<34}{rate:>12,.0f}")
    if len(steps) > 1:
        print(f"fused batch norm: {step / steps[KERAS_BATCH_NORM_STEP]:.2f}x the step with Keras's batch norm")
    verdict = "ok" if ratio >= TARGET_RATIO else "MISSED"
    print(f"pipeline / training = {ratio:.1f}x (target >= {TARGET_RATIO:.0f}x: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
