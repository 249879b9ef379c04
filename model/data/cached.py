"""The NetVLAD reference's cached mining for places (`"mining": "cached"`): training tuples mined in a feature cache.

    miner = CachedMiner(train_split, nontrivial_radius=10, positive_radius=25, margin=0.1, seed=230)
    miner.refresh(features)                       # [N, D] embeddings of every train image (database and queries)
    tuple_ = miner.example(query, rng)            # (query, best positive, up to 10 negatives) or None
    dataset = cached_dataset(miner, split, image_size=[480, 640], channels=3, batch_size=4)  # tuple codes
    relation = tuple_relation(labels, ref_labels)   # query -> its positive 1, its negatives -1, else 0

As Nanne/pytorch-NetVlad (after Arandjelović et al., NetVLAD, CVPR 2016) trains, for each train query q:
  * positive: the database image nearest to q in feature space among those within `nontrivial_radius`
    (10 m, nonTrivPosDistSqThr = 100 m²); a query without one is skipped;
  * negatives: a random sample of `sample_size` (1,000) database images farther than `positive_radius`
    (25 m, posDistThr), together with q's negatives of its previous tuple (the negative cache); of those,
    the `num_negatives` (10) nearest in feature space that violate the margin, d(q, n) < d(q, p) + margin
    (euclidean distances; the reference compares squared distances with margin**0.5); a query whose sampled
    negatives all satisfy the margin is skipped;
  * the features come from a cache of every train image's embedding (`FeatureCache`), refreshed by training
    every `cache_refresh` queries (1,000), as the reference's `cacheRefreshRate`; the two batches that
    tf.data prepares ahead are mined with the cache of their time.
Each refresh counts the queries that form a tuple, up to a batch's worth: when the network training starts
from gives fewer, training is refused at once with what can help (a larger margin or nontrivial_radius, more
train data; a smaller batch_size cannot give queries that have no tuple); a later refresh that finds too few
keeps the previous cache (with a warning) and the run goes on. A batch that still finds fewer tuples than it
needs repeats those it found (with a warning), so the run is never ended mid-way by the miner.
The tuples are then trained with the run's loss through a relation (`tuple_relation`): each query is the
anchor of its positive (1) and of its negatives (-1); every other pair is neither.

Memory: the cache is float16 in host memory, N × D × 2 bytes (Pitts250k train, ~90k images at D = 4,096:
0.7 GiB; 250k × 4,096 would be 2 GiB), plus the per-query index lists of positives and of images within
`positive_radius` (a few dozen each). Negatives are found by exact distances to the sampled 1,000 + cached
ones (numpy, no index: 1,010 × D per query), the positives among a query's few non-trivial neighbours.
"""

import dataclasses
import logging
import threading
from collections.abc import Callable

import numpy as np
import tensorflow as tf
from keras import ops

from model.data.augment import check_augment, image_loader, size_pair
from model.data.gps import gps_positives
from model.data.pipeline import make_dataset
from model.registry import INT, Option

logger = logging.getLogger(__name__)

# Roles in a tuple's label code: label = ROLES * tuple + role.
QUERY, POSITIVE, NEGATIVE, PADDING = 0, 1, 2, 3
ROLES = 4


class CachedMiner:
    """Training tuples (query, best positive, hardest violating negatives) of a places train split.

    Args:
        split: the train Split (utm [N, 2], is_query [N]).
        nontrivial_radius: metres; a query's positives lie within it.
        positive_radius: metres; its negatives lie beyond it.
        margin: the triplet margin (a negative violates it when d(q, n) < d(q, p) + margin).
        num_negatives: negatives per tuple at most (10).
        sample_size: database images beyond `positive_radius` sampled per query (1,000).
        queries_per_batch: tuples a batch needs (batch_size), which each refresh checks can be formed.
    """

    def __init__(self, split, nontrivial_radius, positive_radius, margin, num_negatives=10, sample_size=1000,
                 queries_per_batch=1):
        self.queries = np.flatnonzero(split.is_query)
        self.nontrivial_radius, self.queries_per_batch = float(nontrivial_radius), int(queries_per_batch)
        self.database = np.flatnonzero(~split.is_query)
        db_utm, query_utm = split.utm[self.database], split.utm[self.queries]
        self.positives = [self.database[found] for found in gps_positives(query_utm, db_utm, nontrivial_radius)]
        self.near = [self.database[found] for found in gps_positives(query_utm, db_utm, positive_radius)]
        self.margin, self.num_negatives, self.sample_size = float(margin), int(num_negatives), int(sample_size)
        self.negative_cache = {}  # query row -> its negatives of its last tuple
        self.features = None  # float16 [N, D]
        self.failure = None  # why no batch can be formed (the first refresh found too few tuples)
        self._ready = threading.Event()

    def refresh(self, features):
        """Replace the feature cache: `features: [N, D]`, the embeddings of every image of the split.

        Raises:
            ValueError: at the first refresh, when fewer queries than a batch needs form a tuple.
        """
        previous, self.features = self.features, np.asarray(features, dtype=np.float16)
        found = self.usable_queries(self.queries_per_batch)
        if found < self.queries_per_batch:
            message = (f'mining "cached": only {found} of the {len(self.queries)} train queries have a database '
                       f"image within nontrivial_radius ({self.nontrivial_radius:g} m) and a negative violating the "
                       f"margin ({self.margin:g})")
            if previous is None:  # the network training starts from: nothing to train
                self.failure = (f"{message} with the network as training starts, and a batch needs "
                                f"{self.queries_per_batch} (batch_size). Raise margin, or nontrivial_radius, or add "
                                "train data (queries with database images near them); a smaller batch_size "
                                "cannot give queries a tuple")
                self._ready.set()  # batches waiting for the cache end too
                raise ValueError(self.failure)
            logger.warning("%s after this refresh; a batch needs %d: the previous feature cache is kept",
                           message, self.queries_per_batch)
            self.features = previous
        self._ready.set()

    def usable_queries(self, enough=None):
        """How many queries form a tuple with the current cache (counting stops at `enough`), their negative cache
        left as it is."""
        rng, saved, count = np.random.default_rng(0), dict(self.negative_cache), 0
        try:
            for row in range(len(self.queries)):
                count += self.example(row, rng) is not None
                if enough is not None and count >= enough:
                    break
        finally:
            self.negative_cache = saved
        return count

    def _distances(self, query, others):
        """Euclidean distances [len(others)] between the cached features of `query` and of `others` (float32)."""
        difference = self.features[others].astype(np.float32) - self.features[query].astype(np.float32)
        return np.sqrt(np.sum(difference * difference, axis=1))

    def example(self, row, rng):
        """The tuple of query `self.queries[row]`: (query, positive, negatives int64 [<= num_negatives]) as
        split indices, or None when it has no positive within nontrivial_radius or no violating negative."""
        query, positives = self.queries[row], self.positives[row]
        if not len(positives):
            return None
        distance_positive = self._distances(query, positives)
        positive = positives[np.argmin(distance_positive)]
        candidates = np.setdiff1d(self.database, self.near[row], assume_unique=True)  # beyond positive_radius
        sample = rng.choice(candidates, min(self.sample_size, len(candidates)), replace=False)
        sample = np.union1d(sample, self.negative_cache.get(row, np.zeros(0, np.int64)))
        distance_negative = self._distances(query, sample)
        violating = distance_negative < distance_positive.min() + self.margin
        if not violating.any():
            return None
        order = np.argsort(distance_negative[violating], kind="stable")[: self.num_negatives]
        negatives = sample[violating][order]
        self.negative_cache[row] = negatives
        return query, positive, negatives

    def batch(self, step, queries_per_batch, seed):
        """(indices int64 [T], labels int32 [T]) of one batch of `queries_per_batch` tuples, T = queries_per_batch
        · (2 + num_negatives): each tuple is query, positive, negatives, padded with its query as PADDING (no
        relation). Queries are drawn at random (seeded by `seed` and `step`); skipped ones are replaced, and
        when fewer than `queries_per_batch` form a tuple those found are repeated (with a warning). Waits for the
        first `refresh`."""
        self._ready.wait()
        if self.failure:
            raise ValueError(self.failure)
        rng = np.random.default_rng([seed, step])
        found = []
        for row in rng.permutation(len(self.queries)):
            example = self.example(row, rng)
            if example is not None:
                found.append(example)
                if len(found) == queries_per_batch:
                    break
        if not found:
            raise ValueError('mining "cached": no train query forms a tuple with the current feature cache (a '
                             "database image within nontrivial_radius and a negative violating the margin)")
        if len(found) < queries_per_batch:
            logger.warning('mining "cached": only %d of the %d train queries form a tuple in batch %d; they are '
                           "repeated to fill its %d tuples", len(found), len(self.queries), step, queries_per_batch)
        size = 2 + self.num_negatives
        indices, labels = [], []
        for tuple_number in range(queries_per_batch):
            query, positive, negatives = found[tuple_number % len(found)]
            padding = size - 2 - len(negatives)
            indices += [query, positive, *negatives] + [query] * padding
            roles = [QUERY, POSITIVE] + [NEGATIVE] * len(negatives) + [PADDING] * padding
            labels += [ROLES * tuple_number + role for role in roles]
        return np.array(indices, np.int64), np.array(labels, np.int32)


def tuple_relation(labels, ref_labels):
    """int32 [B, R] of tuple label codes (`ROLES · tuple + role`): 1 from a query to its tuple's positive, -1 to
    its tuple's negatives, 0 otherwise (the other rows are anchors of nothing)."""
    labels = ops.reshape(ops.cast(labels, "int32"), (-1, 1))
    ref_labels = ops.reshape(ops.cast(ref_labels, "int32"), (1, -1))
    same_tuple = ops.equal(labels // ROLES, ref_labels // ROLES)
    from_query = ops.logical_and(same_tuple, ops.equal(labels % ROLES, QUERY))  # [B, R]
    positive = ops.logical_and(from_query, ops.equal(ref_labels % ROLES, POSITIVE))
    negative = ops.logical_and(from_query, ops.equal(ref_labels % ROLES, NEGATIVE))
    return ops.cast(positive, "int32") - ops.cast(negative, "int32")


def cached_dataset(miner, split, *, image_size, channels, batch_size, augment=None, seed=0, num_parallel_calls=None,
                   start_step=0):
    """Endless batches of (images float32 [T, H, W, C], tuple label codes int32 [T]) of `batch_size` tuples mined
    by `miner` (augmented by `augment`, as `make_dataset`), from batch `start_step` of the seeded stream on."""
    size = size_pair(image_size, "image_size")
    load, _ = image_loader(split, size, channels, check_augment(augment, size), seed)
    per_batch = batch_size * (2 + miner.num_negatives)

    def batches():
        step = start_step
        while True:
            yield miner.batch(step, batch_size, seed)
            step += 1

    signature = (tf.TensorSpec([per_batch], tf.int64), tf.TensorSpec([per_batch], tf.int32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=signature).unbatch()
    # The counter of each image seeds its augmentation, from the first image of batch start_step on.
    dataset = dataset.enumerate(start=start_step * per_batch)
    dataset = dataset.map(
        lambda counter, item: (load(item[0], counter), item[1]),
        num_parallel_calls=num_parallel_calls or tf.data.AUTOTUNE,
    )
    return dataset.batch(per_batch, drop_remainder=True).prefetch(2)


@dataclasses.dataclass(frozen=True)
class FeatureCache:
    """A cache of embeddings that training refreshes with the network being trained: at the start of training,
    then every `every` batches, it embeds `dataset` (every image of a split, in order) and hands the `[N, D]`
    embeddings to `receive`."""

    dataset: object
    receive: Callable
    every: int


def feature_cache(miner, split, cache_refresh, *, image_size, channels, batch_size, **_):
    """The miner's `FeatureCache`: every train image, refreshed every `cache_refresh` queries (every
    ceil(cache_refresh / batch_size) batches of `batch_size` tuples)."""
    dataset = make_dataset(split, image_size=image_size, channels=channels, training=False)
    return FeatureCache(dataset, miner.refresh, max(1, -(-cache_refresh // batch_size)))


def _cached_mining(values, chosen):
    """The reference's cached mining: places, batch_size tuples, one device, no memory, a pair loss."""
    if values["mining"] != "cached":
        return None
    problems = [
        (values["dataset"] != "places", f'it mines places by GPS, not dataset {values["dataset"]!r}'),
        (values["classes_per_batch"] is not None, 'its batches are "batch_size" tuples, not P×K: drop '
                                                   '"classes_per_batch" and "images_per_class"'),
        (values["distribute"] is not None, 'it runs on one device: drop "distribute"'),
        (values["memory"] is not None, 'its tuples are mined in the feature cache: drop "memory"'),
        (not chosen["loss"].component.mines_in_batch, f'loss {values["loss"]!r} has no pairs to mine'),
    ]
    return next((f'"mining" "cached": {reason}' for failed, reason in problems if failed), None)


CACHE_REFRESH = Option("cache_refresh", (INT,), 1000, 'mining "cached": queries between refreshes of the feature cache',
                       positive=True)
RULES = (_cached_mining,)
