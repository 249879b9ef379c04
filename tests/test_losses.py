"""Pair and proxy losses against numpy loops; the Keras Loss classes in compile/fit and serialization."""

import inspect

import keras
import numpy as np
import pytest
from keras import ops

from model import losses
from model.losses.miners import BatchEasyHardMiner
from tests import reference_losses as ref
from tests.backend_helpers import dtype_name, value_and_gradient

CASES = [(seed, size, classes) for seed in (0, 1) for size, classes in ((2, 2), (7, 3), (15, 12))] + [(2, 64, 6)]


def _batch(seed, size, num_classes, dim=5, scale=1.0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, num_classes, size=size), (scale * rng.normal(size=(size, dim))).astype(np.float32)


@pytest.mark.parametrize("seed,size,num_classes", CASES)
def test_contrastive_matches_reference(seed, size, num_classes):
    labels, embeddings = _batch(seed, size, num_classes, scale=0.4)
    got = float(losses.contrastive_loss(labels, embeddings, margin=1.5))
    np.testing.assert_allclose(got, ref.contrastive(labels, embeddings, 1.5), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("scale", [1.0, 30.0])
@pytest.mark.parametrize("seed,size,num_classes", CASES)
def test_lifted_matches_reference_and_is_stable(seed, size, num_classes, scale):
    # scale 30: distances of ~100, exp(-100) underflows in float32 without the max subtraction.
    labels, embeddings = _batch(seed, size, num_classes, scale=scale)
    got = float(losses.lifted_struct_loss(labels, embeddings, margin=1.0))
    np.testing.assert_allclose(got, ref.lifted(labels, embeddings, 1.0), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seed,size,num_classes", CASES)
def test_proxy_nca_matches_reference(seed, size, num_classes):
    labels, embeddings = _batch(seed, size, num_classes)
    proxies = np.random.default_rng(seed + 100).normal(size=(num_classes, 5)).astype(np.float32)
    got = float(losses.proxy_nca_loss(labels, embeddings, proxies, scale=3.0))
    np.testing.assert_allclose(got, ref.proxy_nca(labels, embeddings, proxies, 3.0), rtol=1e-4)


@pytest.mark.parametrize("seed,size,num_classes", CASES + [(3, 6, 1)])
def test_multi_similarity_matches_reference(seed, size, num_classes):
    labels, embeddings = _batch(seed, size, num_classes)
    got = float(losses.multi_similarity_loss(labels, embeddings))
    np.testing.assert_allclose(got, ref.multi_similarity(labels, embeddings), rtol=1e-4, atol=1e-6)


def test_multi_similarity_mining_keeps_only_informative_pairs():
    # Anchor 0: positive at similarity 1.0, negative at similarity 0: nothing passes the mining.
    embeddings = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], np.float32)
    assert float(losses.multi_similarity_loss(np.array([0, 0, 1, 1]), embeddings)) == 0.0


PAIR_LOSSES = {
    "contrastive": lambda y, e: losses.contrastive_loss(y, e),
    "lifted": lambda y, e: losses.lifted_struct_loss(y, e),
    "multi_similarity": lambda y, e: losses.multi_similarity_loss(y, e),
}


@pytest.mark.parametrize("name", PAIR_LOSSES)
@pytest.mark.parametrize(
    "labels", [np.zeros(5, int), np.arange(5), np.array([1])], ids=["one_class", "distinct", "one"]
)
def test_edge_batches_are_finite_and_match(name, labels):
    embeddings = np.random.default_rng(1).normal(size=(len(labels), 3)).astype(np.float32)
    loss, grad = value_and_gradient(lambda e: PAIR_LOSSES[name](labels, e), embeddings)
    assert np.isfinite(loss)
    assert np.all(np.isfinite(grad))  # zeros where the loss does not depend on the embeddings
    expected = {"contrastive": ref.contrastive, "lifted": ref.lifted, "multi_similarity": ref.multi_similarity}[name]
    np.testing.assert_allclose(loss, expected(labels, embeddings), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", PAIR_LOSSES)
def test_duplicates_low_precision_and_label_shapes(name):
    labels, embeddings = _batch(4, 10, 3)
    embeddings[1] = embeddings[0]
    _, grad = value_and_gradient(lambda e: PAIR_LOSSES[name](labels.reshape(-1, 1).astype(np.int64), e), embeddings)
    assert np.all(np.isfinite(grad))
    for dtype in ("float16", "bfloat16"):
        low = ops.cast(embeddings, dtype)
        value = PAIR_LOSSES[name](labels, low)
        assert dtype_name(value) == "float32"
        np.testing.assert_allclose(float(value), float(PAIR_LOSSES[name](labels, ops.cast(low, "float32"))), rtol=1e-6)


def test_lifted_gradient_matches_finite_differences():
    labels, embeddings = _batch(9, 7, 3, dim=3)
    _, grad = value_and_gradient(lambda e: losses.lifted_struct_loss(labels, e), embeddings)
    x, eps = embeddings.astype(np.float64), 1e-6
    expected = np.zeros_like(x)
    for index in np.ndindex(*x.shape):
        step = np.zeros_like(x)
        step[index] = eps
        expected[index] = (ref.lifted(labels, x + step) - ref.lifted(labels, x - step)) / (2 * eps)
    np.testing.assert_allclose(grad, expected, rtol=2e-3, atol=2e-4)


# The losses with a test file of their own (tests/test_loss_<name>.py) test their serialization and fit there.
LOSS_OPTIONS = {
    "batch_all": {"margin": 0.3, "squared": True, "l2_normalize": True, "reduction": "all"},
    "batch_hard": {"margin": "soft", "positives": "all", "reduction": "nonzero"},
    "batch_semihard": {"margin": 0.2, "reduction": "nonzero"},
    "contrastive": {"margin": 2.0, "l2_normalize": True, "hinge": "squared_distance", "reduction": "nonzero"},
    "lifted": {"margin": 0.5},
    "proxy_nca": {"num_classes": 4, "embedding_size": 8, "scale": 4.0},
    "multi_similarity": {"alpha": 1.0, "beta": 20.0, "base": 0.4, "epsilon": 0.2},
    "softmax": {"num_classes": 4, "embedding_size": 8},
}


def _options(name):
    """LOSS_OPTIONS[name]; a loss without an entry (it has its own tests/test_loss_<name>.py) gets its defaults, and
    the sizes of its class weights if it takes them."""
    if name in LOSS_OPTIONS:
        return LOSS_OPTIONS[name]
    takes = inspect.signature(losses.loss_class(name)).parameters
    return {key: value for key, value in {"num_classes": 4, "embedding_size": 8}.items() if key in takes}


@pytest.mark.parametrize("name", losses.LOSSES)
def test_serialization_round_trip(name):
    loss = losses.get_loss(name, **_options(name))
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss)
    assert restored.get_config() == loss.get_config()
    for key, value in _options(name).items():
        assert restored.get_config()[key] == value


class WithProxies(keras.Model):
    """The wrapper recommended by the ProxyNCALoss docstring."""

    def __init__(self, network, proxy_layer):
        super().__init__()
        self.network, self.proxy_layer = network, proxy_layer

    def call(self, inputs):
        return self.network(inputs)


def _separable_data(num_classes=4, per_class=16, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(num_classes, 10)) * 2
    labels = np.repeat(np.arange(num_classes), per_class)
    inputs = (centers[labels] + rng.normal(size=(len(labels), 10))).astype(np.float32)
    order = rng.permutation(len(labels))
    return inputs[order], labels[order]


@pytest.mark.parametrize("name", LOSS_OPTIONS)
def test_compile_and_fit_decreases_loss(name):
    keras.utils.set_random_seed(1)
    inputs, labels = _separable_data()
    loss = losses.get_loss(name, **_options(name))
    model = keras.Sequential([keras.Input((10,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dense(8)])
    if loss.trained_layers:  # losses with weights of their own, tracked by the wrapper
        model = WithProxies(model, *loss.trained_layers.values())
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss)
    history = model.fit(inputs, labels, batch_size=64, epochs=15, shuffle=False, verbose=0)
    assert history.history["loss"][-1] < 0.8 * history.history["loss"][0]


def test_proxy_nca_proxies_are_trained():
    inputs, labels = _separable_data()
    loss = losses.ProxyNCALoss(num_classes=4, embedding_size=8)
    model = WithProxies(keras.Sequential([keras.Input((10,)), keras.layers.Dense(8)]), loss.proxy_layer)
    before = loss.proxy_layer.proxies.numpy().copy()
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss)
    model.fit(inputs, labels, batch_size=64, epochs=3, verbose=0)
    assert np.abs(loss.proxy_layer.proxies.numpy() - before).max() > 1e-3


def test_batch_all_exposes_fraction_of_positive_triplets():
    labels, embeddings = _batch(0, 12, 3)
    loss, stats = losses.BatchAllTripletLoss(margin=0.5).compute(labels, embeddings)
    expected_loss, expected_fraction = ref.batch_all(labels, embeddings, 0.5)
    assert float(loss) == pytest.approx(expected_loss, rel=1e-4)
    assert float(stats["fraction_positive_triplets"]) == pytest.approx(expected_fraction, rel=1e-5)


def test_l2_normalize_option_normalizes_before_the_loss():
    labels, embeddings = _batch(2, 9, 3)
    normalized = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    got = float(losses.get_loss("batch_hard", margin=0.2, l2_normalize=True)(labels, embeddings))
    assert got == pytest.approx(ref.batch_hard(labels, normalized, 0.2), rel=1e-4)


def test_unknown_loss_suggests_the_closest_name():
    with pytest.raises(ValueError, match='Did you mean "batch_hard"'):
        losses.get_loss("batch_hrad")


def test_bad_margin_and_sample_weight_are_rejected():
    with pytest.raises(ValueError, match="soft"):
        losses.BatchHardTripletLoss(margin="hard")
    with pytest.raises(ValueError, match="sample_weight"):
        losses.BatchAllTripletLoss()(np.array([0, 1]), np.zeros((2, 3), np.float32), sample_weight=np.ones(2))


# The Keras classes pass their string options to the functions: (class options, the function's loop reference).
CLASS_OPTIONS = [
    ("contrastive", {"margin": 6.0, "hinge": "squared_distance", "reduction": "nonzero"},
     lambda y, e: ref.contrastive_options_refs(y, e, y, e, 6.0, "squared_distance", "nonzero")),
    ("batch_hard", {"margin": 2.0, "squared": True, "positives": "all"},
     lambda y, e: ref.batch_hard_all_positives_refs(y, e, y, e, 2.0, squared=True)),
    ("batch_all", {"margin": 2.0, "squared": True, "reduction": "all"},
     lambda y, e: ref.batch_all_options_refs(y, e, y, e, 2.0, squared=True, reduction="all")[0]),
    ("batch_semihard", {"margin": 0.5, "reduction": "nonzero"},
     lambda y, e: ref.batch_semihard_options_refs(y, e, y, e, 0.5, reduction="nonzero")),
    ("multi_similarity", {"epsilon": 0.0, "reduction": "nonzero"},  # anchors with nothing kept: the means differ
     lambda y, e: ref.multi_similarity_refs(y, e, y, e, epsilon=0.0, reduction="nonzero")),
]


@pytest.mark.parametrize("name,options,reference", CLASS_OPTIONS, ids=[case[0] for case in CLASS_OPTIONS])
def test_loss_classes_pass_their_options_to_the_functions(name, options, reference):
    labels, embeddings = _batch(3, 16, 4)
    loss = losses.get_loss(name, **options)
    expected = reference(labels, embeddings)
    assert float(loss(labels, embeddings)) == pytest.approx(expected, rel=1e-4)
    # The default differs from the option (else this test could not tell whether it is passed).
    defaults = {key: value for key, value in options.items() if key not in ("hinge", "reduction", "positives")}
    assert float(losses.get_loss(name, **defaults)(labels, embeddings)) != pytest.approx(expected, rel=1e-3)


def test_string_options_are_checked_and_only_taken_where_they_mean_something():
    with pytest.raises(ValueError, match="hinge must be one of 'distance', 'squared_distance', got 'squared'"):
        losses.ContrastiveLoss(hinge="squared")
    with pytest.raises(ValueError, match="reduction must be one of 'nonzero', 'all', got 'mean'"):
        losses.BatchAllTripletLoss(reduction="mean")
    with pytest.raises(ValueError, match="positives must be one of 'hardest', 'all'"):
        losses.BatchHardTripletLoss(positives="some")
    with pytest.raises(TypeError, match="SoftmaxLoss has no reduction option"):
        losses.SoftmaxLoss(num_classes=3, embedding_size=4, reduction="nonzero")
    # Each loss keeps its own default mean.
    assert losses.BatchAllTripletLoss().get_config()["reduction"] == "nonzero"
    assert losses.ContrastiveLoss().get_config()["reduction"] == "all"
    assert losses.LiftedStructLoss().get_config()["reduction"] == "all"
    assert "reduction" not in losses.ProxyNCALoss(num_classes=3, embedding_size=4).get_config()


def test_softmax_cross_entropy_matches_numpy_on_the_same_logits():
    labels, embeddings = _batch(5, 13, 4, dim=6)
    rng = np.random.default_rng(6)
    kernel, bias = rng.normal(size=(6, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    loss, accuracy = losses.softmax_cross_entropy(labels.reshape(-1, 1), embeddings, kernel, bias)
    logits = embeddings.astype(np.float64) @ kernel + bias
    expected = np.mean([ref._logsumexp(row) - row[label] for row, label in zip(logits, labels, strict=True)])
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert float(accuracy) == pytest.approx(np.mean(logits.argmax(axis=1) == labels))
    # The Keras class: its own head, the same formula, the accuracy as its statistic.
    softmax = losses.SoftmaxLoss(num_classes=4, embedding_size=6)
    softmax.head_layer.kernel.assign(kernel)
    softmax.head_layer.bias.assign(bias)
    value, stats = softmax.compute(labels, embeddings)
    assert float(value) == pytest.approx(expected, rel=1e-5)
    assert float(stats["train_accuracy"]) == pytest.approx(float(accuracy))


def test_a_negative_or_infinite_margin_is_refused_by_every_margin_loss():
    for name in ("batch_all", "batch_hard", "batch_semihard", "contrastive", "lifted"):
        for margin in (-1, float("inf"), float("nan")):
            with pytest.raises(ValueError, match="margin must be a finite number >= 0"):
                losses.get_loss(name, margin=margin)


@pytest.mark.parametrize("seed", range(4))
def test_the_classic_losses_equal_pytorch_metric_learning_where_the_guide_says_so(seed):
    """docs/guides/coming-from-pytorch-metric-learning.md: PML's TripletMarginLoss() is batch-all with margin 0.05
    on normalised embeddings; with PML's BatchHardMiner it is batch-hard averaged over the nonzero terms; PML's
    MultiSimilarityLoss with its miner is the multi-similarity loss; PML's BatchHardMiner is our batch easy-hard
    miner with "hard" positives and negatives. Batches with singletons; the last without any positive pair."""
    torch = pytest.importorskip("torch")
    pml_losses = pytest.importorskip("pytorch_metric_learning.losses")
    from pytorch_metric_learning import miners as pml_miners

    rng = np.random.default_rng(seed)
    labels = np.arange(20) if seed == 3 else rng.integers(0, 8, size=20)
    embeddings = rng.normal(size=(20, 4)).astype("float32")
    theirs = torch.from_numpy(embeddings), torch.from_numpy(labels)
    pairs = [
        (pml_losses.TripletMarginLoss()(*theirs),
         losses.BatchAllTripletLoss(margin=0.05, l2_normalize=True)(labels, embeddings)),
        (pml_losses.TripletMarginLoss(margin=0.3)(*theirs, pml_miners.BatchHardMiner()(*theirs)),
         losses.BatchHardTripletLoss(margin=0.3, l2_normalize=True, reduction="nonzero")(labels, embeddings)),
        (pml_losses.MultiSimilarityLoss()(*theirs, pml_miners.MultiSimilarityMiner()(*theirs)),
         losses.MultiSimilarityLoss()(labels, embeddings)),
    ]
    for expected, found in pairs:
        assert float(ops.convert_to_numpy(found)) == pytest.approx(expected.item(), rel=1e-5, abs=1e-7)
    # PML's BatchHardMiner picks the triplets of our BatchEasyHardMiner("hard", "hard"): its pairs, one anchor each.
    miner = BatchEasyHardMiner(pos_strategy="hard", neg_strategy="hard")
    relation = ops.convert_to_numpy(miner(labels, embeddings).relation)
    positives = list(zip(*np.nonzero(relation == 1), strict=True))
    negatives = list(zip(*np.nonzero(relation == -1), strict=True))
    ours = {(a, p, n) for a, p in positives for b, n in negatives if a == b}
    pml_triplets = set(zip(*(x.tolist() for x in pml_miners.BatchHardMiner()(*theirs)), strict=True))
    assert ours == pml_triplets
