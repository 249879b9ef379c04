"""GPS-relation training against grid-cell training on generated places, side by side in one run.

    python benchmarks/bench_gps_training.py --quick     # ~300 database images per area, 2 seeds
    python benchmarks/bench_gps_training.py             # 600 database images per area, 3 seeds

The places are `tests.fixtures.write_places_world`: one smooth random texture is the world, the image
taken at a position is the window of it there, so appearance follows position; queries are seen with
other brightness and noise; test lies in another area than train. For each seed both runs start from
the same saved network (`--restore_from`) and differ only in `places_training`:
  * "gps": P×K batches of GPS places (a train query and the database within 25 m), positives within
    `nontrivial_radius` (10 m), negatives beyond `positive_radius` (25 m), neither in between;
  * "labels": the same P×K batches of grid cells of side 25/√2 m as classes (the former default).
Both pick best.keras by validation Recall@1 (held-out train queries) and are measured by Recall@1/5/10
at 25 m of the test queries against the test database (`evaluate_run`), next to the untrained network.
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks.machine import describe  # noqa: E402
from model.app import adapter  # noqa: E402
from model.app.evaluation import evaluate_run  # noqa: E402
from model.app.training import train  # noqa: E402
from model.params import Params  # noqa: E402
from model.run import RunFolder  # noqa: E402
from tests.fixtures import write_places_world  # noqa: E402

SIZES = {  # database and query images per area (train and test), epochs, steps per epoch, seeds
    "quick": dict(num_database=300, num_queries=120, num_epochs=4, steps_per_epoch=25, seeds=(0, 1)),
    "full": dict(num_database=600, num_queries=200, num_epochs=8, steps_per_epoch=40, seeds=(0, 1, 2)),
}


def _params(data_dir, seed, size, places_training):
    return Params.from_dict({
        "model": "mnist_convnet", "dataset": "places", "data_dir": str(data_dir), "image_size": 24,
        "num_channels": 8, "embedding_size": 16, "l2_normalize": True, "loss": "batch_hard", "margin": 0.1,
        "classes_per_batch": 8, "images_per_class": 4, "learning_rate": 0.001, "validation_size": 0.2,
        "num_epochs": size["num_epochs"], "steps_per_epoch": size["steps_per_epoch"], "seed": seed,
        "places_training": places_training,
    })  # fmt: skip


def _recall(run_dir):
    found = evaluate_run(str(run_dir), split="test", verbose=False)["query_vs_database"]["recall_at_n"]
    return [found[n] for n in (1, 5, 10)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smaller world, fewer steps and seeds")
    args = parser.parse_args(argv)
    print(describe(), flush=True)
    size = SIZES["quick" if args.quick else "full"]
    root = pathlib.Path(tempfile.mkdtemp(prefix="bench_gps_"))
    write_places_world(root / "data", num_database=size["num_database"], num_queries=size["num_queries"])
    results = {"untrained": [], "labels": [], "gps": []}
    for seed in size["seeds"]:
        # The common initialisation: a network saved as the best checkpoint of an "init" run folder.
        init = RunFolder(str(root / f"init_{seed}"))
        params = _params(root / "data", seed, size, "gps")
        keras.utils.set_random_seed(seed)
        prepared = adapter.resolve(params, adapter.data_source(params, class_names=init.class_names()))
        network = adapter.network(prepared)
        os.makedirs(os.path.dirname(init.checkpoint_path("best")), exist_ok=True)
        network.save(init.checkpoint_path("best"))
        prepared.save(init.effective_params_path)  # evaluate_run reads the run's parameters
        results["untrained"].append(_recall(init.root))
        for mode in ("labels", "gps"):
            run_dir = root / f"{mode}_{seed}"
            start = time.perf_counter()
            train(_params(root / "data", seed, size, mode), str(run_dir), restore_from=init.root)
            results[mode].append(_recall(run_dir))
            print(f"seed {seed} {mode}: Recall@1/5/10 {results[mode][-1]} ({time.perf_counter() - start:.0f} s)")
    print(
        f"\n{len(size['seeds'])} seeds, {size['num_database']} database and {size['num_queries']} query images per "
        f"area, {size['num_epochs']} epochs × {size['steps_per_epoch']} steps, P×K = 8×4; test Recall@N at 25 m:"
    )
    print("| training | Recall@1 | Recall@5 | Recall@10 | Recall@1 per seed |")
    print("| --- | --- | --- | --- | --- |")
    for name, rows in results.items():
        mean = np.mean(rows, axis=0)
        per_seed = ", ".join(f"{row[0]:.3f}" for row in rows)
        print(f"| {name} | {mean[0]:.3f} | {mean[1]:.3f} | {mean[2]:.3f} | {per_seed} |")
    print(f"(runs kept in {root})")


if __name__ == "__main__":
    main()
