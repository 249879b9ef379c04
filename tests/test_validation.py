"""Validation during training for every protocol: the hold-outs and the metrics, against numpy loops.

labels   random train images, leave-one-out precision@1 (tests/test_training.py)
reid     train identities as a small query/gallery: mAP and rank-1 under Market-1501's camera rule
places   train queries searched in the train database: Recall@1/5/10 within positive_radius
"""

import csv
import os

import numpy as np
import pytest

from model.app import adapter
from model.app.training import summary, train
from model.data import DATASETS, Split, load_source
from model.data.holdout import hold_out_identities, hold_out_queries
from model.evaluation.protocols import PROTOCOLS
from model.params import Params
from tests.fixtures import write_places_world

ORIGIN = np.array([584000.0, 4477000.0])


def _images(n):
    return np.zeros((n, 1, 1, 1), np.uint8)


def _places_train(rng, num_database=50, num_queries=20):
    utm = ORIGIN + rng.uniform(0.0, 100.0, size=(num_database + num_queries, 2))
    return Split(
        labels=np.zeros(len(utm)),
        images=_images(len(utm)),
        utm=utm,
        is_query=np.arange(len(utm)) >= num_database,
        names=[str(i) for i in range(len(utm))],
    )


def test_places_hold_out_queries_with_the_whole_database():
    split = _places_train(np.random.default_rng(0))
    assert DATASETS["places"].hold_out is hold_out_queries
    train, validation = hold_out_queries(split, 0.25, seed=3)
    held = [name for name, query in zip(validation.names, validation.is_query, strict=True) if query]
    assert len(held) == 5 and not set(held) & set(train.names)  # 25 % of the 20 queries, gone from train
    assert sorted(train.names + held, key=int) == split.names  # nothing else lost
    database = [name for name, query in zip(split.names, split.is_query, strict=True) if not query]
    assert [name for name, query in zip(validation.names, validation.is_query, strict=True) if not query] == database
    assert [name for name, query in zip(train.names, train.is_query, strict=True) if not query] == database
    assert hold_out_queries(split, 0.25, seed=3)[1].names == validation.names
    with pytest.raises(ValueError, match=r"count between 1 and 19 \(the train split has 20 queries\), got 20"):
        hold_out_queries(split, 20, seed=0)


def test_places_validation_metrics_are_recall_at_1_5_10_by_loops():
    rng = np.random.default_rng(1)
    split = _places_train(rng, num_database=40, num_queries=12)
    embeddings = rng.normal(size=(len(split), 4)).astype(np.float32)
    params = Params.from_dict({"dataset": "places", "data_dir": "x", "classes_per_batch": 2, "images_per_class": 2})
    protocol = adapter.protocol(params)
    assert isinstance(protocol, PROTOCOLS["places"].component) and protocol.positive_radius == 25.0
    got = protocol.validation_metrics(split, embeddings)
    queries, database = np.flatnonzero(split.is_query), np.flatnonzero(~split.is_query)
    hits = {1: 0, 5: 0, 10: 0}
    for q in queries:
        order = sorted(database, key=lambda j: np.sum((embeddings[q] - embeddings[j]) ** 2))
        near = [np.hypot(*(split.utm[q] - split.utm[j])) <= 25.0 for j in order]
        for n in hits:
            hits[n] += any(near[:n])
    assert got == pytest.approx({f"val_recall_at_{n}": count / len(queries) for n, count in hits.items()})
    assert 0 < got["val_recall_at_1"] < got["val_recall_at_10"]
    assert protocol.validation_key == "val_recall_at_1"


def _reid_train(rng, identities=12, per_identity=6, cameras=True):
    labels = np.repeat(np.arange(identities), per_identity)
    camids = rng.integers(1, 4, size=len(labels)) if cameras else None
    return Split(labels=labels, images=_images(len(labels)), camids=camids, names=[str(i) for i in range(len(labels))])


@pytest.mark.parametrize("cameras", [True, False])
def test_reid_hold_out_identities_as_a_query_gallery(cameras):
    split = _reid_train(np.random.default_rng(2), cameras=cameras)
    assert DATASETS["market1501"].hold_out is DATASETS["inshop"].hold_out is hold_out_identities
    train, validation = hold_out_identities(split, 0.25, seed=5)
    assert len(np.unique(validation.labels)) == 3 and not set(validation.labels) & set(train.labels)
    assert len(train) + len(validation) == len(split)
    keys = list(zip(validation.labels, validation.camids if cameras else validation.labels, strict=True))
    for i, key in enumerate(keys):  # the first image of each identity (and camera) is the query
        assert validation.is_query[i] == (keys.index(key) == i)


def _reid_loops(split, embeddings):
    """mAP and rank-1; with cameras, Market-1501's rule: same identity and camera is junk, left out of the ranking."""
    aps, firsts = [], []
    for q in np.flatnonzero(split.is_query):
        gallery = [
            g
            for g in np.flatnonzero(~split.is_query)
            if split.camids is None or not (split.labels[g] == split.labels[q] and split.camids[g] == split.camids[q])
        ]
        order = sorted(gallery, key=lambda g: np.sum((embeddings[q] - embeddings[g]) ** 2))
        matches = [split.labels[g] == split.labels[q] for g in order]
        if not any(matches):
            continue
        ranks = [r + 1 for r, match in enumerate(matches) if match]
        aps.append(np.mean([(j + 1) / rank for j, rank in enumerate(ranks)]))
        firsts.append(ranks[0] == 1)
    return {"val_mAP": np.mean(aps), "val_rank_1": np.mean(firsts)}


@pytest.mark.parametrize("cameras", [True, False])
def test_reid_validation_metrics_are_map_and_rank_1_by_loops(cameras):
    rng = np.random.default_rng(3)
    _, validation = hold_out_identities(_reid_train(rng, identities=20, cameras=cameras), 0.5, seed=1)
    embeddings = (rng.normal(size=(len(validation), 4)) + validation.labels[:, None] * 0.3).astype(np.float32)
    protocol = PROTOCOLS["reid"].component()
    got = protocol.validation_metrics(validation, embeddings)
    assert got == pytest.approx(_reid_loops(validation, embeddings))
    assert protocol.validation_problem(validation) is None
    lonely = Split(labels=[0, 0, 1], images=_images(3), camids=[1, 1, 2], is_query=[True, False, True])
    assert "no validation query has an image of its identity" in protocol.validation_problem(lonely)


def test_places_source_holds_out_validation_queries(tmp_path):
    write_places_world(tmp_path, num_database=40, num_queries=12)
    source = load_source("places", data_dir=str(tmp_path), validation_size=3, seed=0)
    train, validation = source.splits["train"], source.splits["validation"]
    assert validation.is_query.sum() == 3 and train.is_query.sum() == 9
    assert (~validation.is_query).sum() == (~train.is_query).sum() == 40


PLACES = {
    "model": "mnist_convnet", "dataset": "places", "image_size": 24, "num_channels": 4, "embedding_size": 8,
    "loss": "batch_all", "margin": 0.1, "classes_per_batch": 4, "images_per_class": 3, "num_epochs": 3,
    "steps_per_epoch": 2, "learning_rate": 0.01, "validation_size": 8, "seed": 3,
}  # fmt: skip


def test_a_places_run_validates_by_recall_and_keeps_the_best(tmp_path):
    data = tmp_path / "data"
    write_places_world(data, num_database=60, num_queries=24)
    run = tmp_path / "run"
    result = train(Params.from_dict({**PLACES, "data_dir": str(data)}), str(run))
    assert result.best_key == "val_recall_at_1"
    with open(os.path.join(run, "history.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert {"val_recall_at_1", "val_recall_at_5", "val_recall_at_10"} <= set(rows[0])
    scores = [float(row["val_recall_at_1"]) for row in rows]
    best = int(np.argmax(scores)) + 1  # the first maximum
    assert f"best epoch {best} of 3: val_recall_at_1 {max(scores):.4g}" in summary(str(run), result)
