"""The TensorFlow Addons drop-in losses (model.tfa_losses) against numpy loops written from TFA's formulas;
low precision, exact labels, serialization under TFA's Keras names, compile/fit on digits, bad arguments.

TFA's own test files also pass against this module (see docs/guides/migrating-from-tensorflow-addons.md).
"""

import keras
import numpy as np
import pytest
from keras import ops
from sklearn.datasets import load_digits

from model import tfa_losses
from tests.backend_helpers import dtype_name, value_and_gradient

MARGIN = 1.0


@keras.saving.register_keras_serializable(package="tests_tfa_losses")
def negative_dot(embeddings):
    """A callable distance_metric: -e_i·e_j, which may be negative (as in TFA's docstring example, negated)."""
    return -ops.matmul(embeddings, ops.transpose(embeddings))


# ------------------------------------------------------------------------------------- numpy references


def ref_distances(embeddings, metric):
    """[B, B] float64 distances by loops: "L2", "squared-L2", "angular" (TFA's normalisation), or negative_dot."""
    x = np.asarray(embeddings, np.float64)
    size = len(x)
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            if metric in ("L2", "squared-L2"):
                squared = sum((x[i, k] - x[j, k]) ** 2 for k in range(x.shape[1]))
                out[i, j] = squared if metric == "squared-L2" else np.sqrt(squared)
            elif metric == "angular":
                norm_i = np.sqrt(max((x[i] ** 2).sum(), 1e-12))
                norm_j = np.sqrt(max((x[j] ** 2).sum(), 1e-12))
                out[i, j] = max(1.0 - (x[i] @ x[j]) / (norm_i * norm_j), 0.0)
            else:
                out[i, j] = -(x[i] @ x[j])
    return out


def ref_semihard(labels, embeddings, margin, metric="L2"):
    """Σ over positive pairs (a != p) of relu(d_ap - d_an* + m) / #pairs; n* the closest negative farther than p,
    else the farthest negative, else (no negative) the row's minimum; 0 without pairs."""
    d = ref_distances(embeddings, metric)
    total, count = 0.0, 0
    for a in range(len(labels)):
        negatives = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            count += 1
            if not negatives:
                chosen = d[a].min()
            else:
                farther = [value for value in negatives if value > d[a, p]]
                chosen = min(farther) if farther else max(negatives)
            total += max(d[a, p] - chosen + margin, 0.0)
    return total / count if count else 0.0


def ref_hard(labels, embeddings, margin, soft=False, metric="L2"):
    """(1/B) Σ_a relu(hp_a - hn_a + m) or log(1 + exp(hp_a - hn_a)); hp_a = the row's minimum without a positive,
    hn_a = the row's maximum without a negative."""
    d = ref_distances(embeddings, metric)
    total = 0.0
    for a in range(len(labels)):
        positives = [d[a, p] for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        negatives = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        hardest_positive = max(positives) if positives else d[a].min()
        hardest_negative = min(negatives) if negatives else d[a].max()
        x = hardest_positive - hardest_negative
        total += np.logaddexp(0.0, x) if soft else max(x + margin, 0.0)
    return total / len(labels)


def ref_lifted(labels, embeddings, margin):
    """Σ_{i<j positive} relu(J_ij)² / (2 · #pairs), J_ij = log(Σ_{k neg i} e^{m - D_ik} + Σ_{l neg j} e^{m - D_jl})
    + D_ij; a pair without negatives contributes 0; 0 without pairs."""
    d = ref_distances(embeddings, "L2")
    total, count = 0.0, 0
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if labels[i] != labels[j]:
                continue
            count += 1
            terms = [margin - d[i, k] for k in range(len(labels)) if labels[k] != labels[i]]
            terms += [margin - d[j, k] for k in range(len(labels)) if labels[k] != labels[j]]
            if terms:
                top = max(terms)
                objective = top + np.log(sum(np.exp(t - top) for t in terms)) + d[i, j]
                total += max(objective, 0.0) ** 2
    return total / (2 * count) if count else 0.0


def ref_npairs(targets, similarities):
    """(1/B) Σ_i -Σ_j T_ij log softmax(S_i)_j with T = targets / row sums (rows summing to 0 give 0)."""
    s = np.asarray(similarities, np.float64)
    total = 0.0
    for i in range(len(s)):
        row_total = targets[i].sum()
        log_norm = s[i].max() + np.log(np.exp(s[i] - s[i].max()).sum())
        for j in range(len(s)):
            if targets[i, j]:
                total -= targets[i, j] / row_total * (s[i, j] - log_norm)
    return total / len(s)


def _batch(seed, size, num_classes, dim=5):
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_classes, size=size), rng.normal(size=(size, dim)).astype(np.float32)


METRICS = ["L2", "squared-L2", "angular", negative_dot]
BATCHES = [(0, 2, 2), (1, 7, 3), (2, 16, 4), (3, 5, 1), (4, 6, 6), (5, 1, 1)]  # (seed, B, classes): one class, distinct


# ----------------------------------------------------------------------------------------------- distances


def test_pairwise_and_angular_distance_match_loops():
    _, embeddings = _batch(0, 9, 1)
    embeddings[3] = embeddings[2]  # a duplicate: exactly 0, also off the diagonal
    for squared, metric in ((False, "L2"), (True, "squared-L2")):
        got = ops.convert_to_numpy(tfa_losses.pairwise_distance(embeddings, squared=squared))
        np.testing.assert_allclose(got, ref_distances(embeddings, metric), rtol=1e-5, atol=1e-5)
        assert got[2, 3] == 0.0 and np.all(np.diag(got) == 0.0)
    embeddings[4] = 0.0  # a zero row: distance 1 to everything, as with tf.math.l2_normalize
    got = ops.convert_to_numpy(tfa_losses.angular_distance(embeddings))
    np.testing.assert_allclose(got, ref_distances(embeddings, "angular"), atol=1e-6)
    assert np.all(got >= 0)


def test_pairwise_distance_is_never_negative_for_close_points():
    embeddings = 1.0 + 2e-7 * np.random.default_rng(0).random((64, 6)).astype(np.float32)
    assert np.all(ops.convert_to_numpy(tfa_losses.pairwise_distance(embeddings)) >= 0)


# ------------------------------------------------------------------------------------------- triplet losses


def test_tfa_docstring_values():
    labels, embeddings = np.array([0, 0]), np.array([[0.0, 1.0], [1.0, 0.0]], np.float32)
    dot = lambda x: ops.matmul(x, ops.transpose(x))  # noqa: E731 - TFA's docstring example
    assert float(tfa_losses.triplet_semihard_loss(labels, embeddings)) == pytest.approx(2.4142137)
    assert float(tfa_losses.triplet_semihard_loss(labels, embeddings, distance_metric=dot)) == pytest.approx(1.0)
    assert float(tfa_losses.triplet_hard_loss(labels, embeddings)) == pytest.approx(1.0)
    assert float(tfa_losses.triplet_hard_loss(labels, embeddings, distance_metric=dot)) == pytest.approx(0.0)


@pytest.mark.parametrize("metric", METRICS, ids=["L2", "squared-L2", "angular", "callable"])
@pytest.mark.parametrize("seed,size,num_classes", BATCHES)
def test_semihard_matches_loops(seed, size, num_classes, metric):
    labels, embeddings = _batch(seed, size, num_classes)
    got = float(tfa_losses.triplet_semihard_loss(labels, embeddings, 0.7, metric))
    np.testing.assert_allclose(got, ref_semihard(labels, embeddings, 0.7, metric), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("soft", [False, True])
@pytest.mark.parametrize("metric", METRICS, ids=["L2", "squared-L2", "angular", "callable"])
@pytest.mark.parametrize("seed,size,num_classes", BATCHES)
def test_hard_matches_loops(seed, size, num_classes, metric, soft):
    labels, embeddings = _batch(seed, size, num_classes)
    got = float(tfa_losses.triplet_hard_loss(labels, embeddings, 0.7, soft, metric))
    np.testing.assert_allclose(got, ref_hard(labels, embeddings, 0.7, soft, metric), rtol=1e-5, atol=1e-6)


def test_edge_batches_follow_tfa():
    _, embeddings = _batch(0, 4, 1)
    one_class, distinct = np.zeros(4, int), np.arange(4)
    d = ref_distances(embeddings, "L2")
    # One class: no negative; TFA's masked maximum over nothing is the row minimum, d(a, a) = 0.
    expected = np.mean([MARGIN + d[a, p] for a in range(4) for p in range(4) if a != p])
    assert float(tfa_losses.triplet_semihard_loss(one_class, embeddings)) == pytest.approx(expected, rel=1e-5)
    # ... and the hardest negative over nothing is the row maximum.
    expected = np.mean([max(np.delete(d[a], a).max() - d[a].max() + MARGIN, 0) for a in range(4)])
    assert float(tfa_losses.triplet_hard_loss(one_class, embeddings)) == pytest.approx(expected, rel=1e-5)
    # Every label distinct: no positive pair. TFA's 0/0 (NaN) is 0 here; batch-hard counts hp = 0.
    assert float(tfa_losses.triplet_semihard_loss(distinct, embeddings)) == 0.0
    assert float(tfa_losses.lifted_struct_loss(distinct, embeddings)) == 0.0
    assert float(tfa_losses.lifted_struct_loss(one_class, embeddings)) == 0.0
    expected = np.mean([max(-np.delete(d[a], a).min() + MARGIN, 0) for a in range(4)])
    assert float(tfa_losses.triplet_hard_loss(distinct, embeddings)) == pytest.approx(expected, rel=1e-5)


def test_semihard_ties_are_not_farther():
    # Integer points on a line: exact distances. Anchor 0 at 0, positive at 2, negatives at 2 and 5: the negative
    # at the positive's distance is not farther, so n* is at 5 (and not 2, which a ">=" would take).
    labels = np.array([0, 0, 1, 1])
    embeddings = np.array([[0.0], [2.0], [-2.0], [5.0]], np.float32)
    got = float(tfa_losses.triplet_semihard_loss(labels, embeddings, 1.0))
    assert got == pytest.approx(ref_semihard(labels, embeddings, 1.0))
    # (0, 2): n* at distance 5 -> 0; (2, 0): 3 -> 0; (-2, 5) and (5, -2): none farther, the farthest 4 and 5 -> 4, 3.
    assert got == pytest.approx((0 + 0 + 4 + 3) / 4)  # with ">=" the first pair would cost 1: 2.0


@pytest.mark.parametrize("name", ["semihard", "hard", "lifted"])
def test_duplicates_give_finite_gradients(name):
    labels, embeddings = _batch(6, 8, 3)
    embeddings[1] = embeddings[0]
    fn = {"semihard": tfa_losses.triplet_semihard_loss, "hard": tfa_losses.triplet_hard_loss,
          "lifted": tfa_losses.lifted_struct_loss}[name]
    value, grad = value_and_gradient(lambda e: fn(labels, e), embeddings)
    assert np.isfinite(value) and np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


def test_nan_embeddings_give_nan_as_tfa():
    labels, embeddings = _batch(7, 6, 2)
    embeddings[2, 0] = np.nan
    for fn in (tfa_losses.triplet_semihard_loss, tfa_losses.triplet_hard_loss, tfa_losses.lifted_struct_loss):
        assert np.isnan(float(fn(labels, embeddings)))


@pytest.mark.parametrize("seed,size,num_classes", BATCHES)
def test_lifted_matches_loops(seed, size, num_classes):
    labels, embeddings = _batch(seed, size, num_classes)
    got = float(tfa_losses.lifted_struct_loss(labels, embeddings, 0.5))
    np.testing.assert_allclose(got, ref_lifted(labels, embeddings, 0.5), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------ contrastive, N-pairs


def test_contrastive_is_per_pair_and_reduced_by_keras():
    pair_labels = np.array([0, 0, 1, 1, 0, 1])
    distances = np.array([0.1, 0.3, 1.3, 0.7, 1.1, 0.5], np.float32)
    expected = [max(1.5 - d, 0) ** 2 if y == 0 else d**2 for y, d in zip(pair_labels, distances, strict=True)]
    got = tfa_losses.contrastive_loss(pair_labels, distances, margin=1.5)
    np.testing.assert_allclose(ops.convert_to_numpy(got), expected, rtol=1e-6)
    column = distances.reshape(-1, 1)  # a model's [B, 1] output is squeezed, as Keras's wrappers do
    np.testing.assert_allclose(ops.convert_to_numpy(tfa_losses.contrastive_loss(pair_labels, column, 1.5)), expected,
                               rtol=1e-6)
    weights = np.array([1.2, 0.8, 0.5, 0.4, 1.5, 1.0], np.float32)
    loss = tfa_losses.ContrastiveLoss(margin=1.5)
    assert float(loss(pair_labels, distances)) == pytest.approx(np.mean(expected), rel=1e-6)
    assert float(loss(pair_labels, distances, sample_weight=weights)) == pytest.approx(np.mean(np.multiply(expected,
                                                                                                   weights)), rel=1e-6)
    assert float(tfa_losses.ContrastiveLoss(1.5, reduction="sum")(pair_labels, distances)) == pytest.approx(
        sum(expected), rel=1e-6)
    assert ops.convert_to_numpy(tfa_losses.ContrastiveLoss(1.5, reduction="none")(pair_labels, distances)).shape == (6,)


@pytest.mark.parametrize("seed,size,num_classes", [(0, 4, 4), (1, 9, 3), (2, 6, 1)])
def test_npairs_matches_loops(seed, size, num_classes):
    labels, embeddings = _batch(seed, size, num_classes)
    similarities = embeddings @ _batch(seed + 10, size, 1)[1].T
    targets = (labels[:, None] == labels[None, :]).astype(np.float64)
    got = float(tfa_losses.npairs_loss(labels, similarities))
    np.testing.assert_allclose(got, ref_npairs(targets, similarities), rtol=1e-5, atol=1e-6)
    assert float(tfa_losses.NpairsLoss()(labels.reshape(-1, 1), similarities)) == pytest.approx(got, rel=1e-6)


def test_npairs_one_pair_per_class_is_log_one_plus_sum():
    s = np.random.default_rng(3).normal(size=(5, 5)).astype(np.float32)
    expected = np.mean([np.log1p(sum(np.exp(s[i, j] - s[i, i]) for j in range(5) if j != i)) for i in range(5)])
    assert float(tfa_losses.npairs_loss(np.arange(5), s)) == pytest.approx(expected, rel=1e-5)


def test_npairs_multilabel_matches_loops_and_single_label():
    rng = np.random.default_rng(4)
    indicators = (rng.random((7, 4)) < 0.4).astype(np.int64)
    indicators[3] = 0  # no label: no target, contributes 0 (TFA: NaN)
    similarities = rng.normal(size=(7, 7)).astype(np.float32)
    shared = indicators @ indicators.T
    got = float(tfa_losses.npairs_multilabel_loss(indicators, similarities))
    np.testing.assert_allclose(got, ref_npairs(shared.astype(np.float64), similarities), rtol=1e-5, atol=1e-6)
    labels = rng.integers(0, 4, size=7)
    one_hot = np.eye(4, dtype=np.int64)[labels]
    assert float(tfa_losses.NpairsMultilabelLoss()(one_hot, similarities)) == pytest.approx(
        float(tfa_losses.npairs_loss(labels, similarities)), rel=1e-6)


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="tf.SparseTensor labels are TensorFlow's")
def test_npairs_multilabel_takes_sparse_labels():
    import tensorflow as tf

    indicators = np.array([[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 0, 0, 1]], np.int64)
    features = np.array([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], np.float32)
    similarities = features @ features.T
    dense = float(tfa_losses.NpairsMultilabelLoss()(indicators, similarities))
    assert dense == pytest.approx(1.420522, abs=1e-6)  # TFA's worked example
    assert float(tfa_losses.NpairsMultilabelLoss()(tf.sparse.from_dense(indicators), similarities)) == pytest.approx(
        dense, abs=1e-7)


# ------------------------------------------------------------------------------- dtypes and exact labels


CLASSES = {
    "semihard": lambda: tfa_losses.TripletSemiHardLoss(distance_metric="angular"),
    "hard": lambda: tfa_losses.TripletHardLoss(soft=True),
    "lifted": lambda: tfa_losses.LiftedStructLoss(margin=0.5),
    "npairs": lambda: tfa_losses.NpairsLoss(),
}


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("name", CLASSES)
def test_low_precision_is_computed_in_float32_and_returned_in_its_dtype(name, dtype):
    labels, embeddings = _batch(8, 12, 3, dim=12 if name == "npairs" else 5)
    low = ops.cast(embeddings, dtype)
    loss = CLASSES[name]()
    exact = loss.fn(labels, ops.cast(low, "float32"), **loss.fn_kwargs)  # the float32 loss of the rounded inputs
    for value in (loss(labels, low), loss.fn(labels, low, **loss.fn_kwargs)):
        assert dtype_name(value) == dtype
        tolerance = 1e-3 if dtype == "float16" else 1e-2  # the rounding of the result only (TFA's tolerances)
        np.testing.assert_allclose(float(value), float(exact), rtol=tolerance)
    pairs = ops.cast(np.abs(embeddings[:, 0]), dtype)
    assert dtype_name(tfa_losses.ContrastiveLoss()(labels % 2, pairs)) == dtype


def test_integer_labels_stay_exact_through_keras_float32_cast():
    labels = np.array([2**24, 2**24 + 1, 2**24, 2**24 + 1, 7], np.int64)  # 2**24 + 1 is 2**24 in float32
    _, embeddings = _batch(9, 5, 1)
    small = np.array([0, 1, 0, 1, 2])
    for name in ("semihard", "hard", "lifted"):
        make = CLASSES[name]
        assert float(make()(labels, embeddings)) == pytest.approx(float(make()(small, embeddings)), rel=1e-6)
    assert float(tfa_losses.TripletHardLoss()(labels, embeddings)) != pytest.approx(
        float(tfa_losses.TripletHardLoss()(np.array([0, 0, 0, 0, 2]), embeddings)))


# ------------------------------------------------------------------------------------------- serialization


ALL_CLASSES = [
    tfa_losses.TripletSemiHardLoss(margin=0.3, distance_metric="squared-L2", name="semi"),
    tfa_losses.TripletHardLoss(margin=0.2, soft=True, distance_metric=negative_dot, reduction="sum"),
    tfa_losses.LiftedStructLoss(margin=0.4),
    tfa_losses.ContrastiveLoss(margin=2.0, reduction="sum", name="cl"),
    tfa_losses.NpairsLoss(name="nl"),
    tfa_losses.NpairsMultilabelLoss(),
]


@pytest.mark.parametrize("loss", ALL_CLASSES, ids=lambda loss: type(loss).__name__)
def test_serialization_round_trip(loss):
    config = loss.get_config()
    assert type(loss).from_config(config).get_config() == config
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config
    assert keras.saving.get_registered_name(type(loss)) == f"Addons>{type(loss).__name__}"


def test_tfa_configs_and_names_deserialize_to_the_drop_ins():
    # A config as TFA's Keras 2 LossFunctionWrapper saved it: name may be None, reduction "none" or "auto".
    loss = keras.losses.deserialize({"class_name": "Addons>TripletSemiHardLoss",
                                     "config": {"name": None, "reduction": "none", "margin": 0.5,
                                                "distance_metric": "angular"}})
    assert isinstance(loss, tfa_losses.TripletSemiHardLoss)
    assert loss.get_config() == {"name": "triplet_semihard_loss", "reduction": "none", "margin": 0.5,
                                 "distance_metric": "angular"}
    loss = keras.losses.deserialize({"class_name": "Addons>ContrastiveLoss",
                                     "config": {"name": "contrastive_loss", "reduction": "auto", "margin": 1.0}})
    assert isinstance(loss, tfa_losses.ContrastiveLoss) and loss.reduction == "sum_over_batch_size"
    for name in ("triplet_semihard_loss", "triplet_hard_loss", "lifted_struct_loss", "contrastive_loss",
                 "npairs_loss", "npairs_multilabel_loss"):
        assert keras.losses.get(f"Addons>{name}") is getattr(tfa_losses, name)
        assert keras.saving.get_registered_object(f"Addons>{name}") is getattr(tfa_losses, name)
    assert isinstance(keras.losses.get("Addons>TripletHardLoss"), tfa_losses.TripletHardLoss)


def test_module_api_and_tfa_alias():
    assert set(tfa_losses.__all__) == {
        "triplet_semihard_loss", "TripletSemiHardLoss", "triplet_hard_loss", "TripletHardLoss", "contrastive_loss",
        "ContrastiveLoss", "lifted_struct_loss", "LiftedStructLoss", "npairs_loss", "NpairsLoss",
        "npairs_multilabel_loss", "NpairsMultilabelLoss", "pairwise_distance", "angular_distance"}
    assert tfa_losses.losses is tfa_losses  # `from model import tfa_losses as tfa; tfa.losses.X` works


# ------------------------------------------------------------------------------------ training on digits


@pytest.fixture(scope="module")
def digits():
    pixels, labels = load_digits(return_X_y=True)
    return (pixels[:640] / 16.0).astype(np.float32), labels[:640]


def _embedder():
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(32, activation="relu"), keras.layers.Dense(16)])


@pytest.mark.parametrize("loss", ["Addons>triplet_semihard_loss", "Addons>TripletHardLoss", "lifted"])
def test_compile_by_tfa_name_and_fit_one_epoch(digits, loss):
    pixels, labels = digits
    model = _embedder()
    model.compile(optimizer="adam", loss=tfa_losses.LiftedStructLoss() if loss == "lifted" else loss)
    history = model.fit(pixels, labels, batch_size=64, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and history.history["loss"][0] > 0


def _pairs(pixels, labels, seed=0):
    """Anchor and partner images (same class for the first half, another class otherwise) and their 0/1 labels."""
    rng = np.random.default_rng(seed)
    same = [(labels == label) == (i % 2 == 0) for i, label in enumerate(labels)]
    partner = np.array([rng.choice(np.flatnonzero(mask)) for mask in same])
    return pixels, pixels[partner], (labels == labels[partner]).astype(np.float32)


def test_contrastive_siamese_fits_one_epoch(digits):
    first, second, same = _pairs(*digits)
    embedder = _embedder()
    a, b = keras.Input((64,)), keras.Input((64,))
    distance = keras.layers.Lambda(lambda ab: ops.sqrt(ops.sum(ops.square(ab[0] - ab[1]), axis=1) + 1e-12))(
        [embedder(a), embedder(b)])
    model = keras.Model([a, b], distance)
    model.compile(optimizer="adam", loss=tfa_losses.ContrastiveLoss())
    history = model.fit([first, second], same, batch_size=64, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


@pytest.mark.parametrize("multilabel", [False, True])
def test_npairs_fits_one_epoch(digits, multilabel):
    pixels, labels = digits
    first = np.array([np.flatnonzero(labels == c)[0] for c in range(10)] * 6)  # anchor i and positive i: class i % 10
    second = np.array([np.flatnonzero(labels == c)[k + 1] for k in range(6) for c in range(10)])
    embedder = _embedder()
    a, p = keras.Input((64,)), keras.Input((64,))
    similarity = keras.layers.Lambda(lambda ap: ops.matmul(ap[0], ops.transpose(ap[1])))([embedder(a), embedder(p)])
    model = keras.Model([a, p], similarity)
    targets = np.eye(10, dtype=np.float32)[labels[first]] if multilabel else labels[first]
    model.compile(optimizer="adam", loss=tfa_losses.NpairsMultilabelLoss() if multilabel else tfa_losses.NpairsLoss())
    history = model.fit([pixels[first], pixels[second]], targets, batch_size=10, epochs=1, shuffle=False, verbose=0)
    assert np.isfinite(history.history["loss"][0]) and history.history["loss"][0] > 0


# ---------------------------------------------------------------------------------------------- bad arguments


def test_bad_arguments_name_the_argument():
    labels, embeddings = _batch(0, 4, 2)
    with pytest.raises(ValueError, match='distance_metric must be "L2", "squared-L2", "angular" or a callable'):
        tfa_losses.TripletSemiHardLoss(distance_metric="cosine")
    with pytest.raises(ValueError, match="distance_metric must be"):
        tfa_losses.triplet_hard_loss(labels, embeddings, distance_metric="l2")
    for make in (tfa_losses.TripletSemiHardLoss, tfa_losses.TripletHardLoss, tfa_losses.LiftedStructLoss,
                 tfa_losses.ContrastiveLoss):
        with pytest.raises(ValueError, match=r"margin must be a finite number >= 0, got -0\.5"):
            make(margin=-0.5)
    with pytest.raises(ValueError, match="margin must be a finite number >= 0"):
        tfa_losses.lifted_struct_loss(labels, embeddings, margin=float("nan"))
    with pytest.raises(ValueError, match=r"y_true must be \[B\] or \[B, 1\].*got shape \(4, 2\)"):
        tfa_losses.triplet_semihard_loss(np.zeros((4, 2), int), embeddings)
    with pytest.raises(ValueError, match="y_true has 3 labels but y_pred has 4 rows"):
        tfa_losses.TripletHardLoss()(labels[:3], embeddings)
    with pytest.raises(ValueError, match=r"labels must be \[B\] or \[B, 1\]"):
        tfa_losses.lifted_struct_loss(labels.reshape(2, 2), embeddings)
    with pytest.raises(ValueError, match=r"y_pred must be a \[B, D\] matrix"):
        tfa_losses.triplet_semihard_loss(labels, embeddings[0])
    with pytest.raises(ValueError, match=r"y_pred must be a square \[B, B\] similarity matrix.*\(4, 5\)"):
        tfa_losses.npairs_loss(labels, np.zeros((4, 5), np.float32))
    with pytest.raises(ValueError, match=r"y_pred must be a square \[B, B\]"):
        tfa_losses.NpairsMultilabelLoss()(np.eye(4), np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match=r"y_true must be a \[B, C\] matrix of binary class indicators"):
        tfa_losses.npairs_multilabel_loss(labels, np.zeros((4, 4), np.float32))
    with pytest.raises(ValueError, match="y_true .* must have the shape of y_pred"):
        tfa_losses.contrastive_loss(np.zeros(5), np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="soft must be True or False"):
        tfa_losses.TripletHardLoss(soft="yes")
    with pytest.raises(ValueError, match=r"distance_metric must return the \[B, B\] = \[4, 4\] distance matrix"):
        tfa_losses.triplet_semihard_loss(labels, embeddings, distance_metric=lambda x: x)
    with pytest.raises(ValueError, match="reduction"):
        tfa_losses.ContrastiveLoss(reduction="average")
