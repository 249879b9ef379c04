"""Image datasets stored as files: class folders (`root/<class>/<image>`) and In-shop Clothes.

Class folders (the layout of Keras's `image_dataset_from_directory` and of the NetVLAD training
code), one of:
  * `data_dir/train/<class>/<image>`, optional `data_dir/validation/...` and `data_dir/test/...`;
  * `data_dir/<class>/<image>` with `class_split=N`: the first N classes (sorted by name) are the
    train split and the other classes the test split. This is the deep-metric-learning protocol of
    unseen test classes, e.g. CUB-200-2011's `images/` folder with class_split=100
    (Wah et al. 2011; Oh Song et al., "Deep Metric Learning via Lifted Structured Feature
    Embedding", CVPR 2016).
Every file is decoded once at load time (see `images.check_images`); the ones that fail are
reported and left out, class folders left empty are ignored with a warning.

In-shop Clothes Retrieval (Liu et al., "DeepFashion", CVPR 2016): `list_eval_partition.txt`
(in `data_dir` or `data_dir/Eval`) lists `image_name item_id evaluation_status` with status
train, query or gallery; image names are relative to `data_dir` (or `data_dir/Img`).
"""
import os
import warnings

import numpy as np

from model.data.images import check_images
from model.data.splits import Split, class_mapping, labels_for, warn_small_classes

FOLDER_SPLITS = ("train", "validation", "test")
INSHOP_SPLITS = ("train", "query", "gallery")


def _scan_class_folders(root):
    """{class name: [file paths]} for `root/<class>/<file>`, both levels sorted by name.

    Files lying directly in `root` and folders nested inside a class folder belong to no class:
    they are reported in a warning and left out.
    """
    classes, stray = {}, []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir():
            stray.append(entry.path)
            continue
        files = []
        for item in sorted(os.scandir(entry.path), key=lambda e: e.name):
            (files if item.is_file() else stray).append(item.path)
        classes[entry.name] = files
    if stray:
        warnings.warn(f"{len(stray)} entries in {root} are not files inside a class folder "
                      f"(expected {root}/<class>/<image>) and are left out: {stray}", stacklevel=4)
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


def _drop_undecodable_and_empty(scans, where):
    """Remove undecodable files (one warning for all) and then the class folders left empty."""
    paths = [path for classes in scans.values() for files in classes.values() for path in files]
    decodable = set(np.asarray(paths, dtype=object)[check_images(paths, where)])
    for root, classes in scans.items():
        empty = []
        for name in list(classes):
            classes[name] = [path for path in classes[name] if path in decodable]
            if not classes[name]:
                empty.append(os.path.join(root, name))
                del classes[name]
        if empty:
            warnings.warn(f"{len(empty)} class folders hold no decodable image and are ignored: {empty}",
                          stacklevel=3)
        if not classes:
            raise FileNotFoundError(f"no images in {root}: expected {root}/<class>/<image> files "
                                    "(JPEG, PNG, BMP or GIF)")


def _split_classes(classes, class_split, root):
    """{class: files} of one root -> ({train classes}, {test classes}) with the first class_split classes."""
    names = sorted(classes)
    if not 0 < class_split < len(names):
        raise ValueError(f"class_split={class_split} must leave classes on both sides, but {root} has "
                         f"{len(names)} classes with images")
    return ({name: classes[name] for name in names[:class_split]},
            {name: classes[name] for name in names[class_split:]})


def load_folders(data_dir, class_split=None, class_names=None):
    """Load a class-folder dataset.

    Args:
        data_dir: absolute path of the dataset folder.
        class_split: int or None; with a single class root, train on its first N sorted classes.
        class_names: saved class mapping to reuse, or None.

    Returns:
        (splits, class_names): {"train", optional "validation", "test": Split of file paths} and the
        class names in label order (train classes first, see `splits.class_mapping`).
    """
    roots = _folder_layout(data_dir, class_split)
    scans = {root: _scan_class_folders(root) for root in roots.values()}
    _drop_undecodable_and_empty(scans, data_dir)
    by_split = {name: scans[root] for name, root in roots.items()}
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
        warn_small_classes(splits[split_name], split_name, mapping, data_dir)
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


def load_inshop(data_dir, class_names=None):
    """Load In-shop Clothes Retrieval.

    Args:
        data_dir: absolute path of the dataset folder (see the module docstring).
        class_names: saved class mapping (item ids) to reuse, or None.

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
    keep = check_images(paths, data_dir)
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
    warn_small_classes(splits["train"], "train", mapping, data_dir)
    return splits, mapping
