"""Optimisation from params.json: the learning-rate schedule and the optimizer.

    optimizer = make_optimizer(params)   # params.optimizer at learning_rate(params)

Schedules (`lr_schedule`, validated by `model.params`): "constant"; "exponential" from a start
step (the re-ID recipe); "step", a piecewise-constant decay by `factor` at each boundary.
"""

import keras


@keras.saving.register_keras_serializable(package="metric_learning")
class ExponentialDecayFrom(keras.optimizers.schedules.LearningRateSchedule):
    """lr(t) = lr0 for t <= start, lr0 · rate^((t - start) / steps) after: the re-ID recipe
    (Hermans et al. 2017: decay from step 15,000 to 0.001·lr0 at step 25,000)."""

    def __init__(self, initial_learning_rate, decay_start, decay_steps, decay_rate):
        self.initial_learning_rate = float(initial_learning_rate)
        self.decay_start, self.decay_steps = int(decay_start), int(decay_steps)
        self.decay_rate = float(decay_rate)

    def __call__(self, step):
        progress = keras.ops.maximum(keras.ops.cast(step, "float32") - self.decay_start, 0.0) / self.decay_steps
        return self.initial_learning_rate * keras.ops.power(self.decay_rate, progress)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_start": self.decay_start,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
        }


def learning_rate(params):
    """The learning rate or schedule described by `lr_schedule` (validated by Params)."""
    schedule = params.lr_schedule
    if schedule["type"] == "exponential":
        return ExponentialDecayFrom(
            params.learning_rate, schedule["decay_start"], schedule["decay_steps"], schedule["decay_rate"]
        )
    if schedule["type"] == "step":
        boundaries = [int(b) for b in schedule["boundaries"]]
        values = [params.learning_rate * schedule["factor"] ** i for i in range(len(boundaries) + 1)]
        return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, values)
    return params.learning_rate


# params.optimizer -> the optimizer at a learning rate (or schedule); SGD with momentum 0.9 as in the
# NetVLAD and re-ID recipes.
OPTIMIZERS = {
    "adam": keras.optimizers.Adam,
    "adamw": keras.optimizers.AdamW,
    "sgd": lambda rate: keras.optimizers.SGD(rate, momentum=0.9),
    "rmsprop": keras.optimizers.RMSprop,
}


def make_optimizer(params):
    """The optimizer named by params.optimizer at `learning_rate(params)`."""
    return OPTIMIZERS[params.optimizer](learning_rate(params))
