"""Adversarial inputs to the parameter schema and the data loaders: each one a bad value or a damaged
tree that once passed silently or ended in a traceback, and now gives a clear error naming the
key / file / line, or a reported skip (logged, and recorded in `DataSource.report`)."""
import csv
import json
import logging
import os
import warnings

import numpy as np
import pytest
import scipy.io
from PIL import Image

from model.app import adapter
from model.data import (
    IMAGE_EXTENSIONS,
    MAX_PIXELS,
    ReportEntry,
    folders,
    images,
    load_source,
    read_class_names,
    write_report,
)
from model.params import Params

# --- params.json: values that were accepted but meant nothing -------------------------------------------

STEP = {"type": "step", "boundaries": [5000, 10000], "factor": 0.5}
EXPONENTIAL = {"type": "exponential", "decay_start": 0, "decay_steps": 5000, "decay_rate": 0.3}


@pytest.mark.parametrize("text, message", [
    ('{"learning_rate": NaN}', r'key "learning_rate" has value nan; expected a finite number'),
    ('{"margin": Infinity}', r'key "margin" has value inf; expected a finite number'),
    ('{"validation_size": -Infinity}', r'key "validation_size" has value -inf; expected a finite number'),
    ('{"positive_radius": NaN}', r'key "positive_radius" has value nan'),
    ('{"lr_schedule": {"type": "step", "boundaries": [10, 20], "factor": NaN}}',
     r'key "lr_schedule.factor" has value nan; expected a finite number'),
    ('{"lr_schedule": {"type": "step", "boundaries": [10, Infinity], "factor": 0.5}}',
     r'key "lr_schedule.boundaries\[1\]" has value inf'),
    ('{"loss_options": {"alpha": NaN}}', r'key "loss_options.alpha" has value nan'),
])
def test_nan_and_infinity_are_refused_by_key_name(tmp_path, text, message):
    path = tmp_path / "params.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"params.json: {message}"):
        Params.load(str(path))


@pytest.mark.parametrize("schedule, message", [
    ({**STEP, "factor": -0.5}, r'"lr_schedule.factor" has value -0.5; expected a number in \(0, 1\]'),
    ({**STEP, "factor": 0}, r'"lr_schedule.factor" has value 0; expected a number in \(0, 1\]'),
    ({**STEP, "factor": 2.0}, r'"lr_schedule.factor" has value 2.0; expected a number in \(0, 1\]'),
    ({**STEP, "factor": "0.5"}, r'"lr_schedule.factor" has value \'0.5\'; expected a number'),
    ({**STEP, "factor": True}, r'"lr_schedule.factor" has value True; expected a number'),
    ({**STEP, "boundaries": [10000, 5000]}, r'"lr_schedule.boundaries" has value \[10000, 5000\]; expected steps '
                                            r"in increasing order"),
    ({**STEP, "boundaries": [5000, 5000]}, r"in increasing order"),
    ({**STEP, "boundaries": "5000"}, r'"lr_schedule.boundaries" has value \'5000\'; expected a non-empty list of '
                                     r"positive integers"),
    ({**STEP, "boundaries": []}, r"a non-empty list of positive integers"),
    ({**STEP, "boundaries": [0, 10]}, r"a non-empty list of positive integers"),
    ({**STEP, "boundaries": [10.5, 20]}, r"a non-empty list of positive integers"),
    ({**STEP, "boundaries": ["5000"]}, r"a non-empty list of positive integers"),
    ({**EXPONENTIAL, "decay_steps": 0}, r'"lr_schedule.decay_steps" has value 0; expected an integer > 0'),
    ({**EXPONENTIAL, "decay_steps": 0.5}, r'"lr_schedule.decay_steps" has value 0.5; expected an integer > 0'),
    ({**EXPONENTIAL, "decay_rate": 0}, r'"lr_schedule.decay_rate" has value 0; expected a number in \(0, 1\]'),
    ({**EXPONENTIAL, "decay_rate": -0.3}, r'"lr_schedule.decay_rate" has value -0.3'),
    ({**EXPONENTIAL, "decay_rate": 1.5}, r'"lr_schedule.decay_rate" has value 1.5'),
    ({**EXPONENTIAL, "decay_start": -1}, r'"lr_schedule.decay_start" has value -1; expected an integer >= 0'),
    ({**EXPONENTIAL, "decay_start": "later"}, r'"lr_schedule.decay_start" has value \'later\''),
    ({"type": ["step"]}, r'"type" one of constant, exponential, step'),
])
def test_schedules_that_mean_nothing_are_refused(schedule, message):
    with pytest.raises(ValueError, match=message):
        Params.from_dict({"lr_schedule": schedule})


def test_meaningful_schedules_pass():
    for schedule in (STEP, {**STEP, "factor": 1}, {**STEP, "boundaries": [1]}, EXPONENTIAL,
                     {**EXPONENTIAL, "decay_rate": 1}, {"type": "constant"}):
        assert Params.from_dict({"lr_schedule": schedule}).lr_schedule == schedule


@pytest.mark.parametrize("momentum, ok", [(0, True), (0.9, True), (0.999, True), (1, False), (1.0, False),
                                          (5.0, False), (-0.1, False)])
def test_bn_momentum_lies_in_zero_one(momentum, ok):
    if ok:
        assert Params.from_dict({"bn_momentum": momentum}).bn_momentum == momentum
    else:
        with pytest.raises(ValueError, match=rf'"bn_momentum" has value {momentum}; expected a number'):
            Params.from_dict({"bn_momentum": momentum})


@pytest.mark.parametrize("options, message", [
    ({"alpha": "two"}, r'key "loss_options.alpha" has value \'two\'; expected a number or true/false'),
    ({"alpha": 2.0, "beta": [50]}, r'key "loss_options.beta" has value \[50\]'),
    ({"scale": None}, r'key "loss_options.scale" has value None'),
])
def test_loss_options_errors_name_the_option_and_value(options, message):
    with pytest.raises(ValueError, match=message):
        Params.from_dict({"loss": "multi_similarity", "loss_options": options})
    assert Params.from_dict({"loss_options": {"alpha": 2, "beta": 50.0, "flag": True}}).loss_options["alpha"] == 2


def test_every_unknown_key_is_named_with_its_suggestion(tmp_path):
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"learning_rat": 0.1, "num_epochs": 3, "marign": 0.2, "zzz": 1}))
    with pytest.raises(ValueError) as raised:
        Params.load(str(path))
    message = str(raised.value)
    assert message.startswith(f'{path}: unknown key "learning_rat". Did you mean "learning_rate"? '
                              'unknown key "marign". Did you mean "margin"? unknown key "zzz". Valid keys: ')


def test_num_labels_below_the_number_of_classes_is_a_clear_error():
    params = Params.from_dict({"loss": "proxy_nca", "num_labels": 5})
    with pytest.raises(ValueError, match=r'key "num_labels" is 5 but the training data has 10 classes \(labels '
                                         r"0..9\); set num_labels to at least 10, or to null"):
        params.check_num_labels(10)
    params.check_num_labels(5)
    params.check_num_labels(3)
    Params.from_dict({}).check_num_labels(1000)  # null: counted from the data


# --- data trees: damaged files and folders, reported or refused by name --------------------------------


def _image(path, size=(6, 5), value=90, mode="RGB", fmt=None):
    """Write a (w, h) `size` image of one grey `value` to `path` (folders created); return the path."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new(mode, size, value if mode != "RGB" else (value,) * 3).save(path, format=fmt)
    return str(path)


def _classes(root, classes=("a", "b"), per_class=2):
    """root/train/<class>/<i>.png, `per_class` images per class."""
    for name in classes:
        for i in range(per_class):
            _image(os.path.join(root, "train", name, f"{i}.png"), value=10 * i)


def _load(caplog, *args, **kwargs):
    """load_source(*args, **kwargs) and the messages it logged."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="model.data"):
        source = load_source(*args, **kwargs)
    return source, [record.getMessage() for record in caplog.records]


def _problems(source, root):
    """{(item relative to root, split, problem)} of a source's report."""
    return {(os.path.relpath(entry.item, root) if os.path.isabs(entry.item) else entry.item, entry.split,
             entry.problem) for entry in source.report}


def test_reports_survive_ignored_warnings(tmp_path, caplog):
    """With every warning filtered out (PYTHONWARNINGS=ignore), what is left out is still logged and recorded."""
    _classes(tmp_path, ("a", "b", "c"))
    (tmp_path / "train" / "a" / "bad.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "train" / "stray.png").write_bytes(b"")
    os.makedirs(tmp_path / "train" / "empty")
    os.makedirs(tmp_path / "train" / "b" / "nested")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        source, messages = _load(caplog, "folders", data_dir=str(tmp_path))
    assert _problems(source, tmp_path) == {("train/a/bad.png", "train", "undecodable"),
                                           ("train/stray.png", "train", "stray entry"),
                                           ("train/b/nested", "train", "stray entry"),
                                           ("train/empty", "train", "empty class")}
    assert any(m.startswith("1 of 7 files") and "train/a/bad.png: " in m for m in messages)
    assert any(m.startswith("2 entries in ") and "stray.png: a file beside the class folders" in m
               and "nested: a folder inside a class folder" in m for m in messages)
    assert any(m.startswith("1 class folders hold no decodable image") and "train/empty" in m for m in messages)


def test_write_report_writes_a_csv_atomically(tmp_path):
    entries = [ReportEntry("/data/train/a/bad.png", "train", "undecodable", 'Unknown image file format, "x"'),
               ReportEntry("dog", "test", "single-image class", "its only image: test/dog/0.png")]
    path = tmp_path / "data_report.csv"
    path.write_text("an older report\n")
    write_report(entries, str(path))
    with open(path, newline="") as file:
        rows = list(csv.reader(file))
    assert rows == [["item", "split", "problem", "detail"],
                    ["/data/train/a/bad.png", "train", "undecodable", 'Unknown image file format, "x"'],
                    ["dog", "test", "single-image class", "its only image: test/dog/0.png"]]
    assert os.listdir(tmp_path) == ["data_report.csv"]  # no partial file left
    write_report([], str(path))
    assert path.read_text().splitlines() == ["item,split,problem,detail"]


def test_symlink_loops_and_broken_links_are_reported(tmp_path, caplog):
    _classes(tmp_path)
    os.symlink("loop", tmp_path / "train" / "loop")  # a class "folder" that is a link to itself
    os.symlink("self.png", tmp_path / "train" / "a" / "self.png")  # an image "file" that is a link to itself
    os.symlink("nowhere.png", tmp_path / "train" / "b" / "gone.png")
    os.symlink("..", tmp_path / "train" / "b" / "up")  # a link back to the root: a folder, never followed
    source, messages = _load(caplog, "folders", data_dir=str(tmp_path))
    assert len(source.splits["train"]) == 4
    assert _problems(source, tmp_path) == {("train/loop", "train", "unreadable"),
                                           ("train/a/self.png", "train", "unreadable"),
                                           ("train/b/gone.png", "train", "unreadable"),
                                           ("train/b/up", "train", "stray entry")}
    message = next(m for m in messages if "are not image files inside a class folder" in m)
    assert "train/loop: cannot be read: Too many levels of symbolic links" in message
    assert "train/b/gone.png: a broken symbolic link" in message


def test_unreadable_class_folder_is_reported(tmp_path, caplog, monkeypatch):
    """A class folder that cannot be listed (chmod 000 for a normal user; simulated, as tests may run as root)."""
    _classes(tmp_path, ("a", "b", "c"))
    locked = str(tmp_path / "train" / "b")
    scandir = os.scandir

    def refuse_locked(path="."):
        if os.fspath(path) == locked:  # read at call time: the test locks another folder later
            raise PermissionError(13, "Permission denied", locked)
        return scandir(path)

    monkeypatch.setattr(folders.os, "scandir", refuse_locked)
    source, messages = _load(caplog, "folders", data_dir=str(tmp_path))
    assert source.class_names == ["a", "c"]
    assert _problems(source, tmp_path) == {("train/b", "train", "unreadable")}
    assert any("train/b: class folder cannot be listed: Permission denied" in m for m in messages)
    locked = str(tmp_path / "train")  # the split folder itself: nothing to train on, a clear error
    with pytest.raises(PermissionError, match=rf"cannot list the image folder {locked}: Permission denied"):
        load_source("folders", data_dir=str(tmp_path))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a folder whatever its mode (the simulated test covers it)")
def test_chmod_000_class_folder_is_reported(tmp_path, caplog):
    _classes(tmp_path, ("a", "b", "c"))
    os.chmod(tmp_path / "train" / "b", 0)
    try:
        source, _ = _load(caplog, "folders", data_dir=str(tmp_path))
    finally:
        os.chmod(tmp_path / "train" / "b", 0o755)
    assert _problems(source, tmp_path) == {("train/b", "train", "unreadable")}


def test_data_dir_that_is_a_file_says_so(tmp_path):
    path = tmp_path / "data.zip"
    path.write_bytes(b"PK")
    for dataset in ("folders", "market1501", "places", "inshop", "mnist"):
        with pytest.raises(NotADirectoryError, match=rf"data_dir {path} is a file; expected the folder of the "
                                                     rf"'{dataset}' dataset"):
            load_source(dataset, data_dir=str(path))


# --- images: the pixel limit and the one list of extensions ---------------------------------------------


def test_images_over_the_pixel_limit_are_left_out_before_decoding(tmp_path, caplog):
    _classes(tmp_path)
    huge = tmp_path / "train" / "a" / "huge.png"
    Image.new("1", (12000, 12000)).save(huge)  # 144 megapixels in 18 kB: a cheap stand-in for a giant photo
    bomb = tmp_path / "train" / "b" / "bomb.png"
    Image.new("1", (14000, 14000)).save(bomb)  # beyond twice PIL's own limit: PIL refuses to open it
    source, messages = _load(caplog, "folders", data_dir=str(tmp_path))
    assert len(source.splits["train"]) == 4
    assert _problems(source, tmp_path) == {("train/a/huge.png", "train", "too large"),
                                           ("train/b/bomb.png", "train", "too large")}
    details = {os.path.basename(entry.item): entry.detail for entry in source.report}
    assert details["huge.png"] == f"12000 × 12000 = 144000000 pixels, more than the limit of {MAX_PIXELS}"
    assert details["bomb.png"].startswith(f"more than {MAX_PIXELS} pixels")
    assert any(m.startswith(f"2 of 6 files in {tmp_path} have more than {MAX_PIXELS} pixels") for m in messages)
    assert MAX_PIXELS == 8192 * 8192


def test_pixel_limit_is_inclusive(tmp_path, monkeypatch):
    paths = [_image(str(tmp_path / f"{w}x{h}.png"), size=(w, h)) for w, h in ((6, 5), (7, 5), (5, 6), (31, 1))]
    monkeypatch.setattr(images, "MAX_PIXELS", 30)
    report = []
    ok = images.check_images(paths, str(tmp_path), report, "train")
    np.testing.assert_array_equal(ok, [True, False, True, False])
    assert [(os.path.basename(e.item), e.problem) for e in report] == [("7x5.png", "too large"),
                                                                        ("31x1.png", "too large")]


def test_webp_is_an_image_extension_and_decodes(tmp_path, caplog):
    assert IMAGE_EXTENSIONS == (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")
    assert images.is_image_file("a.WEBP") and images.is_image_file("b.Jpg") and not images.is_image_file("c.tif")
    _classes(tmp_path)
    pixels = np.random.default_rng(0).integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "train" / "a" / "w.WEBP", format="WEBP", lossless=True)
    (tmp_path / "train" / "a" / "x.tif").write_bytes(b"II*\x00")
    source, _ = _load(caplog, "folders", data_dir=str(tmp_path))
    assert source.splits["train"].names[:3] == ["train/a/0.png", "train/a/1.png", "train/a/w.WEBP"]
    assert _problems(source, tmp_path) == {("train/a/x.tif", "train", "not an image file")}
    decoded = images.decode_image_file(source.splits["train"].paths[2]).numpy()
    np.testing.assert_array_equal(decoded, pixels)


# --- places: coordinates and headers ---------------------------------------------------------------------


def _places(root, bom=False, query_rows=("q/0.png,510,500",)):
    """A places CSV dataset; the test queries.csv holds `query_rows`."""
    rows = {"train/database.csv": ["db/0.png,0,0", "db/1.png,3,4"], "train/queries.csv": ["q/0.png,1,1"],
            "test/database.csv": ["db/0.png,500,500"], "test/queries.csv": list(query_rows)}
    for name, lines in rows.items():
        folder = root / os.path.dirname(name)
        for line in lines:
            _image(str(folder / line.split(",")[0]))
        text = "\n".join(["path,easting,northing", *lines]) + "\n"
        (root / name).write_bytes(("\ufeff" if bom else "").encode() + text.encode())


@pytest.mark.parametrize("easting, northing", [("nan", "1"), ("1", "inf"), ("-inf", "2"), ("NaN", "NaN"),
                                               ("1e999", "2")])
def test_places_csv_refuses_non_finite_coordinates(tmp_path, easting, northing):
    _places(tmp_path, query_rows=("q/0.png,510,500", f"q/1.png,{easting},{northing}"))
    with pytest.raises(ValueError, match=rf"test/queries.csv line 3: easting and northing must be finite numbers "
                                         rf"\(metres\), got '{easting}', '{northing}'"):
        load_source("places", data_dir=str(tmp_path))


def test_places_csv_with_a_utf8_bom(tmp_path):
    _places(tmp_path, bom=True)
    source = load_source("places", data_dir=str(tmp_path))
    np.testing.assert_array_equal(source.splits["train"].utm, [[0, 0], [3, 4], [1, 1]])
    assert source.splits["query"].names == ["test/q/0.png"]


def test_places_mat_refuses_non_finite_coordinates(tmp_path):
    for stage in ("train", "test"):
        images_ = np.array([f"{stage}/{i}.jpg" for i in range(3)], dtype=object)
        for name in images_:
            _image(str(tmp_path / name), fmt="JPEG")
            _image(str(tmp_path / "queries_real" / name), fmt="JPEG")
        utm = np.zeros((2, 3))
        if stage == "test":
            utm[1, 2] = np.nan
        os.makedirs(tmp_path / "datasets", exist_ok=True)
        scipy.io.savemat(str(tmp_path / "datasets" / f"p_{stage}.mat"),
                         {"dbStruct": {"dbImage": images_, "utmDb": utm, "qImage": images_, "utmQ": np.zeros((2, 3))}})
    with pytest.raises(ValueError, match=r"dbStruct in .*datasets/p_test.mat: utmDb holds 1 positions that are not "
                                         r"finite numbers, e.g. at index 2 \(dbImage test/2.jpg\)"):
        load_source("places", data_dir=str(tmp_path))


# --- Market-1501: ids beyond the labels ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["99999999999999999999_c1s1_000001_01.jpg", "3000000000_c1s1_000001_01.jpg",
                                  "0001_c99999999999s1_000001_01.jpg"])
def test_market1501_id_beyond_int32_names_the_file(tmp_path, name):
    for folder in ("bounding_box_train", "query", "bounding_box_test"):
        for pid in ("0001", "0002"):
            _image(str(tmp_path / folder / f"{pid}_c1s1_000001_01.jpg"), fmt="JPEG")
    _image(str(tmp_path / "bounding_box_test" / name), fmt="JPEG")
    with pytest.raises(ValueError, match=rf"bounding_box_test/{name}: person id .* is beyond the int32 labels"):
        load_source("market1501", data_dir=str(tmp_path))


# --- classes.json ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, message", [
    ('["a", "b"', r"class names file .*classes.json is not valid JSON"),
    ('{"a": 0}', r'class names file .*classes.json should hold a non-empty JSON list of class-name strings, got '
                 r'\{"a": 0\}'),
    ('["a", 1]', r"should hold a non-empty JSON list of class-name strings"),
    ("[]", r"should hold a non-empty JSON list"),
    ('["a", "b", "a"]', r"classes.json names some classes twice: \['a'\]"),
    (b"\xff\xfe[", r"cannot read the class names file .*classes.json"),
])
def test_read_class_names_names_the_file(tmp_path, text, message):
    path = tmp_path / "classes.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=message):
        read_class_names(str(path))


def test_read_class_names_reads_a_mapping(tmp_path):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(["T-shirt/top", "Trouser", "0"]) + "\n")
    assert read_class_names(str(path)) == ["T-shirt/top", "Trouser", "0"]


# --- trainability: warn when no valid pair or triplet can ever be formed -------------------------------


@pytest.mark.parametrize("values, labels, expected", [
    ({"classes_per_batch": 4, "images_per_class": 1}, [0, 0, 1, 1, 2, 2, 3, 3], ["images_per_class (K) = 1"]),
    ({"classes_per_batch": 1, "images_per_class": 4}, [0, 0, 1, 1], ["classes_per_batch (P) = 1"]),
    ({"train_size": 1}, [3], ["the training split (train_size=1) has 1 image(s): no pair", "has 1 class(es)",
                              "every class has a single image"]),
    ({}, [2, 2, 2, 2], ["has 1 class(es): no negative"]),
    ({}, [0, 1, 2, 3], ["every class has a single image"]),
    ({"batch_size": 1}, [0, 0, 1, 1], ["batch_size = 1"]),
    ({}, [0, 0, 1, 1, -1], []),
    ({"classes_per_batch": 2, "images_per_class": 2}, [0, 0, 1, 1, 2], []),
    ({"loss": "proxy_nca", "classes_per_batch": 4, "images_per_class": 1}, [0, 1, 2, 3], []),  # proxies
    ({"loss": "proxy_nca"}, [5, 5], ["has 1 class(es)"]),
])
def test_check_trainable(caplog, values, labels, expected):
    """params.json -> `model.data.check_trainable` through the application edge (P, K, batch size, the loss's
    in-batch mining, train_size in the wording)."""
    with caplog.at_level(logging.WARNING, logger="model.data"):
        problems = adapter.trainable_problems(Params.from_dict(values), np.array(labels))
    assert len(problems) == len(expected)
    for problem, start in zip(problems, expected, strict=True):
        assert start in problem
    assert [record.getMessage() for record in caplog.records] == [
        f"no valid pair or triplet can be formed: {problem}" for problem in problems]


def test_find_images_walks_reports_and_never_loops(tmp_path, caplog, monkeypatch):
    for name in ("a.png", "sub/b.WEBP", "sub/deeper/c.jpg", "locked/d.png"):
        _image(str(tmp_path / name), fmt="WEBP" if name.endswith("WEBP") else None)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "sub" / "broken.png").write_bytes(b"\x89PNG broken")
    os.symlink(str(tmp_path), tmp_path / "sub" / "loop")  # a link back to the top: not followed
    os.symlink("self.jpg", tmp_path / "self.jpg")  # an image name that is a link to itself
    locked, scandir = str(tmp_path / "locked"), os.scandir

    def refuse_locked(path="."):
        if os.fspath(path) == locked:
            raise PermissionError(13, "Permission denied", locked)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", refuse_locked)
    report = []
    with caplog.at_level(logging.WARNING, logger="model.data"):
        found = images.find_images(str(tmp_path), report, "database")
    assert found == ["a.png", "sub/b.WEBP", "sub/deeper/c.jpg"]
    assert sorted((os.path.relpath(e.item, tmp_path), e.split, e.problem) for e in report) == [
        ("locked", "database", "unreadable"), ("notes.txt", "database", "not an image file"),
        ("self.jpg", "database", "undecodable"), ("sub/broken.png", "database", "undecodable")]
    messages = [record.getMessage() for record in caplog.records]
    assert any(m.startswith("2 entries under") and "locked: folder cannot be listed: Permission denied" in m
               for m in messages)
    with pytest.raises(NotADirectoryError, match=r"notes.txt is a file; expected a folder of images"):
        images.find_images(str(tmp_path / "notes.txt"))
    os.makedirs(tmp_path / "nothing")
    (tmp_path / "nothing" / "x.txt").write_text("")
    with pytest.raises(FileNotFoundError, match=r"no usable image \(.jpg, .*, .webp\) under .*nothing"):
        images.find_images(str(tmp_path / "nothing"))
