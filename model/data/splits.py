"""What every loader returns: `Split` (one list of examples) and `DataSource` (a named set of splits).

A split holds its examples either in memory (`images: uint8 [N, H, W, C]`, small datasets such as
MNIST) or as absolute file paths (`paths`, decoded lazily by the tf.data pipeline). Both carry
`labels: int32 [N]` and display `names`; re-identification splits add camera ids, place-recognition
splits add UTM coordinates. The helpers below are shared by the loaders: class-name mapping, the
seeded validation hold-out, and the data report.

The data report: whatever a loader leaves out or flags (an undecodable or oversized file, a stray
entry, an empty or unreadable class folder, a class with a single image) is logged through the
loader's module logger and recorded as a `ReportEntry` in `DataSource.report`, so that a run
folder keeps it (`write_report`) even when nobody reads the log. `check_trainable` tells, before
training, when no valid pair or triplet can ever be formed.
"""
import collections
import csv
import dataclasses
import json
import logging

import numpy as np

from model.atomic import atomic_file

REPORT_COLUMNS = ("item", "split", "problem", "detail")
# Log messages list this many items of a report at most; the report itself keeps them all.
_LOGGED_ITEMS = 20

# The names of the protocols of model/data/protocols.py (which builds on these splits; tests tie the two).
PROTOCOL_NAMES = ("labels", "reid", "places")

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ReportEntry:
    """One item a loader left out or flagged.

    Attributes:
        item: the file or folder path, or the class name (problems of a whole class).
        split: the split it belongs to ("train", "test", ...), or "" when it belongs to none.
        problem: a short fixed category, e.g. "undecodable", "too large", "not an image file",
            "stray entry", "unreadable", "empty class", "single-image class".
        detail: what exactly, e.g. the decoder's message.
    """

    item: str
    split: str
    problem: str
    detail: str = ""


def record(report, entries, message, log):
    """Add `entries` (ReportEntry list) to `report` (a list, or None) and log `message` with their items.

    One warning through `log` (the calling module's logger) for all entries, listing the first
    _LOGGED_ITEMS as "item: detail" lines; nothing when `entries` is empty.
    """
    if not entries:
        return
    if report is not None:
        report.extend(entries)
    lines = [f"  {entry.item}" + (f": {entry.detail}" if entry.detail else "") for entry in entries[:_LOGGED_ITEMS]]
    if len(entries) > _LOGGED_ITEMS:
        lines.append(f"  ... and {len(entries) - _LOGGED_ITEMS} more (all are in the data report)")
    log.warning("%s:\n%s", message, "\n".join(lines), stacklevel=2)  # the record names the caller


def write_report(entries, path):
    """Write report entries as a CSV file (header item,split,problem,detail), atomically.

    The file is written beside `path` and renamed onto it, so a reader never sees half a report;
    an empty report still gets its header (the record that nothing was left out).

    Args:
        entries: iterable of ReportEntry (e.g. `DataSource.report`).
        path: the CSV file to write, e.g. RUN/data_report.csv.
    """
    with atomic_file(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(REPORT_COLUMNS)
        writer.writerows(dataclasses.astuple(entry) for entry in entries)


def read_class_names(path):
    """The class mapping saved with a run (classes.json): a JSON list of distinct class-name strings.

    Raises:
        ValueError: naming the file, when it cannot be read, is not JSON, or is not a list of distinct
            strings.
    """
    try:
        with open(path, encoding="utf-8") as file:
            names = json.load(file)
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read the class names file {path}: {error}") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"class names file {path} is not valid JSON ({error}); it should hold the run's "
                         'class names in label order, e.g. ["cat", "dog"]') from None
    if not isinstance(names, list) or not names or not all(isinstance(name, str) for name in names):
        raise ValueError(f"class names file {path} should hold a non-empty JSON list of class-name strings, "
                         f"got {json.dumps(names)[:200]}")
    if len(set(names)) != len(names):
        duplicated = sorted(name for name, count in collections.Counter(names).items() if count > 1)
        raise ValueError(f"class names file {path} names some classes twice: {duplicated[:5]}")
    return names


@dataclasses.dataclass
class Split:
    """One split of a dataset: N examples with their labels.

    Attributes:
        labels: int32 [N]; class index into `DataSource.class_names`, or a raw id (Market-1501
            query/gallery person ids, -1 for an unknown place).
        images: uint8 [N, H, W, C] for in-memory datasets, else None.
        paths: N absolute file paths for file datasets, else None (exactly one of images/paths).
        names: N display names: relative path for files, index string for arrays (the example's
            index in the file or array it was loaded from, kept through hold-outs).
        camids: int32 [N] camera ids (Market-1501) or None.
        utm: float64 [N, 2] UTM easting/northing in metres (places) or None.
        is_query: bool [N] (places' train split, which holds database and query images): True for a
            query, or None.
    """

    labels: np.ndarray
    images: np.ndarray | None = None
    paths: list[str] | None = None
    names: list[str] | None = None
    camids: np.ndarray | None = None
    utm: np.ndarray | None = None
    is_query: np.ndarray | None = None

    def __post_init__(self):
        self.labels = np.asarray(self.labels, dtype=np.int32).reshape(-1)
        n = len(self.labels)
        if (self.images is None) == (self.paths is None):
            raise ValueError("a Split needs exactly one of `images` (in memory) or `paths` (files)")
        if self.images is not None:
            self.images = np.asarray(self.images)
            if self.images.dtype != np.uint8 or self.images.ndim != 4 or len(self.images) != n:
                raise ValueError(f"Split.images must be uint8 [N={n}, H, W, C], got "
                                 f"{self.images.dtype} {self.images.shape}")
        else:
            self.paths = [str(p) for p in self.paths]
            if len(self.paths) != n:
                raise ValueError(f"Split has {len(self.paths)} paths but {n} labels")
        if self.names is None:
            self.names = [str(i) for i in range(n)] if self.images is not None else list(self.paths)
        if len(self.names) != n:
            raise ValueError(f"Split has {len(self.names)} names but {n} labels")
        if self.camids is not None:
            self.camids = np.asarray(self.camids, dtype=np.int32).reshape(-1)
            if len(self.camids) != n:
                raise ValueError(f"Split has {len(self.camids)} camera ids but {n} labels")
        if self.utm is not None:
            self.utm = np.asarray(self.utm, dtype=np.float64)
            if self.utm.shape != (n, 2):
                raise ValueError(f"Split.utm must be float64 [N={n}, 2], got {self.utm.shape}")
        if self.is_query is not None:
            self.is_query = np.asarray(self.is_query, dtype=bool).reshape(-1)
            if len(self.is_query) != n:
                raise ValueError(f"Split has {len(self.is_query)} is_query flags but {n} labels")

    def __len__(self):
        return len(self.labels)

    def take(self, indices):
        """The sub-split of the examples at `indices` ([M] ints), every field kept aligned."""
        indices = np.asarray(indices, dtype=np.int64)

        def pick(values):
            if values is None:
                return None
            return values[indices] if isinstance(values, np.ndarray) else [values[i] for i in indices]

        return Split(labels=self.labels[indices], images=pick(self.images), paths=pick(self.paths),
                     names=pick(self.names), camids=pick(self.camids), utm=pick(self.utm),
                     is_query=pick(self.is_query))


@dataclasses.dataclass
class DataSource:
    """A dataset ready for `make_dataset`.

    Attributes:
        name: the dataset name given to `load_source` ("mnist", "folders", ...).
        splits: split name -> Split ("train", "validation", "test"; or "train", "query", "gallery";
            or "train", "database", "query").
        class_names: label -> class name (save it with a run so evaluation reuses the mapping).
        channels: natural number of channels (1 for MNIST-like arrays, 3 for files).
        image_size: (h, w) of in-memory images, None for files (sizes vary, the pipeline resizes).
        protocol: how to evaluate: "labels" (retrieval by class), "reid" (query/gallery with
            camera ids), "places" (query/database with GPS ground truth).
        report: ReportEntry list: what the loader left out or flagged, with reasons (write it into
            the run folder with `write_report`).
    """

    name: str
    splits: dict[str, Split]
    class_names: list[str]
    channels: int
    image_size: tuple[int, int] | None
    protocol: str
    report: list[ReportEntry] = dataclasses.field(default_factory=list)

    def __post_init__(self):
        if self.protocol not in PROTOCOL_NAMES:
            raise ValueError(f"protocol must be one of {PROTOCOL_NAMES}, got {self.protocol!r}")


def class_mapping(train_classes, other_classes, saved=None, where=""):
    """Class names in label order: the train classes (sorted) first, then those seen only elsewhere.

    Train labels are then 0..n_train-1 (what a classifier or proxy loss over train classes
    expects) and classes never seen in training get the labels after them. With `saved` (the
    mapping stored by an earlier run) that mapping is kept, and every class found here must be in it.

    Args:
        train_classes: iterable of class names found in the train split.
        other_classes: iterable of class names found in the other splits.
        saved: list of class names from an earlier run, or None.
        where: the data location, named in the error message.

    Returns:
        list[str], the class names in label order.
    """
    train = sorted(set(train_classes))
    others = sorted(set(other_classes) - set(train))
    if saved is None:
        return train + others
    saved = [str(name) for name in saved]
    unknown = sorted(set(train + others) - set(saved))
    if unknown:
        raise ValueError(f"the saved class mapping ({len(saved)} classes) does not match the data in "
                         f"{where}: {len(unknown)} classes are not in it, e.g. {unknown[:5]}; evaluate "
                         "with the data the model was trained on, or drop the saved mapping")
    return saved


def labels_for(names, class_names):
    """int32 [N] label of each class name in `names` ([N] strings) under the mapping `class_names`."""
    index = {name: i for i, name in enumerate(class_names)}
    return np.array([index[name] for name in names], dtype=np.int32)


def hold_out_count(size, total, what):
    """How many of `total` items (examples, queries, identities) `validation_size` = `size` holds out.

    `size` is a count (int, or a float with an integral value) or a fraction 0 < size < 1 of `total`,
    rounded to the nearest count (at least 1); ValueError naming validation_size unless 1 <= count < total.
    """
    count = max(1, round(size * total)) if 0 < size < 1 else size
    if float(count) != int(count) or not 0 < count < total:
        raise ValueError(f"validation_size must be a fraction between 0 and 1 or a count between 1 and "
                         f"{total - 1} (the train split has {total} {what}), got {size}")
    return int(count)


def hold_out(split, size, seed):
    """Split off `size` examples of `split`, chosen at random with `seed`, as a validation split.

    Both parts keep the original order of their examples, so the hold-out is the same in every run
    with the same seed.

    Args:
        split: the Split to divide.
        size: a count (int, or a float with an integral value), or a fraction 0 < size < 1 of
            len(split), rounded to the nearest count (at least 1).
        seed: int.

    Returns:
        (train, validation) Splits of len(split) - count and count examples.
    """
    count = hold_out_count(size, len(split), "examples")
    chosen = np.random.default_rng(seed).permutation(len(split))[:count]
    is_validation = np.zeros(len(split), dtype=bool)
    is_validation[chosen] = True
    return split.take(np.flatnonzero(~is_validation)), split.take(np.flatnonzero(is_validation))


def report_small_classes(split, split_name, class_names, where, report=None):
    """Report the classes of `split` with a single example: they cannot form positive pairs.

    `split.labels` index `class_names`; negative labels (unknown place) are not classes.
    """
    classes = np.flatnonzero(split.labels >= 0)  # [M] examples that belong to a class
    labels, first, counts = np.unique(split.labels[classes], return_index=True, return_counts=True)
    entries = [ReportEntry(class_names[label], split_name, "single-image class",
                           f"its only image: {split.names[classes[index]]}")
               for label, index in zip(labels[counts == 1], first[counts == 1], strict=True)]
    record(report, entries, f"{len(entries)} classes of the {split_name} split in {where} have a single image "
                            "and cannot form positive pairs", logger)


def check_trainable(params, labels, in_batch=True):
    """The reasons why training on `labels` can never form a valid pair or triplet; each one logged.

    In-batch losses need, in one batch, two images of a class (a positive pair) and an image of
    another class (a negative); proxy losses (proxy_nca) need only the classes. Checked: fewer
    than two images or two classes in the split, P×K batches with K = 1 (no positive) or P = 1 (no
    negative), batches of one image, and classes that all have a single image (the only positive
    of an image is then itself, repeated by P×K sampling).

    Args:
        params: the experiment parameters (reads loss, classes_per_batch, images_per_class, batch_size).
        labels: int [N] labels of the training split actually used (after train_size); negative
            labels (unknown place) are no class.
        in_batch: the loss mines pairs or triplets inside the batch (`MinedLoss.mines_in_batch`;
            False for proxy losses).

    Returns:
        list of str, the problems found (empty when training can form pairs and triplets).
    """
    labels = np.asarray(labels).reshape(-1)
    counts = np.unique(labels[labels >= 0], return_counts=True)[1]
    per_batch, per_class = params.classes_per_batch, params.images_per_class
    problems = []
    if len(labels) < 2:
        problems.append(f"the training split has {len(labels)} image(s) (train_size={params.train_size}): no pair")
    if len(counts) < 2:
        problems.append(f"the training split has {len(counts)} class(es): no negative, the loss is 0 at every step")
    if per_batch == 1:
        problems.append("classes_per_batch (P) = 1: a batch holds one class, so no negative")
    if in_batch and per_class == 1:
        problems.append(f'images_per_class (K) = 1: a batch holds one image per class, so loss "{params.loss}" '
                        "finds no positive pair; use K >= 2")
    if in_batch and per_batch is None and params.batch_size == 1:
        problems.append("batch_size = 1: a batch of one image holds no pair")
    if in_batch and len(counts) and counts.max() < 2:
        problems.append("every class has a single image: the only positive of an image is itself")
    for problem in problems:
        logger.warning("no valid pair or triplet can be formed: %s", problem)
    return problems
