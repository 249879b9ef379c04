"""Tests of model/data/splits.py, holdout.py and sources.py: Split, DataSource, class mapping, hold-out,
load_source errors."""
import numpy as np
import pytest

from model.data import DataSource, Split, load_source
from model.data.holdout import hold_out
from model.data.splits import class_mapping


def test_split_fields_and_take():
    images = np.arange(5 * 2 * 2 * 1, dtype=np.uint8).reshape(5, 2, 2, 1)
    split = Split(labels=[3, 1, 4, 1, 5], images=images, camids=[1, 2, 3, 4, 5])
    assert len(split) == 5 and split.labels.dtype == np.int32 and split.names == ["0", "1", "2", "3", "4"]
    part = split.take([4, 1])
    np.testing.assert_array_equal(part.labels, [5, 1])
    np.testing.assert_array_equal(part.images, images[[4, 1]])
    np.testing.assert_array_equal(part.camids, [5, 2])
    assert part.names == ["4", "1"] and part.paths is None and part.utm is None
    files = Split(labels=[0, 1], paths=["/a.png", "/b.png"], utm=[[1, 2], [3, 4]])
    assert files.names == ["/a.png", "/b.png"] and files.utm.dtype == np.float64
    assert files.take([1]).paths == ["/b.png"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(labels=[0]), "exactly one of"),
    (dict(labels=[0], images=np.zeros((1, 2, 2, 1), np.uint8), paths=["/a"]), "exactly one of"),
    (dict(labels=[0, 1], images=np.zeros((1, 2, 2, 1), np.uint8)), r"uint8 \[N=2, H, W, C\]"),
    (dict(labels=[0], images=np.zeros((1, 2, 2, 1), np.float32)), "must be uint8"),
    (dict(labels=[0], paths=["/a", "/b"]), "2 paths but 1 labels"),
    (dict(labels=[0], paths=["/a"], names=["a", "b"]), "2 names but 1 labels"),
    (dict(labels=[0], paths=["/a"], camids=[1, 2]), "2 camera ids but 1 labels"),
    (dict(labels=[0], paths=["/a"], utm=[1, 2]), r"float64 \[N=1, 2\]"),
])
def test_split_rejects_inconsistent_fields(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Split(**kwargs)


def test_data_source_protocol_is_checked_where_it_is_looked_up_and_every_dataset_names_a_protocol():
    """A DataSource names its protocol; the protocols are the evaluation's registry, which refuses a name it
    does not know (the data layer does not keep a copy of their names), and every dataset names one of them."""
    from model.data import DATASETS
    from model.evaluation.protocols import PROTOCOLS

    split = Split(labels=[0], paths=["/a"])
    source = DataSource("x", {"train": split}, ["a"], 3, None, "classification")
    with pytest.raises(ValueError, match=r"Unknown protocol 'classification'. Valid protocols: labels, reid, places"):
        PROTOCOLS[source.protocol]
    assert {entry.protocol for entry in DATASETS.entries()} == set(PROTOCOLS.names())


def test_class_mapping_puts_train_classes_first():
    assert class_mapping(["b", "a", "b"], ["c", "a", "0"]) == ["a", "b", "0", "c"]
    assert class_mapping(["a"], ["b"], saved=["b", "a", "z"]) == ["b", "a", "z"]
    with pytest.raises(ValueError, match=r"1 classes are not in it, e.g. \['c'\]"):
        class_mapping(["a"], ["c"], saved=["a", "b"], where="/data")


def test_hold_out_is_seeded_and_disjoint():
    split = Split(labels=np.arange(20) % 4, images=np.zeros((20, 1, 1, 1), np.uint8))
    train, validation = hold_out(split, 6, seed=7)
    taken = sorted(int(name) for name in train.names + validation.names)
    assert taken == list(range(20)) and len(validation) == 6
    assert hold_out(split, 6, seed=7)[1].names == validation.names
    assert hold_out(split, 6, seed=8)[1].names != validation.names
    assert [len(part) for part in hold_out(split, 0.25, seed=0)] == [15, 5]  # a fraction of the split
    assert [len(part) for part in hold_out(split, 0.01, seed=0)] == [19, 1]  # at least one
    assert [len(part) for part in hold_out(split, 3.0, seed=0)] == [17, 3]
    for size in (20, 0, 2.5, -1):
        with pytest.raises(ValueError, match=f"count between 1 and 19 .* got {size}"):
            hold_out(split, size, seed=0)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(dataset="cifar"), ValueError, "Unknown dataset 'cifar'. Valid datasets: mnist, "),
    (dict(dataset="digits", class_split=5), ValueError, "class_split is for the 'folders' dataset only"),
    (dict(dataset="market1501"), ValueError, "set data_dir"),
    (dict(dataset="digits", class_names=["0", "1"]), ValueError,
     r"saved class mapping \(2 classes\) differs"),
])
def test_load_source_argument_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        load_source(**kwargs)


def test_load_source_accepts_its_own_class_names():
    source = load_source("digits")
    assert load_source("digits", class_names=source.class_names).class_names == source.class_names


def test_a_labelled_hold_out_leaves_no_class_alone_in_validation_where_it_can():
    """The shipped netvlad_folders (validation_size 0.1 of places with a few images each) held out classes with a
    single validation image, which leave-one-out validation cannot measure: the images now come in pairs."""
    from model.data.holdout import hold_out
    from model.data.splits import Split

    labels = np.repeat(np.arange(60), [2, 3, 4, 5, 6, 8] * 10)  # 60 places of 2 to 8 images
    split = Split(labels=labels, images=np.zeros((len(labels), 1, 1, 1), np.uint8), names=[str(i) for i in
                                                                                            range(len(labels))])
    count = round(0.1 * len(labels))
    for seed in range(5):
        first = np.random.default_rng(seed).permutation(len(labels))[:count]
        assert (np.unique(labels[first], return_counts=True)[1] == 1).any()  # the plain draw leaves classes alone
        train, validation = hold_out(split, 0.1, seed)
        assert len(validation) == count and len(train) == len(labels) - count
        assert sorted(train.names + validation.names, key=int) == split.names
        held, per_class = np.unique(validation.labels, return_counts=True)
        assert (per_class >= 2).all()
        assert set(held) <= set(train.labels)  # each held-out class keeps an image in train
        again = hold_out(split, 0.1, seed)[1]
        assert again.names == validation.names
    digits = load_source("digits", validation_size=100, seed=1).splits  # no class alone: the plain draw, as before
    whole = load_source("digits").splits["train"]
    first = np.sort(np.random.default_rng(1).permutation(len(whole))[:100])
    np.testing.assert_array_equal(digits["validation"].images, whole.images[first])
