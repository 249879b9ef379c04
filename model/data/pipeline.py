"""tf.data pipelines: a Split -> batches of (images float32 [B, H, W, C] in [0, 255], labels int32 [B]).

    train = make_dataset(split, image_size=(256, 128), channels=3, training=True,
                         classes_per_batch=18, images_per_class=4, augment={"flip": True})
    evaluation = make_dataset(split, image_size=28, channels=1, training=False)

Training (`training=True`) reads an endless stream of example indices (`model.data.sampling`:
shuffled epochs or P×K batches, seeded) mapped in parallel to decoded, resized and augmented images
(`model.data.augment`); in-memory images that need none of that are gathered a whole batch at a time.
Evaluation (`training=False`) makes one pass in split order, the last partial batch kept, so that
embeddings line up with `split.labels`, with no augmentation.
"""
import dataclasses

import numpy as np
import tensorflow as tf

from model.data.augment import Augmentation, check_augment, image_loader, size_pair
from model.data.sampling import steps_per_epoch, training_indices
from model.registry import DICT, INT, LIST, NONE, Option, OptionError, is_integer

DEFAULT_EVAL_BATCH_SIZE = 256


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
        augment: training only: {"flip": bool, "resize": [h, w] or None, "shift": pixels, "erase": ...}: resize
            to the larger [h, w], pad each side with `shift` zero pixels, crop a random image_size window
            (a random scale and translation), then a random horizontal flip, then random erasing
            (`model.data.augment.check_erasing`).
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
    size = size_pair(image_size, "image_size")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels!r}")
    if len(split) == 0:
        raise ValueError("cannot make a dataset from an empty split")
    if training:
        augmentation = check_augment(augment, size)
        batch, indices = training_indices(split, batch_size, classes_per_batch, images_per_class, seed,
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
    load, batchable = image_loader(split, size, channels, augmentation, seed)
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



@dataclasses.dataclass(frozen=True)
class TrainingBatches:
    """The endless training batches of a split as `make_dataset(training=True)` makes them: shuffled batches of
    `batch_size`, or P×K batches (of `groups` when given), augmented, seeded.

        batches = TrainingBatches(image_size=28, channels=1, classes_per_batch=10, images_per_class=8, seed=1)
        dataset = batches.dataset(split, start_step=0)
    """

    image_size: object
    channels: int
    batch_size: int | None = None
    classes_per_batch: int | None = None
    images_per_class: int | None = None
    augment: dict | None = None
    seed: int = 0
    num_parallel_calls: int | None = None
    groups: list | None = None

    @property
    def size(self):
        """Images per batch."""
        return self.classes_per_batch * self.images_per_class if self.classes_per_batch else self.batch_size

    def dataset(self, split, start_step=0):
        """The batches of `split` from batch `start_step` of the seeded stream on."""
        return make_dataset(split, image_size=self.image_size, channels=self.channels, training=True,
                            batch_size=None if self.classes_per_batch else self.batch_size,
                            classes_per_batch=self.classes_per_batch, images_per_class=self.images_per_class,
                            augment=self.augment or None, seed=self.seed,
                            num_parallel_calls=self.num_parallel_calls or tf.data.AUTOTUNE, start_batch=start_step,
                            groups=self.groups)

    def share(self, replicas):
        """One replica's share of each batch: P / replicas whole classes, or batch_size / replicas images."""
        if self.classes_per_batch is not None:
            return dataclasses.replace(self, classes_per_batch=self.classes_per_batch // replicas)
        return dataclasses.replace(self, batch_size=max(1, self.batch_size // replicas))

    def reseeded(self, worker):
        """The same batches with a stream of worker `worker`'s own (seed + 7919 · worker)."""
        return dataclasses.replace(self, seed=self.seed + 7919 * worker)


def _check_image_size(value):
    if isinstance(value, list) and (len(value) != 2 or not all(is_integer(v) and v > 0 for v in value)):
        raise OptionError("image_size", value, "an integer or a list [height, width] of two positive integers")
    if isinstance(value, int) and value <= 0:
        raise OptionError("image_size", value, "a positive integer")


def _check_channels(value):
    if value not in (1, 3):
        raise OptionError("channels", value, "1 or 3")


def _p_and_k_together(values, chosen):
    if (values["classes_per_batch"] is None) != (values["images_per_class"] is None):
        return (f'"classes_per_batch" (P) and "images_per_class" (K) go together; got P={values["classes_per_batch"]}, '
                f'K={values["images_per_class"]}')
    return None


IMAGE_SIZE = Option("image_size", (INT, LIST, NONE), None, "input size, int or [h, w]; null = the dataset's own size",
                    check=_check_image_size)
CHANNELS = Option("channels", (INT, NONE), None,
                  "1 or 3 input channels; null = the dataset's own (3 for trinet/netvlad)", check=_check_channels)
NUM_PARALLEL_CALLS = Option("num_parallel_calls", (INT, NONE), None,
                            "parallel decoding calls; null = tf.data AUTOTUNE", positive=True)
BATCH_SIZE = Option("batch_size", (INT,), 64, "images per batch when P and K are not set", positive=True)
CLASSES_PER_BATCH = Option("classes_per_batch", (INT, NONE), None, "P of P×K batches", positive=True)
IMAGES_PER_CLASS = Option("images_per_class", (INT, NONE), None, "K of P×K batches", positive=True)
AUGMENT = Option("augment", (DICT,), {}, 'training augmentation: {"flip": true, "resize": [288, 144], "shift": 2, '
                 '"erase": {"probability": 0.5, "area": [0.02, 0.4], "aspect": [0.3, 3.3]} or true}',
                 check=check_augment)
RULES = (_p_and_k_together,)
