"""export.py, search.py and model/retrieval/bundle.py end to end on a run trained on digits.

The exported SavedModel is loaded in a separate Python process that cannot import this project
(isolated mode, no project folder on sys.path) and must give the embeddings that evaluate.py writes
for the same image files. Search and verification are checked against the library's exact search
and calibration computed here from the checkpoint.
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import evaluate
import export
import search
from model.app.runs import load_run
from model.retrieval.bundle import Retriever
from model.retrieval.calibration import calibrate, pair_distances
from model.retrieval.embed import embed_split
from model.retrieval.index import knn
from tests.fixtures import DIGITS, train_digits_run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return train_digits_run(tmp_path_factory, "serving")


@pytest.fixture(scope="module")
def bundle(run):
    assert export.main(["--model_dir", run]) == 0
    return os.path.join(run, "export")


@pytest.fixture(scope="module")
def queries(tmp_path_factory):
    """A folder of query images as files come: RGB and gray PNGs of several sizes, in a subfolder too."""
    folder = tmp_path_factory.mktemp("queries")
    rng = np.random.default_rng(0)
    for i, (height, width) in enumerate([(8, 8), (12, 10), (30, 17), (8, 8), (5, 9)]):
        pixels = rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"rgb{i}.png")
        Image.fromarray(pixels[..., 0]).save(folder / f"gray{i}.png")
    (folder / "sub").mkdir()
    Image.fromarray(rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)).save(folder / "sub" / "deep.png")
    return str(folder)


def train_embeddings(run):
    params, source, network, _ = load_run(run)
    return embed_split(network, source.splits["train"], image_size=params.image_size, channels=params.channels,
                       verbose=False), source


SUBPROCESS = r"""
import sys, json


class NoProject:
    # The project may be installed in this environment (make setup installs it editable): any import of it
    # fails here, so the SavedModel must load and serve without it.
    def find_spec(self, name, path=None, target=None):
        if name == "model" or name.startswith("model."):
            raise ImportError("the project's code was imported: " + name)


sys.meta_path.insert(0, NoProject())
import numpy as np
import tensorflow as tf
bundle, paths, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
serve = tf.saved_model.load(bundle + "/saved_model").signatures["serving_default"]
rows = []
for path in paths:
    image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
    rows.append(serve(images=image[None])["embeddings"].numpy()[0])
np.save(out, np.stack(rows))
"""


def test_saved_model_loads_without_project_code_and_matches_evaluate(run, bundle, queries, tmp_path):
    out = str(tmp_path / "retrieved")
    assert evaluate.main(["--model_dir", run, "--query_dir", queries, "--db_dir", queries, "--out", out]) == 0
    expected = np.load(os.path.join(out, "query_embeddings.npy"))
    names = open(os.path.join(out, "query_paths.txt")).read().split()
    paths = [os.path.join(queries, name) for name in names]
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-I", "-c", SUBPROCESS, bundle, json.dumps(paths),
                             str(tmp_path / "served.npy")], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    served = np.load(tmp_path / "served.npy")
    assert served.shape == expected.shape == (11, DIGITS["embedding_size"])
    np.testing.assert_allclose(served, expected, atol=1e-5)
    # The library client gives the same, in batches of equal-size images.
    embeddings, found = Retriever.load(bundle).embed(queries)
    assert found == names
    np.testing.assert_allclose(embeddings, expected, atol=1e-5)


def test_bundle_holds_index_threshold_and_manifest(run, bundle):
    assert sorted(os.listdir(bundle)) == ["index", "manifest.json", "saved_model", "threshold.json"]
    assert not [name for name in os.listdir(run) if "partial" in name or ".old-" in name]
    manifest = json.load(open(os.path.join(bundle, "manifest.json")))
    assert (manifest["dataset"], manifest["protocol"], manifest["reference_split"], manifest["metric"]) == \
        ("digits", "labels", "train", "euclidean")
    assert manifest["embedding_dimension"] == DIGITS["embedding_size"]
    assert manifest["input"]["image_size"] == [8, 8] and manifest["input"]["channels"] == 1
    assert manifest["params"]["embedding_size"] == DIGITS["embedding_size"]
    assert {"tensorflow", "keras", "faiss", "numpy", "python"} <= set(manifest["versions"])
    train, source = train_embeddings(run)
    retriever = Retriever.load(bundle)
    assert len(retriever.index) == len(train) == manifest["index"]["count"] and manifest["index"]["kind"] == "flat"
    np.testing.assert_array_equal(retriever.index.labels,
                                  np.array(source.class_names)[source.splits["train"].labels])
    result = retriever.search_embeddings(train[:20], k=5)
    distances, indices = knn(train[:20], train, 5)
    np.testing.assert_array_equal(result.indices, indices)
    np.testing.assert_allclose(result.distances, distances, rtol=1e-5, atol=1e-6)
    # threshold.json: the calibration of the validation split's embeddings.
    params, source, network, _ = load_run(run)
    validation = embed_split(network, source.splits["validation"], image_size=params.image_size,
                             channels=params.channels, verbose=False)
    expected = calibrate(validation, source.splits["validation"].labels)
    threshold = json.load(open(os.path.join(bundle, "threshold.json")))
    assert threshold["available"] and threshold["split"] == "validation"
    for name in ("at_target", "best_f1"):
        assert threshold[name] == pytest.approx(expected[name])
        assert manifest["threshold"][name] == threshold[name]["threshold"]


def test_retriever_search_and_verify(run, bundle, queries):
    retriever = Retriever.load(bundle)
    result, names = retriever.search(queries, k=4)
    embeddings, _ = retriever.embed(queries)
    train, source = train_embeddings(run)
    distances, indices = knn(embeddings, train, 4)
    np.testing.assert_array_equal(result.indices, indices)
    np.testing.assert_allclose(result.distances, distances, rtol=1e-5, atol=1e-6)
    assert len(names) == 11 and result.labels.shape == (11, 4)
    # Pairs: an image with itself (distance 0: same) and with others.
    files = [os.path.join(queries, name) for name in names]
    same, pair = retriever.verify(files[:5], files[:5][::-1])
    np.testing.assert_allclose(pair, pair_distances(embeddings[:5], embeddings[:5][::-1]), atol=1e-6)
    threshold = json.load(open(os.path.join(bundle, "threshold.json")))["at_target"]["threshold"]
    np.testing.assert_array_equal(same, pair <= threshold)
    assert same[2] and pair[2] == 0
    same, _ = retriever.verify(files[:5], files[:5][::-1], threshold=1e9)
    assert same.all()
    gray = np.asarray(Image.open(os.path.join(queries, "gray0.png")))  # [8, 8] uint8
    as_array, _ = retriever.embed(np.stack([gray[..., None], gray[..., None]]))
    np.testing.assert_allclose(as_array[0], embeddings[names.index("gray0.png")], atol=1e-5)


def test_search_command_line(bundle, queries, tmp_path, capsys):
    out = str(tmp_path / "results.csv")
    assert search.main(["--bundle", bundle, "--images", queries, "--top_k", "3", "--out", out]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 11 * 3 and rows[0]["rank"] == "1" and rows[0]["query"] == "gray0.png"
    retriever = Retriever.load(bundle)
    result, names = retriever.search(queries, k=3)
    assert [row["label"] for row in rows[:3]] == list(result.labels[0])
    assert [int(row["index"]) for row in rows[:3]] == list(result.indices[0]) and rows[0]["path"] == ""
    assert float(rows[0]["distance"]) == pytest.approx(float(result.distances[0, 0]), rel=1e-5)
    printed = capsys.readouterr().out
    assert "gray0.png" in printed and "written to" in printed
    embeddings, _ = retriever.embed(queries)
    np.save(tmp_path / "queries.npy", embeddings)
    assert search.main(["--bundle", bundle, "--embeddings", str(tmp_path / "queries.npy"), "--out", out]) == 0
    rows = list(csv.DictReader(open(out)))
    assert len(rows) == 11 * 10 and rows[10]["query"] == "1"
    files = [os.path.join(queries, "rgb1.png"), os.path.join(queries, "sub", "deep.png")]
    assert search.main(["--bundle", bundle, "--images", *files, "--out", out, "--top_k", "2"]) == 0
    assert [row["query"] for row in csv.DictReader(open(out))] == [files[0]] * 2 + [files[1]] * 2


def test_export_options_and_rerun(run, tmp_path):
    out = str(tmp_path / "hnsw_bundle")
    assert export.main(["--model_dir", run, "--out", out, "--index", "hnsw", "--efSearch", "20", "--M", "8"]) == 0
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert manifest["index"]["kind"] == "hnsw" and manifest["index"]["params"]["efSearch"] == 20
    assert manifest["index"]["params"]["M"] == 8
    (tmp_path / "hnsw_bundle" / "notes.txt").write_text("a file of the user's")
    assert export.main(["--model_dir", run, "--out", out, "--checkpoint", "latest"]) == 2  # never deleted
    os.remove(tmp_path / "hnsw_bundle" / "notes.txt")
    assert export.main(["--model_dir", run, "--out", out, "--checkpoint", "latest"]) == 0
    assert sorted(os.listdir(out)) == ["index", "manifest.json", "saved_model", "threshold.json"]  # replaced
    assert json.load(open(os.path.join(out, "manifest.json")))["checkpoint"] == "latest"
    assert sorted(os.listdir(tmp_path)) == ["hnsw_bundle"]  # no temporary folder left
    with pytest.raises(SystemExit):
        export.main(["--model_dir", run, "--out", out, "--index", "flat", "--nprobe", "4"])


def test_bad_input(run, bundle, tmp_path, capsys):
    (tmp_path / "not_a_bundle").mkdir()
    (tmp_path / "not_a_bundle" / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="is not a bundle of export.py: it lacks saved_model, index"):
        Retriever.load(tmp_path / "not_a_bundle")
    assert search.main(["--bundle", str(tmp_path / "not_a_bundle"), "--images", str(tmp_path)]) == 2
    assert "is not a bundle" in capsys.readouterr().err
    # Exporting into a folder that is not a bundle is refused and leaves it alone.
    assert export.main(["--model_dir", run, "--out", str(tmp_path / "not_a_bundle")]) == 2
    assert "holds files that are not part of a bundle (notes.txt)" in capsys.readouterr().err
    assert os.listdir(tmp_path / "not_a_bundle") == ["notes.txt"]
    # Nor a bundle with a file of the user's in it.
    (tmp_path / "bundle_and_notes").mkdir()
    (tmp_path / "bundle_and_notes" / "manifest.json").write_text("{}")
    (tmp_path / "bundle_and_notes" / "thesis.tex").write_text("mine")
    assert export.main(["--model_dir", run, "--out", str(tmp_path / "bundle_and_notes")]) == 2
    assert sorted(os.listdir(tmp_path / "bundle_and_notes")) == ["manifest.json", "thesis.tex"]
    assert export.main(["--model_dir", str(tmp_path / "no_run")]) == 2
    retriever = Retriever.load(bundle)
    with pytest.raises(ValueError, match=r"images\[0\]: expected a uint8 image \[H, W, C\] with 1 or 3 channels.*"
                                         r"\(8, 8, 4\)"):
        retriever.embed(np.zeros((2, 8, 8, 4), np.uint8))
    with pytest.raises(ValueError, match="dtype float32"):
        retriever.embed(np.zeros((1, 8, 8, 3), np.float32))
    serve = tf.saved_model.load(os.path.join(bundle, "saved_model")).signatures["serving_default"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="images must have 1 \\(gray\\) or 3 \\(RGB\\) channels"):
        serve(images=tf.zeros((1, 8, 8, 4), tf.uint8))
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no usable image"):
        retriever.search(str(tmp_path / "empty"))
    assert search.main(["--bundle", bundle, "--images", str(tmp_path / "empty")]) == 2
    assert "no usable image" in capsys.readouterr().err
    with pytest.raises(ValueError, match="queries have dimension 3"):
        retriever.search_embeddings(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="threshold='median'"):
        retriever.verify(np.zeros((1, 8, 8, 1), np.uint8), np.zeros((1, 8, 8, 1), np.uint8), threshold="median")
    with pytest.raises(ValueError, match="1 images_a but 2 images_b"):
        retriever.verify(np.zeros((1, 8, 8, 1), np.uint8), np.zeros((2, 8, 8, 1), np.uint8))
