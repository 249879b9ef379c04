"""Looking at a run's embeddings: projector files, a t-SNE picture and a retrieval picture.

    visualize("experiments/base_model")   # what `python visualize_embeddings.py --model_dir RUN` does

embeds a split with the run's best network and writes, under the run folder RUN:
    projector/      TensorBoard projector files (`model.viz.projector`)
    tsne.png        the same points in 2-D (openTSNE's t-SNE), coloured by class (`model.viz.plots`)
    retrieval.png   random queries and their nearest reference items, framed green when relevant,
                    red when not, grey when the data has no ground truth (`model.viz.plots`)
    places_map.png  places: the queries on the map, green where the nearest database image is within
                    positive_radius

The points are at most `max_points` images of the split, drawn evenly across classes. Retrieval
follows the protocol of the data (`model.evaluation.protocols`): labelled datasets search the points
themselves (leave-one-out, relevant = same class); re-ID searches the gallery (relevant = same
person id); places search the database (relevant = within `positive_radius` metres).
"""

import logging
import os

import numpy as np

from model.app import adapter
from model.app.runs import load_run
from model.retrieval.embed import embed_split
from model.retrieval.index import knn
from model.viz.plots import plot_places_map, plot_retrieval, plot_tsne, tsne
from model.viz.points import load_images, sample_evenly
from model.viz.projector import MAX_POINTS, thumbnail_size, write_projector

logger = logging.getLogger(__name__)


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
    protocol = adapter.protocol(params)
    split = split or protocol.picture_split(source.splits)
    if split not in source.splits:
        raise ValueError(f"{model_dir}: dataset {params.dataset!r} has no split {split!r}; "
                         f"choose one of {list(source.splits)}")
    points_split = source.splits[split]
    if len(points_split) == 0:
        raise ValueError(f"{model_dir}: the {split!r} split of dataset {params.dataset!r} is empty")
    rows = sample_evenly(points_split.labels, max_points, seed)
    points_split = points_split.take(rows)
    say = logger.info if verbose else (lambda *args: None)
    say(f"embedding {len(points_split)} images of the {split!r} split with {folder.checkpoint_path('best')}")
    embeddings = embed_split(network, points_split, image_size=params.image_size, channels=params.channels,
                             verbose=verbose)
    labels, names = protocol.picture_labels(points_split, split, source.class_names)
    size = params.image_size if isinstance(params.image_size, list) else [params.image_size] * 2

    say("writing the projector files (checkpoint, metadata, sprite)")
    thumbnails = load_images(points_split, np.arange(len(points_split)), thumbnail_size(size, len(rows)),
                             source.channels)
    description = f"{len(rows)} embeddings of the {split!r} split of {params.dataset} ({model_dir})"
    out_dir = out_dir or model_dir
    os.makedirs(out_dir, exist_ok=True)
    config = write_projector(os.path.join(out_dir, "projector"), embeddings, labels, names, thumbnails, description,
                             name=f"{os.path.basename(os.path.abspath(model_dir))}_{split}")

    say(f"t-SNE of {len(rows)} points")
    tsne_path = os.path.join(out_dir, "tsne.png")
    plot_tsne(tsne(embeddings, seed), labels, names, tsne_path,
              title=f"t-SNE of {len(rows)} {params.dataset} {split} embeddings")

    reference_name = protocol.reference_split
    leave_one_out = reference_name is None or reference_name == split
    if leave_one_out:
        reference_split, reference = points_split, embeddings
    else:
        reference_split = source.splits[reference_name]
        say(f"embedding the {len(reference_split)} images of the {reference_name!r} split (retrieval reference)")
        reference = embed_split(network, reference_split, image_size=params.image_size, channels=params.channels,
                                verbose=verbose)
    queries = np.sort(np.random.default_rng(seed).choice(len(points_split), min(num_queries, len(points_split)),
                                                         replace=False))
    distances, neighbours = knn(embeddings[queries], reference, top_k,
                                        query_rows=queries if leave_one_out else None)
    relevant = protocol.relevance(points_split, queries, reference_split, neighbours)
    notes = protocol.neighbour_notes(points_split, queries, reference_split, neighbours)
    query_images = load_images(points_split, queries, size, source.channels)
    neighbour_images = load_images(reference_split, neighbours.reshape(-1), size, source.channels)
    retrieval_path = os.path.join(out_dir, "retrieval.png")
    plot_retrieval(query_images, neighbour_images.reshape(*neighbours.shape, *neighbour_images.shape[1:]),
                   distances, relevant, retrieval_path, [names[i] for i in queries], notes, protocol.legend)
    paths = {"projector_config": config, "tsne": tsne_path, "retrieval": retrieval_path}
    if not leave_one_out:
        found = protocol.map_points(points_split, embeddings, reference_split, reference)
        if found is not None:
            paths["places_map"] = os.path.join(out_dir, "places_map.png")
            plot_places_map(*found, paths["places_map"])
    say("wrote " + ", ".join(paths.values()))
    say(f"see the embeddings with: tensorboard --logdir {out_dir}  (Projector tab)")
    return paths

