"""CUB-200-2011 (Wah et al., "The Caltech-UCSD Birds-200-2011 Dataset", 2011) in its own layout, split
by the deep-metric-learning protocol (Oh Song et al., "Deep Metric Learning via Lifted Structured
Feature Embedding", CVPR 2016): the first half of the classes (100 of 200) train, the other half test.

`data_dir` holds, as the archive unpacks (`CUB_200_2011/`):
    images.txt               "<image id> <path under images/>"   e.g. "1 001.Black_footed_Albatross/Black_..._18.jpg"
    image_class_labels.txt   "<image id> <class id>"             e.g. "1 1"
    classes.txt              "<class id> <class name>"           e.g. "1 001.Black_footed_Albatross"
    images/                  the image files
The archive's train_test_split.txt (a split of the images within every class) is not this protocol's
and is not read. Classes are ordered by their id; the first ⌊n/2⌋ ids train. A malformed line, an id
listed twice, ids that do not match between the three lists, or a listed image that does not exist
is an error naming the file and the line; images that do not decode are logged, recorded in the data
report and left out (`images.check_images`), and a class left without images is reported.
"""
import logging
import os

from model.data.datasets import Loaded, register_dataset
from model.data.images import check_images
from model.data.report import ReportEntry, record, report_small_classes
from model.data.splits import Split, class_mapping, labels_for

CUB_LISTS = ("images.txt", "image_class_labels.txt", "classes.txt")

logger = logging.getLogger(__name__)


def _read_list(path, what):
    """{id: (value, line number)} of a CUB list file of "<integer id> <value>" lines.

    Blank lines are skipped; `what` names the value in error messages (e.g. "class id").

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: naming the file and line, for a line that is not "<integer id> <value>" or an id
            listed twice.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"CUB-200-2011 list {path} does not exist; the dataset folder holds "
                                f"{', '.join(CUB_LISTS)} and images/")
    entries = {}
    with open(path, encoding="utf-8-sig") as handle:  # -sig: a byte-order mark is not part of the first id
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            fields = line.split(maxsplit=1)
            if len(fields) != 2 or not fields[0].isdigit():
                raise ValueError(f"{path}, line {number}: expected '<image or class id> <{what}>', got "
                                 f"{line.rstrip()!r}")
            key, value = int(fields[0]), fields[1].strip()
            if key in entries:
                raise ValueError(f"{path}, line {number}: id {key} is listed twice (first on line "
                                 f"{entries[key][1]})")
            entries[key] = (value, number)
    if not entries:
        raise ValueError(f"{path} lists nothing")
    return entries


def _class_ids(labels, labels_path, classes):
    """{image id: class id} from image_class_labels.txt, each class id checked against classes.txt."""
    class_of = {}
    for image, (value, number) in labels.items():
        if not value.isdigit():
            raise ValueError(f"{labels_path}, line {number}: expected '<image id> <class id>', the class id "
                             f"an integer, got class id {value!r}")
        if int(value) not in classes:
            raise ValueError(f"{labels_path}, line {number}: class id {value} of image {image} is not in "
                             "classes.txt")
        class_of[image] = int(value)
    return class_of


def _check_same_images(images, images_path, labels, labels_path):
    """Every image id of images.txt has a class in image_class_labels.txt, and no other id is there."""
    for ids, path, other, other_path in ((images, images_path, labels, labels_path),
                                         (labels, labels_path, images, images_path)):
        missing = sorted(set(ids) - set(other))
        if missing:
            first = missing[0]
            raise ValueError(f"{path}, line {ids[first][1]}: image id {first} is not in {other_path} "
                             f"({len(missing)} ids of {os.path.basename(path)} are not, e.g. {missing[:5]}); "
                             "the two lists must name the same images")


def load_cub200(data_dir, class_names=None, report=None):
    """Load CUB-200-2011 with the deep-metric-learning class split.

    Args:
        data_dir: absolute path of the CUB_200_2011 folder (see the module docstring).
        class_names: saved class mapping (class names of classes.txt) to reuse, or None.
        report: a list that gets a ReportEntry for everything left out or flagged, or None.

    Returns:
        (splits, class_names): {"train", "test": Split of file paths}, names the paths under images/;
        labels index the class names of classes.txt, the train classes first.
    """
    paths = {name: os.path.join(data_dir, name) for name in CUB_LISTS}
    images = _read_list(paths["images.txt"], "path under images/")
    labels = _read_list(paths["image_class_labels.txt"], "class id")
    classes = _read_list(paths["classes.txt"], "class name")
    if len(classes) < 2:
        raise ValueError(f"{paths['classes.txt']} lists {len(classes)} class; the protocol trains on the first half "
                         "of the classes and tests on the other half, so it needs at least two")
    duplicated = {}
    for class_id, (name, number) in classes.items():
        if name in duplicated:
            raise ValueError(f"{paths['classes.txt']}, line {number}: class name {name!r} is also the name of "
                             f"class {duplicated[name]}")
        duplicated[name] = class_id
    _check_same_images(images, paths["images.txt"], labels, paths["image_class_labels.txt"])
    class_of = _class_ids(labels, paths["image_class_labels.txt"], classes)

    image_root = os.path.join(data_dir, "images")
    ids = sorted(images)
    files = [os.path.join(image_root, images[image][0]) for image in ids]
    for image, file in zip(ids, files, strict=True):
        relative, number = images[image]
        if os.path.isabs(relative) or os.path.normpath(relative).split(os.sep)[0] == os.pardir:
            raise ValueError(f"{paths['images.txt']}, line {number}: path {relative!r} of image {image} is not "
                             "under images/ (expected a relative path such as 001.Black_footed_Albatross/x.jpg)")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{paths['images.txt']}, line {number}: image {image} ({relative}) does not "
                                    f"exist under {image_root}")
    train_ids = set(sorted(classes)[:len(classes) // 2])
    split_of = ["train" if class_of[image] in train_ids else "test" for image in ids]
    keep = check_images(files, data_dir, report, split_of)
    kept = [i for i, ok in enumerate(keep) if ok]
    names = {i: classes[class_of[ids[i]]][0] for i in kept}

    found = {class_of[ids[i]] for i in kept}
    empty = [ReportEntry(classes[class_id][0], "train" if class_id in train_ids else "test", "empty class",
                         "no decodable image of it is listed in images.txt")
             for class_id in sorted(classes) if class_id not in found]
    record(report, empty, f"{len(empty)} classes of {paths['classes.txt']} have no image and are left out", logger)
    mapping = class_mapping([names[i] for i in kept if split_of[i] == "train"],
                            [names[i] for i in kept if split_of[i] == "test"], class_names, data_dir)
    splits = {}
    for split in ("train", "test"):
        chosen = [i for i in kept if split_of[i] == split]
        if not chosen:
            raise ValueError(f"{paths['images.txt']} lists no decodable image of the {split} classes (class ids "
                             f"{'up to' if split == 'train' else 'after'} {max(train_ids)} of classes.txt)")
        splits[split] = Split(labels=labels_for([names[i] for i in chosen], mapping),
                              paths=[files[i] for i in chosen], names=[images[ids[i]][0] for i in chosen])
    report_small_classes(splits["train"], "train", mapping, data_dir, report)
    return splits, mapping


@register_dataset("cub200")
def cub200(data_dir, class_names=None, report=None):
    """CUB-200-2011 with the deep-metric-learning class split (see the module docstring)."""
    splits, names = load_cub200(data_dir, class_names, report)
    return Loaded(splits, names, 3, None)
