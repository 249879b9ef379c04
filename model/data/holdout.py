"""The validation hold-out of each kind of dataset: what part of the train split is held out, seeded.

  hold_out             labelled data: random train images
  hold_out_identities  re-ID: whole train identities, as a small query/gallery
  hold_out_queries     places: train queries, searched in the whole train database

Each returns (train, validation) Splits; `validation_size` is a count, or a fraction if below 1.
"""
import dataclasses

import numpy as np


def hold_out_count(size, total, what):
    """How many of `total` items (examples, queries, identities) `validation_size` = `size` holds out.

    `size` is a count (int, or a float with an integral value) or a fraction 0 < size < 1 of `total`,
    rounded to the nearest count (at least 1); ValueError naming validation_size unless 1 <= count < total.
    """
    count = max(1, round(size * total)) if 0 < size < 1 else size
    if float(count) != int(count) or not 0 < count < total:
        raise ValueError(f"validation_size must be a fraction between 0 and 1 or a count between 1 and "
                         f"{total - 1} (the train split has {total} {what}), got {size}")
    return int(count)


def hold_out(split, size, seed):
    """Split off `size` examples of `split`, chosen at random with `seed`, as a validation split.

    Both parts keep the original order of their examples, so the hold-out is the same in every run
    with the same seed. Validation measures each held-out image against the others (leave-one-out), so an
    image alone of its class there cannot be measured: when the first `count` images of the seeded
    permutation leave a class with a single image, the images are taken along the permutation in pairs of a
    class instead (`_paired`), still `count` of them, so that no held-out class has a single image where
    the count and the classes allow it. Where the first `count` images leave no class alone, they are the
    hold-out, as before.

    Args:
        split: the Split to divide.
        size: a count (int, or a float with an integral value), or a fraction 0 < size < 1 of
            len(split), rounded to the nearest count (at least 1).
        seed: int.

    Returns:
        (train, validation) Splits of len(split) - count and count examples.
    """
    count = hold_out_count(size, len(split), "examples")
    order = np.random.default_rng(seed).permutation(len(split))
    chosen = order[:count]
    _, per_class = np.unique(split.labels[chosen], return_counts=True)
    if (per_class == 1).any():
        chosen = _paired(order, np.asarray(split.labels), count)
    is_validation = np.zeros(len(split), dtype=bool)
    is_validation[chosen] = True
    return split.take(np.flatnonzero(~is_validation)), split.take(np.flatnonzero(is_validation))


def _paired(order, labels, count):
    """`count` indices taken along `order` so that each class taken has at least two (a class's second image
    brings its first along) and keeps at least one in train; the first `count` of `order` when that cannot
    make `count` (too few images in classes of three or more)."""
    total = dict(zip(*np.unique(labels, return_counts=True), strict=True))
    taken, per_class, waiting = [], {}, {}
    for index in order:
        label = labels[index]
        if total[label] < 3 or per_class.get(label, 0) + 1 >= total[label]:  # the class keeps an image in train
            continue
        if label in per_class:
            taken.append(index)
            per_class[label] += 1
        elif label in waiting and len(taken) + 2 <= count:  # the second image: both go
            taken += [waiting.pop(label), index]
            per_class[label] = 2
        elif label not in waiting:
            waiting[label] = index
        if len(taken) == count:
            return np.array(taken)
    return order[:count]


def hold_out_identities(split, size, seed):
    """Whole train identities (`size`: a count, or a fraction of the identities), as a small query/gallery:
    the first image of each held-out identity and camera (of each identity without cameras) is a query,
    the others are the gallery (`is_query`)."""
    identities = np.unique(split.labels)
    count = hold_out_count(size, len(identities), "identities")
    chosen = identities[np.random.default_rng(seed).permutation(len(identities))[:count]]
    held = np.isin(split.labels, chosen)
    validation = split.take(np.flatnonzero(held))
    keys = validation.labels[:, None] if validation.camids is None else np.stack(
        [validation.labels, validation.camids], axis=1)
    is_query = np.zeros(len(validation), dtype=bool)
    is_query[np.unique(keys, axis=0, return_index=True)[1]] = True
    return split.take(np.flatnonzero(~held)), dataclasses.replace(validation, is_query=is_query)


def hold_out_queries(split, size, seed):
    """Train queries (`size`: a count, or a fraction of the queries) with the whole train database:
    validation = the held-out queries and every database image (`is_query` tells them apart); train
    keeps the database and the other queries."""
    queries = np.flatnonzero(split.is_query)
    count = hold_out_count(size, len(queries), "queries")
    held = np.zeros(len(split), dtype=bool)
    held[queries[np.random.default_rng(seed).permutation(len(queries))[:count]]] = True
    return split.take(np.flatnonzero(~held)), split.take(np.flatnonzero(held | ~split.is_query))
