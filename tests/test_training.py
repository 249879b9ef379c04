"""Training end to end on scikit-learn digits and a tiny image-folder tree.

Each run is a few steps on 8×8 images, so the whole module stays within a couple of minutes.
"""

import csv
import json
import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.app import adapter
from model.app.training import train
from model.data import make_dataset
from model.losses import LOSSES, loss_class
from model.nets.netvlad_layer import needs_clustering
from model.params import Params
from model.run import RunFolder
from model.training import callbacks
from model.training.model import EmbeddingModel
from model.training.runner import RunComplete, warm_start
from tests import reference_losses as ref
from tests.fixtures import DIGITS, write_folder_tree

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits_params(**changes):
    return Params.from_dict({**DIGITS, **changes})


def history(run):
    with open(os.path.join(run, "history.csv")) as handle:
        return list(csv.DictReader(handle))


def messages(caplog, level=logging.INFO):
    """The messages of the records of the library's loggers ("model.*") at `level` or above."""
    return [record.getMessage() for record in caplog.records
            if record.name.startswith("model.") and record.levelno >= level]


def test_training_writes_everything_a_run_needs(tmp_path):
    run = str(tmp_path / "run")
    rows = train(digits_params(), run).rows
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    for name in ("effective_params.json", "classes.json", "history.csv"):
        assert os.path.isfile(os.path.join(run, name)), name
    for name in ("best.keras", "latest.keras"):
        network = keras.models.load_model(os.path.join(run, "checkpoints", name))
        assert network.output_shape == (None, 8)
    assert os.listdir(os.path.join(run, "checkpoints", "state"))
    assert not [name for name in os.listdir(os.path.join(run, "checkpoints")) if "partial" in name]
    effective = json.load(open(os.path.join(run, "effective_params.json")))
    assert effective["channels"] == 1 and effective["num_labels"] == 10 and effective["image_size"] == 8
    assert json.load(open(os.path.join(run, "classes.json"))) == [str(i) for i in range(10)]
    logged = history(run)
    assert {"loss", "fraction_positive_triplets", "hardest_positive_distance", "hardest_negative_distance"} <= set(
        logged[0]
    )
    assert {"mean_distance", "embedding_norm", "val_precision_at_1"} <= set(logged[0])
    assert 0.0 <= float(logged[-1]["val_precision_at_1"]) <= 1.0
    event_files = [f for _, _, files in os.walk(os.path.join(run, "logs")) for f in files if "tfevents" in f]
    assert event_files


def test_best_checkpoint_follows_validation_metric(tmp_path):
    run = str(tmp_path / "run")
    train(digits_params(num_epochs=3), run)
    rows = history(run)
    scores = [float(row["val_precision_at_1"]) for row in rows]
    best_epoch = int(np.argmax(scores))  # first maximum: later ties do not replace it
    best = keras.models.load_model(os.path.join(run, "checkpoints", "best.keras"))
    latest = keras.models.load_model(os.path.join(run, "checkpoints", "latest.keras"))
    same = all(np.array_equal(a, b) for a, b in zip(best.get_weights(), latest.get_weights(), strict=True))
    assert same == (best_epoch == len(rows) - 1)


def test_finished_run_is_not_overwritten_and_raising_epochs_trains_on(tmp_path):
    run = str(tmp_path / "run")
    train(digits_params(), run)
    latest = os.path.join(run, "checkpoints", "latest.keras")
    stamp = os.path.getmtime(latest)
    with pytest.raises(RunComplete, match="complete"):
        train(digits_params(), run)
    assert os.path.getmtime(latest) == stamp
    rows = train(digits_params(num_epochs=3), run).rows
    assert [int(row["epoch"]) for row in rows] == [1, 2, 3]


def test_resume_after_kill_continues_from_last_completed_epoch(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "params.json").write_text(json.dumps({**DIGITS, "num_epochs": 40, "steps_per_epoch": 2}))
    command = [sys.executable, os.path.join(ROOT, "train.py"), "--model_dir", str(run)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            if (run / "history.csv").exists() and len(history(str(run))) >= 2:
                break
            time.sleep(0.2)
        else:
            pytest.fail("the training subprocess wrote no epoch in time")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    done = len(history(str(run)))
    assert 2 <= done < 40
    # The same command again: it resumes (here with fewer epochs asked, to keep the test short).
    rows = train(Params.load(str(run / "params.json")).replace(num_epochs=done + 1), str(run)).rows
    assert [int(row["epoch"]) for row in rows] == list(range(1, done + 2))


def test_warm_start_loads_weights_and_rejects_other_architectures(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="model")
    first = str(tmp_path / "first")
    train(digits_params(num_epochs=1), first)
    source = keras.models.load_model(os.path.join(first, "checkpoints", "best.keras"))
    network = adapter.network(digits_params(channels=1, num_labels=10))
    warm_start(network, first)
    for mine, theirs in zip(network.get_weights(), source.get_weights(), strict=True):
        np.testing.assert_array_equal(mine, theirs)
    other = adapter.network(digits_params(channels=1, embedding_size=16))
    with pytest.raises(ValueError, match="does not match"):
        warm_start(other, first)
    with pytest.raises(FileNotFoundError, match="train that run first"):
        warm_start(network, str(tmp_path / "missing"))
    # Through train(): batch-all then batch-hard, as the NetVLAD and re-ID recipes do.
    second = str(tmp_path / "second")
    caplog.clear()
    train(digits_params(num_epochs=1, loss="batch_hard", margin="soft"), second, restore_from=first)
    best = os.path.join(first, "checkpoints", "best.keras")
    assert f"warm start: weights from {best}, fresh optimizer" in messages(caplog)


def test_collapse_guard_fires_on_a_collapsing_run(tmp_path, monkeypatch, caplog):
    # Contrastive loss with margin 0 only pulls pairs together: the embeddings collapse to a point.
    monkeypatch.setattr(callbacks, "COLLAPSE_PATIENCE", 5)
    params = digits_params(
        loss="contrastive", margin=0.0, num_epochs=30, steps_per_epoch=5, learning_rate=0.05, stop_on_collapse=True
    )
    rows = train(params, str(tmp_path / "run")).rows
    warnings = messages(caplog, logging.WARNING)
    assert any("collapsed" in message and "Known remedies" in message for message in warnings), warnings
    assert len(rows) < 30  # stop_on_collapse ended it
    assert float(rows[-1]["mean_distance"]) <= callbacks.COLLAPSE_RATIO * max(float(rows[-1]["embedding_norm"]), 1e-6)


def test_collapse_guard_is_quiet_on_a_healthy_run(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="model")
    train(digits_params(num_epochs=2), str(tmp_path / "run"))
    logged = messages(caplog, logging.NOTSET)
    assert sum(message.startswith("epoch ") for message in logged) == 2  # the run's records were seen
    assert not any("collapsed" in message for message in logged), logged


def test_same_seed_gives_same_first_epoch_loss(tmp_path):
    first = train(digits_params(num_epochs=1), str(tmp_path / "a")).rows
    second = train(digits_params(num_epochs=1), str(tmp_path / "b")).rows
    other = train(digits_params(num_epochs=1, seed=2), str(tmp_path / "c")).rows
    assert first[0]["loss"] == second[0]["loss"]
    assert first[0]["loss"] != other[0]["loss"]


@pytest.mark.parametrize("loss", sorted(LOSSES))
def test_every_loss_trains(tmp_path, loss):
    run = str(tmp_path / loss)
    params = digits_params(num_epochs=1, loss=loss, margin=0.5)
    rows = train(params, run).rows
    assert np.isfinite(float(rows[0]["loss"]))
    assert set(loss_class(loss).statistics) <= set(rows[0])  # what the loss declares is logged
    # The network moved away from its initialisation (same seed, same initial weights).
    keras.utils.set_random_seed(params.seed)
    initial = adapter.network(adapter.resolve(params, adapter.data_source(params, RunFolder(run).class_names())))
    trained = keras.models.load_model(os.path.join(run, "checkpoints", "latest.keras"))
    assert any(not np.array_equal(a, b) for a, b in zip(initial.get_weights(), trained.get_weights(), strict=True))


def test_proxy_nca_proxies_are_trained_and_checkpointed(tmp_path):
    params = digits_params(num_epochs=1, loss="proxy_nca", channels=1, num_labels=10)
    model = EmbeddingModel(adapter.network(params), adapter.loss(params, params.embedding_size))
    assert any("proxies" in v.path for v in model.trainable_variables)
    run = str(tmp_path / "run")
    keras.utils.set_random_seed(params.seed)
    initial = keras.ops.convert_to_numpy(adapter.loss(params, params.embedding_size).proxy_layer.proxies)
    train(params, run)
    reader = tf.train.load_checkpoint(os.path.join(run, "checkpoints", "state"))
    names = [name for name in reader.get_variable_to_shape_map() if "proxies" in name and "OPTIMIZER" not in name]
    assert len(names) == 1, names  # the proxies are in the training state
    saved = reader.get_tensor(names[0])
    assert saved.shape == (10, params.embedding_size)
    assert not np.allclose(saved, initial)  # and they were trained


def test_learning_rate_schedules():
    params = digits_params(
        learning_rate=0.1,
        lr_schedule={"type": "exponential", "decay_start": 100, "decay_steps": 50, "decay_rate": 0.01},
    )
    schedule = adapter.rate(params)
    assert float(schedule(0)) == pytest.approx(0.1)
    assert float(schedule(100)) == pytest.approx(0.1)
    assert float(schedule(150)) == pytest.approx(0.001)
    assert float(schedule(125)) == pytest.approx(0.1 * 0.01**0.5)
    step = adapter.rate(
        digits_params(learning_rate=1.0, lr_schedule={"type": "step", "boundaries": [10, 20], "factor": 0.5})
    )
    assert [float(step(s)) for s in (5, 15, 25)] == [1.0, 0.5, 0.25]


def test_bad_loss_options_name_the_options(tmp_path):
    with pytest.raises(ValueError, match="loss_options"):
        train(digits_params(loss_options={"alpha": 1.0}), str(tmp_path / "run"))


@pytest.fixture
def folder_tree(tmp_path):
    return write_folder_tree(tmp_path / "data")


def test_image_folder_tree_end_to_end(tmp_path, folder_tree):
    params = digits_params(
        dataset="folders",
        data_dir=folder_tree,
        image_size=[8, 8],
        classes_per_batch=3,
        images_per_class=2,
        validation_size=3,
        num_epochs=1,
    )
    run = str(tmp_path / "run")
    train(params, run)
    assert json.load(open(os.path.join(run, "classes.json"))) == ["cat", "dog", "eel"]
    assert json.load(open(os.path.join(run, "effective_params.json")))["channels"] == 3


def test_netvlad_run_clusters_then_whitens(tmp_path, folder_tree, caplog):
    caplog.set_level(logging.INFO, logger="model")
    params = digits_params(
        model="netvlad",
        backbone="small",
        weights=None,
        num_clusters=4,
        netvlad_dim=6,
        dataset="folders",
        data_dir=folder_tree,
        image_size=[8, 8],
        classes_per_batch=3,
        images_per_class=2,
        validation_size=0,
        num_epochs=1,
    )
    run = str(tmp_path / "run")
    train(params, run)
    centroids = np.load(os.path.join(run, "centroids.npy"))
    assert centroids.shape == (4, 4 * params.num_channels)
    assert json.load(open(os.path.join(run, "steps.json"))) == {"whitening": {"epoch": 1}}
    assert any("whitening to 6 dimensions" in message for message in messages(caplog))
    for checkpoint in ("best", "latest"):
        network = keras.models.load_model(os.path.join(run, "checkpoints", f"{checkpoint}.keras"))
        assert network.output_shape == (None, 6)
        assert not needs_clustering(network)
        assert_whitened_on_the_database(network, params, run)


def assert_whitened_on_the_database(network, params, run):
    """The whitening layer maps the database's NetVLAD descriptors to zero mean and unit covariance."""
    effective = Params.load(os.path.join(run, "effective_params.json"))
    split = adapter.data_source(effective, RunFolder(run).class_names()).splits["train"]
    images = make_dataset(split, image_size=effective.image_size, channels=effective.channels, training=False)
    descriptor = keras.Model(network.input, network.get_layer("netvlad").output)
    whitened = keras.Model(network.input, network.get_layer("whitening").output)
    batches = [(np.asarray(descriptor(x)), np.asarray(whitened(x))) for x, _ in images]
    assert len(np.concatenate([b[0] for b in batches])) == len(split)
    outputs = np.concatenate([b[1] for b in batches]).astype(np.float64)
    np.testing.assert_allclose(outputs.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.cov(outputs, rowvar=False), np.eye(params.netvlad_dim), atol=1e-2)


def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "params.json").write_text(json.dumps({**DIGITS, "num_epochs": 1, "distribute": "mirrored",
                                                 "classes_per_batch": 4}))
    # Logical devices must be configured before TensorFlow starts, hence a fresh process.
    script = textwrap.dedent(
        f"""
        import tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from model.app.training import train
        from model.cli import configure_logging
        from model.params import Params
        configure_logging()
        result = train(Params.load({str(run / "params.json")!r}), {str(run)!r})
        print("RESULT", result.workers, result.replicas)
        print("LOSS", result.rows[0]["loss"])
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "training on 1 worker(s), 2 replicas (global mining)" in result.stdout
    assert "RESULT 1 2\n" in result.stdout
    assert np.isfinite(float(result.stdout.split("LOSS")[-1]))


def test_classification_head_is_added_with_its_weight_logged_and_trained():
    """A softmax head beside batch-all: loss = metric loss + w·cross-entropy (numpy, same logits), its
    variables are the model's and move in fit, and classification_loss and train_accuracy are logged."""
    params = digits_params(channels=1, num_labels=10, classification={"weight": 0.5})
    keras.utils.set_random_seed(0)
    network = adapter.network(params)
    head = loss_class("softmax")(10, params.embedding_size, name="classification")
    model = EmbeddingModel(network, adapter.loss(params, params.embedding_size), classification=head,
                           classification_weight=0.5)
    assert {id(v) for v in (head.head_layer.kernel, head.head_layer.bias)} <= {id(v) for v in model.trainable_variables}
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, size=(20, 8, 8, 1)).astype(np.float32)
    labels = np.repeat(np.arange(5), 4)
    embeddings = np.asarray(network(images), np.float64)
    total = float(model.compute_loss(y=labels, y_pred=keras.ops.convert_to_tensor(embeddings, "float32")))
    kernel, bias = (keras.ops.convert_to_numpy(v) for v in (head.head_layer.kernel, head.head_layer.bias))
    logits = embeddings @ kernel + bias
    cross_entropy = np.mean([np.logaddexp.reduce(row) - row[y] for row, y in zip(logits, labels, strict=True)])
    assert total == pytest.approx(ref.batch_all(labels, embeddings, params.margin)[0] + 0.5 * cross_entropy, rel=1e-4)
    logged = {tracker.name: float(tracker.result()) for tracker in model.statistics}
    assert logged["classification_loss"] == pytest.approx(cross_entropy, rel=1e-4)
    assert logged["train_accuracy"] == pytest.approx(np.mean(logits.argmax(axis=1) == labels))
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    before = keras.ops.convert_to_numpy(head.head_layer.kernel)
    fit = model.fit(images, labels, batch_size=20, epochs=2, shuffle=False, verbose=0)
    assert np.abs(keras.ops.convert_to_numpy(head.head_layer.kernel) - before).max() > 1e-3
    assert {"classification_loss", "train_accuracy"} <= set(fit.history)


def test_classification_head_trains_end_to_end_in_the_state_not_in_the_network(tmp_path):
    run = str(tmp_path / "run")
    rows = train(digits_params(num_epochs=1, classification={"weight": 1.0}), run).rows
    assert np.isfinite(float(rows[0]["classification_loss"])) and 0 <= float(rows[0]["train_accuracy"]) <= 1
    reader = tf.train.load_checkpoint(os.path.join(run, "checkpoints", "state"))
    names = [name for name in reader.get_variable_to_shape_map() if "head_layer" in name and "OPTIMIZER" not in name]
    shapes = sorted(reader.get_variable_to_shape_map()[name] for name in names)
    assert shapes == sorted([[DIGITS["embedding_size"], 10], [10]])  # kernel and bias, in the run's state
    saved = keras.models.load_model(os.path.join(run, "checkpoints", "latest.keras"))
    network = adapter.network(digits_params(channels=1))
    assert len(saved.weights) == len(network.weights)  # the head is not saved with it


def test_eval_interval_validates_every_n_steps_and_trains_the_same_steps(tmp_path, capsys):
    """train.py --eval_interval 2 on 2 epochs of 4 steps: 4 validations, best.keras picked among them, and the
    same batches and updates as without it (the same final network)."""
    import train

    runs = {}
    for name, extra in (("plain", []), ("every", ["--eval_interval", "2"])):
        runs[name] = tmp_path / name
        runs[name].mkdir()
        (runs[name] / "params.json").write_text(json.dumps({**DIGITS, "num_epochs": 2, "steps_per_epoch": 4}))
        assert train.main(["--model_dir", str(runs[name]), *extra]) == 0
    plain, every = history(str(runs["plain"])), history(str(runs["every"]))
    assert len(plain) == 2 and len(every) == 4 and all(row["val_precision_at_1"] for row in every)
    effective = Params.load(str(runs["every"] / "effective_params.json"))
    assert (effective.steps_per_epoch, effective.num_epochs) == (2, 4)
    weights = [keras.models.load_model(str(runs[name] / "checkpoints" / "latest.keras")).get_weights() for name in runs]
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    capsys.readouterr()
    assert train.main(["--model_dir", str(runs["plain"]), "--eval_interval", "3"]) == 2
    assert "--eval_interval 3 does not divide the 8 training steps" in capsys.readouterr().err


def test_command_lines_write_each_line_at_once_into_a_file_or_pipe():
    """`make train > log`: each epoch line must reach the file when printed, not when Python's block buffer
    (several kilobytes) fills. A process prints a line, then waits; the line must arrive before it ends."""
    script = "from model.cli import configure_logging; configure_logging(); print('epoch 1/1'); input()"
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        received, deadline = b"", time.time() + 60
        while not received.endswith(b"\n") and time.time() < deadline:  # the child waits on its input meanwhile
            if select.select([child.stdout], [], [], max(deadline - time.time(), 0))[0]:
                received += os.read(child.stdout.fileno(), 100)
        assert received == b"epoch 1/1\n"
    finally:
        child.kill()
        child.wait()
