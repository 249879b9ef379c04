"""Progress bars are drawn in a terminal only, so that a log file gets no redrawn lines."""

import io

import keras
import numpy as np
import tensorflow as tf

from model import progress
from model.retrieval.embed import embed


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_bar_only_in_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stdout", io.StringIO())
    assert not progress.interactive()
    assert progress.progress_bar(10, "batch").verbose == 0
    monkeypatch.setattr("sys.stdout", _Terminal())
    assert progress.interactive()
    assert progress.progress_bar(10, "batch").verbose == 1
    assert progress.progress_bar(10, "batch", verbose=False).verbose == 0


def test_embedding_into_a_file_writes_no_bar(monkeypatch):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    dataset = tf.data.Dataset.from_tensor_slices((np.ones((10, 3), "float32"), np.arange(10))).batch(4)
    for stream, drawn in ((io.StringIO(), False), (_Terminal(), True)):
        monkeypatch.setattr("sys.stdout", stream)
        embeddings, labels = embed(model, dataset, verbose=True)
        assert embeddings.shape == (10, 2) and list(labels) == list(range(10))
        assert ("3/3" in stream.getvalue()) == drawn, stream.getvalue()


LOGS = {"embedding_norm": 7.532, "fraction_positive_triplets": 0.1119, "hardest_negative_distance": 3.891,
        "hardest_positive_distance": 4.817, "loss": 0.683, "mean_distance": 6.078, "val_precision_at_1": 0.9533,
        "epoch_seconds": 1.62}


def test_an_epoch_summary_is_one_line_in_a_file_and_fits_a_terminal():
    from model.training.callbacks import epoch_summary

    line = epoch_summary(1, 8, LOGS, improved=True)
    assert line == ("epoch 1/8: embedding_norm 7.532 - fraction_positive_triplets 0.1119 - hardest_negative_distance "
                    "3.891 - hardest_positive_distance 4.817 - loss 0.683 - mean_distance 6.078 - "
                    "val_precision_at_1 0.9533 - 1.6s (best)")
    for width in (120, 80, 60):
        lines = epoch_summary(1, 8, LOGS, improved=True, width=width).splitlines()
        assert all(len(each) <= width for each in lines), lines
        head = "epoch 1/8  loss 0.683  val_precision_at_1 0.9533  1.6s (best)"  # 61 characters
        assert lines[0] == (head if width > len(head) else "epoch 1/8  loss 0.683  val_precision_at_1 0.9533")
        text = " ".join(lines)
        for key, value in LOGS.items():  # every value once: nothing dropped, nothing repeated
            shown = f"{value:.1f}s" if key == "epoch_seconds" else f"{key} {value:.4g}"
            assert text.count(shown) == 1, (key, text)


def test_in_a_terminal_the_step_line_is_redrawn_and_removed_before_the_summary(monkeypatch):
    from model.training.callbacks import StepProgress

    terminal = _Terminal()
    monkeypatch.setattr("sys.stdout", terminal)
    monkeypatch.setattr("shutil.get_terminal_size", lambda *args: __import__("os").terminal_size((60, 20)))
    bar = StepProgress(num_epochs=2, steps_per_epoch=3)
    bar.on_epoch_begin(0)
    for step in range(3):
        bar.on_train_batch_end(step, {"loss": 0.5 - step / 10})
    bar.on_epoch_end(0)
    drawn = terminal.getvalue()
    assert drawn.count("\r\033[K") == 4 and drawn.endswith("\r\033[K") and "\n" not in drawn
    assert "epoch 1/2  3/3 steps  loss 0.3" in drawn
    file = io.StringIO()
    monkeypatch.setattr("sys.stdout", file)
    bar.on_train_batch_end(0, {"loss": 0.5})
    bar.on_epoch_end(0)
    assert file.getvalue() == ""
