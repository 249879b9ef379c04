"""The reference's cached mining (`"mining": "cached"`): tuples against brute-force numpy loops, and a run.

A tuple is (query, best positive in feature space within 10 m, the nearest negatives beyond 25 m that
violate the margin, at most 10); queries without a non-trivial positive or without a violating negative
are skipped, as the reference skips them.
"""

import json

import numpy as np
import pytest

from model.app.training import train
from model.data import Split
from model.data.cached import NEGATIVE, PADDING, POSITIVE, QUERY, ROLES, CachedMiner, tuple_relation
from model.params import Params
from tests.fixtures import write_places_world

ORIGIN = np.array([584000.0, 4477000.0])


def _split(rng, num_database=80, num_queries=20):
    utm = ORIGIN + rng.uniform(0.0, 150.0, size=(num_database + num_queries, 2))
    utm[-1] = ORIGIN + [9000.0, 9000.0]  # a query without any database image near it
    images = np.zeros((len(utm), 1, 1, 1), np.uint8)
    return Split(labels=np.zeros(len(utm)), images=images, utm=utm, is_query=np.arange(len(utm)) >= num_database)


def _expected(split, features, query, margin, num_negatives=10):
    """The tuple by loops over every database image (the sample holds every candidate)."""
    database = np.flatnonzero(~split.is_query)
    metres = {j: np.hypot(*(split.utm[query] - split.utm[j])) for j in database}
    feature = {j: np.linalg.norm(features[query].astype(np.float32) - features[j].astype(np.float32)) for j in database}
    positives = [j for j in database if metres[j] <= 10.0]
    if not positives:
        return None
    best = min(positives, key=lambda j: feature[j])
    violating = [j for j in database if metres[j] > 25.0 and feature[j] < feature[best] + margin]
    if not violating:
        return None
    return best, sorted(violating, key=lambda j: (feature[j], j))[:num_negatives]


@pytest.mark.parametrize("margin", [0.1, 1.0])
def test_tuples_match_loops_and_skip_queries_without_positive_or_violation(margin):
    rng = np.random.default_rng(0)
    split = _split(rng)
    features = rng.normal(size=(len(split), 6)).astype(np.float16)
    miner = CachedMiner(split, 10.0, 25.0, margin, sample_size=10_000)
    miner.refresh(features)
    outcomes = set()
    for row, query in enumerate(miner.queries):
        got = miner.example(row, np.random.default_rng(row))
        expected = _expected(split, miner.features, query, margin)
        outcomes.add("skipped" if expected is None else "tuple")
        if expected is None:
            assert got is None
        else:
            assert got[0] == query and got[1] == expected[0] and got[2].tolist() == expected[1]
            assert len(got[2]) <= 10
    assert outcomes == {"skipped", "tuple"}


def test_negatives_that_satisfy_the_margin_are_not_taken():
    rng = np.random.default_rng(1)
    split = _split(rng)
    features = rng.normal(size=(len(split), 6)).astype(np.float16)
    miner = CachedMiner(split, 10.0, 25.0, margin=0.0, sample_size=10_000)
    row = next(r for r, found in enumerate(miner.positives) if len(found))
    features[miner.positives[row]] = features[miner.queries[row]]  # the positive at distance 0: nothing violates
    miner.refresh(features)
    assert miner.example(row, rng) is None


def test_the_negative_cache_joins_the_next_sample():
    rng = np.random.default_rng(2)
    split = _split(rng)
    miner = CachedMiner(split, 10.0, 25.0, margin=10.0, sample_size=10_000)  # every negative violates
    miner.refresh(rng.normal(size=(len(split), 6)))
    row = next(r for r, found in enumerate(miner.positives) if len(found))
    first = miner.example(row, rng)[2]
    miner.sample_size = 0  # nothing sampled: the cached negatives are all there is
    assert miner.example(row, rng)[2].tolist() == first.tolist()


def test_tuple_relation_by_loops():
    labels = np.array([ROLES * t + role for t in range(3) for role in (QUERY, POSITIVE, NEGATIVE, NEGATIVE, PADDING)])
    got = np.asarray(tuple_relation(labels, labels))
    for i, a in enumerate(labels):
        for j, r in enumerate(labels):
            same_query = a // ROLES == r // ROLES and a % ROLES == QUERY
            expected = 1 if same_query and r % ROLES == POSITIVE else -1 if same_query and r % ROLES == NEGATIVE else 0
            assert got[i, j] == expected


def test_batches_are_tuples_of_the_miner():
    rng = np.random.default_rng(3)
    split = _split(rng, num_database=120, num_queries=30)
    miner = CachedMiner(split, 10.0, 25.0, margin=10.0)
    miner.refresh(rng.normal(size=(len(split), 6)))
    indices, labels = miner.batch(step=5, queries_per_batch=3, seed=1)
    assert len(indices) == len(labels) == 3 * 12
    relation = np.asarray(tuple_relation(labels, labels))
    for t in range(3):
        query = indices[12 * t]
        assert split.is_query[query] and labels[12 * t] == ROLES * t + QUERY
        for j in np.flatnonzero(relation[12 * t] == 1):
            assert np.hypot(*(split.utm[query] - split.utm[indices[j]])) <= 10.0
        for j in np.flatnonzero(relation[12 * t] == -1):
            assert np.hypot(*(split.utm[query] - split.utm[indices[j]])) > 25.0
    np.testing.assert_array_equal(miner.batch(step=5, queries_per_batch=3, seed=1)[0][:1], indices[:1])


PLACES = {
    "model": "mnist_convnet", "dataset": "places", "image_size": 24, "num_channels": 4, "embedding_size": 8,
    "loss": "batch_all", "margin": 0.5, "mining": "cached", "batch_size": 2, "cache_refresh": 4,
    "num_epochs": 1, "steps_per_epoch": 3, "validation_size": 0, "seed": 3,
}  # fmt: skip


def test_a_cached_mining_run_trains(tmp_path):
    data = tmp_path / "data"
    write_places_world(data, num_database=80, num_queries=20)
    rows = train(Params.from_dict({**PLACES, "data_dir": str(data)}), str(tmp_path / "run")).rows
    assert len(rows) == 1 and np.isfinite(float(rows[0]["loss"])) and float(rows[0]["loss"]) > 0


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"dataset": "digits"}, "it mines places by GPS"),
        ({"classes_per_batch": 2, "images_per_class": 2}, "not P×K"),
        ({"memory": {"size": 16, "warmup_steps": 0}}, 'drop "memory"'),
        ({"loss": "proxy_nca"}, "has no pairs to mine"),
    ],
)
def test_cached_mining_params_are_checked(changes, message):
    with pytest.raises(ValueError, match=message):
        Params.from_dict({**PLACES, "data_dir": "x", **changes})


def test_a_refresh_without_enough_tuples_is_refused_at_the_start_and_kept_over_later(caplog):
    rng = np.random.default_rng(4)
    split = _split(rng)
    miner = CachedMiner(split, 10.0, 25.0, margin=0.0, sample_size=10_000, queries_per_batch=2)
    far = np.zeros((len(split), 6), np.float16)
    far[~split.is_query] = 5.0  # every database image at distance sqrt(6)·5 of every query: ties violate nothing
    with pytest.raises(ValueError, match=r'mining "cached": only 0 of the 20 train queries .* violating the margin '
                                         r"\(0\).*Raise margin, or nontrivial_radius, or add train data"):
        miner.refresh(far)
    with pytest.raises(ValueError, match="Raise margin"):  # a batch waiting for the cache ends too
        miner.batch(step=0, queries_per_batch=2, seed=1)
    miner = CachedMiner(split, 10.0, 25.0, margin=10.0, sample_size=10_000, queries_per_batch=2)
    features = rng.normal(size=(len(split), 6)).astype(np.float16)
    miner.refresh(features)
    assert miner.usable_queries() > 2
    miner.margin = 0.0
    miner.refresh(far)  # later in a run: the previous cache is kept, the run goes on
    np.testing.assert_array_equal(miner.features, features)
    assert any("the previous feature cache is kept" in record.getMessage() for record in caplog.records)
    only = next(r for r, found in enumerate(miner.positives) if len(found))
    miner.example = lambda row, rng: CachedMiner.example(miner, row, rng) if row == only else None
    indices, labels = miner.batch(step=0, queries_per_batch=3, seed=1)  # one tuple found: repeated to fill
    assert len(indices) == 3 * 12 and indices[0] == indices[12] == indices[24] == miner.queries[only]
    assert labels[12] == ROLES * 1 + QUERY


def test_a_cached_mining_run_that_cannot_form_a_batch_says_what_can_help(tmp_path, capsys):
    import train as train_cli

    data = tmp_path / "data"
    write_places_world(data, num_database=40, num_queries=10)
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    (model_dir / "params.json").write_text(json.dumps({**PLACES, "data_dir": str(data), "nontrivial_radius": 0.01}))
    assert train_cli.main(["--model_dir", str(model_dir)]) == 2
    error = capsys.readouterr().err
    assert 'error: mining "cached": only 0 of the 10 train queries' in error and "Raise margin" in error
    assert "lower batch_size" not in error and "Traceback" not in error
