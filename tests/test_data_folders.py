"""Tests of model/data/folders.py and images.py: class folders, In-shop, decoding, bad files."""
import logging
import os

import numpy as np
import pytest
from PIL import Image

from model.data import load_source, make_dataset

RNG = np.random.default_rng(0)


def _write(path, mode="RGB", size=(6, 5), fmt=None):
    """Write a random image of PIL `mode` and (w, h) `size` to `path`; return what PIL decodes back."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    channels = {"L": 1, "RGB": 3, "RGBA": 4}[mode]
    pixels = RNG.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path, format=fmt)
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _tree(root):
    """train/ with classes bird (3 mixed-format images), cat (2), dog (1), empty/ (no file),
    a truncated JPEG and a text file; test/ with bird, cat and fish. Returns {relative path: RGB}."""
    decoded = {}
    for name, mode, fmt in [("train/bird/a.png", "RGB", None), ("train/bird/b.jpg", "RGB", None),
                            ("train/bird/c.gif", "L", None), ("train/cat/gray.png", "L", None),
                            ("train/cat/rgba.png", "RGBA", None), ("train/dog/d.bmp", "RGB", None),
                            ("test/bird/e.png", "RGB", None), ("test/cat/f.jpeg", "L", "JPEG"),
                            ("test/fish/g.png", "RGB", None), ("test/fish/h.png", "RGB", None)]:
        decoded[name] = _write(os.path.join(root, name), mode, fmt=fmt)
    os.makedirs(os.path.join(root, "train", "empty"))
    _write(os.path.join(root, "train", "cat", "whole.jpg"), size=(40, 30))
    with open(os.path.join(root, "train", "cat", "whole.jpg"), "rb") as file:
        data = file.read()
    with open(os.path.join(root, "train", "cat", "broken.jpg"), "wb") as file:
        file.write(data[: len(data) // 2])  # truncated JPEG
    os.remove(os.path.join(root, "train", "cat", "whole.jpg"))
    with open(os.path.join(root, "train", "dog", "notes.txt"), "w") as file:
        file.write("not an image")
    return decoded


def _load(caplog, *args, **kwargs):
    """load_source(*args, **kwargs) and the messages it logged."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="model.data"):
        source = load_source(*args, **kwargs)
    return source, [record.getMessage() for record in caplog.records]


def test_class_folders_counts_labels_and_reports(tmp_path, caplog):
    _tree(tmp_path)
    source, messages = _load(caplog, "folders", data_dir=str(tmp_path))
    assert source.protocol == "labels" and source.channels == 3 and source.image_size is None
    assert source.class_names == ["bird", "cat", "dog", "fish"]  # train classes, then test-only ones
    assert list(source.splits) == ["train", "test"]
    train, test = source.splits["train"], source.splits["test"]
    assert train.names == ["train/bird/a.png", "train/bird/b.jpg", "train/bird/c.gif", "train/cat/gray.png",
                           "train/cat/rgba.png", "train/dog/d.bmp"]
    np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(test.labels, [0, 1, 3, 3])
    assert all(os.path.isabs(path) and os.path.isfile(path) for path in train.paths + test.paths)
    bad = [m for m in messages if "cannot be decoded" in m]
    assert len(bad) == 1 and bad[0].startswith("1 of 11 files") and "broken.jpg" in bad[0]
    other = [m for m in messages if "are not image files inside a class folder" in m]
    assert len(other) == 1 and "notes.txt: extension not one of" in other[0]
    assert any("class folders hold no decodable image" in m and "empty" in m for m in messages)
    assert any("train split" in m and "single image" in m and "\n  dog: its only image: train/dog/d.bmp" in m
               for m in messages)
    recorded = {(os.path.relpath(entry.item, tmp_path) if os.path.isabs(entry.item) else entry.item, entry.split,
                 entry.problem) for entry in source.report}
    assert recorded == {("train/dog/notes.txt", "train", "not an image file"),
                        ("train/cat/broken.jpg", "train", "undecodable"), ("train/empty", "train", "empty class"),
                        ("dog", "train", "single-image class"), ("bird", "test", "single-image class"),
                        ("cat", "test", "single-image class")}


def test_decoding_matches_pil(tmp_path, caplog):
    decoded = _tree(tmp_path)
    source, _ = _load(caplog, "folders", data_dir=str(tmp_path))
    for split in source.splits.values():
        rgb = next(iter(make_dataset(split, image_size=(5, 6), channels=3, training=False)))[0].numpy()
        gray = next(iter(make_dataset(split, image_size=(5, 6), channels=1, training=False)))[0].numpy()
        for i, name in enumerate(split.names):
            reference = decoded[name].astype(np.float32)
            lossy = name.endswith((".jpg", ".jpeg"))  # libjpeg versions differ by a grey level or two
            np.testing.assert_allclose(rgb[i], reference, atol=3 if lossy else 0, err_msg=name)
            with Image.open(os.path.join(str(tmp_path), name)) as image:
                luma = np.asarray(image.convert("RGB").convert("L"), dtype=np.float32)
            np.testing.assert_allclose(gray[i][..., 0], luma, atol=3.5 if lossy else 0.51, err_msg=name)


def test_training_pipeline_reads_every_kept_file(tmp_path, caplog):
    _tree(tmp_path)
    source, _ = _load(caplog, "folders", data_dir=str(tmp_path))
    dataset = make_dataset(source.splits["train"], image_size=(16, 12), channels=3, training=True,
                           batch_size=4, augment={"flip": True, "resize": [20, 15]})
    for images, _ in dataset.take(6):  # 24 images: four passes over the six files, no decode error
        assert images.shape == (4, 16, 12, 3)
        assert float(images.numpy().min()) >= 0 and float(images.numpy().max()) <= 255


def test_class_split_trains_on_first_classes(tmp_path, caplog):
    for index, name in enumerate(["003.c", "001.a", "004.d", "002.b"]):
        for image in range(index + 2):
            _write(str(tmp_path / name / f"{image}.png"))
    source, _ = _load(caplog, "folders", data_dir=str(tmp_path), class_split=2, validation_size=1, seed=4)
    assert source.class_names == ["001.a", "002.b", "003.c", "004.d"]
    assert sorted(set(source.splits["train"].labels) | set(source.splits["validation"].labels)) == [0, 1]
    assert len(source.splits["train"]) + len(source.splits["validation"]) == 3 + 5
    assert sorted(set(source.splits["test"].labels)) == [2, 3]
    assert all(name.startswith(("003.c/", "004.d/")) for name in source.splits["test"].names)
    with pytest.raises(ValueError, match="class_split=4 must leave classes on both sides.*4 classes"):
        load_source("folders", data_dir=str(tmp_path), class_split=4)
    with pytest.raises(FileNotFoundError, match="no train/ folder"):
        load_source("folders", data_dir=str(tmp_path))
    _write(str(tmp_path / "train" / "x" / "0.png"))
    with pytest.raises(ValueError, match="already has a train/ folder"):
        load_source("folders", data_dir=str(tmp_path), class_split=2)


def test_saved_class_mapping_is_reused_and_checked(tmp_path, caplog):
    for name in ("a", "b"):
        for image in range(2):
            _write(str(tmp_path / "train" / name / f"{image}.png"))
    saved = ["z", "b", "a"]
    source, _ = _load(caplog, "folders", data_dir=str(tmp_path), class_names=saved)
    assert source.class_names == saved
    np.testing.assert_array_equal(source.splits["train"].labels, [2, 2, 1, 1])
    with pytest.raises(ValueError, match=r"1 classes are not in it, e.g. \['b'\]"):
        load_source("folders", data_dir=str(tmp_path), class_names=["a"])


def test_validation_folder_and_bad_layouts(tmp_path, caplog):
    for split in ("train", "validation"):
        for name in ("a", "b"):
            _write(str(tmp_path / split / name / "0.png"))
    source, _ = _load(caplog, "folders", data_dir=str(tmp_path))
    assert list(source.splits) == ["train", "validation"]
    with_size, messages = _load(caplog, "folders", data_dir=str(tmp_path), validation_size=0.1)
    assert any("has a validation/ folder" in m and "validation_size=0.1" in m for m in messages)
    assert with_size.splits["validation"].names == source.splits["validation"].names
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_source("folders", data_dir=str(tmp_path / "missing"))
    os.makedirs(tmp_path / "blank" / "train" / "a")
    with pytest.raises(FileNotFoundError, match=r"no images in .*blank/train"):
        _load(caplog, "folders", data_dir=str(tmp_path / "blank"))
    with pytest.raises(ValueError, match="set data_dir"):
        load_source("folders")


def _inshop(root, rows, header="image_name item_id evaluation_status", count=None):
    for name, _, _ in rows:
        _write(str(root / name))
    lines = [str(len(rows) if count is None else count), header]
    lines += [f"{name}    {item}    {status}" for name, item, status in rows]
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")


INSHOP_ROWS = [("img/WOMEN/Dresses/id_00000002/01_1_front.jpg", "id_00000002", "train"),
               ("img/WOMEN/Dresses/id_00000002/01_2_side.jpg", "id_00000002", "train"),
               ("img/MEN/Denim/id_00000007/01_1_front.jpg", "id_00000007", "train"),
               ("img/MEN/Denim/id_00000007/01_2_side.jpg", "id_00000007", "train"),
               ("img/WOMEN/Skirts/id_00000001/02_1_front.jpg", "id_00000001", "query"),
               ("img/WOMEN/Skirts/id_00000001/02_2_side.jpg", "id_00000001", "gallery"),
               ("img/WOMEN/Skirts/id_00000009/02_1_front.jpg", "id_00000009", "query"),
               ("img/WOMEN/Skirts/id_00000009/02_3_back.jpg", "id_00000009", "gallery")]


def test_inshop_partition_list(tmp_path, caplog):
    _inshop(tmp_path, INSHOP_ROWS)
    source, _ = _load(caplog, "inshop", data_dir=str(tmp_path))
    assert source.protocol == "reid" and list(source.splits) == ["train", "query", "gallery"]
    assert source.class_names == ["id_00000002", "id_00000007", "id_00000001", "id_00000009"]
    np.testing.assert_array_equal(source.splits["train"].labels, [0, 0, 1, 1])
    np.testing.assert_array_equal(source.splits["query"].labels, [2, 3])
    np.testing.assert_array_equal(source.splits["gallery"].labels, [2, 3])
    assert source.splits["gallery"].names == [INSHOP_ROWS[5][0], INSHOP_ROWS[7][0]]
    assert source.splits["train"].paths[0] == str(tmp_path / INSHOP_ROWS[0][0])


def test_inshop_bad_lists(tmp_path):
    _inshop(tmp_path, INSHOP_ROWS, count=9)
    with pytest.raises(ValueError, match="announces 9 images but lists 8"):
        load_source("inshop", data_dir=str(tmp_path))
    _inshop(tmp_path, INSHOP_ROWS, header="name item status")
    with pytest.raises(ValueError, match="header line image_name item_id evaluation_status"):
        load_source("inshop", data_dir=str(tmp_path))
    _inshop(tmp_path, INSHOP_ROWS[:2] + [("img/x.jpg", "id_1", "test")])
    with pytest.raises(ValueError, match="line 5: .*'img/x.jpg id_1 test'"):
        load_source("inshop", data_dir=str(tmp_path))
    _inshop(tmp_path, INSHOP_ROWS)
    os.remove(tmp_path / INSHOP_ROWS[3][0])
    with pytest.raises(FileNotFoundError, match="1 images listed .* do not exist.*01_2_side.jpg"):
        load_source("inshop", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no In-shop partition list"):
        load_source("inshop", data_dir=str(tmp_path / "img"))
