"""Adversarial tests of runs: what a hostile tester did to the training and evaluation commands, each
of which once lost data or went silently wrong (see the README's reliability section). Keep them green."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

import evaluate
import train as train_cli
from model import run
from model.app import evaluation
from model.app.training import summary, train
from model.params import Params
from tests.fixtures import DIGITS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def digits(**changes):
    return Params.from_dict({**DIGITS, **changes})


def messages(caplog, level=logging.INFO):
    """The messages of the records of the library's loggers ("model.*") at `level` or above."""
    return [record.getMessage() for record in caplog.records
            if record.name.startswith("model.") and record.levelno >= level]


def write_params(model_dir, **changes):
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "params.json"), "w") as handle:
        json.dump({**DIGITS, **changes}, handle)


def test_a_second_trainer_of_the_same_run_is_refused_and_a_stale_lock_taken_over(tmp_path):
    model_dir = str(tmp_path / "run")
    folder = run.RunFolder(model_dir)
    os.makedirs(model_dir)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with open(folder.path(".lock"), "w") as handle:
            handle.write(f"{sleeper.pid}\n")
        os.utime(folder.path(".lock"), (time.time() - 60, time.time() - 60))
        with pytest.raises(run.RunLocked, match=f"being trained by pid {sleeper.pid}"):
            train(digits(num_epochs=1), model_dir)
        assert not os.path.exists(folder.history_path)
    finally:
        sleeper.kill()
        sleeper.wait()
    # The same lock, its process gone (a crash): stale, taken over, and released at the end.
    rows = train(digits(num_epochs=1), model_dir).rows
    assert len(rows) == 1 and not os.path.exists(folder.path(".lock"))


def test_divergence_stops_the_run_keeps_the_last_good_epoch_and_exits_non_zero(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    write_params(model_dir, num_epochs=1, steps_per_epoch=3)
    assert train_cli.main(["--model_dir", model_dir]) == 0
    best = keras.models.load_model(run.RunFolder(model_dir).checkpoint_path("best")).get_weights()
    write_params(model_dir, num_epochs=4, steps_per_epoch=3, learning_rate=1e35)  # weights overflow to inf
    assert train_cli.main(["--model_dir", model_dir]) == 3
    error = capsys.readouterr().err
    assert "diverged in epoch 2" in error and "learning_rate (1e+35" in error and "keeps epoch 1" in error
    folder = run.RunFolder(model_dir)
    assert [row["epoch"] for row in folder.read_history()] == ["1"]
    for checkpoint in ("best", "latest"):
        saved = keras.models.load_model(folder.checkpoint_path(checkpoint)).get_weights()
        assert all(np.array_equal(a, b) for a, b in zip(best, saved, strict=True))
    # The run is not complete: a lower learning rate resumes it after epoch 1, and records the change.
    write_params(model_dir, num_epochs=2, steps_per_epoch=3)
    assert train_cli.main(["--model_dir", model_dir]) == 0
    assert [row["epoch"] for row in folder.read_history()] == ["1", "2"]
    changes = json.load(open(folder.path("params_changes.json")))
    assert changes == [
        {"after_epoch": 1, "changes": {"num_epochs": [1, 4], "learning_rate": [0.003, 1e35]}},
        {"after_epoch": 1, "changes": {"num_epochs": [4, 2], "learning_rate": [1e35, 0.003]}},
    ]


def test_a_killed_and_resumed_run_equals_an_uninterrupted_one(tmp_path):
    straight = train(digits(num_epochs=3), str(tmp_path / "straight")).rows
    train(digits(num_epochs=1), str(tmp_path / "resumed"))
    resumed = train(digits(num_epochs=3), str(tmp_path / "resumed")).rows
    for key in ("loss", "val_precision_at_1", "mean_distance"):
        np.testing.assert_allclose([float(row[key]) for row in resumed], [float(row[key]) for row in straight],
                                   rtol=1e-5, err_msg=key)


def test_changing_what_trained_a_run_is_refused(tmp_path):
    model_dir = str(tmp_path / "run")
    train(digits(num_epochs=1), model_dir)
    stamp = os.path.getmtime(os.path.join(model_dir, "effective_params.json"))
    with pytest.raises(ValueError, match=r"loss: 'batch_all' -> 'batch_hard'.*--restore_from"):
        train(digits(num_epochs=2, loss="batch_hard"), model_dir)
    assert os.path.getmtime(os.path.join(model_dir, "effective_params.json")) == stamp
    assert len(run.RunFolder(model_dir).read_history()) == 1


def test_missing_imagenet_weights_are_a_clear_error_and_leave_no_half_made_run(tmp_path, monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise Exception("URL fetch failure on https://storage.example/resnet50_notop.h5: None -- [Errno -3]")

    offline.__name__ = "ResNet50"

    monkeypatch.setattr(keras.applications, "ResNet50", offline)
    model_dir = str(tmp_path / "run")
    write_params(model_dir, model="trinet", weights="imagenet", image_size=[16, 8], embedding_size=8)
    assert train_cli.main(["--model_dir", model_dir]) == 2
    error = capsys.readouterr().err
    assert 'ImageNet weights of ResNet50 could not be loaded' in error and '"weights": null' in error
    assert "Traceback" not in error and len(error.splitlines()) == 1
    assert os.listdir(model_dir) == ["params.json"]


def test_orphans_of_interrupted_writes_are_cleared_on_start(tmp_path):
    model_dir = str(tmp_path / "run")
    train(digits(num_epochs=1), model_dir)
    folder = run.RunFolder(model_dir)
    orphans = [folder.path("checkpoints", "best.partial.keras"), folder.path("history.partial.csv")]
    for path in orphans:
        open(path, "w").write("half")
    os.makedirs(folder.path("checkpoints", "state", "ckpt-2_temp", "part-0"))
    train(digits(num_epochs=2), model_dir)
    assert not any(os.path.exists(path) for path in orphans)
    assert not os.path.exists(folder.path("checkpoints", "state", "ckpt-2_temp"))


def test_the_end_of_a_run_says_what_it_reached_and_what_to_run_next(tmp_path, capsys, caplog):
    caplog.set_level(logging.INFO, logger="model")
    model_dir = str(tmp_path / "run")
    result = train(digits(num_epochs=2), model_dir)
    assert capsys.readouterr().out == ""  # nothing per step: the library logs, only the command lines print
    epochs = [message for message in messages(caplog) if message.startswith("epoch ")]
    assert [message.split(":")[0] for message in epochs] == ["epoch 1/2", "epoch 2/2"]  # one line per epoch
    lines = summary(model_dir, result)  # what train.py prints at the end
    assert len(lines) == 3
    assert lines[0].startswith("best epoch ") and "val_precision_at_1" in lines[0]
    assert f"next: python evaluate.py --model_dir {model_dir}" in lines[-1]


def test_ctrl_c_says_how_to_resume(tmp_path):
    model_dir = tmp_path / "run"
    write_params(str(model_dir), num_epochs=200, steps_per_epoch=2)
    # A job started in the background by a non-interactive shell ignores SIGINT, and so would its children:
    # the training process gets the default disposition back, as in a terminal.
    process = subprocess.Popen([sys.executable, "train.py", "--model_dir", str(model_dir)], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(run.RunFolder(str(model_dir)).read_history()) < 2:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        _, error = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130
    assert "interrupted." in error and "run the same command to resume after epoch" in error
    assert "Traceback" not in error
    assert not (model_dir / ".lock").exists()


def test_evaluate_prints_the_metrics_before_a_failed_save_and_offers_out(tmp_path, monkeypatch, capsys):
    model_dir = str(tmp_path / "run")
    train(digits(num_epochs=1, train_size=300), model_dir)

    def read_only(results, path):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(evaluation, "save_json", read_only)
    assert evaluate.main(["--model_dir", model_dir]) == 2
    captured = capsys.readouterr()
    assert "precision_at_1" in captured.out and "--out FOLDER" in captured.err
    monkeypatch.undo()
    out = str(tmp_path / "elsewhere")
    assert evaluate.main(["--model_dir", model_dir, "--out", out]) == 0
    results = json.load(open(os.path.join(out, "metrics_test.json")))
    # train_size holds for evaluation too: the reference is the 300 training images the run saw.
    assert results["vs_train"]["num_reference"] == 300


def test_damaged_history_and_checkpoint_files_are_named(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    train(digits(num_epochs=1), model_dir)
    folder = run.RunFolder(model_dir)
    with open(folder.checkpoint_path("best"), "wb") as handle:
        handle.write(b"not a zip file")
    assert evaluate.main(["--model_dir", model_dir]) == 2
    assert f"{folder.checkpoint_path('best')} cannot be loaded as a Keras network" in capsys.readouterr().err
    with open(folder.history_path, "w") as handle:
        handle.write("\x00garbage;;\nnot,a,history\n")
    with pytest.raises(run.RunStateError, match="history.csv, line 2: expected the row of epoch 1"):
        train(digits(num_epochs=2), model_dir)


def test_overflowing_embeddings_name_the_parameter_to_set():
    from model.evaluation import metrics

    huge = np.full((4, 3), 1e30, dtype=np.float32) * np.arange(1, 5, dtype=np.float32)[:, None]
    with pytest.raises(ValueError, match='"l2_normalize": true in params.json'):
        metrics.retrieval_metrics(huge, np.array([0, 0, 1, 1]))


def replay(guard, rows):
    """Feed batch logs (loss, mean_distance, embedding_norm) to a CollapseGuard; the step it fired at, or None."""
    for step, (loss, distance, norm) in enumerate(rows):
        guard.on_train_batch_end(step, {"loss": loss, "mean_distance": distance, "embedding_norm": norm})
        if guard.fired:
            return step
    return None


@pytest.mark.parametrize("name", ["bh_lr01", "bh_pk", "batch_hard_long", "batch_all_long"])
def test_the_collapse_guard_fires_on_real_collapses_only(name, caplog):
    """Batch logs of four Fashion-MNIST runs (every 5th step, tests/data/collapse_runs.json): batch-hard at
    learning rate 0.01 collapsed (validation precision@1 0.83 -> 0.63); the three others were healthy."""
    from model.losses import get_loss
    from model.training import callbacks

    with open(os.path.join(ROOT, "tests", "data", "collapse_runs.json")) as handle:
        run_logs = json.load(handle)[name]
    guard = callbacks.CollapseGuard(get_loss(run_logs["loss"], margin=run_logs["margin"]),
                                    patience=callbacks.COLLAPSE_PATIENCE // run_logs["every"])
    fired = replay(guard, run_logs["rows"])
    assert (fired is not None) == run_logs["collapsed"], run_logs["what"]
    if run_logs["collapsed"]:
        assert any("below the margin" in message for message in messages(caplog, logging.WARNING))
        assert fired * run_logs["every"] < 500  # within the run's 500 steps, in its second epoch


def test_the_collapse_guard_fires_on_the_places_collapse_of_the_sweep():
    """A NetVLAD places run at learning rate 0.01: distances at 1.8 % of the (unit) embedding norm, the
    batch-hard loss within 2 % of its margin 0.1, where the guard of the time (0.1 %) stayed silent."""
    from model.losses import get_loss
    from model.training import callbacks

    guard = callbacks.CollapseGuard(get_loss("batch_hard", margin=0.1))
    assert replay(guard, [(0.098, 0.018, 1.0)] * callbacks.COLLAPSE_PATIENCE) == callbacks.COLLAPSE_PATIENCE - 1


def test_tensorboard_names_the_validation_metric_as_such(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model_dir = str(tmp_path / "run")
    train(digits(num_epochs=2), model_dir)
    tags = set()
    for folder in ("train", "validation"):
        path = os.path.join(model_dir, "logs", folder)
        if os.path.isdir(path):
            events = EventAccumulator(path)
            events.Reload()
            tags |= {f"{folder}/{tag}" for tag in events.Tags()["tensors"] + events.Tags()["scalars"]}
    assert "train/epoch_validation_precision_at_1" in tags, sorted(tags)
    assert not any(tag.endswith("/epoch_precision_at_1") for tag in tags)


@pytest.mark.parametrize("script", ["train.py", "evaluate.py", "export.py", "search.py", "visualize_embeddings.py"])
def test_ctrl_c_while_the_modules_load_is_one_line_not_a_traceback(tmp_path, script):
    process = subprocess.Popen([sys.executable, script, "--help"], cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,  # SIGINT as in a terminal (see above)
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        time.sleep(0.7)  # Python has started; TensorFlow takes seconds to import
        process.send_signal(signal.SIGINT)
        output, error = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, (output[-500:], error[-2000:])
    assert "Traceback" not in error and "KeyboardInterrupt" not in error
    assert error.strip().splitlines()[-1] == "interrupted while loading; nothing was done" and output == ""


def test_a_full_disk_during_training_says_so_and_a_rerun_resumes(tmp_path, monkeypatch, capsys):
    import tensorflow as tf

    model_dir = str(tmp_path / "run")
    write_params(model_dir, num_epochs=2)
    save = tf.train.CheckpointManager.save

    def full_after_epoch_1(self, checkpoint_number=None, **kwargs):
        if checkpoint_number == 2:  # TensorFlow's writer reports ENOSPC as ResourceExhaustedError
            raise tf.errors.ResourceExhaustedError(None, None, f"{model_dir}/checkpoints/state/ckpt-2_temp/part-00000"
                                                               "; No space left on device")
        return save(self, checkpoint_number=checkpoint_number, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", full_after_epoch_1)
    assert train_cli.main(["--model_dir", model_dir]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"error: the disk is full: {model_dir} could not be written")
    assert len(error.splitlines()) == 1
    assert "keeps 1 completed epoch(s); run the same command to resume after epoch 1" in error
    monkeypatch.undo()
    assert train_cli.main(["--model_dir", model_dir]) == 0
    assert [row["epoch"] for row in run.RunFolder(model_dir).read_history()] == ["1", "2"]


def test_a_deleted_history_is_refused_not_summarised_as_best_epoch_n_of_1(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    write_params(model_dir, num_epochs=1)
    assert train_cli.main(["--model_dir", model_dir]) == 0
    capsys.readouterr()
    folder = run.RunFolder(model_dir)
    os.remove(folder.history_path)
    stamp = os.path.getmtime(folder.checkpoint_path("latest"))
    write_params(model_dir, num_epochs=2)
    assert train_cli.main(["--model_dir", model_dir]) == 2
    captured = capsys.readouterr()
    assert "records 0 epochs but the training state" in captured.err and "is of epoch 1" in captured.err
    assert "history.csv was deleted or cut short" in captured.err and "best epoch" not in captured.out
    assert not os.path.exists(folder.history_path) and os.path.getmtime(folder.checkpoint_path("latest")) == stamp


def test_resuming_without_the_eval_interval_the_run_started_with_names_the_flag(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    write_params(model_dir, num_epochs=1, steps_per_epoch=2)
    assert train_cli.main(["--model_dir", model_dir, "--eval_interval", "1"]) == 0  # 2 epochs of 1 step
    write_params(model_dir, num_epochs=2, steps_per_epoch=2)
    capsys.readouterr()
    assert train_cli.main(["--model_dir", model_dir]) == 2
    error = capsys.readouterr().err
    assert "steps_per_epoch 1" in error and "with no --eval_interval, would make them 2 steps long" in error
    assert "resume with --eval_interval 1, as it was started" in error
    assert train_cli.main(["--model_dir", model_dir, "--eval_interval", "1"]) == 0  # 4 epochs of 1 step
    assert len(run.RunFolder(model_dir).read_history()) == 4
    plain = str(tmp_path / "plain")  # started without it, resumed with it
    write_params(plain, num_epochs=1, steps_per_epoch=2)
    assert train_cli.main(["--model_dir", plain]) == 0
    write_params(plain, num_epochs=2, steps_per_epoch=2)
    capsys.readouterr()
    assert train_cli.main(["--model_dir", plain, "--eval_interval", "1"]) == 2
    assert "resume without --eval_interval" in capsys.readouterr().err


def test_a_first_epoch_divergence_names_no_checkpoint_and_a_huge_classification_weight_is_named_first(tmp_path,
                                                                                                        capsys):
    model_dir = str(tmp_path / "run")
    write_params(model_dir, num_epochs=1, classification={"weight": 1e38})  # the cross-entropy overflows
    assert train_cli.main(["--model_dir", model_dir]) == 3
    error = capsys.readouterr().err
    assert "diverged in epoch 1" in error and "No epoch was completed" in error and "holds no checkpoint" in error
    assert "latest.keras" not in error and "run the same command to start again" in error
    assert "Look at classification.weight (1e+38: it multiplies the cross-entropy" in error
    assert not os.path.exists(run.RunFolder(model_dir).checkpoint_path("latest"))
    write_params(model_dir, num_epochs=1, loss="softmax", learning_rate=1e38)
    assert train_cli.main(["--model_dir", model_dir]) == 3
    error = capsys.readouterr().err
    assert "learning_rate (1e+38" in error and "margin" not in error  # softmax has no margin to blame


def test_settings_that_mean_nothing_beside_the_others_are_said_to_be_ignored(tmp_path, caplog):
    caplog.set_level(logging.WARNING)
    train(digits(num_epochs=1, steps_per_epoch=1, loss="softmax", margin=0.3, mining="local", cache_refresh=10,
                 positive_radius=10), str(tmp_path / "run"))
    said = "\n".join(messages(caplog, logging.WARNING))
    for expected in ('"margin" (0.3) is ignored: loss "softmax" has no margin',
                     '"mining" "local" is ignored: it mines each replica\'s share of the batch',
                     '"cache_refresh" (10) is ignored: it is the refresh interval of "mining": "cached"',
                     '"positive_radius" (10) is ignored: it is for dataset "places", not "digits"'):
        assert expected in said
    assert digits().ignored() == [] and digits(margin=0.3, mining="global").ignored() == []  # meaningful or default


@pytest.mark.parametrize("changes, key", [({"memory": {"size": 10**12, "warmup_steps": 0}}, "memory.size"),
                                          ({"loss": "softmax", "num_labels": 10**9}, "num_labels")])
def test_sizes_that_cannot_fit_in_memory_are_refused_when_the_params_load(tmp_path, capsys, changes, key):
    model_dir = str(tmp_path / "run")
    write_params(model_dir, **changes)
    assert train_cli.main(["--model_dir", model_dir]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f'error: {os.path.join(model_dir, "params.json")}: key "{key}" is')
    assert "more than the" in error and f"lower {key}" in error and "Traceback" not in error
    assert os.listdir(model_dir) == ["params.json"]
    Params.from_dict({**DIGITS, "memory": {"size": 10**5, "warmup_steps": 0}, "num_labels": 10**9})  # fit, unused


def test_a_failed_restore_from_leaves_the_new_run_folder_as_it_was(tmp_path, capsys):
    model_dir = str(tmp_path / "run")
    write_params(model_dir, num_epochs=1)
    assert train_cli.main(["--model_dir", model_dir, "--restore_from", str(tmp_path / "missing")]) == 2
    assert "train that run first" in capsys.readouterr().err
    assert os.listdir(model_dir) == ["params.json"]
    other = str(tmp_path / "other")  # another architecture: its weights do not fit
    train(digits(num_epochs=1, steps_per_epoch=1, embedding_size=16), other)
    assert train_cli.main(["--model_dir", model_dir, "--restore_from", other]) == 2
    assert "does not match this run's" in capsys.readouterr().err
    assert os.listdir(model_dir) == ["params.json"]


def test_a_wrong_trinet_weights_file_is_one_clear_error_without_keras_warnings_per_layer(tmp_path, capsys):
    import warnings

    wrong = str(tmp_path / "dense.weights.h5")
    small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    small.save_weights(wrong)
    model_dir = str(tmp_path / "run")
    write_params(model_dir, model="trinet", weights=wrong, image_size=[32, 32], embedding_size=8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert train_cli.main(["--model_dir", model_dir]) == 2
    error = capsys.readouterr().err
    assert f"weights: {wrong} is not a weights file of keras.applications.ResNet50" in error
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    assert not [warning for warning in caught if "saving" in warning.filename], caught[:3]
    assert os.listdir(model_dir) == ["params.json"]
