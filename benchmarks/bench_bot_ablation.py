"""The re-ID strong baseline's tricks switched off one at a time, from one command:

    python benchmarks/bench_bot_ablation.py --quick                 # a generated Market-1501 tree, minutes
    python benchmarks/bench_bot_ablation.py                         # a larger generated tree
    python benchmarks/bench_bot_ablation.py --data_dir data/Market-1501-v15.09.15 --weights imagenet \
        --image_size 256 128 --epochs 120 --steps 200 --classes 16 --images 4        # the paper's scale (a GPU)

Every run is `experiments/market1501_bot`'s recipe at the scale asked (its warm-up and decay boundaries at the
same fractions of the training, 10/120, 40/120 and 70/120), with all the tricks, or with one of them off:

    warm-up          lr_schedule without warmup_steps (the step decay alone)
    random erasing   augment without "erase"
    label smoothing  classification.label_smoothing 0
    last stride 1    last_stride 2
    BNNeck           bnneck false (the ID loss, the triplet loss and evaluation on the pooled features)
    center loss      center_loss null
    cosine           feature_norm false (evaluation ranks by euclidean distance)

Each is measured by `evaluate_run` (mAP and rank-1 of the query split against the gallery, Market-1501 rules);
the full recipe also after k-reciprocal re-ranking. By default the data is a generated tree
(`tests.fixtures.write_market1501_tree`: real file names, each identity in two of 4 colours, brightness and
noise per image) and the weights are random: those figures show that each switch trains and is measured, not
what the trick is worth; the paper's figures (Luo et al. 2019) are in docs/guides/reid-strong-baseline.md.
"""

import argparse
import copy
import json
import os
import pathlib
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
from tests.fixtures import write_market1501_tree  # noqa: E402

EXPERIMENT = os.path.join(ROOT, "experiments", "market1501_bot", "params.json")
SIZES = {  # generated identities (train and query), images per identity, image size, epochs, steps, P, K
    "quick": dict(identities=24, per_identity=6, image_size=[64, 32], epochs=2, steps=4, classes=6, images=2),
    "full": dict(identities=60, per_identity=8, image_size=[128, 64], epochs=4, steps=10, classes=8, images=4),
}
PALETTE = 4  # colours the generated identities' clothes are drawn from: identities share them


def _off(recipe, change):
    """A copy of `recipe` with one trick off (`change` edits the copy)."""
    values = copy.deepcopy(recipe)
    change(values)
    return values


def _drop(key, *inner):
    def change(values):
        values[key] = {name: value for name, value in values[key].items() if name not in inner}
    return change


def _set(key, value, inner=None):
    def change(values):
        if inner is None:
            values[key] = value
        else:
            values[key] = {**values[key], inner: value}
    return change


# (trick, what switches it off)
TRICKS = (
    ("warm-up", _drop("lr_schedule", "warmup_steps", "warmup_factor")),
    ("random erasing", _drop("augment", "erase")),
    ("label smoothing", _set("classification", 0.0, "label_smoothing")),
    ("last stride 1", _set("last_stride", 2)),
    ("BNNeck", _set("bnneck", False)),
    ("center loss", _set("center_loss", None)),
    ("cosine", _set("feature_norm", False)),
)


def scaled_schedule(schedule, total_steps, epochs=120):
    """The experiment's schedule (in steps of its epochs) at the same fractions of `total_steps`."""
    steps = epochs * 200  # the experiment's num_epochs × steps_per_epoch

    def scale(step):
        return max(1, round(step * total_steps / steps))

    boundaries = sorted({max(scale(b), scale(schedule["warmup_steps"])) for b in schedule["boundaries"]})
    return {**schedule, "warmup_steps": scale(schedule["warmup_steps"]), "boundaries": boundaries}


def recipe(data_dir, *, image_size, epochs, steps, classes, images, weights=None):
    """The experiment's params at this scale, every trick on."""
    with open(EXPERIMENT) as handle:
        values = json.load(handle)
    values.update(data_dir=str(data_dir), weights=weights, image_size=list(image_size), num_epochs=epochs,
                  steps_per_epoch=steps, classes_per_batch=classes, images_per_class=images, validation_size=0)
    values["lr_schedule"] = scaled_schedule(values["lr_schedule"], epochs * steps)
    if image_size != [256, 128]:  # the padding of the random crop at the same fraction of the height
        values["augment"] = {**values["augment"], "shift": max(1, round(10 * image_size[0] / 256))}
    return values


def ablation(full):
    """[(name, params values)]: the full recipe, then one run per trick switched off; each is valid params."""
    runs = [("all tricks", full)] + [(f"without {name}", _off(full, change)) for name, change in TRICKS]
    for name, values in runs:
        Params.from_dict(values, source=name)  # refuses a run that is not valid before anything trains
    return runs


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the smallest generated tree and runs")
    parser.add_argument("--data_dir", help="a Market-1501 folder (default: a generated tree)")
    parser.add_argument("--weights", default=None, help='"imagenet" or a ResNet-50 no-top weights file (default: '
                                                        "random)")
    parser.add_argument("--image_size", type=int, nargs=2)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--steps", type=int, help="steps per epoch")
    parser.add_argument("--classes", type=int, help="P of the P × K batches")
    parser.add_argument("--images", type=int, help="K of the P × K batches")
    args = parser.parse_args(argv)
    print(describe(), flush=True)
    size = dict(SIZES["quick" if args.quick else "full"])
    for name in ("image_size", "epochs", "steps", "classes", "images"):
        if getattr(args, name) is not None:
            size[name] = list(getattr(args, name)) if name == "image_size" else getattr(args, name)
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data_dir
        if data_dir is None:
            data_dir = pathlib.Path(scratch) / "market1501"
            chosen = write_market1501_tree(data_dir, identities=size["identities"], per_identity=size["per_identity"],
                                           palette=PALETTE)
            print(f"data: a generated Market-1501 tree ({', '.join(f'{len(v)} {k}' for k, v in chosen.items())} "
                  f"images), weights: {args.weights or 'random'}. NOT the paper's setting: these figures show "
                  "that each switch trains and is measured, not what the trick is worth (see "
                  "docs/guides/reid-strong-baseline.md for the paper's).")
        else:
            print(f"data: {data_dir}, weights: {args.weights or 'random'}")
        full = recipe(data_dir, weights=args.weights, image_size=size["image_size"], epochs=size["epochs"],
                      steps=size["steps"], classes=size["classes"], images=size["images"])
        print(f"market1501_bot at {size['image_size'][0]}×{size['image_size'][1]}, P×K {size['classes']}×"
              f"{size['images']}, {size['epochs']} epochs of {size['steps']} steps, lr_schedule {full['lr_schedule']}",
              flush=True)
        print(f"{'run':<28}{'mAP':>8}{'rank-1':>8}{'seconds':>9}", flush=True)
        for number, (name, values) in enumerate(ablation(full)):
            model_dir = os.path.join(scratch, f"run{number}")
            started = time.time()
            train(Params.from_dict(values, source=name), model_dir)
            found = evaluate_run(model_dir, "test", checkpoint="latest", verbose=False, rerank=number == 0)
            plain = found["query_vs_gallery"]
            print(f"{name:<28}{plain['mAP']:>8.4f}{plain['cmc'][0]:>8.4f}{time.time() - started:>9.0f}", flush=True)
            if number == 0:
                reranked = found["query_vs_gallery_reranked"]
                print(f"{'all tricks, re-ranked':<28}{reranked['mAP']:>8.4f}{reranked['cmc'][0]:>8.4f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
