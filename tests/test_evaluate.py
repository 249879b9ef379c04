"""evaluate.py end to end: metrics of a run trained on digits, query-to-database retrieval over a tiny
folder tree, and the errors. The references are computed here from the checkpoint with the library
functions (metrics) or with numpy (nearest neighbours)."""

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
from PIL import Image

import evaluate
from model.app import adapter, evaluation
from model.app.runs import load_run
from model.data import DataSource, Split, make_dataset
from model.evaluation.metrics import reid_metrics, retrieval_metrics
from model.evaluation.protocols import PROTOCOLS
from model.nets.netvlad_fitting import cluster_netvlad
from model.params import Params
from model.retrieval.embed import embed, embed_split
from model.retrieval.folders import OUTPUT_FILES
from model.run import RunFolder
from tests.fixtures import DIGITS, train_digits_run, write_folder_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_digits_run(tmp_path_factory, "evaluate")


def reference_embeddings(model_dir, split_name):
    """Embeddings and labels of a split, from the best checkpoint, through the public library only."""
    params = Params.load(os.path.join(model_dir, "effective_params.json"))
    network = keras.models.load_model(os.path.join(model_dir, "checkpoints", "best.keras"))
    split = adapter.data_source(params, class_names=RunFolder(model_dir).class_names()).splits[split_name]
    dataset = make_dataset(split, image_size=params.image_size, channels=params.channels, training=False)
    return embed(network, dataset, verbose=False)


def assert_same_metrics(saved, expected):
    assert set(saved) == {str(key) for key in expected}
    for key, value in expected.items():
        if isinstance(value, dict):
            assert_same_metrics(saved[str(key)], value)
        else:
            assert saved[str(key)] == pytest.approx(value, abs=1e-6), key


def test_metrics_of_a_digits_run(run, capsys):
    assert evaluate.main(["--model_dir", run]) == 0
    with open(os.path.join(run, "metrics_test.json")) as handle:
        saved = json.load(handle)
    assert {key: saved[key] for key in ("dataset", "protocol", "split", "checkpoint", "flip", "rerank")} == {
        "dataset": "digits", "protocol": "labels", "split": "test", "checkpoint": "best", "flip": False,
        "rerank": False}
    test_emb, test_labels = reference_embeddings(run, "test")
    train_emb, train_labels = reference_embeddings(run, "train")
    vs_train = retrieval_metrics(test_emb, test_labels, train_emb, train_labels)
    assert_same_metrics(saved["vs_train"], vs_train)
    assert_same_metrics(saved["leave_one_out"], retrieval_metrics(test_emb, test_labels))
    assert saved["vs_train"]["num_queries"] == 360 and saved["vs_train"]["num_reference"] == len(train_labels)
    assert not [name for name in os.listdir(run) if name.endswith(".partial")]
    table = capsys.readouterr().out.splitlines()  # progress bars first, then the table
    assert next(line.split() for line in table if line.startswith("metric ")) == ["metric", "vs_train",
                                                                                 "leave_one_out"]
    row = next(line.split() for line in table if line.startswith("recall@4 "))
    assert float(row[1]) == pytest.approx(vs_train["recall_at_k"][4], abs=1e-4)


def test_validation_split_and_latest_checkpoint(run):
    assert evaluate.main(["--model_dir", run, "--split", "validation", "--checkpoint", "latest"]) == 0
    with open(os.path.join(run, "metrics_validation.json")) as handle:
        saved = json.load(handle)
    assert saved["split"] == "validation" and saved["checkpoint"] == "latest"
    assert saved["leave_one_out"]["num_queries"] == DIGITS["validation_size"]


def test_flip_averages_the_embeddings_of_image_and_mirror(run):
    params, source, network, _ = load_run(run)
    split = source.splits["test"].take(np.arange(50))
    mirrored = Split(labels=split.labels, images=np.ascontiguousarray(split.images[:, :, ::-1]))
    reading = {"image_size": params.image_size, "channels": params.channels, "verbose": False}
    plain = embed_split(network, split, **reading)
    flipped = embed_split(network, mirrored, **reading)
    averaged = embed_split(network, split, flip=True, **reading)
    np.testing.assert_allclose(averaged, (plain + flipped) / 2, atol=1e-5)
    assert not np.allclose(averaged, plain, atol=1e-3)  # digits are not symmetric


def test_json_safe():
    value = {1: np.float32(0.5), "cmc": np.array([0.25, 1.0]), "n": np.int64(3), "bad": float("nan")}
    assert json.dumps(evaluation.json_safe(value)) == '{"1": 0.5, "cmc": [0.25, 1.0], "n": 3, "bad": null}'


def write_images(folder, names, seed):
    """Random RGB images (PNG or JPEG by extension) of varying sizes at the relative `names`."""
    rng = np.random.default_rng(seed)
    for name in names:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        size = rng.integers(8, 20, size=2)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def read_rows(out):
    with open(os.path.join(out, "retrieved.csv")) as handle:
        return list(csv.DictReader(handle))


def read_lines(path):
    with open(path) as handle:
        return handle.read().splitlines()


def test_query_to_database_retrieval(run, tmp_path, caplog):
    query_dir, db_dir, out = tmp_path / "queries", tmp_path / "database", str(tmp_path / "out")
    queries = ["a.png", "sub/b.jpg", "sub/deeper/c.png"]
    write_images(query_dir, queries, seed=0)
    write_images(db_dir, ["x/1.png", "x/2.png", "y/3.jpg", "4.png", "5.png"], seed=1)
    copies = {"a.png": "copies/a.png", "sub/b.jpg": "copies/b.jpg", "sub/deeper/c.png": "y/c.png"}
    for query, copy in copies.items():  # identical files: the nearest neighbour at distance 0
        (db_dir / copy).parent.mkdir(exist_ok=True)
        shutil.copy(query_dir / query, db_dir / copy)
    (db_dir / "notes.txt").write_text("not an image")
    (db_dir / "broken.png").write_bytes(b"not a png")

    # Files left out are reported through logging (the data loaders) or a warning (the file finder).
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        assert evaluate.main(["--model_dir", run, "--query_dir", str(query_dir), "--db_dir", str(db_dir),
                              "--out", out, "--top_k", "4"]) == 0
    reported = [str(warning.message) for warning in caught] + [record.getMessage() for record in caplog.records]
    assert any("notes.txt" in message for message in reported)
    assert any("cannot be decoded" in message and "broken.png" in message for message in reported)

    query_paths = read_lines(os.path.join(out, "query_paths.txt"))
    db_paths = read_lines(os.path.join(out, "database_paths.txt"))
    assert query_paths == sorted(queries)
    assert len(db_paths) == 8 and "broken.png" not in db_paths and "notes.txt" not in db_paths
    query_emb = np.load(os.path.join(out, "query_embeddings.npy"))
    db_emb = np.load(os.path.join(out, "database_embeddings.npy"))
    assert query_emb.shape == (3, 8) and db_emb.shape == (8, 8)

    rows = read_rows(out)
    assert len(rows) == len(queries) * 4
    distances = np.linalg.norm(query_emb[:, None] - db_emb[None], axis=-1)  # [Q, N] brute force
    for i, query in enumerate(query_paths):
        mine = [row for row in rows if row["query"] == query]
        assert [int(row["rank"]) for row in mine] == [1, 2, 3, 4]
        assert mine[0]["database"] == copies[query] and float(mine[0]["distance"]) < 1e-3
        expected = np.sort(distances[i])[:4]
        found = [distances[i, db_paths.index(row["database"])] for row in mine]
        np.testing.assert_allclose(found, expected, atol=1e-4)
        np.testing.assert_allclose([float(row["distance"]) for row in mine], expected, atol=1e-3)

    # A rerun on fewer files and a larger top_k than the database replaces everything.
    os.remove(query_dir / "sub" / "b.jpg")
    shutil.rmtree(db_dir / "x")
    for name in ("notes.txt", "broken.png", "copies/b.jpg"):
        os.remove(db_dir / name)
    assert evaluate.main(["--model_dir", run, "--query_dir", str(query_dir), "--db_dir", str(db_dir),
                          "--out", out, "--top_k", "10"]) == 0
    assert sorted(os.listdir(out)) == sorted(OUTPUT_FILES)
    assert sorted(os.listdir(tmp_path)) == ["database", "out", "queries"]  # no staging folder left
    rows = read_rows(out)
    assert read_lines(os.path.join(out, "query_paths.txt")) == ["a.png", "sub/deeper/c.png"]
    assert len(read_lines(os.path.join(out, "database_paths.txt"))) == 5
    assert len(rows) == 2 * 5
    assert {row["database"] for row in rows} == {"y/3.jpg", "4.png", "5.png", "copies/a.png", "y/c.png"}
    assert np.load(os.path.join(out, "query_embeddings.npy")).shape == (2, 8)


def test_errors(run, tmp_path, capsys):
    # No checkpoint: a copy of the run without best.keras.
    broken = str(tmp_path / "broken")
    shutil.copytree(run, broken)
    os.remove(os.path.join(broken, "checkpoints", "best.keras"))
    assert evaluate.main(["--model_dir", broken]) == 2
    assert "best.keras" in capsys.readouterr().err
    assert evaluate.main(["--model_dir", str(tmp_path / "missing")]) == 2
    assert "effective_params.json" in capsys.readouterr().err
    assert evaluate.main(["--model_dir", run, "--split", "train"]) == 2
    assert "split='train'" in capsys.readouterr().err

    # Retrieval mode: an empty query folder, an output folder of other files, missing arguments.
    query_dir, db_dir = tmp_path / "queries", tmp_path / "database"
    query_dir.mkdir()
    write_images(db_dir, ["1.png"], seed=0)
    arguments = ["--model_dir", run, "--query_dir", str(query_dir), "--db_dir", str(db_dir)]
    assert evaluate.main([*arguments, "--out", str(tmp_path / "out")]) == 2
    assert "no usable image" in capsys.readouterr().err and not os.path.exists(tmp_path / "out")
    write_images(query_dir, ["1.png"], seed=0)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    assert evaluate.main([*arguments, "--out", str(foreign)]) == 2
    assert "holds files that are not part of a retrieval output (keep.txt)" in capsys.readouterr().err
    assert os.listdir(foreign) == ["keep.txt"]
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(arguments)
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err


def test_command_line_exit_status(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "evaluate.py"), "--model_dir", str(tmp_path)],
                            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert result.returncode == 2
    assert "error:" in result.stderr and "not a trained run" in result.stderr


def test_retrieval_output_never_replaces_user_files(run, tmp_path, capsys):
    """An output folder holding anything but retrieval outputs is refused untouched, an output folder that
    holds or lies in an image folder is refused, and a good one keeps its mode and gets every output."""
    query_dir, db_dir = tmp_path / "queries", tmp_path / "database"
    write_images(query_dir, ["1.png", "2.png"], seed=0)
    write_images(db_dir, ["3.png", "4.png", "5.png"], seed=1)
    arguments = ["--model_dir", run, "--query_dir", str(query_dir), "--db_dir", str(db_dir)]
    thesis = tmp_path / "thesis"
    (thesis / "notes").mkdir(parents=True)
    (thesis / "retrieved.csv").write_text("an old output\n")
    (thesis / "thesis.tex").write_text("\\documentclass{article}")
    assert evaluate.main([*arguments, "--out", str(thesis)]) == 2
    assert "thesis.tex" in capsys.readouterr().err
    assert sorted(os.listdir(thesis)) == ["notes", "retrieved.csv", "thesis.tex"]
    assert (thesis / "retrieved.csv").read_text() == "an old output\n"

    for inside in (tmp_path, query_dir, query_dir / "out"):  # holds, is, or lies in the query folder
        assert evaluate.main([*arguments, "--out", str(inside)]) == 2
        assert "overlap" in capsys.readouterr().err
    assert sorted(os.listdir(query_dir)) == ["1.png", "2.png"]

    out = tmp_path / "out"
    out.mkdir(mode=0o755)
    os.chmod(out, 0o755)
    (out / "retrieved.csv").write_text("an earlier output\n")
    assert evaluate.main([*arguments, "--out", str(out), "--top_k", "2"]) == 0
    assert os.stat(out).st_mode & 0o777 == 0o755
    assert sorted(os.listdir(out)) == sorted(OUTPUT_FILES)
    assert len(read_rows(str(out))) == 2 * 2
    assert open(out / "data_report.csv").read().splitlines() == ["item,split,problem,detail"]


def test_reid_protocol_reports_metrics_with_and_without_reranking():
    rng = np.random.default_rng(4)
    pids = np.repeat(np.arange(1, 7), 4)  # 6 people, 4 images each
    camids = np.tile([1, 2, 3, 4], 6)
    images = np.zeros((len(pids), 2, 2, 3), dtype=np.uint8)
    centres = rng.normal(size=(7, 8))
    embeddings = (centres[pids] + 0.8 * rng.normal(size=(len(pids), 8))).astype(np.float32)
    query_rows, gallery_rows = np.arange(0, 24, 4), np.setdiff1d(np.arange(24), np.arange(0, 24, 4))

    def split(rows):
        return Split(labels=pids[rows], images=images[rows], names=[str(r) for r in rows], camids=camids[rows])

    source = DataSource(name="market1501", splits={"query": split(query_rows), "gallery": split(gallery_rows)},
                        class_names=[], channels=3, image_size=None, protocol="reid")

    def embed_rows(part):
        return embeddings[[int(name) for name in part.names]]

    reid, labels = PROTOCOLS["reid"].component(), PROTOCOLS["labels"].component()
    results = reid.evaluate(source.splits, "test", embed_rows, eval_size=None, rerank=True)
    expected = reid_metrics(embeddings[query_rows], pids[query_rows], camids[query_rows],
                            embeddings[gallery_rows], pids[gallery_rows], camids[gallery_rows], rerank={})
    reranked = expected.pop("reranked")
    assert_same_metrics(results["query_vs_gallery"], expected)
    assert_same_metrics(results["query_vs_gallery_reranked"], reranked)
    assert "query_vs_gallery_reranked" not in reid.evaluate(source.splits, "test", embed_rows, eval_size=None)
    with pytest.raises(ValueError, match="not for the labels protocol"):
        labels.evaluate(source.splits, "test", embed_rows, eval_size=None, rerank=True)


def _untrained_reference(params_values, model_dir):
    """Test and train embeddings of the network training starts from: the seed, the data, the build, as training."""
    params = Params.from_dict(params_values)
    keras.utils.set_random_seed(params.seed)
    source = adapter.data_source(params, class_names=RunFolder(model_dir).class_names())
    params = adapter.resolve(params, source)
    network = adapter.network(params)
    embedded = {name: embed(network, make_dataset(source.splits[name], image_size=params.image_size,
                                                  channels=params.channels, training=False), verbose=False)
                for name in ("test", "train")}
    return embedded["test"], embedded["train"]


def test_a_run_never_trained_is_measured_untrained_and_left_as_it_was(tmp_path, capsys):
    """Off-the-shelf: a folder with only params.json gives the metrics of the seeded initial network."""
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "params.json").write_text(json.dumps(DIGITS))
    assert evaluate.main(["--model_dir", str(fresh)]) == 0
    assert "checkpoint: untrained" in capsys.readouterr().out
    assert sorted(os.listdir(fresh)) == ["metrics_test_untrained.json", "params.json"]  # nothing else written
    with open(fresh / "metrics_test_untrained.json") as handle:
        saved = json.load(handle)
    assert saved["checkpoint"] == "untrained"
    (test_emb, test_labels), (train_emb, train_labels) = _untrained_reference(DIGITS, str(fresh))
    assert_same_metrics(saved["vs_train"], retrieval_metrics(test_emb, test_labels, train_emb, train_labels))
    assert_same_metrics(saved["leave_one_out"], retrieval_metrics(test_emb, test_labels))
    # Seeded: the same numbers again; an explicit --checkpoint best is still an error on it.
    again = evaluation.evaluate_run(str(fresh), verbose=False)
    assert again["vs_train"]["precision_at_1"] == pytest.approx(saved["vs_train"]["precision_at_1"], abs=1e-12)
    with pytest.raises(FileNotFoundError, match="is not a trained run"):
        evaluation.evaluate_run(str(fresh), checkpoint="best", verbose=False)


def test_untrained_checkpoint_of_a_trained_run_is_its_starting_point(run):
    untrained = evaluation.evaluate_run(run, checkpoint="untrained", verbose=False)
    trained = evaluation.evaluate_run(run, verbose=False)
    assert (untrained["checkpoint"], trained["checkpoint"]) == ("untrained", "best")
    params = Params.load(os.path.join(run, "effective_params.json")).to_dict()
    (test_emb, test_labels), (train_emb, train_labels) = _untrained_reference(params, run)
    expected = retrieval_metrics(test_emb, test_labels, train_emb, train_labels)
    assert untrained["vs_train"]["precision_at_1"] == pytest.approx(expected["precision_at_1"], abs=1e-6)
    assert untrained["vs_train"]["precision_at_1"] != trained["vs_train"]["precision_at_1"]


def test_untrained_netvlad_is_clustered_first_in_a_scratch_folder(tmp_path, caplog):
    """pytorch-NetVlad's test mode without --resume: the NetVLAD layer gets its k-means step before it is measured,
    and the run folder gets no centroids.npy."""
    data = tmp_path / "data"
    write_folder_tree(data)
    values = {**DIGITS, "model": "netvlad", "backbone": "small", "weights": None, "num_clusters": 4,
              "dataset": "folders", "data_dir": str(data), "image_size": [8, 8], "classes_per_batch": 3,
              "images_per_class": 2, "validation_size": 0}
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "params.json").write_text(json.dumps(values))
    with caplog.at_level(logging.INFO, logger="model"):
        loaded = load_run(str(fresh), "untrained")
    assert loaded.network.get_layer("netvlad").initialised
    assert any("NetVLAD initialised by k-means (4 clusters): a temporary folder" in record.getMessage()
               for record in caplog.records)
    results = evaluation.evaluate_run(str(fresh), verbose=False)
    assert results["checkpoint"] == "untrained" and results["vs_train"]["num_queries"] == 9
    assert os.listdir(fresh) == ["params.json"]
    # The same as the cluster step on the seeded network, done here by hand.
    params = adapter.resolve(Params.from_dict(values), adapter.data_source(Params.from_dict(values),
                                                                           RunFolder(str(fresh)).class_names()))
    keras.utils.set_random_seed(params.seed)
    source = adapter.data_source(params, RunFolder(str(fresh)).class_names())
    network = adapter.network(params)
    cluster_netvlad(network, make_dataset(source.splits["train"], image_size=params.image_size,
                                          channels=params.channels, training=False),
                    str(tmp_path / "centroids.npy"), seed=params.seed)
    np.testing.assert_allclose(loaded.network.predict(np.zeros((1, 8, 8, 3)) + 50, verbose=0),
                               network.predict(np.zeros((1, 8, 8, 3)) + 50, verbose=0), rtol=1e-5, atol=1e-6)
