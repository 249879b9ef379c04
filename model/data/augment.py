"""Images of a split as the pipeline reads them: decoded, resized, converted to the run's channels and,
in training, augmented.

    load, batchable = image_loader(split, (h, w), channels, check_augment({"flip": True}, (h, w)), seed)

Augmentation, each step drawn from the image's own stateless random key: resize to `resize` (else to
the image size); pad every side with `shift` zero pixels; crop a random image-size window (both previous
steps leave a larger image: together a random scale and translation); mirror left-right with
probability 1/2 if `flip`; then, with `erase`, random erasing (Zhong et al., "Random Erasing Data
Augmentation", AAAI 2020): with probability p, a random rectangle of the image is filled with the ImageNet
mean pixel (`erase_box` draws it).
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from model.data.images import decode_image_file
from model.data.sampling import AUGMENT_STREAM, ERASE_STREAM, random_key
from model.registry import BOOL, DICT, INT, LIST, NONE, OptionError, is_instance, is_number, type_names

# ITU-R 601-2 luma, the weights of PIL's convert("L"); they sum to 1 so gray -> RGB -> gray is exact.
_LUMA = (0.299, 0.587, 0.114)


def size_pair(value, what):
    """int or (h, w) -> (h, w) of positive ints."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise ValueError(f"{what} must be a positive int or [height, width], got {value!r}")
    return int(pair[0]), int(pair[1])


class Erasing(NamedTuple):
    """Random erasing (Zhong et al. 2020), the values of the paper and of the re-ID strong baseline.

    With probability `probability` an image gets one rectangle of `area[0]`–`area[1]` of its area and aspect
    (height / width) in `aspect`, both drawn uniformly; it is tried up to `ERASE_ATTEMPTS` times until it fits
    (`erase_box`), and filled with the ImageNet mean pixel (`ERASE_FILL`)."""

    probability: float = 0.5
    area: tuple = (0.02, 0.4)
    aspect: tuple = (0.3, 3.3)


class Augmentation(NamedTuple):
    """Validated training augmentation (see `image_loader` for the order of its steps)."""

    flip: bool = False  # mirror left-right with probability 1/2
    resize: tuple | None = None  # (h, w): resize to it, then crop a random image_size window
    shift: int = 0  # pixels: pad each side with zeros, then crop a random image_size window
    erase: Erasing | None = None  # random erasing, last


# The JSON types of each key of an `augment` object (params.json's "augment").
_AUGMENT_TYPES = {"flip": (BOOL,), "resize": (INT, LIST, NONE), "shift": (INT,), "erase": (DICT, BOOL, NONE)}
# The ImageNet mean pixel (R, G, B) in [0, 255] that fills an erased rectangle (of gray images: its luma).
ERASE_FILL = (0.485 * 255, 0.456 * 255, 0.406 * 255)
# Rectangles drawn before an image is left as it is (Zhong et al.'s code: 100).
ERASE_ATTEMPTS = 100


def _range_pair(value, key, low, high, example):
    """(a, b) of a [a, b] list of numbers with low < a <= b <= high (high None: no bound), else OptionError."""
    bound = f" <= {high}" if high is not None else ""
    expected = f"[low, high] with {low} < low <= high{bound}, e.g. {example}"
    if not isinstance(value, list) or len(value) != 2 or not all(is_number(v) for v in value):
        raise OptionError(key, value, expected)
    first, second = float(value[0]), float(value[1])
    if not low < first or (high is not None and second > high):
        raise OptionError(key, value, expected)
    if first > second:
        raise OptionError(key, value, f"{expected} (the range is reversed)")
    return first, second


def check_erasing(erase):
    """The Erasing of params' `augment.erase`: true (the paper's values), false or null (none), or an object of
    `probability` (in [0, 1]), `area` ([low, high], fractions of the image) and `aspect` ([low, high], height /
    width), each defaulting to the paper's. Errors are `OptionError`s naming the key."""
    if erase is None or erase is False:
        return None
    if erase is True:
        return Erasing()
    unknown = sorted(set(erase) - set(Erasing._fields))
    if unknown:
        raise OptionError("augment.erase", erase,
                          f"an object with keys among {', '.join(Erasing._fields)} (unknown: {unknown[0]!r})")
    defaults = Erasing()
    probability = erase.get("probability", defaults.probability)
    if not is_number(probability) or not 0 <= probability <= 1:
        raise OptionError("augment.erase.probability", probability, "a number in [0, 1], e.g. 0.5")
    area = _range_pair(erase.get("area", list(defaults.area)), "augment.erase.area", 0, 1, "[0.02, 0.4]")
    aspect = _range_pair(erase.get("aspect", list(defaults.aspect)), "augment.erase.aspect", 0, None, "[0.3, 3.3]")
    return Erasing(float(probability), area, aspect)


def check_augment(augment, size=None):
    """The Augmentation of an `augment` dict ({} or None: none), checked: its keys, their types, a shift >= 0,
    the erasing (`check_erasing`) and, with the image `size` (h, w), a resize at least that large. Errors are
    `OptionError`s naming the key."""
    if not augment:
        return Augmentation()
    for name, option in augment.items():
        if name not in _AUGMENT_TYPES:
            raise OptionError("augment", augment,
                              f"an object with keys among {', '.join(Augmentation._fields)} (unknown: {name!r})")
        if not is_instance(option, _AUGMENT_TYPES[name]):
            raise OptionError(f"augment.{name}", option, type_names(_AUGMENT_TYPES[name]))
    resize = augment.get("resize")
    if resize is not None:
        resize = size_pair(resize, "augment['resize']")
        if size is not None and (resize[0] < size[0] or resize[1] < size[1]):
            raise ValueError(f"augment['resize'] = {list(resize)} must be at least image_size {list(size)}: "
                             "images are resized to it and then randomly cropped to image_size")
    shift = augment.get("shift", 0)
    if shift < 0:
        raise OptionError("augment.shift", shift, "a number of pixels >= 0")
    return Augmentation(flip=bool(augment.get("flip", False)), resize=resize, shift=int(shift),
                        erase=check_erasing(augment.get("erase")))


def to_channels(image, channels):
    """float32 [..., h, w, c] with c in {1, 3} -> [..., h, w, channels]: gray is repeated, RGB becomes luma.

    One image or a batch (the exported serving signature, `model.retrieval.bundle`, uses it on batches)."""
    have = image.shape[-1]
    if have == channels:
        return image
    if have == 1:
        return tf.repeat(image, 3, axis=-1)
    return tf.tensordot(image, tf.constant(_LUMA, dtype=tf.float32), axes=[[image.shape.rank - 1], [0]])[..., None]


def erase_box(key, height, width, erasing):
    """The rectangle random erasing draws for an image of `height` × `width` with the random `key` (Zhong et al.
    2020, as their code draws it):

        erased with probability p; then up to ERASE_ATTEMPTS times: S ~ U(area) · H·W, r ~ U(aspect),
        h = round(√(S·r)), w = round(√(S / r)); the first with h < H and w < W is erased at
        top ~ U{0, ..., H - h}, left ~ U{0, ..., W - w}; none fits: the image is left as it is.

    Args:
        key: a stateless random key [2].
        height, width: the image's size (Python ints or int32 scalars).
        erasing: an `Erasing`.

    Returns:
        (erased: bool [], top, left, h, w: int32 []), h = w = 0 where nothing is erased.
    """
    coin_key, area_key, aspect_key, top_key, left_key = tf.unstack(tf.random.experimental.stateless_split(key, 5))
    height, width = tf.cast(height, tf.int32), tf.cast(width, tf.int32)
    pixels = tf.cast(height * width, tf.float32)
    area = tf.random.stateless_uniform([ERASE_ATTEMPTS], area_key, *erasing.area) * pixels
    aspect = tf.random.stateless_uniform([ERASE_ATTEMPTS], aspect_key, *erasing.aspect)
    heights = tf.cast(tf.round(tf.sqrt(area * aspect)), tf.int32)  # round half to even, as Python's round
    widths = tf.cast(tf.round(tf.sqrt(area / aspect)), tf.int32)
    fits = (heights < height) & (widths < width)
    erased = (tf.random.stateless_uniform([], coin_key) < erasing.probability) & tf.reduce_any(fits)
    first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
    h = tf.where(erased, heights[first], 0)
    w = tf.where(erased, widths[first], 0)
    top = tf.random.stateless_uniform([], top_key, 0, height - h + 1, dtype=tf.int32)
    left = tf.random.stateless_uniform([], left_key, 0, width - w + 1, dtype=tf.int32)
    return erased, top, left, h, w


def random_erasing(image, key, erasing):
    """`image` float32 [h, w, c] with the rectangle of `erase_box(key, h, w, erasing)` filled with the ImageNet
    mean pixel (its luma for one channel)."""
    height, width, channels = tf.unstack(tf.shape(image))
    _, top, left, h, w = erase_box(key, height, width, erasing)
    rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
    inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)  # [h, w]
    fill = tf.constant(ERASE_FILL, tf.float32)
    if image.shape[-1] == 1:
        fill = tf.reduce_sum(fill * tf.constant(_LUMA, tf.float32), keepdims=True)
    return tf.where(inside[..., None], fill, image)


def image_loader(split, size, channels, augmentation, seed):
    """(load, batchable): load(index, counter) -> float32 [h, w, channels] image of example `index`,
    augmented as asked; batchable: True when there is no per-image work (in-memory images already at
    `size`, no augmentation), and `load` then also takes a batch of indices [B] -> [B, h, w, channels].

    Augmentation (an `Augmentation`), each step drawn from the image's own random key: resize to
    `augmentation.resize` (else to `size`); pad every side with `shift` zero pixels; crop a random
    `size` window (both previous steps leave a larger image: together a random scale and translation);
    mirror left-right with probability 1/2 if `flip`; random erasing (`random_erasing`) if `erase`, from a
    random stream of its own (the other steps draw what they drew without it).
    """
    with tf.device("/CPU:0"):  # the pipeline runs on the CPU; keep its tables there on GPU machines too
        if split.images is not None:
            if split.images.shape[-1] not in (1, 3):
                raise ValueError(f"in-memory images must have 1 or 3 channels, got {split.images.shape}")
            table = tf.constant(split.images)
        else:
            table = tf.constant(split.paths, dtype=tf.string)

    # Resizing an image to the size it has is a full antialiased pass over it for nothing: in-memory
    # images all have one known size, so the pass is left out when it is the target size.
    flip, resize, shift, erase = augmentation
    resize_to = resize or size
    same_size = split.images is not None and tuple(split.images.shape[1:3]) == resize_to
    crop = bool(resize or shift)

    def read(index):  # uint8 [h, w, c]
        item = tf.gather(table, index)
        return item if split.images is not None else decode_image_file(item)

    def load(index, counter):  # index: int64 [] (or [B] when batchable)
        image = to_channels(tf.cast(read(index), tf.float32), channels)
        if not same_size:
            image = tf.image.resize(image, resize_to, antialias=True)
        if crop or flip:
            crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(
                random_key(seed, AUGMENT_STREAM, counter), num=2))
            if shift:
                image = tf.pad(image, [[shift, shift], [shift, shift], [0, 0]])
            if crop:
                image = tf.image.stateless_random_crop(image, [size[0], size[1], channels], seed=crop_key)
            if flip:
                image = tf.image.stateless_random_flip_left_right(image, seed=flip_key)
        if erase is not None:
            image = random_erasing(image, random_key(seed, ERASE_STREAM, counter), erase)
        return tf.ensure_shape(image, index.shape.concatenate([size[0], size[1], channels]))

    return load, split.images is not None and same_size and not (crop or flip or erase is not None)

