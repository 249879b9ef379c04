"""Does the cross-batch memory pay? Fashion-MNIST, the MNIST convnet, the same epochs, side by side in one run:

    python benchmarks/bench_memory.py [--epochs 2] [--quick]

  batch 32                       mining in the batch of 32 alone
  batch 32 + memory of 8,192     the same, each batch also mined against the last 8,192 embeddings (XBM)
  batch 256                      a batch eight times larger, no memory

Each run trains through `train` (contrastive loss, margin 0.5, L2-normalised embeddings, as in the XBM
paper; Adam 1e-3; seed 230) and is measured through `evaluate_run`: precision@1 and MAP@R of the
10,000 test images against the training images, with the training time. `--quick` trains on 12,000
images and evaluates 2,000. Report what it measures, gains or not.
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.machine import describe  # noqa: E402
from model.app.evaluation import evaluate_run  # noqa: E402
from model.app.training import train  # noqa: E402
from model.params import Params  # noqa: E402

RECIPE = {
    "model": "mnist_convnet", "dataset": "fashion_mnist", "num_channels": 32, "use_batch_norm": True,
    "embedding_size": 64, "l2_normalize": True, "loss": "contrastive", "margin": 0.5, "validation_size": 0,
    "learning_rate": 1e-3, "seed": 230, "save_summary_steps": 1000,
}  # fmt: skip
RUNS = (
    ("batch 32", {"batch_size": 32}),
    ("batch 32 + memory of 8,192", {"batch_size": 32, "memory": {"size": 8192, "warmup_steps": 500}}),
    ("batch 256", {"batch_size": 256}),
)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="12,000 training images, 2,000 test images")
    args = parser.parse_args(argv)
    print(describe(), flush=True)
    sizes = {"train_size": 12_000, "eval_size": 2_000} if args.quick else {}
    print(f"Fashion-MNIST, mnist_convnet, contrastive (margin 0.5, L2), {args.epochs} epochs, "
          f"{sizes.get('train_size', 'all')} training images, {os.cpu_count()} CPU cores")
    print(f"{'run':<30}{'precision@1':>13}{'MAP@R':>9}{'train s':>10}")
    with tempfile.TemporaryDirectory() as scratch:
        for number, (name, changes) in enumerate(RUNS):
            run = os.path.join(scratch, f"run{number}")
            params = Params.from_dict({**RECIPE, **sizes, **changes, "num_epochs": args.epochs})
            started = time.perf_counter()
            train(params, run)
            seconds = time.perf_counter() - started
            found = evaluate_run(run, "test", verbose=False)["vs_train"]
            print(f"{name:<30}{found['precision_at_1']:>13.4f}{found['map_at_r']:>9.4f}{seconds:>10.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
