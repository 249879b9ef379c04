"""TensorBoard projector files of a set of embeddings (what `visualize_embeddings.py` writes to RUN/projector/).

    write_projector("RUN/projector", embeddings, labels, names, thumbnails, description)

writes into one folder, which TensorBoard finds under `--logdir RUN` (Projector tab, where T-SNE,
PCA and UMAP run in the browser):
    embedding-1.*           the embeddings `[N, E]` as a variable of a TF2 checkpoint, named after what they are
                            (e.g. "digits_test": the run and the split; `tensor_name`)
    metadata.tsv            a header row, then the label and class name of each point
    sprite.png              the thumbnails in a square grid, row by row (grayscale or RGB)
    projector_config.pbtxt  names the tensor, the metadata and the sprite with its thumbnail size
    events.out.tfevents.*   a one-line text summary: it makes the folder a TensorBoard run, so the
                            projector finds it under `--logdir RUN` (the plugin reads
                            projector_config.pbtxt in the logdir and in each run folder)
"""
import math
import os
import re

import keras
import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorboard.plugins import projector

from model.atomic import atomic_file, write_text

MAX_POINTS = 10_000  # the sprite's practical limit: 100 × 100 thumbnails
MAX_SPRITE_SIDE = 8192  # pixels; the projector (WebGL texture) does not load larger sprites


def thumbnail_size(image_size, num_images):
    """(h, w) of the sprite's thumbnails: the image size, shrunk (aspect kept) so that a square grid
    of ceil(sqrt(num_images)) thumbnails per side stays within MAX_SPRITE_SIDE pixels."""
    height, width = image_size
    per_side = math.ceil(math.sqrt(num_images))
    scale = min(1.0, MAX_SPRITE_SIDE / (per_side * max(height, width)))
    return max(1, int(height * scale)), max(1, int(width * scale))


def make_sprite(thumbnails):
    """Thumbnails in a square grid, row by row, the unused cells black.

    Args:
        thumbnails: uint8 `[N, h, w, C]`, C = 1 or 3.

    Returns:
        uint8 `[S·h, S·w, C]` with S = ceil(sqrt(N)).
    """
    count, height, width, channels = thumbnails.shape
    per_side = math.ceil(math.sqrt(count))
    grid = np.zeros((per_side * per_side, height, width, channels), dtype=np.uint8)
    grid[:count] = thumbnails
    grid = grid.reshape(per_side, per_side, height, width, channels).transpose(0, 2, 1, 3, 4)
    return grid.reshape(per_side * height, per_side * width, channels)


def _tsv_cell(text):
    return str(text).replace("\t", " ").replace("\n", " ")


def tensor_name(name):
    """The checkpoint key (what the projector lists) of embeddings named `name`: `<name>/.ATTRIBUTES/VARIABLE_VALUE`,
    `name` made a checkpoint attribute (letters, digits and underscores)."""
    return f"{re.sub(r'[^0-9A-Za-z_]', '_', name)}/.ATTRIBUTES/VARIABLE_VALUE"


def write_projector(logdir, embeddings, labels, names, thumbnails=None, description="", name="embedding"):
    """Write the TensorBoard projector files of `embeddings` into `logdir` (created if missing).

    Args:
        logdir: folder of the projector files (a TensorBoard run folder).
        embeddings: float32 `[N, E]`.
        labels: `[N]` labels; names: `[N]` class names (the two metadata columns).
        thumbnails: uint8 `[N, h, w, C]` or None (no sprite).
        description: text of the run's summary, shown in TensorBoard's Text tab.
        name: what the embeddings are (e.g. "digits_test"), the tensor's name in the projector (`tensor_name`).

    Returns:
        path of projector_config.pbtxt.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or not len(embeddings) == len(labels) == len(names):
        raise ValueError(f"write_projector: embeddings must be [N, E] with N labels and names, got "
                         f"{embeddings.shape}, {len(labels)} labels, {len(names)} names")
    os.makedirs(logdir, exist_ok=True)
    key = tensor_name(name)
    checkpoint = tf.train.Checkpoint(**{key.split("/")[0]: tf.Variable(embeddings, name="embedding")})
    # The manager writes the `checkpoint` state file the projector looks for and deletes older exports.
    tf.train.CheckpointManager(checkpoint, logdir, max_to_keep=1, checkpoint_name="embedding").save()
    rows = ["label\tclass"] + [f"{_tsv_cell(label)}\t{_tsv_cell(name)}" for label, name in zip(labels, names,
                                                                                                  strict=True)]
    write_text(os.path.join(logdir, "metadata.tsv"), "\n".join(rows) + "\n")
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = key
    embedding.metadata_path = "metadata.tsv"  # paths are relative to the config's folder
    if thumbnails is not None:
        sprite = make_sprite(thumbnails)
        with atomic_file(os.path.join(logdir, "sprite.png")) as temporary:
            keras.utils.save_img(temporary, sprite, scale=False)
        embedding.sprite.image_path = "sprite.png"
        embedding.sprite.single_image_dim.extend([thumbnails.shape[2], thumbnails.shape[1]])  # width, height
    # What projector.visualize_embeddings writes, written atomically like every file of a run.
    write_text(os.path.join(logdir, projector.metadata.PROJECTOR_FILENAME), text_format.MessageToString(config))
    with tf.summary.create_file_writer(logdir).as_default():
        tf.summary.text("projector", description or f"{len(embeddings)} embeddings", step=0)
    return os.path.join(logdir, projector.metadata.PROJECTOR_FILENAME)
