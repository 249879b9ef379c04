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
