"""What stays as it was across versions of the library: the params.json error messages, and run folders.

tests/data/params_errors.json holds 129 bad params.json inputs with the message each gave (or None where it
was accepted), recorded by the code before the library was restructured into components; every one must
still give that message. tests/data/runs_before_restructuring/ holds run folders that code trained for two
epochs (a cross-batch memory with a softmax head beside batch-hard, and Proxy-NCA's proxies): they must
resume, and their third epoch must be the one that code trained.
"""

import csv
import json
import math
import os
import shutil

import pytest

from model.app.training import train
from model.params import Params

DATA = os.path.join(os.path.dirname(__file__), "data")


def _normalised(message):
    """The message with its lists of names as sets: the "Valid keys: ..." list (the schema is grouped by
    package now) and the string options of loss_options (sorted now)."""
    if message is None:
        return None
    for start, end in (("Valid keys: ", "."), ("strings only for ", ")")):
        if start in message:
            head, rest = message.split(start, 1)
            listed, tail = rest.rsplit(end, 1)
            message = (head, frozenset(listed.split(", ")), tail)
    return message


def _choices_since(message, recorded):
    """`message` with the choices added since the recording taken out of its "expected one of a, b, c" list,
    where the recorded choices come first and in their order: a component registered later (the losses of
    issue 28, each in its own module) adds its name to the end of the list and leaves the message as it was."""
    marker = "expected one of "
    if message is None or recorded is None or marker not in message or marker not in recorded:
        return message
    head, rest = message.split(marker, 1)
    names, recorded_names = (text.split(" (did you mean")[0].rstrip(".") for text in (rest, recorded.split(marker)[1]))
    if names.startswith(recorded_names + ", "):
        return head + marker + recorded_names + rest[len(names):]
    return message


def _cases():
    with open(os.path.join(DATA, "params_errors.json")) as handle:
        return json.load(handle)


@pytest.mark.parametrize("case", _cases()["from_dict"], ids=lambda case: json.dumps(case["values"])[:60])
def test_every_params_error_message_is_the_one_it_was(case):
    try:
        Params.from_dict(case["values"])
        message = None
    except ValueError as error:
        message = str(error)
    assert _normalised(_choices_since(message, case["message"])) == _normalised(case["message"])


def test_eval_interval_and_num_labels_errors_are_the_ones_they_were():
    for case in _cases()["other"]:
        with pytest.raises(ValueError) as raised:
            if "eval_interval" in case:
                Params.from_dict(case["values"]).with_eval_interval(case["eval_interval"])
            else:
                Params.from_dict({"num_labels": case["num_labels"]}).check_num_labels(case["num_classes"])
        assert str(raised.value) == case["message"]


@pytest.mark.parametrize("name", ["mem_cls", "proxy"])
def test_a_run_trained_before_the_restructuring_resumes_with_the_same_third_epoch(tmp_path, name):
    model_dir = tmp_path / name
    shutil.copytree(os.path.join(DATA, "runs_before_restructuring", name), model_dir)
    with open(model_dir / "params.json") as handle:
        values = json.load(handle)
    result = train(Params.from_dict({**values, "num_epochs": 3}), str(model_dir))
    assert [int(row["epoch"]) for row in result.rows] == [1, 2, 3]
    with open(os.path.join(DATA, "runs_before_restructuring", name, "expected_epoch_3.json")) as handle:
        expected = json.load(handle)["epoch_3"]
    with open(model_dir / "history.csv", newline="") as handle:
        third = list(csv.DictReader(handle))[2]
    assert set(expected) <= set(third)
    for key, value in expected.items():
        assert math.isclose(float(third[key]), float(value), rel_tol=1e-5, abs_tol=1e-6), key
