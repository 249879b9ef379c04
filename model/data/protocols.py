"""Evaluation protocols: how a dataset is measured as a retrieval system, one object per protocol.

    protocol = PROTOCOLS[source.protocol]
    results = protocol.evaluate(source, "test", embed, params)       # metrics by comparison
    relevant = protocol.relevance(query_split, rows, reference_split, neighbours, params)

  protocol  datasets                        queries → references             relevant
  labels    mnist, fashion_mnist, digits,   the split → train ("vs_train"),   same class
            folders, cub200                 and leave-one-out in the split
  reid      market1501, inshop              query → gallery                   same person / item id
  places    places                          query → database                  within positive_radius metres

Validation during training (`validation_metrics`, after every epoch; `validation_key` picks best.keras):
  labels    validation_size train images held out at random; leave-one-out precision@1 (val_precision_at_1)
  reid      validation_size train identities held out, the first image of each identity and camera a query,
            the others the gallery; mAP (val_mAP, the key) and rank-1 (val_rank_1), Market-1501 rules
  places    validation_size train queries held out, searched in the whole train database (which training
            keeps: its images are seen, the queries are not); Recall@1/5/10 (val_recall_at_1 the key)

Each protocol knows its query and reference splits, its relevance rule, its metrics (from
`model.metrics`) and what the pictures show; evaluation, visualization and training ask it instead
of testing protocol names. `embed(split) -> [N, E]` is given by the caller (it runs the network).

Training asks the protocol how pairs are formed (`training_mining`): by the labels (None, the classes
of P×K batches), or, for places trained by GPS, by groups of examples and a relation per batch.
"""

import dataclasses
import logging
import os
from collections.abc import Callable

import numpy as np

from model import metrics, plots
from model.data import cached, gps
from model.data.splits import hold_out, hold_out_count

logger = logging.getLogger(__name__)


def cap(split, eval_size, seed):
    """A seeded random subset of `eval_size` items (kept in split order), or the whole split."""
    if eval_size is None or eval_size >= len(split):
        return split
    return split.take(np.sort(np.random.default_rng(seed).permutation(len(split))[:eval_size]))


@dataclasses.dataclass(frozen=True)
class TrainingMining:
    """Pairs by a relation instead of labels: what training needs from a protocol that has one.

    Attributes:
        groups: list of int arrays of train-split indices (they may overlap), drawn as the classes of
            P×K batches (`make_dataset(..., groups=groups)`, whose labels are then the indices), or None.
        relation_fn: `relation_fn(labels, ref_labels) -> int32 [B, R]`, 1 positive, -1 negative, 0 neither,
            for the loss's `relation` (`EmbeddingModel(relation_fn=...)`).
        batches: `batches(start_step) -> dataset` of the training batches when they are not P×K batches of
            `groups` (cached mining, model/data/cached.py), or None.
        callbacks: Keras callbacks that training needs (cached mining: the feature cache's refresh).
    """

    groups: list | None
    relation_fn: Callable
    batches: Callable | None = None
    callbacks: tuple = ()


class Protocol:
    """Base of the protocols. Subclasses set the class attributes and implement `evaluate`.

    Attributes:
        name: "labels", "reid" or "places" (`DataSource.protocol`).
        validation_key: the validation metric (a key of `validation_metrics`) that picks best.keras.
        query_split: the split whose items are the queries (None: the split being evaluated).
        reference_split: the split searched (None: leave-one-out within the queries' own split).
    """

    name = None
    legend = "frame: green = same class, red = another class"  # what the retrieval picture's frames mean
    query_split = "query"
    validation_key = None  # the logged validation metric that picks best.keras (higher is better)
    reference_split = None

    def evaluate(self, source, split, embed, params, rerank=False):
        """dict of comparison name -> metrics dict, for the `split` of `source`; with `rerank`, also the
        metrics after k-reciprocal re-ranking where the protocol has them (ValueError elsewhere)."""
        raise NotImplementedError

    def _no_rerank(self, rerank):
        if rerank:
            raise ValueError(f"re-ranking (--rerank) is defined for re-ID query/gallery evaluation with camera ids, "
                             f"not for the {self.name} protocol")

    def evaluated_splits(self, source):
        return ("test",)

    def training_mining(self, split, params):
        """How training on the train `split` forms pairs: a `TrainingMining`, or None for the labels."""
        return None

    def hold_out(self, split, size, seed):
        """(train, validation) Splits: `validation_size` = `size` held out of the train `split` with `seed`."""
        raise NotImplementedError

    def validation_problem(self, split, params):
        """Why the validation metric cannot be measured on the held-out `split`, or None."""
        return None

    def validation_metrics(self, split, embeddings, params):
        """{logged name: float} of the held-out `split` embedded as `embeddings: [N, E]`, `validation_key`
        among them."""
        raise NotImplementedError

    def check_split(self, source, split, dataset):
        if split not in self.evaluated_splits(source):
            raise ValueError(
                f"dataset {dataset!r} ({self.name} protocol) is evaluated on "
                f"{' or '.join(repr(name) for name in self.evaluated_splits(source))}, not {split!r}"
            )

    def picture_split(self, source):
        """The split whose items the pictures show by default."""
        return "test" if "test" in source.splits else self.query_split

    def relevance(self, query_split, query_rows, reference_split, neighbours, params):
        """`[Q, k]` objects: is neighbour `neighbours[q, j]` (a row of the reference) relevant to query
        `query_rows[q]` (a row of the query split): True, False, or None where the metric ignores it.
        None instead of an array when the queries have no ground truth."""
        query_labels = query_split.labels[query_rows]
        if (query_labels < 0).all():
            return None
        return (query_labels[:, None] == reference_split.labels[neighbours]).astype(object)

    def neighbour_notes(self, query_split, query_rows, reference_split, neighbours, params):
        """`[Q, k]` strings shown under each neighbour of the retrieval picture, or None."""
        return None

    def pictures(self, query_split, embeddings, reference_split, reference, params, out_dir):
        """The protocol's own pictures besides retrieval.png, written into `out_dir`; their paths."""
        return {}

    def shows_raw_ids(self, split):
        """Whether the labels of `split` are raw ids (shown as numbers), not indices of class_names."""
        return False


class LabelsProtocol(Protocol):
    """Labelled retrieval (deep metric learning papers): `retrieval_metrics` of the split's images
    against the train split ("vs_train") and leave-one-out within the split ("leave_one_out")."""

    name = "labels"
    query_split = None
    validation_key = "val_precision_at_1"

    def hold_out(self, split, size, seed):
        """Random train images (`model.data.splits.hold_out`)."""
        return hold_out(split, size, seed)

    def validation_problem(self, split, params):
        if len(np.unique(split.labels)) == len(split.labels):
            return "no two validation images share a class, so precision@1 cannot be measured on it"
        return None

    def validation_metrics(self, split, embeddings, params):
        """Leave-one-out precision@1 within the held-out images."""
        return {"val_precision_at_1": metrics.retrieval_metrics(embeddings, split.labels, ks=(1,))["precision_at_1"]}

    def evaluated_splits(self, source):
        return tuple(name for name in ("test", "validation") if name in source.splits)

    def evaluate(self, source, split, embed, params, rerank=False):
        self._no_rerank(rerank)
        queries, train = cap(source.splits[split], params.eval_size, params.seed), source.splits["train"]
        query_emb = embed(queries)
        results = {}
        if np.isin(queries.labels, train.labels).any():
            results["vs_train"] = metrics.retrieval_metrics(query_emb, queries.labels, embed(train), train.labels)
        else:  # unseen test classes (class_split): nothing in train to retrieve
            logger.warning("no %s class occurs in the train split: the vs_train metrics are skipped", split)
        results["leave_one_out"] = metrics.retrieval_metrics(query_emb, queries.labels)
        return results

    def picture_split(self, source):
        return "test" if "test" in source.splits else "train"


class ReidProtocol(Protocol):
    """Re-identification: query against gallery. Market-1501 (camera ids): `reid_metrics` (mAP, CMC,
    same-camera matches are junk); In-shop (no cameras): `retrieval_metrics` of query against gallery."""

    name = "reid"
    reference_split = "gallery"
    validation_key = "val_mAP"
    legend = ("frame: green = same person, red = another person, grey = junk (same person and camera, or "
              "unlabelled: ignored by the metric)")

    def evaluate(self, source, split, embed, params, rerank=False):
        queries, gallery = cap(source.splits["query"], params.eval_size, params.seed), source.splits["gallery"]
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

    def hold_out(self, split, size, seed):
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

    def validation_problem(self, split, params):
        query, gallery = split.is_query, ~split.is_query
        same = split.labels[query][:, None] == split.labels[gallery][None, :]  # [Q, G]
        if split.camids is not None:  # Market-1501: the same camera is junk
            same &= split.camids[query][:, None] != split.camids[gallery][None, :]
        if not same.any():
            return "no validation query has an image of its identity in the validation gallery (from another camera)"
        return None

    def validation_metrics(self, split, embeddings, params):
        """mAP and rank-1 of the held-out queries against the held-out gallery (Market-1501 rules with cameras)."""
        query, gallery = split.is_query, ~split.is_query
        if split.camids is None:  # In-shop: plain retrieval
            found = metrics.retrieval_metrics(embeddings[query], split.labels[query], embeddings[gallery],
                                              split.labels[gallery], ks=(1,))
            return {"val_mAP": found["mean_average_precision"], "val_rank_1": found["recall_at_k"][1]}
        found = metrics.reid_metrics(embeddings[query], split.labels[query], split.camids[query], embeddings[gallery],
                                     split.labels[gallery], split.camids[gallery])
        return {"val_mAP": found["mAP"], "val_rank_1": float(found["cmc"][0])}

    def relevance(self, query_split, query_rows, reference_split, neighbours, params):
        relevant = super().relevance(query_split, query_rows, reference_split, neighbours, params)
        if relevant is None or query_split.camids is None or reference_split.camids is None:
            return relevant
        # Market-1501 rules, as reid_metrics applies them: unlabelled images (pid -1) and the same person
        # seen by the same camera are junk, neither relevant nor not.
        same_camera = query_split.camids[query_rows][:, None] == reference_split.camids[neighbours]
        junk = (reference_split.labels[neighbours] == -1) | (relevant.astype(bool) & same_camera)
        relevant[junk] = None
        return relevant


class PlacesProtocol(Protocol):
    """Place recognition (NetVLAD): `recall_at_n` of query against database, a database image being
    relevant when it lies within `params.positive_radius` metres (`metrics.within_radius`)."""

    name = "places"
    reference_split = "database"
    validation_key = "val_recall_at_1"
    legend = "frame: green = within positive_radius of the query, red = farther (metres under each distance)"

    def evaluate(self, source, split, embed, params, rerank=False):
        self._no_rerank(rerank)
        queries, database = cap(source.splits["query"], params.eval_size, params.seed), source.splits["database"]
        found = metrics.recall_at_n(
            embed(queries), embed(database), queries.utm, database.utm, radius=params.positive_radius
        )
        return {"query_vs_database": found}

    def training_mining(self, split, params):
        """With `places_training` "gps" (the NetVLAD recipe): P×K batches of GPS places, each a train query
        and the database images within `positive_radius`; pairs within `nontrivial_radius` are positives,
        beyond `positive_radius` negatives, in between neither. No grid cells. With `mining` "cached", the
        reference's tuples mined in a feature cache (model/data/cached.py) instead."""
        if params.mining == "cached":
            miner = cached.CachedMiner(split, params.nontrivial_radius, params.positive_radius, params.margin)
            return TrainingMining(None, cached.tuple_relation,
                                  batches=lambda start_step: cached.cached_dataset(miner, split, params, start_step),
                                  callbacks=(cached.CacheRefresh(miner, split, params),))
        if params.places_training != "gps":
            return None
        places, left_out = gps.gps_places(split, params.positive_radius)
        if left_out:
            logger.warning("%d of %d train queries have no database image within %s m and form no place",
                           left_out, int(split.is_query.sum()), params.positive_radius)
        return TrainingMining(places, gps.GpsRelation(split.utm, params.nontrivial_radius, params.positive_radius))

    def hold_out(self, split, size, seed):
        """Train queries (`size`: a count, or a fraction of the queries) with the whole train database:
        validation = the held-out queries and every database image (`is_query` tells them apart); train
        keeps the database and the other queries."""
        queries = np.flatnonzero(split.is_query)
        count = hold_out_count(size, len(queries), "queries")
        held = np.zeros(len(split), dtype=bool)
        held[queries[np.random.default_rng(seed).permutation(len(queries))[:count]]] = True
        return split.take(np.flatnonzero(~held)), split.take(np.flatnonzero(held | ~split.is_query))

    def validation_problem(self, split, params):
        positives = gps.gps_positives(split.utm[split.is_query], split.utm[~split.is_query], params.positive_radius)
        if not any(len(found) for found in positives):
            return f"no validation query has a database image within {params.positive_radius} m"
        return None

    def validation_metrics(self, split, embeddings, params):
        """Recall@1/5/10 of the held-out queries against the train database, within `positive_radius`."""
        query, database = split.is_query, ~split.is_query
        found = metrics.recall_at_n(embeddings[query], embeddings[database], split.utm[query], split.utm[database],
                                    radius=params.positive_radius, ns=(1, 5, 10))
        return {f"val_recall_at_{n}": value for n, value in found["recall_at_n"].items()}

    def relevance(self, query_split, query_rows, reference_split, neighbours, params):
        if query_split.utm is None or reference_split.utm is None:
            return super().relevance(query_split, query_rows, reference_split, neighbours, params)
        return metrics.within_radius(query_split.utm[query_rows][:, None], reference_split.utm[neighbours],
                                     params.positive_radius).astype(object)  # [Q, k]

    def neighbour_notes(self, query_split, query_rows, reference_split, neighbours, params):
        if query_split.utm is None or reference_split.utm is None:
            return None
        offsets = query_split.utm[query_rows][:, None] - reference_split.utm[neighbours]  # [Q, k, 2] metres
        return [[f"{metres:.0f} m away" for metres in row] for row in np.hypot(offsets[..., 0], offsets[..., 1])]

    def pictures(self, query_split, embeddings, reference_split, reference, params, out_dir):
        if query_split.utm is None or reference_split.utm is None:
            return {}
        _, nearest = metrics.knn(embeddings, reference, 1)  # [Q, 1]
        found = metrics.within_radius(query_split.utm, reference_split.utm[nearest[:, 0]], params.positive_radius)
        path = os.path.join(out_dir, "places_map.png")
        plots.plot_places_map(query_split.utm, reference_split.utm, found, params.positive_radius, path)
        return {"places_map": path}


PROTOCOLS = {protocol.name: protocol for protocol in (LabelsProtocol(), ReidProtocol(), PlacesProtocol())}
