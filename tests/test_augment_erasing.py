"""Random erasing (model/data/augment.py) against an independent reference: Zhong et al.'s algorithm written
here as a numpy loop, compared over many draws (the rate, and the distributions of areas, aspects and
positions), and through the training pipeline (one rectangle of the ImageNet mean, seeded, its own stream)."""

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats

from model.data import Split, make_dataset
from model.data.augment import ERASE_FILL, Erasing, check_augment, erase_box
from model.params import Params

DRAWS = 20_000


def reference_boxes(rng, height, width, probability, area, aspect, draws, attempts=100):
    """Zhong et al.'s code (random_erasing.py of the paper's repository), one image at a time:
    (erased, top, left, h, w) arrays of `draws` images."""
    boxes = []
    for _ in range(draws):
        box = (False, 0, 0, 0, 0)
        if rng.uniform() < probability:
            for _ in range(attempts):
                target = rng.uniform(*area) * height * width
                ratio = rng.uniform(*aspect)
                h, w = int(round(np.sqrt(target * ratio))), int(round(np.sqrt(target / ratio)))
                if w < width and h < height:
                    box = (True, rng.integers(0, height - h + 1), rng.integers(0, width - w + 1), h, w)
                    break
        boxes.append(box)
    return tuple(np.array(column) for column in zip(*boxes, strict=True))


def drawn_boxes(height, width, erasing, draws, seed=0):
    """The boxes of `erase_box` for `draws` keys."""
    keys = tf.random.experimental.stateless_split(tf.constant([seed, 7], tf.int64), draws)

    @tf.function
    def draw(keys):
        return tf.map_fn(lambda key: erase_box(key, height, width, erasing), keys,
                         fn_output_signature=(tf.bool, tf.int32, tf.int32, tf.int32, tf.int32))

    return tuple(value.numpy() for value in draw(keys))


@pytest.mark.parametrize("height, width, erasing", [
    (256, 128, Erasing()),                                           # the re-ID strong baseline's images
    (64, 32, Erasing(probability=0.8, area=(0.1, 0.6), aspect=(0.5, 2.0))),
])
def test_boxes_are_distributed_as_zhongs_algorithm_draws_them(height, width, erasing):
    erased, top, left, h, w = drawn_boxes(height, width, erasing, DRAWS)
    ref = reference_boxes(np.random.default_rng(1), height, width, *erasing, DRAWS)
    # The rate: p times the chance that one of 100 rectangles fits (a binomial: within 5 standard deviations).
    rate, expected = erased.mean(), ref[0].mean()
    assert abs(rate - expected) < 5 * np.sqrt(expected * (1 - expected) * 2 / DRAWS)
    assert abs(rate - erasing.probability) < 0.05  # nearly every image drawn for erasing finds a rectangle
    # Every erased rectangle lies inside the image and is smaller than it; the others erase nothing.
    assert (h[erased] < height).all() and (w[erased] < width).all() and (h[erased] >= 1).all()
    assert (top + h <= height).all() and (left + w <= width).all() and (top >= 0).all() and (left >= 0).all()
    assert (h[~erased] == 0).all() and (w[~erased] == 0).all()
    # Areas, aspects and positions: the same distributions as the reference's (two-sample Kolmogorov-Smirnov).
    mine, theirs = erased, ref[0]
    for name, value, reference in (
        ("area", h * w / (height * width), ref[3] * ref[4] / (height * width)),
        ("aspect", h / np.maximum(w, 1), ref[3] / np.maximum(ref[4], 1)),
        ("top", (top + 0.5) / (height - h + 1), (ref[1] + 0.5) / (height - ref[3] + 1)),
        ("left", (left + 0.5) / (width - w + 1), (ref[2] + 0.5) / (width - ref[4] + 1)),
    ):
        assert stats.ks_2samp(value[mine], reference[theirs]).pvalue > 1e-3, name
    # The area fraction stays in the asked range but for the rounding of h and w to pixels.
    fraction = h[erased] * w[erased] / (height * width)
    slack = (h[erased] + w[erased] + 1) / (height * width)
    assert (fraction >= erasing.area[0] - slack).all() and (fraction <= erasing.area[1] + slack).all()
    # Positions: uniform over the places where the rectangle fits.
    assert stats.kstest((top[erased] + rng_offsets(erased.sum())) / (height - h[erased] + 1), "uniform").pvalue > 1e-3


def rng_offsets(count):
    """Uniform jitter in [0, 1) that turns a uniform integer on {0..n-1} into a uniform number on [0, n)."""
    return np.random.default_rng(2).uniform(size=count)


def constant_split(count, value=7, size=(32, 16), channels=3):
    images = np.full((count, *size, channels), value, dtype=np.uint8)
    return Split(labels=np.arange(count) % 4, images=images)


def training_images(split, augment, seed=0, count=64, size=(32, 16), channels=3):
    dataset = make_dataset(split, image_size=size, channels=channels, training=True, batch_size=count,
                           augment=augment, seed=seed)
    return next(iter(dataset))[0].numpy()


@pytest.mark.parametrize("channels", [3, 1])
def test_the_pipeline_fills_one_rectangle_with_the_imagenet_mean(channels):
    images = training_images(constant_split(64, channels=channels), {"erase": {"probability": 1.0}},
                             channels=channels)
    fill = np.array(ERASE_FILL) if channels == 3 else np.array([np.dot(ERASE_FILL, (0.299, 0.587, 0.114))])
    for image in images:
        changed = np.any(image != 7, axis=-1)
        rows, cols = np.flatnonzero(changed.any(axis=1)), np.flatnonzero(changed.any(axis=0))
        assert len(rows) and len(cols)  # a 32 × 16 image always finds a rectangle in 100 draws
        box = image[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        np.testing.assert_allclose(box, np.broadcast_to(fill, box.shape), rtol=1e-6)  # a full rectangle, the mean
        assert changed.sum() == box.shape[0] * box.shape[1]
        assert 0.02 * 512 - 32 <= changed.sum() <= 0.4 * 512 + 32


def test_the_pipeline_erases_at_the_asked_rate_seeded_on_a_stream_of_its_own():
    split = constant_split(400)
    erased = np.any(training_images(split, {"erase": True}, count=400) != 7, axis=(1, 2, 3))
    assert abs(erased.mean() - 0.5) < 5 * np.sqrt(0.25 / 400)
    np.testing.assert_array_equal(training_images(split, {"erase": True}, count=400), training_images(
        split, {"erase": True}, count=400))  # same seed, same rectangles
    assert not np.array_equal(training_images(split, {"erase": True}, count=400),
                              training_images(split, {"erase": True}, seed=1, count=400))
    # Erasing draws from its own stream: shift and flip draw what they drew without it.
    rng = np.random.default_rng(0)
    varied = Split(labels=np.arange(32) % 4, images=rng.integers(0, 256, (32, 32, 16, 3), dtype=np.uint8))
    plain = training_images(varied, {"shift": 3, "flip": True}, count=32)
    never = training_images(varied, {"shift": 3, "flip": True, "erase": {"probability": 0.0}}, count=32)
    np.testing.assert_array_equal(plain, never)
    always = training_images(varied, {"shift": 3, "flip": True, "erase": {"probability": 1.0}}, count=32)
    kept = np.all(always == plain, axis=-1)
    assert (~kept).any(axis=(1, 2)).all() and kept.mean() > 0.5


@pytest.mark.parametrize("erase, message", [
    ({"probability": 1.5}, r'key "augment\.erase\.probability" has value 1\.5; expected a number in \[0, 1\]'),
    ({"probability": -0.1}, r'key "augment\.erase\.probability" has value -0\.1; expected a number in \[0, 1\]'),
    ({"probability": "half"}, r'key "augment\.erase\.probability"'),
    ({"area": [0.4, 0.02]}, r'key "augment\.erase\.area" has value \[0\.4, 0\.02\]; .*\(the range is reversed\)'),
    ({"area": [0.02, 1.5]}, r'key "augment\.erase\.area" has value \[0\.02, 1\.5\]; expected \[low, high\] with 0 <'),
    ({"area": [0, 0.4]}, r'key "augment\.erase\.area"'),
    ({"area": 0.3}, r'key "augment\.erase\.area"'),
    ({"aspect": [3.3, 0.3]}, r'key "augment\.erase\.aspect" .*reversed'),
    ({"aspect": [0, 3.3]}, r'key "augment\.erase\.aspect"'),
    ({"ratio": [0.3, 3.3]}, r"""key "augment\.erase" .*keys among probability, area, aspect \(unknown: 'ratio'\)"""),
    ("yes", r'key "augment\.erase" has value .yes.; expected object or true/false or null'),
])
def test_bad_erasing_values_name_the_key(erase, message):
    with pytest.raises(ValueError, match=message):
        check_augment({"erase": erase})
    with pytest.raises(ValueError, match="params: " + message):
        Params.from_dict({"augment": {"flip": True, "erase": erase}})


def test_erasing_values_and_their_defaults():
    assert check_augment({"erase": True}).erase == Erasing(0.5, (0.02, 0.4), (0.3, 3.3))
    assert check_augment({"erase": {"probability": 0.25}}).erase == Erasing(0.25, (0.02, 0.4), (0.3, 3.3))
    assert check_augment({"erase": False}).erase is None and check_augment({"erase": None}).erase is None
    assert check_augment({"flip": True}).erase is None
