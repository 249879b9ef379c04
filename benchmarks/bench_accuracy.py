"""A fair table of every loss on Fashion-MNIST: the protocol of Musgrave et al., "A Metric Learning Reality
Check" (ECCV 2020), scaled down to a CPU:

    python benchmarks/bench_accuracy.py [--quick] [--epochs 2] [--seeds 1]

The protocol's rules, and how they are kept here:
  * the same network, embedding size, batches, optimizer and training budget for every loss: `RECIPE`, the
    MNIST convnet with batch norm, 64 dimensions, L2-normalised as in the paper (retrieval by cosine), shuffled
    batches of 128, Adam 1e-3, the same number of epochs;
  * each loss's own hyperparameter (a margin, scale, temperature, ...) picked on the validation split from
    a small grid (`LOSSES`; the paper searches wider, with Bayesian optimisation), by the precision@1 of the
    5,000 held-out training images against the 55,000 others; the test split is only measured with the pick;
  * the test metrics the paper reports, precision@1, MAP@R and R-precision, of the 10,000 test images against
    the training images, all from `model.evaluation.metrics.retrieval_metrics`;
  * the cross-batch memory (XBM, Wang et al. 2020) beside the losses it was published with.
With `--seeds N` the picked setting of each loss is trained again with N - 1 more seeds, and the test metrics
are their mean ± standard deviation. Every run's figures are printed as it finishes, the table at the end.

`--quick` (the reduced mode, about 20 minutes for all 21 losses on 2 CPU cores): the same grids on 8,000 training
images, validation and test capped at 2,000 images; its picks and ranks are noisier than the full run's.
"""

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.machine import describe  # noqa: E402
from model.app.evaluation import evaluate_run  # noqa: E402
from model.app.training import train  # noqa: E402
from model.params import Params  # noqa: E402

RECIPE = {
    "model": "mnist_convnet", "dataset": "fashion_mnist", "num_channels": 32, "use_batch_norm": True,
    "embedding_size": 64, "l2_normalize": True, "batch_size": 128, "validation_size": 5000,
    "learning_rate": 1e-3, "lr_schedule": {"type": "constant"}, "seed": 230,
}
QUICK = {"train_size": 8_000, "eval_size": 2_000}
MEMORY = {"size": 4096, "warmup_steps": 100}  # 32 batches of 128; filled and used from the second half-epoch
# name -> (the params of the loss, the grid's key, its values). Margins on the unit sphere: distances in [0, 2].
LOSSES = {
    "contrastive": ({"loss": "contrastive"}, "margin", (0.3, 0.5, 0.8)),
    "contrastive + memory": ({"loss": "contrastive", "memory": MEMORY}, "margin", (0.3, 0.5, 0.8)),
    "triplet, batch-all": ({"loss": "batch_all"}, "margin", (0.05, 0.1, 0.2)),
    "triplet, batch-hard": ({"loss": "batch_hard"}, "margin", (0.05, 0.1, 0.2)),
    "triplet, semi-hard": ({"loss": "batch_semihard"}, "margin", (0.05, 0.1, 0.2)),
    "lifted structure": ({"loss": "lifted"}, "margin", (0.5, 1.0, 1.5)),
    "multi-similarity": ({"loss": "multi_similarity"}, "options.base", (0.5, 0.7, 0.85)),
    "multi-similarity + memory": ({"loss": "multi_similarity", "memory": MEMORY}, "options.base", (0.5, 0.7, 0.85)),
    "proxy-NCA": ({"loss": "proxy_nca"}, "options.scale", (1.0, 3.0, 8.0)),
    "softmax (classification)": ({"loss": "softmax"}, None, (None,)),
    "circle": ({"loss": "circle"}, "options.margin", (0.25, 0.4, 0.6)),
    "margin (Wu et al.)": ({"loss": "margin"}, "options.beta", (0.8, 1.0, 1.2)),
    "SupCon": ({"loss": "supcon"}, "options.temperature", (0.05, 0.1, 0.2)),
    "NT-Xent": ({"loss": "ntxent"}, "options.temperature", (0.05, 0.1, 0.2)),
    "FastAP": ({"loss": "fast_ap"}, "options.num_bins", (5, 10, 20)),
    "proxy-anchor": ({"loss": "proxy_anchor"}, "options.alpha", (16.0, 32.0, 64.0)),
    "ArcFace": ({"loss": "arcface"}, "options.scale", (16.0, 32.0, 64.0)),
    "CosFace": ({"loss": "cosface"}, "options.scale", (16.0, 32.0, 64.0)),
    "sub-center ArcFace": ({"loss": "subcenter_arcface"}, "options.scale", (16.0, 32.0, 64.0)),
    "normalized softmax": ({"loss": "normalized_softmax"}, "options.temperature", (0.02, 0.05, 0.1)),
    "SoftTriple": ({"loss": "soft_triple"}, "options.la", (10.0, 20.0, 40.0)),
}


def loss_params(changes, key, value):
    """The params of one grid point: `key` is a params.json key ("margin", "memory", ...) or "options.NAME", one
    of the loss's own options (params.json's "loss_options"), which the losses from pytorch-metric-learning
    take their margins in."""
    if key is None:
        return dict(changes)
    if key.startswith("options."):
        return {**changes, "loss_options": {key.removeprefix("options."): value}}
    return {**changes, key: value}


def trained(recipe, changes, run_dir):
    """Train one setting into `run_dir`; its training seconds."""
    started = time.time()
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the table, not each run's epochs
        train(Params.from_dict({**recipe, **changes}), run_dir)
    return time.time() - started


def measured(run_dir, split):
    """The metrics of a trained run's `split` queried against its training images."""
    return evaluate_run(run_dir, split, verbose=False)["vs_train"]


def spread(values):
    """'mean' for one value, 'mean ± standard deviation' for several."""
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the reduced mode: 8,000 training images")
    parser.add_argument("--epochs", type=int, default=2, help="the training budget of every run, in epochs")
    parser.add_argument("--seeds", type=int, default=1, help="test runs of each loss's pick (seeds 230, 231, ...)")
    parser.add_argument("--losses", nargs="+", choices=list(LOSSES), default=list(LOSSES), metavar="LOSS",
                        help=f"a subset of: {', '.join(repr(name) for name in LOSSES)}")
    args = parser.parse_args(argv)
    print(describe(), flush=True)
    if args.epochs < 1 or args.seeds < 1:
        parser.error("--epochs and --seeds must be positive")
    recipe = {**RECIPE, "num_epochs": args.epochs, **(QUICK if args.quick else {})}
    print(f"Fashion-MNIST, {json.dumps(recipe)}; {os.cpu_count()} CPU cores", flush=True)
    table, started = [], time.time()
    with tempfile.TemporaryDirectory() as scratch:
        for number, name in enumerate(args.losses):
            changes, key, grid = LOSSES[name]
            option = key.removeprefix("options.") if key else None  # as the table shows it
            tried = []  # (validation precision@1, training seconds, value, setting, run folder) per grid point
            for index, value in enumerate(grid):
                setting, run_dir = loss_params(changes, key, value), os.path.join(scratch, f"{number}_{index}")
                seconds = trained(recipe, setting, run_dir)
                validation = measured(run_dir, "validation")["precision_at_1"]
                tried.append((validation, seconds, value, setting, run_dir))
                print(f"  {name}, {option}={value}: validation precision@1 {validation:.4f}, "
                      f"trained in {seconds:.0f}s", flush=True)
            _, seconds, value, setting, run_dir = max(tried, key=lambda item: item[0])
            tests, times = [measured(run_dir, "test")], [seconds]  # the test split, for the pick only
            for seed in range(recipe["seed"] + 1, recipe["seed"] + args.seeds):
                run_dir = os.path.join(scratch, f"{number}_{seed}")
                times.append(trained({**recipe, "seed": seed}, setting, run_dir))
                tests.append(measured(run_dir, "test"))
            picked = f"{option}={value}" if key else "-"
            table.append((name, picked, tests, times))
            print(f"{name}: picked {picked}; test precision@1 {spread([t['precision_at_1'] for t in tests])}",
                  flush=True)
    seeds = ", ".join(str(recipe["seed"] + s) for s in range(args.seeds))
    print(f"\nTest split ({'2,000' if args.quick else '10,000'} images) against the training images; "
          f"{args.epochs} epochs per run; seeds {seeds}; {(time.time() - started) / 60:.1f} minutes in all")
    print(f"{'loss':<28}{'picked':<20}{'precision@1':>18}{'MAP@R':>18}{'R-precision':>18}{'train s':>9}")
    for name, picked, tests, times in table:
        cells = [spread([t[metric] for t in tests]) for metric in ("precision_at_1", "map_at_r", "r_precision")]
        print(f"{name:<28}{picked:<20}" + "".join(f"{cell:>18}" for cell in cells) + f"{statistics.mean(times):>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
