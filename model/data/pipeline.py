"""tf.data pipelines: a Split -> batches of (images float32 [B, H, W, C] in [0, 255], labels int32 [B]).

Training (`training=True`) reads an endless stream of example indices, either
  * shuffled epochs, cut into batches of `batch_size` (the classic MNIST recipe), or
  * P×K batches (Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification",
    2017): P distinct classes × K images each, so that every anchor of a batch has K-1 positives
    and (P-1)·K negatives for the in-batch miners. Classes are visited in a fresh random order
    each class-epoch; the last group of an epoch is completed with other classes so that every
    group holds P distinct classes. Within a class the K images are the first K of a random
    permutation of its images, cycled when the class has fewer than K, so a small class repeats
    each image floor(K/n) or ceil(K/n) times (sampling with replacement, evenly spread).
    With `groups` (lists of example indices that may overlap, e.g. GPS places: a query and the
    database images near it) the groups take the place of the classes, and each example's label is
    its index in the split (what a relation function looks up, e.g. its UTM coordinates).
The indices are mapped in parallel to decoded, resized and (optionally) augmented images; in-memory
images that need none of that are gathered a whole batch at a time.
Evaluation (`training=False`) makes one pass in split order, the last partial batch kept, so that
embeddings line up with `split.labels`, with no augmentation.

All randomness comes from stateless random ops keyed by (seed, stream, counter): the same seed
gives the same batches in every run, whatever the parallelism or TensorFlow's global seed.
"""
import math
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from model.data.images import decode_image_file

DEFAULT_EVAL_BATCH_SIZE = 256
# ITU-R 601-2 luma, the weights of PIL's convert("L"); they sum to 1 so gray -> RGB -> gray is exact.
_LUMA = (0.299, 0.587, 0.114)
# Independent random streams derived from the user's seed.
_ORDER_STREAM, _PICK_STREAM, _AUGMENT_STREAM = 0, 1, 2


def steps_per_epoch(split, batch_size):
    """Batches that cover the split once: ceil(N / batch_size)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    return math.ceil(len(split) / batch_size)


def _key(seed, stream, counter):
    """Stateless random key [2] for element/step `counter` of random stream `stream`."""
    base = tf.constant([seed, stream], dtype=tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(counter, tf.int64))


def _shuffled_indices(num_examples, seed):
    """Endless int64 stream of example indices: each epoch a new random permutation of 0..N-1."""
    def epoch(number):
        order = tf.random.experimental.stateless_shuffle(tf.range(num_examples, dtype=tf.int64),
                                                         seed=_key(seed, _ORDER_STREAM, number))
        return tf.data.Dataset.from_tensor_slices(order)

    return tf.data.Dataset.counter().flat_map(epoch)


def _class_groups(num_classes, per_batch, seed):
    """Endless stream of int32 [P] groups of distinct class ids, every class once per class-epoch.

    Each class-epoch shuffles the classes and cuts them into groups of P; when P does not divide
    the number of classes L, the last r = L mod P classes are completed with P - r of the other
    classes of that epoch, drawn at random, so no group ever repeats a class.
    """
    remainder = num_classes % per_batch

    def epoch(number):
        key = _key(seed, _ORDER_STREAM, number)
        order = tf.random.experimental.stateless_shuffle(tf.range(num_classes), seed=key)  # [L]
        if remainder:
            others = tf.random.experimental.stateless_shuffle(
                order[: num_classes - remainder], seed=tf.random.experimental.stateless_fold_in(key, 1))
            order = tf.concat([order, others[: per_batch - remainder]], axis=0)
        return tf.data.Dataset.from_tensor_slices(tf.reshape(order, [-1, per_batch]))

    return tf.data.Dataset.counter().flat_map(epoch)


def _pk_indices(labels, per_batch, per_class, seed, num_parallel_calls, groups=None):
    """Endless int64 stream of example indices, P·K consecutive ones per batch (class-major).

    The classes are those of `labels`, or the `groups` (lists of example indices) when given."""
    if groups is None:
        class_of = np.unique(labels, return_inverse=True)[1].reshape(-1)  # [N] class index 0..L-1
        counts = np.bincount(class_of)  # [L] images per class
        members = np.argsort(class_of, kind="stable")  # [N] grouped by class
    else:
        counts = np.array([len(group) for group in groups], dtype=np.int64)  # [L] images per group
        members = np.concatenate(groups) if groups else np.zeros(0, np.int64)  # [Σ counts] group by group
    what = "classes" if groups is None else "groups (places)"
    if len(counts) < per_batch:
        raise ValueError(f"classes_per_batch (P) = {per_batch} but the split has only {len(counts)} {what}; "
                         f"lower classes_per_batch to at most {len(counts)}")
    members = tf.constant(members, dtype=tf.int64)
    counts_t = tf.constant(counts, dtype=tf.int32)
    starts = tf.constant(np.cumsum(counts) - counts, dtype=tf.int32)  # [L] class start in `members`

    def pick(step, group):  # group: [P] class ids
        sizes = tf.gather(counts_t, group)  # [P]
        first = tf.cumsum(sizes, exclusive=True)  # [P] start of each class in the flat list below
        row = tf.repeat(tf.range(per_batch), sizes)  # [T] which class of the group
        offset = tf.range(tf.size(row)) - tf.gather(first, row)  # [T] image number within its class
        flat = tf.gather(tf.gather(starts, group), row) + offset  # [T] positions in `members`
        # Sorting by row + uniform[0, 1) shuffles the images within each class, classes kept in order.
        keys = tf.cast(row, tf.float64) + tf.random.stateless_uniform(
            tf.shape(row), seed=_key(seed, _PICK_STREAM, step), dtype=tf.float64)
        shuffled = tf.gather(flat, tf.argsort(keys))  # [T]
        slots = first[:, None] + tf.range(per_class)[None, :] % sizes[:, None]  # [P, K], cycles small classes
        return tf.reshape(tf.gather(members, tf.gather(shuffled, slots)), [-1])  # [P*K]

    steps = tf.data.Dataset.counter()
    groups = _class_groups(len(counts), per_batch, seed)
    return tf.data.Dataset.zip(steps, groups).map(pick, num_parallel_calls=num_parallel_calls).unbatch()


def _size_pair(value, what):
    """int or (h, w) -> (h, w) of positive ints."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and v > 0 for v in pair):
        raise ValueError(f"{what} must be a positive int or [height, width], got {value!r}")
    return int(pair[0]), int(pair[1])


class Augmentation(NamedTuple):
    """Validated training augmentation, applied in this order to each image (see `_image_loader`)."""

    resize: tuple | None = None  # (h, w): resize to it, then crop a random image_size window
    shift: int = 0  # pixels: pad each side with zeros, then crop a random image_size window
    flip: bool = False  # mirror left-right with probability 1/2


AUGMENT_KEYS = Augmentation._fields  # the keys of params' `augment` (model/params.py, tied by a test)


def _check_augment(augment, size):
    """The Augmentation of an `augment` dict ({} or None: none)."""
    if not augment:
        return Augmentation()
    unknown = sorted(set(augment) - set(AUGMENT_KEYS))
    if unknown:
        raise ValueError(f"unknown augment keys {unknown}; expected some of {list(AUGMENT_KEYS)}")
    resize = augment.get("resize")
    if resize is not None:
        resize = _size_pair(resize, "augment['resize']")
        if resize[0] < size[0] or resize[1] < size[1]:
            raise ValueError(f"augment['resize'] = {list(resize)} must be at least image_size {list(size)}: "
                             "images are resized to it and then randomly cropped to image_size")
    shift = augment.get("shift", 0)
    if isinstance(shift, bool) or not isinstance(shift, (int, np.integer)) or shift < 0:
        raise ValueError(f"augment['shift'] must be a number of pixels >= 0, got {shift!r}")
    return Augmentation(resize=resize, shift=int(shift), flip=bool(augment.get("flip", False)))


def _to_channels(image, channels):
    """float32 [..., h, w, c] with c in {1, 3} -> [..., h, w, channels]: gray is repeated, RGB becomes luma.

    One image or a batch (the exported serving signature, model/serving.py, uses it on batches)."""
    have = image.shape[-1]
    if have == channels:
        return image
    if have == 1:
        return tf.repeat(image, 3, axis=-1)
    return tf.tensordot(image, tf.constant(_LUMA, dtype=tf.float32), axes=[[image.shape.rank - 1], [0]])[..., None]


def _image_loader(split, size, channels, augmentation, seed):
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
    resize, shift, flip = augmentation
    resize_to = resize or size
    same_size = split.images is not None and tuple(split.images.shape[1:3]) == resize_to
    crop = bool(resize or shift)

    def read(index):  # uint8 [h, w, c]
        item = tf.gather(table, index)
        return item if split.images is not None else decode_image_file(item)

    def load(index, counter):  # index: int64 [] (or [B] when batchable)
        image = _to_channels(tf.cast(read(index), tf.float32), channels)
        if not same_size:
            image = tf.image.resize(image, resize_to, antialias=True)
        if crop or flip:
            crop_key, flip_key = tf.unstack(tf.random.experimental.stateless_split(
                _key(seed, _AUGMENT_STREAM, counter), num=2))
            if shift:
                image = tf.pad(image, [[shift, shift], [shift, shift], [0, 0]])
            if crop:
                image = tf.image.stateless_random_crop(image, [size[0], size[1], channels], seed=crop_key)
            if flip:
                image = tf.image.stateless_random_flip_left_right(image, seed=flip_key)
        return tf.ensure_shape(image, index.shape.concatenate([size[0], size[1], channels]))

    return load, split.images is not None and same_size and not (crop or flip)


def _training_indices(split, batch_size, per_batch, per_class, seed, num_parallel_calls, groups):
    """(batch size, endless index stream) for training: P×K when P and K are given, else shuffled."""
    if groups is not None and (per_batch is None or per_class is None):
        raise ValueError("groups are drawn as P×K batches: set classes_per_batch and images_per_class")
    if per_batch is None and per_class is None:
        if batch_size is None:
            raise ValueError("training needs batch_size (shuffled batches) or classes_per_batch and "
                             "images_per_class (P×K batches)")
        steps_per_epoch(split, batch_size)  # validates batch_size
        return batch_size, _shuffled_indices(len(split), seed)
    if per_batch is None or per_class is None or per_batch < 1 or per_class < 1:
        raise ValueError("P×K batches need both classes_per_batch and images_per_class as positive "
                         f"integers, got {per_batch} and {per_class}")
    if batch_size is not None and batch_size != per_batch * per_class:
        raise ValueError(f"batch_size={batch_size} differs from classes_per_batch × images_per_class = "
                         f"{per_batch} × {per_class} = {per_batch * per_class}; leave batch_size out")
    return per_batch * per_class, _pk_indices(split.labels, per_batch, per_class, seed, num_parallel_calls, groups)


def make_dataset(split, *, image_size, channels, training, batch_size=None, classes_per_batch=None,
                 images_per_class=None, augment=None, seed=0, num_parallel_calls=tf.data.AUTOTUNE, start_batch=0,
                 groups=None):
    """Batches of (images float32 [B, H, W, C] in [0, 255], labels int32 [B]) from a Split, prefetched.

    Args:
        split: a Split (in memory or files).
        image_size: int or (h, w): every image is resized (bilinear, antialiased) to it.
        channels: 1 or 3: RGB images become luma 0.299 R + 0.587 G + 0.114 B, gray ones are repeated.
        training: True: endless shuffled or P×K batches (all of size B), with augmentation;
            False: one pass in split order, batches of `batch_size` (default 256), last one partial.
        batch_size: batch size of shuffled batches (training) or of the evaluation pass.
        classes_per_batch, images_per_class: P and K of P×K batches (training only).
        augment: training only: {"flip": bool, "resize": [h, w] or None, "shift": pixels}: resize to
            the larger [h, w], pad each side with `shift` zero pixels, crop a random image_size window
            (a random scale and translation), then a random horizontal flip.
        seed: int; the same seed gives the same batches.
        num_parallel_calls: parallelism of sampling and decoding.
        start_batch: training only: begin at this batch of the seeded stream, as if the batches before
            it had been read (a resumed run goes on with the batches it would have seen). The skipped
            batches' indices are computed (cheap), their images are never loaded.
        groups: training only: a list of int arrays of example indices (which may overlap) drawn as the
            classes of P×K batches; the labels are then the examples' indices in `split`.

    Returns:
        tf.data.Dataset of (images, labels).
    """
    size = _size_pair(image_size, "image_size")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if len(split) == 0:
        raise ValueError("cannot make a dataset from an empty split")
    if training:
        augmentation = _check_augment(augment, size)
        batch, indices = _training_indices(split, batch_size, classes_per_batch, images_per_class, seed,
                                           num_parallel_calls, groups)
    else:
        if classes_per_batch is not None or images_per_class is not None:
            raise ValueError("P×K batches (classes_per_batch, images_per_class) are for training; evaluation "
                             "reads every example once in order")
        augmentation = Augmentation()  # none at evaluation
        batch = DEFAULT_EVAL_BATCH_SIZE if batch_size is None else batch_size
        steps_per_epoch(split, batch)  # validates the batch size
        if groups is not None:
            raise ValueError("groups are for training batches; evaluation reads every example once in order")
        indices = tf.data.Dataset.range(len(split))
    load, batchable = _image_loader(split, size, channels, augmentation, seed)
    with tf.device("/CPU:0"):
        labels = tf.constant(split.labels if groups is None else np.arange(len(split)), dtype=tf.int32)
    if start_batch and not training:
        raise ValueError("start_batch is for training batches; evaluation reads every example once from the start")
    # The counter of each element seeds its augmentation: skipping after enumerate keeps both streams aligned.
    indices = indices.enumerate().skip(start_batch * batch)
    def pair(counter, index):
        return load(index, counter), tf.gather(labels, index)

    if batchable:  # one gather per batch instead of B calls of `load`: 9–18× the images/s (bench_training.py)
        dataset = indices.batch(batch, drop_remainder=training).map(pair, num_parallel_calls=num_parallel_calls)
    else:
        dataset = indices.map(pair, num_parallel_calls=num_parallel_calls).batch(batch, drop_remainder=training)
    return dataset.prefetch(tf.data.AUTOTUNE)
