"""Optimisation: the learning-rate schedules and the optimizers, by name.

    optimizer = make_optimizer("adam", learning_rate(1e-3, {"type": "step", "boundaries": [5000], "factor": 0.1}))

Schedules (`lr_schedule`): "constant"; "exponential" from a start step (the re-ID recipe); "step", a
piecewise-constant decay by `factor` at each boundary. Optimizers: adam, adamw, sgd (momentum 0.9, as in
the NetVLAD and re-ID recipes), rmsprop.
"""

import keras

from model.registry import DICT, FLOAT, KERAS_PACKAGE, Option, OptionError, Registry, is_integer, is_number


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
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


def _step_decay(rate, boundaries, factor):
    boundaries = [int(b) for b in boundaries]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, [rate * factor**i
                                                                          for i in range(len(boundaries) + 1)])


# lr_schedule "type" -> (the schedule from the base rate and the schedule's own keys, those keys)
LR_SCHEDULES = {
    "constant": (lambda rate: rate, ()),
    "exponential": (ExponentialDecayFrom, ("decay_start", "decay_steps", "decay_rate")),
    "step": (_step_decay, ("boundaries", "factor")),
}


def learning_rate(rate, schedule=None):
    """The learning rate `rate`, or the schedule `schedule` ({"type": ..., its keys}) starting from it."""
    schedule = schedule or {"type": "constant"}
    make, keys = LR_SCHEDULES[schedule["type"]]
    return make(rate, *(schedule[key] for key in keys))


OPTIMIZERS = Registry("optimizer", key="optimizer", default="adam", meaning="optimizer")
OPTIMIZERS.register("adam")(keras.optimizers.Adam)
OPTIMIZERS.register("adamw")(keras.optimizers.AdamW)
OPTIMIZERS.register("sgd")(lambda rate: keras.optimizers.SGD(rate, momentum=0.9))
OPTIMIZERS.register("rmsprop")(keras.optimizers.RMSprop)


def make_optimizer(name, rate):
    """The optimizer registered under `name` at the learning rate (or schedule) `rate`."""
    return OPTIMIZERS[name].component(rate)


def check_schedule(schedule):
    """Every value of a schedule: its type, its keys, the step counts, and rates that decay (a factor in (0, 1]).

    A factor or decay rate above 1 would raise the learning rate at every boundary (or exponentially), and
    one <= 0 would flip the sign of the updates (gradient ascent) or stop them. Errors are `OptionError`s.
    """
    kind = schedule.get("type")
    if not isinstance(kind, str) or kind not in LR_SCHEDULES:
        raise OptionError("lr_schedule", schedule, f'an object with "type" one of {", ".join(LR_SCHEDULES)}')
    given, needed = set(schedule) - {"type"}, LR_SCHEDULES[kind][1]
    if given != set(needed):
        raise OptionError("lr_schedule", schedule,
                          f'a "{kind}" schedule takes {", ".join(sorted(needed)) or "nothing else"}')
    for name in sorted(given):
        value, key = schedule[name], f"lr_schedule.{name}"
        if name in ("factor", "decay_rate"):
            if not is_number(value) or not 0 < value <= 1:
                raise OptionError(key, value, "a number in (0, 1]: the rate is multiplied by it")
        elif name == "decay_start":
            if not is_integer(value) or value < 0:
                raise OptionError(key, value, "an integer >= 0 (the step at which the decay starts)")
        elif name == "decay_steps":
            if not is_integer(value) or value <= 0:
                raise OptionError(key, value, "an integer > 0 (steps over which the rate is multiplied by decay_rate)")
        elif name == "boundaries":
            if not isinstance(value, list) or not value or not all(is_integer(v) and v > 0 for v in value):
                raise OptionError(key, value, "a non-empty list of positive integers (steps), e.g. [5000, 10000]")
            if any(later <= earlier for earlier, later in zip(value, value[1:], strict=False)):
                raise OptionError(key, value, "steps in increasing order, e.g. [5000, 10000]")


LEARNING_RATE = Option("learning_rate", (FLOAT,), 1e-3, "initial learning rate", positive=True)
LR_SCHEDULE = Option("lr_schedule", (DICT,), {"type": "constant"},
                     "constant, exponential (from a start step) or step; rates and factors in (0, 1]",
                     check=check_schedule)
OPTIONS = (LEARNING_RATE, OPTIMIZERS.selector(), LR_SCHEDULE)
