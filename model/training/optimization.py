"""Optimisation: the learning-rate schedules and the optimizers, by name.

    optimizer = make_optimizer("adam", learning_rate(1e-3, {"type": "step", "boundaries": [5000], "factor": 0.1}))

Schedules (`lr_schedule`): "constant"; "exponential" from a start step (the re-ID recipe); "step", a
piecewise-constant decay by `factor` at each boundary, after an optional linear warm-up (`warmup_steps`,
`warmup_factor`: the re-ID strong baseline). Optimizers: adam, adamw, sgd (momentum 0.9, as in the NetVLAD and re-ID
recipes), rmsprop; each with PyTorch's (coupled) `weight_decay` if asked.
"""

import functools

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


@keras.saving.register_keras_serializable(package=KERAS_PACKAGE)
class WarmupStepDecay(keras.optimizers.schedules.LearningRateSchedule):
    """A linear warm-up, then a step decay (Luo et al., "Bag of Tricks and A Strong Baseline for Deep Person
    Re-identification", CVPRW 2019: from 0.1 × the rate to the rate over 10 epochs, × 0.1 after epochs 40 and 70):

        lr(t) = lr0 · w(t) · factor^n(t),   w(t) = f + (1 - f) · t / W for t < W, else 1,
        n(t) = the number of boundaries b with t > b (the convention of the "step" schedule),

    with t the optimizer's step (0 for the first update), W = `warmup_steps`, f = `warmup_factor`.
    """

    def __init__(self, initial_learning_rate, warmup_steps, warmup_factor, boundaries, factor):
        self.initial_learning_rate = float(initial_learning_rate)
        self.warmup_steps, self.warmup_factor = int(warmup_steps), float(warmup_factor)
        self.boundaries, self.factor = [int(b) for b in boundaries], float(factor)

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.warmup_factor + (1.0 - self.warmup_factor) * step / self.warmup_steps
        warm = keras.ops.where(step < self.warmup_steps, warm, 1.0)
        drops = sum(keras.ops.cast(step > boundary, "float32") for boundary in self.boundaries)
        return self.initial_learning_rate * warm * keras.ops.power(self.factor, drops)

    def get_config(self):
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "warmup_steps": self.warmup_steps,
            "warmup_factor": self.warmup_factor,
            "boundaries": self.boundaries,
            "factor": self.factor,
        }


def _step_decay(rate, boundaries, factor, warmup_steps=None, warmup_factor=0.1):
    if warmup_steps is not None:
        return WarmupStepDecay(rate, warmup_steps, warmup_factor, boundaries, factor)
    boundaries = [int(b) for b in boundaries]
    return keras.optimizers.schedules.PiecewiseConstantDecay(boundaries, [rate * factor**i
                                                                          for i in range(len(boundaries) + 1)])


# lr_schedule "type" -> (the schedule from the base rate and the schedule's own keys, those keys)
LR_SCHEDULES = {
    "constant": (lambda rate: rate, ()),
    "exponential": (ExponentialDecayFrom, ("decay_start", "decay_steps", "decay_rate")),
    "step": (_step_decay, ("boundaries", "factor")),
}
# lr_schedule "type" -> the keys it may also take (keyword arguments of its schedule).
OPTIONAL_KEYS = {"step": ("warmup_steps", "warmup_factor")}


def learning_rate(rate, schedule=None):
    """The learning rate `rate`, or the schedule `schedule` ({"type": ..., its keys}) starting from it."""
    schedule = schedule or {"type": "constant"}
    make, keys = LR_SCHEDULES[schedule["type"]]
    optional = {key: schedule[key] for key in OPTIONAL_KEYS.get(schedule["type"], ()) if key in schedule}
    return make(rate, *(schedule[key] for key in keys), **optional)


OPTIMIZERS = Registry("optimizer", key="optimizer", default="adam", meaning="optimizer")
OPTIMIZERS.register("adam")(keras.optimizers.Adam)
OPTIMIZERS.register("adamw")(keras.optimizers.AdamW)
OPTIMIZERS.register("sgd")(lambda rate: keras.optimizers.SGD(rate, momentum=0.9))
OPTIMIZERS.register("rmsprop")(keras.optimizers.RMSprop)


@functools.cache
def _with_weight_decay(optimizer_class):
    """`optimizer_class` with PyTorch's weight decay: `weight_decay · w` added to the gradient of every trained
    weight w before the update (the gradient of the L2 penalty weight_decay/2 · |w|²; for Adam this is
    torch.optim.Adam's `weight_decay`, not AdamW's decoupled decay). Dense gradients only."""

    class WeightDecayed(optimizer_class):
        def __init__(self, *args, coupled_weight_decay=0.0, **kwargs):
            super().__init__(*args, **kwargs)
            self.coupled_weight_decay = float(coupled_weight_decay)

        def _backend_apply_gradients(self, grads, trainable_variables):
            decay = self.coupled_weight_decay
            grads = [gradient + keras.ops.cast(decay * variable, gradient.dtype)
                     for gradient, variable in zip(grads, trainable_variables, strict=True)]
            return super()._backend_apply_gradients(grads, trainable_variables)

        def get_config(self):
            return {**super().get_config(), "coupled_weight_decay": self.coupled_weight_decay}

    WeightDecayed.__name__ = WeightDecayed.__qualname__ = f"{optimizer_class.__name__}WithWeightDecay"
    return WeightDecayed


def make_optimizer(name, rate, weight_decay=0.0):
    """The optimizer registered under `name` at the learning rate (or schedule) `rate`, with PyTorch's coupled
    `weight_decay` (`weight_decay · w` added to each gradient; 0: none)."""
    if isinstance(weight_decay, bool) or not is_number(weight_decay) or weight_decay < 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    optimizer = OPTIMIZERS[name].component(rate)
    if not weight_decay:
        return optimizer
    config = {**optimizer.get_config(), "coupled_weight_decay": weight_decay}
    return _with_weight_decay(type(optimizer)).from_config(config)


def check_schedule(schedule):
    """Every value of a schedule: its type, its keys, the step counts, and rates that decay (a factor in (0, 1]).

    A factor or decay rate above 1 would raise the learning rate at every boundary (or exponentially), and
    one <= 0 would flip the sign of the updates (gradient ascent) or stop them. Errors are `OptionError`s.
    """
    kind = schedule.get("type")
    if not isinstance(kind, str) or kind not in LR_SCHEDULES:
        raise OptionError("lr_schedule", schedule, f'an object with "type" one of {", ".join(LR_SCHEDULES)}')
    given, needed, optional = set(schedule) - {"type"}, LR_SCHEDULES[kind][1], OPTIONAL_KEYS.get(kind, ())
    if not set(needed) <= given <= set(needed) | set(optional):
        also = f" (and optionally {', '.join(sorted(optional))})" if optional else ""
        raise OptionError("lr_schedule", schedule,
                          f'a "{kind}" schedule takes {", ".join(sorted(needed)) or "nothing else"}{also}')
    if "warmup_factor" in given and "warmup_steps" not in given:
        raise OptionError("lr_schedule", schedule, '"warmup_factor" with "warmup_steps" (the length of the warm-up)')
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
        elif name == "warmup_steps":
            if not is_integer(value) or value <= 0:
                raise OptionError(key, value, "an integer > 0 (the steps of the linear warm-up), e.g. 2000")
        elif name == "warmup_factor":
            if not is_number(value) or not 0 < value <= 1:
                raise OptionError(key, value, "a number in (0, 1]: the warm-up starts at this fraction of the rate")
    if "warmup_steps" in given and schedule["boundaries"][0] < schedule["warmup_steps"]:
        raise OptionError("lr_schedule.boundaries", schedule["boundaries"],
                          f"steps after the warm-up (>= warmup_steps, {schedule['warmup_steps']})")


def _warmup_too_long(schedule, total_steps, counted):
    """What is wrong when the warm-up of `schedule` lasts longer than the `total_steps` of training (`counted`:
    how they were counted), or None."""
    if schedule.get("warmup_steps", 0) <= total_steps:
        return None
    return (f'key "lr_schedule.warmup_steps" is {schedule["warmup_steps"]} but the training lasts {total_steps} '
            f"steps ({counted}): the warm-up would never reach the learning rate; shorten it or train longer")


def check_schedule_length(schedule, total_steps, where="params"):
    """ValueError naming the key when the warm-up of `schedule` lasts longer than the `total_steps` of training."""
    problem = _warmup_too_long(schedule, total_steps, "num_epochs × steps_per_epoch")
    if problem:
        raise ValueError(f"{where}: {problem}")


def _warmup_within_training(values, chosen):
    """The warm-up of a schedule fits in the training (known here when steps_per_epoch is set)."""
    if values["steps_per_epoch"] is None:
        return None
    return _warmup_too_long(values["lr_schedule"], values["num_epochs"] * values["steps_per_epoch"],
                            f'num_epochs {values["num_epochs"]} × steps_per_epoch {values["steps_per_epoch"]}')


def _decay_once(values, chosen):
    if values["optimizer"] == "adamw" and values["weight_decay"]:
        return ('key "weight_decay" adds PyTorch\'s coupled weight decay to the gradients, and optimizer "adamw" '
                'decays the weights itself (decoupled); set "weight_decay": 0 with adamw, or choose adam or sgd')
    return None


LEARNING_RATE = Option("learning_rate", (FLOAT,), 1e-3, "initial learning rate", positive=True)
LR_SCHEDULE = Option("lr_schedule", (DICT,), {"type": "constant"},
                     "constant, exponential (from a start step) or step (optionally after a linear warm-up: "
                     "warmup_steps, warmup_factor); rates and factors in (0, 1]", check=check_schedule)
WEIGHT_DECAY = Option("weight_decay", (FLOAT,), 0.0,
                      "weight decay as PyTorch's optimizers apply it: weight_decay · w added to each trained weight's "
                      "gradient (the re-ID strong baseline: 5e-4 with adam); 0 = none", minimum=0)
OPTIONS = (LEARNING_RATE, OPTIMIZERS.selector(), LR_SCHEDULE, WEIGHT_DECAY)
RULES = (_warmup_within_training, _decay_once)
