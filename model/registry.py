"""Components by name, each registered with the params.json options it takes and its rules.

    NETWORKS = Registry("network", key="model", default="mnist_convnet", meaning="embedding network")

    @NETWORKS.register("mnist_convnet", options=(EMBEDDING_SIZE, NUM_CHANNELS, ...))
    def mnist_convnet(*, input_shape, embedding_size=64, num_channels=32, ...): ...

    NETWORKS["mnist_convnet"].component(**kwargs)         # the builder or class itself
    NETWORKS.arguments("mnist_convnet", values)           # its keyword arguments from params values

A component is usable with keyword arguments alone; registering it tells the application edge
(`model.params`, `model.app.adapter`) which params.json keys feed which of its arguments (`Option`),
which values each key accepts, and which combinations of keys it refuses (`Rule`). `Params` builds its
schema from the registries and these option groups, so no list of names is written twice.

An `Option` is one params.json key: its JSON types, default, meaning, and the values it accepts
(choices, a lower bound, or a `check` of its own). Errors are `OptionError(key, value, expected)`, which
`Params` prefixes with the file they come from:
    params.json: key "dropout" has value 1.0; expected a number in [0, 1), e.g. 0.3.
"""

import dataclasses
import difflib
import math
from collections.abc import Callable
from typing import Any

# The Keras serialization package of every registered class of the toolkit ("metric_learning>L2Normalize").
KERAS_PACKAGE = "metric_learning"

# The JSON types of an option, as Python types after json.load.
INT, FLOAT, BOOL, STR, LIST, DICT, NONE = int, float, bool, str, list, dict, type(None)
_TYPE_NAMES = {INT: "integer", FLOAT: "number", BOOL: "true/false", STR: "string", LIST: "list", DICT: "object",
               NONE: "null"}


class OptionError(ValueError):
    """A value of a params.json key that is not what the key expects (`key` may be dotted: "augment.flip")."""

    def __init__(self, key, value, expected, found=None):
        """`found`: what is wrong, said instead of 'has value ...' (e.g. 'has an unknown key "x"')."""
        super().__init__(f'key "{key}" {found or f"has value {value!r}"}; expected {expected}.')
        self.key, self.value, self.expected = key, value, expected


def check_object(key, value, keys, expected, optional=()):
    """Refuse an object option `value` of params.json key `key` that lacks one of `keys` or has a key neither
    among them nor among `optional`: an unknown key is named with the closest valid one; `expected` describes
    the object."""
    unknown = [name for name in value if name not in keys and name not in optional]
    if unknown:
        listed = ", ".join(f'"{name}"' for name in unknown)
        raise OptionError(key, value, expected,
                          f"has an unknown key {listed}{closest(unknown[0], (*keys, *optional))}")
    if not set(keys) <= set(value):
        raise OptionError(key, value, expected)


def type_names(types):
    """'integer or null' for (int, NoneType)."""
    return " or ".join(_TYPE_NAMES[t] for t in types)


def is_number(value):
    """A JSON number (int or float), not true/false."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value):
    """A JSON integer, not true/false."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_instance(value, types):
    """Whether a JSON value is of one of `types` (an integer is a number; true/false is not)."""
    if isinstance(value, bool):  # bool is an int subclass in Python, not in JSON
        return BOOL in types
    if isinstance(value, int) and FLOAT in types:
        return True
    return isinstance(value, types)


def closest(value, valid):
    """' (did you mean "x"?)' for the valid name closest to `value`, or ''."""
    close = difflib.get_close_matches(str(value), list(valid), n=1)
    return f' (did you mean "{close[0]}"?)' if close else ""


def non_finite(value, path):
    """(dotted path, value) of the first NaN or infinite number in `value`, nested lists and objects
    included (e.g. ("lr_schedule.factor", nan)), or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return path, value
    if isinstance(value, dict):
        items = ((f"{path}.{name}", item) for name, item in value.items())
    elif isinstance(value, list):
        items = ((f"{path}[{index}]", item) for index, item in enumerate(value))
    else:
        return None
    return next((found for found in (non_finite(item, where) for where, item in items) if found), None)


@dataclasses.dataclass(frozen=True)
class Option:
    """One params.json key: what it accepts and which keyword argument of a component it feeds.

    Attributes:
        key: the params.json key.
        types: the accepted JSON types (`INT`, `FLOAT`, ... `NONE`); null is accepted when NONE is among them
            and is never checked further.
        default: the value when params.json leaves the key out.
        meaning: one line for the params reference.
        choices: the accepted values (strings), if the key is a choice; a callable returning them is
            evaluated when checked (a registry's names, which grow as components register).
        minimum: inclusive lower bound of a number.
        positive: a number must be > 0.
        check: `check(value)`, after the fields above, for what they cannot say; raises `OptionError` (a
            nested key may be named, e.g. "augment.flip").
        argument: the component's keyword argument it feeds (default: the key).
    """

    key: str
    types: tuple
    default: Any
    meaning: str
    choices: tuple | Callable = ()
    minimum: float | None = None
    positive: bool = False
    check: Callable | None = None
    argument: str | None = None

    @property
    def keyword(self):
        return self.argument or self.key

    def valid_choices(self):
        return tuple(self.choices()) if callable(self.choices) else tuple(self.choices)

    def validate(self, value):
        """Raise `OptionError` unless `value` is acceptable (see the attributes)."""
        found = non_finite(value, self.key)
        if found:  # json.load reads NaN and Infinity; no parameter means anything with them
            raise OptionError(*found, "a finite number")
        if not is_instance(value, self.types):
            raise OptionError(self.key, value, type_names(self.types))
        if value is None:
            return
        choices = self.valid_choices()
        if choices and value not in choices:
            raise OptionError(self.key, value, f"one of {', '.join(choices)}{closest(value, choices)}")
        if is_number(value):
            if self.positive and value <= 0:
                raise OptionError(self.key, value, "a number > 0")
            if self.minimum is not None and value < self.minimum:
                raise OptionError(self.key, value, f"a number >= {self.minimum}")
        if self.check is not None:
            self.check(value)


Rule = Callable  # rule(values: Mapping of every key, chosen: Mapping kind -> Entry) -> message or None


@dataclasses.dataclass(frozen=True)
class Entry:
    """A registered component: its name, the builder or class, its options, its rules and what else it declares."""

    name: str
    component: Any
    options: tuple = ()
    rules: tuple = ()
    info: dict = dataclasses.field(default_factory=dict)

    def __getattr__(self, name):  # the declared attributes (`info`), e.g. LOSSES["softmax"].mines_in_batch
        info = self.__dict__.get("info", {})
        if name in info:
            return info[name]
        raise AttributeError(f"{self.__dict__.get('name')!r} declares no {name!r}")


class Registry:
    """Components of one kind, chosen by one params.json key (`key`) among their names.

    Args:
        kind: what a component is, in messages ("network", "loss", ...).
        key: the params.json key that names one ("model", "loss", ...).
        default: the key's default name.
        meaning: the key's line in the params reference.
    """

    def __init__(self, kind, key, default, meaning):
        self.kind, self.key, self.default, self.meaning = kind, key, default, meaning
        self._entries = {}

    def register(self, name, *, options=(), rules=(), **info):
        """Decorator: register the builder or class under `name` (returned unchanged), with its `options`
        (`Option`s of the keys it takes), its `rules` (see `Rule`) and any declared attributes (`info`)."""
        def add(component):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = Entry(name, component, tuple(options), tuple(rules), dict(info))
            return component

        return add

    def __getitem__(self, name):
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), list(self._entries), n=1)
            hint = f' Did you mean "{close[0]}"?' if close else ""
            raise ValueError(f"Unknown {self.kind} {name!r}. Valid {self.kind}s: {', '.join(self._entries)}.{hint}")
        return self._entries[name]

    def __contains__(self, name):
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)

    def names(self):
        return tuple(self._entries)

    def entries(self):
        return tuple(self._entries.values())

    def selector(self, **fields):
        """The `Option` of the key that chooses a component: its choices are the registered names."""
        return Option(self.key, (STR,), self.default, self.meaning, choices=self.names, **fields)

    def options(self):
        """The options of every registered component, each key once, in registration order."""
        return merge_options(option for entry in self._entries.values() for option in entry.options)

    def arguments(self, name, values):
        """{keyword argument: value} of component `name` from `values` (a mapping of params.json keys)."""
        return {option.keyword: values[option.key] for option in self[name].options}


def merge_options(options):
    """The options with each key once, in order; a key declared twice must be declared alike."""
    merged = {}
    for option in options:
        if option.key in merged and merged[option.key] != option:
            raise ValueError(f'params.json key "{option.key}" is declared twice, differently: {merged[option.key]} '
                             f"and {option}")
        merged.setdefault(option.key, option)
    return tuple(merged.values())
