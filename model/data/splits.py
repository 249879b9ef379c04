"""What every loader returns: `Split` (one list of examples) and `DataSource` (a named set of splits).

A split holds its examples either in memory (`images: uint8 [N, H, W, C]`, small datasets such as
MNIST) or as absolute file paths (`paths`, decoded lazily by the tf.data pipeline). Both carry
`labels: int32 [N]` and display `names`; re-identification splits add camera ids, place-recognition
splits add UTM coordinates. The class mapping (class names in label order, `classes.json` of a run)
is shared by the loaders: `class_mapping`, `labels_for`, `read_class_names`.
"""
import collections
import dataclasses
import json

import numpy as np

from model.data.report import ReportEntry


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
        protocol: how to evaluate, a name of `model.evaluation.protocols.PROTOCOLS`: "labels" (retrieval by
            class), "reid" (query/gallery with camera ids), "places" (query/database with GPS ground truth).
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
