"""Projector export, t-SNE and retrieval pictures, on a digits run and a tiny RGB image-folder run.

Both runs train a few steps on 8×8 images; the CLI then writes every output once per run (module
fixtures), and the tests read them back with TensorFlow, PIL and TensorBoard itself.
"""

import json
import math
import os
import time
import urllib.request

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins.projector import ProjectorConfig

import visualize_embeddings
from model.app import adapter
from model.app.runs import load_run
from model.app.training import train
from model.app.visualization import visualize
from model.params import Params
from model.viz import projector
from model.viz.points import sample_evenly
from tests.fixtures import DIGITS, write_folder_tree

SAMPLE = 100  # points of the digits run (its test split has 360)


def _train(run, **changes):
    train(Params.from_dict({**DIGITS, "num_epochs": 1, "steps_per_epoch": 2, **changes}), run)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("digits") / "run")
    _train(run)
    arguments = ["--model_dir", run, "--max_points", str(SAMPLE), "--num_queries", "3", "--top_k", "4"]
    assert visualize_embeddings.main(arguments) == 0
    return run


@pytest.fixture(scope="module")
def folders_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("folders")
    write_folder_tree(root / "data")
    run = str(root / "run")
    _train(run, dataset="folders", data_dir=str(root / "data"), image_size=[8, 6], classes_per_batch=3,
           images_per_class=2, validation_size=3)
    visualize(run, num_queries=2, top_k=3, verbose=False)
    return run


def _config(run):
    config = ProjectorConfig()
    with open(os.path.join(run, "projector", "projector_config.pbtxt")) as handle:
        text_format.Parse(handle.read(), config)
    return config


def _metadata(run):
    with open(os.path.join(run, "projector", "metadata.tsv")) as handle:
        return [line.split("\t") for line in handle.read().splitlines()]


def _checkpoint_embeddings(run):
    reader = tf.train.load_checkpoint(os.path.join(run, "projector"))
    return reader.get_tensor(projector.tensor_name(f"{os.path.basename(run)}_test"))


def test_metadata_has_one_row_per_embedding(digits_run):
    embeddings = _checkpoint_embeddings(digits_run)
    rows = _metadata(digits_run)
    assert embeddings.shape == (SAMPLE, 8)
    assert rows[0] == ["label", "class"]
    assert len(rows) - 1 == len(embeddings)
    classes = json.load(open(os.path.join(digits_run, "classes.json")))
    assert all(name == classes[int(label)] for label, name in rows[1:])
    # 100 points over 10 classes of at least 10 test images each: 10 per class.
    assert np.bincount([int(label) for label, _ in rows[1:]]).tolist() == [10] * 10


def test_checkpoint_holds_the_networks_embeddings_of_the_sampled_points(digits_run):
    params, source, network, _ = load_run(digits_run)
    test = source.splits["test"]
    rows = sample_evenly(test.labels, SAMPLE, seed=0)
    images = test.images[rows].astype(np.float32)  # 8×8 digits, already the run's image size
    expected = np.asarray(network(images, training=False))
    np.testing.assert_allclose(_checkpoint_embeddings(digits_run), expected, rtol=1e-4, atol=1e-5)
    assert [int(label) for label, _ in _metadata(digits_run)[1:]] == test.labels[rows].tolist()


def test_config_names_tensor_metadata_and_sprite(digits_run):
    (embedding,) = _config(digits_run).embeddings
    # Named after the run and the split (the projector lists it by this name).
    assert embedding.tensor_name == f"{os.path.basename(digits_run)}_test/.ATTRIBUTES/VARIABLE_VALUE"
    assert embedding.metadata_path == "metadata.tsv"
    assert embedding.sprite.image_path == "sprite.png"
    assert list(embedding.sprite.single_image_dim) == [8, 8]


def test_sprite_is_a_square_grid_of_the_thumbnails(digits_run):
    sprite = Image.open(os.path.join(digits_run, "projector", "sprite.png"))
    side = math.ceil(math.sqrt(SAMPLE)) * 8
    assert sprite.size == (side, side) and sprite.mode == "L"
    _, source, _, _ = load_run(digits_run)
    test = source.splits["test"]
    rows = sample_evenly(test.labels, SAMPLE, seed=0)
    pixels = np.asarray(sprite)
    for i in (0, 1, 10, SAMPLE - 1):  # thumbnail i sits at row i // 10, column i % 10
        cell = pixels[(i // 10) * 8:(i // 10 + 1) * 8, (i % 10) * 8:(i % 10 + 1) * 8]
        np.testing.assert_array_equal(cell, test.images[rows[i], :, :, 0])
    assert not pixels[80:].any()  # nothing past the last row (10 × 10 grid exactly)


def test_pictures_open_with_the_expected_size(digits_run):
    tsne = Image.open(os.path.join(digits_run, "tsne.png"))
    assert tsne.size == (900, 750)
    retrieval = Image.open(os.path.join(digits_run, "retrieval.png"))
    # 3 queries × (1 + 4) square images of 1.6 inches, 0.4 inch margin; per row 0.2 inch and 0.18 per caption line
    # (one: the distance); 100 dpi.
    assert retrieval.size == (round((5 * 1.6 + 0.4) * 100), round(3 * (1.6 + 0.2 + 0.18) * 100))
    assert np.asarray(retrieval.convert("RGB")).std() > 10  # not a blank page


def test_folders_run_exports_rgb_thumbnails_of_nonsquare_images(folders_run):
    (embedding,) = _config(folders_run).embeddings
    assert list(embedding.sprite.single_image_dim) == [6, 8]  # width, height of image_size [8, 6]
    sprite = Image.open(os.path.join(folders_run, "projector", "sprite.png"))
    assert sprite.mode == "RGB" and sprite.size == (3 * 6, 3 * 8)  # 9 test images: 3 × 3
    rows = _metadata(folders_run)[1:]
    assert sorted(name for _, name in rows) == ["cat"] * 3 + ["dog"] * 3 + ["eel"] * 3
    assert _checkpoint_embeddings(folders_run).shape[0] == 9
    for name in ("tsne.png", "retrieval.png"):
        assert Image.open(os.path.join(folders_run, name)).size[0] > 100


def test_tensorboard_projector_finds_the_export_under_the_run_folder(digits_run):
    from tensorboard import program

    board = program.TensorBoard()
    board.configure(argv=[None, "--logdir", digits_run, "--port", "0", "--bind_all", "--load_fast", "false"])
    url = board.launch()
    deadline = time.time() + 30
    runs = []
    while time.time() < deadline and "projector" not in runs:  # the plugin scans in a background thread
        with urllib.request.urlopen(f"{url}data/plugin/projector/runs") as response:
            runs = json.loads(response.read())
        time.sleep(0.5)
    assert runs == ["projector"]
    with urllib.request.urlopen(f"{url}data/plugin/projector/info?run=projector") as response:
        info = json.loads(response.read())
    (embedding,) = info["embeddings"]
    assert embedding["tensorShape"] == [SAMPLE, 8]
    assert embedding["sprite"]["singleImageDim"] == [8, 8]


def test_sample_evenly_matches_a_round_robin_count():
    rng = np.random.default_rng(3)
    labels = np.repeat([0, 1, 2, 3], [2, 50, 7, 30])  # class 0 runs out, then class 2
    for max_points in (1, 4, 9, 20, 40, 88, 200):
        chosen = sample_evenly(labels, max_points, seed=int(rng.integers(100)))
        assert len(chosen) == min(max_points, len(labels))
        assert np.all(np.diff(chosen) > 0)
        # Reference: hand out one item per class per round until max_points are handed out.
        quota, left = np.zeros(4, dtype=int), min(max_points, len(labels))
        available = np.bincount(labels)
        while left:
            for label in range(4):
                if left and quota[label] < available[label]:
                    quota[label] += 1
                    left -= 1
        counts = np.bincount(labels[chosen], minlength=4)
        # Within one round the order of classes is random, so counts may differ from the reference by one.
        assert np.abs(counts - quota).max() <= 1 and counts.sum() == quota.sum()
        full = quota == available
        np.testing.assert_array_equal(counts[full & (counts.sum() == len(labels))],
                                      available[full & (counts.sum() == len(labels))])
    with pytest.raises(ValueError, match="max_points"):
        sample_evenly(labels, 0)


def test_make_sprite_matches_a_loop():
    thumbnails = np.random.default_rng(0).integers(1, 255, size=(7, 3, 2, 3), dtype=np.uint8)
    sprite = projector.make_sprite(thumbnails)
    assert sprite.shape == (3 * 3, 3 * 2, 3)
    expected = np.zeros_like(sprite)
    for i, image in enumerate(thumbnails):
        row, column = divmod(i, 3)
        expected[row * 3:(row + 1) * 3, column * 2:(column + 1) * 2] = image
    np.testing.assert_array_equal(sprite, expected)


def test_thumbnail_size_keeps_the_sprite_within_its_limit():
    assert projector.thumbnail_size((8, 8), 100) == (8, 8)
    height, width = projector.thumbnail_size((256, 128), 10_000)
    assert 100 * height <= projector.MAX_SPRITE_SIDE and (height, width) == (81, 40)


def test_missing_checkpoint_empty_and_unknown_splits_are_clear_errors(digits_run, tmp_path, monkeypatch, capsys):
    assert visualize_embeddings.main(["--model_dir", str(tmp_path)]) == 2
    assert "is not a trained run" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no split 'gallery'"):
        visualize(digits_run, split="gallery", verbose=False)
    data_source = adapter.data_source

    def without_test_images(params, class_names=None):
        source = data_source(params, class_names=class_names)
        source.splits["test"] = source.splits["test"].take([])
        return source

    monkeypatch.setattr(adapter, "data_source", without_test_images)
    with pytest.raises(ValueError, match="'test' split .* is empty"):
        visualize(digits_run, verbose=False)


def test_reid_pictures_frame_junk_grey_and_places_pictures_show_metres_and_a_map(tmp_path):
    from model.data import Split
    from model.evaluation.protocols import PROTOCOLS
    from model.viz.plots import plot_places_map, plot_retrieval

    pixels = np.zeros((6, 4, 2, 3), dtype=np.uint8)
    query = Split(labels=[7, 8], images=pixels[:2], camids=[1, 1])
    gallery = Split(labels=[7, 7, 8, -1], images=pixels[:4], camids=[1, 2, 2, 3])
    neighbours = np.array([[0, 1, 2, 3], [2, 0, 3, 1]])
    reid = PROTOCOLS["reid"].component()
    relevant = reid.relevance(query, np.array([0, 1]), gallery, neighbours)
    # same person same camera and unlabelled images are junk (None), as reid_metrics discards them
    assert relevant.tolist() == [[None, True, False, None], [True, False, None, False]]

    utm = np.array([[5e5, 4e6], [5e5 + 100, 4e6]])
    queries = Split(labels=[-1, -1], images=pixels[:2], utm=utm)
    database = Split(labels=[-1] * 3, images=pixels[:3], utm=utm[[0, 0, 1]] + [[3, 4], [30, 40], [0, 20]])
    rows, nearest = np.array([0, 1]), np.array([[0, 1], [2, 0]])
    places = PROTOCOLS["places"].component(positive_radius=25.0)
    assert places.relevance(queries, rows, database, nearest).tolist() == [[True, False], [True, False]]
    assert places.neighbour_notes(queries, rows, database, nearest) == [["5 m away", "50 m away"],
                                                                         ["20 m away", "97 m away"]]
    embeddings = np.array([[0.0, 0.0], [1.0, 1.0]], dtype=np.float32)
    reference = np.array([[0.0, 0.1], [5.0, 5.0], [1.0, 1.1]], dtype=np.float32)
    query_utm, database_utm, found, radius = places.map_points(queries, embeddings, database, reference)
    np.testing.assert_array_equal(query_utm, queries.utm)
    np.testing.assert_array_equal(database_utm, database.utm)
    assert found.tolist() == [True, True] and radius == 25.0  # nearest: 5 m and 20 m away
    plot_places_map(query_utm, database_utm, found, radius, str(tmp_path / "places_map.png"))
    assert Image.open(tmp_path / "places_map.png").size == (700, 700)

    path = str(tmp_path / "retrieval.png")
    images = np.full((2, 4, 8, 4, 3), 128, dtype=np.uint8)
    plot_retrieval(images[:, 0], images, np.ones((2, 4)), relevant, path, legend=reid.legend)
    frame = np.asarray(Image.open(path).convert("RGB"))
    grey, green = (0x9E, 0x9E, 0x9E), (0x1A, 0x96, 0x41)
    assert (frame == grey).all(axis=-1).any() and (frame == green).all(axis=-1).any()


def test_the_retrieval_title_is_wrapped_within_a_narrow_figure():
    """Market-1501's crops are tall and narrow: the re-ID legend, one line, was wider than the figure and clipped."""
    from model.evaluation.protocols import PROTOCOLS
    from model.viz.plots import retrieval_figure

    images = np.full((2, 4, 16, 8, 3), 128, dtype=np.uint8)  # two queries, four neighbours each, 16 × 8 pixels
    figure = retrieval_figure(images[:, 0], images, np.ones((2, 4)), None, legend=PROTOCOLS["reid"].component().legend)
    figure.canvas.draw()
    bounds = figure.bbox
    title = figure._suptitle
    extent = title.get_window_extent()
    assert len(title.get_text().splitlines()) > 1
    assert bounds.x0 <= extent.x0 and extent.x1 <= bounds.x1 and extent.y1 <= bounds.y1


def test_places_without_place_ids_are_coloured_by_their_cell():
    """A places test split has no place ids (-1): its pictures colour each point by its grid cell of side
    positive_radius / √2, not all grey as unknown."""
    from model.data import Split
    from model.evaluation.protocols import PROTOCOLS

    utm = np.array([[5e5, 4e6], [5e5 + 3, 4e6 + 2], [5e5 + 400, 4e6], [5e5 + 401, 4e6 + 1]])
    split = Split(labels=[-1] * 4, images=np.zeros((4, 2, 2, 3), dtype=np.uint8), utm=utm)
    labels, names = PROTOCOLS["places"].component(positive_radius=25.0).picture_labels(split, "query", [])
    assert (labels >= 0).all() and labels[0] == labels[1] != labels[2] == labels[3]
    assert names[0] == names[1] != names[2] and names[0].startswith("cell ")


def test_tsne_says_nothing_of_its_own(capfd):
    from model.viz import plots

    points = plots.tsne(np.random.default_rng(0).normal(size=(40, 5)), seed=0)
    assert points.shape == (40, 2)
    captured = capfd.readouterr()
    assert "Iteration" not in captured.out + captured.err and "KL divergence" not in captured.out + captured.err
