"""The cross-batch memory (model/training/memory.py): first in first out against a numpy queue, warm-up, in
training (logged, part of the run's state, empty after a warm start), and what it refuses."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.app import adapter
from model.app.training import train
from model.losses import loss_class
from model.params import Params
from model.run import RunFolder, TrainingState
from model.training import EmbeddingModel
from model.training.memory import CrossBatchMemory
from tests.fixtures import DIGITS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MEMORY = {"size": 64, "warmup_steps": 2}


def test_references_are_the_batch_then_the_last_s_embeddings():
    memory = CrossBatchMemory(size=5, embedding_size=3, warmup_steps=2)
    rng = np.random.default_rng(0)
    queue_labels, queue = [], []
    for step, count in enumerate([2, 2, 3, 7, 1]):
        labels = rng.integers(0, 4, size=count).astype("int32")
        batch = rng.normal(size=(count, 3)).astype("float32")
        ref_labels, ref_embeddings = (np.asarray(x) for x in memory.references(labels, batch))
        np.testing.assert_array_equal(ref_labels[:count], labels)  # the batch first, in order
        np.testing.assert_array_equal(ref_embeddings[:count], batch)
        expected = [] if step < 2 else list(zip(queue_labels[-5:], map(tuple, queue[-5:]), strict=True))
        got = list(zip(ref_labels[count:].tolist(), map(tuple, ref_embeddings[count:].tolist()), strict=True))
        assert sorted(got) == sorted((int(label), tuple(map(float, row))) for label, row in expected), step
        memory.enqueue(labels, batch)
        queue_labels += labels.tolist()
        queue += list(batch)
        assert float(memory.fill_fraction()) == pytest.approx(min(len(queue), 5) / 5)


def test_the_memory_carries_no_gradient():
    memory = CrossBatchMemory(size=4, embedding_size=2)
    memory.enqueue(np.array([0, 1]), np.ones((2, 2), "float32"))
    batch = tf.Variable(np.zeros((2, 2), "float32"))
    with tf.GradientTape() as tape:
        _, references = memory.references(np.array([0, 1]), batch)
        total = tf.reduce_sum(references * references) + tf.reduce_sum(references)
    np.testing.assert_array_equal(tape.gradient(total, batch), np.ones((2, 2)))  # the batch rows only


def test_bad_sizes_and_proxy_losses_are_refused():
    with pytest.raises(ValueError, match="size must be an integer >= 1"):
        CrossBatchMemory(size=0, embedding_size=3)
    with pytest.raises(ValueError, match='"memory.size" has value -4'):
        Params.from_dict({"memory": {"size": -4, "warmup_steps": 0}})
    with pytest.raises(ValueError, match="exactly these two keys"):
        Params.from_dict({"memory": {"size": 8}})
    with pytest.raises(ValueError, match="learned proxies"):
        Params.from_dict({"loss": "proxy_nca", "memory": {"size": 8, "warmup_steps": 0}})
    with pytest.raises(ValueError, match="learned proxies"):
        loss_class("proxy_nca")(num_classes=3, embedding_size=2).compute(
            np.array([0, 1]), np.ones((2, 2)), ref_labels=np.array([0, 1]), ref_embeddings=np.ones((2, 2)))


def test_training_with_a_memory_logs_it_and_warm_start_begins_empty(tmp_path):
    first = str(tmp_path / "first")
    rows = train(Params.from_dict({**DIGITS, "memory": MEMORY, "loss": "batch_hard"}), first).rows
    # 3 steps of 20 images per epoch: 20, 40, 60 of 64 rows in epoch 1, then full.
    assert float(rows[0]["memory_fill"]) == pytest.approx((20 + 40 + 60) / 3 / 64)
    assert float(rows[1]["memory_fill"]) == pytest.approx(1.0)
    assert np.isfinite(float(rows[1]["loss"]))
    second = str(tmp_path / "second")
    rows = train(Params.from_dict({**DIGITS, "memory": MEMORY, "num_epochs": 1}), second, restore_from=first).rows
    assert float(rows[0]["memory_fill"]) == pytest.approx((20 + 40 + 60) / 3 / 64)


def test_a_killed_run_resumes_with_the_memory_of_its_last_completed_epoch(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    values = {**DIGITS, "memory": MEMORY, "num_epochs": 60, "steps_per_epoch": 2}
    (run / "params.json").write_text(json.dumps(values))
    process = subprocess.Popen([sys.executable, "train.py", "--model_dir", str(run)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(RunFolder(str(run)).read_history()) < 3:
            time.sleep(0.1)
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    folder = RunFolder(str(run))
    reader = tf.train.load_checkpoint(folder.state_dir)
    saved = {name.split("/")[-3]: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
             if name.startswith("model/memory/")}
    epoch = int(reader.get_tensor("epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    assert epoch >= 2 and int(saved["count"]) == 64 and np.abs(saved["memory_embeddings"]).sum() > 0, saved.keys()

    params = Params.from_dict(values)
    params = adapter.resolve(params, adapter.data_source(params, folder.class_names()))
    network = adapter.network(params)
    memory = CrossBatchMemory(64, params.embedding_size, 2, name="cross_batch_memory")
    model = EmbeddingModel(network, adapter.loss(params, params.embedding_size), memory=memory)
    optimizer = keras.optimizers.Adam(params.learning_rate)
    model.compile(optimizer=optimizer)
    model(keras.ops.zeros((1, *network.input_shape[1:])))
    assert TrainingState(folder, model, optimizer).restore() == epoch
    np.testing.assert_array_equal(np.asarray(memory.memory_embeddings), saved["memory_embeddings"])
    np.testing.assert_array_equal(np.asarray(memory.memory_labels), saved["memory_labels"])
    assert int(memory.position) == int(saved["position"]) and int(memory.steps) == int(saved["steps"])


def test_the_readme_custom_training_step_with_a_memory_runs():
    from model.losses import get_loss

    class WithMemory(keras.Model):  # the README's example, with a small network and memory
        def __init__(self, network):
            super().__init__()
            self.network = network
            self.memory = CrossBatchMemory(size=32, embedding_size=8, warmup_steps=1)
            self.mined_loss = get_loss("contrastive", margin=0.5)

        def train_step(self, data):
            images, labels = data
            with tf.GradientTape() as tape:
                embeddings = self.network(images, training=True)
                ref_labels, ref_embeddings = self.memory.references(labels, embeddings)
                loss, _ = self.mined_loss.compute(labels, embeddings, ref_labels, ref_embeddings)
            self.optimizer.apply(tape.gradient(loss, self.network.trainable_variables),
                                 self.network.trainable_variables)
            self.memory.enqueue(labels, embeddings)
            return {"loss": loss, "memory_fill": self.memory.fill_fraction()}

    network = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8)])
    model = WithMemory(network)
    model.compile(optimizer="adam")
    rng = np.random.default_rng(0)
    data = tf.data.Dataset.from_tensor_slices((rng.normal(size=(48, 5)).astype("float32"),
                                               np.repeat(np.arange(12), 4).astype("int32"))).batch(8)
    history = model.fit(data, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][-1]) and float(model.memory.fill_fraction()) == 1.0
