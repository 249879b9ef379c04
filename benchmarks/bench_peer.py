"""This toolkit against pytorch-metric-learning, side by side, on one experiment's recipe:

    pip install -r requirements_bench.txt      # torch (CPU) and pytorch-metric-learning, optional
    python benchmarks/bench_peer.py [--experiment experiments/base_model] [--epochs N] [--quick]

Both sides train the same network on the same images with the same recipe, each in a process of its own:
  * this toolkit exactly as `make train` runs it: `train.py --model_dir RUN` with its output sent to a file;
  * PyTorch with pytorch-metric-learning (PML): the same MNIST convnet (3×3 conv → batch norm → ReLU → 2×2
    max-pool, `conv_blocks` times, then [dropout and] a dense embedding; Glorot-uniform weights, zero biases,
    batch norm momentum and epsilon as Keras's), PML's `TripletMarginLoss` on all the triplets of the batch
    (no miner) averaged over the triplets with a positive loss (`AvgNonZeroReducer`): the batch-all loss; Adam
    at the same rate and schedule; shuffled batches of the same size, the same steps per epoch.
Each epoch on both sides ends as `train.py`'s does: the validation split is embedded and its leave-one-out
precision@1 measured, the latest network saved and the best one kept. Training images/s = images trained /
the epochs' wall time (first epoch, with its graph tracing, included; the median epoch printed beside it).
Precision@1 and MAP@R: the test images against the training images, by the same function for both
(`model.evaluation.metrics.retrieval_metrics`), each side's best network by validation.

`--quick` trains 2 epochs on 12,000 images and evaluates 2,000 (a smoke test, not a measurement).
Exit status 2, with a message, when the PyTorch side cannot be imported (the message says what to install),
when the experiment's recipe is one the PyTorch side does not reproduce, or when either side fails.
"""

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from benchmarks.machine import describe  # noqa: E402

QUICK = {"train_size": 12_000, "eval_size": 2_000}
# What the PyTorch side reproduces: every other key must keep its default (checked by `_check_recipe`).
REPRODUCED = {"model": "mnist_convnet", "loss": "batch_all", "optimizer": "adam", "classes_per_batch": None,
              "augment": {}, "classification": None, "memory": None, "distribute": None,
              "mixed_precision": False, "steps_per_epoch": None, "image_size": None, "channels": None,
              "loss_options": {}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default=os.path.join(ROOT, "experiments", "base_model"),
                        help="experiment folder whose params.json both sides train (default: base_model)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the experiment's)")
    parser.add_argument("--quick", action="store_true", help="2 epochs on 12,000 images: a smoke test")
    parser.add_argument("--peer_side", default=None, help=argparse.SUPPRESS)  # internal: the PyTorch process
    args = parser.parse_args(argv)
    print(describe(), flush=True)
    if args.peer_side:
        return _peer_side(args.peer_side)
    missing = _missing_peer()
    if missing:
        print(f"bench_peer: the PyTorch side cannot run: {missing}. Install it with "
              f"`pip install -r {os.path.join(ROOT, 'requirements_bench.txt')}`.", file=sys.stderr)
        return 2
    recipe = _recipe(args)
    with tempfile.TemporaryDirectory() as scratch:
        ours = _our_side(recipe, scratch)
        peer = _run_peer(recipe, scratch)
    _report(recipe, ours, peer)
    return 0


def _fail(message):
    """Stop the benchmark with exit status 2 and `message` on standard error."""
    print(f"bench_peer: {message}", file=sys.stderr)
    raise SystemExit(2)


def _missing_peer():
    """Why the PyTorch side cannot be imported, or None."""
    for module in ("torch", "pytorch_metric_learning"):
        try:
            __import__(module)
        except ImportError as error:
            return f"{module} is not installed ({error})"
    return None


def _recipe(args):
    """The experiment's params (a dict) with the command line's changes; SystemExit(2) for a recipe the
    PyTorch side does not reproduce."""
    from model.params import Params

    params_file = os.path.join(args.experiment, "params.json")
    params = Params.load(params_file)
    for key, value in REPRODUCED.items():
        if getattr(params, key) != value:
            _fail(f"{params_file} sets {key}={getattr(params, key)!r}; the PyTorch side reproduces only "
                  f"{key}={value!r}")
    recipe = params.to_dict()
    if args.epochs is not None:
        recipe["num_epochs"] = args.epochs
    if args.quick:
        recipe.update(QUICK, num_epochs=2)
    return recipe


def _our_side(recipe, scratch):
    """Train with `train.py`, output to a file, as `make train` does; returns the side's figures."""
    run = os.path.join(scratch, "ours")
    os.makedirs(run)
    with open(os.path.join(run, "params.json"), "w") as handle:
        json.dump(recipe, handle)
    log = os.path.join(scratch, "ours.log")
    with open(log, "w") as output:
        finished = subprocess.run([sys.executable, os.path.join(ROOT, "train.py"), "--model_dir", run],
                                  stdout=output, stderr=subprocess.STDOUT, cwd=ROOT, check=False)
    if finished.returncode != 0:
        with open(log) as handle:
            _fail(f"train.py failed (exit {finished.returncode}):\n{handle.read()[-3000:]}")
    with open(os.path.join(run, "history.csv")) as handle:
        seconds = [float(row["epoch_seconds"]) for row in csv.DictReader(handle)]
    from model.app.evaluation import evaluate_run

    found = evaluate_run(run, "test", checkpoint="best", verbose=False)["vs_train"]
    return {"epoch_seconds": seconds, "precision_at_1": found["precision_at_1"], "map_at_r": found["map_at_r"],
            "log_bytes": os.path.getsize(log)}


def _run_peer(recipe, scratch):
    """The PyTorch side in a process of its own, after the TensorFlow side has finished; its figures."""
    recipe_file, result_file = os.path.join(scratch, "recipe.json"), os.path.join(scratch, "peer.json")
    with open(recipe_file, "w") as handle:
        json.dump({"recipe": recipe, "result": result_file, "scratch": scratch}, handle)
    finished = subprocess.run([sys.executable, os.path.abspath(__file__), "--peer_side", recipe_file], check=False)
    if finished.returncode != 0:
        _fail(f"the PyTorch side failed (exit {finished.returncode})")
    with open(result_file) as handle:
        return json.load(handle)


def _images_per_epoch(recipe, num_train):
    """Images trained per epoch on both sides: ceil(N / B) full batches of B."""
    return math.ceil(num_train / recipe["batch_size"]) * recipe["batch_size"]


def _load_splits(recipe):
    """(train, validation, test) Splits as `train.py` and `evaluate.py` make them: the same hold-out, the
    same seeded train_size and eval_size cuts."""
    from model.app import adapter
    from model.evaluation.protocols import cap
    from model.params import Params

    params = Params.from_dict(recipe)
    source = adapter.data_source(params)
    test = cap(source.splits["test"], params.eval_size, params.seed)
    return source.splits["train"], source.splits["validation"], test


def _peer_side(recipe_file):
    """Train and evaluate with PyTorch and pytorch-metric-learning; writes the figures as JSON."""
    import numpy as np
    import pytorch_metric_learning
    import torch
    from pytorch_metric_learning import distances, losses, reducers

    from model.evaluation.metrics import retrieval_metrics

    with open(recipe_file) as handle:
        job = json.load(handle)
    recipe = job["recipe"]
    torch.manual_seed(recipe["seed"])
    train, validation, test = _load_splits(recipe)
    network = _torch_convnet(recipe, train.images.shape[1:])
    loss_fn = losses.TripletMarginLoss(
        margin=float(recipe["margin"]), reducer=reducers.AvgNonZeroReducer(),
        distance=distances.LpDistance(normalize_embeddings=recipe["l2_normalize"], power=2 if recipe["squared"] else 1))
    optimizer = torch.optim.Adam(network.parameters(), lr=recipe["learning_rate"], eps=1e-7)  # Keras's epsilon
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(recipe["lr_schedule"]))
    images = torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous()  # uint8 [N, C, H, W]
    labels = torch.from_numpy(train.labels.astype(np.int64))
    batch, steps = recipe["batch_size"], math.ceil(len(train) / recipe["batch_size"])
    order = _endless_order(len(train), recipe["seed"])
    seconds, best, best_state = [], -1.0, None
    latest = os.path.join(job["scratch"], "peer_latest.pt")
    for _ in range(recipe["num_epochs"]):
        started = time.time()
        network.train()
        for _ in range(steps):
            rows = torch.from_numpy(np.fromiter(order, np.int64, batch))
            embeddings = network(images[rows].float())
            loss = loss_fn(embeddings, labels[rows])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        validated = retrieval_metrics(_torch_embed(network, validation.images), validation.labels, ks=(1,))
        score = validated["precision_at_1"]
        torch.save(network.state_dict(), latest)
        if score > best:
            best, best_state = score, {key: value.clone() for key, value in network.state_dict().items()}
        seconds.append(time.time() - started)
        print(f"pytorch-metric-learning epoch {len(seconds)}/{recipe['num_epochs']}: loss {loss.item():.4g} - "
              f"val_precision_at_1 {score:.4g} - {seconds[-1]:.1f}s", flush=True)
    network.load_state_dict(best_state)
    found = retrieval_metrics(_torch_embed(network, test.images), test.labels,
                              _torch_embed(network, train.images), train.labels)
    with open(job["result"], "w") as handle:
        json.dump({"epoch_seconds": seconds, "precision_at_1": found["precision_at_1"], "map_at_r": found["map_at_r"],
                   "versions": f"PyTorch {torch.__version__}, pytorch-metric-learning "
                               f"{pytorch_metric_learning.__version__}", "num_train": len(train)}, handle)
    return 0


def _torch_convnet(recipe, image_shape):
    """`model.nets.build_mnist_convnet` in PyTorch, initialised as Keras initialises it."""
    import torch
    from torch import nn

    height, width, channels = image_shape
    layers, width_in = [], channels
    for block in range(recipe["conv_blocks"]):
        filters = recipe["num_channels"] * 2**block
        layers.append(nn.Conv2d(width_in, filters, 3, padding=1))
        if recipe["use_batch_norm"]:  # Keras momentum m updates with weight 1 - m; Keras's epsilon
            layers.append(nn.BatchNorm2d(filters, momentum=1 - recipe["bn_momentum"], eps=1e-3))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        width_in, height, width = filters, height // 2, width // 2
    layers.append(nn.Flatten())
    if recipe["dropout"]:
        layers.append(nn.Dropout(recipe["dropout"]))
    layers.append(nn.Linear(width_in * height * width, recipe["embedding_size"]))
    network = nn.Sequential(*layers)
    for layer in network:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)

    class Rescaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = network

        def forward(self, images):
            embeddings = self.body(images / 255.0)
            return nn.functional.normalize(embeddings, dim=1) if recipe["l2_normalize"] else embeddings

    torch.set_num_threads(os.cpu_count())
    return Rescaled()


def _torch_embed(network, images, batch=256):
    """float32 [N, E] embeddings of uint8 images [N, H, W, C], in order, in evaluation mode."""
    import numpy as np
    import torch

    network.eval()
    with torch.no_grad():
        parts = [network(torch.from_numpy(images[start:start + batch]).permute(0, 3, 1, 2).float()).numpy()
                 for start in range(0, len(images), batch)]
    return np.concatenate(parts)


def _endless_order(num_examples, seed):
    """Example indices: a new random permutation each epoch, endlessly (the batches run across epochs)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    while True:
        yield from rng.permutation(num_examples)


def _lr_factor(schedule):
    """The learning rate's factor at step t for `lr_schedule`, as `model.optimization` computes it."""
    if schedule["type"] == "exponential":
        start, steps, rate = schedule["decay_start"], schedule["decay_steps"], schedule["decay_rate"]
        return lambda step: rate ** (max(step - start, 0) / steps)
    if schedule["type"] == "step":
        return lambda step: schedule["factor"] ** sum(step > boundary for boundary in schedule["boundaries"])
    return lambda step: 1.0


def _report(recipe, ours, peer):
    images = _images_per_epoch(recipe, peer["num_train"])
    rows = [("this toolkit (train.py, output to a file)", ours), (peer["versions"], peer)]
    print(f"\n{recipe['dataset']}: {recipe['model']}, {recipe['loss']} (margin {recipe['margin']}), batches of "
          f"{recipe['batch_size']}, {recipe['num_epochs']} epochs of {images:,} images, {os.cpu_count()} CPU cores")
    print(f"{'':<52}{'images/s':>10}{'median epoch':>14}{'precision@1':>13}{'MAP@R':>8}")
    for name, side in rows:
        seconds = side["epoch_seconds"]
        print(f"{name:<52}{images * len(seconds) / sum(seconds):>10,.0f}{statistics.median(seconds):>13.1f}s"
              f"{side['precision_at_1']:>13.4f}{side['map_at_r']:>8.4f}")
    ratio = sum(peer["epoch_seconds"]) / sum(ours["epoch_seconds"])
    print(f"images/s, this toolkit / pytorch-metric-learning: {ratio:.2f}×; train.py's log: "
          f"{ours['log_bytes']:,} bytes")


if __name__ == "__main__":
    sys.exit(main())
