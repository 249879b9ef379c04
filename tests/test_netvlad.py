"""Tests for model/nets/netvlad_layer.py and netvlad_fitting.py: the NetVLAD layer against a numpy loop, its
k-means initialisation, the cluster step on a tiny image folder, and PCA-whitening against scikit-learn."""

import logging
import math
import warnings

import faiss
import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from sklearn.decomposition import PCA
from sklearn.neighbors import NearestNeighbors

from model.nets import netvlad_fitting, netvlad_layer
from model.nets.netvlad_layer import NetVLAD
from tests.fixtures import build_small


def reference_netvlad(feature_map, kernel, bias, centroids, normalize_input):
    """NetVLAD by the paper's formula, one image, one cluster, one location at a time (float64)."""
    num_clusters, dim = centroids.shape
    outputs = []
    for image in feature_map.astype(np.float64):
        x = image.reshape(-1, dim)
        if normalize_input:
            x = np.array([row / max(np.linalg.norm(row), 1e-6) for row in x])
        logits = x @ kernel + (0.0 if bias is None else bias)
        assignment = np.exp(logits - logits.max(axis=1, keepdims=True))
        assignment /= assignment.sum(axis=1, keepdims=True)
        clusters = []
        for k in range(num_clusters):
            residual = np.zeros(dim)
            for n in range(len(x)):
                residual += assignment[n, k] * (x[n] - centroids[k])
            clusters.append(residual / np.linalg.norm(residual))
        vector = np.concatenate(clusters)  # cluster by cluster
        outputs.append(vector / np.linalg.norm(vector))
    return np.array(outputs)


def random_layer(rng, dim, num_clusters=5, **kwargs):
    """A built NetVLAD layer with random kernel, bias and centroids; returns (layer, weights dict)."""
    layer = NetVLAD(num_clusters, **kwargs)
    layer.build((None, None, None, dim))
    weights = {
        "kernel": rng.normal(size=(dim, num_clusters)).astype(np.float32),
        "bias": rng.normal(size=num_clusters).astype(np.float32) if layer.vladv2 else None,
        "centroids": rng.normal(size=(num_clusters, dim)).astype(np.float32),
    }
    layer.kernel.assign(weights["kernel"])
    layer.centroids.assign(weights["centroids"])
    if layer.vladv2:
        layer.bias.assign(weights["bias"])
    return layer, weights


def unit_rows(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def softmax(logits):
    e = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.fixture
def mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


# ---------------------------------------------------------------- the layer


@pytest.mark.parametrize("vladv2", [False, True])
@pytest.mark.parametrize("normalize_input", [True, False])
def test_layer_matches_numpy_loop(vladv2, normalize_input):
    rng = np.random.default_rng(1)
    layer, w = random_layer(rng, dim=6, vladv2=vladv2, normalize_input=normalize_input)
    feature_map = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
    expected = reference_netvlad(feature_map, normalize_input=normalize_input, **w)
    output = layer(feature_map)
    assert output.shape == (3, 5 * 6) and output.dtype == "float32"
    np.testing.assert_allclose(output, expected, atol=2e-5)
    np.testing.assert_allclose(np.linalg.norm(output, axis=1), 1.0, rtol=1e-5)


def test_unknown_height_and_width():
    rng = np.random.default_rng(2)
    layer, w = random_layer(rng, dim=4, num_clusters=3)
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, layer(inputs))
    assert model.output_shape == (None, 3 * 4)
    for height, width in [(1, 1), (2, 7), (5, 3)]:
        feature_map = rng.normal(size=(2, height, width, 4)).astype(np.float32)
        expected = reference_netvlad(feature_map, normalize_input=True, **w)
        np.testing.assert_allclose(model(feature_map), expected, atol=2e-5)


def test_soft_assignment_shape_and_sum():
    rng = np.random.default_rng(3)
    layer, _ = random_layer(rng, dim=4, num_clusters=3)
    assignment = layer.soft_assignment(rng.normal(size=(2, 3, 5, 4)).astype(np.float32))
    assert assignment.shape == (2, 15, 3)
    np.testing.assert_allclose(np.sum(assignment, axis=-1), 1.0, rtol=1e-6)


def test_weights_created_in_build():
    layer = NetVLAD(4)
    layer.build((None, 7, 7, 10))
    shapes = {v.name: tuple(v.shape) for v in layer.weights}
    assert shapes == {"kernel": (10, 4), "centroids": (4, 10), "alpha": ()}
    assert [v.name for v in layer.non_trainable_weights] == ["alpha"]
    v2 = NetVLAD(4, vladv2=True)
    v2.build((None, 7, 7, 10))
    assert {v.name: tuple(v.shape) for v in v2.weights}["bias"] == (4,)


def test_get_config_round_trip():
    layer = NetVLAD(num_clusters=7, normalize_input=False, vladv2=True, name="pool")
    config = layer.get_config()
    assert (config["num_clusters"], config["normalize_input"], config["vladv2"]) == (7, False, True)
    clone = NetVLAD.from_config(config)
    assert clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert isinstance(restored, NetVLAD) and restored.get_config() == config


@pytest.mark.parametrize("vladv2", [False, True])
def test_zero_input_gives_finite_output_and_gradients(vladv2):
    layer, _ = random_layer(np.random.default_rng(4), dim=5, vladv2=vladv2)
    zeros = tf.zeros((2, 3, 3, 5))
    with tf.GradientTape() as tape:
        tape.watch(zeros)
        output = layer(zeros)
        loss = tf.reduce_sum(output * tf.range(25, dtype=tf.float32))
    gradients = tape.gradient(loss, [zeros, *layer.trainable_weights])
    assert np.all(np.isfinite(output))
    np.testing.assert_allclose(np.linalg.norm(output, axis=1), 1.0, rtol=1e-5)
    for gradient in gradients:
        assert np.all(np.isfinite(gradient))


def test_cluster_without_mass_is_zero_and_finite():
    rng = np.random.default_rng(5)
    layer, _ = random_layer(rng, dim=4, num_clusters=3, vladv2=True)
    layer.bias.assign(np.array([-1e4, 0.0, 0.0], np.float32))  # cluster 0 gets exactly 0 weight
    feature_map = tf.constant(rng.normal(size=(2, 2, 3, 4)), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(feature_map)
        output = layer(feature_map)
        loss = tf.reduce_sum(output**3)
    gradients = tape.gradient(loss, [feature_map, *layer.trainable_weights])
    np.testing.assert_array_equal(output[:, :4], 0.0)
    assert all(np.all(np.isfinite(g)) for g in gradients)


def test_mixed_precision_computes_in_float32(mixed_precision):
    rng = np.random.default_rng(6)
    layer, w = random_layer(rng, dim=8, num_clusters=4)
    assert layer.compute_dtype == "float32" and layer.kernel.dtype == "float32"
    feature_map = rng.normal(size=(2, 3, 3, 8)).astype(np.float16)
    output = layer(tf.constant(feature_map))
    assert output.dtype == "float32"
    expected = reference_netvlad(feature_map.astype(np.float32), normalize_input=True, **w)
    np.testing.assert_allclose(output, expected, atol=2e-5)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="num_clusters"):
        NetVLAD(1)
    with pytest.raises(ValueError, match=r"\[B, H, W, D\]"):
        NetVLAD(3).build((None, 8))


# ---------------------------------------------------------------- init_from_kmeans


def reference_v1_alpha(centroids, descriptors):
    """alpha by a loop: mean over descriptors of (best − second best) cosine to the centroids."""
    gaps = []
    for x in descriptors:
        cosines = sorted((c @ x / np.linalg.norm(c) for c in centroids), reverse=True)
        gaps.append(cosines[0] - cosines[1])
    return -math.log(0.01) / np.mean(gaps)


def test_init_v1_alpha_kernel_and_ratio_100():
    rng = np.random.default_rng(7)
    descriptors = unit_rows(rng.normal(size=(400, 8))).astype(np.float32)
    centroids = descriptors[:6] + 0.1 * rng.normal(size=(6, 8)).astype(np.float32)
    layer = NetVLAD(6)
    layer.build((None, None, None, 8))
    assert not layer.initialised and layer.alpha == 0.0
    layer.init_from_kmeans(centroids, descriptors)
    alpha = reference_v1_alpha(centroids.astype(np.float64), descriptors.astype(np.float64))
    assert layer.initialised
    np.testing.assert_allclose(layer.alpha, alpha, rtol=1e-5)
    np.testing.assert_allclose(layer.kernel, alpha * unit_rows(centroids).T, rtol=1e-5)
    np.testing.assert_array_equal(layer.centroids, centroids)
    # Geometric mean of the ratio between the two largest assignments is exactly 100 (paper §3.2).
    assignment = np.sort(layer.soft_assignment(descriptors[:, None, None, :])[:, 0], axis=-1)
    log_ratio = np.log(assignment[:, -1]) - np.log(assignment[:, -2])
    np.testing.assert_allclose(np.exp(np.mean(log_ratio)), 100.0, rtol=1e-3)


def test_init_v2_from_squared_neighbour_distances():
    rng = np.random.default_rng(8)
    descriptors = unit_rows(rng.normal(size=(300, 5)))
    centroids = 0.7 * rng.normal(size=(4, 5))  # not unit norm: ‖c‖² and ‖c‖ differ
    layer = NetVLAD(4, vladv2=True)
    layer.build((None, None, None, 5))
    layer.init_from_kmeans(centroids, descriptors)
    distances, _ = NearestNeighbors(n_neighbors=2).fit(descriptors).kneighbors(centroids)
    alpha = -math.log(0.01) / np.mean(distances[:, 1] ** 2 - distances[:, 0] ** 2)
    np.testing.assert_allclose(layer.alpha, alpha, rtol=1e-5)
    np.testing.assert_allclose(layer.kernel, 2 * alpha * centroids.T, rtol=1e-5)
    np.testing.assert_allclose(layer.bias, -alpha * np.sum(centroids**2, axis=1), rtol=1e-5)
    # The assignment is then softmax_k(−alpha ‖x − c_k‖²).
    x = rng.normal(size=(10, 5)).astype(np.float32)
    squared = ((unit_rows(x)[:, None, :] - centroids[None]) ** 2).sum(-1)
    expected = softmax(-alpha * squared)
    np.testing.assert_allclose(layer.soft_assignment(x[:, None, None, :])[:, 0], expected, atol=1e-5)


def test_init_errors():
    layer = NetVLAD(3)
    assert not layer.initialised and layer.alpha == 0.0
    with pytest.raises(ValueError, match="not built"):
        layer.init_from_kmeans(np.ones((3, 4)), np.ones((5, 4)))
    layer.build((None, None, None, 4))
    with pytest.raises(ValueError, match="centroids must have shape"):
        layer.init_from_kmeans(np.ones((3, 5)), np.ones((5, 5)))
    with pytest.raises(ValueError, match="descriptors must have shape"):
        layer.init_from_kmeans(np.eye(3, 4), np.ones((5, 3)))
    with pytest.raises(ValueError, match="duplicated"):
        layer.init_from_kmeans(np.ones((3, 4)), np.eye(4))
    assert not layer.initialised


def test_save_load_keeps_weights_and_initialisation(tmp_path):
    rng = np.random.default_rng(9)
    inputs = keras.Input((None, None, 6))
    layer = NetVLAD(4, vladv2=True, name="netvlad")
    model = keras.Model(inputs, layer(inputs))
    assert netvlad_layer.needs_clustering(model)
    descriptors = unit_rows(rng.normal(size=(50, 6)))
    layer.init_from_kmeans(descriptors[:4] + 0.05, descriptors)
    assert not netvlad_layer.needs_clustering(model)
    model.save(tmp_path / "netvlad.keras")
    loaded = keras.models.load_model(tmp_path / "netvlad.keras")
    feature_map = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
    np.testing.assert_array_equal(loaded(feature_map), model(feature_map))
    assert not netvlad_layer.needs_clustering(loaded)
    assert loaded.get_layer("netvlad").alpha == layer.alpha


def test_needs_clustering_and_lookup_errors():
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="netvlad")])
    assert not netvlad_layer.needs_clustering(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))
    with pytest.raises(ValueError, match="not NetVLAD"):
        netvlad_layer.netvlad_layer(plain)
    with pytest.raises(ValueError, match="no layer named 'netvlad'"):
        netvlad_layer.netvlad_layer(keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)]))


# ---------------------------------------------------------------- cluster step and whitening


def small_network(**overrides):
    return build_small(**{"num_clusters": 4, **overrides})


@pytest.fixture
def image_folder(tmp_path):
    """Seven 32×32 RGB PNG images of random blobs, in a folder."""
    rng = np.random.default_rng(10)
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(7):
        pixels = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
        Image.fromarray(pixels).resize((32, 32), Image.BILINEAR).save(folder / f"{i}.png")
    return folder


def folder_dataset(folder, batch_size=3):
    """(images [B, 32, 32, 3] float32 in [0, 255], labels [B]) batches of the PNGs, in name order."""
    paths = sorted(str(p) for p in folder.glob("*.png"))

    def load(path):
        image = tf.io.decode_png(tf.io.read_file(path), channels=3)
        return tf.cast(image, tf.float32), tf.constant(0)

    return tf.data.Dataset.from_tensor_slices(paths).map(load).batch(batch_size)


def folder_images(folder):
    return np.stack([np.asarray(Image.open(p), np.float32) for p in sorted(folder.glob("*.png"))])


def test_sample_descriptors_are_distinct_locations_of_each_image(image_folder):
    model = small_network()
    descriptors = netvlad_fitting.sample_descriptors(model, folder_dataset(image_folder), 5, 10, seed=3)
    assert descriptors.shape == (5 * 10, 16) and descriptors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(descriptors, axis=1), 1.0, rtol=1e-5)
    feature_maps = np.asarray(model.get_layer("backbone")(folder_images(image_folder)))  # [7, 8, 8, 16]
    for i in range(5):
        locations = unit_rows(feature_maps[i].reshape(-1, 16))
        picked = descriptors[10 * i : 10 * (i + 1)]
        distances = np.linalg.norm(picked[:, None] - locations[None], axis=-1)  # [10, 64]
        matches = distances.argmin(axis=1)
        assert np.all(distances.min(axis=1) < 1e-5)
        assert len(set(matches)) == 10  # sampled without replacement
    again = netvlad_fitting.sample_descriptors(model, folder_dataset(image_folder), 5, 10, seed=3)
    np.testing.assert_array_equal(again, descriptors)


def test_sample_descriptors_reports_when_short(image_folder, caplog):
    """Through logging (a report about the data), not warnings: PYTHONWARNINGS=ignore does not hide it."""
    model = small_network()
    with caplog.at_level(logging.WARNING, logger="model.nets.netvlad_fitting"):
        descriptors = netvlad_fitting.sample_descriptors(model, folder_dataset(image_folder), 20, 5)
    assert len(descriptors) == 7 * 5 and "only 7 images" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="model.nets.netvlad_fitting"):
        descriptors = netvlad_fitting.sample_descriptors(model, folder_dataset(image_folder), 2, 100)
    assert len(descriptors) == 2 * 64 and "only 64 locations" in caplog.text


def test_cluster_netvlad_on_image_folder(image_folder, tmp_path):
    model = small_network()
    dataset = folder_dataset(image_folder)
    assert netvlad_layer.needs_clustering(model)
    out_path = tmp_path / "run" / "netvlad_centroids.npy"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        centroids = netvlad_fitting.cluster_netvlad(model, dataset, out_path, 6, 20, seed=1)
    assert not [w for w in caught if "only" in str(w.message)]  # 6 images × 20 locations exist
    layer = model.get_layer("netvlad")
    assert not netvlad_layer.needs_clustering(model)
    np.testing.assert_array_equal(np.load(out_path), centroids)
    np.testing.assert_array_equal(layer.centroids, centroids)
    # The centroids are a k-means fixed point of the sampled descriptors: each is its cluster's mean.
    descriptors = netvlad_fitting.sample_descriptors(model, dataset, 6, 20, seed=1)
    nearest = np.argmin(((descriptors[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert set(nearest) == set(range(4))
    for k in range(4):
        np.testing.assert_allclose(descriptors[nearest == k].mean(axis=0), centroids[k], atol=1e-4)
    alpha = reference_v1_alpha(centroids.astype(np.float64), descriptors.astype(np.float64))
    np.testing.assert_allclose(layer.alpha, alpha, rtol=1e-4)
    # Same as running faiss by hand with the same seed.
    kmeans = faiss.Kmeans(16, 4, niter=100, seed=1)
    kmeans.train(descriptors)
    np.testing.assert_allclose(centroids, kmeans.centroids, atol=1e-6)


def test_cluster_netvlad_errors(image_folder, tmp_path):
    model = small_network(num_clusters=30)
    with pytest.raises(ValueError, match=r"\.npy"):
        netvlad_fitting.cluster_netvlad(model, folder_dataset(image_folder), tmp_path / "c.txt")
    with pytest.raises(ValueError, match="Only 10 descriptors for 30"):
        netvlad_fitting.cluster_netvlad(model, folder_dataset(image_folder), tmp_path / "c.npy", 2, 5)
    empty = folder_dataset(image_folder).take(0)
    with pytest.raises(ValueError, match="no images"):
        netvlad_fitting.cluster_netvlad(model, empty, tmp_path / "c.npy")


def test_fit_whitening_matches_sklearn_pca(image_folder):
    model = small_network(netvlad_dim=4)
    dataset = folder_dataset(image_folder)
    eigenvalues = netvlad_fitting.fit_whitening(model, dataset, 4)
    images = folder_images(image_folder)
    descriptors = np.asarray(keras.Model(model.input, model.get_layer("netvlad").output)(images))
    whitened = np.asarray(keras.Model(model.input, model.get_layer("whitening").output)(images))
    pca = PCA(n_components=4, whiten=True).fit(descriptors.astype(np.float64))
    expected = pca.transform(descriptors.astype(np.float64))
    np.testing.assert_allclose(eigenvalues, pca.explained_variance_, rtol=1e-3)
    signs = np.sign(np.sum(whitened * expected, axis=0))  # PCA directions are defined up to sign
    np.testing.assert_allclose(whitened * signs, expected, atol=2e-3)
    np.testing.assert_allclose(np.cov(whitened, rowvar=False), np.eye(4), atol=2e-3)
    np.testing.assert_allclose(model(images), unit_rows(whitened), atol=1e-5)


def test_fit_whitening_errors(image_folder):
    dataset = folder_dataset(image_folder)
    with pytest.raises(ValueError, match="no 'whitening' layer"):
        netvlad_fitting.fit_whitening(small_network(), dataset, 4)
    with pytest.raises(ValueError, match="has 4 units"):
        netvlad_fitting.fit_whitening(small_network(netvlad_dim=4), dataset, 3)
    with pytest.raises(ValueError, match="more than 7 database images, got 7"):
        netvlad_fitting.fit_whitening(small_network(netvlad_dim=7), dataset, 7)
