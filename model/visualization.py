"""Looking at a run's embeddings: projector files, a t-SNE picture and a retrieval picture.

    visualize("experiments/base_model")   # what `python visualize_embeddings.py --model_dir RUN` does

embeds a split with the run's best network and writes, under the run folder RUN:
    projector/      TensorBoard projector files (`model.projector`)
    tsne.png        the same points in 2-D (openTSNE's t-SNE), coloured by class (`model.plots`)
    retrieval.png   random queries and their nearest reference items, framed green when relevant,
                    red when not, grey when the data has no ground truth (`model.plots`)

The points are at most `max_points` images of the split, drawn evenly across classes. Retrieval
follows the protocol of the data (`model.data.protocols`): labelled datasets search the points
themselves (leave-one-out, relevant = same class); re-ID searches the gallery (relevant = same
person id); places search the database (relevant = within `positive_radius` metres).
"""

import os

import numpy as np

from model import metrics
from model.data import make_dataset
from model.data.protocols import PROTOCOLS
from model.evaluate_run import embed_split
from model.plots import plot_retrieval, plot_tsne, tsne
from model.projector import MAX_POINTS, thumbnail_size, write_projector
from model.run import load_run


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


def load_images(split, indices, image_size, channels):
    """uint8 `[len(indices), h, w, channels]` images of `split` at `indices`, resized to `image_size`."""
    dataset = make_dataset(split.take(indices), image_size=image_size, channels=channels, training=False)
    batches = [np.asarray(images) for images, _ in dataset]
    return np.clip(np.rint(np.concatenate(batches)), 0, 255).astype(np.uint8)


def visualize(model_dir, split=None, max_points=MAX_POINTS, num_queries=6, top_k=5, seed=0, verbose=True,
              out_dir=None):
    """Projector files, tsne.png and retrieval.png of a trained run (see the module docstring).

    Args:
        model_dir: the run folder (params, classes.json, checkpoints/best.keras).
        split: the split to embed; None: "test" when the data has one, else "query".
        max_points: at most this many points, drawn evenly across classes (MAX_POINTS at most).
        num_queries: rows of the retrieval picture; top_k: neighbours per row.
        seed: seed of the point sample, the queries and t-SNE.
        verbose: print progress.
        out_dir: where to write (created if missing); None: the run folder.

    Returns:
        dict of the written paths: projector_config, tsne, retrieval.
    """
    if max_points > MAX_POINTS:
        raise ValueError(f"max_points={max_points}: the sprite holds at most {MAX_POINTS} thumbnails")
    if num_queries < 1 or top_k < 1:
        raise ValueError(f"num_queries and top_k must be positive, got {num_queries} and {top_k}")
    params, source, network, folder = load_run(model_dir)
    protocol = PROTOCOLS[source.protocol]
    split = split or protocol.picture_split(source)
    if split not in source.splits:
        raise ValueError(f"{model_dir}: dataset {params.dataset!r} has no split {split!r}; "
                         f"choose one of {list(source.splits)}")
    points_split = source.splits[split]
    if len(points_split) == 0:
        raise ValueError(f"{model_dir}: the {split!r} split of dataset {params.dataset!r} is empty")
    rows = sample_evenly(points_split.labels, max_points, seed)
    points_split = points_split.take(rows)
    say = print if verbose else (lambda *args: None)
    say(f"embedding {len(points_split)} images of the {split!r} split with {folder.checkpoint_path('best')}")
    embeddings = embed_split(network, points_split, params, verbose=verbose)
    labels = points_split.labels
    names = class_names_of(labels, source.class_names, protocol.shows_raw_ids(split))
    size = params.image_size if isinstance(params.image_size, list) else [params.image_size] * 2

    say("writing the projector files (checkpoint, metadata, sprite)")
    thumbnails = load_images(points_split, np.arange(len(points_split)), thumbnail_size(size, len(rows)),
                             source.channels)
    description = f"{len(rows)} embeddings of the {split!r} split of {params.dataset} ({model_dir})"
    out_dir = out_dir or model_dir
    os.makedirs(out_dir, exist_ok=True)
    config = write_projector(os.path.join(out_dir, "projector"), embeddings, labels, names, thumbnails, description)

    say(f"t-SNE of {len(rows)} points")
    tsne_path = os.path.join(out_dir, "tsne.png")
    plot_tsne(tsne(embeddings, seed, verbose), labels, names, tsne_path,
              title=f"t-SNE of {len(rows)} {params.dataset} {split} embeddings")

    reference_name = protocol.reference_split
    leave_one_out = reference_name is None or reference_name == split
    if leave_one_out:
        reference_split, reference = points_split, embeddings
    else:
        reference_split = source.splits[reference_name]
        say(f"embedding the {len(reference_split)} images of the {reference_name!r} split (retrieval reference)")
        reference = embed_split(network, reference_split, params, verbose=verbose)
    queries = np.sort(np.random.default_rng(seed).choice(len(points_split), min(num_queries, len(points_split)),
                                                         replace=False))
    distances, neighbours = metrics.knn(embeddings[queries], reference, top_k,
                                        query_rows=queries if leave_one_out else None)
    relevant = protocol.relevance(points_split, queries, reference_split, neighbours, params)
    query_images = load_images(points_split, queries, size, source.channels)
    neighbour_images = load_images(reference_split, neighbours.reshape(-1), size, source.channels)
    retrieval_path = os.path.join(out_dir, "retrieval.png")
    plot_retrieval(query_images, neighbour_images.reshape(*neighbours.shape, *neighbour_images.shape[1:]),
                   distances, relevant, retrieval_path, [names[i] for i in queries])
    paths = {"projector_config": config, "tsne": tsne_path, "retrieval": retrieval_path}
    say("wrote " + ", ".join(paths.values()))
    say(f"see the embeddings with: tensorboard --logdir {out_dir}  (Projector tab)")
    return paths
