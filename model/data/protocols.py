"""Evaluation protocols: how a dataset is measured as a retrieval system, one object per protocol.

    protocol = PROTOCOLS[source.protocol]
    results = protocol.evaluate(source, "test", embed, params)       # metrics by comparison
    relevant = protocol.relevance(query_split, rows, reference_split, neighbours, params)

  protocol  datasets                        queries → references             relevant
  labels    mnist, fashion_mnist, digits,   the split → train ("vs_train"),   same class
            folders                         and leave-one-out in the split
  reid      market1501, inshop              query → gallery                   same person / item id
  places    places                          query → database                  within positive_radius metres

Each protocol knows its query and reference splits, its relevance rule, its metrics (from
`model.metrics`) and what the pictures show; evaluation, visualization and training ask it instead
of testing protocol names. `embed(split) -> [N, E]` is given by the caller (it runs the network).
"""

import logging

import numpy as np

from model import metrics

logger = logging.getLogger(__name__)


def cap(split, eval_size, seed):
    """A seeded random subset of `eval_size` items (kept in split order), or the whole split."""
    if eval_size is None or eval_size >= len(split):
        return split
    return split.take(np.sort(np.random.default_rng(seed).permutation(len(split))[:eval_size]))


class Protocol:
    """Base of the protocols. Subclasses set the class attributes and implement `evaluate`.

    Attributes:
        name: "labels", "reid" or "places" (`DataSource.protocol`).
        holds_out_validation: training holds a validation split out of train (`validation_size`).
        query_split: the split whose items are the queries (None: the split being evaluated).
        reference_split: the split searched (None: leave-one-out within the queries' own split).
    """

    name = None
    holds_out_validation = False
    query_split = "query"
    reference_split = None

    def evaluate(self, source, split, embed, params):
        """dict of comparison name -> metrics dict, for the `split` of `source`."""
        raise NotImplementedError

    def evaluated_splits(self, source):
        return ("test",)

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
        """bool `[Q, k]`: is neighbour `neighbours[q, j]` (a row of the reference) relevant to query
        `query_rows[q]` (a row of the query split)? None when the queries have no ground truth."""
        query_labels = query_split.labels[query_rows]
        if (query_labels < 0).all():
            return None
        return query_labels[:, None] == reference_split.labels[neighbours]

    def shows_raw_ids(self, split):
        """Whether the labels of `split` are raw ids (shown as numbers), not indices of class_names."""
        return False


class LabelsProtocol(Protocol):
    """Labelled retrieval (deep metric learning papers): `retrieval_metrics` of the split's images
    against the train split ("vs_train") and leave-one-out within the split ("leave_one_out")."""

    name = "labels"
    holds_out_validation = True
    query_split = None

    def evaluated_splits(self, source):
        return tuple(name for name in ("test", "validation") if name in source.splits)

    def evaluate(self, source, split, embed, params):
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

    def evaluate(self, source, split, embed, params):
        queries, gallery = cap(source.splits["query"], params.eval_size, params.seed), source.splits["gallery"]
        query_emb, gallery_emb = embed(queries), embed(gallery)
        if queries.camids is None:
            found = metrics.retrieval_metrics(query_emb, queries.labels, gallery_emb, gallery.labels)
        else:
            found = metrics.reid_metrics(
                query_emb, queries.labels, queries.camids, gallery_emb, gallery.labels, gallery.camids
            )
        return {"query_vs_gallery": found}

    def shows_raw_ids(self, split):
        return split != "train"  # query and gallery labels are the person ids themselves


class PlacesProtocol(Protocol):
    """Place recognition (NetVLAD): `recall_at_n` of query against database, a database image being
    relevant when it lies within `params.positive_radius` metres (`metrics.within_radius`)."""

    name = "places"
    reference_split = "database"

    def evaluate(self, source, split, embed, params):
        queries, database = cap(source.splits["query"], params.eval_size, params.seed), source.splits["database"]
        found = metrics.recall_at_n(
            embed(queries), embed(database), queries.utm, database.utm, radius=params.positive_radius
        )
        return {"query_vs_database": found}

    def relevance(self, query_split, query_rows, reference_split, neighbours, params):
        if query_split.utm is None or reference_split.utm is None:
            return super().relevance(query_split, query_rows, reference_split, neighbours, params)
        return metrics.within_radius(query_split.utm[query_rows][:, None], reference_split.utm[neighbours],
                                     params.positive_radius)  # [Q, k]


PROTOCOLS = {protocol.name: protocol for protocol in (LabelsProtocol(), ReidProtocol(), PlacesProtocol())}
