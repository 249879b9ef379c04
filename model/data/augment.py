"""Images of a split as the pipeline reads them: decoded, resized, converted to the run's channels and,
in training, augmented.

    load, batchable = image_loader(split, (h, w), channels, check_augment({"flip": True}, (h, w)), seed)

Augmentation, each step drawn from the image's own stateless random key: resize to `resize` (else to
the image size); pad every side with `shift` zero pixels; crop a random image-size window (both previous
steps leave a larger image: together a random scale and translation); mirror left-right with
probability 1/2 if `flip`.
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from model.data.images import decode_image_file
from model.data.sampling import AUGMENT_STREAM, random_key
from model.registry import BOOL, INT, LIST, NONE, OptionError, is_instance, type_names

# ITU-R 601-2 luma, the weights of PIL's convert("L"); they sum to 1 so gray -> RGB -> gray is exact.
_LUMA = (0.299, 0.587, 0.114)


def size_pair(value, what):
    """int or (h, w) -> (h, w) of positive ints."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise ValueError(f"{what} must be a positive int or [height, width], got {value!r}")
    return int(pair[0]), int(pair[1])


class Augmentation(NamedTuple):
    """Validated training augmentation (see `image_loader` for the order of its steps)."""

    flip: bool = False  # mirror left-right with probability 1/2
    resize: tuple | None = None  # (h, w): resize to it, then crop a random image_size window
    shift: int = 0  # pixels: pad each side with zeros, then crop a random image_size window


# The JSON types of each key of an `augment` object (params.json's "augment").
_AUGMENT_TYPES = {"flip": (BOOL,), "resize": (INT, LIST, NONE), "shift": (INT,)}


def check_augment(augment, size=None):
    """The Augmentation of an `augment` dict ({} or None: none), checked: its keys, their types, a shift >= 0
    and, with the image `size` (h, w), a resize at least that large. Errors are `OptionError`s naming the key."""
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
    return Augmentation(flip=bool(augment.get("flip", False)), resize=resize, shift=int(shift))


def to_channels(image, channels):
    """float32 [..., h, w, c] with c in {1, 3} -> [..., h, w, channels]: gray is repeated, RGB becomes luma.

    One image or a batch (the exported serving signature, `model.retrieval.bundle`, uses it on batches)."""
    have = image.shape[-1]
    if have == channels:
        return image
    if have == 1:
        return tf.repeat(image, 3, axis=-1)
    return tf.tensordot(image, tf.constant(_LUMA, dtype=tf.float32), axes=[[image.shape.rank - 1], [0]])[..., None]


def image_loader(split, size, channels, augmentation, seed):
    """(load, batchable): load(index, counter) -> float32 [h, w, channels] image of example `index`,
    augmented as asked; batchable: True when there is no per-image work (in-memory images already at
    `size`, no augmentation), and `load` then also takes a batch of indices [B] -> [B, h, w, channels].

    Augmentation (an `Augmentation`), each step drawn from the image's own random key: resize to
    `augmentation.resize` (else to `size`); pad every side with `shift` zero pixels; crop a random
    `size` window (both previous steps leave a larger image: together a random scale and translation);
    mirror left-right with probability 1/2 if `flip`.
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
    flip, resize, shift = augmentation
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
        return tf.ensure_shape(image, index.shape.concatenate([size[0], size[1], channels]))

    return load, split.images is not None and same_size and not (crop or flip)

