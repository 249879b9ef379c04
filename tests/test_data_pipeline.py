"""Tests of model/data/pipeline.py, sampling.py and augment.py: P×K and shuffled sampling, evaluation order,
augmentation, seeds."""
import collections

import numpy as np
import pytest
import tensorflow as tf

from model.data import Split, make_dataset, steps_per_epoch
from model.data.augment import Augmentation, image_loader


def _index_split(class_sizes, size=(6, 5), channels=1):
    """In-memory split whose image i is filled with the value i (so batches reveal which examples
    they hold) and whose labels follow `class_sizes` ({label: count})."""
    labels = np.concatenate([np.full(count, label) for label, count in class_sizes.items()])
    values = np.arange(len(labels), dtype=np.uint8)
    images = np.broadcast_to(values[:, None, None, None], (len(labels), *size, channels)).copy()
    return Split(labels=labels, images=images)


def _batches(dataset, count):
    """First `count` batches as ((indices [B] read back from the pixel values), labels [B]) numpy pairs."""
    out = []
    for images, labels in dataset.take(count):
        out.append((images.numpy()[:, 0, 0, 0].astype(int), labels.numpy()))
    return out


def test_pk_batches_hold_p_distinct_classes_times_k():
    split = _index_split({label: 3 + label for label in range(7)})  # 7 classes of 3..9 images
    p, k = 3, 2
    dataset = make_dataset(split, image_size=(6, 5), channels=1, training=True, classes_per_batch=p,
                           images_per_class=k, seed=1)
    images, labels = next(iter(dataset))
    assert images.dtype == tf.float32 and labels.dtype == tf.int32
    assert images.shape == (p * k, 6, 5, 1)
    for indices, labels in _batches(dataset, 60):
        assert len(set(labels)) == p
        for block in range(p):  # class-major: K consecutive images of one class
            block_labels = labels[block * k:(block + 1) * k]
            assert (block_labels == block_labels[0]).all()
            assert len(set(indices[block * k:(block + 1) * k])) == k  # K distinct images (classes have >= K)
        np.testing.assert_array_equal(split.labels[indices], labels)


def test_pk_class_epoch_visits_every_class():
    split = _index_split({label: 4 for label in range(10)})
    p, k = 4, 2  # 10 classes -> 3 groups per class-epoch, the last completed with 2 other classes
    dataset = make_dataset(split, image_size=(6, 5), channels=1, training=True, classes_per_batch=p,
                           images_per_class=k, seed=3)
    batches = _batches(dataset, 30)
    for epoch in range(10):
        seen = set()
        for _, labels in batches[3 * epoch:3 * epoch + 3]:
            seen.update(labels.tolist())
        assert seen == set(range(10))


def test_pk_small_classes_reuse_images_evenly():
    split = _index_split({0: 2, 1: 3, 2: 1, 3: 20})
    k = 7
    dataset = make_dataset(split, image_size=(6, 5), channels=1, training=True, classes_per_batch=4,
                           images_per_class=k, seed=0)
    usage = collections.Counter()
    for indices, labels in _batches(dataset, 40):
        for label in range(4):
            chosen = indices[labels == label]
            members = np.flatnonzero(split.labels == label)
            counts = np.array([np.sum(chosen == m) for m in members])
            assert counts.sum() == k
            if len(members) >= k:
                assert counts.max() == 1  # without replacement
            else:
                assert counts.max() - counts.min() <= 1  # floor(K/n) or ceil(K/n) copies of each image
        usage.update(indices.tolist())
    # Over many batches the 20 images of class 3 are used about equally (7 of 20 per batch).
    big = np.array([usage[m] for m in np.flatnonzero(split.labels == 3)])
    assert big.sum() == 40 * k and big.min() >= 5


def test_pk_fewer_classes_than_p_names_both_numbers():
    split = _index_split({0: 3, 1: 3, 2: 3})
    with pytest.raises(ValueError, match=r"= 5 .*only 3 classes"):
        make_dataset(split, image_size=(6, 5), channels=1, training=True, classes_per_batch=5,
                     images_per_class=2)


def test_shuffled_batches_cover_each_epoch_once():
    split = _index_split({label: 6 for label in range(4)})  # 24 examples, batches of 8
    dataset = make_dataset(split, image_size=(6, 5), channels=1, training=True, batch_size=8, seed=5)
    batches = _batches(dataset, 9)
    for epoch in range(3):
        indices = np.concatenate([idx for idx, _ in batches[3 * epoch:3 * epoch + 3]])
        assert sorted(indices) == list(range(24))
    first, second = (np.concatenate([idx for idx, _ in batches[e * 3:e * 3 + 3]]) for e in (0, 1))
    assert not np.array_equal(first, second)  # reshuffled every epoch
    assert not np.array_equal(first, np.arange(24))
    assert steps_per_epoch(split, 8) == 3 and steps_per_epoch(split, 7) == 4


@pytest.mark.parametrize("sampling", [dict(batch_size=6), dict(classes_per_batch=2, images_per_class=3)])
def test_same_seed_same_batches_whatever_the_global_seed(sampling):
    split = _index_split({label: 5 for label in range(5)})

    def run(seed, global_seed):
        tf.random.set_seed(global_seed)
        dataset = make_dataset(split, image_size=(8, 7), channels=1, training=True, seed=seed,
                               augment={"flip": True, "resize": [10, 9]}, **sampling)
        return [images.numpy() for images, _ in dataset.take(6)]

    first, again, other = run(0, 1), run(0, 2), run(1, 1)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(first, other, strict=True))


def test_evaluation_is_one_ordered_pass_without_augmentation():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(11, 6, 5, 3), dtype=np.uint8)
    split = Split(labels=rng.integers(0, 4, size=11), images=images)
    dataset = make_dataset(split, image_size=(6, 5), channels=3, training=False, batch_size=4,
                           augment={"flip": True, "resize": [12, 10]})
    batches = list(dataset)
    assert [len(labels) for _, labels in batches] == [4, 4, 3]  # last partial batch kept
    np.testing.assert_array_equal(np.concatenate([x.numpy() for x, _ in batches]), images.astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([y.numpy() for _, y in batches]), split.labels)
    assert len(list(make_dataset(split, image_size=6, channels=3, training=False))) == 1  # default 256


def test_flip_only_mirrors_or_keeps_each_image():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(8, 4, 6, 1), dtype=np.uint8)
    split = Split(labels=np.arange(8) % 2, images=images)
    dataset = make_dataset(split, image_size=(4, 6), channels=1, training=True, batch_size=8,
                           augment={"flip": True}, seed=2)
    flipped = kept = 0
    for batch, _ in dataset.take(4):
        for image in batch.numpy():
            matches = [i for i in range(8) if np.array_equal(image, images[i])]
            mirrors = [i for i in range(8) if np.array_equal(image, images[i][:, ::-1])]
            assert matches or mirrors
            kept += bool(matches)
            flipped += bool(mirrors)
    assert flipped > 0 and kept > 0


def test_resize_then_random_crop_is_a_window_of_the_enlarged_image():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(1, 5, 4, 3), dtype=np.uint8)
    split = Split(labels=[0], images=images)
    big = (10, 8)
    enlarged = tf.image.resize(images[0].astype(np.float32), big, antialias=True).numpy()
    dataset = make_dataset(split, image_size=(5, 4), channels=3, training=True, batch_size=1,
                           augment={"resize": list(big), "flip": False}, seed=0)
    offsets = set()
    for batch, _ in dataset.take(12):
        crop = batch.numpy()[0]
        windows = [(y, x) for y in range(big[0] - 5 + 1) for x in range(big[1] - 4 + 1)
                   if np.allclose(crop, enlarged[y:y + 5, x:x + 4], atol=1e-4)]
        assert windows
        offsets.add(windows[0])
    assert len(offsets) > 1


def test_channel_conversion_and_resize():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, size=(3, 4, 4, 3), dtype=np.uint8)
    gray = make_dataset(Split(labels=[0, 1, 2], images=rgb), image_size=4, channels=1, training=False)
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(next(iter(gray))[0].numpy()[..., 0], luma, atol=1e-3)
    one = rgb[..., :1]
    color = make_dataset(Split(labels=[0, 1, 2], images=one), image_size=4, channels=3, training=False)
    np.testing.assert_array_equal(next(iter(color))[0].numpy(), np.repeat(one, 3, axis=-1))
    flat = np.full((1, 5, 7, 1), 77, dtype=np.uint8)
    resized = next(iter(make_dataset(Split(labels=[0], images=flat), image_size=(9, 3), channels=1,
                                     training=False)))[0].numpy()
    assert resized.shape == (1, 9, 3, 1)
    np.testing.assert_allclose(resized, 77.0, atol=1e-3)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("sampling", [
    dict(batch_size=5),
    dict(batch_size=4, start_batch=3),
    dict(classes_per_batch=2, images_per_class=3),
])
def test_whole_batch_gather_equals_the_per_image_path(sampling, channels):
    """In-memory images with no per-image work are gathered a batch at a time; a crop to the image's own
    size (an identity that takes the per-image path) must give the same batches, pixel for pixel."""
    rng = np.random.default_rng(4)
    split = Split(labels=np.arange(23) % 4, images=rng.integers(0, 256, size=(23, 6, 5, 1), dtype=np.uint8))
    common = dict(image_size=(6, 5), channels=channels, seed=3) | sampling
    assert image_loader(split, (6, 5), channels, Augmentation(), seed=3)[1]  # the whole-batch path
    assert not image_loader(split, (6, 5), channels, Augmentation(resize=(6, 5)), seed=3)[1]
    batched = make_dataset(split, training=True, **common).take(12)
    per_image = make_dataset(split, training=True, augment={"resize": [6, 5]}, **common).take(12)
    for (images, labels), (expected_images, expected_labels) in zip(batched, per_image, strict=True):
        assert images.shape[1:] == (6, 5, channels)
        np.testing.assert_array_equal(images, expected_images)
        np.testing.assert_array_equal(labels, expected_labels)


@pytest.mark.parametrize("resize", [None, (7, 6)])
def test_shift_crops_a_window_of_the_zero_padded_image(resize):
    rng = np.random.default_rng(3)
    images = rng.integers(1, 256, size=(1, 5, 4, 1), dtype=np.uint8)  # no zero pixel: padding is visible
    split = Split(labels=[0], images=images)
    source = images[0].astype(np.float32)
    if resize:
        source = tf.image.resize(source, resize, antialias=True).numpy()
    padded = np.pad(source, [(2, 2), (2, 2), (0, 0)])
    augment = {"shift": 2} | ({"resize": list(resize)} if resize else {})
    dataset = make_dataset(split, image_size=(5, 4), channels=1, training=True, batch_size=1, augment=augment, seed=0)
    offsets = set()
    for batch, _ in dataset.take(40):
        crop = batch.numpy()[0]
        windows = [(y, x) for y in range(padded.shape[0] - 5 + 1) for x in range(padded.shape[1] - 4 + 1)
                   if np.allclose(crop, padded[y:y + 5, x:x + 4], atol=1e-4)]
        assert len(windows) == 1
        offsets.add(windows[0])
    assert len(offsets) > 5  # 5×5 (or 7×7 with the resize) offsets are possible
    if not resize:  # every shift of up to 2 pixels, none further
        assert {y for y, _ in offsets} | {x for _, x in offsets} <= set(range(5))
    zero = make_dataset(split, image_size=(5, 4), channels=1, training=True, batch_size=1, augment={"shift": 0})
    np.testing.assert_array_equal(next(iter(zero))[0].numpy()[0], images[0])  # shift 0: the image as it is


@pytest.mark.parametrize("kwargs, message", [
    (dict(training=True), "needs batch_size"),
    (dict(training=True, classes_per_batch=2), "both classes_per_batch and images_per_class"),
    (dict(training=True, batch_size=5, classes_per_batch=2, images_per_class=2), "batch_size=5 differs"),
    (dict(training=False, classes_per_batch=2, images_per_class=2), "are for training"),
    (dict(training=True, batch_size=2, augment={"flip": True, "mirror": 1}),
     r"""key "augment" has value \{'flip': True, 'mirror': 1\}; expected an object with keys among flip, resize, """
     r"""shift, erase \(unknown: 'mirror'\)"""),
    (dict(training=True, batch_size=2, augment={"resize": [3, 8]}), "must be at least image_size"),
    (dict(training=True, batch_size=2, augment={"shift": -1}),
     r'key "augment\.shift" has value -1; expected a number of pixels >= 0'),
    (dict(training=True, batch_size=2, augment={"shift": 1.5}),
     r'key "augment\.shift" has value 1\.5; expected integer'),
    (dict(training=True, batch_size=2, augment={"shift": True}),
     r'key "augment\.shift" has value True; expected integer'),
    (dict(training=True, batch_size=0), "positive integer"),
    (dict(training=False, channels=2), "channels must be 1 or 3"),
    (dict(training=False, image_size=(4, 0)), "image_size must be"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    split = _index_split({0: 3, 1: 3}, size=(4, 4))
    arguments = dict(image_size=4, channels=1) | kwargs
    with pytest.raises(ValueError, match=message):
        make_dataset(split, **arguments)
