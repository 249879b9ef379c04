"""The dataset registry: each loader registers itself with its options, its hold-out and its protocol.

    @register_dataset("market1501", protocol="reid", hold_out=hold_out_identities)
    def market1501(data_dir, class_names=None, report=None): ... -> Loaded(splits, class_names, 3, None)

A loader reads a dataset into `Split`s (`model.data.splits`) and returns them with the class names in
label order, its natural number of channels and its image size (None when the sizes vary).
`model.data.sources.load_source` is the one entry point that calls them.
"""
import dataclasses
from collections.abc import Callable
from typing import NamedTuple

from model.data.holdout import hold_out
from model.registry import FLOAT, INT, NONE, STR, Option, Registry


class Loaded(NamedTuple):
    """What a loader returns: splits {name: Split}, class names in label order, channels, (h, w) or None."""

    splits: dict
    class_names: list
    channels: int
    image_size: tuple | None


@dataclasses.dataclass(frozen=True)
class TrainingPairs:
    """How training forms its pairs when not by the labels of the batch (a dataset's `pairing`).

    Attributes:
        groups: list of int arrays of train-split indices (they may overlap), drawn as the classes of P×K
            batches (`make_dataset(..., groups=groups)`, whose labels are then the indices), or None.
        relation_fn: `relation_fn(labels, ref_labels) -> int32 [B, R]`, 1 positive, -1 negative, 0 neither,
            for the loss's `relation` (`EmbeddingModel(relation_fn=...)`).
        batches: `batches(start_step) -> dataset` of the training batches when they are not P×K batches of
            `groups` (cached mining, `model.data.cached`), or None.
        cache: a `model.data.cached.FeatureCache` that training refreshes with the network's embeddings, or None.
    """

    groups: list | None
    relation_fn: Callable
    batches: Callable | None = None
    cache: object = None


DATASETS = Registry("dataset", key="dataset", default="fashion_mnist", meaning="data source")


def register_dataset(name, *, options=(), rules=(), protocol="labels", hold_out=hold_out, needs_data_dir=True,
                     pairing=None):
    """Decorator: register `loader(data_dir, class_names=None, report=None, **options) -> Loaded` under `name`.

    Args:
        options: the `Option`s of the params.json keys of its own keyword arguments.
        rules: its cross-option rules, checked when it is chosen.
        protocol: how it is evaluated, a name of `model.evaluation.protocols.PROTOCOLS`.
        hold_out: `hold_out(train split, validation_size, seed) -> (train, validation)` (`model.data.holdout`).
        needs_data_dir: it is read from files (data_dir must be set); else data_dir is optional.
        pairing: `pairing(split, **arguments) -> TrainingPairs or None`, how training forms its pairs when not
            by labels (places: by GPS), or None.
    """
    return DATASETS.register(name, options=options, rules=rules, protocol=protocol, hold_out=hold_out,
                             needs_data_dir=needs_data_dir, pairing=pairing)


def _no_pairing(split, **arguments):
    return None


def pairing_of(name) -> Callable:
    """The pairing hook of dataset `name` (a function that returns None when training pairs by labels)."""
    return DATASETS[name].pairing or _no_pairing


DATA_DIR = Option("data_dir", (STR, NONE), None, "data folder (relative paths resolve against the current directory)")
TRAIN_SIZE = Option("train_size", (INT, NONE), None, "use only this many training images; null = all", positive=True)
VALIDATION_SIZE = Option("validation_size", (INT, FLOAT), 0.1, "held out of train: a count, or a fraction if < 1",
                         minimum=0)
