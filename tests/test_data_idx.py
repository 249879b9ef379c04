"""Tests of model/data/idx.py: IDX files, the MNIST / Fashion-MNIST look-up order, digits."""
import gzip
import logging
import os
import struct

import numpy as np
import pytest
import sklearn.datasets

from model.data import idx, load_source


def _write_idx(path, array, code):
    """Write `array` as IDX with the struct module (independent of the reader): big-endian header."""
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = array.astype(array.dtype.newbyteorder(">")).tobytes()
    with (gzip.open if path.endswith(".gz") else open)(path, "wb") as file:
        file.write(header + payload)


def _mnist_folder(folder, n_train=30, n_test=10, gz=True):
    """Tiny MNIST-like IDX files; image i of a part is filled with i, labels are i mod 10."""
    os.makedirs(folder, exist_ok=True)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.broadcast_to(np.arange(n, dtype=np.uint8)[:, None, None], (n, 28, 28)).copy()
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if gz else ""
        _write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), images, 0x08)
        _write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), labels, 0x08)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("dtype, code", [(np.uint8, 0x08), (np.int8, 0x09), (np.int16, 0x0B),
                                         (np.int32, 0x0C), (np.float32, 0x0D), (np.float64, 0x0E)])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_round_trip(tmp_path, dtype, code, suffix):
    array = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    path = str(tmp_path / f"x.idx{suffix}")
    _write_idx(path, array, code)
    read = idx.read_idx(path)
    assert read.dtype == np.dtype(dtype) and read.shape == (2, 3, 4)
    np.testing.assert_array_equal(read, array)
    read[0, 0, 0] = 1  # a writable copy


def test_read_idx_bad_files(tmp_path):
    path = str(tmp_path / "bad")
    with open(path, "wb") as file:
        file.write(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ValueError, match=r"bad is not an IDX file: its header 1f8b0800"):
        idx.read_idx(path)
    _write_idx(path, np.zeros((3, 2), np.uint8), 0x08)
    with open(path, "ab") as file:
        file.write(b"\x00")
    with pytest.raises(ValueError, match=r"has 19 bytes, its header \(shape \(3, 2\), uint8\) says 18"):
        idx.read_idx(path)
    with pytest.raises(ValueError, match="cannot read IDX file"):
        idx.read_idx(path + ".gz")


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_data_dir_with_validation_hold_out(tmp_path, monkeypatch, gz):
    arrays = _mnist_folder(str(tmp_path / "relative"), gz=gz)
    monkeypatch.chdir(tmp_path)  # relative data_dir resolves against the current directory
    source = load_source("mnist", data_dir="relative", validation_size=8, seed=3)
    assert source.protocol == "labels" and source.channels == 1 and source.image_size == (28, 28)
    assert source.class_names == [str(d) for d in range(10)]
    assert list(source.splits) == ["train", "validation", "test"]
    train, validation, test = (source.splits[name] for name in ("train", "validation", "test"))
    assert train.images.shape == (22, 28, 28, 1) and train.images.dtype == np.uint8
    assert len(validation) == 8 and len(test) == 10
    index_of = {name: split.images[:, 0, 0, 0].astype(int) for name, split in source.splits.items()}
    assert sorted(index_of["train"].tolist() + index_of["validation"].tolist()) == list(range(30))
    assert validation.names == [str(i) for i in index_of["validation"]]
    assert np.all(np.diff(index_of["train"]) > 0) and np.all(np.diff(index_of["validation"]) > 0)
    np.testing.assert_array_equal(train.labels, arrays["train"][1][index_of["train"]])
    np.testing.assert_array_equal(test.images[..., 0], arrays["t10k"][0])
    again = load_source("mnist", data_dir=str(tmp_path / "relative"), validation_size=8, seed=3)
    np.testing.assert_array_equal(again.splits["validation"].images, validation.images)
    other = load_source("mnist", data_dir=str(tmp_path / "relative"), validation_size=8, seed=4)
    assert not np.array_equal(other.splits["validation"].images, validation.images)
    with pytest.raises(ValueError, match=r"count between 1 and 29 .* got 30"):
        load_source("mnist", data_dir=str(tmp_path / "relative"), validation_size=30)


def test_fashion_mnist_falls_back_to_the_debian_folder(tmp_path, monkeypatch, caplog):
    _mnist_folder(str(tmp_path / "debian"), n_train=12)
    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "debian"))
    os.makedirs(tmp_path / "empty")
    with caplog.at_level(logging.WARNING, logger="model.data"):
        source = load_source("fashion_mnist", data_dir=str(tmp_path / "empty"))
    assert [record.getMessage() for record in caplog.records] == [
        f"data_dir {tmp_path / 'empty'} does not hold the fashion_mnist IDX files ['t10k-images-idx3-ubyte', "
        "'t10k-labels-idx1-ubyte', 'train-images-idx3-ubyte', 'train-labels-idx1-ubyte']; trying the other sources"]
    assert len(source.splits["train"]) == 12 and source.class_names[0] == "T-shirt/top"
    assert len(source.class_names) == 10


def test_missing_data_names_the_three_ways(tmp_path, monkeypatch, caplog):
    class Offline:
        @staticmethod
        def load_data():
            raise Exception("URL fetch failure on https://storage.googleapis.com/...")

    monkeypatch.setattr(idx, "DEBIAN_FASHION_MNIST_DIR", str(tmp_path / "no-debian"))
    monkeypatch.setitem(idx._KERAS_LOADERS, "fashion_mnist", Offline)
    with caplog.at_level(logging.WARNING, logger="model.data"), pytest.raises(FileNotFoundError) as raised:
        load_source("fashion_mnist", data_dir=str(tmp_path / "mine"))
    assert any("does not hold the fashion_mnist IDX files" in record.getMessage() for record in caplog.records)
    message = str(raised.value)
    for part in (str(tmp_path / "mine"), str(tmp_path / "no-debian"), "apt-get install dataset-fashion-mnist",
                 "keras.datasets.fashion_mnist.load_data()", "URL fetch failure", "set data_dir"):
        assert part in message


@pytest.mark.skipif(not os.path.isdir(idx.DEBIAN_FASHION_MNIST_DIR),
                    reason="dataset-fashion-mnist is not installed")
def test_installed_fashion_mnist():
    source = load_source("fashion_mnist")
    train, test = source.splits["train"], source.splits["test"]
    assert train.images.shape == (60000, 28, 28, 1) and test.images.shape == (10000, 28, 28, 1)
    assert np.bincount(train.labels).tolist() == [6000] * 10
    with gzip.open(os.path.join(idx.DEBIAN_FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")) as file:
        labels = np.frombuffer(file.read()[8:], dtype=np.uint8)
    np.testing.assert_array_equal(test.labels, labels)


def test_digits():
    source = load_source("digits", validation_size=100)
    digits = sklearn.datasets.load_digits()
    assert source.image_size == (8, 8) and source.channels == 1
    assert [len(source.splits[s]) for s in ("train", "validation", "test")] == [1337, 100, 360]
    test = source.splits["test"]
    np.testing.assert_array_equal(test.labels, digits.target[-360:])
    np.testing.assert_array_equal(test.images[..., 0], np.round(digits.images[-360:] * 255 / 16))
    assert test.images.max() == 255
    assert test.names[:2] == ["1437", "1438"]  # index in the dataset the example came from
