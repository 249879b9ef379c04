"""Two open questions of the classic TensorFlow triplet-loss code, answered by measurement on Fashion-MNIST:

    python benchmarks/bench_choices.py [--epochs 3] [--quick]

1. "L2 norm or cosine distance, which is better?": the same loss on raw embeddings (euclidean distance) and
   on L2-normalised ones (`l2_normalize`: the euclidean distance of unit vectors is a function of the cosine,
   |a - b|² = 2 - 2 cos, so this is the cosine ranking), margins suited to each scale (0.5 raw; 0.2 on the
   unit sphere, where distances lie in [0, 2]).
2. "Is switching from batch-all to batch-hard necessary?": batch-all alone, batch-hard alone, and batch-all
   for the first part of the budget then batch-hard (warm start, `--restore_from`), the same total epochs.

Every run: `experiments/base_model`'s recipe (MNIST convnet with batch norm, batches of 128, Adam 1e-3,
seed 230) for the same number of epochs, measured through `evaluate_run`: precision@1 and MAP@R of the
10,000 test images against the 55,000 training images. `--quick` trains on 12,000 images, evaluates 2,000.
"""

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.machine import describe  # noqa: E402
from model.app.evaluation import evaluate_run  # noqa: E402
from model.app.training import train  # noqa: E402
from model.params import Params  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(describe(), flush=True)
    with open(os.path.join(ROOT, "experiments", "base_model", "params.json")) as handle:
        recipe = {**json.load(handle), "validation_size": 0, "num_epochs": args.epochs}
    recipe["lr_schedule"] = {"type": "constant"}  # the same rate throughout, whatever the split of the epochs
    if args.quick:
        recipe.update(train_size=12_000, eval_size=2_000)
    first = max(1, args.epochs // 3)
    runs = [
        ("batch-all, euclidean (margin 0.5)", {"loss": "batch_all", "margin": 0.5}, None),
        ("batch-all, L2-normalised (margin 0.2)", {"loss": "batch_all", "margin": 0.2, "l2_normalize": True}, None),
        ("batch-hard, euclidean (margin 0.5)", {"loss": "batch_hard", "margin": 0.5}, None),
        ("batch-hard, L2-normalised (margin 0.2)", {"loss": "batch_hard", "margin": 0.2, "l2_normalize": True}, None),
        (f"batch-all {first} epoch(s), then batch-hard", {"loss": "batch_hard", "margin": 0.5}, first),
    ]
    print(f"Fashion-MNIST, base_model recipe (constant lr 1e-3), {args.epochs} epochs per run, "
          f"{recipe.get('train_size', 'all')} training images, {os.cpu_count()} CPU cores")
    print(f"{'run':<44}{'precision@1':>13}{'MAP@R':>9}")
    with tempfile.TemporaryDirectory() as scratch:
        for number, (name, changes, switch) in enumerate(runs):
            run = os.path.join(scratch, f"run{number}")
            restore = None
            if switch is not None:  # the first epochs with batch-all, in a run of their own
                restore = os.path.join(scratch, f"run{number}_first")
                train(Params.from_dict({**recipe, "loss": "batch_all", "num_epochs": switch}), restore)
                changes = {**changes, "num_epochs": args.epochs - switch}
            train(Params.from_dict({**recipe, **changes}), run, restore_from=restore)
            found = evaluate_run(run, "test", verbose=False)["vs_train"]
            print(f"{name:<44}{found['precision_at_1']:>13.4f}{found['map_at_r']:>9.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
