"""Market-1501 person re-identification (Zheng et al., "Scalable Person Re-identification: A
Benchmark", ICCV 2015).

`data_dir` holds `bounding_box_train/` (751 identities), `query/` and `bounding_box_test/` (the
gallery). A file name `PPPP_cCsS_FFFFFF_BB.jpg` carries the person id PPPP, the camera C, the
video sequence S, the frame FFFFFF and the box number BB. Gallery ids `-1` (junk: bad detections,
ignored by the evaluation) and `0000` (distractors: wrong for every query) are kept distinct;
a few real files end in `.jpg.jpg` and parse like the others. Files that do not follow the
pattern (e.g. the `Thumbs.db` in the original archive) are logged, recorded in the data report
and left out; an id beyond the int32 labels (a damaged name) is an error naming the file.
"""
import dataclasses
import logging
import os
import re

import numpy as np

from model.data.datasets import Loaded, register_dataset
from model.data.holdout import hold_out_identities
from model.data.images import check_images
from model.data.report import ReportEntry, record, report_small_classes
from model.data.splits import Split, class_mapping, labels_for

MARKET1501_FOLDERS = {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
_INT32_MAX = np.iinfo(np.int32).max

logger = logging.getLogger(__name__)
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


def _scan(folder, split, report):
    """Sorted (file names, pids, camids) of one Market-1501 folder; other entries are reported in `report`."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(
            f"Market-1501 folder {folder} does not exist: data_dir (params.json) must be the Market-1501 folder "
            f"(Market-1501-v15.09.15, from its authors' page) holding {', '.join(MARKET1501_FOLDERS.values())}")
    try:
        listing = sorted(os.listdir(folder))
    except OSError as error:
        raise PermissionError(f"cannot list the Market-1501 folder {folder}: {error.strerror}") from None
    names, pids, camids, other = [], [], [], []
    for name in listing:
        path = os.path.join(folder, name)
        match = _NAME.fullmatch(name)
        if match is None or not os.path.isfile(path):  # isfile is False for a broken link or a link loop
            reason = "not a file" if match else "not a Market-1501 image name PPPP_cCsS_FFFFFF_BB.jpg"
            other.append(ReportEntry(path, split, "stray entry", reason))
            continue
        pid, camid = int(match["pid"]), int(match["camid"])
        if max(pid, camid) > _INT32_MAX:
            raise ValueError(f"{path}: person id {match['pid']} or camera {match['camid']} is beyond the int32 "
                             f"labels (at most {_INT32_MAX}); Market-1501 ids have four digits, is the name "
                             "damaged?")
        names.append(name)
        pids.append(pid)
        camids.append(camid)
    record(report, other, f"{len(other)} entries in {folder} are not Market-1501 images PPPP_cCsS_FFFFFF_BB.jpg "
                          "and are left out", logger)
    if not names:
        raise FileNotFoundError(f"no Market-1501 images PPPP_cCsS_FFFFFF_BB.jpg in {folder}")
    return names, np.array(pids, dtype=np.int32), np.array(camids, dtype=np.int32)


def load_market1501(data_dir, report=None):
    """Load Market-1501.

    Args:
        data_dir: absolute path of the folder holding the three Market-1501 folders.
        report: a list that gets a ReportEntry for everything left out or flagged, or None.

    Returns:
        (splits, class_names): {"train", "query", "gallery": Split with camids}. Train labels are
        the train pids renumbered 0..n-1 (class_names[label] = the pid as written in the file names,
        e.g. "0002"); query and gallery labels are the raw pids (-1 junk, 0 distractor).
    """
    scans = {split: _scan(os.path.join(data_dir, folder), split, report)
             for split, folder in MARKET1501_FOLDERS.items()}
    paths = {split: [os.path.join(data_dir, MARKET1501_FOLDERS[split], name) for name in names]
             for split, (names, _, _) in scans.items()}
    all_paths = [path for split_paths in paths.values() for path in split_paths]
    decodable = check_images(all_paths, data_dir, report, [split for split, names in paths.items() for _ in names])
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
    report_small_classes(splits["train"], "train", mapping, data_dir, report)
    return splits, mapping


@register_dataset("market1501", protocol="reid", hold_out=hold_out_identities)
def market1501(data_dir, class_names=None, report=None):
    """Market-1501 (see the module docstring): train, query and gallery, with camera ids."""
    splits, names = load_market1501(data_dir, report)
    return Loaded(splits, names, 3, None)
