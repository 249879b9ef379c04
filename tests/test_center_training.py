"""The center loss in training (model/training/model.py, runner.py, the adapter), on the digits experiment: the
objective logged term by term, the centres moved in each step by the paper's rule and not by the optimizer,
held in the run's state and not in the saved network, and restored when the run resumes."""

import os

import keras
import numpy as np
import tensorflow as tf

from model.app import adapter
from model.app.training import train
from model.params import Params
from model.run import RunFolder
from model.training import runner
from model.training.distribute import make_strategy
from tests.fixtures import DIGITS

WITH_CENTRES = {**DIGITS, "center_loss": {"weight": 0.01, "rate": 0.5}, "classification": {"weight": 0.5}}


def centres_of(model_dir):
    reader = tf.train.load_checkpoint(RunFolder(model_dir).state_dir)
    names = [name for name in reader.get_variable_to_shape_map() if "centers_layer" in name]
    assert len(names) == 1, names  # the centres, and no optimizer slot of them (they are not trained)
    return reader.get_tensor(names[0])


def test_the_center_loss_trains_in_the_state_and_resumes_with_its_centres(tmp_path):
    model_dir = str(tmp_path / "run")
    params = Params.from_dict({**WITH_CENTRES, "num_epochs": 1})
    rows = train(params, model_dir).rows
    for key in ("loss", "metric_loss", "classification_loss", "center_loss"):
        assert np.isfinite(float(rows[0][key])), key
    # loss = metric + 0.5 · cross-entropy + 0.01 · center (Keras's running means of each over the epoch's steps).
    total = float(rows[0]["metric_loss"]) + 0.5 * float(rows[0]["classification_loss"]) + 0.01 * float(
        rows[0]["center_loss"])
    assert abs(float(rows[0]["loss"]) - total) < 1e-4 * total
    first = centres_of(model_dir)
    assert first.shape == (10, 8)
    saved = keras.models.load_model(os.path.join(model_dir, "checkpoints", "latest.keras"))
    assert not [w for w in saved.weights if "center" in w.path]  # not in the saved network
    # What a resumed start builds: the training model with the centres of the state, not a new draw.
    run = RunFolder(model_dir)
    strategy = make_strategy()
    plan = adapter.experiment(params).plan(adapter.data_source(params, run.class_names()), strategy, run)
    _, _, model, state, start = runner._build(plan, run, strategy)
    state.close()
    assert start == 1
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.centers_layer.centers), first)
    assert not model.centers_layer.trainable_weights  # moved by the paper's rule, not by the optimizer
    # Resumed for real: the centres move on in epoch 2 (every class is sampled in its 3 steps of 5 of 10 classes).
    rows = train(params.replace(num_epochs=2), model_dir).rows
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert not np.any(np.all(centres_of(model_dir) == first, axis=1))
