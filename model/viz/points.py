"""The points a picture shows: an even sample across classes, and their images."""

import numpy as np

from model.data.pipeline import make_dataset


def sample_evenly(labels, max_points, seed=0):
    """Indices of at most `max_points` items, spread as evenly as possible across labels.

    Each label gets floor or ceil of max_points / (number of labels) items, or all of its items when
    it has fewer (the others then get more): items are drawn in rounds, one per label per round, in
    a random order fixed by `seed`.

    Args:
        labels: `[N]` labels (any comparable values; one label = plain random sampling).
        max_points: positive int.
        seed: int.

    Returns:
        int64 `[min(N, max_points)]` indices, sorted.
    """
    if not isinstance(max_points, (int, np.integer)) or max_points < 1:
        raise ValueError(f"max_points must be a positive integer, got {max_points!r}")
    labels = np.asarray(labels)
    if len(labels) <= max_points:
        return np.arange(len(labels), dtype=np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))  # [N]
    _, label_index = np.unique(labels[order], return_inverse=True)
    label_index = label_index.reshape(-1)
    # Round of each item: how many items of its label come before it in `order`.
    counts = np.zeros(label_index.max() + 1, dtype=np.int64)
    rounds = np.empty(len(order), dtype=np.int64)
    for position, label in enumerate(label_index):
        rounds[position] = counts[label]
        counts[label] += 1
    chosen = order[np.argsort(rounds, kind="stable")[:max_points]]
    return np.sort(chosen).astype(np.int64)

def load_images(split, indices, image_size, channels):
    """uint8 `[len(indices), h, w, channels]` images of `split` at `indices`, resized to `image_size`."""
    dataset = make_dataset(split.take(indices), image_size=image_size, channels=channels, training=False)
    batches = [np.asarray(images) for images, _ in dataset]
    return np.clip(np.rint(np.concatenate(batches)), 0, 255).astype(np.uint8)

