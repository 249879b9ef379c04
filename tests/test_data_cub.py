"""Tests of model/data/cub.py on a generated tree in the CUB-200-2011 layout: the deep-metric-learning
class split (first half of the class ids train), the validation hold-out, the data report, and errors
naming file and line for bad lists."""
import logging
import os

import numpy as np
import pytest

from model.data import load_source
from tests.fixtures import write_cub_tree


def expected_split(images, class_ids):
    """(names, class ids) of the images of `class_ids`, in image-id order, written from the tree itself."""
    chosen = [images[i] for i in sorted(images) if images[i][1] in class_ids]
    return [path for path, _ in chosen], [class_id for _, class_id in chosen]


def test_first_half_of_the_classes_train_the_other_half_test(tmp_path):
    images = write_cub_tree(tmp_path, num_classes=6, per_class=4)
    source = load_source("cub200", data_dir=str(tmp_path))  # validation_size defaults to 0 here
    assert source.protocol == "labels" and source.channels == 3 and source.image_size is None
    assert list(source.splits) == ["train", "test"] and source.report == []
    class_name = {class_id: f"{class_id:03d}.Bird_{class_id}" for class_id in range(1, 7)}
    assert source.class_names == [class_name[i] for i in range(1, 7)]  # train classes 1-3 first
    for split, class_ids in (("train", {1, 2, 3}), ("test", {4, 5, 6})):
        names, classes = expected_split(images, class_ids)
        part = source.splits[split]
        assert part.names == names
        assert part.paths == [os.path.join(str(tmp_path), "images", name) for name in names]
        np.testing.assert_array_equal(part.labels, [source.class_names.index(class_name[c]) for c in classes])
    assert set(source.splits["train"].labels) == {0, 1, 2} and set(source.splits["test"].labels) == {3, 4, 5}


def test_an_odd_number_of_classes_trains_on_the_smaller_half(tmp_path):
    images = write_cub_tree(tmp_path, num_classes=5, per_class=2)
    source = load_source("cub200", data_dir=str(tmp_path))
    assert source.splits["train"].names == expected_split(images, {1, 2})[0]
    assert source.splits["test"].names == expected_split(images, {3, 4, 5})[0]


def test_validation_is_held_out_of_the_train_classes(tmp_path):
    write_cub_tree(tmp_path)
    whole = load_source("cub200", data_dir=str(tmp_path))
    source = load_source("cub200", data_dir=str(tmp_path), validation_size=3, seed=4)
    assert list(source.splits) == ["train", "validation", "test"]
    train, validation = source.splits["train"], source.splits["validation"]
    assert len(validation) == 3 and len(train) == len(whole.splits["train"]) - 3
    assert sorted(train.names + validation.names) == sorted(whole.splits["train"].names)
    assert source.splits["test"].names == whole.splits["test"].names


def test_undecodable_image_and_empty_class_are_reported_and_left_out(tmp_path, caplog):
    images = write_cub_tree(tmp_path, num_classes=4, per_class=2)
    broken = [i for i in sorted(images) if images[i][1] == 3][0]
    (tmp_path / "images" / images[broken][0]).write_bytes(b"not a jpeg")
    with open(tmp_path / "classes.txt", "a") as handle:
        handle.write("5 005.Bird_5\n")  # a class with no image (a test class: ids 3, 4, 5)
    with caplog.at_level(logging.WARNING, logger="model.data"):
        source = load_source("cub200", data_dir=str(tmp_path))
    problems = {(entry.problem, entry.split) for entry in source.report}
    assert problems == {("undecodable", "test"), ("empty class", "test")}
    assert [entry.item for entry in source.report if entry.problem == "empty class"] == ["005.Bird_5"]
    assert images[broken][0] not in source.splits["test"].names and len(source.splits["test"]) == 3
    assert any("cannot be decoded" in record.getMessage() for record in caplog.records)
    assert any("have no image" in record.getMessage() for record in caplog.records)


def _replace_line(path, number, text):
    """Line `number` (1-based) of the file becomes `text`; one past the last line appends it."""
    lines = path.read_text().splitlines(keepends=True)
    lines[number - 1 : number] = [text]
    path.write_text("".join(lines))


@pytest.mark.parametrize(
    "file, line, text, error, message",
    [
        ("images.txt", 2, "no_id_here.jpg\n", ValueError, "expected '<image or class id> <path under images/>'"),
        ("images.txt", 3, "x7 001.Bird_1/Bird_1_0000.jpg\n", ValueError, "expected"),
        ("image_class_labels.txt", 4, "12\n", ValueError, "expected '<image or class id> <class id>'"),
        ("image_class_labels.txt", 5, "{id} two\n", ValueError, "expected .*got class id 'two'"),
        ("image_class_labels.txt", 6, "{id} 9\n", ValueError, "class id 9 of image .* is not in classes.txt"),
        ("classes.txt", 2, "1 001.Bird_again\n", ValueError, "id 1 is listed twice .first on line 1"),
        ("classes.txt", 3, "3 001.Bird_1\n", ValueError, "class name '001.Bird_1' is also the name of class 1"),
        ("images.txt", 7, "{id} 001.Bird_1/gone.jpg\n", FileNotFoundError, r"image \d+ .001.Bird_1/gone.jpg. does not"),
        ("images.txt", 5, "{id} ../../elsewhere.jpg\n", ValueError, r"path '../../elsewhere.jpg' .* not under images"),
        ("images.txt", 6, "{id} /abs/x.jpg\n", ValueError, r"path '/abs/x.jpg' of image \d+ is not under images/"),
        ("images.txt", 8, "99 {path}\n", ValueError, "image id 99 is not in .*image_class_labels.txt"),
        ("image_class_labels.txt", 25, "98 1\n", ValueError, "image id 98 is not in .*images.txt"),  # appended
    ],
)
def test_bad_lists_name_the_file_and_line(tmp_path, file, line, text, error, message):
    images = write_cub_tree(tmp_path)
    path = tmp_path / file
    image_id = int((path.read_text().splitlines() + ["1"])[line - 1].split()[0])
    _replace_line(path, line, text.format(id=image_id, path=images[image_id][0]))
    with pytest.raises(error, match=f"{file}, line {line}: {message}"):
        load_source("cub200", data_dir=str(tmp_path))


def test_missing_list_single_class_and_saved_mapping(tmp_path):
    write_cub_tree(tmp_path, num_classes=4, per_class=2)
    source = load_source("cub200", data_dir=str(tmp_path))
    again = load_source("cub200", data_dir=str(tmp_path), class_names=source.class_names)
    np.testing.assert_array_equal(again.splits["test"].labels, source.splits["test"].labels)
    with pytest.raises(ValueError, match="saved class mapping"):
        load_source("cub200", data_dir=str(tmp_path), class_names=source.class_names[1:])
    (tmp_path / "classes.txt").write_text("1 001.Bird_1\n")
    with pytest.raises(ValueError, match="classes.txt lists 1 class"):
        load_source("cub200", data_dir=str(tmp_path))
    os.remove(tmp_path / "image_class_labels.txt")
    with pytest.raises(FileNotFoundError, match="image_class_labels.txt does not exist"):
        load_source("cub200", data_dir=str(tmp_path))
