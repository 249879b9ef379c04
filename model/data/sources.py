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

See each loader's module (idx, folders, market1501, places, cub) for the details of its layout. What a
loader leaves out or flags is logged and collected in `DataSource.report` (see `splits.ReportEntry`).
"""
import logging
import os

from model.data import cub, folders, idx, market1501, places
from model.data.protocols import PROTOCOLS
from model.data.splits import DataSource, report_small_classes

DATASETS = ("mnist", "fashion_mnist", "digits", "folders", "inshop", "market1501", "places", "cub200")
# The evaluation protocol of each dataset (model/data/protocols.py); the others are "labels".
DATASET_PROTOCOLS = {"inshop": "reid", "market1501": "reid", "places": "places"}


def protocol_of(dataset):
    """The name of the evaluation protocol of `dataset` (a key of `model.data.protocols.PROTOCOLS`)."""
    return DATASET_PROTOCOLS.get(dataset, "labels")

logger = logging.getLogger(__name__)


def _load(dataset, data_dir, class_split, class_names, positive_radius, report):
    """(splits, class names, channels, image size) of one dataset, before the validation hold-out."""
    if dataset in ("mnist", "fashion_mnist", "digits"):
        train, test = idx.load_digits() if dataset == "digits" else idx.load_mnist(dataset, data_dir)
        names = [str(d) for d in range(10)] if dataset == "digits" else idx.CLASS_NAMES[dataset]
        return {"train": train, "test": test}, names, 1, train.images.shape[1:3]
    if data_dir is None:
        raise ValueError(f"dataset {dataset!r} is read from files: set data_dir to its folder")
    if dataset == "folders":
        splits, names = folders.load_folders(data_dir, class_split, class_names, report)
    elif dataset == "inshop":
        splits, names = folders.load_inshop(data_dir, class_names, report)
    elif dataset == "market1501":
        splits, names = market1501.load_market1501(data_dir, report)
    elif dataset == "cub200":
        splits, names = cub.load_cub200(data_dir, class_names, report)
    else:
        splits, names = places.load_places(data_dir, positive_radius, class_names, report)
    return splits, names, 3, None


def load_source(dataset, data_dir=None, validation_size=0, class_split=None, class_names=None,
                positive_radius=25.0, seed=0):
    """Load a dataset by name.

    Args:
        dataset: one of DATASETS.
        data_dir: the dataset's folder (str or None); relative paths resolve against the current
            directory. Needed for the file datasets; optional for MNIST and Fashion-MNIST.
        validation_size: held out of train (chosen with `seed`) as the "validation" split, as the
            dataset's protocol holds out (`Protocol.hold_out`): train images (labelled datasets), train
            identities as a small query/gallery (market1501, inshop), or train queries searched in the train
            database (places); a count, or a fraction if below 1. A folders dataset with a validation/
            folder uses that.
        class_split: folders only: train on the first N sorted classes, test on the others.
        class_names: the class mapping saved by an earlier run; folders, inshop, places and cub200 keep it
            (every class found must be in it), the others check that theirs is equal.
        positive_radius: places: metres within which a database image is a positive.
        seed: seed of the validation hold-out.

    Returns:
        DataSource; its `report` lists what was left out or flagged (also logged as it is found).
    """
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {list(DATASETS)}")
    if class_split is not None and dataset != "folders":
        raise ValueError(f"class_split is for the 'folders' dataset only, got class_split={class_split} "
                         f"with dataset {dataset!r}")
    protocol = protocol_of(dataset)
    if data_dir is not None:
        data_dir = os.path.abspath(os.path.expanduser(str(data_dir)))
        if os.path.isfile(data_dir):
            raise NotADirectoryError(f"data_dir {data_dir} is a file; expected the folder of the {dataset!r} "
                                     "dataset")
    report = []
    splits, names, channels, image_size = _load(dataset, data_dir, class_split, class_names, positive_radius,
                                                report)
    if class_names is not None and list(class_names) != list(names):
        raise ValueError(f"the saved class mapping ({len(class_names)} classes) differs from the "
                         f"{len(names)} classes of {dataset!r} in {data_dir}; evaluate with the data the "
                         "model was trained on, or drop the saved mapping")
    if validation_size and "validation" in splits:
        logger.warning("%s has a validation/ folder: it is the validation split, and validation_size=%s holds "
                       "nothing out of train", data_dir, validation_size)
    elif validation_size:
        splits["train"], splits["validation"] = PROTOCOLS[protocol].hold_out(splits["train"], validation_size, seed)
        if splits["validation"].is_query is None:  # images of classes (a query/reference split has its own checks)
            report_small_classes(splits["validation"], "validation", names, data_dir or dataset, report)
    order = ("train", "validation", "test", "database", "query", "gallery")
    splits = {name: splits[name] for name in order if name in splits}
    return DataSource(name=dataset, splits=splits, class_names=list(names), channels=channels,
                      image_size=None if image_size is None else tuple(int(v) for v in image_size),
                      protocol=protocol, report=report)
