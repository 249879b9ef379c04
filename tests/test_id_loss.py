"""The ID loss of the re-ID strong baseline: the softmax head (model/losses/classification.py) with label
smoothing and a bias-free classifier, against a numpy loop of the smoothed cross-entropy."""

import keras
import numpy as np
import pytest

from model.app import adapter
from model.losses import ClassifierHead, SoftmaxLoss, softmax_cross_entropy
from model.params import Params
from tests.fixtures import DIGITS


def reference_cross_entropy(labels, embeddings, kernel, bias, smoothing):
    """mean_i -sum_c q_ic log softmax(logits_i)_c with q_i = (1 - ε) onehot(y_i) + ε / C, in float64."""
    logits = embeddings.astype(np.float64) @ kernel + (0.0 if bias is None else bias)
    classes = logits.shape[1]
    total = 0.0
    for row, label in zip(logits, labels, strict=True):
        log_probabilities = row - np.logaddexp.reduce(row)
        for c in range(classes):
            target = (1 - smoothing) * (c == label) + smoothing / classes
            total -= target * log_probabilities[c]
    return total / len(labels)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
@pytest.mark.parametrize("with_bias", [True, False])
def test_smoothed_cross_entropy_equals_the_numpy_loop(smoothing, with_bias):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, size=12)
    embeddings = rng.normal(size=(12, 5)).astype(np.float32)
    kernel = rng.normal(size=(5, 7)).astype(np.float32)
    bias = rng.normal(size=7).astype(np.float32) if with_bias else None
    loss, accuracy = softmax_cross_entropy(labels, embeddings, kernel, bias, smoothing)
    expected = reference_cross_entropy(labels, embeddings, kernel, bias, smoothing)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    logits = embeddings @ kernel + (0 if bias is None else bias)
    assert float(accuracy) == pytest.approx(np.mean(logits.argmax(axis=1) == labels))


def test_the_bias_free_head_has_no_bias_and_round_trips():
    loss = SoftmaxLoss(7, 5, label_smoothing=0.1, use_bias=False, name="classification")
    head = loss.head_layer
    assert head.bias is None and [tuple(w.shape) for w in head.weights] == [(5, 7)]
    embeddings = np.random.default_rng(1).normal(size=(4, 5)).astype(np.float32)
    np.testing.assert_allclose(head(embeddings), embeddings @ keras.ops.convert_to_numpy(head.kernel), rtol=1e-5)
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    assert (again.label_smoothing, again.head_layer.use_bias, again.head_layer.num_classes) == (0.1, False, 7)
    assert ClassifierHead.from_config(head.get_config()).bias is None
    assert SoftmaxLoss(7, 5).head_layer.bias is not None  # a bias by default, as before


def test_params_classification_options_reach_the_head():
    params = Params.from_dict({**DIGITS, "classification": {"weight": 1.0, "label_smoothing": 0.1, "bias": False}})
    head = adapter.classification(params.replace(num_labels=10), 8)
    assert (head.label_smoothing, head.head_layer.bias, head.name) == (0.1, None, "classification")
    plain = adapter.classification(Params.from_dict({**DIGITS, "classification": {"weight": 1.0}, "num_labels": 10}), 8)
    assert (plain.label_smoothing, plain.head_layer.use_bias) == (0.0, True)


@pytest.mark.parametrize("classification, message", [
    ({"weight": 1.0, "label_smoothing": 1.0},
     r'key "classification\.label_smoothing" has value 1\.0; expected a number in \[0, 1\)'),
    ({"weight": 1.0, "label_smoothing": -0.1}, r'key "classification\.label_smoothing" has value -0\.1'),
    ({"weight": 1.0, "bias": "no"}, r"""key "classification\.bias" has value 'no'; expected true or false"""),
    ({"label_smoothing": 0.1}, r'key "classification" .*expected an object \{"weight": w\}'),
])
def test_bad_id_loss_options_name_the_key(classification, message):
    with pytest.raises(ValueError, match="params: " + message):
        Params.from_dict({"classification": classification})


def test_bad_label_smoothing_in_python_names_the_argument():
    with pytest.raises(ValueError, match=r'key "label_smoothing" has value 2; expected a number in \[0, 1\)'):
        SoftmaxLoss(3, 4, label_smoothing=2)
