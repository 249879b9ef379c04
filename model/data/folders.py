"""Image datasets stored as files: class folders (`root/<class>/<image>`) and In-shop Clothes.

Class folders (the layout of Keras's `image_dataset_from_directory` and of the NetVLAD training
code), one of:
  * `data_dir/train/<class>/<image>`, optional `data_dir/validation/...` and `data_dir/test/...`;
  * `data_dir/<class>/<image>` with `class_split=N`: the first N classes (sorted by name) are the
    train split and the other classes the test split. This is the deep-metric-learning protocol of
    unseen test classes, e.g. CUB-200-2011's `images/` folder with class_split=100
    (Wah et al. 2011; Oh Song et al., "Deep Metric Learning via Lifted Structured Feature
    Embedding", CVPR 2016).
Image files are those with `images.IMAGE_EXTENSIONS`; each is checked once at load time (see
`images.check_images`). What is left out is logged and recorded in the data report with its reason:
other files, entries outside a class folder, unreadable entries (a symbolic link loop, a folder
that cannot be listed), files that are too large or do not decode, and the class folders left empty.

In-shop Clothes Retrieval (Liu et al., "DeepFashion", CVPR 2016): `list_eval_partition.txt`
(in `data_dir` or `data_dir/Eval`) lists `image_name item_id evaluation_status` with status
train, query or gallery; image names are relative to `data_dir` (or `data_dir/Img`).
"""
import logging
import os

import numpy as np

from model.data.datasets import Loaded, register_dataset
from model.data.holdout import hold_out_identities
from model.data.images import IMAGE_EXTENSIONS, check_images, is_image_file
from model.data.report import ReportEntry, record, report_small_classes
from model.data.splits import Split, class_mapping, labels_for
from model.registry import INT, NONE, Option

FOLDER_SPLITS = ("train", "validation", "test")
INSHOP_SPLITS = ("train", "query", "gallery")

logger = logging.getLogger(__name__)


def _kind(entry):
    """(kind, reason) of a directory entry: ("dir", ""), ("file", ""), or (None, why it is neither)."""
    try:
        if entry.is_dir():
            return "dir", ""
        if entry.is_file():
            return "file", ""
    except OSError as error:  # a symbolic link loop raises ELOOP here
        return None, f"cannot be read: {error.strerror}"
    return None, "a broken symbolic link" if entry.is_symlink() else "not a regular file"


def _scan_class_folders(root, split, report):
    """{class name: [image file paths]} for `root/<class>/<file>`, both levels sorted by name.

    Entries that are not image files directly inside a class folder (files in `root`, folders
    nested in a class folder, files without an image extension, unreadable entries and class
    folders) are logged and recorded in `report` as belonging to `split`, and left out.
    """
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as error:
        raise PermissionError(f"cannot list the image folder {root}: {error.strerror}") from None
    classes, left_out = {}, []
    for entry in entries:
        kind, reason = _kind(entry)
        if kind != "dir":
            left_out.append(ReportEntry(entry.path, split, "stray entry" if kind else "unreadable",
                                        reason or "a file beside the class folders"))
            continue
        try:
            items = sorted(os.scandir(entry.path), key=lambda e: e.name)
        except OSError as error:
            left_out.append(ReportEntry(entry.path, split, "unreadable",
                                        f"class folder cannot be listed: {error.strerror}"))
            continue
        files = []
        for item in items:
            kind, reason = _kind(item)
            if kind == "file" and is_image_file(item.name):
                files.append(item.path)
            elif kind == "file":
                left_out.append(ReportEntry(item.path, split, "not an image file",
                                            f"extension not one of {', '.join(IMAGE_EXTENSIONS)}"))
            elif kind == "dir":
                left_out.append(ReportEntry(item.path, split, "stray entry",
                                            "a folder inside a class folder (images lie directly in it)"))
            else:
                left_out.append(ReportEntry(item.path, split, "unreadable", reason))
        classes[entry.name] = files
    record(report, left_out, f"{len(left_out)} entries in {root} are not image files inside a class folder "
                             f"(expected {root}/<class>/<image>) and are left out", logger)
    return classes


def _folder_layout(data_dir, class_split):
    """{split name: class root} for the two supported layouts (see the module docstring)."""
    if not os.path.isdir(data_dir):
        raise FileNotFoundError(f"image folder {data_dir} does not exist")
    train_dir = os.path.join(data_dir, "train")
    if os.path.isdir(train_dir):
        if class_split is not None:
            raise ValueError(f"class_split={class_split} splits the classes of one class-folder root, but "
                             f"{data_dir} already has a train/ folder; drop class_split or point data_dir at "
                             "a root of class folders (such as CUB_200_2011/images)")
        return {name: os.path.join(data_dir, name) for name in FOLDER_SPLITS
                if os.path.isdir(os.path.join(data_dir, name))}
    if class_split is None:
        raise FileNotFoundError(f"no train/ folder in {data_dir}: expected {data_dir}/train/<class>/<image> "
                                f"(with optional validation/ and test/), or {data_dir}/<class>/<image> with "
                                "class_split=N to train on the first N classes and test on the others")
    return {"all": data_dir}


def _drop_undecodable_and_empty(scans, roots, where, report):
    """Remove the files that fail `check_images`, then the class folders left empty (both reported).

    `scans` maps a split name to {class: files} of the class root `roots[split name]`.
    """
    paths, split_of = [], []
    for split, classes in scans.items():
        for files in classes.values():
            paths += files
            split_of += [split] * len(files)
    decodable = set(np.asarray(paths, dtype=object)[check_images(paths, where, report, split_of)])
    for split, classes in scans.items():
        empty = []
        for name in list(classes):
            classes[name] = [path for path in classes[name] if path in decodable]
            if not classes[name]:
                empty.append(ReportEntry(os.path.join(roots[split], name), split, "empty class",
                                         "no image that decodes"))
                del classes[name]
        record(report, empty, f"{len(empty)} class folders hold no decodable image and are ignored", logger)
        if not classes:
            raise FileNotFoundError(f"no images in {roots[split]}: expected {roots[split]}/<class>/<image> files "
                                    f"({', '.join(IMAGE_EXTENSIONS)})")


def _split_classes(classes, class_split, root):
    """{class: files} of one root -> ({train classes}, {test classes}) with the first class_split classes."""
    names = sorted(classes)
    if not 0 < class_split < len(names):
        raise ValueError(f"class_split={class_split} must leave classes on both sides, but {root} has "
                         f"{len(names)} classes with images")
    return ({name: classes[name] for name in names[:class_split]},
            {name: classes[name] for name in names[class_split:]})


def load_folders(data_dir, class_split=None, class_names=None, report=None):
    """Load a class-folder dataset.

    Args:
        data_dir: absolute path of the dataset folder.
        class_split: int or None; with a single class root, train on its first N sorted classes.
        class_names: saved class mapping to reuse, or None.
        report: a list that gets a ReportEntry for everything left out or flagged, or None.

    Returns:
        (splits, class_names): {"train", optional "validation", "test": Split of file paths} and the
        class names in label order (train classes first, see `splits.class_mapping`).
    """
    roots = _folder_layout(data_dir, class_split)
    # With class_split the one root's split is only known per class, after the scan: "" until then.
    by_split = {name: _scan_class_folders(root, "" if name == "all" else name, report) for name, root in roots.items()}
    _drop_undecodable_and_empty(by_split, roots, data_dir, report)
    if class_split is not None:
        by_split = dict(zip(("train", "test"), _split_classes(by_split.pop("all"), class_split, data_dir),
                            strict=True))
    others = [name for split_name, classes in by_split.items() if split_name != "train" for name in classes]
    mapping = class_mapping(by_split["train"], others, class_names, data_dir)
    splits = {}
    for split_name, classes in by_split.items():
        paths = [path for files in classes.values() for path in files]
        names = [name for name, files in classes.items() for _ in files]
        splits[split_name] = Split(labels=labels_for(names, mapping), paths=paths,
                                   names=[os.path.relpath(path, data_dir) for path in paths])
        report_small_classes(splits[split_name], split_name, mapping, data_dir, report)
    return splits, mapping


def _read_inshop_list(list_path):
    """Rows (image name, item id, status) of In-shop's list_eval_partition.txt."""
    try:
        with open(list_path) as file:
            lines = [line.split() for line in file if line.strip()]
    except OSError as error:
        raise FileNotFoundError(f"cannot read the In-shop partition list {list_path}: {error}") from error
    header = ["image_name", "item_id", "evaluation_status"]
    if len(lines) < 2 or lines[1] != header or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise ValueError(f"{list_path} should start with a line holding the number of images and the header "
                         f"line {' '.join(header)}")
    rows = lines[2:]
    if int(lines[0][0]) != len(rows):
        raise ValueError(f"{list_path} announces {lines[0][0]} images but lists {len(rows)}")
    for number, row in enumerate(rows, start=3):
        if len(row) != 3 or row[2] not in INSHOP_SPLITS:
            raise ValueError(f"{list_path} line {number}: expected 'image_name item_id status' with status "
                             f"one of {INSHOP_SPLITS}, got {' '.join(row)!r}")
    return rows


def load_inshop(data_dir, class_names=None, report=None):
    """Load In-shop Clothes Retrieval.

    Args:
        data_dir: absolute path of the dataset folder (see the module docstring).
        class_names: saved class mapping (item ids) to reuse, or None.
        report: a list that gets a ReportEntry for everything left out or flagged, or None.

    Returns:
        (splits, class_names): {"train", "query", "gallery": Split of file paths}, labels index the
        item ids in `class_names` (train items first).
    """
    candidates = [os.path.join(data_dir, "list_eval_partition.txt"),
                  os.path.join(data_dir, "Eval", "list_eval_partition.txt")]
    list_path = next((path for path in candidates if os.path.isfile(path)), None)
    if list_path is None:
        raise FileNotFoundError(f"no In-shop partition list: looked for {candidates}")
    rows = _read_inshop_list(list_path)
    image_root = next((root for root in (data_dir, os.path.join(data_dir, "Img"))
                       if os.path.isfile(os.path.join(root, rows[0][0]))), data_dir)
    paths = [os.path.join(image_root, row[0]) for row in rows]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} images listed in {list_path} do not exist under "
                                f"{image_root}, e.g. {missing[:5]}")
    keep = check_images(paths, data_dir, report, [row[2] for row in rows])
    rows = [row for row, ok in zip(rows, keep, strict=True) if ok]
    paths = [path for path, ok in zip(paths, keep, strict=True) if ok]
    mapping = class_mapping([row[1] for row in rows if row[2] == "train"],
                            [row[1] for row in rows if row[2] != "train"], class_names, data_dir)
    splits = {}
    for split_name in INSHOP_SPLITS:
        chosen = [i for i, row in enumerate(rows) if row[2] == split_name]
        if not chosen:
            raise ValueError(f"{list_path} lists no decodable {split_name} image")
        splits[split_name] = Split(labels=labels_for([rows[i][1] for i in chosen], mapping),
                                   paths=[paths[i] for i in chosen], names=[rows[i][0] for i in chosen])
    report_small_classes(splits["train"], "train", mapping, data_dir, report)
    return splits, mapping


def _class_split_needs_folders(values, chosen):
    if values["class_split"] is not None and values["dataset"] != "folders":
        return (f"class_split is for the 'folders' dataset only, got class_split={values['class_split']} with "
                f"dataset {values['dataset']!r}")
    return None


CLASS_SPLIT = Option("class_split", (INT, NONE), None, "folders: train on the first N classes, test on the rest",
                     positive=True)
RULES = (_class_split_needs_folders,)


@register_dataset("folders", options=(CLASS_SPLIT,))
def folders(data_dir, class_names=None, report=None, class_split=None):
    """Class folders (see the module docstring)."""
    splits, names = load_folders(data_dir, class_split, class_names, report)
    return Loaded(splits, names, 3, None)


@register_dataset("inshop", protocol="reid", hold_out=hold_out_identities)
def inshop(data_dir, class_names=None, report=None):
    """In-shop Clothes Retrieval (see the module docstring): train, query and gallery."""
    splits, names = load_inshop(data_dir, class_names, report)
    return Loaded(splits, names, 3, None)
