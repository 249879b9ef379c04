"""Tests of model/retrieval/index.py: exact search against numpy brute force, save/load, approximate recall,
bad input."""
import json
import os

import faiss
import numpy as np
import pytest

from model.retrieval.index import ReferenceIndex


def clustered(num, dim=16, num_clusters=20, seed=0):
    """[num, dim] float32 points around `num_clusters` centres, and the cluster of each as its label."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_clusters, num)
    points = rng.normal(size=(num_clusters, dim))[labels] * 3 + rng.normal(size=(num, dim))
    return points.astype(np.float32), labels


def brute_knn(queries, references, k, metric="euclidean"):
    """(distances, indices) [Q, k] in float64, sorted by distance then index."""
    queries, references = queries.astype(np.float64), references.astype(np.float64)
    if metric == "cosine":
        queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
        references = references / np.linalg.norm(references, axis=1, keepdims=True)
        distances = 1 - queries @ references.T
    else:
        distances = np.sqrt(((queries[:, None] - references[None]) ** 2).sum(-1))
    order = np.lexsort((np.broadcast_to(np.arange(len(references)), distances.shape), distances), axis=1)[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_flat_search_matches_brute_force(metric):
    references, labels = clustered(500)
    queries, _ = clustered(40, seed=1)
    paths = [f"img/{i:04d}.png" for i in range(500)]
    index = ReferenceIndex.build(references, labels, paths, metric=metric)
    result = index.search(queries, k=7)
    distances, indices = brute_knn(queries, references, 7, metric)
    np.testing.assert_array_equal(result.indices, indices)
    np.testing.assert_allclose(result.distances, distances, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(result.labels, labels[indices])
    np.testing.assert_array_equal(result.paths, np.array(paths)[indices])
    assert result.distances.dtype == np.float32 and result.indices.shape == (40, 7)


def test_flat_ties_go_to_the_lower_index_and_k_is_clipped():
    references = np.array([[1, 0], [0, 1], [-1, 0], [0, -1], [2, 0]], np.float32)  # four at distance 1 from 0
    index = ReferenceIndex.build(references, np.array(["a", "b", "c", "d", "e"]))
    result = index.search(np.zeros((1, 2)), k=10)
    np.testing.assert_array_equal(result.indices, [[0, 1, 2, 3, 4]])
    np.testing.assert_allclose(result.distances, [[1, 1, 1, 1, 2]])
    np.testing.assert_array_equal(result.labels, [["a", "b", "c", "d", "e"]])
    np.testing.assert_array_equal(result.paths, [["", "", "", "", ""]])  # no paths given


@pytest.mark.parametrize("kind, params", [("flat", {}), ("ivf", {"nlist": 8, "nprobe": 3}),
                                          ("hnsw", {"M": 8, "efConstruction": 20, "efSearch": 12})])
def test_save_load_round_trip(tmp_path, kind, params):
    references, labels = clustered(400)
    queries, _ = clustered(30, seed=2)
    paths = [f"folder/{i}.jpg" for i in range(400)]
    index = ReferenceIndex.build(references, labels, paths, kind=kind, **params)
    before = index.search(queries, 5)
    index.save(tmp_path / "index")
    assert sorted(os.listdir(tmp_path)) == ["index"]  # no temporary folder left
    loaded = ReferenceIndex.load(tmp_path / "index")
    after = loaded.search(queries, 5)
    for name in before._fields:
        np.testing.assert_array_equal(getattr(after, name), getattr(before, name), err_msg=name)
    description = json.loads((tmp_path / "index" / "index.json").read_text())
    assert description["kind"] == kind and description["dimension"] == 16 and description["count"] == 400
    assert {key: description["params"][key] for key in params} == params
    assert (loaded.kind, loaded.params, len(loaded), loaded.dimension) == (kind, index.params, 400, 16)
    # Saving again replaces the folder completely.
    ReferenceIndex.build(references[:10], labels[:10]).save(tmp_path / "index")
    assert len(ReferenceIndex.load(tmp_path / "index")) == 10
    assert (tmp_path / "index" / "paths.txt").read_text() == ""
    assert sorted(os.listdir(tmp_path)) == ["index"]


def test_ivf_default_nlist_and_string_labels(tmp_path):
    references, labels = clustered(2000)
    names = np.array([f"class_{label}" for label in labels])
    index = ReferenceIndex.build(references, names, kind="ivf")
    assert index.params["nlist"] == 2000 // 39  # 4 sqrt(N) = 179 cells would hold fewer than 39 points each
    assert index.params["train_size"] == 2000  # 64 nlist > N: all of them
    index.save(tmp_path / "i")
    np.testing.assert_array_equal(ReferenceIndex.load(tmp_path / "i").labels, names)


@pytest.mark.parametrize("kind, params", [("ivf", {"nlist": 50, "nprobe": 8}),
                                          ("hnsw", {"M": 16, "efConstruction": 40, "efSearch": 64})])
def test_approximate_recall_on_clustered_data(kind, params):
    references, labels = clustered(5000, dim=32, num_clusters=50)
    queries, _ = clustered(200, dim=32, num_clusters=50, seed=3)
    exact = ReferenceIndex.build(references, labels).search(queries, 10).indices
    approximate = ReferenceIndex.build(references, labels, kind=kind, **params).search(queries, 10).indices
    recall = np.mean([len(np.intersect1d(a, e)) / 10 for a, e in zip(approximate, exact, strict=True)])
    assert recall > 0.9
    if kind == "ivf":  # one cell of 50: a much smaller share of the true neighbours
        narrow = ReferenceIndex.build(references, labels, kind="ivf", nlist=50, nprobe=1).search(queries, 10)
        assert np.mean([len(np.intersect1d(a, e)) / 10 for a, e in zip(narrow.indices, exact, strict=True)]) < recall


def test_missing_results_are_marked():
    """IVF visiting one cell of 3 references finds fewer than k: index -1, distance inf, label -1, path ""."""
    quantizer = faiss.IndexFlatL2(2)
    quantizer.add(np.array([[0, 0], [100, 100]], np.float32))  # two given cells: no k-means
    ivf = faiss.IndexIVFFlat(quantizer, 2, 2, faiss.METRIC_L2)
    ivf.train(np.zeros((1, 2), np.float32))  # the quantizer already holds nlist centroids: nothing to train
    references = np.concatenate([np.zeros((3, 2)), np.full((200, 2), 100.0)]).astype(np.float32)
    ivf.add(references)
    index = ReferenceIndex(ivf, np.arange(203), np.array([f"{i}.png" for i in range(203)]), "ivf",
                           {"nlist": 2, "nprobe": 1}, "euclidean")
    result = index.search(np.zeros((1, 2)), k=5)
    np.testing.assert_array_equal(result.indices, [[0, 1, 2, -1, -1]])
    np.testing.assert_array_equal(result.distances, [[0, 0, 0, np.inf, np.inf]])
    np.testing.assert_array_equal(result.labels, [[0, 1, 2, -1, -1]])
    np.testing.assert_array_equal(result.paths, [["0.png", "1.png", "2.png", "", ""]])


def test_bad_input(tmp_path):
    references, labels = clustered(100)
    index = ReferenceIndex.build(references, labels)
    with pytest.raises(ValueError, match="queries have dimension 5 but the index holds 16-dimensional embeddings"):
        index.search(references[:, :5], 3)
    for k in (0, -1, 2.0):
        with pytest.raises(ValueError, match=f"k={k!r}: expected a positive integer"):
            index.search(references[:2], k)
    with pytest.raises(ValueError, match="queries: 1 rows contain NaN or inf"):
        index.search(np.full((1, 16), np.nan), 3)
    with pytest.raises(ValueError, match=r"labels: expected 100 integers or strings \(shape \(100,\)\)"):
        ReferenceIndex.build(references, labels[:-1])
    with pytest.raises(ValueError, match=r"paths: expected one path per embedding \(100\), got 2"):
        ReferenceIndex.build(references, labels, ["a", "b"])
    with pytest.raises(ValueError, match="line breaks"):
        ReferenceIndex.build(references[:1], labels[:1], ["a\nb"])
    with pytest.raises(ValueError, match="kind='annoy'"):
        ReferenceIndex.build(references, labels, kind="annoy")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['nprobe'\] for kind 'hnsw'"):
        ReferenceIndex.build(references, labels, kind="hnsw", nprobe=3)
    with pytest.raises(ValueError, match="nlist=0: expected a positive integer"):
        ReferenceIndex.build(references, labels, kind="ivf", nlist=0)
    with pytest.raises(ValueError, match="nlist=500 cells for 100 references"):
        ReferenceIndex.build(references, labels, kind="ivf", nlist=500)


def test_folders_that_are_not_an_index(tmp_path):
    with pytest.raises(ValueError, match="no such index folder"):
        ReferenceIndex.load(tmp_path / "absent")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="is not an index folder: it has no index.json"):
        ReferenceIndex.load(tmp_path / "other")
    references, labels = clustered(50)
    index = ReferenceIndex.build(references, labels)
    with pytest.raises(ValueError, match="exists and is not an index folder"):
        index.save(tmp_path / "other")
    assert (tmp_path / "other" / "notes.txt").read_text() == "hello"  # untouched
    index.save(tmp_path / "good")
    (tmp_path / "good" / "labels.npy").unlink()
    with pytest.raises(ValueError, match="index folder without labels.npy"):
        ReferenceIndex.load(tmp_path / "good")
    index.save(tmp_path / "good")
    (tmp_path / "good" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="index.faiss: not a faiss index"):
        ReferenceIndex.load(tmp_path / "good")
    index.save(tmp_path / "good")
    (tmp_path / "good" / "index.json").write_text("{not json")
    with pytest.raises(ValueError, match="index.json: unreadable"):
        ReferenceIndex.load(tmp_path / "good")
    ReferenceIndex.build(references[:10], labels[:10]).save(tmp_path / "small")
    os.replace(tmp_path / "small" / "labels.npy", tmp_path / "good" / "labels.npy")
    (tmp_path / "good" / "index.json").write_text(json.dumps({"format": "reference-index", "kind": "flat", "params": {},
                                                               "metric": "euclidean", "dimension": 16, "count": 50}))
    with pytest.raises(ValueError, match="inconsistent index folder.*labels.npy 10 labels"):
        ReferenceIndex.load(tmp_path / "good")
