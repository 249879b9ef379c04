"""A cross-batch memory: mining against the embeddings of earlier batches (XBM).

Wang, Zhang, Huang and Scott, "Cross-Batch Memory for Embedding Learning", CVPR 2020: embeddings
drift slowly once training has warmed up, so the embeddings of the last S images, kept without
gradient, are nearly as good as fresh ones and give every anchor far more positives and negatives
than its batch holds. Each step:

    ref_labels, ref_embeddings = memory.references(labels, embeddings)   # batch first, then the memory
    loss, stats = loss.compute(labels, embeddings, ref_labels, ref_embeddings)
    memory.enqueue(labels, embeddings)                                    # first in, first out

`references` gives the batch alone during the first `warmup_steps` steps (the memory fills but is not
used, as in the paper), then the batch followed by the filled part of the memory. The batch comes
first so that the losses' `remove_diagonal` (reference row i is anchor i) holds; a memory copy of an
anchor is a real positive. Shapes: `embeddings: [B, E]`, `labels: [B]`, the memory `[S, E]` and `[S]`.

The memory is a Keras layer of non-trainable variables: a model that holds it as an attribute saves
it in its checkpoints (a resumed run restores it), and under tf.distribute every replica keeps the
same copy (`only_first_replica` aggregation: with global mining all replicas enqueue the same
gathered batch). It computes in float32 whatever the dtype policy.
"""

import keras
from keras import ops

from model.registry import DICT, KERAS_PACKAGE, NONE, Option, OptionError, check_object, is_integer


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class CrossBatchMemory(keras.layers.Layer):
    """A first-in-first-out queue of the last `size` embeddings and labels (see the module docstring).

    Args:
        size: S, the number of embeddings kept.
        embedding_size: E.
        warmup_steps: W, steps during which the memory fills but `references` gives the batch alone.
    """

    def __init__(self, size, embedding_size, warmup_steps=0, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(trainable=False, **kwargs)
        for name, value, least in (("size", size, 1), ("embedding_size", embedding_size, 1),
                                   ("warmup_steps", warmup_steps, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ValueError(f"CrossBatchMemory {name} must be an integer >= {least}, got {value!r}")
        self.size, self.embedding_size, self.warmup_steps = size, embedding_size, warmup_steps
        shared = {"trainable": False, "aggregation": "only_first_replica"}
        self.memory_embeddings = self.add_weight(name="embeddings", shape=(size, embedding_size), initializer="zeros",
                                                 **shared)
        self.memory_labels = self.add_weight(name="labels", shape=(size,), initializer="zeros", dtype="int32",
                                             **shared)
        self.count = self.add_weight(name="count", shape=(), initializer="zeros", dtype="int32", **shared)  # rows held
        self.position = self.add_weight(name="position", shape=(), initializer="zeros", dtype="int32", **shared)
        self.steps = self.add_weight(name="steps", shape=(), initializer="zeros", dtype="int32", **shared)
        self.built = True

    def fill_fraction(self):
        """The fraction of the S rows that hold an embedding, a float32 scalar (logged as `memory_fill`)."""
        return ops.cast(self.count, "float32") / self.size

    def references(self, labels, embeddings):
        """(ref_labels [B + M], ref_embeddings [B + M, E]): the batch, then the M = filled rows of the memory
        (M = 0 during warm-up). The memory rows carry no gradient."""
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        embeddings = ops.cast(embeddings, "float32")
        used = ops.where(self.steps >= self.warmup_steps, self.count, 0)
        memory_labels = ops.slice(self.memory_labels, (0,), (used,))  # [M]
        memory = ops.stop_gradient(ops.slice(self.memory_embeddings, (0, 0), (used, self.embedding_size)))
        return ops.concatenate([labels, memory_labels]), ops.concatenate([embeddings, memory])

    def enqueue(self, labels, embeddings):
        """Write the batch into the memory over its oldest rows (a ring of S rows), count a step.

        A batch larger than the memory keeps its last S rows.
        """
        labels = ops.cast(ops.reshape(labels, (-1,)), "int32")
        embeddings = ops.stop_gradient(ops.cast(embeddings, "float32"))
        count = ops.shape(labels)[0]
        keep = ops.minimum(count, self.size)
        labels, embeddings = labels[count - keep :], embeddings[count - keep :]
        rows = ops.expand_dims((self.position + ops.arange(keep, dtype="int32")) % self.size, 1)  # [keep, 1]
        self.memory_labels.assign(ops.scatter_update(self.memory_labels, rows, labels))
        self.memory_embeddings.assign(ops.scatter_update(self.memory_embeddings, rows, embeddings))
        self.position.assign((self.position + keep) % self.size)
        self.count.assign(ops.minimum(self.count + keep, self.size))
        self.steps.assign(ops.minimum(self.steps + 1, 2**30))  # only steps < warmup_steps matters

    def call(self, inputs):
        raise TypeError("CrossBatchMemory is not called on inputs: use references(labels, embeddings) and "
                        "enqueue(labels, embeddings)")

    def get_config(self):
        return {**super().get_config(), "size": self.size, "embedding_size": self.embedding_size,
                "warmup_steps": self.warmup_steps}


def _check_memory(value):
    check_object("memory", value, ("size", "warmup_steps"),
                 'an object {"size": S, "warmup_steps": W} with exactly these two keys')
    for name, least in (("size", 1), ("warmup_steps", 0)):
        option = value[name]
        if not is_integer(option) or option < least:
            raise OptionError(f"memory.{name}", option, f"an integer >= {least}")


def _memory_needs_pairs(values, chosen):
    if values["memory"] is not None and not chosen["loss"].component.mines_in_batch:
        return (f'"memory" holds embeddings to mine against, but loss {values["loss"]!r} compares embeddings with '
                'learned proxies; drop "memory" or choose a pair or triplet loss')
    return None


MEMORY = Option("memory", (DICT, NONE), None,
                'cross-batch memory (XBM): {"size": S, "warmup_steps": W}; null = mine the batch only',
                check=_check_memory)
RULES = (_memory_needs_pairs,)
