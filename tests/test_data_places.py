"""Tests of model/data/places.py: GPS positives, place cells, CSV and Pittsburgh .mat datasets."""
import logging
import os

import numpy as np
import pytest
import scipy.io
from PIL import Image

from model.data import gps_positives, load_source
from model.data.places import place_cells


def _quiet_load(caplog, *args, **kwargs):
    """load_source(*args, **kwargs) and the messages it logged."""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="model.data"):
        source = load_source(*args, **kwargs)
    return source, [record.getMessage() for record in caplog.records]


def test_gps_positives_match_a_brute_force_loop():
    rng = np.random.default_rng(0)
    db = rng.uniform(0, 200, size=(300, 2))
    db[10] = db[11]  # duplicated position
    queries = np.concatenate([rng.uniform(0, 200, size=(40, 2)), db[10:11], [[1e5, 1e5]]])
    radius = 25.0
    positives = gps_positives(queries, db, radius)
    assert len(positives) == len(queries)
    for query, found in zip(queries, positives, strict=True):
        distances = np.array([np.sqrt(((query - point) ** 2).sum()) for point in db])
        expected = [j for j in range(len(db)) if distances[j] <= radius]
        assert sorted(found.tolist()) == expected
        assert np.all(np.diff(distances[found]) >= 0)  # nearest first
    assert {10, 11} <= set(positives[-2].tolist())
    assert len(positives[-1]) == 0


def test_place_cells_keep_each_place_within_the_radius():
    rng = np.random.default_rng(1)
    utm = rng.uniform(0, 120, size=(400, 2)) + [584000.0, 4477000.0]
    radius = 25.0
    cells = np.array(place_cells(utm, radius))
    assert 20 < len(set(cells)) < 400
    for cell in set(cells):
        members = utm[cells == cell]
        for a in members:
            for b in members:
                assert np.sqrt(((a - b) ** 2).sum()) <= radius


def _image(path, value=90):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(np.full((6, 8, 3), value, dtype=np.uint8)).save(path)


def _csv_dataset(root, place_ids=True, broken=None):
    """train/ and test/ with database.csv and queries.csv; places 'p0'..'p2' in train, 'p3' in test."""
    rows = {("train", "database"): [("db/0.png", 0, 0, "p0"), ("db/1.png", 3, 4, "p0"),
                                    ("db/2.png", 100, 0, "p1"), ("db/3.png", 0, 100, "p2")],
            ("train", "queries"): [("q/0.png", 1, 1, "p0"), ("q/1.png", 101, 1, "p1")],
            ("test", "database"): [("db/0.png", 500, 500, "p3"), ("db/1.png", 600, 600, "p1")],
            ("test", "queries"): [("q/0.png", 510, 500, "p3"), ("q/1.png", 900, 900, "p3")]}
    for (stage, kind), entries in rows.items():
        lines = ["path,easting,northing" + (",place_id" if place_ids else "")]
        for path, easting, northing, place in entries:
            _image(str(root / stage / path))
            lines.append(f"{path},{easting},{northing}" + (f",{place}" if place_ids else ""))
        (root / stage / f"{kind}.csv").write_text("\n".join(lines) + "\n")
    if broken:
        (root / broken).write_bytes(b"GIF89a broken")
    return rows


def test_csv_dataset_with_place_ids(tmp_path, caplog):
    _csv_dataset(tmp_path, broken="train/q/1.png")
    source, messages = _quiet_load(caplog, "places", data_dir=str(tmp_path))
    assert source.protocol == "places" and list(source.splits) == ["train", "database", "query"]
    assert source.class_names == ["p0", "p1", "p2", "p3"]
    train = source.splits["train"]
    assert train.names == ["train/db/0.png", "train/db/1.png", "train/db/2.png", "train/db/3.png",
                           "train/q/0.png"]
    np.testing.assert_array_equal(train.labels, [0, 0, 1, 2, 0])
    np.testing.assert_array_equal(train.utm, [[0, 0], [3, 4], [100, 0], [0, 100], [1, 1]])
    np.testing.assert_array_equal(source.splits["database"].labels, [3, 1])
    np.testing.assert_array_equal(source.splits["query"].labels, [3, 3])
    np.testing.assert_array_equal(source.splits["query"].utm, [[510, 500], [900, 900]])
    assert any(m.startswith("1 of 10 files") and "train/q/1.png" in m for m in messages)
    assert any("single image" in m and "\n  p2: its only image: train/db/3.png" in m for m in messages)
    assert [(os.path.relpath(entry.item, tmp_path), entry.split, entry.problem) for entry in source.report[:1]] == [
        ("train/q/1.png", "train", "undecodable")]


def test_csv_dataset_without_place_ids_uses_cells(tmp_path, caplog):
    _csv_dataset(tmp_path, place_ids=False)
    source, _ = _quiet_load(caplog, "places", data_dir=str(tmp_path), positive_radius=25.0)
    # Cells of side 25/√2 = 17.7 m: (0,0), (3,4), (1,1) in cell 0_0; (100,0), (101,1) in 5_0; (0,100) in 0_5.
    assert source.class_names == ["0_0", "0_5", "5_0"]
    np.testing.assert_array_equal(source.splits["train"].labels, [0, 0, 2, 1, 0, 2])
    assert (source.splits["database"].labels == -1).all() and (source.splits["query"].labels == -1).all()
    positives = gps_positives(source.splits["query"].utm, source.splits["database"].utm, 25.0)
    assert [p.tolist() for p in positives] == [[0], []]


@pytest.mark.parametrize("change, error, message", [
    (lambda root: (root / "test" / "queries.csv").write_text("path,easting\nq/0.png,1\n"),
     ValueError, r"queries.csv lacks the columns \['northing'\]"),
    (lambda root: (root / "test" / "queries.csv").write_text("path,easting,northing\nq/0.png,1,north\n"),
     ValueError, r"queries.csv line 2: easting and northing must be finite numbers"),
    (lambda root: (root / "test" / "queries.csv").write_text(
        "path,easting,northing\nq/0.png,1,2\nq/9.png,1,2\n"),
     FileNotFoundError, r"1 images listed in .*queries.csv do not exist, e.g. line 3: .*q/9.png"),
    (lambda root: (root / "test" / "queries.csv").write_text("path,easting,northing\nq/0.png,1,2\n"),
     ValueError, "some places CSVs .* have a place_id column and some do not"),
    (lambda root: os.remove(root / "train" / "database.csv"),
     FileNotFoundError, r"places CSV .*train/database.csv does not exist"),
])
def test_bad_csv_datasets(tmp_path, caplog, change, error, message):
    _csv_dataset(tmp_path)
    change(tmp_path)
    with pytest.raises(error, match=message):
        _quiet_load(caplog, "places", data_dir=str(tmp_path))


def _pittsburgh(root, name="pitts30k"):
    """root/datasets/<name>_{train,test}.mat in the NetVLAD dbStruct layout, images under root/."""
    rng = np.random.default_rng(2)
    utm = {}
    for stage in ("train", "test"):
        db_images = [f"{stage}/000/{i:06d}_pitch1_yaw1.jpg" for i in range(5)]
        q_images = [f"{stage}/000/{i:06d}_pitch1_yaw2.jpg" for i in range(3)]
        utm[stage] = (rng.uniform(0, 60, size=(5, 2)), rng.uniform(0, 60, size=(3, 2)))
        for image in db_images:
            _image(str(root / image))
        for image in q_images:
            _image(str(root / "queries_real" / image))
        struct = {"whichSet": stage, "dbImage": np.array(db_images, dtype=object), "utmDb": utm[stage][0].T,
                  "qImage": np.array(q_images, dtype=object), "utmQ": utm[stage][1].T, "numDb": 5, "numQ": 3,
                  "posDistThr": 25, "posDistSqThr": 625, "nonTrivPosDistSqThr": 100}
        os.makedirs(root / "datasets", exist_ok=True)
        scipy.io.savemat(str(root / "datasets" / f"{name}_{stage}.mat"), {"dbStruct": struct})
    return utm


def test_pittsburgh_mat_dataset(tmp_path, caplog):
    utm = _pittsburgh(tmp_path)
    source, messages = _quiet_load(caplog, "places", data_dir=str(tmp_path))
    assert not [m for m in messages if "posDistThr" in m]
    train, database, query = (source.splits[name] for name in ("train", "database", "query"))
    assert len(train) == 8 and len(database) == 5 and len(query) == 3
    np.testing.assert_allclose(train.utm, np.concatenate(utm["train"]))
    np.testing.assert_allclose(database.utm, utm["test"][0])
    np.testing.assert_allclose(query.utm, utm["test"][1])
    assert query.paths[0] == str(tmp_path / "queries_real" / "test/000/000000_pitch1_yaw2.jpg")
    assert database.names[0] == "test/000/000000_pitch1_yaw1.jpg"
    assert (query.labels == -1).all()
    cells = place_cells(train.utm, 25.0)
    np.testing.assert_array_equal(train.labels, [source.class_names.index(cell) for cell in cells])
    # With a second specification in datasets/, data_dir names the one to use.
    _pittsburgh(tmp_path, name="pitts250k")
    with pytest.raises(ValueError, match=r"several dataset specifications \['pitts250k', 'pitts30k'\]"):
        load_source("places", data_dir=str(tmp_path))
    chosen, _ = _quiet_load(caplog, "places", data_dir=str(tmp_path / "datasets" / "pitts30k"))
    np.testing.assert_allclose(chosen.splits["query"].utm, utm["test"][1])
    _, messages = _quiet_load(caplog, "places", data_dir=str(tmp_path / "datasets" / "pitts30k"),
                              positive_radius=10.0)
    assert any("posDistThr=25 m but positive_radius=10.0 m" in m for m in messages)


def test_bad_pittsburgh_specifications(tmp_path):
    _pittsburgh(tmp_path)
    (tmp_path / "datasets" / "pitts30k_test.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(ValueError, match=r"cannot read a NetVLAD dbStruct from .*pitts30k_test.mat"):
        load_source("places", data_dir=str(tmp_path))
    scipy.io.savemat(str(tmp_path / "datasets" / "pitts30k_test.mat"),
                     {"dbStruct": {"dbImage": np.array(["a.jpg"], dtype=object), "utmDb": np.zeros((2, 1))}})
    with pytest.raises(ValueError, match=r"lacks the fields \['qImage', 'utmQ'\]"):
        load_source("places", data_dir=str(tmp_path))
    images = np.array(["a.jpg", "b.jpg", "c.jpg"], dtype=object)
    scipy.io.savemat(str(tmp_path / "datasets" / "pitts30k_test.mat"),  # utm stored [N, 2] instead of [2, N]
                     {"dbStruct": {"dbImage": images, "utmDb": np.zeros((3, 2)), "qImage": images,
                                   "utmQ": np.zeros((2, 3))}})
    with pytest.raises(ValueError, match=r"utmDb should be \[2, 3\] .* got \(3, 2\)"):
        load_source("places", data_dir=str(tmp_path))
    os.remove(tmp_path / "train" / "000" / "000001_pitch1_yaw1.jpg")
    with pytest.raises(FileNotFoundError,
                       match=r"1 images listed in .*pitts30k_train.mat \(dbImage\) do not exist"):
        load_source("places", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no places dataset in"):
        load_source("places", data_dir=str(tmp_path / "datasets"))
