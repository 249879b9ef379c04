"""`load_source`: one entry point from a dataset name (and folder) to a DataSource.

    dataset        layout under data_dir                                   splits
    mnist          IDX files (optional: else keras.datasets)              train, [validation], test
    fashion_mnist  IDX files, else the Debian package, else keras.datasets train, [validation], test
    digits         none (bundled with scikit-learn)                       train, [validation], test
    folders        train/<class>/<img> [validation/] [test/],             train, [validation], [test]
                   or <class>/<img> with class_split
    inshop         list_eval_partition.txt + img/                         train, query, gallery
    market1501     bounding_box_train/ query/ bounding_box_test/          train, query, gallery
    places         train/ and test/ with database.csv and queries.csv,    train, database, query
                   or datasets/<name>_train.mat and <name>_test.mat
    cub200         images.txt, image_class_labels.txt, classes.txt,       train, [validation], test
                   images/ (CUB-200-2011: first 100 classes train)

See each loader's module (idx, folders, market1501, places, cub) for the details of its layout; each
registers itself in `model.data.datasets.DATASETS`. What a loader leaves out or flags is logged and
collected in `DataSource.report` (see `model.data.report`).
"""
import logging
import os

import numpy as np

# The loaders register their datasets when imported, in this order: the order of the names in messages.
from model.data import idx  # noqa: F401  (mnist, fashion_mnist, digits)

# isort: split
from model.data import folders  # noqa: F401  (folders, inshop)

# isort: split
from model.data import market1501, places  # noqa: F401

# isort: split
from model.data import cub  # noqa: F401  (cub200)
from model.data.datasets import DATASETS
from model.data.report import report_small_classes
from model.data.splits import DataSource

logger = logging.getLogger(__name__)

SPLIT_ORDER = ("train", "validation", "test", "database", "query", "gallery")


def load_source(dataset, data_dir=None, validation_size=0, class_names=None, seed=0, train_size=None, **options):
    """Load a dataset by name.

    Args:
        dataset: a name of `DATASETS`.
        data_dir: the dataset's folder (str or None); relative paths resolve against the current
            directory. Needed for the file datasets; optional for MNIST and Fashion-MNIST.
        validation_size: held out of train (chosen with `seed`) as the "validation" split, as the
            dataset holds out (`model.data.holdout`): train images (labelled datasets), train identities
            as a small query/gallery (market1501, inshop), or train queries searched in the train
            database (places); a count, or a fraction if below 1. A folders dataset with a validation/
            folder uses that.
        class_names: the class mapping saved by an earlier run; folders, inshop, places and cub200 keep it
            (every class found must be in it), the others check that theirs is equal.
        seed: seed of the validation hold-out and of the train_size cut.
        train_size: keep only this many train images, a seeded random subset, or None for all.
        **options: the dataset's own (folders: class_split; places: positive_radius).

    Returns:
        DataSource; its `report` lists what was left out or flagged (also logged as it is found).
    """
    entry = DATASETS[dataset]
    taken = {option.keyword for option in entry.options}
    for name, value in options.items():
        if name not in taken and value is not None:
            owners = [other.name for other in DATASETS.entries() if name in {o.keyword for o in other.options}]
            where = " or ".join(repr(owner) for owner in owners) or "no"
            raise ValueError(f"{name} is for the {where} dataset only, got {name}={value} with dataset {dataset!r}")
    if data_dir is not None:
        data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
        if os.path.isfile(data_dir):
            raise NotADirectoryError(f"data_dir {data_dir} is a file; expected the folder of the {dataset!r} "
                                     "dataset")
    elif entry.needs_data_dir:
        raise ValueError(f"dataset {dataset!r} is read from files: set data_dir to its folder")
    report = []
    loaded = entry.component(data_dir, class_names=class_names, report=report,
                             **{name: value for name, value in options.items() if name in taken})
    splits, names = loaded.splits, loaded.class_names
    if class_names is not None and list(class_names) != list(names):
        raise ValueError(f"the saved class mapping ({len(class_names)} classes) differs from the "
                         f"{len(names)} classes of {dataset!r} in {data_dir}; evaluate with the data the "
                         "model was trained on, or drop the saved mapping")
    if validation_size and "validation" in splits:
        logger.warning("%s has a validation/ folder: it is the validation split, and validation_size=%s holds "
                       "nothing out of train", data_dir, validation_size)
    elif validation_size:
        splits["train"], splits["validation"] = entry.hold_out(splits["train"], validation_size, seed)
        if splits["validation"].is_query is None:  # images of classes (a query/reference split has its own checks)
            report_small_classes(splits["validation"], "validation", names, data_dir or dataset, report)
    train = splits["train"]
    if train_size is not None and train_size < len(train):
        splits["train"] = train.take(np.random.default_rng(seed).permutation(len(train))[:train_size])
    return DataSource(name=dataset, splits={name: splits[name] for name in SPLIT_ORDER if name in splits},
                      class_names=list(names), channels=loaded.channels,
                      image_size=None if loaded.image_size is None else tuple(int(v) for v in loaded.image_size),
                      protocol=entry.protocol, report=report)
