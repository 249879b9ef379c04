"""Places trained by GPS: the relation from UTM coordinates, the GPS places, their P×K batches, and a run.

The references are brute-force numpy loops and `model.data.gps.within_radius` (float64 differences).
"""

import logging

import keras
import numpy as np
import pytest

from model.app import adapter
from model.app.training import train
from model.data import Split, load_source, make_dataset
from model.data.gps import GpsRelation, gps_places, within_radius
from model.losses import loss_class
from model.params import Params
from model.training import EmbeddingModel
from model.training.memory import CrossBatchMemory
from model.triplet_loss import batch_all_triplet_loss
from tests.fixtures import write_places_world

ORIGIN = np.array([584000.0, 4477000.0])


def _relation_loops(utm, labels, ref_labels, nontrivial, positive):
    relation = np.zeros((len(labels), len(ref_labels)), np.int32)
    for i, a in enumerate(labels):
        for j, r in enumerate(ref_labels):
            close = within_radius(utm[a], utm[r], nontrivial)
            far = not within_radius(utm[a], utm[r], positive)
            relation[i, j] = 1 if close else -1 if far else 0
    return relation


def test_gps_relation_matches_within_radius_at_utm_scale_and_on_the_boundaries():
    rng = np.random.default_rng(0)
    utm = ORIGIN + rng.uniform(0.0, 60.0, size=(40, 2))
    utm[1] = utm[0] + [10.0, 0.0]  # exactly the non-trivial radius: a positive
    utm[2] = utm[0] + [0.0, 25.0]  # exactly the positive radius: neither
    utm[3] = utm[0] + [6.0, 8.0]  # 10 m on a diagonal
    labels, ref_labels = rng.permutation(40)[:12], np.arange(40)
    labels[:4] = [0, 1, 2, 3]
    got = np.asarray(GpsRelation(utm, 10.0, 25.0)(labels, ref_labels))
    expected = _relation_loops(utm, labels, ref_labels, 10.0, 25.0)
    np.testing.assert_array_equal(got, expected)
    assert got[0, 1] == 1 and got[0, 2] == 0 and got[0, 3] == 1 and got[1, 0] == 1
    assert {-1, 0, 1} <= set(got.ravel().tolist())


def test_gps_relation_refuses_a_nontrivial_radius_beyond_the_positive_one():
    with pytest.raises(ValueError, match=r"nontrivial_radius must be in \(0, positive_radius = 25.0\], got 30"):
        GpsRelation(np.zeros((2, 2)), 30, 25.0)


def _places_split(rng, num_database=60, num_queries=15):
    utm = ORIGIN + rng.uniform(0.0, 120.0, size=(num_database + num_queries, 2))
    utm[-1] = ORIGIN + [5000.0, 5000.0]  # a query far from every database image
    is_query = np.arange(len(utm)) >= num_database
    images = np.broadcast_to(np.arange(len(utm), dtype=np.uint8)[:, None, None, None], (len(utm), 4, 4, 1)).copy()
    return Split(labels=np.zeros(len(utm)), images=images, utm=utm, is_query=is_query)


def test_gps_places_are_each_query_with_the_database_within_the_radius():
    split = _places_split(np.random.default_rng(1))
    places, left_out = gps_places(split, 25.0)
    queries = np.flatnonzero(split.is_query)
    expected = []
    for q in queries:
        near = [j for j in np.flatnonzero(~split.is_query) if np.hypot(*(split.utm[q] - split.utm[j])) <= 25.0]
        if near:
            expected.append((q, sorted(near)))
    assert left_out == len(queries) - len(expected) >= 1
    assert [(place[0], sorted(place[1:].tolist())) for place in places] == expected


def test_pk_batches_of_places_carry_indices_and_come_from_one_place_per_block():
    split = _places_split(np.random.default_rng(2))
    places, _ = gps_places(split, 25.0)
    p, k = 3, 2
    dataset = make_dataset(
        split, image_size=4, channels=1, training=True, classes_per_batch=p, images_per_class=k, seed=4, groups=places
    )
    members = [set(place.tolist()) for place in places]
    for images, labels in dataset.take(40):
        indices, labels = images.numpy()[:, 0, 0, 0].astype(int), labels.numpy()
        np.testing.assert_array_equal(labels, indices)  # the label is the example's index in the split
        blocks = [set(indices[b * k : (b + 1) * k].tolist()) for b in range(p)]
        owners = [[i for i, place in enumerate(members) if block <= place] for block in blocks]
        assert all(owners), blocks  # each block lies in one place
    with pytest.raises(ValueError, match="groups are drawn as P×K batches"):
        make_dataset(split, image_size=4, channels=1, training=True, batch_size=4, groups=places)
    with pytest.raises(ValueError, match=r"only 2 groups \(places\)"):
        make_dataset(
            split, image_size=4, channels=1, training=True, classes_per_batch=3, images_per_class=2, groups=places[:2]
        )


def test_embedding_model_takes_its_pairs_from_the_relation():
    rng = np.random.default_rng(3)
    utm = ORIGIN + rng.uniform(0.0, 40.0, size=(30, 2))
    relation_fn = GpsRelation(utm, 10.0, 25.0)
    network = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4)])
    model = EmbeddingModel(network, loss_class("batch_all")(margin=0.5), relation_fn=relation_fn)
    labels = rng.permutation(30)[:10].astype(np.int32)
    embeddings = rng.normal(size=(10, 4)).astype(np.float32)
    loss = float(model.compute_loss(y=labels, y_pred=embeddings))
    relation = _relation_loops(utm, labels, labels, 10.0, 25.0)
    expected = float(batch_all_triplet_loss(labels, embeddings, 0.5, relation=relation)[0])
    assert loss == pytest.approx(expected, rel=1e-6) and loss > 0
    by_labels = float(EmbeddingModel(network, model.mined_loss).compute_loss(y=labels, y_pred=embeddings))
    assert by_labels != pytest.approx(loss)  # distinct labels: no positive at all without the relation


PLACES = {
    "model": "mnist_convnet",
    "dataset": "places",
    "image_size": 24,
    "num_channels": 4,
    "embedding_size": 8,
    "loss": "batch_all",
    "margin": 0.1,
    "classes_per_batch": 4,
    "images_per_class": 3,
    "num_epochs": 1,
    "steps_per_epoch": 2,
    "seed": 3,
}


def test_places_protocol_trains_by_gps_unless_asked_for_labels(tmp_path, caplog):
    write_places_world(tmp_path, num_database=40, num_queries=12)
    source = load_source("places", data_dir=str(tmp_path))
    params = Params.from_dict({**PLACES, "data_dir": str(tmp_path)})
    with caplog.at_level(logging.WARNING, logger="model.data"):
        pairing = adapter.training_pairs(params, source.splits["train"])
    expected, left_out = gps_places(source.splits["train"], 25.0)
    assert [place.tolist() for place in pairing.groups] == [place.tolist() for place in expected]
    if left_out:
        assert any(f"{left_out} of 12 train queries have no database image within 25.0 m" in record.getMessage()
                   for record in caplog.records)
    assert isinstance(pairing.relation_fn, GpsRelation) and pairing.relation_fn.nontrivial_radius == 10.0
    assert pairing.batches is None and pairing.cache is None  # P×K batches of the groups, no feature cache
    assert adapter.training_pairs(params.replace(places_training="labels"), source.splits["train"]) is None
    assert adapter.training_pairs(params.replace(dataset="digits", data_dir=None), source.splits["train"]) is None


def test_a_places_run_trains_by_gps(tmp_path):
    data = tmp_path / "data"
    write_places_world(data, num_database=40, num_queries=12)
    rows = train(Params.from_dict({**PLACES, "data_dir": str(data)}), str(tmp_path / "run")).rows
    assert len(rows) == 1 and np.isfinite(float(rows[0]["loss"]))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"nontrivial_radius": 30.0}, r'"nontrivial_radius" \(30.0 m, positives\) must be at most "positive_radius"'),
        ({"classes_per_batch": None, "images_per_class": None}, r'"gps" draws P×K batches of places'),
        ({"loss": "proxy_nca"}, r"loss .proxy_nca. learns one proxy per class"),
    ],
)
def test_gps_training_params_are_checked_by_name(changes, message):
    with pytest.raises(ValueError, match=message):
        Params.from_dict({**PLACES, "data_dir": "x", **changes})


def test_the_relation_reaches_a_cross_batch_memory():
    # Memory labels are split indices too: the batch is mined against the memory by GPS distance.
    rng = np.random.default_rng(5)
    utm = ORIGIN + rng.uniform(0.0, 40.0, size=(30, 2))
    network = keras.Sequential([keras.Input((2,)), keras.layers.Dense(4)])
    memory = CrossBatchMemory(16, 4, warmup_steps=0)
    loss = loss_class("batch_all")(margin=0.5)
    model = EmbeddingModel(network, loss, memory=memory, relation_fn=GpsRelation(utm, 10.0, 25.0))
    first, second = rng.permutation(30)[:8].astype(np.int32), rng.permutation(30)[:6].astype(np.int32)
    first_embeddings, embeddings = (
        rng.normal(size=(8, 4)).astype(np.float32),
        rng.normal(size=(6, 4)).astype(np.float32),
    )
    model.compute_loss(y=first, y_pred=first_embeddings)  # fills the memory with the first batch
    got = float(model.compute_loss(y=second, y_pred=embeddings))
    ref_labels = np.concatenate([second, first])
    relation = _relation_loops(utm, second, ref_labels, 10.0, 25.0)
    expected = batch_all_triplet_loss(
        second,
        embeddings,
        0.5,
        ref_labels=ref_labels,
        ref_embeddings=np.concatenate([embeddings, first_embeddings]),
        relation=relation,
    )[0]
    assert got == pytest.approx(float(expected), rel=1e-6) and got > 0


def test_grid_cells_are_reported_only_where_they_are_the_classes_trained_on(tmp_path, caplog):
    """GPS training (and cached mining) pairs images by distance: the grid cells that group the train images of
    a dataset without place ids are not its classes, so their single-image cells are not reported (training,
    evaluation and visualization read the data through the same adapter)."""
    write_places_world(tmp_path, num_database=40, num_queries=12)
    params = Params.from_dict({**PLACES, "data_dir": str(tmp_path)})
    for changes, reported in (({}, False), ({"mining": "cached", "classes_per_batch": None, "images_per_class": None,
                                             "batch_size": 2}, False), ({"places_training": "labels"}, True)):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="model.data"):
            source = adapter.data_source(params.replace(**changes))
        single = [entry for entry in source.report if entry.problem == "single-image class"]
        said = [record for record in caplog.records if "have a single image" in record.getMessage()]
        assert bool(single) == bool(said) == reported, changes
