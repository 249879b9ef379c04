"""Experiment parameters: one schema for params.json, loaded, defaulted and validated in one place.

    params = Params.load("experiments/base_model/params.json")
    params.learning_rate, params.loss, ...

Every key is declared once in `SCHEMA` with its type, default and meaning (the README's table is
printed from it by `python -m model.params`). Loading fills in the defaults and checks every
value: every unknown key is named with the closest valid one ("did you mean ...?"), a wrong type
or an out-of-range value names the key, the value and what is expected. NaN and Infinity (which
Python's json module reads) are refused in every number, nested ones included. `triplet_strategy`,
the name used by the classic TensorFlow triplet-loss code, is accepted as an alias of `loss`.

What depends on the data is checked once the data is loaded: `Params.check_num_labels` (see also
`model.data.check_trainable`).
"""

import difflib
import json
import math
import os
from dataclasses import dataclass
from typing import Any

from model.atomic import write_text
from model.losses import LOSSES as LOSS_CLASSES
from model.losses import STRING_OPTIONS, parse_margin

# The choices of the keys below are the keys of their registries (model/nets.py MODELS, BACKBONES and POOLINGS,
# model/data/sources.py DATASETS, model/losses.py LOSSES, model/optimization.py OPTIMIZERS); listed here so
# that this schema reads on its own, and tied to the registries by tests/test_params.py.
MODELS = ("mnist_convnet", "trinet", "netvlad")
DATASETS = ("mnist", "fashion_mnist", "digits", "folders", "inshop", "market1501", "places", "cub200")
LOSSES = (
    "batch_all",
    "batch_hard",
    "batch_semihard",
    "contrastive",
    "lifted",
    "proxy_nca",
    "multi_similarity",
    "softmax",
)
OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
BACKBONES = ("vgg16", "resnet50", "small", "alexnet")
POOLINGS = ("netvlad", "max", "avg")


@dataclass(frozen=True)
class Key:
    types: tuple  # accepted JSON types (python types after json.load); None allowed if in the tuple
    default: Any
    meaning: str
    choices: tuple = ()
    minimum: float | None = None  # inclusive lower bound for numbers
    positive: bool = False  # numbers must be > 0


INT, FLOAT, BOOL, STR, LIST, DICT, NONE = int, float, bool, str, list, dict, type(None)

SCHEMA = {
    # What to train on and with.
    "model": Key((STR,), "mnist_convnet", "embedding network", choices=MODELS),
    "dataset": Key((STR,), "fashion_mnist", "data source", choices=DATASETS),
    "data_dir": Key((STR, NONE), None, "data folder (relative paths resolve against the current directory)"),
    "image_size": Key((INT, LIST, NONE), None, "input size, int or [h, w]; null = the dataset's own size"),
    "channels": Key((INT, NONE), None, "1 or 3 input channels; null = the dataset's own (3 for trinet/netvlad)"),
    "num_labels": Key((INT, NONE), None, "number of classes (proxy_nca); null = counted from the data", positive=True),
    "train_size": Key((INT, NONE), None, "use only this many training images; null = all", positive=True),
    "eval_size": Key((INT, NONE), None, "evaluate on only this many test images; null = all", positive=True),
    "validation_size": Key((INT, FLOAT), 0.1, "held out of train: a count, or a fraction if < 1", minimum=0),
    "class_split": Key((INT, NONE), None, "folders: train on the first N classes, test on the rest", positive=True),
    "positive_radius": Key(
        (INT, FLOAT), 25.0, "places: metres within which a database image is a positive", positive=True
    ),
    "nontrivial_radius": Key(
        (INT, FLOAT), 10.0, "places, GPS training: metres within which a pair is a positive", positive=True
    ),
    "places_training": Key(
        (STR,), "gps", "places: P×K batches of GPS places, pairs by distance (gps) or place_id / grid cells as classes",
        choices=("gps", "labels"),
    ),
    "num_parallel_calls": Key((INT, NONE), None, "parallel decoding calls; null = tf.data AUTOTUNE", positive=True),
    # Network.
    "num_channels": Key((INT,), 32, "mnist_convnet: width of the first conv block", positive=True),
    "conv_blocks": Key((INT,), 2, "mnist_convnet: conv blocks; block i has num_channels·2^i filters", positive=True),
    "use_batch_norm": Key((BOOL,), False, "mnist_convnet: batch normalisation after each conv"),
    "dropout": Key((INT, FLOAT), 0.0, "mnist_convnet: dropout rate before the embedding layer, in [0, 1)", minimum=0),
    "bn_momentum": Key((FLOAT,), 0.9, "batch normalisation momentum, in [0, 1)", minimum=0),
    "embedding_size": Key((INT,), 64, "embedding dimension", positive=True),
    "l2_normalize": Key(
        (BOOL,), False, "L2-normalise the network's embeddings (what loss, statistics and evaluation see)"
    ),
    "weights": Key((STR, NONE), "imagenet", 'backbone weights: "imagenet" (not for alexnet), null, or a weights file'),
    "backbone": Key((STR,), "vgg16", "netvlad backbone", choices=BACKBONES),
    "pooling": Key(
        (STR,), "netvlad", "netvlad: pooling of the backbone's features; max/avg: global pooling, L2", choices=POOLINGS
    ),
    "num_clusters": Key((INT,), 64, "netvlad: number of clusters K", positive=True),
    "vladv2": Key((BOOL,), False, "netvlad: the v2 initialisation (with a bias)"),
    "netvlad_dim": Key((INT, NONE), None, "netvlad: whitened output dimension; null = K·D", positive=True),
    # Loss and mining.
    "loss": Key((STR,), "batch_all", "loss name", choices=LOSSES),
    "triplet_strategy": Key((STR, NONE), None, "alias of loss (classic name)", choices=("batch_all", "batch_hard")),
    "margin": Key((INT, FLOAT, STR), 0.5, 'triplet/contrastive margin; "soft" for batch_hard', minimum=0),
    "squared": Key((BOOL,), False, "use squared euclidean distances in triplet losses"),
    "loss_options": Key(
        (DICT,),
        {},
        "extra loss arguments (numbers, true/false, or the string options hinge, reduction, positives), e.g. "
        '{"alpha": 2.0} for multi_similarity',
    ),
    "classification": Key(
        (DICT, NONE), None, 'softmax head beside the loss: {"weight": w} adds w·cross-entropy; null = none'
    ),
    # Batches.
    "batch_size": Key((INT,), 64, "images per batch when P and K are not set", positive=True),
    "classes_per_batch": Key((INT, NONE), None, "P of P×K batches", positive=True),
    "images_per_class": Key((INT, NONE), None, "K of P×K batches", positive=True),
    "augment": Key((DICT,), {}, 'training augmentation: {"flip": true, "resize": [288, 144], "shift": 2}'),
    "memory": Key(
        (DICT, NONE), None, 'cross-batch memory (XBM): {"size": S, "warmup_steps": W}; null = mine the batch only'
    ),
    # Optimisation.
    "num_epochs": Key((INT,), 10, "epochs to train", positive=True),
    "steps_per_epoch": Key(
        (INT, NONE), None, "steps per epoch; null = one pass over the training split", positive=True
    ),
    "learning_rate": Key((FLOAT,), 1e-3, "initial learning rate", positive=True),
    "optimizer": Key((STR,), "adam", "optimizer", choices=OPTIMIZERS),
    "lr_schedule": Key(
        (DICT,), {"type": "constant"}, "constant, exponential (from a start step) or step; rates and factors in (0, 1]"
    ),
    "mixed_precision": Key((BOOL,), False, "mixed_float16 compute (GPUs); losses stay float32"),
    "distribute": Key(
        (STR, NONE), None, 'null; "mirrored" (the GPUs of one machine); "multi_worker" (machines of TF_CONFIG)',
        choices=("mirrored", "multi_worker"),
    ),
    "mining": Key(
        (STR,), "global", "with several replicas: global (the whole global batch) or local (each replica's share); "
        "places: cached (the NetVLAD reference's tuples from a feature cache)",
        choices=("global", "local", "cached"),
    ),
    "cache_refresh": Key(
        (INT,), 1000, 'mining "cached": queries between refreshes of the feature cache', positive=True
    ),
    "seed": Key((INT,), 230, "random seed: same seed, same run"),
    "save_summary_steps": Key((INT,), 100, "TensorBoard logging interval in steps", positive=True),
    "stop_on_collapse": Key((BOOL,), False, "end training when the embeddings collapse"),
}

LR_SCHEDULES = {
    "constant": set(),
    "exponential": {"decay_start", "decay_steps", "decay_rate"},
    "step": {"boundaries", "factor"},
}
AUGMENT_KEYS = {"flip": (BOOL,), "resize": (INT, LIST, NONE), "shift": (INT,)}


def _type_names(types):
    names = {
        INT: "integer",
        FLOAT: "number",
        BOOL: "true/false",
        STR: "string",
        LIST: "list",
        DICT: "object",
        NONE: "null",
    }
    return " or ".join(names[t] for t in types)


def _unknown_keys(unknown, valid):
    """'unknown key "a". Did you mean "b"?' for each of `unknown`, in order, in one sentence each."""
    sentences = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f' Did you mean "{close[0]}"?' if close else ""
        sentences.append(f'unknown key "{key}".{hint}')
    return " ".join(sentences)


def _non_finite(value, path):
    """(dotted path, value) of the first NaN or infinite number in `value`, nested lists and objects
    included (e.g. ("lr_schedule.factor", nan)), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    if isinstance(value, dict):
        items = ((f"{path}.{name}", item) for name, item in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    return next((found for found in (_non_finite(item, where) for where, item in items) if found), None)


def _is_number(value):
    """A JSON number (int or float), not true/false."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integer(value):
    """A JSON integer, not true/false."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_instance(value, types):
    if isinstance(value, bool):  # bool is an int subclass in Python, not in JSON
        return BOOL in types
    if isinstance(value, int) and FLOAT in types:
        return True
    return isinstance(value, types)


class Params:
    """Validated experiment parameters with attribute access (`params.margin`).

    Build with `Params.load(path)` for a params.json file or `Params.from_dict(mapping)`.
    `to_dict()` gives the effective parameters (defaults filled in), `save(path)` writes them.
    """

    def __init__(self, values, source="params"):
        self._source = source
        unknown = [key for key in values if key not in SCHEMA]
        if unknown:
            raise ValueError(f"{source}: {_unknown_keys(unknown, SCHEMA)} Valid keys: {', '.join(SCHEMA)}.")
        merged = {key: spec.default for key, spec in SCHEMA.items()}
        merged.update(values)
        for key, value in merged.items():
            self._check(key, value)
        strategy = merged.pop("triplet_strategy")
        if strategy is not None:
            if "loss" in values and values["loss"] != strategy:
                raise ValueError(
                    f'{source}: "triplet_strategy" ({strategy!r}) is an alias of "loss" ({values["loss"]!r}); '
                    "give one of them"
                )
            merged["loss"] = strategy
        self._check_combinations(merged)
        self.__dict__.update(merged)

    @classmethod
    def from_dict(cls, values, source="params"):
        return cls(dict(values), source=source)

    @classmethod
    def load(cls, path):
        """Read and validate a params.json file; errors name the file."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such params file (each experiment folder holds a params.json)")
        with open(path) as handle:
            try:
                values = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object of parameters, got {type(values).__name__}")
        return cls(values, source=path)

    def to_dict(self):
        return {key: value for key, value in self.__dict__.items() if not key.startswith("_")}

    def save(self, path):
        """Write the effective parameters as JSON, atomically (write then rename)."""
        write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes):
        """A copy with some values changed (validated again)."""
        values = self.to_dict()
        values.update(changes)
        return Params(values, source=self._source)

    def with_eval_interval(self, steps):
        """A copy that validates (and picks best.keras) every `steps` training steps, training the same steps.

        Training validates at the end of each epoch, so the epochs become `steps` long: steps_per_epoch =
        `steps` and num_epochs = num_epochs × steps_per_epoch / `steps`. The batches, the updates and the
        step-based learning-rate schedule are those of the unchanged params (the batch stream runs on across
        epochs); history.csv gets one row per interval. As the PyTorch online-metric-learning examples'
        "evaluation every 50 iterations".

        Raises:
            ValueError: steps_per_epoch is null (the total is then unknown before the data is read), or
                `steps` does not divide num_epochs × steps_per_epoch, or is not a positive integer.
        """
        if not _is_integer(steps) or steps <= 0:
            raise ValueError(f"--eval_interval must be a positive integer (training steps), got {steps!r}")
        if self.steps_per_epoch is None:
            raise ValueError(f'{self._source}: --eval_interval needs "steps_per_epoch" (the training then lasts '
                             'num_epochs × steps_per_epoch steps); it is null, one pass over the data per epoch')
        total = self.num_epochs * self.steps_per_epoch
        if total % steps:
            raise ValueError(f"--eval_interval {steps} does not divide the {total} training steps (num_epochs "
                             f"{self.num_epochs} × steps_per_epoch {self.steps_per_epoch})")
        return self.replace(steps_per_epoch=steps, num_epochs=total // steps)

    def __repr__(self):
        return f"Params({self.to_dict()!r})"

    def _fail(self, key, value, expected):
        raise ValueError(f'{self._source}: key "{key}" has value {value!r}; expected {expected}.')

    def _check(self, key, value):
        spec = SCHEMA[key]
        non_finite = _non_finite(value, key)
        if non_finite:  # json.load reads NaN and Infinity; no parameter means anything with them
            self._fail(*non_finite, "a finite number")
        if not _is_instance(value, spec.types):
            self._fail(key, value, _type_names(spec.types))
        if value is None:
            return
        if key == "margin":  # a number or "soft"; which loss may have "soft" is checked with the loss
            try:
                parse_margin(value, soft_allowed=True)
            except ValueError:
                self._fail(key, value, 'a number >= 0 or "soft"')
            return
        if spec.choices and value not in spec.choices:
            close = difflib.get_close_matches(str(value), spec.choices, n=1)
            hint = f' (did you mean "{close[0]}"?)' if close else ""
            self._fail(key, value, f"one of {', '.join(spec.choices)}{hint}")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if spec.positive and value <= 0:
                self._fail(key, value, "a number > 0")
            if spec.minimum is not None and value < spec.minimum:
                self._fail(key, value, f"a number >= {spec.minimum}")
        if key == "image_size" and isinstance(value, list):
            if len(value) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value):
                self._fail(key, value, "an integer or a list [height, width] of two positive integers")
        if key == "image_size" and isinstance(value, int) and value <= 0:
            self._fail(key, value, "a positive integer")
        if key == "channels" and value not in (1, 3):
            self._fail(key, value, "1 or 3")
        if key == "bn_momentum" and not 0 <= value < 1:
            # The moving statistics are momentum · old + (1 - momentum) · batch: outside [0, 1) they diverge.
            self._fail(key, value, "a number in [0, 1), e.g. 0.9 or 0.99")
        if key == "dropout" and not 0 <= value < 1:  # a rate of 1 drops every feature: no embedding is left
            self._fail(key, value, "a number in [0, 1), e.g. 0.3")
        if key == "loss_options":
            for name, option in value.items():
                if name in STRING_OPTIONS:  # a choice among strings (model.losses.STRING_OPTIONS); which loss
                    allowed = STRING_OPTIONS[name]  # takes it is the loss's to say (Loss.from_params)
                    if option not in allowed:
                        self._fail(f"{key}.{name}", option, f"one of {', '.join(allowed)}")
                elif not _is_instance(option, (FLOAT, BOOL)):
                    strings = ", ".join(STRING_OPTIONS)
                    self._fail(f"{key}.{name}", option,
                               f"a number or true/false (the loss's keyword argument; strings only for {strings})")
        if key == "lr_schedule":
            self._check_schedule(value)
        if key == "classification":
            if set(value) != {"weight"}:
                self._fail(key, value, 'an object {"weight": w} (the weight of the cross-entropy added to the loss)')
            if not _is_number(value["weight"]) or value["weight"] <= 0:
                self._fail(f"{key}.weight", value["weight"], "a number > 0")
        if key == "memory":
            if set(value) != {"size", "warmup_steps"}:
                self._fail(key, value, 'an object {"size": S, "warmup_steps": W} with exactly these two keys')
            for name, least in (("size", 1), ("warmup_steps", 0)):
                option = value[name]
                if isinstance(option, bool) or not isinstance(option, int) or option < least:
                    self._fail(f"{key}.{name}", option, f"an integer >= {least}")
        if key == "augment":
            for name, option in value.items():
                if name not in AUGMENT_KEYS:
                    self._fail(key, value, f"an object with keys among {', '.join(AUGMENT_KEYS)} (unknown: {name!r})")
                if not _is_instance(option, AUGMENT_KEYS[name]):
                    self._fail(f"{key}.{name}", option, _type_names(AUGMENT_KEYS[name]))

    def _check_schedule(self, schedule):
        """Every value of the schedule: the step counts, and rates that decay (a factor in (0, 1]).

        A factor or decay rate above 1 would raise the learning rate at every boundary (or
        exponentially), and one <= 0 would flip the sign of the updates (gradient ascent) or stop them.
        """
        kind = schedule.get("type")
        if not isinstance(kind, str) or kind not in LR_SCHEDULES:
            self._fail("lr_schedule", schedule, f'an object with "type" one of {", ".join(LR_SCHEDULES)}')
        given = set(schedule) - {"type"}
        if given != LR_SCHEDULES[kind]:
            needed = ", ".join(sorted(LR_SCHEDULES[kind])) or "nothing else"
            self._fail("lr_schedule", schedule, f'a "{kind}" schedule takes {needed}')
        for name in sorted(given):
            value, key = schedule[name], f"lr_schedule.{name}"
            if name in ("factor", "decay_rate"):
                if not _is_number(value) or not 0 < value <= 1:
                    self._fail(key, value, "a number in (0, 1]: the rate is multiplied by it")
            elif name == "decay_start":
                if not _is_integer(value) or value < 0:
                    self._fail(key, value, "an integer >= 0 (the step at which the decay starts)")
            elif name == "decay_steps":
                if not _is_integer(value) or value <= 0:
                    self._fail(key, value, "an integer > 0 (steps over which the rate is multiplied by decay_rate)")
            elif name == "boundaries":
                if not isinstance(value, list) or not value or not all(_is_integer(v) and v > 0 for v in value):
                    self._fail(key, value, "a non-empty list of positive integers (steps), e.g. [5000, 10000]")
                if any(later <= earlier for earlier, later in zip(value, value[1:], strict=False)):
                    self._fail(key, value, "steps in increasing order, e.g. [5000, 10000]")

    def check_num_labels(self, num_classes):
        """Check `num_labels` against the data: the train labels run 0..num_classes-1.

        Call it once the data is loaded, with `num_classes` = the train split's largest label + 1.
        A loss with one weight row per class (proxy_nca) cannot index a label >= num_labels.

        Raises:
            ValueError: naming the key, its value and the number of classes found.
        """
        if self.num_labels is not None and self.num_labels < num_classes:
            raise ValueError(
                f'{self._source}: key "num_labels" is {self.num_labels} but the training data has {num_classes} '
                f"classes (labels 0..{num_classes - 1}); set num_labels to at least {num_classes}, or to null to "
                "count them from the data."
            )

    def _check_combinations(self, values):
        if values["classification"] is not None and values["loss"] == "softmax":
            raise ValueError(f'{self._source}: "classification" adds a softmax head beside a metric loss, and loss '
                             '"softmax" is that head alone; drop "classification" or choose a metric loss')
        if values["memory"] is not None and not LOSS_CLASSES[values["loss"]].mines_in_batch:
            raise ValueError(f'{self._source}: "memory" holds embeddings to mine against, but loss '
                             f'{values["loss"]!r} compares embeddings with learned proxies; drop "memory" or choose '
                             "a pair or triplet loss")
        if (values["classes_per_batch"] is None) != (values["images_per_class"] is None):
            raise ValueError(
                f'{self._source}: "classes_per_batch" (P) and "images_per_class" (K) go together; '
                f"got P={values['classes_per_batch']}, K={values['images_per_class']}"
            )
        if values["mining"] == "cached":
            self._check_cached_mining(values)
        elif values["dataset"] == "places" and values["places_training"] == "gps":
            self._check_gps_training(values)
        if values["pooling"] != "netvlad" and values["netvlad_dim"] is not None:
            raise ValueError(
                f'{self._source}: "netvlad_dim" ({values["netvlad_dim"]}) whitens NetVLAD descriptors; with '
                f'"pooling" {values["pooling"]!r} (global pooling, no PCA in pytorch-NetVlad) set it to null'
            )
        if values["margin"] == "soft" and not LOSS_CLASSES[values["loss"]].soft_margin_allowed:
            soft = " or ".join(f'"{name}"' for name, loss in LOSS_CLASSES.items() if loss.soft_margin_allowed)
            raise ValueError(f'{self._source}: margin "soft" is only defined for loss {soft}, not {values["loss"]!r}')


    def _check_gps_training(self, values):
        """Places trained by GPS: P×K batches of places, a pair loss, positives nearer than negatives."""
        if values["nontrivial_radius"] > values["positive_radius"]:
            raise ValueError(
                f'{self._source}: "nontrivial_radius" ({values["nontrivial_radius"]} m, positives) must be at most '
                f'"positive_radius" ({values["positive_radius"]} m, beyond which pairs are negatives)'
            )
        if values["classes_per_batch"] is None:
            raise ValueError(
                f'{self._source}: "places_training" "gps" draws P×K batches of places (a query and the database '
                'images within positive_radius): set "classes_per_batch" (P) and "images_per_class" (K), or '
                '"places_training" to "labels"'
            )
        if not LOSS_CLASSES[values["loss"]].mines_in_batch:
            raise ValueError(
                f'{self._source}: loss {values["loss"]!r} learns one proxy per class, and "places_training" "gps" '
                'has no classes; choose a pair or triplet loss, or "places_training" "labels"'
            )


    def _check_cached_mining(self, values):
        """The reference's cached mining: places, batch_size tuples, one device, no memory, a pair loss."""
        problems = [
            (values["dataset"] != "places", f'it mines places by GPS, not dataset {values["dataset"]!r}'),
            (values["classes_per_batch"] is not None, 'its batches are "batch_size" tuples, not P×K: drop '
                                                       '"classes_per_batch" and "images_per_class"'),
            (values["distribute"] is not None, 'it runs on one device: drop "distribute"'),
            (values["memory"] is not None, 'its tuples are mined in the feature cache: drop "memory"'),
            (not LOSS_CLASSES[values["loss"]].mines_in_batch, f'loss {values["loss"]!r} has no pairs to mine'),
        ]
        for failed, reason in problems:
            if failed:
                raise ValueError(f'{self._source}: "mining" "cached": {reason}')


def describe():
    """The schema as a markdown table (key, type, default, meaning), for the README."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, spec in SCHEMA.items():
        choices = f" ({' / '.join(spec.choices)})" if spec.choices else ""
        rows.append(f"| `{key}` | {_type_names(spec.types)} | `{json.dumps(spec.default)}` | {spec.meaning}{choices} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(describe())
