"""What every loader returns: `Split` (one list of examples) and `DataSource` (a named set of splits).

A split holds its examples either in memory (`images: uint8 [N, H, W, C]`, small datasets such as
MNIST) or as absolute file paths (`paths`, decoded lazily by the tf.data pipeline). Both carry
`labels: int32 [N]` and display `names`; re-identification splits add camera ids, place-recognition
splits add UTM coordinates. The helpers below are shared by the loaders: class-name mapping, the
seeded validation hold-out, and the warnings about classes too small to form positive pairs.
"""
import dataclasses
import warnings

import numpy as np

from model.data.protocols import PROTOCOLS


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
    """

    labels: np.ndarray
    images: np.ndarray | None = None
    paths: list[str] | None = None
    names: list[str] | None = None
    camids: np.ndarray | None = None
    utm: np.ndarray | None = None

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
                     names=pick(self.names), camids=pick(self.camids), utm=pick(self.utm))


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
    """

    name: str
    splits: dict[str, Split]
    class_names: list[str]
    channels: int
    image_size: tuple[int, int] | None
    protocol: str

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {tuple(PROTOCOLS)}, got {self.protocol!r}")


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
    count = max(1, round(size * len(split))) if 0 < size < 1 else size
    if float(count) != int(count) or not 0 < count < len(split):
        raise ValueError(f"validation_size must be a fraction between 0 and 1 or a count between 1 and "
                         f"{len(split) - 1} (the train split has {len(split)} examples), got {size}")
    chosen = np.random.default_rng(seed).permutation(len(split))[:int(count)]
    is_validation = np.zeros(len(split), dtype=bool)
    is_validation[chosen] = True
    return split.take(np.flatnonzero(~is_validation)), split.take(np.flatnonzero(is_validation))


def warn_small_classes(split, split_name, class_names, where):
    """Warn, once per split, about classes with a single example: they cannot form positive pairs.

    `split.labels` index `class_names`; negative labels (unknown place) are not classes.
    """
    labels, counts = np.unique(split.labels[split.labels >= 0], return_counts=True)
    single = [class_names[label] for label in labels[counts == 1]]
    if single:
        warnings.warn(f"{len(single)} classes of the {split_name} split in {where} have a single image and "
                      f"cannot form positive pairs: {single[:20]}{' ...' if len(single) > 20 else ''}",
                      stacklevel=3)
