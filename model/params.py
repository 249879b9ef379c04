"""Experiment parameters: params.json loaded, defaulted and validated against the components' own schemas.

    params = Params.load("experiments/base_model/params.json")
    params.learning_rate, params.loss, ...

This is the application edge's schema checker, and nothing else knows params.json: every key is declared
once, by the component it feeds, as a `model.registry.Option` (its type, default, meaning and rule), and
every choice list is a registry's names. `SCHEMA` gathers them from the packages' `OPTIONS`; the checks
across keys are the packages' `RULES` and the rules of the chosen components. `model.app.adapter` turns
the validated parameters into the components' keyword arguments. The params reference is printed from the
schema by `python -m model.params`.

Loading fills in the defaults and checks every value: every unknown key is named with the closest valid
one ("did you mean ...?"), a wrong type or an out-of-range value names the key, the value and what is
expected. NaN and Infinity (which Python's json module reads) are refused in every number, nested ones
included. `triplet_strategy`, the name used by the classic TensorFlow triplet-loss code, is accepted as an
alias of `loss`.
"""

import difflib
import json
import os

from model import data, evaluation, losses, nets, training
from model.atomic import write_text
from model.data.datasets import DATASETS
from model.losses.base import LOSSES
from model.nets.family import NETWORKS
from model.registry import NONE, STR, Option, OptionError, is_integer, merge_options, type_names

# The classic name of the loss key (omoindrot/tensorflow-triplet-loss), accepted beside "loss".
TRIPLET_STRATEGY = Option("triplet_strategy", (STR, NONE), None, "alias of loss (classic name)",
                          choices=("batch_all", "batch_hard"))
def _memory_bytes():
    """The physical memory of this machine in bytes (None where it cannot be told)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(size):
    return f"{size / 2**30:,.0f} GiB" if size < 2**40 else f"{size / 2**40:,.0f} TiB"


def _sizes_fit(values, chosen):
    """Refuse sizes whose tensors cannot fit in this machine's memory (estimated from the params alone, a lower
    bound): the cross-batch memory (size × (dimension + 1) × 4 bytes) and one weight row per class
    (num_labels × dimension × 4 bytes, four times over with the gradient and Adam's two slots)."""
    available = _memory_bytes()
    if available is None:
        return None
    takes_size = any(option.key == "embedding_size" for option in chosen["model"].options)
    dimension = values["embedding_size"] if takes_size else 1  # known only once built (NetVLAD): at least 1
    per_row = "embedding_size" if takes_size else "the embedding dimension (at least 1)"
    memory, labels = values["memory"], values["num_labels"]
    weighted = labels is not None and (any(option.key == "num_labels" for option in chosen["loss"].options)
                                       or values["classification"] is not None)
    estimates = []
    if isinstance(memory, dict) and isinstance(memory.get("size"), int):
        estimates.append(("memory.size", memory["size"], memory["size"] * (dimension + 1) * 4,
                          f"its cross-batch memory of size × ({per_row} + 1) × 4 bytes"))
    if weighted:
        estimates.append(("num_labels", labels, labels * dimension * 4 * 4,
                          f"one weight row per class, num_labels × {per_row} × 4 bytes, four times over with the "
                          "gradient and the optimizer's slots"))
    for key, value, size, what in estimates:
        if size > available:
            return (f'key "{key}" is {value}: {what} needs about {_gib(size)}, more than the {_gib(available)} of '
                    f"memory of this machine; lower {key}")
    return None


# Every key, grouped by the package that owns it.
SCHEMA = {option.key: option for option in merge_options(
    (*nets.OPTIONS, *data.OPTIONS, *evaluation.OPTIONS, *losses.OPTIONS, TRIPLET_STRATEGY, *training.OPTIONS))}
# The rules across keys that hold whichever components are chosen, then the chosen components' own.
RULES = (*training.RULES, *data.RULES, *nets.RULES, *losses.RULES, _sizes_fit)
CHOSEN = {"loss": LOSSES, "dataset": DATASETS, "model": NETWORKS}


def _unknown_keys(unknown, valid):
    """'unknown key "a". Did you mean "b"?' for each of `unknown`, in order, in one sentence each."""
    sentences = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), valid, n=1)
        hint = f' Did you mean "{close[0]}"?' if close else ""
        sentences.append(f'unknown key "{key}".{hint}')
    return " ".join(sentences)


class Params:
    """Validated experiment parameters with attribute access (`params.margin`).

    Build with `Params.load(path)` for a params.json file or `Params.from_dict(mapping)`.
    `to_dict()` gives the effective parameters (defaults filled in), `save(path)` writes them.
    """

    def __init__(self, values, source="params"):
        self._source = source
        unknown = [key for key in values if key not in SCHEMA]
        if unknown:
            raise ValueError(f"{source}: {_unknown_keys(unknown, SCHEMA)} Valid keys: {', '.join(SCHEMA)}.")
        merged = {key: option.default for key, option in SCHEMA.items()}
        merged.update(values)
        for key, value in merged.items():
            try:
                SCHEMA[key].validate(value)
            except OptionError as error:
                raise ValueError(f"{source}: {error}") from None
        strategy = merged.pop("triplet_strategy")
        if strategy is not None:
            if "loss" in values and values["loss"] != strategy:
                raise ValueError(
                    f'{source}: "triplet_strategy" ({strategy!r}) is an alias of "loss" ({values["loss"]!r}); '
                    "give one of them"
                )
            merged["loss"] = strategy
        chosen = {key: registry[merged[key]] for key, registry in CHOSEN.items()}
        for rule in (*chosen["loss"].rules, *RULES, *chosen["dataset"].rules, *chosen["model"].rules):
            problem = rule(merged, chosen)
            if problem:
                raise ValueError(f"{source}: {problem}")
        self.__dict__.update(merged)

    @classmethod
    def from_dict(cls, values, source="params"):
        return cls(dict(values), source=source)

    @classmethod
    def load(cls, path):
        """Read and validate a params.json file; errors name the file."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such params file (each experiment folder holds a params.json)")
        with open(path) as handle:
            try:
                values = json.load(handle)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: not valid JSON ({error})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object of parameters, got {type(values).__name__}")
        return cls(values, source=path)

    @property
    def source(self):
        """Where the parameters come from (a params.json path, or "params")."""
        return self._source

    def to_dict(self):
        return {key: value for key, value in self.__dict__.items() if not key.startswith("_")}

    def save(self, path):
        """Write the effective parameters as JSON, atomically (write then rename)."""
        write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    def replace(self, **changes):
        """A copy with some values changed (validated again)."""
        values = self.to_dict()
        values.update(changes)
        return Params(values, source=self._source)

    def with_eval_interval(self, steps):
        """A copy that validates (and picks best.keras) every `steps` training steps, training the same steps.

        Training validates at the end of each epoch, so the epochs become `steps` long: steps_per_epoch =
        `steps` and num_epochs = num_epochs × steps_per_epoch / `steps`. The batches, the updates and the
        step-based learning-rate schedule are those of the unchanged params (the batch stream runs on across
        epochs); history.csv gets one row per interval. As the PyTorch online-metric-learning examples'
        "evaluation every 50 iterations".

        Raises:
            ValueError: steps_per_epoch is null (the total is then unknown before the data is read), or
                `steps` does not divide num_epochs × steps_per_epoch, or is not a positive integer.
        """
        if not is_integer(steps) or steps <= 0:
            raise ValueError(f"--eval_interval must be a positive integer (training steps), got {steps!r}")
        if self.steps_per_epoch is None:
            raise ValueError(f'{self._source}: --eval_interval needs "steps_per_epoch" (the training then lasts '
                             'num_epochs × steps_per_epoch steps); it is null, one pass over the data per epoch')
        total = self.num_epochs * self.steps_per_epoch
        if total % steps:
            raise ValueError(f"--eval_interval {steps} does not divide the {total} training steps (num_epochs "
                             f"{self.num_epochs} × steps_per_epoch {self.steps_per_epoch})")
        return self.replace(steps_per_epoch=steps, num_epochs=total // steps)

    def ignored(self):
        """The settings that mean nothing beside the others, one sentence each: harmless, so accepted, and said
        (training logs them as warnings) rather than refused. Only values other than the default are named."""
        def given(key):
            return getattr(self, key) != SCHEMA[key].default

        notes = []
        takes = {option.key for option in LOSSES[self.loss].options}
        for key in ("margin", "squared"):
            if key not in takes and given(key) and not (key == "margin" and self.mining == "cached"):
                notes.append(f'"{key}" ({getattr(self, key)!r}) is ignored: loss "{self.loss}" has no {key}')
        if self.mining == "local" and self.distribute is None:
            notes.append('"mining" "local" is ignored: it mines each replica\'s share of the batch, and without '
                         '"distribute" there is one replica (the whole batch is mined)')
        if given("cache_refresh") and self.mining != "cached":
            notes.append(f'"cache_refresh" ({self.cache_refresh}) is ignored: it is the refresh interval of '
                         '"mining": "cached"')
        if self.dataset != "places":
            notes += [f'"{key}" ({getattr(self, key)!r}) is ignored: it is for dataset "places", not "{self.dataset}"'
                      for key in ("positive_radius", "nontrivial_radius", "places_training") if given(key)]
        return notes

    def check_num_labels(self, num_classes):
        """Check `num_labels` against the data: the train labels run 0..num_classes-1.

        Call it once the data is loaded, with `num_classes` = the train split's largest label + 1.
        A loss with one weight row per class (proxy_nca) cannot index a label >= num_labels.

        Raises:
            ValueError: naming the key, its value and the number of classes found.
        """
        if self.num_labels is not None and self.num_labels < num_classes:
            raise ValueError(
                f'{self._source}: key "num_labels" is {self.num_labels} but the training data has {num_classes} '
                f"classes (labels 0..{num_classes - 1}); set num_labels to at least {num_classes}, or to null to "
                "count them from the data."
            )

    def __repr__(self):
        return f"Params({self.to_dict()!r})"


def describe():
    """The schema as a markdown table (key, type, default, meaning), for the params reference."""
    rows = ["| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for key, option in SCHEMA.items():
        choices = option.valid_choices()
        listed = f" ({' / '.join(choices)})" if choices else ""
        rows.append(f"| `{key}` | {type_names(option.types)} | `{json.dumps(option.default)}` | "
                    f"{option.meaning}{listed} |")
    return "\n".join(rows)


if __name__ == "__main__":
    print(describe())
