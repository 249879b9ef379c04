"""Evaluation protocols: how a dataset is measured as a retrieval system, one object per protocol.

    protocol = PROTOCOLS["places"](positive_radius=25.0)          # or protocol_for(source, ...)
    results = protocol.evaluate(source.splits, "test", embed, eval_size=None, seed=0)
    relevant = protocol.relevance(query_split, rows, reference_split, neighbours)

  protocol  datasets                        queries → references             relevant
  labels    mnist, fashion_mnist, digits,   the split → train ("vs_train"),   same class
            folders, cub200                 and leave-one-out in the split
  reid      market1501, inshop              query → gallery                   same person / item id
  places    places                          query → database                  within positive_radius metres

Validation during training (`validation_metrics`, after every epoch; `validation_key` picks best.keras):
  labels    leave-one-out precision@1 within the held-out images (val_precision_at_1)
  reid      the held-out identities as query and gallery: mAP (val_mAP, the key) and rank-1 (val_rank_1),
            Market-1501 rules
  places    the held-out queries against the whole train database: Recall@1/5/10 (val_recall_at_1 the key)

Each protocol knows its query and reference splits, its relevance rule and its metrics
(`model.evaluation.metrics`); evaluation, visualization and training ask it instead of testing protocol
names. `embed(split) -> [N, E]` is given by the caller (it runs the network). Which part of the train
split is held out for validation is the dataset's (`model.data.holdout`).
"""

import logging

import numpy as np

from model.data.gps import gps_positives, within_radius
from model.data.places import POSITIVE_RADIUS, place_cells
from model.evaluation import metrics
from model.registry import INT, NONE, Option, Registry
from model.retrieval.index import knn

logger = logging.getLogger(__name__)

PROTOCOLS = Registry("protocol", key="protocol", default="labels", meaning="evaluation protocol")


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



def cap(split, eval_size, seed):
    """A seeded random subset of `eval_size` items (kept in split order), or the whole split."""
    if eval_size is None or eval_size >= len(split):
        return split
    return split.take(np.sort(np.random.default_rng(seed).permutation(len(split))[:eval_size]))


class Protocol:
    """Base of the protocols. Subclasses set the class attributes and implement `evaluate`.

    Attributes:
        name: its name in `PROTOCOLS` (`DataSource.protocol`).
        validation_key: the validation metric (a key of `validation_metrics`) that picks best.keras.
        query_split: the split whose items are the queries (None: the split being evaluated).
        reference_split: the split searched (None: leave-one-out within the queries' own split).
        legend: what the frames of the retrieval picture mean.
        threshold_reason: why no "same class" distance threshold is calibrated for it, or None.
    """

    name = None
    threshold_reason = None
    legend = "frame: green = same class, red = another class"
    query_split = "query"
    validation_key = None
    reference_split = None

    def evaluate(self, splits, split, embed, *, eval_size=None, seed=0, rerank=False):
        """dict of comparison name -> metrics dict, for the `split` of `splits` ({name: Split}); the queries
        capped to `eval_size` (seeded by `seed`); with `rerank`, also the metrics after k-reciprocal re-ranking
        where the protocol has them (ValueError elsewhere)."""
        raise NotImplementedError

    def _no_rerank(self, rerank):
        if rerank:
            raise ValueError(f"re-ranking (--rerank) is defined for re-ID query/gallery evaluation with camera ids, "
                             f"not for the {self.name} protocol")

    def evaluated_splits(self, splits):
        return ("test",)

    def validation_problem(self, split):
        """Why the validation metric cannot be measured on the held-out `split`, or None."""
        return None

    def validation_metrics(self, split, embeddings):
        """{logged name: float} of the held-out `split` embedded as `embeddings: [N, E]`, `validation_key`
        among them."""
        raise NotImplementedError

    def check_split(self, splits, split, dataset):
        if split not in self.evaluated_splits(splits):
            raise ValueError(
                f"dataset {dataset!r} ({self.name} protocol) is evaluated on "
                f"{' or '.join(repr(name) for name in self.evaluated_splits(splits))}, not {split!r}"
            )

    def picture_split(self, splits):
        """The split whose items the pictures show by default."""
        return "test" if "test" in splits else self.query_split

    def relevance(self, query_split, query_rows, reference_split, neighbours):
        """`[Q, k]` objects: is neighbour `neighbours[q, j]` (a row of the reference) relevant to query
        `query_rows[q]` (a row of the query split): True, False, or None where the metric ignores it.
        None instead of an array when the queries have no ground truth."""
        query_labels = query_split.labels[query_rows]
        if (query_labels < 0).all():
            return None
        return (query_labels[:, None] == reference_split.labels[neighbours]).astype(object)

    def neighbour_notes(self, query_split, query_rows, reference_split, neighbours):
        """`[Q, k]` strings shown under each neighbour of the retrieval picture, or None."""
        return None

    def map_points(self, query_split, embeddings, reference_split, reference):
        """What a map of the queries shows, where the data has positions: (query_utm [Q, 2], reference_utm
        [N, 2], found [Q] bool: the nearest reference is relevant, radius), or None."""
        return None

    def shows_raw_ids(self, split):
        """Whether the labels of `split` are raw ids (shown as numbers), not indices of class_names."""
        return False

    def picture_labels(self, split, split_name, class_names):
        """(labels `[N]`, display names `[N]`) of the items of `split` in pictures (the t-SNE's colours, the
        captions): the class of each item (`class_names_of`)."""
        return split.labels, class_names_of(split.labels, class_names, self.shows_raw_ids(split_name))


@PROTOCOLS.register("labels")
class LabelsProtocol(Protocol):
    """Labelled retrieval (deep metric learning papers): `retrieval_metrics` of the split's images
    against the train split ("vs_train") and leave-one-out within the split ("leave_one_out")."""

    name = "labels"
    query_split = None
    validation_key = "val_precision_at_1"

    def validation_problem(self, split):
        if len(np.unique(split.labels)) == len(split.labels):
            return "no two validation images share a class, so precision@1 cannot be measured on it"
        return None

    def validation_metrics(self, split, embeddings):
        """Leave-one-out precision@1 within the held-out images."""
        return {"val_precision_at_1": metrics.retrieval_metrics(embeddings, split.labels, ks=(1,))["precision_at_1"]}

    def evaluated_splits(self, splits):
        return tuple(name for name in ("test", "validation") if name in splits)

    def evaluate(self, splits, split, embed, *, eval_size=None, seed=0, rerank=False):
        self._no_rerank(rerank)
        queries, train = cap(splits[split], eval_size, seed), splits["train"]
        query_emb = embed(queries)
        results = {}
        if np.isin(queries.labels, train.labels).any():
            results["vs_train"] = metrics.retrieval_metrics(query_emb, queries.labels, embed(train), train.labels)
        else:  # unseen test classes (class_split): nothing in train to retrieve
            logger.warning("no %s class occurs in the train split: the vs_train metrics are skipped", split)
        results["leave_one_out"] = metrics.retrieval_metrics(query_emb, queries.labels)
        return results

    def picture_split(self, splits):
        return "test" if "test" in splits else "train"


@PROTOCOLS.register("reid")
class ReidProtocol(Protocol):
    """Re-identification: query against gallery. Market-1501 (camera ids): `reid_metrics` (mAP, CMC,
    same-camera matches are junk); In-shop (no cameras): `retrieval_metrics` of query against gallery."""

    name = "reid"
    reference_split = "gallery"
    validation_key = "val_mAP"
    legend = ("frame: green = same person, red = another person, grey = junk (same person and camera, or "
              "unlabelled: ignored by the metric)")

    def evaluate(self, splits, split, embed, *, eval_size=None, seed=0, rerank=False):
        queries, gallery = cap(splits["query"], eval_size, seed), splits["gallery"]
        if queries.camids is None:
            self._no_rerank(rerank)  # In-shop: plain retrieval, no camera rules
            return {"query_vs_gallery": metrics.retrieval_metrics(embed(queries), queries.labels, embed(gallery),
                                                                  gallery.labels)}
        found = metrics.reid_metrics(embed(queries), queries.labels, queries.camids, embed(gallery), gallery.labels,
                                     gallery.camids, rerank={} if rerank else None)
        reranked = found.pop("reranked", None)
        # k-reciprocal re-ranking (Zhong et al. 2017) with its default k1, k2, lambda: its own column.
        return {"query_vs_gallery": found, **({"query_vs_gallery_reranked": reranked} if reranked else {})}

    def shows_raw_ids(self, split):
        return split != "train"  # query and gallery labels are the person ids themselves

    def validation_problem(self, split):
        query, gallery = split.is_query, ~split.is_query
        same = split.labels[query][:, None] == split.labels[gallery][None, :]  # [Q, G]
        if split.camids is not None:  # Market-1501: the same camera is junk
            same &= split.camids[query][:, None] != split.camids[gallery][None, :]
        if not same.any():
            return "no validation query has an image of its identity in the validation gallery (from another camera)"
        return None

    def validation_metrics(self, split, embeddings):
        """mAP and rank-1 of the held-out queries against the held-out gallery (Market-1501 rules with cameras)."""
        query, gallery = split.is_query, ~split.is_query
        if split.camids is None:  # In-shop: plain retrieval
            found = metrics.retrieval_metrics(embeddings[query], split.labels[query], embeddings[gallery],
                                              split.labels[gallery], ks=(1,))
            return {"val_mAP": found["mean_average_precision"], "val_rank_1": found["recall_at_k"][1]}
        found = metrics.reid_metrics(embeddings[query], split.labels[query], split.camids[query], embeddings[gallery],
                                     split.labels[gallery], split.camids[gallery])
        return {"val_mAP": found["mAP"], "val_rank_1": float(found["cmc"][0])}

    def relevance(self, query_split, query_rows, reference_split, neighbours):
        relevant = super().relevance(query_split, query_rows, reference_split, neighbours)
        if relevant is None or query_split.camids is None or reference_split.camids is None:
            return relevant
        # Market-1501 rules, as reid_metrics applies them: unlabelled images (pid -1) and the same person
        # seen by the same camera are junk, neither relevant nor not.
        same_camera = query_split.camids[query_rows][:, None] == reference_split.camids[neighbours]
        junk = (reference_split.labels[neighbours] == -1) | (relevant.astype(bool) & same_camera)
        relevant[junk] = None
        return relevant


@PROTOCOLS.register("places", options=(POSITIVE_RADIUS,))
class PlacesProtocol(Protocol):
    """Place recognition (NetVLAD): `recall_at_n` of query against database, a database image being
    relevant when it lies within `positive_radius` metres (`model.data.gps.within_radius`)."""

    name = "places"
    reference_split = "database"
    validation_key = "val_recall_at_1"
    legend = "frame: green = within positive_radius of the query, red = farther (metres under each distance)"
    threshold_reason = "places are the same within a radius, not by class: no class threshold is calibrated"

    def __init__(self, positive_radius=25.0):
        self.positive_radius = positive_radius

    def evaluate(self, splits, split, embed, *, eval_size=None, seed=0, rerank=False):
        self._no_rerank(rerank)
        queries, database = cap(splits["query"], eval_size, seed), splits["database"]
        found = metrics.recall_at_n(embed(queries), embed(database), queries.utm, database.utm,
                                    radius=self.positive_radius)
        return {"query_vs_database": found}

    def validation_problem(self, split):
        positives = gps_positives(split.utm[split.is_query], split.utm[~split.is_query], self.positive_radius)
        if not any(len(found) for found in positives):
            return f"no validation query has a database image within {self.positive_radius} m"
        return None

    def validation_metrics(self, split, embeddings):
        """Recall@1/5/10 of the held-out queries against the train database, within `positive_radius`."""
        query, database = split.is_query, ~split.is_query
        found = metrics.recall_at_n(embeddings[query], embeddings[database], split.utm[query], split.utm[database],
                                    radius=self.positive_radius, ns=(1, 5, 10))
        return {f"val_recall_at_{n}": value for n, value in found["recall_at_n"].items()}

    def relevance(self, query_split, query_rows, reference_split, neighbours):
        if query_split.utm is None or reference_split.utm is None:
            return super().relevance(query_split, query_rows, reference_split, neighbours)
        return within_radius(query_split.utm[query_rows][:, None], reference_split.utm[neighbours],
                             self.positive_radius).astype(object)  # [Q, k]

    def neighbour_notes(self, query_split, query_rows, reference_split, neighbours):
        if query_split.utm is None or reference_split.utm is None:
            return None
        offsets = query_split.utm[query_rows][:, None] - reference_split.utm[neighbours]  # [Q, k, 2] metres
        return [[f"{metres:.0f} m away" for metres in row] for row in np.hypot(offsets[..., 0], offsets[..., 1])]

    def picture_labels(self, split, split_name, class_names):
        """Places without place ids (-1, e.g. the test queries) are coloured by where they are: the grid cell of
        side positive_radius / √2 of each (`model.data.places.place_cells`), not all grey as unknown."""
        if split.utm is None or (split.labels >= 0).any():
            return super().picture_labels(split, split_name, class_names)
        cells = place_cells(split.utm, self.positive_radius)
        return np.unique(cells, return_inverse=True)[1].reshape(-1), [f"cell {cell}" for cell in cells]

    def map_points(self, query_split, embeddings, reference_split, reference):
        if query_split.utm is None or reference_split.utm is None:
            return None
        _, nearest = knn(embeddings, reference, 1)  # [Q, 1]
        found = within_radius(query_split.utm, reference_split.utm[nearest[:, 0]], self.positive_radius)
        return query_split.utm, reference_split.utm, found, self.positive_radius


EVAL_SIZE = Option("eval_size", (INT, NONE), None, "evaluate on only this many test images; null = all", positive=True)
