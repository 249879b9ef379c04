"""GPS ground truth of place recognition: positives within a radius, places for P×K batches, relations.

    positives = gps_positives(query_utm, db_utm, radius)            # evaluation's ground truth
    places, left_out = gps_places(train_split, positive_radius)     # P×K groups: a query and its database
    relation = GpsRelation(train_split.utm, nontrivial_radius, positive_radius)(labels, ref_labels)

Every radius test of the project (evaluation, pictures, GPS positives) is `within_radius`: float64
differences (UTM coordinates are ~1e6 m).
"""

import numpy as np
import sklearn.neighbors
from keras import ops


def within_radius(utm_a, utm_b, radius):
    """The ground truth of place recognition: bool `|utm_a - utm_b| <= radius`, elementwise.

    `utm_a: [..., 2]` and `utm_b: [..., 2]` (easting, northing in metres) broadcast against each
    other over their leading axes: `[C, 1, 2]` against `[1, N, 2]` gives `[C, N]` without a
    `[C, N, 2]` array. Differences are taken in float64: UTM coordinates are ~1e6 m, too large for
    float32 or for |a|² + |b|² - 2ab. Every radius test of the project (evaluation, pictures, GPS
    positives) is this function.
    """
    squared = np.subtract(utm_a[..., 0], utm_b[..., 0], dtype=np.float64)  # east
    squared *= squared
    north = np.subtract(utm_a[..., 1], utm_b[..., 1], dtype=np.float64)
    north *= north
    squared += north
    return squared <= radius * radius



def gps_positives(query_utm, db_utm, radius):
    """Ground-truth positives of each query: database images within `radius` metres.

    positives[i] = {j : ||query_utm[i] - db_utm[j]||_2 <= radius}, sorted by increasing distance,
    found with sklearn's NearestNeighbors radius query and decided by `within_radius`.

    Args:
        query_utm: float [Q, 2] easting/northing of the queries, in metres.
        db_utm: float [N, 2] easting/northing of the database images.
        radius: float, metres.

    Returns:
        list of Q int64 arrays of database indices.
    """
    query_utm = np.asarray(query_utm, dtype=np.float64).reshape(-1, 2)
    db_utm = np.asarray(db_utm, dtype=np.float64).reshape(-1, 2)
    if len(db_utm) == 0:
        return [np.zeros(0, dtype=np.int64) for _ in query_utm]
    # The tree finds candidates (with a little slack for its own rounding); `within_radius` decides.
    neighbors = sklearn.neighbors.NearestNeighbors().fit(db_utm)
    _, indices = neighbors.radius_neighbors(query_utm, radius=radius * (1 + 1e-9) + 1e-9, sort_results=True)
    return [
        np.asarray(found[within_radius(query_utm[row], db_utm[found], radius)], dtype=np.int64)
        for row, found in enumerate(indices)
    ]


def gps_places(split, radius):
    """The places of a train split for P×K batches: each query with the database images within `radius`.

    places[i] = [q_i] + gps_positives(q_i, database, radius) (nearest first), as indices into `split`,
    for every query q_i (`split.is_query`) that has at least one database image within the radius; the
    places overlap (an image near several queries is in each of their places).

    Args:
        split: a Split with `utm` [N, 2] and `is_query` [N].
        radius: metres.

    Returns:
        (places: list of int64 arrays of split indices, the number of queries left out for having no
        database image within the radius).
    """
    if split.utm is None or split.is_query is None:
        raise ValueError("GPS places need a places train split with utm coordinates and is_query flags")
    queries, database = np.flatnonzero(split.is_query), np.flatnonzero(~split.is_query)
    positives = gps_positives(split.utm[queries], split.utm[database], radius)
    places = [
        np.concatenate([[query], database[found]]).astype(np.int64)
        for query, found in zip(queries, positives, strict=True)
        if len(found)
    ]
    return places, len(queries) - len(places)


class GpsRelation:
    """relation(labels, ref_labels) -> int32 [B, R] from GPS: 1 within `nontrivial_radius` metres, -1 beyond
    `positive_radius`, 0 in between (the NetVLAD recipe: nonTrivPosDistSqThr 100 m², posDistThr 25 m).

    The labels are indices into `utm` (the train split's rows, as the GPS batches carry them). The test is
    `within_radius`'s, in float64 (UTM coordinates are ~1e6 m): east² + north² <= r².
    Written with keras.ops, so it runs inside the training step (the table is a constant of the graph).

    Args:
        utm: float [N, 2] easting/northing of the examples the labels index.
        nontrivial_radius: metres; positives lie within it.
        positive_radius: metres; negatives lie beyond it.
    """

    def __init__(self, utm, nontrivial_radius, positive_radius):
        if not 0 < nontrivial_radius <= positive_radius:
            raise ValueError(
                f"nontrivial_radius must be in (0, positive_radius = {positive_radius}], got {nontrivial_radius}"
            )
        self.utm = np.asarray(utm, dtype=np.float64).reshape(-1, 2)
        self.nontrivial_radius, self.positive_radius = float(nontrivial_radius), float(positive_radius)

    def __call__(self, labels, ref_labels):
        table = ops.convert_to_tensor(self.utm, dtype="float64")  # [N, 2]
        anchors = ops.take(table, ops.reshape(ops.cast(labels, "int32"), (-1,)), axis=0)  # [B, 2]
        references = ops.take(table, ops.reshape(ops.cast(ref_labels, "int32"), (-1,)), axis=0)  # [R, 2]
        east = ops.expand_dims(anchors[:, 0], 1) - ops.expand_dims(references[:, 0], 0)  # [B, R]
        north = ops.expand_dims(anchors[:, 1], 1) - ops.expand_dims(references[:, 1], 0)
        squared = east * east + north * north
        positive = ops.cast(squared <= self.nontrivial_radius**2, "int32")
        negative = ops.cast(squared > self.positive_radius**2, "int32")
        return positive - negative
