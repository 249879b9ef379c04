"""Tests of model/data/market1501.py against the real Market-1501 file names (one per line in
../shared/data/market1501/{train,query,test}.names; test = bounding_box_test)."""
import io
import logging
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from model.data import load_source
from model.data.market1501 import parse_market1501_name

NAMES_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "market1501"
FOLDERS = {"train": "bounding_box_train", "query": "query", "test": "bounding_box_test"}
# Written independently of the loader: 4-digit id or -1, cameras 1-6, one or two ".jpg".
REFERENCE = re.compile(r"^(?P<pid>-1|[0-9]{4})_c(?P<cam>[1-6])s[0-9]_[0-9]{6}_[0-9]{2}(?:\.jpg){1,2}$")


def _names(split):
    path = NAMES_DIR / f"{split}.names"
    if not path.is_file():
        pytest.skip(f"the Market-1501 name lists are not in {NAMES_DIR}")
    return path.read_text().split()


def test_every_real_name_parses_like_the_reference():
    total = doubled = 0
    pids = {}
    for split in FOLDERS:
        names = _names(split)
        pids[split] = set()
        for name in names:
            match = REFERENCE.match(name)
            assert match, name
            assert parse_market1501_name(name) == (int(match["pid"]), int(match["cam"])), name
            pids[split].add(int(match["pid"]))
            doubled += name.endswith(".jpg.jpg")
        total += len(names)
    assert total == 12936 + 3368 + 19732 and doubled == 24
    assert len(pids["train"]) == 751 and len(pids["query"]) == 750
    assert {-1, 0} <= pids["test"] and -1 not in pids["query"] and 0 not in pids["train"]


@pytest.mark.parametrize("name", ["0001_c1s1_001051_00.png", "abc_c1s1_001051_00.jpg",
                                  "0001_c1_001051_00.jpg", "Thumbs.db", "0001_c1s1_001051_00.jpg.txt"])
def test_bad_names_are_rejected(name):
    with pytest.raises(ValueError, match="not a Market-1501 file name"):
        parse_market1501_name(name)


def _tiny_jpeg():
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 4, 3), 120, dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def _tree(root):
    """A few hundred real names per folder: the first ones, every .jpg.jpg name, some -1 and 0000."""
    data = _tiny_jpeg()
    chosen = {}
    for split, folder in FOLDERS.items():
        names = _names(split)
        doubled = [n for n in names if n.endswith(".jpg.jpg")]
        junk = [n for n in names if n.startswith("-1_")][:20]
        distractors = [n for n in names if n.startswith("0000_")][:20]
        chosen[split] = sorted(set(names[:100] + doubled + junk + distractors))
        os.makedirs(root / folder)
        for name in chosen[split]:
            (root / folder / name).write_bytes(data)
    return chosen


def test_market1501_tree(tmp_path, caplog):
    chosen = _tree(tmp_path)
    (tmp_path / "bounding_box_train" / "Thumbs.db").write_bytes(b"\x00" * 16)
    broken = tmp_path / "bounding_box_test" / chosen["test"][0]
    broken.write_bytes(_tiny_jpeg()[:40])
    with caplog.at_level(logging.WARNING, logger="model.data"):
        source = load_source("market1501", data_dir=str(tmp_path))
    messages = [record.getMessage() for record in caplog.records]
    assert any("are not Market-1501 images" in m and "Thumbs.db" in m for m in messages)
    assert any(m.startswith("1 of ") and str(broken) in m for m in messages)
    assert source.protocol == "reid" and source.channels == 3
    assert list(source.splits) == ["train", "query", "gallery"]

    train = source.splits["train"]
    train_pids = sorted({name.split("_")[0] for name in chosen["train"]})
    assert source.class_names == train_pids
    assert train.names == [f"bounding_box_train/{name}" for name in chosen["train"]]
    np.testing.assert_array_equal(train.labels, [train_pids.index(n.split("_")[0]) for n in chosen["train"]])
    for split, kept in (("query", chosen["query"]), ("gallery", chosen["test"][1:])):
        part = source.splits[split]
        assert [os.path.basename(path) for path in part.paths] == kept
        expected = [REFERENCE.match(name) for name in kept]
        np.testing.assert_array_equal(part.labels, [int(m["pid"]) for m in expected])
        np.testing.assert_array_equal(part.camids, [int(m["cam"]) for m in expected])
        assert part.labels.dtype == np.int32 and part.camids.dtype == np.int32
    gallery = source.splits["gallery"]
    assert (gallery.labels == -1).any() and (gallery.labels == 0).any()
    assert any(path.endswith(".jpg.jpg") for path in gallery.paths)


def test_market1501_missing_folder_and_saved_mapping(tmp_path):
    _tree(tmp_path)
    source = load_source("market1501", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="saved class mapping"):
        load_source("market1501", data_dir=str(tmp_path), class_names=source.class_names[1:])
    os.rename(tmp_path / "query", tmp_path / "queries")
    with pytest.raises(FileNotFoundError, match=r"Market-1501 folder .*/query does not exist"):
        load_source("market1501", data_dir=str(tmp_path))
