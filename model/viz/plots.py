"""Pictures of embeddings: a t-SNE scatter plot coloured by class, and retrieval rows framed by relevance.

    plot_tsne(tsne(embeddings), labels, names, "RUN/tsne.png")
    plot_retrieval(query_images, neighbour_images, distances, relevant, "RUN/retrieval.png")

Both write PNG files atomically (a temporary file renamed into place).
"""
import math
import textwrap

import matplotlib

matplotlib.use("Agg")  # files only: no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from openTSNE import TSNE  # noqa: E402

from model.atomic import atomic_file  # noqa: E402

LEGEND_MAX_CLASSES = 20  # more classes: one colour map and no legend
COLOURS = {True: "#1a9641", False: "#d7191c", None: "#9e9e9e"}  # relevant, not relevant, unknown


def _save(figure, path):
    with atomic_file(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    plt.close(figure)


def tsne(embeddings, seed=0):
    """2-D t-SNE of `embeddings` `[N, E]` -> `[N, 2]` (openTSNE; van der Maaten and Hinton 2008,
    "Visualizing Data using t-SNE"). Perplexity 30, or (N - 1) / 3 for small N.

    openTSNE rather than scikit-learn's TSNE: at 10,000 points on 2 cores it took 22.9 s against
    107.3 s for scikit-learn, measured side by side (benchmarks/README.md).
    """
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if len(embeddings) < 2:
        raise ValueError(f"t-SNE needs at least 2 points, got {len(embeddings)}")
    perplexity = min(30.0, (len(embeddings) - 1) / 3)
    # openTSNE's own log (30 lines a run) stays quiet: the callers say what they compute.
    model = TSNE(n_components=2, perplexity=perplexity, initialization="pca", random_state=seed, n_jobs=-1,
                 verbose=False)
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
    _save(figure, path)


def plot_retrieval(query_images, neighbour_images, distances, relevant, path, query_names=None, notes=None,
                   legend=None):
    """Each query (a row) followed by its nearest neighbours, framed by relevance, saved as a PNG at `path`
    (`retrieval_figure` with the same arguments)."""
    _save(retrieval_figure(query_images, neighbour_images, distances, relevant, query_names, notes, legend), path)


def retrieval_figure(query_images, neighbour_images, distances, relevant, query_names=None, notes=None, legend=None):
    """The figure of `plot_retrieval`: each query (a row) followed by its nearest neighbours, framed by relevance.

    Args:
        query_images: uint8 `[Q, h, w, C]`; neighbour_images: uint8 `[Q, k, h, w, C]`.
        distances: `[Q, k]` distances of the neighbours, printed above them.
        relevant: `[Q, k]` of True / False / None (green / red / grey frames: relevant, not, ignored by
            the metric), or None (no ground truth: all grey).
        query_names: `[Q]` captions of the queries (e.g. their class), or None.
        notes: `[Q, k]` strings added under each distance (e.g. metres from the query), or None.
        legend: what the frame colours mean (the protocol's words), or None for the default.
    """
    count, k = distances.shape
    height, width = query_images.shape[1:3]
    cell = 1.6  # inches per image along its longer side
    aspect = width / height
    caption_lines = 2 if notes is not None else 1  # a distance, and a note under it
    figure_width = max((k + 1) * cell * min(1.0, aspect) + 0.4, 4.0)
    figure, axes = plt.subplots(count, k + 1, squeeze=False,
                                figsize=(figure_width, count * (cell / max(1.0, aspect) + 0.2 + 0.18 * caption_lines)))
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
                if notes is not None:
                    caption += f"\n{notes[row][column - 1]}"
                colour = COLOURS[None if relevant is None else relevant[row, column - 1]]
                width_pt = 5
            axis.set_title(caption, fontsize=9)
            for spine in axis.spines.values():
                spine.set_edgecolor(colour)
                spine.set_linewidth(width_pt)
    if relevant is None:
        legend = "no ground truth"
    legend = legend or "frame: green = relevant, red = not relevant"
    # The title wrapped to the figure's width (about 12 characters of 9-point text per inch), with room above.
    title = textwrap.wrap(f"nearest neighbours (distance above each image); {legend}", int(figure_width * 12))
    figure.suptitle("\n".join(title), fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - (0.1 + 0.16 * len(title)) / figure.get_figheight()))
    return figure


def plot_places_map(query_utm, database_utm, found, radius, path, title=""):
    """A map of place recognition: database positions in grey, each query at its position, green when its
    nearest database image lies within `radius` metres, red when not (UTM easting/northing in metres).

    Args:
        query_utm: `[Q, 2]`; database_utm: `[N, 2]`; found: bool `[Q]`; radius: metres; path: the PNG file.
    """
    query_utm, database_utm, found = np.asarray(query_utm), np.asarray(database_utm), np.asarray(found, dtype=bool)
    origin = np.concatenate([query_utm, database_utm]).min(axis=0)  # metres from the south-west corner
    figure, axes = plt.subplots(figsize=(7, 7))
    axes.scatter(*(database_utm - origin).T, s=6, c=COLOURS[None], linewidths=0, label="database")
    for value, name in ((True, f"query: nearest within {radius:g} m"), (False, "query: nearest farther")):
        chosen = found == value
        axes.scatter(*(query_utm[chosen] - origin).T, s=18, c=COLOURS[value], linewidths=0,
                     label=f"{name} ({chosen.sum()})")
    axes.set_aspect("equal")
    axes.set_xlabel("easting (m)")
    axes.set_ylabel("northing (m)")
    axes.legend(loc="upper right", fontsize=8)
    axes.set_title(title or f"Recall@1 {found.mean():.3f} over {len(found)} queries", fontsize=10)
    figure.tight_layout()
    _save(figure, path)
