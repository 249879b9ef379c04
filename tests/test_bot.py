"""The re-ID strong baseline (experiments/market1501_bot, model/nets/bot.py) end to end on a generated Market-1501
tree (real file names, random weights, 32 × 16 images): the experiment is the paper's recipe; the network's
last stride and BNNeck; which features each loss and the evaluation receive; a run that trains, resumes with
its centres, evaluates with re-ranking, exports and searches; and what train.py says when the data or the
ImageNet weights are missing. One tiny run is trained once for the module."""

import csv
import json
import os
import shutil

import keras
import numpy as np
import pytest
import tensorflow as tf

import evaluate
import export
import search
import train as train_cli
from model.app import adapter
from model.app.runs import load_run
from model.app.training import train
from model.evaluation.metrics import reid_metrics
from model.losses import BatchHardTripletLoss, CenterLoss, SoftmaxLoss
from model.nets import NETWORKS, build_network
from model.nets.bot import resnet50_last_stride
from model.params import Params
from model.retrieval.bundle import Retriever
from model.retrieval.embed import embed_split
from model.run import RunFolder
from model.training.model import EmbeddingModel
from tests import reference_losses as ref
from tests.fixtures import write_market1501_tree

EXPERIMENT = "experiments/market1501_bot/params.json"
# The experiment at test scale: random weights, 32 × 16 images, P × K = 4 × 2, 2 steps an epoch, a warm-up of one
# step and a decay after the second, three identities held out to validate through the saved network.
TINY = {"weights": None, "image_size": [32, 16], "augment": {"flip": True, "shift": 2, "erase": True},
        "classes_per_batch": 4, "images_per_class": 2, "num_epochs": 1, "steps_per_epoch": 2, "validation_size": 3,
        "lr_schedule": {"type": "step", "warmup_steps": 1, "warmup_factor": 0.1, "boundaries": [2], "factor": 0.1},
        "save_summary_steps": 1}


def tiny_params(data_dir, **changes):
    return Params.load(EXPERIMENT).replace(data_dir=str(data_dir), **{**TINY, **changes})


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("market1501")
    write_market1501_tree(root, identities=16, per_identity=5)
    return root


@pytest.fixture(scope="module")
def run(tree, tmp_path_factory):
    """The tiny run after its first epoch, and the centres its state holds then."""
    model_dir = str(tmp_path_factory.mktemp("bot") / "run")
    train(tiny_params(tree), model_dir)
    return model_dir, centres_of(model_dir)


def centres_of(model_dir):
    reader = tf.train.load_checkpoint(RunFolder(model_dir).state_dir)
    names = [name for name in reader.get_variable_to_shape_map() if "centers_layer" in name and "OPTIMIZER" not in name]
    assert len(names) == 1, names
    return reader.get_tensor(names[0])


def test_the_experiment_is_the_strong_baseline_recipe():
    params = Params.load(EXPERIMENT)
    assert (params.model, params.dataset, params.weights, params.image_size) == ("bot", "market1501", "imagenet",
                                                                                [256, 128])
    assert (params.last_stride, params.bnneck, params.feature_norm) == (1, True, True)  # cosine on f_i
    assert (params.loss, params.margin) == ("batch_hard", 0.3)
    assert params.classification == {"weight": 1.0, "label_smoothing": 0.1, "bias": False}
    assert params.center_loss == {"weight": 0.0005, "rate": 0.5}
    assert params.augment == {"flip": True, "shift": 10,
                              "erase": {"probability": 0.5, "area": [0.02, 0.4], "aspect": [0.3, 3.3]}}
    assert (params.classes_per_batch, params.images_per_class) == (16, 4)
    assert (params.optimizer, params.learning_rate, params.weight_decay) == ("adam", 3.5e-4, 5e-4)
    assert params.num_epochs == 120 and params.validation_size == 0  # all 751 identities, as the paper
    # Warm-up from 0.1 × to the rate over 10 epochs, × 0.1 after epochs 40 and 70, in steps.
    rate, steps = adapter.rate(params), params.steps_per_epoch
    for epoch, expected in ((0, 0.1), (5, 0.55), (10, 1.0), (40, 1.0), (41, 0.1), (70, 0.1), (71, 0.01), (119, 0.01)):
        assert float(rate(epoch * steps)) / params.learning_rate == pytest.approx(expected, rel=1e-5), epoch
    optimizer = adapter.optimizer(params)
    assert isinstance(optimizer, keras.optimizers.Adam) and optimizer.coupled_weight_decay == 5e-4
    # The TriNet experiment stays as it was.
    trinet = Params.load("experiments/market1501_trinet/params.json")
    assert (trinet.model, trinet.loss, trinet.margin, trinet.classification) == ("trinet", "batch_hard", "soft", None)


def test_last_stride_one_doubles_the_feature_map_with_the_same_weights():
    strided, plain = resnet50_last_stride(None, 1), resnet50_last_stride(None, 2)
    assert strided.compute_output_shape((None, 256, 128, 3)) == (None, 16, 8, 2048)
    assert plain.compute_output_shape((None, 256, 128, 3)) == (None, 8, 4, 2048)
    assert [layer.name for layer in strided.layers[1:]] == [layer.name for layer in plain.layers[1:]]  # but inputs
    def strides(layer):
        return tuple(getattr(layer, "strides", ()))

    changed = sorted(layer.name for layer in strided.layers[1:]
                     if strides(layer) != strides(plain.get_layer(layer.name)))
    assert changed == ["conv5_block1_0_conv", "conv5_block1_1_conv"]  # conv5's first block: its 1×1 and shortcut
    # The same weights (copied from one ResNet-50): the shortcut's 1×1 convolution at stride 1, subsampled,
    # is the stride-2 one.
    plain.set_weights(strided.get_weights())
    images = np.random.default_rng(0).normal(size=(2, 64, 32, 3)).astype(np.float32)
    one, two = (keras.Model(net.input, net.get_layer("conv5_block1_0_conv").output) for net in (strided, plain))
    np.testing.assert_allclose(np.asarray(one(images))[:, ::2, ::2], np.asarray(two(images)), rtol=1e-4, atol=1e-4)


def test_each_loss_and_the_evaluation_receive_their_features():
    """BNNeck: the triplet and center losses and the statistics see f_t, the ID loss f_i; the saved network gives
    the L2-normalised f_i of inference (moving statistics), and without the BNNeck everything sees f_t."""
    network = build_network("bot", image_size=[32, 16], weights=None)
    part = NETWORKS["bot"].trained_part(network)
    assert part.output_shape == [(None, 2048), (None, 2048)]
    assert [w.path for w in network.get_layer("bnneck").weights] == [
        "bnneck/gamma", "bnneck/moving_mean", "bnneck/moving_variance"]  # no learned shift
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(6, 32, 16, 3)).astype(np.float32)
    f_t, f_i = (np.asarray(x, np.float64) for x in part(images, training=False))
    gamma, mean, variance = (keras.ops.convert_to_numpy(w) for w in network.get_layer("bnneck").weights)
    bn = gamma * (f_t - mean) / np.sqrt(variance + 1e-5)
    np.testing.assert_allclose(f_i, bn, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(network(images), bn / np.linalg.norm(bn, axis=1, keepdims=True), rtol=1e-4, atol=1e-6)
    # The training objective on (f_t, f_i): distinct features, so each term shows which one it saw.
    labels = np.repeat(np.arange(3), 2)
    f_t = rng.normal(size=(6, 5)).astype(np.float32)
    f_i = (3.0 * f_t + 1.0).astype(np.float32)
    head = SoftmaxLoss(3, 5, label_smoothing=0.1, use_bias=False, name="classification")
    centre = CenterLoss(3, 5, rate=0.5)
    model = EmbeddingModel(keras.Sequential([keras.Input((5,))]), BatchHardTripletLoss(margin=0.3),
                           classification=head, classification_weight=1.0, center=centre, center_weight=0.01)
    centres = keras.ops.convert_to_numpy(centre.centers_layer.centers).astype(np.float64)
    total = float(model.compute_loss(y=labels, y_pred=[f_t, f_i]))
    kernel = keras.ops.convert_to_numpy(head.head_layer.kernel).astype(np.float64)
    logits = f_i.astype(np.float64) @ kernel
    log_p = logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)
    smoothed = 0.9 * np.eye(3)[labels] + 0.1 / 3
    cross_entropy = -np.mean(np.sum(smoothed * log_p, axis=1))
    triplet = ref.batch_hard(labels, f_t.astype(np.float64), 0.3)
    center = np.mean(np.sum((f_t - centres[labels]) ** 2, axis=1))
    assert total == pytest.approx(triplet + cross_entropy + 0.01 * center, rel=1e-4)
    logged = {tracker.name: float(tracker.result()) for tracker in model.statistics}
    assert logged["metric_loss"] == pytest.approx(triplet, rel=1e-4)
    assert logged["classification_loss"] == pytest.approx(cross_entropy, rel=1e-4)
    assert logged["center_loss"] == pytest.approx(center, rel=1e-4)
    assert logged["embedding_norm"] == pytest.approx(np.linalg.norm(f_t, axis=1).mean(), rel=1e-4)  # f_t's
    # ... and the centres moved towards f_t by the paper's rule in the training step.
    moved = keras.ops.convert_to_numpy(centre.centers_layer.centers)
    for j in range(3):
        members = f_t[labels == j]
        expected = centres[j] - 0.5 * (len(members) * centres[j] - members.sum(axis=0)) / (1 + len(members))
        np.testing.assert_allclose(moved[j], expected, rtol=1e-5, atol=1e-6)
    # Without the BNNeck: one feature, f_t, for every loss and for evaluation.
    plain = build_network("bot", image_size=[32, 16], weights=None, bnneck=False, feature_norm=False)
    plain_part = NETWORKS["bot"].trained_part(plain)
    assert plain_part.output_shape == (None, 2048) and "bnneck" not in [layer.name for layer in plain.layers]
    np.testing.assert_allclose(plain(images), plain_part(images), rtol=1e-6)


def history(model_dir):
    with open(os.path.join(model_dir, "history.csv")) as handle:
        return list(csv.DictReader(handle))


def test_the_run_trains_resumes_with_its_centres_evaluates_with_reranking(run, tree, tmp_path):
    first, centres = run
    model_dir = str(tmp_path / "run")
    shutil.copytree(first, model_dir)
    rows = history(model_dir)
    assert [row["epoch"] for row in rows] == ["1"]
    for key in ("loss", "metric_loss", "classification_loss", "center_loss", "train_accuracy", "val_mAP"):
        assert np.isfinite(float(rows[0][key])), key  # the objective term by term, and validation
    # Resume: a second epoch starts from the first one's centres (those of the classes it does not sample stay
    # as they were, bit for bit: a fresh start would have drawn them anew) and moves the others.
    rows = train(tiny_params(tree, num_epochs=2), model_dir).rows
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    after = centres_of(model_dir)
    same = np.all(after == centres, axis=1)
    assert same.any() and (~same).any()
    # Evaluation: the saved network's output is the unit-norm f_i (cosine ranking), with and without re-ranking.
    assert evaluate.main(["--model_dir", model_dir, "--rerank", "--checkpoint", "latest"]) == 0
    saved = json.load(open(os.path.join(model_dir, "metrics_test.json")))
    params, source, network, _ = load_run(model_dir, "latest")
    embeddings = {name: embed_split(network, source.splits[name], image_size=params.image_size, channels=3,
                                    verbose=False) for name in ("query", "gallery")}
    assert embeddings["query"].shape[1] == 2048
    np.testing.assert_allclose(np.linalg.norm(embeddings["query"], axis=1), 1.0, rtol=1e-5)
    query, gallery = source.splits["query"], source.splits["gallery"]
    expected = reid_metrics(embeddings["query"], query.labels, query.camids, embeddings["gallery"], gallery.labels,
                            gallery.camids, rerank={})
    reranked = expected.pop("reranked")
    for name, metrics in (("query_vs_gallery", expected), ("query_vs_gallery_reranked", reranked)):
        assert saved[name]["mAP"] == pytest.approx(metrics["mAP"], rel=1e-5), name
        assert saved[name]["cmc"][0] == pytest.approx(float(metrics["cmc"][0]), rel=1e-5), name


def test_the_run_exports_a_bundle_that_searches_the_gallery(run, tree, tmp_path):
    model_dir, _ = run
    out = str(tmp_path / "bundle")
    assert export.main(["--model_dir", model_dir, "--out", out]) == 0
    manifest = json.load(open(os.path.join(out, "manifest.json")))
    assert (manifest["protocol"], manifest["reference_split"], manifest["embedding_dimension"]) == (
        "reid", "gallery", 2048)
    queries = str(tree / "query")
    results = str(tmp_path / "results.csv")
    assert search.main(["--bundle", out, "--images", queries, "--top_k", "3", "--out", results]) == 0
    rows = list(csv.DictReader(open(results)))
    assert len(rows) == 3 * len(os.listdir(queries))
    # Unit-norm features (cosine ranking): every euclidean distance lies in [0, 2]; the gallery is the index.
    distances = np.array([float(row["distance"]) for row in rows])
    assert (distances >= 0).all() and (distances <= 2 + 1e-5).all()
    assert len(Retriever.load(out).index) == len(os.listdir(tree / "bounding_box_test"))


def test_train_py_says_what_is_missing(tree, tmp_path, monkeypatch, capsys):
    model_dir = tmp_path / "bot"
    model_dir.mkdir()
    values = json.load(open(EXPERIMENT))
    (model_dir / "params.json").write_text(json.dumps(values))  # data/Market-1501-v15.09.15 is not here
    monkeypatch.chdir(tmp_path)
    assert train_cli.main(["--model_dir", str(model_dir)]) == 2
    error = capsys.readouterr().err
    assert "Market-1501 folder" in error and "bounding_box_train does not exist: data_dir (params.json)" in error
    assert "Traceback" not in error and len(error.splitlines()) == 1

    def offline(*args, **kwargs):  # what keras.applications raises without a network
        raise Exception("URL fetch failure on https://storage.googleapis.com/resnet50_notop.h5: None -- [Errno -3]")

    offline.__name__ = "ResNet50"
    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    (model_dir / "params.json").write_text(json.dumps({**values, "data_dir": str(tree)}))
    assert train_cli.main(["--model_dir", str(model_dir)]) == 2
    error = capsys.readouterr().err
    assert 'weights is "imagenet" but the ImageNet weights of ResNet50 could not be loaded' in error
    assert 'Offline? Set "weights": null' in error and "Traceback" not in error
    assert sorted(os.listdir(model_dir)) == ["params.json"]  # nothing half made


@pytest.mark.parametrize("changes, message", [
    ({"augment": {"erase": {"probability": 1.5}}}, r'key "augment\.erase\.probability" has value 1\.5'),
    ({"augment": {"erase": {"area": [0.4, 0.02]}}}, r'key "augment\.erase\.area" .*reversed'),
    ({"num_epochs": 5}, r'key "lr_schedule\.warmup_steps" is 2000 but the training lasts 1000 steps'),
    ({"center_loss": {"rate": 0.5}}, r'key "center_loss" has value'),
    ({"dataset": "places"}, r'key "center_loss" keeps one centre per class, but dataset "places" has no class labels'),
    ({"last_stride": 4}, r'key "last_stride" has value 4; expected 1 \(the strong baseline'),
])
def test_bad_values_of_the_experiment_name_the_key(changes, message):
    with pytest.raises(ValueError, match=r"market1501_bot/params\.json: " + message):
        Params.load(EXPERIMENT).replace(**changes)


def test_the_ablation_switches_each_trick_off_by_one_key(tmp_path):
    from benchmarks import bench_bot_ablation as bench

    full = bench.recipe(tmp_path, image_size=[64, 32], epochs=2, steps=4, classes=6, images=2)
    assert full["lr_schedule"] == {"type": "step", "warmup_steps": 1, "warmup_factor": 0.1, "boundaries": [3, 5],
                                   "factor": 0.1}  # 10/120, 40/120 and 70/120 of the 8 steps
    runs = bench.ablation(full)
    assert [name for name, _ in runs] == ["all tricks", "without warm-up", "without random erasing",
                                          "without label smoothing", "without last stride 1", "without BNNeck",
                                          "without center loss", "without cosine"]
    changed = {}
    for name, values in runs[1:]:
        keys = [key for key in full if values.get(key) != full[key]]
        assert len(keys) == 1, (name, keys)
        changed[name] = (keys[0], values[keys[0]])
    assert changed["without warm-up"] == ("lr_schedule", {"type": "step", "boundaries": [3, 5], "factor": 0.1})
    assert changed["without random erasing"] == ("augment", {"flip": True, "shift": 2})
    assert changed["without label smoothing"][1]["label_smoothing"] == 0.0
    assert changed["without last stride 1"] == ("last_stride", 2)
    assert changed["without BNNeck"] == ("bnneck", False)
    assert changed["without center loss"] == ("center_loss", None)
    assert changed["without cosine"] == ("feature_norm", False)
