"""Market-1501 person re-identification (Zheng et al., "Scalable Person Re-identification: A
Benchmark", ICCV 2015).

`data_dir` holds `bounding_box_train/` (751 identities), `query/` and `bounding_box_test/` (the
gallery). A file name `PPPP_cCsS_FFFFFF_BB.jpg` carries the person id PPPP, the camera C, the
video sequence S, the frame FFFFFF and the box number BB. Gallery ids `-1` (junk: bad detections,
ignored by the evaluation) and `0000` (distractors: wrong for every query) are kept distinct;
a few real files end in `.jpg.jpg` and parse like the others. Files that do not follow the
pattern (e.g. the `Thumbs.db` in the original archive) are reported and left out.
"""
import dataclasses
import os
import re
import warnings

import numpy as np

from model.data.images import check_images
from model.data.splits import Split, class_mapping, labels_for, warn_small_classes

MARKET1501_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_NAME = re.compile(r"(?P<pid>-1|\d+)_c(?P<camid>\d+)s(?P<sequence>\d+)_(?P<frame>\d+)_(?P<box>\d+)(\.jpg)+")


def parse_market1501_name(name):
    """Person id and camera id of a Market-1501 file name.

    Args:
        name: a file name such as "0002_c1s1_000451_03.jpg" or "-1_c4s6_022316_11.jpg.jpg".

    Returns:
        (pid, camid): ints; pid -1 for junk and 0 for distractors.

    Raises:
        ValueError: when `name` does not follow the pattern PPPP_cCsS_FFFFFF_BB.jpg.
    """
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"{name!r} is not a Market-1501 file name PPPP_cCsS_FFFFFF_BB.jpg")
    return int(match["pid"]), int(match["camid"])


def _scan(folder):
    """Sorted (file names, pids, camids) of one Market-1501 folder; other files are warned about."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"Market-1501 folder {folder} does not exist")
    names, pids, camids, other = [], [], [], []
    for name in sorted(os.listdir(folder)):
        match = _NAME.fullmatch(name)
        if match is None or not os.path.isfile(os.path.join(folder, name)):
            other.append(os.path.join(folder, name))
            continue
        names.append(name)
        pids.append(int(match["pid"]))
        camids.append(int(match["camid"]))
    if other:
        warnings.warn(f"{len(other)} entries in {folder} are not Market-1501 images PPPP_cCsS_FFFFFF_BB.jpg "
                      f"and are left out: {other}", stacklevel=3)
    if not names:
        raise FileNotFoundError(f"no Market-1501 images PPPP_cCsS_FFFFFF_BB.jpg in {folder}")
    return names, np.array(pids, dtype=np.int32), np.array(camids, dtype=np.int32)


def load_market1501(data_dir):
    """Load Market-1501.

    Args:
        data_dir: absolute path of the folder holding the three Market-1501 folders.

    Returns:
        (splits, class_names): {"train", "query", "gallery": Split with camids}. Train labels are
        the train pids renumbered 0..n-1 (class_names[label] = the pid as written in the file names,
        e.g. "0002"); query and gallery labels are the raw pids (-1 junk, 0 distractor).
    """
    scans = {split: _scan(os.path.join(data_dir, folder)) for split, folder in MARKET1501_FOLDERS.items()}
    paths = {split: [os.path.join(data_dir, MARKET1501_FOLDERS[split], name) for name in names]
             for split, (names, _, _) in scans.items()}
    all_paths = [path for split_paths in paths.values() for path in split_paths]
    decodable = check_images(all_paths, data_dir)
    splits, start = {}, 0
    for split, (names, pids, camids) in scans.items():
        keep = np.flatnonzero(decodable[start:start + len(names)])
        start += len(names)
        if not len(keep):
            folder = os.path.join(data_dir, MARKET1501_FOLDERS[split])
            raise FileNotFoundError(f"no decodable images in {folder}")
        splits[split] = Split(labels=pids, paths=paths[split], camids=camids,
                              names=[f"{MARKET1501_FOLDERS[split]}/{name}" for name in names]).take(keep)
    train_ids = [os.path.basename(name).split("_")[0] for name in splits["train"].names]
    mapping = class_mapping(train_ids, [])
    splits["train"] = dataclasses.replace(splits["train"], labels=labels_for(train_ids, mapping))
    warn_small_classes(splits["train"], "train", mapping, data_dir)
    return splits, mapping
