"""Adversarial inputs to the parameter schema and the data loaders: each one a bad value or a damaged
tree that once passed silently or ended in a traceback, and now gives a clear error naming the
key / file / line, or a reported skip (logged, and recorded in `DataSource.report`)."""
import json

import pytest

from model.params import Params

# --- params.json: values that were accepted but meant nothing -------------------------------------------

STEP = {"type": "step", "boundaries": [5000, 10000], "factor": 0.5}
EXPONENTIAL = {"type": "exponential", "decay_start": 0, "decay_steps": 5000, "decay_rate": 0.3}


@pytest.mark.parametrize("text, message", [
    ('{"learning_rate": NaN}', r'key "learning_rate" has value nan; expected a finite number'),
    ('{"margin": Infinity}', r'key "margin" has value inf; expected a finite number'),
    ('{"validation_size": -Infinity}', r'key "validation_size" has value -inf; expected a finite number'),
    ('{"positive_radius": NaN}', r'key "positive_radius" has value nan'),
    ('{"lr_schedule": {"type": "step", "boundaries": [10, 20], "factor": NaN}}',
     r'key "lr_schedule.factor" has value nan; expected a finite number'),
    ('{"lr_schedule": {"type": "step", "boundaries": [10, Infinity], "factor": 0.5}}',
     r'key "lr_schedule.boundaries\[1\]" has value inf'),
    ('{"loss_options": {"alpha": NaN}}', r'key "loss_options.alpha" has value nan'),
])
def test_nan_and_infinity_are_refused_by_key_name(tmp_path, text, message):
    path = tmp_path / "params.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=rf"params.json: {message}"):
        Params.load(str(path))


@pytest.mark.parametrize("schedule, message", [
    ({**STEP, "factor": -0.5}, r'"lr_schedule.factor" has value -0.5; expected a number in \(0, 1\]'),
    ({**STEP, "factor": 0}, r'"lr_schedule.factor" has value 0; expected a number in \(0, 1\]'),
    ({**STEP, "factor": 2.0}, r'"lr_schedule.factor" has value 2.0; expected a number in \(0, 1\]'),
    ({**STEP, "factor": "0.5"}, r'"lr_schedule.factor" has value \'0.5\'; expected a number'),
    ({**STEP, "factor": True}, r'"lr_schedule.factor" has value True; expected a number'),
    ({**STEP, "boundaries": [10000, 5000]}, r'"lr_schedule.boundaries" has value \[10000, 5000\]; expected steps '
                                            r"in increasing order"),
    ({**STEP, "boundaries": [5000, 5000]}, r"in increasing order"),
    ({**STEP, "boundaries": "5000"}, r'"lr_schedule.boundaries" has value \'5000\'; expected a non-empty list of '
                                     r"positive integers"),
    ({**STEP, "boundaries": []}, r"a non-empty list of positive integers"),
    ({**STEP, "boundaries": [0, 10]}, r"a non-empty list of positive integers"),
    ({**STEP, "boundaries": [10.5, 20]}, r"a non-empty list of positive integers"),
    ({**STEP, "boundaries": ["5000"]}, r"a non-empty list of positive integers"),
    ({**EXPONENTIAL, "decay_steps": 0}, r'"lr_schedule.decay_steps" has value 0; expected an integer > 0'),
    ({**EXPONENTIAL, "decay_steps": 0.5}, r'"lr_schedule.decay_steps" has value 0.5; expected an integer > 0'),
    ({**EXPONENTIAL, "decay_rate": 0}, r'"lr_schedule.decay_rate" has value 0; expected a number in \(0, 1\]'),
    ({**EXPONENTIAL, "decay_rate": -0.3}, r'"lr_schedule.decay_rate" has value -0.3'),
    ({**EXPONENTIAL, "decay_rate": 1.5}, r'"lr_schedule.decay_rate" has value 1.5'),
    ({**EXPONENTIAL, "decay_start": -1}, r'"lr_schedule.decay_start" has value -1; expected an integer >= 0'),
    ({**EXPONENTIAL, "decay_start": "later"}, r'"lr_schedule.decay_start" has value \'later\''),
    ({"type": ["step"]}, r'"type" one of constant, exponential, step'),
])
def test_schedules_that_mean_nothing_are_refused(schedule, message):
    with pytest.raises(ValueError, match=message):
        Params.from_dict({"lr_schedule": schedule})


def test_meaningful_schedules_pass():
    for schedule in (STEP, {**STEP, "factor": 1}, {**STEP, "boundaries": [1]}, EXPONENTIAL,
                     {**EXPONENTIAL, "decay_rate": 1}, {"type": "constant"}):
        assert Params.from_dict({"lr_schedule": schedule}).lr_schedule == schedule


@pytest.mark.parametrize("momentum, ok", [(0, True), (0.9, True), (0.999, True), (1, False), (1.0, False),
                                          (5.0, False), (-0.1, False)])
def test_bn_momentum_lies_in_zero_one(momentum, ok):
    if ok:
        assert Params.from_dict({"bn_momentum": momentum}).bn_momentum == momentum
    else:
        with pytest.raises(ValueError, match=rf'"bn_momentum" has value {momentum}; expected a number'):
            Params.from_dict({"bn_momentum": momentum})


@pytest.mark.parametrize("options, message", [
    ({"alpha": "two"}, r'key "loss_options.alpha" has value \'two\'; expected a number or true/false'),
    ({"alpha": 2.0, "beta": [50]}, r'key "loss_options.beta" has value \[50\]'),
    ({"scale": None}, r'key "loss_options.scale" has value None'),
])
def test_loss_options_errors_name_the_option_and_value(options, message):
    with pytest.raises(ValueError, match=message):
        Params.from_dict({"loss": "multi_similarity", "loss_options": options})
    assert Params.from_dict({"loss_options": {"alpha": 2, "beta": 50.0, "flag": True}}).loss_options["alpha"] == 2


def test_every_unknown_key_is_named_with_its_suggestion(tmp_path):
    path = tmp_path / "params.json"
    path.write_text(json.dumps({"learning_rat": 0.1, "num_epochs": 3, "marign": 0.2, "zzz": 1}))
    with pytest.raises(ValueError) as raised:
        Params.load(str(path))
    message = str(raised.value)
    assert message.startswith(f'{path}: unknown key "learning_rat". Did you mean "learning_rate"? '
                              'unknown key "marign". Did you mean "margin"? unknown key "zzz". Valid keys: ')


def test_num_labels_below_the_number_of_classes_is_a_clear_error():
    params = Params.from_dict({"loss": "proxy_nca", "num_labels": 5})
    with pytest.raises(ValueError, match=r'key "num_labels" is 5 but the training data has 10 classes \(labels '
                                         r"0..9\); set num_labels to at least 10, or to null"):
        params.check_num_labels(10)
    params.check_num_labels(5)
    params.check_num_labels(3)
    Params.from_dict({}).check_num_labels(1000)  # null: counted from the data
