"""Which examples make each training batch: an endless, seeded stream of example indices.

  * shuffled epochs, cut into batches of `batch_size` (the classic MNIST recipe), or
  * P×K batches (Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification",
    2017): P distinct classes × K images each, so that every anchor of a batch has K-1 positives
    and (P-1)·K negatives for the in-batch miners. Classes are visited in a fresh random order
    each class-epoch; the last group of an epoch is completed with other classes so that every
    group holds P distinct classes. Within a class the K images are the first K of a random
    permutation of its images, cycled when the class has fewer than K, so a small class repeats
    each image floor(K/n) or ceil(K/n) times (sampling with replacement, evenly spread).
    With `groups` (lists of example indices that may overlap, e.g. GPS places: a query and the
    database images near it) the groups take the place of the classes.

All randomness comes from stateless random ops keyed by (seed, stream, counter): the same seed gives
the same batches in every run, whatever the parallelism or TensorFlow's global seed.
`check_trainable` tells, before training, when such batches can never hold a valid pair or triplet.
"""
import logging
import math

import numpy as np
import tensorflow as tf

# Independent random streams derived from the user's seed.
_ORDER_STREAM, _PICK_STREAM, AUGMENT_STREAM, ERASE_STREAM = 0, 1, 2, 3

logger = logging.getLogger(__name__)


def random_key(seed, stream, counter):
    """Stateless random key [2] for element/step `counter` of random stream `stream`."""
    base = tf.constant([seed, stream], dtype=tf.int64)
    return tf.random.experimental.stateless_fold_in(base, tf.cast(counter, tf.int64))


def steps_per_epoch(split, batch_size):
    """Batches that cover the split once: ceil(N / batch_size)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    return math.ceil(len(split) / batch_size)


def _shuffled_indices(num_examples, seed):
    """Endless int64 stream of example indices: each epoch a new random permutation of 0..N-1."""
    def epoch(number):
        order = tf.random.experimental.stateless_shuffle(tf.range(num_examples, dtype=tf.int64),
                                                         seed=random_key(seed, _ORDER_STREAM, number))
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
        key = random_key(seed, _ORDER_STREAM, number)
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
            tf.shape(row), seed=random_key(seed, _PICK_STREAM, step), dtype=tf.float64)
        shuffled = tf.gather(flat, tf.argsort(keys))  # [T]
        slots = first[:, None] + tf.range(per_class)[None, :] % sizes[:, None]  # [P, K], cycles small classes
        return tf.reshape(tf.gather(members, tf.gather(shuffled, slots)), [-1])  # [P*K]

    steps = tf.data.Dataset.counter()
    groups = _class_groups(len(counts), per_batch, seed)
    return tf.data.Dataset.zip(steps, groups).map(pick, num_parallel_calls=num_parallel_calls).unbatch()


def training_indices(split, batch_size, per_batch, per_class, seed, num_parallel_calls, groups):
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



def check_trainable(labels, *, classes_per_batch=None, images_per_class=None, batch_size=None, in_batch=True,
                    loss="the loss", split="the training split"):
    """The reasons why training batches of `labels` can never hold a valid pair or triplet; each one logged.

    In-batch losses need, in one batch, two images of a class (a positive pair) and an image of
    another class (a negative); proxy and classification losses need only the classes. Checked: fewer
    than two images or two classes in the split, P×K batches with K = 1 (no positive) or P = 1 (no
    negative), batches of one image, and classes that all have a single image (the only positive
    of an image is then itself, repeated by P×K sampling).

    Args:
        labels: int [N] labels of the training split actually used; negative labels (unknown place) are
            no class.
        classes_per_batch, images_per_class: P and K of P×K batches, or None; batch_size: of shuffled batches.
        in_batch: the loss mines pairs or triplets inside the batch (`EmbeddingLoss.mines_in_batch`).
        loss, split: how the messages name the loss and the split.

    Returns:
        list of str, the problems found (empty when training can form pairs and triplets).
    """
    labels = np.asarray(labels).reshape(-1)
    counts = np.unique(labels[labels >= 0], return_counts=True)[1]
    problems = []
    if len(labels) < 2:
        problems.append(f"{split} has {len(labels)} image(s): no pair")
    if len(counts) < 2:
        problems.append(f"{split} has {len(counts)} class(es): no negative, the loss is 0 at every step")
    if classes_per_batch == 1:
        problems.append("classes_per_batch (P) = 1: a batch holds one class, so no negative")
    if in_batch and images_per_class == 1:
        problems.append(f"images_per_class (K) = 1: a batch holds one image per class, so {loss} finds no "
                        "positive pair; use K >= 2")
    if in_batch and classes_per_batch is None and batch_size == 1:
        problems.append("batch_size = 1: a batch of one image holds no pair")
    if in_batch and len(counts) and counts.max() < 2:
        problems.append("every class has a single image: the only positive of an image is itself")
    for problem in problems:
        logger.warning("no valid pair or triplet can be formed: %s", problem)
    return problems
