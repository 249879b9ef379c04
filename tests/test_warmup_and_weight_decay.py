"""The warm-up schedule and PyTorch's weight decay (model/training/optimization.py), against references written
here: the strong baseline's rate at each step (a Python loop of its formula), Adam and SGD steps in numpy (the
Adam one also equals torch.optim.Adam(weight_decay=...) to 1e-4, checked when written), and the errors that
name their key."""

import keras
import numpy as np
import pytest

from model.app import adapter
from model.app.training import train
from model.params import Params
from model.training.optimization import WarmupStepDecay, check_schedule_length, learning_rate, make_optimizer
from tests.fixtures import DIGITS

BOT = {"type": "step", "warmup_steps": 10, "warmup_factor": 0.1, "boundaries": [40, 70], "factor": 0.1}


def reference_rate(step, rate=1.0, warmup=10, start=0.1, boundaries=(40, 70), factor=0.1):
    """Luo et al.'s schedule in steps: linear from start·rate to rate over `warmup` steps, × factor past each
    boundary."""
    warm = start + (1 - start) * step / warmup if step < warmup else 1.0
    drops = 0
    for boundary in boundaries:
        if step > boundary:
            drops += 1
    return rate * warm * factor**drops


def test_warmup_step_schedule_values_at_given_steps():
    schedule = learning_rate(3.5e-4, BOT)
    assert isinstance(schedule, WarmupStepDecay)
    default = learning_rate(1.0, {key: value for key, value in BOT.items() if key != "warmup_factor"})
    assert float(default(0)) == pytest.approx(0.1)  # the strong baseline's warm-up factor by default
    for step, expected in ((0, 3.5e-5), (5, 3.5e-4 * 0.55), (10, 3.5e-4), (40, 3.5e-4), (41, 3.5e-5), (70, 3.5e-5),
                           (71, 3.5e-6), (10_000, 3.5e-6)):
        assert float(schedule(step)) == pytest.approx(expected, rel=1e-6), step
    values = [float(schedule(step)) for step in range(120)]
    np.testing.assert_allclose(values, [reference_rate(step, 3.5e-4) for step in range(120)], rtol=1e-6)
    # A schedule of the family: serialized with the optimizer's config and back.
    again = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert again.get_config() == schedule.get_config()


@pytest.mark.parametrize("schedule, message", [
    ({**BOT, "warmup_factor": 0}, r'key "lr_schedule\.warmup_factor" has value 0; expected a number in \(0, 1\]'),
    ({**BOT, "warmup_factor": 1.5}, r'key "lr_schedule\.warmup_factor" has value 1\.5'),
    ({**BOT, "warmup_steps": 0}, r'key "lr_schedule\.warmup_steps" has value 0; expected an integer > 0'),
    ({**BOT, "warmup_steps": 2.5}, r'key "lr_schedule\.warmup_steps" has value 2\.5'),
    ({**BOT, "boundaries": [5, 70]}, r'key "lr_schedule\.boundaries" has value \[5, 70\]; expected steps after the '
                                     r"warm-up \(>= warmup_steps, 10\)"),
    ({**BOT, "boundaries": [70, 40]}, r'key "lr_schedule\.boundaries" .*increasing order'),
    ({**BOT, "factor": 2.0}, r'key "lr_schedule\.factor" has value 2\.0'),
    ({key: value for key, value in BOT.items() if key != "boundaries"},
     r'key "lr_schedule" has value .*; expected a "step" schedule takes boundaries, factor \(and optionally '
     r"warmup_factor, warmup_steps\)"),
    ({**BOT, "warmup": 3},
     r'key "lr_schedule" has value .*; expected a "step" schedule takes boundaries, factor \(and optionally'),
    ({key: value for key, value in BOT.items() if key != "warmup_steps"},
     r'key "lr_schedule" has value .*; expected "warmup_factor" with "warmup_steps"'),
])
def test_bad_warmup_schedules_name_the_key(schedule, message):
    with pytest.raises(ValueError, match=r"params: " + message):
        Params.from_dict({"lr_schedule": schedule})


def test_a_warmup_longer_than_the_training_is_refused():
    with pytest.raises(ValueError, match=r'params: key "lr_schedule\.warmup_steps" is 10 but the training lasts 6 '
                                         r"steps \(num_epochs 2 × steps_per_epoch 3\)"):
        Params.from_dict({**DIGITS, "lr_schedule": BOT})
    Params.from_dict({**DIGITS, "lr_schedule": BOT, "num_epochs": 4})  # 12 steps: fits
    with pytest.raises(ValueError, match=r'x.json: key "lr_schedule\.warmup_steps" is 10 but the training lasts 9'):
        check_schedule_length(BOT, 9, "x.json")
    check_schedule_length(BOT, 10, "x.json")
    check_schedule_length({"type": "step", "boundaries": [5], "factor": 0.5}, 1, "x.json")


def test_a_warmup_longer_than_one_pass_over_the_data_is_refused_when_the_data_is_read(tmp_path):
    # steps_per_epoch null: one pass over the train split in batches of P × K = 20.
    params = Params.from_dict({**DIGITS, "steps_per_epoch": None, "num_epochs": 1,
                               "lr_schedule": {**BOT, "warmup_steps": 500, "boundaries": [600]}})
    steps = -(-len(adapter.data_source(params).splits["train"]) // 20)
    assert steps < 500
    with pytest.raises(ValueError, match=rf'key "lr_schedule\.warmup_steps" is 500 but the training lasts {steps} '
                                         r"steps \(num_epochs × steps_per_epoch\)"):
        train(params, str(tmp_path / "run"))
    assert not (tmp_path / "run" / "checkpoints").exists()


def numpy_adam(weights, gradients, rate, decay, beta_1=0.9, beta_2=0.999, epsilon=1e-7):
    """Adam with PyTorch's weight decay (the gradient plus decay · w), one update per gradient; Keras's epsilon."""
    w, m, v = weights.astype(np.float64), 0.0, 0.0
    for t, g in enumerate(gradients, start=1):
        g = g + decay * w
        m = beta_1 * m + (1 - beta_1) * g
        v = beta_2 * v + (1 - beta_2) * g * g
        w = w - rate * np.sqrt(1 - beta_2**t) / (1 - beta_1**t) * m / (np.sqrt(v) + epsilon * np.sqrt(1 - beta_2**t))
    return w


def numpy_sgd(weights, gradients, rate, decay, momentum=0.9):
    w, velocity = weights.astype(np.float64), 0.0
    for g in gradients:
        velocity = momentum * velocity + (g + decay * w)
        w = w - rate * velocity
    return w


def optimized(optimizer, weights, gradients):
    variable = keras.Variable(weights)
    for gradient in gradients:
        optimizer.apply_gradients([(keras.ops.convert_to_tensor(gradient), variable)])
    return keras.ops.convert_to_numpy(variable)


@pytest.mark.parametrize("name, reference", [("adam", numpy_adam), ("sgd", numpy_sgd)])
def test_weight_decay_adds_decay_times_the_weight_to_the_gradient(name, reference):
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(4, 3)).astype(np.float32)
    gradients = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(3)]
    for decay in (0.0, 5e-4, 0.3):
        found = optimized(make_optimizer(name, 0.01, decay), weights, gradients)
        np.testing.assert_allclose(found, reference(weights, gradients, 0.01, decay), rtol=1e-5, atol=1e-6)


def test_weight_decay_errors_name_the_key():
    with pytest.raises(ValueError, match=r'params: key "weight_decay" has value -0\.1; expected a number >= 0'):
        Params.from_dict({"weight_decay": -0.1})
    with pytest.raises(ValueError, match=r'params: key "weight_decay" adds PyTorch.s coupled weight decay .* "adamw"'):
        Params.from_dict({"optimizer": "adamw", "weight_decay": 5e-4})
    with pytest.raises(ValueError, match="weight_decay must be a number >= 0"):
        make_optimizer("adam", 0.01, -1.0)
