"""Embedding images with a network: the one loop over batches, for splits, folders and any batches.

    embeddings, labels = embed(network, dataset)                          # (images, labels) batches
    embeddings = embed_split(network, split, image_size=28, channels=1, flip=False)
    embeddings, paths = embed_folder(network, "queries/", image_size=28, channels=1)

Flip test-time augmentation (`flip=True`, the re-ID custom of Hermans et al. 2017) embeds every image
and its horizontal mirror and uses the mean of the two embeddings.
"""
import os

import numpy as np
import tensorflow as tf

from model.data.images import find_images
from model.data.pipeline import make_dataset
from model.data.splits import Split
from model.progress import progress_bar


def embed(model, batches, verbose=True):
    """Embed finite batches with a model, showing a progress bar over the batches.

    Args:
        model: a callable mapping a batch of images to embeddings `[B, E]` (a Keras model, called with
            `training=False`, or any function of the images).
        batches: a finite iterable of `(images, labels)` pairs, e.g. a tf.data.Dataset; `labels` is any
            per-item array `[B]` (class ids, person ids, file paths...) and is returned untouched.
        verbose: show a progress bar over the batches.

    Returns:
        (embeddings, labels): `embeddings: [N, E]` float32, `labels: [N]` numpy array.

    Raises:
        ValueError: for an infinite or empty dataset, elements that are not `(images, labels)`
            pairs, or a model output that is not `[B, E]`.
    """
    total = None
    if isinstance(batches, tf.data.Dataset):
        cardinality = int(batches.cardinality())
        if cardinality == -1:  # tf.data.INFINITE_CARDINALITY
            raise ValueError("embed: the dataset repeats forever; pass a finite dataset (without .repeat())")
        total = cardinality if cardinality >= 0 else None
    elif hasattr(batches, "__len__"):
        total = len(batches)
    call = (lambda images: model(images, training=False)) if hasattr(model, "trainable_weights") else model
    progress = progress_bar(total, "batch", verbose)
    embeddings, labels = [], []
    for element in batches:
        if not (isinstance(element, tuple) and len(element) == 2):
            raise ValueError(f"embed: dataset elements must be (images, labels) pairs, got {type(element)} "
                             f"of length {len(element) if isinstance(element, tuple) else 1}")
        images, batch_labels = element
        # A plain call, not predict_on_batch: under tf.distribute the latter returns every replica's copy.
        batch = np.asarray(call(images), dtype=np.float32)  # [B, E]
        if batch.ndim != 2 or len(batch) != len(batch_labels):
            raise ValueError(f"embed: the model must return embeddings [B, E] for a batch of "
                             f"{len(batch_labels)} items, got shape {batch.shape}")
        embeddings.append(batch)
        labels.append(np.asarray(batch_labels))
        progress.update(len(embeddings), finalize=False)  # finalized once below, target known or not
    if not embeddings:
        raise ValueError("embed: the dataset is empty")
    progress.update(len(embeddings), finalize=True)
    return np.concatenate(embeddings), np.concatenate(labels)


def embed_split(network, split, *, image_size, channels, flip=False, verbose=True):
    """Embeddings `[N, E]` of a Split, in order (evaluation batches of `make_dataset`); with `flip`, the mean of
    each image's and its mirror's."""
    dataset = make_dataset(split, image_size=image_size, channels=channels, training=False)
    embeddings, _ = embed(network, dataset, verbose)
    if flip:
        mirrored = dataset.map(lambda images, labels: (tf.image.flip_left_right(images), labels))
        embeddings = (embeddings + embed(network, mirrored, verbose)[0]) / 2
    return embeddings


def folder_split(folder, report=None, split=""):
    """The images under `folder` (searched recursively, `model.data.images.find_images`) as a Split with
    their paths relative to `folder` as names; what is left out goes into `report` as `split`."""
    paths = find_images(folder, report, split)
    return Split(labels=np.zeros(len(paths)), paths=[os.path.join(folder, path) for path in paths], names=paths)


def embed_folder(network, folder, *, image_size, channels, flip=False, verbose=True, report=None, split=""):
    """(embeddings `[N, E]`, relative paths `[N]`) of the images under `folder` (`folder_split`)."""
    images = folder_split(folder, report, split)
    return embed_split(network, images, image_size=image_size, channels=channels, flip=flip,
                       verbose=verbose), images.names
