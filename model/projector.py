"""Looking at embeddings: TensorBoard projector files, a t-SNE picture and a retrieval picture.

    visualize("experiments/base_model")   # what `python visualize_embeddings.py --model_dir RUN` does

embeds a split with the run's best network and writes, under the run folder RUN:
    projector/              TensorBoard projector files (`tensorboard --logdir RUN`, Projector tab,
                            where T-SNE, PCA and UMAP run in the browser):
        embedding-1.*       the embeddings `[N, E]` as the variable `embedding` of a TF2 checkpoint
        metadata.tsv        a header row, then the label and class name of each point
        sprite.png          the thumbnails in a square grid, row by row (grayscale or RGB)
        projector_config.pbtxt  names the tensor, the metadata and the sprite with its thumbnail size
        events.out.tfevents.*   a one-line text summary: it makes projector/ a TensorBoard run, so
                            the projector finds it under `--logdir RUN` (the plugin reads
                            projector_config.pbtxt in the logdir and in each run folder)
    tsne.png                the same points in 2-D (scikit-learn's Barnes-Hut t-SNE, van der
                            Maaten 2014), coloured by class
    retrieval.png           random queries and their nearest reference items, framed green when
                            relevant, red when not, grey when the data has no ground truth

The points are at most `max_points` images of the split, drawn evenly across classes. Retrieval
follows the protocol of the data: labelled datasets search the points themselves (leave-one-out,
relevant = same class); Market-1501 searches the gallery (relevant = same person id); places search
the database (relevant = within `positive_radius` metres, the Recall@N ground truth).
"""
import math
import os

import keras
import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from openTSNE import TSNE  # noqa: E402
from tensorboard.plugins import projector  # noqa: E402

import model.nets  # noqa: E402, F401  (registers the custom layers that load_model needs)
from model import evaluation, training  # noqa: E402
from model.data import make_dataset  # noqa: E402
from model.params import Params  # noqa: E402

MAX_POINTS = 10_000  # the sprite's practical limit: 100 × 100 thumbnails
MAX_SPRITE_SIDE = 8192  # pixels; the projector (WebGL texture) does not load larger sprites
TENSOR_NAME = "embedding/.ATTRIBUTES/VARIABLE_VALUE"  # key of the variable `embedding` in a TF2 checkpoint
LEGEND_MAX_CLASSES = 20  # more classes: one colour map and no legend
REFERENCE_SPLITS = {"reid": "gallery", "places": "database"}
COLOURS = {True: "#1a9641", False: "#d7191c", None: "#9e9e9e"}  # relevant, not relevant, unknown


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


def class_names_of(labels, class_names, raw_ids):
    """Display name of each label: its class name, or the raw id (re-ID person ids), "unknown" if < 0.

    Args:
        labels: `[N]` int labels.
        class_names: label -> name (the run's classes.json).
        raw_ids: the labels are raw ids (Market-1501 query/gallery person ids), not class indices.
    """
    names = []
    for label in np.asarray(labels).tolist():
        if label < 0:
            names.append("unknown")
        elif raw_ids or label >= len(class_names):
            names.append(str(label))
        else:
            names.append(str(class_names[label]))
    return names


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


def write_projector(logdir, embeddings, labels, names, thumbnails=None, description=""):
    """Write the TensorBoard projector files of `embeddings` into `logdir` (created if missing).

    Args:
        logdir: folder of the projector files (a TensorBoard run folder).
        embeddings: float32 `[N, E]`.
        labels: `[N]` labels; names: `[N]` class names (the two metadata columns).
        thumbnails: uint8 `[N, h, w, C]` or None (no sprite).
        description: text of the run's summary, shown in TensorBoard's Text tab.

    Returns:
        path of projector_config.pbtxt.
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or not len(embeddings) == len(labels) == len(names):
        raise ValueError(f"write_projector: embeddings must be [N, E] with N labels and names, got "
                         f"{embeddings.shape}, {len(labels)} labels, {len(names)} names")
    os.makedirs(logdir, exist_ok=True)
    checkpoint = tf.train.Checkpoint(embedding=tf.Variable(embeddings, name="embedding"))
    # The manager writes the `checkpoint` state file the projector looks for and deletes older exports.
    tf.train.CheckpointManager(checkpoint, logdir, max_to_keep=1, checkpoint_name="embedding").save()
    rows = ["label\tclass"] + [f"{_tsv_cell(label)}\t{_tsv_cell(name)}" for label, name in zip(labels, names,
                                                                                                  strict=True)]
    with open(os.path.join(logdir, "metadata.tsv"), "w") as handle:
        handle.write("\n".join(rows) + "\n")
    config = projector.ProjectorConfig()
    embedding = config.embeddings.add()
    embedding.tensor_name = TENSOR_NAME
    embedding.metadata_path = "metadata.tsv"  # paths are relative to the config's folder
    if thumbnails is not None:
        sprite = make_sprite(thumbnails)
        keras.utils.save_img(os.path.join(logdir, "sprite.png"), sprite, scale=False)
        embedding.sprite.image_path = "sprite.png"
        embedding.sprite.single_image_dim.extend([thumbnails.shape[2], thumbnails.shape[1]])  # width, height
    projector.visualize_embeddings(logdir, config)
    with tf.summary.create_file_writer(logdir).as_default():
        tf.summary.text("projector", description or f"{len(embeddings)} embeddings", step=0)
    return os.path.join(logdir, projector.metadata.PROJECTOR_FILENAME)


def tsne(embeddings, seed=0, verbose=True):
    """2-D t-SNE of `embeddings` `[N, E]` -> `[N, 2]` (openTSNE; van der Maaten and Hinton 2008,
    "Visualizing Data using t-SNE"). Perplexity 30, or (N - 1) / 3 for small N.

    openTSNE rather than scikit-learn's TSNE: at 10,000 points on 2 cores it took 22.9 s against
    107.3 s for scikit-learn, measured side by side (the README's measured results).
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if len(embeddings) < 2:
        raise ValueError(f"t-SNE needs at least 2 points, got {len(embeddings)}")
    perplexity = min(30.0, (len(embeddings) - 1) / 3)
    model = TSNE(n_components=2, perplexity=perplexity, initialization="pca", random_state=seed, n_jobs=-1,
                 verbose=bool(verbose))
    return np.asarray(model.fit(embeddings), dtype=np.float32)


def plot_tsne(points, labels, names, path, title=""):
    """Scatter plot of 2-D `points` `[N, 2]`, coloured by label, saved as a PNG at `path`.

    Up to LEGEND_MAX_CLASSES classes get distinct colours and a legend of class `names` `[N]`; more
    classes share a continuous colour map and no legend; points without a class (label < 0) are grey.
    """
    labels = np.asarray(labels)
    classes = np.unique(labels[labels >= 0])
    figure, axes = plt.subplots(figsize=(9, 7.5) if len(classes) <= LEGEND_MAX_CLASSES else (8, 8))
    size = float(np.clip(6000 / len(points), 2, 30))
    unknown = labels < 0
    if unknown.any():
        axes.scatter(*points[unknown].T, s=size, c=COLOURS[None], linewidths=0, label="unknown")
    if len(classes) <= LEGEND_MAX_CLASSES:
        colours = plt.get_cmap("tab10" if len(classes) <= 10 else "tab20").colors
        name_of = dict(zip(labels.tolist(), names, strict=True))
        for number, label in enumerate(classes):
            chosen = labels == label
            axes.scatter(*points[chosen].T, s=size, color=colours[number], linewidths=0, label=name_of[label])
        axes.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, title="class",
                    markerscale=max(1.0, 6 / math.sqrt(size)))
    else:
        # Classes spread over the colour map in a shuffled order, so that neighbouring labels differ.
        rank = np.searchsorted(classes, labels[~unknown])
        hue = np.random.default_rng(0).permutation(len(classes))[rank] / max(len(classes) - 1, 1)
        axes.scatter(*points[~unknown].T, s=size, c=hue, cmap="turbo", linewidths=0)
        axes.set_title(f"{len(classes)} classes (one colour each, no legend)", fontsize=10, loc="right")
    axes.set_xticks([])
    axes.set_yticks([])
    figure.suptitle(title or f"t-SNE of {len(points)} embeddings")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def plot_retrieval(query_images, neighbour_images, distances, relevant, path, query_names=None):
    """Each query (a row) followed by its nearest neighbours, framed by relevance, saved as a PNG.

    Args:
        query_images: uint8 `[Q, h, w, C]`; neighbour_images: uint8 `[Q, k, h, w, C]`.
        distances: `[Q, k]` distances of the neighbours, printed above them.
        relevant: bool `[Q, k]` (green / red frames) or None (no ground truth: grey frames).
        path: the PNG file.
        query_names: `[Q]` captions of the queries (e.g. their class), or None.
    """
    count, k = distances.shape
    height, width = query_images.shape[1:3]
    cell = 1.6  # inches per image along its longer side
    aspect = width / height
    figure, axes = plt.subplots(count, k + 1, squeeze=False,
                                figsize=((k + 1) * cell * min(1.0, aspect) + 0.4,
                                         count * (cell / max(1.0, aspect) + 0.35)))
    for row in range(count):
        images = [query_images[row], *neighbour_images[row]]
        for column, image in enumerate(images):
            axis = axes[row, column]
            gray = image.shape[-1] == 1
            axis.imshow(image[..., 0] if gray else image, cmap="gray" if gray else None, vmin=0, vmax=255,
                        interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                caption, colour, width_pt = "query", "black", 3
                if query_names is not None:
                    caption = f"query: {query_names[row]}"
            else:
                caption = f"{distances[row, column - 1]:.3g}"
                colour = COLOURS[None if relevant is None else bool(relevant[row, column - 1])]
                width_pt = 5
            axis.set_title(caption, fontsize=9)
            for spine in axis.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(width_pt)
    legend = "frame: green = relevant, red = not relevant" if relevant is not None else "no ground truth"
    figure.suptitle(f"nearest neighbours (distance above each image); {legend}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def load_images(split, indices, image_size, channels):
    """uint8 `[len(indices), h, w, channels]` images of `split` at `indices`, resized to `image_size`."""
    dataset = make_dataset(split.take(indices), image_size=image_size, channels=channels, training=False)
    batches = [np.asarray(images) for images, _ in dataset]
    return np.clip(np.rint(np.concatenate(batches)), 0, 255).astype(np.uint8)


def load_run(model_dir):
    """(params, data source, best network) of a trained run folder."""
    network_path = os.path.join(model_dir, "checkpoints", "best.keras")
    params_path = os.path.join(model_dir, "effective_params.json")
    for path in (params_path, network_path):
        if not os.path.exists(path):
            raise FileNotFoundError(f"{model_dir} is not a trained run: {path} is missing "
                                    "(train it first with train.py)")
    params = Params.load(params_path)
    return params, training.load_data(params, model_dir), keras.models.load_model(network_path)


def _relevance(params, source, query_split, query_rows, reference_split, neighbours, protocol):
    """bool `[Q, k]` relevance of the neighbours, or None without ground truth."""
    if protocol == "places" and query_split.utm is not None and reference_split.utm is not None:
        offsets = query_split.utm[query_rows][:, None, :] - reference_split.utm[neighbours]  # [Q, k, 2]
        return np.linalg.norm(offsets, axis=-1) <= params.positive_radius
    query_labels = query_split.labels[query_rows]
    if (query_labels < 0).all():
        return None
    return query_labels[:, None] == reference_split.labels[neighbours]


def _neighbours(query, query_rows, reference, k):
    """(distances, indices) `[Q, k]` of the k nearest reference items of each query `[Q, E]`; with
    `query_rows` (the queries' rows in the reference) each query's own row is left out."""
    if query_rows is None:
        return evaluation.knn(query, reference, k)
    distances, indices = evaluation.knn(query, reference, k + 1)  # [Q, k + 1]
    # A query's own row is at distance 0, usually first; with duplicates it may be elsewhere in the row.
    own = indices == np.asarray(query_rows)[:, None]
    own[~own.any(axis=1), -1] = True  # not found among the k + 1: drop the farthest instead
    keep = ~own  # one column less per row
    shape = (len(query), indices.shape[1] - 1)
    return distances[keep].reshape(shape), indices[keep].reshape(shape)


def _embed(network, split, params):
    dataset = make_dataset(split, image_size=params.image_size, channels=params.channels, training=False)
    return evaluation.embed(network, dataset)[0]


def visualize(model_dir, split=None, max_points=MAX_POINTS, num_queries=6, top_k=5, seed=0, verbose=True):
    """Projector files, tsne.png and retrieval.png of a trained run (see the module docstring).

    Args:
        model_dir: the run folder (params, classes.json, checkpoints/best.keras).
        split: the split to embed; None: "test" when the data has one, else "query".
        max_points: at most this many points, drawn evenly across classes (MAX_POINTS at most).
        num_queries: rows of the retrieval picture; top_k: neighbours per row.
        seed: seed of the point sample, the queries and t-SNE.
        verbose: print progress.

    Returns:
        dict of the written paths: projector_config, tsne, retrieval.
    """
    if max_points > MAX_POINTS:
        raise ValueError(f"max_points={max_points}: the sprite holds at most {MAX_POINTS} thumbnails")
    if num_queries < 1 or top_k < 1:
        raise ValueError(f"num_queries and top_k must be positive, got {num_queries} and {top_k}")
    params, source, network = load_run(model_dir)
    split = split or ("test" if "test" in source.splits else "query")
    if split not in source.splits:
        raise ValueError(f"{model_dir}: dataset {params.dataset!r} has no split {split!r}; "
                         f"choose one of {list(source.splits)}")
    points_split = source.splits[split]
    if len(points_split) == 0:
        raise ValueError(f"{model_dir}: the {split!r} split of dataset {params.dataset!r} is empty")
    rows = sample_evenly(points_split.labels, max_points, seed)
    points_split = points_split.take(rows)
    say = print if verbose else (lambda *args: None)
    say(f"embedding {len(points_split)} images of the {split!r} split with {model_dir}/checkpoints/best.keras")
    embeddings = _embed(network, points_split, params)
    labels = points_split.labels
    raw_ids = source.protocol == "reid" and split != "train"
    names = class_names_of(labels, source.class_names, raw_ids)
    size = params.image_size if isinstance(params.image_size, list) else [params.image_size] * 2

    say("writing the projector files (checkpoint, metadata, sprite)")
    thumbnails = load_images(points_split, np.arange(len(points_split)), thumbnail_size(size, len(rows)),
                             source.channels)
    description = f"{len(rows)} embeddings of the {split!r} split of {params.dataset} ({model_dir})"
    config = write_projector(os.path.join(model_dir, "projector"), embeddings, labels, names, thumbnails,
                             description)

    say(f"t-SNE of {len(rows)} points")
    tsne_path = os.path.join(model_dir, "tsne.png")
    plot_tsne(tsne(embeddings, seed, verbose), labels, names, tsne_path,
              title=f"t-SNE of {len(rows)} {params.dataset} {split} embeddings")

    reference_name = REFERENCE_SPLITS.get(source.protocol)
    leave_one_out = reference_name is None or reference_name == split
    if leave_one_out:
        reference_split, reference = points_split, embeddings
    else:
        reference_split = source.splits[reference_name]
        say(f"embedding the {len(reference_split)} images of the {reference_name!r} split (retrieval reference)")
        reference = _embed(network, reference_split, params)
    queries = np.sort(np.random.default_rng(seed).choice(len(points_split), min(num_queries, len(points_split)),
                                                         replace=False))
    distances, neighbours = _neighbours(embeddings[queries], queries if leave_one_out else None, reference, top_k)
    relevant = _relevance(params, source, points_split, queries, reference_split, neighbours, source.protocol)
    query_images = load_images(points_split, queries, size, source.channels)
    neighbour_images = load_images(reference_split, neighbours.reshape(-1), size, source.channels)
    retrieval_path = os.path.join(model_dir, "retrieval.png")
    plot_retrieval(query_images, neighbour_images.reshape(*neighbours.shape, *neighbour_images.shape[1:]),
                   distances, relevant, retrieval_path, [names[i] for i in queries])
    paths = {"projector_config": config, "tsne": tsne_path, "retrieval": retrieval_path}
    say("wrote " + ", ".join(paths.values()))
    say(f"see the embeddings with: tensorboard --logdir {model_dir}  (Projector tab)")
    return paths
